/* bdh_generate against a loop written by hand from the public pieces
 * (bdh_prefill, bdh_sampler_*, bdh_step): same tokens, streamed one at a
 * time; the callback and stop sequences end it at the right token; the state
 * afterwards continues the stream; bad arguments fail before anything moves.
 * With tests/data/shakespeare_greedy.{bin,json} present, greedy output of the
 * shipped model equals the PyTorch reference's byte for byte. */
#include "test_util.h"

#define TINY TU_DATA "/golden/tiny.model.safetensors"
#define ODD TU_DATA "/golden/oddheads.model.safetensors"
#define MAXGEN 512

static const int32_t PROMPT[] = {'h', 'e', 'l', 'l', 'o'};
#define NPROMPT (sizeof PROMPT / sizeof *PROMPT)

typedef struct recorder {
    int32_t tokens[MAXGEN];
    int n;
    int stop_after;          /* return non-zero at this many tokens (0 = never) */
    const bdh_state *state;  /* checked: the token arrives once the state has consumed it */
    int64_t position0;
} recorder;

static int record(int32_t token, void *user)
{
    recorder *r = user;
    assert_true(r->n < MAXGEN);
    if (r->state) assert_int_equal(bdh_state_position(r->state), r->position0 + r->n + 1);
    r->tokens[r->n++] = token;
    return r->stop_after && r->n >= r->stop_after;
}

static bdh_state *new_state(const bdh_model *m)
{
    bdh_state *s = NULL;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    return s;
}

/* The reference loop: sample, accept, step; n tokens from a fresh state. */
static void by_hand(const bdh_model *m, const int32_t *prompt, size_t np, const bdh_sampler_params *sp, int n, int32_t *out)
{
    bdh_config c;
    bdh_model_config(m, &c);
    float *logits = malloc((size_t)c.vocab_size * sizeof *logits);
    bdh_state *s = new_state(m);
    bdh_sampler *smp = NULL;
    assert_int_equal(bdh_sampler_new(sp, c.vocab_size, &smp), BDH_OK);
    for (size_t i = 0; i < np; i++) assert_int_equal(bdh_sampler_accept(smp, prompt[i]), BDH_OK);
    assert_int_equal(bdh_prefill(s, prompt, np, logits), BDH_OK);
    for (int i = 0; i < n; i++) {
        assert_int_equal(bdh_sampler_sample(smp, logits, &out[i]), BDH_OK);
        assert_int_equal(bdh_sampler_accept(smp, out[i]), BDH_OK);
        assert_int_equal(bdh_step(s, out[i], logits), BDH_OK);
    }
    bdh_sampler_free(smp);
    bdh_state_free(s);
    free(logits);
}

static bdh_generate_params greedy_params(int n)
{
    bdh_generate_params p = bdh_generate_default_params();
    p.sampler.temperature = 0.0f;
    p.max_new_tokens = n;
    return p;
}

/* bdh_generate on a fresh state; returns the stats, tokens in r. */
static bdh_generate_stats run(const bdh_model *m, const int32_t *prompt, size_t np, const bdh_generate_params *p, recorder *r)
{
    bdh_state *s = new_state(m);
    r->state = s;
    r->position0 = (int64_t)np;
    bdh_generate_stats st;
    bdh_status rc = bdh_generate(s, prompt, np, p, record, r, &st);
    if (rc != BDH_OK) fprintf(stderr, "bdh_generate: %s\n", bdh_last_error());
    assert_int_equal(rc, BDH_OK);
    assert_int_equal(st.n_generated, r->n);
    assert_int_equal(st.n_prompt, (int64_t)np);
    assert_int_equal(bdh_state_position(s), (int64_t)np + st.n_generated);
    assert_true(st.prefill_seconds >= 0 && st.decode_seconds >= 0);
    bdh_state_free(s);
    r->state = NULL;
    return st;
}

/* ------------------------------------------------------------------------ */

static void test_greedy_matches_hand_loop(void **unused)
{
    bdh_model *m = tu_load(TINY);
    int32_t want[64];
    bdh_sampler_params sp = bdh_sampler_default_params();
    sp.temperature = 0.0f;
    by_hand(m, PROMPT, NPROMPT, &sp, 64, want);

    bdh_generate_params p = greedy_params(64);
    recorder r = {0};
    bdh_generate_stats st = run(m, PROMPT, NPROMPT, &p, &r);
    assert_int_equal(st.stop_reason, BDH_STOP_LENGTH);
    assert_int_equal(r.n, 64);
    assert_memory_equal(r.tokens, want, sizeof want);
    bdh_model_free(m);
}

