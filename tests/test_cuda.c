/* The CUDA backend against the CPU path, through the public API only.
 *
 * Every reference case (tests/data/golden and tests/data/cases), every
 * position: bdh_step on the GPU vs the CPU (<= 1e-4 of the largest logit,
 * float32 weights); BF16 weights vs the CPU on the same weights rounded to
 * bf16 (<= 1e-2); prefill (uneven pieces, mixed with single steps) vs
 * stepping, including the final state; batched vs single steps; save/load of
 * GPU states (GPU -> GPU, GPU -> CPU, CPU -> GPU, unaligned blobs); fork and
 * reset; bad tokens; device errors; and that freeing models and states gives
 * the device memory back.
 *
 * Q8_0 weights (BDH_WEIGHTS_Q8_0): GPU steps vs the CPU's Q8_0 steps of the
 * same model (<= 1e-5), run to run, graph vs eager (bitwise); batched vs
 * single steps bit for bit (logits and states); prefill vs steps
 * (<= 1e-5); a file written by bdh_model_quantize gives exactly the logits
 * of quantizing at load (and loads as float32 too); Q8_0 blobs between GPU
 * and CPU; device bytes.
 *
 * Without a GPU (or in a build without CUDA=1) it prints "skipped: no CUDA
 * device" and passes. BDH_TEST_QUICK=1 keeps only the first 150 positions
 * of each case (scripts/gpu-check.sh uses it under compute-sanitizer). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <unistd.h>

#include "test_util.h"

#define F32_TOL 1e-4
#define BF16_TOL 1e-2
#define Q8_TOL 1e-5 /* Q8_0 on the GPU vs the CPU's Q8_0 (same blocks), prefill vs steps */
#define QUICK_T 150

static int g_quick;

static bdh_status load_on(const char *path, bdh_device dev, bdh_weight_type wt, bdh_model **out)
{
    bdh_model_params p = bdh_model_default_params();
    p.device = dev;
    p.weight_type = wt;
    return bdh_model_load(path, &p, out);
}

static bdh_model *load_gpu(const char *path, bdh_weight_type wt)
{
    bdh_model *m = NULL;
    bdh_status rc = load_on(path, BDH_DEVICE_CUDA, wt, &m);
    if (rc != BDH_OK) fprintf(stderr, "CUDA load %s: %s\n", path, bdh_last_error());
    assert_int_equal(rc, BDH_OK);
    assert_int_equal(bdh_model_device(m), BDH_DEVICE_CUDA);
    return m;
}

/* ---------------------------------------------------------------- data */

typedef struct expect {
    int32_t *tokens;
    float *logits; /* the reference's, for information */
    size_t T, V;
} expect;

static expect read_expect(const tu_case *c)
{
    expect e;
    size_t nt, nl;
    e.tokens = tu_read_tensor(c->expect, "tokens", 1, &nt, NULL);
    e.logits = tu_read_tensor(c->expect, "logits", 0, &nl, NULL);
    e.T = nt;
    e.V = nl / nt;
    if (g_quick && e.T > QUICK_T) e.T = QUICK_T;
    return e;
}

static void free_expect(expect *e)
{
    free(e->tokens);
    free(e->logits);
}

/* The first T positions of e (a view: not to be freed). */
static expect first_positions(const expect *e, size_t T)
{
    expect h = *e;
    if (h.T > T) h.T = T;
    return h;
}

/* [T][V] logits of bdh_step over the case's tokens, from a fresh state. */
static float *step_logits(bdh_model *m, const expect *e)
{
    bdh_state *s;
    assert_int_equal(bdh_state_new(m, &s), BDH_OK);
    float *out = malloc(e->T * e->V * sizeof(float));
    assert_non_null(out);
    for (size_t t = 0; t < e->T; t++) {
        bdh_status rc = bdh_step(s, e->tokens[t], out + t * e->V);
        if (rc != BDH_OK) fprintf(stderr, "step %zu: %s\n", t, bdh_last_error());
        assert_int_equal(rc, BDH_OK);
    }
    assert_int_equal(bdh_state_position(s), (int64_t)e->T);
    bdh_state_free(s);
    return out;
}

/* Worst per-position error of rows [first, first+n) of got against ref. */
static double compare_rows(const char *what, const char *name, const float *got, const float *ref, size_t first,
                           size_t n, size_t V, double tol)
{
    double worst = 0.0;
    for (size_t t = first; t < first + n; t++) {
        const double err = tu_rel_err(got + (t - first) * V, ref + t * V, V);
        if (!(err <= tol)) fprintf(stderr, "%s %s: position %zu rel err %.3g (tolerance %.1g)\n", name, what, t, err, tol);
        assert_true(err <= tol);
        if (err > worst) worst = err;
    }
    return worst;
}

/* A copy of the safetensors file src with every F32 weight (not attn.freqs)
 * rounded to the nearest bfloat16 (ties to even), still stored as F32.
 * Returns 0, or -1 if a weight is not F32 (then no copy). */
static uint32_t bf16_round(uint32_t u)
{
    if ((u & 0x7fffffffu) > 0x7f800000u) return u | 0x00400000u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return u & 0xffff0000u;
}

static int write_bf16_rounded(const char *src, const char *dst)
{
    size_t len;
    uint8_t *file = tu_read_file(src, &len);
    assert_non_null(file);
    uint64_t hlen;
    memcpy(&hlen, file, 8);
    cJSON *root = cJSON_ParseWithLength((const char *)file + 8, (size_t)hlen);
    assert_non_null(root);
    int ok = 0;
    cJSON *t;
    cJSON_ArrayForEach(t, root) {
        if (strcmp(t->string, "__metadata__") == 0) continue;
        const char *dtype = cJSON_GetObjectItemCaseSensitive(t, "dtype")->valuestring;
        const size_t n = strlen(t->string);
        if (n >= 10 && strcmp(t->string + n - 10, "attn.freqs") == 0) continue;
        if (strcmp(dtype, "F32") != 0) {
            ok = -1;
            break;
        }
        cJSON *offs = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
        const size_t b = (size_t)cJSON_GetArrayItem(offs, 0)->valuedouble, e = (size_t)cJSON_GetArrayItem(offs, 1)->valuedouble;
        uint8_t *p = file + 8 + hlen;
        for (size_t i = b; i + 4 <= e; i += 4) {
            uint32_t u;
            memcpy(&u, p + i, 4);
            u = bf16_round(u);
            memcpy(p + i, &u, 4);
        }
    }
    if (ok == 0) assert_int_equal(tu_write_file(dst, file, len), 0);
    cJSON_Delete(root);
    free(file);
    return ok;
}

