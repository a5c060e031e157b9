/* The CPU backend: its table entry, weight packing and state lifecycle.
 *
 * Packing: every matrix is repacked at load so that each product of the step
 * reads whole rows of D values, one row per neuron (h*N + j) or per token,
 * held as F32, BF16 or F16. Tensors are converted a row or a head at a time
 * straight from the file's bytes, and each one's file pages are dropped once
 * it is packed, so the load's peak memory stays near the weights as held. */
#include "cpu.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- packing */

static bdh_status alloc_matrix(bdh_matrix *mat, bdh_elem type, int64_t rows, int64_t cols, int which)
{
    const size_t bytes = (size_t)rows * (size_t)cols * bdh_elem_size(type);
    *mat = (bdh_matrix){type, rows, cols, bdh_alloc_large(bytes)};
    if (!mat->data)
        return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory allocating %zu bytes for %s", bytes, bdh_tensor_name(which));
    return BDH_OK;
}

/* `count` matrices [r][c] of the file, each transposed into c rows of r. */
static bdh_status pack_transposed(bdh_matrix *dst, const bdh_tensor_view *t, int64_t count, int64_t r, int64_t c)
{
    float *src = malloc((size_t)(r * c) * sizeof(float)), *tmp = malloc((size_t)(r * c) * sizeof(float));
    bdh_status rc = src && tmp ? BDH_OK : bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory repacking weights");
    const size_t es = bdh_elem_size(t->dtype), ws = bdh_elem_size(dst->type);
    for (int64_t i = 0; i < count && rc == BDH_OK; i++) {
        bdh_elem_to_f32(t->dtype, (const uint8_t *)t->data + (size_t)(i * r * c) * es, src, (size_t)(r * c));
        for (int64_t a = 0; a < r; a++)
            for (int64_t b = 0; b < c; b++) tmp[b * r + a] = src[a * c + b];
        bdh_elem_from_f32(dst->type, tmp, (uint8_t *)dst->data + (size_t)(i * r * c) * ws, (size_t)(r * c));
    }
    free(src);
    free(tmp);
    return rc;
}

/* Rows kept as they are in the file, converted to the storage type. */
static bdh_status pack_rows(bdh_matrix *dst, const bdh_tensor_view *t)
{
    const size_t D = (size_t)dst->cols, es = bdh_elem_size(t->dtype), ws = bdh_elem_size(dst->type);
    float *row = malloc(D * sizeof(float));
    if (!row) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory repacking weights");
    for (int64_t i = 0; i < dst->rows; i++) {
        bdh_elem_to_f32(t->dtype, (const uint8_t *)t->data + (size_t)i * D * es, row, D);
        bdh_elem_from_f32(dst->type, row, (uint8_t *)dst->data + (size_t)i * D * ws, D);
    }
    free(row);
    return BDH_OK;
}

/* One matrix: allocate, pack (transposed when `count` > 0), drop its pages. */
static bdh_status pack(bdh_matrix *dst, bdh_elem type, int64_t rows, int64_t cols, const bdh_weight_views *w, int which,
                       int64_t count)
{
    const bdh_tensor_view *t = w->t[which];
    bdh_status rc = alloc_matrix(dst, type, rows, cols, which);
    if (rc == BDH_OK) rc = count > 0 ? pack_transposed(dst, t, count, cols, rows / count) : pack_rows(dst, t);
    bdh_safetensors_release(w->file, t);
    return rc;
}

static void cpu_model_free(bdh_model *m)
{
    cpu_model *c = m->impl;
    if (!c) return;
    bdh_matrix *mats[] = {&c->embed, &c->encoder, &c->encoder_v, &c->decoder, &c->lm_head};
    for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) free(mats[i]->data);
    bdh_pool_free(c->pool);
    free(c);
    m->impl = NULL;
}

static bdh_status cpu_model_init(bdh_model *m, const bdh_weight_views *w)
{
    const int64_t D = m->cfg.n_embd, H = m->cfg.n_head, N = m->cfg.n_neurons, V = m->cfg.vocab_size;
    cpu_model *c = calloc(1, sizeof *c);
    if (!c) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    m->impl = c;
    const bdh_elem type = bdh_weight_elem(m->params.weight_type, w->t[BDH_T_ENCODER]->dtype);
    bdh_status rc;
    if ((rc = pack(&c->embed, type, V, D, w, BDH_T_EMBED, 0)) != BDH_OK ||
        (rc = pack(&c->encoder, type, H * N, D, w, BDH_T_ENCODER, H)) != BDH_OK ||     /* [H][D][N] -> [H*N][D] */
        (rc = pack(&c->encoder_v, type, H * N, D, w, BDH_T_ENCODER_V, H)) != BDH_OK || /* likewise */
        (rc = pack(&c->decoder, type, H * N, D, w, BDH_T_DECODER, 0)) != BDH_OK ||
        (rc = pack(&c->lm_head, type, V, D, w, BDH_T_LM_HEAD, 1)) != BDH_OK ||          /* [D][V] -> [V][D] */
        (rc = bdh_pool_new(m->n_threads, &c->pool)) != BDH_OK) {
        cpu_model_free(m);
        return rc;
    }
    m->weight_bytes = (size_t)m->n_params * bdh_elem_size(type) + (size_t)N * sizeof(float);
    return BDH_OK;
}

