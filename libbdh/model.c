/* Loading a model: find the reference's tensors in a safetensors file, check
 * the configuration against their shapes, fingerprint them, and hand them to
 * the backend chosen for the parameters, which packs its own copy (so the
 * file mapping is released after load). The model is reference-counted: the
 * caller's reference and one per state. */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

static const char *const tensor_names[BDH_T_COUNT] = {
    "embed.weight", "encoder", "encoder_v", "decoder", "lm_head", "attn.freqs",
};
#define COMPILE_PREFIX "_orig_mod."

const char *bdh_tensor_name(int which) { return which >= 0 && which < BDH_T_COUNT ? tensor_names[which] : "?"; }

bdh_elem bdh_weight_elem(bdh_weight_type requested, bdh_elem file)
{
    switch (requested) {
    case BDH_WEIGHTS_BF16: return BDH_ELEM_BF16;
    case BDH_WEIGHTS_F16: return BDH_ELEM_F16;
    case BDH_WEIGHTS_Q8_0: return BDH_ELEM_Q8_0;
    case BDH_WEIGHTS_AS_STORED: return file == BDH_ELEM_I8 ? BDH_ELEM_Q8_0 : bdh_elem_is_float(file) ? file : BDH_ELEM_F32;
    default: return BDH_ELEM_F32;
    }
}

/* Largest value accepted for any configuration field: far beyond real
 * models, small enough that products of a few fields cannot overflow. */
#define MAX_DIM (1 << 24)
#define MAX_LAYERS 4096

bdh_model_params bdh_model_default_params(void)
{
    bdh_model_params p;
    memset(&p, 0, sizeof p);
    p.device = BDH_DEVICE_CPU;
    p.n_threads = 0;
    p.cuda_device = 0;
    p.weight_type = BDH_WEIGHTS_F32;
    return p;
}

static const bdh_tensor_view *find_tensor(const bdh_safetensors *st, int which)
{
    const bdh_tensor_view *t = bdh_safetensors_find(st, tensor_names[which]);
    if (t) return t;
    char prefixed[64];
    snprintf(prefixed, sizeof prefixed, COMPILE_PREFIX "%s", tensor_names[which]);
    return bdh_safetensors_find(st, prefixed);
}

