/* bdh chat: an interactive stream (docs/cli.md). Each line read from
 * standard input is fed on top of the one state the conversation keeps, and
 * the model's reply is streamed; nothing is fed twice, so a turn costs its
 * own bytes whatever came before. --save-state / --load-state carry the
 * stream across runs. */
#include "cli.h"

#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_STOP "\n\n"

static void chat_help(FILE *out)
{
    fputs("Usage: bdh chat [-m MODEL] [--load-state FILE] [--save-state FILE] [options]\n"
          "\n"
          "Talk with a byte-level model (vocab_size 256). Each line of standard input\n"
          "(a terminal or a pipe), its newline included, is fed on top of the state\n"
          "the conversation keeps; then a reply of up to -n bytes is generated and\n"
          "streamed to standard output, ending after a stop string (default a blank\n"
          "line, \"\\n\\n\"). Nothing is fed twice. End with Ctrl-D (end of input).\n"
          "Turn k samples with seed S + P, P the stream's position when the turn\n"
          "starts, so a resumed stream draws what an unbroken one would.\n"
          "\n"
          "  -m, --model FILE        model (default as for generate)\n"
          "      --load-state FILE   resume the stream a --save-state wrote (same model)\n"
          "      --save-state FILE   write the stream's state after every turn (and at\n"
          "                          the end), replacing FILE atomically\n"
          "      --echo              write each line read to standard output before its\n"
          "                          reply (the output is then the whole stream)\n"
          "  -n, --max-tokens N      bytes per reply at most (default 256)\n"
          "      --stop STR          end a reply after STR (repeatable; default \"\\n\\n\")\n"
          "      --temperature T     0 = greedy (default 0.8)\n"
          "      --top-k K, --top-p P, --min-p P, --repeat-penalty R, --repeat-window N\n"
          "                          as for generate (the penalty sees one turn's bytes)\n"
          "      --seed S            random seed (default: from the clock; -v shows it)\n"
          "      --threads N         CPU threads (default 0 = all cores)\n"
          "      --weights TYPE      hold the weights as f32 (default), bf16, f16, q8_0,\n"
          "                          or as stored in the file (stored)\n"
          "      --device DEV        cpu (default) or cuda (a build with make CUDA=1)\n"
          "      --cuda-device N     which GPU with --device cuda (default 0)\n"
          "  -v, --verbose           model, seed and one line per turn on standard error\n"
          "  -h, --help              this help\n",
          out);
}

typedef struct chat_opts {
    model_opts run;
    const char *load_state, *save_state;
    int echo;
    gen_settings g;
} chat_opts;

enum { OPT_LOAD_STATE = OPT_GEN_NEXT, OPT_SAVE_STATE, OPT_CHAT_ECHO };

static const char *const U = "chat ";

static int chat_opt(chat_opts *o, int c, const char *arg)
{
    int rc;
    switch (c) {
    case OPT_CHAT_ECHO: o->echo = 1; return 0;
    case OPT_LOAD_STATE: o->load_state = arg; return 0;
    case OPT_SAVE_STATE: o->save_state = arg; return 0;
    }
    if (parse_model_option(U, c, arg, &o->run, &rc)) return rc;
    if (is_gen_option(c)) return parse_gen_option(U, &o->g, c, arg);
    return usage_fail(U, "unhandled option"); /* a longopts entry without a case */
}

