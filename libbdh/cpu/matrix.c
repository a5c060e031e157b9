/* Weight matrices as the CPU path holds them: row-major, one row per neuron
 * (or vocabulary entry) of D values, stored as float32, bfloat16 or float16.
 * Everything that reads weights goes through the few kernels here, so the
 * storage type is decided once, at load.
 *
 * The row kernels are compiled for AVX-512, AVX2+FMA and plain x86-64 and
 * picked at run time (target_clones). Their summation order depends only on
 * n, never on threads or batch size, so results are reproducible. */
#include "cpu.h"

#include <cblas.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(BDH_NO_CLONES)
#define HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT
#endif

/* 16-bit floats: gcc reads them natively (F16C in the AVX2 clones); where
 * the compiler lacks _Float16 (clang 14 on x86-64) the bits are widened by
 * dtype.h. The stored bits are IEEE binary16 either way. */
#if defined(__FLT16_MANT_DIG__) && !defined(__clang__)
typedef _Float16 half_t;
static inline float half_value(half_t h) { return (float)h; }
#else
typedef uint16_t half_t;
static inline float half_value(half_t h) { return bdh_f16_to_f32(h); }
#endif

/* ---- row kernels: the only place the hot loops live (dot products: see
 * bdh_rows_dot below) */

HOT static void axpy_f32(float *restrict acc, float a, const float *restrict w, int n)
{
#pragma omp simd
    for (int i = 0; i < n; i++) acc[i] += a * w[i];
}

HOT static void axpy_bf16(float *restrict acc, float a, const uint16_t *restrict w, int n)
{
#pragma omp simd
    for (int i = 0; i < n; i++) acc[i] += a * bdh_bf16_to_f32(w[i]);
}

HOT static void axpy_f16(float *restrict acc, float a, const half_t *restrict w, int n)
{
#pragma omp simd
    for (int i = 0; i < n; i++) acc[i] += a * half_value(w[i]);
}

void bdh_row_axpy(const bdh_matrix *m, int64_t row, float a, float *acc)
{
    const int n = (int)m->cols;
    switch (m->type) {
    case BDH_ELEM_F32: axpy_f32(acc, a, (const float *)m->data + row * n, n); break;
    case BDH_ELEM_BF16: axpy_bf16(acc, a, (const uint16_t *)m->data + row * n, n); break;
    case BDH_ELEM_Q8_0: bdh_q8_axpy(m, row, a, acc); break;
    default: axpy_f16(acc, a, (const half_t *)m->data + row * n, n); break;
    }
}

void bdh_row_f32(const bdh_matrix *m, int64_t row, float *out)
{
    const size_t n = (size_t)m->cols;
    if (m->type == BDH_ELEM_F32) {
        memcpy(out, (const float *)m->data + row * n, n * 4);
    } else if (m->type == BDH_ELEM_Q8_0) {
        bdh_q8_row_f32(m, row, out);
    } else if (m->type == BDH_ELEM_BF16) {
        const uint16_t *w = (const uint16_t *)m->data + row * n;
        for (size_t i = 0; i < n; i++) out[i] = bdh_bf16_to_f32(w[i]);
    } else {
        const half_t *w = (const half_t *)m->data + row * n;
        for (size_t i = 0; i < n; i++) out[i] = half_value(w[i]);
    }
}

/* ---- many rows against one vector, four at a time: independent
 * accumulators keep the FMA units and the loads busy (a single dot is one
 * long dependency chain plus a horizontal sum). Hand-written for AVX-512
 * and AVX2 (picked once at run time), plain C otherwise. */

#include <immintrin.h>

static float widen(bdh_elem t, const void *row, int i)
{
    if (t == BDH_ELEM_F32) return ((const float *)row)[i];
    if (t == BDH_ELEM_BF16) return bdh_bf16_to_f32(((const uint16_t *)row)[i]);
    return half_value(((const half_t *)row)[i]);
}

/* the generic kernel, any storage type, any n */
static void dot4_c(bdh_elem t, const void *const r[4], const float *x, int n, float out[4])
{
    for (int k = 0; k < 4; k++) {
        float s = 0.0f;
        for (int i = 0; i < n; i++) s += widen(t, r[k], i) * x[i];
        out[k] = s;
    }
}

#define TAIL(t, start)                                                   \
    for (int k = 0; k < 4; k++)                                          \
        for (int e = (start); e < n; e++) out[k] += widen(t, r[k], e) * x[e];

__attribute__((target("avx512f"))) static __m512 load16_avx512(bdh_elem t, const void *row, int i)
{
    if (t == BDH_ELEM_F32) return _mm512_loadu_ps((const float *)row + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i));
    if (t == BDH_ELEM_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

__attribute__((target("avx512f"))) static void dot4_avx512(bdh_elem t, const void *const r[4], const float *x, int n,
                                                           float out[4])
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 xv = _mm512_loadu_ps(x + i);
        a0 = _mm512_fmadd_ps(load16_avx512(t, r[0], i), xv, a0);
        a1 = _mm512_fmadd_ps(load16_avx512(t, r[1], i), xv, a1);
        a2 = _mm512_fmadd_ps(load16_avx512(t, r[2], i), xv, a2);
        a3 = _mm512_fmadd_ps(load16_avx512(t, r[3], i), xv, a3);
    }
    out[0] = _mm512_reduce_add_ps(a0);
    out[1] = _mm512_reduce_add_ps(a1);
    out[2] = _mm512_reduce_add_ps(a2);
    out[3] = _mm512_reduce_add_ps(a3);
    TAIL(t, i)
}