/* Seeded sampling with every filter and the penalty: the prompt is in the
 * repetition window first, exactly as the hand loop does it. */
static void test_sampled_matches_hand_loop(void **unused)
{
    bdh_model *m = tu_load(TINY);
    bdh_generate_params p = bdh_generate_default_params();
    p.sampler.temperature = 0.9f;
    p.sampler.top_k = 40;
    p.sampler.top_p = 0.95f;
    p.sampler.min_p = 0.02f;
    p.sampler.repeat_penalty = 1.3f;
    p.sampler.repeat_window = 16;
    p.sampler.seed = 7;
    p.max_new_tokens = 100;
    int32_t want[100];
    by_hand(m, PROMPT, NPROMPT, &p.sampler, 100, want);
    recorder r = {0};
    run(m, PROMPT, NPROMPT, &p, &r);
    assert_int_equal(r.n, 100);
    assert_memory_equal(r.tokens, want, sizeof want);

    recorder again = {0}, other = {0};
    run(m, PROMPT, NPROMPT, &p, &again);
    assert_memory_equal(again.tokens, want, sizeof want);
    p.sampler.seed = 8;
    run(m, PROMPT, NPROMPT, &p, &other);
    assert_memory_not_equal(other.tokens, want, sizeof want);
    bdh_model_free(m);
}

static void test_callback_stops(void **unused)
{
    bdh_model *m = tu_load(TINY);
    bdh_generate_params p = greedy_params(50);
    recorder full = {0}, r = {.stop_after = 7};
    run(m, PROMPT, NPROMPT, &p, &full);
    bdh_generate_stats st = run(m, PROMPT, NPROMPT, &p, &r);
    assert_int_equal(st.stop_reason, BDH_STOP_CALLBACK);
    assert_int_equal(r.n, 7);
    assert_memory_equal(r.tokens, full.tokens, 7 * sizeof(int32_t));

    /* stop at the very first token; and a NULL callback is allowed */
    recorder one = {.stop_after = 1};
    st = run(m, PROMPT, NPROMPT, &p, &one);
    assert_int_equal(st.n_generated, 1);
    bdh_state *s = new_state(m);
    assert_int_equal(bdh_generate(s, PROMPT, NPROMPT, &p, NULL, NULL, NULL), BDH_OK);
    assert_int_equal(bdh_state_position(s), (int64_t)NPROMPT + 50);
    bdh_state_free(s);
    bdh_model_free(m);
}

/* First position where needle ends in hay (index of its last byte + 1), or -1. */
static int first_end(const int32_t *hay, int n, const char *needle, size_t len)
{
    for (int end = (int)len; end <= n; end++) {
        size_t k = 0;
        while (k < len && hay[end - (int)len + (int)k] == (unsigned char)needle[k]) k++;
        if (k == len) return end;
    }
    return -1;
}

static void test_stop_sequences(void **unused)
{
    bdh_model *m = tu_load(TINY);
    bdh_generate_params p = greedy_params(80);
    recorder full = {0};
    run(m, PROMPT, NPROMPT, &p, &full);

    /* Two stops taken from the continuation (bytes 30..32 and 50..51); the
     * one whose first occurrence ends first wins. */
    char a[3], b[2];
    for (int i = 0; i < 3; i++) a[i] = (char)full.tokens[30 + i];
    for (int i = 0; i < 2; i++) b[i] = (char)full.tokens[50 + i];
    const int end_a = first_end(full.tokens, 80, a, 3), end_b = first_end(full.tokens, 80, b, 2);
    assert_true(end_a > 0 && end_b > 0);

    const char *stops[] = {a, b};
    const size_t lens[] = {3, 2};
    p.stop = stops;
    p.stop_len = lens;
    p.n_stop = 2;
    recorder r = {0};
    bdh_generate_stats st = run(m, PROMPT, NPROMPT, &p, &r);
    const int want = end_a < end_b ? end_a : end_b;
    assert_int_equal(st.stop_reason, BDH_STOP_SEQUENCE);
    assert_int_equal(r.n, want);
    assert_memory_equal(r.tokens, full.tokens, (size_t)want * sizeof(int32_t));

    /* one stop alone */
    p.n_stop = 1;
    recorder r1 = {0};
    st = run(m, PROMPT, NPROMPT, &p, &r1);
    assert_int_equal(st.stop_reason, BDH_STOP_SEQUENCE);
    assert_int_equal(r1.n, end_a);

    /* a stop sequence that never appears: runs to the length */
    const char *never[] = {"\x01\x02\x03\x04\x05\x06\x07\x08"};
    const size_t never_len[] = {8};
    p.stop = never;
    p.stop_len = never_len;
    recorder r2 = {0};
    st = run(m, PROMPT, NPROMPT, &p, &r2);
    assert_int_equal(st.stop_reason, BDH_STOP_LENGTH);
    assert_int_equal(r2.n, 80);

    /* the prompt does not count towards a stop: "lo" ends the prompt */
    const char *lo[] = {"lo"};
    const size_t lo_len[] = {2};
    p.stop = lo;
    p.stop_len = lo_len;
    recorder r3 = {0};
    run(m, PROMPT, NPROMPT, &p, &r3);
    const int end_lo = first_end(full.tokens, 80, "lo", 2);
    assert_int_equal(r3.n, end_lo > 0 ? end_lo : 80);
    bdh_model_free(m);
}

