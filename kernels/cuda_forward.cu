/* The CUDA backend's forward functions through the weight GEMMs
 * (bdh_cuda_backend's prefill and step_batch):
 *   bdh_cuda_forward_prefill
 *                         chunks of tokens: weight GEMMs, cuBLAS for the
 *                         products with the state, a masked intra-chunk kernel
 *   bdh_cuda_forward_step_batch
 *                         one token for each of many states: weight GEMMs,
 *                         and the sparse state kernel over all states at once
 *                         (a batch of one is the single step, cuda_step.cu);
 *                         with Q8_0 weights, the single step's kernels over
 *                         all states at once (cuda_q8.cu; so a batch gives the
 *                         single steps' bits)
 * Each advances the states' positions by the tokens it feeds (the core's
 * contract), and ends with a stream synchronisation, which is also where
 * errors of the asynchronous work surface; a state has no work pending
 * between calls. */
#include "bdh_cuda.cuh"

#include <stdlib.h>
#include <string.h>

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

/* One token for each of B states (inputs already in bt->in_d). */
static bdh_status enqueue_batch(const cuda_model *cm, cuda_state *cs, int B)
{
    if (cm->wtype == BDH_ELEM_Q8_0) return bdh_cuda_enqueue_batch_q8(cm, cs, B);
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
    if (n == 1) return bdh_cuda_step(states[0], tokens[0], logits);
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
