/* libbdh CPU benchmark: one model file, every figure of docs/performance.md
 * that concerns libbdh, as one JSON object on stdout (bench/report.py turns
 * it and the PyTorch figures into the table).
 *
 *   bench --model FILE [--threads N] [--text FILE] [--decode-tokens N]
 *   bench --make-random FILE [--seed S]     (default-size model, random weights)
 *
 * Tokens: bytes of --text when given (realistic activity for a trained
 * model), else a fixed pseudo-random sequence. */
#include "bdh.h"
#include "traffic.h"

#include <getopt.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdbool.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "bench: %s: %s\n", what, bdh_last_error());
    exit(1);
}

/* ---------------------------------------------------------- random model */

static uint64_t rng_state = 88172645463325252ull;
static double uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return ((rng_state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
static float normal(float std)
{
    return (float)(std * sqrt(-2.0 * log(uniform())) * cos(2.0 * M_PI * uniform()));
}

/* L=6, D=256, H=4, N=8192, V=256: the reference's default size, with the
 * reference's init scale (normal, std 0.02; embedding std 1). */
static int make_random(const char *path)
{
    const long L = 6, D = 256, H = 4, N = 8192, V = 256;
    const struct { const char *name; long n; float std; } t[] = {
        {"embed.weight", V * D, 1.0f}, {"encoder", H * D * N, 0.02f},
        {"encoder_v", H * D * N, 0.02f}, {"decoder", H * N * D, 0.02f}, {"lm_head", D * V, 0.02f},
    };
    const char *shapes[] = {"[256,256]", "[4,256,8192]", "[4,256,8192]", "[32768,256]", "[256,256]"};
    char header[2048];
    int len = snprintf(header, sizeof header, "{\"__metadata__\":{\"n_layer\":\"%ld\",\"n_embd\":\"%ld\",\"n_head\":\"%ld\","
                       "\"mlp_internal_dim_multiplier\":\"128\",\"vocab_size\":\"%ld\",\"dropout\":\"0.1\"}", L, D, H, V);
    long off = 0;
    for (int i = 0; i < 5; i++) {
        len += snprintf(header + len, sizeof header - (size_t)len, ",\"%s\":{\"dtype\":\"F32\",\"shape\":%s,\"data_offsets\":[%ld,%ld]}",
                        t[i].name, shapes[i], off, off + 4 * t[i].n);
        off += 4 * t[i].n;
    }
    len += snprintf(header + len, sizeof header - (size_t)len, "}");
    while (len % 8) header[len++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    uint64_t hlen = (uint64_t)len;
    fwrite(&hlen, 8, 1, f);
    fwrite(header, 1, (size_t)len, f);
    float *buf = malloc(sizeof(float) * (size_t)(H * D * N));
    for (int i = 0; i < 5; i++) {
        for (long k = 0; k < t[i].n; k++) buf[k] = normal(t[i].std);
        fwrite(buf, 4, (size_t)t[i].n, f);
    }
    free(buf);
    return fclose(f) != 0;
}

/* ---------------------------------------------------------- measurements */

typedef struct opts {
    const char *model, *text;
    int threads, decode_tokens;
} opts;

static int32_t *tokens_for(const opts *o, size_t n)
{
    int32_t *t = malloc(n * sizeof *t);
    FILE *f = o->text ? fopen(o->text, "rb") : NULL;
    for (size_t i = 0; i < n; i++) {
        int c = f ? fgetc(f) : EOF;
        t[i] = c != EOF ? c : (int32_t)((i * 2654435761u >> 7) % 256);
    }
    if (f) fclose(f);
    return t;
}

static bdh_model *load(const opts *o, bdh_weight_type wt)
{
    bdh_model_params p = bdh_model_default_params();
    p.n_threads = o->threads;
    p.weight_type = wt;
    bdh_model *m;
    if (bdh_model_load(o->model, &p, &m) != BDH_OK) die(o->model);
    return m;
}

/* Bytes a batch-1 step reads or writes, from the measured activity
 * (traffic.h, the model gpu_bench.c uses too). */
static double bytes_per_token(const bdh_model *m, const bdh_state *s, double wsize)
{
    bdh_config c;
    bdh_model_config(m, &c);
    float xs[64], pairs[64], xy[64];
    bdh_state_activity(s, xs, pairs, xy);
    return bench_traffic_fractions(&c, wsize, xs, pairs, xy).total;
}

typedef struct decode_result {
    double ms_per_token, bytes, density[3];
} decode_result;

static void count_layers(const bdh_layer_activation *a, void *user)
{
    (void)a;
    (*(long *)user)++;
}

/* observed: with an activation observer and four Hebbian monitors set */
static decode_result decode(const opts *o, bdh_weight_type wt, double wsize, bool observed)
{
    bdh_model *m = load(o, wt);
    bdh_state *s;
    long calls = 0;
    if (bdh_state_new(m, &s) != BDH_OK) die("state");
    if (observed) {
        if (bdh_state_set_observer(s, count_layers, &calls) != BDH_OK) die("observer");
        for (int k = 0; k < 4; k++)
            if (bdh_state_add_monitor(s, 1 + k % 2, 17 * k, 31 * k + 1, NULL) != BDH_OK) die("monitor");
    }
    const int warm = 16, n = o->decode_tokens;
    int32_t *tok = tokens_for(o, (size_t)(warm + 3 * n));
    for (int i = 0; i < warm; i++) bdh_step(s, tok[i], NULL);
    bdh_state_reset(s);
    for (int i = 0; i < warm; i++) bdh_step(s, tok[i], NULL);
    /* best of three blocks (this machine's speed drifts); PyTorch likewise */
    float logits[4096];
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        for (int i = 0; i < n; i++) bdh_step(s, tok[warm + rep * n + i], logits);
        if (now() - t0 < best) best = now() - t0;
    }
    decode_result r = {1e3 * best / n, bytes_per_token(m, s, wsize), {0, 0, 0}};
    float xs[64], pairs[64], xy[64];
    bdh_config c;
    bdh_model_config(m, &c);
    bdh_state_activity(s, xs, pairs, xy);
    for (int l = 0; l < c.n_layer; l++) {
        r.density[0] += xs[l] / c.n_layer;
        r.density[1] += pairs[l] / c.n_layer;
        r.density[2] += xy[l] / c.n_layer;
    }
    if (!observed) {
        printf("  \"density_per_layer\": [");
        for (int l = 0; l < c.n_layer; l++) printf("%s%.4f", l ? ", " : "", xs[l]);
        printf("],\n");
    }
    free(tok);
    bdh_state_free(s);
    bdh_model_free(m);
    return r;
}

static double batch_tokens_per_s(const opts *o, int B, bdh_weight_type wt)
{
    bdh_model *m = load(o, wt);
    bdh_state **s = calloc((size_t)B, sizeof *s);
    int32_t *tok = tokens_for(o, 4096), step_tok[64];
    for (int b = 0; b < B; b++) {
        if (bdh_state_new(m, &s[b]) != BDH_OK) die("state");
        bdh_prefill(s[b], tok + 7 * b, (size_t)(8 + b), NULL); /* different histories */
    }
    const int warm = 2, n = 8;
    double t0 = 0;
    for (int i = 0; i < warm + n; i++) {
        if (i == warm) t0 = now();
        for (int b = 0; b < B; b++) step_tok[b] = tok[(100 + i * B + b) % 4096];
        if (bdh_step_batch(s, step_tok, (size_t)B, NULL) != BDH_OK) die("batch");
    }
    double tps = (double)B * n / (now() - t0);
    for (int b = 0; b < B; b++) bdh_state_free(s[b]);
    free(s);
    free(tok);
    bdh_model_free(m);
    return tps;
}

static double prefill_tokens_per_s(const opts *o, int n, bdh_weight_type wt)
{
    bdh_model *m = load(o, wt);
    bdh_state *s;
    if (bdh_state_new(m, &s) != BDH_OK) die("state");
    int32_t *tok = tokens_for(o, (size_t)n);
    bdh_prefill(s, tok, 32, NULL); /* warm-up */
    bdh_state_reset(s);
    double t0 = now();
    if (bdh_prefill(s, tok, (size_t)n, NULL) != BDH_OK) die("prefill");
    double tps = n / (now() - t0);
    free(tok);
    bdh_state_free(s);
    bdh_model_free(m);
    return tps;
}

/* Copy bandwidth with n threads (bytes read + written per second), on
 * buffers larger than any cache. */
typedef struct copy_arg { char *dst; const char *src; size_t n; } copy_arg;
static void *copy_part(void *p)
{
    copy_arg *a = p;
    memcpy(a->dst, a->src, a->n);
    return NULL;
}
static double copy_bandwidth(int threads)
{
    const size_t n = (size_t)1 << 30;
    char *src = malloc(n), *dst = malloc(n);
    memset(src, 1, n);
    memset(dst, 2, n);
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        pthread_t th[64];
        copy_arg a[64];
        double t0 = now();
        for (int i = 0; i < threads; i++) {
            a[i] = (copy_arg){dst + n / threads * i, src + n / threads * i, n / threads};
            pthread_create(&th[i], NULL, copy_part, &a[i]);
        }
        for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
        double bw = 2.0 * n / (now() - t0);
        if (bw > best) best = bw;
    }
    free(src);
    free(dst);
    return best;
}

/* Streaming read and read+write bandwidth with n threads, on a buffer larger
 * than any cache: the two bounds a decode step's traffic meets (weights are
 * only read; state rows are read and written back in place). */
typedef struct stream_arg { float *p; size_t n; int write; double sum; } stream_arg;
/* A sum over n floats with four independent AVX2 accumulators: bound by
 * the loads, not by an add chain (n a multiple of 32). */
__attribute__((target("avx2"))) static float read_sum(const float *p, size_t n)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
    }
    float out[8];
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}

