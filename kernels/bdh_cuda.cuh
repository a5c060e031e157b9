/* The CUDA backend's private definitions: device-side model and state, the
 * error helpers, small device functions shared by the kernel files, and the
 * launch wrappers each kernel file exports (kernels are not visible across
 * translation units without -rdc, so every kernel is launched from the file
 * that defines it, through a wrapper declared here).
 *
 * The backend is one table, bdh_cuda_backend (libbdh/internal.h's struct
 * bdh_backend), defined in cuda_model.cu; the core reaches nothing else.
 *
 * docs/gpu.md describes the design; this header is the map:
 *   cuda_model.cu    the table; weight packing and upload from the file's
 *                    tensors, state lifecycle, read/write for save/load, the
 *                    bench's debug hooks
 *   cuda_step.cu     the single-token step (CUDA graph), the thread's PDL
 *                    flag, the bench's profiler
 *   cuda_forward.cu  prefill and the batched step (bdh_cuda_forward_*), the
 *                    paths through the weight GEMMs
 *   cuda_q8.cu       the Q8_0 decode: the single step's and a batch group's
 *                    kernel sequence with Q8_0 weights
 *   kernels_step.cu  the decode kernels (embedding, encoder GEMV, compaction,
 *                    state read/update, LN of a, encoder_v gate, decoder, LNs)
 *   kernels_q8.cu    the Q8_0 decode kernels (encoder row dots, gate, decoder)
 *   kernels_gemm.cu  tiled GEMM with F32/BF16/Q8_0 weights, and the
 *                    prefill-only kernels (RoPE of a chunk, masked intra-chunk
 *                    term, row LN)
 */
#ifndef BDH_CUDA_CUH
#define BDH_CUDA_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"

/* ------------------------------------------------------------ constants */

/* Device weights are BDH_ELEM_F32, BDH_ELEM_BF16 or BDH_ELEM_Q8_0 (dtype.h;
 * Q8_0: encoder, encoder_v and decoder only, embed and lm_head float32);
 * prefill chunks are BDH_PREFILL_CHUNK tokens (internal.h). */

/* Decode-step grid shapes (blocks per head). They only split work; any
 * value gives the same result up to float summation order. */
#define BDH_GX_STEP 128  /* state kernel: partial sums of a per head */
#define BDH_GY_STEP 64   /* encoder_v gate kernel */
#define BDH_RG_STEP 16   /* decoder: row groups per head (partials of y) */
#define DEC_GROUP 8      /* decoder kernels: pairs whose rows a warp loads at once */
#define BDH_BATCH_MAX 128 /* states per launch group of the batched step */
#define BDH_MAX_SPLITK 64
#define BDH_MAX_D 4096    /* shared-memory rows of D floats */

/* ------------------------------------------------------------ structures */

typedef struct cuda_model {
    int device;
    bdh_elem wtype;     /* BDH_ELEM_F32, BDH_ELEM_BF16 or BDH_ELEM_Q8_0 */
    int L, D, H, N, V;
    int Dp, nb;         /* Q8_0: a neuron row's bytes (D rounded up to a block, zero-padded) and blocks */
    int n_sm;
    int dense;          /* BDH_CUDA_DENSE=1: no compaction (every pair listed) */
    int use_graph;      /* BDH_CUDA_GRAPH=0 turns graph capture off */
    int pdl;            /* BDH_CUDA_PDL=0 turns programmatic dependent launch off */
    void *embed;        /* [V][D] (Q8_0: float32) */
    void *enc;          /* [H][D][N]  as in the file: x @ encoder reads rows d, coalesced in j
                           (Q8_0: int8 [H][N][Dp], neuron rows, like evT) */
    void *evT;          /* [H][N][D]  encoder_v transposed: row j is neuron j's weights
                           (Q8_0: int8 [H][N][Dp]) */
    void *dec;          /* [H*N][D]   as in the file: row j is neuron j's output
                           (Q8_0: int8 [H*N][Dp]) */
    void *lm;           /* [D][V] (Q8_0: float32) */
    uint16_t *enc_s;    /* Q8_0 only: F16 scales [H*N][nb] of enc's rows (block b: */
    uint16_t *ev_s;     /*   row elements 32b..32b+31); NULL otherwise */
    uint16_t *dec_s;
    float *freqs;       /* [N], float32 always (a copy of bdh_model.freqs) */
} cuda_model;

/* The type embed and lm_head are held in: the weight type, except float32
 * beside Q8_0. */
