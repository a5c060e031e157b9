/* A program written against only the five declarations that outside code is
 * promised (bdh_model_load, bdh_model_free, bdh_state_new, bdh_state_free,
 * bdh_step), linked with -lbdh: it must reproduce the reference's logits. */
#include "test_util.h"

static void test_reference_logits_with_five_calls(void **unused)
{
    const char *expect_path = TU_DATA "/golden/oddheads.expect.safetensors";
    size_t T, n;
    int32_t *tokens = tu_read_tensor(expect_path, "tokens", 1, &T, NULL);
    float *want = tu_read_tensor(expect_path, "logits", 0, &n, NULL);
    const size_t V = n / T;

    bdh_model *model = NULL;
    assert_int_equal(bdh_model_load(TU_DATA "/golden/oddheads.model.safetensors", NULL, &model), BDH_OK);
    bdh_state *state = NULL;
    assert_int_equal(bdh_state_new(model, &state), BDH_OK);
    float *logits = malloc(V * sizeof(float));
    for (size_t t = 0; t < T; t++) {
        assert_int_equal(bdh_step(state, tokens[t], logits), BDH_OK);
        assert_true(tu_rel_err(logits, want + t * V, V) <= TU_PARITY_TOL);
    }
    assert_int_equal(bdh_step(state, 0, NULL), BDH_OK); /* NULL logits: skip them */
    free(logits);
    bdh_state_free(state);
    bdh_model_free(model);
    free(tokens);
    free(want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_reference_logits_with_five_calls)};
    return cmocka_run_group_tests_name("five public calls", tests, NULL, NULL);
}
