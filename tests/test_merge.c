/* bdh_model_merge (docs/merging.md).
 *
 * (1) A model merged with itself computes what it computed: every head's
 *     neurons appear twice, so the state read a = S^T q and the decoder sum
 *     double, and the LayerNorms after them take the factor out, but not
 *     exactly: LN(2v) with eps is LN(v) with eps/4, a relative change of about
 *     3 eps / (8 var(v)). Where var(v) >> eps (weights large enough, or a
 *     trained model) that is below float32 rounding; where var(v) ~ eps (a
 *     freshly initialised model's tiny activations) it is not.
 * (2) A merge of two different models is tensor for tensor the merge built
 *     here by index arithmetic of its own (and written by this file's own
 *     writer): bit-identical tensors and logits. The flat concatenation of
 *     decoder (which mixes heads) gives other logits.
 * (3) Refusals, each with its message; a failed merge leaves OUT as it was.
 * (4) embed.weight and lm_head: the mean, or A's or B's as they are. */
#include "test_util.h"

#include <stdbool.h>
#include <unistd.h>

static int setup(void **unused) { return tu_make_tmp_dir("merge"); }

#define TINY TU_DATA "/golden/tiny.model.safetensors"
#define SHIPPED "models/shakespeare.safetensors"

/* ---- models as float arrays in the reference's layouts */

typedef struct model {
    int L, D, H, N, V, mult; /* mult 0: no mlp_internal_dim_multiplier in the file */
    float *embed, *enc, *enc_v, *dec, *lm_head;
    float *freqs;            /* NULL: no attn.freqs in the file */
    bool extra;              /* write an unknown tensor "lm_gate" too */
} model;

static float *random_array(size_t n, float scale)
{
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = tu_uniform(scale);
    return v;
}

/* Random weights of uniform(+-scale) (encoder, encoder_v, decoder; embed
 * +-1, lm_head +-0.2). No attn.freqs: the default ones apply. */
static model random_model(int L, int D, int H, int N, int V, float scale)
{
    const size_t HN = (size_t)H * N;
    model m = {L, D, H, N, V, (int)((int64_t)N * H / D), NULL, NULL, NULL, NULL, NULL, NULL, false};
    m.embed = random_array((size_t)V * D, 1.0f);
    m.enc = random_array(HN * D, scale);
    m.enc_v = random_array(HN * D, scale);
    m.dec = random_array(HN * D, scale);
    m.lm_head = random_array((size_t)D * V, 0.2f);
    return m;
}

static model read_model(const char *path, int L, int mult)
{
    model m = {0};
    int64_t rows;
    size_t n;
    m.L = L;
    m.mult = mult;
    m.embed = tu_read_tensor(path, "embed.weight", 0, &n, &rows);
    m.V = (int)rows;
    m.D = (int)(n / (size_t)rows);
    m.enc = tu_read_tensor(path, "encoder", 0, &n, &rows);
    m.H = (int)rows;
    m.N = (int)(n / (size_t)rows / (size_t)m.D);
    m.enc_v = tu_read_tensor(path, "encoder_v", 0, NULL, NULL);
    m.dec = tu_read_tensor(path, "decoder", 0, NULL, NULL);
    m.lm_head = tu_read_tensor(path, "lm_head", 0, NULL, NULL);
    m.freqs = tu_read_tensor(path, "attn.freqs", 0, NULL, NULL);
    return m;
}

static void free_model(model *m)
{
    free(m->embed);
    free(m->enc);
    free(m->enc_v);
    free(m->dec);
    free(m->lm_head);
    free(m->freqs);
}

/* ---- this test's own safetensors writer (cJSON header, F32 tensors) */

