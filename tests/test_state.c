/* State handling: prefill vs stepping, reset, copy independence, save/load
 * round trips, and the refusals (damaged blob, another model, bad calls). */
#include "test_util.h"

#include <xxhash.h>

#define TINY TU_DATA "/golden/tiny.model.safetensors"
#define LONG TU_DATA "/golden/long.model.safetensors"

static const int32_t prompt[] = {72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101, 32,
                                 113, 117, 105, 99, 107, 32, 98, 114, 111, 119, 110, 32, 102, 111, 120, 46};
#define PROMPT_LEN ((size_t)(sizeof prompt / sizeof prompt[0]))

static bdh_state *new_state(const bdh_model *m)
{
    bdh_state *s = NULL;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    return s;
}

static void *save(const bdh_state *s, size_t *len)
{
    *len = bdh_state_save_size(s);
    void *blob = malloc(*len);
    size_t written = 0;
    assert_int_equal(bdh_state_save(s, blob, *len, &written), BDH_OK);
    assert_int_equal(written, *len);
    return blob;
}

/* Relative difference of two saved states' matrices (blob payload after the
 * 64-byte header), max |a-b| / max |a|. */
static double state_diff(const bdh_state *a, const bdh_state *b)
{
    size_t la, lb;
    uint8_t *x = save(a, &la), *y = save(b, &lb);
    assert_int_equal(la, lb);
    double err = tu_rel_err((const float *)(y + 64), (const float *)(x + 64), (la - 64) / 4);
    free(x);
    free(y);
    return err;
}

static void test_prefill_equals_stepping(void **unused)
{
    bdh_model *m = tu_load(TINY);
    bdh_config c;
    assert_int_equal(bdh_model_config(m, &c), BDH_OK);
    bdh_state *stepped = new_state(m), *filled = new_state(m);
    float *a = malloc(c.vocab_size * sizeof(float)), *b = malloc(c.vocab_size * sizeof(float));
    for (size_t i = 0; i < PROMPT_LEN; i++) assert_int_equal(bdh_step(stepped, prompt[i], a), BDH_OK);
    assert_int_equal(bdh_prefill(filled, prompt, PROMPT_LEN, b), BDH_OK);
    assert_int_equal(bdh_state_position(filled), (int64_t)PROMPT_LEN);
    assert_true(tu_rel_err(b, a, c.vocab_size) < 1e-5);
    /* float sums in another order: the states agree to float rounding */
    assert_true(state_diff(stepped, filled) < 1e-5);
    /* and keep agreeing afterwards */
    assert_int_equal(bdh_step(stepped, 65, a), BDH_OK);
    assert_int_equal(bdh_step(filled, 65, b), BDH_OK);
    assert_true(tu_rel_err(b, a, c.vocab_size) < 1e-5);
    free(a);
    free(b);
    bdh_state_free(stepped);
    bdh_state_free(filled);
    bdh_model_free(m);
}

static void test_reset_and_copy(void **unused)
{
    bdh_model *m = tu_load(TINY);
    const size_t V = 256;
    float fresh[256], again[256], x[256], y[256];
    bdh_state *s = new_state(m);
    assert_int_equal(bdh_step(s, 7, fresh), BDH_OK);
    assert_int_equal(bdh_prefill(s, prompt, PROMPT_LEN, NULL), BDH_OK);

    bdh_state *fork = NULL;
    assert_int_equal(bdh_state_copy(s, &fork), BDH_OK);
    assert_int_equal(bdh_state_position(fork), bdh_state_position(s));
    /* both continue identically ... */
    assert_int_equal(bdh_step(s, 9, x), BDH_OK);
    assert_int_equal(bdh_step(fork, 9, y), BDH_OK);
    assert_memory_equal(x, y, sizeof x);
    /* ... and independently: moving one leaves the other alone */
    assert_int_equal(bdh_step(fork, 100, NULL), BDH_OK);
    assert_int_equal(bdh_step(s, 11, x), BDH_OK);
    bdh_state *fork2 = NULL;
    assert_int_equal(bdh_state_copy(s, &fork2), BDH_OK);
    assert_int_equal(bdh_step(fork2, 12, y), BDH_OK);
    assert_int_equal(bdh_step(s, 12, x), BDH_OK);
    assert_memory_equal(x, y, sizeof x);

    assert_int_equal(bdh_state_reset(s), BDH_OK);
    assert_int_equal(bdh_state_position(s), 0);
    assert_int_equal(bdh_step(s, 7, again), BDH_OK);
    assert_memory_equal(fresh, again, V * sizeof(float));
    bdh_state_free(s);
    bdh_state_free(fork);
    bdh_state_free(fork2);
    bdh_model_free(m);
}