__attribute__((target("avx2,fma,f16c"))) static __m256 load8_avx2(bdh_elem t, const void *row, int i)
{
    if (t == BDH_ELEM_F32) return _mm256_loadu_ps((const float *)row + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
    if (t == BDH_ELEM_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

__attribute__((target("avx2,fma"))) static float hsum_avx2(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma,f16c"))) static void dot4_avx2(bdh_elem t, const void *const r[4], const float *x, int n,
                                                              float out[4])
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 xv = _mm256_loadu_ps(x + i);
        a0 = _mm256_fmadd_ps(load8_avx2(t, r[0], i), xv, a0);
        a1 = _mm256_fmadd_ps(load8_avx2(t, r[1], i), xv, a1);
        a2 = _mm256_fmadd_ps(load8_avx2(t, r[2], i), xv, a2);
        a3 = _mm256_fmadd_ps(load8_avx2(t, r[3], i), xv, a3);
    }
    out[0] = hsum_avx2(a0);
    out[1] = hsum_avx2(a1);
    out[2] = hsum_avx2(a2);
    out[3] = hsum_avx2(a3);
    TAIL(t, i)
}

typedef void (*dot4_impl)(bdh_elem, const void *const[4], const float *, int, float[4]);

static dot4_impl dot4 = dot4_c;
static pthread_once_t dot4_once = PTHREAD_ONCE_INIT;

/* clang 14 cannot ask for F16C; every AVX2 CPU has it */
static bool has_f16c(void)
{
#if defined(__clang__)
    return true;
#else
    return __builtin_cpu_supports("f16c");
#endif
}

/* The best kernel this CPU runs; BDH_CPU_KERNEL=avx2 or =c caps the choice,
 * so the tests can check every variant on a machine that has the wider ones. */
static void pick_dot4(void)
{
#if defined(__x86_64__) && !defined(BDH_NO_CLONES)
    const char *cap = getenv("BDH_CPU_KERNEL");
    const bool allow512 = !cap || strcmp(cap, "avx512") == 0, allow2 = allow512 || strcmp(cap, "avx2") == 0;
    __builtin_cpu_init();
    if (allow512 && __builtin_cpu_supports("avx512f"))
        dot4 = dot4_avx512;
    else if (allow2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c())
        dot4 = dot4_avx2;
#endif
}

const char *bdh_cpu_kernel_name(void)
{
    pthread_once(&dot4_once, pick_dot4);
    return dot4 == dot4_avx512 ? "avx512" : dot4 == dot4_avx2 ? "avx2" : "c";
}

/* out[k] = dot(row rows[k] (or row0 + k when rows is NULL), x), k < n */
void bdh_rows_dot(const bdh_matrix *m, const int32_t *rows, int64_t row0, int n, const float *x, float *out)
{
    if (m->type == BDH_ELEM_Q8_0) {
        bdh_q8_rows_dot(m, rows, row0, n, x, out);
        return;
    }
    pthread_once(&dot4_once, pick_dot4);
    const size_t stride = (size_t)m->cols * bdh_elem_size(m->type);
    const uint8_t *base = m->data;
    for (int k = 0; k < n; k += 4) {
        const void *r[4];
        float o[4];
        for (int q = 0; q < 4; q++) {
            const int kk = k + q < n ? k + q : k; /* pad the last group with a repeat */
            r[q] = base + (size_t)(rows ? rows[kk] : row0 + kk) * stride;
        }
        dot4(m->type, r, x, (int)m->cols, o);
        for (int q = 0; q < 4 && k + q < n; q++) out[k + q] = o[q];
    }
}

/* State row read and update in one pass over the row:
 * acc += q * S_row (old values), then S_row += q * x. */
HOT void bdh_state_row_update(float *restrict S_row, float q, const float *restrict x, float *restrict acc, int n)
{
#pragma omp simd
    for (int i = 0; i < n; i++) {
        const float s = S_row[i];
        acc[i] += q * s;
        S_row[i] = s + q * x[i];
    }
}

/* ---- GEMMs over a matrix slice (prefill): float32 rows are used in place,
 * 16-bit and Q8_0 rows are widened a block at a time into scratch. */


/* out[T][ldo] (columns 0..nrows) = X[T][D] @ m[row0 .. row0+nrows]^T */
void bdh_gemm_rows_t(const bdh_matrix *m, int64_t row0, int nrows, const float *X, int T, float *out, int ldo, float *scratch)
{
    const int D = (int)m->cols;
    for (int r = 0; r < nrows; r += BDH_GEMM_BLOCK) {
        const int nb = nrows - r < BDH_GEMM_BLOCK ? nrows - r : BDH_GEMM_BLOCK;
        const float *W;
        if (m->type == BDH_ELEM_F32) {
            W = (const float *)m->data + (row0 + r) * D;
        } else {
            for (int i = 0; i < nb; i++) bdh_row_f32(m, row0 + r + i, scratch + (size_t)i * D);
            W = scratch;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, nb, D, 1.0f, X, D, W, D, 0.0f, out + r, ldo);
    }
}

/* out[T][D] += A[T][lda] (columns 0..nrows) @ m[row0 .. row0+nrows] */
void bdh_gemm_rows_n(const bdh_matrix *m, int64_t row0, int nrows, const float *A, int T, int lda, float *out, float *scratch)
{
    const int D = (int)m->cols;
    for (int r = 0; r < nrows; r += BDH_GEMM_BLOCK) {
        const int nb = nrows - r < BDH_GEMM_BLOCK ? nrows - r : BDH_GEMM_BLOCK;
        const float *W;
        if (m->type == BDH_ELEM_F32) {
            W = (const float *)m->data + (row0 + r) * D;
        } else {
            for (int i = 0; i < nb; i++) bdh_row_f32(m, row0 + r + i, scratch + (size_t)i * D);
            W = scratch;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, nb, 1.0f, A + r, lda, W, D, 1.0f, out, D);
    }
}
