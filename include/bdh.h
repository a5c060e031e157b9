/*
 * libbdh: inference for the Dragon Hatchling (BDH-GPU) architecture.
 *
 * A model is loaded once from a safetensors file and is read-only afterwards:
 * many states (independent token streams) may share one model, each used by
 * one thread at a time. A state holds a fixed-size matrix per layer and head;
 * feeding a token with bdh_step() advances it by one position and (optionally)
 * writes the next-token logits. Nothing grows with the context.
 *
 * Lifetime: every state holds a reference to its model. bdh_model_free()
 * drops the caller's reference; the model's memory is released when the last
 * of its states is freed too. So a model may be freed before its states, which
 * go on working (and bdh_state_model() stays valid) until they are freed.
 *
 * Every call that can fail returns a bdh_status; on failure bdh_last_error()
 * gives a message for the calling thread. The library never aborts or exits on
 * bad input. A call refused for a bad argument leaves its arguments as they
 * were; where a failure can come later (out of memory, a device error), the
 * call's comment says what it leaves. Every constructor (a function with an
 * `out` parameter: bdh_model_load, bdh_state_new, bdh_state_copy,
 * bdh_sampler_new, bdh_generator_new) sets *out to NULL when it fails.
 *
 * Positions: a state's position can reach 2^53. RoPE phases are computed in
 * float32 exactly as the reference computes them, so past 2^24 tokens
 * (16.7M) consecutive positions share phases, as they do in the reference.
 *
 * See docs/api.md for a walk-through and docs/format.md for the file format.
 */
#ifndef BDH_H
#define BDH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define BDH_API
#else
#define BDH_API __attribute__((visibility("default")))
#endif

/* The one source of the version: the Makefile and the Python package read
 * these three lines. */
#define BDH_VERSION_MAJOR 0
#define BDH_VERSION_MINOR 2
#define BDH_VERSION_PATCH 0

/* Marks a declaration that will go in a later version; msg says what to use. */
#if defined(__GNUC__) || defined(__clang__)
#define BDH_DEPRECATED(msg) __attribute__((deprecated(msg)))
#else
#define BDH_DEPRECATED(msg)
#endif

/* ---------------------------------------------------------------- status */

typedef enum bdh_status {
    BDH_OK = 0,
    BDH_ERR_INVALID_ARGUMENT = 1, /* NULL pointer, bad parameter value */
    BDH_ERR_IO = 2,               /* file missing, unreadable, a directory */
    BDH_ERR_FORMAT = 3,           /* malformed safetensors file or state blob */
    BDH_ERR_CONFIG = 4,           /* metadata missing or contradicting shapes */
    BDH_ERR_OUT_OF_MEMORY = 5,
    BDH_ERR_TOKEN = 6,            /* token id outside [0, vocab_size) */
    BDH_ERR_UNSUPPORTED = 7,      /* feature not built in (e.g. CUDA) */
    BDH_ERR_MODEL_MISMATCH = 8,   /* state from another model */
    BDH_ERR_DEVICE = 9,           /* GPU runtime failure */
    BDH_ERR_BUFFER_TOO_SMALL = 10
} bdh_status;

/* Short constant name of a status ("BDH_ERR_IO"); never NULL. */
BDH_API const char *bdh_status_name(bdh_status status);
/* Message of the last failed call on this thread ("" if none). The pointer
 * stays valid until the next libbdh call on the same thread. */
BDH_API const char *bdh_last_error(void);
/* "MAJOR.MINOR.PATCH" of the library actually linked. */
BDH_API const char *bdh_version(void);

/* One line about this build and machine: version, build options (CUDA,
 * sanitizers), the CPU features the kernels use, the BLAS library and the
 * kernel set it picked, the CUDA devices seen. For bug reports and `bdh info`;
 * the wording may change between versions. Never NULL. */
BDH_API const char *bdh_system_info(void);

/* OpenBLAS (used for the prefill GEMMs) picks its kernels when it loads; on
 * a CPU it does not know it falls back to generic ones, several times
 * slower. Then this returns a better OPENBLAS_CORETYPE value to set in the
 * environment before the library loads (the bdh tool re-executes itself);
 * NULL when all is well. */
BDH_API const char *bdh_blas_suggested_core(void);

/* ---------------------------------------------------------------- types */

typedef struct bdh_model bdh_model;
typedef struct bdh_state bdh_state;

