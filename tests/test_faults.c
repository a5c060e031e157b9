/* Allocation failures: every allocation that libbdh (or cJSON for it) makes
 * in load, state_new, copy, prefill, step, step_batch, the generator,
 * bdh_generate, quantize, merge, observers and monitors (and the reference
 * backend's prefill and batch) is made to fail in turn (the n-th, swept over n until the call
 * succeeds). Each failure must return BDH_ERR_OUT_OF_MEMORY with a message,
 * leave *out NULL and the state as it was (as the header promises), and
 * leak nothing: the allocations the call made and kept are counted by the
 * shim below and must all be freed again.
 *
 * The shim (fault_shim.c, linked in) wraps malloc and friends and acts only
 * on calls made from libbdh.so or libcjson. Not built under the sanitizers,
 * which own malloc themselves. */
#include "test_util.h"
#include "fault_shim.h"

#include <unistd.h>

/* ---- the sweep */

#define TINY TU_DATA "/golden/tiny.model.safetensors"

typedef bdh_status (*op_fn)(void *ctx);

/* Runs op with the n-th library allocation failing, for n = 0, 1, ...
 * until it succeeds; check() verifies what a failure left. Returns how
 * many allocations the op made. */
static long sweep(const char *name, op_fn op, void *ctx, void (*undo)(void *ctx), void (*check)(void *ctx))
{
    for (long n = 0;; n++) {
        const long before = fault_live();
        fault_arm(n);
        const bdh_status rc = op(ctx);
        fault_disarm();
        if (rc == BDH_OK) {
            if (undo) undo(ctx);
            assert_int_equal(fault_live(), before);
            printf("  %-12s %ld allocations, each failure handled\n", name, n);
            return n;
        }
        if (rc != BDH_ERR_OUT_OF_MEMORY) fprintf(stderr, "%s, allocation %ld: %s (%s)\n", name, n, bdh_status_name(rc), bdh_last_error());
        assert_int_equal(rc, BDH_ERR_OUT_OF_MEMORY);
        assert_true(strlen(bdh_last_error()) > 0);
        if (check) check(ctx);
        if (fault_live() != before) fprintf(stderr, "%s, allocation %ld failed: %ld blocks leaked\n", name, n, fault_live() - before);
        assert_int_equal(fault_live(), before);
    }
}

typedef struct ctx {
    bdh_model *m, *out_m;
    bdh_state *s, *t, *u, *out_s;
    bdh_model *ref;
    bdh_state *r1, *r2;
    void *blob_u, *blob_r;
    size_t blob_u_len, blob_r_len;
    bdh_generator *g;
    void *blob, *blob_t;
    size_t blob_len, blob_t_len;
} ctx;

static void *saved(const bdh_state *s, size_t *len)
{
    *len = bdh_state_save_size(s);
    void *b = fault_raw_malloc(*len);
    assert_int_equal(bdh_state_save(s, b, *len, NULL), BDH_OK);
    return b;
}

/* s is byte for byte as it was when saved into blob */
static void expect_as_saved(const bdh_state *s, const void *blob, size_t blob_len)
{
    size_t len;
    void *now = saved(s, &len);
    assert_int_equal(len, blob_len);
    assert_memory_equal(now, blob, len);
    fault_raw_free(now);
}

/* the state is byte for byte as before the failed call */
static void state_unchanged(void *p)
{
    ctx *c = p;
    expect_as_saved(c->s, c->blob, c->blob_len);
}

/* TINY loaded with mp into c->out_m, which a failure must leave NULL */
static bdh_status load_tiny(ctx *c, const bdh_model_params *mp)
{
    c->out_m = (bdh_model *)c;
    const bdh_status rc = bdh_model_load(TINY, mp, &c->out_m);
    if (rc != BDH_OK) assert_null(c->out_m);
    return rc;
}

static bdh_status op_load(void *p)
{
    bdh_model_params mp = bdh_model_default_params();
    mp.n_threads = 2;
    return load_tiny(p, &mp);
}
static void undo_load(void *p) { bdh_model_free(((ctx *)p)->out_m); }

static bdh_status op_load_q8(void *p)
{
    bdh_model_params mp = bdh_model_default_params();
    mp.weight_type = BDH_WEIGHTS_Q8_0;
    mp.kernels = BDH_KERNELS_REFERENCE;
    return load_tiny(p, &mp);
}

static bdh_status op_state_new(void *p)
{
    ctx *c = p;
    c->out_s = (bdh_state *)p;
    const bdh_status rc = bdh_state_new(c->m, &c->out_s);
    if (rc != BDH_OK) assert_null(c->out_s);
    return rc;
}
static void undo_state(void *p) { bdh_state_free(((ctx *)p)->out_s); }

static bdh_status op_copy(void *p)
{
    ctx *c = p;
    c->out_s = (bdh_state *)p;
    const bdh_status rc = bdh_state_copy(c->s, &c->out_s);
    if (rc != BDH_OK) assert_null(c->out_s);
    return rc;
}

static const int32_t text[] = {'T', 'o', ' ', 'b', 'e', ',', ' ', 'o', 'r'};

