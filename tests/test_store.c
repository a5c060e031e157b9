/* The session stores of bdh serve (tools/serve/store.h): the directory store
 * and the Redis store through the same tests (round trips, overwrite,
 * delete, stat, count, bad ids, big blobs, a writer killed mid-write, two
 * handles on one store), plus what only one kind has (stale temporary files,
 * specs, reconnecting). The Redis half runs against a redis-server this test
 * starts on 127.0.0.1 and stops at exit; it is skipped, saying so, only when
 * redis-server is not installed. */
#define _XOPEN_SOURCE 700 /* nftw */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

/* Big blobs: 64 MB by default (a few hundred ms per store here);
 * BDH_STORE_BIG_MB=200 checks the default model's state size. */
#define BIG_MB_DEFAULT 64
/* the blob a killed writer was writing */
#define CRASH_BYTES ((size_t)32 << 20)

static char root[64];       /* temporary directory of this run */
static pid_t redis_pid = -1; /* the redis-server we started */
static int redis_port;
static int next_db = 1;     /* each Redis test gets its own database */
static int next_dir;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* Deterministic bytes from a seed (xorshift64), so blobs differ by seed. */
static void *pattern(size_t len, uint64_t seed)
{
    uint8_t *p = malloc(len ? len : 1);
    assert_non_null(p);
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        memcpy(p + i, &x, 8);
    }
    for (; i < len; i++) p[i] = (uint8_t)(seed + i);
    return p;
}

/* ---- the Redis server of this run ---- */

static bool on_path(const char *prog)
{
    const char *path = getenv("PATH");
    if (!path) return false;
    char *copy = strdup(path), *save = NULL;
    bool found = false;
    for (char *d = strtok_r(copy, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
        char full[4096];
        snprintf(full, sizeof full, "%s/%s", d, prog);
        found = access(full, X_OK) == 0;
    }
    free(copy);
    return found;
}

/* A port nothing listens on now: bind port 0, read it, close. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &n) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static bool redis_pings(int port)
{
    struct timeval tv = {0, 200000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    bool ok = false;
    if (c && !c->err) {
        redisReply *r = redisCommand(c, "PING");
        ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
        if (r) freeReplyObject(r);
    }
    if (c) redisFree(c);
    return ok;
}

static void stop_redis(pid_t *pid)
{
    if (*pid <= 0) return;
    kill(*pid, SIGTERM);
    for (int i = 0; i < 200; i++) {
        if (waitpid(*pid, NULL, WNOHANG) == *pid) {
            *pid = -1;
            return;
        }
        usleep(10000);
    }
    kill(*pid, SIGKILL);
    waitpid(*pid, NULL, 0);
    *pid = -1;
}

static pid_t strict_pid = -1; /* a second one, without CONFIG (redis_closes_mid_value) */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void cleanup(void)
{
    stop_redis(&redis_pid);
    stop_redis(&strict_pid);
    if (root[0]) nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Starts redis-server on a free port, no persistence, 32 databases, then
 * extra options (up to 4 pairs); true once it answers PING (within 10 s). */
static bool start_redis(const char *name, const char *const *extra, pid_t *pid_out, int *port_out)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        int port = free_port();
        if (port <= 0) continue;
        char portstr[16], log[128];
        snprintf(portstr, sizeof portstr, "%d", port);
        snprintf(log, sizeof log, "%s/%s.log", root, name);
        const char *argv[32] = {"redis-server", "--port", portstr, "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", root, "--databases", "32"};
        for (int i = 0; extra && extra[i] && i < 8; i++) argv[13 + i] = extra[i];
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives the test */
            freopen(log, "a", stdout);
            dup2(fileno(stdout), 2);
            execvp("redis-server", (char *const *)argv);
            _exit(127);
        }
        if (pid < 0) return false;
        *pid_out = pid;
        double until = now_s() + 10;
        while (now_s() < until) {
            if (waitpid(pid, NULL, WNOHANG) == pid) { /* exited: the port was taken, try another */
                *pid_out = -1;
                break;
            }
            if (redis_pings(port)) {
                *port_out = port;
                return true;
            }
            usleep(20000);
        }
        stop_redis(pid_out);
        fprintf(stderr, "test_store: redis-server on port %d did not answer PING (log: %s)\n", port, log);
    }
    return false;
}

/* ---- the two kinds behind one test ---- */

