/* The bdh command-line tool (docs/cli.md): what its files share.
 *
 *   main.c               command dispatch, bdh --help/--version, the OpenBLAS re-exec
 *   common.c             errors and their exit codes, option values, files, the model
 *   generate.c           bdh generate, and the sampling options chat shares
 *   chat.c               bdh chat: turns on top of one kept state
 *   info.c               bdh info
 *   perplexity.c         bdh perplexity
 *   quantize.c           bdh quantize
 *   trace.c              bdh trace: recording the activations, the trace file's tensors
 *   safetensors_write.c  the canonical safetensors writer the trace file goes through
 *   json.c               a growing string, the JSON string escaper the header needs
 *   plot.c               bdh trace --png: runs python3 -m libbdh.plot
 *   merge.c              bdh merge
 *   convert.c            bdh convert
 *
 * Exit codes: 0 ok, 1 runtime error (bad model file, I/O), 2 usage error.
 * Commands return one of them (never exit), so main returns it. */
#ifndef BDH_CLI_H
#define BDH_CLI_H

#include "bdh.h"

#include <stddef.h>
#include <stdint.h>

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

#define DEFAULT_MODEL_NAME "shakespeare.safetensors"

#if defined(__GNUC__) || defined(__clang__)
#define CLI_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define CLI_PRINTF(fmt, args)
#endif

/* ------------------------------------------------------------ commands */

