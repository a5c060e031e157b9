/* Token sampler: repetition penalty -> temperature -> top-k -> softmax ->
 * top-p -> min-p -> draw (docs/generation.md).
 *
 * Reproducibility: the PRNG is our own (splitmix64 seeding xoshiro256**), a
 * uniform draw uses the top 24 bits of one 64-bit output, and candidates are
 * visited in a fixed order (sorted by logit then id when top-k or top-p needs
 * a sort, id order otherwise), so a seed gives the same tokens on every
 * machine with IEEE doubles. All scratch is allocated once in
 * bdh_sampler_new; sampling itself never allocates. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct candidate {
    float logit;  /* after the repetition penalty */
    int32_t id;
} candidate;

struct bdh_sampler {
    bdh_sampler_params p;
    int32_t V;
    uint64_t rng[4];     /* xoshiro256** state */
    int32_t *window;     /* ring buffer of the last repeat_window accepted tokens */
    int32_t n_window;    /* how many of them are filled */
    int32_t window_next; /* where the next accepted token goes */
    float *logits;       /* [V] penalised copy of the caller's logits */
    uint8_t *seen;       /* [V] marks tokens already penalised in this call */
    candidate *cand;     /* [V] tokens still in the running */
    double *prob;        /* [V] unnormalised probability of cand[i] */
};

/* ------------------------------------------------------------------ PRNG */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4])
{
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1), exactly representable as a float: 24 random bits. */
static double uniform01(uint64_t s[4]) { return (double)(xoshiro_next(s) >> 40) * (1.0 / 16777216.0); }

static void seed_rng(uint64_t s[4], uint64_t seed)
{
    for (int i = 0; i < 4; i++) s[i] = splitmix64(&seed); /* never all zero */
}

/* ---------------------------------------------------------------- params */

bdh_sampler_params bdh_sampler_default_params(void)
{
    bdh_sampler_params p;
    memset(&p, 0, sizeof p);
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    p.repeat_window = 64;
    p.seed = 0;
    return p;
}

/* The negated comparisons also reject NaN. */
static bdh_status check_params(const bdh_sampler_params *p)
{
    if (!(p->temperature >= 0.0f) || isinf(p->temperature))
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "sampler: temperature must be finite and >= 0 (got %g)", (double)p->temperature);
    if (p->top_k < 0) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "sampler: top_k must be >= 0 (got %d)", (int)p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "sampler: top_p must be in (0, 1] (got %g)", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "sampler: min_p must be in [0, 1] (got %g)", (double)p->min_p);
    if (!(p->repeat_penalty > 0.0f) || isinf(p->repeat_penalty))
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "sampler: repeat_penalty must be finite and > 0 (got %g)",
                        (double)p->repeat_penalty);
    if (p->repeat_window < 0)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "sampler: repeat_window must be >= 0 (got %d)", (int)p->repeat_window);
    return BDH_OK;
}

/* ------------------------------------------------------------ life cycle */

bdh_status bdh_sampler_new(const bdh_sampler_params *params, int32_t vocab_size, bdh_sampler **out)
{
    if (!out) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_sampler_new: out is NULL");
    *out = NULL; /* every constructor's rule: NULL on failure */
    bdh_sampler_params p = params ? *params : bdh_sampler_default_params();
    bdh_status rc = check_params(&p);
    if (rc != BDH_OK) return rc;
    if (vocab_size <= 0)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_sampler_new: vocab_size must be > 0 (got %d)", (int)vocab_size);

    const size_t V = (size_t)vocab_size;
    bdh_sampler *s = calloc(1, sizeof *s);
    if (s) {
        s->window = malloc(((size_t)p.repeat_window + 1) * sizeof *s->window);
        s->logits = malloc(V * sizeof *s->logits);
        s->seen = calloc(V, 1);
        s->cand = malloc(V * sizeof *s->cand);
        s->prob = malloc(V * sizeof *s->prob);
    }
    if (!s || !s->window || !s->logits || !s->seen || !s->cand || !s->prob) {
        bdh_sampler_free(s);
        return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "bdh_sampler_new: out of memory (vocab_size %d)", (int)vocab_size);
    }
    s->p = p;
    s->V = vocab_size;
    seed_rng(s->rng, p.seed);
    *out = s;
    return BDH_OK;
}

