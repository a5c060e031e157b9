/* The decode-step kernels. One token (or, with B > 1, one token for each of B
 * states) through one layer is:
 *
 *   gemv_kernel<relu>  xs[h] = relu(x @ encoder[h])            (all heads, one launch)
 *   compact_kernel     list[h] = pairs (2i, 2i+1) with any xs > 0, and q = rope(t, xs) there
 *   state_kernel       a[h] = S[h]^T q (before the update), S[h] += q x^T, listed rows only
 *   ln_a_kernel        LN(a[h]) per head (sums the state kernel's partials)
 *   ev_gate_kernel     xy = xs * relu(LN(a) @ encoder_v[h]), only where xs > 0
 *   dec_kernel         partial y = xy @ decoder over rows with xy != 0
 *   final_ln_kernel    x = LN(x + LN(y))
 *
 * plus embed_ln_kernel (x = LN(embed[token])) before the first layer and
 * gemv_kernel for lm_head after the last. Every sum is split over blocks
 * into partials that the next kernel adds in a fixed order: no float
 * atomics, so a run is bit-for-bit repeatable.
 *
 * With Q8_0 weights q8_rows_kernel, ev_gate_q8_kernel and dec_q8_kernel
 * (kernels_q8.cu) take the place of the encoder GEMV, the gate and the
 * decoder, for one state or, in the batched step, many. */
#include "bdh_cuda.cuh"

namespace {

/* ---------------------------------------------------------------- embed */

template <typename W>
__global__ void __launch_bounds__(256) embed_ln_kernel(const W *__restrict__ embed, int D, const int *tokens,
                                                       const long long *pos_src, long long *pos_dst, float *X)
{
    pdl_begin();
    extern __shared__ float v[];
    __shared__ double scratch[33];
    __shared__ int tok;
    const int b = blockIdx.x;
    /* one read of the token: for the single step it lives in mapped host memory */
    if (threadIdx.x == 0) {
        tok = tokens[b];
        if (pos_dst && b == 0) *pos_dst = *pos_src;
    }
    __syncthreads();
    const W *row = embed + (size_t)tok * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) v[d] = ldw(row + d);
    __syncthreads();
    block_layernorm(v, D, scratch);
    for (int d = threadIdx.x; d < D; d += blockDim.x) X[(size_t)b * D + d] = v[d];
}

/* ---------------------------------------------------------------- GEMV */

#define GEMV_WARPS 8
#define GEMV_CPL 4                  /* columns per lane */
#define GEMV_COLS (32 * GEMV_CPL)   /* columns per block */

/* out[z][n] = act(sum_k x[z][k] W[z][k][n]) for W row-major [K][Nc].
 * A block owns 128 columns; its 8 warps split k, each lane reads 4 columns
 * 32 apart (so a warp's load is one 128-byte line per column group), and the
 * 8 partial sums are added in shared memory in warp order. */
template <typename W, bool RELU>
__global__ void __launch_bounds__(256) gemv_kernel(const float *__restrict__ x, long long xstride, int K,
                                                   const W *__restrict__ Wm, int Nc, long long wstride, float *out,
                                                   long long ostride)
{
    pdl_begin();
    extern __shared__ float xsm[];
    __shared__ float red[GEMV_WARPS][GEMV_COLS];
    x += (size_t)blockIdx.y * xstride;
    Wm += (size_t)blockIdx.y * wstride;
    out += (size_t)blockIdx.y * ostride;
    for (int k = threadIdx.x; k < K; k += blockDim.x) xsm[k] = x[k];
    __syncthreads();

    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int col0 = blockIdx.x * GEMV_COLS + lane;
    float acc[GEMV_CPL];
#pragma unroll
    for (int c = 0; c < GEMV_CPL; c++) acc[c] = 0.f;
    if (blockIdx.x * GEMV_COLS + GEMV_COLS <= Nc) {
        /* full tile: no bounds checks, loads of several k in flight */
#pragma unroll 4
        for (int k = w; k < K; k += GEMV_WARPS) {
            const float xk = xsm[k];
            const W *row = Wm + (size_t)k * Nc + col0;
#pragma unroll
            for (int c = 0; c < GEMV_CPL; c++) acc[c] = fmaf(xk, ldw(row + 32 * c), acc[c]);
        }
    } else {
        for (int k = w; k < K; k += GEMV_WARPS) {
            const float xk = xsm[k];
            const W *row = Wm + (size_t)k * Nc + col0;
#pragma unroll
            for (int c = 0; c < GEMV_CPL; c++)
                if (col0 + 32 * c < Nc) acc[c] = fmaf(xk, ldw(row + 32 * c), acc[c]);
        }
    }
#pragma unroll
    for (int c = 0; c < GEMV_CPL; c++) red[w][lane + 32 * c] = acc[c];
    __syncthreads();
    if (threadIdx.x < GEMV_COLS) {
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < GEMV_WARPS; k++) s += red[k][threadIdx.x];
        const int col = blockIdx.x * GEMV_COLS + threadIdx.x;
        if (col < Nc) out[col] = RELU ? fmaxf(s, 0.f) : s;
    }
}

