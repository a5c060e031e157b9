/* Observability: activation taps against the dense reference path, Hebbian
 * monitors against a brute-force sum, monitors carried by copy/save/load, no
 * effect on logits and no per-token allocation, state readout. */
#include "test_util.h"

#include <malloc.h>
#include <stdbool.h>

#define MAX_T 64
#define MAX_L 6
#define MAX_HN 1024

/* Everything the observer saw: dense xs and xy per token and layer,
 * rebuilt from the lists, plus list sanity. */
typedef struct record {
    int H, N, calls;
    float xs[MAX_T][MAX_L][MAX_HN];
    float xy[MAX_T][MAX_L][MAX_HN];
    float x_density[MAX_T][MAX_L];
} record;

static void observe(const bdh_layer_activation *a, void *user)
{
    record *r = user;
    r->H = a->n_head;
    r->N = a->n_neurons;
    r->calls++;
    assert_true(a->position < MAX_T && a->layer < MAX_L && a->n_head * a->n_neurons <= MAX_HN);
    int total = 0;
    for (int h = 0; h < a->n_head; h++) {
        for (int k = 0; k < a->x_count[h]; k++) {
            if (k) assert_true(a->x_index[h][k] > a->x_index[h][k - 1]); /* ascending */
            assert_true(a->x_value[h][k] > 0.0f);
            r->xs[a->position][a->layer][h * a->n_neurons + a->x_index[h][k]] = a->x_value[h][k];
        }
        for (int k = 0; k < a->y_count[h]; k++) {
            assert_true(a->y_value[h][k] > 0.0f);
            r->xy[a->position][a->layer][h * a->n_neurons + a->y_index[h][k]] = a->y_value[h][k];
        }
        total += a->x_count[h];
    }
    assert_true(fabsf(a->x_density - (float)total / (a->n_head * a->n_neurons)) < 1e-6f);
    r->x_density[a->position][a->layer] = a->x_density;
}

static bdh_model *load_kernels(const char *path, bdh_kernels k)
{
    bdh_model_params p = bdh_model_default_params();
    p.kernels = k;
    p.n_threads = 2;
    bdh_model *m = NULL;
    assert_int_equal(bdh_model_load(path, &p, &m), BDH_OK);
    return m;
}

static record *observe_run(bdh_model *m, const int32_t *tokens, int T, bool use_prefill)
{
    record *r = calloc(1, sizeof *r);
    bdh_state *s;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    assert_int_equal(bdh_state_set_observer(s, observe, r), BDH_OK);
    if (use_prefill)
        assert_int_equal(bdh_prefill(s, tokens, (size_t)T, NULL), BDH_OK);
    else
        for (int t = 0; t < T; t++) assert_int_equal(bdh_step(s, tokens[t], NULL), BDH_OK);
    bdh_config c;
    bdh_model_config(m, &c);
    assert_int_equal(r->calls, T * c.n_layer);
    bdh_state_free(s);
    return r;
}

/* Same neurons active, same values (to float rounding of a different
 * summation order), every token, layer and head. */
static void test_taps_match_dense_reference(void **unused)
{
    const char *names[] = {"tiny", "oddheads", "long"};
    for (int c = 0; c < 3; c++) {
        char model[256], expect[256];
        snprintf(model, sizeof model, TU_DATA "/golden/%s.model.safetensors", names[c]);
        snprintf(expect, sizeof expect, TU_DATA "/golden/%s.expect.safetensors", names[c]);
        size_t T;
        int32_t *tokens = tu_read_tensor(expect, "tokens", 1, &T, NULL);
        if (T > MAX_T) T = MAX_T;
        bdh_model *mf = load_kernels(model, BDH_KERNELS_FAST), *mr = load_kernels(model, BDH_KERNELS_REFERENCE);
        bdh_config cfg;
        bdh_model_config(mf, &cfg);
        record *fast = observe_run(mf, tokens, (int)T, true), *ref = observe_run(mr, tokens, (int)T, false);
        const int HN = cfg.n_head * cfg.n_neurons;
        size_t mismatched = 0, active = 0;
        double worst = 0.0;
        for (size_t t = 0; t < T; t++)
            for (int l = 0; l < cfg.n_layer; l++)
                for (int n = 0; n < HN; n++) {
                    const float a[2] = {fast->xs[t][l][n], fast->xy[t][l][n]}, b[2] = {ref->xs[t][l][n], ref->xy[t][l][n]};
                    for (int k = 0; k < 2; k++) {
                        if ((a[k] > 0) != (b[k] > 0)) mismatched++;
                        active += b[k] > 0;
                        double e = fabs((double)a[k] - b[k]) / (fabs(b[k]) + 1.0);
                        if (e > worst) worst = e;
                    }
                }
        printf("  %-9s %zu active entries, %zu differ in activity, max value diff %.2e\n", names[c], active, mismatched, worst);
        assert_int_equal(mismatched, 0);
        assert_true(worst <= 1e-5);
        free(fast);
        free(ref);
        free(tokens);
        bdh_model_free(mf);
        bdh_model_free(mr);
    }
}

