/* libFuzzer target: state blobs. The input is a blob loaded into a state of
 * the tiny golden model that has seen a few tokens; a refused blob must
 * leave the state byte for byte as it was, an accepted one must step. */
#include <bdh.h>

#include <stdlib.h>
#include <string.h>

static bdh_model *model;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *path = getenv("BDH_FUZZ_MODEL");
    bdh_model_params p = bdh_model_default_params();
    p.n_threads = 1;
    if (bdh_model_load(path ? path : "tests/data/golden/tiny.model.safetensors", &p, &model) != BDH_OK) abort();
    return 0;
}

static void *save(const bdh_state *s, size_t *len)
{
    *len = bdh_state_save_size(s);
    void *b = malloc(*len);
    if (!b || bdh_state_save(s, b, *len, NULL) != BDH_OK) abort();
    return b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bdh_state *s;
    if (bdh_state_new(model, &s) != BDH_OK) return 0;
    const int32_t prompt[3] = {'a', 'b', 'c'};
    bdh_prefill(s, prompt, 3, NULL);
    bdh_state_add_monitor(s, 1, 0, 1, NULL);
    size_t before_len, after_len;
    void *before = save(s, &before_len);
    if (bdh_state_load(s, data, size) == BDH_OK) {
        float logits[256];
        if (bdh_step(s, 'd', logits) != BDH_OK && bdh_state_position(s) < ((int64_t)1 << 53)) abort();
    } else {
        void *after = save(s, &after_len);
        if (after_len != before_len || memcmp(before, after, before_len) != 0) abort(); /* refused, yet changed */
        free(after);
    }
    free(before);
    bdh_state_free(s);
    return 0;
}
