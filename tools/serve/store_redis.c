/* The Redis store, through hiredis: session ID is the string key
 * bdh:session:ID (the blob as is) and bdh:mtime:ID (Unix seconds of the last
 * write as decimal text), written together in one MULTI/EXEC. Redis runs a
 * command whole or not at all, so a reader sees the old blob or the new one,
 * and a client killed mid-SET leaves the old one (the server drops the partial
 * command with the connection). Several server processes on one Redis share
 * every session. */
#include "store_impl.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define KEY_PREFIX "bdh:session:"
#define MTIME_PREFIX "bdh:mtime:"
#define CONNECT_TIMEOUT_S 5
/* per socket read or write, not per command: a 200 MB state crosses a
 * 1 Gbit/s link in under 2 s */
#define COMMAND_TIMEOUT_S 30

typedef struct redis_store {
    redisContext *c;
    char host[256];
    int port;
    int db;
    long long bulk_limit; /* Redis's proto-max-bulk-len; 0: it did not say */
    char spec[320];       /* for messages */
} redis_store;

/* Digits only, value in [lo, hi]. */
static bool parse_number(const char *s, size_t n, long lo, long hi, long *out)
{
    if (n == 0 || n > 9) return false;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi) return false;
    *out = v;
    return true;
}

/* redis://HOST:PORT[/DB], HOST a name or IPv4 address. */
static int parse_spec(const char *spec, redis_store *r, char *err, size_t errlen)
{
    const char *form = "expected redis://HOST:PORT[/DB]";
    const char *host = spec + strlen("redis://");
    const char *colon = strchr(host, ':');
    if (strchr(host, '@')) return store_fail(err, errlen, "session store '%s': credentials are not supported (%s)", spec, form);
    if (!colon || colon == host) return store_fail(err, errlen, "session store '%s': no host or port (%s)", spec, form);
    size_t hn = (size_t)(colon - host);
    if (hn >= sizeof r->host) return store_fail(err, errlen, "session store '%s': host name too long", spec);
    for (size_t i = 0; i < hn; i++) {
        char c = host[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-'))
            return store_fail(err, errlen, "session store '%s': bad character in host (%s)", spec, form);
    }
    const char *port = colon + 1, *slash = strchr(port, '/');
    size_t pn = slash ? (size_t)(slash - port) : strlen(port);
    long v;
    if (!parse_number(port, pn, 1, 65535, &v))
        return store_fail(err, errlen, "session store '%s': port must be 1..65535 (%s)", spec, form);
    r->port = (int)v;
    r->db = 0;
    if (slash) {
        if (!parse_number(slash + 1, strlen(slash + 1), 0, INT_MAX, &v))
            return store_fail(err, errlen, "session store '%s': database must be a number (%s)", spec, form);
        r->db = (int)v;
    }
    memcpy(r->host, host, hn);
    r->host[hn] = '\0';
    snprintf(r->spec, sizeof r->spec, "%s", spec);
    return STORE_OK;
}

/* The reply's error, or the connection's. */
static int reply_fail(redis_store *r, const char *what, redisReply *reply, char *err, size_t errlen)
{
    int rc;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        rc = store_fail(err, errlen, "session store %s: %s: %s", r->spec, what, reply->str);
    else if (r->c && r->c->err)
        rc = store_fail(err, errlen, "session store %s: %s: %s", r->spec, what, r->c->errstr);
    else
        rc = store_fail(err, errlen, "session store %s: %s: unexpected reply", r->spec, what);
    if (reply) freeReplyObject(reply);
    return rc;
}

/* hiredis writes with write(2), so writing to a connection Redis has closed
 * raises SIGPIPE, whose default action ends the process. Around each
 * exchange SIGPIPE is blocked, and one raised meanwhile is taken back. */
typedef struct pipe_guard {
    sigset_t old;
    bool was_pending;
} pipe_guard;

static void guard_pipe(pipe_guard *g)
{
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &g->old);
    sigpending(&pending);
    g->was_pending = sigismember(&pending, SIGPIPE);
}