/* ------------------------------------------------------------------ state */

static size_t state_bytes(const bdh_model *m) { return bdh_state_floats(&m->cfg) * sizeof(float); }

static void cpu_state_free(bdh_state *s)
{
    cpu_state *c = s->impl;
    if (!c) return;
    bdh_cpu_work_free(c->work);
    free(c->S);
    free(c->active);
    free(c);
    s->impl = NULL;
}

static bdh_status cpu_state_init(bdh_state *s)
{
    const bdh_model *m = s->model;
    cpu_state *c = calloc(1, sizeof *c);
    if (!c) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    s->impl = c;
    c->S = bdh_alloc_large(state_bytes(m));
    /* write every page now: faulting them in later, from inside the steps,
     * made decoding a fresh state erratic (a tenth of the time) */
    if (c->S) memset(c->S, 0, state_bytes(m));
    c->active = calloc(3 * (size_t)m->cfg.n_layer, sizeof(int64_t));
    bdh_status rc = c->S && c->active ? bdh_cpu_work_new(m, &c->work)
                                      : bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory allocating a %zu-byte state", state_bytes(m));
    if (rc != BDH_OK) cpu_state_free(s);
    return rc;
}

static bdh_status cpu_state_reset(bdh_state *s)
{
    cpu_state *c = s->impl;
    memset(c->S, 0, state_bytes(s->model));
    memset(c->active, 0, 3 * (size_t)s->model->cfg.n_layer * sizeof(int64_t));
    c->counted = 0;
    return BDH_OK;
}

static bdh_status cpu_state_copy(bdh_state *dst, const bdh_state *src)
{
    cpu_state *d = dst->impl;
    const cpu_state *c = src->impl;
    memcpy(d->S, c->S, state_bytes(src->model));
    memcpy(d->active, c->active, 3 * (size_t)src->model->cfg.n_layer * sizeof(int64_t));
    d->counted = c->counted;
    return BDH_OK;
}

static bdh_status cpu_state_read(const bdh_state *s, void *dst)
{
    memcpy(dst, cpu_state_of(s)->S, state_bytes(s->model));
    return BDH_OK;
}

static bdh_status cpu_state_write(bdh_state *s, const void *src)
{
    memcpy(cpu_state_of(s)->S, src, state_bytes(s->model));
    return BDH_OK;
}

static const float *cpu_state_rows(const bdh_state *s, int layer, int head)
{
    const bdh_config *c = &s->model->cfg;
    return cpu_state_of(s)->S + ((size_t)layer * c->n_head + head) * c->n_neurons * c->n_embd;
}

static bdh_status cpu_activity(const bdh_state *s, float *xs_frac, float *pair_frac, float *xy_frac)
{
    const bdh_config *c = &s->model->cfg;
    const cpu_state *cs = s->impl;
    const double neurons = (double)c->n_head * c->n_neurons * (double)(cs->counted > 0 ? cs->counted : 1);
    float *out[3] = {xs_frac, pair_frac, xy_frac};
    const double scale[3] = {neurons, neurons / 2, neurons};
    for (int k = 0; k < 3; k++)
        for (int l = 0; out[k] && l < c->n_layer; l++) out[k][l] = (float)(cs->active[3 * l + k] / scale[k]);
    return BDH_OK;
}

static bdh_status cpu_check_params(const bdh_model_params *p)
{
    (void)p; /* every weight type and thread count is fine here */
    return BDH_OK;
}

const bdh_backend bdh_cpu_backend = {
    .name = "cpu",
    .observes = true,
    .check_params = cpu_check_params,
    .model_init = cpu_model_init,
    .model_free = cpu_model_free,
    .state_init = cpu_state_init,
    .state_free = cpu_state_free,
    .state_reset = cpu_state_reset,
    .state_copy = cpu_state_copy,
    .state_read = cpu_state_read,
    .state_write = cpu_state_write,
    .state_rows = cpu_state_rows,
    .activity = cpu_activity,
    .step_batch = bdh_cpu_step_batch,
    .prefill = bdh_cpu_prefill,
};
