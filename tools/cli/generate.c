/* bdh generate: stream bytes from a byte-level model (docs/cli.md). */
#include "cli.h"

#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void generate_help(FILE *out)
{
    fputs("Usage: bdh generate [-m MODEL] [-p PROMPT | -f FILE] [options]\n"
          "\n"
          "Stream text from a byte-level model (vocab_size 256). Only the generated\n"
          "bytes go to standard output (after the prompt with --echo), each flushed as\n"
          "soon as it exists. Without -p or -f the prompt is read from standard input;\n"
          "it must not be empty.\n"
          "\n"
          "  -m, --model FILE        model (default: $BDH_MODEL, else the shipped\n"
          "                          models/" DEFAULT_MODEL_NAME ")\n"
          "  -p, --prompt TEXT       prompt text\n"
          "  -f, --file FILE         read the prompt from FILE\n"
          "      --echo              write the prompt to standard output first\n"
          "  -n, --max-tokens N      bytes to generate (default 256)\n"
          "      --temperature T     0 = greedy (default 0.8)\n"
          "      --top-k K           keep the K most likely, ties included\n"
          "                          (default 0 = off)\n"
          "      --top-p P           nucleus mass in (0, 1] (default 1 = off)\n"
          "      --min-p P           drop p < P * p_max, in [0, 1] (default 0 = off)\n"
          "      --repeat-penalty R  penalty for recent bytes (default 1 = off)\n"
          "      --repeat-window N   how many recent bytes it sees (default 64)\n"
          "      --seed S            random seed (default: from the clock; -v shows it)\n"
          "      --stop STR          stop after STR is generated (repeatable)\n"
          "      --threads N         CPU threads (default 0 = all cores)\n"
          "      --weights TYPE      hold the weights as f32 (default), bf16, f16, q8_0,\n"
          "                          or as stored in the file (stored)\n"
          "      --device DEV        cpu (default) or cuda (a build with make CUDA=1)\n"
          "      --cuda-device N     which GPU with --device cuda (default 0)\n"
          "  -v, --verbose           seed, weights and speed statistics on standard error\n"
          "  -h, --help              this help\n",
          out);
}

typedef struct gen_opts {
    model_opts run;
    const char *prompt, *prompt_file;
    int echo;
    gen_settings g;
} gen_opts;

enum { OPT_ECHO = OPT_GEN_NEXT };

static const char *const U = "generate ";

/* ------------------------------------ the options chat shares */

gen_settings gen_settings_default(void)
{
    gen_settings g = {.n_tokens = 256, .sp = bdh_sampler_default_params()};
    g.sp.temperature = 0.8f;
    return g;
}

void gen_settings_free(gen_settings *g)
{
    free(g->stop);
    free(g->stop_len);
    g->stop = NULL;
    g->stop_len = NULL;
    g->n_stop = 0;
}

int is_gen_option(int c) { return c == 'n' || (c >= OPT_TEMP && c <= OPT_STOP); }

static int add_stop(gen_settings *o, const char *s)
{
    const char **stop = realloc(o->stop, (size_t)(o->n_stop + 1) * sizeof *stop);
    if (stop) o->stop = stop;
    size_t *len = realloc(o->stop_len, (size_t)(o->n_stop + 1) * sizeof *len);
    if (len) o->stop_len = len;
    if (!stop || !len) return -1;
    o->stop[o->n_stop] = s;
    o->stop_len[o->n_stop++] = strlen(s);
    return 0;
}

/* Range checks are the library's (see finish_gen_settings). */
static int set_float(const char *cmd, const char *name, const char *arg, float *out)
{
    if (parse_float(arg, out)) return usage_fail(cmd, "%s needs a number, not '%s'", name, arg);
    return 0;
}

