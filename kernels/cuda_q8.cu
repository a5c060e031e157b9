/* The Q8_0 decode paths: the single step's kernels with Q8_0 weights
 * (bdh_cuda_enqueue_step_q8, for cuda_step.cu) and the same kernels over
 * the states of a batch group (bdh_cuda_enqueue_batch_q8, for the batched
 * step of cuda_forward.cu), both through one per-layer kernel sequence, so
 * a batch gives the single steps' bits. Embed and lm_head are float32. */
#include "bdh_cuda.cuh"

#include <string.h>

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

/* cuda_step.cu's enqueue_step_kernels for Q8_0 weights: the same kernels
 * in the same order (and events), float32 embed and lm_head. */
bdh_status bdh_cuda_enqueue_step_q8(const cuda_model *cm, cuda_state *cs, cudaEvent_t *ev)
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

/* cuda_forward.cu's enqueue_batch for Q8_0 weights: the single step's
 * kernels (and work split) over the B states, embed and lm_head float32. */
bdh_status bdh_cuda_enqueue_batch_q8(const cuda_model *cm, cuda_state *cs, int B)
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
