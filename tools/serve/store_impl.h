/* What store.c shares with the two stores behind it (store_dir.c,
 * store_redis.c); the server includes store.h only. */
#ifndef BDH_SERVE_STORE_IMPL_H
#define BDH_SERVE_STORE_IMPL_H

#include "store.h"

/* One kind of store: its calls take the kind's own handle. Ids reaching
 * them are already valid (store.c checks). */
typedef struct store_ops {
    const char *kind;
    int (*get)(void *impl, const char *id, void **blob, size_t *len, char *err, size_t errlen);
    int (*put)(void *impl, const char *id, const void *blob, size_t len, char *err, size_t errlen);
    int (*del)(void *impl, const char *id, char *err, size_t errlen);
    int (*stat)(void *impl, const char *id, store_info *info, char *err, size_t errlen);
    int64_t (*count)(void *impl, char *err, size_t errlen);
    void (*close)(void *impl);
} store_ops;

extern const store_ops store_dir_ops;
extern const store_ops store_redis_ops;

int store_dir_open(const char *path, void **impl, char *err, size_t errlen);
int store_redis_open(const char *spec, void **impl, char *err, size_t errlen);

/* snprintf into err (when err is not NULL); returns STORE_ERROR. */
int store_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