/* Generating 10 then continuing (prompt = the 11th token) equals one run of 20. */
static void test_continuation(void **unused)
{
    bdh_model *m = tu_load(TINY);
    bdh_generate_params p = greedy_params(20);
    recorder full = {0};
    run(m, PROMPT, NPROMPT, &p, &full);

    bdh_state *s = new_state(m);
    recorder first = {0}, second = {0};
    p.max_new_tokens = 10;
    assert_int_equal(bdh_generate(s, PROMPT, NPROMPT, &p, record, &first, NULL), BDH_OK);
    assert_int_equal(bdh_state_position(s), (int64_t)NPROMPT + 10);

    /* fork: both branches continue identically */
    bdh_state *fork = NULL;
    assert_int_equal(bdh_state_copy(s, &fork), BDH_OK);
    recorder forked = {0};
    p.max_new_tokens = 9;
    const int32_t next = full.tokens[10];
    bdh_generate_stats st;
    assert_int_equal(bdh_generate(s, &next, 1, &p, record, &second, &st), BDH_OK);
    assert_int_equal(bdh_generate(fork, &next, 1, &p, record, &forked, NULL), BDH_OK);
    assert_int_equal(st.n_prompt, 1);
    assert_int_equal(bdh_state_position(s), (int64_t)NPROMPT + 20);

    assert_memory_equal(first.tokens, full.tokens, 10 * sizeof(int32_t));
    assert_memory_equal(second.tokens, full.tokens + 11, 9 * sizeof(int32_t));
    assert_memory_equal(forked.tokens, second.tokens, 9 * sizeof(int32_t));
    bdh_state_free(fork);
    bdh_state_free(s);
    bdh_model_free(m);
}

static void test_zero_tokens(void **unused)
{
    bdh_model *m = tu_load(TINY);
    bdh_state *s = new_state(m);
    bdh_generate_params p = greedy_params(0);
    recorder r = {0};
    bdh_generate_stats st;
    assert_int_equal(bdh_generate(s, PROMPT, NPROMPT, &p, record, &r, &st), BDH_OK);
    assert_int_equal(r.n, 0);
    assert_int_equal(st.n_generated, 0);
    assert_int_equal(st.stop_reason, BDH_STOP_LENGTH);
    assert_int_equal(bdh_state_position(s), (int64_t)NPROMPT);
    /* NULL params = defaults (256 tokens) */
    assert_int_equal(bdh_generate(s, PROMPT, NPROMPT, NULL, NULL, NULL, &st), BDH_OK);
    assert_int_equal(st.n_generated, 256);
    bdh_state_free(s);
    bdh_model_free(m);
}

/* A rejected call leaves the state where it was. */
static void expect_error(bdh_state *s, const int32_t *prompt, size_t np, const bdh_generate_params *p, bdh_status want)
{
    const int64_t pos = bdh_state_position(s);
    recorder r = {0};
    bdh_status rc = bdh_generate(s, prompt, np, p, record, &r, NULL);
    assert_int_equal(rc, want);
    assert_true(strlen(bdh_last_error()) > 0);
    assert_int_equal(r.n, 0);
    assert_int_equal(bdh_state_position(s), pos);
}

