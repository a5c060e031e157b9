/* The one place a device is chosen: the backend for a model's parameters.
 * Everything after the load goes through model->backend. */
#include "internal.h"

bdh_status bdh_backend_select(const bdh_model_params *p, const bdh_backend **out)
{
    if (p->device == BDH_DEVICE_CUDA) {
#ifdef BDH_WITH_CUDA
        *out = &bdh_cuda_backend;
#else
        return bdh_fail(BDH_ERR_UNSUPPORTED, "this libbdh was built without CUDA (rebuild with make CUDA=1)");
#endif
    } else {
        *out = p->kernels == BDH_KERNELS_REFERENCE ? &bdh_reference_backend : &bdh_cpu_backend;
    }
    return (*out)->check_params(p);
}