typedef enum { DIR_STORE, REDIS_STORE } kind;

/* A fresh, empty store of that kind; its spec into spec. */
static store *fresh(kind k, char *spec, size_t n)
{
    if (k == REDIS_STORE) {
        if (redis_pid <= 0) skip();
        assert_true(next_db < 32);
        snprintf(spec, n, "redis://127.0.0.1:%d/%d", redis_port, next_db++);
    } else {
        snprintf(spec, n, "%s/dir%d/sessions", root, next_dir++);
    }
    store *s = NULL;
    char err[256] = "";
    int rc = store_open(spec, &s, err, sizeof err);
    if (rc != STORE_OK) print_message("store_open(%s): %s\n", spec, err);
    assert_int_equal(rc, STORE_OK);
    assert_string_equal(store_kind(s), k == REDIS_STORE ? "redis" : "dir");
    assert_int_equal(store_count(s, err, sizeof err), 0);
    return s;
}

static store *reopen(const char *spec)
{
    store *s = NULL;
    char err[256] = "";
    assert_int_equal(store_open(spec, &s, err, sizeof err), STORE_OK);
    return s;
}

static void put_ok(store *s, const char *id, const void *blob, size_t len)
{
    char err[512] = "";
    int rc = store_put(s, id, blob, len, err, sizeof err);
    if (rc != STORE_OK) print_message("store_put(%s, %zu bytes): %s\n", id, len, err);
    assert_int_equal(rc, STORE_OK);
}

/* The blob stored under id is exactly want[0..len). */
static void get_equal(store *s, const char *id, const void *want, size_t len)
{
    void *blob = NULL;
    size_t got = 0;
    char err[512] = "";
    int rc = store_get(s, id, &blob, &got, err, sizeof err);
    if (rc != STORE_OK) print_message("store_get(%s): %s\n", id, err);
    assert_int_equal(rc, STORE_OK);
    assert_int_equal(got, len);
    assert_true(len == 0 || memcmp(blob, want, len) == 0);
    free(blob);
}

static void assert_missing(store *s, const char *id)
{
    void *blob = (void *)1;
    size_t len = 1;
    store_info info;
    char err[256] = "";
    assert_int_equal(store_get(s, id, &blob, &len, err, sizeof err), STORE_NOT_FOUND);
    assert_null(blob);
    assert_int_equal(len, 0);
    assert_int_equal(store_stat(s, id, &info, err, sizeof err), STORE_NOT_FOUND);
}

static int64_t count(store *s)
{
    char err[256] = "";
    int64_t n = store_count(s, err, sizeof err);
    if (n < 0) print_message("store_count: %s\n", err);
    assert_true(n >= 0);
    return n;
}

/* put, get, stat, overwrite with another length, a second session, an
 * empty blob, delete, and not found after. */
static void round_trip(kind k)
{
    char spec[256], err[256] = "";
    store *s = fresh(k, spec, sizeof spec);
    assert_missing(s, "alpha");
    assert_int_equal(store_delete(s, "alpha", err, sizeof err), STORE_NOT_FOUND);

    int64_t t0 = (int64_t)time(NULL);
    uint8_t *a = pattern(1000, 1), *b = pattern(777, 2);
    put_ok(s, "alpha", a, 1000);
    get_equal(s, "alpha", a, 1000);
    store_info info = {0};
    assert_int_equal(store_stat(s, "alpha", &info, err, sizeof err), STORE_OK);
    assert_int_equal(info.bytes, 1000);
    assert_true(info.mtime >= t0 && info.mtime <= (int64_t)time(NULL));
    assert_int_equal(count(s), 1);

    put_ok(s, "alpha", b, 777); /* shorter: nothing of a remains */
    get_equal(s, "alpha", b, 777);
    assert_int_equal(store_stat(s, "alpha", &info, err, sizeof err), STORE_OK);
    assert_int_equal(info.bytes, 777);
    assert_int_equal(count(s), 1);

    put_ok(s, "Beta_2.x-y", a, 1000);
    put_ok(s, "empty", "", 0);
    get_equal(s, "empty", "", 0);
    assert_int_equal(store_stat(s, "empty", &info, err, sizeof err), STORE_OK);
    assert_int_equal(info.bytes, 0);
    assert_int_equal(count(s), 3);

    assert_int_equal(store_delete(s, "alpha", err, sizeof err), STORE_OK);
    assert_missing(s, "alpha");
    assert_int_equal(store_delete(s, "alpha", err, sizeof err), STORE_NOT_FOUND);
    get_equal(s, "Beta_2.x-y", a, 1000);
    assert_int_equal(count(s), 2);

    /* what was stored outlives the handle */
    store_close(s);
    s = reopen(spec);
    get_equal(s, "Beta_2.x-y", a, 1000);
    get_equal(s, "empty", "", 0);
    assert_int_equal(count(s), 2);
    store_close(s);
    free(a);
    free(b);
}