void bdh_sampler_free(bdh_sampler *s)
{
    if (!s) return;
    free(s->window);
    free(s->logits);
    free(s->seen);
    free(s->cand);
    free(s->prob);
    free(s);
}

bdh_status bdh_sampler_accept(bdh_sampler *s, int32_t token)
{
    if (!s) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_sampler_accept: sampler is NULL");
    if (token < 0 || token >= s->V)
        return bdh_fail(BDH_ERR_TOKEN, "bdh_sampler_accept: token %d is outside [0, %d)", (int)token, (int)s->V);
    if (s->p.repeat_window == 0) return BDH_OK;
    s->window[s->window_next] = token;
    s->window_next = (s->window_next + 1) % s->p.repeat_window;
    if (s->n_window < s->p.repeat_window) s->n_window++;
    return BDH_OK;
}

/* ------------------------------------------------------------- sampling */

/* Copy logits, rejecting NaN, and penalise each distinct token of the
 * window once (as llama.cpp does: a token seen twice is not hit twice). */
static bdh_status penalise(bdh_sampler *s, const float *in)
{
    for (int32_t i = 0; i < s->V; i++) {
        if (isnan(in[i])) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_sampler_sample: logits[%d] is NaN", (int)i);
        s->logits[i] = in[i];
    }
    const float r = s->p.repeat_penalty;
    if (r == 1.0f) return BDH_OK;
    for (int32_t i = 0; i < s->n_window; i++) {
        const int32_t t = s->window[i];
        if (s->seen[t]) continue;
        s->seen[t] = 1;
        float *l = &s->logits[t];
        *l = *l > 0.0f ? *l / r : *l * r;
    }
    for (int32_t i = 0; i < s->n_window; i++) s->seen[s->window[i]] = 0;
    return BDH_OK;
}

/* Lowest id among the largest logits; -1 if every logit is -inf. */
static int32_t argmax(const float *l, int32_t V)
{
    int32_t best = -1;
    for (int32_t i = 0; i < V; i++)
        if (l[i] > -INFINITY && (best < 0 || l[i] > l[best])) best = i;
    return best;
}

/* Larger logit first, then lower id: a total order, so any correct sort
 * gives one result. */
static bool ranks_before(const candidate *x, const candidate *y)
{
    return x->logit != y->logit ? x->logit > y->logit : x->id < y->id;
}

/* Sift c[i] down the heap c[0..n) whose root ranks last. */
static void sift_down(candidate *c, int32_t i, int32_t n)
{
    for (int32_t child; (child = 2 * i + 1) < n; i = child) {
        if (child + 1 < n && ranks_before(&c[child], &c[child + 1])) child++;
        if (!ranks_before(&c[i], &c[child])) return;
        const candidate t = c[i];
        c[i] = c[child];
        c[child] = t;
    }
}

/* Best first, in place. A heapsort, not qsort: glibc's qsort mallocs a
 * buffer on every call, and sampling promises not to allocate. */
static void sort_candidates(candidate *c, int32_t n)
{
    for (int32_t i = n / 2 - 1; i >= 0; i--) sift_down(c, i, n);
    for (int32_t end = n - 1; end > 0; end--) {
        const candidate t = c[0];
        c[0] = c[end];
        c[end] = t;
        sift_down(c, 0, end);
    }
}

/* Candidates: every token with a logit above -inf, in id order. */
static int32_t gather(bdh_sampler *s)
{
    int32_t n = 0;
    for (int32_t i = 0; i < s->V; i++)
        if (s->logits[i] > -INFINITY) s->cand[n++] = (candidate){s->logits[i], i};
    return n;
}