static int list_cases(tu_case *cases, int cap)
{
    const int n = tu_all_cases(cases, cap);
    assert_true(n >= 6);
    return n;
}

/* ---------------------------------------------------------------- step parity */

static void test_step_parity(void **unused)
{
    (void)unused;
    tu_case cases[32];
    const int n = list_cases(cases, 32);
    for (int i = 0; i < n; i++) {
        expect e = read_expect(&cases[i]);
        bdh_model *cpu = tu_load(cases[i].model);
        bdh_model *gpu = load_gpu(cases[i].model, BDH_WEIGHTS_F32);
        float *ref = step_logits(cpu, &e);
        float *got = step_logits(gpu, &e);
        const double vs_cpu = compare_rows("step vs CPU", cases[i].name, got, ref, 0, e.T, e.V, F32_TOL);
        const double vs_ref = compare_rows("step vs reference", cases[i].name, got, e.logits, 0, e.T, e.V, TU_PARITY_TOL);
        printf("  %-12s T=%-5zu GPU step: vs CPU %.2e, vs reference %.2e\n", cases[i].name, e.T, vs_cpu, vs_ref);
        free(ref);
        free(got);
        bdh_model_free(gpu);
        bdh_model_free(cpu);
        free_expect(&e);
    }
}

/* The switches read at load: BDH_CUDA_GRAPH=0 (no graph) and BDH_CUDA_PDL=0
 * (no programmatic dependent launch) must give the same bits as the default;
 * BDH_CUDA_DENSE=1 (no compaction) the same logits up to summation order. */
static void test_switches(void **unused)
{
    (void)unused;
    tu_case cases[32];
    list_cases(cases, 32);
    const tu_case *c = &cases[2]; /* long: 6 layers, 4 heads */
    expect e = read_expect(c);
    if (e.T > 64) e.T = 64;
    bdh_model *gpu = load_gpu(c->model, BDH_WEIGHTS_F32);
    float *base = step_logits(gpu, &e);
    bdh_model_free(gpu);

    setenv("BDH_CUDA_GRAPH", "0", 1);
    gpu = load_gpu(c->model, BDH_WEIGHTS_F32);
    unsetenv("BDH_CUDA_GRAPH");
    float *nograph = step_logits(gpu, &e);
    bdh_model_free(gpu);
    assert_memory_equal(base, nograph, e.T * e.V * sizeof(float));

    setenv("BDH_CUDA_PDL", "0", 1);
    gpu = load_gpu(c->model, BDH_WEIGHTS_F32);
    unsetenv("BDH_CUDA_PDL");
    float *nopdl = step_logits(gpu, &e);
    bdh_model_free(gpu);
    assert_memory_equal(base, nopdl, e.T * e.V * sizeof(float));

    /* the PDL switch belongs to each model: one loaded with it off beside
     * one with it on, their states stepped in turn, give the same bits */
    bdh_model *on = load_gpu(c->model, BDH_WEIGHTS_F32);
    setenv("BDH_CUDA_PDL", "0", 1);
    bdh_model *off = load_gpu(c->model, BDH_WEIGHTS_F32);
    unsetenv("BDH_CUDA_PDL");
    bdh_state *s_on, *s_off;
    assert_int_equal(bdh_state_new(on, &s_on), BDH_OK);
    assert_int_equal(bdh_state_new(off, &s_off), BDH_OK);
    for (size_t t = 0; t < e.T; t++) {
        assert_int_equal(bdh_step(s_on, e.tokens[t], nopdl + t * e.V), BDH_OK);
        assert_int_equal(bdh_step(s_off, e.tokens[t], nograph + t * e.V), BDH_OK);
    }
    assert_memory_equal(base, nopdl, e.T * e.V * sizeof(float));
    assert_memory_equal(base, nograph, e.T * e.V * sizeof(float));
    bdh_state_free(s_on);
    bdh_state_free(s_off);
    bdh_model_free(on);
    bdh_model_free(off);
    free(nopdl);

    setenv("BDH_CUDA_DENSE", "1", 1);
    gpu = load_gpu(c->model, BDH_WEIGHTS_F32);
    unsetenv("BDH_CUDA_DENSE");
    float *dense = step_logits(gpu, &e);
    bdh_model_free(gpu);
    const double err = compare_rows("dense vs sparse", c->name, dense, base, 0, e.T, e.V, 1e-5);
    printf("  %-12s graph == eager == no PDL == PDL per model (bitwise); dense vs sparse %.2e\n", c->name, err);
    free(base);
    free(nograph);
    free(dense);
    free_expect(&e);
}

/* ---------------------------------------------------------------- bf16 */

