/* The memory-traffic model of a batch-1 decode step: the bytes one token must
 * move, shared by bench/bench.c (CPU, from bdh_state_activity's fractions)
 * and bench/gpu_bench.c (GPU, from the CUDA backend's counters), so both
 * report the same quantity (docs/performance.md, docs/gpu.md):
 *
 *   encoder     every row, in every layer (x @ encoder reads all of it)
 *   state       the state rows of the listed RoPE pairs (two rows of D
 *               float32 per pair), read and written
 *   encoder_v   the rows of neurons with xs > 0
 *   decoder     the rows of neurons with xy > 0
 *   misc        lm_head and one embedding row
 *
 * Weights count wsize bytes per value (4 for float32, 2 for bfloat16, 1 +
 * 2/32 for Q8_0, whose lm_head and embed stay float32); the state is float32
 * whatever the weights are. */
#ifndef BDH_BENCH_TRAFFIC_H
#define BDH_BENCH_TRAFFIC_H

#include "bdh.h"

typedef struct bench_traffic {
    double encoder, state, encoder_v, decoder, misc;
    double total; /* the sum of the above */
} bench_traffic;

/* From per-token counts summed over the layers: neurons with xs > 0, pairs
 * listed, neurons with xy > 0. */
static inline bench_traffic bench_traffic_counts(const bdh_config *c, double wsize, double neurons, double pairs,
                                                 double gated)
{
    const double D = c->n_embd, HN = (double)c->n_head * c->n_neurons;
    bench_traffic t;
    t.encoder = c->n_layer * HN * D * wsize;
    t.state = pairs * 2 * D * 4 * 2;
    t.encoder_v = neurons * D * wsize;
    t.decoder = gated * D * wsize;
    /* lm_head and one embedding row; Q8_0 (under 2 bytes a weight) keeps them float32 */
    const double misc_wsize = wsize < 2.0 ? 4.0 : wsize;
    t.misc = D * c->vocab_size * misc_wsize + D * misc_wsize;
    t.total = t.encoder + t.state + t.encoder_v + t.decoder + t.misc;
    return t;
}

/* From bdh_state_activity's per-layer fractions: xs and xy of the H*N
 * neurons, pairs of the H*N/2 RoPE pairs. */
static inline bench_traffic bench_traffic_fractions(const bdh_config *c, double wsize, const float *xs,
                                                    const float *pairs, const float *xy)
{
    const double HN = (double)c->n_head * c->n_neurons;
    double neurons = 0.0, listed = 0.0, gated = 0.0;
    for (int l = 0; l < c->n_layer; l++) {
        neurons += xs[l] * HN;
        listed += pairs[l] * HN / 2;
        gated += xy[l] * HN;
    }
    return bench_traffic_counts(c, wsize, neurons, listed, gated);
}

#endif /* BDH_BENCH_TRAFFIC_H */