static void bad_ids(kind k)
{
    char spec[256];
    store *s = fresh(k, spec, sizeof spec);
    char long_id[66];
    memset(long_id, 'a', 65);
    long_id[65] = '\0';
    const char *bad[] = {NULL, "", ".", "..", "a/b", "../x", "a b", "a\nb", "a:b", "a*", "\xc3\xa9", long_id};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        void *blob = NULL;
        size_t len = 0;
        store_info info;
        assert_false(store_id_valid(bad[i]));
        assert_int_equal(store_put(s, bad[i], "x", 1, err, sizeof err), STORE_ERROR);
        assert_non_null(strstr(err, "invalid session id"));
        err[0] = '\0';
        assert_int_equal(store_get(s, bad[i], &blob, &len, err, sizeof err), STORE_ERROR);
        assert_non_null(strstr(err, "invalid session id"));
        assert_int_equal(store_stat(s, bad[i], &info, err, sizeof err), STORE_ERROR);
        assert_int_equal(store_delete(s, bad[i], err, sizeof err), STORE_ERROR);
    }
    assert_int_equal(count(s), 0); /* nothing was written */
    long_id[64] = '\0';          /* 64 bytes: the longest valid id */
    assert_true(store_id_valid(long_id));
    put_ok(s, long_id, "yes", 3);
    get_equal(s, long_id, "yes", 3);
    assert_int_equal(count(s), 1);
    store_close(s);
}

static void big_blob(kind k)
{
    const char *env = getenv("BDH_STORE_BIG_MB");
    size_t mb = env ? (size_t)atoi(env) : BIG_MB_DEFAULT;
    size_t len = (mb << 20) + 12345; /* not a round size */
    char spec[256], err[256] = "";
    store *s = fresh(k, spec, sizeof spec);
    uint8_t *blob = pattern(len, 7);
    double t = now_s();
    put_ok(s, "big", blob, len);
    double tput = now_s() - t;
    t = now_s();
    get_equal(s, "big", blob, len);
    double tget = now_s() - t;
    store_info info;
    assert_int_equal(store_stat(s, "big", &info, err, sizeof err), STORE_OK);
    assert_int_equal(info.bytes, len);
    print_message("%s store, %zu bytes: put %.3f s, get %.3f s\n", store_kind(s), len, tput, tget);
    store_close(s);
    free(blob);
}

static bool has_temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    bool found = false;
    for (struct dirent *e; (e = readdir(d));) found |= strstr(e->d_name, ".state.tmp.") != NULL;
    closedir(d);
    return found;
}

/* A child opens its own handle and writes blob `seed` (a length of its own);
 * the parent SIGKILLs it at moments spread over a write's duration. After
 * each kill the session holds the previous blob or the new one, whole. */
