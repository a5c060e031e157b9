/* Allocation failures: every allocation that libbdh (or cJSON for it) makes
 * in load, state_new, copy, prefill, step, step_batch, the generator,
 * quantize and merge is made to fail in turn (the n-th, swept over n until the call
 * succeeds). Each failure must return BDH_ERR_OUT_OF_MEMORY with a message,
 * leave *out NULL and the state as it was (as the header promises), and
 * leak nothing: the allocations the call made and kept are counted by the
 * shim below and must all be freed again.
 *
 * The shim wraps malloc and friends in this program (glibc lets a program
 * define them) and acts only on calls made from libbdh.so or libcjson, found
 * by the caller's address, so OpenBLAS and the C library go untouched. Not
 * built under the sanitizers, which own malloc themselves. */
#define _GNU_SOURCE
#include "test_util.h"

#include <dlfcn.h>
#include <execinfo.h>
#include <errno.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static _Atomic long countdown = -1; /* fail when it reaches 0; -1: never */
static _Atomic long live;           /* allocations by the library not yet freed */
static __thread int inside;         /* dladdr may allocate */

static bool from_library(const void *caller)
{
    if (inside) return false;
    inside = 1;
    Dl_info info;
    const bool lib = dladdr(caller, &info) && info.dli_fname &&
                     (strstr(info.dli_fname, "libbdh.so") || strstr(info.dli_fname, "libcjson"));
    inside = 0;
    return lib;
}

/* true: make this allocation fail */
static bool injected(const void *caller, bool *counted)
{
    *counted = from_library(caller);
    if (!*counted) return false;
    long c = atomic_load(&countdown);
    while (c >= 0 && !atomic_compare_exchange_weak(&countdown, &c, c - 1)) {
    }
    if (c == 0 && getenv("BDH_FAULTS_VERBOSE")) { /* which call failed */
        Dl_info info;
        inside = 1;
        if (dladdr(caller, &info))
            fprintf(stderr, "  (failing an allocation in %s, %s+0x%lx)\n", info.dli_sname ? info.dli_sname : "?", info.dli_fname,
                    (unsigned long)((const char *)caller - (const char *)info.dli_fbase));
        inside = 0;
    }
    return c == 0;
}

/* exported, so that libbdh's calls come here (the tests build with hidden visibility) */
#define SHIM __attribute__((visibility("default")))

/* A header before every block: whether the library made it, the block
 * malloc really returned (for aligned blocks) and the size asked for. */
#define HDR 64
#define MAGIC 0x6264686cL
typedef struct header { long magic; void *base; size_t size; long serial; } header;
static _Atomic long serial, sweep_from = -1;

static void *finish(char *base, char *user, size_t n, bool counted)
{
    header *h = (header *)(void *)(user - HDR);
    h->magic = counted ? MAGIC : 0;
    h->base = base;
    h->size = n;
    h->serial = atomic_fetch_add(&serial, 1);
    if (counted) atomic_fetch_add(&live, 1);
    return user;
}

SHIM void *malloc(size_t n)
{
    bool c;
    if (injected(__builtin_return_address(0), &c)) return errno = ENOMEM, NULL;
    char *p = __libc_malloc(n + HDR);
    return p ? finish(p, p + HDR, n, c) : NULL;
}

SHIM void *calloc(size_t k, size_t n)
{
    bool c;
    if (injected(__builtin_return_address(0), &c)) return errno = ENOMEM, NULL;
    if (n && k > ((size_t)-1 - HDR) / n) return NULL;
    char *p = __libc_calloc(1, k * n + HDR);
    return p ? finish(p, p + HDR, k * n, c) : NULL;
}

static void *aligned(size_t a, size_t n, const void *caller)
{
    bool c;
    if (injected(caller, &c)) return errno = ENOMEM, NULL;
    if (a < HDR) a = HDR;
    char *p = __libc_memalign(a, n + a);
    return p ? finish(p, p + a, n, c) : NULL;
}

SHIM void *aligned_alloc(size_t a, size_t n) { return aligned(a, n, __builtin_return_address(0)); }
SHIM void *memalign(size_t a, size_t n) { return aligned(a, n, __builtin_return_address(0)); }