static void test_save_load_round_trip(void **unused)
{
    bdh_model *m = tu_load(TINY);
    float x[256], y[256];
    bdh_state *s = new_state(m), *t = new_state(m);
    assert_int_equal(bdh_prefill(s, prompt, PROMPT_LEN, NULL), BDH_OK);
    size_t len;
    void *blob = save(s, &len);
    assert_int_equal(len, 64 + bdh_model_state_bytes(m) + 8); /* header, state, empty monitor list */
    assert_int_equal(bdh_state_load(t, blob, len), BDH_OK);
    assert_int_equal(bdh_state_position(t), (int64_t)PROMPT_LEN);
    assert_int_equal(bdh_step(s, 42, x), BDH_OK);
    assert_int_equal(bdh_step(t, 42, y), BDH_OK);
    assert_memory_equal(x, y, sizeof x); /* identical next logits */
    free(blob);
    bdh_state_free(s);
    bdh_state_free(t);
    bdh_model_free(m);
}

static void test_load_refusals(void **unused)
{
    bdh_model *m = tu_load(TINY), *other = tu_load(TU_DATA "/golden/compiled.model.safetensors");
    bdh_state *s = new_state(m), *o = new_state(other);
    assert_int_equal(bdh_prefill(s, prompt, PROMPT_LEN, NULL), BDH_OK);
    size_t len;
    uint8_t *blob = save(s, &len);
    uint8_t *copy = malloc(len);

    /* same shapes, other weights: refused by the fingerprint */
    assert_int_equal(bdh_state_load(o, blob, len), BDH_ERR_MODEL_MISMATCH);
    assert_non_null(strstr(bdh_last_error(), "another model"));
    assert_int_equal(bdh_state_position(o), 0);

    memcpy(copy, blob, len);
    copy[len / 2] ^= 0x40; /* one flipped bit in the payload */
    assert_int_equal(bdh_state_load(s, copy, len), BDH_ERR_FORMAT);
    assert_non_null(strstr(bdh_last_error(), "damaged"));
    assert_int_equal(bdh_state_position(s), (int64_t)PROMPT_LEN); /* unchanged */

    memcpy(copy, blob, len);
    copy[0] = 'X';
    assert_int_equal(bdh_state_load(s, copy, len), BDH_ERR_FORMAT);
    memcpy(copy, blob, len);
    copy[8] = 99; /* version */
    assert_int_equal(bdh_state_load(s, copy, len), BDH_ERR_FORMAT);
    assert_int_equal(bdh_state_load(s, blob, len - 1), BDH_ERR_FORMAT);
    assert_int_equal(bdh_state_load(s, blob, 10), BDH_ERR_FORMAT);
    assert_int_equal(bdh_state_load(s, NULL, len), BDH_ERR_INVALID_ARGUMENT);

    size_t written = 123;
    assert_int_equal(bdh_state_save(s, copy, len - 1, &written), BDH_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(written, 123);

    /* a model with other shapes: refused as well */
    bdh_model *big = tu_load(LONG);
    bdh_state *b = new_state(big);
    assert_int_equal(bdh_state_load(b, blob, len), BDH_ERR_MODEL_MISMATCH);
    free(blob);
    free(copy);
    bdh_state_free(b);
    bdh_model_free(big);
    bdh_state_free(s);
    bdh_state_free(o);
    bdh_model_free(m);
    bdh_model_free(other);
}

/* Recompute a blob's checksum after an edit, as a crafted file would (the
 * checksum catches damage, not intent): XXH3 of the 56 header bytes before
 * it, then the payload (docs/format.md). */
static void reseal(uint8_t *blob, size_t len)
{
    XXH3_state_t *x = XXH3_createState();
    XXH3_64bits_reset(x);
    XXH3_64bits_update(x, blob, 56);
    XXH3_64bits_update(x, blob + 64, len - 64);
    const uint64_t sum = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    memcpy(blob + 56, &sum, 8);
}

/* Well-formed blobs with values no state can hold: refused, state unchanged;
 * the largest position is enforced by the steps too. */
static void test_crafted_blobs(void **unused)
{
    bdh_model *m = tu_load(TINY);
    bdh_state *s = new_state(m);
    assert_int_equal(bdh_prefill(s, prompt, 5, NULL), BDH_OK);
    size_t len;
    uint8_t *blob = save(s, &len), *copy = malloc(len);

    const int64_t positions[] = {INT64_MAX, ((int64_t)1 << 53) + 1, -1};
    for (size_t i = 0; i < 3; i++) {
        memcpy(copy, blob, len);
        memcpy(copy + 24, &positions[i], 8);
        reseal(copy, len);
        assert_int_equal(bdh_state_load(s, copy, len), BDH_ERR_FORMAT);
        assert_non_null(strstr(bdh_last_error(), "outside [0, 2^53]"));
        assert_int_equal(bdh_state_position(s), 5);
    }
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < 3; i++) {
        memcpy(copy, blob, len);
        memcpy(copy + 64 + 4 * 7, &bad[i], 4);
        reseal(copy, len);
        assert_int_equal(bdh_state_load(s, copy, len), BDH_ERR_FORMAT);
        assert_non_null(strstr(bdh_last_error(), "non-finite value at float 7"));
    }

    /* one below the largest position: one more token fits, then no more */
    const int64_t last = ((int64_t)1 << 53) - 1;
    memcpy(copy, blob, len);
    memcpy(copy + 24, &last, 8);
    reseal(copy, len);
    assert_int_equal(bdh_state_load(s, copy, len), BDH_OK);
    float logits[256];
    assert_int_equal(bdh_step(s, 'a', logits), BDH_OK);
    assert_int_equal(bdh_step(s, 'a', logits), BDH_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(bdh_last_error(), "2^53"));
    assert_int_equal(bdh_prefill(s, prompt, 2, NULL), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_state_position(s), (int64_t)1 << 53);
    free(blob);
    free(copy);
    bdh_state_free(s);
    bdh_model_free(m);
}

