/* Internal definitions shared by the library's source files (C and CUDA).
 * Nothing here is part of the public API. */
#ifndef BDH_INTERNAL_H
#define BDH_INTERNAL_H

#include "bdh.h"

#include <stdarg.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BDH_INTERNAL __attribute__((visibility("hidden")))

/* ------------------------------------------------------------ errors.c */

/* Record a message for bdh_last_error() and return status (for one-line
 * `return bdh_fail(...)`). */
BDH_INTERNAL bdh_status bdh_fail(bdh_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
BDH_INTERNAL void bdh_clear_error(void);

/* --------------------------------------------------------- safetensors.c */

typedef enum bdh_dtype { BDH_DT_F32, BDH_DT_F16, BDH_DT_BF16, BDH_DT_F64, BDH_DT_I32, BDH_DT_I64 } bdh_dtype;

#define BDH_MAX_DIMS 8

typedef struct bdh_tensor_view {
    char *name;           /* as in the file */
    bdh_dtype dtype;
    int n_dims;
    int64_t shape[BDH_MAX_DIMS];
    const void *data;     /* points into the mapping */
    size_t nbytes;
} bdh_tensor_view;

typedef struct bdh_safetensors {
    void *map;            /* whole file, read-only mapping */
    size_t map_size;
    bdh_tensor_view *tensors;
    int n_tensors;
    char **meta_keys;     /* __metadata__ (string values only) */
    char **meta_values;
    int n_meta;
} bdh_safetensors;

BDH_INTERNAL bdh_status bdh_safetensors_open(const char *path, bdh_safetensors *out);
BDH_INTERNAL void bdh_safetensors_close(bdh_safetensors *st);
BDH_INTERNAL void bdh_safetensors_release(const bdh_safetensors *st, const bdh_tensor_view *t);
BDH_INTERNAL const bdh_tensor_view *bdh_safetensors_find(const bdh_safetensors *st, const char *name);
BDH_INTERNAL const char *bdh_safetensors_meta(const bdh_safetensors *st, const char *key);
BDH_INTERNAL const char *bdh_dtype_name(bdh_dtype dt);
BDH_INTERNAL size_t bdh_dtype_size(bdh_dtype dt);
/* Convert n elements of a F32/F16/BF16 tensor to float32. */
BDH_INTERNAL void bdh_convert_to_f32(bdh_dtype dt, const void *src, float *dst, size_t n);

/* -------------------------------------------------------------- matrix.c */

typedef enum bdh_wtype { BDH_W_F32, BDH_W_BF16, BDH_W_F16 } bdh_wtype;

/* Row-major [rows][cols]; the CPU path keeps one row per neuron. */
typedef struct bdh_matrix {
    bdh_wtype type;
    int64_t rows, cols;
    void *data;
} bdh_matrix;

/* aligned, huge-page backed where the system allows; free() releases it */
BDH_INTERNAL void *bdh_alloc_large(size_t bytes);
BDH_INTERNAL size_t bdh_wtype_size(bdh_wtype t);
BDH_INTERNAL const char *bdh_wtype_name(bdh_wtype t);
/* Write n floats into storage of type t (rounding to nearest even). */
BDH_INTERNAL void bdh_store_f32(bdh_wtype t, const float *src, void *dst, size_t n);
/* out[k] = dot(row (rows ? rows[k] : row0 + k), x) for k < n: the fast kernel */
BDH_INTERNAL void bdh_rows_dot(const bdh_matrix *m, const int32_t *rows, int64_t row0, int n, const float *x, float *out);
BDH_INTERNAL void bdh_row_axpy(const bdh_matrix *m, int64_t row, float a, float *acc);
BDH_INTERNAL void bdh_row_f32(const bdh_matrix *m, int64_t row, float *out);
/* The instruction set the row kernels run with here ("avx512", "avx2", "c"). */
BDH_INTERNAL const char *bdh_cpu_kernel_name(void);
BDH_INTERNAL void bdh_state_row_update(float *S_row, float q, const float *x, float *acc, int n);
/* scratch: GEMM_BLOCK (256) rows of cols floats, for 16-bit storage */
BDH_INTERNAL void bdh_gemm_rows_t(const bdh_matrix *m, int64_t row0, int nrows, const float *X, int T, float *out, int ldo, float *scratch);
BDH_INTERNAL void bdh_gemm_rows_n(const bdh_matrix *m, int64_t row0, int nrows, const float *A, int T, int lda, float *out, float *scratch);
#define BDH_GEMM_BLOCK 256

/* ---------------------------------------------------------------- pool.c */

typedef struct bdh_pool bdh_pool;
typedef void (*bdh_task_fn)(void *ctx, int tid, int n_threads);
BDH_INTERNAL bdh_status bdh_pool_new(int n_threads, bdh_pool **out);
BDH_INTERNAL void bdh_pool_free(bdh_pool *p);
BDH_INTERNAL void bdh_pool_run(bdh_pool *p, bdh_task_fn fn, void *ctx);
BDH_INTERNAL int bdh_pool_threads(const bdh_pool *p);

/* --------------------------------------------------------------- model.c */

/* The weights in the reference's layouts, float32: built at load only for
 * the CUDA backend to upload (and freed after). */
typedef struct bdh_weights {
    float *embed;      /* [V][D] */
    float *encoder;    /* [H][D][N] */
    float *encoder_v;  /* [H][D][N] */
    float *decoder;    /* [H*N][D] */
    float *lm_head;    /* [D][V] */
    float *freqs;      /* [N], RoPE turns per position */
} bdh_weights;

/* The CPU path's weights, repacked at load so that every product reads
 * whole rows of D values: one row per neuron (h*N + j) or per token. */
typedef struct bdh_cpu_weights {
    bdh_matrix embed;      /* [V][D] */
    bdh_matrix encoder;    /* [H*N][D]  (file: [H][D][N]) */
    bdh_matrix encoder_v;  /* [H*N][D]  (file: [H][D][N]) */
    bdh_matrix decoder;    /* [H*N][D] */
    bdh_matrix lm_head;    /* [V][D]    (file: [D][V]) */
    float *freqs;          /* [N] RoPE turns per position */
} bdh_cpu_weights;

enum { BDH_T_EMBED, BDH_T_ENCODER, BDH_T_ENCODER_V, BDH_T_DECODER, BDH_T_LM_HEAD, BDH_T_FREQS, BDH_T_COUNT };

struct bdh_model {
    int refs;                  /* the caller's + one per state (atomic) */
    bdh_config cfg;
    bdh_model_params params;
    int n_threads;             /* resolved (0 -> cores) */
    uint64_t fingerprint;
    size_t weight_bytes;
    int64_t n_params;
    const char *file_dtype[BDH_T_COUNT]; /* NULL when absent from the file */
    bdh_wtype wtype;           /* how the CPU path stores its matrices */
    bdh_cpu_weights cpu;       /* CPU path */
    bdh_pool *pool;            /* CPU worker threads */
    bdh_weights w;             /* CUDA only, during bdh_cuda_model_init */
    void *cuda;                /* device-side model, kernels/ (NULL on CPU) */
};

/* Model references: the caller's (bdh_model_free drops it) and each
 * state's; the last release frees the model. */
BDH_INTERNAL void bdh_model_retain(const bdh_model *m);
BDH_INTERNAL void bdh_model_release(const bdh_model *m);

/* Shape helpers. */
static inline size_t bdh_state_floats(const bdh_config *c)
{
    return (size_t)c->n_layer * (size_t)c->n_head * (size_t)c->n_neurons * (size_t)c->n_embd;
}

/* ------------------------------------------------------------ observe.c */

typedef struct bdh_observe bdh_observe;
BDH_INTERNAL void bdh_observe_free(bdh_observe *o);
/* An observer or a monitor is set: the forward paths report each layer. */
BDH_INTERNAL bool bdh_observing(const bdh_state *s);
/* After a layer: xs and xy dense [H*N] (head-major), s->position = the token's. */
BDH_INTERNAL void bdh_observe_layer(bdh_state *s, int layer, int32_t token, const float *xs, const float *xy);
BDH_INTERNAL void bdh_observe_reset(bdh_state *s);
BDH_INTERNAL bdh_status bdh_observe_copy_monitors(bdh_state *dst, const bdh_state *src);
/* Room for n monitors (no visible change): after it, set_monitors(n) cannot fail. */
BDH_INTERNAL bdh_status bdh_observe_reserve(bdh_state *s, size_t n);
BDH_INTERNAL bdh_status bdh_observe_set_monitors(bdh_state *s, size_t n, const int32_t *mon, const double *sigma);
/* [n][3] (layer, i, j) and the sigmas; NULL when there are none. */
BDH_INTERNAL const int32_t *bdh_observe_monitor_list(const bdh_state *s, const double **sigma);

/* --------------------------------------------------------------- state.c */

struct bdh_state {
    const bdh_model *model;
    int64_t position;
    float *S;        /* [L][H][N][D], absolute-frame state (CPU path) */
    void *work;      /* scratch of the CPU forward (forward_cpu.c) */
    int64_t counted; /* tokens in the activity counters below */
    int64_t *active; /* [L][3]: xs > 0, pairs touched, xy > 0 (fast path) */
    bdh_observe *obs;/* observer and monitors, NULL until one is set */
    void *cuda;      /* device-side state, kernels/ (NULL on CPU) */
};

BDH_INTERNAL bdh_status bdh_check_token(const bdh_model *m, int32_t token);

/* --------------------------------------------------------- forward_cpu.c */

/* The fast path: any number of states (of one model) advance by one token
 * each; weights rows are read once for all of them. */
BDH_INTERNAL bdh_status bdh_cpu_work_new(const bdh_model *m, void **out);
BDH_INTERNAL void bdh_cpu_work_free(void *work);
BDH_INTERNAL bdh_status bdh_cpu_step_batch(bdh_state *const *states, const int32_t *tokens, size_t n, float *logits);
/* Neuron slices per head: reductions are summed per slice, then over slices
 * in order, so results do not depend on the thread count or batch size. */
BDH_INTERNAL int bdh_cpu_slices(const bdh_config *c);

/* ---------------------------------------------------------- forward_ref.c */

/* The plain reference: dense, single-threaded, written like the equations. */
BDH_INTERNAL bdh_status bdh_ref_step(bdh_state *s, int32_t token, float *logits);

/* ------------------------------------------------------------- prefill.c */

/* logits: NULL, the last token's row (all_rows false) or n rows (true). */
BDH_INTERNAL bdh_status bdh_cpu_prefill(bdh_state *s, const int32_t *tokens, size_t n, float *logits, bool all_rows);

/* ----------------------------------------------------------- math helpers */

BDH_INTERNAL void bdh_relu(float *v, size_t n);
/* LayerNorm without affine, eps 1e-5, biased variance, in place. */
BDH_INTERNAL void bdh_layernorm(float *v, int n);
/* RoPE phases for position t: cos/sin of (float32(t)*freq mod 1)*2pi, as
 * the reference computes them in float32. */
BDH_INTERNAL void bdh_rope_tables(const float *freqs, int n, int64_t t, float *cos_out, float *sin_out);
BDH_INTERNAL void bdh_rope_apply(const float *v, const float *cs, const float *sn, int n, float *out);

/* ------------------------------------------- CUDA backend (kernels/ or stub) */

BDH_INTERNAL bdh_status bdh_cuda_model_init(bdh_model *m);
BDH_INTERNAL void bdh_cuda_model_release(bdh_model *m);
BDH_INTERNAL bdh_status bdh_cuda_state_init(bdh_state *s);
BDH_INTERNAL void bdh_cuda_state_release(bdh_state *s);
BDH_INTERNAL bdh_status bdh_cuda_state_reset(bdh_state *s);
BDH_INTERNAL bdh_status bdh_cuda_state_copy(bdh_state *dst, const bdh_state *src);
BDH_INTERNAL bdh_status bdh_cuda_state_download(const bdh_state *s, float *host);
BDH_INTERNAL bdh_status bdh_cuda_state_upload(bdh_state *s, const float *host);
BDH_INTERNAL bdh_status bdh_cuda_step(bdh_state *s, int32_t token, float *logits);
BDH_INTERNAL bdh_status bdh_cuda_prefill(bdh_state *s, const int32_t *tokens, size_t n, float *logits, bool all_rows);
/* One line on the CUDA devices seen (or why there are none). */
BDH_INTERNAL void bdh_cuda_describe(char *buf, size_t cap);
BDH_INTERNAL bdh_status bdh_cuda_step_batch(bdh_state *const *states, const int32_t *tokens, size_t n, float *logits);

#ifdef __cplusplus
}
#endif

#endif /* BDH_INTERNAL_H */
