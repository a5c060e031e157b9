/* bdh trace: run a text through a byte-level model and record which neurons
 * fired (docs/cli.md). The file it writes is specified, to the byte, in
 * docs/trace-format.md; trace_write below follows that spec, which
 * bdh.Trace.save() in Python follows too. */
#include "cli.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the format's name, metadata "format" (docs/trace-format.md) */
#define TRACE_FORMAT "bdh-trace-1"

static void trace_help(FILE *out)
{
    fputs("Usage: bdh trace [-m MODEL] (-f TEXT | -p TEXT) -o OUT.safetensors [options]\n"
          "\n"
          "Run a text through a byte-level model from a zero state and record, for\n"
          "every byte and layer, which neurons fired: the active entries of x_sparse\n"
          "and of the gated y (x_sparse * y_sparse), with their values, and the\n"
          "fraction of neurons active. Written as a safetensors file\n"
          "(docs/observability.md) that the Python package reads (libbdh.load_trace)\n"
          "and draws (python3 -m libbdh.plot).\n"
          "\n"
          "  -m, --model FILE       model (default as for generate)\n"
          "  -f, --file TEXT        the text to trace\n"
          "  -p, --prompt TEXT      or the text itself\n"
          "  -o, --output OUT       the trace file to write\n"
          "      --synapse L,I,J    also record the Hebbian co-activation sigma of synapse\n"
          "                         (layer L >= 1, pre-synaptic neuron I of layer L-1,\n"
          "                         post-synaptic neuron J of layer L; I and J head-major,\n"
          "                         h*N + n) after every byte; repeatable\n"
          "      --offset BYTES     start this many bytes into the file (default 0)\n"
          "      --length BYTES     trace at most this many bytes (default: to the end)\n"
          "      --png DIR          then draw the pictures into DIR with\n"
          "                         'python3 -m libbdh.plot OUT --out DIR'\n"
          "                         (needs matplotlib)\n"
          "      --threads N        CPU threads (default 0 = all cores)\n"
          "      --weights TYPE     hold the weights as f32 (default), bf16, f16, q8_0,\n"
          "                         or as stored in the file (stored)\n"
          "      --device DEV       cpu (default) or cuda (a build with make CUDA=1; the\n"
          "                         activations are observed on the CPU only)\n"
          "      --cuda-device N    which GPU with --device cuda (default 0)\n"
          "  -h, --help             this help\n"
          "\n"
          "Example:\n"
          "  bdh trace -f models/tinyshakespeare.txt --length 400 \\\n"
          "      -o trace.safetensors --png pictures\n",
          out);
}

#define MAX_SYNAPSES 4096

typedef struct trace_opts {
    model_opts run;
    const char *file, *text, *output, *png;
    text_span span;
    int32_t (*syn)[3];
    int n_syn;
} trace_opts;

enum { OPT_SYNAPSE = OPT_COMMAND, OPT_PNG };

static const char *const U = "trace ";

/* "L,I,J": three integers; layer 0 is refused here (it has no layer below),
 * the upper bounds by the library once the model is loaded. */
static int parse_synapse(trace_opts *o, const char *arg)
{
    long v[3];
    char buf[96];
    if (strlen(arg) >= sizeof buf) return usage_fail(U, "--synapse needs LAYER,I,J, not '%s'", arg);
    strcpy(buf, arg);
    char *field = buf;
    int n = 0;
    for (; n < 3; n++) { /* exactly three comma-separated integers, none empty */
        char *comma = strchr(field, ',');
        if ((comma != NULL) != (n < 2)) break;
        if (comma) *comma = '\0';
        if (parse_long(field, 0, INT32_MAX, &v[n])) break;
        field = comma ? comma + 1 : field;
    }
    if (n != 3) return usage_fail(U, "--synapse needs three integers >= 0, LAYER,I,J, not '%s'", arg);
    if (v[0] == 0)
        return usage_fail(U, "--synapse %s: layer 0 has no layer below; a synapse needs 1 <= LAYER < n_layer", arg);
    if (o->n_syn == MAX_SYNAPSES) return usage_fail(U, "at most %d --synapse options", MAX_SYNAPSES);
    int32_t(*syn)[3] = realloc(o->syn, (size_t)(o->n_syn + 1) * sizeof *syn);
    if (!syn) {
        err("out of memory");
        return EXIT_RUNTIME;
    }
    o->syn = syn;
    for (int k = 0; k < 3; k++) syn[o->n_syn][k] = (int32_t)v[k];
    o->n_syn++;
    return 0;
}

