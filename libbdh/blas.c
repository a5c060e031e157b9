/* Which OpenBLAS kernels are in use. OpenBLAS picks them when it is loaded,
 * from the CPU model; releases that do not know a newer CPU fall back to
 * generic SSE3 kernels ("Prescott"), several times slower for the prefill
 * GEMMs (measured 51 vs 141 tokens/s on a 2-core Xeon, model 207, with
 * Debian 12's 0.3.21). The choice can only be overridden from outside, with
 * OPENBLAS_CORETYPE before the library loads: bdh_blas_suggested_core() says
 * what to set, and the bdh tool and the Python binding set it. */
#include "internal.h"

#include <ctype.h>
#include <string.h>

extern char *openblas_get_corename(void);

const char *bdh_blas_core(void) { return openblas_get_corename(); }

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
    if (!is_generic(bdh_blas_core())) return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return "SkylakeX";
    if (__builtin_cpu_supports("avx2")) return "Haswell";
#endif
    return NULL;
}