static inline bdh_elem cuda_small_type(const cuda_model *cm)
{
    return cm->wtype == BDH_ELEM_Q8_0 ? BDH_ELEM_F32 : cm->wtype;
}

/* Host block shared with the device (pinned, mapped): the step's inputs and
 * its logits. The graph reads token and position from here and writes the
 * logits here, so nothing else crosses the bus per token. */
typedef struct step_io {
    long long pos;
    int token;
    int pad;
    float logits[1];    /* [V] (allocated with the struct) */
} step_io;

/* Per-state scratch of the single-token step (one device arena). */
typedef struct step_buf {
    float *x;           /* [D] residual stream */
    float *xs;          /* [H][N] relu(x @ encoder) */
    float *xy;          /* [H][N] xs * ys (written for listed pairs only) */
    int *list;          /* [H][N/2] active pair indices, ascending */
    float2 *qlist;      /* [H][N/2] rope(xs) of the listed pairs */
    int *count;         /* [H] listed pairs */
    float *a_part;      /* [H][GX][D] partial sums of a = S^T q */
    float *ln_a;        /* [H][D] */
    float *y_part;      /* [H*RG][D] partial sums of xy @ decoder */
    long long *pos;     /* device copy of the position (read by every layer) */
    float **sptr;       /* [1] = the state's S (the state kernel takes a pointer array) */
    unsigned long long *stats; /* [4] visits, active pairs, active neurons, gated neurons */
} step_buf;

/* Prefill scratch (lazily allocated, per state). */
typedef struct prefill_buf {
    int C;              /* chunk capacity */
    int splitk;         /* decoder split-K factor */
    float *X;           /* [C][D] */
    float *XS;          /* [C][H*N] */
    float *Q;           /* [C][H*N] */
    float *XY;          /* [C][H*N] */
    float *A;           /* [H][C][D] */
    float *scores;      /* [H][C][C] */
    float *Ypart;       /* [splitk][C][D] */
    float *logits_d;    /* [C][V] */
    int *tok_d;         /* [C] */
    void *arena;
    int *tok_h;         /* pinned [C] */
    float *logits_h;    /* pinned [C][V] */
} prefill_buf;

/* Batched-step scratch (lazily allocated on the first state of a batch). */
typedef struct batch_host {
    int tok[BDH_BATCH_MAX];
    long long pos[BDH_BATCH_MAX];
    float *sptr[BDH_BATCH_MAX];
} batch_host;

/* The batched step's buffers; with Q8_0 weights it runs the single step's
 * kernels over the group (bit-identical to single steps), so a_part is
 * [B][H][BDH_GX_STEP][D] and Ypart [H*BDH_RG_STEP][B][D] there. */
typedef struct batch_buf {
    int splitk;
    float *X;           /* [B][D] */
    float *XS;          /* [B][H*N] */
    float *XY;          /* [B][H*N] */
    int *list;          /* [B][H][N/2] */
    float2 *qlist;      /* [B][H][N/2] */
    int *count;         /* [B][H] */
    float *a_part;      /* [B][H][GX][D] */
    float *ln_a;        /* [B][H][D] */
    float *Ypart;       /* [splitk][B][D] */
    float *logits_d;    /* [B][V] */
    batch_host *in_d;   /* device copy of the host block */
    void *arena;
    batch_host *in_h;   /* pinned */
    float *logits_h;    /* pinned [B][V] */
} batch_buf;

typedef struct cuda_state {
    cudaStream_t stream;
    float *S;           /* [L][H][N][D] */
    void *arena;        /* step_buf allocations */
    step_buf st;
    step_io *io;        /* pinned, mapped (host pointer) */
    step_io *io_d;      /* the same block as the device sees it */
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    int graph_failed;
    cublasHandle_t cublas;
    prefill_buf *pf;
    batch_buf *bt;
} cuda_state;

/* ------------------------------------------------------------ errors */

/* BDH_ERR_OUT_OF_MEMORY for allocation failures, BDH_ERR_DEVICE otherwise. */
static inline bdh_status cuda_fail(cudaError_t e, const char *what)
{
    return bdh_fail(e == cudaErrorMemoryAllocation ? BDH_ERR_OUT_OF_MEMORY : BDH_ERR_DEVICE, "CUDA error in %s: %s (%s)",
                    what, cudaGetErrorString(e), cudaGetErrorName(e));
}

static inline const char *cublas_status_text(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cuBLAS error";
    }
}

