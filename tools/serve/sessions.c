/* Sessions (docs/server.md, "Sessions"): a conversation's state, kept
 * between requests.
 *
 * Write-through: every request's end stores the session (store_put, atomic
 * in both stores), so a crash loses at most the turn in flight. Memory is a
 * cache in front of the store: idle states stay hot under the --memory
 * budget and the least recently used are dropped (they are stored already).
 * A state whose write failed stays hot ("dirty") and is written again at
 * its next release and at shutdown.
 *
 * With a shared store (Redis) another replica may have moved a session on,
 * so no idle state is kept: every request reads the session afresh.
 *
 * One request holds a session at a time (the other gets 409). One lock
 * covers the table and the store (the store wants one caller at a time);
 * the scheduler never takes it, so store I/O never stalls a stream. */
#include "serve.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The blob in the store: this header, then bdh_state_save's bytes
 * (docs/server-stores.md). Version 2 added the history (history.c); a
 * version 1 blob still loads, its history unknown. */
#define BLOB_MAGIC "BDHSESS2"
#define BLOB_MAGIC_V1 "BDHSESS1"
enum { HEADER_BYTES = 48, HEADER_BYTES_V1 = 32 };

/* The header's fields, after the magic */
typedef struct blob_header {
    int64_t last_used, position;
    history hist;
    size_t header_bytes;
} blob_header;

struct session {
    char id[65];
    bdh_state *state;
    bool busy, dirty;
    int64_t position, last_used;
    history hist;
    size_t blob_bytes;
    uint64_t tick; /* last use, for LRU */
    session *next;
};

struct sessions {
    bdh_model *model;
    store *st;
    size_t memory, state_bytes;
    bool shared;
    pthread_mutex_t mu;
    session *list;
    int64_t n_hot;
    uint64_t tick;
};

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* The header of a stored blob (either version); SESS_ERROR, said in err,
 * when it is not one of ours. */
static int parse_header(const void *blob, size_t len, blob_header *h, char *err, size_t errlen)
{
    const uint8_t *p = blob;
    const bool v2 = len >= HEADER_BYTES && memcmp(p, BLOB_MAGIC, 8) == 0;
    const bool v1 = len >= HEADER_BYTES_V1 && memcmp(p, BLOB_MAGIC_V1, 8) == 0;
    h->header_bytes = v2 ? HEADER_BYTES : HEADER_BYTES_V1;
    if ((!v1 && !v2) || get_u64(p + 24) != len - h->header_bytes) {
        snprintf(err, errlen, "the stored session is not a bdh serve session");
        return SESS_ERROR;
    }
    h->last_used = (int64_t)get_u64(p + 8);
    h->position = (int64_t)get_u64(p + 16);
    if (v2) {
        h->hist.hash = get_u64(p + 32);
        h->hist.position = (int64_t)get_u64(p + 40);
    } else {
        history_invalidate(&h->hist);
    }
    return SESS_OK;
}

/* SESS_BUSY, said in err: another request holds session id. */
static int busy(const char *id, char *err, size_t errlen)
{
    snprintf(err, errlen, "session '%s' is in use by another request", id);
    return SESS_BUSY;
}

/* header + saved state, malloc'd */
static void *make_blob(const bdh_state *st, int64_t last_used, const history *hist, size_t *len, char *err,
                       size_t errlen)
{
    const size_t n = bdh_state_save_size(st);
    uint8_t *blob = malloc(HEADER_BYTES + n);
    size_t written = 0;
    if (!blob) {
        snprintf(err, errlen, "out of memory saving a session (%zu bytes)", n);
        return NULL;
    }
    bdh_status rc = bdh_state_save(st, blob + HEADER_BYTES, n, &written);
    if (rc != BDH_OK) {
        snprintf(err, errlen, "cannot save the state: %s", bdh_last_error());
        free(blob);
        return NULL;
    }
    memcpy(blob, BLOB_MAGIC, 8);
    put_u64(blob + 8, (uint64_t)last_used);
    put_u64(blob + 16, (uint64_t)bdh_state_position(st));
    put_u64(blob + 24, written);
    put_u64(blob + 32, hist->hash);
    put_u64(blob + 40, (uint64_t)hist->position);
    *len = HEADER_BYTES + written;
    return blob;
}

int sessions_open(bdh_model *model, store *st, size_t memory, sessions **out, char *err, size_t errlen)
{
    sessions *ss = calloc(1, sizeof *ss);
    if (!ss) {
        snprintf(err, errlen, "out of memory");
        return SESS_ERROR;
    }
    ss->model = model;
    ss->st = st;
    ss->memory = memory;
    ss->state_bytes = bdh_model_state_bytes(model);
    ss->shared = strcmp(store_kind(st), "dir") != 0;
    pthread_mutex_init(&ss->mu, NULL);
    *out = ss;
    return SESS_OK;
}