/* ---------------------------------------------------------------- compaction */

/* One block per (head h, state b). Lists, in ascending order, the pairs
 * (2i, 2i+1) of xs with any entry > 0 (all pairs with dense), and the
 * rotated values q of those pairs at the state's position. The order is
 * fixed (block-wide prefix sums over ballots), so the partial sums built
 * from the list are repeatable. */
__global__ void __launch_bounds__(1024) compact_kernel(const float *__restrict__ xs, int N,
                                                       const float *__restrict__ freqs,
                                                       const long long *__restrict__ pos, int dense,
                                                       int *__restrict__ list, float2 *__restrict__ qlist,
                                                       int *__restrict__ count, unsigned long long *stats)
{
    pdl_begin();
    __shared__ int warp_off[32];
    __shared__ int tile_total;
    const int H = gridDim.x, h = blockIdx.x, b = blockIdx.y;
    const size_t head = (size_t)b * H + h;
    const int P = N / 2;
    const float2 *v = reinterpret_cast<const float2 *>(xs + head * N);
    int *L = list + head * P;
    float2 *Q = qlist + head * P;
    const float tf = (float)pos[b];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;

    int base = 0;
    unsigned neurons = 0;
    for (int i0 = 0; i0 < P; i0 += blockDim.x) {
        const int i = i0 + threadIdx.x;
        float2 p = make_float2(0.f, 0.f);
        bool act = false;
        if (i < P) {
            p = v[i];
            act = dense || p.x > 0.f || p.y > 0.f;
            neurons += (p.x > 0.f) + (p.y > 0.f);
        }
        const unsigned m = __ballot_sync(BDH_FULL_MASK, act);
        if (lane == 0) warp_off[w] = __popc(m);
        __syncthreads();
        if (w == 0) { /* exclusive scan of the warp counts */
            const int c = lane < nw ? warp_off[lane] : 0;
            int incl = c;
            for (int o = 1; o < 32; o <<= 1) {
                const int t = __shfl_up_sync(BDH_FULL_MASK, incl, o);
                if (lane >= o) incl += t;
            }
            if (lane < nw) warp_off[lane] = incl - c;
            if (lane == 31) tile_total = incl;
        }
        __syncthreads();
        if (act) {
            const int k = base + warp_off[w] + __popc(m & ((1u << lane) - 1u));
            L[k] = i;
            Q[k] = rope_pair(p.x, p.y, freqs[2 * i], freqs[2 * i + 1], tf);
        }
        base += tile_total;
        __syncthreads(); /* warp_off and tile_total are rewritten next tile */
    }
    if (threadIdx.x == 0) count[head] = base;
    if (stats) {
        unsigned s = neurons;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(BDH_FULL_MASK, s, o);
        if (lane == 0 && s) atomicAdd(&stats[2], (unsigned long long)s);
        if (threadIdx.x == 0) {
            atomicAdd(&stats[0], 1ull);
            atomicAdd(&stats[1], (unsigned long long)base);
        }
    }
}

