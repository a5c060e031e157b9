/* Parity with the reference: every case, every position, through bdh_step,
 * bdh_prefill_all (in uneven pieces, so chunk edges fall everywhere) and
 * bdh_prefill. Expected logits come from the public reference model
 * (tests/data/golden) and from tools/make_cases.py (tests/data/cases). */
#include "test_util.h"

typedef struct expect {
    int32_t *tokens;
    float *logits;
    size_t T, V;
} expect;

static expect read_expect(const tu_case *c)
{
    expect e;
    size_t nt, nl;
    int64_t rows;
    e.tokens = tu_read_tensor(c->expect, "tokens", 1, &nt, NULL);
    e.logits = tu_read_tensor(c->expect, "logits", 0, &nl, &rows);
    e.T = nt;
    e.V = nl / nt;
    assert_int_equal((size_t)rows, nt);
    return e;
}

static double check_rows(const char *what, const tu_case *c, const expect *e, const float *got, size_t first, size_t n)
{
    double worst = 0.0;
    for (size_t t = first; t < first + n; t++) {
        double err = tu_rel_err(got + (t - first) * e->V, e->logits + t * e->V, e->V);
        if (err > TU_PARITY_TOL) fprintf(stderr, "%s %s: position %zu rel err %.3g\n", c->name, what, t, err);
        assert_true(err <= TU_PARITY_TOL);
        if (err > worst) worst = err;
    }
    return worst;
}

static double parity_step(bdh_model *m, const tu_case *c, const expect *e)
{
    bdh_state *s;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    float *logits = malloc(e->V * sizeof(float));
    double worst = 0.0;
    for (size_t t = 0; t < e->T; t++) {
        assert_int_equal(bdh_step(s, e->tokens[t], logits), BDH_OK);
        double err = check_rows("step", c, e, logits, t, 1);
        if (err > worst) worst = err;
    }
    assert_int_equal(bdh_state_position(s), (int64_t)e->T);
    free(logits);
    bdh_state_free(s);
    return worst;
}

/* Pieces of sizes 1, 5, 64, 65, 200, ... until the sequence is used up. */
static double parity_prefill_all(bdh_model *m, const tu_case *c, const expect *e)
{
    static const size_t pieces[] = {1, 5, 64, 65, 200};
    bdh_state *s;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    float *logits = malloc(e->T * e->V * sizeof(float));
    double worst = 0.0;
    size_t done = 0;
    for (int i = 0; done < e->T; i++) {
        size_t n = pieces[i % 5];
        if (n > e->T - done) n = e->T - done;
        assert_int_equal(bdh_prefill_all(s, e->tokens + done, n, logits), BDH_OK);
        double err = check_rows("prefill_all", c, e, logits, done, n);
        if (err > worst) worst = err;
        done += n;
    }
    free(logits);
    bdh_state_free(s);
    return worst;
}

static double parity_prefill_last(bdh_model *m, const tu_case *c, const expect *e)
{
    bdh_state *s;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    float *logits = malloc(e->V * sizeof(float));
    assert_int_equal(bdh_prefill(s, e->tokens, e->T, logits), BDH_OK);
    double err = check_rows("prefill", c, e, logits, e->T - 1, 1);
    free(logits);
    bdh_state_free(s);
    return err;
}

static void test_every_case(void **unused)
{
    tu_case cases[32];
    int n = tu_all_cases(cases, 32);
    assert_true(n >= 6); /* the six golden cases at least */
    for (int i = 0; i < n; i++) {
        bdh_model *m = tu_load(cases[i].model);
        expect e = read_expect(&cases[i]);
        double a = parity_step(m, &cases[i], &e);
        double b = parity_prefill_all(m, &cases[i], &e);
        double c = parity_prefill_last(m, &cases[i], &e);
        printf("  %-12s T=%-5zu max rel err: step %.2e  prefill_all %.2e  prefill %.2e\n", cases[i].name, e.T, a, b, c);
        free(e.tokens);
        free(e.logits);
        bdh_model_free(m);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_every_case)};
    return cmocka_run_group_tests_name("golden parity", tests, NULL, NULL);
}
