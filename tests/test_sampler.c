/* The sampler through its public API: reproducibility, greedy, each filter
 * keeping exactly the tokens it should (checked through many draws), no
 * zero-probability token ever, the repetition penalty, and bad input. */
#include "test_util.h"

#define DRAWS 20000

static bdh_sampler *make(const bdh_sampler_params *p, int32_t V)
{
    bdh_sampler *s = NULL;
    bdh_status rc = bdh_sampler_new(p, V, &s);
    if (rc != BDH_OK) fprintf(stderr, "bdh_sampler_new: %s\n", bdh_last_error());
    assert_int_equal(rc, BDH_OK);
    return s;
}

static int32_t sample1(bdh_sampler *s, const float *logits)
{
    int32_t t = -1;
    assert_int_equal(bdh_sampler_sample(s, logits, &t), BDH_OK);
    return t;
}

/* counts[t] = how often t was drawn in n draws. */
static void histogram(const bdh_sampler_params *p, const float *logits, int32_t V, int n, int *counts)
{
    bdh_sampler *s = make(p, V);
    memset(counts, 0, (size_t)V * sizeof *counts);
    for (int i = 0; i < n; i++) {
        int32_t t = sample1(s, logits);
        assert_true(t >= 0 && t < V);
        counts[t]++;
    }
    bdh_sampler_free(s);
}

/* Drawn tokens are exactly those with keep[t] set (every one at least once). */
static void assert_kept(const int *counts, const int *keep, int32_t V)
{
    for (int32_t t = 0; t < V; t++) {
        if (keep[t] ? counts[t] == 0 : counts[t] != 0)
            fprintf(stderr, "token %d: drawn %d times, expected %s\n", (int)t, counts[t], keep[t] ? "some" : "none");
        assert_true(keep[t] ? counts[t] > 0 : counts[t] == 0);
    }
}

/* logits = log(p): softmax gives back p */
static void log_probs(const double *p, int32_t V, float *logits)
{
    for (int32_t i = 0; i < V; i++) logits[i] = p[i] > 0 ? (float)log(p[i]) : -INFINITY;
}

static void ramp(float *logits, int32_t V)
{
    for (int32_t i = 0; i < V; i++) logits[i] = (float)sin(0.7 * i) * 2.0f;
}

/* ------------------------------------------------------------------------ */

static void test_defaults(void **unused)
{
    bdh_sampler_params p = bdh_sampler_default_params();
    assert_true(p.temperature == 1.0f);
    assert_int_equal(p.top_k, 0);
    assert_true(p.top_p == 1.0f);
    assert_true(p.min_p == 0.0f);
    assert_true(p.repeat_penalty == 1.0f);
    assert_int_equal(p.repeat_window, 64);
    assert_int_equal(p.seed, 0);
    bdh_sampler *s = make(NULL, 10); /* NULL params = defaults */
    bdh_sampler_free(s);
    bdh_sampler_free(NULL);
}

static void draw_sequence(uint64_t seed, int32_t *out, int n)
{
    float logits[64];
    ramp(logits, 64);
    bdh_sampler_params p = bdh_sampler_default_params();
    p.seed = seed;
    bdh_sampler *s = make(&p, 64);
    for (int i = 0; i < n; i++) out[i] = sample1(s, logits);
    bdh_sampler_free(s);
}

static void test_same_seed_same_sequence(void **unused)
{
    int32_t a[500], b[500], c[500];
    draw_sequence(42, a, 500);
    draw_sequence(42, b, 500);
    draw_sequence(43, c, 500);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
}

/* Pins the PRNG and the draw: these values must never change, on any
 * machine (uniform logits over 256 tokens, so the draw is floor(u * 256)).
 * They were computed independently, from the splitmix64 and xoshiro256**
 * reference algorithms written out in Python. */
static void test_seed_is_portable(void **unused)
{
    static const int32_t expect[8] = {11, 215, 176, 222, 25, 228, 115, 51};
    float logits[256] = {0};
    bdh_sampler_params p = bdh_sampler_default_params();
    p.seed = 1234;
    bdh_sampler *s = make(&p, 256);
    int32_t got[8];
    for (int i = 0; i < 8; i++) got[i] = sample1(s, logits);
    bdh_sampler_free(s);
    if (memcmp(got, expect, sizeof got) != 0)
        for (int i = 0; i < 8; i++) fprintf(stderr, "%d%s", (int)got[i], i < 7 ? ", " : "\n");
    assert_memory_equal(got, expect, sizeof got);
}

