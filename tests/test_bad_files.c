/* Every way a weight file can be wrong gets its own status and a message,
 * leaves *out NULL, and crashes or leaks nothing (run under ASan/UBSan with
 * `make test SANITIZE=1`). The bad files are derived from the tiny golden
 * model: its JSON header is edited with cJSON and written back in front of
 * the original data section. */
#include "test_util.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#define TINY TU_DATA "/golden/tiny.model.safetensors"

static uint8_t *orig;
static size_t orig_len;
static uint64_t orig_hlen;

static int setup(void **unused)
{
    if (tu_make_tmp_dir("bad") != 0) return -1;
    orig = tu_read_file(TINY, &orig_len);
    if (!orig) return -1;
    memcpy(&orig_hlen, orig, 8);
    return 0;
}

static int teardown(void **unused)
{
    free(orig);
    return tu_remove_tmp_dir(NULL);
}

/* Load path, expect status, a message, and *out left NULL. */
static void expect_load(const char *path, const bdh_model_params *p, bdh_status want, const char *msg_part)
{
    tu_expect_load_refused(path, p, want, msg_part, NULL);
}

static const char *write_bytes(const char *name, const void *data, size_t len)
{
    const char *path = tu_tmp_path(name);
    assert_int_equal(tu_write_file(path, data, len), 0);
    return path;
}

/* header text + the original data section */
static const char *write_with_header(const char *name, const char *json)
{
    const char *path = tu_tmp_path(name);
    assert_int_equal(tu_write_safetensors(path, json, orig + 8 + orig_hlen, orig_len - 8 - orig_hlen), 0);
    return path;
}

typedef void (*edit_fn)(cJSON *root);

/* The tiny model's header, edited, then written as a file and loaded. */
static void expect_edit(const char *name, edit_fn edit, bdh_status want, const char *msg_part)
{
    cJSON *root = cJSON_ParseWithLength((const char *)orig + 8, (size_t)orig_hlen);
    assert_non_null(root);
    edit(root);
    char *json = cJSON_PrintUnformatted(root);
    expect_load(write_with_header(name, json), NULL, want, msg_part);
    free(json);
    cJSON_Delete(root);
}

static cJSON *tensor(cJSON *root, const char *name) { return cJSON_GetObjectItemCaseSensitive(root, name); }
static cJSON *meta(cJSON *root) { return tensor(root, "__metadata__"); }

static void set_shape(cJSON *root, const char *name, const double *dims, int n)
{
    cJSON *t = tensor(root, name);
    cJSON_ReplaceItemInObjectCaseSensitive(t, "shape", cJSON_CreateDoubleArray(dims, n));
}

static void set_offsets(cJSON *root, const char *name, double begin, double end)
{
    const double o[2] = {begin, end};
    cJSON_ReplaceItemInObjectCaseSensitive(tensor(root, name), "data_offsets", cJSON_CreateDoubleArray(o, 2));
}

static void set_meta(cJSON *root, const char *key, const char *value)
{
    cJSON_DeleteItemFromObjectCaseSensitive(meta(root), key);
    if (value) cJSON_AddStringToObject(meta(root), key, value);
}

/* ---- byte-level damage */

static void test_raw_damage(void **unused)
{
    expect_load(write_bytes("empty", "", 0), NULL, BDH_ERR_FORMAT, "too short");
    expect_load(write_bytes("five", "abcde", 5), NULL, BDH_ERR_FORMAT, "too short");
    expect_load(write_bytes("truncated", orig, orig_len / 2), NULL, BDH_ERR_FORMAT, "out of range");
    expect_load(write_bytes("header-only", orig, 8 + orig_hlen - 10), NULL, BDH_ERR_FORMAT, "past the end");

    uint8_t *buf = malloc(orig_len);
    memcpy(buf, orig, orig_len);
    uint64_t absurd = (uint64_t)1 << 62;
    memcpy(buf, &absurd, 8);
    expect_load(write_bytes("absurd-hlen", buf, orig_len), NULL, BDH_ERR_FORMAT, "not a safetensors file");
    uint64_t past = orig_len;
    memcpy(buf, &past, 8);
    expect_load(write_bytes("past-end", buf, orig_len), NULL, BDH_ERR_FORMAT, "past the end");
    free(buf);

    expect_load(write_with_header("not-json", "{\"n_layer\": this is not json"), NULL, BDH_ERR_FORMAT, "not valid JSON");
    expect_load(write_with_header("array", "[1, 2, 3]"), NULL, BDH_ERR_FORMAT, "not a safetensors file");
    expect_load(write_with_header("spaced", " [1, 2, 3]"), NULL, BDH_ERR_FORMAT, "not a safetensors file");
    expect_load(write_with_header("dup", "{\"encoder\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
                                         " \"encoder\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}"),
                NULL, BDH_ERR_FORMAT, "twice");
}

