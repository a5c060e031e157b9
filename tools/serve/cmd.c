/* bdh serve: the command (docs/server.md). Flags, the model, the store,
 * then serve until SIGTERM or SIGINT: stop taking requests, let running
 * ones finish (cut after SHUTDOWN_GRACE seconds), store every session,
 * exit 0. */
#include "cli.h"
#include "serve.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SHUTDOWN_GRACE 5.0

static void serve_help(FILE *out)
{
    fputs("Usage: bdh serve [-m MODEL] [options]\n"
          "\n"
          "An OpenAI-compatible completion server (POST /v1/completions and\n"
          "/v1/chat/completions, GET /v1/models, /health, /metrics) with sessions that\n"
          "survive restarts (docs/server.md).\n"
          "SIGTERM or SIGINT: stop taking requests, finish running ones (cut after 5 s),\n"
          "store every session, exit 0.\n"
          "\n"
          "  -m, --model FILE        model (default: $BDH_MODEL, else the shipped\n"
          "                          models/" DEFAULT_MODEL_NAME ")\n"
          "      --host HOST         address to listen on (default 127.0.0.1)\n"
          "      --port PORT         port (default 8080; 0 = any free one, printed)\n"
          "      --sessions STORE    a directory (default bdh-sessions) or\n"
          "                          redis://HOST:PORT[/DB] to share sessions between\n"
          "                          servers\n"
          "      --device DEV        cpu (default) or cuda\n"
          "      --cuda-device N     which GPU with --device cuda (default 0)\n"
          "      --weights TYPE      hold the weights as f32 (default), bf16, f16, q8_0,\n"
          "                          or as stored in the file (stored)\n"
          "      --threads N         CPU threads (default 0 = all cores)\n"
          "      --memory BYTES      idle session states kept in memory (default 1G;\n"
          "                          suffixes K, M, G)\n"
          "      --max-streams N     requests generating at once (default 16)\n"
          "      --max-queue N       requests waiting beyond those (default 64; then 503)\n"
          "      --max-body BYTES    largest request body (default 8M; then 413)\n"
          "      --max-tokens N      largest max_tokens a request may ask for (and a\n"
          "                          chat reply's default)\n"
          "                          (default 8192)\n"
          "      --timeout SECONDS   time a completion may take, queue included\n"
          "                          (default 300)\n"
          "  -h, --help              this help\n",
          out);
}

static const char *const U = "serve ";

enum { OPT_HOST = OPT_COMMAND, OPT_PORT, OPT_SESSIONS, OPT_MEMORY, OPT_STREAMS, OPT_QUEUE, OPT_BODY,
       OPT_MAXTOK, OPT_TIMEOUT };

typedef struct serve_opts {
    serve_config cfg;
    model_opts run; /* -m (into cfg.model_path), --threads, --weights, the place */
} serve_opts;

/* 0 and *out, or -1: a count with an optional K, M or G (powers of 1024). */
static int parse_bytes(const char *s, size_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *s == '-') return -1;
    unsigned shift = 0;
    if (*end == 'K' || *end == 'k') shift = 10;
    else if (*end == 'M' || *end == 'm') shift = 20;
    else if (*end == 'G' || *end == 'g') shift = 30;
    if (shift) end++;
    if (*end || v > (SIZE_MAX >> shift)) return -1;
    *out = (size_t)v << shift;
    return 0;
}