static void test_bf16(void **unused)
{
    (void)unused;
    tu_case cases[32];
    const int n = list_cases(cases, 32);
    char rounded[512];
    snprintf(rounded, sizeof rounded, "/tmp/libbdh_test_cuda_bf16_%d.safetensors", (int)getpid());
    for (int i = 0; i < n; i++) {
        expect e = read_expect(&cases[i]);
        const char *dt = NULL;
        bdh_model *cpu_file = tu_load(cases[i].model);
        dt = bdh_model_file_dtype(cpu_file, "encoder");
        const int file_bf16 = dt && strcmp(dt, "BF16") == 0;
        bdh_model *cpu = NULL;
        if (file_bf16) {
            cpu = cpu_file; /* already bf16 values */
            cpu_file = NULL;
        } else if (write_bf16_rounded(cases[i].model, rounded) == 0) {
            cpu = tu_load(rounded);
        }
        bdh_model_free(cpu_file);
        if (!cpu) { /* f16 file: no float32 copy to round */
            printf("  %-12s BF16: skipped (weights not F32)\n", cases[i].name);
            free_expect(&e);
            continue;
        }
        float *ref = step_logits(cpu, &e);

        bdh_model *gpu = load_gpu(cases[i].model, BDH_WEIGHTS_BF16);
        float *got = step_logits(gpu, &e);
        const double err_step = compare_rows("bf16 step", cases[i].name, got, ref, 0, e.T, e.V, BF16_TOL);

        /* prefill and batch run the GEMM path with bf16 weights */
        bdh_state *s;
        assert_int_equal(bdh_state_new(gpu, &s), BDH_OK);
        assert_int_equal(bdh_prefill_all(s, e.tokens, e.T, got), BDH_OK);
        const double err_pf = compare_rows("bf16 prefill", cases[i].name, got, ref, 0, e.T, e.V, BF16_TOL);
        bdh_state_free(s);

        bdh_state *st[3];
        for (int k = 0; k < 3; k++) assert_int_equal(bdh_state_new(gpu, &st[k]), BDH_OK);
        double err_batch = 0.0;
        for (size_t t = 0; t < e.T && t < 40; t++) {
            const int32_t tok[3] = {e.tokens[t], e.tokens[t], e.tokens[t]};
            float *lg = malloc(3 * e.V * sizeof(float));
            assert_int_equal(bdh_step_batch(st, tok, 3, lg), BDH_OK);
            for (int k = 0; k < 3; k++) {
                const double err = compare_rows("bf16 batch", cases[i].name, lg + k * e.V, ref, t, 1, e.V, BF16_TOL);
                if (err > err_batch) err_batch = err;
            }
            free(lg);
        }
        for (int k = 0; k < 3; k++) bdh_state_free(st[k]);
        bdh_model_free(gpu);

        double err_as_stored = -1.0;
        if (file_bf16) { /* AS_STORED keeps bf16 on the GPU: same values as the CPU's */
            gpu = load_gpu(cases[i].model, BDH_WEIGHTS_AS_STORED);
            free(got);
            got = step_logits(gpu, &e);
            err_as_stored = compare_rows("bf16 as stored", cases[i].name, got, ref, 0, e.T, e.V, F32_TOL);
            bdh_model_free(gpu);
        }
        printf("  %-12s BF16 vs CPU on rounded weights: step %.2e  prefill %.2e  batch %.2e", cases[i].name, err_step,
               err_pf, err_batch);
        if (err_as_stored >= 0) printf("  as stored %.2e", err_as_stored);
        printf("\n");
        free(ref);
        free(got);
        bdh_model_free(cpu);
        free_expect(&e);
    }
    remove(rounded);

    /* float16 weights are not held on the GPU */
    bdh_model *m = NULL;
    assert_int_equal(load_on(cases[0].model, BDH_DEVICE_CUDA, BDH_WEIGHTS_F16, &m), BDH_ERR_UNSUPPORTED);
    assert_null(m);
    assert_true(strlen(bdh_last_error()) > 0);
}

/* ---------------------------------------------------------------- prefill */

/* Compare two saved states' payloads: max |a-b| / max |b|. */
static double state_diff(bdh_state *a, bdh_state *b)
{
    const size_t len = bdh_state_save_size(a);
    assert_int_equal(len, bdh_state_save_size(b));
    uint8_t *ba = malloc(len), *bb = malloc(len);
    assert_int_equal(bdh_state_save(a, ba, len, NULL), BDH_OK);
    assert_int_equal(bdh_state_save(b, bb, len, NULL), BDH_OK);
    const size_t n = (len - 64) / 4;
    float *fa = malloc(n * 4), *fb = malloc(n * 4);
    memcpy(fa, ba + 64, n * 4);
    memcpy(fb, bb + 64, n * 4);
    const double err = tu_rel_err(fa, fb, n);
    free(ba);
    free(bb);
    free(fa);
    free(fb);
    return err;
}

static void test_prefill(void **unused)
{
    (void)unused;
    static const size_t pieces[] = {1, 5, 64, 1, 65, 200, 128, 129, 300};
    const size_t n_pieces = sizeof pieces / sizeof pieces[0];
    tu_case cases[32];
    const int n = list_cases(cases, 32);
    for (int i = 0; i < n; i++) {
        expect e = read_expect(&cases[i]);
        bdh_model *cpu = tu_load(cases[i].model);
        float *ref = step_logits(cpu, &e);
        bdh_model_free(cpu);
        bdh_model *gpu = load_gpu(cases[i].model, BDH_WEIGHTS_F32);

        /* uneven pieces; pieces of one token go through bdh_step */
        bdh_state *s, *stepped;
        assert_int_equal(bdh_state_new(gpu, &s), BDH_OK);
        float *got = malloc(e.T * e.V * sizeof(float));
        double worst = 0.0;
        size_t done = 0;
        for (size_t k = 0; done < e.T; k++) {
            size_t len = pieces[k % n_pieces];
            if (len > e.T - done) len = e.T - done;
            bdh_status rc = len == 1 ? bdh_step(s, e.tokens[done], got) : bdh_prefill_all(s, e.tokens + done, len, got);
            if (rc != BDH_OK) fprintf(stderr, "prefill: %s\n", bdh_last_error());
            assert_int_equal(rc, BDH_OK);
            const double err = compare_rows("prefill_all", cases[i].name, got, ref, done, len, e.V, F32_TOL);
            if (err > worst) worst = err;
            done += len;
        }
        assert_int_equal(bdh_state_position(s), (int64_t)e.T);

        /* the final state matches stepping */
        assert_int_equal(bdh_state_new(gpu, &stepped), BDH_OK);
        for (size_t t = 0; t < e.T; t++) assert_int_equal(bdh_step(stepped, e.tokens[t], NULL), BDH_OK);
        const double sdiff = state_diff(s, stepped);
        assert_true(sdiff <= F32_TOL);

        /* whole sequence, last logits only */
        bdh_state *whole;
        assert_int_equal(bdh_state_new(gpu, &whole), BDH_OK);
        assert_int_equal(bdh_prefill(whole, e.tokens, e.T, got), BDH_OK);
        const double last = compare_rows("prefill", cases[i].name, got, ref, e.T - 1, 1, e.V, F32_TOL);
        assert_int_equal(bdh_state_position(whole), (int64_t)e.T);
        const double sdiff2 = state_diff(whole, stepped);
        assert_true(sdiff2 <= F32_TOL);

        printf("  %-12s T=%-5zu GPU prefill_all %.2e  prefill %.2e  state vs stepping %.2e / %.2e\n", cases[i].name,
               e.T, worst, last, sdiff, sdiff2);
        bdh_state_free(whole);
        bdh_state_free(stepped);
        bdh_state_free(s);
        free(got);
        free(ref);
        bdh_model_free(gpu);
        free_expect(&e);
    }
}