static void test_greedy(void **unused)
{
    float logits[64];
    ramp(logits, 64);
    int32_t best = 0;
    for (int32_t i = 1; i < 64; i++)
        if (logits[i] > logits[best]) best = i;

    bdh_sampler_params p = bdh_sampler_default_params();
    p.temperature = 0.0f;
    bdh_sampler *s = make(&p, 64);
    assert_int_equal(sample1(s, logits), best);
    bdh_sampler_free(s);

    p = bdh_sampler_default_params();
    p.top_k = 1;
    s = make(&p, 64);
    for (int i = 0; i < 100; i++) assert_int_equal(sample1(s, logits), best);
    bdh_sampler_free(s);

    /* equal maxima: greedy takes the lowest id */
    float tie[6] = {0, 5, 1, 5, -2, 5};
    p = bdh_sampler_default_params();
    p.temperature = 0.0f;
    s = make(&p, 6);
    assert_int_equal(sample1(s, tie), 1);
    bdh_sampler_free(s);
}

static void test_top_k_keeps_ties(void **unused)
{
    float logits[6] = {3, 2, 2, 2, 1, 0};
    bdh_sampler_params p = bdh_sampler_default_params();
    p.top_k = 2;
    int counts[6];
    histogram(&p, logits, 6, DRAWS, counts);
    assert_kept(counts, (int[]){1, 1, 1, 1, 0, 0}, 6);

    p.top_k = 5;
    histogram(&p, logits, 6, DRAWS, counts);
    assert_kept(counts, (int[]){1, 1, 1, 1, 1, 0}, 6);
}

static void test_top_p(void **unused)
{
    const double probs[6] = {0.05, 0.4, 0.1, 0.25, 0.15, 0.05};
    float logits[6];
    log_probs(probs, 6, logits);
    bdh_sampler_params p = bdh_sampler_default_params();
    int counts[6];

    p.top_p = 0.6f; /* 0.4 < 0.6 <= 0.4 + 0.25 */
    histogram(&p, logits, 6, DRAWS, counts);
    assert_kept(counts, (int[]){0, 1, 0, 1, 0, 0}, 6);
    /* renormalised: 0.4 : 0.25 */
    assert_true(fabs(counts[1] / (double)DRAWS - 0.4 / 0.65) < 0.02);

    p.top_p = 0.3f; /* the top token alone has enough mass */
    histogram(&p, logits, 6, DRAWS, counts);
    assert_kept(counts, (int[]){0, 1, 0, 0, 0, 0}, 6);

    p.top_p = 0.85f; /* 0.4 + 0.25 + 0.15 = 0.8 < 0.85 <= 0.9 */
    histogram(&p, logits, 6, DRAWS, counts);
    assert_kept(counts, (int[]){0, 1, 1, 1, 1, 0}, 6);
}

static void test_min_p(void **unused)
{
    const double probs[5] = {0.1, 0.4, 0.05, 0.3, 0.15};
    float logits[5];
    log_probs(probs, 5, logits);
    bdh_sampler_params p = bdh_sampler_default_params();
    int counts[5];

    p.min_p = 0.6f; /* floor 0.24: keeps 0.4 and 0.3 */
    histogram(&p, logits, 5, DRAWS, counts);
    assert_kept(counts, (int[]){0, 1, 0, 1, 0}, 5);
    assert_true(fabs(counts[1] / (double)DRAWS - 0.4 / 0.7) < 0.02);

    p.min_p = 0.2f; /* floor 0.08: drops only 0.05 */
    histogram(&p, logits, 5, DRAWS, counts);
    assert_kept(counts, (int[]){1, 1, 0, 1, 1}, 5);

    p.min_p = 1.0f; /* only the most likely */
    histogram(&p, logits, 5, DRAWS, counts);
    assert_kept(counts, (int[]){0, 1, 0, 0, 0}, 5);
}

