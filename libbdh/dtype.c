/* Element type names, sizes and array conversions (dtype.h). */
#include "internal.h"

#include <math.h>

static const struct { const char *name; size_t size; } elems[BDH_ELEM_COUNT] = {
    [BDH_ELEM_F32] = {"F32", 4}, [BDH_ELEM_F16] = {"F16", 2}, [BDH_ELEM_BF16] = {"BF16", 2},
    [BDH_ELEM_F64] = {"F64", 8}, [BDH_ELEM_I32] = {"I32", 4}, [BDH_ELEM_I64] = {"I64", 8},
    [BDH_ELEM_I8] = {"I8", 1},   [BDH_ELEM_Q8_0] = {"Q8_0", 1},
};

const char *bdh_elem_name(bdh_elem e) { return (unsigned)e < BDH_ELEM_COUNT ? elems[e].name : "?"; }

size_t bdh_elem_size(bdh_elem e) { return (unsigned)e < BDH_ELEM_COUNT ? elems[e].size : 0; }

bool bdh_elem_parse(const char *s, bdh_elem *out)
{
    for (int e = 0; e < BDH_ELEM_COUNT; e++)
        if (e != BDH_ELEM_Q8_0 && strcmp(s, elems[e].name) == 0) { /* Q8_0 is no safetensors dtype */
            *out = (bdh_elem)e;
            return true;
        }
    return false;
}

void bdh_elem_to_f32(bdh_elem e, const void *src, float *dst, size_t n)
{
    const uint8_t *p = src;
    if (e == BDH_ELEM_F32) {
        memcpy(dst, src, n * 4);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        dst[i] = e == BDH_ELEM_F16 ? bdh_f16_to_f32(v) : bdh_bf16_to_f32(v);
    }
}

void bdh_elem_from_f32(bdh_elem e, const float *src, void *dst, size_t n)
{
    uint8_t *p = dst;
    if (e == BDH_ELEM_F32) {
        memcpy(dst, src, n * 4);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const uint16_t v = e == BDH_ELEM_F16 ? bdh_f32_to_f16(src[i]) : bdh_f32_to_bf16(src[i]);
        memcpy(p + 2 * i, &v, 2);
    }
}

void bdh_q8_quantize_row(const float *x, size_t n, int8_t *q, uint16_t *scales)
{
    for (size_t b = 0; b * BDH_Q8_BLOCK < n; b++) {
        const size_t i0 = b * BDH_Q8_BLOCK, i1 = i0 + BDH_Q8_BLOCK < n ? i0 + BDH_Q8_BLOCK : n;
        float amax = 0.0f;
        for (size_t i = i0; i < i1; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        scales[b] = bdh_f32_to_f16(amax / 127.0f);
        const float d = bdh_f16_to_f32(scales[b]);
        for (size_t i = i0; i < i1; i++) {
            const float r = d > 0.0f ? roundf(x[i] / d) : 0.0f;
            q[i] = (int8_t)(r > 127.0f ? 127 : r < -127.0f ? -127 : (int)r);
        }
    }
}

void bdh_q8_dequantize_row(const int8_t *q, const uint16_t *scales, size_t n, float *x)
{
    for (size_t i0 = 0, b = 0; i0 < n; i0 += BDH_Q8_BLOCK, b++) {
        const float d = bdh_f16_to_f32(scales[b]);
        const size_t i1 = n - i0 < BDH_Q8_BLOCK ? n : i0 + BDH_Q8_BLOCK;
        for (size_t i = i0; i < i1; i++) x[i] = d * (float)q[i];
    }
}

void bdh_elem_round_f32(bdh_elem e, float *v, size_t n)
{
    if (e == BDH_ELEM_Q8_0) {
        for (size_t i0 = 0; i0 < n; i0 += BDH_Q8_BLOCK) { /* blocks are independent */
            const size_t len = n - i0 < BDH_Q8_BLOCK ? n - i0 : BDH_Q8_BLOCK;
            int8_t q[BDH_Q8_BLOCK];
            uint16_t scale;
            bdh_q8_quantize_row(v + i0, len, q, &scale);
            bdh_q8_dequantize_row(q, &scale, len, v + i0);
        }
        return;
    }
    if (e == BDH_ELEM_F16)
        for (size_t i = 0; i < n; i++) v[i] = bdh_f16_to_f32(bdh_f32_to_f16(v[i]));
    else if (e == BDH_ELEM_BF16)
        for (size_t i = 0; i < n; i++) v[i] = bdh_bf16_to_f32(bdh_f32_to_bf16(v[i]));
}
