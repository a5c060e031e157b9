/* Small numeric pieces shared by the step and prefill paths. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <sys/mman.h>

/* v = max(v, 0), in place. */
void bdh_relu(float *v, size_t n)
{
    for (size_t i = 0; i < n; i++) v[i] = v[i] > 0.0f ? v[i] : 0.0f;
}

/* LayerNorm over n values, no weight or bias, eps 1e-5, biased variance.
 * Sums in double: the result is then the float32 rounding of the exact
 * normalisation, whatever n is. */
void bdh_layernorm(float *v, int n)
{
    double sum = 0.0, sq = 0.0;
    for (int i = 0; i < n; i++) sum += v[i];
    const double mean = sum / n;
    for (int i = 0; i < n; i++) {
        const double d = v[i] - mean;
        sq += d * d;
    }
    const double rstd = 1.0 / sqrt(sq / n + 1e-5);
    for (int i = 0; i < n; i++) v[i] = (float)((v[i] - mean) * rstd);
}

/* The reference turns positions into phases in float32:
 * phase = (float32(t) * freq) mod 1, then * float32(2*pi). Copying that
 * (rather than computing in double) is what keeps parity at long positions. */
void bdh_rope_tables(const float *freqs, int n, int64_t t, float *cos_out, float *sin_out)
{
    const float two_pi = (float)(2.0 * M_PI);
    const float tf = (float)t;
    for (int j = 0; j < n; j++) {
        float turns = tf * freqs[j];
        turns = turns - floorf(turns);
        const float phase = turns * two_pi;
        cos_out[j] = cosf(phase);
        sin_out[j] = sinf(phase);
    }
}

/* Interleaved pairs (2i, 2i+1): out = v * cos + rotate(v) * sin, with
 * rotate(v)[2i] = -v[2i+1] and rotate(v)[2i+1] = v[2i]. */
void bdh_rope_apply(const float *v, const float *cs, const float *sn, int n, float *out)
{
    for (int i = 0; i < n; i += 2) {
        const float v0 = v[i], v1 = v[i + 1];
        out[i] = v0 * cs[i] - v1 * sn[i];
        out[i + 1] = v1 * cs[i + 1] + v0 * sn[i + 1];
    }
}

/* Large arrays (weights, states) on 2 MiB boundaries, with transparent huge
 * pages asked for: the step gathers rows all over them, and with 4 KiB pages
 * nearly every row costs a TLB miss. */
void *bdh_alloc_large(size_t bytes)
{
    const size_t huge = (size_t)2 << 20;
    if (bytes < huge) return aligned_alloc(64, (bytes + 63) / 64 * 64);
    void *p = aligned_alloc(huge, (bytes + huge - 1) / huge * huge);
#ifdef MADV_HUGEPAGE
    if (p) madvise(p, (bytes + huge - 1) / huge * huge, MADV_HUGEPAGE);
#endif
    return p;
}
