/* Q8_0 weight files (docs/format.md, "Quantized files"): reading their
 * scales, dequantized copies for backends that hold floats, and writing them
 * (bdh_model_quantize, behind `bdh quantize`).
 *
 * A quantized file keeps the reference's tensor names and layouts; encoder,
 * encoder_v and decoder become I8 with an F16 tensor "<name>.scale" beside
 * each, one scale per block of 32 values along D:
 *   encoder, encoder_v  I8 [H][D][N]    scale [H][ceil(D/32)][N]
 *   decoder             I8 [H*N][D]     scale [H*N][ceil(D/32)]
 * and metadata quantization = "q8_0", q8_0_block = "32", and q8_0_fingerprint:
 * the fingerprint of the float file quantized at load, which a model loaded
 * from the quantized file takes, so the two share state blobs (they hold the
 * same int8 blocks). */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ reading */

/* The scale tensor's expected shape for tensor `which` of config c. */
int bdh_q8_scale_shape(int which, const bdh_config *c, int64_t shape[3])
{
    const int64_t nb = (int64_t)bdh_q8_blocks((size_t)c->n_embd);
    if (which == BDH_T_DECODER) {
        shape[0] = (int64_t)c->n_head * c->n_neurons;
        shape[1] = nb;
        return 2;
    }
    shape[0] = c->n_head;
    shape[1] = nb;
    shape[2] = c->n_neurons;
    return 3;
}

static bdh_status find_scale(const bdh_safetensors *st, bdh_weight_views *w, int which, const bdh_config *c)
{
    const bdh_tensor_view *t = w->t[which];
    char name[300];
    snprintf(name, sizeof name, "%s.scale", t->name);
    const bdh_tensor_view *s = bdh_safetensors_find(st, name);
    if (t->dtype != BDH_ELEM_I8) {
        if (s) return bdh_fail(BDH_ERR_FORMAT, "tensor %s has scales (%s) but is %s, not I8", t->name, name, bdh_elem_name(t->dtype));
        return BDH_OK;
    }
    if (!s) return bdh_fail(BDH_ERR_FORMAT, "tensor %s is I8 (Q8_0) but the file has no %s", t->name, name);
    int64_t shape[3];
    const int nd = bdh_q8_scale_shape(which, c, shape);
    bool ok = s->dtype == BDH_ELEM_F16 && s->n_dims == nd;
    for (int i = 0; ok && i < nd; i++) ok = s->shape[i] == shape[i];
    if (!ok)
        return bdh_fail(BDH_ERR_FORMAT, "tensor %s must be F16 of shape [%lld, %lld%s%lld] (one scale per 32 values along n_embd)",
                        name, (long long)shape[0], (long long)shape[1], nd == 3 ? ", " : "", nd == 3 ? (long long)shape[2] : 0LL);
    w->scale[which] = s;
    return BDH_OK;
}

bdh_status bdh_q8_find_scales(const bdh_safetensors *st, bdh_weight_views *w, const bdh_config *c)
{
    int n = 0;
    for (int i = 0; i < BDH_T_COUNT; i++) {
        if (!w->t[i] || !bdh_quantizable(i)) continue;
        bdh_status rc = find_scale(st, w, i, c);
        if (rc != BDH_OK) return rc;
        n += w->scale[i] != NULL;
    }
    const bool any = n > 0;
    if (any && n != 3)
        return bdh_fail(BDH_ERR_FORMAT, "only %d of encoder, encoder_v and decoder are Q8_0: a quantized file has all three", n);
    const char *q = bdh_safetensors_meta(st, "quantization");
    if (any && (!q || strcmp(q, "q8_0") != 0))
        return bdh_fail(BDH_ERR_FORMAT, "the file has I8 weights but its metadata quantization is %s%s%s, not \"q8_0\"",
                        q ? "\"" : "", q ? q : "missing", q ? "\"" : "");
    if (!any && q) return bdh_fail(BDH_ERR_FORMAT, "metadata says quantization \"%s\" but no weight is I8 with scales", q);
    return BDH_OK;
}