static void test_never_zero_probability(void **unused)
{
    const float ninf = -INFINITY;
    int counts[8];
    bdh_sampler_params p = bdh_sampler_default_params();

    float masked[8] = {ninf, 0.5f, ninf, 2.0f, ninf, ninf, -1.0f, ninf};
    histogram(&p, masked, 8, DRAWS, counts);
    assert_kept(counts, (int[]){0, 1, 0, 1, 0, 0, 1, 0}, 8);

    /* top_k larger than the finite tokens; top_p near 1 */
    p.top_k = 6;
    p.top_p = 0.999999f;
    histogram(&p, masked, 8, DRAWS, counts);
    assert_kept(counts, (int[]){0, 1, 0, 1, 0, 0, 1, 0}, 8);

    /* probabilities that underflow to exactly 0 in double */
    float far[8] = {0, -1000, -1000, -1000, -1000, -1000, -1000, -1000};
    p = bdh_sampler_default_params();
    histogram(&p, far, 8, DRAWS, counts);
    assert_kept(counts, (int[]){1, 0, 0, 0, 0, 0, 0, 0}, 8);

    /* the only finite token comes last in every order */
    float last[8] = {ninf, ninf, ninf, ninf, ninf, ninf, ninf, -3.0f};
    p.temperature = 7.0f;
    histogram(&p, last, 8, DRAWS, counts);
    assert_kept(counts, (int[]){0, 0, 0, 0, 0, 0, 0, 1}, 8);

    /* tiny temperature: the runner-up's probability underflows */
    float close[4] = {1.0f, 0.999f, -5.0f, 0.5f};
    p.temperature = 1e-6f;
    histogram(&p, close, 4, DRAWS, counts);
    assert_kept(counts, (int[]){1, 0, 0, 0}, 4);
}

static void test_infinite_logits(void **unused)
{
    float logits[5] = {0.0f, INFINITY, 5.0f, INFINITY, -INFINITY};
    bdh_sampler_params p = bdh_sampler_default_params();
    int counts[5];
    histogram(&p, logits, 5, DRAWS, counts);
    assert_kept(counts, (int[]){0, 1, 0, 1, 0}, 5);
    p.temperature = 0.0f;
    histogram(&p, logits, 5, 10, counts);
    assert_kept(counts, (int[]){0, 1, 0, 0, 0}, 5);
}