static void *stream_part(void *v)
{
    stream_arg *a = v;
    float *p = a->p;
    if (a->write) {
#pragma omp simd
        for (size_t i = 0; i < a->n; i++) p[i] = p[i] * 0.5f + 1.0f;
    } else {
        a->sum = read_sum(p, a->n / 32 * 32);
    }
    return NULL;
}

/* bytes moved per second: read only (write 0) or read and written (write 1) */
static double stream_bandwidth(int threads, int write)
{
    const size_t n = (size_t)1 << 28; /* floats: 1 GiB */
    float *buf = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 1023);
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        pthread_t th[64];
        stream_arg a[64];
        double t0 = now();
        for (int i = 0; i < threads; i++) {
            a[i] = (stream_arg){buf + n / threads * i, n / threads, write, 0.0};
            pthread_create(&th[i], NULL, stream_part, &a[i]);
        }
        for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
        const double bw = (write ? 2.0 : 1.0) * n * sizeof(float) / (now() - t0);
        if (bw > best) best = bw;
    }
    free(buf);
    return best;
}

/* ---------------------------------------------------------- fidelity */

/* Quantized against float32 weights on text: bits per byte over windows of
 * 256 bytes from a zero state (how the shipped model was trained and is
 * scored), and on the first `cmp_windows` windows the mean KL(f32 || q) and
 * how often both pick the same most likely byte. */