/* ---------------------------------------------------------------- state */

#define STATE_STAGE 256 /* list entries staged in shared memory at a time */

/* Block (g, h, b): listed pairs g, g+GX, g+2GX, ... of head h of state b.
 * Thread d owns column d of the state: for each pair it reads S[2i][d] and
 * S[2i+1][d], adds them (times q) to its partial a[d] and writes back
 * S + q x[d]. The read comes before the write in the same thread, so a is
 * the state BEFORE this token, as the reference requires. Each (row, column)
 * belongs to exactly one thread: no races. The block's share of the list is
 * staged in shared memory first so the state loads do not wait on it. */
__global__ void __launch_bounds__(256) state_kernel(float *const *__restrict__ sptr, long long layer_off, int N, int D,
                                                    const float *__restrict__ X, const int *__restrict__ list,
                                                    const float2 *__restrict__ qlist, const int *__restrict__ count,
                                                    float *__restrict__ a_part)
{
    pdl_begin();
    __shared__ int si[STATE_STAGE];
    __shared__ float2 sq[STATE_STAGE];
    const int GX = gridDim.x, g = blockIdx.x, H = gridDim.y, h = blockIdx.y, b = blockIdx.z;
    const size_t head = (size_t)b * H + h;
    const int P = N / 2;
    float *S = sptr[b] + layer_off + (size_t)h * N * D;
    const int *L = list + head * P;
    const float2 *Q = qlist + head * P;
    const int cnt = count[head];
    const int mine = cnt > g ? (cnt - g + GX - 1) / GX : 0; /* pairs of this block */
    float *out = a_part + (head * GX + g) * D;

    for (int d0 = 0; d0 < D; d0 += blockDim.x) {
        const int d = d0 + threadIdx.x;
        const bool col = d < D;
        const float xd = col ? X[(size_t)b * D + d] : 0.f;
        float acc = 0.f;
        for (int s0 = 0; s0 < mine; s0 += STATE_STAGE) {
            const int n = min(STATE_STAGE, mine - s0);
            __syncthreads();
            for (int k = threadIdx.x; k < n; k += blockDim.x) {
                const int p = g + (s0 + k) * GX;
                si[k] = L[p];
                sq[k] = Q[p];
            }
            __syncthreads();
            if (!col) continue;
            int k = 0;
            for (; k + 4 <= n; k += 4) { /* four pairs: eight loads in flight */
                float r0[4], r1[4];
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    const float *r = S + (size_t)(2 * si[k + u]) * D + d;
                    r0[u] = r[0];
                    r1[u] = r[D];
                }
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    const float2 q = sq[k + u];
                    acc = fmaf(r0[u], q.x, acc);
                    acc = fmaf(r1[u], q.y, acc);
                    float *r = S + (size_t)(2 * si[k + u]) * D + d;
                    r[0] = fmaf(q.x, xd, r0[u]);
                    r[D] = fmaf(q.y, xd, r1[u]);
                }
            }
            for (; k < n; k++) {
                float *r = S + (size_t)(2 * si[k]) * D + d;
                const float2 q = sq[k];
                const float a0 = r[0], a1 = r[D];
                acc = fmaf(a0, q.x, acc);
                acc = fmaf(a1, q.y, acc);
                r[0] = fmaf(q.x, xd, a0);
                r[D] = fmaf(q.y, xd, a1);
            }
        }
        if (col) out[d] = acc;
    }
}

/* ---------------------------------------------------------------- partial sums */

/* out[d] = sum_p part[p*pstride + d] for d < D, into shared memory, in a
 * fixed order. The block's threads form G = blockDim/D groups (thread t:
 * column t % D, group t / D); group g adds p = g, g+G, ... with several loads
 * in flight, then the G group sums are added in order. red: blockDim floats.
 * (D > blockDim: one group, a loop over the columns.) */
