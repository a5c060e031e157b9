/* Checkpoint layouts (docs/format.md, "Accepted checkpoints"): each layout
 * in tests/data/checkpoints, made by the project that writes it
 * (tools/make_checkpoint_fixtures.py: the reference pathwaycom/bdh and
 * jploski/bdh-transformers), loads and gives that project's own logits at
 * every position; and the rules around them (extra tensors, configuration
 * sources, messages) hold, on files derived from those fixtures.
 *
 * Tolerance: |difference| <= 1e-4 at every logit, absolute. The fixtures'
 * logits reach 5..30 at every position, so this is a relative error of at
 * most 2e-5 (the golden tests' bound, TU_PARITY_TOL, is 1e-4 relative: it
 * holds too): float32 with another summation order than PyTorch's differs
 * by a few float32 ulps of values this size (about 1e-6), while a wrong
 * layout (a transposition, a missing tie, another RoPE table) changes
 * logits by order 1. */
#include "test_util.h"

#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#define CK TU_DATA "/checkpoints"
#define ABS_TOL 1e-4

static int setup(void **unused) { return tu_make_tmp_dir("ckpt"); }

/* ------------------------------------------------------------- parity */

typedef struct fixtures {
    cJSON *root;
    int32_t tokens[64];
    size_t T, V;
} fixtures;

static fixtures read_fixtures(void)
{
    fixtures f;
    size_t len = 0;
    char *text = tu_read_file(CK "/fixtures.json", &len);
    assert_non_null(text);
    f.root = cJSON_ParseWithLength(text, len);
    free(text);
    assert_non_null(f.root);
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(f.root, "tokens"), *t;
    f.T = 0;
    cJSON_ArrayForEach(t, tok) f.tokens[f.T++] = (int32_t)t->valuedouble;
    f.V = (size_t)cJSON_GetObjectItemCaseSensitive(f.root, "vocab_size")->valuedouble;
    assert_true(f.T >= 16 && f.V == 256);
    return f;
}

static float *read_logits(const char *name, const fixtures *f)
{
    char path[256];
    snprintf(path, sizeof path, CK "/%s", name);
    size_t len = 0;
    float *l = tu_read_file(path, &len);
    assert_non_null(l);
    assert_int_equal(len, f->T * f->V * sizeof(float));
    return l;
}

/* Max |difference| over every position of a prefill_all and of steps. */
static double worst_diff(bdh_model *m, const fixtures *f, const float *want)
{
    float *got = malloc(f->T * f->V * sizeof(float));
    bdh_state *s;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    assert_int_equal(bdh_prefill_all(s, f->tokens, f->T, got), BDH_OK);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < f->T * f->V; i++) {
        const double d = fabs((double)got[i] - want[i]);
        if (d > worst || d != d) worst = d;
    }
    assert_int_equal(bdh_state_reset(s), BDH_OK);
    for (size_t t = 0; t < f->T; t++) {
        assert_int_equal(bdh_step(s, f->tokens[t], got), BDH_OK);
        for (size_t v = 0; v < f->V; v++) {
            const double d = fabs((double)got[v] - want[t * f->V + v]);
            if (d > worst || d != d) worst = d;
        }
        double row = 0;
        for (size_t v = 0; v < f->V; v++) row = fmax(row, fabs(want[t * f->V + v]));
        assert_true(row > 1.0); /* logits large enough for the bound to mean something */
        assert_true(tu_rel_err(got, want + t * f->V, f->V) <= TU_PARITY_TOL);
        scale = fmax(scale, row);
    }
    bdh_state_free(s);
    free(got);
    return worst;
}