typedef struct fidelity { double bpb_f32, bpb_q, kl, top1; long predictions; } fidelity;

static double log_softmax_at(const float *l, int V, int at, double *lse_out)
{
    double mx = l[0], sum = 0.0;
    for (int i = 1; i < V; i++) mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < V; i++) sum += exp(l[i] - mx);
    *lse_out = mx + log(sum);
    return l[at] - *lse_out;
}

static int argmax(const float *l, int V)
{
    int b = 0;
    for (int i = 1; i < V; i++) b = l[i] > l[b] ? i : b;
    return b;
}

static fidelity measure_fidelity(const opts *o, bdh_weight_type wq, size_t offset, int cmp_windows)
{
    bdh_model *mf = load(o, BDH_WEIGHTS_F32), *mq = load(o, wq);
    FILE *f = fopen(o->text, "rb");
    if (!f) die(o->text);
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    fseek(f, (long)offset, SEEK_SET);
    const size_t n = (size_t)len - offset, W = 256, V = 256;
    unsigned char *text = malloc(n);
    if (fread(text, 1, n, f) != n) die("read text");
    fclose(f);
    int32_t *tok = malloc(W * sizeof *tok);
    float *lf = malloc(W * V * sizeof(float)), *lq = malloc(W * V * sizeof(float));
    bdh_state *sf, *sq;
    if (bdh_state_new(mf, &sf) != BDH_OK || bdh_state_new(mq, &sq) != BDH_OK) die("state");
    fidelity r = {0};
    long compared = 0, agree = 0;
    for (size_t w0 = 0, k = 0; w0 + 1 < n; w0 += W, k++) {
        const size_t T = n - w0 - 1 < W ? n - w0 - 1 : W; /* predictions in this window */
        for (size_t t = 0; t < T; t++) tok[t] = text[w0 + t];
        bdh_state_reset(sf);
        bdh_state_reset(sq);
        if (bdh_prefill_all(sf, tok, T, lf) != BDH_OK || bdh_prefill_all(sq, tok, T, lq) != BDH_OK) die("prefill_all");
        for (size_t t = 0; t < T; t++) {
            const float *a = lf + t * V, *b = lq + t * V;
            double lse_a, lse_b;
            const int next = text[w0 + t + 1];
            r.bpb_f32 -= log_softmax_at(a, (int)V, next, &lse_a) / log(2.0);
            r.bpb_q -= log_softmax_at(b, (int)V, next, &lse_b) / log(2.0);
            r.predictions++;
            if ((int)k >= cmp_windows) continue;
            double kl = 0.0;
            for (size_t i = 0; i < V; i++) kl += exp(a[i] - lse_a) * ((a[i] - lse_a) - (b[i] - lse_b));
            r.kl += kl;
            agree += argmax(a, (int)V) == argmax(b, (int)V);
            compared++;
        }
    }
    r.bpb_f32 /= (double)r.predictions;
    r.bpb_q /= (double)r.predictions;
    r.kl /= (double)compared;
    r.top1 = (double)agree / (double)compared;
    bdh_state_free(sf);
    bdh_state_free(sq);
    bdh_model_free(mf);
    bdh_model_free(mq);
    free(text);
    free(tok);
    free(lf);
    free(lq);
    return r;
}