SHIM int posix_memalign(void **out, size_t a, size_t n)
{
    void *p = aligned(a, n, __builtin_return_address(0));
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

SHIM void free(void *user)
{
    if (!user) return;
    header *h = (header *)(void *)((char *)user - HDR);
    if (h->magic == MAGIC) {
        atomic_fetch_sub(&live, 1);
        if (atomic_load(&sweep_from) >= 0 && h->serial < atomic_load(&sweep_from) && getenv("BDH_FAULTS_VERBOSE")) {
            void *bt[8];
            fprintf(stderr, "  freeing a block made before the call (serial %ld):\n", h->serial);
            backtrace_symbols_fd(bt, backtrace(bt, 8), 2);
        }
    }
    h->magic = 0;
    __libc_free(h->base);
}

SHIM void *realloc(void *user, size_t n)
{
    bool c;
    if (user && injected(__builtin_return_address(0), &c)) return errno = ENOMEM, NULL;
    char *p = __libc_malloc(n + HDR);
    if (!p) return NULL;
    const header *old = user ? (const header *)(const void *)((char *)user - HDR) : NULL;
    void *fresh = finish(p, p + HDR, n, old ? old->magic == MAGIC : from_library(__builtin_return_address(0)));
    if (old) {
        memcpy(fresh, user, old->size < n ? old->size : n);
        free(user);
    }
    return fresh;
}

/* ---- the sweep */

#define TINY TU_DATA "/golden/tiny.model.safetensors"

typedef bdh_status (*op_fn)(void *ctx);

/* Runs op with the n-th library allocation failing, for n = 0, 1, ...
 * until it succeeds; check() verifies what a failure left. Returns how
 * many allocations the op made. */
static long sweep(const char *name, op_fn op, void *ctx, void (*undo)(void *ctx), void (*check)(void *ctx))
{
    for (long n = 0;; n++) {
        const long before = atomic_load(&live);
        atomic_store(&sweep_from, atomic_load(&serial));
        atomic_store(&countdown, n);
        const bdh_status rc = op(ctx);
        atomic_store(&countdown, -1);
        atomic_store(&sweep_from, -1);
        if (rc == BDH_OK) {
            if (undo) undo(ctx);
            assert_int_equal(atomic_load(&live), before);
            printf("  %-12s %ld allocations, each failure handled\n", name, n);
            return n;
        }
        if (rc != BDH_ERR_OUT_OF_MEMORY) fprintf(stderr, "%s, allocation %ld: %s (%s)\n", name, n, bdh_status_name(rc), bdh_last_error());
        assert_int_equal(rc, BDH_ERR_OUT_OF_MEMORY);
        assert_true(strlen(bdh_last_error()) > 0);
        if (check) check(ctx);
        if (atomic_load(&live) != before) fprintf(stderr, "%s, allocation %ld failed: %ld blocks leaked\n", name, n, atomic_load(&live) - before);
        assert_int_equal(atomic_load(&live), before);
    }
}

typedef struct ctx {
    bdh_model *m, *out_m;
    bdh_state *s, *t, *out_s;
    bdh_generator *g;
    void *blob, *blob_t;
    size_t blob_len, blob_t_len;
} ctx;

static void *saved(const bdh_state *s, size_t *len)
{
    *len = bdh_state_save_size(s);
    void *b = __libc_malloc(*len);
    assert_int_equal(bdh_state_save(s, b, *len, NULL), BDH_OK);
    return b;
}

/* the state is byte for byte as before the failed call */
static void state_unchanged(void *p)
{
    ctx *c = p;
    size_t len;
    void *now = saved(c->s, &len);
    assert_int_equal(len, c->blob_len);
    assert_memory_equal(now, c->blob, len);
    __libc_free(now);
}

static bdh_status op_load(void *p)
{
    ctx *c = p;
    c->out_m = (bdh_model *)p;
    bdh_model_params mp = bdh_model_default_params();
    mp.n_threads = 2;
    const bdh_status rc = bdh_model_load(TINY, &mp, &c->out_m);
    if (rc != BDH_OK) assert_null(c->out_m);
    return rc;
}
static void undo_load(void *p) { bdh_model_free(((ctx *)p)->out_m); }

static bdh_status op_load_q8(void *p)
{
    ctx *c = p;
    c->out_m = (bdh_model *)p;
    bdh_model_params mp = bdh_model_default_params();
    mp.weight_type = BDH_WEIGHTS_Q8_0;
    mp.kernels = BDH_KERNELS_REFERENCE;
    const bdh_status rc = bdh_model_load(TINY, &mp, &c->out_m);
    if (rc != BDH_OK) assert_null(c->out_m);
    return rc;
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
    size_t len;
    void *now = saved(c->t, &len);
    assert_int_equal(len, c->blob_t_len);
    assert_memory_equal(now, c->blob_t, len);
    __libc_free(now);
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
    return bdh_model_quantize(TINY, "/tmp/bdh-faults-q8.safetensors", BDH_WEIGHTS_Q8_0);
}

static bdh_status op_merge(void *p)
{
    (void)p;
    return bdh_model_merge(TINY, TINY, "/tmp/bdh-faults-merge.safetensors", NULL);
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
    assert_true(sweep("merge", op_merge, &c, NULL, NULL) > 5);
    /* prefill allocates its chunk buffers first; steps allocate nothing (the sweep shows it) */
    assert_true(sweep("prefill", op_prefill, &c, NULL, t_unchanged) > 0);
    assert_int_equal(sweep("step", op_step, &c, NULL, NULL), 0);
    assert_int_equal(sweep("step_batch", op_batch, &c, NULL, NULL), 0);

    unlink("/tmp/bdh-faults-q8.safetensors");
    unlink("/tmp/bdh-faults-merge.safetensors");
    __libc_free(c.blob);
    __libc_free(c.blob_t);
    bdh_state_free(c.s);
    bdh_state_free(c.t);
    bdh_model_free(c.m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_every_allocation_can_fail)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
