/* The directory store: one file per session, DIR/ID.state. A write goes to
 * DIR/ID.state.tmp.PID.N, is fsynced, renamed over ID.state and the
 * directory fsynced, so a crash at any moment leaves the old file or the new
 * one. Temporary files a crashed process left are never read, and are
 * removed by the next open. For one host: replicas share sessions through
 * Redis, not through a network file system. */
#include "store_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define SUFFIX ".state"
#define TMP_TAG ".state.tmp."
/* ID (64) + ".state.tmp." + pid + counter */
#define NAME_MAX_LEN 160

typedef struct dir_store {
    char *path;
    int fd; /* the directory, for openat/renameat and fsync */
} dir_store;

static atomic_ulong tmp_counter;

/* mkdir -p, new directories 0700. */
static int make_dirs(const char *path, char *err, size_t errlen)
{
    char *p = strdup(path);
    if (!p) return store_fail(err, errlen, "session store: out of memory");
    int rc = STORE_OK;
    for (char *c = p + 1;; c++) {
        if (*c != '/' && *c != '\0') continue;
        char saved = *c;
        *c = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) {
            rc = store_fail(err, errlen, "session store: cannot create directory %s: %s", p, strerror(errno));
            break;
        }
        *c = saved;
        if (saved == '\0') break;
    }
    free(p);
    return rc;
}

/* "ID.state.tmp.PID.N": the pid of the writer, or 0 when the name is not a
 * temporary file of ours. Sessions end in ".state" (an id may itself hold
 * ".state.tmp."), temporary files in digits. */
static long tmp_writer(const char *name)
{
    size_t len = strlen(name), sl = strlen(SUFFIX);
    if (len >= sl && strcmp(name + len - sl, SUFFIX) == 0) return 0;
    const char *tag = strstr(name, TMP_TAG);
    if (!tag || tag == name) return 0;
    char *end;
    long pid = strtol(tag + strlen(TMP_TAG), &end, 10);
    return (pid > 0 && *end == '.') ? pid : 0;
}

/* Removes temporary files whose writer is no longer running (a crash mid
 * write); a live writer's file is left to it. */
static void clean_stale(dir_store *d)
{
    int fd = dup(d->fd);
    DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
    if (!dir) {
        if (fd >= 0) close(fd);
        return;
    }
    rewinddir(dir);
    struct dirent *e;
    while ((e = readdir(dir))) {
        long pid = tmp_writer(e->d_name);
        if (pid > 0 && pid != (long)getpid() && kill((pid_t)pid, 0) != 0 && errno == ESRCH)
            unlinkat(d->fd, e->d_name, 0);
    }
    closedir(dir);
}

int store_dir_open(const char *path, void **impl, char *err, size_t errlen)
{
    if (make_dirs(path, err, errlen) != STORE_OK) return STORE_ERROR;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return store_fail(err, errlen, "session store: cannot open directory %s: %s", path, strerror(errno));
    if (faccessat(fd, ".", W_OK | X_OK, AT_EACCESS) != 0) {
        int e = errno;
        close(fd);
        return store_fail(err, errlen, "session store: directory %s is not writable: %s", path, strerror(e));
    }
    dir_store *d = calloc(1, sizeof *d);
    if (!d || !(d->path = strdup(path))) {
        free(d);
        close(fd);
        return store_fail(err, errlen, "session store: out of memory");
    }
    d->fd = fd;
    clean_stale(d);
    *impl = d;
    return STORE_OK;
}

