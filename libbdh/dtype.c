/* Element type names, sizes and array conversions (dtype.h). */
#include "internal.h"

static const struct { const char *name; size_t size; } elems[BDH_ELEM_COUNT] = {
    [BDH_ELEM_F32] = {"F32", 4}, [BDH_ELEM_F16] = {"F16", 2}, [BDH_ELEM_BF16] = {"BF16", 2},
    [BDH_ELEM_F64] = {"F64", 8}, [BDH_ELEM_I32] = {"I32", 4}, [BDH_ELEM_I64] = {"I64", 8},
};

const char *bdh_elem_name(bdh_elem e) { return (unsigned)e < BDH_ELEM_COUNT ? elems[e].name : "?"; }

size_t bdh_elem_size(bdh_elem e) { return (unsigned)e < BDH_ELEM_COUNT ? elems[e].size : 0; }

bool bdh_elem_parse(const char *s, bdh_elem *out)
{
    for (int e = 0; e < BDH_ELEM_COUNT; e++)
        if (strcmp(s, elems[e].name) == 0) {
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

void bdh_elem_round_f32(bdh_elem e, float *v, size_t n)
{
    if (e == BDH_ELEM_F16)
        for (size_t i = 0; i < n; i++) v[i] = bdh_f16_to_f32(bdh_f32_to_f16(v[i]));
    else if (e == BDH_ELEM_BF16)
        for (size_t i = 0; i < n; i++) v[i] = bdh_bf16_to_f32(bdh_f32_to_bf16(v[i]));
}
