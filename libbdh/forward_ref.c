/* The reference backend: dense, single-threaded, one token at a time,
 * written to be read next to the equations (docs/architecture.md). The fast
 * paths are tested against it, so it shares nothing with them but the
 * LayerNorm and RoPE math (math.c): its weights are float32 copies in the
 * file's own layouts (rounded to the requested 16-bit or Q8_0 type, so a fast
 * path holding those types can be checked against the same values), its products are plain
 * loops with double accumulators, its state is one calloc'd array.
 * Select it with bdh_model_params.kernels = BDH_KERNELS_REFERENCE.
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

typedef struct ref_model {
    float *embed;     /* [V][D] */
    float *encoder;   /* [H][D][N] */
    float *encoder_v; /* [H][D][N] */
    float *decoder;   /* [H*N][D] */
    float *lm_head;   /* [D][V] */
} ref_model;

/* out[c] = sum_r in[r] * W[r][c] for W [rows][cols] (row-major): x @ W */
static void matmul(const float *in, const float *W, int rows, int cols, double *acc, float *out)
{
    memset(acc, 0, (size_t)cols * sizeof *acc);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) acc[c] += (double)in[r] * W[(size_t)r * cols + c];
    for (int c = 0; c < cols; c++) out[c] = (float)acc[c];
}

/* ---------------------------------------------------------------- the step */

typedef struct ref_work {
    float *x, *a, *y;      /* [D] */
    float *q, *ys;         /* [N] */
    float *xs, *xy;        /* [H*N] */
    float *cos, *sin;      /* [N] */
    double *acc;           /* [max(D, N, V)] */
} ref_work;

static void head(const bdh_model *m, const ref_model *W, ref_work *w, int h, float *S)
{
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons;
    float *xs = w->xs + (size_t)h * N;

    matmul(w->x, W->encoder + (size_t)h * D * N, D, N, w->acc, xs); /* x @ encoder[h] */
    bdh_relu(xs, (size_t)N);
    bdh_rope_apply(xs, w->cos, w->sin, N, w->q);

    memset(w->acc, 0, (size_t)D * sizeof *w->acc);
    for (int j = 0; j < N; j++) {
        float *row = S + (size_t)j * D;
        for (int d = 0; d < D; d++) w->acc[d] += (double)w->q[j] * row[d]; /* a = S^T q */
        for (int d = 0; d < D; d++) row[d] += w->q[j] * w->x[d];          /* S += q x^T */
    }
    for (int d = 0; d < D; d++) w->a[d] = (float)w->acc[d];
    bdh_layernorm(w->a, D);
    matmul(w->a, W->encoder_v + (size_t)h * D * N, D, N, w->acc, w->ys); /* LN(a) @ encoder_v[h] */
    bdh_relu(w->ys, (size_t)N);
    for (int j = 0; j < N; j++) w->xy[(size_t)h * N + j] = xs[j] * w->ys[j];
}

static void layer(const bdh_model *m, const ref_model *W, ref_work *w, float *S_layer, bdh_state *s, int l, int32_t token)
{
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons, H = m->cfg.n_head;
    for (int h = 0; h < H; h++) head(m, W, w, h, S_layer + (size_t)h * N * D);

    matmul(w->xy, W->decoder, H * N, D, w->acc, w->y); /* xy @ decoder */
    bdh_layernorm(w->y, D);
    for (int d = 0; d < D; d++) w->x[d] += w->y[d];
    bdh_layernorm(w->x, D);
    if (bdh_observing(s)) bdh_observe_layer(s, l, token, w->xs, w->xy);
}

/* A state: S [L][H][N][D], and the step's buffers (allocated with it, so a
 * step never allocates and cannot fail half-way). */
typedef struct ref_state {
    float *S;
    float *buf;  /* x, a, y [D]; q, ys, cos, sin [N]; xs, xy [H*N] */
    double *acc; /* [max(D, N, V)] */
} ref_state;

static bdh_status ref_step(bdh_state *s, int32_t token, float *logits)
{
    const bdh_model *m = s->model;
    const ref_model *W = m->impl;
    ref_state *rs = s->impl;
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons, H = m->cfg.n_head, V = m->cfg.vocab_size;
    const size_t HN = (size_t)H * N;
    ref_work w = {.x = rs->buf, .acc = rs->acc};
    w.a = w.x + D;
    w.y = w.a + D;
    w.q = w.y + D;
    w.ys = w.q + N;
    w.cos = w.ys + N;
    w.sin = w.cos + N;
    w.xs = w.sin + N;
    w.xy = w.xs + HN;

    memcpy(w.x, W->embed + (size_t)token * D, (size_t)D * sizeof(float));
    bdh_layernorm(w.x, D);
    bdh_rope_tables(m->freqs, N, s->position, w.cos, w.sin);
    for (int l = 0; l < m->cfg.n_layer; l++) layer(m, W, &w, rs->S + (size_t)l * HN * D, s, l, token);
    if (logits) matmul(w.x, W->lm_head, D, V, w.acc, logits); /* x @ lm_head */
    s->position++;
    return BDH_OK;
}

static bdh_status ref_step_batch(bdh_state *const *states, const int32_t *tokens, size_t n, float *logits)
{
    const size_t V = (size_t)states[0]->model->cfg.vocab_size;
    for (size_t b = 0; b < n; b++) {
        bdh_status rc = ref_step(states[b], tokens[b], logits ? logits + b * V : NULL);
        if (rc != BDH_OK) return rc;
    }
    return BDH_OK;
}