static void test_bad_arguments(void **unused)
{
    bdh_model *m = tu_load(TINY);
    bdh_state *s = new_state(m);
    const bdh_generate_params good = greedy_params(5);
    bdh_generate_params p = good;

    expect_error(s, PROMPT, 0, &p, BDH_ERR_INVALID_ARGUMENT);
    expect_error(s, NULL, 3, &p, BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_generate(NULL, PROMPT, NPROMPT, &p, NULL, NULL, NULL), BDH_ERR_INVALID_ARGUMENT);

    const int32_t bad_token[] = {'a', 300};
    expect_error(s, bad_token, 2, &p, BDH_ERR_TOKEN);

    p.max_new_tokens = -1;
    expect_error(s, PROMPT, NPROMPT, &p, BDH_ERR_INVALID_ARGUMENT);
    p = good;
    p.sampler.top_p = 0.0f;
    expect_error(s, PROMPT, NPROMPT, &p, BDH_ERR_INVALID_ARGUMENT);
    p = good;
    p.sampler.temperature = -1.0f;
    expect_error(s, PROMPT, NPROMPT, &p, BDH_ERR_INVALID_ARGUMENT);

    const char *empty[] = {""};
    const size_t zero[] = {0};
    p = good;
    p.stop = empty;
    p.stop_len = zero;
    p.n_stop = 1;
    expect_error(s, PROMPT, NPROMPT, &p, BDH_ERR_INVALID_ARGUMENT);
    p.stop = NULL;
    expect_error(s, PROMPT, NPROMPT, &p, BDH_ERR_INVALID_ARGUMENT);
    p = good;
    p.n_stop = -1;
    expect_error(s, PROMPT, NPROMPT, &p, BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_state_position(s), 0);
    bdh_state_free(s);
    bdh_model_free(m);
}

/* Stop sequences are bytes: refused on a model with another vocabulary,
 * which otherwise generates through token ids. */
static void test_non_byte_model(void **unused)
{
    bdh_model *m = tu_load(ODD);
    bdh_config c;
    bdh_model_config(m, &c);
    assert_int_not_equal(c.vocab_size, 256);
    bdh_state *s = new_state(m);
    const int32_t prompt[] = {1, 50, 96};
    const char *stops[] = {"a"};
    const size_t lens[] = {1};
    bdh_generate_params p = greedy_params(10);
    p.stop = stops;
    p.stop_len = lens;
    p.n_stop = 1;
    expect_error(s, prompt, 3, &p, BDH_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(bdh_last_error(), "vocab_size"));

    p.n_stop = 0;
    p.sampler.temperature = 1.0f;
    recorder r = {0};
    bdh_generate_stats st = run(m, prompt, 3, &p, &r);
    assert_int_equal(st.n_generated, 10);
    for (int i = 0; i < r.n; i++) assert_true(r.tokens[i] >= 0 && r.tokens[i] < c.vocab_size);
    bdh_state_free(s);
    bdh_model_free(m);
}

/* ------------------------------------------------- the shipped model */

static char *json_string(cJSON *root, const char *key)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int json_int(cJSON *root, const char *const *keys, int fallback)
{
    for (; *keys; keys++) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(root, *keys);
        if (cJSON_IsNumber(v)) return v->valueint;
    }
    return fallback;
}

/* The generator: the same tokens as bdh_generate for the same seed, the
 * state at prompt + returned tokens after every call, -1 at the end (and
 * again after it), bad arguments refused before the state moves. */
