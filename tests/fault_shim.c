/* A malloc shim that fails the n-th allocation made by libbdh or cJSON
 * (found by the caller's address, so OpenBLAS, Python and the C library go
 * untouched) and counts the blocks they hold. Linked into test_faults, and
 * built as libfaultshim.so for LD_PRELOAD under Python
 * (bindings/python/tests/test_faults.py), both driven by the calls in
 * fault_shim.h. glibc lets a program or a preloaded object define malloc
 * and friends. Not for the sanitizers, which own malloc themselves. */
#define _GNU_SOURCE
#include "fault_shim.h"

#include <dlfcn.h>
#include <execinfo.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    bool c; /* realloc(NULL, n) is a malloc, and fails like one */
    if (injected(__builtin_return_address(0), &c)) return errno = ENOMEM, NULL;
    char *p = __libc_malloc(n + HDR);
    if (!p) return NULL;
    const header *old = user ? (const header *)(const void *)((char *)user - HDR) : NULL;
    void *fresh = finish(p, p + HDR, n, old ? old->magic == MAGIC : c);
    if (old) {
        memcpy(fresh, user, old->size < n ? old->size : n);
        free(user);
    }
    return fresh;
}

/* ---- control */

void fault_arm(long n)
{
    atomic_store(&sweep_from, atomic_load(&serial));
    atomic_store(&countdown, n);
}

void fault_disarm(void)
{
    atomic_store(&countdown, -1);
    atomic_store(&sweep_from, -1);
}

long fault_live(void) { return atomic_load(&live); }
long fault_allocations(void) { return atomic_load(&serial); }

void *fault_raw_malloc(size_t n) { return __libc_malloc(n); }
void fault_raw_free(void *p) { __libc_free(p); }
