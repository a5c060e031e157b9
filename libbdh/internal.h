/* Internal definitions shared by the library's source files (C and CUDA).
 * Nothing here is part of the public API.
 *
 * The map (docs/architecture.md walks one token through it):
 *   checkpoint.c               checkpoint layouts, names, configuration
 *                              sources (checkpoint.h)
 *   model.c, state.c, step.c   what every backend shares: loading and
 *                              checking a file, the state's lifecycle and
 *                              blobs, argument checks; calls go through
 *                              model->backend, chosen once in backend.c
 *   forward_ref.c              the reference backend: plain loops over the
 *                              file's layouts
 *   cpu/                       the CPU backend (cpu/cpu.h)
 *   ../kernels/                the CUDA backend (bdh_cuda.cuh)
 *   dtype.h                    element types and their conversions */
#ifndef BDH_INTERNAL_H
#define BDH_INTERNAL_H

#include "bdh.h"
#include "dtype.h"

#include <stdarg.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BDH_INTERNAL __attribute__((visibility("hidden")))

/* The largest position a state may reach: far past any real stream (and
 * past 2^24, where float32 RoPE phases, as the reference computes them, stop
 * changing), small enough that no position arithmetic can overflow. */
#define BDH_MAX_POSITION ((int64_t)1 << 53)

/* Tokens per prefill chunk, CPU and CUDA (the chunk's GEMMs are this tall). */
#define BDH_PREFILL_CHUNK 128

/* ------------------------------------------------------------ errors.c */

/* Record a message for bdh_last_error() and return status (for one-line
 * `return bdh_fail(...)`). */