/* argv[0] is the command's name; getopt's optind is 0 (start afresh). */
int cmd_generate(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_trace(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_serve(int argc, char **argv); /* tools/serve/cmd.c */

/* ---------------------------------------------------- common.c: errors */

/* "bdh: " + message + newline on standard error. */
void err(const char *fmt, ...) CLI_PRINTF(1, 2);
/* A library failure: "bdh: WHAT: last error (STATUS)"; returns EXIT_RUNTIME. */
int lib_fail(const char *what, bdh_status rc);
/* The same about a file: "bdh: WHAT 'PATH': last error (STATUS)". */
int lib_fail_on(const char *what, const char *path, bdh_status rc);
/* A usage error, then "Try 'bdh CMD--help'": cmd is "" or "generate " (with
 * its space); returns EXIT_USAGE. */
int usage_fail(const char *cmd, const char *fmt, ...) CLI_PRINTF(2, 3);
/* getopt_long's complaint in our words (opterr is 0, optstrings start with
 * ':'); returns EXIT_USAGE. */
int bad_option(const char *cmd, int c, char **argv);

/* ---------------------------------------------- common.c: option values */

/* 0 and *out set, or -1 (bad text, out of range, trailing characters). */
int parse_long(const char *s, long lo, long hi, long *out);
int parse_u64(const char *s, uint64_t *out); /* decimal, 0x hex or 0 octal; no sign */
int parse_float(const char *s, float *out);  /* finite */

/* getopt values of the long options without a short form. The ones below
 * OPT_COMMAND are shared (parse_text_option, parse_model_option); each
 * command numbers its own from OPT_COMMAND up. */
enum { OPT_THREADS = 256, OPT_OFFSET, OPT_LENGTH, OPT_WEIGHTS, OPT_DEVICE, OPT_CUDA_DEVICE, OPT_COMMAND };

/* --offset, --length: shared by perplexity and trace. */
typedef struct text_span {
    long offset, length; /* length 0: to the end of the file */
} text_span;

/* OPT_OFFSET or OPT_LENGTH with its value in optarg; 0 or an exit code.
 * U is the command as for usage_fail. */
int parse_text_option(const char *U, int c, text_span *t);

/* --weights f32|bf16|f16|q8_0|stored: how the loaded model holds its
 * weights (the names below, in this order, are the help's and docs/cli.md's). */
#define WEIGHTS_NAMES "f32, bf16, f16, q8_0 or stored"
/* 0 and *out set, or EXIT_USAGE after naming the choices; option is the
 * name in the message ("--weights", bdh convert's "--type"). */
int parse_weight_type(const char *U, const char *option, const char *arg, bdh_weight_type *out);
/* The --weights name of a weight type ("f32", ..., "stored"). */
const char *weights_name(bdh_weight_type type);

/* --device cpu|cuda and --cuda-device N: where the model runs. */
typedef struct model_place {
    bdh_device device;
    int32_t cuda_device;
    int cuda_device_given;
} model_place;
#define MODEL_PLACE_CPU ((model_place){BDH_DEVICE_CPU, 0, 0})
/* The getopt_long entries of the two options, for a longopts table. */
#define PLACE_LONGOPTS \
    {"device", required_argument, NULL, OPT_DEVICE}, {"cuda-device", required_argument, NULL, OPT_CUDA_DEVICE}
/* After the options: --cuda-device without --device cuda is a usage error. */
int check_place(const char *U, const model_place *p);
/* "cpu", or "cuda N". */
const char *place_name(const model_place *p, char *buf, size_t cap);

/* The options of the commands that run a model (generate, chat,
 * perplexity, trace, serve; info takes --weights and the place): which
 * model, how it is loaded, and -v. */
typedef struct model_opts {
    const char *model; /* -m, --model FILE; NULL: default_model's */
    long threads;      /* --threads N, 0 = all cores */
    bdh_weight_type weights;
    model_place place;
    int verbose; /* -v, --verbose */
} model_opts;
#define MODEL_OPTS_DEFAULT ((model_opts){NULL, 0, BDH_WEIGHTS_F32, MODEL_PLACE_CPU, 0})
/* The getopt_long entries of -m, --threads, --weights, --device and
 * --cuda-device, for a longopts table (-v is listed by those that take it). */
#define MODEL_LONGOPTS \
    {"model", required_argument, NULL, 'm'}, {"threads", required_argument, NULL, OPT_THREADS}, \
    {"weights", required_argument, NULL, OPT_WEIGHTS}, PLACE_LONGOPTS
/* 1 if c is one of them ('m', 'v', OPT_THREADS, OPT_WEIGHTS, OPT_DEVICE,
 * OPT_CUDA_DEVICE; -m and -v mean these in every command), with its value
 * in arg taken into *o and *rc 0 or an exit code; else 0, *rc untouched. */
int parse_model_option(const char *U, int c, const char *arg, model_opts *o, int *rc);

/* ------------------------------------------------------ common.c: files */

/* Whole file (or stdin when path is NULL) into a malloc'd buffer; NULL
 * after printing why. */
char *read_all(const char *path, size_t *len);
int file_exists(const char *path);
/* len bytes into path, atomically: a temporary file beside it, fsync,
 * rename; on failure (after printing why) an existing file is as it was.
 * 0 or EXIT_RUNTIME. */
int write_file_atomic(const char *path, const void *data, size_t len);
/* a and b (either may be NULL) name one file: the same path, or the same
 * file through another name */
int same_file(const char *a, const char *b);
/* The directory holding this executable ("" if unknown). */
void exe_dir(char *buf, size_t cap);

/* ------------------------------------------------------ common.c: model */

/* -m, else $BDH_MODEL, else the shipped model in the install's data
 * directory (<exe>/../share/bdh), else in the checkout (<exe>/../models);
 * buf (PATH_MAX + 64 bytes) may hold the answer. NULL after printing why
 * there is none. */
const char *default_model(char *buf, size_t cap);
/* Load with n_threads = threads and weight_type = weights; 0 or
 * EXIT_RUNTIME after printing why. */
int load_model(const char *path, int threads, bdh_weight_type weights, bdh_model **out);
/* The same on the device p names (NULL: the CPU); a device this build
 * lacks fails with the library's message. */
int load_model_at(const char *path, int threads, bdh_weight_type weights, const model_place *p, bdh_model **out);
/* -m's file, else default_model's (buf as there); NULL after printing why. */
const char *find_model(const model_opts *o, char *buf, size_t cap);
/* load_model_at with o's --threads, --weights and place. */
int load_model_opts(const char *path, const model_opts *o, bdh_model **out);
/* -v's first lines on standard error: model:, device:, weights: */
void print_loaded_model(const char *path, const model_opts *o, const bdh_model *m);
/* 0 for a vocab_size 256 model, else EXIT_RUNTIME after saying so. */
int need_byte_model(const char *cmd, const bdh_model *m);
double mib(size_t bytes);
/* A file's size in bytes (0 if it cannot be told). */
size_t file_size(const char *path);

/* --------------------------- generate.c: the options chat shares */

/* -n and the sampling options (--temperature ... --stop). */
typedef struct gen_settings {
    long n_tokens;
    bdh_sampler_params sp;
    int seeded; /* --seed given */
    const char **stop;
    size_t *stop_len;
    int n_stop;
} gen_settings;

enum { OPT_TEMP = OPT_COMMAND, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_REPP, OPT_REPW, OPT_SEED, OPT_STOP, OPT_GEN_NEXT };

/* The getopt_long entries of those options, for a longopts table. */
#define GEN_LONGOPTS \
    {"max-tokens", required_argument, NULL, 'n'}, {"temperature", required_argument, NULL, OPT_TEMP}, \
    {"top-k", required_argument, NULL, OPT_TOPK}, {"top-p", required_argument, NULL, OPT_TOPP}, \
    {"min-p", required_argument, NULL, OPT_MINP}, {"repeat-penalty", required_argument, NULL, OPT_REPP}, \
    {"repeat-window", required_argument, NULL, OPT_REPW}, {"seed", required_argument, NULL, OPT_SEED}, \
    {"stop", required_argument, NULL, OPT_STOP}

/* generate's defaults: -n 256, temperature 0.8, no stop, no seed yet. */
gen_settings gen_settings_default(void);
/* 1 if c is one of GEN_LONGOPTS (or 'n'), else 0. */
int is_gen_option(int c);
/* One of them with its value; 0 or an exit code. */
int parse_gen_option(const char *U, gen_settings *g, int c, const char *arg);
/* After the options: the library checks the sampler settings; the seed
 * from the clock when --seed was not given. 0 or EXIT_USAGE. */
int finish_gen_settings(const char *U, gen_settings *g);
/* The bdh_generate_params they make. */
bdh_generate_params gen_params(const gen_settings *g);
void gen_settings_free(gen_settings *g);

/* ------------------------------------------- json.c: a growing string */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int failed; /* out of memory: later additions do nothing */
} sbuf;

void sb_add(sbuf *b, const char *fmt, ...) CLI_PRINTF(2, 3);
/* s as a JSON string (quotes included), escaped as docs/trace-format.md
 * says (Python's json.dumps with ensure_ascii=False). */
void sb_json_string(sbuf *b, const char *s);

/* ------------------------------- safetensors_write.c: the file writer */

typedef struct tensor_out {
    const char *name, *dtype; /* plain ASCII names, written unescaped */
    int rank;                 /* 0..3 */
    int64_t shape[3];
    const void *data;         /* little-endian, C order */
    size_t bytes;
} tensor_out;

/* meta: n_meta (key, value) string pairs, in file order; the tensors in
 * file order. The header in the canonical form of docs/trace-format.md.
 * 0, or EXIT_RUNTIME after printing why (a file may be left half written). */
int write_safetensors(const char *path, const char *const *meta, int n_meta, const tensor_out *t, int n);

/* ---------------------------------------- plot.c: bdh trace --png DIR */

/* python3 -m libbdh.plot TRACE --out DIR; 0 or EXIT_RUNTIME after saying why. */
int draw_pictures(const char *trace_path, const char *dir);

#endif /* BDH_CLI_H */