/* Parse a metadata value as a whole decimal integer in [lo, hi]. */
static bool parse_int(const char *s, long lo, long hi, long *out)
{
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end != '\0' || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bdh_status check_dims(const bdh_tensor_view *t, int which, int n_dims)
{
    if (t->n_dims != n_dims)
        return bdh_fail(BDH_ERR_CONFIG, "tensor %s has %d dimensions, expected %d", tensor_names[which], t->n_dims, n_dims);
    for (int i = 0; i < n_dims; i++)
        if (t->shape[i] < 1 || t->shape[i] > MAX_DIM)
            return bdh_fail(BDH_ERR_CONFIG, "tensor %s has dimension %d of size %lld (expected 1..%d)",
                            tensor_names[which], i, (long long)t->shape[i], MAX_DIM);
    if (!bdh_elem_is_float(t->dtype) && !(t->dtype == BDH_ELEM_I8 && bdh_quantizable(which)))
        return bdh_fail(BDH_ERR_CONFIG, "tensor %s has dtype %s; weights must be F32, F16 or BF16%s", tensor_names[which],
                        bdh_elem_name(t->dtype), bdh_quantizable(which) ? " (or I8 with Q8_0 scales)" : "");
    return BDH_OK;
}

static bdh_status shape_mismatch(int which, const char *expect)
{
    return bdh_fail(BDH_ERR_CONFIG, "tensor %s does not have the expected shape %s", tensor_names[which], expect);
}

/* Read D, H, N, V from the shapes and check that the tensors agree. */
static bdh_status config_from_shapes(const bdh_tensor_view *const *t, bdh_config *c)
{
    static const int rank[BDH_T_COUNT] = {2, 3, 3, 2, 2, 0};
    bdh_status rc;
    for (int i = 0; i < BDH_T_FREQS; i++) {
        if (!t[i]) return bdh_fail(BDH_ERR_CONFIG, "the file has no tensor named %s (nor " COMPILE_PREFIX "%s)",
                                   tensor_names[i], tensor_names[i]);
        if ((rc = check_dims(t[i], i, rank[i])) != BDH_OK) return rc;
    }
    c->vocab_size = (int32_t)t[BDH_T_EMBED]->shape[0];
    c->n_embd = (int32_t)t[BDH_T_EMBED]->shape[1];
    c->n_head = (int32_t)t[BDH_T_ENCODER]->shape[0];
    c->n_neurons = (int32_t)t[BDH_T_ENCODER]->shape[2];
    const int64_t D = c->n_embd, H = c->n_head, N = c->n_neurons, V = c->vocab_size;
    const int64_t *e = t[BDH_T_ENCODER]->shape, *ev = t[BDH_T_ENCODER_V]->shape;
    if (e[1] != D) return shape_mismatch(BDH_T_ENCODER, "[n_head, n_embd, N] with n_embd from embed.weight");
    if (ev[0] != H || ev[1] != D || ev[2] != N) return shape_mismatch(BDH_T_ENCODER_V, "equal to encoder's");
    if (t[BDH_T_DECODER]->shape[0] != H * N || t[BDH_T_DECODER]->shape[1] != D)
        return shape_mismatch(BDH_T_DECODER, "[n_head*N, n_embd]");
    if (t[BDH_T_LM_HEAD]->shape[0] != D || t[BDH_T_LM_HEAD]->shape[1] != V)
        return shape_mismatch(BDH_T_LM_HEAD, "[n_embd, vocab_size]");
    if (N % 2 != 0)
        return bdh_fail(BDH_ERR_CONFIG, "N = %lld neurons per head is odd; RoPE needs pairs", (long long)N);
    const bdh_tensor_view *f = t[BDH_T_FREQS];
    if (f) {
        int64_t numel = 1;
        for (int i = 0; i < f->n_dims; i++) numel *= f->shape[i];
        if (numel != N || f->n_dims < 1 || f->shape[f->n_dims - 1] != N)
            return shape_mismatch(BDH_T_FREQS, "[1, 1, 1, N]");
        if (!bdh_elem_is_float(f->dtype))
            return bdh_fail(BDH_ERR_CONFIG, "tensor attn.freqs has dtype %s; expected F32", bdh_elem_name(f->dtype));
    }
    return BDH_OK;
}

/* Metadata: n_layer is required; the others, when present, must agree. */
static bdh_status config_from_metadata(const bdh_safetensors *st, bdh_config *c)
{
    long v;
    const char *s = bdh_safetensors_meta(st, "n_layer");
    if (!s)
        return bdh_fail(BDH_ERR_CONFIG, "metadata has no n_layer (the layers share weights, so the shapes cannot tell it)");
    if (!parse_int(s, 1, MAX_LAYERS, &v))
        return bdh_fail(BDH_ERR_CONFIG, "metadata n_layer = \"%s\" is not an integer in 1..%d", s, MAX_LAYERS);
    c->n_layer = (int32_t)v;

    const struct { const char *key; long expect; } fields[] = {
        {"n_embd", c->n_embd}, {"n_head", c->n_head}, {"vocab_size", c->vocab_size},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        s = bdh_safetensors_meta(st, fields[i].key);
        if (!s) continue;
        if (!parse_int(s, 1, MAX_DIM, &v))
            return bdh_fail(BDH_ERR_CONFIG, "metadata %s = \"%s\" is not a positive integer", fields[i].key, s);
        if (v != fields[i].expect)
            return bdh_fail(BDH_ERR_CONFIG, "metadata %s = %ld contradicts the tensor shapes (%ld)", fields[i].key, v, fields[i].expect);
    }
    /* The reference: N = mlp_internal_dim_multiplier * n_embd // n_head. */
    s = bdh_safetensors_meta(st, "mlp_internal_dim_multiplier");
    if (s) {
        if (!parse_int(s, 1, MAX_DIM, &v))
            return bdh_fail(BDH_ERR_CONFIG, "metadata mlp_internal_dim_multiplier = \"%s\" is not a positive integer", s);
        if ((int64_t)v * c->n_embd / c->n_head != c->n_neurons)
            return bdh_fail(BDH_ERR_CONFIG, "metadata mlp_internal_dim_multiplier = %ld gives N = %lld, but encoder has N = %d",
                            v, (long long)((int64_t)v * c->n_embd / c->n_head), c->n_neurons);
        c->mlp_internal_dim_multiplier = (int32_t)v;
    } else {
        c->mlp_internal_dim_multiplier = (int32_t)((int64_t)c->n_neurons * c->n_head / c->n_embd);
    }
    return BDH_OK;
}

/* The reference's get_freqs(N, theta=2^16) in float32:
 * 1 / theta^(2*floor(j/2) / N) / (2*pi). */
void bdh_default_freqs(float *freqs, int n)
{
    const float two_pi = (float)(2.0 * M_PI);
    for (int j = 0; j < n; j++) {
        float e = floorf((float)j / 2.0f) * 2.0f / (float)n;
        freqs[j] = 1.0f / powf(65536.0f, e) / two_pi;
    }
}

/* attn.freqs from the file, or the reference's default; float32 [N]. */
static bdh_status load_freqs(bdh_model *m, const bdh_tensor_view *t)
{
    if (!(m->freqs = malloc((size_t)m->cfg.n_neurons * sizeof(float)))) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    if (t) bdh_elem_to_f32(t->dtype, t->data, m->freqs, (size_t)m->cfg.n_neurons);
    else bdh_default_freqs(m->freqs, m->cfg.n_neurons);
    return BDH_OK;
}

/* NaN and inf in weights make every later result meaningless: refuse them
 * at load, by the exponent bits of each element (a pass over the file's bytes
 * at memory speed). */
static bdh_status check_finite(const bdh_tensor_view *t, const char *name)
{
    if (!bdh_elem_is_float(t->dtype)) return BDH_OK; /* I8 values are always finite */
    const uint8_t *p = t->data;
    const size_t n = t->nbytes / bdh_elem_size(t->dtype);
    const uint32_t exp_mask = t->dtype == BDH_ELEM_F32 ? 0x7f800000u : t->dtype == BDH_ELEM_F16 ? 0x7c00u : 0x7f80u;
    size_t bad = n;
    if (t->dtype == BDH_ELEM_F32) {
        for (size_t i = 0; i < n && bad == n; i++) {
            uint32_t u;
            memcpy(&u, p + 4 * i, 4);
            if ((u & exp_mask) == exp_mask) bad = i;
        }
    } else {
        for (size_t i = 0; i < n && bad == n; i++) {
            uint16_t u;
            memcpy(&u, p + 2 * i, 2);
            if ((u & exp_mask) == exp_mask) bad = i;
        }
    }
    if (bad == n) return BDH_OK;
    float v;
    bdh_elem_to_f32(t->dtype, p + bad * bdh_elem_size(t->dtype), &v, 1);
    return bdh_fail(BDH_ERR_FORMAT, "tensor %s has a non-finite value (%s) at index %zu", name,
                    v != v ? "NaN" : v > 0 ? "inf" : "-inf", bad);
}

static void hash_tensor(XXH3_state_t *h, const char *name, const bdh_tensor_view *t)
{
    XXH3_64bits_update(h, name, strlen(name));
    XXH3_64bits_update(h, &t->dtype, sizeof t->dtype);
    XXH3_64bits_update(h, t->shape, sizeof(int64_t) * (size_t)t->n_dims);
    XXH3_64bits_update(h, t->data, t->nbytes);
}

/* Fingerprint: configuration, then each tensor's dtype, shape and bytes (and
 * a Q8_0 file's scales). Weights quantized at load are other weights: their
 * fingerprint differs from the file's; F32/BF16/F16 holdings of one file
 * share it (docs/format.md). */
uint64_t bdh_weights_fingerprint(const bdh_config *c, const bdh_weight_views *w, bool quantized_at_load)
{
    XXH3_state_t *h = XXH3_createState();
    if (!h) return 0;
    XXH3_64bits_reset(h);
    XXH3_64bits_update(h, c, sizeof *c);
    for (int i = 0; i < BDH_T_COUNT; i++) {
        if (w->t[i]) hash_tensor(h, tensor_names[i], w->t[i]);
        if (w->scale[i]) hash_tensor(h, "scale", w->scale[i]);
    }
    if (quantized_at_load) XXH3_64bits_update(h, "q8_0", 4);
    uint64_t v = XXH3_64bits_digest(h);
    XXH3_freeState(h);
    return v;
}

static bdh_status check_params(const bdh_model_params *p)
{
    if (p->device != BDH_DEVICE_CPU && p->device != BDH_DEVICE_CUDA)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "params.device = %d is not a bdh_device", (int)p->device);
    if (p->n_threads < 0)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "params.n_threads = %d is negative (0 = all cores)", (int)p->n_threads);
    if ((int)p->weight_type < BDH_WEIGHTS_F32 || p->weight_type > BDH_WEIGHTS_Q8_0)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "params.weight_type = %d is not a bdh_weight_type", (int)p->weight_type);
    if ((int)p->kernels < BDH_KERNELS_FAST || p->kernels > BDH_KERNELS_REFERENCE)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "params.kernels = %d is not a bdh_kernels", (int)p->kernels);
    return BDH_OK;
}