static const char *write_model(const char *name, const model *m)
{
    const int64_t D = m->D, H = m->H, N = m->N, V = m->V;
    const struct { const char *name; int n_dims; int64_t shape[4]; const float *data; } t[] = {
        {"embed.weight", 2, {V, D}, m->embed},      {"encoder", 3, {H, D, N}, m->enc},
        {"encoder_v", 3, {H, D, N}, m->enc_v},      {"decoder", 2, {H * N, D}, m->dec},
        {"lm_head", 2, {D, V}, m->lm_head},         {"attn.freqs", 4, {1, 1, 1, N}, m->freqs},
        {"lm_gate", 2, {D, V}, m->extra ? m->lm_head : NULL},
    };
    const int n = (int)(sizeof t / sizeof t[0]);
    cJSON *root = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(root, "__metadata__");
    char v[16];
    snprintf(v, sizeof v, "%d", m->L);
    cJSON_AddStringToObject(meta, "n_layer", v);
    if (m->mult) {
        snprintf(v, sizeof v, "%d", m->mult);
        cJSON_AddStringToObject(meta, "mlp_internal_dim_multiplier", v);
    }
    size_t off = 0;
    for (int i = 0; i < n; i++)
        if (t[i].data) tu_add_f32_tensor(root, t[i].name, t[i].n_dims, t[i].shape, &off);
    uint8_t *data = malloc(off), *p = data;
    for (int i = 0; i < n; i++) {
        if (!t[i].data) continue;
        size_t bytes = 4;
        for (int d = 0; d < t[i].n_dims; d++) bytes *= (size_t)t[i].shape[d];
        memcpy(p, t[i].data, bytes);
        p += bytes;
    }
    const char *path = tu_write_tmp_safetensors(name, root, data, off);
    free(data);
    cJSON_Delete(root);
    return path;
}

/* The reference's get_freqs(N, theta=2^16) in float32. */
static float *default_freqs(int N)
{
    assert_true(N > 0);
    float *f = malloc((size_t)N * sizeof(float));
    for (int j = 0; j < N; j++) f[j] = 1.0f / powf(65536.0f, floorf((float)j / 2.0f) * 2.0f / (float)N) / (float)(2.0 * M_PI);
    return f;
}

/* ---- the merge, built here by index: head h's neurons A's then B's */

enum { DECODER_PER_HEAD, DECODER_FLAT };

static model build_merge(const model *a, const model *b, bdh_merge_embed embed, int decoder_layout)
{
    const int D = a->D, H = a->H, V = a->V, Na = a->N, Nb = b->N, N = Na + Nb;
    assert_true(Na > 0 && Nb > 0);
    model m = {a->L, D, H, N, V, a->mult + b->mult, NULL, NULL, NULL, NULL, NULL, NULL, false};
    m.embed = malloc((size_t)V * D * sizeof(float));
    m.lm_head = malloc((size_t)V * D * sizeof(float));
    for (size_t i = 0; i < (size_t)V * D; i++) {
        m.embed[i] = embed == BDH_MERGE_EMBED_A ? a->embed[i] : embed == BDH_MERGE_EMBED_B ? b->embed[i]
                                                                                            : (a->embed[i] + b->embed[i]) * 0.5f;
        m.lm_head[i] = embed == BDH_MERGE_EMBED_A ? a->lm_head[i] : embed == BDH_MERGE_EMBED_B ? b->lm_head[i]
                                                                                                : (a->lm_head[i] + b->lm_head[i]) * 0.5f;
    }
    const size_t HN = (size_t)H * N;
    m.enc = malloc(HN * D * sizeof(float));
    m.enc_v = malloc(HN * D * sizeof(float));
    m.dec = malloc(HN * D * sizeof(float));
    for (int h = 0; h < H; h++)
        for (int d = 0; d < D; d++)
            for (int j = 0; j < N; j++) {
                const size_t o = ((size_t)h * D + d) * N + j;
                m.enc[o] = j < Na ? a->enc[((size_t)h * D + d) * Na + j] : b->enc[((size_t)h * D + d) * Nb + (j - Na)];
                m.enc_v[o] = j < Na ? a->enc_v[((size_t)h * D + d) * Na + j] : b->enc_v[((size_t)h * D + d) * Nb + (j - Na)];
            }
    if (decoder_layout == DECODER_PER_HEAD) {
        for (int h = 0; h < H; h++)
            for (int j = 0; j < N; j++)
                for (int d = 0; d < D; d++)
                    m.dec[((size_t)h * N + j) * D + d] =
                        j < Na ? a->dec[((size_t)h * Na + j) * D + d] : b->dec[((size_t)h * Nb + (j - Na)) * D + d];
    } else { /* the community recipe: all of A's rows, then all of B's */
        memcpy(m.dec, a->dec, (size_t)H * Na * D * sizeof(float));
        memcpy(m.dec + (size_t)H * Na * D, b->dec, (size_t)H * Nb * D * sizeof(float));
    }
    float *fa = a->freqs ? NULL : default_freqs(Na), *fb = b->freqs ? NULL : default_freqs(Nb);
    m.freqs = malloc((size_t)N * sizeof(float));
    memcpy(m.freqs, a->freqs ? a->freqs : fa, (size_t)Na * sizeof(float));
    memcpy(m.freqs + Na, b->freqs ? b->freqs : fb, (size_t)Nb * sizeof(float));
    free(fa);
    free(fb);
    return m;
}

