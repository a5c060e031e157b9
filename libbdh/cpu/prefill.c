/* Prefill: many tokens at once, in chunks of C tokens, with GEMMs.
 *
 * For a chunk at positions t0..t0+C-1 (rows i), per layer and head, with the
 * state S on entry:
 *   XS = relu(X @ encoder[h])                 [C][N]
 *   Q  = rope(XS) at each row's position
 *   A  = Q @ S  +  strict_lower(Q Q^T) @ X     [C][D]  (state term + chunk term)
 *   S += Q^T @ X
 *   XY[:, h] = XS * relu(LN(A) @ encoder_v[h])
 * then X = LN(X + LN(XY @ decoder)) as in the step. This is the recurrent
 * step summed in a different order: same logits and same final state up to
 * float rounding. */
#include "cpu.h"

#include <cblas.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <string.h>


typedef struct prefill_work {
    int C;
    float *X;       /* [C][D] */
    float *A;       /* [C][D] */
    float *Y;       /* [C][D] */
    float *XS;      /* [C][N] one head */
    float *Q;       /* [C][N] */
    float *YS;      /* [C][N] */
    float *XY;      /* [C][H*N] all heads */
    float *scores;  /* [C][C] */
    float *cos;     /* [C][N] RoPE tables of the chunk's positions */
    float *sin;     /* [C][N] */
    float *scratch; /* [BDH_GEMM_BLOCK][D] widened 16-bit weights */
} prefill_work;

static void work_free(prefill_work *w) { free(w->X); }

static bdh_status work_alloc(const bdh_config *c, int C, prefill_work *w)
{
    const size_t D = (size_t)c->n_embd, N = (size_t)c->n_neurons, H = (size_t)c->n_head;
    const size_t n = C * (3 * D + 5 * N + H * N + (size_t)C) + BDH_GEMM_BLOCK * D;
    memset(w, 0, sizeof *w);
    float *buf = malloc(n * sizeof(float));
    if (!buf) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory allocating %zu bytes of prefill buffers", n * sizeof(float));
    w->C = C;
    w->X = buf;
    w->A = w->X + C * D;
    w->Y = w->A + C * D;
    w->XS = w->Y + C * D;
    w->Q = w->XS + C * N;
    w->YS = w->Q + C * N;
    w->cos = w->YS + C * N;
    w->sin = w->cos + C * N;
    w->XY = w->sin + C * N;
    w->scores = w->XY + C * H * N;
    w->scratch = w->scores + (size_t)C * C;
    return BDH_OK;
}

/* out[T][N] = relu(in[T][D] @ head h's rows of mat ([H*N][D]) transposed) */
static void project_relu(const bdh_matrix *mat, int h, int N, const float *in, int T, float *out, float *scratch)
{
    bdh_gemm_rows_t(mat, (int64_t)h * N, N, in, T, out, N, scratch);
    bdh_relu(out, (size_t)T * N);
}

/* A = Q S + strict_lower(Q Q^T) X, then S += Q^T X. A state still at
 * position 0 is all zeros, so its read is skipped. */
static void attend_and_update(prefill_work *w, int T, int N, int D, float *S, bool zero_state)
{
    if (zero_state)
        memset(w->A, 0, (size_t)T * D * sizeof(float));
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, N, 1.0f, w->Q, N, S, D, 0.0f, w->A, D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, N, 1.0f, w->Q, N, w->Q, N, 0.0f, w->scores, T);
    for (int i = 0; i < T; i++)
        for (int j = i; j < T; j++) w->scores[(size_t)i * T + j] = 0.0f; /* token i sees j < i only */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, T, 1.0f, w->scores, T, w->X, D, 1.0f, w->A, D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, D, T, 1.0f, w->Q, N, w->X, D, 1.0f, S, D);
}

static void head_chunk(const bdh_model *m, prefill_work *w, int T, int h, float *S, bool zero_state)
{
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons, HN = m->cfg.n_head * N;

    project_relu(&cpu_model_of(m)->encoder, h, N, w->X, T, w->XS, w->scratch);
    for (int i = 0; i < T; i++)
        bdh_rope_apply(w->XS + (size_t)i * N, w->cos + (size_t)i * N, w->sin + (size_t)i * N, N, w->Q + (size_t)i * N);
    attend_and_update(w, T, N, D, S, zero_state);
    for (int i = 0; i < T; i++) bdh_layernorm(w->A + (size_t)i * D, D);
    project_relu(&cpu_model_of(m)->encoder_v, h, N, w->A, T, w->YS, w->scratch);
    for (int i = 0; i < T; i++) {
        const float *xs = w->XS + (size_t)i * N, *ys = w->YS + (size_t)i * N;
        float *xy = w->XY + (size_t)i * HN + (size_t)h * N;
        for (int j = 0; j < N; j++) xy[j] = xs[j] * ys[j];
    }
}

