/* HTTP for bdh serve: libmicrohttpd with a thread per connection, so a
 * connection may block while its completion runs (the scheduler does the
 * work; this thread waits, watches its socket for a client that left, and
 * writes). Routes (docs/server.md, "API"):
 *
 *   POST   /v1/completions           completions, plain or streamed (SSE)
 *   POST   /v1/chat/completions      the same, the prompt rendered from chat messages
 *   GET    /v1/models                the one model
 *   GET    /health                   200 {"status":"ok"}, 503 while stopping
 *   GET    /metrics                  Prometheus text
 *   GET    /v1/sessions/ID           position, size, last use
 *   DELETE /v1/sessions/ID
 *   POST   /v1/sessions/ID/fork      {"id": NEW}
 */
#define _GNU_SOURCE /* POLLRDHUP */
#include "serve.h"

#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* how often a waiting connection looks at its socket */
#define POLL_SECONDS 0.05
/* seconds a client is told to wait after a 503 */
#define RETRY_AFTER "1"

struct server {
    const serve_config *cfg;
    bdh_model *model;
    int32_t vocab;
    batch *batch;
    sessions *sessions;
    struct MHD_Daemon *daemon;
    int port;
    int64_t started;
    atomic_bool quiescing;
    atomic_int calls; /* completions not yet freed */
};

/* One connection's request body. */
typedef struct request {
    strbuf body;
    bool too_big;
} request;

/* One completion, from parse to the last byte sent. */
typedef struct call {
    server *srv;
    completion_request req;
    job job;
    session *sess;
    bdh_state *own;   /* the state of a request without a session */
    bool released;    /* session stored and let go */
    int fd;
    char id[40];
    int64_t created;
    size_t sent;      /* bytes of job.out already turned into text */
    size_t seen;      /* bytes of job.out looked at (some may be held back) */
    strbuf pending;   /* SSE bytes not yet handed to MHD */
    size_t pending_off;
    bool last_queued; /* the final chunk and [DONE] are in pending */
} call;

/* ------------------------------------------------------------ responses */

