/* Element types: the one list of how numbers are stored, in files and in
 * memory, with the conversions between them. Shared by the C sources and the
 * CUDA host code (the .cu files include it through internal.h), so bf16 and
 * f16 are rounded and widened the same way everywhere.
 *
 * Conversions are exact bit manipulations (no _Float16: clang 14 lacks it on
 * x86-64, and the results must not depend on the compiler): widening is
 * exact, narrowing rounds to nearest even, NaN stays NaN. */
#ifndef BDH_DTYPE_H
#define BDH_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bdh_elem {
    BDH_ELEM_F32,
    BDH_ELEM_F16,
    BDH_ELEM_BF16,
    BDH_ELEM_F64,  /* file only */
    BDH_ELEM_I32,  /* file only */
    BDH_ELEM_I64,  /* file only */
    BDH_ELEM_I8,   /* file only: the values of Q8_0 blocks */
    BDH_ELEM_Q8_0, /* held weights: int8 values in blocks of BDH_Q8_BLOCK along a
                      row, one F16 scale per block (value = scale * q) */
    BDH_ELEM_COUNT
} bdh_elem;

/* Q8_0: a row of n values is ceil(n / 32) blocks; the last may be short. */
#define BDH_Q8_BLOCK 32
static inline size_t bdh_q8_blocks(size_t n) { return (n + BDH_Q8_BLOCK - 1) / BDH_Q8_BLOCK; }

/* "F32", "F16", ... as safetensors spells them; "?" for no such type. */
__attribute__((visibility("hidden"))) const char *bdh_elem_name(bdh_elem e);
/* Bytes per element (Q8_0: 1, its int8 values; the scales come on top); 0
 * for no such type. */
__attribute__((visibility("hidden"))) size_t bdh_elem_size(bdh_elem e);
/* The type named s (safetensors spelling); false if none. */
__attribute__((visibility("hidden"))) bool bdh_elem_parse(const char *s, bdh_elem *out);
/* A float type (F32, F16, BF16): what a file's weights may be. */
static inline bool bdh_elem_is_float(bdh_elem e) { return e == BDH_ELEM_F32 || e == BDH_ELEM_F16 || e == BDH_ELEM_BF16; }

/* n elements of a F32/F16/BF16 array (src may be unaligned) to float32. */
__attribute__((visibility("hidden"))) void bdh_elem_to_f32(bdh_elem e, const void *src, float *dst, size_t n);
/* n float32 values into a F32/F16/BF16 array (dst may be unaligned). */
__attribute__((visibility("hidden"))) void bdh_elem_from_f32(bdh_elem e, const float *src, void *dst, size_t n);
/* Round n float32 values in place to what type e can hold (a no-op for F32;
 * Q8_0: the n values are one row, quantized and dequantized). */
__attribute__((visibility("hidden"))) void bdh_elem_round_f32(bdh_elem e, float *v, size_t n);

/* Q8_0 quantization of one row of n values (x finite): per block, scale =
 * F16(absmax / 127), q = round(x / scale) clamped to [-127, 127] (0 when the
 * scale is 0). q: n int8 values, scales: bdh_q8_blocks(n) F16 bits. The one
 * quantizer: load-time quantization and `bdh quantize` files agree bit for
 * bit. */
__attribute__((visibility("hidden"))) void bdh_q8_quantize_row(const float *x, size_t n, int8_t *q, uint16_t *scales);
/* The row back to float32: x = F16 scale * q. */
__attribute__((visibility("hidden"))) void bdh_q8_dequantize_row(const int8_t *q, const uint16_t *scales, size_t n, float *x);

static inline float bdh_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t bdh_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bdh_bf16_to_f32(uint16_t h) { return bdh_bits_f32((uint32_t)h << 16); }

/* float32 -> bfloat16, round to nearest even (as PyTorch's .bfloat16()). */
static inline uint16_t bdh_f32_to_bf16(float f)
{
    uint32_t u = bdh_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN stays a quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* IEEE binary16 -> binary32, exact (subnormals, inf and NaN included). */
static inline float bdh_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1f) return bdh_bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp != 0) return bdh_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
    if (mant == 0) return bdh_bits_f32(sign);
    /* subnormal: mant * 2^-24, exact in float32 */
    const float v = (float)mant * (1.0f / 16777216.0f);
    return sign ? -v : v;
}

/* binary32 -> binary16, round to nearest even; overflow gives inf. */
static inline uint16_t bdh_f32_to_f16(float f)
{
    const uint32_t u = bdh_f32_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN, quiet */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);                       /* rounds past 65504: inf */
    if (a >= 0x38800000u) {                                                        /* normal half */
        const uint32_t r = a + 0xfffu + ((a >> 13) & 1u);                          /* round the 13 dropped bits */
        return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
    }
    /* subnormal half (or zero): value / 2^-24, rounded to nearest even integer */
    const uint32_t shift = 126u - (a >> 23); /* >= 14 */
    if (shift > 24u) return sign;            /* below half the smallest subnormal */
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
    return (uint16_t)(sign | (q + (rem > halfway || (rem == halfway && (q & 1u)))));
}

#ifdef __cplusplus
}
#endif

#endif /* BDH_DTYPE_H */
