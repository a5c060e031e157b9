/* The CUDA backend's single-token step (bdh_cuda_step, the table's
 * step_batch with one state): the sparse decode kernels of kernels_step.cu
 * (with Q8_0 weights, cuda_q8.cu's), run eagerly for a state's first token,
 * then captured once into a CUDA graph per state and replayed; the
 * thread's PDL setting that bdh_launch reads; the bench's per-kernel
 * profiler. A step advances the state's position by one and ends with a
 * stream synchronisation, where errors of the asynchronous work surface. */
#include "bdh_cuda.cuh"
#include "bdh_cuda_debug.h"

#include <stdlib.h>
#include <string.h>

/* ================================================================ PDL */

/* Set while this thread enqueues a single-token step, to that step's
 * model's cuda_model.pdl; read by bdh_launch for every kernel it launches. */
static __thread int t_pdl;

int bdh_cuda_pdl_enabled(void) { return t_pdl; }

/* ================================================================ single step */

/* Enqueue one token on the state's stream: the token and position are read
 * from the mapped host block cs->io, the logits are written into it.
 * ev (profiling only, NULL otherwise): 7L+3 events, recorded before the
 * first kernel and after each one. */
static bdh_status enqueue_step_kernels(const cuda_model *cm, cuda_state *cs, cudaEvent_t *ev)
{
    if (cm->wtype == BDH_ELEM_Q8_0) return bdh_cuda_enqueue_step_q8(cm, cs, ev);
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

bdh_status bdh_cuda_step(bdh_state *s, int32_t token, float *logits)
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
