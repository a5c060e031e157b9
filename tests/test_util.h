/* Helpers shared by the C tests: reading expected values from safetensors
 * files (with cJSON, independently of the library's own loader) and writing
 * the tests' own, a temporary directory for the files a test writes, seeded
 * random weights, listing the reference cases, comparing logits, loading
 * models and checking refused loads. Header-only; tests are one file each. */
#ifndef BDH_TEST_UTIL_H
#define BDH_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bdh.h"

#ifndef TU_DATA
#define TU_DATA "tests/data"
#endif

/* Parity bound with the reference: max |difference| / max |logit| per
 * position. float32 against the reference's own float32 run; the reference's
 * float32-vs-float64 gap is below 1e-6 on every case (golden/index.json). */
#define TU_PARITY_TOL 1e-4

static inline void *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    if (len) *len = (size_t)n;
    return buf;
}

static inline int tu_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    fclose(f);
    return w == len ? 0 : -1;
}

/* ---- the tests' own safetensors writer (a cJSON header, the data after it) */

/* A safetensors file: the header's length (8 bytes), the header, the data. */
static inline int tu_write_safetensors(const char *path, const char *header, const void *data, size_t data_len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    const uint64_t hlen = strlen(header);
    const int ok = fwrite(&hlen, 8, 1, f) == 1 && fwrite(header, 1, hlen, f) == hlen && fwrite(data, 1, data_len, f) == data_len;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* An F32 tensor of this shape in header root, its data at *off, which moves past it. */
static inline void tu_add_f32_tensor(cJSON *root, const char *name, int n_dims, const int64_t *shape, size_t *off)
{
    double dims[8];
    assert_true(n_dims <= 8);
    size_t bytes = 4;
    for (int d = 0; d < n_dims; d++) dims[d] = (double)shape[d], bytes *= (size_t)shape[d];
    cJSON *e = cJSON_AddObjectToObject(root, name);
    cJSON_AddStringToObject(e, "dtype", "F32");
    cJSON_AddItemToObject(e, "shape", cJSON_CreateDoubleArray(dims, n_dims));
    const double offs[2] = {(double)*off, (double)(*off + bytes)};
    cJSON_AddItemToObject(e, "data_offsets", cJSON_CreateDoubleArray(offs, 2));
    *off += bytes;
}

/* ---- a temporary directory for the files a test writes: made by the
 * group setup, removed with what is in it by the group teardown */

static char tu_dir[64];

/* Makes /tmp/bdh-NAME-XXXXXX; 0, or -1 as a cmocka setup fails. */
static inline int tu_make_tmp_dir(const char *name)
{
    snprintf(tu_dir, sizeof tu_dir, "/tmp/bdh-%s-XXXXXX", name);
    return mkdtemp(tu_dir) ? 0 : -1;
}

/* A cmocka group teardown: removes the directory. */
static inline int tu_remove_tmp_dir(void **unused)
{
    (void)unused;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tu_dir);
    return system(cmd);
}

/* A path in the directory; a ring: each call's stays valid for the next 63. */
static inline const char *tu_tmp_path(const char *name)
{
    static char path[64][192];
    static int k;
    k = (k + 1) % 64;
    snprintf(path[k], sizeof path[k], "%s/%s", tu_dir, name);
    return path[k];
}

/* A safetensors file NAME in the directory, its header root printed
 * unformatted; returns its path (tu_tmp_path's). */
static inline const char *tu_write_tmp_safetensors(const char *name, const cJSON *root, const void *data, size_t data_len)
{
    char *json = cJSON_PrintUnformatted(root);
    const char *path = tu_tmp_path(name);
    assert_int_equal(tu_write_safetensors(path, json, data, data_len), 0);
    free(json);
    return path;
}

/* Copy of tensor `name` (F32, F64 or I32 converted to the asked type).
 * numel_out gets the element count; rows_out the first dimension. */
static inline void *tu_read_tensor(const char *path, const char *name, int want_int, size_t *numel_out, int64_t *rows_out)
{
    size_t len;
    uint8_t *file = tu_read_file(path, &len);
    assert_non_null(file);
    uint64_t hlen = 0;
    memcpy(&hlen, file, 8);
    cJSON *root = cJSON_ParseWithLength((const char *)file + 8, (size_t)hlen);
    assert_non_null(root);
    cJSON *t = cJSON_GetObjectItemCaseSensitive(root, name);
    assert_non_null(t);
    const char *dtype = cJSON_GetObjectItemCaseSensitive(t, "dtype")->valuestring;
    cJSON *shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
    size_t numel = 1;
    for (int i = 0; i < cJSON_GetArraySize(shape); i++) numel *= (size_t)cJSON_GetArrayItem(shape, i)->valuedouble;
    if (rows_out) *rows_out = (int64_t)cJSON_GetArrayItem(shape, 0)->valuedouble;
    size_t begin = (size_t)cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(t, "data_offsets"), 0)->valuedouble;
    const uint8_t *src = file + 8 + hlen + begin;
    void *out = malloc(numel * 4 + 4);
    for (size_t i = 0; i < numel; i++) {
        double v;
        if (strcmp(dtype, "F32") == 0) { float f; memcpy(&f, src + 4 * i, 4); v = f; }
        else if (strcmp(dtype, "F64") == 0) { memcpy(&v, src + 8 * i, 8); }
        else { int32_t k; memcpy(&k, src + 4 * i, 4); v = k; }
        if (want_int) ((int32_t *)out)[i] = (int32_t)v;
        else ((float *)out)[i] = (float)v;
    }
    cJSON_Delete(root);
    free(file);
    if (numel_out) *numel_out = numel;
    return out;
}