bdh_status bdh_weights_open(const char *path, bdh_safetensors *st, bdh_weight_views *w, bdh_config *c)
{
    bdh_status rc = bdh_safetensors_open(path, st);
    if (rc != BDH_OK) return rc;
    memset(w, 0, sizeof *w);
    w->file = st;
    for (int i = 0; i < BDH_T_COUNT; i++) w->t[i] = find_tensor(st, i);
    if ((rc = config_from_shapes(w->t, c)) == BDH_OK && (rc = config_from_metadata(st, c)) == BDH_OK)
        rc = bdh_q8_find_scales(st, w, c);
    for (int i = 0; i < BDH_T_COUNT && rc == BDH_OK; i++) {
        if (w->t[i]) rc = check_finite(w->t[i], tensor_names[i]);
        if (w->scale[i] && rc == BDH_OK) rc = check_finite(w->scale[i], w->scale[i]->name);
    }
    if (rc != BDH_OK) bdh_safetensors_close(st);
    return rc;
}

/* A Q8_0 file written by bdh_model_quantize carries the fingerprint of its
 * float source quantized at load (the same int8 blocks); other Q8_0 files
 * are fingerprinted by their own bytes. */
static uint64_t q8_file_fingerprint(const bdh_safetensors *st, const bdh_config *c, const bdh_weight_views *w)
{
    const char *fp = bdh_safetensors_meta(st, "q8_0_fingerprint");
    char *end;
    errno = 0;
    const unsigned long long v = fp ? strtoull(fp, &end, 16) : 0;
    if (fp && !errno && *fp && *end == '\0' && strlen(fp) == 16) return (uint64_t)v;
    return bdh_weights_fingerprint(c, w, false);
}

