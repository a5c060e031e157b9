/* The fast CPU path against the plain reference path and against itself:
 * sparse vs dense on every case (<= 1e-5 relative: the same float32 sums in
 * another order), any thread count and any batch grouping bit-identical,
 * and 16-bit weight storage against references computed from the same
 * rounded weights. */
#include "test_util.h"

/* Run tokens through a fresh state; logits_all gets T rows. */
static void run(bdh_model *m, const int32_t *tokens, size_t T, float *logits_all, size_t V)
{
    bdh_state *s;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    for (size_t t = 0; t < T; t++) assert_int_equal(bdh_step(s, tokens[t], logits_all + t * V), BDH_OK);
    bdh_state_free(s);
}

static void test_sparse_matches_dense_reference(void **unused)
{
    tu_case cases[32];
    int n = tu_all_cases(cases, 32);
    for (int i = 0; i < n; i++) {
        size_t T, nl;
        int32_t *tokens = tu_read_tensor(cases[i].expect, "tokens", 1, &T, NULL);
        free(tu_read_tensor(cases[i].expect, "logits", 0, &nl, NULL));
        const size_t V = nl / T;
        if (T > 600) T = 600; /* the dense reference is slow; 600 positions is enough here */
        float *fast = malloc(T * V * sizeof(float)), *ref = malloc(T * V * sizeof(float));
        bdh_model *mf = tu_load_with(cases[i].model, 2, BDH_WEIGHTS_F32, BDH_KERNELS_FAST);
        bdh_model *mr = tu_load_with(cases[i].model, 1, BDH_WEIGHTS_F32, BDH_KERNELS_REFERENCE);
        run(mf, tokens, T, fast, V);
        run(mr, tokens, T, ref, V);
        double err = tu_worst_rel_err(fast, ref, T, V);
        printf("  %-12s sparse vs dense max rel err %.2e\n", cases[i].name, err);
        assert_true(err <= 1e-5);
        bdh_model_free(mf);
        bdh_model_free(mr);
        free(fast);
        free(ref);
        free(tokens);
    }
}

/* One thread stepping states one at a time against three threads stepping
 * them as a batch: the same bits, for float32 and Q8_0 weights. */
static void threads_and_batches(bdh_weight_type wt)
{
    const char *path = TU_DATA "/golden/long.model.safetensors";
    enum { B = 4, T = 40, V = 256 };
    bdh_model *m1 = tu_load_with(path, 1, wt, BDH_KERNELS_FAST);
    bdh_model *m3 = tu_load_with(path, 3, wt, BDH_KERNELS_FAST);
    bdh_state *solo[B], *grouped[B];
    static float a[B][V], b[B * V];
    for (int i = 0; i < B; i++) {
        assert_int_equal(bdh_state_new(m1, &solo[i]), BDH_OK);
        assert_int_equal(bdh_state_new(m3, &grouped[i]), BDH_OK);
    }
    for (int t = 0; t < T; t++) {
        int32_t toks[B];
        for (int i = 0; i < B; i++) {
            toks[i] = (int32_t)((t * 31 + i * 17) % V);
            assert_int_equal(bdh_step(solo[i], toks[i], a[i]), BDH_OK); /* 1 thread, one at a time */
        }
        assert_int_equal(bdh_step_batch(grouped, toks, B, b), BDH_OK); /* 3 threads, all together */
        for (int i = 0; i < B; i++) assert_memory_equal(a[i], b + i * V, V * sizeof(float));
    }
    for (int i = 0; i < B; i++) {
        bdh_state_free(solo[i]);
        bdh_state_free(grouped[i]);
    }
    bdh_model_free(m1);
    bdh_model_free(m3);
}

static void test_threads_and_batches_are_bit_identical(void **unused)
{
    threads_and_batches(BDH_WEIGHTS_F32);
    threads_and_batches(BDH_WEIGHTS_Q8_0);
}

/* Stored 16-bit weights (the golden bf16 and f16 files, kept as stored)
 * against the reference's logits from those same rounded weights. */
static void test_16bit_storage_matches_reference(void **unused)
{
    const char *names[] = {"bf16", "f16"};
    for (int i = 0; i < 2; i++) {
        char model[256], expect[256];
        snprintf(model, sizeof model, TU_DATA "/golden/%s.model.safetensors", names[i]);
        snprintf(expect, sizeof expect, TU_DATA "/golden/%s.expect.safetensors", names[i]);
        size_t T, nl;
        int32_t *tokens = tu_read_tensor(expect, "tokens", 1, &T, NULL);
        float *want = tu_read_tensor(expect, "logits", 0, &nl, NULL);
        const size_t V = nl / T;
        float *got = malloc(T * V * sizeof(float));
        bdh_model *m = tu_load_with(model, 2, BDH_WEIGHTS_AS_STORED, BDH_KERNELS_FAST);
        assert_true(bdh_model_weight_bytes(m) < (size_t)bdh_model_n_params(m) * 3); /* held as 16-bit */
        run(m, tokens, T, got, V);
        double err = tu_worst_rel_err(got, want, T, V);
        printf("  %-5s stored as is: max rel err %.2e\n", names[i], err);
        assert_true(err <= 1e-4);
        bdh_model_free(m);
        free(got);
        free(want);
        free(tokens);
    }
}