static void unguard_pipe(pipe_guard *g)
{
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigpending(&pending);
    if (!g->was_pending && sigismember(&pending, SIGPIPE)) {
        struct timespec zero = {0, 0};
        sigtimedwait(&set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* Timeouts and SELECT on a fresh connection, then the largest value Redis
 * takes (CONFIG can be disabled, as on managed Redis: then unknown). */
static int prepare(redis_store *r, char *err, size_t errlen)
{
    struct timeval tv = {COMMAND_TIMEOUT_S, 0};
    if (redisSetTimeout(r->c, tv) != REDIS_OK) return reply_fail(r, "setting the timeout", NULL, err, errlen);
    redisReply *reply = redisCommand(r->c, "SELECT %d", r->db);
    if (!reply || reply->type != REDIS_REPLY_STATUS) return reply_fail(r, "SELECT", reply, err, errlen);
    freeReplyObject(reply);
    reply = redisCommand(r->c, "CONFIG GET proto-max-bulk-len");
    if (!reply) return reply_fail(r, "CONFIG GET", reply, err, errlen);
    r->bulk_limit = 0;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 && reply->element[1]->type == REDIS_REPLY_STRING)
        r->bulk_limit = strtoll(reply->element[1]->str, NULL, 10);
    freeReplyObject(reply);
    return STORE_OK;
}

int store_redis_open(const char *spec, void **impl, char *err, size_t errlen)
{
    redis_store *r = calloc(1, sizeof *r);
    if (!r) return store_fail(err, errlen, "session store: out of memory");
    if (parse_spec(spec, r, err, errlen) != STORE_OK) {
        free(r);
        return STORE_ERROR;
    }
    struct timeval tv = {CONNECT_TIMEOUT_S, 0};
    pipe_guard g;
    guard_pipe(&g);
    r->c = redisConnectWithTimeout(r->host, r->port, tv);
    int rc = !r->c ? store_fail(err, errlen, "session store %s: out of memory", spec)
           : r->c->err ? store_fail(err, errlen, "session store %s: cannot connect: %s", spec, r->c->errstr)
                       : prepare(r, err, errlen);
    unguard_pipe(&g);
    if (rc != STORE_OK) {
        if (r->c) redisFree(r->c);
        free(r);
        return rc;
    }
    *impl = r;
    return STORE_OK;
}

static void redis_close(void *impl)
{
    redis_store *r = impl;
    redisFree(r->c);
    free(r);
}

static bool connection_lost(const redis_store *r)
{
    return r->c->err == REDIS_ERR_IO || r->c->err == REDIS_ERR_EOF;
}

static int reconnect(redis_store *r, char *err, size_t errlen)
{
    if (redisReconnect(r->c) != REDIS_OK)
        return store_fail(err, errlen, "session store %s: reconnecting: %s", r->spec, r->c->errstr);
    return prepare(r, err, errlen);
}

/* Sends commands[0..n) in one pipeline and reads their n replies into
 * replies[]. A connection found broken (a Redis restart, an idle timeout, an
 * earlier failure) is reconnected and the pipeline sent once more: each use
 * here (GET, SCAN, a MULTI/EXEC) can be repeated safely. An error Redis
 * answered before closing is reported, not retried. */
static int exchange(redis_store *r, int n, const int *argc, const char **argv[], const size_t *argvlen[],
                    redisReply **replies, const char *what, char *err, size_t errlen)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        /* hiredis leaves a context with an error unusable */
        if (r->c->err && reconnect(r, err, errlen) != STORE_OK) return STORE_ERROR;
        for (int i = 0; i < n; i++) redisAppendCommandArgv(r->c, argc[i], argv[i], argvlen[i]);
        int got = 0;
        for (void *reply; got < n && redisGetReply(r->c, &reply) == REDIS_OK; got++) replies[got] = reply;
        if (got == n) return STORE_OK;
        redisReply *refused = NULL;
        for (int i = 0; i < got; i++) {
            if (!refused && replies[i]->type == REDIS_REPLY_ERROR) refused = replies[i];
            else freeReplyObject(replies[i]);
        }
        if (refused) return reply_fail(r, what, refused, err, errlen);
        if (!connection_lost(r)) break;
    }
    return reply_fail(r, what, NULL, err, errlen);
}

static int pipeline(redis_store *r, int n, const int *argc, const char **argv[], const size_t *argvlen[],
                    redisReply **replies, const char *what, char *err, size_t errlen)
{
    pipe_guard g;
    guard_pipe(&g);
    int rc = exchange(r, n, argc, argv, argvlen, replies, what, err, errlen);
    unguard_pipe(&g);
    return rc;
}

