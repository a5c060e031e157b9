/* Where `bdh serve` keeps session states between requests (docs/server.md).
 *
 * A store maps a session id to one opaque blob (a bdh_state_save blob plus
 * whatever small header the server puts in front of it). Two kinds behind one
 * interface, chosen by the --sessions spec:
 *   DIR                      a directory: one file per session, each write
 *                            atomic (temporary file, fsync, rename, fsync dir)
 *   redis://HOST:PORT[/DB]   Redis through hiredis, so replicas share sessions
 *
 * Ids are 1..64 bytes of [A-Za-z0-9._-] (store_id_valid); the server refuses
 * others with 400 before they reach a store. Every call returns STORE_OK or a
 * negative code and writes a one-line reason into err (errlen bytes).
 * A store is used by one thread at a time (the server serializes calls). */
#ifndef BDH_SERVE_STORE_H
#define BDH_SERVE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { STORE_OK = 0, STORE_NOT_FOUND = -1, STORE_ERROR = -2 };

typedef struct store store;

/* Metadata of a stored session: bytes of its blob, and when it was last
 * written (Unix seconds). */
typedef struct store_info {
    size_t bytes;
    int64_t mtime;
} store_info;

bool store_id_valid(const char *id);

int  store_open(const char *spec, store **out, char *err, size_t errlen);
void store_close(store *s);
/* "dir" or "redis", for /metrics and logs. */
const char *store_kind(const store *s);

/* *blob is malloc'd (caller frees) on STORE_OK. */
int store_get(store *s, const char *id, void **blob, size_t *len, char *err, size_t errlen);
/* Replaces the session atomically: a reader (or a crash) sees the old blob
 * or the new one, never a mix. */
int store_put(store *s, const char *id, const void *blob, size_t len, char *err, size_t errlen);
int store_delete(store *s, const char *id, char *err, size_t errlen);
int store_stat(store *s, const char *id, store_info *info, char *err, size_t errlen);
/* Sessions stored (for /metrics); negative on error. */
int64_t store_count(store *s, char *err, size_t errlen);

#endif