static void test_monitors_match_brute_force(void **unused)
{
    bdh_model *m = load_kernels(TU_DATA "/golden/long.model.safetensors", BDH_KERNELS_FAST);
    bdh_config c;
    bdh_model_config(m, &c);
    const int HN = c.n_head * c.n_neurons, T = 40;
    int32_t tokens[40];
    for (int t = 0; t < T; t++) tokens[t] = (t * 37 + 11) % 256;
    record *r = observe_run(m, tokens, T, false); /* the activations, for the brute force */

    bdh_state *s;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    const int32_t syn[][3] = {{1, 0, 0}, {1, 5, 700}, {3, 1023, 2}, {5, 300, 301}, {2, 17, 17}};
    for (int k = 0; k < 5; k++) {
        size_t idx = 99;
        assert_int_equal(bdh_state_add_monitor(s, syn[k][0], syn[k][1], syn[k][2], &idx), BDH_OK);
        assert_int_equal(idx, (size_t)k);
    }
    for (int t = 0; t < T; t++) assert_int_equal(bdh_step(s, tokens[t], NULL), BDH_OK);
    int nonzero = 0;
    for (int k = 0; k < 5; k++) {
        double want = 0.0, got;
        for (int t = 0; t < T; t++) want += (double)r->xy[t][syn[k][0] - 1][syn[k][1]] * r->xs[t][syn[k][0]][syn[k][2]];
        int32_t l, i, j;
        assert_int_equal(bdh_state_monitor(s, (size_t)k, &l, &i, &j, &got), BDH_OK);
        assert_int_equal(l, syn[k][0]);
        assert_int_equal(i, syn[k][1]);
        assert_int_equal(j, syn[k][2]);
        assert_true(fabs(got - want) <= 1e-6 * (fabs(want) + 1.0));
        nonzero += want != 0.0;
    }
    assert_true(nonzero >= 3); /* the test sums something */

    /* refusals */
    assert_int_equal(bdh_state_add_monitor(s, 0, 1, 2, NULL), BDH_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(bdh_last_error(), "layer 0"));
    assert_int_equal(bdh_state_add_monitor(s, c.n_layer, 1, 2, NULL), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_state_add_monitor(s, 1, HN, 2, NULL), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_state_add_monitor(s, 1, 0, -1, NULL), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_state_monitor(s, 5, NULL, NULL, NULL, NULL), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_state_n_monitors(s), 5);
    free(r);
    bdh_state_free(s);
    bdh_model_free(m);
}

static void expect_same_monitors(const bdh_state *a, const bdh_state *b)
{
    assert_int_equal(bdh_state_n_monitors(a), bdh_state_n_monitors(b));
    for (size_t k = 0; k < bdh_state_n_monitors(a); k++) {
        int32_t la, ia, ja, lb, ib, jb;
        double sa, sb;
        bdh_state_monitor(a, k, &la, &ia, &ja, &sa);
        bdh_state_monitor(b, k, &lb, &ib, &jb, &sb);
        assert_true(la == lb && ia == ib && ja == jb && sa == sb);
    }
}

static void test_monitors_travel_with_the_state(void **unused)
{
    bdh_model *m = load_kernels(TU_DATA "/golden/long.model.safetensors", BDH_KERNELS_FAST);
    bdh_state *s, *fork, *loaded;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    assert_int_equal(bdh_state_new(m, &loaded), BDH_OK);
    assert_int_equal(bdh_state_add_monitor(s, 1, 3, 4, NULL), BDH_OK);
    assert_int_equal(bdh_state_add_monitor(s, 4, 100, 900, NULL), BDH_OK);
    for (int t = 0; t < 20; t++) assert_int_equal(bdh_step(s, (t * 7) % 256, NULL), BDH_OK);

    assert_int_equal(bdh_state_copy(s, &fork), BDH_OK);
    expect_same_monitors(s, fork);
    size_t len = bdh_state_save_size(s);
    assert_int_equal(len, 64 + bdh_model_state_bytes(m) + 8 + 2 * 24);
    uint8_t *blob = malloc(len);
    assert_int_equal(bdh_state_save(s, blob, len, NULL), BDH_OK);
    assert_int_equal(bdh_state_load(loaded, blob, len), BDH_OK);
    expect_same_monitors(s, loaded);
    for (int t = 0; t < 10; t++) { /* and they go on identically */
        assert_int_equal(bdh_step(s, t, NULL), BDH_OK);
        assert_int_equal(bdh_step(fork, t, NULL), BDH_OK);
        assert_int_equal(bdh_step(loaded, t, NULL), BDH_OK);
    }
    expect_same_monitors(s, fork);
    expect_same_monitors(s, loaded);

    /* a damaged monitor section is refused (the checksum catches it) */
    blob[len - 3] ^= 1;
    assert_int_equal(bdh_state_load(loaded, blob, len), BDH_ERR_FORMAT);
    /* reset keeps the monitors, zeroed */
    assert_int_equal(bdh_state_reset(s), BDH_OK);
    double sigma;
    assert_int_equal(bdh_state_monitor(s, 1, NULL, NULL, NULL, &sigma), BDH_OK);
    assert_true(sigma == 0.0);
    assert_int_equal(bdh_state_clear_monitors(s), BDH_OK);
    assert_int_equal(bdh_state_n_monitors(s), 0);
    free(blob);
    bdh_state_free(s);
    bdh_state_free(fork);
    bdh_state_free(loaded);
    bdh_model_free(m);
}