/* ---- running a model over a text */

/* T bytes of the validation split of tiny Shakespeare */
static int32_t *text(int T)
{
    size_t len;
    uint8_t *all = tu_read_file("models/tinyshakespeare.txt", &len);
    assert_non_null(all);
    assert_true(len > 1003854 + (size_t)T);
    int32_t *tok = malloc((size_t)T * sizeof(int32_t));
    for (int t = 0; t < T; t++) tok[t] = all[1003854 + t];
    free(all);
    return tok;
}

static float *logits_of(const char *path, bdh_weight_type wt, bdh_kernels k, const int32_t *tok, int T)
{
    bdh_model *m = tu_load_with(path, 1, wt, k);
    bdh_config c;
    bdh_model_config(m, &c);
    float *out = malloc((size_t)T * c.vocab_size * sizeof(float));
    bdh_state *s;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    for (int t = 0; t < T; t++) assert_int_equal(bdh_step(s, tok[t], out + (size_t)t * c.vocab_size), BDH_OK);
    bdh_state_free(s);
    bdh_model_free(m);
    return out;
}

static void merge_ok(const char *a, const char *b, const char *out, bdh_merge_embed embed)
{
    bdh_merge_params p = bdh_merge_default_params();
    p.embed = embed;
    const bdh_status rc = bdh_model_merge(a, b, out, &p);
    if (rc != BDH_OK) fprintf(stderr, "merge: %s\n", bdh_last_error());
    assert_int_equal(rc, BDH_OK);
}

/* self-merge against the model, both kernel sets; returns the worst error */
static double self_merge_error(const char *label, const char *path, bdh_weight_type wt, int T)
{
    const char *merged = tu_tmp_path("self.safetensors");
    merge_ok(path, path, merged, BDH_MERGE_EMBED_MEAN);
    int32_t *tok = text(T);
    double w = 0.0;
    for (int k = BDH_KERNELS_FAST; k <= BDH_KERNELS_REFERENCE; k++) {
        float *a = logits_of(path, wt, (bdh_kernels)k, tok, T), *b = logits_of(merged, BDH_WEIGHTS_F32, (bdh_kernels)k, tok, T);
        const double e = tu_worst_rel_err(b, a, T, 256);
        printf("  %-34s %s kernels, %d positions: self-merge vs model %.2e\n", label, k ? "reference" : "fast", T, e);
        if (e > w || e != e) w = e;
        free(a);
        free(b);
    }
    free(tok);
    return w;
}

/* ---- (1) merging a model with itself */

static void self_merge_keeps_logits(void **unused)
{
    /* Weights of +-0.5: the variances before both LayerNorms are far above
     * eps (3 eps / (8 var) < 1e-7), so only float32 rounding remains: the sums
     * over 2N run in another order (<= 1e-5, the bound fast vs reference
     * kernels share in test_fastpath / test_q8). */
    model big = random_model(2, 32, 2, 128, 256, 0.5f);
    const char *path = write_model("big.safetensors", &big);
    assert_true(self_merge_error("random, weights +-0.5", path, BDH_WEIGHTS_F32, 256) <= 1e-5);
    free_model(&big);

    /* The shipped (trained) model: var(a) and var(y) are mostly far above
     * eps, but not at every position; measured 9.4e-5 at worst over these 300
     * positions (both kernel sets). The bound is 10x that: a wrong layout
     * gives errors of order 0.1 to 1 (the flat decoder below: > 1e-2). */
    assert_true(self_merge_error("models/shakespeare.safetensors", SHIPPED, BDH_WEIGHTS_F32, 300) <= 1e-3);

    /* The golden tiny model (a fresh init, weights +-0.08): var(y) is below
     * eps, and LN(2y) differs from LN(y) in earnest. Not a defect of the
     * merge: of LayerNorm's eps (docs/merging.md). */
    const double e = self_merge_error("tests/data/golden/tiny (fresh init)", TINY, BDH_WEIGHTS_F32, 64);
    assert_true(e > 1e-2);
}