typedef enum bdh_device {
    BDH_DEVICE_CPU = 0,
    BDH_DEVICE_CUDA = 1 /* BDH_ERR_UNSUPPORTED unless built with CUDA=1 */
} bdh_device;

/* How weights are held in memory. Computation is always float32. */
typedef enum bdh_weight_type {
    BDH_WEIGHTS_F32 = 0,      /* convert every tensor to float32 (default) */
    BDH_WEIGHTS_AS_STORED = 1,/* keep the file's F32/F16/BF16/Q8_0 */
    BDH_WEIGHTS_BF16 = 2,     /* round to bfloat16 at load */
    BDH_WEIGHTS_F16 = 3,      /* round to float16 at load (CPU only) */
    BDH_WEIGHTS_Q8_0 = 4      /* encoder, encoder_v, decoder as int8 blocks of 32
                                 along D with an F16 scale each, quantized at
                                 load (or as stored); embed, lm_head float32 */
} bdh_weight_type;

/* Which CPU code computes a step. */
typedef enum bdh_kernels {
    BDH_KERNELS_FAST = 0,      /* sparse-aware, threaded (default) */
    BDH_KERNELS_REFERENCE = 1  /* plain dense single-threaded loops over the
                                  file's layouts, the reference the fast path
                                  is tested against */
} bdh_kernels;

typedef struct bdh_config {
    int32_t n_layer;     /* layers (they share one set of weights) */
    int32_t n_embd;      /* D */
    int32_t n_head;      /* H */
    int32_t n_neurons;   /* N, neurons per head */
    int32_t vocab_size;  /* V; 256 = raw bytes */
    int32_t mlp_internal_dim_multiplier;
} bdh_config;

typedef struct bdh_model_params {
    bdh_device device;
    int32_t n_threads;          /* CPU worker threads; 0 = all cores */
    int32_t cuda_device;        /* CUDA device ordinal */
    bdh_weight_type weight_type;
    bdh_kernels kernels;        /* CPU only */
    const bdh_config *config;   /* NULL: from the file or config.json */
} bdh_model_params;

/* ------------------------------------------------- the five stable calls */

/* Load a model (params NULL = defaults). On failure *out is NULL. */
BDH_API bdh_status bdh_model_load(const char *path, const bdh_model_params *params, bdh_model **out);
/* Drop the caller's reference (NULL is fine); see "Lifetime" above. */
BDH_API void       bdh_model_free(bdh_model *model);
/* A new all-zero state at position 0; it takes a reference to the model. */
BDH_API bdh_status bdh_state_new(const bdh_model *model, bdh_state **out);
BDH_API void       bdh_state_free(bdh_state *state);
/* Feed one token; logits: vocab_size floats, or NULL to skip. On error the
 * state is unchanged. */
BDH_API bdh_status bdh_step(bdh_state *state, int32_t token, float *logits);

/* ---------------------------------------------------------------- model */

BDH_API bdh_model_params bdh_model_default_params(void);


BDH_API bdh_status bdh_model_config(const bdh_model *model, bdh_config *out);
/* Parameters as the reference counts them (attn.freqs not counted). */
BDH_API int64_t bdh_model_n_params(const bdh_model *model);
/* Bytes of weights the model holds in memory (host or device). */
BDH_API size_t bdh_model_weight_bytes(const bdh_model *model);
/* Bytes of one stream's state (L*H*N*D floats). */
BDH_API size_t bdh_model_state_bytes(const bdh_model *model);
BDH_API bdh_device bdh_model_device(const bdh_model *model);
/* 64-bit fingerprint of configuration and tensor bytes (state blobs carry it). */
BDH_API uint64_t bdh_model_fingerprint(const bdh_model *model);
/* dtype name of a tensor as stored in the file ("F32", "F16", "BF16", "Q8_0"),
 * for the tensor whose state_dict name (without _orig_mod.) is given;
 * NULL if there is no such tensor. */
BDH_API const char *bdh_model_file_dtype(const bdh_model *model, const char *tensor);

/* Write a quantized copy of the model file at in_path to out_path (type:
 * BDH_WEIGHTS_Q8_0): the same tensors and metadata, with encoder, encoder_v
 * and decoder as int8 blocks plus their scales (docs/format.md). Loaded with
 * BDH_WEIGHTS_AS_STORED or BDH_WEIGHTS_Q8_0, the copy gives exactly the
 * logits of in_path loaded with BDH_WEIGHTS_Q8_0. The file is written beside
 * out_path and renamed into place: on failure an existing out_path is left
 * as it was. */