int parse_gen_option(const char *cmd, gen_settings *o, int c, const char *arg)
{
    long v;
    switch (c) {
    case 'n':
        if (parse_long(arg, 0, INT32_MAX, &o->n_tokens)) return usage_fail(cmd, "-n needs a count >= 0, not '%s'", arg);
        return 0;
    case OPT_TOPK:
        if (parse_long(arg, 0, INT32_MAX, &v)) return usage_fail(cmd, "--top-k needs an integer >= 0, not '%s'", arg);
        o->sp.top_k = (int32_t)v;
        return 0;
    case OPT_REPW:
        if (parse_long(arg, 0, INT32_MAX, &v)) return usage_fail(cmd, "--repeat-window needs an integer >= 0, not '%s'", arg);
        o->sp.repeat_window = (int32_t)v;
        return 0;
    case OPT_SEED:
        if (parse_u64(arg, &o->sp.seed)) return usage_fail(cmd, "--seed needs an unsigned 64-bit integer, not '%s'", arg);
        o->seeded = 1;
        return 0;
    case OPT_STOP:
        if (!*arg) return usage_fail(cmd, "--stop needs a non-empty string");
        if (add_stop(o, arg)) {
            err("out of memory");
            return EXIT_RUNTIME;
        }
        return 0;
    case OPT_TEMP: return set_float(cmd, "--temperature", arg, &o->sp.temperature);
    case OPT_TOPP: return set_float(cmd, "--top-p", arg, &o->sp.top_p);
    case OPT_MINP: return set_float(cmd, "--min-p", arg, &o->sp.min_p);
    case OPT_REPP: return set_float(cmd, "--repeat-penalty", arg, &o->sp.repeat_penalty);
    }
    return usage_fail(cmd, "unhandled option"); /* a longopts entry without a case */
}

static uint64_t clock_seed(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec * 1000000007ull) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
}

int finish_gen_settings(const char *cmd, gen_settings *g)
{
    /* The library is the one authority on valid sampler settings. */
    bdh_sampler *probe;
    if (bdh_sampler_new(&g->sp, 256, &probe) != BDH_OK) return usage_fail(cmd, "%s", bdh_last_error());
    bdh_sampler_free(probe);
    if (!g->seeded) g->sp.seed = clock_seed();
    return 0;
}

bdh_generate_params gen_params(const gen_settings *g)
{
    bdh_generate_params gp = bdh_generate_default_params();
    gp.sampler = g->sp;
    gp.max_new_tokens = (int32_t)g->n_tokens;
    gp.stop = g->stop;
    gp.stop_len = g->stop_len;
    gp.n_stop = g->n_stop;
    return gp;
}

/* ------------------------------------------------- generate itself */

/* One option of generate; returns 0 or an exit code. */
static int generate_opt(gen_opts *o, int c, const char *arg)
{
    int rc;
    switch (c) {
    case 'p': o->prompt = arg; return 0;
    case 'f': o->prompt_file = arg; return 0;
    case OPT_ECHO: o->echo = 1; return 0;
    }
    if (parse_model_option(U, c, arg, &o->run, &rc)) return rc;
    if (is_gen_option(c)) return parse_gen_option(U, &o->g, c, arg);
    return usage_fail(U, "unhandled option"); /* a longopts entry without a case */
}

/* 0, -1 after --help, or an exit code. */
static int generate_parse(int argc, char **argv, gen_opts *o)
{
    static const struct option longopts[] = {
        MODEL_LONGOPTS,
        {"prompt", required_argument, NULL, 'p'},
        {"file", required_argument, NULL, 'f'},
        GEN_LONGOPTS,
        {"echo", no_argument, NULL, OPT_ECHO},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, ":m:p:f:n:vh", longopts, NULL)) != -1) {
        if (c == 'h') {
            generate_help(stdout);
            return -1;
        }
        if (c == '?' || c == ':') return bad_option(U, c, argv);
        int rc = generate_opt(o, c, optarg);
        if (rc) return rc;
    }
    if (optind < argc) return usage_fail(U, "unexpected argument '%s'", argv[optind]);
    if (o->prompt && o->prompt_file) return usage_fail(U, "give the prompt with -p or -f, not both");
    int rc = check_place(U, &o->run.place);
    return rc ? rc : finish_gen_settings(U, &o->g);
}

/* A generator ends by length or by a stop sequence (BDH_STOP_CALLBACK is
 * bdh_generate's; here a failed write is an error, with no statistics). */
static const char *stop_reason_name(bdh_stop_reason r)
{
    return r == BDH_STOP_SEQUENCE ? "stop sequence" : "length";
}