/* max |a - ref| / max |ref| over n values */
static inline double tu_rel_err(const float *a, const float *ref, size_t n)
{
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)ref[i]);
        if (d > diff || d != d) diff = d;
        if (fabs(ref[i]) > scale) scale = fabs(ref[i]);
    }
    return diff / (scale > 0 ? scale : 1.0);
}

/* the largest over T positions of tu_rel_err of their V logits */
static inline double tu_worst_rel_err(const float *a, const float *ref, size_t T, size_t V)
{
    double worst = 0.0;
    for (size_t t = 0; t < T; t++) {
        const double e = tu_rel_err(a + t * V, ref + t * V, V);
        if (e > worst || e != e) worst = e;
    }
    return worst;
}

/* Uniform in [-a, a): xorshift64 from a fixed seed, so each run of a test
 * draws the same weights. */
static uint64_t tu_rng = 0x9e3779b97f4a7c15ull;
static inline float tu_uniform(float a)
{
    tu_rng ^= tu_rng << 13;
    tu_rng ^= tu_rng >> 7;
    tu_rng ^= tu_rng << 17;
    return a * (2.0f * (float)((tu_rng >> 40) * (1.0 / 16777216.0)) - 1.0f);
}

/* A reference case: model file, expected tokens and logits. */
typedef struct tu_case {
    char name[64];
    char model[256];
    char expect[256];
} tu_case;

/* Cases listed in DIR/index.json (objects with a "name"); appends to cases. */
static inline int tu_list_cases(const char *dir, tu_case *cases, int n, int cap)
{
    char path[300];
    snprintf(path, sizeof path, "%s/index.json", dir);
    size_t len;
    char *text = tu_read_file(path, &len);
    if (!text) return n;
    cJSON *root = cJSON_ParseWithLength(text, len);
    cJSON *e;
    cJSON_ArrayForEach(e, root) {
        cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
        if (!cJSON_IsString(name) || n >= cap) continue;
        snprintf(cases[n].name, sizeof cases[n].name, "%s", name->valuestring);
        snprintf(cases[n].model, sizeof cases[n].model, "%s/%s.model.safetensors", dir, name->valuestring);
        snprintf(cases[n].expect, sizeof cases[n].expect, "%s/%s.expect.safetensors", dir, name->valuestring);
        n++;
    }
    cJSON_Delete(root);
    free(text);
    return n;
}

/* Every reference case: the public reference's golden files, then ours. */
static inline int tu_all_cases(tu_case *cases, int cap)
{
    int n = tu_list_cases(TU_DATA "/golden", cases, 0, cap);
    return tu_list_cases(TU_DATA "/cases", cases, n, cap);
}

/* A model loaded with these parameters (NULL: the defaults); fails the test otherwise. */
static inline bdh_model *tu_load_params(const char *path, const bdh_model_params *p)
{
    bdh_model *m = NULL;
    bdh_status rc = bdh_model_load(path, p, &m);
    if (rc != BDH_OK) fprintf(stderr, "load %s: %s\n", path, bdh_last_error());
    assert_int_equal(rc, BDH_OK);
    return m;
}

static inline bdh_model *tu_load(const char *path) { return tu_load_params(path, NULL); }

static inline bdh_model *tu_load_with(const char *path, int threads, bdh_weight_type wt, bdh_kernels k)
{
    bdh_model_params p = bdh_model_default_params();
    p.n_threads = threads;
    p.weight_type = wt;
    p.kernels = k;
    return tu_load_params(path, &p);
}

/* Loading path with p fails with status want, leaves *out NULL and says
 * why: a message that holds part1 and part2 (NULL: any message). */
static inline void tu_expect_load_refused(const char *path, const bdh_model_params *p, bdh_status want, const char *part1,
                                          const char *part2)
{
    bdh_model *m = (bdh_model *)0x1;
    const bdh_status rc = bdh_model_load(path, p, &m);
    const char *msg = bdh_last_error();
    if (rc != want || (part1 && !strstr(msg, part1)) || (part2 && !strstr(msg, part2)))
        fprintf(stderr, "load %s: got %s \"%s\", wanted %s with \"%s\" and \"%s\"\n", path ? path : "NULL", bdh_status_name(rc),
                msg, bdh_status_name(want), part1 ? part1 : "", part2 ? part2 : "");
    assert_int_equal(rc, want);
    assert_null(m);
    assert_true(strlen(msg) > 0);
    if (part1) assert_non_null(strstr(msg, part1));
    if (part2) assert_non_null(strstr(msg, part2));
}

/* m's configuration is want, field by field. */
static inline void tu_expect_config(const bdh_model *m, bdh_config want)
{
    bdh_config c;
    assert_int_equal(bdh_model_config(m, &c), BDH_OK);
    assert_int_equal(c.n_layer, want.n_layer);
    assert_int_equal(c.n_embd, want.n_embd);
    assert_int_equal(c.n_head, want.n_head);
    assert_int_equal(c.n_neurons, want.n_neurons);
    assert_int_equal(c.vocab_size, want.vocab_size);
    assert_int_equal(c.mlp_internal_dim_multiplier, want.mlp_internal_dim_multiplier);
}

#endif