static inline bdh_status cublas_fail(cublasStatus_t s, const char *what)
{
    return bdh_fail(s == CUBLAS_STATUS_ALLOC_FAILED ? BDH_ERR_OUT_OF_MEMORY : BDH_ERR_DEVICE, "cuBLAS error in %s: %s (%d)",
                    what, cublas_status_text(s), (int)s);
}

/* Return from the enclosing bdh_status function on a CUDA error (the one
 * macro for it in kernels/). */
#define CU_TRY(call, what)                                   \
    do {                                                     \
        cudaError_t cu_e_ = (call);                          \
        if (cu_e_ != cudaSuccess) return cuda_fail(cu_e_, what); \
    } while (0)

#define CUBLAS_TRY(call, what)                                          \
    do {                                                                \
        cublasStatus_t cb_s_ = (call);                                  \
        if (cb_s_ != CUBLAS_STATUS_SUCCESS) return cublas_fail(cb_s_, what); \
    } while (0)

/* Select the model's device for the calling thread (every entry point does
 * this first: a thread may have used another device in between). */
static inline bdh_status use_device(const cuda_model *cm)
{
    CU_TRY(cudaSetDevice(cm->device), "cudaSetDevice");
    return BDH_OK;
}

/* The backend's parts of a model and a state of it. */
static inline cuda_model *cuda_model_of(const bdh_model *m) { return (cuda_model *)m->impl; }
static inline cuda_state *cuda_state_of(const bdh_state *s) { return (cuda_state *)s->impl; }

/* ------------------------------------------------------------ device helpers */

#ifdef __CUDACC__

#define BDH_FULL_MASK 0xffffffffu

/* float32(2*pi), as the reference multiplies turns by it */
#define BDH_TWO_PI_F 6.28318548202514648f

/* Programmatic dependent launch (Hopper): every kernel starts with
 * pdl_begin(). The wait returns once the previous kernel in the stream has
 * completed and its writes are visible (at once when launched without the
 * attribute), so no kernel reads anything before its inputs exist; the
 * launch_dependents then lets the next kernel be launched (its blocks
 * scheduled, waiting in their own pdl_begin) while this one runs, which hides
 * most of the launch latency between the step's 44 small kernels. All
 * blocks of this grid have started by the time its dependents launch, so the
 * waiting blocks cannot starve it. */
__device__ __forceinline__ void pdl_begin()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ float ldw(const float *p) { return __ldg(p); }
__device__ __forceinline__ float ldw(const __nv_bfloat16 *p) { return __bfloat162float(*p); }

/* Q8_0: a block's F16 scale, widened exactly (as bdh_f16_to_f32), and byte
 * k of a word of int8 values as float (exact). */
__device__ __forceinline__ float q8_scale(const uint16_t *p) { return __half2float(__ushort_as_half(__ldg(p))); }
__device__ __forceinline__ float q8_byte(int w, int k) { return (float)(signed char)(w >> (8 * k)); }

/* sin and cos of (float32(t) * f mod 1) * float32(2*pi), rounded step by step
 * exactly as the reference does in float32: the _rn intrinsics stop the
 * compiler from contracting the product into the subtraction (an FMA would
 * keep the unrounded product and change the phase at long positions).
 * sincosf is the accurate libdevice version (no fast-math). */
__device__ __forceinline__ void rope_sincos(float tf, float f, float *s, float *c)
{
    float turns = __fmul_rn(tf, f);
    turns = __fsub_rn(turns, floorf(turns));
    sincosf(__fmul_rn(turns, BDH_TWO_PI_F), s, c);
}

/* One interleaved pair (v0, v1) = (xs[2i], xs[2i+1]) rotated at position tf:
 * out0 = v0 cos(p0) - v1 sin(p0), out1 = v1 cos(p1) + v0 sin(p1). */
__device__ __forceinline__ float2 rope_pair(float v0, float v1, float f0, float f1, float tf)
{
    float s0, c0, s1, c1;
    rope_sincos(tf, f0, &s0, &c0);
    if (f1 == f0) {
        s1 = s0;
        c1 = c0;
    } else {
        rope_sincos(tf, f1, &s1, &c1);
    }
    return make_float2(__fsub_rn(__fmul_rn(v0, c0), __fmul_rn(v1, s0)), __fadd_rn(__fmul_rn(v1, c1), __fmul_rn(v0, s1)));
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(BDH_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(BDH_FULL_MASK, v, o);
    return v;
}

/* Sum over the block (blockDim a multiple of 32); every thread gets it.
 * scratch: 33 doubles of shared memory. */
__device__ __forceinline__ double block_sum_d(double v, double *scratch)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    if (lane == 0) scratch[w] = v;
    __syncthreads();
    if (w == 0) {
        double t = lane < nw ? scratch[lane] : 0.0;
        t = warp_sum_d(t);
        if (lane == 0) scratch[32] = t;
    }
    __syncthreads();
    const double r = scratch[32];
    __syncthreads();
    return r;
}