/* Other kinds of file: refused by what they are, without blocking on a FIFO
 * (it used to block for ever in open) and without a nonsense header length
 * for text. */
static void test_not_weight_files(void **unused)
{
    const char *text = "First Citizen:\nBefore we proceed any further, hear me speak.\n";
    expect_load(write_bytes("play.txt", text, strlen(text)), NULL, BDH_ERR_FORMAT, "not a safetensors file");
    const char *fifo = tu_tmp_path("fifo");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    expect_load(fifo, NULL, BDH_ERR_IO, "not a regular file");
    expect_load("/dev/null", NULL, BDH_ERR_IO, "not a regular file");
    expect_load(tu_dir, NULL, BDH_ERR_IO, "is a directory");
}

/* A file that another process truncates and rewrites while it is loaded:
 * each load succeeds or fails with a message; none may crash (a mapping of
 * the file raised SIGBUS in the fingerprint, 8 tries in 10). */
typedef struct churn { const char *path; const uint8_t *data; size_t len; volatile bool stop; } churn;

/* cut the last tenth of the data and write it back, again and again */
static void *truncate_and_rewrite(void *arg)
{
    churn *c = arg;
    const size_t keep = c->len - c->len / 10;
    const int fd = open(c->path, O_WRONLY);
    while (fd >= 0 && !c->stop) {
        if (ftruncate(fd, (off_t)keep) != 0) break;
        if (pwrite(fd, c->data + keep, c->len - keep, (off_t)keep) != (ssize_t)(c->len - keep)) break;
        usleep(300); /* whole most of the time, so loads get past the size check */
    }
    if (fd >= 0) close(fd);
    return NULL;
}

static void test_file_changing_under_the_loader(void **unused)
{
    size_t len = 0;
    uint8_t *data = tu_read_file(TU_DATA "/cases/wide.model.safetensors", &len);
    assert_non_null(data);
    churn c = {write_bytes("churning", data, len), data, len, false};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, truncate_and_rewrite, &c), 0);
    int ok = 0, refused = 0;
    for (int i = 0; i < 200; i++) {
        bdh_model *m = NULL;
        const bdh_status rc = bdh_model_load(c.path, NULL, &m);
        if (rc == BDH_OK) ok++, bdh_model_free(m);
        else refused++, assert_true(strlen(bdh_last_error()) > 0);
    }
    c.stop = true;
    pthread_join(th, NULL);
    printf("  200 loads of a file being truncated and rewritten: %d loaded, %d refused, no crash\n", ok, refused);
    free(data);
}

/* A copy of the tiny model with element `index` of F32 tensor `name` set to
 * v: non-finite weights are refused at load, naming the tensor and index. */
static void expect_poisoned(const char *name, size_t index, float v, const char *msg_part)
{
    cJSON *root = cJSON_ParseWithLength((const char *)orig + 8, (size_t)orig_hlen);
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(tensor(root, name), "data_offsets");
    const size_t at = 8 + (size_t)orig_hlen + (size_t)cJSON_GetArrayItem(offs, 0)->valuedouble + 4 * index;
    cJSON_Delete(root);
    uint8_t *buf = malloc(orig_len);
    memcpy(buf, orig, orig_len);
    memcpy(buf + at, &v, 4);
    expect_load(write_bytes("poisoned", buf, orig_len), NULL, BDH_ERR_FORMAT, msg_part);
    free(buf);
}

/* File contents quoted in a message have their control bytes escaped. */
static void meta_escape(cJSON *r) { set_meta(r, "n_layer", "\x1b[31mred\x07"); }

static void test_messages_escape_control_bytes(void **unused)
{
    expect_edit("escape", meta_escape, BDH_ERR_CONFIG, "\"\\x1b[31mred\\x07\" is not an integer");
    for (const char *p = bdh_last_error(); *p; p++) assert_true((unsigned char)*p >= 0x20 && *p != 0x7f);
}

static void test_non_finite_weights(void **unused)
{
    expect_poisoned("attn.freqs", 3, NAN, "tensor attn.freqs has a non-finite value (NaN) at index 3");
    expect_poisoned("embed.weight", 0, NAN, "tensor embed.weight has a non-finite value (NaN) at index 0");
    expect_poisoned("decoder", 17, INFINITY, "tensor decoder has a non-finite value (inf) at index 17");
    expect_poisoned("lm_head", 100, -INFINITY, "tensor lm_head has a non-finite value (-inf) at index 100");
}