static enum MHD_Result send_body(struct MHD_Connection *c, int status, char *body, const char *type)
{
    if (!body) {
        status = 500;
        body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
        if (!body) return MHD_NO;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    if (status == 503) MHD_add_response_header(r, "Retry-After", RETRY_AFTER);
    if (status == 405) MHD_add_response_header(r, "Allow", "GET, POST, DELETE");
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    metrics_response(status);
    return ok;
}

static enum MHD_Result send_json(struct MHD_Connection *c, int status, char *json)
{
    return send_body(c, status, json, "application/json");
}

static enum MHD_Result send_error(struct MHD_Connection *c, const api_error *e)
{
    return send_json(c, e->status, api_error_json(e));
}

static enum MHD_Result fail(struct MHD_Connection *c, int status, const char *type, const char *code, const char *fmt,
                            const char *arg)
{
    api_error e;
    api_error_set(&e, status, type, code, NULL, fmt, arg);
    return send_error(c, &e);
}

/* ------------------------------------------------------------ completions */

/* The peer closed its end (or the socket failed): nobody reads any more. */
static bool client_gone(int fd)
{
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
    char c;
    return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static const char *finish_reason(finish_kind k)
{
    /* a time limit is a length limit (llama.cpp's server says the same) */
    return k == FINISH_STOP ? "stop" : "length";
}

/* Store the session (once) and let it go. */
static void release(call *k)
{
    if (k->released) return;
    k->released = true;
    char err[256];
    if (k->sess && sessions_release(k->srv->sessions, k->sess, err, sizeof err) != SESS_OK)
        fprintf(stderr, "bdh serve: session '%s' not stored (kept in memory, written again later): %s\n", k->req.session, err);
}

static void call_free(call *k)
{
    if (!k) return;
    release(k);
    if (k->job.finish == FINISH_CANCELLED) metrics_disconnect();
    bdh_state_free(k->own);
    job_destroy(&k->job);
    api_request_free(&k->req);
    strbuf_free(&k->pending);
    atomic_fetch_sub(&k->srv->calls, 1);
    free(k);
}

/* Wait for the job's end, cancelling it if the client leaves meanwhile. */
static void wait_end(call *k)
{
    bool told = false;
    while (!job_wait(&k->job, POLL_SECONDS))
        if (!told && client_gone(k->fd)) {
            atomic_store(&k->job.cancel, true);
            told = true;
        }
}

/* The generated bytes (the stop sequence cut off) as text, when finished. */
static char *final_text(call *k, size_t *len, strbuf *text)
{
    const size_t n = k->job.n_out - k->job.stop_match;
    utf8_text(k->job.out, n, true, text);
    *len = text->n;
    return text->p ? text->p : "";
}

static completion_result result_base(const call *k)
{
    completion_result r = {.id = k->id, .created = k->created, .model = k->srv->cfg->model_name, .chat = k->req.chat,
                           .chunk = k->req.stream};
    return r;
}

static int finished_status(const call *k, api_error *e)
{
    switch (k->job.finish) {
    case FINISH_REFUSED:
        api_error_set(e, 503, "server_error", "unavailable", NULL, "%s", k->job.error);
        return -1;
    case FINISH_ERROR:
        api_error_set(e, 500, "server_error", NULL, NULL, "%s", k->job.error);
        return -1;
    default: return 0;
    }
}

static enum MHD_Result answer_plain(struct MHD_Connection *c, call *k)
{
    wait_end(k);
    release(k);
    enum MHD_Result ok;
    api_error e;
    if (k->job.finish == FINISH_CANCELLED) {
        ok = MHD_NO; /* nobody to answer */
    } else if (finished_status(k, &e)) {
        ok = send_error(c, &e);
    } else {
        strbuf text = {0};
        completion_result r = result_base(k);
        r.text = final_text(k, &r.text_len, &text);
        r.finish_reason = finish_reason(k->job.finish);
        if (k->req.return_tokens) {
            r.tokens = k->job.out;
            r.n_tokens = k->job.n_out - k->job.stop_match;
        }
        r.usage = true;
        r.prompt_tokens = (int64_t)k->req.n_prompt;
        r.completion_tokens = (int64_t)k->job.n_out;
        ok = send_json(c, 200, text.failed ? NULL : api_completion_json(&r));
        strbuf_free(&text);
    }
    call_free(k);
    return ok;
}

/* Bytes at the end of out[0..n) that may begin a stop sequence: held back
 * until the next byte shows whether it does. A whole stop sequence is held
 * too: the byte completing it is published before the job is marked
 * finished, and it must never reach the client. */
static size_t stop_holdback(const call *k, const uint8_t *out, size_t n)
{
    size_t hold = 0;
    for (int i = 0; i < k->req.n_stop; i++)
        for (size_t l = k->req.stop_len[i]; l > hold; l--)
            if (l <= n && memcmp(out + n - l, k->req.stop[i], l) == 0) {
                hold = l;
                break;
            }
    return hold;
}

static void sse(call *k, char *json)
{
    if (!json) {
        k->pending.failed = true;
        return;
    }
    strbuf_put(&k->pending, "data: ", 6);
    strbuf_put(&k->pending, json, strlen(json));
    strbuf_put(&k->pending, "\n\n", 2);
    free(json);
}

/* Turn what the job has produced since the last call into SSE chunks. */
static void stream_progress(call *k)
{
    job *j = &k->job;
    pthread_mutex_lock(&j->mu);
    const finish_kind finish = j->finish;
    size_t upto = finish ? j->n_out - j->stop_match : j->n_out - stop_holdback(k, j->out, j->n_out);
    if (upto < k->sent) upto = k->sent;
    k->seen = j->n_out;
    strbuf raw = {0};
    strbuf_put(&raw, j->out + k->sent, upto - k->sent);
    pthread_mutex_unlock(&j->mu);

    strbuf text = {0};
    const size_t used = utf8_text((const uint8_t *)raw.p, raw.n, finish != FINISH_NONE, &text);
    completion_result r = result_base(k);
    if (text.n > 0) {
        r.text = text.p;
        r.text_len = text.n;
        if (k->req.return_tokens) {
            r.tokens = (const uint8_t *)raw.p;
            r.n_tokens = used;
        }
        sse(k, api_completion_json(&r));
    }
    k->sent += used;
    strbuf_free(&text);
    strbuf_free(&raw);
    if (finish == FINISH_NONE || finish == FINISH_CANCELLED) return;
    release(k); /* stored before the client reads [DONE] */
    api_error e;
    if (finished_status(k, &e)) {
        sse(k, api_error_json(&e));
    } else {
        completion_result last = result_base(k);
        last.text = "";
        last.finish_reason = finish_reason(finish);
        if (k->req.return_tokens) last.tokens = (const uint8_t *)"";
        last.usage = true;
        last.prompt_tokens = (int64_t)k->req.n_prompt;
        last.completion_tokens = (int64_t)j->n_out;
        sse(k, api_completion_json(&last));
    }
    strbuf_put(&k->pending, "data: [DONE]\n\n", 14);
    k->last_queued = true;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    call *k = cls;
    for (;;) {
        if (k->pending.failed) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (k->pending_off < k->pending.n) {
            size_t n = k->pending.n - k->pending_off;
            if (n > max) n = max;
            memcpy(buf, k->pending.p + k->pending_off, n);
            k->pending_off += n;
            return (ssize_t)n;
        }
        k->pending.n = k->pending_off = 0;
        if (k->last_queued) return MHD_CONTENT_READER_END_OF_STREAM;
        if (!job_wait_more(&k->job, k->seen, POLL_SECONDS)) {
            if (client_gone(k->fd)) atomic_store(&k->job.cancel, true);
            continue;
        }
        pthread_mutex_lock(&k->job.mu);
        const bool cancelled = k->job.finish == FINISH_CANCELLED;
        pthread_mutex_unlock(&k->job.mu);
        if (cancelled) {
            release(k);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        stream_progress(k);
    }
}

/* MHD is done with the stream (sent, or the connection died). */
static void stream_free(void *cls)
{
    call *k = cls;
    atomic_store(&k->job.cancel, true); /* a no-op when it has finished */
    while (!job_wait(&k->job, 1.0)) {}
    call_free(k);
}

static enum MHD_Result answer_stream(struct MHD_Connection *c, call *k)
{
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, k, stream_free);
    if (!r) {
        stream_free(k);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    if (k->req.chat) { /* a chat stream opens with the role (stream_read runs only after this) */
        completion_result first = result_base(k);
        first.text = "";
        first.role = true;
        sse(k, api_completion_json(&first));
    }
    enum MHD_Result ok = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    metrics_response(200);
    return ok;
}

static void make_id(char *id, size_t cap, const char *prefix)
{
    static atomic_ullong counter;
    snprintf(id, cap, "%s-%llx%06llx", prefix, (unsigned long long)now_unix(),
             atomic_fetch_add(&counter, 1) & 0xffffff);
}

/* Take a session (or a fresh state) for the call; 0 or an error answered. */
static int take_state(struct MHD_Connection *c, call *k, enum MHD_Result *ok)
{
    char err[256];
    if (!k->req.session[0]) {
        bdh_status rc = bdh_state_new(k->srv->model, &k->own);
        if (rc == BDH_OK) return 0;
        *ok = fail(c, 500, "server_error", NULL, "cannot create a state: %s", bdh_last_error());
        return -1;
    }
    int rc = sessions_acquire(k->srv->sessions, k->req.session, &k->sess, err, sizeof err);
    if (rc == SESS_OK) return 0;
    k->sess = NULL;
    if (rc == SESS_BUSY) *ok = fail(c, 409, "invalid_request_error", "session_busy", "%s", err);
    else if (rc == SESS_MISMATCH) *ok = fail(c, 409, "invalid_request_error", "session_model_mismatch", "%s", err);
    else *ok = fail(c, 500, "server_error", NULL, "%s", err);
    return -1;
}

static enum MHD_Result completions(struct MHD_Connection *c, server *srv, const request *rq, bool chat)
{
    if (atomic_load(&srv->quiescing))
        return fail(c, 503, "server_error", "unavailable", "%s", "the server is shutting down");
    call *k = calloc(1, sizeof *k);
    if (!k) return send_json(c, 500, NULL);
    k->srv = srv;
    atomic_fetch_add(&srv->calls, 1);
    api_error e;
    if ((chat ? api_parse_chat : api_parse_completion)(rq->body.p ? rq->body.p : "", rq->body.n, srv->cfg, srv->vocab,
                                                       &k->req, &e)) {
        free(k);
        atomic_fetch_sub(&srv->calls, 1);
        return send_error(c, &e);
    }
    if (!batch_reserve(srv->batch)) {
        api_request_free(&k->req);
        free(k);
        atomic_fetch_sub(&srv->calls, 1);
        return fail(c, 503, "server_error", "overloaded", "%s",
                    "all streams and queue places are taken; retry later");
    }
    enum MHD_Result ok = MHD_NO;
    if (take_state(c, k, &ok)) {
        batch_unreserve(srv->batch);
        api_request_free(&k->req);
        free(k);
        atomic_fetch_sub(&srv->calls, 1);
        return ok;
    }
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    k->fd = ci ? ci->connect_fd : -1;
    make_id(k->id, sizeof k->id, chat ? "chatcmpl" : "cmpl");
    k->created = now_unix();
    job *j = &k->job;
    j->state = k->sess ? session_state(k->sess) : k->own;
    j->prompt = k->req.prompt;
    j->n_prompt = k->req.n_prompt;
    j->max_tokens = k->req.max_tokens;
    j->sampler_params = k->req.sampler;
    j->stop = (const char(*)[MAX_STOP_BYTES + 1])k->req.stop;
    j->stop_len = k->req.stop_len;
    j->n_stop = k->req.n_stop;
    j->deadline = now_monotonic() + srv->cfg->timeout;
    metrics_tokens((int64_t)k->req.n_prompt, 0);
    batch_submit(srv->batch, j);
    return k->req.stream ? answer_stream(c, k) : answer_plain(c, k);
}

/* ------------------------------------------------------------ sessions */

static char *session_json(const char *id, const session_info *in)
{
    char buf[512];
    snprintf(buf, sizeof buf,
             "{\"id\":\"%s\",\"object\":\"session\",\"position\":%lld,\"bytes\":%zu,\"last_used\":%lld,"
             "\"in_memory\":%s,\"busy\":%s}",
             id, (long long)in->position, in->bytes, (long long)in->last_used, in->in_memory ? "true" : "false",
             in->busy ? "true" : "false"); /* ids are [A-Za-z0-9._-]: nothing to escape */
    return strdup(buf);
}

static enum MHD_Result session_failed(struct MHD_Connection *c, int rc, const char *err)
{
    if (rc == SESS_NOT_FOUND) return fail(c, 404, "invalid_request_error", "session_not_found", "%s", err);
    if (rc == SESS_BUSY) return fail(c, 409, "invalid_request_error", "session_busy", "%s", err);
    if (rc == SESS_EXISTS) return fail(c, 409, "invalid_request_error", "session_exists", "%s", err);
    return fail(c, 500, "server_error", NULL, "%s", err);
}

static enum MHD_Result session_route(struct MHD_Connection *c, server *srv, const char *method, const char *rest,
                                     const request *rq)
{
    char id[128], err[256];
    const char *slash = strchr(rest, '/');
    const size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    const bool fork = slash && strcmp(slash, "/fork") == 0;
    if (n >= sizeof id || (slash && !fork)) return fail(c, 404, "invalid_request_error", "not_found", "no route %s", rest);
    memcpy(id, rest, n);
    id[n] = '\0';
    if (!store_id_valid(id))
        return fail(c, 400, "invalid_request_error", "invalid_session_id", "%s",
                    "a session id is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'");
    session_info info;
    int rc;
    if (fork) {
        if (strcmp(method, "POST") != 0) return fail(c, 405, "invalid_request_error", NULL, "%s", "use POST");
        char dst[65];
        api_error e;
        if (api_parse_fork(rq->body.p ? rq->body.p : "", rq->body.n, dst, sizeof dst, &e)) return send_error(c, &e);
        if ((rc = sessions_fork(srv->sessions, id, dst, err, sizeof err)) != SESS_OK) return session_failed(c, rc, err);
        if ((rc = sessions_info(srv->sessions, dst, &info, err, sizeof err)) != SESS_OK) return session_failed(c, rc, err);
        return send_json(c, 200, session_json(dst, &info));
    }
    if (strcmp(method, "GET") == 0) {
        if ((rc = sessions_info(srv->sessions, id, &info, err, sizeof err)) != SESS_OK) return session_failed(c, rc, err);
        return send_json(c, 200, session_json(id, &info));
    }
    if (strcmp(method, "DELETE") == 0) {
        if ((rc = sessions_delete(srv->sessions, id, err, sizeof err)) != SESS_OK) return session_failed(c, rc, err);
        char buf[256];
        snprintf(buf, sizeof buf, "{\"id\":\"%s\",\"object\":\"session.deleted\",\"deleted\":true}", id);
        return send_json(c, 200, strdup(buf));
    }
    return fail(c, 405, "invalid_request_error", NULL, "%s", "use GET or DELETE (POST .../fork to fork)");
}

/* ------------------------------------------------------------ routing */

static enum MHD_Result route(struct MHD_Connection *c, server *srv, const char *url, const char *method,
                             const request *rq)
{
    const bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    if (strcmp(url, "/v1/completions") == 0)
        return post ? completions(c, srv, rq, false) : fail(c, 405, "invalid_request_error", NULL, "%s", "use POST");
    if (strcmp(url, "/v1/chat/completions") == 0)
        return post ? completions(c, srv, rq, true) : fail(c, 405, "invalid_request_error", NULL, "%s", "use POST");
    if (strcmp(url, "/v1/models") == 0)
        return get ? send_json(c, 200, api_models_json(srv->cfg->model_name, srv->started))
                   : fail(c, 405, "invalid_request_error", NULL, "%s", "use GET");
    if (strcmp(url, "/health") == 0) {
        if (!get) return fail(c, 405, "invalid_request_error", NULL, "%s", "use GET");
        return atomic_load(&srv->quiescing) ? send_json(c, 503, strdup("{\"status\":\"shutting down\"}"))
                                            : send_json(c, 200, strdup("{\"status\":\"ok\"}"));
    }
    if (strcmp(url, "/metrics") == 0)
        return get ? send_body(c, 200, metrics_text(srv->batch, srv->sessions), "text/plain; version=0.0.4")
                   : fail(c, 405, "invalid_request_error", NULL, "%s", "use GET");
    static const char prefix[] = "/v1/sessions/";
    if (strncmp(url, prefix, sizeof prefix - 1) == 0) return session_route(c, srv, method, url + sizeof prefix - 1, rq);
    return fail(c, 404, "invalid_request_error", "not_found", "no route %s", url);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *data, size_t *size, void **con_cls)
{
    server *srv = cls;
    request *rq = *con_cls;
    if (!rq) { /* headers only: refuse a declared oversized body before reading it */
        if (!(rq = calloc(1, sizeof *rq))) return MHD_NO;
        *con_cls = rq;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > srv->cfg->max_body) rq->too_big = true;
        if (!rq->too_big) return MHD_YES;
    }
    if (*size) {
        if (!rq->too_big && rq->body.n + *size > srv->cfg->max_body) {
            rq->too_big = true;
            strbuf_free(&rq->body);
        }
        if (!rq->too_big) strbuf_put(&rq->body, data, *size);
        *size = 0;
        return MHD_YES;
    }
    if (rq->too_big) {
        char limit[32];
        snprintf(limit, sizeof limit, "%zu", srv->cfg->max_body);
        return fail(c, 413, "invalid_request_error", "body_too_large", "the request body is over %s bytes (--max-body)", limit);
    }
    if (rq->body.failed) return send_json(c, 500, NULL);
    return route(c, srv, url, method, rq);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode why)
{
    request *rq = *con_cls;
    if (!rq) return;
    strbuf_free(&rq->body);
    free(rq);
    *con_cls = NULL;
}

/* ------------------------------------------------------------ life */

int server_start(const serve_config *cfg, bdh_model *model, batch *b, sessions *ss, server **out)
{
    server *srv = calloc(1, sizeof *srv);
    if (!srv) return -1;
    bdh_config mc;
    bdh_model_config(model, &mc);
    srv->cfg = cfg;
    srv->model = model;
    srv->vocab = mc.vocab_size;
    srv->batch = b;
    srv->sessions = ss;
    srv->started = now_unix();
    char port[16];
    snprintf(port, sizeof port, "%d", cfg->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    int gai = getaddrinfo(cfg->host, port, &hints, &ai);
    if (gai) {
        fprintf(stderr, "bdh: cannot use --host '%s': %s\n", cfg->host, gai_strerror(gai));
        free(srv);
        return -1;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    const unsigned limit = (unsigned)(cfg->max_streams + cfg->max_queue + 64); /* + room for GETs and 503s */
    srv->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                   MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_CONNECTION_LIMIT, limit,
                                   /* idle connections go; a request in progress never
                                      outlives --timeout (plus the drain) */
                                   MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(cfg->timeout + 60), MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!srv->daemon) {
        fprintf(stderr, "bdh: cannot listen on %s:%d (in use, or not an address of this machine?)\n", cfg->host, cfg->port);
        free(srv);
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? (int)di->port : cfg->port;
    *out = srv;
    return 0;
}

int server_port(const server *s) { return s->port; }

void server_quiesce(server *s)
{
    atomic_store(&s->quiescing, true);
    MHD_socket fd = MHD_quiesce_daemon(s->daemon);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

void server_stop(server *s, double wait_s)
{
    const double end = now_monotonic() + wait_s;
    while (atomic_load(&s->calls) > 0 && now_monotonic() < end) usleep(10000);
    MHD_stop_daemon(s->daemon);
    free(s);
}
