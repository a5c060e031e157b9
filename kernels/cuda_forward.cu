/* The CUDA backend's forward functions (bdh_cuda_backend's step_batch and
 * prefill):
 *   step                  one token: the sparse decode kernels, captured once
 *                         into a CUDA graph per state and replayed
 *   bdh_cuda_forward_prefill
 *                         chunks of tokens: weight GEMMs, cuBLAS for the
 *                         products with the state, a masked intra-chunk kernel
 *   bdh_cuda_forward_step_batch
 *                         one token for each of many states: weight GEMMs,
 *                         and the sparse state kernel over all states at once
 *                         (a batch of one is the single step); with Q8_0
 *                         weights, the single step's kernels over all states
 *                         at once (so a batch gives the single steps' bits)
 * Each advances the states' positions by the tokens it feeds (the core's
 * contract), and ends with a stream synchronisation, which is also where
 * errors of the asynchronous work surface; a state has no work pending
 * between calls. */
#include "bdh_cuda.cuh"
#include "bdh_cuda_debug.h"

#include <stdlib.h>
#include <string.h>

/* ================================================================ PDL */

/* Set while this thread enqueues a single-token step, to that step's
 * model's cuda_model.pdl; read by bdh_launch for every kernel it launches. */
static __thread int t_pdl;

int bdh_cuda_pdl_enabled(void) { return t_pdl; }

/* ================================================================ Q8_0 decode */

/* The Q8_0 decode kernels' buffers for B states: the single step's (B = 1)
 * or a batch group's. */
typedef struct q8_bufs {
    float *X, *XS, *XY, *a_part, *ln_a, *y_part;
    int *list, *count;
    float2 *qlist;
    float *const *sptr;
    const long long *pos;
    unsigned long long *stats; /* the single step's counters, or NULL */
} q8_bufs;

#define Q8_LAYER_KERNELS 7

/* Kernel k (0..6) of layer l of the Q8_0 decode, for B states. The single
 * step and the batched step both launch through here, with the same
 * per-state work split (BDH_GX_STEP, BDH_GY_STEP, BDH_RG_STEP) whatever B
 * is, so a state's results do not depend on the batch it is in. */
static bdh_status q8_layer_kernel(const cuda_model *cm, const q8_bufs *b, int B, int l, int k, cudaStream_t st)
{
    const int D = cm->D, H = cm->H, N = cm->N, Dp = cm->Dp;
    const long long layer_floats = (long long)H * N * D;
    switch (k) {
    case 0:
        CU_TRY(bdh_k_q8_rows(1, b->X, D, Dp, (const int8_t *)cm->enc, cm->enc_s, H * N, b->XS, B, st), "encoder kernel");
        break;
    case 1:
        CU_TRY(bdh_k_compact(b->XS, N, H, B, cm->freqs, b->pos, cm->dense, b->list, b->qlist, b->count, b->stats, st),
               "compaction kernel");
        break;
    case 2:
        CU_TRY(bdh_k_state(b->sptr, l * layer_floats, N, D, H, B, BDH_GX_STEP, b->X, b->list, b->qlist, b->count,
                           b->a_part, st),
               "state kernel");
        break;
    case 3: CU_TRY(bdh_k_ln_a(b->a_part, BDH_GX_STEP, D, H, B, b->ln_a, st), "layernorm kernel"); break;
    case 4:
        CU_TRY(bdh_k_ev_gate_q8(b->ln_a, (const int8_t *)cm->evT, cm->ev_s, b->XS, b->list, b->count, N, D, Dp, H, B,
                                BDH_GY_STEP, b->XY, b->stats, st),
               "encoder_v kernel");
        break;
    case 5:
        CU_TRY(bdh_k_dec_q8(b->XY, (const int8_t *)cm->dec, cm->dec_s, b->list, b->count, N, D, Dp, H, B, BDH_RG_STEP,
                            b->y_part, st),
               "decoder kernel");
        break;
    default:
        CU_TRY(bdh_k_final_ln(b->y_part, H * BDH_RG_STEP, (long long)B * D, D, b->X, B, st), "layernorm kernel");
        break;
    }
    return BDH_OK;
}

/* enqueue_step_kernels for Q8_0 weights: the same kernels in the same
 * order (and events), float32 embed and lm_head. */