static void layer_chunk(const bdh_model *m, prefill_work *w, int T, float *S_layer, bool zero_state)
{
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons, H = m->cfg.n_head;
    for (int h = 0; h < H; h++) head_chunk(m, w, T, h, S_layer + (size_t)h * N * D, zero_state);
    memset(w->Y, 0, (size_t)T * D * sizeof(float));
    bdh_gemm_rows_n(&cpu_model_of(m)->decoder, 0, H * N, w->XY, T, H * N, w->Y, w->scratch);
    for (int i = 0; i < T; i++) {
        float *x = w->X + (size_t)i * D, *y = w->Y + (size_t)i * D;
        bdh_layernorm(y, D);
        for (int k = 0; k < D; k++) x[k] += y[k];
        bdh_layernorm(x, D);
    }
}

/* logits [T][V] = X [T][D] @ lm_head ([V][D]) transposed */
static void chunk_logits(const bdh_model *m, const prefill_work *w, int T, float *logits)
{
    bdh_gemm_rows_t(&cpu_model_of(m)->lm_head, 0, m->cfg.vocab_size, w->X, T, logits, m->cfg.vocab_size, w->scratch);
}

static void chunk_forward(bdh_state *s, prefill_work *w, const int32_t *tokens, int T)
{
    const bdh_model *m = s->model;
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons;
    const size_t layer_floats = (size_t)m->cfg.n_head * N * D;
    for (int i = 0; i < T; i++) {
        float *x = w->X + (size_t)i * D;
        bdh_row_f32(&cpu_model_of(m)->embed, tokens[i], x);
        bdh_layernorm(x, D);
        bdh_rope_tables(m->freqs, N, s->position + i, w->cos + (size_t)i * N, w->sin + (size_t)i * N);
    }
    const bool zero_state = s->position == 0;
    for (int l = 0; l < m->cfg.n_layer; l++) layer_chunk(m, w, T, cpu_state_of(s)->S + (size_t)l * layer_floats, zero_state);
    s->position += T;
}

/* OpenBLAS takes a work buffer per BLAS thread at a GEMM (128 MiB each in
 * Debian 12's 0.3.21, seen in a debugger) and, when that allocation fails,
 * retries for ever: a process near its address-space limit (ulimit -v) hung
 * in the prefill's first GEMM. So look first: when that much address space
 * cannot be had now, the prefill steps token by token (no BLAS; the same
 * results up to rounding). A reservation of address space only, at once
 * released: it costs a few microseconds per prefill. */
#define BLAS_BUFFER_BYTES ((size_t)128 << 20)
extern int openblas_get_num_threads(void);

static bool blas_can_work(void)
{
    const size_t n = BLAS_BUFFER_BYTES * (size_t)(openblas_get_num_threads() + 1);
    void *p = mmap(NULL, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return false;
    munmap(p, n);
    return true;
}

bdh_status bdh_cpu_prefill(bdh_state *s, const int32_t *tokens, size_t n, float *logits, bool all_rows)
{
    if (!blas_can_work()) return bdh_prefill_by_steps(s, tokens, n, logits, all_rows);
    const bdh_config *c = &s->model->cfg;
    prefill_work w;
    const int C = n < BDH_PREFILL_CHUNK ? (int)n : BDH_PREFILL_CHUNK;
    bdh_status rc = work_alloc(c, C, &w);
    if (rc != BDH_OK) return rc;
    int last = 0;
    for (size_t done = 0; done < n; done += (size_t)last) {
        last = n - done < (size_t)C ? (int)(n - done) : C;
        chunk_forward(s, &w, tokens + done, last);
        if (all_rows) chunk_logits(s->model, &w, last, logits + done * (size_t)c->vocab_size);
    }
    if (logits && !all_rows)
        bdh_gemm_rows_t(&cpu_model_of(s->model)->lm_head, 0, c->vocab_size, w.X + (size_t)(last - 1) * c->n_embd, 1, logits,
                        c->vocab_size, w.scratch);
    work_free(&w);
    return BDH_OK;
}
