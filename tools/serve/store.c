/* The session store's front: checks ids, picks the kind from the spec and
 * forwards to it (store_dir.c, store_redis.c). */
#include "store_impl.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct store {
    const store_ops *ops;
    void *impl;
};

#define REDIS_SCHEME "redis://"

int store_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return STORE_ERROR;
}

bool store_id_valid(const char *id)
{
    if (!id) return false;
    size_t n = 0;
    for (const char *p = id; *p; p++, n++) {
        char c = *p;
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                  c == '-';
        if (!ok || n >= 64) return false;
    }
    /* "." and ".." would name directories in the directory store */
    return n >= 1 && strcmp(id, ".") != 0 && strcmp(id, "..") != 0;
}

int store_open(const char *spec, store **out, char *err, size_t errlen)
{
    if (!out) return store_fail(err, errlen, "store_open: out is NULL");
    *out = NULL;
    if (!spec || !*spec) return store_fail(err, errlen, "session store: empty spec (a directory or redis://HOST:PORT[/DB])");
    store *s = calloc(1, sizeof *s);
    if (!s) return store_fail(err, errlen, "session store: out of memory");
    int rc;
    if (strncmp(spec, REDIS_SCHEME, strlen(REDIS_SCHEME)) == 0) {
        s->ops = &store_redis_ops;
        rc = store_redis_open(spec, &s->impl, err, errlen);
    } else if (strstr(spec, "://")) {
        rc = store_fail(err, errlen, "session store '%s': unknown scheme (a directory or redis://HOST:PORT[/DB])", spec);
    } else {
        s->ops = &store_dir_ops;
        rc = store_dir_open(spec, &s->impl, err, errlen);
    }
    if (rc != STORE_OK) {
        free(s);
        return rc;
    }
    *out = s;
    return STORE_OK;
}

void store_close(store *s)
{
    if (!s) return;
    s->ops->close(s->impl);
    free(s);
}

const char *store_kind(const store *s)
{
    return s ? s->ops->kind : "none";
}

/* Every call starts here: a store and a valid id. */
static int check(const store *s, const char *id, char *err, size_t errlen)
{
    if (!s) return store_fail(err, errlen, "session store: not open");
    if (!store_id_valid(id))
        return store_fail(err, errlen, "invalid session id (1..64 bytes of A-Z a-z 0-9 . _ -)");
    return STORE_OK;
}

int store_get(store *s, const char *id, void **blob, size_t *len, char *err, size_t errlen)
{
    if (!blob || !len) return store_fail(err, errlen, "store_get: blob or len is NULL");
    *blob = NULL;
    *len = 0;
    int rc = check(s, id, err, errlen);
    return rc != STORE_OK ? rc : s->ops->get(s->impl, id, blob, len, err, errlen);
}

int store_put(store *s, const char *id, const void *blob, size_t len, char *err, size_t errlen)
{
    if (!blob && len) return store_fail(err, errlen, "store_put: blob is NULL");
    int rc = check(s, id, err, errlen);
    return rc != STORE_OK ? rc : s->ops->put(s->impl, id, blob ? blob : "", len, err, errlen);
}

int store_delete(store *s, const char *id, char *err, size_t errlen)
{
    int rc = check(s, id, err, errlen);
    return rc != STORE_OK ? rc : s->ops->del(s->impl, id, err, errlen);
}

int store_stat(store *s, const char *id, store_info *info, char *err, size_t errlen)
{
    if (!info) return store_fail(err, errlen, "store_stat: info is NULL");
    int rc = check(s, id, err, errlen);
    return rc != STORE_OK ? rc : s->ops->stat(s->impl, id, info, err, errlen);
}

int64_t store_count(store *s, char *err, size_t errlen)
{
    if (!s) return store_fail(err, errlen, "session store: not open");
    return s->ops->count(s->impl, err, errlen);
}
