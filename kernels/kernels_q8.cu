/* The Q8_0 decode kernels: the encoder row dots (q8_rows_kernel), the
 * encoder_v gate (ev_gate_q8_kernel) and the decoder (dec_q8_kernel), which
 * take the place of kernels_step.cu's encoder GEMV, gate and decoder when
 * the weights are Q8_0, for one state or, in the batched step, many. The
 * rest of the step (embedding, compaction, state, LayerNorms, lm_head) runs
 * kernels_step.cu's kernels unchanged. */
#include "bdh_cuda.cuh"

namespace {

/* The Q8_0 versions of the three weight products (encoder, encoder_v gate,
 * decoder). Weights are int8 neuron rows of Dp bytes (the D values, then
 * zeros up to a multiple of 32) with one F16 scale per block of 32,
 * [rows][Dp/32]; value = scale * q.
 *
 * Row dots (encoder, gate): a warp computes a row against a float vector
 * held in shared memory (zero beyond D). Lane l takes the 8 values
 * 8l..8l+7 of each 256-wide slice of the row (one 8-byte load), so the 4
 * lanes of one block of 32 add their float partials (two shuffles), the
 * block's sum is multiplied by its scale once and accumulated; after the
 * last slice the 8 block lanes' accumulators are added across the warp. A
 * row is always summed by one warp in this order (butterflies, so every
 * lane ends with the same bits), whatever the grid or the number of
 * states: results are repeatable and a state's do not depend on its batch.
 *
 * Decoder: block column c of y is exactly quantization block c of every
 * row, so lane = column reads one byte of each gated row (a warp: the 32
 * bytes of the block, one sector) and the row's scale is applied once, to
 * its coefficient xy * scale. */
#define Q8_SLICE 256 /* values of a row per warp step (8 per lane) */
#define Q8_ROWS 4    /* rows per warp step */

/* Rows r[u] of W (Dp bytes each, scales S [rows][Dp/32]) against v (shared
 * memory, Dp floats, 16-byte aligned) for u < 4; a row with !use[u] is not
 * read and gives 0. Called by the whole warp with warp-uniform arguments;
 * every lane gets the four results. */
__device__ __forceinline__ void q8_dot4(const float *v, int Dp, const int8_t *__restrict__ W,
                                        const uint16_t *__restrict__ S, const int r[Q8_ROWS], const bool use[Q8_ROWS],
                                        float out[Q8_ROWS])
{
    const int nb = Dp >> 5;
    const int lane = threadIdx.x & 31;
    float acc[Q8_ROWS];
#pragma unroll
    for (int u = 0; u < Q8_ROWS; u++) acc[u] = 0.f;
    for (int i0 = 0; i0 < Dp; i0 += Q8_SLICE) {
        const int d = i0 + 8 * lane;
        const bool in = d < Dp; /* whole blocks: Dp is a multiple of 32 */
        float x[8];
        if (in) {
            const float4 x0 = *reinterpret_cast<const float4 *>(v + d);
            const float4 x1 = *reinterpret_cast<const float4 *>(v + d + 4);
            x[0] = x0.x, x[1] = x0.y, x[2] = x0.z, x[3] = x0.w;
            x[4] = x1.x, x[5] = x1.y, x[6] = x1.z, x[7] = x1.w;
        } else {
#pragma unroll
            for (int k = 0; k < 8; k++) x[k] = 0.f;
        }
        /* all loads first: Q8_ROWS rows' values and scales in flight */
        int2 w[Q8_ROWS];
        float s[Q8_ROWS];
#pragma unroll
        for (int u = 0; u < Q8_ROWS; u++) {
            const bool rd = in && use[u];
            w[u] = rd ? __ldg(reinterpret_cast<const int2 *>(W + (size_t)r[u] * Dp + d)) : make_int2(0, 0);
            s[u] = rd ? q8_scale(S + (size_t)r[u] * nb + (d >> 5)) : 0.f;
        }
#pragma unroll
        for (int u = 0; u < Q8_ROWS; u++) {
            float p = 0.f;
#pragma unroll
            for (int k = 0; k < 4; k++) p = fmaf(x[k], q8_byte(w[u].x, k), p);
#pragma unroll
            for (int k = 0; k < 4; k++) p = fmaf(x[4 + k], q8_byte(w[u].y, k), p);
            p = __fadd_rn(p, __shfl_xor_sync(BDH_FULL_MASK, p, 1)); /* the block's 32 products */
            p = __fadd_rn(p, __shfl_xor_sync(BDH_FULL_MASK, p, 2));
            acc[u] = fmaf(s[u], p, acc[u]);                          /* scaled once */
        }
    }
#pragma unroll
    for (int u = 0; u < Q8_ROWS; u++) {
        float a = acc[u];
        a = __fadd_rn(a, __shfl_xor_sync(BDH_FULL_MASK, a, 4));
        a = __fadd_rn(a, __shfl_xor_sync(BDH_FULL_MASK, a, 8));
        a = __fadd_rn(a, __shfl_xor_sync(BDH_FULL_MASK, a, 16));
        out[u] = a;
    }
}

/* out[b][r] = act(X[b] . W[r]) for r < R. Block (b, y); warp w of block y
 * takes rows 4(8y + w) .. +3, then strides over the grid. */
template <bool RELU>
__global__ void __launch_bounds__(256) q8_rows_kernel(const float *__restrict__ X, int D, int Dp,
                                                      const int8_t *__restrict__ W, const uint16_t *__restrict__ S,
                                                      int R, float *__restrict__ out)
{
    pdl_begin();
    extern __shared__ __align__(16) float q8v[];
    const int b = blockIdx.x;
    for (int d = threadIdx.x; d < Dp; d += blockDim.x) q8v[d] = d < D ? X[(size_t)b * D + d] : 0.f;
    __syncthreads();
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    float *o = out + (size_t)b * R;
    for (int r0 = (blockIdx.y * nw + (threadIdx.x >> 5)) * Q8_ROWS; r0 < R; r0 += gridDim.y * nw * Q8_ROWS) {
        int rows[Q8_ROWS];
        bool use[Q8_ROWS];
#pragma unroll
        for (int u = 0; u < Q8_ROWS; u++) {
            use[u] = r0 + u < R;
            rows[u] = use[u] ? r0 + u : r0;
        }
        float dot[Q8_ROWS];
        q8_dot4(q8v, Dp, W, S, rows, use, dot);
#pragma unroll
        for (int u = 0; u < Q8_ROWS; u++)
            if (lane == u && use[u]) o[r0 + u] = RELU ? fmaxf(dot[u], 0.f) : dot[u];
    }
}

/* ev_gate_kernel with Q8_0 rows, for B states (grid z = state): the same
 * list walk, two pairs (four rows) at a time through q8_dot4. */
__global__ void __launch_bounds__(256) ev_gate_q8_kernel(const float *__restrict__ ln_a, const int8_t *__restrict__ evT,
                                                         const uint16_t *__restrict__ evS, const float *__restrict__ xs,
                                                         const int *__restrict__ list, const int *__restrict__ count,
                                                         int N, int D, int Dp, float *__restrict__ xy,
                                                         unsigned long long *stats)
{
    pdl_begin();
    extern __shared__ __align__(16) float q8la[];
    const int h = blockIdx.y, H = gridDim.y;
    const size_t head = (size_t)blockIdx.z * H + h;
    for (int d = threadIdx.x; d < Dp; d += blockDim.x) q8la[d] = d < D ? ln_a[head * D + d] : 0.f;
    __syncthreads();

    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const int gw = blockIdx.x * nw + (threadIdx.x >> 5), tw = gridDim.x * nw;
    const int cnt = count[head];
    const int *L = list + head * (N / 2);
    const float *xh = xs + head * N;
    float *xyh = xy + head * N;
    const int8_t *E = evT + (size_t)h * N * Dp;
    const uint16_t *ES = evS + (size_t)h * N * (Dp / 32);
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
            const bool use[Q8_ROWS] = {a0 > 0.f, a1 > 0.f, b0 > 0.f, b1 > 0.f}; /* warp-uniform */
            const int rows[Q8_ROWS] = {ja, ja + 1, jb, jb + 1};
            float dot[Q8_ROWS];
            q8_dot4(q8la, Dp, E, ES, rows, use, dot);
            if (lane == e) {
                y0 = use[0] ? a0 * fmaxf(dot[0], 0.f) : 0.f;
                y1 = use[1] ? a1 * fmaxf(dot[1], 0.f) : 0.f;
            }
            if (lane == e + 1 && e2 != e) {
                y0 = use[2] ? b0 * fmaxf(dot[2], 0.f) : 0.f;
                y1 = use[3] ? b1 * fmaxf(dot[3], 0.f) : 0.f;
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

/* dec_kernel with Q8_0 rows, for B states. Block (c, RG*b + r, h): columns
 * 32c..32c+31 (quantization block c), row group r of head h of state b;
 * the same list walk, eight pairs (16 rows) at a time, each row's byte and
 * scale loaded together; y_part[(h*RG + r)*B + b] gets the block's partial. */
__global__ void __launch_bounds__(256) dec_q8_kernel(const float *__restrict__ xy, const int8_t *__restrict__ dec,
                                                     const uint16_t *__restrict__ decS, const int *__restrict__ list,
                                                     const int *__restrict__ count, int N, int D, int Dp, int RG,
                                                     float *__restrict__ y_part)
{
    pdl_begin();
    __shared__ float red[8][32];
    const int H = gridDim.z, h = blockIdx.z, B = gridDim.y / RG, r = blockIdx.y % RG, b = blockIdx.y / RG;
    const size_t head = (size_t)b * H + h;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nb = Dp / 32;
    const int c = blockIdx.x, col = c * 32 + lane; /* col < Dp: inside the row even past D */
    const bool has_col = col < D;
    const int gw = r * 8 + w, tw = RG * 8;
    const int cnt = count[head];
    const int *L = list + head * (N / 2);
    const float *xyh = xy + head * N;
    const int8_t *Dh = dec + (size_t)h * N * Dp + col;
    const uint16_t *Sh = decS + (size_t)h * N * nb + c;
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
            float a[2 * DEC_GROUP], q[2 * DEC_GROUP], sc[2 * DEC_GROUP];
#pragma unroll
            for (int u = 0; u < DEC_GROUP; u++) {
                const int src = (e + u) & 31;
                const int ju = __shfl_sync(BDH_FULL_MASK, j, src);
                a[2 * u] = __shfl_sync(BDH_FULL_MASK, v0, src);
                a[2 * u + 1] = __shfl_sync(BDH_FULL_MASK, v1, src);
                if (e + u >= n) a[2 * u] = a[2 * u + 1] = 0.f;
                const int8_t *rq = Dh + (size_t)ju * Dp;
                const uint16_t *rs = Sh + (size_t)ju * nb;
                q[2 * u] = has_col && a[2 * u] != 0.f ? (float)__ldg(rq) : 0.f;
                q[2 * u + 1] = has_col && a[2 * u + 1] != 0.f ? (float)__ldg(rq + Dp) : 0.f;
                sc[2 * u] = a[2 * u] != 0.f ? q8_scale(rs) : 0.f;
                sc[2 * u + 1] = a[2 * u + 1] != 0.f ? q8_scale(rs + nb) : 0.f;
            }
#pragma unroll
            for (int u = 0; u < 2 * DEC_GROUP; u++) acc = fmaf(__fmul_rn(a[u], sc[u]), q[u], acc);
        }
    }
    red[w][lane] = acc;
    __syncthreads();
    if (w == 0 && has_col) {
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < 8; k++) s = __fadd_rn(s, red[k][lane]);
        y_part[(((size_t)h * RG + r) * B + b) * D + col] = s;
    }
}

} // namespace