/* ---------------------------------------------------------------- batch */

/* Two states hold the same bits (their blobs are equal). */
static void assert_states_identical(bdh_state *a, bdh_state *b)
{
    const size_t len = bdh_state_save_size(a);
    assert_int_equal(len, bdh_state_save_size(b));
    uint8_t *ba = malloc(len), *bb = malloc(len);
    assert_int_equal(bdh_state_save(a, ba, len, NULL), BDH_OK);
    assert_int_equal(bdh_state_save(b, bb, len, NULL), BDH_OK);
    assert_memory_equal(ba, bb, len);
    free(ba);
    free(bb);
}

/* States at different positions, advanced together, against copies of them
 * advanced one at a time: within F32_TOL, or (bitwise) the same bits. */
static double batch_vs_single(bdh_model *gpu, const expect *e, int K, int rounds, const char *name, int bitwise)
{
    bdh_state **st = calloc((size_t)K, sizeof *st), **single = calloc((size_t)K, sizeof *single);
    int32_t *tok = calloc((size_t)K, sizeof *tok);
    float *lb = malloc((size_t)K * e->V * sizeof(float)), *ls = malloc(e->V * sizeof(float));
    for (int k = 0; k < K; k++) {
        assert_int_equal(bdh_state_new(gpu, &st[k]), BDH_OK);
        const size_t warm = (size_t)(k % 9) % e->T;
        for (size_t t = 0; t < warm; t++) assert_int_equal(bdh_step(st[k], e->tokens[(t + k) % e->T], NULL), BDH_OK);
        assert_int_equal(bdh_state_copy(st[k], &single[k]), BDH_OK);
    }
    double worst = 0.0;
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < K; k++) tok[k] = e->tokens[(size_t)(r * 7 + k * 3) % e->T];
        float *out = r == 1 ? NULL : lb; /* one round without logits */
        assert_int_equal(bdh_step_batch(st, tok, (size_t)K, out), BDH_OK);
        for (int k = 0; k < K; k++) {
            assert_int_equal(bdh_step(single[k], tok[k], ls), BDH_OK);
            assert_int_equal(bdh_state_position(st[k]), bdh_state_position(single[k]));
            if (!out) continue;
            if (bitwise) {
                if (memcmp(lb + (size_t)k * e->V, ls, e->V * sizeof(float)) != 0)
                    fprintf(stderr, "%s batch of %d: state %d round %d differs from its single step\n", name, K, k, r);
                assert_memory_equal(lb + (size_t)k * e->V, ls, e->V * sizeof(float));
            }
            const double err = tu_rel_err(lb + (size_t)k * e->V, ls, e->V);
            if (!(err <= F32_TOL)) fprintf(stderr, "%s batch of %d: state %d round %d rel err %.3g\n", name, K, k, r, err);
            assert_true(err <= F32_TOL);
            if (err > worst) worst = err;
        }
    }
    for (int k = 0; k < K; k++) {
        const double sd = state_diff(st[k], single[k]);
        assert_true(sd <= F32_TOL);
        if (bitwise) assert_states_identical(st[k], single[k]);
        bdh_state_free(st[k]);
        bdh_state_free(single[k]);
    }
    free(st);
    free(single);
    free(tok);
    free(lb);
    free(ls);
    return worst;
}

static void test_batch(void **unused)
{
    (void)unused;
    tu_case cases[32];
    const int n = list_cases(cases, 32);
    for (int i = 0; i < n; i++) {
        expect e = read_expect(&cases[i]);
        bdh_model *gpu = load_gpu(cases[i].model, BDH_WEIGHTS_F32);
        const double a = batch_vs_single(gpu, &e, 7, 6, cases[i].name, 0);
        const double b = batch_vs_single(gpu, &e, 2, 4, cases[i].name, 0);
        double c = -1.0;
        if (i == 0) c = batch_vs_single(gpu, &e, 130, 3, cases[i].name, 0); /* more than one launch group */
        printf("  %-12s batch vs single: 7 states %.2e  2 states %.2e", cases[i].name, a, b);
        if (c >= 0) printf("  130 states %.2e", c);
        printf("\n");
        bdh_model_free(gpu);
        free_expect(&e);
    }
}

/* ---------------------------------------------------------------- save / load */