/* on c->t, which has no monitor: the GEMM path (s has one: token by token) */
static bdh_status op_prefill(void *p) { return bdh_prefill(((ctx *)p)->t, text, 9, NULL); }

static void t_unchanged(void *p)
{
    ctx *c = p;
    expect_as_saved(c->t, c->blob_t, c->blob_t_len);
}
static bdh_status op_step(void *p)
{
    float logits[256];
    return bdh_step(((ctx *)p)->s, 'x', logits);
}
static bdh_status op_batch(void *p)
{
    ctx *c = p;
    bdh_state *both[2] = {c->s, c->t};
    const int32_t tok[2] = {'a', 'b'};
    return bdh_step_batch(both, tok, 2, NULL);
}
static bdh_status op_load_blob(void *p)
{
    ctx *c = p;
    return bdh_state_load(c->s, c->blob, c->blob_len);
}

static bdh_status op_generator(void *p)
{
    ctx *c = p;
    bdh_generate_params gp = bdh_generate_default_params();
    gp.max_new_tokens = 4;
    const char *stop[] = {"zz"};
    const size_t stop_len[] = {2};
    gp.stop = stop;
    gp.stop_len = stop_len;
    gp.n_stop = 1;
    c->g = (bdh_generator *)p;
    const bdh_status rc = bdh_generator_new(c->s, text, 9, &gp, &c->g);
    if (rc != BDH_OK) assert_null(c->g);
    return rc;
}
static void undo_generator(void *p) { bdh_generator_free(((ctx *)p)->g); }

static bdh_status op_quantize(void *p)
{
    (void)p;
    return bdh_model_quantize(TINY, tu_tmp_path("q8.safetensors"), BDH_WEIGHTS_Q8_0);
}

/* ---- observers, monitors, the reference backend, bdh_generate */

static void count_layers(const bdh_layer_activation *act, void *user) { ++*(long *)user; }

/* on a fresh state u: setting an observer allocates its buffers */
static bdh_status op_set_observer(void *p)
{
    ctx *c = p;
    static long layers;
    return bdh_state_set_observer(c->u, count_layers, &layers);
}
/* its buffers live as long as the state: undo with a fresh state */
static void undo_observer(void *p)
{
    ctx *c = p;
    bdh_state_free(c->u);
    assert_int_equal(bdh_state_new(c->m, &c->u), BDH_OK);
}

/* u observed (and monitored, after op_add_monitor): prefill steps token by token */
static bdh_status op_observed_prefill(void *p) { return bdh_prefill(((ctx *)p)->u, text, 9, NULL); }

static bdh_status op_add_monitor(void *p)
{
    ctx *c = p;
    return bdh_state_add_monitor(c->u, 1, 4, 5, NULL);
}
/* on t, which has no observer yet: a failure must take back the buffers
 * the call made */
static bdh_status op_first_monitor(void *p) { return bdh_state_add_monitor(((ctx *)p)->t, 1, 4, 5, NULL); }
static void undo_first_monitor(void *p)
{
    ctx *c = p;
    bdh_state_free(c->t);
    assert_int_equal(bdh_state_new(c->m, &c->t), BDH_OK);
}

/* monitors too live as long as the state */
static void undo_monitor(void *p)
{
    undo_observer(p);
    assert_int_equal(op_set_observer(p), BDH_OK);
}

static void u_unchanged(void *p)
{
    ctx *c = p;
    expect_as_saved(c->u, c->blob_u, c->blob_u_len);
}
static void u_snapshot(ctx *c)
{
    fault_raw_free(c->blob_u);
    c->blob_u = saved(c->u, &c->blob_u_len);
}

/* the reference backend's batch (it allocates per call, the fast path does not) */
static bdh_status op_ref_batch(void *p)
{
    ctx *c = p;
    bdh_state *both[2] = {c->r1, c->r2};
    const int32_t tok[2] = {'a', 'b'};
    float logits[2 * 256];
    return bdh_step_batch(both, tok, 2, logits);
}
static bdh_status op_ref_prefill(void *p) { return bdh_prefill(((ctx *)p)->r1, text, 9, NULL); }

static void r_unchanged(void *p)
{
    ctx *c = p;
    expect_as_saved(c->r1, c->blob_r, c->blob_r_len);
}

/* bdh_generate: on failure its stats say what the state consumed */
static bdh_status op_generate(void *p)
{
    ctx *c = p;
    bdh_generate_params gp = bdh_generate_default_params();
    gp.max_new_tokens = 3;
    bdh_generate_stats st;
    memset(&st, 0xff, sizeof st);
    const int64_t pos = bdh_state_position(c->u);
    const bdh_status rc = bdh_generate(c->u, text, 9, &gp, NULL, NULL, &st);
    if (rc != BDH_OK) assert_int_equal(bdh_state_position(c->u), pos + st.n_prompt + st.n_generated);
    return rc;
}

static bdh_status op_merge(void *p)
{
    (void)p;
    return bdh_model_merge(TINY, TINY, tu_tmp_path("merge.safetensors"), NULL);
}