BDH_API bdh_status bdh_model_quantize(const char *in_path, const char *out_path, bdh_weight_type type);

/* Write the checkpoint at in_path (any layout bdh_model_load accepts: a
 * directory, prefixed names, bdh-transformers' tensors, config.json) to
 * out_path as the canonical file (docs/format.md): the reference's names,
 * the whole configuration in __metadata__, attn.freqs in float32, and the
 * weights as `type`: BDH_WEIGHTS_F32, _BF16 or _F16 (a Q8_0 input is
 * dequantized), _Q8_0 (as bdh_model_quantize; a Q8_0 input is copied), or
 * _AS_STORED (each tensor's own type). Written beside out_path and renamed
 * into place, like bdh_model_quantize. */
BDH_API bdh_status bdh_model_convert(const char *in_path, const char *out_path, bdh_weight_type type);

/* Where a merged model's embed.weight and lm_head come from. */
typedef enum bdh_merge_embed {
    BDH_MERGE_EMBED_MEAN = 0, /* the mean of A's and B's (default) */
    BDH_MERGE_EMBED_A = 1,    /* A's, as they are */
    BDH_MERGE_EMBED_B = 2     /* B's, as they are */
} bdh_merge_embed;

typedef struct bdh_merge_params {
    bdh_merge_embed embed;
} bdh_merge_params;

BDH_API bdh_merge_params bdh_merge_default_params(void);

/* Merge two models with the same n_layer, n_embd, n_head and vocab_size
 * into one whose heads hold both neuron populations (the paper's model
 * merging, docs/merging.md): per head, A's N_A neurons then B's N_B, in
 * encoder, encoder_v, decoder and attn.freqs (each half keeps its RoPE
 * frequencies); embed.weight and lm_head as params->embed says (params NULL
 * = defaults); mlp_internal_dim_multiplier the sum. Inputs may be F32, F16,
 * BF16 or Q8_0 (dequantized); the output is F32 with the configuration in
 * its metadata, written beside out_path and renamed into place: on failure
 * an existing out_path is left as it was. Refuses different configurations,
 * tensors it does not know, and out_path naming an input. */
BDH_API bdh_status bdh_model_merge(const char *path_a, const char *path_b, const char *out_path,
                                   const bdh_merge_params *params);

/* ---------------------------------------------------------------- state */

/* Back to position 0, all-zero state. */
BDH_API bdh_status bdh_state_reset(bdh_state *state);
/* A new, independent state equal to src (fork a conversation). */
BDH_API bdh_status bdh_state_copy(const bdh_state *src, bdh_state **out);
/* Tokens seen since the last reset. */
BDH_API int64_t bdh_state_position(const bdh_state *state);
/* The state's model: valid while the state lives, even after bdh_model_free. */
BDH_API const bdh_model *bdh_state_model(const bdh_state *state);

/* Activity of the CPU fast path since the state's creation or last reset:
 * per layer, the mean fraction of the H*N neurons with xs > 0, of RoPE
 * pairs touched in the state, and of neurons with xs*ys > 0 (decoder rows
 * read). Arrays of n_layer floats; any may be NULL. Counts bdh_step and
 * bdh_step_batch tokens (not prefill); BDH_ERR_UNSUPPORTED elsewhere. */
BDH_API bdh_status bdh_state_activity(const bdh_state *state, float *xs_frac, float *pair_frac, float *xy_frac);

/* Serialise to bytes: magic, format version, model fingerprint, position,
 * checksum, state. bdh_state_save_size() gives the exact length. */
BDH_API size_t bdh_state_save_size(const bdh_state *state);
BDH_API bdh_status bdh_state_save(const bdh_state *state, void *buf, size_t cap, size_t *written);
/* Refuses (state unchanged) a damaged blob (BDH_ERR_FORMAT) or one saved
 * from another model (BDH_ERR_MODEL_MISMATCH). */
BDH_API bdh_status bdh_state_load(bdh_state *state, const void *buf, size_t len);

/* --------------------------------------------------------------- forward */

/* Feed n tokens at once (chunked, GEMM-based); leaves the same state as n
 * bdh_step calls, up to float rounding (the sums run in another order).
 * logits (NULL to skip) receives those after the last token. All tokens are
 * checked before any is fed. */