static void test_save_load(void **unused)
{
    (void)unused;
    tu_case cases[32];
    const int n = list_cases(cases, 32);
    for (int i = 0; i < n; i++) {
        expect e = read_expect(&cases[i]);
        if (e.T < 12) {
            free_expect(&e);
            continue;
        }
        bdh_model *gpu = load_gpu(cases[i].model, BDH_WEIGHTS_F32);
        bdh_model *cpu = tu_load(cases[i].model);
        assert_true(bdh_model_fingerprint(gpu) == bdh_model_fingerprint(cpu));
        const size_t V = e.V, k = 10;
        float *la = malloc(V * 4), *lb = malloc(V * 4);

        bdh_state *g, *g2, *c;
        assert_int_equal(bdh_state_new(gpu, &g), BDH_OK);
        for (size_t t = 0; t < k; t++) assert_int_equal(bdh_step(g, e.tokens[t], NULL), BDH_OK);
        const size_t len = bdh_state_save_size(g);
        uint8_t *raw = malloc(len + 1), *blob = raw + 1; /* unaligned on purpose */
        size_t written = 0;
        assert_int_equal(bdh_state_save(g, blob, len, &written), BDH_OK);
        assert_int_equal(written, len);

        /* GPU -> GPU: the same kernels on the same state give the same bits */
        assert_int_equal(bdh_state_new(gpu, &g2), BDH_OK);
        assert_int_equal(bdh_state_load(g2, blob, len), BDH_OK);
        assert_int_equal(bdh_state_position(g2), (int64_t)k);
        assert_int_equal(bdh_step(g, e.tokens[k], la), BDH_OK);
        assert_int_equal(bdh_step(g2, e.tokens[k], lb), BDH_OK);
        assert_memory_equal(la, lb, V * 4);

        /* GPU blob -> CPU state of the same file */
        assert_int_equal(bdh_state_new(cpu, &c), BDH_OK);
        assert_int_equal(bdh_state_load(c, blob, len), BDH_OK);
        assert_int_equal(bdh_step(c, e.tokens[k], lb), BDH_OK);
        const double gpu_to_cpu = tu_rel_err(la, lb, V);
        assert_true(gpu_to_cpu <= F32_TOL);

        /* CPU blob -> GPU state */
        assert_int_equal(bdh_step(c, e.tokens[k + 1], lb), BDH_OK);
        assert_int_equal(bdh_state_save(c, blob, len, NULL), BDH_OK);
        assert_int_equal(bdh_state_load(g2, blob, len), BDH_OK);
        assert_int_equal(bdh_state_position(g2), (int64_t)(k + 2));
        assert_int_equal(bdh_step(c, e.tokens[k + 1], lb), BDH_OK);
        assert_int_equal(bdh_step(g2, e.tokens[k + 1], la), BDH_OK);
        const double cpu_to_gpu = tu_rel_err(la, lb, V);
        assert_true(cpu_to_gpu <= F32_TOL);

        /* fork: the copy and the original go on alike; reset = fresh */
        bdh_state *f;
        assert_int_equal(bdh_state_copy(g2, &f), BDH_OK);
        assert_int_equal(bdh_state_position(f), bdh_state_position(g2));
        assert_int_equal(bdh_step(g2, e.tokens[0], la), BDH_OK);
        assert_int_equal(bdh_step(f, e.tokens[0], lb), BDH_OK);
        assert_memory_equal(la, lb, V * 4);
        assert_int_equal(bdh_state_reset(f), BDH_OK);
        assert_int_equal(bdh_state_position(f), 0);
        bdh_state *fresh;
        assert_int_equal(bdh_state_new(gpu, &fresh), BDH_OK);
        assert_int_equal(bdh_step(f, e.tokens[3], la), BDH_OK);
        assert_int_equal(bdh_step(fresh, e.tokens[3], lb), BDH_OK);
        assert_memory_equal(la, lb, V * 4);

        /* a damaged blob leaves the GPU state as it was */
        const int64_t pos = bdh_state_position(g2);
        blob[len / 2] ^= 0x5a;
        assert_int_equal(bdh_state_load(g2, blob, len), BDH_ERR_FORMAT);
        assert_int_equal(bdh_state_position(g2), pos);

        printf("  %-12s save/load: GPU->CPU %.2e  CPU->GPU %.2e\n", cases[i].name, gpu_to_cpu, cpu_to_gpu);
        bdh_state_free(fresh);
        bdh_state_free(f);
        bdh_state_free(c);
        bdh_state_free(g2);
        bdh_state_free(g);
        free(raw);
        free(la);
        free(lb);
        bdh_model_free(cpu);
        bdh_model_free(gpu);
        free_expect(&e);
    }
}

/* ---------------------------------------------------------------- errors */

static void test_bad_tokens(void **unused)
{
    (void)unused;
    tu_case cases[32];
    list_cases(cases, 32);
    expect e = read_expect(&cases[0]);
    bdh_model *gpu = load_gpu(cases[0].model, BDH_WEIGHTS_F32);
    const int32_t V = (int32_t)e.V;
    float *la = malloc(e.V * 4), *lb = malloc(e.V * 4);
    bdh_state *s, *fresh;
    assert_int_equal(bdh_state_new(gpu, &s), BDH_OK);
    assert_int_equal(bdh_state_new(gpu, &fresh), BDH_OK);
    assert_int_equal(bdh_step(s, V, la), BDH_ERR_TOKEN);
    assert_int_equal(bdh_step(s, -1, la), BDH_ERR_TOKEN);
    const int32_t toks[4] = {1, 2, V + 5, 3};
    assert_int_equal(bdh_prefill(s, toks, 4, la), BDH_ERR_TOKEN);
    assert_int_equal(bdh_state_position(s), 0);
    bdh_state *pair[2] = {s, fresh};
    const int32_t bt[2] = {1, -7};
    assert_int_equal(bdh_step_batch(pair, bt, 2, NULL), BDH_ERR_TOKEN);
    assert_int_equal(bdh_state_position(s), 0);
    assert_int_equal(bdh_state_position(fresh), 0);
    /* nothing was fed: the state still answers like a fresh one */
    assert_int_equal(bdh_step(s, e.tokens[0], la), BDH_OK);
    assert_int_equal(bdh_step(fresh, e.tokens[0], lb), BDH_OK);
    assert_memory_equal(la, lb, e.V * 4);
    bdh_state_free(s);
    bdh_state_free(fresh);
    free(la);
    free(lb);
    bdh_model_free(gpu);
    free_expect(&e);
}

static void test_device_errors(void **unused)
{
    (void)unused;
    tu_case cases[32];
    list_cases(cases, 32);
    bdh_model_params p = bdh_model_default_params();
    p.device = BDH_DEVICE_CUDA;
    p.cuda_device = 4096;
    bdh_model *m = NULL;
    assert_int_equal(bdh_model_load(cases[0].model, &p, &m), BDH_ERR_DEVICE);
    assert_null(m);
    printf("  cuda_device 4096: %s\n", bdh_last_error());
    assert_true(strstr(bdh_last_error(), "cuda_device") != NULL);
    /* refused before the file is read */
    p.cuda_device = -1;
    assert_int_equal(bdh_model_load(cases[0].model, &p, &m), BDH_ERR_INVALID_ARGUMENT);
    assert_null(m);
    assert_true(strstr(bdh_last_error(), "cuda_device") != NULL);
    p.cuda_device = 0;
    p.weight_type = BDH_WEIGHTS_F16;
    assert_int_equal(bdh_model_load(cases[0].model, &p, &m), BDH_ERR_UNSUPPORTED);
    assert_null(m);
    printf("  BDH_WEIGHTS_F16: %s\n", bdh_last_error());
}

