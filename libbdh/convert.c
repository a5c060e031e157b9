/* Writing a checkpoint in the canonical layout (bdh_model_convert, behind
 * `bdh convert` and `bdh quantize`): whatever layout the loader accepted
 * (checkpoint.c: directories, prefixes, bdh-transformers' names, config.json),
 * the output has the reference's tensor names and layouts, the whole
 * configuration in __metadata__, and the weights in the asked type:
 *
 *   F32, BF16, F16   every weight matrix in that type (a Q8_0 input is
 *                    dequantized first: exactly scale * q)
 *   Q8_0             encoder, encoder_v, decoder as int8 blocks + F16 scales
 *                    (quantized here, or a Q8_0 input's blocks as stored);
 *                    embed and lm_head as stored
 *   AS_STORED        every tensor in the input's own type
 *
 * attn.freqs is always float32 (the reference keeps it so), computed when
 * the checkpoint has none. The file goes through the atomic writer
 * (st_write.c): a failure leaves an existing out_path as it was. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const config_keys[] = {"n_layer", "n_embd", "n_head", "vocab_size", "mlp_internal_dim_multiplier"};
#define N_CONFIG_KEYS (int)(sizeof config_keys / sizeof *config_keys)
static const char *const scale_names[BDH_T_COUNT] = {NULL, "encoder.scale", "encoder_v.scale", "decoder.scale"};

/* What is being written: the tensors, the buffers made for them, the
 * metadata pairs and the strings they point to. */
typedef struct out_file {
    bdh_out_tensor t[2 * BDH_T_COUNT];
    int n;
    void *owned[2 * BDH_T_COUNT];
    int n_owned;
    const char **meta; /* flat pairs */
    int n_meta;
    char values[N_CONFIG_KEYS + 1][24];
    float *freqs;
} out_file;

static void out_free(out_file *o)
{
    for (int i = 0; i < o->n_owned; i++) free(o->owned[i]);
    free(o->meta);
    free(o->freqs);
}

static void *owned(out_file *o, size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p) o->owned[o->n_owned++] = p;
    return p;
}

static bdh_out_tensor *add(out_file *o, const char *name, const bdh_tensor_view *shape_of, bdh_elem dtype, const void *data,
                           size_t nbytes)
{
    bdh_out_tensor *t = &o->t[o->n++];
    *t = (bdh_out_tensor){name, dtype, shape_of->n_dims, {0}, data, nbytes};
    memcpy(t->shape, shape_of->shape, sizeof t->shape);
    return t;
}

/* The float type a matrix is written in. */
static bdh_elem float_type(bdh_weight_type type, bdh_elem stored)
{
    switch (type) {
    case BDH_WEIGHTS_F32: return BDH_ELEM_F32;
    case BDH_WEIGHTS_BF16: return BDH_ELEM_BF16;
    case BDH_WEIGHTS_F16: return BDH_ELEM_F16;
    default: return stored;
    }
}

/* Tensor t in element type `to`: its own bytes, or a converted copy. */
static bdh_status add_converted(out_file *o, const char *name, const bdh_tensor_view *t, bdh_elem to)
{
    if (to == t->dtype) {
        add(o, name, t, to, t->data, t->nbytes);
        return BDH_OK;
    }
    const size_t n = t->nbytes / bdh_elem_size(t->dtype);
    uint8_t *dst = owned(o, n * bdh_elem_size(to));
    if (!dst) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory converting %s", name);
    float chunk[1024];
    for (size_t i = 0; i < n; i += 1024) {
        const size_t k = n - i < 1024 ? n - i : 1024;
        bdh_elem_to_f32(t->dtype, (const uint8_t *)t->data + i * bdh_elem_size(t->dtype), chunk, k);
        bdh_elem_from_f32(to, chunk, dst + i * bdh_elem_size(to), k);
    }
    add(o, name, t, to, dst, n * bdh_elem_size(to));
    return BDH_OK;
}

/* Tensor `which` as Q8_0: the input's blocks, or quantized here. */
static bdh_status add_q8(out_file *o, const bdh_config *c, const bdh_weight_views *w, int which)
{
    const bdh_tensor_view *t = w->t[which];
    if (w->scale[which]) {
        add(o, bdh_tensor_name(which), t, BDH_ELEM_I8, t->data, t->nbytes);
        add(o, scale_names[which], w->scale[which], BDH_ELEM_F16, w->scale[which]->data, w->scale[which]->nbytes);
        return BDH_OK;
    }
    const size_t numel = t->nbytes / bdh_elem_size(t->dtype);
    const size_t nb = numel / (size_t)c->n_embd * bdh_q8_blocks((size_t)c->n_embd);
    int8_t *q = owned(o, numel);
    uint16_t *s = owned(o, nb * sizeof *s);
    if (!q || !s) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory quantizing %s", bdh_tensor_name(which));
    bdh_status rc = bdh_q8_quantize_tensor(c, w, which, q, s);
    if (rc != BDH_OK) return rc;
    add(o, bdh_tensor_name(which), t, BDH_ELEM_I8, q, numel);
    bdh_out_tensor *st = add(o, scale_names[which], t, BDH_ELEM_F16, s, nb * sizeof *s);
    int64_t shape[3];
    st->n_dims = bdh_q8_scale_shape(which, c, shape);
    memcpy(st->shape, shape, sizeof shape);
    return BDH_OK;
}