static void noop(const bdh_layer_activation *a, void *user) { (void)a; (*(int *)user)++; }

/* Watching changes nothing: identical logits with and without an observer
 * and monitors; and no memory is allocated per token either way. */
static void test_observing_changes_nothing(void **unused)
{
    bdh_model *m = load_kernels(TU_DATA "/golden/long.model.safetensors", BDH_KERNELS_FAST);
    bdh_state *plain, *watched;
    assert_int_equal(bdh_state_new(m, &plain), BDH_OK);
    assert_int_equal(bdh_state_new(m, &watched), BDH_OK);
    int calls = 0;
    assert_int_equal(bdh_state_set_observer(watched, noop, &calls), BDH_OK);
    assert_int_equal(bdh_state_add_monitor(watched, 2, 10, 20, NULL), BDH_OK);
    float a[256], b[256];
    assert_int_equal(bdh_step(plain, 1, a), BDH_OK); /* first steps may fault pages in */
    assert_int_equal(bdh_step(watched, 1, b), BDH_OK);
    const size_t before = mallinfo2().uordblks;
    for (int t = 0; t < 30; t++) {
        assert_int_equal(bdh_step(plain, (t * 11) % 256, a), BDH_OK);
        assert_int_equal(bdh_step(watched, (t * 11) % 256, b), BDH_OK);
        assert_memory_equal(a, b, sizeof a);
    }
    assert_int_equal(mallinfo2().uordblks, before); /* no allocation per token */
    assert_int_equal(calls, 31 * 6);
    assert_int_equal(bdh_state_set_observer(watched, NULL, NULL), BDH_OK);
    bdh_state_free(plain);
    bdh_state_free(watched);
    bdh_model_free(m);
}

static void test_state_readout(void **unused)
{
    bdh_model *m = load_kernels(TU_DATA "/golden/tiny.model.safetensors", BDH_KERNELS_FAST);
    bdh_config c;
    bdh_model_config(m, &c);
    bdh_state *s;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    for (int t = 0; t < 12; t++) assert_int_equal(bdh_step(s, 65 + t, NULL), BDH_OK);
    size_t len = bdh_state_save_size(s);
    uint8_t *blob = malloc(len);
    assert_int_equal(bdh_state_save(s, blob, len, NULL), BDH_OK);
    const float *S = (const float *)(blob + 64); /* [L][H][N][D] */
    float norms[128], row[32];
    const int layer = 1, head = 1;
    assert_int_equal(bdh_state_row_norms(s, layer, head, norms), BDH_OK);
    int touched = 0;
    for (int n = 0; n < c.n_neurons; n++) {
        const float *r = S + (((size_t)layer * c.n_head + head) * c.n_neurons + n) * c.n_embd;
        double sq = 0;
        for (int d = 0; d < c.n_embd; d++) sq += (double)r[d] * r[d];
        assert_true(fabs(norms[n] - sqrt(sq)) <= 1e-5 * (sqrt(sq) + 1e-3));
        touched += norms[n] > 0;
        assert_int_equal(bdh_state_row(s, layer, head, n, row), BDH_OK);
        assert_memory_equal(row, r, sizeof row);
    }
    assert_true(touched > 0);
    assert_int_equal(bdh_state_row_norms(s, c.n_layer, 0, norms), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_state_row(s, 0, 0, c.n_neurons, row), BDH_ERR_INVALID_ARGUMENT);
    free(blob);
    bdh_state_free(s);
    bdh_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_taps_match_dense_reference),  cmocka_unit_test(test_monitors_match_brute_force),
        cmocka_unit_test(test_monitors_travel_with_the_state), cmocka_unit_test(test_observing_changes_nothing),
        cmocka_unit_test(test_state_readout),
    };
    return cmocka_run_group_tests_name("observability", tests, NULL, NULL);
}