BDH_API bdh_status bdh_prefill(bdh_state *state, const int32_t *tokens, size_t n, float *logits);

/* As bdh_prefill, but logits_all (n * vocab_size floats, not NULL) receives
 * the logits after every token: row i is the prediction after tokens[0..i].
 * For scoring text (perplexity) at prefill speed. */
BDH_API bdh_status bdh_prefill_all(bdh_state *state, const int32_t *tokens, size_t n, float *logits_all);

/* Advance n independent states of one model by one token each;
 * logits: n * vocab_size floats (row i for states[i]) or NULL. The states
 * must be distinct. */
BDH_API bdh_status bdh_step_batch(bdh_state *const *states, const int32_t *tokens, size_t n, float *logits);

/* ---------------------------------------------------------- observability */
/* CPU path only (BDH_ERR_UNSUPPORTED on CUDA states). */

/* What one layer did for one token. Indices are neuron numbers within the
 * head (0..N-1), ascending; arrays are owned by the library and valid only
 * during the callback. */
typedef struct bdh_layer_activation {
    int64_t position;               /* of the token (0-based) */
    int32_t token;
    int32_t layer;
    int32_t n_head, n_neurons;
    const int32_t *x_count;         /* [n_head]: neurons with xs > 0 */
    const int32_t *const *x_index;  /* [n_head][x_count[h]] */
    const float *const *x_value;    /* xs at those neurons */
    const int32_t *y_count;         /* [n_head]: neurons with xs * ys > 0 */
    const int32_t *const *y_index;
    const float *const *y_value;    /* xs * ys at those neurons */
    float x_density, y_density;     /* fractions of the layer's H*N neurons */
} bdh_layer_activation;

typedef void (*bdh_observer)(const bdh_layer_activation *act, void *user);

/* Call fn for every layer of every token this state consumes (fn NULL
 * removes it). While an observer is set, bdh_prefill steps token by token
 * so that no token goes unseen. Buffers are allocated here, never per token;
 * without an observer the step does no extra work. */
BDH_API bdh_status bdh_state_set_observer(bdh_state *state, bdh_observer fn, void *user);

/* Hebbian co-activation monitors: for synapse (layer, i, j), with
 * 1 <= layer < n_layer and i, j in [0, H*N) head-major (h*N + neuron),
 *   sigma += xy_{layer-1}[i] * xs_layer[j]
 * for every token consumed (xy of the layer below, xs of this layer, same
 * token). BDH-GPU keeps this only implicitly (its state also carries the RoPE
 * rotation, which sigma leaves out). Monitors belong to the state: reset
 * zeroes them, copy/save/load carry them. *index gets the monitor's number. */
BDH_API bdh_status bdh_state_add_monitor(bdh_state *state, int32_t layer, int32_t i, int32_t j, size_t *index);
BDH_API size_t bdh_state_n_monitors(const bdh_state *state);
BDH_API bdh_status bdh_state_monitor(const bdh_state *state, size_t index, int32_t *layer, int32_t *i, int32_t *j,
                                     double *sigma);
BDH_API bdh_status bdh_state_clear_monitors(bdh_state *state);

/* The memory each neuron holds: norms[n] = |S[layer][head][n][:]| (N floats),
 * and one row of the state (D floats). */
BDH_API bdh_status bdh_state_row_norms(const bdh_state *state, int32_t layer, int32_t head, float *norms);
BDH_API bdh_status bdh_state_row(const bdh_state *state, int32_t layer, int32_t head, int32_t neuron, float *row);

/* ------------------------------------------------ sampling and generation */

/* Sampling, in this order (the reference's order for the first three):
 * repetition penalty -> temperature -> top-k -> softmax -> top-p -> min-p
 * -> draw. temperature 0 is greedy argmax (lowest id among equal maxima). */
typedef struct bdh_sampler_params {
    float temperature;      /* 0 = greedy; default 1 */
    int32_t top_k;          /* keep the k largest, ties with the k-th survive; 0 = off */
    float top_p;            /* keep the smallest most-likely set with mass >= top_p; 1 = off */
    float min_p;            /* drop tokens with p < min_p * p_max; 0 = off */
    float repeat_penalty;   /* logits of tokens in the window: positive / r, negative * r; 1 = off */
    int32_t repeat_window;  /* how many recent tokens the penalty sees (default 64) */
    uint64_t seed;          /* same seed, same draws, on every machine */
} bdh_sampler_params;

