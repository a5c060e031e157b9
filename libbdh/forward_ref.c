/* The reference step: dense, single-threaded, one token, written to be read
 * next to the equations (docs/architecture.md). The fast path
 * (forward_cpu.c) is tested against it; select it with
 * bdh_model_params.kernels = BDH_KERNELS_REFERENCE.
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

#include <stdlib.h>
#include <string.h>

typedef struct ref_work {
    float *x, *a, *y;      /* [D] */
    float *q, *ys;         /* [N] */
    float *xs, *xy;        /* [H*N] */
    float *cos, *sin;      /* [N] */
} ref_work;

static void head(const bdh_model *m, ref_work *w, int h, float *S)
{
    const bdh_cpu_weights *W = &m->cpu;
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons;
    const int64_t row0 = (int64_t)h * N;
    float *xs = w->xs + row0;

    bdh_rows_dot(&W->encoder, NULL, row0, N, w->x, xs); /* x @ encoder[h] */
    bdh_relu(xs, (size_t)N);
    bdh_rope_apply(xs, w->cos, w->sin, N, w->q);

    memset(w->a, 0, (size_t)D * sizeof(float));
    for (int j = 0; j < N; j++) {
        float *row = S + (size_t)j * D;
        for (int d = 0; d < D; d++) w->a[d] += w->q[j] * row[d];      /* a = S^T q */
        for (int d = 0; d < D; d++) row[d] += w->q[j] * w->x[d];      /* S += q x^T */
    }
    bdh_layernorm(w->a, D);
    bdh_rows_dot(&W->encoder_v, NULL, row0, N, w->a, w->ys); /* LN(a) @ encoder_v[h] */
    bdh_relu(w->ys, (size_t)N);
    for (int j = 0; j < N; j++) w->xy[row0 + j] = xs[j] * w->ys[j];
}

static void layer(const bdh_model *m, ref_work *w, float *S_layer, bdh_state *s, int l, int32_t token)
{
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons, H = m->cfg.n_head;
    for (int h = 0; h < H; h++) head(m, w, h, S_layer + (size_t)h * N * D);

    memset(w->y, 0, (size_t)D * sizeof(float));
    for (int64_t j = 0; j < (int64_t)H * N; j++) bdh_row_axpy(&m->cpu.decoder, j, w->xy[j], w->y);
    bdh_layernorm(w->y, D);
    for (int d = 0; d < D; d++) w->x[d] += w->y[d];
    bdh_layernorm(w->x, D);
    if (bdh_observing(s)) bdh_observe_layer(s, l, token, w->xs, w->xy);
}

bdh_status bdh_ref_step(bdh_state *s, int32_t token, float *logits)
{
    const bdh_model *m = s->model;
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons, H = m->cfg.n_head, V = m->cfg.vocab_size;
    const size_t HN = (size_t)H * N;
    float *buf = malloc((3 * (size_t)D + 4 * (size_t)N + 2 * HN) * sizeof(float));
    if (!buf) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory in the reference step");
    ref_work w;
    w.x = buf;
    w.a = w.x + D;
    w.y = w.a + D;
    w.q = w.y + D;
    w.ys = w.q + N;
    w.cos = w.ys + N;
    w.sin = w.cos + N;
    w.xs = w.sin + N;
    w.xy = w.xs + HN;

    bdh_row_f32(&m->cpu.embed, token, w.x);
    bdh_layernorm(w.x, D);
    bdh_rope_tables(m->cpu.freqs, N, s->position, w.cos, w.sin);
    for (int l = 0; l < m->cfg.n_layer; l++) layer(m, &w, s->S + (size_t)l * H * N * D, s, l, token);
    if (logits)
        bdh_rows_dot(&m->cpu.lm_head, NULL, 0, V, w.x, logits);
    s->position++;
    free(buf);
    return BDH_OK;
}
