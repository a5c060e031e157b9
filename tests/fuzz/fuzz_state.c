/* libFuzzer target: state blobs. The input is a blob loaded into a state of
 * the tiny golden model that has seen a few tokens; a refused blob must
 * leave the state byte for byte as it was, an accepted one must step.
 * Each input is tried as it is and again with its checksum recomputed (as a
 * crafted file would have it: XXH3 is no barrier), so that mutations reach
 * the checks behind the checksum (position, sizes, values, monitors). */
#include <bdh.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* docs/format.md, "State blobs": a 64-byte header whose bytes 48..56 give
 * the payload's length and 56..64 hold XXH3 of bytes 0..56 and the payload */
#define HEADER 64u
#define CHECKSUM_AT 56u

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

static void try_blob(const uint8_t *data, size_t size);

/* The blob with a checksum that matches what it says, or 0 if it cannot
 * have one (too short, a payload length past the end). */
static int fix_checksum(uint8_t *b, size_t size)
{
    uint64_t payload;
    if (size < HEADER) return 0;
    memcpy(&payload, b + 48, 8);
    if (payload > size - HEADER) return 0;
    XXH3_state_t *x = XXH3_createState();
    if (!x) return 0;
    XXH3_64bits_reset(x);
    XXH3_64bits_update(x, b, CHECKSUM_AT);
    XXH3_64bits_update(x, b + HEADER, (size_t)payload);
    const uint64_t sum = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    memcpy(b + CHECKSUM_AT, &sum, 8);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    try_blob(data, size);
    uint8_t *fixed = malloc(size ? size : 1);
    if (!fixed) return 0;
    memcpy(fixed, data, size);
    if (fix_checksum(fixed, size)) try_blob(fixed, size);
    free(fixed);
    return 0;
}

static void try_blob(const uint8_t *data, size_t size)
{
    bdh_state *s;
    if (bdh_state_new(model, &s) != BDH_OK) return;
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
}