BDH_API bdh_sampler_params bdh_sampler_default_params(void);

/* Per-stream sampler: its own PRNG and repetition window (no globals). */
typedef struct bdh_sampler bdh_sampler;

BDH_API bdh_status bdh_sampler_new(const bdh_sampler_params *params, int32_t vocab_size, bdh_sampler **out);
BDH_API void bdh_sampler_free(bdh_sampler *sampler);
/* Record a token (prompt or generated) in the repetition window. */
BDH_API bdh_status bdh_sampler_accept(bdh_sampler *sampler, int32_t token);
/* Draw a token from logits (vocab_size floats, left unchanged); does not
 * accept it. Never returns a token of zero probability. */
BDH_API bdh_status bdh_sampler_sample(bdh_sampler *sampler, const float *logits, int32_t *token);

/* Called with each new token once the state has consumed it (so the state
 * may be copied or saved from inside); return non-zero to stop. */
typedef int (*bdh_token_callback)(int32_t token, void *user);

typedef struct bdh_generate_params {
    bdh_sampler_params sampler;
    int32_t max_new_tokens;
    /* Byte sequences that end generation (vocab_size 256 models only): it
     * stops right after the token that completes one; the callback has seen
     * that token. */
    const char *const *stop;
    const size_t *stop_len;
    int32_t n_stop;
} bdh_generate_params;

BDH_API bdh_generate_params bdh_generate_default_params(void);

typedef enum bdh_stop_reason {
    BDH_STOP_LENGTH = 0,    /* max_new_tokens reached */
    BDH_STOP_CALLBACK = 1,  /* the callback asked to stop */
    BDH_STOP_SEQUENCE = 2   /* a stop sequence was produced */
} bdh_stop_reason;

typedef struct bdh_generate_stats {
    int64_t n_prompt, n_generated;
    double prefill_seconds, decode_seconds;
    bdh_stop_reason stop_reason;
} bdh_generate_stats;

/* Pull-style generation: a generator owns the sampler and the stop
 * matching for one run over a state (which it borrows: keep the state alive
 * and do not step it elsewhere until the generator is freed).
 *
 * bdh_generator_new checks everything (prompt tokens, parameters, stop
 * sequences; n_prompt >= 1) and allocates, but feeds nothing: on failure the
 * state is untouched and *out is NULL. The first bdh_generator_next feeds
 * the prompt on top of whatever the state holds; each call then samples one
 * token, feeds it to the state and returns it, so on return the state has
 * consumed everything returned so far. *token = -1 (and BDH_OK) once
 * generation has ended: max_new_tokens reached or a stop sequence completed
 * (the token that completes it is returned first). A failed call ends the
 * generation too; the state then holds the tokens returned before it, plus
 * the prompt once the first call got past it (bdh_generator_stats says how
 * many of each). Stopping early is just not calling next again. */
typedef struct bdh_generator bdh_generator;
BDH_API bdh_status bdh_generator_new(bdh_state *state, const int32_t *prompt, size_t n_prompt,
                                     const bdh_generate_params *params, bdh_generator **out);
BDH_API bdh_status bdh_generator_next(bdh_generator *gen, int32_t *token); /* *token = -1 once generation has ended */
BDH_API void       bdh_generator_free(bdh_generator *gen);
/* Counts and times so far (n_prompt: prompt tokens fed, 0 before the first
 * next). stop_reason is BDH_STOP_LENGTH or BDH_STOP_SEQUENCE once next gave
 * -1; only bdh_generate reports BDH_STOP_CALLBACK. */
BDH_API bdh_status bdh_generator_stats(const bdh_generator *gen, bdh_generate_stats *stats);

/* The same as a loop over bdh_generator_next, handing each token to cb
 * (which may stop it: BDH_STOP_CALLBACK). On return the state has consumed
 * the prompt and every generated token, so a later call continues the same
 * stream (bdh_state_copy forks it). stats may be NULL; on failure they say
 * how far the call got (what the state consumed). */
BDH_API bdh_status bdh_generate(bdh_state *state, const int32_t *prompt, size_t n_prompt,
                                const bdh_generate_params *params, bdh_token_callback cb, void *user,
                                bdh_generate_stats *stats);

#ifdef __cplusplus
}
#endif

#endif /* BDH_H */
