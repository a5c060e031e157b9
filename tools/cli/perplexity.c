/* bdh perplexity: bits per byte of a byte-level model over a file
 * (docs/cli.md). */
#include "cli.h"

#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define PPL_BLOCK 512

static void perplexity_help(FILE *out)
{
    fputs("Usage: bdh perplexity [-m MODEL] -f TEXT [options]\n"
          "\n"
          "Bits per byte of a byte-level model over a file, read as ONE stream from a\n"
          "zero state: byte i is predicted from bytes 0..i-1, for i = 1..n-1 (the\n"
          "first byte has no prediction). Prints 'bits per byte: X (N predictions)'.\n"
          "\n"
          "  -m, --model FILE    model (default as for generate)\n"
          "  -f, --file TEXT     the text to score\n"
          "      --offset BYTES  start this many bytes into the file (default 0)\n"
          "      --length BYTES  score at most this many bytes (default: to the end)\n"
          "      --window BYTES  cut the text into windows of this many bytes, each\n"
          "                      scored from a zero state (byte i of a window predicted\n"
          "                      from the window's bytes before it); default: one stream\n"
          "      --threads N     CPU threads (default 0 = all cores)\n"
          "      --weights TYPE  hold the weights as f32 (default), bf16, f16, q8_0,\n"
          "                      or as stored in the file (stored)\n"
          "      --device DEV    cpu (default) or cuda (a build with make CUDA=1)\n"
          "      --cuda-device N which GPU with --device cuda (default 0)\n"
          "  -h, --help          this help\n"
          "\n"
          "The validation split of tiny Shakespeare (its last 10%, from byte\n"
          "int(0.9 * 1115394) = 1003854), in the 256-byte windows the shipped model\n"
          "was trained on:\n"
          "  bdh perplexity -f models/tinyshakespeare.txt --offset 1003854 --window 256\n",
          out);
}

typedef struct ppl_opts {
    model_opts run;
    const char *file;
    text_span span;
    long window; /* 0: one stream */
} ppl_opts;

enum { OPT_WINDOW = OPT_COMMAND };

/* 0, -1 after --help, or an exit code. */
static int perplexity_parse(int argc, char **argv, ppl_opts *o)
{
    static const struct option longopts[] = {
        MODEL_LONGOPTS,
        {"file", required_argument, NULL, 'f'},
        {"offset", required_argument, NULL, OPT_OFFSET},
        {"length", required_argument, NULL, OPT_LENGTH},
        {"window", required_argument, NULL, OPT_WINDOW},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *const U = "perplexity ";
    int c, rc;
    while ((c = getopt_long(argc, argv, ":m:f:h", longopts, NULL)) != -1) {
        if (parse_model_option(U, c, optarg, &o->run, &rc)) {
            if (rc) return rc;
            continue;
        }
        switch (c) {
        case 'h': perplexity_help(stdout); return -1;
        case 'f': o->file = optarg; break;
        case OPT_OFFSET:
        case OPT_LENGTH:
            if ((rc = parse_text_option(U, c, &o->span))) return rc;
            break;
        case OPT_WINDOW:
            if (parse_long(optarg, 2, LONG_MAX, &o->window)) return usage_fail(U, "--window needs bytes >= 2, not '%s'", optarg);
            break;
        default: return bad_option(U, c, argv);
        }
    }
    if (optind < argc) return usage_fail(U, "unexpected argument '%s'", argv[optind]);
    if ((rc = check_place(U, &o->run.place))) return rc;
    if (!o->file) return usage_fail(U, "perplexity needs a text file (-f TEXT)");
    return 0;
}

/* -log2 p(target) from one row of logits, log-softmax in double. */
static double bits_of(const float *logits, int V, int target)
{
    double max = logits[0];
    for (int i = 1; i < V; i++)
        if (logits[i] > max) max = logits[i];
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - max);
    return (max + log(sum) - (double)logits[target]) / log(2.0);
}