static int command(redis_store *r, int argc, const char **argv, const size_t *argvlen, redisReply **reply,
                   const char *what, char *err, size_t errlen)
{
    const char **av[1] = {argv};
    const size_t *al[1] = {argvlen};
    return pipeline(r, 1, &argc, av, al, reply, what, err, errlen);
}

static void keys(const char *id, char key[80], char mkey[80])
{
    snprintf(key, 80, KEY_PREFIX "%s", id);
    snprintf(mkey, 80, MTIME_PREFIX "%s", id);
}

/* MULTI, the body, EXEC: the body's replies come back as EXEC's array. */
static int transaction(redis_store *r, int n, const int *argc, const char **argv[], const size_t *argvlen[],
                       redisReply **exec, const char *what, char *err, size_t errlen)
{
    enum { MAX = 4 };
    const char *multi[] = {"MULTI"}, *execv[] = {"EXEC"};
    size_t multil[] = {5}, execl[] = {4};
    int ac[MAX + 2];
    const char **av[MAX + 2];
    const size_t *al[MAX + 2];
    ac[0] = 1, av[0] = multi, al[0] = multil;
    for (int i = 0; i < n; i++) ac[i + 1] = argc[i], av[i + 1] = argv[i], al[i + 1] = argvlen[i];
    ac[n + 1] = 1, av[n + 1] = execv, al[n + 1] = execl;
    redisReply *rep[MAX + 2];
    if (pipeline(r, n + 2, ac, av, al, rep, what, err, errlen) != STORE_OK) return STORE_ERROR;
    for (int i = 0; i < n + 1; i++) {
        if (rep[i]->type != REDIS_REPLY_STATUS) { /* OK, then QUEUED for each */
            int rc = reply_fail(r, what, rep[i], err, errlen);
            for (int j = 0; j < n + 2; j++)
                if (j != i) freeReplyObject(rep[j]);
            return rc;
        }
        freeReplyObject(rep[i]);
    }
    redisReply *e = rep[n + 1];
    if (e->type != REDIS_REPLY_ARRAY || e->elements != (size_t)n) return reply_fail(r, what, e, err, errlen);
    for (size_t i = 0; i < e->elements; i++)
        if (e->element[i]->type == REDIS_REPLY_ERROR) {
            int rc = store_fail(err, errlen, "session store %s: %s: %s", r->spec, what, e->element[i]->str);
            freeReplyObject(e);
            return rc;
        }
    *exec = e;
    return STORE_OK;
}

static int redis_put(void *impl, const char *id, const void *blob, size_t len, char *err, size_t errlen)
{
    redis_store *r = impl;
    /* Redis would drop the connection mid-value; say why before sending it */
    if (r->bulk_limit > 0 && (unsigned long long)len > (unsigned long long)r->bulk_limit)
        return store_fail(err, errlen,
                          "session store %s: a %zu-byte state is over Redis's proto-max-bulk-len (%lld bytes; "
                          "512 MB by default, set in redis.conf)",
                          r->spec, len, r->bulk_limit);
    char key[80], mkey[80], now[24];
    keys(id, key, mkey);
    snprintf(now, sizeof now, "%lld", (long long)time(NULL));
    const char *set[] = {"SET", key, blob}, *mset[] = {"SET", mkey, now};
    size_t setl[] = {3, strlen(key), len}, msetl[] = {3, strlen(mkey), strlen(now)};
    int ac[] = {3, 3};
    const char **av[] = {set, mset};
    const size_t *al[] = {setl, msetl};
    redisReply *e = NULL;
    if (transaction(r, 2, ac, av, al, &e, "SET", err, errlen) != STORE_OK) return STORE_ERROR;
    freeReplyObject(e);
    return STORE_OK;
}

static int redis_get(void *impl, const char *id, void **blob, size_t *len, char *err, size_t errlen)
{
    redis_store *r = impl;
    char key[80], mkey[80];
    keys(id, key, mkey);
    const char *argv[] = {"GET", key};
    size_t argvlen[] = {3, strlen(key)};
    redisReply *reply;
    if (command(r, 2, argv, argvlen, &reply, "GET", err, errlen) != STORE_OK) return STORE_ERROR;
    if (reply->type == REDIS_REPLY_NIL) {
        freeReplyObject(reply);
        return STORE_NOT_FOUND;
    }
    if (reply->type != REDIS_REPLY_STRING) return reply_fail(r, "GET", reply, err, errlen);
    char *buf = malloc(reply->len ? reply->len : 1);
    if (!buf) {
        freeReplyObject(reply);
        return store_fail(err, errlen, "session store %s: out of memory reading %s", r->spec, key);
    }
    memcpy(buf, reply->str, reply->len);
    *blob = buf;
    *len = reply->len;
    freeReplyObject(reply);
    return STORE_OK;
}