static void killed_writer(kind k)
{
    char spec[256];
    store *s = fresh(k, spec, sizeof spec);
    size_t len0 = CRASH_BYTES;
    uint8_t *prev = pattern(len0, 100);
    size_t prev_len = len0;
    put_ok(s, "victim", prev, prev_len);

    /* how long one writer takes, fork and open included (the slower of two) */
    double write_s = 0;
    for (int i = 0; i < 2; i++) {
        double t = now_s();
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            store *w = NULL;
            char err[256];
            _exit(store_open(spec, &w, err, sizeof err) != STORE_OK ||
                  store_put(w, "other", prev, prev_len, err, sizeof err) != STORE_OK);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        double dt = now_s() - t;
        write_s = dt > write_s ? dt : write_s;
    }

    int old_kept = 0, new_kept = 0, mid_write = 0, rounds = 0;
    const int fractions = 12;
    /* until both outcomes were seen (and, for the directory, kills inside
     * writes), the moments stretching further each cycle on a busy machine */
    for (; rounds < 72 && (rounds < 24 || !old_kept || !new_kept || (k == DIR_STORE && mid_write < 3)); rounds++) {
        size_t len = len0 + 4096 * (size_t)(rounds + 1);
        uint64_t seed = 200 + (uint64_t)rounds;
        uint8_t *next = pattern(len, seed); /* made before the fork: the child only writes */
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            store *c = NULL;
            char err[256];
            if (store_open(spec, &c, err, sizeof err) != STORE_OK) _exit(2);
            store_put(c, "victim", next, len, err, sizeof err);
            _exit(0);
        }
        double stretch = 1.2 * (1 + rounds / fractions); /* some after the end */
        double frac = (double)(rounds % fractions + 0.5) / fractions * stretch;
        usleep((useconds_t)(write_s * frac * 1e6));
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (k == DIR_STORE) {
            char dir[300];
            snprintf(dir, sizeof dir, "%s", spec);
            mid_write += has_temp_files(dir);
        }

        void *blob = NULL;
        size_t got = 0;
        char err[256] = "";
        assert_int_equal(store_get(s, "victim", &blob, &got, err, sizeof err), STORE_OK);
        if (got == prev_len && memcmp(blob, prev, got) == 0) {
            old_kept++;
            free(next);
        } else {
            /* not the old one: then exactly the new one */
            assert_int_equal(got, len);
            assert_memory_equal(blob, next, len);
            new_kept++;
            free(prev);
            prev = next;
            prev_len = len;
        }
        free(blob);
        assert_int_equal(count(s), 2); /* temporary files are not sessions */
    }
    print_message("%s store: %d writers killed (a write takes %.0f ms): %d left the old blob, %d the new one\n",
                  store_kind(s), rounds, write_s * 1e3, old_kept, new_kept);
    if (k == DIR_STORE) print_message("dir store: %d kills left a temporary file (inside a write)\n", mid_write);
    if (k == DIR_STORE) {
        assert_true(mid_write >= 3); /* the kills did land inside writes */
        /* the next open removes the dead writers' temporary files */
        store_close(s);
        s = reopen(spec);
        assert_false(has_temp_files(spec));
        get_equal(s, "victim", prev, prev_len);
    }
    assert_true(old_kept > 0 && new_kept > 0); /* both moments were hit */
    store_close(s);
    free(prev);
}

/* Two handles on one store (two replicas on one Redis) see each other's
 * writes and deletes. */
static void shared(kind k)
{
    char spec[256], err[256] = "";
    store *a = fresh(k, spec, sizeof spec), *b = reopen(spec);
    put_ok(a, "s1", "from a", 6);
    get_equal(b, "s1", "from a", 6);
    put_ok(b, "s1", "from b, longer", 14);
    get_equal(a, "s1", "from b, longer", 14);
    put_ok(b, "s2", "two", 3);
    assert_int_equal(count(a), 2);
    assert_int_equal(count(b), 2);
    assert_int_equal(store_delete(a, "s1", err, sizeof err), STORE_OK);
    assert_missing(b, "s1");
    assert_int_equal(store_delete(b, "s1", err, sizeof err), STORE_NOT_FOUND);
    assert_int_equal(count(b), 1);
    store_close(a);
    store_close(b);
}

static void dir_round_trip(void **state) { round_trip(DIR_STORE); }
static void dir_bad_ids(void **state) { bad_ids(DIR_STORE); }
static void dir_big_blob(void **state) { big_blob(DIR_STORE); }
static void dir_killed_writer(void **state) { killed_writer(DIR_STORE); }
static void dir_shared(void **state) { shared(DIR_STORE); }
static void redis_round_trip(void **state) { round_trip(REDIS_STORE); }
static void redis_bad_ids(void **state) { bad_ids(REDIS_STORE); }
static void redis_big_blob(void **state) { big_blob(REDIS_STORE); }
static void redis_killed_writer(void **state) { killed_writer(REDIS_STORE); }
static void redis_shared(void **state) { shared(REDIS_STORE); }

/* ---- one kind only ---- */

static void touch(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("junk", f);
    fclose(f);
}

