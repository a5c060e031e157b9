/* Q8_0 weights: the fast kernels against the independent reference on the
 * same dequantized blocks (<= 1e-5, run once per dot-kernel variant by make
 * test-c), D not a multiple of 32 (short tail blocks), pre-quantized files
 * bit-identical to quantizing at load (thread counts and batch groupings:
 * test_fastpath), prefill on Q8_0, fidelity against float32 weights, state
 * blobs kept apart from the float32 model's, and damaged quantized files
 * refused with their own messages. */
#include "test_util.h"

#include <stdbool.h>
#include <unistd.h>

static int setup(void **unused) { return tu_make_tmp_dir("q8"); }

/* ---- a random model of any shape, written with cJSON */

static const char *random_model(const char *name, int L, int D, int H, int N, int V)
{
    const struct { const char *name; int n_dims; int64_t shape[3]; float scale; } t[] = {
        {"embed.weight", 2, {V, D}, 1.0f},  {"encoder", 3, {H, D, N}, 0.2f}, {"encoder_v", 3, {H, D, N}, 0.2f},
        {"decoder", 2, {(int64_t)H * N, D}, 0.2f}, {"lm_head", 2, {D, V}, 0.2f},
    };
    cJSON *root = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(root, "__metadata__");
    char nl[16];
    snprintf(nl, sizeof nl, "%d", L);
    cJSON_AddStringToObject(meta, "n_layer", nl);
    size_t off = 0, sizes[5];
    for (int i = 0; i < 5; i++) {
        const size_t begin = off;
        tu_add_f32_tensor(root, t[i].name, t[i].n_dims, t[i].shape, &off);
        sizes[i] = off - begin;
    }
    uint8_t *data = malloc(off), *p = data;
    for (int i = 0; i < 5; i++)
        for (size_t k = 0; k < sizes[i] / 4; k++, p += 4) {
            const float v = tu_uniform(t[i].scale);
            memcpy(p, &v, 4);
        }
    const char *path = tu_write_tmp_safetensors(name, root, data, off);
    free(data);
    cJSON_Delete(root);
    return path;
}

/* logits of T tokens from a fresh state, stepped (or prefilled) */
static float *run(bdh_model *m, int T, bool prefill)
{
    bdh_config c;
    bdh_model_config(m, &c);
    float *out = malloc((size_t)T * c.vocab_size * sizeof(float));
    int32_t *tok = malloc((size_t)T * sizeof(int32_t));
    for (int t = 0; t < T; t++) tok[t] = (t * 31 + 7) % c.vocab_size;
    bdh_state *s;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    if (prefill) assert_int_equal(bdh_prefill_all(s, tok, (size_t)T, out), BDH_OK);
    else
        for (int t = 0; t < T; t++) assert_int_equal(bdh_step(s, tok[t], out + (size_t)t * c.vocab_size), BDH_OK);
    bdh_state_free(s);
    free(tok);
    return out;
}

/* fast Q8_0 vs the reference on the same blocks; and vs float32 weights */
static void check_model(const char *label, const char *path, int T, int V)
{
    bdh_model *fast = tu_load_with(path, 2, BDH_WEIGHTS_Q8_0, BDH_KERNELS_FAST);
    bdh_model *ref = tu_load_with(path, 1, BDH_WEIGHTS_Q8_0, BDH_KERNELS_REFERENCE);
    bdh_model *f32 = tu_load_with(path, 1, BDH_WEIGHTS_F32, BDH_KERNELS_REFERENCE);
    float *a = run(fast, T, false), *b = run(ref, T, false), *c = run(f32, T, false), *p = run(fast, T, true);
    const double e_ref = tu_worst_rel_err(a, b, T, V), e_f32 = tu_worst_rel_err(a, c, T, V);
    const double e_pre = tu_worst_rel_err(p, a, T, V);
    printf("  %-10s Q8_0 fast vs reference on the same blocks %.2e, vs float32 weights %.2e, prefill vs steps %.2e\n", label,
           e_ref, e_f32, e_pre);
    assert_true(e_ref <= 1e-5); /* the same float32 sums in another order, as for float weights */
    assert_true(e_pre <= 1e-5);
    /* Against float32 weights the error is the quantization's: a measured
     * figure (docs/performance.md), not a property; this bound only catches a
     * broken quantizer (wrong scales give errors of order 1). */
    assert_true(e_f32 > 0.0 && e_f32 <= 0.2);
    free(a);
    free(b);
    free(c);
    free(p);
    bdh_model_free(fast);
    bdh_model_free(ref);
    bdh_model_free(f32);
}

static void test_cases_match_reference(void **unused)
{
    tu_case cases[32];
    const int n = tu_all_cases(cases, 32);
    for (int i = 0; i < n; i++) {
        bdh_model *m = tu_load_with(cases[i].model, 1, BDH_WEIGHTS_F32, BDH_KERNELS_FAST);
        bdh_config c;
        bdh_model_config(m, &c);
        bdh_model_free(m);
        check_model(cases[i].name, cases[i].model, 48, c.vocab_size);
    }
}