static void test_every_layout(void **unused)
{
    fixtures f = read_fixtures();
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(f.root, "checkpoints"), *e;
    int n = 0;
    uint64_t ref_fp = 0;
    cJSON_ArrayForEach(e, list) {
        const char *rel = cJSON_GetObjectItemCaseSensitive(e, "path")->valuestring;
        const char *lg = cJSON_GetObjectItemCaseSensitive(e, "logits")->valuestring;
        char path[256];
        snprintf(path, sizeof path, CK "/%s", rel);
        float *want = read_logits(lg, &f);
        for (int k = BDH_KERNELS_FAST; k <= BDH_KERNELS_REFERENCE; k++) {
            bdh_model *m = tu_load_with(path, 1, BDH_WEIGHTS_F32, (bdh_kernels)k);
            tu_expect_config(m, (bdh_config){.n_layer = 2, .n_embd = 32, .n_head = 2, .n_neurons = 32, .vocab_size = 256,
                                             .mlp_internal_dim_multiplier = 2});
            const double w = worst_diff(m, &f, want);
            printf("  %-36s %-9s max |diff| %.2e\n", rel, k ? "reference" : "fast", w);
            if (w > ABS_TOL) fprintf(stderr, "%s: max |diff| %.3g > %g\n", rel, w, ABS_TOL);
            assert_true(w <= ABS_TOL);
            /* the reference's model under every name is one model */
            if (strcmp(lg, "reference.logits.f32") == 0) {
                if (!ref_fp) ref_fp = bdh_model_fingerprint(m);
                assert_true(bdh_model_fingerprint(m) == ref_fp);
            }
            assert_string_equal(bdh_model_file_dtype(m, "lm_head"), "F32");
            bdh_model_free(m);
        }
        free(want);
        n++;
    }
    assert_true(n >= 7);
    cJSON_Delete(f.root);
}

/* ------------------------------------------------------------- errors */

static void write_text(const char *path, const char *text) { assert_int_equal(tu_write_file(path, text, strlen(text)), 0); }

static const char *make_dir(const char *name)
{
    const char *p = tu_tmp_path(name);
    assert_int_equal(mkdir(p, 0755), 0);
    return p;
}

/* src's data section behind its header with tensor `from` renamed `to`
 * (NULL: unchanged), written to dst. */
static void copy_renamed(const char *src, const char *dst, const char *from, const char *to)
{
    size_t len;
    uint8_t *b = tu_read_file(src, &len);
    assert_non_null(b);
    uint64_t hlen;
    memcpy(&hlen, b, 8);
    cJSON *h = cJSON_ParseWithLength((const char *)b + 8, (size_t)hlen);
    assert_non_null(h);
    if (from) {
        cJSON *t = cJSON_DetachItemFromObjectCaseSensitive(h, from);
        assert_non_null(t);
        cJSON_AddItemToObject(h, to, t);
    }
    char *json = cJSON_PrintUnformatted(h);
    assert_int_equal(tu_write_safetensors(dst, json, b + 8 + hlen, len - 8 - hlen), 0);
    free(json);
    cJSON_Delete(h);
    free(b);
}

static void test_extra_and_missing_tensors(void **unused)
{
    /* an unknown tensor is refused by name; lm_gate is not (the fixture loads) */
    const char *p = tu_tmp_path("mystery.safetensors");
    copy_renamed(CK "/ref-backbone-lm-gate.safetensors", p, "backbone.lm_gate", "backbone.mystery");
    tu_expect_load_refused(p, NULL, BDH_ERR_FORMAT, "that no BDH model has: backbone.mystery", "lm_gate is ignored");
    /* a missing tensor: the message lists the names the file has */
    p = tu_tmp_path("no-encoder-v.safetensors");
    copy_renamed(CK "/ref-model-prefix.safetensors", p, "model.encoder_v", "model.lm_gate");
    tu_expect_load_refused(p, NULL, BDH_ERR_CONFIG, "no tensor named encoder_v",
                           "it has: model.attn.freqs, model.decoder, model.embed.weight");
    /* one tensor under two names */
    p = tu_tmp_path("twice.safetensors");
    copy_renamed(CK "/ref-model-prefix.safetensors", p, "model.encoder_v", "module.encoder");
    tu_expect_load_refused(p, NULL, BDH_ERR_FORMAT, "model.encoder and module.encoder are both encoder", NULL);
    /* no lm_head, and a config.json that does not tie */
    const char *d = make_dir("untied-no-head");
    copy_renamed(CK "/hf-tied/model.safetensors", tu_tmp_path("untied-no-head/model.safetensors"), NULL, NULL);
    write_text(tu_tmp_path("untied-no-head/config.json"),
               "{\"num_hidden_layers\": 2, \"hidden_size\": 32, \"tie_word_embeddings\": false}");
    tu_expect_load_refused(d, NULL, BDH_ERR_CONFIG, "no tensor named lm_head or lm_head.weight", "backbone.embed.weight");
    /* tied, and encoder missing: found by fuzz_checkpoint, which read a NULL
     * encoder when the tie came first (reproducer in tests/fuzz/regressions) */
    d = make_dir("tied-no-encoder");
    copy_renamed(CK "/hf-tied/model.safetensors", tu_tmp_path("tied-no-encoder/model.safetensors"), "backbone.encoder", "lm_gate");
    size_t clen = 0;
    char *cfg = tu_read_file(CK "/hf-tied/config.json", &clen);
    assert_non_null(cfg);
    assert_int_equal(tu_write_file(tu_tmp_path("tied-no-encoder/config.json"), cfg, clen), 0);
    free(cfg);
    tu_expect_load_refused(d, NULL, BDH_ERR_CONFIG, "no tensor named encoder", NULL);
}