/* 0, -1 after --help, or an exit code. */
static int trace_parse(int argc, char **argv, trace_opts *o)
{
    static const struct option longopts[] = {
        MODEL_LONGOPTS,
        {"file", required_argument, NULL, 'f'},
        {"prompt", required_argument, NULL, 'p'},
        {"output", required_argument, NULL, 'o'},
        {"synapse", required_argument, NULL, OPT_SYNAPSE},
        {"png", required_argument, NULL, OPT_PNG},
        {"offset", required_argument, NULL, OPT_OFFSET},
        {"length", required_argument, NULL, OPT_LENGTH},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int c, rc;
    while ((c = getopt_long(argc, argv, ":m:f:p:o:h", longopts, NULL)) != -1) {
        if (parse_model_option(U, c, optarg, &o->run, &rc)) {
            if (rc) return rc;
            continue;
        }
        switch (c) {
        case 'h': trace_help(stdout); return -1;
        case 'f': o->file = optarg; break;
        case 'p': o->text = optarg; break;
        case 'o': o->output = optarg; break;
        case OPT_PNG:
            if (!*optarg) return usage_fail(U, "--png needs a directory");
            o->png = optarg;
            break;
        case OPT_SYNAPSE:
            if ((rc = parse_synapse(o, optarg))) return rc;
            break;
        case OPT_OFFSET:
        case OPT_LENGTH:
            if ((rc = parse_text_option(U, c, &o->span))) return rc;
            break;
        default: return bad_option(U, c, argv);
        }
    }
    if (optind < argc) return usage_fail(U, "unexpected argument '%s'", argv[optind]);
    if ((rc = check_place(U, &o->run.place))) return rc;
    if (!o->file && !o->text) return usage_fail(U, "trace needs a text (-f TEXT or -p TEXT)");
    if (o->file && o->text) return usage_fail(U, "give the text with -f or -p, not both");
    if (!o->output) return usage_fail(U, "trace needs an output file (-o OUT.safetensors)");
    if (same_file(o->output, o->run.model) || same_file(o->output, o->file))
        return usage_fail(U, "-o '%s' is one of the inputs; it would be overwritten", o->output);
    return 0;
}

/* --------------------------------------------------------- the recording */

/* One growing CSR list (x or y): entries of every (token, layer). */
typedef struct csr {
    int64_t *offsets; /* [T*L+1] */
    int32_t *index;   /* head-major h*N + n */
    float *value;
    size_t n, cap;
} csr;

typedef struct trace_rec {
    int L;
    size_t T;          /* tokens fed so far */
    csr x, y;
    float *density;    /* [T][L][2] */
    int failed;        /* out of memory inside the observer */
} trace_rec;

static int csr_push(csr *c, int H, int N, const int32_t *count, const int32_t *const *index, const float *const *value)
{
    size_t add = 0;
    for (int h = 0; h < H; h++) add += (size_t)count[h];
    if (c->n + add > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < c->n + add) cap *= 2;
        int32_t *i = realloc(c->index, cap * sizeof *i);
        if (i) c->index = i;
        float *v = realloc(c->value, cap * sizeof *v);
        if (v) c->value = v;
        if (!i || !v) return -1;
        c->cap = cap;
    }
    for (int h = 0; h < H; h++)
        for (int32_t k = 0; k < count[h]; k++) {
            c->index[c->n] = h * N + index[h][k];
            c->value[c->n++] = value[h][k];
        }
    return 0;
}