__device__ void reduce_partials(const float *__restrict__ part, long long pstride, int P, int D, float *out, float *red)
{
    const int G = D <= (int)blockDim.x ? (int)blockDim.x / D : 1;
    if (G == 1) {
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            float s = 0.f;
#pragma unroll 8
            for (int p = 0; p < P; p++) s += part[(size_t)p * pstride + d];
            out[d] = s;
        }
        __syncthreads();
        return;
    }
    const int d = threadIdx.x % D, g = threadIdx.x / D;
    if (g < G) {
        float s = 0.f;
#pragma unroll 8
        for (int p = g; p < P; p += G) s += part[(size_t)p * pstride + d];
        red[threadIdx.x] = s;
    }
    __syncthreads();
    if (threadIdx.x < D) {
        float s = 0.f;
        for (int k = 0; k < G; k++) s += red[k * D + threadIdx.x];
        out[threadIdx.x] = s;
    }
    __syncthreads();
}

/* ln_a[b][h] = LN(sum_g a_part[b][h][g]) (block per head and state). */
__global__ void __launch_bounds__(1024) ln_a_kernel(const float *__restrict__ a_part, int GX, int D, float *ln_a)
{
    pdl_begin();
    extern __shared__ float v[];
    __shared__ float red[1024];
    __shared__ double scratch[33];
    const size_t head = (size_t)blockIdx.y * gridDim.x + blockIdx.x;
    reduce_partials(a_part + head * GX * D, D, GX, D, v, red);
    block_layernorm(v, D, scratch);
    for (int d = threadIdx.x; d < D; d += blockDim.x) ln_a[head * D + d] = v[d];
}

/* ---------------------------------------------------------------- encoder_v gate */

/* xy[h][j] = xs[h][j] * relu(LN(a[h]) . encoder_v[h][:, j]) for the two
 * neurons of every listed pair; the dot product is computed only where
 * xs > 0 (else xy = 0 without reading the weights). encoder_v is stored
 * transposed, [H][N][D], so neuron j's weights are one contiguous row that a
 * warp reads coalesced. Warp w of the head's tw warps takes list entries
 * w, w+tw, w+2tw, ...: 32 of them at a time have their index and xs values
 * loaded by one lane each, then the warp walks them two pairs (four rows) at
 * a time, so that up to 4*D/32 loads per lane are in flight. */
