/* The CUDA backend when the library is built without CUDA=1: every entry
 * point answers BDH_ERR_UNSUPPORTED, so BDH_DEVICE_CUDA fails cleanly. */
#include "internal.h"

#include <stdio.h>

#define NO_CUDA bdh_fail(BDH_ERR_UNSUPPORTED, "this libbdh was built without CUDA (rebuild with make CUDA=1)")

bdh_status bdh_cuda_model_init(bdh_model *m) { (void)m; return NO_CUDA; }
void bdh_cuda_model_release(bdh_model *m) { (void)m; }
bdh_status bdh_cuda_state_init(bdh_state *s) { (void)s; return NO_CUDA; }
void bdh_cuda_state_release(bdh_state *s) { (void)s; }
bdh_status bdh_cuda_state_reset(bdh_state *s) { (void)s; return NO_CUDA; }
bdh_status bdh_cuda_state_copy(bdh_state *dst, const bdh_state *src) { (void)dst; (void)src; return NO_CUDA; }
bdh_status bdh_cuda_state_download(const bdh_state *s, float *host) { (void)s; (void)host; return NO_CUDA; }
bdh_status bdh_cuda_state_upload(bdh_state *s, const float *host) { (void)s; (void)host; return NO_CUDA; }
bdh_status bdh_cuda_step(bdh_state *s, int32_t token, float *logits) { (void)s; (void)token; (void)logits; return NO_CUDA; }
bdh_status bdh_cuda_prefill(bdh_state *s, const int32_t *tokens, size_t n, float *logits, bool all_rows)
{
    (void)s; (void)tokens; (void)n; (void)logits; (void)all_rows;
    return NO_CUDA;
}
bdh_status bdh_cuda_step_batch(bdh_state *const *states, const int32_t *tokens, size_t n, float *logits)
{
    (void)states; (void)tokens; (void)n; (void)logits;
    return NO_CUDA;
}
void bdh_cuda_describe(char *buf, size_t cap) { snprintf(buf, cap, "not built (make CUDA=1)"); }