static void test_config_sources(void **unused)
{
    /* metadata against config.json, config.json against the shapes, under both naming schemes */
    const char *d = make_dir("disagree");
    copy_renamed(CK "/ref-model-prefix.safetensors", tu_tmp_path("disagree/model.safetensors"), NULL, NULL);
    write_text(tu_tmp_path("disagree/config.json"), "{\"num_hidden_layers\": 3}");
    tu_expect_load_refused(d, NULL, BDH_ERR_CONFIG, "the metadata says n_layer = 2 but config.json says 3", NULL);
    write_text(tu_tmp_path("disagree/config.json"), "{\"n_layer\": 2, \"hidden_size\": 40}");
    tu_expect_load_refused(d, NULL, BDH_ERR_CONFIG, "the metadata says n_embd = 32 but config.json says 40", NULL);
    write_text(tu_tmp_path("disagree/config.json"), "{\"n_layer\": 2, \"num_hidden_layers\": 4}");
    tu_expect_load_refused(d, NULL, BDH_ERR_CONFIG, "n_layer = 2 but num_hidden_layers = 4", NULL);
    write_text(tu_tmp_path("disagree/config.json"), "[2]");
    tu_expect_load_refused(d, NULL, BDH_ERR_CONFIG, "is not a JSON object", NULL);
    write_text(tu_tmp_path("disagree/config.json"), "{\"num_hidden_layers\": 2.5}");
    tu_expect_load_refused(d, NULL, BDH_ERR_CONFIG, "num_hidden_layers is not an integer", NULL);
    /* the same file by its path reads the config.json beside it */
    tu_expect_load_refused(tu_tmp_path("disagree/model.safetensors"), NULL, BDH_ERR_CONFIG, "num_hidden_layers", NULL);

    /* config.json against the shapes (a file without metadata) */
    d = make_dir("json-vs-shapes");
    copy_renamed(CK "/ref-no-metadata/model.safetensors", tu_tmp_path("json-vs-shapes/model.safetensors"), NULL, NULL);
    write_text(tu_tmp_path("json-vs-shapes/config.json"), "{\"n_layer\": 2, \"hidden_size\": 40}");
    tu_expect_load_refused(d, NULL, BDH_ERR_CONFIG, "config.json says n_embd = 40 but the tensor shapes give 32", NULL);
    write_text(tu_tmp_path("json-vs-shapes/config.json"), "{\"n_layer\": 2, \"mlp_internal_dim_multiplier\": 4}");
    tu_expect_load_refused(d, NULL, BDH_ERR_CONFIG, "config.json says mlp_internal_dim_multiplier = 4, giving N = 64", NULL);

    /* a directory with a metadata-less file and no config.json */
    d = make_dir("no-config");
    const char *file = tu_tmp_path("no-config/model.safetensors");
    copy_renamed(CK "/ref-no-metadata/model.safetensors", file, NULL, NULL);
    tu_expect_load_refused(d, NULL, BDH_ERR_CONFIG, "no n_layer in the metadata, in a config.json", "load parameters");

    /* ... loads with an override, which gives the reference's logits */
    bdh_config o = {0};
    o.n_layer = 2;
    bdh_model_params p = bdh_model_default_params();
    p.config = &o;
    bdh_model *m = tu_load_params(d, &p);
    fixtures f = read_fixtures();
    float *want = read_logits("reference.logits.f32", &f);
    assert_true(worst_diff(m, &f, want) <= ABS_TOL);
    bdh_model_free(m);
    free(want);
    cJSON_Delete(f.root);
    /* an override against the shapes, or against the metadata */
    o.n_head = 4;
    tu_expect_load_refused(d, &p, BDH_ERR_CONFIG, "the load parameters says n_head = 4 but the tensor shapes give 2", NULL);
    o.n_head = 0;
    o.n_layer = 3;
    tu_expect_load_refused(CK "/ref-model-prefix.safetensors", &p, BDH_ERR_CONFIG,
                           "the metadata says n_layer = 2 but the load parameters says 3", NULL);
    o.n_layer = -1;
    tu_expect_load_refused(d, &p, BDH_ERR_INVALID_ARGUMENT, "params.config->n_layer = -1", NULL);
}