static void print_gen_stats(const bdh_model *m, const bdh_generate_stats *st)
{
    const double pre = st->prefill_seconds > 0 ? (double)st->n_prompt / st->prefill_seconds : 0.0;
    const double dec = st->decode_seconds > 0 ? (double)st->n_generated / st->decode_seconds : 0.0;
    fprintf(stderr, "\nprefill: %" PRId64 " tokens in %.3f s (%.1f tok/s)\n", st->n_prompt, st->prefill_seconds, pre);
    fprintf(stderr, "decode:  %" PRId64 " tokens in %.3f s (%.1f tok/s), stopped by %s\n", st->n_generated,
            st->decode_seconds, dec, stop_reason_name(st->stop_reason));
    fprintf(stderr, "state:   %.2f MiB per stream\n", mib(bdh_model_state_bytes(m)));
}

/* Pull the tokens from a generator and write each as it comes; a failed
 * write (closed pipe) ends the run with an error. */
static int stream(bdh_state *s, const int32_t *prompt, size_t len, const bdh_generate_params *gp,
                  bdh_generate_stats *stats)
{
    bdh_generator *g;
    bdh_status st = bdh_generator_new(s, prompt, len, gp, &g);
    int rc = 0;
    int32_t token;
    while (st == BDH_OK && (st = bdh_generator_next(g, &token)) == BDH_OK && token >= 0)
        if (putchar(token) == EOF || fflush(stdout) == EOF) {
            err("cannot write to standard output");
            rc = EXIT_RUNTIME;
            break;
        }
    if (st != BDH_OK) rc = lib_fail("generation failed", st);
    else if (!rc) bdh_generator_stats(g, stats);
    bdh_generator_free(g);
    return rc;
}

static int generate_run(const gen_opts *o, const char *model_path, const char *text, size_t len)
{
    bdh_model *m = NULL;
    bdh_state *s = NULL;
    int32_t *prompt = malloc(len * sizeof *prompt);
    if (!prompt) {
        err("out of memory");
        return EXIT_RUNTIME;
    }
    int rc = load_model_opts(model_path, &o->run, &m);
    if (!rc) rc = need_byte_model("generate", m);
    bdh_status st = BDH_OK;
    if (!rc && (st = bdh_state_new(m, &s)) != BDH_OK) rc = lib_fail("cannot create a state", st);
    if (!rc) {
        for (size_t i = 0; i < len; i++) prompt[i] = (unsigned char)text[i];
        const bdh_generate_params gp = gen_params(&o->g);
        if (o->run.verbose) {
            print_loaded_model(model_path, &o->run, m);
            fprintf(stderr, "seed:    %" PRIu64 "\n", o->g.sp.seed);
        }
        if (o->echo && (fwrite(text, 1, len, stdout) != len || fflush(stdout) == EOF)) {
            err("cannot write to standard output");
            rc = EXIT_RUNTIME;
        }
        bdh_generate_stats stats;
        if (!rc) rc = stream(s, prompt, len, &gp, &stats);
        if (!rc && o->run.verbose) print_gen_stats(m, &stats);
    }
    bdh_state_free(s);
    bdh_model_free(m);
    free(prompt);
    return rc;
}

int cmd_generate(int argc, char **argv)
{
    gen_opts o = {.run = MODEL_OPTS_DEFAULT, .g = gen_settings_default()};
    int rc = generate_parse(argc, argv, &o);
    if (rc) {
        gen_settings_free(&o.g);
        return rc < 0 ? 0 : rc;
    }
    char buf[PATH_MAX + 64];
    const char *model_path = find_model(&o.run, buf, sizeof buf);
    size_t len = 0;
    const char *text = NULL;
    char *owned = NULL; /* text when read from a file or stdin */
    if (!model_path) rc = EXIT_RUNTIME;
    else if (o.prompt) len = strlen(text = o.prompt);
    else {
        if (!o.prompt_file && isatty(0)) fputs("bdh: reading the prompt from standard input (end it with Ctrl-D)\n", stderr);
        if (!(text = owned = read_all(o.prompt_file, &len))) rc = EXIT_RUNTIME;
    }
    if (!rc && len == 0) rc = usage_fail(U, "the prompt is empty");
    if (!rc) rc = generate_run(&o, model_path, text, len);
    free(owned);
    gen_settings_free(&o.g);
    return rc;
}