/* LayerNorm of v[0..D) in shared memory, in place: no affine, eps 1e-5,
 * biased variance, sums in double like the CPU path (libbdh/math.c).
 * The caller has synchronised after writing v. */
__device__ __forceinline__ void block_layernorm(float *v, int D, double *scratch)
{
    double s = 0.0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) s += v[d];
    const double mean = block_sum_d(s, scratch) / D;
    double q = 0.0;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        const double e = (double)v[d] - mean;
        q += e * e;
    }
    const double rstd = 1.0 / sqrt(block_sum_d(q, scratch) / D + 1e-5);
    for (int d = threadIdx.x; d < D; d += blockDim.x) v[d] = (float)(((double)v[d] - mean) * rstd);
    __syncthreads();
}

#endif /* __CUDACC__ */

/* ------------------------------------------------------------ launching */

/* Whether launches from the calling thread carry the PDL attribute now
 * (cuda_step.cu): only while it enqueues a single-token step, where 44
 * small kernels run back to back, and then as that step's model says
 * (cuda_model.pdl, BDH_CUDA_PDL=0 at its load turns it off). A thread-local
 * flag, so models loaded with different settings, used from any threads, do
 * not interfere; prefill and the batched step launch plainly. */
int bdh_cuda_pdl_enabled(void);

#ifdef __CUDACC__
/* kernel<<<grid, block, smem, st>>>(args...), with the PDL attribute when
 * enabled; returns the launch's error. */
template <typename... KArgs, typename... Args>
static inline cudaError_t bdh_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                                     Args... args)
{
    cudaLaunchConfig_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute attr[1];
    memset(attr, 0, sizeof attr);
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = bdh_cuda_pdl_enabled() ? 1 : 0;
    const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
    return e != cudaSuccess ? e : cudaGetLastError();
}
#endif

/* ------------------------------------------------------------ launch wrappers */

/* kernels_step.cu. Each returns the launch's cudaGetLastError(); wt is the
 * device weight type (BDH_ELEM_BF16, else float32; BDH_ELEM_Q8_0 is refused
 * with cudaErrorInvalidValue: the bdh_k_q8_* wrappers take those weights). */
cudaError_t bdh_k_embed_ln(bdh_elem wt, const void *embed, int D, const int *tokens, const long long *pos_src,
                           long long *pos_dst, float *X, int rows, cudaStream_t st);
/* out[z][n] = act(x[z] @ W[z]) for z < nz; x[z] = x + z*xstride (0: one x for all). */
cudaError_t bdh_k_gemv(bdh_elem wt, int relu, const float *x, long long xstride, int K, const void *W, int Nc,
                       long long wstride, float *out, long long ostride, int nz, cudaStream_t st);
cudaError_t bdh_k_compact(const float *xs, int N, int H, int B, const float *freqs, const long long *pos, int dense,
                          int *list, float2 *qlist, int *count, unsigned long long *stats, cudaStream_t st);
cudaError_t bdh_k_state(float *const *sptr, long long layer_off, int N, int D, int H, int B, int GX, const float *X,
                        const int *list, const float2 *qlist, const int *count, float *a_part, cudaStream_t st);
cudaError_t bdh_k_ln_a(const float *a_part, int GX, int D, int H, int B, float *ln_a, cudaStream_t st);
cudaError_t bdh_k_ev_gate(bdh_elem wt, const float *ln_a, const void *evT, const float *xs, const int *list,
                          const int *count, int N, int D, int H, int GY, float *xy, unsigned long long *stats,
                          cudaStream_t st);
cudaError_t bdh_k_dec(bdh_elem wt, const float *xy, const void *dec, const int *list, const int *count, int N, int D,
                      int H, int RG, float *y_part, cudaStream_t st);
cudaError_t bdh_k_final_ln(const float *y_part, int P, long long pstride, int D, float *X, int rows, cudaStream_t st);

