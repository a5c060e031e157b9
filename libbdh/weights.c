/* Reading the file's weight matrices by the rows every backend's products
 * use: one row of D values per neuron (h*N + j) or per token, whatever the
 * file's layout and element type (F32, F16, BF16, or Q8_0: I8 values with an
 * F16 scale tensor beside them, docs/format.md).
 *
 *   embed [V][D], decoder [H*N][D]     rows as stored ("direct")
 *   encoder, encoder_v [H][D][N]       row h*N + j is column j of head h
 *   lm_head [D][V]                     row v is column v
 * Q8_0 scales have the same layout with D replaced by ceil(D/32) blocks. */
#include "internal.h"

void bdh_file_rows_init(bdh_file_rows *f, const bdh_weight_views *w, int which, const bdh_config *c)
{
    const int64_t D = c->n_embd, HN = (int64_t)c->n_head * c->n_neurons;
    f->t = w->t[which];
    f->scale = w->scale[which];
    f->cols = D;
    switch (which) {
    case BDH_T_ENCODER:
    case BDH_T_ENCODER_V: f->rows = HN, f->count = c->n_head; break;
    case BDH_T_LM_HEAD: f->rows = c->vocab_size, f->count = 1; break;
    case BDH_T_EMBED: f->rows = c->vocab_size, f->count = 0; break;
    default: f->rows = HN, f->count = 0; break;
    }
}

/* Where row r starts and how far apart its elements are, for a tensor whose
 * rows are `len` long (D for values, the block count for scales). */
static void locate(const bdh_file_rows *f, int64_t r, int64_t len, size_t *base, size_t *stride)
{
    if (f->count == 0) {
        *base = (size_t)(r * len);
        *stride = 1;
    } else {
        const int64_t c = f->rows / f->count, i = r / c, j = r % c;
        *base = (size_t)(i * len * c + j);
        *stride = (size_t)c;
    }
}

static float element(const bdh_tensor_view *t, size_t at)
{
    float v;
    bdh_elem_to_f32(t->dtype, (const uint8_t *)t->data + at * bdh_elem_size(t->dtype), &v, 1);
    return v;
}

void bdh_file_row_f32(const bdh_file_rows *f, int64_t r, float *out)
{
    size_t base, stride;
    locate(f, r, f->cols, &base, &stride);
    if (f->t->dtype == BDH_ELEM_I8) {
        int8_t q[BDH_Q8_BLOCK * 8];
        uint16_t s[8];
        for (int64_t d0 = 0; d0 < f->cols; d0 += BDH_Q8_BLOCK * 8) {
            const int64_t n = f->cols - d0 < BDH_Q8_BLOCK * 8 ? f->cols - d0 : BDH_Q8_BLOCK * 8;
            bdh_file_row_q8_part(f, r, d0, n, q, s);
            bdh_q8_dequantize_row(q, s, (size_t)n, out + d0);
        }
    } else if (stride == 1) {
        bdh_elem_to_f32(f->t->dtype, (const uint8_t *)f->t->data + base * bdh_elem_size(f->t->dtype), out, (size_t)f->cols);
    } else {
        for (int64_t d = 0; d < f->cols; d++) out[d] = element(f->t, base + (size_t)d * stride);
    }
}

void bdh_file_row_q8_part(const bdh_file_rows *f, int64_t r, int64_t d0, int64_t n, int8_t *q, uint16_t *s)
{
    size_t base, stride, sbase, sstride;
    locate(f, r, f->cols, &base, &stride);
    locate(f, r, (int64_t)bdh_q8_blocks((size_t)f->cols), &sbase, &sstride);
    const int8_t *qv = f->t->data;
    const uint8_t *sv = f->scale->data;
    for (int64_t d = 0; d < n; d++) q[d] = qv[base + (size_t)(d0 + d) * stride];
    for (int64_t b = 0; b * BDH_Q8_BLOCK < n; b++)
        memcpy(&s[b], sv + 2 * (sbase + (size_t)(d0 / BDH_Q8_BLOCK + b) * sstride), 2);
}

void bdh_file_row_scatter(const bdh_file_rows *f, int64_t r, const float *row, float *dst)
{
    size_t base, stride;
    locate(f, r, f->cols, &base, &stride);
    for (int64_t d = 0; d < f->cols; d++) dst[base + (size_t)d * stride] = row[d];
}

void bdh_file_row_scatter_q8(const bdh_file_rows *f, int64_t r, const int8_t *q, const uint16_t *s, int8_t *qdst,
                             uint16_t *sdst)
{
    size_t base, stride;
    locate(f, r, f->cols, &base, &stride);
    for (int64_t d = 0; d < f->cols; d++) qdst[base + (size_t)d * stride] = q[d];
    const int64_t nb = (int64_t)bdh_q8_blocks((size_t)f->cols);
    locate(f, r, nb, &base, &stride);
    for (int64_t b = 0; b < nb; b++) sdst[base + (size_t)b * stride] = s[b];
}