static void test_every_allocation_can_fail(void **unused)
{
    ctx c = {0};
    bdh_model_params mp = bdh_model_default_params();
    mp.n_threads = 2;
    assert_int_equal(bdh_model_load(TINY, &mp, &c.m), BDH_OK);
    assert_int_equal(bdh_state_new(c.m, &c.s), BDH_OK);
    assert_int_equal(bdh_state_new(c.m, &c.t), BDH_OK);
    assert_int_equal(bdh_prefill(c.s, text, 4, NULL), BDH_OK);
    assert_int_equal(bdh_state_add_monitor(c.s, 1, 2, 3, NULL), BDH_OK);
    c.blob = saved(c.s, &c.blob_len);
    c.blob_t = saved(c.t, &c.blob_t_len);

    assert_true(sweep("load", op_load, &c, undo_load, NULL) > 5);
    sweep("load q8 ref", op_load_q8, &c, undo_load, NULL);
    sweep("state_new", op_state_new, &c, undo_state, NULL);
    sweep("state_copy", op_copy, &c, undo_state, state_unchanged);
    sweep("state_load", op_load_blob, &c, NULL, state_unchanged);
    sweep("generator", op_generator, &c, undo_generator, state_unchanged);
    sweep("quantize", op_quantize, &c, NULL, NULL);
    sweep("1st monitor", op_first_monitor, &c, undo_first_monitor, t_unchanged);
    assert_true(sweep("merge", op_merge, &c, NULL, NULL) > 5);
    /* prefill allocates its chunk buffers first; steps allocate nothing (the sweep shows it) */
    assert_true(sweep("prefill", op_prefill, &c, NULL, t_unchanged) > 0);
    assert_int_equal(sweep("step", op_step, &c, NULL, NULL), 0);
    assert_int_equal(sweep("step_batch", op_batch, &c, NULL, NULL), 0);


    /* u: an observer, then monitors, then observed prefill and generate */
    assert_int_equal(bdh_state_new(c.m, &c.u), BDH_OK);
    u_snapshot(&c);
    sweep("set_observer", op_set_observer, &c, undo_observer, u_unchanged);
    assert_int_equal(op_set_observer(&c), BDH_OK);
    sweep("add_monitor", op_add_monitor, &c, undo_monitor, u_unchanged);
    assert_int_equal(op_add_monitor(&c), BDH_OK);
    u_snapshot(&c);
    sweep("obs. prefill", op_observed_prefill, &c, NULL, u_unchanged);
    sweep("generate", op_generate, &c, NULL, NULL);

    bdh_model_params rp = bdh_model_default_params();
    rp.kernels = BDH_KERNELS_REFERENCE;
    assert_int_equal(bdh_model_load(TINY, &rp, &c.ref), BDH_OK);
    assert_int_equal(bdh_state_new(c.ref, &c.r1), BDH_OK);
    assert_int_equal(bdh_state_new(c.ref, &c.r2), BDH_OK);
    c.blob_r = saved(c.r1, &c.blob_r_len);
    sweep("ref prefill", op_ref_prefill, &c, NULL, r_unchanged);
    fault_raw_free(c.blob_r);
    c.blob_r = saved(c.r1, &c.blob_r_len);
    sweep("ref batch", op_ref_batch, &c, NULL, r_unchanged);

    fault_raw_free(c.blob_u);
    fault_raw_free(c.blob_r);
    bdh_state_free(c.u);
    bdh_state_free(c.r1);
    bdh_state_free(c.r2);
    bdh_model_free(c.ref);
    fault_raw_free(c.blob);
    fault_raw_free(c.blob_t);
    bdh_state_free(c.s);
    bdh_state_free(c.t);
    bdh_model_free(c.m);
}

/* the files quantize and merge write go to a directory of this run's own */
static int make_tmp_dir(void **unused)
{
    (void)unused;
    return tu_make_tmp_dir("faults");
}

/* docs/generation.md: "sampling never allocates". Counted over every
 * allocation in the process, so one the C library makes for the sampler
 * (glibc's qsort mallocs a buffer) counts too. */
static void test_sampling_never_allocates(void **unused)
{
    (void)unused;
    bdh_sampler_params p = bdh_sampler_default_params();
    p.temperature = 0.9f;
    p.top_k = 40;
    p.top_p = 0.9f;
    p.min_p = 0.01f;
    p.repeat_penalty = 1.2f;
    p.seed = 7;
    bdh_sampler *s;
    assert_int_equal(bdh_sampler_new(&p, 256, &s), BDH_OK);
    float logits[256];
    long before = fault_allocations();
    for (int t = 0; t < 200; t++) {
        for (int i = 0; i < 256; i++) logits[i] = (float)((i * 37 + t * 11) % 97) * 0.05f;
        int32_t token;
        assert_int_equal(bdh_sampler_sample(s, logits, &token), BDH_OK);
    }
    assert_int_equal(fault_allocations() - before, 0);
    bdh_sampler_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_every_allocation_can_fail),
                                       cmocka_unit_test(test_sampling_never_allocates)};
    return cmocka_run_group_tests(tests, make_tmp_dir, tu_remove_tmp_dir);
}
