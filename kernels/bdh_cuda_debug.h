/* Hidden hooks into the CUDA backend for bench/gpu_bench.c, which links the
 * static library (libbdh.a) to reach them: they are not exported from
 * libbdh.so and are not part of the API. */
#ifndef BDH_CUDA_DEBUG_H
#define BDH_CUDA_DEBUG_H

#include <stddef.h>
#include <stdint.h>

#include "bdh.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Counters summed over the single-token steps of a CUDA state since its
 * creation or the last reset of the counters: [0] (layer, head) visits,
 * [1] active pairs listed, [2] neurons with xs > 0, [3] neurons with
 * xs * ys > 0. 0 on success, -1 if s is not a CUDA state or a call failed. */
__attribute__((visibility("hidden"))) int bdh_cuda_debug_stats(const bdh_state *s, uint64_t out[4]);
__attribute__((visibility("hidden"))) int bdh_cuda_debug_reset_stats(bdh_state *s);
/* Device bytes of the weights, and their type (0 float32, 1 bfloat16, 2 Q8_0
 * (encoder, encoder_v, decoder; embed and lm_head float32); -1 no CUDA model). */
__attribute__((visibility("hidden"))) size_t bdh_cuda_debug_weight_bytes(const bdh_model *m);
__attribute__((visibility("hidden"))) int bdh_cuda_debug_weight_type(const bdh_model *m);

/* One step run eagerly with timing events between the kernels: adds each
 * kind's milliseconds (summed over the layers) into ms[], in the order of
 * bdh_cuda_profile_names; advances the state like bdh_step. 0 or -1. */
#define BDH_CUDA_PROFILE_KINDS 9
static const char *const bdh_cuda_profile_names[BDH_CUDA_PROFILE_KINDS] = {
    "embed", "encoder", "compact", "state", "ln_a", "encoder_v", "decoder", "final_ln", "lm_head"};
__attribute__((visibility("hidden"))) int bdh_cuda_debug_profile(bdh_state *s, int32_t token, double *ms);

#ifdef __cplusplus
}
#endif

#endif
