/* Q8_0 weights on the CPU: each row of D values is held as D int8 values
 * (bdh_matrix.data, [rows][D]) and one F16 scale per block of 32 along the
 * row (bdh_matrix.scales, [rows][ceil(D/32)]); value = scale * q. A 256-wide
 * row is 256 + 16 bytes instead of 1024: the step reads a quarter of the
 * bytes of float32.
 *
 * Kernels: rows against a float32 vector four at a time (AVX-512, AVX2+FMA,
 * plain C, picked with the float kernels: matrix.c), one row's axpy, and one
 * row widened to float32 (for the prefill GEMMs). Activations stay float32:
 * each block's int8 values are widened and multiplied in float, the block
 * sum is scaled once. Summation order depends only on D. */
#include "cpu.h"

#include <immintrin.h>
#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(BDH_NO_CLONES)
#define HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT
#endif

static inline const int8_t *q8_row(const bdh_matrix *m, int64_t row) { return (const int8_t *)m->data + row * m->cols; }

static inline const uint16_t *q8_scales(const bdh_matrix *m, int64_t row)
{
    return m->scales + row * (int64_t)bdh_q8_blocks((size_t)m->cols);
}

void bdh_q8_row_f32(const bdh_matrix *m, int64_t row, float *out)
{
    bdh_q8_dequantize_row(q8_row(m, row), q8_scales(m, row), (size_t)m->cols, out);
}

HOT static void axpy_block(float *restrict acc, float a, const int8_t *restrict q, int n)
{
#pragma omp simd
    for (int i = 0; i < n; i++) acc[i] += a * (float)q[i];
}

void bdh_q8_axpy(const bdh_matrix *m, int64_t row, float a, float *acc)
{
    const int n = (int)m->cols;
    const int8_t *q = q8_row(m, row);
    const uint16_t *s = q8_scales(m, row);
    for (int i0 = 0, b = 0; i0 < n; i0 += BDH_Q8_BLOCK, b++)
        axpy_block(acc + i0, a * bdh_f16_to_f32(s[b]), q + i0, n - i0 < BDH_Q8_BLOCK ? n - i0 : BDH_Q8_BLOCK);
}

/* ---- four rows against x */

/* one short (tail) block of row q from i0, in plain C, for every variant */
static float tail_block(const int8_t *q, const float *x, int i0, int n)
{
    float s = 0.0f;
    for (int i = i0; i < n; i++) s += (float)q[i] * x[i];
    return s;
}

static void dot4_q8_c(const int8_t *const r[4], const uint16_t *const s[4], const float *x, int n, float out[4])
{
    for (int k = 0; k < 4; k++) {
        float sum = 0.0f;
        for (int i0 = 0, b = 0; i0 < n; i0 += BDH_Q8_BLOCK, b++) {
            const int i1 = n - i0 < BDH_Q8_BLOCK ? n : i0 + BDH_Q8_BLOCK;
            sum += bdh_f16_to_f32(s[k][b]) * tail_block(r[k], x, i0, i1);
        }
        out[k] = sum;
    }
}

__attribute__((target("avx512f"))) static __m512 widen16_avx512(const int8_t *q)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
}

__attribute__((target("avx512f,f16c"))) static void dot4_q8_avx512(const int8_t *const r[4], const uint16_t *const s[4],
                                                                  const float *x, int n, float out[4])
{
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int i0 = 0, b = 0;
    for (; i0 + BDH_Q8_BLOCK <= n; i0 += BDH_Q8_BLOCK, b++) {
        const __m512 x0 = _mm512_loadu_ps(x + i0), x1 = _mm512_loadu_ps(x + i0 + 16);
        for (int k = 0; k < 4; k++) {
            const __m512 bs = _mm512_fmadd_ps(widen16_avx512(r[k] + i0 + 16), x1, _mm512_mul_ps(widen16_avx512(r[k] + i0), x0));
            acc[k] = _mm512_fmadd_ps(bs, _mm512_set1_ps(_cvtsh_ss(s[k][b])), acc[k]);
        }
    }
    for (int k = 0; k < 4; k++) {
        out[k] = _mm512_reduce_add_ps(acc[k]);
        if (i0 < n) out[k] += _cvtsh_ss(s[k][b]) * tail_block(r[k], x, i0, n);
    }
}

__attribute__((target("avx2,fma"))) static __m256 widen8_avx2(const int8_t *q)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}

__attribute__((target("avx2,fma"))) static float hsum8(__m256 v)
{
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    t = _mm_add_ss(t, _mm_movehdup_ps(t));
    return _mm_cvtss_f32(t);
}

__attribute__((target("avx2,fma,f16c"))) static void dot4_q8_avx2(const int8_t *const r[4], const uint16_t *const s[4],
                                                                 const float *x, int n, float out[4])
{
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int i0 = 0, b = 0;
    for (; i0 + BDH_Q8_BLOCK <= n; i0 += BDH_Q8_BLOCK, b++) {
        const __m256 x0 = _mm256_loadu_ps(x + i0), x1 = _mm256_loadu_ps(x + i0 + 8);
        const __m256 x2 = _mm256_loadu_ps(x + i0 + 16), x3 = _mm256_loadu_ps(x + i0 + 24);
        for (int k = 0; k < 4; k++) {
            const int8_t *q = r[k] + i0;
            __m256 bs = _mm256_mul_ps(widen8_avx2(q), x0);
            bs = _mm256_fmadd_ps(widen8_avx2(q + 8), x1, bs);
            bs = _mm256_fmadd_ps(widen8_avx2(q + 16), x2, bs);
            bs = _mm256_fmadd_ps(widen8_avx2(q + 24), x3, bs);
            acc[k] = _mm256_fmadd_ps(bs, _mm256_set1_ps(_cvtsh_ss(s[k][b])), acc[k]);
        }
    }
    for (int k = 0; k < 4; k++) {
        out[k] = hsum8(acc[k]);
        if (i0 < n) out[k] += _cvtsh_ss(s[k][b]) * tail_block(r[k], x, i0, n);
    }
}

typedef void (*dot4_q8_impl)(const int8_t *const[4], const uint16_t *const[4], const float *, int, float[4]);

static dot4_q8_impl dot4 = dot4_q8_c;
static pthread_once_t dot4_once = PTHREAD_ONCE_INIT;

/* the variant matching the float kernels' choice (bdh_cpu_kernel_name) */
static void pick(void)
{
    const char *k = bdh_cpu_kernel_name();
    dot4 = strcmp(k, "avx512") == 0 ? dot4_q8_avx512 : strcmp(k, "avx2") == 0 ? dot4_q8_avx2 : dot4_q8_c;
}

void bdh_q8_rows_dot(const bdh_matrix *m, const int32_t *rows, int64_t row0, int n, const float *x, float *out)
{
    pthread_once(&dot4_once, pick);
    for (int k = 0; k < n; k += 4) {
        const int8_t *r[4];
        const uint16_t *s[4];
        float o[4];
        for (int q = 0; q < 4; q++) {
            const int kk = k + q < n ? k + q : k; /* pad the last group with a repeat */
            const int64_t row = rows ? rows[kk] : row0 + kk;
            r[q] = q8_row(m, row);
            s[q] = q8_scales(m, row);
        }
        dot4(r, s, x, (int)m->cols, o);
        for (int q = 0; q < 4 && k + q < n; q++) out[k + q] = o[q];
    }
}