static void test_generator_matches_generate(void **unused)
{
    bdh_model *m = NULL;
    assert_int_equal(bdh_model_load(TINY, NULL, &m), BDH_OK);
    bdh_generate_params p = bdh_generate_default_params();
    p.sampler.temperature = 0.9f;
    p.sampler.top_p = 0.95f;
    p.sampler.seed = 1234;
    p.max_new_tokens = 40;
    recorder r = {0};
    run(m, PROMPT, NPROMPT, &p, &r);

    bdh_state *s = new_state(m);
    bdh_generator *g = NULL;
    assert_int_equal(bdh_generator_new(s, PROMPT, NPROMPT, &p, &g), BDH_OK);
    assert_int_equal(bdh_state_position(s), 0); /* nothing fed before the first next */
    int n = 0;
    int32_t token;
    while (1) {
        assert_int_equal(bdh_generator_next(g, &token), BDH_OK);
        if (token < 0) break;
        assert_true(n < r.n);
        assert_int_equal(token, r.tokens[n]);
        n++;
        assert_int_equal(bdh_state_position(s), (int64_t)NPROMPT + n);
    }
    assert_int_equal(n, r.n);
    assert_int_equal(bdh_generator_next(g, &token), BDH_OK);
    assert_int_equal(token, -1);
    bdh_generate_stats st;
    assert_int_equal(bdh_generator_stats(g, &st), BDH_OK);
    assert_int_equal(st.n_generated, n);
    assert_int_equal(st.n_prompt, (int64_t)NPROMPT);
    assert_int_equal(st.stop_reason, BDH_STOP_LENGTH);
    bdh_generator_free(g);

    const int32_t bad[] = {'a', 999};
    g = (bdh_generator *)&token; /* must be overwritten with NULL */
    assert_int_equal(bdh_generator_new(s, bad, 2, &p, &g), BDH_ERR_TOKEN);
    assert_null(g);
    assert_int_equal(bdh_generator_new(s, PROMPT, 0, &p, &g), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_generator_next(NULL, &token), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_state_position(s), (int64_t)NPROMPT + n);
    bdh_generator_free(NULL);
    bdh_state_free(s);
    bdh_model_free(m);
}

static void test_shakespeare_greedy(void **unused)
{
    size_t bin_len = 0, json_len = 0;
    unsigned char *bin = tu_read_file(TU_DATA "/shakespeare_greedy.bin", &bin_len);
    char *json = tu_read_file(TU_DATA "/shakespeare_greedy.json", &json_len);
    if (!bin || !json) {
        free(bin);
        free(json);
        printf("  tests/data/shakespeare_greedy.{bin,json} absent: nothing to compare with\n");
        skip();
    }
    cJSON *root = cJSON_ParseWithLength(json, json_len);
    assert_non_null(root);
    const char *prompt_text = json_string(root, "prompt");
    assert_non_null(prompt_text);
    const char *model_path = json_string(root, "model");
    if (!model_path) model_path = "models/shakespeare.safetensors";
    static const char *const n_keys[] = {"n", "n_new", "n_tokens", "max_new_tokens", "length", NULL};
    const size_t np = strlen(prompt_text);
    const int n = json_int(root, n_keys, (int)bin_len);

    /* The .bin holds the continuation; tolerate one that starts with the prompt. */
    const unsigned char *want = bin;
    if (bin_len == np + (size_t)n && memcmp(bin, prompt_text, np) == 0) want += np;
    assert_true(n >= 200 && (size_t)n <= bin_len && n <= MAXGEN);

    bdh_model *m = tu_load(model_path);
    int32_t *prompt = malloc(np * sizeof *prompt);
    for (size_t i = 0; i < np; i++) prompt[i] = (unsigned char)prompt_text[i];
    bdh_generate_params p = greedy_params(n);
    recorder r = {0};
    run(m, prompt, np, &p, &r);
    int first_diff = -1;
    for (int i = 0; i < n && first_diff < 0; i++)
        if (r.tokens[i] != want[i]) first_diff = i;
    if (first_diff >= 0) {
        fprintf(stderr, "greedy output differs from the reference at byte %d: got %d, want %d\n", first_diff,
                (int)r.tokens[first_diff], (int)want[first_diff]);
        cJSON *margin = cJSON_GetObjectItemCaseSensitive(root, "min_top1_top2_margin");
        if (cJSON_IsNumber(margin))
            fprintf(stderr, "(the reference's smallest top1 - top2 logit margin on its path: %g)\n", margin->valuedouble);
    }
    assert_int_equal(first_diff, -1);
    printf("  %s: %d greedy bytes after \"%s\" equal the reference\n", model_path, n, prompt_text);
    free(prompt);
    bdh_model_free(m);
    cJSON_Delete(root);
    free(json);
    free(bin);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_matches_hand_loop),
        cmocka_unit_test(test_sampled_matches_hand_loop),
        cmocka_unit_test(test_callback_stops),
        cmocka_unit_test(test_stop_sequences),
        cmocka_unit_test(test_continuation),
        cmocka_unit_test(test_zero_tokens),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_non_byte_model),
        cmocka_unit_test(test_generator_matches_generate),
        cmocka_unit_test(test_shakespeare_greedy),
    };
    return cmocka_run_group_tests_name("generate", tests, NULL, NULL);
}