static void test_bad_calls(void **unused)
{
    bdh_model *m = tu_load(TINY);
    bdh_state *s = new_state(m);
    float logits[256];
    assert_int_equal(bdh_step(s, 256, logits), BDH_ERR_TOKEN);
    assert_non_null(strstr(bdh_last_error(), "256"));
    assert_int_equal(bdh_step(s, -1, logits), BDH_ERR_TOKEN);
    assert_int_equal(bdh_step(NULL, 1, logits), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_state_position(s), 0); /* nothing was fed */

    const int32_t bad[] = {1, 2, 300, 4};
    assert_int_equal(bdh_prefill(s, bad, 4, logits), BDH_ERR_TOKEN);
    assert_non_null(strstr(bdh_last_error(), "tokens[2]"));
    assert_int_equal(bdh_state_position(s), 0); /* checked before any is fed */
    assert_int_equal(bdh_prefill(s, bad, 0, logits), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_prefill(s, NULL, 3, logits), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_prefill_all(s, bad, 2, NULL), BDH_ERR_INVALID_ARGUMENT);

    bdh_state *out = (bdh_state *)1;
    assert_int_equal(bdh_state_new(NULL, &out), BDH_ERR_INVALID_ARGUMENT);
    assert_null(out);
    assert_int_equal(bdh_state_new(m, NULL), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_state_copy(NULL, &out), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_state_reset(NULL), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_model_config(NULL, NULL), BDH_ERR_INVALID_ARGUMENT);

    bdh_state *twice[2] = {s, s};
    const int32_t toks[2] = {1, 2};
    assert_int_equal(bdh_step_batch(twice, toks, 2, NULL), BDH_ERR_INVALID_ARGUMENT);
    bdh_state_free(NULL);
    bdh_model_free(NULL);
    bdh_state_free(s);
    bdh_model_free(m);
}