/* ---- header edits */

static void offsets_out_of_range(cJSON *r) { set_offsets(r, "encoder", 66048, 1e12); }
static void offsets_reversed(cJSON *r) { set_offsets(r, "encoder", 98816, 66048); }
static void offsets_negative(cJSON *r) { set_offsets(r, "encoder", -4, 32768); }
static void offsets_overlap(cJSON *r) { set_offsets(r, "decoder", 33280, 66048); } /* = embed's */
static void shape_bytes_disagree(cJSON *r) { const double d[] = {2, 32, 64}; set_shape(r, "encoder", d, 3); }
static void shape_absurd(cJSON *r) { const double d[] = {1099511627776.0, 1099511627776.0, 4}; set_shape(r, "encoder", d, 3); }
static void shape_fraction(cJSON *r) { const double d[] = {2, 32.5, 128}; set_shape(r, "encoder", d, 3); }
static void shape_too_many_dims(cJSON *r) { const double d[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 8192}; set_shape(r, "encoder", d, 10); }
static void dtype_unknown(cJSON *r) { cJSON_ReplaceItemInObjectCaseSensitive(tensor(r, "encoder"), "dtype", cJSON_CreateString("Q4_K")); }
static void dtype_int(cJSON *r) { cJSON_ReplaceItemInObjectCaseSensitive(tensor(r, "encoder"), "dtype", cJSON_CreateString("I32")); }
static void entry_not_object(cJSON *r) { cJSON_ReplaceItemInObjectCaseSensitive(r, "encoder", cJSON_CreateNumber(3)); }
static void entry_no_offsets(cJSON *r) { cJSON_DeleteItemFromObjectCaseSensitive(tensor(r, "encoder"), "data_offsets"); }
static void meta_not_string(cJSON *r) { cJSON_ReplaceItemInObjectCaseSensitive(meta(r), "n_layer", cJSON_CreateNumber(2)); }

static void test_format_errors(void **unused)
{
    expect_edit("oob", offsets_out_of_range, BDH_ERR_FORMAT, "out of range");
    expect_edit("reversed", offsets_reversed, BDH_ERR_FORMAT, "out of range");
    expect_edit("negative", offsets_negative, BDH_ERR_FORMAT, "non-negative integers");
    expect_edit("overlap", offsets_overlap, BDH_ERR_FORMAT, "overlap");
    expect_edit("bytes", shape_bytes_disagree, BDH_ERR_FORMAT, "need");
    expect_edit("absurd-shape", shape_absurd, BDH_ERR_FORMAT, "absurd shape");
    expect_edit("fraction", shape_fraction, BDH_ERR_FORMAT, "not a non-negative integer");
    expect_edit("dims", shape_too_many_dims, BDH_ERR_FORMAT, "dimensions");
    expect_edit("dtype", dtype_unknown, BDH_ERR_FORMAT, "Q4_K");
    expect_edit("entry", entry_not_object, BDH_ERR_FORMAT, "not a JSON object");
    expect_edit("no-offsets", entry_no_offsets, BDH_ERR_FORMAT, "data_offsets");
    expect_edit("meta-number", meta_not_string, BDH_ERR_FORMAT, "not a string");
}

static void missing_decoder(cJSON *r) { cJSON_DeleteItemFromObjectCaseSensitive(r, "decoder"); }
static void missing_n_layer(cJSON *r) { set_meta(r, "n_layer", NULL); }
static void missing_metadata(cJSON *r) { cJSON_DeleteItemFromObjectCaseSensitive(r, "__metadata__"); }
static void n_layer_word(cJSON *r) { set_meta(r, "n_layer", "two"); }
static void n_layer_zero(cJSON *r) { set_meta(r, "n_layer", "0"); }
static void n_layer_negative(cJSON *r) { set_meta(r, "n_layer", "-2"); }
static void n_layer_float(cJSON *r) { set_meta(r, "n_layer", "2.5"); }
static void n_layer_huge(cJSON *r) { set_meta(r, "n_layer", "99999999999999999999"); }
static void n_embd_wrong(cJSON *r) { set_meta(r, "n_embd", "33"); }
static void n_head_wrong(cJSON *r) { set_meta(r, "n_head", "4"); }
static void vocab_wrong(cJSON *r) { set_meta(r, "vocab_size", "100"); }
static void mult_wrong(cJSON *r) { set_meta(r, "mlp_internal_dim_multiplier", "4"); }
static void rank_wrong(cJSON *r) { const double d[] = {64, 128}; set_shape(r, "encoder", d, 2); }
static void encoder_v_shape(cJSON *r) { const double d[] = {4, 16, 128}; set_shape(r, "encoder_v", d, 3); }
static void lm_head_transposed(cJSON *r) { const double d[] = {256, 32}; set_shape(r, "lm_head", d, 2); }
static void freqs_wrong(cJSON *r) { const double d[] = {1, 1, 2, 64}; set_shape(r, "attn.freqs", d, 4); }