static void test_bad_logits(void **unused)
{
    float logits[4] = {0.0f, 1.0f, NAN, 2.0f};
    bdh_sampler *s = make(NULL, 4);
    int32_t t = 77;
    assert_int_equal(bdh_sampler_sample(s, logits, &t), BDH_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(bdh_last_error(), "NaN"));
    assert_int_equal(t, 77);

    float none[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    assert_int_equal(bdh_sampler_sample(s, none, &t), BDH_ERR_INVALID_ARGUMENT);
    assert_true(strlen(bdh_last_error()) > 0);
    assert_int_equal(bdh_sampler_sample(s, NULL, &t), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_sampler_sample(s, logits, NULL), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_sampler_sample(NULL, logits, &t), BDH_ERR_INVALID_ARGUMENT);
    bdh_sampler_free(s);

    bdh_sampler_params p = bdh_sampler_default_params();
    p.temperature = 0.0f;
    s = make(&p, 4);
    assert_int_equal(bdh_sampler_sample(s, logits, &t), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_sampler_sample(s, none, &t), BDH_ERR_INVALID_ARGUMENT);
    bdh_sampler_free(s);
}

static void test_repeat_penalty(void **unused)
{
    bdh_sampler_params p = bdh_sampler_default_params();
    p.temperature = 0.0f;
    p.repeat_penalty = 1.5f;
    p.repeat_window = 2;
    bdh_sampler *s = make(&p, 8);

    /* positive logit divided: 2.0 / 1.5 < 1.9 */
    float pos[8] = {2.0f, 1.9f, 0, 0, 0, 0, 0, 0};
    const float pos_copy0 = pos[0];
    assert_int_equal(sample1(s, pos), 0);
    assert_int_equal(bdh_sampler_accept(s, 0), BDH_OK);
    assert_int_equal(bdh_sampler_accept(s, 0), BDH_OK); /* twice in the window, penalised once */
    assert_int_equal(sample1(s, pos), 1);
    assert_true(pos[0] == pos_copy0); /* logits left unchanged */

    /* negative logit multiplied: -1.0 * 1.5 < -1.2 */
    float neg[8] = {-1.0f, -1.2f, -9, -9, -9, -9, -9, -9};
    assert_int_equal(sample1(s, neg), 1);

    /* the window forgets: after two other tokens, 0 is free again */
    assert_int_equal(bdh_sampler_accept(s, 5), BDH_OK);
    assert_int_equal(bdh_sampler_accept(s, 6), BDH_OK);
    assert_int_equal(sample1(s, pos), 0);
    assert_int_equal(sample1(s, neg), 0);
    bdh_sampler_free(s);

    /* window 0: accept works, nothing is penalised */
    p.repeat_window = 0;
    s = make(&p, 8);
    assert_int_equal(bdh_sampler_accept(s, 0), BDH_OK);
    assert_int_equal(sample1(s, pos), 0);
    bdh_sampler_free(s);
}

static void expect_rejected(bdh_sampler_params p, const char *what)
{
    bdh_sampler *s = NULL;
    bdh_status rc = bdh_sampler_new(&p, 16, &s);
    if (rc != BDH_ERR_INVALID_ARGUMENT) fprintf(stderr, "%s was accepted\n", what);
    assert_int_equal(rc, BDH_ERR_INVALID_ARGUMENT);
    assert_null(s);
    assert_true(strlen(bdh_last_error()) > 0);
}

static void test_bad_params(void **unused)
{
    const bdh_sampler_params d = bdh_sampler_default_params();
    bdh_sampler_params p;
#define REJECT(field, value)            \
    do {                                \
        p = d;                          \
        p.field = value;                \
        expect_rejected(p, #field "=" #value); \
    } while (0)
    REJECT(temperature, -0.1f);
    REJECT(temperature, NAN);
    REJECT(temperature, INFINITY);
    REJECT(top_k, -1);
    REJECT(top_p, 0.0f);
    REJECT(top_p, 1.01f);
    REJECT(top_p, NAN);
    REJECT(min_p, -0.01f);
    REJECT(min_p, 1.5f);
    REJECT(min_p, NAN);
    REJECT(repeat_penalty, 0.0f);
    REJECT(repeat_penalty, -1.0f);
    REJECT(repeat_penalty, NAN);
    REJECT(repeat_window, -1);
#undef REJECT

    bdh_sampler *s = (bdh_sampler *)&d; /* a failed constructor writes NULL */
    assert_int_equal(bdh_sampler_new(&d, 0, &s), BDH_ERR_INVALID_ARGUMENT);
    assert_null(s);
    s = (bdh_sampler *)&d;
    assert_int_equal(bdh_sampler_new(&d, -5, &s), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_sampler_new(&d, 16, NULL), BDH_ERR_INVALID_ARGUMENT);
    assert_null(s);

    s = make(&d, 16);
    assert_int_equal(bdh_sampler_accept(s, 16), BDH_ERR_TOKEN);
    assert_int_equal(bdh_sampler_accept(s, -1), BDH_ERR_TOKEN);
    assert_int_equal(bdh_sampler_accept(NULL, 0), BDH_ERR_INVALID_ARGUMENT);
    bdh_sampler_free(s);
}

/* Lower temperature concentrates the draws on the most likely token. */
static void test_temperature(void **unused)
{
    float logits[3] = {1.0f, 0.0f, -1.0f};
    bdh_sampler_params p = bdh_sampler_default_params();
    int hot[3], cold[3];
    histogram(&p, logits, 3, DRAWS, hot);
    p.temperature = 0.25f;
    histogram(&p, logits, 3, DRAWS, cold);
    const double p0 = 1.0 / (1.0 + exp(-1.0) + exp(-2.0));
    assert_true(fabs(hot[0] / (double)DRAWS - p0) < 0.02);
    assert_true(cold[0] > hot[0]);
    assert_true(cold[2] < hot[2]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_same_seed_same_sequence),
        cmocka_unit_test(test_seed_is_portable),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_top_k_keeps_ties),
        cmocka_unit_test(test_top_p),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_never_zero_probability),
        cmocka_unit_test(test_infinite_logits),
        cmocka_unit_test(test_bad_logits),
        cmocka_unit_test(test_repeat_penalty),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_temperature),
    };
    return cmocka_run_group_tests_name("sampler", tests, NULL, NULL);
}