static bool exists(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* The directory is made (parents too, mode 0700); at open, temporary files
 * of dead writers go, a live writer's stay; only ID.state files count. */
static void dir_files(void **state)
{
    char spec[256];
    store *s = fresh(DIR_STORE, spec, sizeof spec);
    struct stat st;
    assert_int_equal(stat(spec, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    put_ok(s, "kept", "k", 1);
    put_ok(s, "x.state.tmp.5", "an id that looks like a temporary file", 38);
    store_close(s);

    pid_t dead = fork();
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0);
    char stale[128], live[128];
    snprintf(stale, sizeof stale, "kept.state.tmp.%d.0", (int)dead);
    snprintf(live, sizeof live, "kept.state.tmp.%d.0", (int)getppid());
    touch(spec, stale);
    touch(spec, live);
    touch(spec, "notes.txt");
    touch(spec, "bad id.state");

    s = reopen(spec);
    assert_false(exists(spec, stale));
    assert_true(exists(spec, live));
    assert_true(exists(spec, "x.state.tmp.5.state"));
    assert_int_equal(count(s), 2);
    get_equal(s, "kept", "k", 1);
    get_equal(s, "x.state.tmp.5", "an id that looks like a temporary file", 38);
    store_close(s);
}

static void open_fails(const char *spec, const char *why)
{
    store *s = (store *)1;
    char err[512] = "";
    assert_int_equal(store_open(spec, &s, err, sizeof err), STORE_ERROR);
    assert_null(s);
    if (!strstr(err, why)) print_message("store_open(%s): '%s' lacks '%s'\n", spec ? spec : "NULL", err, why);
    assert_non_null(strstr(err, why));
}

static void bad_specs(void **state)
{
    char file[256], under[300];
    snprintf(file, sizeof file, "%s/a-file", root);
    touch(root, "a-file");
    snprintf(under, sizeof under, "%s/sub", file);
    open_fails(NULL, "empty spec");
    open_fails("", "empty spec");
    open_fails(under, "Not a directory"); /* strerror, with the path */
    open_fails(under, file);
    open_fails(file, "cannot open directory");
    open_fails("http://127.0.0.1:1", "unknown scheme");
    open_fails("redis://", "no host or port");
    open_fails("redis://127.0.0.1", "no host or port");
    open_fails("redis://:6379", "no host or port");
    open_fails("redis://127.0.0.1:", "port must be");
    open_fails("redis://127.0.0.1:0", "port must be");
    open_fails("redis://127.0.0.1:65536", "port must be");
    open_fails("redis://127.0.0.1:+80", "port must be");
    open_fails("redis://127.0.0.1:80x", "port must be");
    open_fails("redis://127.0.0.1:6379/", "database must be");
    open_fails("redis://127.0.0.1:6379/x", "database must be");
    open_fails("redis://127.0.0.1:6379/-1", "database must be");
    open_fails("redis://127.0.0.1:6379/1/2", "database must be");
    open_fails("redis://user:pw@127.0.0.1:6379", "credentials");
    open_fails("redis://a_b:6379", "bad character in host");
    int port = free_port(); /* nothing listens there */
    char spec[64];
    snprintf(spec, sizeof spec, "redis://127.0.0.1:%d", port);
    open_fails(spec, "cannot connect");
    if (redis_pid > 0) {
        snprintf(spec, sizeof spec, "redis://127.0.0.1:%d/99", redis_port); /* 32 databases */
        open_fails(spec, "SELECT");
    }
}

/* A dropped connection (CLIENT KILL, as an idle timeout or a proxy would)
 * is reconnected once, on the database chosen: for a read, for a count, and
 * for a big write, whose write(2) to the dead connection raises SIGPIPE
 * (left at its default here, which would end the process). */
static void redis_reconnects(void **state)
{
    char spec[256];
    store *s = fresh(REDIS_STORE, spec, sizeof spec);
    assert_true(signal(SIGPIPE, SIG_DFL) != SIG_ERR);
    size_t len = (size_t)16 << 20;
    uint8_t *big = pattern(len, 11);
    put_ok(s, "r", "before", 6);
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
    assert_true(c && !c->err);
    for (int i = 0; i < 9; i++) { /* a write to a dead connection raises SIGPIPE often, not always: 3 tries */
        redisReply *r = redisCommand(c, "CLIENT KILL TYPE normal SKIPME yes");
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        assert_true(r->integer >= 1); /* the store's connection went */
        freeReplyObject(r);
        if (i == 0) get_equal(s, "r", "before", 6);
        if (i % 3 == 1) put_ok(s, "r", big, len);
        if (i % 3 == 2) assert_int_equal(count(s), 1); /* still on its own database */
        if (i >= 3 && i % 3 == 0) get_equal(s, "r", big, len);
    }
    get_equal(s, "r", big, len);
    redisFree(c);
    store_close(s);
    free(big);
}

static void redis_config(const char *name, const char *value)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
    assert_true(c && !c->err);
    redisReply *r = redisCommand(c, "CONFIG SET %s %s", name, value);
    assert_true(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    redisFree(c);
}

/* A state over Redis's proto-max-bulk-len (lowered here to 1 MB), which
 * Redis would refuse by closing the connection mid-value: the write fails
 * saying why, the old blob stays, and the store works on. The store reads the
 * limit when it connects. */
static void redis_value_too_big(void **state)
{
    if (redis_pid <= 0) skip();
    char spec[256], err[512] = "";
    redis_config("proto-max-bulk-len", "1mb");
    store *s = fresh(REDIS_STORE, spec, sizeof spec);
    redis_config("proto-max-bulk-len", "512mb");
    put_ok(s, "v", "small", 5);
    size_t len = (size_t)32 << 20;
    uint8_t *big = pattern(len, 9);
    int rc = store_put(s, "v", big, len, err, sizeof err);
    print_message("refused: %s\n", err);
    assert_int_equal(rc, STORE_ERROR);
    assert_non_null(strstr(err, "proto-max-bulk-len"));
    get_equal(s, "v", "small", 5);
    store_close(s);
    s = reopen(spec); /* the limit as Redis has it now */
    put_ok(s, "v", big, len);
    get_equal(s, "v", big, len);
    free(big);
    store_close(s);
}

/* Redis closing the connection while a value is still being sent: a
 * Redis whose CONFIG is disabled (as managed ones often are), so the store
 * cannot learn proto-max-bulk-len (1 MB there) and sends a 32 MB value.
 * Redis answers an error and closes while the value is being sent. The
 * write fails (hiredis sees the reset, not Redis's answer), the old blob
 * stays, the store works on. */
static void redis_closes_mid_value(void **state)
{
    if (redis_pid <= 0) skip();
    const char *const extra[] = {"--rename-command", "CONFIG", "", "--proto-max-bulk-len", "1mb", NULL};
    int port = 0;
    assert_true(start_redis("redis-strict", extra, &strict_pid, &port));
    char spec[64], err[512] = "";
    snprintf(spec, sizeof spec, "redis://127.0.0.1:%d", port);
    store *s = reopen(spec);
    assert_true(signal(SIGPIPE, SIG_DFL) != SIG_ERR);
    put_ok(s, "v", "small", 5);
    size_t len = (size_t)32 << 20;
    uint8_t *big = pattern(len, 10);
    for (int i = 0; i < 3; i++) {
        err[0] = '\0';
        assert_int_equal(store_put(s, "v", big, len, err, sizeof err), STORE_ERROR); /* after a reconnect too */
        assert_true(err[0] != '\0');
        get_equal(s, "v", "small", 5);
    }
    print_message("refused: %s\n", err);
    put_ok(s, "v", "under 1 MB", 10);
    get_equal(s, "v", "under 1 MB", 10);
    free(big);
    store_close(s);
    stop_redis(&strict_pid);
}

int main(void)
{
    snprintf(root, sizeof root, "/tmp/bdh-test-store.XXXXXX");
    if (!mkdtemp(root)) {
        perror("test_store: mkdtemp");
        return 1;
    }
    atexit(cleanup);
    if (!on_path("redis-server"))
        fprintf(stderr, "test_store: redis-server is not installed: the Redis tests are SKIPPED "
                        "(apt-get install redis-server)\n");
    else if (!start_redis("redis", NULL, &redis_pid, &redis_port)) {
        fprintf(stderr, "test_store: redis-server is installed but did not start\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dir_round_trip),     cmocka_unit_test(dir_bad_ids),         cmocka_unit_test(dir_big_blob),
        cmocka_unit_test(dir_killed_writer),  cmocka_unit_test(dir_shared),          cmocka_unit_test(dir_files),
        cmocka_unit_test(bad_specs),          cmocka_unit_test(redis_round_trip),    cmocka_unit_test(redis_bad_ids),
        cmocka_unit_test(redis_big_blob),     cmocka_unit_test(redis_killed_writer), cmocka_unit_test(redis_shared),
        cmocka_unit_test(redis_reconnects),   cmocka_unit_test(redis_value_too_big),
        cmocka_unit_test(redis_closes_mid_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