/* Peak RSS of a fresh process (this program again, --rss-probe) that loads
 * the model (float32) and decodes with one stream, against weights as held
 * + one state. A fresh exec, not a fork, so nothing of this process counts. */
static int rss_probe(const opts *o)
{
    bdh_model *m = load(o, BDH_WEIGHTS_F32);
    bdh_state *s;
    if (bdh_state_new(m, &s) != BDH_OK) die("state");
    int32_t *tok = tokens_for(o, 64);
    for (int i = 0; i < 64; i++) bdh_step(s, tok[i], NULL);
    printf("%.0f\n", (double)bdh_model_weight_bytes(m) + (double)bdh_model_state_bytes(m));
    return 0;
}

static void peak_rss_one_stream(const opts *o, double *peak, double *held)
{
    int fds[2];
    if (pipe(fds) != 0) die("pipe");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char threads[16];
        snprintf(threads, sizeof threads, "%d", o->threads);
        dup2(fds[1], 1);
        char *args[] = {"bench", "--rss-probe", "--model", (char *)o->model, "--threads", threads,
                        o->text ? "--text" : NULL, (char *)o->text, NULL};
        execv("/proc/self/exe", args);
        _exit(127);
    }
    close(fds[1]);
    char buf[64] = {0};
    ssize_t got = read(fds[0], buf, sizeof buf - 1);
    int status;
    struct rusage ru;
    wait4(pid, &status, 0, &ru);
    close(fds[0]);
    if (got <= 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) die("rss probe");
    *held = atof(buf);
    *peak = (double)ru.ru_maxrss * 1024.0;
}