/* The observer: layers come in order 0..L-1 for each token. */
static void record_layer(const bdh_layer_activation *a, void *user)
{
    trace_rec *r = user;
    if (r->failed) return;
    const size_t k = r->T * (size_t)r->L + (size_t)a->layer; /* this (token, layer) */
    if (csr_push(&r->x, a->n_head, a->n_neurons, a->x_count, a->x_index, a->x_value) ||
        csr_push(&r->y, a->n_head, a->n_neurons, a->y_count, a->y_index, a->y_value)) {
        r->failed = 1;
        return;
    }
    r->x.offsets[k + 1] = (int64_t)r->x.n;
    r->y.offsets[k + 1] = (int64_t)r->y.n;
    r->density[2 * k] = a->x_density;
    r->density[2 * k + 1] = a->y_density;
}

static void rec_free(trace_rec *r)
{
    free(r->x.offsets);
    free(r->x.index);
    free(r->x.value);
    free(r->y.offsets);
    free(r->y.index);
    free(r->y.value);
    free(r->density);
}

/* ---------------------------------------------------------- the file */

/* docs/trace-format.md: the metadata keys and the tensors, each in the
 * spec's order; synapses and sigma only when S > 0. */
static int trace_write(const trace_opts *o, const char *model_path, const bdh_config *c, const int32_t *tokens,
                       const trace_rec *r, const double *sigma)
{
    char num[5][24];
    const int32_t vals[5] = {c->n_layer, c->n_embd, c->n_head, c->n_neurons, c->vocab_size};
    for (int k = 0; k < 5; k++) snprintf(num[k], sizeof num[k], "%d", (int)vals[k]);
    const char *meta[] = {"n_layer", num[0], "n_embd", num[1], "n_head", num[2], "n_neurons", num[3],
                          "vocab_size", num[4], "model", model_path, "format", TRACE_FORMAT};
    const int64_t T = (int64_t)r->T, L = r->L, S = o->n_syn;
    const tensor_out t[] = {
        {"tokens", "I32", 1, {T}, tokens, (size_t)T * 4},
        {"x_offsets", "I64", 1, {T * L + 1}, r->x.offsets, (size_t)(T * L + 1) * 8},
        {"x_index", "I32", 1, {(int64_t)r->x.n}, r->x.index, r->x.n * 4},
        {"x_value", "F32", 1, {(int64_t)r->x.n}, r->x.value, r->x.n * 4},
        {"y_offsets", "I64", 1, {T * L + 1}, r->y.offsets, (size_t)(T * L + 1) * 8},
        {"y_index", "I32", 1, {(int64_t)r->y.n}, r->y.index, r->y.n * 4},
        {"y_value", "F32", 1, {(int64_t)r->y.n}, r->y.value, r->y.n * 4},
        {"density", "F32", 3, {T, L, 2}, r->density, (size_t)(T * L * 2) * 4},
        {"synapses", "I32", 2, {S, 3}, o->syn, (size_t)S * 12},
        {"sigma", "F64", 2, {T, S}, sigma, (size_t)(T * S) * 8},
    };
    return write_safetensors(o->output, meta, (int)(sizeof meta / sizeof *meta / 2), t, S ? 10 : 8);
}

static void print_summary(const trace_opts *o, const bdh_config *c, const trace_rec *r)
{
    double dx = 0, dy = 0;
    for (size_t k = 0; k < r->T * (size_t)r->L; k++) {
        dx += r->density[2 * k];
        dy += r->density[2 * k + 1];
    }
    dx /= (double)(r->T * (size_t)r->L);
    dy /= (double)(r->T * (size_t)r->L);
    printf("wrote %s: %zu tokens, %d layers x %d neurons, mean density x %.2f%% y %.2f%%, %d synapses\n", o->output,
           r->T, (int)c->n_layer, (int)(c->n_head * c->n_neurons), 100 * dx, 100 * dy, o->n_syn);
}