/* ---------------------------------------------------------------- Q8_0 */

static bdh_model *load_cpu_q8(const char *path)
{
    bdh_model *m = NULL;
    bdh_status rc = load_on(path, BDH_DEVICE_CPU, BDH_WEIGHTS_Q8_0, &m);
    if (rc != BDH_OK) fprintf(stderr, "CPU Q8_0 load %s: %s\n", path, bdh_last_error());
    assert_int_equal(rc, BDH_OK);
    return m;
}

/* What the device holds for Q8_0: float32 embed and lm_head; per neuron row
 * of encoder, encoder_v and decoder, D int8 values padded to whole blocks
 * of 32, and an F16 scale per block. */
static size_t q8_device_bytes(const bdh_model *m)
{
    bdh_config c;
    assert_int_equal(bdh_model_config(m, &c), BDH_OK);
    const size_t D = (size_t)c.n_embd, HN = (size_t)c.n_head * (size_t)c.n_neurons, V = (size_t)c.vocab_size;
    const size_t nb = (D + 31) / 32;
    return 2 * V * D * 4 + 3 * HN * (nb * 32 + 2 * nb);
}

/* GPU Q8_0 steps against the CPU's Q8_0 steps of the same file (the same
 * blocks: both quantize with bdh_q8_quantize_row), every case and position;
 * a second run gives the same bits; blobs go between GPU and CPU. */
static void test_q8_parity(void **unused)
{
    (void)unused;
    tu_case cases[32];
    const int n = list_cases(cases, 32);
    for (int i = 0; i < n; i++) {
        expect e = read_expect(&cases[i]);
        bdh_model *cpu = load_cpu_q8(cases[i].model);
        bdh_model *gpu = load_gpu(cases[i].model, BDH_WEIGHTS_Q8_0);
        assert_int_equal(bdh_model_weight_bytes(gpu), q8_device_bytes(gpu));
        assert_true(bdh_model_fingerprint(gpu) == bdh_model_fingerprint(cpu)); /* the same weights */
        float *ref = step_logits(cpu, &e);
        float *got = step_logits(gpu, &e);
        const double vs_cpu = compare_rows("Q8_0 step vs CPU Q8_0", cases[i].name, got, ref, 0, e.T, e.V, Q8_TOL);
        const expect e64 = first_positions(&e, 64);
        float *again = step_logits(gpu, &e64); /* run to run: the same bits */
        assert_memory_equal(got, again, e64.T * e.V * sizeof(float));

        /* a GPU Q8_0 blob continues on the CPU's Q8_0 model, and back */
        double blob_err = -1.0;
        if (e.T >= 12) {
            const size_t k = 10;
            float *la = malloc(e.V * 4), *lb = malloc(e.V * 4);
            bdh_state *g, *c;
            assert_int_equal(bdh_state_new(gpu, &g), BDH_OK);
            assert_int_equal(bdh_state_new(cpu, &c), BDH_OK);
            for (size_t t = 0; t < k; t++) assert_int_equal(bdh_step(g, e.tokens[t], NULL), BDH_OK);
            const size_t len = bdh_state_save_size(g);
            uint8_t *blob = malloc(len);
            assert_int_equal(bdh_state_save(g, blob, len, NULL), BDH_OK);
            assert_int_equal(bdh_state_load(c, blob, len), BDH_OK);
            assert_int_equal(bdh_step(g, e.tokens[k], la), BDH_OK);
            assert_int_equal(bdh_step(c, e.tokens[k], lb), BDH_OK);
            blob_err = tu_rel_err(la, lb, e.V);
            assert_true(blob_err <= Q8_TOL);
            assert_int_equal(bdh_state_save(c, blob, len, NULL), BDH_OK);
            assert_int_equal(bdh_state_load(g, blob, len), BDH_OK);
            assert_int_equal(bdh_step(g, e.tokens[k + 1], la), BDH_OK);
            assert_int_equal(bdh_step(c, e.tokens[k + 1], lb), BDH_OK);
            const double back = tu_rel_err(la, lb, e.V);
            assert_true(back <= Q8_TOL);
            if (back > blob_err) blob_err = back;
            free(blob);
            bdh_state_free(g);
            bdh_state_free(c);
            free(la);
            free(lb);
        }
        printf("  %-12s T=%-5zu GPU Q8_0 step vs CPU Q8_0 %.2e (a second run: the same bits)", cases[i].name, e.T, vs_cpu);
        if (blob_err >= 0) printf("  blobs GPU<->CPU %.2e", blob_err);
        printf("\n");
        free(ref);
        free(got);
        free(again);
        bdh_model_free(gpu);
        bdh_model_free(cpu);
        free_expect(&e);
    }

    /* graph replay == eager == no PDL, bitwise; dense listing up to summation order */
    const tu_case *c = &cases[2]; /* long: 6 layers, 4 heads */
    expect e = read_expect(c);
    if (e.T > 64) e.T = 64;
    bdh_model *gpu = load_gpu(c->model, BDH_WEIGHTS_Q8_0);
    float *base = step_logits(gpu, &e);
    bdh_model_free(gpu);
    setenv("BDH_CUDA_GRAPH", "0", 1);
    gpu = load_gpu(c->model, BDH_WEIGHTS_Q8_0);
    unsetenv("BDH_CUDA_GRAPH");
    float *other = step_logits(gpu, &e);
    bdh_model_free(gpu);
    assert_memory_equal(base, other, e.T * e.V * sizeof(float));
    free(other);
    setenv("BDH_CUDA_PDL", "0", 1);
    gpu = load_gpu(c->model, BDH_WEIGHTS_Q8_0);
    unsetenv("BDH_CUDA_PDL");
    other = step_logits(gpu, &e);
    bdh_model_free(gpu);
    assert_memory_equal(base, other, e.T * e.V * sizeof(float));
    free(other);
    setenv("BDH_CUDA_DENSE", "1", 1);
    gpu = load_gpu(c->model, BDH_WEIGHTS_Q8_0);
    unsetenv("BDH_CUDA_DENSE");
    other = step_logits(gpu, &e);
    bdh_model_free(gpu);
    const double dense = compare_rows("Q8_0 dense vs sparse", c->name, other, base, 0, e.T, e.V, Q8_TOL);
    printf("  %-12s Q8_0 graph == eager == no PDL (bitwise); dense vs sparse %.2e\n", c->name, dense);
    free(other);
    free(base);
    free_expect(&e);
}