/* attn.freqs in float32: the file's, or the reference's default. */
static bdh_status add_freqs(out_file *o, const bdh_config *c, const bdh_tensor_view *t)
{
    if (t) return add_converted(o, bdh_tensor_name(BDH_T_FREQS), t, BDH_ELEM_F32);
    if (!(o->freqs = malloc((size_t)c->n_neurons * sizeof(float)))) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    bdh_default_freqs(o->freqs, c->n_neurons);
    const bdh_tensor_view shape = {.n_dims = 4, .shape = {1, 1, 1, c->n_neurons}};
    add(o, bdh_tensor_name(BDH_T_FREQS), &shape, BDH_ELEM_F32, o->freqs, (size_t)c->n_neurons * sizeof(float));
    return BDH_OK;
}

static bool is_config_key(const char *k)
{
    for (int i = 0; i < N_CONFIG_KEYS; i++)
        if (strcmp(k, config_keys[i]) == 0) return true;
    return false;
}

static bool is_q8_key(const char *k) { return strncmp(k, "q8_0", 4) == 0 || strcmp(k, "quantization") == 0; }

/* The input's other keys, the configuration as resolved (from metadata,
 * config.json or shapes), then the Q8_0 keys when blocks are written:
 * a Q8_0 input's own (its fingerprint stays its source's), or new ones. */
static bdh_status build_meta(out_file *o, const bdh_safetensors *in, const bdh_config *c, const bdh_weight_views *w, bool q8_out)
{
    const bool q8_in = w->scale[BDH_T_ENCODER] != NULL, keep_q8 = q8_out && q8_in;
    if (!(o->meta = malloc((size_t)(in->n_meta + N_CONFIG_KEYS + 3) * 2 * sizeof *o->meta)))
        return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    int m = 0;
    for (int i = 0; i < in->n_meta; i++) {
        const char *k = in->meta_keys[i];
        if (is_config_key(k) || (is_q8_key(k) && !keep_q8)) continue;
        o->meta[2 * m] = k;
        o->meta[2 * m++ + 1] = in->meta_values[i];
    }
    const int32_t v[N_CONFIG_KEYS] = {c->n_layer, c->n_embd, c->n_head, c->vocab_size, c->mlp_internal_dim_multiplier};
    for (int i = 0; i < N_CONFIG_KEYS; i++) {
        snprintf(o->values[i], sizeof o->values[i], "%d", (int)v[i]);
        o->meta[2 * m] = config_keys[i];
        o->meta[2 * m++ + 1] = o->values[i];
    }
    if (q8_out && !q8_in) {
        snprintf(o->values[N_CONFIG_KEYS], sizeof o->values[0], "%016llx", (unsigned long long)bdh_weights_fingerprint(c, w, true));
        const char *q8[6] = {"quantization", "q8_0", "q8_0_block", "32", "q8_0_fingerprint", o->values[N_CONFIG_KEYS]};
        memcpy(o->meta + 2 * m, q8, sizeof q8);
        m += 3;
    }
    o->n_meta = m;
    return BDH_OK;
}

static bdh_status collect(out_file *o, const bdh_safetensors *st, const bdh_config *c, const bdh_weight_views *w,
                          bdh_weight_type type)
{
    const bool q8_out = type == BDH_WEIGHTS_Q8_0 || (type == BDH_WEIGHTS_AS_STORED && w->scale[BDH_T_ENCODER]);
    bdh_status rc = q8_out && !w->scale[BDH_T_ENCODER] ? bdh_q8_check_range(w) : BDH_OK;
    for (int i = 0; i < BDH_T_COUNT && rc == BDH_OK; i++) {
        if (i == BDH_T_FREQS) rc = add_freqs(o, c, w->t[i]);
        else if (q8_out && bdh_quantizable(i)) rc = add_q8(o, c, w, i);
        else if (type == BDH_WEIGHTS_Q8_0) rc = add_converted(o, bdh_tensor_name(i), w->t[i], w->t[i]->dtype);
        else rc = add_converted(o, bdh_tensor_name(i), w->t[i], float_type(type, w->t[i]->dtype));
    }
    return rc == BDH_OK ? build_meta(o, st, c, w, q8_out) : rc;
}

bdh_status bdh_convert_file(const char *fn, const char *in_path, const char *out_path, bdh_weight_type type, bool refuse_q8_input)
{
    if (!in_path || !out_path) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "%s: a path is NULL", fn);
    if ((int)type < BDH_WEIGHTS_F32 || type > BDH_WEIGHTS_Q8_0)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "%s: weight type %d is not one of BDH_WEIGHTS_*", fn, (int)type);
    if (bdh_same_file(in_path, out_path)) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "%s: the output '%s' is the input", fn, out_path);
    bdh_safetensors st;
    bdh_weight_views w;
    bdh_config c;
    bdh_status rc = bdh_weights_open(in_path, NULL, &st, &w, &c);
    if (rc != BDH_OK) return rc;
    if (refuse_q8_input && w.scale[BDH_T_ENCODER]) {
        bdh_safetensors_close(&st);
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "%s: '%s' is already Q8_0", fn, in_path);
    }
    bdh_q8_copies copies = {0};
    const bool dequantize = w.scale[BDH_T_ENCODER] && type != BDH_WEIGHTS_Q8_0 && type != BDH_WEIGHTS_AS_STORED;
    if (dequantize) rc = bdh_q8_dequantized_views(&c, &w, &copies);
    out_file o = {0};
    if (rc == BDH_OK) rc = collect(&o, &st, &c, &w, type);
    if (rc == BDH_OK) rc = bdh_safetensors_write(out_path, o.meta, o.n_meta, o.t, o.n);
    out_free(&o);
    bdh_q8_copies_free(&copies);
    bdh_safetensors_close(&st);
    return rc;
}

bdh_status bdh_model_convert(const char *in_path, const char *out_path, bdh_weight_type type)
{
    return bdh_convert_file("bdh_model_convert", in_path, out_path, type, false);
}
