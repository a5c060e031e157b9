/* The fast CPU step: sparse-aware, threaded, batched. The same equations as
 * forward_ref.c (read that first), organised around three facts:
 *
 *  - xs = relu(x @ encoder) is mostly zero, and q = rope(xs) is non-zero only
 *    on pairs (2i, 2i+1) with a non-zero member, so the state read a = S^T q
 *    and the update S += q x^T touch only those rows, in one pass each;
 *  - ys is needed only where xs > 0, and the decoder only where xs*ys > 0;
 *  - every weight matrix is stored one row of D values per neuron
 *    (backend.c repacks at load), so each of these is a gather of whole rows.
 *
 * Work is split into fixed neuron slices per head (bdh_cpu_slices). A slice
 * never splits a RoPE pair, so one task can compute xs for its slice and at
 * once read and update the matching state rows. Sums over neurons are made
 * per slice and then over slices in order: the result does not depend on the
 * number of threads or on how many states are stepped together.
 *
 * Per layer: phase 1 (tasks = slices): xs, q, state read+update, partial a;
 * reduce a and LayerNorm; phase 2 (tasks = slices): ys, xy and the partial
 * decoder sums; reduce y, LayerNorm, residual, LayerNorm. Several states
 * advance together by looping over them inside each task, so each weight row
 * is read once per batch. */
#include "cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SLICES 16

typedef struct cpu_work {
    float *x;        /* [D] residual stream */
    float *y;        /* [D] decoder output */
    float *cos;      /* [N] RoPE tables at this state's position */
    float *sin;      /* [N] */
    float *xs;       /* [H*N] */
    float *q;        /* [H*N] valid on active pairs only */
    int32_t *pairs;  /* per slice: active pair indices, from the slice's first pair */
    int32_t *npairs; /* [H*S] */
    int32_t *nxs;    /* [H*S] neurons with xs > 0 per slice */
    int32_t *nxy;    /* [H*S] neurons with xs*ys > 0 per slice */
    float *a_part;   /* [H*S][D] state read per slice */
    float *a;        /* [H][D] LN(S^T q) */
    float *y_part;   /* [H*S][D] decoder sum per slice */
    float *xy;       /* [H*N] xs * ys, written only while observed */
    int32_t *rows;   /* [H*N] per slice: rows of the neurons with xs > 0 */
    float *ys;       /* [H*N] per slice: ys, then xy, of those neurons */
} cpu_work;

int bdh_cpu_slices(const bdh_config *c)
{
    const int pairs = c->n_neurons / 2;
    return pairs < MAX_SLICES ? pairs : MAX_SLICES;
}

/* Neurons [*j0, *j1) of slice k: boundaries are even, so pairs stay whole. */
static void slice_range(int N, int S, int k, int *j0, int *j1)
{
    *j0 = (int)((int64_t)(N / 2) * k / S) * 2;
    *j1 = (int)((int64_t)(N / 2) * (k + 1) / S) * 2;
}

bdh_status bdh_cpu_work_new(const bdh_model *m, void **out)
{
    const size_t D = (size_t)m->cfg.n_embd, N = (size_t)m->cfg.n_neurons, H = (size_t)m->cfg.n_head;
    const size_t HS = H * (size_t)bdh_cpu_slices(&m->cfg);
    cpu_work *w = calloc(1, sizeof *w);
    const size_t floats = 2 * D + 2 * N + 4 * H * N + HS * D + H * D + HS * D;
    float *buf = w ? calloc(floats, sizeof(float)) : NULL;
    int32_t *ints = buf ? calloc(H * N / 2 + 3 * HS + H * N, sizeof(int32_t)) : NULL;
    if (!ints) {
        free(buf);
        free(w);
        return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory allocating the CPU work buffers");
    }
    w->x = buf;
    w->y = w->x + D;
    w->cos = w->y + D;
    w->sin = w->cos + N;
    w->xs = w->sin + N;
    w->q = w->xs + H * N;
    w->a_part = w->q + H * N;
    w->a = w->a_part + HS * D;
    w->y_part = w->a + H * D;
    w->xy = w->y_part + HS * D;
    w->ys = w->xy + H * N;
    w->pairs = ints;
    w->npairs = ints + H * N / 2;
    w->nxs = w->npairs + HS;
    w->nxy = w->nxs + HS;
    w->rows = w->nxy + HS;
    *out = w;
    return BDH_OK;
}

void bdh_cpu_work_free(void *work)
{
    cpu_work *w = work;
    if (!w) return;
    free(w->x);
    free(w->pairs);
    free(w);
}

/* One batch step in flight: what the pool's tasks read. */
typedef struct job {
    const bdh_model *m;
    bdh_state *const *states;
    const int32_t *tokens;
    size_t n;
    int layer;
    bool observed;   /* some state has an observer or monitors */
} job;