/* From a zero state, one bdh_step per byte (the spec's values). */
static int trace_run(const trace_opts *o, const char *model_path, const unsigned char *text, size_t n)
{
    bdh_model *m = NULL;
    bdh_state *s = NULL;
    bdh_config c;
    trace_rec r = {0};
    int32_t *tokens = malloc(n * sizeof *tokens);
    double *sigma = NULL;
    int rc = tokens ? 0 : (err("out of memory"), EXIT_RUNTIME);
    if (!rc) rc = load_model_opts(model_path, &o->run, &m);
    if (!rc) rc = need_byte_model("trace", m);
    bdh_status st = BDH_OK;
    if (!rc && (st = bdh_state_new(m, &s)) != BDH_OK) rc = lib_fail("cannot create a state", st);
    if (!rc) {
        bdh_model_config(m, &c);
        r.L = c.n_layer;
        const size_t TL = n * (size_t)c.n_layer;
        r.x.offsets = calloc(TL + 1, sizeof(int64_t));
        r.y.offsets = calloc(TL + 1, sizeof(int64_t));
        r.density = calloc(2 * TL, sizeof(float));
        sigma = calloc(n * (size_t)(o->n_syn ? o->n_syn : 1), sizeof(double));
        if (!r.x.offsets || !r.y.offsets || !r.density || !sigma) {
            err("out of memory");
            rc = EXIT_RUNTIME;
        }
    }
    for (int k = 0; !rc && k < o->n_syn; k++) {
        const int32_t *y = o->syn[k];
        if ((st = bdh_state_add_monitor(s, y[0], y[1], y[2], NULL)) != BDH_OK)
            rc = usage_fail(U, "--synapse %d,%d,%d: %s", (int)y[0], (int)y[1], (int)y[2], bdh_last_error());
    }
    if (!rc && (st = bdh_state_set_observer(s, record_layer, &r)) != BDH_OK) rc = lib_fail("cannot observe the state", st);
    for (size_t i = 0; !rc && i < n; i++) {
        tokens[i] = text[i];
        if ((st = bdh_step(s, tokens[i], NULL)) != BDH_OK) {
            rc = lib_fail("step failed", st);
            break;
        }
        r.T++;
        if (r.failed) {
            err("out of memory recording the trace (try a shorter --length)");
            rc = EXIT_RUNTIME;
        }
        for (int k = 0; !rc && k < o->n_syn; k++)
            bdh_state_monitor(s, (size_t)k, NULL, NULL, NULL, &sigma[i * (size_t)o->n_syn + (size_t)k]);
    }
    if (!rc) rc = trace_write(o, model_path, &c, tokens, &r, sigma);
    if (!rc) print_summary(o, &c, &r);
    bdh_state_free(s);
    bdh_model_free(m);
    free(tokens);
    free(sigma);
    rec_free(&r);
    return rc;
}

int cmd_trace(int argc, char **argv)
{
    trace_opts o = {.run = MODEL_OPTS_DEFAULT};
    int rc = trace_parse(argc, argv, &o);
    if (rc) {
        free(o.syn);
        return rc < 0 ? 0 : rc;
    }
    char buf[PATH_MAX + 64];
    const char *model_path = find_model(&o.run, buf, sizeof buf);
    size_t len = 0;
    unsigned char *owned = NULL;
    const unsigned char *text = (const unsigned char *)o.text;
    if (!model_path) rc = EXIT_RUNTIME;
    else if (o.text) len = strlen(o.text);
    else if (!(text = owned = (unsigned char *)read_all(o.file, &len))) rc = EXIT_RUNTIME;
    if (!rc) {
        const size_t off = (size_t)o.span.offset < len ? (size_t)o.span.offset : len;
        text += off;
        len -= off;
        if (o.span.length && (size_t)o.span.length < len) len = (size_t)o.span.length;
        if (len == 0) rc = usage_fail(U, "the text is empty%s", o.span.offset ? " from that --offset" : "");
    }
    if (!rc) rc = trace_run(&o, model_path, text, len);
    free(owned);
    free(o.syn);
    if (!rc && o.png) rc = draw_pictures(o.output, o.png);
    return rc;
}