template <typename W>
__global__ void __launch_bounds__(256) ev_gate_kernel(const float *__restrict__ ln_a, const W *__restrict__ evT,
                                                      const float *__restrict__ xs, const int *__restrict__ list,
                                                      const int *__restrict__ count, int N, int D,
                                                      float *__restrict__ xy, unsigned long long *stats)
{
    pdl_begin();
    extern __shared__ float la[];
    const int h = blockIdx.y;
    for (int d = threadIdx.x; d < D; d += blockDim.x) la[d] = ln_a[(size_t)h * D + d];
    __syncthreads();

    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const int gw = blockIdx.x * nw + (threadIdx.x >> 5), tw = gridDim.x * nw;
    const int cnt = count[h];
    const int *L = list + (size_t)h * (N / 2);
    const float *xh = xs + (size_t)h * N;
    float *xyh = xy + (size_t)h * N;
    const W *E = evT + (size_t)h * N * D;
    unsigned gated = 0;

    for (int base = gw; base < cnt; base += 32 * tw) {
        const int p = base + lane * tw;
        int j = 0;
        float x0 = 0.f, x1 = 0.f;
        if (p < cnt) {
            j = 2 * L[p];
            x0 = xh[j];
            x1 = xh[j + 1];
        }
        const int n = min(32, (cnt - base + tw - 1) / tw); /* entries of this batch */
        float y0 = 0.f, y1 = 0.f;                          /* lane e keeps entry e's results */
        for (int e = 0; e < n; e += 2) {
            const int e2 = e + 1 < n ? e + 1 : e;
            const int ja = __shfl_sync(BDH_FULL_MASK, j, e), jb = __shfl_sync(BDH_FULL_MASK, j, e2);
            const float a0 = __shfl_sync(BDH_FULL_MASK, x0, e), a1 = __shfl_sync(BDH_FULL_MASK, x1, e);
            float b0 = __shfl_sync(BDH_FULL_MASK, x0, e2), b1 = __shfl_sync(BDH_FULL_MASK, x1, e2);
            if (e2 == e) b0 = b1 = 0.f;
            const bool fa0 = a0 > 0.f, fa1 = a1 > 0.f, fb0 = b0 > 0.f, fb1 = b1 > 0.f; /* warp-uniform */
            const W *ra0 = E + (size_t)ja * D, *ra1 = ra0 + D, *rb0 = E + (size_t)jb * D, *rb1 = rb0 + D;
            float da0 = 0.f, da1 = 0.f, db0 = 0.f, db1 = 0.f;
            /* all loads of a 4-column step first (predicated, not branched
             * around their FMAs), so 16 of them are in flight per lane */
            for (int d0 = lane; d0 < D; d0 += 4 * 32) {
                float w[4][4], l[4];
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    const int d = d0 + 32 * u;
                    const bool in = d < D;
                    l[u] = in ? la[d] : 0.f;
                    w[0][u] = in && fa0 ? ldw(ra0 + d) : 0.f;
                    w[1][u] = in && fa1 ? ldw(ra1 + d) : 0.f;
                    w[2][u] = in && fb0 ? ldw(rb0 + d) : 0.f;
                    w[3][u] = in && fb1 ? ldw(rb1 + d) : 0.f;
                }
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    da0 = fmaf(l[u], w[0][u], da0);
                    da1 = fmaf(l[u], w[1][u], da1);
                    db0 = fmaf(l[u], w[2][u], db0);
                    db1 = fmaf(l[u], w[3][u], db1);
                }
            }
            da0 = warp_sum(da0);
            da1 = warp_sum(da1);
            db0 = warp_sum(db0);
            db1 = warp_sum(db1);
            if (lane == e) {
                y0 = fa0 ? a0 * fmaxf(da0, 0.f) : 0.f;
                y1 = fa1 ? a1 * fmaxf(da1, 0.f) : 0.f;
            }
            if (lane == e + 1 && e2 != e) {
                y0 = fb0 ? b0 * fmaxf(db0, 0.f) : 0.f;
                y1 = fb1 ? b1 * fmaxf(db1, 0.f) : 0.f;
            }
        }
        if (p < cnt) {
            xyh[j] = y0;
            xyh[j + 1] = y1;
            gated += (y0 > 0.f) + (y1 > 0.f);
        }
    }
    if (stats) {
        unsigned s = gated;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(BDH_FULL_MASK, s, o);
        if (lane == 0 && s) atomicAdd(&stats[3], (unsigned long long)s);
    }
}

/* ---------------------------------------------------------------- decoder */

/* Block (c, r, h): columns 32c..32c+31 of y, row group r of head h. Warp w
 * of the head's RG*8 warps takes list entries w, w+tw, ...; 32 at a time have
 * their index and xy values loaded by one lane each, then the warp walks them
 * eight pairs (16 rows) at a time: lane = column, the 16 row loads issued
 * together (a row with xy == 0 is not read; it adds 0). The 8 warps' sums are
 * added in shared memory; y_part[h*RG + r] holds the block's partial. */