static cpu_work *work_of(const job *jb, size_t b) { return cpu_state_of(jb->states[b])->work; }

/* Hint rows of a gather into cache ahead of use (the hardware prefetcher
 * does not follow jumps between rows). */
static void prefetch_rows(const void *p, size_t bytes)
{
    for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch((const char *)p + off, 0, 3);
}

/* xs, q and the state rows of one slice of head h, for state b: list the
 * active pairs, then read and update their rows, fetching the next ahead. */
static void slice_state(const job *jb, size_t b, int h, int k, int j0, int j1)
{
    const bdh_model *m = jb->m;
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons, S = bdh_cpu_slices(&m->cfg);
    cpu_work *w = work_of(jb, b);
    const float *xs = w->xs + (size_t)h * N;
    float *q = w->q + (size_t)h * N;
    float *S_head = cpu_state_of(jb->states[b])->S + ((size_t)jb->layer * m->cfg.n_head + h) * N * D;
    int32_t *pairs = w->pairs + ((size_t)h * N + j0) / 2;
    float *acc = w->a_part + ((size_t)h * S + k) * D;
    int np = 0, nxs = 0;

    for (int j = j0; j < j1; j += 2) {
        if (xs[j] == 0.0f && xs[j + 1] == 0.0f) continue;
        nxs += (xs[j] != 0.0f) + (xs[j + 1] != 0.0f);
        pairs[np++] = j / 2;
        bdh_rope_apply(xs + j, w->cos + j, w->sin + j, 2, q + j);
    }
    memset(acc, 0, (size_t)D * sizeof(float));
    const size_t pair_bytes = 2 * (size_t)D * sizeof(float);
    for (int p = 0; p < np; p++) {
        if (p + 1 < np) prefetch_rows(S_head + (size_t)pairs[p + 1] * 2 * D, pair_bytes);
        const int j = 2 * pairs[p];
        bdh_state_row_update(S_head + (size_t)j * D, q[j], w->x, acc, D);
        bdh_state_row_update(S_head + (size_t)(j + 1) * D, q[j + 1], w->x, acc, D);
    }
    w->npairs[h * S + k] = np;
    w->nxs[h * S + k] = nxs;
}

/* Phase 1 task: encoder rows of the slice for every state (the rows stay in
 * cache from one state to the next), then each state's rows of the slice. */
static void phase_encode(void *ctx, int tid, int n_threads)
{
    const job *jb = ctx;
    const bdh_model *m = jb->m;
    const int N = m->cfg.n_neurons, S = bdh_cpu_slices(&m->cfg), tasks = m->cfg.n_head * S;
    for (int t = tid; t < tasks; t += n_threads) {
        const int h = t / S, k = t % S;
        int j0, j1;
        slice_range(N, S, k, &j0, &j1);
        const int64_t row0 = (int64_t)h * N + j0;
        for (size_t b = 0; b < jb->n; b++) {
            float *xs = work_of(jb, b)->xs + row0;
            bdh_rows_dot(&cpu_model_of(m)->encoder, NULL, row0, j1 - j0, work_of(jb, b)->x, xs);
            bdh_relu(xs, (size_t)(j1 - j0));
        }
        for (size_t b = 0; b < jb->n; b++) slice_state(jb, b, h, k, j0, j1);
    }
}

/* The slice's decoder rows for one state: ys for the neurons with xs > 0
 * (encoder_v rows, four at a time), gate, then add xy * decoder row to the
 * slice's partial y, fetching the next row ahead. */
static void slice_decode(const job *jb, size_t b, int h, int t, int j0, int j1)
{
    const bdh_model *m = jb->m;
    const int D = m->cfg.n_embd, N = m->cfg.n_neurons;
    cpu_work *w = work_of(jb, b);
    const int64_t row0 = (int64_t)h * N + j0;
    int32_t *rows = w->rows + row0;
    float *val = w->ys + row0, *acc = w->y_part + (size_t)t * D;
    int n = 0;
    for (int j = 0; j < j1 - j0; j++)
        if (w->xs[row0 + j] != 0.0f) rows[n++] = (int32_t)(row0 + j);
    bdh_rows_dot(&cpu_model_of(m)->encoder_v, rows, 0, n, w->a + (size_t)h * D, val);
    int nxy = 0;
    for (int k = 0; k < n; k++) { /* keep the rows with xy > 0, with xy */
        const float xy = val[k] > 0.0f ? w->xs[rows[k]] * val[k] : 0.0f;
        if (xy == 0.0f) continue;
        rows[nxy] = rows[k];
        val[nxy++] = xy;
    }
    memset(acc, 0, (size_t)D * sizeof(float));
    if (jb->observed) memset(w->xy + row0, 0, (size_t)(j1 - j0) * sizeof(float));
    const size_t row_bytes = (size_t)D * bdh_elem_size(cpu_model_of(m)->decoder.type);
    for (int k = 0; k < nxy; k++) {
        if (k + 1 < nxy) prefetch_rows((const uint8_t *)cpu_model_of(m)->decoder.data + (size_t)rows[k + 1] * row_bytes, row_bytes);
        bdh_row_axpy(&cpu_model_of(m)->decoder, rows[k], val[k], acc);
        if (jb->observed) w->xy[rows[k]] = val[k];
    }
    w->nxy[t] = nxy;
}

