/* The CPU backend's private definitions: its weights (repacked at load so
 * that every product reads whole rows of D values), its states, the row
 * kernels, the thread pool and the fast step and prefill.
 *   backend.c   the table entry, weight packing, state lifecycle
 *   forward.c   the sparse-aware, threaded, batched step
 *   prefill.c   chunked GEMM prefill
 *   matrix.c    row kernels (AVX-512 / AVX2 / plain C) and GEMM helpers
 *   q8.c        the same kernels for Q8_0 rows
 *   pool.c      worker threads */
#ifndef BDH_CPU_H
#define BDH_CPU_H

#include "internal.h"

/* Row-major [rows][cols]; one row per neuron (or vocabulary entry). */
typedef struct bdh_matrix {
    bdh_elem type;     /* F32, BF16, F16 or Q8_0 */
    int64_t rows, cols;
    void *data;        /* [rows][cols] of type (Q8_0: int8) */
    uint16_t *scales;  /* Q8_0 only: [rows][ceil(cols/32)] F16 */
} bdh_matrix;

/* The weights, one row of D values per neuron (h*N + j) or per token. */
typedef struct cpu_model {
    bdh_matrix embed;      /* [V][D] */
    bdh_matrix encoder;    /* [H*N][D]  (file: [H][D][N]) */
    bdh_matrix encoder_v;  /* [H*N][D]  (file: [H][D][N]) */
    bdh_matrix decoder;    /* [H*N][D] */
    bdh_matrix lm_head;    /* [V][D]    (file: [D][V]) */
    struct bdh_pool *pool; /* worker threads */
} cpu_model;

typedef struct cpu_state {
    float *S;        /* [L][H][N][D], absolute-frame state */
    void *work;      /* scratch of the fast step (forward.c) */
    int64_t counted; /* tokens in the activity counters below */
    int64_t *active; /* [L][3]: xs > 0, pairs touched, xy > 0 */
} cpu_state;

static inline const cpu_model *cpu_model_of(const bdh_model *m) { return (const cpu_model *)m->impl; }
static inline cpu_state *cpu_state_of(const bdh_state *s) { return (cpu_state *)s->impl; }

/* ------------------------------------------------------------- matrix.c */

/* out[k] = dot(row (rows ? rows[k] : row0 + k), x) for k < n */
BDH_INTERNAL void bdh_rows_dot(const bdh_matrix *m, const int32_t *rows, int64_t row0, int n, const float *x, float *out);
BDH_INTERNAL void bdh_row_axpy(const bdh_matrix *m, int64_t row, float a, float *acc);
BDH_INTERNAL void bdh_row_f32(const bdh_matrix *m, int64_t row, float *out);
/* acc += q * S_row (old values), then S_row += q * x */
BDH_INTERNAL void bdh_state_row_update(float *S_row, float q, const float *x, float *acc, int n);
/* GEMMs over a slice of rows; 16-bit rows are widened BDH_GEMM_BLOCK at a
 * time into scratch ([BDH_GEMM_BLOCK][cols] floats). */
#define BDH_GEMM_BLOCK 256
BDH_INTERNAL void bdh_gemm_rows_t(const bdh_matrix *m, int64_t row0, int nrows, const float *X, int T, float *out, int ldo, float *scratch);
BDH_INTERNAL void bdh_gemm_rows_n(const bdh_matrix *m, int64_t row0, int nrows, const float *A, int T, int lda, float *out, float *scratch);

/* ----------------------------------------------------------------- q8.c */

BDH_INTERNAL void bdh_q8_rows_dot(const bdh_matrix *m, const int32_t *rows, int64_t row0, int n, const float *x, float *out);
BDH_INTERNAL void bdh_q8_axpy(const bdh_matrix *m, int64_t row, float a, float *acc);
BDH_INTERNAL void bdh_q8_row_f32(const bdh_matrix *m, int64_t row, float *out);

/* --------------------------------------------------------------- pool.c */

typedef struct bdh_pool bdh_pool;
typedef void (*bdh_task_fn)(void *ctx, int tid, int n_threads);
BDH_INTERNAL bdh_status bdh_pool_new(int n_threads, bdh_pool **out);
BDH_INTERNAL void bdh_pool_free(bdh_pool *p);
BDH_INTERNAL void bdh_pool_run(bdh_pool *p, bdh_task_fn fn, void *ctx);
BDH_INTERNAL int bdh_pool_threads(const bdh_pool *p);

/* ------------------------------------------------------------ forward.c */

BDH_INTERNAL bdh_status bdh_cpu_work_new(const bdh_model *m, void **out);
BDH_INTERNAL void bdh_cpu_work_free(void *work);
BDH_INTERNAL bdh_status bdh_cpu_step_batch(bdh_state *const *states, const int32_t *tokens, size_t n, float *logits);
/* Neuron slices per head: reductions are summed per slice, then over slices
 * in order, so results do not depend on the thread count or batch size. */
BDH_INTERNAL int bdh_cpu_slices(const bdh_config *c);

/* ------------------------------------------------------------ prefill.c */

BDH_INTERNAL bdh_status bdh_cpu_prefill(bdh_state *s, const int32_t *tokens, size_t n, float *logits, bool all_rows);

#endif /* BDH_CPU_H */