bdh_status bdh_q8_dequantized_views(const bdh_config *c, bdh_weight_views *w, bdh_q8_copies *copies)
{
    for (int i = 0; i < BDH_T_COUNT; i++) {
        if (!w->scale[i]) continue;
        bdh_file_rows f;
        bdh_file_rows_init(&f, w, i, c);
        float *row = malloc((size_t)f.cols * sizeof(float));
        copies->data[i] = malloc((size_t)(f.rows * f.cols) * sizeof(float));
        if (!row || !copies->data[i]) {
            free(row);
            return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory dequantizing %s", bdh_tensor_name(i));
        }
        for (int64_t r = 0; r < f.rows; r++) {
            bdh_file_row_f32(&f, r, row);
            bdh_file_row_scatter(&f, r, row, copies->data[i]);
        }
        free(row);
        copies->views[i] = *w->t[i];
        copies->views[i].dtype = BDH_ELEM_F32;
        copies->views[i].data = copies->data[i];
        copies->views[i].nbytes = (size_t)(f.rows * f.cols) * sizeof(float);
        bdh_safetensors_release(w->file, w->t[i]);
        bdh_safetensors_release(w->file, w->scale[i]);
        w->t[i] = &copies->views[i];
        w->scale[i] = NULL;
    }
    return BDH_OK;
}

void bdh_q8_copies_free(bdh_q8_copies *copies)
{
    for (int i = 0; i < BDH_T_COUNT; i++) free(copies->data[i]);
}

/* The largest |value| a Q8_0 block can hold: 127 times the largest F16 scale. */
#define Q8_MAX (127.0f * 65504.0f)

bdh_status bdh_q8_check_range(const bdh_weight_views *w)
{
    for (int i = 0; i < BDH_T_COUNT; i++) {
        const bdh_tensor_view *t = w->t[i];
        if (!t || !bdh_quantizable(i) || !bdh_elem_is_float(t->dtype)) continue;
        const size_t n = t->nbytes / bdh_elem_size(t->dtype), es = bdh_elem_size(t->dtype);
        for (size_t k = 0; k < n; k++) {
            float v;
            bdh_elem_to_f32(t->dtype, (const uint8_t *)t->data + k * es, &v, 1);
            if (fabsf(v) > Q8_MAX)
                return bdh_fail(BDH_ERR_UNSUPPORTED, "tensor %s has |value| %g at index %zu, beyond what Q8_0 holds (%g)",
                                bdh_tensor_name(i), (double)fabsf(v), k, (double)Q8_MAX);
        }
    }
    return BDH_OK;
}

/* ------------------------------------------------------------------ writing */

/* Quantize tensor `which` of w in its file layout into q and s. */
bdh_status bdh_q8_quantize_tensor(const bdh_config *c, const bdh_weight_views *w, int which, int8_t *q, uint16_t *s)
{
    bdh_file_rows f;
    bdh_file_rows_init(&f, w, which, c);
    const size_t D = (size_t)f.cols;
    float *row = malloc(D * sizeof(float));
    int8_t *rq = malloc(D);
    uint16_t *rs = malloc(bdh_q8_blocks(D) * sizeof *rs);
    bdh_status rc = row && rq && rs ? BDH_OK : bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory quantizing");
    for (int64_t r = 0; rc == BDH_OK && r < f.rows; r++) {
        bdh_file_row_f32(&f, r, row);
        bdh_q8_quantize_row(row, D, rq, rs);
        bdh_file_row_scatter_q8(&f, r, rq, rs, q, s);
    }
    free(row);
    free(rq);
    free(rs);
    return rc;
}

/* The Q8_0 case of bdh_model_convert (convert.c), refusing an input that
 * is already quantized. */
bdh_status bdh_model_quantize(const char *in_path, const char *out_path, bdh_weight_type type)
{
    if (type != BDH_WEIGHTS_Q8_0)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_model_quantize: type %d: only BDH_WEIGHTS_Q8_0 is written", (int)type);
    return bdh_convert_file("bdh_model_quantize", in_path, out_path, type, true);
}
