/* The element-type conversions (libbdh/dtype.h) against the compiler's own
 * IEEE conversions: float16 narrowing must equal a (_Float16) cast (round to
 * nearest even, overflow to inf) on a sweep of float32 bit patterns, float16
 * widening must be exact on all 65536 halves, and bfloat16 rounding must pick
 * the nearer of the two neighbours, ties to even. */
#include "test_util.h"

#include "dtype.h"

/* Every 509th float32 pattern (8.4 million, both signs, NaN and inf included),
 * plus the boundaries where rounding changes class. */
#define STRIDE 509u

static int same_f16(uint16_t a, uint16_t b)
{
    const int a_nan = (a & 0x7c00u) == 0x7c00u && (a & 0x3ffu), b_nan = (b & 0x7c00u) == 0x7c00u && (b & 0x3ffu);
    return a_nan || b_nan ? a_nan == b_nan : a == b;
}

static void test_f16_narrowing_matches_cast(void **unused)
{
#if defined(__FLT16_MANT_DIG__) && !defined(__clang__)
    const uint32_t edges[] = {0x477fefffu, 0x477ff000u, 0x477ff001u, 0x38800000u, 0x387fffffu, 0x33000000u,
                              0x33000001u, 0x32ffffffu, 0x33800000u, 0x00000001u, 0x7f800000u, 0x7fc00000u};
    size_t bad = 0;
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        for (uint32_t sign = 0; sign <= 1; sign++) {
            const float f = bdh_bits_f32(edges[i] | sign << 31);
            _Float16 h = (_Float16)f;
            uint16_t want;
            memcpy(&want, &h, 2);
            bad += !same_f16(bdh_f32_to_f16(f), want);
        }
    }
    for (uint64_t u = 0; u <= 0xffffffffu; u += STRIDE) {
        const float f = bdh_bits_f32((uint32_t)u);
        _Float16 h = (_Float16)f;
        uint16_t want;
        memcpy(&want, &h, 2);
        if (!same_f16(bdh_f32_to_f16(f), want) && bad++ < 5)
            printf("  f16(%08x): got %04x, cast gives %04x\n", (unsigned)u, bdh_f32_to_f16(f), want);
    }
    assert_int_equal(bad, 0);
#else
    skip();
#endif
}

static void test_f16_widening_is_exact(void **unused)
{
#if defined(__FLT16_MANT_DIG__) && !defined(__clang__)
    for (uint32_t v = 0; v <= 0xffffu; v++) {
        const uint16_t bits = (uint16_t)v;
        _Float16 h;
        memcpy(&h, &bits, 2);
        const float want = (float)h, got = bdh_f16_to_f32(bits);
        if (want != want) assert_true(got != got);
        else assert_int_equal(bdh_f32_bits(got), bdh_f32_bits(want));
        if (want == want) assert_int_equal(bdh_f32_to_f16(got), bits); /* round trip */
    }
#else
    skip();
#endif
}

static void test_bf16_rounds_to_nearest_even(void **unused)
{
    size_t bad = 0;
    for (uint64_t u = 0; u <= 0xffffffffu; u += STRIDE) {
        const float f = bdh_bits_f32((uint32_t)u);
        const uint16_t got = bdh_f32_to_bf16(f);
        if (f != f) {
            bad += bdh_bf16_to_f32(got) == bdh_bf16_to_f32(got); /* must stay NaN */
            continue;
        }
        const uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
        const double x = f, dlo = fabs(x - bdh_bf16_to_f32(lo));
        const double dhi = (lo & 0x7fffu) == 0x7f7fu ? INFINITY : fabs(x - bdh_bf16_to_f32(hi));
        const uint16_t want = (u & 0xffffu) == 0 ? lo : dlo < dhi ? lo : dhi < dlo ? hi : (lo & 1u) ? hi : lo;
        /* values past the largest finite bf16 round to inf */
        const uint16_t inf = (uint16_t)((lo & 0x8000u) | 0x7f80u);
        bad += got != ((lo & 0x7fffu) == 0x7f7fu && (u & 0xffffu) >= 0x8000u ? inf : want);
    }
    assert_int_equal(bad, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_narrowing_matches_cast),
        cmocka_unit_test(test_f16_widening_is_exact),
        cmocka_unit_test(test_bf16_rounds_to_nearest_even),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
