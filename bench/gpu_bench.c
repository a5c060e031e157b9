/* GPU benchmark of the CUDA backend (run by scripts/gpu-check.sh).
 *
 *   gpu_bench [--model FILE] [--out DIR] [--steps N] [--batch B] [--quick]
 *
 * If FILE (default DIR/bench_model.safetensors) does not exist it is written:
 * the default-size
 * model (L=6, D=256, H=4, N=8192, V=256, 25.3M parameters) with random
 * normal weights of std 0.02 (about half the neurons active per token, where
 * a trained model has about 5%). For float32, bfloat16 and Q8_0 weights
 * (keys f32.*, bf16.*, q8.*) it measures:
 *   - batch-1 decode: ms per token (bdh_step with logits, median of runs),
 *     its ratio to float32's (decode_vs_f32), the bytes the step touches
 *     (weights read, state rows read and written, from the backend's own
 *     counts of active neurons; Q8_0: 1 + 2/32 bytes per quantized weight,
 *     embed and lm_head float32) and the GB/s that makes;
 *   - the aggregate tokens/s of bdh_step_batch over B states (default 64);
 *   - prefill tokens/s (bdh_prefill of 1024 tokens);
 *   - for float32 and Q8_0, the GPU logits against the CPU path's with the
 *     same weight type on the same tokens.
 * and the device-to-device copy bandwidth (bytes read + written) as the
 * achievable ceiling. Results go to stdout and DIR/gpu_bench.txt as
 * key=value lines; DIR/gpu_bench_logits.bin holds the first steps' tokens and
 * logits for bench/torch_gpu.py's cross-check.
 *
 * It links the static library to read the backend's counters
 * (kernels/bdh_cuda_debug.h); see scripts/gpu-check.sh for the command. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "bdh.h"
#include "bdh_cuda_debug.h"
#include "traffic.h"

#define CHECK(call)                                                                          \
    do {                                                                                     \
        bdh_status rc_ = (call);                                                             \
        if (rc_ != BDH_OK) {                                                                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, bdh_last_error()); \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static FILE *g_out;

static void emit(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(const char *key, const char *fmt, ...)
{
    char v[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v, sizeof v, fmt, ap);
    va_end(ap);
    printf("%s=%s\n", key, v);
    fflush(stdout);
    if (g_out) {
        fprintf(g_out, "%s=%s\n", key, v);
        fflush(g_out);
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---------------------------------------------------------------- random model */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
    uint64_t x = g_rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    g_rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