/* ---------------------------------------------------------------- launchers */

/* Q8_0 rows: Dp a whole number of blocks holding the D values. */
static bool q8_shape_ok(int D, int Dp) { return D >= 1 && Dp >= D && Dp % 32 == 0 && Dp - D < 32; }

cudaError_t bdh_k_q8_rows(int relu, const float *X, int D, int Dp, const int8_t *W, const uint16_t *S, int R,
                          float *out, int B, cudaStream_t st)
{
    if (!q8_shape_ok(D, Dp) || R < 1 || B < 1) return cudaErrorInvalidValue;
    const int per_block = 8 * Q8_ROWS; /* 8 warps of 256 threads */
    const int ny = (R + per_block - 1) / per_block;
    const dim3 grid(B, ny < 65535 ? ny : 65535);
    const size_t smem = (size_t)Dp * sizeof(float);
    if (relu) return bdh_launch(q8_rows_kernel<true>, grid, 256, smem, st, X, D, Dp, W, S, R, out);
    return bdh_launch(q8_rows_kernel<false>, grid, 256, smem, st, X, D, Dp, W, S, R, out);
}

cudaError_t bdh_k_ev_gate_q8(const float *ln_a, const int8_t *evT, const uint16_t *evS, const float *xs,
                             const int *list, const int *count, int N, int D, int Dp, int H, int B, int GY, float *xy,
                             unsigned long long *stats, cudaStream_t st)
{
    if (!q8_shape_ok(D, Dp) || B < 1) return cudaErrorInvalidValue;
    const dim3 grid(GY, H, B);
    const size_t smem = (size_t)Dp * sizeof(float);
    return bdh_launch(ev_gate_q8_kernel, grid, 256, smem, st, ln_a, evT, evS, xs, list, count, N, D, Dp, xy, stats);
}

cudaError_t bdh_k_dec_q8(const float *xy, const int8_t *dec, const uint16_t *decS, const int *list, const int *count,
                         int N, int D, int Dp, int H, int B, int RG, float *y_part, cudaStream_t st)
{
    if (!q8_shape_ok(D, Dp) || B < 1 || RG < 1 || (long long)RG * B > 65535) return cudaErrorInvalidValue;
    const dim3 grid(Dp / 32, RG * B, H);
    return bdh_launch(dec_q8_kernel, grid, 256, 0, st, xy, dec, decS, list, count, N, D, Dp, RG, y_part);
}