/* ---------------------------------------------------------------- weights */

static void ref_model_free(bdh_model *m)
{
    ref_model *W = m->impl;
    if (!W) return;
    free(W->embed);
    free(W->encoder);
    free(W->encoder_v);
    free(W->decoder);
    free(W->lm_head);
    free(W);
    m->impl = NULL;
}

/* A float32 copy of tensor `which` laid out as in the file, each held row
 * rounded to `type` (a Q8_0 file dequantized), so the reference computes
 * with exactly the values a fast path holds. */
static float *copy_tensor(const bdh_model *m, const bdh_weight_views *w, int which, bdh_elem type)
{
    bdh_file_rows f;
    bdh_file_rows_init(&f, w, which, &m->cfg);
    float *v = malloc((size_t)(f.rows * f.cols) * sizeof(float)), *row = malloc((size_t)f.cols * sizeof(float));
    if (v && row)
        for (int64_t r = 0; r < f.rows; r++) {
            bdh_file_row_f32(&f, r, row);
            bdh_elem_round_f32(type, row, (size_t)f.cols);
            bdh_file_row_scatter(&f, r, row, v);
        }
    free(row);
    if (!row) {
        free(v);
        return NULL;
    }
    return v;
}

static bdh_status ref_model_init(bdh_model *m, const bdh_weight_views *w)
{
    ref_model *W = calloc(1, sizeof *W);
    if (!W) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    m->impl = W;
    const bdh_elem type = bdh_weight_elem(m->params.weight_type, w->t[BDH_T_ENCODER]->dtype);
    const bdh_elem small = type == BDH_ELEM_Q8_0 ? BDH_ELEM_F32 : type; /* embed, lm_head */
    float **dst[] = {&W->embed, &W->encoder, &W->encoder_v, &W->decoder, &W->lm_head};
    for (int i = BDH_T_EMBED; i <= BDH_T_LM_HEAD; i++)
        if (!(*dst[i] = copy_tensor(m, w, i, bdh_quantizable(i) ? type : small))) {
            ref_model_free(m);
            return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory copying %s", bdh_tensor_name(i));
        }
    m->weight_bytes = (size_t)m->n_params * sizeof(float) + (size_t)m->cfg.n_neurons * sizeof(float);
    return BDH_OK;
}

/* ------------------------------------------------------------------ state */

static size_t state_bytes(const bdh_state *s) { return bdh_state_floats(&s->model->cfg) * sizeof(float); }
static float *S_of(const bdh_state *s) { return ((const ref_state *)s->impl)->S; }

static void ref_state_free(bdh_state *s)
{
    ref_state *rs = s->impl;
    if (!rs) return;
    free(rs->S);
    free(rs->buf);
    free(rs->acc);
    free(rs);
    s->impl = NULL;
}

static bdh_status ref_state_init(bdh_state *s)
{
    const bdh_config *c = &s->model->cfg;
    const size_t D = (size_t)c->n_embd, N = (size_t)c->n_neurons, HN = (size_t)c->n_head * N, V = (size_t)c->vocab_size;
    const size_t big = D > N ? (D > V ? D : V) : (N > V ? N : V);
    ref_state *rs = calloc(1, sizeof *rs);
    s->impl = rs;
    if (rs) {
        rs->S = calloc(bdh_state_floats(c), sizeof(float));
        rs->buf = malloc((3 * D + 4 * N + 2 * HN) * sizeof(float));
        rs->acc = malloc(big * sizeof(double));
    }
    if (!rs || !rs->S || !rs->buf || !rs->acc) {
        ref_state_free(s);
        return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory allocating a %zu-byte state", state_bytes(s));
    }
    return BDH_OK;
}

static bdh_status ref_state_reset(bdh_state *s)
{
    memset(S_of(s), 0, state_bytes(s));
    return BDH_OK;
}

static bdh_status ref_state_copy(bdh_state *dst, const bdh_state *src)
{
    memcpy(S_of(dst), S_of(src), state_bytes(src));
    return BDH_OK;
}

static bdh_status ref_state_read(const bdh_state *s, void *dst)
{
    memcpy(dst, S_of(s), state_bytes(s));
    return BDH_OK;
}

static bdh_status ref_state_write(bdh_state *s, const void *src)
{
    memcpy(S_of(s), src, state_bytes(s));
    return BDH_OK;
}

static const float *ref_state_rows(const bdh_state *s, int layer, int head)
{
    const bdh_config *c = &s->model->cfg;
    return S_of(s) + ((size_t)layer * c->n_head + head) * c->n_neurons * c->n_embd;
}

static bdh_status ref_check_params(const bdh_model_params *p)
{
    (void)p;
    return BDH_OK;
}

const bdh_backend bdh_reference_backend = {
    .name = "reference",
    .observes = true,
    .check_params = ref_check_params,
    .model_init = ref_model_init,
    .model_free = ref_model_free,
    .state_init = ref_state_init,
    .state_free = ref_state_free,
    .state_reset = ref_state_reset,
    .state_copy = ref_state_copy,
    .state_read = ref_state_read,
    .state_write = ref_state_write,
    .state_rows = ref_state_rows,
    .activity = NULL,
    .step_batch = ref_step_batch,
    .prefill = NULL, /* token by token */
};