static void test_config_errors(void **unused)
{
    expect_edit("missing-tensor", missing_decoder, BDH_ERR_CONFIG, "decoder");
    expect_edit("no-n-layer", missing_n_layer, BDH_ERR_CONFIG, "n_layer");
    expect_edit("no-metadata", missing_metadata, BDH_ERR_CONFIG, "n_layer");
    expect_edit("n-layer-word", n_layer_word, BDH_ERR_CONFIG, "n_layer");
    expect_edit("n-layer-zero", n_layer_zero, BDH_ERR_CONFIG, "n_layer");
    expect_edit("n-layer-neg", n_layer_negative, BDH_ERR_CONFIG, "n_layer");
    expect_edit("n-layer-float", n_layer_float, BDH_ERR_CONFIG, "n_layer");
    expect_edit("n-layer-huge", n_layer_huge, BDH_ERR_CONFIG, "n_layer");
    expect_edit("n-embd", n_embd_wrong, BDH_ERR_CONFIG, "n_embd");
    expect_edit("n-head", n_head_wrong, BDH_ERR_CONFIG, "n_head");
    expect_edit("vocab", vocab_wrong, BDH_ERR_CONFIG, "vocab_size");
    expect_edit("mult", mult_wrong, BDH_ERR_CONFIG, "mlp_internal_dim_multiplier");
    expect_edit("rank", rank_wrong, BDH_ERR_CONFIG, "dimensions");
    expect_edit("encoder-v", encoder_v_shape, BDH_ERR_CONFIG, "encoder_v");
    expect_edit("lm-head", lm_head_transposed, BDH_ERR_CONFIG, "lm_head");
    expect_edit("freqs", freqs_wrong, BDH_ERR_CONFIG, "attn.freqs");
    expect_edit("int-weights", dtype_int, BDH_ERR_CONFIG, "I32");
}

static void test_paths_and_params(void **unused)
{
    expect_load(tu_dir, NULL, BDH_ERR_IO, "directory");
    expect_load("/nonexistent/model.safetensors", NULL, BDH_ERR_IO, "No such file");
    expect_load(NULL, NULL, BDH_ERR_INVALID_ARGUMENT, "path");
    assert_int_equal(bdh_model_load(TINY, NULL, NULL), BDH_ERR_INVALID_ARGUMENT);

    bdh_model_params p = bdh_model_default_params();
    p.n_threads = -1;
    expect_load(TINY, &p, BDH_ERR_INVALID_ARGUMENT, "n_threads");
    p = bdh_model_default_params();
    p.device = (bdh_device)7;
    expect_load(TINY, &p, BDH_ERR_INVALID_ARGUMENT, "device");
    p = bdh_model_default_params();
    p.weight_type = (bdh_weight_type)42;
    expect_load(TINY, &p, BDH_ERR_INVALID_ARGUMENT, "weight_type");

    /* CUDA: unsupported in a CPU-only build, no device on a GPU-less machine */
    p = bdh_model_default_params();
    p.device = BDH_DEVICE_CUDA;
    bdh_model *m = NULL;
    bdh_status rc = bdh_model_load(TINY, &p, &m);
    if (rc == BDH_OK) {
        bdh_model_free(m); /* a GPU is present: test_cuda covers it */
    } else {
        assert_true(rc == BDH_ERR_UNSUPPORTED || rc == BDH_ERR_DEVICE);
        assert_null(m);
    }
}

/* The golden model itself still loads after all this (the edits work on copies). */
static void test_original_loads(void **unused)
{
    bdh_model *m = tu_load(TINY);
    bdh_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raw_damage),
        cmocka_unit_test(test_not_weight_files),       cmocka_unit_test(test_non_finite_weights),
        cmocka_unit_test(test_file_changing_under_the_loader), cmocka_unit_test(test_messages_escape_control_bytes),       cmocka_unit_test(test_format_errors),
        cmocka_unit_test(test_config_errors),    cmocka_unit_test(test_paths_and_params),
        cmocka_unit_test(test_original_loads),
    };
    return cmocka_run_group_tests_name("bad files", tests, setup, teardown);
}
