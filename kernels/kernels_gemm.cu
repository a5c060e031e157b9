/* The GEMM used by prefill and by the batched step for every product with a
 * weight matrix (so F32, BF16 and Q8_0 weights share one path, with float32
 * accumulation; Q8_0 weights are widened to their exact float values as the
 * tiles are staged, so no float copy of them is made), and the small kernels
 * only prefill needs. The products of the state with Q (float32 on both
 * sides) go to cuBLAS instead (see cuda_forward.cu). */
#include "bdh_cuda.cuh"

#include <type_traits>

namespace {

#define TM 64
#define TN 64
#define TK 16

/* 64x64 output tile per block of 256 threads, 16-deep slices of K staged in
 * shared memory; thread (tx, ty) accumulates rows ty + 16i and columns
 * tx + 16j (i, j < 4), so the shared-memory reads are conflict-free and the
 * stores coalesced. Split s of K covers [s*kc, (s+1)*kc). */
template <typename W, bool BNK, int EPI>
__global__ void __launch_bounds__(256) gemm_kernel(gemm_params p)
{
    pdl_begin();
    __shared__ float As[TK][TM + 1];
    __shared__ float Bs[TK][TN + 1];
    const int z = blockIdx.z, head = z / p.splits, split = z % p.splits;
    const float *A = p.A + (size_t)head * p.sA;
    const W *B = (const W *)p.B + (size_t)head * p.sB;
    float *C = p.C + (size_t)head * p.sC + (size_t)split * p.sCsplit;
    const int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
    const int kc = ((p.K + p.splits - 1) / p.splits + TK - 1) / TK * TK;
    const int kb = split * kc;
    const int ke = min(p.K, kb + kc);
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.f;

    for (int k0 = kb; k0 < ke; k0 += TK) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int idx = tid + e * 256;
            {
                const int m = idx / TK, kk = idx % TK, gm = m0 + m, gk = k0 + kk;
                As[kk][m] = (gm < p.M && gk < ke) ? A[(size_t)gm * p.lda + gk] : 0.f;
            }
            if constexpr (std::is_same<W, int8_t>::value) {
                /* Q8_0: stored row r (k, or n when BNK), element c; its block's scale */
                const int a = BNK ? idx / TK : idx / TN, e2 = BNK ? idx % TK : idx % TN;
                const int kk = BNK ? e2 : a, n = BNK ? a : e2, gk = k0 + kk, gn = n0 + n;
                const int r = BNK ? gn : gk, c = BNK ? gk : gn;
                const uint16_t *Q = p.Bq + (size_t)head * p.sBq;
                Bs[kk][n] = (gk < ke && gn < p.Nc)
                                ? __fmul_rn(q8_scale(Q + (size_t)r * p.ldbq + (c >> 5)), (float)__ldg(B + (size_t)r * p.ldb + c))
                                : 0.f;
            } else if (!BNK) {
                const int kk = idx / TN, n = idx % TN, gk = k0 + kk, gn = n0 + n;
                Bs[kk][n] = (gk < ke && gn < p.Nc) ? ldw(B + (size_t)gk * p.ldb + gn) : 0.f;
            } else {
                const int n = idx / TK, kk = idx % TK, gk = k0 + kk, gn = n0 + n;
                Bs[kk][n] = (gk < ke && gn < p.Nc) ? ldw(B + (size_t)gn * p.ldb + gk) : 0.f;
            }
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TK; kk++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int gm = m0 + ty + 16 * i;
        if (gm >= p.M) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int gn = n0 + tx + 16 * j;
            if (gn >= p.Nc) continue;
            float v = acc[i][j];
            if (EPI == 1) v = fmaxf(v, 0.f);
            if (EPI == 2) v = p.G[(size_t)head * p.sG + (size_t)gm * p.ldg + gn] * fmaxf(v, 0.f);
            C[(size_t)gm * p.ldc + gn] = v;
        }
    }
}

