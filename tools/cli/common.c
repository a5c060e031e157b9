/* What the commands share: error messages and exit codes, option values
 * (--weights, --device among them), reading and writing files, finding and
 * loading the model. */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* --------------------------------------------------------------- errors */

void err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("bdh: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int lib_fail(const char *what, bdh_status rc)
{
    err("%s: %s (%s)", what, bdh_last_error(), bdh_status_name(rc));
    return EXIT_RUNTIME;
}

int lib_fail_on(const char *what, const char *path, bdh_status rc)
{
    err("%s '%s': %s (%s)", what, path, bdh_last_error(), bdh_status_name(rc));
    return EXIT_RUNTIME;
}

int usage_fail(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("bdh: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'bdh %s--help' for more information.\n", cmd);
    return EXIT_USAGE;
}

int bad_option(const char *cmd, int c, char **argv)
{
    if (c == ':') return usage_fail(cmd, "option '%s' needs a value", argv[optind - 1]);
    if (optopt > 0 && optopt < 256) return usage_fail(cmd, "unknown option '-%c'", optopt);
    return usage_fail(cmd, "unknown or ambiguous option '%s'", argv[optind - 1]);
}

/* -------------------------------------------------------- option values */

int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*s == '-') return -1;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end) return -1;
    *out = (uint64_t)v;
    return 0;
}

int parse_float(const char *s, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return -1;
    *out = (float)v;
    return 0;
}

int parse_text_option(const char *U, int c, text_span *t)
{
    if (c == OPT_OFFSET && parse_long(optarg, 0, LONG_MAX, &t->offset))
        return usage_fail(U, "--offset needs bytes >= 0, not '%s'", optarg);
    if (c == OPT_LENGTH && parse_long(optarg, 1, LONG_MAX, &t->length))
        return usage_fail(U, "--length needs bytes >= 1, not '%s'", optarg);
    return 0;
}

static const struct weights_choice {
    const char *name;
    bdh_weight_type type;
} weights_choices[] = {
    {"f32", BDH_WEIGHTS_F32},   {"bf16", BDH_WEIGHTS_BF16},       {"f16", BDH_WEIGHTS_F16},
    {"q8_0", BDH_WEIGHTS_Q8_0}, {"stored", BDH_WEIGHTS_AS_STORED},
};

int parse_weight_type(const char *U, const char *option, const char *arg, bdh_weight_type *out)
{
    for (size_t i = 0; i < sizeof weights_choices / sizeof *weights_choices; i++)
        if (strcmp(arg, weights_choices[i].name) == 0) {
            *out = weights_choices[i].type;
            return 0;
        }
    return usage_fail(U, "%s needs " WEIGHTS_NAMES ", not '%s'", option, arg);
}

static int parse_weights(const char *U, const char *arg, bdh_weight_type *out)
{
    return parse_weight_type(U, "--weights", arg, out);
}

const char *weights_name(bdh_weight_type type)
{
    for (size_t i = 0; i < sizeof weights_choices / sizeof *weights_choices; i++)
        if (weights_choices[i].type == type) return weights_choices[i].name;
    return "?";
}

/* OPT_DEVICE or OPT_CUDA_DEVICE with its value in arg; 0 or EXIT_USAGE. */
static int parse_place_option(const char *U, int c, const char *arg, model_place *p)
{
    long v;
    if (c == OPT_DEVICE) {
        if (strcmp(arg, "cpu") == 0) p->device = BDH_DEVICE_CPU;
        else if (strcmp(arg, "cuda") == 0) p->device = BDH_DEVICE_CUDA;
        else return usage_fail(U, "--device needs cpu or cuda, not '%s'", arg);
        return 0;
    }
    if (parse_long(arg, 0, INT32_MAX, &v)) return usage_fail(U, "--cuda-device needs a device number >= 0, not '%s'", arg);
    p->cuda_device = (int32_t)v;
    p->cuda_device_given = 1;
    return 0;
}

int check_place(const char *U, const model_place *p)
{
    if (p->cuda_device_given && p->device != BDH_DEVICE_CUDA)
        return usage_fail(U, "--cuda-device %d needs --device cuda", (int)p->cuda_device);
    return 0;
}

const char *place_name(const model_place *p, char *buf, size_t cap)
{
    if (p->device == BDH_DEVICE_CPU) snprintf(buf, cap, "cpu");
    else snprintf(buf, cap, "cuda %d", (int)p->cuda_device);
    return buf;
}