/* D = 40 (one full block and a tail of 8) and D = 24 (a tail only) */
static void test_tail_blocks(void **unused)
{
    check_model("D=40", random_model("d40.safetensors", 2, 40, 2, 16, 64), 40, 64);
    check_model("D=24", random_model("d24.safetensors", 3, 24, 3, 8, 50), 40, 50);
}

static void test_prequantized_is_bit_identical(void **unused)
{
    const char *src = TU_DATA "/golden/oddheads.model.safetensors", *dst = tu_tmp_path("odd.q8.safetensors");
    assert_int_equal(bdh_model_quantize(src, dst, BDH_WEIGHTS_Q8_0), BDH_OK);
    bdh_model *at_load = tu_load_with(src, 2, BDH_WEIGHTS_Q8_0, BDH_KERNELS_FAST);
    bdh_model *stored = tu_load_with(dst, 2, BDH_WEIGHTS_AS_STORED, BDH_KERNELS_FAST);
    bdh_model *stored_q = tu_load_with(dst, 1, BDH_WEIGHTS_Q8_0, BDH_KERNELS_FAST);
    bdh_model *f32 = tu_load_with(src, 2, BDH_WEIGHTS_F32, BDH_KERNELS_FAST);
    bdh_config c;
    bdh_model_config(at_load, &c);
    float *a = run(at_load, 64, false), *b = run(stored, 64, false), *d = run(stored_q, 64, false);
    assert_memory_equal(a, b, 64 * (size_t)c.vocab_size * sizeof(float));
    assert_memory_equal(a, d, 64 * (size_t)c.vocab_size * sizeof(float));
    assert_string_equal(bdh_model_file_dtype(stored, "encoder"), "Q8_0");
    assert_string_equal(bdh_model_file_dtype(stored, "embed.weight"), "F32");
    /* encoder, encoder_v, decoder: one byte a weight plus an F16 scale per 32; the rest float32 */
    const size_t D = (size_t)c.n_embd, HN = (size_t)c.n_head * (size_t)c.n_neurons, V = (size_t)c.vocab_size;
    const size_t q8_bytes = 3 * HN * (D + 2 * ((D + 31) / 32)) + 2 * V * D * 4 + (size_t)c.n_neurons * 4;
    assert_int_equal(bdh_model_weight_bytes(stored), q8_bytes);
    assert_int_equal(bdh_model_weight_bytes(at_load), q8_bytes);

    /* blobs: a Q8_0 model's state is not the float32 model's, either way */
    bdh_state *sq, *sf;
    assert_int_equal(bdh_state_new(at_load, &sq), BDH_OK);
    assert_int_equal(bdh_state_new(f32, &sf), BDH_OK);
    assert_int_equal(bdh_step(sq, 5, NULL), BDH_OK);
    size_t len = bdh_state_save_size(sq);
    void *blob = malloc(len);
    assert_int_equal(bdh_state_save(sq, blob, len, NULL), BDH_OK);
    assert_int_equal(bdh_state_load(sf, blob, len), BDH_ERR_MODEL_MISMATCH);
    assert_int_equal(bdh_state_save(sf, blob, len, NULL), BDH_OK);
    assert_int_equal(bdh_state_load(sq, blob, len), BDH_ERR_MODEL_MISMATCH);
    /* ... but the quantized file holds the same blocks as quantizing at load: shared */
    bdh_state *ss;
    assert_int_equal(bdh_state_new(stored, &ss), BDH_OK);
    assert_int_equal(bdh_state_save(sq, blob, len, NULL), BDH_OK);
    assert_int_equal(bdh_state_load(ss, blob, len), BDH_OK);
    assert_int_equal(bdh_model_fingerprint(stored), bdh_model_fingerprint(at_load));
    assert_int_not_equal(bdh_model_fingerprint(stored), bdh_model_fingerprint(f32));
    bdh_state_free(ss);
    free(blob);
    bdh_state_free(sq);
    bdh_state_free(sf);

    /* a float32 load of the quantized file: exactly the dequantized blocks */
    bdh_model *deq = tu_load_with(dst, 1, BDH_WEIGHTS_F32, BDH_KERNELS_REFERENCE);
    bdh_model *ref = tu_load_with(src, 1, BDH_WEIGHTS_Q8_0, BDH_KERNELS_REFERENCE);
    float *e = run(deq, 32, false), *f = run(ref, 32, false);
    assert_memory_equal(e, f, 32 * (size_t)c.vocab_size * sizeof(float));
    assert_int_equal(bdh_model_quantize(dst, tu_tmp_path("again.safetensors"), BDH_WEIGHTS_Q8_0), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_model_quantize(src, src, BDH_WEIGHTS_Q8_0), BDH_ERR_INVALID_ARGUMENT);
    assert_int_equal(bdh_model_quantize(src, dst, BDH_WEIGHTS_BF16), BDH_ERR_INVALID_ARGUMENT);
    free(a);
    free(b);
    free(d);
    free(e);
    free(f);
    bdh_model *ms[] = {at_load, stored, stored_q, f32, deq, ref};
    for (size_t i = 0; i < 6; i++) bdh_model_free(ms[i]);
}