/* Phase 2 task: a slice, for every state. */
static void phase_decode(void *ctx, int tid, int n_threads)
{
    const job *jb = ctx;
    const bdh_model *m = jb->m;
    const int N = m->cfg.n_neurons, S = bdh_cpu_slices(&m->cfg), tasks = m->cfg.n_head * S;
    for (int t = tid; t < tasks; t += n_threads) {
        int j0, j1;
        slice_range(N, S, t % S, &j0, &j1);
        for (size_t b = 0; b < jb->n; b++) slice_decode(jb, b, t / S, t, j0, j1);
    }
}

/* out[D] = sum of parts[0..n) in order */
static void sum_parts(const float *parts, int n, int D, float *out)
{
    memcpy(out, parts, (size_t)D * sizeof(float));
    for (int i = 1; i < n; i++)
        for (int d = 0; d < D; d++) out[d] += parts[(size_t)i * D + d];
}

static void finish_state_read(const bdh_model *m, cpu_work *w)
{
    const int D = m->cfg.n_embd, S = bdh_cpu_slices(&m->cfg);
    for (int h = 0; h < m->cfg.n_head; h++) {
        float *a = w->a + (size_t)h * D;
        sum_parts(w->a_part + (size_t)h * S * D, S, D, a);
        bdh_layernorm(a, D);
    }
}

static int64_t total(const int32_t *v, int n)
{
    int64_t s = 0;
    for (int i = 0; i < n; i++) s += v[i];
    return s;
}

static void finish_layer(const bdh_model *m, bdh_state *s, int layer)
{
    cpu_work *w = cpu_state_of(s)->work;
    const int D = m->cfg.n_embd, HS = m->cfg.n_head * bdh_cpu_slices(&m->cfg);
    cpu_state_of(s)->active[3 * layer] += total(w->nxs, HS);
    cpu_state_of(s)->active[3 * layer + 1] += total(w->npairs, HS);
    cpu_state_of(s)->active[3 * layer + 2] += total(w->nxy, HS);
    sum_parts(w->y_part, m->cfg.n_head * bdh_cpu_slices(&m->cfg), D, w->y);
    bdh_layernorm(w->y, D);
    for (int d = 0; d < D; d++) w->x[d] += w->y[d];
    bdh_layernorm(w->x, D);
}

static void begin_token(const bdh_model *m, bdh_state *s, int32_t token)
{
    cpu_work *w = cpu_state_of(s)->work;
    bdh_row_f32(&cpu_model_of(m)->embed, token, w->x);
    bdh_layernorm(w->x, m->cfg.n_embd);
    bdh_rope_tables(m->freqs, m->cfg.n_neurons, s->position, w->cos, w->sin);
}

bdh_status bdh_cpu_step_batch(bdh_state *const *states, const int32_t *tokens, size_t n, float *logits)
{
    const bdh_model *m = states[0]->model;
    job jb = {m, states, tokens, n, 0, false};
    for (size_t b = 0; b < n; b++) {
        begin_token(m, states[b], tokens[b]);
        jb.observed |= bdh_observing(states[b]);
    }
    for (jb.layer = 0; jb.layer < m->cfg.n_layer; jb.layer++) {
        bdh_pool_run(cpu_model_of(m)->pool, phase_encode, &jb);
        for (size_t b = 0; b < n; b++) finish_state_read(m, work_of(&jb, b));
        bdh_pool_run(cpu_model_of(m)->pool, phase_decode, &jb);
        for (size_t b = 0; b < n; b++) {
            finish_layer(m, states[b], jb.layer);
            if (bdh_observing(states[b])) bdh_observe_layer(states[b], jb.layer, tokens[b], work_of(&jb, b)->xs, work_of(&jb, b)->xy);
        }
    }
    const int V = m->cfg.vocab_size;
    for (size_t b = 0; b < n; b++) {
        if (logits)
            bdh_rows_dot(&cpu_model_of(m)->lm_head, NULL, 0, V, work_of(&jb, b)->x, logits + b * V);
        states[b]->position++;
        cpu_state_of(states[b])->counted++;
    }
    return BDH_OK;
}