/* "'path': reason", keeping the reason */
static bdh_status with_path(bdh_status rc, const char *path)
{
    char reason[400];
    snprintf(reason, sizeof reason, "%s", bdh_last_error());
    return strstr(reason, path) ? rc : bdh_fail(rc, "'%s': %s", path, reason);
}

static bdh_status load_from_file(bdh_model *m, const char *path)
{
    bdh_safetensors st;
    bdh_weight_views w;
    bdh_status rc = bdh_weights_open(path, &st, &w, &m->cfg);
    if (rc != BDH_OK) return with_path(rc, path);
    if ((rc = load_freqs(m, w.t[BDH_T_FREQS])) == BDH_OK) {
        const int64_t D = m->cfg.n_embd, V = m->cfg.vocab_size, HN = (int64_t)m->cfg.n_head * m->cfg.n_neurons;
        const bool file_q8 = w.t[BDH_T_ENCODER]->dtype == BDH_ELEM_I8;
        m->n_params = 2 * V * D + 3 * HN * D;
        const bool quantize = !file_q8 && m->params.weight_type == BDH_WEIGHTS_Q8_0;
        m->fingerprint = file_q8 ? q8_file_fingerprint(&st, &m->cfg, &w) : bdh_weights_fingerprint(&m->cfg, &w, quantize);
        if (quantize) rc = bdh_q8_check_range(&w);
        for (int i = 0; i < BDH_T_COUNT; i++)
            if (w.t[i]) m->file_dtype[i] = w.scale[i] ? "Q8_0" : bdh_elem_name(w.t[i]->dtype);
        if (rc == BDH_OK) rc = m->backend->model_init(m, &w);
    }
    if (rc != BDH_OK) rc = with_path(rc, path);
    bdh_safetensors_close(&st);
    return rc;
}