BDH_INTERNAL bdh_status bdh_fail(bdh_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
BDH_INTERNAL void bdh_clear_error(void);

/* --------------------------------------------------------- safetensors.c */

#define BDH_MAX_DIMS 8

typedef struct bdh_tensor_view {
    char *name;           /* as in the file */
    bdh_elem dtype;
    int n_dims;
    int64_t shape[BDH_MAX_DIMS];
    const void *data;     /* points into the mapping */
    size_t nbytes;
} bdh_tensor_view;

typedef struct bdh_safetensors {
    void *map;            /* whole file, read-only mapping */
    size_t map_size;
    bdh_tensor_view *tensors;
    int n_tensors;
    char **meta_keys;     /* __metadata__ (string values only) */
    char **meta_values;
    int n_meta;
    /* checkpoint.c: lm_head in the reference's layout, when the file holds it
     * transposed or tied (freed by bdh_safetensors_close) */
    void *owned;
    bdh_tensor_view owned_view;
    char owned_name[8];
} bdh_safetensors;

BDH_INTERNAL bdh_status bdh_safetensors_open(const char *path, bdh_safetensors *out);
BDH_INTERNAL void bdh_safetensors_close(bdh_safetensors *st);
/* Drop the mapping's pages of a tensor already packed (keeps peak memory low). */
BDH_INTERNAL void bdh_safetensors_release(const bdh_safetensors *st, const bdh_tensor_view *t);
BDH_INTERNAL const bdh_tensor_view *bdh_safetensors_find(const bdh_safetensors *st, const char *name);
BDH_INTERNAL const char *bdh_safetensors_meta(const bdh_safetensors *st, const char *key);

/* --------------------------------------------------------------- model.c */

/* The reference's tensors, by state_dict name (model.c's tensor_names). */
enum { BDH_T_EMBED, BDH_T_ENCODER, BDH_T_ENCODER_V, BDH_T_DECODER, BDH_T_LM_HEAD, BDH_T_FREQS, BDH_T_COUNT };
BDH_INTERNAL const char *bdh_tensor_name(int which);

/* What a backend packs its weights from: the file's tensors in the
 * reference's layouts (checked against the configuration), in any of
 * F32/F16/BF16:
 *   embed [V][D], encoder [H][D][N], encoder_v [H][D][N], decoder [H*N][D],
 *   lm_head [D][V]; t[BDH_T_FREQS] may be NULL (model->freqs has the values). */
typedef struct bdh_weight_views {
    const bdh_tensor_view *t[BDH_T_COUNT];
    const bdh_tensor_view *scale[BDH_T_COUNT]; /* Q8_0 files: the F16 scales of an I8 t[i] */
    const bdh_safetensors *file; /* for bdh_safetensors_release */
} bdh_weight_views;

/* Whether tensor `which` is held quantized when the model holds Q8_0
 * (encoder, encoder_v, decoder; embed and lm_head stay float32). */
static inline bool bdh_quantizable(int which)
{
    return which == BDH_T_ENCODER || which == BDH_T_ENCODER_V || which == BDH_T_DECODER;
}

/* The checkpoint at path (a file or a directory, checkpoint.h) opened, its
 * tensors found and checked (shapes, configuration, Q8_0 scales, finite
 * values): what a load and a quantization start from. override: NULL or the
 * load parameters' config. On success st is open (bdh_safetensors_close it). */
BDH_INTERNAL bdh_status bdh_weights_open(const char *path, const bdh_config *override, bdh_safetensors *st, bdh_weight_views *w,
                                         bdh_config *c);
/* The reference's RoPE frequencies for n neurons (a file without attn.freqs). */
BDH_INTERNAL void bdh_default_freqs(float *freqs, int n);

/* -------------------------------------------------------------- quant.c */

/* A Q8_0 file (docs/format.md): I8 tensors with F16 scales "<name>.scale"
 * beside them, and metadata quantization = q8_0. Finds and checks the scales
 * of every I8 tensor in w (shapes against c); refuses an I8 tensor without
 * scales, scales without their I8 tensor, and a file whose metadata does not
 * say q8_0. */
BDH_INTERNAL bdh_status bdh_q8_find_scales(const bdh_safetensors *st, bdh_weight_views *w, const bdh_config *c);
/* Refuses float weights too large for Q8_0 (|value| > 127 * 65504, the
 * largest F16 scale), before quantizing them. */
BDH_INTERNAL bdh_status bdh_q8_check_range(const bdh_weight_views *w);
/* The scale tensor's shape for tensor `which` (encoder, encoder_v, decoder). */
BDH_INTERNAL int bdh_q8_scale_shape(int which, const bdh_config *c, int64_t shape[3]);
/* Tensor `which` of w quantized, laid out as the file's I8 tensor and its scales. */
BDH_INTERNAL bdh_status bdh_q8_quantize_tensor(const bdh_config *c, const bdh_weight_views *w, int which, int8_t *q, uint16_t *s);

/* ------------------------------------------------------------ convert.c */

/* bdh_model_convert, with fn naming the public call in messages;
 * refuse_q8_input: a Q8_0 input is an error (bdh_model_quantize). */
BDH_INTERNAL bdh_status bdh_convert_file(const char *fn, const char *in_path, const char *out_path, bdh_weight_type type,
                                         bool refuse_q8_input);
/* model.c's fingerprint of these views (quantized_at_load: held as Q8_0
 * from a float file). */
BDH_INTERNAL uint64_t bdh_weights_fingerprint(const bdh_config *c, const bdh_weight_views *w, bool quantized_at_load);

/* float32 copies of a Q8_0 file's tensors, for a backend holding floats that
 * wants float views (CUDA's F32/BF16): w's I8 views become views of these. */
typedef struct bdh_q8_copies {
    bdh_tensor_view views[BDH_T_COUNT];
    float *data[BDH_T_COUNT];
} bdh_q8_copies;
BDH_INTERNAL bdh_status bdh_q8_dequantized_views(const bdh_config *c, bdh_weight_views *w, bdh_q8_copies *copies);
BDH_INTERNAL void bdh_q8_copies_free(bdh_q8_copies *copies);

/* ------------------------------------------------------------ st_write.c */

/* A tensor to write: name, element type, shape, little-endian C-order bytes. */
typedef struct bdh_out_tensor {
    const char *name;
    bdh_elem dtype;
    int n_dims;
    int64_t shape[BDH_MAX_DIMS];
    const void *data;
    size_t nbytes;
} bdh_out_tensor;

/* A safetensors file at path: meta holds n_meta (key, value) string pairs
 * flat (k0, v0, k1, v1, ...), then the tensors, in this order. Written to a
 * temporary file beside path, fsynced and renamed into place: on failure an
 * existing file at path is left as it was. */
BDH_INTERNAL bdh_status bdh_safetensors_write(const char *path, const char *const *meta, int n_meta,
                                              const bdh_out_tensor *t, int n);
/* a and b name one file: the same path, or the same file by another name. */
BDH_INTERNAL bool bdh_same_file(const char *a, const char *b);

/* ------------------------------------------------------------ weights.c */

/* A weight matrix of the file read by held rows: one row of D values per
 * neuron or token, whatever the file's layout and element type. */
typedef struct bdh_file_rows {
    const bdh_tensor_view *t, *scale; /* scale: Q8_0 files */
    int64_t rows, cols;               /* held rows, D */
    int64_t count;                    /* 0: rows as stored; else `count` [D][rows/count] matrices */
} bdh_file_rows;

BDH_INTERNAL void bdh_file_rows_init(bdh_file_rows *f, const bdh_weight_views *w, int which, const bdh_config *c);
/* Row r as float32 (Q8_0 dequantized). */
BDH_INTERNAL void bdh_file_row_f32(const bdh_file_rows *f, int64_t r, float *out);
/* Elements d0..d0+n of row r of a Q8_0 tensor as stored (d0 a multiple of 32). */
BDH_INTERNAL void bdh_file_row_q8_part(const bdh_file_rows *f, int64_t r, int64_t d0, int64_t n, int8_t *q, uint16_t *s);
/* Row r written back into a float32 array laid out as the file's tensor. */
BDH_INTERNAL void bdh_file_row_scatter(const bdh_file_rows *f, int64_t r, const float *row, float *dst);
/* Row r's Q8_0 values and scales written into arrays laid out as the file's
 * I8 tensor and its scale tensor. */
BDH_INTERNAL void bdh_file_row_scatter_q8(const bdh_file_rows *f, int64_t r, const int8_t *q, const uint16_t *s,
                                          int8_t *qdst, uint16_t *sdst);

typedef struct bdh_backend bdh_backend;

struct bdh_model {
    int refs;                  /* the caller's + one per state (atomic) */
    bdh_config cfg;
    bdh_model_params params;
    int n_threads;             /* resolved (0 -> cores) */
    uint64_t fingerprint;
    int64_t n_params;
    size_t weight_bytes;       /* filled by the backend's model_init */
    const char *file_dtype[BDH_T_COUNT]; /* NULL when absent from the file */
    float *freqs;              /* [N] RoPE turns per position (file or default) */
    const bdh_backend *backend;
    void *impl;                /* the backend's model */
};

/* Model references: the caller's (bdh_model_free drops it) and each
 * state's; the last release frees the model. */
BDH_INTERNAL void bdh_model_retain(const bdh_model *m);
BDH_INTERNAL void bdh_model_release(const bdh_model *m);

/* The element type weights are held in, for a request and the file's type
 * of the encoder (AS_STORED keeps it). */
BDH_INTERNAL bdh_elem bdh_weight_elem(bdh_weight_type requested, bdh_elem file);

static inline size_t bdh_state_floats(const bdh_config *c)
{
    return (size_t)c->n_layer * (size_t)c->n_head * (size_t)c->n_neurons * (size_t)c->n_embd;
}

/* --------------------------------------------------------------- state.c */

typedef struct bdh_observe bdh_observe; /* observe.c */

struct bdh_state {
    const bdh_model *model;    /* holds a reference */
    int64_t position;
    bdh_observe *obs;          /* observer and monitors, NULL until one is set */
    void *impl;                /* the backend's state */
};

BDH_INTERNAL bdh_status bdh_check_token(const bdh_model *m, int32_t token);
/* step.c: n tokens through the backend's step_batch, one at a time (logits
 * as for prefill) */
BDH_INTERNAL bdh_status bdh_prefill_by_steps(bdh_state *s, const int32_t *tokens, size_t n, float *logits, bool all_rows);

/* ------------------------------------------------------------ backend.c */

/* A backend: where weights and states live and what computes a step. One
 * is chosen at model load (bdh_backend_select) and everything after goes
 * through it. States passed in belong to a model of this backend; arguments
 * are checked by the caller. */
struct bdh_backend {
    const char *name;
    bool observes;             /* steps report layers to observers/monitors */
    /* parameters this backend refuses, before any file is read */
    bdh_status (*check_params)(const bdh_model_params *p);
    /* pack the weights into m->impl and set m->weight_bytes; the views may be
     * a Q8_0 file's (I8 with scales) */
    bdh_status (*model_init)(bdh_model *m, const bdh_weight_views *w);
    void (*model_free)(bdh_model *m);
    /* a zero state at position 0 into s->impl */
    bdh_status (*state_init)(bdh_state *s);
    void (*state_free)(bdh_state *s);
    bdh_status (*state_reset)(bdh_state *s);
    /* dst: a fresh state of the same model */
    bdh_status (*state_copy)(bdh_state *dst, const bdh_state *src);
    /* the L*H*N*D floats, [L][H][N][D], to or from bytes (maybe unaligned) */
    bdh_status (*state_read)(const bdh_state *s, void *dst);
    bdh_status (*state_write)(bdh_state *s, const void *src);
    /* head (layer, head)'s [N][D] rows in host memory; NULL: not on the host */
    const float *(*state_rows)(const bdh_state *s, int layer, int head);
    /* bdh_state_activity's counts; NULL: not counted */
    bdh_status (*activity)(const bdh_state *s, float *xs_frac, float *pair_frac, float *xy_frac);
    /* n distinct states, one token each; logits n*V or NULL */
    bdh_status (*step_batch)(bdh_state *const *states, const int32_t *tokens, size_t n, float *logits);
    /* logits: NULL, the last token's row (all_rows false) or n rows (true);
     * NULL function: prefill steps token by token */
    bdh_status (*prefill)(bdh_state *s, const int32_t *tokens, size_t n, float *logits, bool all_rows);
};

/* The backend for these parameters (device and kernels); UNSUPPORTED for
 * CUDA in a build without it. */
BDH_INTERNAL bdh_status bdh_backend_select(const bdh_model_params *p, const bdh_backend **out);

BDH_INTERNAL extern const bdh_backend bdh_reference_backend; /* forward_ref.c */
BDH_INTERNAL extern const bdh_backend bdh_cpu_backend;       /* cpu/backend.c */
#ifdef BDH_WITH_CUDA
BDH_INTERNAL extern const bdh_backend bdh_cuda_backend;      /* kernels/cuda_model.cu */
/* One line on the CUDA devices seen (or why there are none). */
BDH_INTERNAL void bdh_cuda_describe(char *buf, size_t cap);
#endif

/* ------------------------------------------------------------ observe.c */

BDH_INTERNAL void bdh_observe_free(bdh_observe *o);
/* An observer or a monitor is set: the forward paths report each layer. */
BDH_INTERNAL bool bdh_observing(const bdh_state *s);
/* After a layer: xs and xy dense [H*N] (head-major), s->position = the token's. */
BDH_INTERNAL void bdh_observe_layer(bdh_state *s, int layer, int32_t token, const float *xs, const float *xy);
BDH_INTERNAL void bdh_observe_reset(bdh_state *s);
BDH_INTERNAL bdh_status bdh_observe_copy_monitors(bdh_state *dst, const bdh_state *src);
/* Room for n monitors (no visible change): after it, set_monitors(n) cannot fail. */
BDH_INTERNAL bdh_status bdh_observe_reserve(bdh_state *s, size_t n);
BDH_INTERNAL bdh_status bdh_observe_set_monitors(bdh_state *s, size_t n, const int32_t *mon, const double *sigma);
/* [n][3] (layer, i, j) and the sigmas; NULL when there are none. */
BDH_INTERNAL const int32_t *bdh_observe_monitor_list(const bdh_state *s, const double **sigma);

/* --------------------------------------------------------------- math.c */
/* The numerics every backend shares with the reference: keep them exact. */

BDH_INTERNAL void bdh_relu(float *v, size_t n);
/* LayerNorm without affine, eps 1e-5, biased variance, in place. */
BDH_INTERNAL void bdh_layernorm(float *v, int n);
/* RoPE phases for position t: cos/sin of (float32(t)*freq mod 1)*2pi, as
 * the reference computes them in float32. */
BDH_INTERNAL void bdh_rope_tables(const float *freqs, int n, int64_t t, float *cos_out, float *sin_out);
BDH_INTERNAL void bdh_rope_apply(const float *v, const float *cs, const float *sn, int n, float *out);
/* 64-byte aligned (2 MiB and huge pages when large); free() releases it. */
BDH_INTERNAL void *bdh_alloc_large(size_t bytes);

/* ------------------------------------------------------------ system.c */

/* The instruction set the CPU row kernels run with ("avx512", ...): cpu/matrix.c. */
BDH_INTERNAL const char *bdh_cpu_kernel_name(void);

#ifdef __cplusplus
}
#endif

#endif /* BDH_INTERNAL_H */