/* 0, -1 after --help, or an exit code. */
static int chat_parse(int argc, char **argv, chat_opts *o)
{
    static const struct option longopts[] = {
        MODEL_LONGOPTS,
        {"load-state", required_argument, NULL, OPT_LOAD_STATE},
        {"save-state", required_argument, NULL, OPT_SAVE_STATE},
        GEN_LONGOPTS,
        {"echo", no_argument, NULL, OPT_CHAT_ECHO},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int c, rc;
    while ((c = getopt_long(argc, argv, ":m:n:vh", longopts, NULL)) != -1) {
        if (c == 'h') {
            chat_help(stdout);
            return -1;
        }
        if (c == '?' || c == ':') return bad_option(U, c, argv);
        if ((rc = chat_opt(o, c, optarg))) return rc;
    }
    if (optind < argc) return usage_fail(U, "unexpected argument '%s'", argv[optind]);
    if (o->save_state && (same_file(o->save_state, o->run.model)))
        return usage_fail(U, "--save-state '%s' is the model; it would be overwritten", o->save_state);
    if ((rc = check_place(U, &o->run.place))) return rc;
    if (!o->g.n_stop) { /* the default stop: a reply ends at a blank line */
        if ((rc = parse_gen_option(U, &o->g, OPT_STOP, DEFAULT_STOP))) return rc;
    }
    return finish_gen_settings(U, &o->g);
}

/* ------------------------------------------------------------ the state */

static int resume(bdh_state *s, const char *path)
{
    size_t len;
    char *blob = read_all(path, &len);
    if (!blob) return EXIT_RUNTIME;
    bdh_status st = bdh_state_load(s, blob, len);
    free(blob);
    return st == BDH_OK ? 0 : lib_fail_on("cannot resume from", path, st);
}

static int save(const bdh_state *s, const char *path)
{
    const size_t cap = bdh_state_save_size(s);
    void *blob = malloc(cap);
    size_t len = 0;
    bdh_status st = blob ? bdh_state_save(s, blob, cap, &len) : BDH_ERR_OUT_OF_MEMORY;
    int rc = st == BDH_OK ? write_file_atomic(path, blob, len) : lib_fail("cannot save the state", st);
    free(blob);
    return rc;
}

/* ------------------------------------------------------------ the turns */

static int write_out(const void *p, size_t n)
{
    if (fwrite(p, 1, n, stdout) == n && fflush(stdout) != EOF) return 0;
    err("cannot write to standard output");
    return EXIT_RUNTIME;
}

/* Feed one line and stream the reply; *last gets its last byte (-1: none). */
static int turn(const chat_opts *o, bdh_state *s, const char *line, size_t n, int *last, bdh_generate_stats *stats)
{
    int32_t *tok = malloc(n * sizeof *tok);
    if (!tok) {
        err("out of memory");
        return EXIT_RUNTIME;
    }
    for (size_t i = 0; i < n; i++) tok[i] = (unsigned char)line[i];
    bdh_generate_params gp = gen_params(&o->g);
    /* seeded by position: the draws do not depend on where a run began */
    gp.sampler.seed = o->g.sp.seed + (uint64_t)bdh_state_position(s);
    bdh_generator *g;
    bdh_status st = bdh_generator_new(s, tok, n, &gp, &g);
    int rc = 0;
    int32_t t;
    *last = -1;
    while (st == BDH_OK && (st = bdh_generator_next(g, &t)) == BDH_OK && t >= 0) {
        const unsigned char byte = (unsigned char)t;
        *last = byte;
        if ((rc = write_out(&byte, 1))) break;
    }
    if (st != BDH_OK) rc = lib_fail("generation failed", st);
    else if (!rc) bdh_generator_stats(g, stats);
    bdh_generator_free(g);
    free(tok);
    return rc;
}

static void print_turn(long k, int last, const bdh_state *s, const bdh_generate_stats *st)
{
    const double dec = st->decode_seconds > 0 ? (double)st->n_generated / st->decode_seconds : 0.0;
    fprintf(stderr, "%sturn %ld: %" PRId64 " bytes fed, %" PRId64 " generated (%.1f tok/s, stopped by %s), position %" PRId64 "\n",
            last == '\n' ? "" : "\n", k, st->n_prompt, st->n_generated, dec, st->stop_reason == BDH_STOP_SEQUENCE ? "stop sequence" : "length",
            bdh_state_position(s));
}

/* Lines until the end of input; the state saved after every turn. */
static int converse(const chat_opts *o, bdh_state *s)
{
    const int tty = isatty(0);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0, last = '\n';
    long k = 0;
    if (tty) fputs("bdh: chat: type a line and Enter; Ctrl-D ends\n", stderr);
    for (;;) {
        if (tty) fputs(last == '\n' || last < 0 ? "> " : "\n> ", stderr);
        if ((n = getline(&line, &cap, stdin)) <= 0) break;
        if (o->echo && (rc = write_out(line, (size_t)n))) break;
        bdh_generate_stats stats;
        if ((rc = turn(o, s, line, (size_t)n, &last, &stats))) break;
        k++;
        if (o->run.verbose) print_turn(k, last, s, &stats);
        if (o->save_state && (rc = save(s, o->save_state))) break;
    }
    if (tty && !rc) fputc('\n', stderr);
    if (!rc && ferror(stdin)) {
        err("cannot read standard input");
        rc = EXIT_RUNTIME;
    }
    if (!rc && k == 0 && o->save_state) rc = save(s, o->save_state); /* the file exists after any clean run */
    free(line);
    return rc;
}

static int chat_run(const chat_opts *o, const char *model_path)
{
    bdh_model *m = NULL;
    bdh_state *s = NULL;
    int rc = load_model_opts(model_path, &o->run, &m);
    if (!rc) rc = need_byte_model("chat", m);
    bdh_status st = BDH_OK;
    if (!rc && (st = bdh_state_new(m, &s)) != BDH_OK) rc = lib_fail("cannot create a state", st);
    if (!rc && o->load_state) rc = resume(s, o->load_state);
    if (!rc && o->run.verbose) {
        print_loaded_model(model_path, &o->run, m);
        fprintf(stderr, "seed:    %" PRIu64 "\nposition: %" PRId64 "\n", o->g.sp.seed, bdh_state_position(s));
    }
    if (!rc) rc = converse(o, s);
    bdh_state_free(s);
    bdh_model_free(m);
    return rc;
}

int cmd_chat(int argc, char **argv)
{
    chat_opts o = {.run = MODEL_OPTS_DEFAULT, .g = gen_settings_default()};
    int rc = chat_parse(argc, argv, &o);
    if (!rc) {
        char buf[PATH_MAX + 64];
        const char *model_path = find_model(&o.run, buf, sizeof buf);
        rc = model_path ? chat_run(&o, model_path) : EXIT_RUNTIME;
    }
    gen_settings_free(&o.g);
    return rc < 0 ? 0 : rc;
}
