/* Loading a model: find the reference's tensors in a checkpoint
 * (checkpoint.c: its layout, names and configuration), fingerprint them,
 * and hand them to the backend chosen for the parameters, which packs its
 * own copy (so the file mapping is released after load). The model is
 * reference-counted: the caller's reference and one per state. */
#include "checkpoint.h"

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

bdh_status bdh_weights_open(const char *path, const bdh_config *override, bdh_safetensors *st, bdh_weight_views *w,
                            bdh_config *c)
{
    bdh_status rc = bdh_checkpoint_open(path, override, st, w, c);
    if (rc != BDH_OK) return rc;
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
    bdh_status rc = bdh_weights_open(path, m->params.config, &st, &w, &m->cfg);
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
    m->params.config = NULL; /* the caller's, read during the load only */
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