static void dir_close(void *impl)
{
    dir_store *d = impl;
    close(d->fd);
    free(d->path);
    free(d);
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len > (1u << 30) ? (1u << 30) : len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int dir_put(void *impl, const char *id, const void *blob, size_t len, char *err, size_t errlen)
{
    dir_store *d = impl;
    char name[NAME_MAX_LEN], tmp[NAME_MAX_LEN];
    snprintf(name, sizeof name, "%s" SUFFIX, id);
    snprintf(tmp, sizeof tmp, "%s" TMP_TAG "%ld.%lu", id, (long)getpid(), atomic_fetch_add(&tmp_counter, 1));
    int fd = openat(d->fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return store_fail(err, errlen, "session store: cannot create %s/%s: %s", d->path, tmp, strerror(errno));
    const char *step = "write";
    if (write_all(fd, blob, len) != 0 || (step = "fsync", fsync(fd) != 0)) {
        int e = errno;
        close(fd);
        unlinkat(d->fd, tmp, 0);
        return store_fail(err, errlen, "session store: cannot %s %s/%s: %s", step, d->path, tmp, strerror(e));
    }
    if (close(fd) != 0 || renameat(d->fd, tmp, d->fd, name) != 0) {
        int e = errno;
        unlinkat(d->fd, tmp, 0);
        return store_fail(err, errlen, "session store: cannot replace %s/%s: %s", d->path, name, strerror(e));
    }
    /* the rename itself survives a power cut only once the directory is synced */
    if (fsync(d->fd) != 0)
        return store_fail(err, errlen, "session store: cannot fsync directory %s: %s", d->path, strerror(errno));
    return STORE_OK;
}

static int dir_get(void *impl, const char *id, void **blob, size_t *len, char *err, size_t errlen)
{
    dir_store *d = impl;
    char name[NAME_MAX_LEN];
    snprintf(name, sizeof name, "%s" SUFFIX, id);
    int fd = openat(d->fd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) return STORE_NOT_FOUND;
    if (fd < 0) return store_fail(err, errlen, "session store: cannot open %s/%s: %s", d->path, name, strerror(errno));
    /* the descriptor holds this version of the file: a rename over it by a
     * writer does not change what is read */
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return store_fail(err, errlen, "session store: cannot stat %s/%s: %s", d->path, name, strerror(e));
    }
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return store_fail(err, errlen, "session store: out of memory reading %s/%s (%zu bytes)", d->path, name, size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int e = n < 0 ? errno : 0;
            close(fd);
            free(buf);
            return store_fail(err, errlen, "session store: cannot read %s/%s: %s", d->path, name,
                              e ? strerror(e) : "file shorter than its size");
        }
        got += (size_t)n;
    }
    close(fd);
    *blob = buf;
    *len = size;
    return STORE_OK;
}

static int dir_del(void *impl, const char *id, char *err, size_t errlen)
{
    dir_store *d = impl;
    char name[NAME_MAX_LEN];
    snprintf(name, sizeof name, "%s" SUFFIX, id);
    if (unlinkat(d->fd, name, 0) != 0) {
        if (errno == ENOENT) return STORE_NOT_FOUND;
        return store_fail(err, errlen, "session store: cannot remove %s/%s: %s", d->path, name, strerror(errno));
    }
    if (fsync(d->fd) != 0)
        return store_fail(err, errlen, "session store: cannot fsync directory %s: %s", d->path, strerror(errno));
    return STORE_OK;
}

static int dir_stat(void *impl, const char *id, store_info *info, char *err, size_t errlen)
{
    dir_store *d = impl;
    char name[NAME_MAX_LEN];
    snprintf(name, sizeof name, "%s" SUFFIX, id);
    struct stat st;
    if (fstatat(d->fd, name, &st, 0) != 0) {
        if (errno == ENOENT) return STORE_NOT_FOUND;
        return store_fail(err, errlen, "session store: cannot stat %s/%s: %s", d->path, name, strerror(errno));
    }
    info->bytes = (size_t)st.st_size;
    info->mtime = (int64_t)st.st_mtime;
    return STORE_OK;
}

/* Files named ID.state with a valid id; temporary files and strangers are
 * not sessions. */
static int64_t dir_count(void *impl, char *err, size_t errlen)
{
    dir_store *d = impl;
    int fd = dup(d->fd);
    DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
    if (!dir) {
        int e = errno;
        if (fd >= 0) close(fd);
        return store_fail(err, errlen, "session store: cannot list %s: %s", d->path, strerror(e));
    }
    rewinddir(dir); /* the dup shares its position with d->fd */
    int64_t n = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        size_t len = strlen(e->d_name), sl = strlen(SUFFIX);
        if (len <= sl || len - sl > 64 || strcmp(e->d_name + len - sl, SUFFIX) != 0) continue;
        char id[65];
        memcpy(id, e->d_name, len - sl);
        id[len - sl] = '\0';
        n += store_id_valid(id);
    }
    closedir(dir);
    return n;
}

const store_ops store_dir_ops = {
    .kind = "dir", .get = dir_get, .put = dir_put, .del = dir_del, .stat = dir_stat, .count = dir_count, .close = dir_close,
};