/* kernels_q8.cu: Q8_0 decode kernels for B states (one token each; B = 1
 * is the single step, and a state's results do not depend on B). Weights
 * are int8 rows of Dp bytes (D values, zero-padded) with F16 scales
 * [rows][Dp/32]; each block of 32 is summed in float, then scaled once.
 *   q8_rows   out[b][r] = act(X[b] . W[r]) for r < R (the encoder: R = H*N)
 *   ev_gate   as bdh_k_ev_gate, per state; ln_a [B][H][D], xs/xy [B][H*N],
 *             list [B][H][N/2], count [B][H]
 *   dec       as bdh_k_dec, per state; y_part [H*RG][B][D] (final_ln with
 *             P = H*RG, pstride = B*D) */
cudaError_t bdh_k_q8_rows(int relu, const float *X, int D, int Dp, const int8_t *W, const uint16_t *S, int R,
                          float *out, int B, cudaStream_t st);
cudaError_t bdh_k_ev_gate_q8(const float *ln_a, const int8_t *evT, const uint16_t *evS, const float *xs,
                             const int *list, const int *count, int N, int D, int Dp, int H, int B, int GY, float *xy,
                             unsigned long long *stats, cudaStream_t st);
cudaError_t bdh_k_dec_q8(const float *xy, const int8_t *dec, const uint16_t *decS, const int *list, const int *count,
                         int N, int D, int Dp, int H, int B, int RG, float *y_part, cudaStream_t st);

/* kernels_gemm.cu: C = epi(A @ B), batched over heads and split along K.
 * Row-major everywhere. A[M][K] float (lda); B(k, n) = W[k*ldb + n], or
 * W[n*ldb + k] when b_nk (W float, bf16 or Q8_0). epi 0: none, 1: relu,
 * 2: G * relu (the gate xs * ys). Head z adds z*sA, z*sB, z*sC, z*sG;
 * split s of K writes C + s*sCsplit (partial sums, reduced by the caller).
 * Q8_0: W is int8, its stored rows (k, or n when b_nk) run along the
 * quantized axis, and element (row, c) is Bq[row*ldbq + c/32] * W[row*ldb + c]
 * with Bq the F16 scales (head z adds z*sBq): the exact float value, so
 * the product is the float32 GEMM of the dequantized weights. */
typedef struct gemm_params {
    int M, Nc, K;
    const float *A;
    long long lda, sA;
    const void *B;
    long long ldb, sB;
    const uint16_t *Bq; /* Q8_0 only */
    long long ldbq, sBq;
    int b_nk;
    float *C;
    long long ldc, sC;
    const float *G;
    long long ldg, sG;
    int epi;
    int batch;
    int splits;
    long long sCsplit;
} gemm_params;

cudaError_t bdh_k_gemm(bdh_elem wt, const gemm_params *p, cudaStream_t st);
cudaError_t bdh_k_rope_rows(const float *XS, float *Q, int T, int HN, int N, const float *freqs, long long t0,
                            cudaStream_t st);
cudaError_t bdh_k_masked(float *A, const float *scores, const float *X, int T, int D, int H, cudaStream_t st);
cudaError_t bdh_k_ln_rows(float *A, int D, int rows, cudaStream_t st);

/* cuda_model.cu */
void bdh_cuda_free_prefill(prefill_buf *pf); /* NULL, or built in part: fine */
void bdh_cuda_free_batch(batch_buf *bt);

/* cuda_forward.cu: the table's step_batch (n == 1: bdh_cuda_step) and
 * prefill. Each advances the states' positions by the tokens fed. */
bdh_status bdh_cuda_forward_step_batch(bdh_state *const *states, const int32_t *tokens, size_t n, float *logits);
bdh_status bdh_cuda_forward_prefill(bdh_state *s, const int32_t *tokens, size_t n, float *logits, bool all_rows);

/* cuda_step.cu: the single-token step (the graph, after an eager first
 * token); advances the position by one. */
bdh_status bdh_cuda_step(bdh_state *s, int32_t token, float *logits);

/* cuda_q8.cu: enqueue the Q8_0 decode on the state's stream: the single
 * step (token and position from cs->io_d, logits into it; ev as
 * cuda_step.cu's profiler passes it, else NULL), or one token for each of
 * B states of a batch group (inputs in cs->bt->in_d; logits not computed). */
bdh_status bdh_cuda_enqueue_step_q8(const cuda_model *cm, cuda_state *cs, cudaEvent_t *ev);
bdh_status bdh_cuda_enqueue_batch_q8(const cuda_model *cm, cuda_state *cs, int B);

#endif /* BDH_CUDA_CUH */