template <typename W>
__global__ void __launch_bounds__(256) dec_kernel(const float *__restrict__ xy, const W *__restrict__ dec,
                                                  const int *__restrict__ list, const int *__restrict__ count, int N,
                                                  int D, float *__restrict__ y_part)
{
    pdl_begin();
    __shared__ float red[8][32];
    const int h = blockIdx.z, RG = gridDim.y;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int col = blockIdx.x * 32 + lane;
    const bool has_col = col < D;
    const int gw = blockIdx.y * 8 + w, tw = RG * 8;
    const int cnt = count[h];
    const int *L = list + (size_t)h * (N / 2);
    const float *xyh = xy + (size_t)h * N;
    const W *Dh = dec + (size_t)h * N * D + (has_col ? col : 0);
    float acc = 0.f;

    for (int base = gw; base < cnt; base += 32 * tw) {
        const int p = base + lane * tw;
        int j = 0;
        float v0 = 0.f, v1 = 0.f;
        if (p < cnt) {
            j = 2 * L[p];
            v0 = xyh[j];
            v1 = xyh[j + 1];
        }
        const int n = min(32, (cnt - base + tw - 1) / tw);
        for (int e = 0; e < n; e += DEC_GROUP) {
            float a[2 * DEC_GROUP], wv[2 * DEC_GROUP];
#pragma unroll
            for (int u = 0; u < DEC_GROUP; u++) {
                const int src = (e + u) & 31;
                const int ju = __shfl_sync(BDH_FULL_MASK, j, src);
                a[2 * u] = __shfl_sync(BDH_FULL_MASK, v0, src);
                a[2 * u + 1] = __shfl_sync(BDH_FULL_MASK, v1, src);
                if (e + u >= n) a[2 * u] = a[2 * u + 1] = 0.f;
                const W *r = Dh + (size_t)ju * D;
                wv[2 * u] = has_col && a[2 * u] != 0.f ? ldw(r) : 0.f;
                wv[2 * u + 1] = has_col && a[2 * u + 1] != 0.f ? ldw(r + D) : 0.f;
            }
#pragma unroll
            for (int u = 0; u < 2 * DEC_GROUP; u++) acc = fmaf(a[u], wv[u], acc);
        }
    }
    red[w][lane] = acc;
    __syncthreads();
    if (w == 0 && has_col) {
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < 8; k++) s += red[k][lane];
        y_part[((size_t)h * RG + blockIdx.y) * D + col] = s;
    }
}

/* ---------------------------------------------------------------- layer end */

/* Row b: y = sum_p y_part[b*D + p*pstride]; x = LN(x + LN(y)). */
__global__ void __launch_bounds__(1024) final_ln_kernel(const float *__restrict__ y_part, int P, long long pstride, int D,
                                                        float *X)
{
    pdl_begin();
    extern __shared__ float sm[];
    __shared__ float red[1024];
    __shared__ double scratch[33];
    float *y = sm, *x = sm + D;
    const int b = blockIdx.x;
    float *xr = X + (size_t)b * D;
    reduce_partials(y_part + (size_t)b * D, pstride, P, D, y, red);
    block_layernorm(y, D, scratch);
    for (int d = threadIdx.x; d < D; d += blockDim.x) x[d] = xr[d] + y[d];
    __syncthreads();
    block_layernorm(x, D, scratch);
    for (int d = threadIdx.x; d < D; d += blockDim.x) xr[d] = x[d];
}

} // namespace

/* ---------------------------------------------------------------- launchers */

static int round_threads(int D, int cap)
{
    int t = (D + 31) / 32 * 32;
    return t > cap ? cap : t;
}

cudaError_t bdh_k_embed_ln(bdh_elem wt, const void *embed, int D, const int *tokens, const long long *pos_src,
                           long long *pos_dst, float *X, int rows, cudaStream_t st)
{
    if (wt == BDH_ELEM_Q8_0) return cudaErrorInvalidValue; /* embed is float32 beside Q8_0 */
    const size_t smem = (size_t)D * sizeof(float);
    const int t = round_threads(D, 256);
    if (wt == BDH_ELEM_BF16)
        return bdh_launch(embed_ln_kernel<__nv_bfloat16>, rows, t, smem, st, (const __nv_bfloat16 *)embed, D, tokens, pos_src, pos_dst, X);
    return bdh_launch(embed_ln_kernel<float>, rows, t, smem, st, (const float *)embed, D, tokens, pos_src, pos_dst, X);
}

