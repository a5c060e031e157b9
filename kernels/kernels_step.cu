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
 * atomics, so a run is bit-for-bit repeatable. */
#include "bdh_cuda.cuh"

namespace {

/* ---------------------------------------------------------------- embed */

template <typename W>
__global__ void __launch_bounds__(256) embed_ln_kernel(const W *__restrict__ embed, int D, const int *tokens,
                                                       const long long *pos_src, long long *pos_dst, float *X)
{
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

/* out[z][n] = act(sum_k x[k] W[z][k][n]) for W row-major [K][Nc].
 * A block owns 128 columns; its 8 warps split k, each lane reads 4 columns
 * 32 apart (so a warp's load is one 128-byte line per column group), and the
 * 8 partial sums are added in shared memory in warp order. */
template <typename W, bool RELU>
__global__ void __launch_bounds__(256) gemv_kernel(const float *__restrict__ x, int K, const W *__restrict__ Wm, int Nc,
                                                   long long wstride, float *out, long long ostride)
{
    extern __shared__ float xsm[];
    __shared__ float red[GEMV_WARPS][GEMV_COLS];
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
 * fixed order (warp w adds p = w, w+nw, ...; then warps in order). */
__device__ void reduce_partials(const float *__restrict__ part, long long pstride, int P, int D, float *out,
                                float (*red)[33])
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int c0 = 0; c0 < D; c0 += 32) {
        const int col = c0 + lane;
        float s = 0.f;
        if (col < D)
            for (int p = w; p < P; p += nw) s += part[(size_t)p * pstride + col];
        red[w][lane] = s;
        __syncthreads();
        if (w == 0) {
            float t = 0.f;
            for (int k = 0; k < nw; k++) t += red[k][lane];
            if (col < D) out[col] = t;
        }
        __syncthreads();
    }
}

/* ln_a[b][h] = LN(sum_g a_part[b][h][g]) (block per head and state). */
__global__ void __launch_bounds__(1024) ln_a_kernel(const float *__restrict__ a_part, int GX, int D, float *ln_a)
{
    extern __shared__ float v[];
    __shared__ float red[32][33];
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
 * warp reads coalesced. A warp takes 32 consecutive list entries, loads their
 * indices and xs values with one load per lane, then walks them. */
template <typename W>
__global__ void __launch_bounds__(256) ev_gate_kernel(const float *__restrict__ ln_a, const W *__restrict__ evT,
                                                      const float *__restrict__ xs, const int *__restrict__ list,
                                                      const int *__restrict__ count, int N, int D,
                                                      float *__restrict__ xy, unsigned long long *stats)
{
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

    for (int p0 = gw * 32; p0 < cnt; p0 += tw * 32) {
        const int p = p0 + lane;
        int j = 0;
        float x0 = 0.f, x1 = 0.f;
        if (p < cnt) {
            j = 2 * L[p];
            x0 = xh[j];
            x1 = xh[j + 1];
        }
        float y0 = 0.f, y1 = 0.f; /* lane e keeps the result of entry e */
        const int n = min(32, cnt - p0);
        for (int e = 0; e < n; e++) {
            const int je = __shfl_sync(BDH_FULL_MASK, j, e);
            const float a0 = __shfl_sync(BDH_FULL_MASK, x0, e);
            const float a1 = __shfl_sync(BDH_FULL_MASK, x1, e);
            const W *r0 = E + (size_t)je * D;
            const W *r1 = r0 + D;
            float d0 = 0.f, d1 = 0.f;
            if (a0 > 0.f && a1 > 0.f) {
#pragma unroll 4
                for (int d = lane; d < D; d += 32) {
                    const float l = la[d];
                    d0 = fmaf(l, ldw(r0 + d), d0);
                    d1 = fmaf(l, ldw(r1 + d), d1);
                }
            } else if (a0 > 0.f) {
#pragma unroll 4
                for (int d = lane; d < D; d += 32) d0 = fmaf(la[d], ldw(r0 + d), d0);
            } else if (a1 > 0.f) {
#pragma unroll 4
                for (int d = lane; d < D; d += 32) d1 = fmaf(la[d], ldw(r1 + d), d1);
            }
            d0 = warp_sum(d0);
            d1 = warp_sum(d1);
            if (lane == e) {
                y0 = a0 > 0.f ? a0 * fmaxf(d0, 0.f) : 0.f;
                y1 = a1 > 0.f ? a1 * fmaxf(d1, 0.f) : 0.f;
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

/* Block (c, r, h): columns 32c..32c+31 of y, row group r of head h. Each
 * warp walks 32 listed pairs at a time (indices and xy values fetched with
 * one load per lane, then broadcast), lane = column, and adds xy[j] *
 * decoder[h*N + j][col] for the rows with xy != 0. The 8 warps' sums are
 * added in shared memory; y_part[h*RG + r] holds the block's partial. */
template <typename W>
__global__ void __launch_bounds__(256) dec_kernel(const float *__restrict__ xy, const W *__restrict__ dec,
                                                  const int *__restrict__ list, const int *__restrict__ count, int N,
                                                  int D, float *__restrict__ y_part)
{
    __shared__ float red[8][32];
    const int h = blockIdx.z, RG = gridDim.y;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int col = blockIdx.x * 32 + lane;
    const int gw = blockIdx.y * 8 + w, tw = RG * 8;
    const int cnt = count[h];
    const int *L = list + (size_t)h * (N / 2);
    const float *xyh = xy + (size_t)h * N;
    const W *Dh = dec + (size_t)h * N * D + (col < D ? col : 0);
    float acc = 0.f;

    for (int p0 = gw * 32; p0 < cnt; p0 += tw * 32) {
        const int p = p0 + lane;
        int j = 0;
        float v0 = 0.f, v1 = 0.f;
        if (p < cnt) {
            j = 2 * L[p];
            v0 = xyh[j];
            v1 = xyh[j + 1];
        }
        const int n = min(32, cnt - p0);
#pragma unroll 4
        for (int e = 0; e < n; e++) {
            const int je = __shfl_sync(BDH_FULL_MASK, j, e);
            const float a0 = __shfl_sync(BDH_FULL_MASK, v0, e);
            const float a1 = __shfl_sync(BDH_FULL_MASK, v1, e);
            if (col < D) {
                if (a0 != 0.f) acc = fmaf(a0, ldw(Dh + (size_t)je * D), acc);
                if (a1 != 0.f) acc = fmaf(a1, ldw(Dh + (size_t)(je + 1) * D), acc);
            }
        }
    }
    red[w][lane] = acc;
    __syncthreads();
    if (w == 0 && col < D) {
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
    extern __shared__ float sm[];
    __shared__ float red[32][33];
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

cudaError_t bdh_k_embed_ln(int wt, const void *embed, int D, const int *tokens, const long long *pos_src,
                           long long *pos_dst, float *X, int rows, cudaStream_t st)
{
    const size_t smem = (size_t)D * sizeof(float);
    const int t = round_threads(D, 256);
    if (wt == BDH_WT_BF16)
        embed_ln_kernel<<<rows, t, smem, st>>>((const __nv_bfloat16 *)embed, D, tokens, pos_src, pos_dst, X);
    else
        embed_ln_kernel<<<rows, t, smem, st>>>((const float *)embed, D, tokens, pos_src, pos_dst, X);
    return cudaGetLastError();
}

cudaError_t bdh_k_gemv(int wt, int relu, const float *x, int K, const void *W, int Nc, long long wstride, float *out,
                       long long ostride, int nz, cudaStream_t st)
{
    const dim3 grid((Nc + GEMV_COLS - 1) / GEMV_COLS, nz);
    const size_t smem = (size_t)K * sizeof(float);
    if (wt == BDH_WT_BF16) {
        const __nv_bfloat16 *w = (const __nv_bfloat16 *)W;
        if (relu) gemv_kernel<__nv_bfloat16, true><<<grid, 256, smem, st>>>(x, K, w, Nc, wstride, out, ostride);
        else gemv_kernel<__nv_bfloat16, false><<<grid, 256, smem, st>>>(x, K, w, Nc, wstride, out, ostride);
    } else {
        const float *w = (const float *)W;
        if (relu) gemv_kernel<float, true><<<grid, 256, smem, st>>>(x, K, w, Nc, wstride, out, ostride);
        else gemv_kernel<float, false><<<grid, 256, smem, st>>>(x, K, w, Nc, wstride, out, ostride);
    }
    return cudaGetLastError();
}

cudaError_t bdh_k_compact(const float *xs, int N, int H, int B, const float *freqs, const long long *pos, int dense,
                          int *list, float2 *qlist, int *count, unsigned long long *stats, cudaStream_t st)
{
    const int P = N / 2;
    const int t = P >= 1024 ? 1024 : (P + 31) / 32 * 32;
    compact_kernel<<<dim3(H, B), t, 0, st>>>(xs, N, freqs, pos, dense, list, qlist, count, stats);
    return cudaGetLastError();
}

cudaError_t bdh_k_state(float *const *sptr, long long layer_off, int N, int D, int H, int B, int GX, const float *X,
                        const int *list, const float2 *qlist, const int *count, float *a_part, cudaStream_t st)
{
    state_kernel<<<dim3(GX, H, B), round_threads(D, 256), 0, st>>>(sptr, layer_off, N, D, X, list, qlist, count, a_part);
    return cudaGetLastError();
}

cudaError_t bdh_k_ln_a(const float *a_part, int GX, int D, int H, int B, float *ln_a, cudaStream_t st)
{
    ln_a_kernel<<<dim3(H, B), 1024, (size_t)D * sizeof(float), st>>>(a_part, GX, D, ln_a);
    return cudaGetLastError();
}

cudaError_t bdh_k_ev_gate(int wt, const float *ln_a, const void *evT, const float *xs, const int *list, const int *count,
                          int N, int D, int H, int GY, float *xy, unsigned long long *stats, cudaStream_t st)
{
    const dim3 grid(GY, H);
    const size_t smem = (size_t)D * sizeof(float);
    if (wt == BDH_WT_BF16)
        ev_gate_kernel<<<grid, 256, smem, st>>>(ln_a, (const __nv_bfloat16 *)evT, xs, list, count, N, D, xy, stats);
    else
        ev_gate_kernel<<<grid, 256, smem, st>>>(ln_a, (const float *)evT, xs, list, count, N, D, xy, stats);
    return cudaGetLastError();
}

cudaError_t bdh_k_dec(int wt, const float *xy, const void *dec, const int *list, const int *count, int N, int D, int H,
                      int RG, float *y_part, cudaStream_t st)
{
    const dim3 grid((D + 31) / 32, RG, H);
    if (wt == BDH_WT_BF16)
        dec_kernel<<<grid, 256, 0, st>>>(xy, (const __nv_bfloat16 *)dec, list, count, N, D, y_part);
    else
        dec_kernel<<<grid, 256, 0, st>>>(xy, (const float *)dec, list, count, N, D, y_part);
    return cudaGetLastError();
}

cudaError_t bdh_k_final_ln(const float *y_part, int P, long long pstride, int D, float *X, int rows, cudaStream_t st)
{
    final_ln_kernel<<<rows, 1024, 2 * (size_t)D * sizeof(float), st>>>(y_part, P, pstride, D, X);
    return cudaGetLastError();
}