/* Batched Q8_0 steps run the single step's kernels over the states: the
 * same bits as single steps, logits and states, in groups of any size. */
static void test_q8_batch(void **unused)
{
    (void)unused;
    tu_case cases[32];
    const int n = list_cases(cases, 32);
    for (int i = 0; i < n; i++) {
        expect e = read_expect(&cases[i]);
        bdh_model *gpu = load_gpu(cases[i].model, BDH_WEIGHTS_Q8_0);
        batch_vs_single(gpu, &e, 7, 6, cases[i].name, 1);
        batch_vs_single(gpu, &e, 2, 4, cases[i].name, 1);
        if (i == 0) batch_vs_single(gpu, &e, 130, 3, cases[i].name, 1); /* more than one launch group */
        printf("  %-12s Q8_0 batch == single steps (bitwise): 7 and 2 states%s\n", cases[i].name,
               i == 0 ? ", 130 states" : "");
        bdh_model_free(gpu);
        free_expect(&e);
    }
}

/* Q8_0 prefill (GEMMs over the exact dequantized values) against Q8_0
 * steps: uneven pieces mixed with single steps, the last logits, the final
 * state. */
static void test_q8_prefill(void **unused)
{
    (void)unused;
    static const size_t pieces[] = {1, 5, 64, 1, 65, 200, 128, 129, 300};
    const size_t n_pieces = sizeof pieces / sizeof pieces[0];
    tu_case cases[32];
    const int n = list_cases(cases, 32);
    for (int i = 0; i < n; i++) {
        expect e = read_expect(&cases[i]);
        bdh_model *gpu = load_gpu(cases[i].model, BDH_WEIGHTS_Q8_0);
        float *ref = step_logits(gpu, &e);
        bdh_state *s, *stepped, *whole;
        assert_int_equal(bdh_state_new(gpu, &s), BDH_OK);
        float *got = malloc(e.T * e.V * sizeof(float));
        double worst = 0.0;
        size_t done = 0;
        for (size_t k = 0; done < e.T; k++) {
            size_t len = pieces[k % n_pieces];
            if (len > e.T - done) len = e.T - done;
            bdh_status rc = len == 1 ? bdh_step(s, e.tokens[done], got) : bdh_prefill_all(s, e.tokens + done, len, got);
            if (rc != BDH_OK) fprintf(stderr, "Q8_0 prefill: %s\n", bdh_last_error());
            assert_int_equal(rc, BDH_OK);
            const double err = compare_rows("Q8_0 prefill_all vs steps", cases[i].name, got, ref, done, len, e.V, Q8_TOL);
            if (err > worst) worst = err;
            done += len;
        }
        assert_int_equal(bdh_state_new(gpu, &stepped), BDH_OK);
        for (size_t t = 0; t < e.T; t++) assert_int_equal(bdh_step(stepped, e.tokens[t], NULL), BDH_OK);
        const double sdiff = state_diff(s, stepped);
        assert_true(sdiff <= Q8_TOL);
        assert_int_equal(bdh_state_new(gpu, &whole), BDH_OK);
        assert_int_equal(bdh_prefill(whole, e.tokens, e.T, got), BDH_OK);
        const double last = compare_rows("Q8_0 prefill vs steps", cases[i].name, got, ref, e.T - 1, 1, e.V, Q8_TOL);
        const double sdiff2 = state_diff(whole, stepped);
        assert_true(sdiff2 <= Q8_TOL);
        printf("  %-12s T=%-5zu Q8_0 prefill_all vs steps %.2e  prefill %.2e  state %.2e / %.2e\n", cases[i].name, e.T,
               worst, last, sdiff, sdiff2);
        bdh_state_free(whole);
        bdh_state_free(stepped);
        bdh_state_free(s);
        free(got);
        free(ref);
        bdh_model_free(gpu);
        free_expect(&e);
    }
}

/* A file written by bdh_model_quantize: loaded with BDH_WEIGHTS_AS_STORED
 * or BDH_WEIGHTS_Q8_0 it gives exactly the logits of quantizing the float
 * file at load (steps and prefill); with BDH_WEIGHTS_F32 it is its
 * dequantized values, like on the CPU. */
static void test_q8_prequantized(void **unused)
{
    (void)unused;
    tu_case cases[32];
    const int n = list_cases(cases, 32);
    char path[512];
    snprintf(path, sizeof path, "/tmp/libbdh_test_cuda_q8_%d.safetensors", (int)getpid());
    for (int i = 0; i < n; i++) {
        expect e = read_expect(&cases[i]);
        assert_int_equal(bdh_model_quantize(cases[i].model, path, BDH_WEIGHTS_Q8_0), BDH_OK);
        bdh_model *at_load = load_gpu(cases[i].model, BDH_WEIGHTS_Q8_0);
        bdh_model *stored = load_gpu(path, BDH_WEIGHTS_AS_STORED);
        bdh_model *stored_q = load_gpu(path, BDH_WEIGHTS_Q8_0);
        assert_string_equal(bdh_model_file_dtype(stored, "encoder"), "Q8_0");
        assert_int_equal(bdh_model_weight_bytes(stored), bdh_model_weight_bytes(at_load));
        assert_int_equal(bdh_model_weight_bytes(stored_q), bdh_model_weight_bytes(at_load));
        const size_t bytes = e.T * e.V * sizeof(float);
        const expect e64 = first_positions(&e, 64);
        float *a = step_logits(at_load, &e), *b = step_logits(stored, &e), *c = step_logits(stored_q, &e64);
        assert_memory_equal(a, b, bytes);
        assert_memory_equal(a, c, e64.T * e.V * sizeof(float));

        /* prefill: the same GEMMs on the same blocks */
        bdh_state *sa, *sb;
        assert_int_equal(bdh_state_new(at_load, &sa), BDH_OK);
        assert_int_equal(bdh_state_new(stored, &sb), BDH_OK);
        assert_int_equal(bdh_prefill_all(sa, e.tokens, e.T, a), BDH_OK);
        assert_int_equal(bdh_prefill_all(sb, e.tokens, e.T, b), BDH_OK);
        assert_memory_equal(a, b, bytes);
        bdh_state_free(sa);
        bdh_state_free(sb);

        /* held as float32: the dequantized blocks, as the CPU holds them */
        bdh_model *gpu_f = load_gpu(path, BDH_WEIGHTS_F32), *cpu_f = tu_load(path);
        float *gf = step_logits(gpu_f, &e64), *cf = step_logits(cpu_f, &e64);
        const double f32_err =
            compare_rows("dequantized Q8_0 file, GPU vs CPU", cases[i].name, gf, cf, 0, e64.T, e.V, F32_TOL);
        bdh_model *gpu_b = load_gpu(path, BDH_WEIGHTS_BF16); /* loads (values rounded to bf16) */
        printf("  %-12s pre-quantized file == quantized at load (bitwise, steps and prefill); as float32 vs CPU %.2e\n",
               cases[i].name, f32_err);
        free(a);
        free(b);
        free(c);
        free(gf);
        free(cf);
        bdh_model *ms[] = {at_load, stored, stored_q, gpu_f, cpu_f, gpu_b};
        for (size_t k = 0; k < sizeof ms / sizeof ms[0]; k++) bdh_model_free(ms[k]);
        free_expect(&e);
    }
    remove(path);
}