static session *find(sessions *ss, const char *id)
{
    for (session *s = ss->list; s; s = s->next)
        if (strcmp(s->id, id) == 0) return s;
    return NULL;
}

/* The session under id in memory (NULL when none) in *out; SESS_BUSY,
 * said in err, while a request holds it. */
static int find_idle(sessions *ss, const char *id, session **out, char *err, size_t errlen)
{
    *out = find(ss, id);
    return *out && (*out)->busy ? busy(id, err, errlen) : SESS_OK;
}

static void drop(sessions *ss, session *s)
{
    for (session **p = &ss->list; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
    if (s->state) ss->n_hot--;
    bdh_state_free(s->state);
    free(s);
}

/* Write a session's state to the store; 0 or SESS_ERROR (dirty then). */
static int write_out(sessions *ss, session *s, char *err, size_t errlen)
{
    size_t len;
    void *blob = make_blob(s->state, s->last_used, &s->hist, &len, err, errlen);
    int rc = blob ? store_put(ss->st, s->id, blob, len, err, errlen) : STORE_ERROR;
    free(blob);
    s->dirty = rc != STORE_OK;
    if (rc == STORE_OK) s->blob_bytes = len;
    return rc == STORE_OK ? SESS_OK : SESS_ERROR;
}

/* Drop least recently used idle, clean states until the budget holds. */
static void enforce_budget(sessions *ss)
{
    while ((size_t)ss->n_hot * ss->state_bytes > ss->memory) {
        session *lru = NULL;
        for (session *s = ss->list; s; s = s->next)
            if (!s->busy && !s->dirty && (!lru || s->tick < lru->tick)) lru = s;
        if (!lru) return;
        drop(ss, lru);
    }
}

/* A session's state and history from a stored blob. */
static int load_blob(sessions *ss, const void *blob, size_t len, session *s, char *err, size_t errlen)
{
    blob_header h;
    if (parse_header(blob, len, &h, err, errlen) != SESS_OK) return SESS_ERROR;
    s->last_used = h.last_used;
    s->hist = h.hist;
    bdh_status rc = bdh_state_new(ss->model, &s->state);
    if (rc == BDH_OK &&
        (rc = bdh_state_load(s->state, (const uint8_t *)blob + h.header_bytes, len - h.header_bytes)) != BDH_OK) {
        bdh_state_free(s->state);
        s->state = NULL;
    }
    if (rc == BDH_OK) {
        if (!history_valid(&s->hist, s->state)) history_invalidate(&s->hist);
        return SESS_OK;
    }
    snprintf(err, errlen, "cannot load the stored session: %s", bdh_last_error());
    return rc == BDH_ERR_MODEL_MISMATCH ? SESS_MISMATCH : SESS_ERROR;
}

int sessions_acquire(sessions *ss, const char *id, session **out, char *err, size_t errlen)
{
    pthread_mutex_lock(&ss->mu);
    session *s;
    int rc = find_idle(ss, id, &s, err, errlen);
    if (rc == SESS_OK && !s) {
        s = calloc(1, sizeof *s);
        void *blob = NULL;
        size_t len = 0;
        int got = s ? store_get(ss->st, id, &blob, &len, err, errlen) : STORE_ERROR;
        if (!s) snprintf(err, errlen, "out of memory");
        if (got == STORE_OK) {
            rc = load_blob(ss, blob, len, s, err, errlen);
            s->blob_bytes = len;
        } else if (got == STORE_NOT_FOUND) {
            bdh_status st = bdh_state_new(ss->model, &s->state);
            s->last_used = now_unix();
            history_reset(&s->hist);
            if (st != BDH_OK) snprintf(err, errlen, "cannot create a state: %s", bdh_last_error());
            rc = st == BDH_OK ? SESS_OK : SESS_ERROR;
        } else {
            rc = SESS_ERROR;
        }
        free(blob);
        if (rc == SESS_OK) {
            snprintf(s->id, sizeof s->id, "%s", id);
            s->next = ss->list;
            ss->list = s;
            ss->n_hot++;
        } else if (s) {
            bdh_state_free(s->state);
            free(s);
        }
    }
    if (rc == SESS_OK) {
        s->busy = true;
        s->tick = ++ss->tick;
        *out = s;
    }
    pthread_mutex_unlock(&ss->mu);
    return rc;
}

bdh_state *session_state(session *s) { return s->state; }

history *session_history(session *s) { return &s->hist; }

int sessions_release(sessions *ss, session *s, char *err, size_t errlen)
{
    pthread_mutex_lock(&ss->mu);
    s->last_used = now_unix();
    s->position = bdh_state_position(s->state);
    int rc = write_out(ss, s, err, errlen);
    s->busy = false;
    s->tick = ++ss->tick;
    if (ss->shared && !s->dirty) drop(ss, s);
    else enforce_budget(ss);
    pthread_mutex_unlock(&ss->mu);
    return rc;
}

/* Info, or the blob, of a session not held in memory. */
static int stored(sessions *ss, const char *id, void **blob, size_t *len, char *err, size_t errlen)
{
    int rc = store_get(ss->st, id, blob, len, err, errlen);
    if (rc == STORE_NOT_FOUND) snprintf(err, errlen, "no session '%s'", id);
    return rc == STORE_OK ? SESS_OK : rc == STORE_NOT_FOUND ? SESS_NOT_FOUND : SESS_ERROR;
}

int sessions_info(sessions *ss, const char *id, session_info *info, char *err, size_t errlen)
{
    pthread_mutex_lock(&ss->mu);
    memset(info, 0, sizeof *info);
    int rc = SESS_OK;
    session *s = find(ss, id);
    if (s && (s->busy || !ss->shared)) {
        /* a busy state is being stepped by the scheduler: its numbers as of
         * its last release */
        if (!s->busy) s->position = bdh_state_position(s->state);
        info->position = s->position;
        info->bytes = s->blob_bytes;
        info->last_used = s->last_used;
        info->in_memory = true;
        info->busy = s->busy;
    } else {
        void *blob = NULL;
        size_t len = 0;
        rc = stored(ss, id, &blob, &len, err, errlen);
        blob_header h;
        if (rc == SESS_OK && (rc = parse_header(blob, len, &h, err, errlen)) == SESS_OK) {
            info->last_used = h.last_used;
            info->position = h.position;
        }
        info->bytes = len;
        free(blob);
    }
    pthread_mutex_unlock(&ss->mu);
    return rc;
}

int sessions_delete(sessions *ss, const char *id, char *err, size_t errlen)
{
    pthread_mutex_lock(&ss->mu);
    session *s;
    int rc = find_idle(ss, id, &s, err, errlen);
    if (rc == SESS_OK) {
        int got = store_delete(ss->st, id, err, errlen);
        if (got == STORE_ERROR) rc = SESS_ERROR;
        else if (got == STORE_NOT_FOUND && !s) {
            snprintf(err, errlen, "no session '%s'", id);
            rc = SESS_NOT_FOUND;
        }
        if (s && rc == SESS_OK) drop(ss, s);
    }
    pthread_mutex_unlock(&ss->mu);
    return rc;
}

int sessions_fork(sessions *ss, const char *src, const char *dst, char *err, size_t errlen)
{
    pthread_mutex_lock(&ss->mu);
    int rc = SESS_OK;
    session *s = find(ss, src);
    store_info si;
    void *blob = NULL;
    size_t len = 0;
    if (find(ss, dst) || store_stat(ss->st, dst, &si, err, errlen) == STORE_OK) {
        snprintf(err, errlen, "session '%s' exists already", dst);
        rc = SESS_EXISTS;
    } else if (s && s->busy) {
        rc = busy(src, err, errlen);
    } else if (s && !ss->shared) {
        blob = make_blob(s->state, now_unix(), &s->hist, &len, err, errlen);
        if (!blob) rc = SESS_ERROR;
    } else {
        rc = stored(ss, src, &blob, &len, err, errlen);
        blob_header h; /* the copy keeps the blob's version, history included */
        if (rc == SESS_OK) rc = parse_header(blob, len, &h, err, errlen);
        if (rc == SESS_OK) put_u64((uint8_t *)blob + 8, (uint64_t)now_unix());
    }
    if (rc == SESS_OK && store_put(ss->st, dst, blob, len, err, errlen) != STORE_OK) rc = SESS_ERROR;
    free(blob);
    pthread_mutex_unlock(&ss->mu);
    return rc;
}

void sessions_counts(sessions *ss, int64_t *in_memory, size_t *memory_bytes, int64_t *n_stored)
{
    char err[256];
    pthread_mutex_lock(&ss->mu);
    *in_memory = ss->n_hot;
    *memory_bytes = (size_t)ss->n_hot * ss->state_bytes;
    *n_stored = store_count(ss->st, err, sizeof err);
    pthread_mutex_unlock(&ss->mu);
}

int sessions_close(sessions *ss, char *err, size_t errlen)
{
    if (!ss) return SESS_OK;
    int rc = SESS_OK;
    while (ss->list) {
        session *s = ss->list;
        if (s->dirty && write_out(ss, s, err, errlen) != SESS_OK) {
            fprintf(stderr, "bdh serve: session '%s' could not be stored: %s\n", s->id, err);
            rc = SESS_ERROR;
        }
        drop(ss, s);
    }
    pthread_mutex_destroy(&ss->mu);
    free(ss);
    return rc;
}