static int serve_opt(serve_opts *o, int c, const char *arg)
{
    long v;
    double t;
    char *end;
    int rc;
    if (parse_model_option(U, c, arg, &o->run, &rc)) return rc;
    switch (c) {
    case OPT_HOST: o->cfg.host = arg; return 0;
    case OPT_SESSIONS: o->cfg.sessions = arg; return 0;
    case OPT_PORT:
        if (parse_long(arg, 0, 65535, &v)) return usage_fail(U, "--port needs a port from 0 to 65535, not '%s'", arg);
        o->cfg.port = (int)v;
        return 0;
    case OPT_MEMORY:
        if (parse_bytes(arg, &o->cfg.memory)) return usage_fail(U, "--memory needs bytes (suffix K, M or G allowed), not '%s'", arg);
        return 0;
    case OPT_BODY:
        if (parse_bytes(arg, &o->cfg.max_body) || o->cfg.max_body == 0)
            return usage_fail(U, "--max-body needs bytes >= 1 (suffix K, M or G allowed), not '%s'", arg);
        return 0;
    case OPT_STREAMS:
        if (parse_long(arg, 1, 4096, &v)) return usage_fail(U, "--max-streams needs a count from 1 to 4096, not '%s'", arg);
        o->cfg.max_streams = (int)v;
        return 0;
    case OPT_QUEUE:
        if (parse_long(arg, 0, 100000, &v)) return usage_fail(U, "--max-queue needs a count from 0 to 100000, not '%s'", arg);
        o->cfg.max_queue = (int)v;
        return 0;
    case OPT_MAXTOK:
        if (parse_long(arg, 0, INT32_MAX, &v)) return usage_fail(U, "--max-tokens needs a count >= 0, not '%s'", arg);
        o->cfg.max_tokens = (int)v;
        return 0;
    case OPT_TIMEOUT:
        t = strtod(arg, &end);
        if (end == arg || *end || !(t > 0) || t > 1e9) return usage_fail(U, "--timeout needs seconds > 0, not '%s'", arg);
        o->cfg.timeout = t;
        return 0;
    }
    return usage_fail(U, "unhandled option");
}

static int serve_parse(int argc, char **argv, serve_opts *o)
{
    static const struct option longopts[] = {
        MODEL_LONGOPTS,
        {"host", required_argument, NULL, OPT_HOST},
        {"port", required_argument, NULL, OPT_PORT},
        {"sessions", required_argument, NULL, OPT_SESSIONS},
        {"memory", required_argument, NULL, OPT_MEMORY},
        {"max-streams", required_argument, NULL, OPT_STREAMS},
        {"max-queue", required_argument, NULL, OPT_QUEUE},
        {"max-body", required_argument, NULL, OPT_BODY},
        {"max-tokens", required_argument, NULL, OPT_MAXTOK},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":m:h", longopts, NULL)) != -1) {
        if (c == 'h') {
            serve_help(stdout);
            return -1;
        }
        if (c == '?' || c == ':') return bad_option(U, c, argv);
        int rc = serve_opt(o, c, optarg);
        if (rc) return rc;
    }
    if (optind < argc) return usage_fail(U, "unexpected argument '%s'", argv[optind]);
    o->cfg.model_path = o->run.model;
    return check_place(U, &o->run.place);
}

/* "shakespeare" for .../shakespeare.safetensors */
static char *model_name(const char *path)
{
    const char *base = strrchr(path, '/');
    char *name = strdup(base ? base + 1 : path);
    if (!name) return NULL;
    char *dot = strstr(name, ".safetensors");
    if (dot && dot != name && dot[12] == '\0') *dot = '\0';
    return name;
}

static int load(const serve_opts *o, const char *path, bdh_model **m)
{
    const int rc = load_model_opts(path, &o->run, m);
    return rc ? rc : need_byte_model("serve", *m);
}

/* SIGTERM and SIGINT write a byte to this pipe; the main thread waits on
 * it. The threads started here (model, scheduler, HTTP) block them, so the
 * kernel hands them to the main thread. (Not sigwait: OpenBLAS starts its
 * threads before main with the signals unblocked, and the default action
 * there would kill the process.) A second signal during the shutdown
 * changes nothing. */
static int signal_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    const char c = (char)sig;
    ssize_t n = write(signal_pipe[1], &c, 1);
    (void)n; /* full pipe: a shutdown is under way already */
}