static bdh_status enqueue_step_q8(const cuda_model *cm, cuda_state *cs, cudaEvent_t *ev)
{
    const step_buf *b = &cs->st;
    cudaStream_t st = cs->stream;
    q8_bufs q;
    memset(&q, 0, sizeof q);
    q.X = b->x;
    q.XS = b->xs;
    q.XY = b->xy;
    q.a_part = b->a_part;
    q.ln_a = b->ln_a;
    q.y_part = b->y_part;
    q.list = b->list;
    q.count = b->count;
    q.qlist = b->qlist;
    q.sptr = b->sptr;
    q.pos = b->pos;
    q.stats = b->stats;
    int mark = 0;
    bdh_status rc;
#define MARK()                                                                   \
    do {                                                                         \
        if (ev) CU_TRY(cudaEventRecord(ev[mark++], st), "profiling event"); \
    } while (0)

    MARK();
    CU_TRY(bdh_k_embed_ln(BDH_ELEM_F32, cm->embed, cm->D, &cs->io_d->token, &cs->io_d->pos, b->pos, b->x, 1, st),
           "embedding kernel");
    MARK();
    for (int l = 0; l < cm->L; l++) {
        for (int k = 0; k < Q8_LAYER_KERNELS; k++) {
            if ((rc = q8_layer_kernel(cm, &q, 1, l, k, st)) != BDH_OK) return rc;
            MARK();
        }
    }
    CU_TRY(bdh_k_gemv(BDH_ELEM_F32, 0, b->x, 0, cm->D, cm->lm, cm->V, 0, cs->io_d->logits, 0, 1, st), "lm_head kernel");
    MARK();
#undef MARK
    return BDH_OK;
}

/* ================================================================ single step */

/* Enqueue one token on the state's stream: the token and position are read
 * from the mapped host block cs->io, the logits are written into it.
 * ev (profiling only, NULL otherwise): 7L+3 events, recorded before the
 * first kernel and after each one. */
static bdh_status enqueue_step_kernels(const cuda_model *cm, cuda_state *cs, cudaEvent_t *ev)
{
    if (cm->wtype == BDH_ELEM_Q8_0) return enqueue_step_q8(cm, cs, ev);
    const int D = cm->D, H = cm->H, N = cm->N;
    const bdh_elem wt = cm->wtype;
    const step_buf *b = &cs->st;
    cudaStream_t st = cs->stream;
    const long long layer_floats = (long long)H * N * D;
    int mark = 0;
#define MARK()                                                                   \
    do {                                                                         \
        if (ev) CU_TRY(cudaEventRecord(ev[mark++], st), "profiling event"); \
    } while (0)

    MARK();
    CU_TRY(bdh_k_embed_ln(wt, cm->embed, D, &cs->io_d->token, &cs->io_d->pos, b->pos, b->x, 1, st), "embedding kernel");
    MARK();
    for (int l = 0; l < cm->L; l++) {
        CU_TRY(bdh_k_gemv(wt, 1, b->x, 0, D, cm->enc, N, (long long)D * N, b->xs, N, H, st), "encoder kernel");
        MARK();
        CU_TRY(bdh_k_compact(b->xs, N, H, 1, cm->freqs, b->pos, cm->dense, b->list, b->qlist, b->count, b->stats, st),
               "compaction kernel");
        MARK();
        CU_TRY(bdh_k_state(b->sptr, l * layer_floats, N, D, H, 1, BDH_GX_STEP, b->x, b->list, b->qlist, b->count,
                           b->a_part, st),
               "state kernel");
        MARK();
        CU_TRY(bdh_k_ln_a(b->a_part, BDH_GX_STEP, D, H, 1, b->ln_a, st), "layernorm kernel");
        MARK();
        CU_TRY(bdh_k_ev_gate(wt, b->ln_a, cm->evT, b->xs, b->list, b->count, N, D, H, BDH_GY_STEP, b->xy, b->stats, st),
               "encoder_v kernel");
        MARK();
        CU_TRY(bdh_k_dec(wt, b->xy, cm->dec, b->list, b->count, N, D, H, BDH_RG_STEP, b->y_part, st), "decoder kernel");
        MARK();
        CU_TRY(bdh_k_final_ln(b->y_part, H * BDH_RG_STEP, D, D, b->x, 1, st), "layernorm kernel");
        MARK();
    }
    CU_TRY(bdh_k_gemv(wt, 0, b->x, 0, D, cm->lm, cm->V, 0, cs->io_d->logits, 0, 1, st), "lm_head kernel");
    MARK();
#undef MARK
    return BDH_OK;
}

/* The step's kernels with this model's PDL setting (recorded into the
 * graph when capturing). */