/* An F32 file rounded to BF16 at load equals the same file with weights
 * rounded beforehand (the golden bf16 model is tiny's shapes, but other
 * weights: so round tiny ourselves through the library's own path twice:
 * F32 file -> BF16 storage, vs the dense reference on BF16 storage). */
static void test_bf16_conversion_at_load(void **unused)
{
    const char *path = TU_DATA "/golden/long.model.safetensors";
    const char *expect = TU_DATA "/golden/long.expect.safetensors";
    size_t T, nl;
    int32_t *tokens = tu_read_tensor(expect, "tokens", 1, &T, NULL);
    float *f32 = tu_read_tensor(expect, "logits", 0, &nl, NULL);
    const size_t V = nl / T;
    T = 128;
    float *fast = malloc(T * V * sizeof(float)), *ref = malloc(T * V * sizeof(float));
    for (int wt = BDH_WEIGHTS_BF16; wt <= BDH_WEIGHTS_F16; wt++) {
        bdh_model *mf = tu_load_with(path, 2, (bdh_weight_type)wt, BDH_KERNELS_FAST);
        bdh_model *mr = tu_load_with(path, 1, (bdh_weight_type)wt, BDH_KERNELS_REFERENCE);
        run(mf, tokens, T, fast, V);
        run(mr, tokens, T, ref, V);
        double e_ref = tu_worst_rel_err(fast, ref, T, V), e_f32 = tu_worst_rel_err(fast, f32, T, V);
        printf("  %s storage: vs dense on the same rounded weights %.2e; vs float32 weights %.2e\n",
               wt == BDH_WEIGHTS_BF16 ? "bf16" : "f16", e_ref, e_f32);
        assert_true(e_ref <= 1e-5);
        assert_true(e_f32 > 0.0); /* the rounding really happened */
        bdh_model_free(mf);
        bdh_model_free(mr);
    }
    free(fast);
    free(ref);
    free(f32);
    free(tokens);
}

static void test_prefill_on_16bit_storage(void **unused)
{
    const char *path = TU_DATA "/golden/long.model.safetensors";
    bdh_model *m = tu_load_with(path, 2, BDH_WEIGHTS_BF16, BDH_KERNELS_FAST);
    int32_t toks[150];
    for (int i = 0; i < 150; i++) toks[i] = (i * 7 + 3) % 256;
    float a[256], b[256];
    bdh_state *s, *t;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    assert_int_equal(bdh_state_new(m, &t), BDH_OK);
    for (int i = 0; i < 150; i++) assert_int_equal(bdh_step(s, toks[i], a), BDH_OK);
    assert_int_equal(bdh_prefill(t, toks, 150, b), BDH_OK);
    assert_true(tu_rel_err(b, a, 256) <= 1e-5);
    bdh_state_free(s);
    bdh_state_free(t);
    bdh_model_free(m);
}

/* Activity counters: plausible fractions that obey their invariants, and
 * zero again after reset. */
static void test_activity_counters(void **unused)
{
    bdh_model *m = tu_load_with(TU_DATA "/golden/long.model.safetensors", 2, BDH_WEIGHTS_F32, BDH_KERNELS_FAST);
    bdh_state *s;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    for (int t = 0; t < 50; t++) assert_int_equal(bdh_step(s, (t * 13) % 256, NULL), BDH_OK);
    float xs[6], pairs[6], xy[6];
    assert_int_equal(bdh_state_activity(s, xs, pairs, xy), BDH_OK);
    for (int l = 0; l < 6; l++) {
        printf("  layer %d: xs %.3f pairs %.3f xy %.3f\n", l, xs[l], pairs[l], xy[l]);
        assert_true(xs[l] > 0.0f && xs[l] < 1.0f);
        assert_true(pairs[l] >= xs[l] - 1e-6f && pairs[l] <= 2.0f * xs[l] + 1e-6f); /* a pair: one or two active */
        assert_true(xy[l] <= xs[l]);
    }
    assert_int_equal(bdh_state_reset(s), BDH_OK);
    assert_int_equal(bdh_state_activity(s, xs, NULL, NULL), BDH_OK);
    assert_true(xs[0] == 0.0f);
    assert_int_equal(bdh_state_activity(NULL, xs, NULL, NULL), BDH_ERR_INVALID_ARGUMENT);
    bdh_state_free(s);
    bdh_model_free(m);
}

int main(void)
{
    /* with BDH_CPU_KERNEL set (make test-c), the capped variant must be the one in use */
    const char *cap = getenv("BDH_CPU_KERNEL");
    printf("  %s\n", bdh_system_info());
    if (cap && !strstr(bdh_system_info(), cap)) {
        printf("BDH_CPU_KERNEL=%s is not in use\n", cap);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sparse_matches_dense_reference),
        cmocka_unit_test(test_threads_and_batches_are_bit_identical),
        cmocka_unit_test(test_16bit_storage_matches_reference),
        cmocka_unit_test(test_bf16_conversion_at_load),
        cmocka_unit_test(test_prefill_on_16bit_storage),
        cmocka_unit_test(test_activity_counters),
    };
    return cmocka_run_group_tests_name("fast paths", tests, NULL, NULL);
}