static double rng_uniform(void) { return ((rng_next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

static void fill_normal(float *v, size_t n, float std)
{
    for (size_t i = 0; i < n; i += 2) {
        const double r = sqrt(-2.0 * log(rng_uniform())), a = 6.283185307179586 * rng_uniform();
        v[i] = (float)(r * cos(a)) * std;
        if (i + 1 < n) v[i + 1] = (float)(r * sin(a)) * std;
    }
}

static int write_model(const char *path, int L, int D, int H, int N, int V)
{
    const size_t n_embed = (size_t)V * D, n_enc = (size_t)H * D * N, n_dec = (size_t)H * N * D, n_lm = (size_t)D * V;
    struct { const char *name; size_t n; char shape[64]; } t[6];
    t[0].name = "embed.weight"; t[0].n = n_embed; snprintf(t[0].shape, 64, "[%d,%d]", V, D);
    t[1].name = "encoder"; t[1].n = n_enc; snprintf(t[1].shape, 64, "[%d,%d,%d]", H, D, N);
    t[2].name = "encoder_v"; t[2].n = n_enc; snprintf(t[2].shape, 64, "[%d,%d,%d]", H, D, N);
    t[3].name = "decoder"; t[3].n = n_dec; snprintf(t[3].shape, 64, "[%d,%d]", H * N, D);
    t[4].name = "lm_head"; t[4].n = n_lm; snprintf(t[4].shape, 64, "[%d,%d]", D, V);
    t[5].name = "attn.freqs"; t[5].n = (size_t)N; snprintf(t[5].shape, 64, "[1,1,1,%d]", N);
    char header[4096];
    int len = snprintf(header, sizeof header,
                       "{\"__metadata__\":{\"n_layer\":\"%d\",\"n_embd\":\"%d\",\"n_head\":\"%d\","
                       "\"mlp_internal_dim_multiplier\":\"%d\",\"vocab_size\":\"%d\",\"dropout\":\"0.0\"}",
                       L, D, H, N * H / D, V);
    size_t off = 0;
    for (int i = 0; i < 6; i++) {
        len += snprintf(header + len, sizeof header - (size_t)len, ",\"%s\":{\"dtype\":\"F32\",\"shape\":%s,\"data_offsets\":[%zu,%zu]}",
                        t[i].name, t[i].shape, off, off + t[i].n * 4);
        off += t[i].n * 4;
    }
    len += snprintf(header + len, sizeof header - (size_t)len, "}");
    while (len % 8) header[len++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    const uint64_t hlen = (uint64_t)len;
    fwrite(&hlen, 8, 1, f);
    fwrite(header, 1, (size_t)len, f);
    float *buf = malloc(n_enc * sizeof(float));
    for (int i = 0; i < 5; i++) {
        fill_normal(buf, t[i].n, 0.02f);
        fwrite(buf, 4, t[i].n, f);
    }
    /* the reference's default frequencies, float32 as model.c computes them */
    const float two_pi = (float)(2.0 * M_PI);
    for (int j = 0; j < N; j++) {
        const float e = floorf((float)j / 2.0f) * 2.0f / (float)N;
        buf[j] = 1.0f / powf(65536.0f, e) / two_pi;
    }
    fwrite(buf, 4, (size_t)N, f);
    free(buf);
    return fclose(f) == 0 ? 0 : -1;
}

/* ---------------------------------------------------------------- device */

static double copy_bandwidth(void)
{
    const size_t bytes = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) return 0.0;
    cudaMemset(a, 1, bytes);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    const int reps = 10;
    cudaEventRecord(e0, 0);
    for (int i = 0; i < reps; i++) cudaMemcpy(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1, 0);
    cudaEventSynchronize(e1);
    float ms = 0.f;
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return 2.0 * bytes * reps / (ms * 1e-3) / 1e9;
}

static double peak_bandwidth(void)
{
    int clock_khz = 0, bus_bits = 0;
    cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, 0);
    cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0);
    return 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
}

/* ---------------------------------------------------------------- measurements */

/* "tag.name" in the local buffer k */
#define KEY(name) (snprintf(k, sizeof k, "%s.%s", tag, name), k)

typedef struct opts {
    const char *model;
    const char *out;
    int steps, batch, quick;
} opts;

static bdh_model *load(const char *path, bdh_device dev, bdh_weight_type wt)
{
    bdh_model_params p = bdh_model_default_params();
    p.device = dev;
    p.weight_type = wt;
    bdh_model *m = NULL;
    CHECK(bdh_model_load(path, &p, &m));
    return m;
}

static int32_t *random_tokens(int n, int V)
{
    int32_t *t = malloc((size_t)n * sizeof *t);
    for (int i = 0; i < n; i++) t[i] = (int32_t)(rng_next() % (uint64_t)V);
    return t;
}

/* ms per token of batch-1 decode (the median run). */
static double bench_decode(const opts *o, bdh_model *m, const char *tag, const int32_t *tokens, int n_tok)
{
    bdh_config c;
    CHECK(bdh_model_config(m, &c));
    const int V = c.vocab_size;
    float *logits = malloc((size_t)V * sizeof(float));
    bdh_state *s;
    CHECK(bdh_state_new(m, &s));
    for (int i = 0; i < 16; i++) CHECK(bdh_step(s, tokens[i % n_tok], logits)); /* warm-up, graph capture */
    bdh_cuda_debug_reset_stats(s);
    const int runs = 7, per = o->steps / runs > 0 ? o->steps / runs : 1;
    double t_run[16];
    int done = 0;
    for (int r = 0; r < runs; r++) {
        const double t0 = now();
        for (int i = 0; i < per; i++, done++) CHECK(bdh_step(s, tokens[(16 + done) % n_tok], logits));
        t_run[r] = (now() - t0) / per;
    }
    const double sec = median(t_run, runs);
    uint64_t st[4] = {0, 0, 0, 0};
    bdh_cuda_debug_stats(s, st);
    const double steps = (double)done;
    const double pairs = st[1] / steps, neurons = st[2] / steps, gated = st[3] / steps; /* per token, all layers */
    const double HN = (double)c.n_head * c.n_neurons, LHN = HN * c.n_layer;
    const int wtype = bdh_cuda_debug_weight_type(m);
    /* bytes per weight: Q8_0 is one int8 value plus an F16 scale per 32 */
    const double ws = wtype == 1 ? 2.0 : wtype == 2 ? 1.0 + 2.0 / 32 : 4.0;
    /* bytes the step must move (traffic.h, the model bench.c uses too) */
    const bench_traffic b = bench_traffic_counts(&c, ws, neurons, pairs, gated);
    char k[64];
    emit(KEY("decode_ms"), "%.4f", sec * 1e3);
    emit(KEY("decode_tok_s"), "%.1f", 1.0 / sec);
    emit(KEY("density_xs"), "%.4f", neurons / LHN);
    emit(KEY("density_pairs"), "%.4f", pairs / (LHN / 2));
    emit(KEY("density_xy"), "%.4f", gated / LHN);
    emit(KEY("bytes_per_token"), "%.0f", b.total);
    emit(KEY("bytes_encoder"), "%.0f", b.encoder);
    emit(KEY("bytes_state"), "%.0f", b.state);
    emit(KEY("bytes_encoder_v"), "%.0f", b.encoder_v);
    emit(KEY("bytes_decoder"), "%.0f", b.decoder);
    emit(KEY("GBps"), "%.1f", b.total / sec / 1e9);

    /* per-kernel times of eager steps (events between the kernels) */
    double ms[BDH_CUDA_PROFILE_KINDS] = {0};
    const int np = 50;
    int ok = 1;
    for (int i = 0; i < np && ok; i++) ok = bdh_cuda_debug_profile(s, tokens[(done + i) % n_tok], ms) == 0;
    if (ok) {
        char prof[512];
        int len = 0;
        double sum = 0.0;
        for (int i = 0; i < BDH_CUDA_PROFILE_KINDS; i++) {
            len += snprintf(prof + len, sizeof prof - (size_t)len, "%s%s %.1f", i ? ", " : "", bdh_cuda_profile_names[i],
                            ms[i] / np * 1e3);
            sum += ms[i] / np;
        }
        emit(KEY("profile_us"), "%s", prof);
        emit(KEY("profile_sum_ms"), "%.4f", sum);
    }
    bdh_state_free(s);
    free(logits);
    return sec * 1e3;
}

static void bench_batch(const opts *o, bdh_model *m, const char *tag, const int32_t *tokens, int n_tok)
{
    bdh_config c;
    CHECK(bdh_model_config(m, &c));
    const int B = o->batch, V = c.vocab_size;
    bdh_state **st = calloc((size_t)B, sizeof *st);
    for (int b = 0; b < B; b++) CHECK(bdh_state_new(m, &st[b]));
    int32_t *tok = malloc((size_t)B * sizeof *tok);
    float *logits = malloc((size_t)B * V * sizeof(float));
    const int warm = 4, steps = o->quick ? 6 : 20;
    double t0 = 0;
    for (int r = 0; r < warm + steps; r++) {
        if (r == warm) t0 = now();
        for (int b = 0; b < B; b++) tok[b] = tokens[(r * 13 + b * 7) % n_tok];
        CHECK(bdh_step_batch(st, tok, (size_t)B, logits));
    }
    const double sec = now() - t0;
    char k[64];
    emit(KEY("batch"), "%d", B);
    emit(KEY("batch_ms_per_step"), "%.3f", sec / steps * 1e3);
    emit(KEY("batch_tok_s"), "%.1f", (double)B * steps / sec);
    for (int b = 0; b < B; b++) bdh_state_free(st[b]);
    free(st);
    free(tok);
    free(logits);
}

static void bench_prefill(const opts *o, bdh_model *m, const char *tag, const int32_t *tokens, int n_tok)
{
    bdh_config c;
    CHECK(bdh_model_config(m, &c));
    float *logits = malloc((size_t)c.vocab_size * sizeof(float));
    bdh_state *s;
    CHECK(bdh_state_new(m, &s));
    const int n = n_tok < 1024 ? n_tok : 1024;
    CHECK(bdh_prefill(s, tokens, 128, logits)); /* warm-up */
    CHECK(bdh_state_reset(s));
    const double t0 = now();
    CHECK(bdh_prefill(s, tokens, (size_t)n, logits));
    const double sec = now() - t0;
    char k[64];
    emit(KEY("prefill_tokens"), "%d", n);
    emit(KEY("prefill_tok_s"), "%.1f", n / sec);
    bdh_state_free(s);
    free(logits);
    (void)o;
}

/* GPU vs CPU with the same weight type on the same tokens; float32's GPU
 * rows go to the logits file. */
static void parity(const opts *o, bdh_model *gpu, const int32_t *tokens, const char *tag, bdh_weight_type wt)
{
    bdh_config c;
    CHECK(bdh_model_config(gpu, &c));
    const int V = c.vocab_size, n = 8;
    bdh_model *cpu = load(o->model, BDH_DEVICE_CPU, wt);
    bdh_state *sg, *sc;
    CHECK(bdh_state_new(gpu, &sg));
    CHECK(bdh_state_new(cpu, &sc));
    float *lg = malloc((size_t)n * V * sizeof(float)), *lc = malloc((size_t)V * sizeof(float));
    double worst = 0.0;
    for (int t = 0; t < n; t++) {
        CHECK(bdh_step(sg, tokens[t], lg + (size_t)t * V));
        CHECK(bdh_step(sc, tokens[t], lc));
        double diff = 0.0, scale = 0.0;
        for (int v = 0; v < V; v++) {
            const double d = fabs((double)lg[(size_t)t * V + v] - lc[v]);
            if (d > diff || d != d) diff = d;
            if (fabs(lc[v]) > scale) scale = fabs(lc[v]);
        }
        if (diff / scale > worst || diff != diff) worst = diff / scale;
    }
    char k[64];
    emit(KEY("cpu_parity_rel_err"), "%.3g", worst);
    char path[1024];
    snprintf(path, sizeof path, "%s/gpu_bench_logits.bin", o->out);
    FILE *f = wt == BDH_WEIGHTS_F32 ? fopen(path, "wb") : NULL;
    if (f) { /* int32 n, int32 V, int32 tokens[n], float32 logits[n][V] */
        const int32_t hdr[2] = {n, V};
        fwrite(hdr, 4, 2, f);
        fwrite(tokens, 4, (size_t)n, f);
        fwrite(lg, 4, (size_t)n * V, f);
        fclose(f);
    }
    bdh_state_free(sg);
    bdh_state_free(sc);
    bdh_model_free(cpu);
    free(lg);
    free(lc);
}

int main(int argc, char **argv)
{
    opts o = {NULL, "/tmp", 700, 64, 0};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) o.model = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) o.out = argv[++i];
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) o.steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) o.batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) o.quick = 1;
        else {
            fprintf(stderr, "usage: %s [--model FILE] [--out DIR] [--steps N] [--batch B] [--quick]\n", argv[0]);
            return 2;
        }
    }
    if (o.quick) o.steps = 140;
    mkdir(o.out, 0755);
    char path[1024], model_path[1024];
    snprintf(path, sizeof path, "%s/gpu_bench.txt", o.out);
    g_out = fopen(path, "w");

    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
        fprintf(stderr, "gpu_bench: no CUDA device\n");
        return 1;
    }
    emit("device", "%s", prop.name);
    emit("sm_count", "%d", prop.multiProcessorCount);
    emit("copy_GBps", "%.1f", copy_bandwidth());
    emit("peak_GBps", "%.1f", peak_bandwidth());

    if (!o.model) {
        snprintf(model_path, sizeof model_path, "%s/bench_model.safetensors", o.out);
        o.model = model_path;
    }
    struct stat sb;
    if (stat(o.model, &sb) != 0) { /* no such file: write the random default-size model there */
        if (o.model != model_path) snprintf(model_path, sizeof model_path, "%s", o.model);
        const double t0 = now();
        if (write_model(model_path, 6, 256, 4, 8192, 256) != 0) {
            fprintf(stderr, "gpu_bench: cannot write %s\n", model_path);
            return 1;
        }
        o.model = model_path;
        emit("model_written_s", "%.2f", now() - t0);
    }
    emit("model", "%s", o.model);

    bdh_model *m = load(o.model, BDH_DEVICE_CUDA, BDH_WEIGHTS_F32);
    bdh_config c;
    CHECK(bdh_model_config(m, &c));
    emit("config", "L=%d D=%d H=%d N=%d V=%d", c.n_layer, c.n_embd, c.n_head, c.n_neurons, c.vocab_size);
    emit("n_params", "%lld", (long long)bdh_model_n_params(m));
    emit("state_bytes", "%zu", bdh_model_state_bytes(m));
    const int n_tok = 4096;
    int32_t *tokens = random_tokens(n_tok, c.vocab_size);

    const struct { const char *tag; bdh_weight_type wt; } kinds[3] = {
        {"f32", BDH_WEIGHTS_F32}, {"bf16", BDH_WEIGHTS_BF16}, {"q8", BDH_WEIGHTS_Q8_0}};
    double f32_ms = 0.0;
    for (int k = 0; k < 3; k++) {
        if (k > 0) m = load(o.model, BDH_DEVICE_CUDA, kinds[k].wt);
        char key[64];
        snprintf(key, sizeof key, "%s.weight_bytes", kinds[k].tag);
        emit(key, "%zu", bdh_cuda_debug_weight_bytes(m));
        if (kinds[k].wt != BDH_WEIGHTS_BF16) parity(&o, m, tokens, kinds[k].tag, kinds[k].wt);
        const double ms = bench_decode(&o, m, kinds[k].tag, tokens, n_tok);
        if (k == 0) f32_ms = ms;
        snprintf(key, sizeof key, "%s.decode_vs_f32", kinds[k].tag);
        if (k > 0 && f32_ms > 0) emit(key, "%.3f", ms / f32_ms); /* < 1: faster than float32 */
        bench_batch(&o, m, kinds[k].tag, tokens, n_tok);
        bench_prefill(&o, m, kinds[k].tag, tokens, n_tok);
        bdh_model_free(m);
    }
    /* batch-1 decode without programmatic dependent launch, for comparison */
    setenv("BDH_CUDA_PDL", "0", 1);
    m = load(o.model, BDH_DEVICE_CUDA, BDH_WEIGHTS_F32);
    unsetenv("BDH_CUDA_PDL");
    bench_decode(&o, m, "f32_nopdl", tokens, n_tok);
    bdh_model_free(m);
    free(tokens);
    if (g_out) fclose(g_out);
    return 0;
}
