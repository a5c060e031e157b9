/* GET /metrics: Prometheus text exposition format 0.0.4
 * (docs/server.md, "Metrics"). Counters are process-wide atomics. */
#include "serve.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int CODES[] = {200, 400, 404, 405, 409, 413, 500, 503};
enum { N_CODES = sizeof CODES / sizeof *CODES };
static atomic_llong responses[N_CODES + 1]; /* the last: any other code */
static atomic_llong prompt_tokens, generated_tokens, disconnects, batch_steps, batch_max;

/* tokens/s over the last RATE_WINDOW whole seconds: per-second buckets */
enum { RATE_WINDOW = 10, BUCKETS = 16 };
static atomic_llong bucket_count[BUCKETS], bucket_second[BUCKETS];

void metrics_response(int status)
{
    int i = 0;
    while (i < N_CODES && CODES[i] != status) i++;
    atomic_fetch_add(&responses[i], 1);
}

void metrics_tokens(int64_t prompt, int64_t generated)
{
    atomic_fetch_add(&prompt_tokens, prompt);
    (void)generated; /* counted one by one as they are made */
}

void metrics_generated_token(void)
{
    atomic_fetch_add(&generated_tokens, 1);
    const long long sec = (long long)now_monotonic();
    const int b = (int)(sec % BUCKETS);
    if (atomic_load(&bucket_second[b]) != sec) { /* only the scheduler thread writes */
        atomic_store(&bucket_count[b], 0);
        atomic_store(&bucket_second[b], sec);
    }
    atomic_fetch_add(&bucket_count[b], 1);
}

void metrics_batch(int n)
{
    atomic_fetch_add(&batch_steps, 1);
    if (n > atomic_load(&batch_max)) atomic_store(&batch_max, n); /* only the scheduler writes */
}

void metrics_disconnect(void) { atomic_fetch_add(&disconnects, 1); }

static double tokens_per_second(void)
{
    const long long now = (long long)now_monotonic();
    long long n = 0;
    for (long long s = now - RATE_WINDOW; s < now; s++) {
        const int b = (int)(s % BUCKETS);
        if (atomic_load(&bucket_second[b]) == s) n += atomic_load(&bucket_count[b]);
    }
    return (double)n / RATE_WINDOW;
}

char *metrics_text(batch *b, sessions *ss)
{
    int active, queued;
    int64_t in_memory, stored;
    size_t memory_bytes;
    batch_counts(b, &active, &queued);
    sessions_counts(ss, &in_memory, &memory_bytes, &stored);
    strbuf t = {0};
    char line[256];
#define OUT(...) (snprintf(line, sizeof line, __VA_ARGS__), strbuf_put(&t, line, strlen(line)))
    OUT("# HELP bdh_requests_total HTTP responses sent, by status code.\n# TYPE bdh_requests_total counter\n");
    for (int i = 0; i <= N_CODES; i++) {
        const long long n = atomic_load(&responses[i]);
        if (i < N_CODES) OUT("bdh_requests_total{code=\"%d\"} %lld\n", CODES[i], n);
        else OUT("bdh_requests_total{code=\"other\"} %lld\n", n);
    }
    OUT("# HELP bdh_prompt_tokens_total Prompt tokens of completions accepted.\n# TYPE bdh_prompt_tokens_total counter\n");
    OUT("bdh_prompt_tokens_total %lld\n", (long long)atomic_load(&prompt_tokens));
    OUT("# HELP bdh_generated_tokens_total Tokens generated.\n# TYPE bdh_generated_tokens_total counter\n");
    OUT("bdh_generated_tokens_total %lld\n", (long long)atomic_load(&generated_tokens));
    OUT("# HELP bdh_tokens_per_second Tokens generated per second, over the last %d seconds.\n"
        "# TYPE bdh_tokens_per_second gauge\n", RATE_WINDOW);
    OUT("bdh_tokens_per_second %.1f\n", tokens_per_second());
    OUT("# HELP bdh_batch_steps_total bdh_step_batch calls (one per decode round).\n"
        "# TYPE bdh_batch_steps_total counter\n");
    OUT("bdh_batch_steps_total %lld\n", (long long)atomic_load(&batch_steps));
    OUT("# HELP bdh_batch_size_max Most streams one bdh_step_batch call has advanced.\n"
        "# TYPE bdh_batch_size_max gauge\n");
    OUT("bdh_batch_size_max %lld\n", (long long)atomic_load(&batch_max));
    OUT("# HELP bdh_active_streams Completions generating now.\n# TYPE bdh_active_streams gauge\n");
    OUT("bdh_active_streams %d\n", active);
    OUT("# HELP bdh_queue_length Completions waiting for a stream.\n# TYPE bdh_queue_length gauge\n");
    OUT("bdh_queue_length %d\n", queued);
    OUT("# HELP bdh_client_disconnects_total Completions whose client went away before the end.\n"
        "# TYPE bdh_client_disconnects_total counter\n");
    OUT("bdh_client_disconnects_total %lld\n", (long long)atomic_load(&disconnects));
    OUT("# HELP bdh_sessions_in_memory Session states held in memory.\n# TYPE bdh_sessions_in_memory gauge\n");
    OUT("bdh_sessions_in_memory %lld\n", (long long)in_memory);
    OUT("# HELP bdh_session_memory_bytes Bytes of the session states held in memory.\n"
        "# TYPE bdh_session_memory_bytes gauge\n");
    OUT("bdh_session_memory_bytes %zu\n", memory_bytes);
    if (stored >= 0) {
        OUT("# HELP bdh_sessions_stored Sessions in the store.\n# TYPE bdh_sessions_stored gauge\n");
        OUT("bdh_sessions_stored %lld\n", (long long)stored);
    }
#undef OUT
    if (t.failed) {
        strbuf_free(&t);
        return NULL;
    }
    return t.p;
}