static void progress(size_t done, size_t total)
{
    const int width = 40, fill = total ? (int)((double)done / (double)total * width) : width;
    fprintf(stderr, "\r[%.*s%*s] %3d%%", fill, "########################################", width - fill, "",
            total ? (int)(100.0 * (double)done / (double)total) : 100);
}

/* Sum of bits over predictions for bytes 1..n-1, blocks of PPL_BLOCK fed with
 * bdh_prefill_all and the state carried between them. */
static int score(bdh_state *s, const unsigned char *text, size_t n, double *bits)
{
    const int V = 256, bar = isatty(2) && n > PPL_BLOCK;
    int32_t *tok = malloc(PPL_BLOCK * sizeof *tok);
    float *logits = malloc((size_t)PPL_BLOCK * V * sizeof *logits);
    int rc = 0;
    if (!tok || !logits) {
        err("out of memory");
        rc = EXIT_RUNTIME;
    }
    *bits = 0.0;
    /* Only bytes 0..n-2 are fed: the last one predicts nothing we score. */
    for (size_t start = 0; !rc && start < n - 1; start += PPL_BLOCK) {
        const size_t len = n - 1 - start < PPL_BLOCK ? n - 1 - start : PPL_BLOCK;
        for (size_t i = 0; i < len; i++) tok[i] = text[start + i];
        bdh_status st = bdh_prefill_all(s, tok, len, logits);
        if (st != BDH_OK) {
            rc = lib_fail("prefill failed", st);
            break;
        }
        for (size_t i = 0; i < len; i++) *bits += bits_of(logits + i * V, V, text[start + i + 1]);
        if (bar) progress(start + len, n - 1);
    }
    if (bar) fputs("\r\033[K", stderr);
    free(tok);
    free(logits);
    return rc;
}

int cmd_perplexity(int argc, char **argv)
{
    ppl_opts o = {.run = MODEL_OPTS_DEFAULT};
    int rc = perplexity_parse(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    char buf[PATH_MAX + 64];
    const char *model_path = find_model(&o.run, buf, sizeof buf);
    if (!model_path) return EXIT_RUNTIME;
    size_t len;
    unsigned char *data = (unsigned char *)read_all(o.file, &len);
    if (!data) return EXIT_RUNTIME;
    const size_t off = (size_t)o.span.offset < len ? (size_t)o.span.offset : len;
    size_t n = len - off;
    if (o.span.length && (size_t)o.span.length < n) n = (size_t)o.span.length;
    bdh_model *m = NULL;
    bdh_state *s = NULL;
    bdh_status st = BDH_OK;
    if (n < 2) {
        err("'%s' has %zu bytes to score from offset %zu; at least 2 are needed", o.file, n, off);
        rc = EXIT_RUNTIME;
    }
    if (!rc) rc = load_model_opts(model_path, &o.run, &m);
    if (!rc) rc = need_byte_model("perplexity", m);
    if (!rc && (st = bdh_state_new(m, &s)) != BDH_OK) rc = lib_fail("cannot create a state", st);
    /* one stream, or windows each from a zero state (the last may be shorter) */
    const size_t window = o.window ? (size_t)o.window : n;
    double bits = 0.0;
    size_t predictions = 0;
    for (size_t w = 0; !rc && w + 1 < n; w += window) {
        const size_t wn = n - w < window ? n - w : window;
        double b = 0.0;
        if ((st = bdh_state_reset(s)) != BDH_OK) rc = lib_fail("cannot reset the state", st);
        if (!rc && wn >= 2) rc = score(s, data + off + w, wn, &b);
        bits += b;
        predictions += wn >= 2 ? wn - 1 : 0;
        if (o.window && isatty(2)) progress(w + wn, n);
    }
    if (o.window && isatty(2)) fputs("\r\033[K", stderr);
    if (!rc) printf("bits per byte: %.4f (%zu predictions)\n", bits / (double)predictions, predictions);
    bdh_state_free(s);
    bdh_model_free(m);
    free(data);
    return rc;
}