static void model_destroy(bdh_model *m);

bdh_status bdh_model_load(const char *path, const bdh_model_params *params, bdh_model **out)
{
    if (!out) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_model_load: out is NULL");
    *out = NULL;
    if (!path) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_model_load: path is NULL");
    bdh_model_params p = params ? *params : bdh_model_default_params();
    const bdh_backend *backend;
    bdh_status rc = check_params(&p);
    if (rc == BDH_OK) rc = bdh_backend_select(&p, &backend);
    if (rc != BDH_OK) return rc;

    bdh_model *m = calloc(1, sizeof *m);
    if (!m) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    m->params = p;
    m->backend = backend;
    m->refs = 1;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    m->n_threads = p.n_threads > 0 ? p.n_threads : (int)(cores > 0 ? cores : 1);
    rc = load_from_file(m, path);
    if (rc != BDH_OK) {
        model_destroy(m);
        return rc;
    }
    bdh_clear_error();
    *out = m;
    return BDH_OK;
}

void bdh_model_retain(const bdh_model *m) { __atomic_add_fetch(&((bdh_model *)m)->refs, 1, __ATOMIC_RELAXED); }

void bdh_model_release(const bdh_model *m)
{
    if (__atomic_sub_fetch(&((bdh_model *)m)->refs, 1, __ATOMIC_ACQ_REL) == 0) model_destroy((bdh_model *)m);
}

void bdh_model_free(bdh_model *m)
{
    if (m) bdh_model_release(m);
}

static void model_destroy(bdh_model *m)
{
    m->backend->model_free(m);
    free(m->freqs);
    free(m);
}

bdh_status bdh_model_config(const bdh_model *m, bdh_config *out)
{
    if (!m || !out) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_model_config: model or out is NULL");
    *out = m->cfg;
    return BDH_OK;
}

int64_t bdh_model_n_params(const bdh_model *m) { return m ? m->n_params : 0; }
size_t bdh_model_weight_bytes(const bdh_model *m) { return m ? m->weight_bytes : 0; }
size_t bdh_model_state_bytes(const bdh_model *m) { return m ? bdh_state_floats(&m->cfg) * sizeof(float) : 0; }
bdh_device bdh_model_device(const bdh_model *m) { return m ? m->params.device : BDH_DEVICE_CPU; }
uint64_t bdh_model_fingerprint(const bdh_model *m) { return m ? m->fingerprint : 0; }

const char *bdh_model_file_dtype(const bdh_model *m, const char *tensor)
{
    if (!m || !tensor) return NULL;
    for (int i = 0; i < BDH_T_COUNT; i++)
        if (strcmp(tensor, tensor_names[i]) == 0) return m->file_dtype[i];
    return NULL;
}