/* Not found when the blob key is missing (a lone mtime key is removed all
 * the same). A DEL repeated after a lost reply answers not found. */
static int redis_del(void *impl, const char *id, char *err, size_t errlen)
{
    redis_store *r = impl;
    char key[80], mkey[80];
    keys(id, key, mkey);
    const char *ex[] = {"EXISTS", key}, *del[] = {"DEL", key, mkey};
    size_t exl[] = {6, strlen(key)}, dell[] = {3, strlen(key), strlen(mkey)};
    int ac[] = {2, 3};
    const char **av[] = {ex, del};
    const size_t *al[] = {exl, dell};
    redisReply *e = NULL;
    if (transaction(r, 2, ac, av, al, &e, "DEL", err, errlen) != STORE_OK) return STORE_ERROR;
    if (e->element[0]->type != REDIS_REPLY_INTEGER) return reply_fail(r, "DEL", e, err, errlen);
    int rc = e->element[0]->integer == 1 ? STORE_OK : STORE_NOT_FOUND;
    freeReplyObject(e);
    return rc;
}

static int redis_stat(void *impl, const char *id, store_info *info, char *err, size_t errlen)
{
    redis_store *r = impl;
    char key[80], mkey[80];
    keys(id, key, mkey);
    const char *ex[] = {"EXISTS", key}, *sl[] = {"STRLEN", key}, *mt[] = {"GET", mkey};
    size_t exl[] = {6, strlen(key)}, sll[] = {6, strlen(key)}, mtl[] = {3, strlen(mkey)};
    int ac[] = {2, 2, 2};
    const char **av[] = {ex, sl, mt};
    const size_t *al[] = {exl, sll, mtl};
    redisReply *e = NULL;
    if (transaction(r, 3, ac, av, al, &e, "STRLEN", err, errlen) != STORE_OK) return STORE_ERROR;
    redisReply *exists = e->element[0], *bytes = e->element[1], *mtime = e->element[2];
    if (exists->type != REDIS_REPLY_INTEGER || bytes->type != REDIS_REPLY_INTEGER)
        return reply_fail(r, "STRLEN", e, err, errlen);
    int rc = STORE_NOT_FOUND;
    if (exists->integer == 1) {
        info->bytes = (size_t)bytes->integer;
        /* a key written by another tool has no mtime: 0 */
        info->mtime = mtime->type == REDIS_REPLY_STRING ? strtoll(mtime->str, NULL, 10) : 0;
        rc = STORE_OK;
    }
    freeReplyObject(e);
    return rc;
}

/* SCAN, not KEYS: Redis answers other clients between the steps. A key
 * that exists throughout is counted; while Redis resizes its table a key can
 * come back twice, so the count is for /metrics, not for decisions. */
static int64_t redis_count(void *impl, char *err, size_t errlen)
{
    redis_store *r = impl;
    char cursor[32] = "0";
    int64_t n = 0;
    do {
        const char *argv[] = {"SCAN", cursor, "MATCH", KEY_PREFIX "*", "COUNT", "1000"};
        size_t argvlen[] = {4, strlen(cursor), 5, strlen(KEY_PREFIX "*"), 5, 4};
        redisReply *reply;
        if (command(r, 6, argv, argvlen, &reply, "SCAN", err, errlen) != STORE_OK) return STORE_ERROR;
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || reply->element[0]->type != REDIS_REPLY_STRING ||
            reply->element[1]->type != REDIS_REPLY_ARRAY || reply->element[0]->len >= sizeof cursor)
            return reply_fail(r, "SCAN", reply, err, errlen);
        memcpy(cursor, reply->element[0]->str, reply->element[0]->len + 1);
        n += (int64_t)reply->element[1]->elements;
        freeReplyObject(reply);
    } while (strcmp(cursor, "0") != 0);
    return n;
}

const store_ops store_redis_ops = {
    .kind = "redis", .get = redis_get, .put = redis_put, .del = redis_del, .stat = redis_stat, .count = redis_count,
    .close = redis_close,
};
