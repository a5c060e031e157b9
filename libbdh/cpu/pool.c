/* A fixed pool of worker threads, created once per model. bdh_pool_run()
 * runs one function on every thread (the caller is thread 0) and returns when
 * all are done. Workers spin briefly before sleeping, because a decode step
 * dispatches a few short phases per layer back to back.
 *
 * A model may be stepped from several threads at once (one state each): the
 * pool serves one caller at a time, and a caller that finds it busy runs its
 * phase alone on its own thread, so independent streams still run in
 * parallel and nobody waits. */
#include "cpu.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#define SPIN_ROUNDS 20000

typedef struct worker_arg {
    struct bdh_pool *pool;
    int tid;
} worker_arg;

struct bdh_pool {
    int n_threads;
    pthread_t *threads;
    worker_arg *args;          /* [n] what each worker is started with */
    atomic_bool busy;          /* a caller owns the pool */
    atomic_uint generation;    /* bumped to start a job */
    atomic_int pending;        /* workers still running the job */
    bool stop;
    bdh_task_fn fn;
    void *ctx;
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
};


/* Wait until generation moves past seen; false when the pool is stopping. */
static bool wait_for_job(bdh_pool *p, unsigned seen)
{
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        if (atomic_load_explicit(&p->generation, memory_order_acquire) != seen) return true;
        if (i % 64 == 63) sched_yield();
    }
    pthread_mutex_lock(&p->lock);
    while (atomic_load(&p->generation) == seen && !p->stop) pthread_cond_wait(&p->wake, &p->lock);
    bool go = !p->stop;
    pthread_mutex_unlock(&p->lock);
    return go;
}

static void *worker(void *arg)
{
    const worker_arg a = *(const worker_arg *)arg; /* owned by the pool */
    bdh_pool *p = a.pool;
    unsigned seen = 0;
    while (wait_for_job(p, seen)) {
        seen = atomic_load(&p->generation);
        p->fn(p->ctx, a.tid, p->n_threads);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->lock);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->lock);
        }
    }
    return NULL;
}

void bdh_pool_free(bdh_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p->args);
    free(p);
}

bdh_status bdh_pool_new(int n_threads, bdh_pool **out)
{
    *out = NULL;
    bdh_pool *p = calloc(1, sizeof *p);
    if (p) {
        p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
        p->args = calloc((size_t)n_threads, sizeof(worker_arg));
    }
    if (!p || !p->threads || !p->args) {
        if (p) {
            free(p->threads);
            free(p->args);
        }
        free(p);
        return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory creating the thread pool");
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    p->n_threads = 1;
    /* fewer workers when a thread cannot be created: slower, not wrong */
    for (int i = 1; i < n_threads; i++) {
        p->args[i] = (worker_arg){p, i};
        if (pthread_create(&p->threads[i], NULL, worker, &p->args[i]) != 0) break;
        p->n_threads++;
    }
    *out = p;
    return BDH_OK;
}

void bdh_pool_run(bdh_pool *p, bdh_task_fn fn, void *ctx)
{
    bool expected = false;
    if (!p || p->n_threads == 1 || !atomic_compare_exchange_strong(&p->busy, &expected, true)) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->pending, p->n_threads - 1);
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);

    fn(ctx, 0, p->n_threads);

    for (int i = 0; i < SPIN_ROUNDS && atomic_load_explicit(&p->pending, memory_order_acquire) > 0; i++)
        if (i % 64 == 63) sched_yield();
    pthread_mutex_lock(&p->lock);
    while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
    atomic_store(&p->busy, false);
}

int bdh_pool_threads(const bdh_pool *p) { return p ? p->n_threads : 1; }