/* ---- damaged quantized files: the quantized copy of tiny, edited */

static uint8_t *qfile;
static size_t qlen;
static uint64_t qhlen;

/* format.md: a damaged Q8_0 file is BDH_ERR_FORMAT, with what is wrong */
static void expect_refused(const char *name, cJSON *root, const uint8_t *data, size_t data_len, const char *msg)
{
    tu_expect_load_refused(tu_write_tmp_safetensors(name, root, data, data_len), NULL, BDH_ERR_FORMAT, msg, NULL);
}

static cJSON *qheader(void) { return cJSON_ParseWithLength((const char *)qfile + 8, (size_t)qhlen); }

static void test_damaged_quantized_files(void **unused)
{
    const char *q = tu_tmp_path("tiny.q8.safetensors");
    assert_int_equal(bdh_model_quantize(TU_DATA "/golden/tiny.model.safetensors", q, BDH_WEIGHTS_Q8_0), BDH_OK);
    qfile = tu_read_file(q, &qlen);
    memcpy(&qhlen, qfile, 8);
    const uint8_t *data = qfile + 8 + qhlen;
    const size_t data_len = qlen - 8 - (size_t)qhlen;

    cJSON *r = qheader();
    cJSON_DeleteItemFromObjectCaseSensitive(r, "encoder_v.scale");
    expect_refused("no-scale", r, data, data_len, "tensor encoder_v is I8 (Q8_0) but the file has no encoder_v.scale");
    cJSON_Delete(r);

    r = qheader();
    const double bad_shape[] = {2, 128, 1}; /* [H][N][blocks]: the right count, the wrong layout */
    cJSON_ReplaceItemInObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "encoder.scale"), "shape",
                                           cJSON_CreateDoubleArray(bad_shape, 3));
    expect_refused("scale-shape", r, data, data_len, "tensor encoder.scale must be F16 of shape");
    cJSON_Delete(r);

    r = qheader();
    cJSON_DeleteItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "__metadata__"), "quantization");
    expect_refused("no-meta", r, data, data_len, "metadata quantization is missing");
    cJSON_Delete(r);

    /* a NaN scale (F16 0x7e00) at the start of decoder.scale */
    r = qheader();
    const size_t at = (size_t)cJSON_GetArrayItem(
                          cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "decoder.scale"), "data_offsets"), 0)
                          ->valuedouble;
    uint8_t *poisoned = malloc(data_len);
    memcpy(poisoned, data, data_len);
    poisoned[at] = 0x00;
    poisoned[at + 1] = 0x7e;
    expect_refused("nan-scale", r, poisoned, data_len, "tensor decoder.scale has a non-finite value (NaN) at index 0");
    cJSON_Delete(r);
    free(poisoned);

    free(qfile);
}

/* weights too large for an F16 scale: refused, not quantized into NaN */
static void test_out_of_range_weights(void **unused)
{
    const char *path = random_model("huge.safetensors", 1, 32, 1, 8, 16);
    size_t len;
    uint8_t *buf = tu_read_file(path, &len);
    uint64_t hlen;
    memcpy(&hlen, buf, 8);
    cJSON *r = cJSON_ParseWithLength((const char *)buf + 8, (size_t)hlen);
    const size_t at = 8 + (size_t)hlen + (size_t)cJSON_GetArrayItem(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "decoder"), "data_offsets"), 0)->valuedouble;
    cJSON_Delete(r);
    const float huge = 1e7f;
    memcpy(buf + at + 4 * 3, &huge, 4);
    assert_int_equal(tu_write_file(path, buf, len), 0);
    free(buf);
    bdh_model_params p = bdh_model_default_params();
    p.weight_type = BDH_WEIGHTS_Q8_0;
    bdh_model *m = (bdh_model *)0x1;
    assert_int_equal(bdh_model_load(path, &p, &m), BDH_ERR_UNSUPPORTED);
    assert_null(m);
    assert_non_null(strstr(bdh_last_error(), "tensor decoder has |value| 1e+07 at index 3, beyond what Q8_0 holds"));
    assert_int_equal(bdh_model_quantize(path, tu_tmp_path("huge.q8"), BDH_WEIGHTS_Q8_0), BDH_ERR_UNSUPPORTED);
    p.weight_type = BDH_WEIGHTS_F32; /* fine as float32 */
    assert_int_equal(bdh_model_load(path, &p, &m), BDH_OK);
    bdh_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases_match_reference),
        cmocka_unit_test(test_tail_blocks),
        cmocka_unit_test(test_prequantized_is_bit_identical),
        cmocka_unit_test(test_damaged_quantized_files),
        cmocka_unit_test(test_out_of_range_weights),
    };
    return cmocka_run_group_tests(tests, setup, tu_remove_tmp_dir);
}
