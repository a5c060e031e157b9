/* The CPU backend: its table entry, weight packing and state lifecycle.
 *
 * Packing: every matrix is repacked at load so that each product of the step
 * reads whole rows of D values, one row per neuron (h*N + j) or per token,
 * held as F32, BF16, F16 or Q8_0 (weights.c reads the file by those rows).
 * Tensors are converted a row at a time straight from the file's bytes, and
 * each one's file pages are dropped once it is packed, so the load's peak
 * memory stays near the weights as held. */
#include "cpu.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- packing */

static bdh_status alloc_matrix(bdh_matrix *mat, bdh_elem type, int64_t rows, int64_t cols, int which)
{
    const size_t bytes = (size_t)rows * (size_t)cols * bdh_elem_size(type);
    const size_t scale_bytes = type == BDH_ELEM_Q8_0 ? (size_t)rows * bdh_q8_blocks((size_t)cols) * sizeof(uint16_t) : 0;
    *mat = (bdh_matrix){type, rows, cols, bdh_alloc_large(bytes), scale_bytes ? bdh_alloc_large(scale_bytes) : NULL};
    if (!mat->data || (scale_bytes && !mat->scales))
        return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory allocating %zu bytes for %s", bytes + scale_bytes,
                        bdh_tensor_name(which));
    return BDH_OK;
}

/* Held row r of dst from the file: a Q8_0 file's blocks are copied as they
 * are (so a pre-quantized file and quantizing at load give the same bits),
 * anything else goes through float32. */
static void pack_row(bdh_matrix *dst, const bdh_file_rows *f, int64_t r, float *tmp)
{
    const size_t D = (size_t)dst->cols, nb = bdh_q8_blocks(D);
    if (dst->type != BDH_ELEM_Q8_0) {
        bdh_file_row_f32(f, r, tmp);
        bdh_elem_from_f32(dst->type, tmp, (uint8_t *)dst->data + (size_t)r * D * bdh_elem_size(dst->type), D);
    } else if (f->t->dtype == BDH_ELEM_I8) {
        bdh_file_row_q8_part(f, r, 0, (int64_t)D, (int8_t *)dst->data + (size_t)r * D, dst->scales + (size_t)r * nb);
    } else {
        bdh_file_row_f32(f, r, tmp);
        bdh_q8_quantize_row(tmp, D, (int8_t *)dst->data + (size_t)r * D, dst->scales + (size_t)r * nb);
    }
}

/* One matrix: allocate, pack row by row, drop its file pages. */
static bdh_status pack(bdh_matrix *dst, bdh_elem type, const bdh_model *m, const bdh_weight_views *w, int which)
{
    bdh_file_rows f;
    bdh_file_rows_init(&f, w, which, &m->cfg);
    bdh_status rc = alloc_matrix(dst, type, f.rows, f.cols, which);
    float *tmp = rc == BDH_OK ? malloc((size_t)f.cols * sizeof(float)) : NULL;
    if (rc == BDH_OK && !tmp) rc = bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory repacking weights");
    for (int64_t r = 0; rc == BDH_OK && r < f.rows; r++) pack_row(dst, &f, r, tmp);
    free(tmp);
    bdh_safetensors_release(w->file, w->t[which]);
    bdh_safetensors_release(w->file, w->scale[which]);
    return rc;
}

static void cpu_model_free(bdh_model *m)
{
    cpu_model *c = m->impl;
    if (!c) return;
    bdh_matrix *mats[] = {&c->embed, &c->encoder, &c->encoder_v, &c->decoder, &c->lm_head};
    for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) {
        free(mats[i]->data);
        free(mats[i]->scales);
    }
    bdh_pool_free(c->pool);
    free(c);
    m->impl = NULL;
}

static size_t matrix_bytes(const bdh_matrix *mat)
{
    const size_t n = (size_t)mat->rows * (size_t)mat->cols;
    return n * bdh_elem_size(mat->type) + (mat->scales ? (size_t)mat->rows * bdh_q8_blocks((size_t)mat->cols) * 2 : 0);
}

static bdh_status cpu_model_init(bdh_model *m, const bdh_weight_views *w)
{
    cpu_model *c = calloc(1, sizeof *c);
    if (!c) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    m->impl = c;
    const bdh_elem type = bdh_weight_elem(m->params.weight_type, w->t[BDH_T_ENCODER]->dtype);
    const bdh_elem small = type == BDH_ELEM_Q8_0 ? BDH_ELEM_F32 : type; /* embed, lm_head */
    bdh_matrix *mats[BDH_T_FREQS] = {&c->embed, &c->encoder, &c->encoder_v, &c->decoder, &c->lm_head};
    bdh_status rc = BDH_OK;
    for (int i = 0; i < BDH_T_FREQS && rc == BDH_OK; i++) rc = pack(mats[i], bdh_quantizable(i) ? type : small, m, w, i);
    if (rc == BDH_OK) rc = bdh_pool_new(m->n_threads, &c->pool);
    if (rc != BDH_OK) {
        cpu_model_free(m);
        return rc;
    }
    m->weight_bytes = (size_t)m->cfg.n_neurons * sizeof(float);
    for (int i = 0; i < BDH_T_FREQS; i++) m->weight_bytes += matrix_bytes(mats[i]);
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