template <typename W, bool BNK>
cudaError_t launch_epi(const gemm_params *p, dim3 grid, cudaStream_t st)
{
    switch (p->epi) {
    case 1: return bdh_launch(gemm_kernel<W, BNK, 1>, grid, 256, 0, st, *p);
    case 2: return bdh_launch(gemm_kernel<W, BNK, 2>, grid, 256, 0, st, *p);
    default: return bdh_launch(gemm_kernel<W, BNK, 0>, grid, 256, 0, st, *p);
    }
}

template <typename W>
cudaError_t launch_w(const gemm_params *p, dim3 grid, cudaStream_t st)
{
    return p->b_nk ? launch_epi<W, true>(p, grid, st) : launch_epi<W, false>(p, grid, st);
}

/* Q[i][c] for the pair c = (2k, 2k+1) of row i: rope at position t0 + i. */
__global__ void rope_rows_kernel(const float *__restrict__ XS, float *__restrict__ Q, int HN, int N,
                                 const float *__restrict__ freqs, long long t0)
{
    pdl_begin();
    const int i = blockIdx.y;
    const int pr = blockIdx.x * blockDim.x + threadIdx.x;
    if (2 * pr >= HN) return;
    const int c = 2 * pr, j = c % N;
    const size_t at = (size_t)i * HN + c;
    const float2 q = rope_pair(XS[at], XS[at + 1], freqs[j], freqs[j + 1], (float)(t0 + i));
    Q[at] = q.x;
    Q[at + 1] = q.y;
}

/* The intra-chunk term: A[h][i] += sum_{s<i} (q_i . q_s) x_s, token i seeing
 * the earlier tokens of its chunk and not itself. scores[h] is Q_h Q_h^T. */
__global__ void masked_kernel(float *__restrict__ A, const float *__restrict__ scores, const float *__restrict__ X,
                              int T, int D)
{
    pdl_begin();
    const int i = blockIdx.x, h = blockIdx.y;
    const float *sc = scores + ((size_t)h * T + i) * T;
    float *a = A + ((size_t)h * T + i) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float t = 0.f;
        for (int s = 0; s < i; s++) t = fmaf(sc[s], X[(size_t)s * D + d], t);
        a[d] += t;
    }
}

__global__ void __launch_bounds__(256) ln_rows_kernel(float *A, int D)
{
    pdl_begin();
    extern __shared__ float v[];
    __shared__ double scratch[33];
    float *row = A + (size_t)blockIdx.x * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) v[d] = row[d];
    __syncthreads();
    block_layernorm(v, D, scratch);
    for (int d = threadIdx.x; d < D; d += blockDim.x) row[d] = v[d];
}

} // namespace

cudaError_t bdh_k_gemm(bdh_elem wt, const gemm_params *p, cudaStream_t st)
{
    const dim3 grid((p->Nc + TN - 1) / TN, (p->M + TM - 1) / TM, p->batch * p->splits);
    if (wt == BDH_ELEM_Q8_0) return p->Bq ? launch_w<int8_t>(p, grid, st) : cudaErrorInvalidValue;
    return wt == BDH_ELEM_BF16 ? launch_w<__nv_bfloat16>(p, grid, st) : launch_w<float>(p, grid, st);
}

cudaError_t bdh_k_rope_rows(const float *XS, float *Q, int T, int HN, int N, const float *freqs, long long t0,
                            cudaStream_t st)
{
    const int pairs = HN / 2;
    return bdh_launch(rope_rows_kernel, dim3((pairs + 255) / 256, T), 256, 0, st, XS, Q, HN, N, freqs, t0);
}

cudaError_t bdh_k_masked(float *A, const float *scores, const float *X, int T, int D, int H, cudaStream_t st)
{
    const int t = D >= 256 ? 256 : (D + 31) / 32 * 32;
    return bdh_launch(masked_kernel, dim3(T, H), t, 0, st, A, scores, X, T, D);
}

cudaError_t bdh_k_ln_rows(float *A, int D, int rows, cudaStream_t st)
{
    const int t = D >= 256 ? 256 : (D + 31) / 32 * 32;
    return bdh_launch(ln_rows_kernel, rows, t, (size_t)D * sizeof(float), st, A, D);
}
