/* The recurrent step on the CPU, one token at a time, written to be read next
 * to docs/architecture.md (and the reference's equations):
 *
 *   x = LN(embed[token])
 *   for each layer (shared weights):
 *     for each head h:
 *       xs = relu(x @ encoder[h])          q = rope(t, xs)
 *       a  = S[h]^T q   (read BEFORE the update)
 *       S[h] += q x^T
 *       ys = relu(LN(a) @ encoder_v[h])     xy[h] = xs * ys
 *     x = LN(x + LN(xy @ decoder))
 *   logits = x @ lm_head
 */
#include "internal.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

typedef struct cpu_work {
    float *x;    /* [D] residual stream */
    float *a;    /* [D] state read of one head */
    float *y;    /* [D] decoder output */
    float *q;    /* [N] rope(xs) of one head */
    float *ys;   /* [N] */
    float *xs;   /* [N] */
    float *xy;   /* [H*N] gated output of all heads */
    float *cos;  /* [N] RoPE tables of the current position */
    float *sin;  /* [N] */
} cpu_work;

bdh_status bdh_cpu_work_new(const bdh_model *m, void **out)
{
    const size_t D = (size_t)m->cfg.n_embd, N = (size_t)m->cfg.n_neurons, H = (size_t)m->cfg.n_head;
    cpu_work *w = calloc(1, sizeof *w);
    float *buf = w ? calloc(3 * D + 5 * N + H * N, sizeof(float)) : NULL;
    if (!buf) {
        free(w);
        return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory allocating the CPU work buffers");
    }
    w->x = buf;
    w->a = w->x + D;
    w->y = w->a + D;
    w->q = w->y + D;
    w->ys = w->q + N;
    w->xs = w->ys + N;
    w->cos = w->xs + N;
    w->sin = w->cos + N;
    w->xy = w->sin + N;
    *out = w;
    return BDH_OK;
}

void bdh_cpu_work_free(void *work)
{
    cpu_work *w = work;
    if (!w) return;
    free(w->x);
    free(w);
}

static void relu(float *v, int n)
{
    for (int i = 0; i < n; i++) v[i] = v[i] > 0.0f ? v[i] : 0.0f;
}

/* out[N] = relu(v[D] @ mat[D][N]) */
static void project_relu(const float *mat, const float *v, int D, int N, float *out)
{
    cblas_sgemv(CblasRowMajor, CblasTrans, D, N, 1.0f, mat, N, v, 1, 0.0f, out, 1);
    relu(out, N);
}

/* One head of one layer: reads and updates the head's state S [N][D],
 * writes xs * ys into xy [N]. */
static void head_step(const bdh_model *m, cpu_work *w, int h, float *S, float *xy)
{
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons;
    const size_t head = (size_t)h * D * N;

    project_relu(m->w.encoder + head, w->x, D, N, w->xs);
    bdh_rope_apply(w->xs, w->cos, w->sin, N, w->q);

    cblas_sgemv(CblasRowMajor, CblasTrans, N, D, 1.0f, S, D, w->q, 1, 0.0f, w->a, 1); /* a = S^T q */
    cblas_sger(CblasRowMajor, N, D, 1.0f, w->q, 1, w->x, 1, S, D);                   /* S += q x^T */

    bdh_layernorm(w->a, D);
    project_relu(m->w.encoder_v + head, w->a, D, N, w->ys);
    for (int j = 0; j < N; j++) xy[j] = w->xs[j] * w->ys[j];
}

static void layer_step(const bdh_model *m, cpu_work *w, float *S_layer)
{
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons, H = m->cfg.n_head;
    for (int h = 0; h < H; h++)
        head_step(m, w, h, S_layer + (size_t)h * N * D, w->xy + (size_t)h * N);

    cblas_sgemv(CblasRowMajor, CblasTrans, H * N, D, 1.0f, m->w.decoder, D, w->xy, 1, 0.0f, w->y, 1);
    bdh_layernorm(w->y, D);
    for (int i = 0; i < D; i++) w->x[i] += w->y[i];
    bdh_layernorm(w->x, D);
}

void bdh_cpu_step(bdh_state *s, int32_t token, float *logits)
{
    const bdh_model *m = s->model;
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons, V = m->cfg.vocab_size;
    const size_t layer_floats = (size_t)m->cfg.n_head * N * D;
    cpu_work *w = s->work;

    memcpy(w->x, m->w.embed + (size_t)token * D, (size_t)D * sizeof(float));
    bdh_layernorm(w->x, D);
    bdh_rope_tables(m->w.freqs, N, s->position, w->cos, w->sin);
    for (int l = 0; l < m->cfg.n_layer; l++)
        layer_step(m, w, s->S + (size_t)l * layer_floats);
    if (logits)
        cblas_sgemv(CblasRowMajor, CblasTrans, D, V, 1.0f, m->w.lm_head, V, w->x, 1, 0.0f, logits, 1);
    s->position++;
}