int main(int argc, char **argv)
{
    opts o = {NULL, NULL, 0, 32};
    const char *random_out = NULL;
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'}, {"text", required_argument, 0, 't'},
        {"threads", required_argument, 0, 'j'}, {"decode-tokens", required_argument, 0, 'n'},
        {"make-random", required_argument, 0, 'r'}, {"rss-probe", no_argument, 0, 'p'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    bool probe = false;
    int c;
    while ((c = getopt_long(argc, argv, "m:t:j:n:r:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model = optarg; break;
        case 't': o.text = optarg; break;
        case 'j': o.threads = atoi(optarg); break;
        case 'n': o.decode_tokens = atoi(optarg); break;
        case 'r': random_out = optarg; break;
        case 'p': probe = true; break;
        default:
            fprintf(stderr, "usage: bench --model FILE [--threads N] [--text FILE] [--decode-tokens N]\n"
                            "       bench --make-random FILE\n");
            return c == 'h' ? 0 : 2;
        }
    }
    if (random_out) return make_random(random_out);
    /* OpenBLAS chose its kernels at load: retry once with better ones if it
     * fell back to generic code on a CPU it does not know. */
    const char *core = bdh_blas_suggested_core();
    if (core && !getenv("OPENBLAS_CORETYPE")) {
        setenv("OPENBLAS_CORETYPE", core, 1);
        execv("/proc/self/exe", argv);
    }
    if (!o.model) {
        fprintf(stderr, "bench: --model is required\n");
        return 2;
    }
    if (probe) return rss_probe(&o);
    const int threads = o.threads > 0 ? o.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    bdh_model *m = load(&o, BDH_WEIGHTS_F32);
    bdh_config cfg;
    bdh_model_config(m, &cfg);
    printf("{\n  \"model\": \"%s\", \"threads\": %d, \"system\": \"%s\",\n", o.model, threads, bdh_system_info());
    printf("  \"config\": [%d, %d, %d, %d, %d], \"n_params\": %lld,\n", cfg.n_layer, cfg.n_embd, cfg.n_head,
           cfg.n_neurons, cfg.vocab_size, (long long)bdh_model_n_params(m));
    printf("  \"weight_bytes_f32\": %zu, \"state_bytes\": %zu,\n", bdh_model_weight_bytes(m), bdh_model_state_bytes(m));
    bdh_model_free(m);

    double copy_bw = copy_bandwidth(threads);
    printf("  \"copy_bytes_per_s\": %.4g, \"read_bytes_per_s\": %.4g, \"read_write_bytes_per_s\": %.4g,\n", copy_bw,
           stream_bandwidth(threads, 0), stream_bandwidth(threads, 1));
    decode_result f32 = decode(&o, BDH_WEIGHTS_F32, 4.0, false);
    printf("  \"decode_f32_ms\": %.4f, \"bytes_per_token_f32\": %.4g,\n", f32.ms_per_token, f32.bytes);
    printf("  \"density_xs\": %.4f, \"density_pairs\": %.4f, \"density_xy\": %.4f,\n", f32.density[0], f32.density[1],
           f32.density[2]);
    decode_result bf16 = decode(&o, BDH_WEIGHTS_BF16, 2.0, false);
    printf("  \"decode_observed_ms\": %.4f,\n", decode(&o, BDH_WEIGHTS_F32, 4.0, true).ms_per_token);
    printf("  \"decode_bf16_ms\": %.4f, \"bytes_per_token_bf16\": %.4g,\n", bf16.ms_per_token, bf16.bytes);
    printf("  \"batch1_tokens_per_s\": %.2f,\n", 1e3 / f32.ms_per_token);
    /* Q8_0: one byte a weight plus an F16 scale per 32 (traffic.h counts
     * embed and lm_head, which stay float32, at 4) */
    decode_result q8 = decode(&o, BDH_WEIGHTS_Q8_0, 1.0 + 2.0 / 32, false);
    printf("  \"decode_q8_ms\": %.4f, \"bytes_per_token_q8\": %.4g,\n", q8.ms_per_token, q8.bytes);
    printf("  \"batch8_tokens_per_s\": %.2f, \"batch8_q8_tokens_per_s\": %.2f,\n", batch_tokens_per_s(&o, 8, BDH_WEIGHTS_F32),
           batch_tokens_per_s(&o, 8, BDH_WEIGHTS_Q8_0));
    printf("  \"batch32_tokens_per_s\": %.2f, \"batch32_q8_tokens_per_s\": %.2f,\n",
           batch_tokens_per_s(&o, 32, BDH_WEIGHTS_F32), batch_tokens_per_s(&o, 32, BDH_WEIGHTS_Q8_0));
    printf("  \"prefill512_tokens_per_s\": %.2f, \"prefill512_q8_tokens_per_s\": %.2f,\n",
           prefill_tokens_per_s(&o, 512, BDH_WEIGHTS_F32), prefill_tokens_per_s(&o, 512, BDH_WEIGHTS_Q8_0));
    if (o.text) {
        /* the validation split: the last 10% of the text (models/README.md) */
        FILE *tf = fopen(o.text, "rb");
        if (!tf) die(o.text);
        fseek(tf, 0, SEEK_END);
        const size_t offset = (size_t)(0.9 * (double)ftell(tf));
        fclose(tf);
        const fidelity fq = measure_fidelity(&o, BDH_WEIGHTS_Q8_0, offset, 8);
        printf("  \"fidelity_q8\": {\"bpb_f32\": %.5f, \"bpb_q8\": %.5f, \"predictions\": %ld, \"kl_2048\": %.4g, \"top1_2048\": %.5f},\n",
               fq.bpb_f32, fq.bpb_q, fq.predictions, fq.kl, fq.top1);
    }
    double peak, held;
    peak_rss_one_stream(&o, &peak, &held);
    printf("  \"peak_rss_bytes\": %.0f, \"held_bytes\": %.0f\n}\n", peak, held);
    return 0;
}
