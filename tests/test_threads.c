/* One model, many threads: four threads step states of their own (one of
 * them in batches of two) while a fifth forks, saves and loads a state of its
 * own, in a loop; every thread's logits must equal a single-threaded run.
 * make test-tsan runs this under ThreadSanitizer. */
#include "test_util.h"

#include <pthread.h>

#define LONG TU_DATA "/golden/long.model.safetensors"
#define T 24

static bdh_model *model;
static float expect[T][256];

static int32_t token_at(int t) { return (t * 29 + 5) % 256; }

static void *stepper(void *arg)
{
    (void)arg;
    bdh_state *s = NULL;
    float logits[256];
    int bad = bdh_state_new(model, &s) != BDH_OK;
    for (int t = 0; t < T && !bad; t++) {
        bad |= bdh_step(s, token_at(t), logits) != BDH_OK;
        bad |= memcmp(logits, expect[t], sizeof logits) != 0;
    }
    bdh_state_free(s);
    return (void *)(intptr_t)bad;
}

static void *batch_stepper(void *arg)
{
    (void)arg;
    bdh_state *s[2] = {NULL, NULL};
    float logits[2 * 256];
    int bad = bdh_state_new(model, &s[0]) != BDH_OK || bdh_state_new(model, &s[1]) != BDH_OK;
    for (int t = 0; t < T && !bad; t++) {
        const int32_t tok[2] = {token_at(t), token_at(t)};
        bad |= bdh_step_batch(s, tok, 2, logits) != BDH_OK;
        bad |= memcmp(logits, expect[t], 256 * sizeof(float)) != 0 || memcmp(logits + 256, expect[t], 256 * sizeof(float)) != 0;
    }
    bdh_state_free(s[0]);
    bdh_state_free(s[1]);
    return (void *)(intptr_t)bad;
}

static void *forker(void *arg)
{
    (void)arg;
    bdh_state *s = NULL;
    int bad = bdh_state_new(model, &s) != BDH_OK;
    const int32_t prompt[4] = {1, 2, 3, 4};
    bad |= bdh_prefill(s, prompt, 4, NULL) != BDH_OK;
    const size_t len = bdh_state_save_size(s);
    void *blob = malloc(len);
    for (int i = 0; i < 8 && !bad; i++) {
        bdh_state *f = NULL;
        bad |= bdh_state_copy(s, &f) != BDH_OK;
        bad |= bdh_state_save(f, blob, len, NULL) != BDH_OK;
        bad |= bdh_state_load(s, blob, len) != BDH_OK;
        bdh_state_free(f);
    }
    free(blob);
    bdh_state_free(s);
    return (void *)(intptr_t)bad;
}

static void test_five_threads_on_one_model(void **unused)
{
    bdh_model_params p = bdh_model_default_params();
    p.n_threads = 2; /* the model's pool is shared by every caller */
    assert_int_equal(bdh_model_load(LONG, &p, &model), BDH_OK);
    bdh_state *s;
    assert_int_equal(bdh_state_new(model, &s), BDH_OK);
    for (int t = 0; t < T; t++) assert_int_equal(bdh_step(s, token_at(t), expect[t]), BDH_OK);
    bdh_state_free(s);

    pthread_t th[5];
    void *(*fn[5])(void *) = {stepper, stepper, stepper, batch_stepper, forker};
    for (int i = 0; i < 5; i++) assert_int_equal(pthread_create(&th[i], NULL, fn[i], NULL), 0);
    for (int i = 0; i < 5; i++) {
        void *bad;
        pthread_join(th[i], &bad);
        assert_int_equal((intptr_t)bad, 0);
    }
    bdh_model_free(model);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_five_threads_on_one_model)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