/* A Q8_0 file merges through its dequantized values (exact in float32), so
 * the self-merge compares with the file held as f32 (dequantized). */
static void self_merge_of_q8_file(void **unused)
{
    model big = random_model(2, 32, 2, 128, 256, 0.5f);
    const char *path = write_model("big.safetensors", &big), *q8 = tu_tmp_path("big.q8.safetensors");
    assert_int_equal(bdh_model_quantize(path, q8, BDH_WEIGHTS_Q8_0), BDH_OK);
    assert_true(self_merge_error("random +-0.5, Q8_0 file", q8, BDH_WEIGHTS_F32, 256) <= 1e-5);
    free_model(&big);
}

/* ---- (2) two different models against the merge built here */

static void compare_tensor(const char *a, const char *b, const char *name, size_t expect_numel)
{
    size_t na, nb;
    float *x = tu_read_tensor(a, name, 0, &na, NULL), *y = tu_read_tensor(b, name, 0, &nb, NULL);
    assert_int_equal(na, expect_numel);
    assert_int_equal(na, nb);
    if (memcmp(x, y, na * sizeof(float)) != 0) fail_msg("tensor %s of %s and %s differ", name, a, b);
    free(x);
    free(y);
}

static void merge_matches_hand_built(void **unused)
{
    /* A: the golden tiny model (its own attn.freqs); B: other weights, half
     * the neurons, no attn.freqs (the defaults for its N). */
    model a = read_model(TINY, 2, 8), b = random_model(2, 32, 2, 64, 256, 0.3f);
    const char *pb = write_model("b.safetensors", &b), *out = tu_tmp_path("merged.safetensors");
    merge_ok(TINY, pb, out, BDH_MERGE_EMBED_MEAN);
    model h = build_merge(&a, &b, BDH_MERGE_EMBED_MEAN, DECODER_PER_HEAD);
    const char *ph = write_model("hand.safetensors", &h);
    const size_t HND = (size_t)2 * 192 * 32;
    compare_tensor(out, ph, "encoder", HND);
    compare_tensor(out, ph, "encoder_v", HND);
    compare_tensor(out, ph, "decoder", HND);
    compare_tensor(out, ph, "attn.freqs", 192);
    compare_tensor(out, ph, "embed.weight", 256 * 32);
    compare_tensor(out, ph, "lm_head", 256 * 32);

    bdh_model *m = tu_load(out);
    bdh_config c;
    bdh_model_config(m, &c);
    assert_int_equal(c.n_neurons, 192);
    assert_int_equal(c.mlp_internal_dim_multiplier, 8 + 4);
    assert_int_equal(c.n_layer, 2);
    assert_string_equal(bdh_model_file_dtype(m, "encoder"), "F32");
    bdh_model_free(m);

    const int T = 200;
    int32_t *tok = text(T);
    float *lm = logits_of(out, BDH_WEIGHTS_F32, BDH_KERNELS_FAST, tok, T);
    float *lh = logits_of(ph, BDH_WEIGHTS_F32, BDH_KERNELS_FAST, tok, T);
    assert_memory_equal(lm, lh, (size_t)T * 256 * sizeof(float));

    /* decoder concatenated flat (A's H*N_A rows, then B's) mixes heads: */
    model flat = build_merge(&a, &b, BDH_MERGE_EMBED_MEAN, DECODER_FLAT);
    float *lf = logits_of(write_model("flat.safetensors", &flat), BDH_WEIGHTS_F32, BDH_KERNELS_FAST, tok, T);
    const double e = tu_worst_rel_err(lf, lm, T, 256);
    printf("  flat decoder concatenation vs per head: %.2e\n", e);
    assert_true(e > 1e-2);

    free(lm);
    free(lh);
    free(lf);
    free(tok);
    free_model(&flat);
    free_model(&h);
    free_model(&a);
    free_model(&b);
}

/* ---- (3) refusals */

