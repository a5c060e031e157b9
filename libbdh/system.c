/* What this build runs on: bdh_system_info() and the OpenBLAS kernel check.
 *
 * OpenBLAS picks its kernels when it is loaded, from the CPU model; releases
 * that do not know a newer CPU fall back to generic SSE3 kernels
 * ("Prescott"), several times slower for the prefill GEMMs (measured 51 vs
 * 141 tokens/s on a 2-core Xeon, model 207, with Debian 12's 0.3.21). The
 * choice can only be overridden from outside, with OPENBLAS_CORETYPE before
 * the library loads: bdh_blas_suggested_core() says what to set. */
#include "internal.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

extern char *openblas_get_corename(void);
extern char *openblas_get_config(void);

static bool is_generic(const char *core)
{
    static const char *const generic[] = {"prescott", "core2", "nehalem", "atom", "unknown"};
    char lower[32] = {0};
    for (size_t i = 0; core && core[i] && i < sizeof lower - 1; i++) lower[i] = (char)tolower((unsigned char)core[i]);
    for (size_t i = 0; i < sizeof generic / sizeof generic[0]; i++)
        if (strcmp(lower, generic[i]) == 0) return true;
    return false;
}

const char *bdh_blas_suggested_core(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (!is_generic(openblas_get_corename())) return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return "SkylakeX";
    if (__builtin_cpu_supports("avx2")) return "Haswell";
#endif
    return NULL;
}

#ifdef BDH_WITH_CUDA
#define BDH_WITH_CUDA_TEXT "CUDA=1"
#else
#define BDH_WITH_CUDA_TEXT "CPU only"
#endif

static char info[1024];
static pthread_once_t info_once = PTHREAD_ONCE_INIT;

static const char *build_options(void)
{
#if defined(__SANITIZE_ADDRESS__)
    return BDH_WITH_CUDA_TEXT ", ASan";
#elif defined(__SANITIZE_THREAD__)
    return BDH_WITH_CUDA_TEXT ", TSan";
#else
    return BDH_WITH_CUDA_TEXT;
#endif
}

static void make_info(void)
{
    char cuda[256] = "not built (make CUDA=1)";
#ifdef BDH_WITH_CUDA
    bdh_cuda_describe(cuda, sizeof cuda);
#endif
    const char *suggest = bdh_blas_suggested_core();
    snprintf(info, sizeof info, "libbdh %s (%s); CPU kernels: %s; BLAS: %s, core %s%s%s; CUDA: %s", bdh_version(),
             build_options(), bdh_cpu_kernel_name(), openblas_get_config(), openblas_get_corename(),
             suggest ? ", generic: set OPENBLAS_CORETYPE=" : "", suggest ? suggest : "", cuda);
}

const char *bdh_system_info(void)
{
    pthread_once(&info_once, make_info);
    return info;
}