/* ---------------------------------------------------------------- release */

typedef int (*mem_info_fn)(size_t *, size_t *);

/* One full life: load, states (step, prefill, batch, copy), free. */
static void one_life(const char *path, const expect *e, bdh_weight_type wt)
{
    bdh_model *gpu = load_gpu(path, wt);
    bdh_state *s[3];
    for (int k = 0; k < 3; k++) assert_int_equal(bdh_state_new(gpu, &s[k]), BDH_OK);
    for (int t = 0; t < 3; t++) assert_int_equal(bdh_step(s[0], e->tokens[t], NULL), BDH_OK);
    assert_int_equal(bdh_prefill(s[1], e->tokens, e->T < 40 ? e->T : 40, NULL), BDH_OK);
    const int32_t tok[3] = {e->tokens[0], e->tokens[1], e->tokens[2]};
    assert_int_equal(bdh_step_batch(s, tok, 3, NULL), BDH_OK);
    bdh_state *c;
    assert_int_equal(bdh_state_copy(s[2], &c), BDH_OK);
    bdh_state_free(c);
    for (int k = 0; k < 3; k++) bdh_state_free(s[k]);
    bdh_model_free(gpu);
}

static void test_release(void **unused)
{
    (void)unused;
    tu_case cases[32];
    list_cases(cases, 32);
    const tu_case *c = &cases[2]; /* long: the largest golden model */
    expect e = read_expect(c);
    /* cudaMemGetInfo from the runtime the library already loaded (a lookup
     * at run time: the test links to libbdh only) */
    mem_info_fn mem_info = (mem_info_fn)dlsym(RTLD_DEFAULT, "cudaMemGetInfo");
    for (int k = 0; k < 2; k++) { /* one-time loads (modules, cuBLAS) */
        one_life(c->model, &e, BDH_WEIGHTS_F32);
        one_life(c->model, &e, BDH_WEIGHTS_Q8_0);
    }
    size_t free0 = 0, free1 = 0, total = 0;
    if (mem_info) assert_int_equal(mem_info(&free0, &total), 0);
    for (int k = 0; k < 20; k++) one_life(c->model, &e, BDH_WEIGHTS_F32);
    for (int k = 0; k < 10; k++) one_life(c->model, &e, BDH_WEIGHTS_Q8_0);
    if (mem_info) {
        assert_int_equal(mem_info(&free1, &total), 0);
        const double lost = ((double)free0 - (double)free1) / (1 << 20);
        printf("  20 float32 + 10 Q8_0 load/use/free cycles: device free memory %.1f MiB before, %.1f MiB after "
               "(%.1f MiB lost)\n",
               free0 / 1048576.0, free1 / 1048576.0, lost);
        assert_true(lost < 16.0);
    } else {
        printf("  20 float32 + 10 Q8_0 load/use/free cycles ran (cudaMemGetInfo not found: memory not measured)\n");
    }
    free_expect(&e);
}

/* ---------------------------------------------------------------- main */

/* A CUDA model loads here, or the reason it does not. */
static int cuda_available(char *why, size_t cap)
{
    tu_case cases[32];
    const int n = tu_all_cases(cases, 32);
    if (n < 1) {
        snprintf(why, cap, "no test cases found");
        return 0;
    }
    bdh_model *m = NULL;
    const bdh_status rc = load_on(cases[0].model, BDH_DEVICE_CUDA, BDH_WEIGHTS_F32, &m);
    snprintf(why, cap, "%s: %s", bdh_status_name(rc), bdh_last_error());
    bdh_model_free(m);
    if (rc == BDH_ERR_UNSUPPORTED || rc == BDH_ERR_DEVICE) return 0;
    if (rc != BDH_OK) {
        fprintf(stderr, "test_cuda: loading %s on CUDA failed unexpectedly: %s\n", cases[0].model, why);
        return -1;
    }
    return 1;
}

int main(void)
{
    const char *q = getenv("BDH_TEST_QUICK");
    g_quick = q && *q && strcmp(q, "0") != 0;
    char why[600];
    const int have = cuda_available(why, sizeof why);
    if (have < 0) return 1;
    if (have == 0) {
        printf("test_cuda: skipped: no CUDA device (%s)\n", why);
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_step_parity), cmocka_unit_test(test_switches),  cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_prefill),     cmocka_unit_test(test_batch),     cmocka_unit_test(test_save_load),
        cmocka_unit_test(test_bad_tokens),  cmocka_unit_test(test_device_errors), cmocka_unit_test(test_q8_parity),
        cmocka_unit_test(test_q8_batch),    cmocka_unit_test(test_q8_prefill), cmocka_unit_test(test_q8_prequantized),
        cmocka_unit_test(test_release),
    };
    return cmocka_run_group_tests_name("CUDA backend", tests, NULL, NULL);
}