cudaError_t bdh_k_gemv(bdh_elem wt, int relu, const float *x, long long xstride, int K, const void *W, int Nc,
                       long long wstride, float *out, long long ostride, int nz, cudaStream_t st)
{
    if (wt == BDH_ELEM_Q8_0) return cudaErrorInvalidValue; /* bdh_k_q8_rows */
    const dim3 grid((Nc + GEMV_COLS - 1) / GEMV_COLS, nz);
    const size_t smem = (size_t)K * sizeof(float);
    if (wt == BDH_ELEM_BF16) {
        const __nv_bfloat16 *w = (const __nv_bfloat16 *)W;
        if (relu) return bdh_launch(gemv_kernel<__nv_bfloat16, true>, grid, 256, smem, st, x, xstride, K, w, Nc, wstride, out, ostride);
        return bdh_launch(gemv_kernel<__nv_bfloat16, false>, grid, 256, smem, st, x, xstride, K, w, Nc, wstride, out, ostride);
    } else {
        const float *w = (const float *)W;
        if (relu) return bdh_launch(gemv_kernel<float, true>, grid, 256, smem, st, x, xstride, K, w, Nc, wstride, out, ostride);
        return bdh_launch(gemv_kernel<float, false>, grid, 256, smem, st, x, xstride, K, w, Nc, wstride, out, ostride);
    }
}

cudaError_t bdh_k_compact(const float *xs, int N, int H, int B, const float *freqs, const long long *pos, int dense,
                          int *list, float2 *qlist, int *count, unsigned long long *stats, cudaStream_t st)
{
    const int P = N / 2;
    const int t = P >= 1024 ? 1024 : (P + 31) / 32 * 32;
    return bdh_launch(compact_kernel, dim3(H, B), t, 0, st, xs, N, freqs, pos, dense, list, qlist, count, stats);
}

cudaError_t bdh_k_state(float *const *sptr, long long layer_off, int N, int D, int H, int B, int GX, const float *X,
                        const int *list, const float2 *qlist, const int *count, float *a_part, cudaStream_t st)
{
    return bdh_launch(state_kernel, dim3(GX, H, B), round_threads(D, 256), 0, st, sptr, layer_off, N, D, X, list, qlist, count, a_part);
}

cudaError_t bdh_k_ln_a(const float *a_part, int GX, int D, int H, int B, float *ln_a, cudaStream_t st)
{
    return bdh_launch(ln_a_kernel, dim3(H, B), 1024, (size_t)D * sizeof(float), st, a_part, GX, D, ln_a);
}

cudaError_t bdh_k_ev_gate(bdh_elem wt, const float *ln_a, const void *evT, const float *xs, const int *list,
                          const int *count, int N, int D, int H, int GY, float *xy, unsigned long long *stats,
                          cudaStream_t st)
{
    if (wt == BDH_ELEM_Q8_0) return cudaErrorInvalidValue; /* bdh_k_ev_gate_q8 */
    const dim3 grid(GY, H);
    const size_t smem = (size_t)D * sizeof(float);
    if (wt == BDH_ELEM_BF16)
        return bdh_launch(ev_gate_kernel<__nv_bfloat16>, grid, 256, smem, st, ln_a, (const __nv_bfloat16 *)evT, xs, list, count, N, D, xy, stats);
    return bdh_launch(ev_gate_kernel<float>, grid, 256, smem, st, ln_a, (const float *)evT, xs, list, count, N, D, xy, stats);
}

cudaError_t bdh_k_dec(bdh_elem wt, const float *xy, const void *dec, const int *list, const int *count, int N, int D,
                      int H, int RG, float *y_part, cudaStream_t st)
{
    if (wt == BDH_ELEM_Q8_0) return cudaErrorInvalidValue; /* bdh_k_dec_q8 */
    const dim3 grid((D + 31) / 32, RG, H);
    if (wt == BDH_ELEM_BF16)
        return bdh_launch(dec_kernel<__nv_bfloat16>, grid, 256, 0, st, xy, (const __nv_bfloat16 *)dec, list, count, N, D, y_part);
    return bdh_launch(dec_kernel<float>, grid, 256, 0, st, xy, (const float *)dec, list, count, N, D, y_part);
}

cudaError_t bdh_k_final_ln(const float *y_part, int P, long long pstride, int D, float *X, int rows, cudaStream_t st)
{
    return bdh_launch(final_ln_kernel, rows, 1024, 2 * (size_t)D * sizeof(float), st, y_part, P, pstride, D, X);
}