static bdh_status enqueue_step(const cuda_model *cm, cuda_state *cs, cudaEvent_t *ev)
{
    t_pdl = cm->pdl;
    const bdh_status rc = enqueue_step_kernels(cm, cs, ev);
    t_pdl = 0;
    return rc;
}

/* Record the step into a graph for the later tokens. A failure here is not
 * an error of the call: the state goes on without a graph. */
static void try_capture(const cuda_model *cm, cuda_state *cs)
{
    cudaGraph_t g = NULL;
    cudaGraphExec_t x = NULL;
    if (cudaStreamBeginCapture(cs->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) goto fail;
    {
        const bdh_status rc = enqueue_step(cm, cs, NULL);
        const cudaError_t e = cudaStreamEndCapture(cs->stream, &g);
        if (rc != BDH_OK || e != cudaSuccess || !g) goto fail;
    }
    if (cudaGraphInstantiate(&x, g, 0) != cudaSuccess) goto fail;
    cs->graph = g;
    cs->exec = x;
    return;
fail:
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
    bdh_clear_error();
    cs->graph_failed = 1;
}

static bdh_status step(bdh_state *s, int32_t token, float *logits)
{
    const cuda_model *cm = cuda_model_of(s->model);
    cuda_state *cs = cuda_state_of(s);
    bdh_status rc = use_device(cm);
    if (rc != BDH_OK) return rc;

    cs->io->token = token;
    cs->io->pos = (long long)s->position;
    if (cs->exec) {
        CU_TRY(cudaGraphLaunch(cs->exec, cs->stream), "cudaGraphLaunch (step)");
    } else {
        rc = enqueue_step(cm, cs, NULL);
        if (rc != BDH_OK) return rc;
    }
    CU_TRY(cudaStreamSynchronize(cs->stream), "step");
    if (logits) memcpy(logits, cs->io->logits, (size_t)cm->V * sizeof(float));
    s->position++;

    /* the first step runs eagerly (kernels load, errors surface plainly);
     * then the step is captured, and later steps replay the graph */
    if (!cs->exec && cm->use_graph && !cs->graph_failed) try_capture(cm, cs);
    return BDH_OK;
}

/* bench/gpu_bench.c's per-kernel timing (kernels/bdh_cuda_debug.h): one
 * eager step with events between the kernels; adds the milliseconds of each
 * kind of kernel (all layers) into ms[BDH_CUDA_PROFILE_KINDS]. */
int bdh_cuda_debug_profile(bdh_state *s, int32_t token, double *ms)
{
    const bool on_cuda = s && s->model->backend == &bdh_cuda_backend;
    const cuda_model *cm = on_cuda ? cuda_model_of(s->model) : NULL;
    cuda_state *cs = on_cuda ? cuda_state_of(s) : NULL;
    if (!cm || !cs || token < 0 || token >= cm->V) return -1;
    if (cudaSetDevice(cm->device) != cudaSuccess) return -1;
    const int n = 7 * cm->L + 3;
    cudaEvent_t *ev = (cudaEvent_t *)calloc((size_t)n, sizeof *ev);
    int made = 0, rc = -1;
    if (!ev) return -1;
    for (; made < n; made++)
        if (cudaEventCreate(&ev[made]) != cudaSuccess) goto out;
    cs->io->token = token;
    cs->io->pos = (long long)s->position;
    if (enqueue_step(cm, cs, ev) != BDH_OK || cudaStreamSynchronize(cs->stream) != cudaSuccess) goto out;
    for (int k = 1; k < n; k++) {
        float t = 0.f;
        if (cudaEventElapsedTime(&t, ev[k - 1], ev[k]) != cudaSuccess) goto out;
        /* event k follows: 1 embed; then per layer 7 kernels; last lm_head */
        const int kind = k == 1 ? 0 : k == n - 1 ? 8 : 1 + (k - 2) % 7;
        ms[kind] += t;
    }
    s->position++;
    rc = 0;
out:
    for (int k = 0; k < made; k++) cudaEventDestroy(ev[k]);
    free(ev);
    return rc;
}

/* ================================================================ helpers */

/* Blocks per head of the batched state kernel for B states: about four
 * blocks per SM over all heads and states. */
static int gx_batch(const cuda_model *cm, int B)
{
    int gx = 4 * cm->n_sm / (cm->H * B);
    return gx < 1 ? 1 : gx > 64 ? 64 : gx;
}

static gemm_params gemm_init(int M, int Nc, int K)
{
    gemm_params p;
    memset(&p, 0, sizeof p);
    p.M = M;
    p.Nc = Nc;
    p.K = K;
    p.batch = 1;
    p.splits = 1;
    return p;
}

/* Split of K for the decoder product (K = H*N, a few output tiles): enough
 * blocks to fill the GPU twice. */
static int decoder_splits(const cuda_model *cm, int M)
{
    const int tiles = ((cm->D + 63) / 64) * ((M + 63) / 64);
    int s = 2 * cm->n_sm / tiles;
    const int kmax = (cm->H * cm->N + 255) / 256; /* at least 256 of K per split */
    if (s > kmax) s = kmax;
    if (s > BDH_MAX_SPLITK) s = BDH_MAX_SPLITK;
    return s < 1 ? 1 : s;
}

/* x @ lm_head for the first `rows` rows of X into out [rows][V]. */
static bdh_status enqueue_logits(const cuda_model *cm, const float *X, int rows, float *out, cudaStream_t st)
{
    gemm_params p = gemm_init(rows, cm->V, cm->D);
    p.A = X;
    p.lda = cm->D;
    p.B = cm->lm;
    p.ldb = cm->V;
    p.C = out;
    p.ldc = cm->V;
    CU_TRY(bdh_k_gemm(cuda_small_type(cm), &p, st), "lm_head GEMM");
    return BDH_OK;
}

/* Q8_0 weights in a GEMM: B is the int8 [H][N][Dp] (or [H*N][Dp]) rows,
 * read [N][K] when b_nk (encoder, encoder_v: K = D along the rows) or [K][N]
 * (decoder: K = H*N rows, N = D along them). */
static void gemm_q8(const cuda_model *cm, gemm_params *p, const void *W, const uint16_t *S, int b_nk, int per_head)
{
    p->B = W;
    p->ldb = cm->Dp;
    p->sB = per_head ? (long long)cm->N * cm->Dp : 0;
    p->Bq = S;
    p->ldbq = cm->nb;
    p->sBq = per_head ? (long long)cm->N * cm->nb : 0;
    p->b_nk = b_nk;
}

/* relu(X[M][D] @ encoder[h]) for every head into XS [M][H*N]. */
static bdh_status enqueue_encoder(const cuda_model *cm, const float *X, int M, float *XS, cudaStream_t st)
{
    const long long HN = (long long)cm->H * cm->N;
    gemm_params p = gemm_init(M, cm->N, cm->D);
    p.A = X;
    p.lda = cm->D;
    p.B = cm->enc;
    p.ldb = cm->N;
    p.sB = (long long)cm->D * cm->N;
    if (cm->wtype == BDH_ELEM_Q8_0) gemm_q8(cm, &p, cm->enc, cm->enc_s, 1, 1);
    p.C = XS;
    p.ldc = HN;
    p.sC = cm->N;
    p.epi = 1;
    p.batch = cm->H;
    CU_TRY(bdh_k_gemm(cm->wtype, &p, st), "encoder GEMM");
    return BDH_OK;
}

/* XY[:, h] = XS[:, h] * relu(LNA_h @ encoder_v[h]) for every head; LNA_h
 * row i at lna + h*sA + i*lda. */
static bdh_status enqueue_gate(const cuda_model *cm, const float *lna, long long lda, long long sA, int M,
                               const float *XS, float *XY, cudaStream_t st)
{
    const long long HN = (long long)cm->H * cm->N;
    gemm_params p = gemm_init(M, cm->N, cm->D);
    p.A = lna;
    p.lda = lda;
    p.sA = sA;
    p.B = cm->evT;
    p.ldb = cm->D;
    p.sB = (long long)cm->N * cm->D;
    p.b_nk = 1;
    if (cm->wtype == BDH_ELEM_Q8_0) gemm_q8(cm, &p, cm->evT, cm->ev_s, 1, 1);
    p.C = XY;
    p.ldc = HN;
    p.sC = cm->N;
    p.G = XS;
    p.ldg = HN;
    p.sG = cm->N;
    p.epi = 2;
    p.batch = cm->H;
    CU_TRY(bdh_k_gemm(cm->wtype, &p, st), "encoder_v GEMM");
    return BDH_OK;
}

/* X = LN(X + LN(XY @ decoder)) for M rows, through split-K partials. */
static bdh_status enqueue_decoder(const cuda_model *cm, const float *XY, int M, int splits, float *Ypart, float *X,
                                  cudaStream_t st)
{
    const long long HN = (long long)cm->H * cm->N;
    gemm_params p = gemm_init(M, cm->D, (int)HN);
    p.A = XY;
    p.lda = HN;
    p.B = cm->dec;
    p.ldb = cm->D;
    if (cm->wtype == BDH_ELEM_Q8_0) gemm_q8(cm, &p, cm->dec, cm->dec_s, 0, 0);
    p.C = Ypart;
    p.ldc = cm->D;
    p.splits = splits;
    p.sCsplit = (long long)M * cm->D;
    CU_TRY(bdh_k_gemm(cm->wtype, &p, st), "decoder GEMM");
    CU_TRY(bdh_k_final_ln(Ypart, splits, (long long)M * cm->D, cm->D, X, M, st), "layernorm kernel");
    return BDH_OK;
}

/* ================================================================ prefill */

static bdh_status build_prefill(const cuda_model *cm, prefill_buf *pf)
{
    const size_t C = BDH_PREFILL_CHUNK, D = cm->D, H = cm->H, HN = H * cm->N, V = cm->V;
    pf->C = (int)C;
    pf->splitk = decoder_splits(cm, (int)C);
    size_t off = 0;
    size_t sizes[9] = {C * D, C * HN, C * HN, C * HN, H * C * D, H * C * C, (size_t)pf->splitk * C * D, C * V, C};
    size_t offs[9];
    for (int i = 0; i < 9; i++) {
        offs[i] = off;
        off += (sizes[i] * 4 + 255) / 256 * 256;
    }
    CU_TRY(cudaMalloc(&pf->arena, off), "allocating prefill buffers");
    char *a = (char *)pf->arena;
    pf->X = (float *)(a + offs[0]);
    pf->XS = (float *)(a + offs[1]);
    pf->Q = (float *)(a + offs[2]);
    pf->XY = (float *)(a + offs[3]);
    pf->A = (float *)(a + offs[4]);
    pf->scores = (float *)(a + offs[5]);
    pf->Ypart = (float *)(a + offs[6]);
    pf->logits_d = (float *)(a + offs[7]);
    pf->tok_d = (int *)(a + offs[8]);
    CU_TRY(cudaHostAlloc((void **)&pf->tok_h, C * sizeof(int), cudaHostAllocDefault), "allocating pinned memory");
    CU_TRY(cudaHostAlloc((void **)&pf->logits_h, C * V * sizeof(float), cudaHostAllocDefault),
           "allocating pinned memory");
    return BDH_OK;
}

/* The prefill buffers, allocated at the state's first prefill. */
static bdh_status ensure_prefill(const cuda_model *cm, cuda_state *cs)
{
    if (cs->pf) return BDH_OK;
    prefill_buf *pf = (prefill_buf *)calloc(1, sizeof *pf);
    if (!pf) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    const bdh_status rc = build_prefill(cm, pf);
    if (rc != BDH_OK) {
        bdh_cuda_free_prefill(pf);
        return rc;
    }
    cs->pf = pf;
    return BDH_OK;
}

static bdh_status ensure_cublas(cuda_state *cs)
{
    if (cs->cublas) return BDH_OK;
    cublasHandle_t h;
    CUBLAS_TRY(cublasCreate(&h), "cublasCreate");
    cublasStatus_t e = cublasSetStream(h, cs->stream);
    /* plain float32 products: no TF32 (it would cost the 1e-4 parity) */
    if (e == CUBLAS_STATUS_SUCCESS) e = cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
    if (e != CUBLAS_STATUS_SUCCESS) {
        cublasDestroy(h);
        return cublas_fail(e, "cuBLAS handle setup");
    }
    cs->cublas = h;
    return BDH_OK;
}

/* One chunk of T tokens (already in pf->tok_d) at positions t0.., all layers. */
static bdh_status enqueue_chunk(const cuda_model *cm, cuda_state *cs, int T, long long t0)
{
    prefill_buf *pf = cs->pf;
    cudaStream_t st = cs->stream;
    const int D = cm->D, H = cm->H, N = cm->N, HN = H * N;
    const float one = 1.f, zero = 0.f;
    bdh_status rc;

    CU_TRY(bdh_k_embed_ln(cuda_small_type(cm), cm->embed, D, pf->tok_d, NULL, NULL, pf->X, T, st), "embedding kernel");
    for (int l = 0; l < cm->L; l++) {
        float *S = cs->S + (size_t)l * H * N * D;
        if ((rc = enqueue_encoder(cm, pf->X, T, pf->XS, st)) != BDH_OK) return rc;
        CU_TRY(bdh_k_rope_rows(pf->XS, pf->Q, T, HN, N, cm->freqs, t0, st), "rope kernel");
        /* cuBLAS is column-major: a row-major [r][c] matrix is its transpose.
         * A_h[T][D] = Q_h[T][N] S_h[N][D]  (the state before the chunk) */
        CUBLAS_TRY(cublasSgemmStridedBatched(cs->cublas, CUBLAS_OP_N, CUBLAS_OP_N, D, T, N, &one, S, D,
                                             (long long)N * D, pf->Q, HN, N, &zero, pf->A, D, (long long)T * D, H),
                   "A = Q S");
        /* scores_h[T][T] = Q_h Q_h^T */
        CUBLAS_TRY(cublasSgemmStridedBatched(cs->cublas, CUBLAS_OP_T, CUBLAS_OP_N, T, T, N, &one, pf->Q, HN, N, pf->Q,
                                             HN, N, &zero, pf->scores, T, (long long)T * T, H),
                   "scores = Q Q^T");
        CU_TRY(bdh_k_masked(pf->A, pf->scores, pf->X, T, D, H, st), "masked chunk kernel");
        /* S_h[N][D] += Q_h^T X */
        CUBLAS_TRY(cublasSgemmStridedBatched(cs->cublas, CUBLAS_OP_N, CUBLAS_OP_T, D, N, T, &one, pf->X, D, 0, pf->Q,
                                             HN, N, &one, S, D, (long long)N * D, H),
                   "S += Q^T X");
        CU_TRY(bdh_k_ln_rows(pf->A, D, H * T, st), "layernorm kernel");
        if ((rc = enqueue_gate(cm, pf->A, D, (long long)T * D, T, pf->XS, pf->XY, st)) != BDH_OK) return rc;
        if ((rc = enqueue_decoder(cm, pf->XY, T, pf->splitk, pf->Ypart, pf->X, st)) != BDH_OK) return rc;
    }
    return BDH_OK;
}

bdh_status bdh_cuda_forward_prefill(bdh_state *s, const int32_t *tokens, size_t n, float *logits, bool all_rows)
{
    const cuda_model *cm = cuda_model_of(s->model);
    cuda_state *cs = cuda_state_of(s);
    bdh_status rc = use_device(cm);
    if (rc == BDH_OK) rc = ensure_prefill(cm, cs);
    if (rc == BDH_OK) rc = ensure_cublas(cs);
    if (rc != BDH_OK) return rc;
    prefill_buf *pf = cs->pf;
    const size_t V = (size_t)cm->V;
    int last = 0;
    for (size_t done = 0; done < n; done += (size_t)last) {
        last = n - done < (size_t)pf->C ? (int)(n - done) : pf->C;
        memcpy(pf->tok_h, tokens + done, (size_t)last * sizeof(int));
        CU_TRY(cudaMemcpyAsync(pf->tok_d, pf->tok_h, (size_t)last * sizeof(int), cudaMemcpyHostToDevice, cs->stream),
               "prefill token upload");
        rc = enqueue_chunk(cm, cs, last, (long long)s->position + (long long)done);
        if (rc == BDH_OK && all_rows) {
            rc = enqueue_logits(cm, pf->X, last, pf->logits_d, cs->stream);
            if (rc == BDH_OK) {
                const cudaError_t e = cudaMemcpyAsync(pf->logits_h, pf->logits_d, (size_t)last * V * sizeof(float),
                                                      cudaMemcpyDeviceToHost, cs->stream);
                if (e != cudaSuccess) rc = cuda_fail(e, "prefill logits download");
            }
        }
        if (rc != BDH_OK) {
            cudaStreamSynchronize(cs->stream);
            return rc;
        }
        /* the token staging buffer is reused by the next chunk */
        CU_TRY(cudaStreamSynchronize(cs->stream), "prefill");
        if (all_rows) memcpy(logits + done * V, pf->logits_h, (size_t)last * V * sizeof(float));
    }
    if (logits && !all_rows) {
        CU_TRY(bdh_k_gemv(cuda_small_type(cm), 0, pf->X + (size_t)(last - 1) * cm->D, 0, cm->D, cm->lm, cm->V, 0,
                          cs->io_d->logits, 0, 1, cs->stream),
               "lm_head kernel");
        CU_TRY(cudaStreamSynchronize(cs->stream), "prefill logits");
        memcpy(logits, cs->io->logits, V * sizeof(float));
    }
    s->position += (int64_t)n;
    return BDH_OK;
}

/* ================================================================ batched step */

static bdh_status build_batch(const cuda_model *cm, batch_buf *bt)
{
    const size_t B = BDH_BATCH_MAX, D = cm->D, H = cm->H, N = cm->N, HN = H * N, P = N / 2, V = cm->V;
    size_t apart = 0; /* largest B*H*GX(B)*D over the group sizes */
    for (int b = 1; b <= BDH_BATCH_MAX; b++) {
        const size_t a = (size_t)b * H * (size_t)gx_batch(cm, b) * D;
        if (a > apart) apart = a;
    }
    bt->splitk = decoder_splits(cm, (int)B);
    size_t ypart = (size_t)bt->splitk * B * D;
    if (cm->wtype == BDH_ELEM_Q8_0) { /* the single step's partials, per state */
        apart = B * H * BDH_GX_STEP * D;
        ypart = H * BDH_RG_STEP * B * D;
    }
    const size_t sizes[11] = {B * D * 4, B * HN * 4, B * HN * 4, B * H * P * 4, B * H * P * 8, B * H * 4, apart * 4,
                              B * H * D * 4, ypart * 4, B * V * 4, sizeof(batch_host)};
    size_t offs[11], off = 0;
    for (int i = 0; i < 11; i++) {
        offs[i] = off;
        off += (sizes[i] + 255) / 256 * 256;
    }
    CU_TRY(cudaMalloc(&bt->arena, off), "allocating batch buffers");
    char *a = (char *)bt->arena;
    bt->X = (float *)(a + offs[0]);
    bt->XS = (float *)(a + offs[1]);
    bt->XY = (float *)(a + offs[2]);
    bt->list = (int *)(a + offs[3]);
    bt->qlist = (float2 *)(a + offs[4]);
    bt->count = (int *)(a + offs[5]);
    bt->a_part = (float *)(a + offs[6]);
    bt->ln_a = (float *)(a + offs[7]);
    bt->Ypart = (float *)(a + offs[8]);
    bt->logits_d = (float *)(a + offs[9]);
    bt->in_d = (batch_host *)(a + offs[10]);
    CU_TRY(cudaHostAlloc((void **)&bt->in_h, sizeof(batch_host), cudaHostAllocDefault), "allocating pinned memory");
    CU_TRY(cudaHostAlloc((void **)&bt->logits_h, B * V * sizeof(float), cudaHostAllocDefault),
           "allocating pinned memory");
    return BDH_OK;
}

/* The batch buffers (for up to BDH_BATCH_MAX states), allocated on the
 * first state of the first batch that state leads. */
static bdh_status ensure_batch(const cuda_model *cm, cuda_state *cs)
{
    if (cs->bt) return BDH_OK;
    batch_buf *bt = (batch_buf *)calloc(1, sizeof *bt);
    if (!bt) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    const bdh_status rc = build_batch(cm, bt);
    if (rc != BDH_OK) {
        bdh_cuda_free_batch(bt);
        return rc;
    }
    cs->bt = bt;
    return BDH_OK;
}

/* enqueue_batch for Q8_0 weights: the single step's kernels (and work
 * split) over the B states, embed and lm_head float32. */
static bdh_status enqueue_batch_q8(const cuda_model *cm, cuda_state *cs, int B)
{
    batch_buf *bt = cs->bt;
    cudaStream_t st = cs->stream;
    q8_bufs q;
    memset(&q, 0, sizeof q);
    q.X = bt->X;
    q.XS = bt->XS;
    q.XY = bt->XY;
    q.a_part = bt->a_part;
    q.ln_a = bt->ln_a;
    q.y_part = bt->Ypart;
    q.list = bt->list;
    q.count = bt->count;
    q.qlist = bt->qlist;
    q.sptr = bt->in_d->sptr;
    q.pos = bt->in_d->pos;
    bdh_status rc;
    CU_TRY(bdh_k_embed_ln(BDH_ELEM_F32, cm->embed, cm->D, bt->in_d->tok, NULL, NULL, bt->X, B, st), "embedding kernel");
    for (int l = 0; l < cm->L; l++)
        for (int k = 0; k < Q8_LAYER_KERNELS; k++)
            if ((rc = q8_layer_kernel(cm, &q, B, l, k, st)) != BDH_OK) return rc;
    return BDH_OK;
}

/* One token for each of B states (inputs already in bt->in_d). */
static bdh_status enqueue_batch(const cuda_model *cm, cuda_state *cs, int B)
{
    if (cm->wtype == BDH_ELEM_Q8_0) return enqueue_batch_q8(cm, cs, B);
    batch_buf *bt = cs->bt;
    cudaStream_t st = cs->stream;
    const int D = cm->D, H = cm->H, N = cm->N;
    const int GX = gx_batch(cm, B);
    const long long layer_floats = (long long)H * N * D;
    bdh_status rc;

    CU_TRY(bdh_k_embed_ln(cm->wtype, cm->embed, D, bt->in_d->tok, NULL, NULL, bt->X, B, st), "embedding kernel");
    for (int l = 0; l < cm->L; l++) {
        if ((rc = enqueue_encoder(cm, bt->X, B, bt->XS, st)) != BDH_OK) return rc;
        CU_TRY(bdh_k_compact(bt->XS, N, H, B, cm->freqs, bt->in_d->pos, cm->dense, bt->list, bt->qlist, bt->count, NULL,
                             st),
               "compaction kernel");
        CU_TRY(bdh_k_state(bt->in_d->sptr, l * layer_floats, N, D, H, B, GX, bt->X, bt->list, bt->qlist, bt->count,
                           bt->a_part, st),
               "state kernel");
        CU_TRY(bdh_k_ln_a(bt->a_part, GX, D, H, B, bt->ln_a, st), "layernorm kernel");
        if ((rc = enqueue_gate(cm, bt->ln_a, (long long)H * D, D, B, bt->XS, bt->XY, st)) != BDH_OK) return rc;
        if ((rc = enqueue_decoder(cm, bt->XY, B, bt->splitk, bt->Ypart, bt->X, st)) != BDH_OK) return rc;
    }
    return BDH_OK;
}

bdh_status bdh_cuda_forward_step_batch(bdh_state *const *states, const int32_t *tokens, size_t n, float *logits)
{
    if (n == 1) return step(states[0], tokens[0], logits);
    const cuda_model *cm = cuda_model_of(states[0]->model);
    cuda_state *cs = cuda_state_of(states[0]);
    bdh_status rc = use_device(cm);
    if (rc == BDH_OK) rc = ensure_batch(cm, cs);
    if (rc != BDH_OK) return rc;
    batch_buf *bt = cs->bt;
    const size_t V = (size_t)cm->V;
    for (size_t g0 = 0; g0 < n; g0 += BDH_BATCH_MAX) {
        const int B = n - g0 < (size_t)BDH_BATCH_MAX ? (int)(n - g0) : BDH_BATCH_MAX;
        for (int b = 0; b < B; b++) {
            const bdh_state *sb = states[g0 + b];
            bt->in_h->tok[b] = tokens[g0 + b];
            bt->in_h->pos[b] = (long long)sb->position;
            bt->in_h->sptr[b] = cuda_state_of(sb)->S;
        }
        CU_TRY(cudaMemcpyAsync(bt->in_d, bt->in_h, sizeof(batch_host), cudaMemcpyHostToDevice, cs->stream),
               "batch input upload");
        rc = enqueue_batch(cm, cs, B);
        if (rc == BDH_OK && logits) {
            if (cm->wtype == BDH_ELEM_Q8_0) { /* the single step's lm_head GEMV, one x per state */
                const cudaError_t e = bdh_k_gemv(BDH_ELEM_F32, 0, bt->X, cm->D, cm->D, cm->lm, cm->V, 0, bt->logits_d,
                                                 cm->V, B, cs->stream);
                if (e != cudaSuccess) rc = cuda_fail(e, "lm_head kernel");
            } else {
                rc = enqueue_logits(cm, bt->X, B, bt->logits_d, cs->stream);
            }
            if (rc == BDH_OK) {
                const cudaError_t e = cudaMemcpyAsync(bt->logits_h, bt->logits_d, (size_t)B * V * sizeof(float),
                                                      cudaMemcpyDeviceToHost, cs->stream);
                if (e != cudaSuccess) rc = cuda_fail(e, "batch logits download");
            }
        }
        if (rc != BDH_OK) {
            cudaStreamSynchronize(cs->stream);
            return rc;
        }
        CU_TRY(cudaStreamSynchronize(cs->stream), "batched step");
        if (logits) memcpy(logits + g0 * V, bt->logits_h, (size_t)B * V * sizeof(float));
        for (int b = 0; b < B; b++) states[g0 + b]->position++;
    }
    return BDH_OK;
}