static void refused(const char *a, const char *b, const char *out, const bdh_merge_params *p, bdh_status want, const char *msg)
{
    const bdh_status rc = bdh_model_merge(a, b, out, p);
    if (rc != want || !strstr(bdh_last_error(), msg))
        fail_msg("merge %s + %s -> %s: %s (%s), expected %s with '%s'", a ? a : "NULL", b ? b : "NULL", out ? out : "NULL",
                 bdh_status_name(rc), bdh_last_error(), bdh_status_name(want), msg);
}

static int count_temporaries(void)
{
    char cmd[160];
    snprintf(cmd, sizeof cmd, "ls %s | grep -c tmp-", tu_dir);
    FILE *f = popen(cmd, "r");
    int n = -1;
    assert_int_equal(fscanf(f, "%d", &n), 1);
    pclose(f);
    return n;
}

static void refusals(void **unused)
{
    model a = random_model(2, 32, 2, 64, 256, 0.3f);
    const char *pa = write_model("ra.safetensors", &a);
    const char *kept = tu_tmp_path("kept.safetensors");
    assert_int_equal(tu_write_file(kept, "keep", 4), 0);

    struct { const char *label; model m; const char *msg; } cases[] = {
        {"d16", random_model(2, 16, 2, 64, 256, 0.3f), "n_embd is 32 in"},
        {"h4", random_model(2, 32, 4, 64, 256, 0.3f), "n_head is 2 in"},
        {"l3", random_model(3, 32, 2, 64, 256, 0.3f), "n_layer is 2 in"},
        {"v100", random_model(2, 32, 2, 64, 100, 0.3f), "vocab_size is 256 in"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *pb = write_model(cases[i].label, &cases[i].m);
        refused(pa, pb, kept, NULL, BDH_ERR_CONFIG, cases[i].msg);
        refused(pa, pb, kept, NULL, BDH_ERR_CONFIG, "a merge needs the same n_layer, n_embd, n_head and vocab_size");
        free_model(&cases[i].m);
    }

    /* lm_gate, which the loader ignores, is dropped (other tensors the
     * loader does not know are refused there by name: test_checkpoints) */
    model x = random_model(2, 32, 2, 64, 256, 0.3f);
    x.extra = true;
    const char *px = write_model("extra.safetensors", &x);
    const char *pxm = tu_tmp_path("extra-merged.safetensors");
    assert_int_equal(bdh_model_merge(pa, px, pxm, NULL), BDH_OK);
    bdh_model *mx = tu_load_with(pxm, 1, BDH_WEIGHTS_AS_STORED, BDH_KERNELS_FAST);
    bdh_model_free(mx);
    free_model(&x);

    /* N = 10 per head with D = 32, H = 3 and no multiplier in the file: the
     * loader derives 10 * 3 / 32 = 0, and no multiplier gives N = 20 */
    model odd = random_model(2, 32, 3, 10, 256, 0.3f);
    odd.mult = 0;
    const char *po = write_model("odd.safetensors", &odd);
    refused(po, po, kept, NULL, BDH_ERR_CONFIG, "N = 10 + 10 = 20 neurons per head is not mlp_internal_dim_multiplier");
    free_model(&odd);

    /* the output is an input: by name, and by another name */
    refused(pa, TINY, pa, NULL, BDH_ERR_INVALID_ARGUMENT, "is an input");
    refused(TINY, pa, pa, NULL, BDH_ERR_INVALID_ARGUMENT, "is an input");
    const char *link = tu_tmp_path("link.safetensors");
    assert_int_equal(symlink(pa, link), 0);
    refused(pa, pa, link, NULL, BDH_ERR_INVALID_ARGUMENT, "is an input");
    float *dec = tu_read_tensor(pa, "decoder", 0, NULL, NULL);
    assert_memory_equal(dec, a.dec, (size_t)2 * 64 * 32 * sizeof(float));
    free(dec);

    /* files that are not models, arguments that are not valid */
    const char *missing = tu_tmp_path("missing.safetensors"), *junk = tu_tmp_path("junk.safetensors");
    assert_int_equal(tu_write_file(junk, "not a model at all, just some bytes", 35), 0);
    refused(pa, missing, kept, NULL, BDH_ERR_IO, missing);
    refused(junk, pa, kept, NULL, BDH_ERR_FORMAT, junk);
    refused(NULL, pa, kept, NULL, BDH_ERR_INVALID_ARGUMENT, "a path is NULL");
    refused(pa, pa, NULL, NULL, BDH_ERR_INVALID_ARGUMENT, "a path is NULL");
    bdh_merge_params bad = bdh_merge_default_params();
    bad.embed = (bdh_merge_embed)7;
    refused(pa, pa, kept, &bad, BDH_ERR_INVALID_ARGUMENT, "params.embed = 7 is not a bdh_merge_embed");
    refused(pa, pa, tu_tmp_path("no/such/dir/out.safetensors"), NULL, BDH_ERR_IO, "cannot create a file beside");

    /* nothing above replaced OUT or left a temporary file */
    size_t len;
    char *k = tu_read_file(kept, &len);
    assert_int_equal(len, 4);
    assert_memory_equal(k, "keep", 4);
    free(k);
    assert_int_equal(count_temporaries(), 0);
    /* and a merge that succeeds replaces it */
    merge_ok(pa, pa, kept, BDH_MERGE_EMBED_MEAN);
    assert_int_equal(count_temporaries(), 0);
    bdh_model_free(tu_load(kept));
    free_model(&a);
}

/* ---- (4) embed.weight and lm_head: mean, A's or B's */

static void embed_choices(void **unused)
{
    model a = read_model(TINY, 2, 8), b = random_model(2, 32, 2, 64, 256, 0.3f);
    const char *pb = write_model("eb.safetensors", &b);
    const size_t n = (size_t)256 * 32;
    const struct { bdh_merge_embed how; const char *meta; } choices[] = {
        {BDH_MERGE_EMBED_MEAN, "mean"}, {BDH_MERGE_EMBED_A, "a"}, {BDH_MERGE_EMBED_B, "b"}};
    float *mean_logits = NULL, *a_logits = NULL;
    int32_t *tok = text(64);
    for (size_t i = 0; i < 3; i++) {
        const char *out = tu_tmp_path("embed.safetensors");
        merge_ok(TINY, pb, out, choices[i].how);
        float *e = tu_read_tensor(out, "embed.weight", 0, NULL, NULL), *l = tu_read_tensor(out, "lm_head", 0, NULL, NULL);
        for (size_t k = 0; k < n; k++) {
            const float we = choices[i].how == BDH_MERGE_EMBED_A ? a.embed[k]
                             : choices[i].how == BDH_MERGE_EMBED_B ? b.embed[k] : (a.embed[k] + b.embed[k]) * 0.5f;
            const float wl = choices[i].how == BDH_MERGE_EMBED_A ? a.lm_head[k]
                             : choices[i].how == BDH_MERGE_EMBED_B ? b.lm_head[k] : (a.lm_head[k] + b.lm_head[k]) * 0.5f;
            if (e[k] != we || l[k] != wl) fail_msg("embed %s: element %zu: %g %g, expected %g %g", choices[i].meta, k, e[k], l[k], we, wl);
        }
        /* the metadata says which */
        size_t len;
        char *file = tu_read_file(out, &len), needle[64];
        snprintf(needle, sizeof needle, "\"merged_embed\":\"%s\"", choices[i].meta);
        uint64_t hlen;
        memcpy(&hlen, file, 8);
        file[8 + hlen - 1] = '\0';
        assert_non_null(strstr(file + 8, needle));
        assert_non_null(strstr(file + 8, "\"merged_neurons\":\"128+64\""));
        free(file);
        float *lg = logits_of(out, BDH_WEIGHTS_F32, BDH_KERNELS_FAST, tok, 64);
        if (choices[i].how == BDH_MERGE_EMBED_MEAN) mean_logits = lg;
        else if (choices[i].how == BDH_MERGE_EMBED_A) a_logits = lg;
        else free(lg);
        free(e);
        free(l);
    }
    /* the choice reaches the model */
    assert_true(tu_worst_rel_err(a_logits, mean_logits, 64, 256) > 1e-3);
    free(mean_logits);
    free(a_logits);
    free(tok);
    free_model(&a);
    free_model(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(self_merge_keeps_logits),
        cmocka_unit_test(self_merge_of_q8_file),
        cmocka_unit_test(merge_matches_hand_built),
        cmocka_unit_test(refusals),
        cmocka_unit_test(embed_choices),
    };
    return cmocka_run_group_tests(tests, setup, tu_remove_tmp_dir);
}