static void test_paths(void **unused)
{
    const char *d = make_dir("empty");
    tu_expect_load_refused(d, NULL, BDH_ERR_IO, "is a directory without model.safetensors", NULL);
    d = make_dir("sharded");
    write_text(tu_tmp_path("sharded/model.safetensors.index.json"), "{\"weight_map\": {}}");
    tu_expect_load_refused(d, NULL, BDH_ERR_UNSUPPORTED, "sharded checkpoint", NULL);
    tu_expect_load_refused(CK "/hf-tied/config.json", NULL, BDH_ERR_FORMAT, "not a safetensors file", NULL);
}

/* bdh_model_quantize reads every layout; its copy carries the configuration
 * (a config.json's included). */
static void test_quantize_layouts(void **unused)
{
    const char *q = tu_tmp_path("q8.safetensors");
    assert_int_equal(bdh_model_quantize(CK "/ref-module-compiled.safetensors", q, BDH_WEIGHTS_Q8_0), BDH_OK);
    bdh_model *a = tu_load_with(q, 1, BDH_WEIGHTS_AS_STORED, BDH_KERNELS_FAST);
    bdh_model *b = tu_load_with(CK "/ref-module-compiled.safetensors", 1, BDH_WEIGHTS_Q8_0, BDH_KERNELS_FAST);
    fixtures f = read_fixtures();
    float *la = malloc(f.T * f.V * sizeof(float)), *lb = malloc(f.T * f.V * sizeof(float));
    bdh_state *sa, *sb;
    assert_int_equal(bdh_state_new(a, &sa), BDH_OK);
    assert_int_equal(bdh_state_new(b, &sb), BDH_OK);
    assert_int_equal(bdh_prefill_all(sa, f.tokens, f.T, la), BDH_OK);
    assert_int_equal(bdh_prefill_all(sb, f.tokens, f.T, lb), BDH_OK);
    assert_memory_equal(la, lb, f.T * f.V * sizeof(float));
    assert_true(bdh_model_fingerprint(a) == bdh_model_fingerprint(b));
    bdh_state_free(sa);
    bdh_state_free(sb);
    bdh_model_free(a);
    bdh_model_free(b);
    free(la);
    free(lb);
    cJSON_Delete(f.root);
    /* a checkpoint configured by config.json: the copy carries the configuration */
    assert_int_equal(bdh_model_quantize(CK "/hf-untied", q, BDH_WEIGHTS_Q8_0), BDH_OK);
    bdh_model *c = tu_load_with(q, 1, BDH_WEIGHTS_AS_STORED, BDH_KERNELS_FAST);
    assert_string_equal(bdh_model_file_dtype(c, "encoder"), "Q8_0");
    bdh_model_free(c);
}

/* ------------------------------------------------------------- convert */

/* The logits of every fixture position (prefill_all) of m. */
static float *all_logits(bdh_model *m, const fixtures *f)
{
    float *l = malloc(f->T * f->V * sizeof(float));
    bdh_state *s;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    assert_int_equal(bdh_prefill_all(s, f->tokens, f->T, l), BDH_OK);
    bdh_state_free(s);
    return l;
}

/* in loaded with `held` and out (the conversion) loaded as stored give the
 * same logits bit for bit: the conversion wrote exactly what a load holds. */
static void expect_same_logits(const char *in, bdh_weight_type held, const char *out, const fixtures *f)
{
    bdh_model *a = tu_load_with(in, 1, held, BDH_KERNELS_FAST);
    bdh_model *b = tu_load_with(out, 1, BDH_WEIGHTS_AS_STORED, BDH_KERNELS_FAST);
    float *la = all_logits(a, f), *lb = all_logits(b, f);
    assert_memory_equal(la, lb, f->T * f->V * sizeof(float));
    free(la);
    free(lb);
    bdh_model_free(a);
    bdh_model_free(b);
}

/* Every layout converts to the canonical file in each type; the copy loads
 * on its own (no config.json beside it) with the names the reference uses. */