/* Keep logits >= the k-th largest (cand sorted): ties with it survive. */
static int32_t top_k(const candidate *c, int32_t n, int32_t k)
{
    if (k <= 0 || k >= n) return n;
    const float kth = c[k - 1].logit;
    while (k < n && c[k].logit >= kth) k++;
    return k;
}

/* prob[i] = exp((logit - max) / T) in double; an +inf logit takes all the
 * mass (shared equally with other +inf ones). Returns the sum. */
static double softmax(const candidate *c, int32_t n, float temperature, double *prob)
{
    double max = c[0].logit;
    for (int32_t i = 1; i < n; i++)
        if (c[i].logit > max) max = c[i].logit;
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        if (isinf(max)) prob[i] = c[i].logit == max ? 1.0 : 0.0;
        else prob[i] = exp(((double)c[i].logit - max) / (double)temperature);
        sum += prob[i];
    }
    return sum;
}

/* Smallest prefix (cand sorted, so probabilities descend) with mass >= top_p. */
static int32_t top_p(const double *prob, int32_t n, double sum, float p)
{
    if (p >= 1.0f) return n;
    const double want = (double)p * sum;
    double mass = 0.0;
    for (int32_t i = 0; i < n; i++) {
        mass += prob[i];
        if (mass >= want) return i + 1;
    }
    return n;
}

/* Drop tokens with p < min_p * p_max by compacting cand/prob in place
 * (order kept). Returns the new count and the new sum. */
static int32_t min_p(candidate *c, double *prob, int32_t n, float mp, double *sum)
{
    if (mp <= 0.0f) return n;
    double pmax = 0.0;
    for (int32_t i = 0; i < n; i++)
        if (prob[i] > pmax) pmax = prob[i];
    const double floor = (double)mp * pmax;
    int32_t kept = 0;
    *sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        if (prob[i] < floor) continue;
        c[kept] = c[i];
        prob[kept] = prob[i];
        *sum += prob[i];
        kept++;
    }
    return kept;
}

/* Inverse CDF over the kept candidates in their order. Rounding can leave
 * u * sum just past the last cumulative value: then take the last token
 * with p > 0, never a zero-probability one. */
static int32_t draw(uint64_t rng[4], const candidate *c, const double *prob, int32_t n, double sum)
{
    const double target = uniform01(rng) * sum;
    double cum = 0.0;
    int32_t last = -1;
    for (int32_t i = 0; i < n; i++) {
        if (prob[i] <= 0.0) continue;
        cum += prob[i];
        last = i;
        if (target < cum) return c[i].id;
    }
    return c[last].id;
}

bdh_status bdh_sampler_sample(bdh_sampler *s, const float *logits, int32_t *token)
{
    if (!s || !logits || !token)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_sampler_sample: sampler, logits or token is NULL");
    bdh_status rc = penalise(s, logits);
    if (rc != BDH_OK) return rc;

    if (s->p.temperature == 0.0f) {
        const int32_t best = argmax(s->logits, s->V);
        if (best < 0) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_sampler_sample: every logit is -inf");
        *token = best;
        return BDH_OK;
    }

    int32_t n = gather(s);
    if (n == 0) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_sampler_sample: every logit is -inf");
    /* Temperature > 0 keeps the order, so top-k and top-p can share one sort. */
    if ((s->p.top_k > 0 && s->p.top_k < n) || s->p.top_p < 1.0f) {
        sort_candidates(s->cand, n);
        n = top_k(s->cand, n, s->p.top_k);
    }
    double sum = softmax(s->cand, n, s->p.temperature, s->prob);
    n = top_p(s->prob, n, sum, s->p.top_p);
    sum = 0.0;
    for (int32_t i = 0; i < n; i++) sum += s->prob[i];
    n = min_p(s->cand, s->prob, n, s->p.min_p, &sum);
    *token = draw(s->rng, s->cand, s->prob, n, sum);
    return BDH_OK;
}