static void test_batch_equals_single(void **unused)
{
    bdh_model *m = tu_load(TINY);
    enum { B = 3 };
    bdh_state *batch[B], *single[B];
    float lb[B * 256], ls[256];
    for (int i = 0; i < B; i++) {
        batch[i] = new_state(m);
        single[i] = new_state(m);
        /* different histories */
        assert_int_equal(bdh_prefill(batch[i], prompt, (size_t)(5 + 7 * i), NULL), BDH_OK);
        assert_int_equal(bdh_prefill(single[i], prompt, (size_t)(5 + 7 * i), NULL), BDH_OK);
    }
    for (int step = 0; step < 4; step++) {
        int32_t toks[B];
        for (int i = 0; i < B; i++) toks[i] = prompt[(step * 3 + i) % PROMPT_LEN];
        assert_int_equal(bdh_step_batch(batch, toks, B, lb), BDH_OK);
        for (int i = 0; i < B; i++) {
            assert_int_equal(bdh_step(single[i], toks[i], ls), BDH_OK);
            assert_true(tu_rel_err(lb + i * 256, ls, 256) <= 1e-6);
        }
    }
    for (int i = 0; i < B; i++) {
        bdh_state_free(batch[i]);
        bdh_state_free(single[i]);
    }
    bdh_model_free(m);
}

/* A state holds a reference to its model: freeing the model first leaves
 * the states working, with the logits a kept model gives (run under ASan
 * and valgrind by make check). */
static void test_model_freed_before_states(void **unused)
{
    bdh_model *kept = NULL, *dropped = NULL;
    assert_int_equal(bdh_model_load(LONG, NULL, &kept), BDH_OK);
    assert_int_equal(bdh_model_load(LONG, NULL, &dropped), BDH_OK);
    bdh_state *a = new_state(kept), *b = new_state(dropped);
    assert_int_equal(bdh_prefill(a, prompt, 10, NULL), BDH_OK);
    assert_int_equal(bdh_prefill(b, prompt, 10, NULL), BDH_OK);
    bdh_model_free(dropped);
    bdh_state *fork = NULL;
    assert_int_equal(bdh_state_copy(b, &fork), BDH_OK);
    assert_ptr_equal(bdh_state_model(fork), bdh_state_model(b));
    bdh_state_free(b); /* the fork still holds the model */
    float want[256], got[256];
    for (size_t t = 10; t < PROMPT_LEN; t++) {
        assert_int_equal(bdh_step(a, prompt[t], want), BDH_OK);
        assert_int_equal(bdh_step(fork, prompt[t], got), BDH_OK);
        assert_memory_equal(want, got, sizeof want);
    }
    bdh_config c;
    assert_int_equal(bdh_model_config(bdh_state_model(fork), &c), BDH_OK);
    assert_int_equal(c.vocab_size, 256);
    bdh_state_free(fork); /* releases the dropped model */
    bdh_state_free(a);
    bdh_model_free(kept);
}

static void test_sizes(void **unused)
{
    bdh_model *m = tu_load(LONG);
    tu_expect_config(m, (bdh_config){.n_layer = 6, .n_embd = 64, .n_head = 4, .n_neurons = 256, .vocab_size = 256,
                                     .mlp_internal_dim_multiplier = 16});
    assert_int_equal(bdh_model_state_bytes(m), (size_t)6 * 4 * 256 * 64 * 4);
    assert_int_equal(bdh_model_n_params(m), 2 * 256 * 64 + 3 * 4 * 256 * 64);
    assert_string_equal(bdh_model_file_dtype(m, "encoder"), "F32");
    assert_null(bdh_model_file_dtype(m, "nonsense"));
    assert_int_equal(bdh_model_device(m), BDH_DEVICE_CPU);
    assert_true(bdh_model_fingerprint(m) != 0);
    bdh_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_equals_stepping), cmocka_unit_test(test_reset_and_copy),
        cmocka_unit_test(test_save_load_round_trip),    cmocka_unit_test(test_load_refusals),
        cmocka_unit_test(test_bad_calls),               cmocka_unit_test(test_batch_equals_single),
        cmocka_unit_test(test_sizes),                   cmocka_unit_test(test_model_freed_before_states),
        cmocka_unit_test(test_crafted_blobs),
    };
    return cmocka_run_group_tests_name("state", tests, NULL, NULL);
}