static int catch_signals(void)
{
    if (pipe(signal_pipe)) return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-write is an error return, not death */
    return sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL) ? -1 : 0;
}

/* how = SIG_BLOCK around starting threads, SIG_UNBLOCK after */
static void mask_signals(int how)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(how, &set, NULL);
}

static void wait_for_signal(void)
{
    char c = 0;
    /* a bounded poll rather than one blocking read: ThreadSanitizer runs a
     * handler only when its thread next enters the runtime */
    struct pollfd p = {.fd = signal_pipe[0], .events = POLLIN};
    while (poll(&p, 1, 200) <= 0 || read(signal_pipe[0], &c, 1) != 1) {}
    fprintf(stderr, "bdh serve: %s: finishing running requests, storing sessions\n", c == SIGTERM ? "SIGTERM" : "SIGINT");
}

static int run(serve_opts *o)
{
    char buf[PATH_MAX + 64], why[512];
    const char *path = o->cfg.model_path ? o->cfg.model_path : default_model(buf, sizeof buf);
    if (!path) return EXIT_RUNTIME;
    o->cfg.model_path = path;
    char *name = model_name(path);
    o->cfg.model_name = name ? name : "model";

    if (catch_signals()) {
        err("cannot set up the signal handlers: %s", strerror(errno));
        free(name);
        return EXIT_RUNTIME;
    }
    mask_signals(SIG_BLOCK);
    bdh_model *m = NULL;
    store *st = NULL;
    sessions *ss = NULL;
    batch *b = NULL;
    server *srv = NULL;
    int rc = load(o, path, &m);
    if (!rc && store_open(o->cfg.sessions, &st, why, sizeof why) != STORE_OK) {
        err("cannot open the session store: %s", why);
        rc = EXIT_RUNTIME;
    }
    if (!rc && sessions_open(m, st, o->cfg.memory, &ss, why, sizeof why) != SESS_OK) {
        err("%s", why);
        rc = EXIT_RUNTIME;
    }
    if (!rc && batch_start(m, o->cfg.max_streams, o->cfg.max_queue, &b, why, sizeof why)) {
        err("%s", why);
        rc = EXIT_RUNTIME;
    }
    if (!rc && server_start(&o->cfg, m, b, ss, &srv)) rc = EXIT_RUNTIME;
    mask_signals(SIG_UNBLOCK); /* a signal that came meanwhile is handled now */
    if (!rc) {
        const bool v6 = strchr(o->cfg.host, ':') != NULL; /* an IPv6 address goes in brackets */
        fprintf(stderr, "bdh serve: listening on http://%s%s%s:%d (model %s, sessions in %s '%s', state %.2f MiB per stream)\n",
                v6 ? "[" : "", o->cfg.host, v6 ? "]" : "", server_port(srv), o->cfg.model_name, store_kind(st), o->cfg.sessions,
                mib(bdh_model_state_bytes(m)));
        wait_for_signal();
        server_quiesce(srv);
        batch_drain(b, SHUTDOWN_GRACE);
        server_stop(srv, 10.0); /* connections store their sessions and send their last bytes */
    }
    batch_stop(b);
    if (ss && sessions_close(ss, why, sizeof why) != SESS_OK) rc = EXIT_RUNTIME;
    store_close(st);
    bdh_model_free(m);
    free(name);
    if (!rc) fprintf(stderr, "bdh serve: stopped\n");
    return rc;
}

int cmd_serve(int argc, char **argv)
{
    serve_opts o = {.run = MODEL_OPTS_DEFAULT};
    o.cfg = (serve_config){.host = "127.0.0.1", .port = 8080, .sessions = "bdh-sessions", .memory = (size_t)1 << 30,
                           .max_streams = 16, .max_queue = 64, .max_body = (size_t)8 << 20, .max_tokens = 8192,
                           .timeout = 300};
    int rc = serve_parse(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    return run(&o);
}