int parse_model_option(const char *U, int c, const char *arg, model_opts *o, int *rc)
{
    switch (c) {
    case 'm': o->model = arg; *rc = 0; return 1;
    case 'v': o->verbose = 1; *rc = 0; return 1;
    case OPT_THREADS:
        *rc = parse_long(arg, 0, 4096, &o->threads)
                  ? usage_fail(U, "--threads needs a count from 0 (all cores) to 4096, not '%s'", arg)
                  : 0;
        return 1;
    case OPT_WEIGHTS: *rc = parse_weights(U, arg, &o->weights); return 1;
    case OPT_DEVICE:
    case OPT_CUDA_DEVICE: *rc = parse_place_option(U, c, arg, &o->place); return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- files */

char *read_all(const char *path, size_t *len)
{
    FILE *f = path ? fopen(path, "rb") : stdin;
    if (!f) {
        err("cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *bigger = realloc(buf, cap *= 2);
        if (!bigger) free(buf);
        buf = bigger;
    }
    int bad = buf ? ferror(f) : 1;
    if (path) fclose(f);
    if (bad) {
        err("cannot read '%s': %s", path ? path : "standard input", buf ? strerror(errno) : "out of memory");
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

int file_exists(const char *path) { return access(path, R_OK) == 0; }

int write_file_atomic(const char *path, const void *data, size_t len)
{
    char tmp[PATH_MAX + 16];
    errno = ENAMETOOLONG;
    const int fd = snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path) < (int)sizeof tmp ? mkstemp(tmp) : -1;
    if (fd < 0) {
        err("cannot create a file beside '%s': %s", path, strerror(errno));
        return EXIT_RUNTIME;
    }
    const unsigned char *p = data;
    size_t done = 0;
    int e = 0; /* the first failure's errno */
    while (!e && done < len) {
        ssize_t w = write(fd, p + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) e = w < 0 ? errno : EIO;
        else done += (size_t)w;
    }
    if (!e && fsync(fd) != 0) e = errno;
    if (!e && fchmod(fd, 0644) != 0) e = errno;
    if (close(fd) != 0 && !e) e = errno;
    if (!e && rename(tmp, path) != 0) e = errno;
    if (e) {
        err("cannot write '%s': %s (nothing was replaced)", path, strerror(e));
        unlink(tmp);
        return EXIT_RUNTIME;
    }
    return 0;
}

int same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    if (!a || !b) return 0;
    if (strcmp(a, b) == 0) return 1;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

void exe_dir(char *buf, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", buf, cap - 1);
    buf[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(buf, '/');
    if (slash) *slash = '\0';
    else buf[0] = '\0';
}

/* ---------------------------------------------------------------- model */

/* <exe>/../models is right for build/bdh in a checkout; <exe>/../share/bdh
 * for PREFIX/bin/bdh after `make install` into any prefix. */
const char *default_model(char *buf, size_t cap)
{
    const char *env = getenv("BDH_MODEL");
    if (env && *env) return env;
    char here[PATH_MAX];
    exe_dir(here, sizeof here);
    if (!*here) {
        snprintf(buf, cap, "models/" DEFAULT_MODEL_NAME);
        if (file_exists(buf)) return buf;
        err("no model given (-m), BDH_MODEL is not set, and the default model is not at '%s'; pass -m MODEL",
            buf);
        return NULL;
    }
    snprintf(buf, cap, "%s/../share/bdh/" DEFAULT_MODEL_NAME, here);
    if (file_exists(buf)) return buf;
    snprintf(buf, cap, "%s/../models/" DEFAULT_MODEL_NAME, here);
    if (file_exists(buf)) return buf;
    err("no model given (-m), BDH_MODEL is not set, and the default model is neither at '%s/../share/bdh/"
        DEFAULT_MODEL_NAME "' (installed) nor at '%s' (checkout); pass -m MODEL", here, buf);
    return NULL;
}

int load_model(const char *path, int threads, bdh_weight_type weights, bdh_model **out)
{
    return load_model_at(path, threads, weights, NULL, out);
}

int load_model_at(const char *path, int threads, bdh_weight_type weights, const model_place *p, bdh_model **out)
{
    bdh_model_params mp = bdh_model_default_params();
    mp.n_threads = threads;
    mp.weight_type = weights;
    if (p) {
        mp.device = p->device;
        mp.cuda_device = p->cuda_device;
    }
    bdh_status rc = bdh_model_load(path, &mp, out);
    if (rc != BDH_OK) {
        err("cannot load model: %s", bdh_last_error()); /* the message names the file */
        return EXIT_RUNTIME;
    }
    return 0;
}

const char *find_model(const model_opts *o, char *buf, size_t cap)
{
    return o->model ? o->model : default_model(buf, cap);
}

int load_model_opts(const char *path, const model_opts *o, bdh_model **out)
{
    return load_model_at(path, (int)o->threads, o->weights, &o->place, out);
}

void print_loaded_model(const char *path, const model_opts *o, const bdh_model *m)
{
    char where[32];
    fprintf(stderr, "model:   %s\ndevice:  %s\nweights: %s, %.2f MiB in memory\n", path,
            place_name(&o->place, where, sizeof where), weights_name(o->weights), mib(bdh_model_weight_bytes(m)));
}

int need_byte_model(const char *cmd, const bdh_model *m)
{
    bdh_config c;
    bdh_model_config(m, &c);
    if (c.vocab_size == 256) return 0;
    err("'bdh %s' needs a byte-level model (vocab_size 256); this one has %d", cmd, (int)c.vocab_size);
    return EXIT_RUNTIME;
}

double mib(size_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

size_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}