static void test_convert(void **unused)
{
    fixtures f = read_fixtures();
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(f.root, "checkpoints"), *e;
    static const struct { bdh_weight_type type; const char *dtype; } types[] = {
        {BDH_WEIGHTS_F32, "F32"}, {BDH_WEIGHTS_BF16, "BF16"}, {BDH_WEIGHTS_F16, "F16"}, {BDH_WEIGHTS_Q8_0, "Q8_0"}};
    const char *out = tu_tmp_path("converted.safetensors");
    cJSON_ArrayForEach(e, list) {
        char in[256];
        snprintf(in, sizeof in, CK "/%s", cJSON_GetObjectItemCaseSensitive(e, "path")->valuestring);
        for (size_t k = 0; k < sizeof types / sizeof *types; k++) {
            assert_int_equal(bdh_model_convert(in, out, types[k].type), BDH_OK);
            expect_same_logits(in, types[k].type, out, &f);
            bdh_model *m = tu_load_with(out, 1, BDH_WEIGHTS_AS_STORED, BDH_KERNELS_FAST);
            assert_string_equal(bdh_model_file_dtype(m, "encoder"), types[k].dtype);
            assert_string_equal(bdh_model_file_dtype(m, "attn.freqs"), "F32");
            bdh_model_free(m);
        }
    }
    /* the canonical names, the whole configuration in the metadata */
    assert_int_equal(bdh_model_convert(CK "/hf-tied", out, BDH_WEIGHTS_F32), BDH_OK);
    size_t len = 0;
    char *bytes = tu_read_file(out, &len);
    assert_non_null(bytes);
    const char *header = bytes + 8;
    for (const char *want = "\"embed.weight\"\0\"encoder\"\0\"encoder_v\"\0\"decoder\"\0\"lm_head\"\0\"attn.freqs\"\0"
                            "\"n_layer\":\"2\"\0\"n_embd\":\"32\"\0\"n_head\":\"2\"\0\"vocab_size\":\"256\"\0"
                            "\"mlp_internal_dim_multiplier\":\"2\"\0";
         *want; want += strlen(want) + 1)
        assert_non_null(strstr(header, want));
    assert_null(strstr(header, "backbone."));
    free(bytes);
    /* a Q8_0 file: copied as stored, or dequantized exactly */
    const char *q = tu_tmp_path("q8-src.safetensors"), *again = tu_tmp_path("q8-again.safetensors");
    assert_int_equal(bdh_model_quantize(CK "/hf-untied", q, BDH_WEIGHTS_Q8_0), BDH_OK);
    assert_int_equal(bdh_model_convert(q, again, BDH_WEIGHTS_AS_STORED), BDH_OK);
    expect_same_logits(q, BDH_WEIGHTS_AS_STORED, again, &f);
    assert_int_equal(bdh_model_convert(q, again, BDH_WEIGHTS_Q8_0), BDH_OK);
    expect_same_logits(q, BDH_WEIGHTS_AS_STORED, again, &f);
    bdh_model *qa = tu_load_with(q, 1, BDH_WEIGHTS_AS_STORED, BDH_KERNELS_FAST);
    bdh_model *qb = tu_load_with(again, 1, BDH_WEIGHTS_AS_STORED, BDH_KERNELS_FAST);
    assert_true(bdh_model_fingerprint(qa) == bdh_model_fingerprint(qb)); /* its source's, kept */
    bdh_model_free(qa);
    bdh_model_free(qb);
    assert_int_equal(bdh_model_convert(q, again, BDH_WEIGHTS_F32), BDH_OK);
    expect_same_logits(q, BDH_WEIGHTS_F32, again, &f);
    /* refusals leave an existing output as it was */
    write_text(out, "keep");
    assert_int_equal(bdh_model_convert(CK "/hf-tied", out, (bdh_weight_type)9), BDH_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(bdh_last_error(), "weight type 9"));
    assert_int_equal(bdh_model_convert(q, q, BDH_WEIGHTS_F32), BDH_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(bdh_last_error(), "is the input"));
    assert_int_equal(bdh_model_convert(tu_tmp_path("missing"), out, BDH_WEIGHTS_F32), BDH_ERR_IO);
    assert_int_equal(bdh_model_convert(NULL, out, BDH_WEIGHTS_F32), BDH_ERR_INVALID_ARGUMENT);
    char *kept = tu_read_file(out, &len);
    assert_true(len == 4 && memcmp(kept, "keep", 4) == 0);
    free(kept);
    cJSON_Delete(f.root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_layout),
        cmocka_unit_test(test_extra_and_missing_tensors),
        cmocka_unit_test(test_config_sources),
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_quantize_layouts),
        cmocka_unit_test(test_convert),
    };
    return cmocka_run_group_tests_name("checkpoint layouts", tests, setup, tu_remove_tmp_dir);
}
