/* The CUDA backend's model and state lifecycle: weight upload (with the
 * layout changes the kernels want), device state allocation, reset, copy,
 * download/upload for save/load, and release. */
#include "bdh_cuda.cuh"
#include "bdh_cuda_debug.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

static int env_flag(const char *name, int dflt)
{
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    return strcmp(v, "0") != 0;
}

/* float32 -> bfloat16 bits, round to nearest even (as PyTorch's .bfloat16()). */
static uint16_t f32_to_bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static bdh_status upload(void **dst, const float *src, size_t n, int wtype, const char *name)
{
    const size_t esz = wtype == BDH_WT_BF16 ? 2 : 4;
    CU_TRY(cudaMalloc(dst, n * esz), name);
    if (wtype == BDH_WT_F32) {
        CU_TRY(cudaMemcpy(*dst, src, n * 4, cudaMemcpyHostToDevice), name);
        return BDH_OK;
    }
    uint16_t *tmp = (uint16_t *)malloc(n * 2);
    if (!tmp) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory converting %s to bf16", name);
    for (size_t i = 0; i < n; i++) tmp[i] = f32_to_bf16_bits(src[i]);
    cudaError_t e = cudaMemcpy(*dst, tmp, n * 2, cudaMemcpyHostToDevice);
    free(tmp);
    if (e != cudaSuccess) return cuda_fail(e, name);
    return BDH_OK;
}

static bool file_is_bf16(const bdh_model *m)
{
    const int big[] = {BDH_T_EMBED, BDH_T_ENCODER, BDH_T_ENCODER_V, BDH_T_DECODER, BDH_T_LM_HEAD};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        if (!m->file_dtype[big[i]] || strcmp(m->file_dtype[big[i]], "BF16") != 0) return false;
    return true;
}

/* Select the model's device for the calling thread. */
static bdh_status use_device(const cuda_model *cm)
{
    CU_TRY(cudaSetDevice(cm->device), "cudaSetDevice");
    return BDH_OK;
}

static int g_pdl = 1;
static __thread int t_pdl_scope; /* this thread is enqueueing a single-token step */
int bdh_cuda_pdl_enabled(void) { return t_pdl_scope && __atomic_load_n(&g_pdl, __ATOMIC_RELAXED); }
void bdh_cuda_pdl_set(int on) { __atomic_store_n(&g_pdl, on, __ATOMIC_RELAXED); }
void bdh_cuda_pdl_scope(int inside) { t_pdl_scope = inside; }

int bdh_cuda_gx_batch(const cuda_model *cm, int B)
{
    int gx = 4 * cm->n_sm / (cm->H * B);
    return gx < 1 ? 1 : gx > 64 ? 64 : gx;
}

/* ---------------------------------------------------------------- model */

static void model_free_device(cuda_model *cm)
{
    void *bufs[] = {cm->embed, cm->enc, cm->evT, cm->dec, cm->lm, cm->freqs};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) cudaFree(bufs[i]);
}

bdh_status bdh_cuda_model_init(bdh_model *m)
{
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0) {
        cudaGetLastError(); /* not sticky: clear it */
        return bdh_fail(BDH_ERR_DEVICE, "no CUDA device (%s)",
                        e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found none");
    }
    if (m->params.cuda_device < 0 || m->params.cuda_device >= n_dev)
        return bdh_fail(BDH_ERR_DEVICE, "params.cuda_device = %d, but there %s %d CUDA device%s",
                        (int)m->params.cuda_device, n_dev == 1 ? "is" : "are", n_dev, n_dev == 1 ? "" : "s");

    int wtype;
    switch (m->params.weight_type) {
    case BDH_WEIGHTS_F32: wtype = BDH_WT_F32; break;
    case BDH_WEIGHTS_BF16: wtype = BDH_WT_BF16; break;
    case BDH_WEIGHTS_AS_STORED: wtype = file_is_bf16(m) ? BDH_WT_BF16 : BDH_WT_F32; break;
    default:
        return bdh_fail(BDH_ERR_UNSUPPORTED, "params.weight_type = BDH_WEIGHTS_F16: the CUDA path holds float32 or "
                                             "bfloat16 weights (use BDH_WEIGHTS_F32 or BDH_WEIGHTS_BF16)");
    }
    const bdh_config *c = &m->cfg;
    if (c->n_embd > BDH_MAX_D)
        return bdh_fail(BDH_ERR_UNSUPPORTED, "n_embd = %d: the CUDA path supports n_embd up to %d", (int)c->n_embd,
                        BDH_MAX_D);

    cuda_model *cm = (cuda_model *)calloc(1, sizeof *cm);
    if (!cm) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    cm->device = m->params.cuda_device;
    cm->wtype = wtype;
    cm->L = c->n_layer;
    cm->D = c->n_embd;
    cm->H = c->n_head;
    cm->N = c->n_neurons;
    cm->V = c->vocab_size;
    cm->dense = env_flag("BDH_CUDA_DENSE", 0);
    cm->use_graph = env_flag("BDH_CUDA_GRAPH", 1);
    bdh_cuda_pdl_set(env_flag("BDH_CUDA_PDL", 1));

    bdh_status rc = use_device(cm);
    const size_t D = (size_t)cm->D, H = (size_t)cm->H, N = (size_t)cm->N, V = (size_t)cm->V;
    const size_t esz = wtype == BDH_WT_BF16 ? 2 : 4;
    if (rc == BDH_OK) {
        e = cudaDeviceGetAttribute(&cm->n_sm, cudaDevAttrMultiProcessorCount, cm->device);
        if (e != cudaSuccess) rc = cuda_fail(e, "cudaDeviceGetAttribute");
    }
    if (rc == BDH_OK) rc = upload(&cm->embed, m->w.embed, V * D, wtype, "upload of embed.weight");
    if (rc == BDH_OK) rc = upload(&cm->enc, m->w.encoder, H * D * N, wtype, "upload of encoder");
    if (rc == BDH_OK) rc = upload(&cm->dec, m->w.decoder, H * N * D, wtype, "upload of decoder");
    if (rc == BDH_OK) rc = upload(&cm->lm, m->w.lm_head, D * V, wtype, "upload of lm_head");
    if (rc == BDH_OK) {
        /* encoder_v [H][D][N] -> [H][N][D]: a neuron's weights become one row */
        float *t = (float *)malloc(H * N * D * sizeof(float));
        if (!t) {
            rc = bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory transposing encoder_v");
        } else {
            for (size_t h = 0; h < H; h++)
                for (size_t d = 0; d < D; d++) {
                    const float *src = m->w.encoder_v + (h * D + d) * N;
                    float *dst = t + h * N * D + d;
                    for (size_t j = 0; j < N; j++) dst[j * D] = src[j];
                }
            rc = upload(&cm->evT, t, H * N * D, wtype, "upload of encoder_v");
            free(t);
        }
    }
    if (rc == BDH_OK) {
        e = cudaMalloc((void **)&cm->freqs, N * sizeof(float));
        if (e == cudaSuccess) e = cudaMemcpy(cm->freqs, m->w.freqs, N * sizeof(float), cudaMemcpyHostToDevice);
        if (e != cudaSuccess) rc = cuda_fail(e, "upload of attn.freqs");
    }
    if (rc != BDH_OK) {
        model_free_device(cm);
        free(cm);
        return rc;
    }
    cm->weight_bytes = (2 * V * D + 3 * H * N * D) * esz;
    m->weight_bytes = cm->weight_bytes; /* what the device holds (bf16: half) */
    m->cuda = cm;
    return BDH_OK;
}

void bdh_cuda_model_release(bdh_model *m)
{
    cuda_model *cm = (cuda_model *)m->cuda;
    if (!cm) return;
    cudaSetDevice(cm->device);
    model_free_device(cm);
    free(cm);
    m->cuda = NULL;
}

/* ---------------------------------------------------------------- state */

/* Carve n bytes (256-aligned) from an arena being sized (base NULL) or laid out. */
static void *carve(char *base, size_t *off, size_t n)
{
    void *p = base ? base + *off : NULL;
    *off += (n + 255) / 256 * 256;
    return p;
}

static size_t layout_step(const cuda_model *cm, char *base, step_buf *b)
{
    const size_t D = cm->D, H = cm->H, N = cm->N, P = N / 2;
    size_t off = 0;
    b->x = (float *)carve(base, &off, D * 4);
    b->xs = (float *)carve(base, &off, H * N * 4);
    b->xy = (float *)carve(base, &off, H * N * 4);
    b->list = (int *)carve(base, &off, H * P * 4);
    b->qlist = (float2 *)carve(base, &off, H * P * 8);
    b->count = (int *)carve(base, &off, H * 4);
    b->a_part = (float *)carve(base, &off, H * BDH_GX_STEP * D * 4);
    b->ln_a = (float *)carve(base, &off, H * D * 4);
    b->y_part = (float *)carve(base, &off, H * BDH_RG_STEP * D * 4);
    b->pos = (long long *)carve(base, &off, 8);
    b->sptr = (float **)carve(base, &off, sizeof(float *));
    b->stats = (unsigned long long *)carve(base, &off, 4 * 8);
    return off;
}

void bdh_cuda_free_prefill(prefill_buf *pf)
{
    if (!pf) return;
    if (pf->arena) cudaFree(pf->arena);
    if (pf->tok_h) cudaFreeHost(pf->tok_h);
    if (pf->logits_h) cudaFreeHost(pf->logits_h);
    free(pf);
}

void bdh_cuda_free_batch(batch_buf *bt)
{
    if (!bt) return;
    if (bt->arena) cudaFree(bt->arena);
    if (bt->in_h) cudaFreeHost(bt->in_h);
    if (bt->logits_h) cudaFreeHost(bt->logits_h);
    free(bt);
}

static void state_free_device(cuda_state *cs)
{
    if (cs->exec) cudaGraphExecDestroy(cs->exec);
    if (cs->graph) cudaGraphDestroy(cs->graph);
    if (cs->cublas) cublasDestroy(cs->cublas);
    bdh_cuda_free_prefill(cs->pf);
    bdh_cuda_free_batch(cs->bt);
    if (cs->S) cudaFree(cs->S);
    if (cs->arena) cudaFree(cs->arena);
    if (cs->io) cudaFreeHost(cs->io);
    if (cs->stream) cudaStreamDestroy(cs->stream);
}

static bdh_status state_alloc(bdh_state *s, cuda_state *cs)
{
    const cuda_model *cm = (const cuda_model *)s->model->cuda;
    const size_t state_bytes = bdh_state_floats(&s->model->cfg) * sizeof(float);
    CU_TRY(cudaStreamCreateWithFlags(&cs->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    CU_TRY(cudaMalloc((void **)&cs->S, state_bytes), "allocating the device state");
    const size_t arena = layout_step(cm, NULL, &cs->st);
    CU_TRY(cudaMalloc(&cs->arena, arena), "allocating the step buffers");
    layout_step(cm, (char *)cs->arena, &cs->st);
    CU_TRY(cudaHostAlloc((void **)&cs->io, sizeof(step_io) + (size_t)cm->V * sizeof(float), cudaHostAllocMapped),
           "allocating pinned host memory");
    CU_TRY(cudaHostGetDevicePointer((void **)&cs->io_d, cs->io, 0), "cudaHostGetDevicePointer");
    memset(cs->io, 0, sizeof(step_io));
    CU_TRY(cudaMemsetAsync(cs->S, 0, state_bytes, cs->stream), "zeroing the state");
    CU_TRY(cudaMemsetAsync(cs->arena, 0, arena, cs->stream), "zeroing the step buffers");
    CU_TRY(cudaMemcpyAsync(cs->st.sptr, &cs->S, sizeof(float *), cudaMemcpyHostToDevice, cs->stream), "state setup");
    CU_TRY(cudaStreamSynchronize(cs->stream), "state setup");
    return BDH_OK;
}

bdh_status bdh_cuda_state_init(bdh_state *s)
{
    const cuda_model *cm = (const cuda_model *)s->model->cuda;
    if (!cm) return bdh_fail(BDH_ERR_DEVICE, "the model has no CUDA side");
    bdh_status rc = use_device(cm);
    if (rc != BDH_OK) return rc;
    cuda_state *cs = (cuda_state *)calloc(1, sizeof *cs);
    if (!cs) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    rc = state_alloc(s, cs);
    if (rc != BDH_OK) {
        state_free_device(cs);
        free(cs);
        return rc;
    }
    s->cuda = cs;
    return BDH_OK;
}

void bdh_cuda_state_release(bdh_state *s)
{
    cuda_state *cs = (cuda_state *)s->cuda;
    if (!cs) return;
    const cuda_model *cm = (const cuda_model *)s->model->cuda;
    if (cm) cudaSetDevice(cm->device);
    if (cs->stream) cudaStreamSynchronize(cs->stream);
    state_free_device(cs);
    free(cs);
    s->cuda = NULL;
}

bdh_status bdh_cuda_state_reset(bdh_state *s)
{
    cuda_state *cs = (cuda_state *)s->cuda;
    bdh_status rc = use_device((const cuda_model *)s->model->cuda);
    if (rc != BDH_OK) return rc;
    CU_TRY(cudaMemsetAsync(cs->S, 0, bdh_state_floats(&s->model->cfg) * sizeof(float), cs->stream), "state reset");
    CU_TRY(cudaStreamSynchronize(cs->stream), "state reset");
    return BDH_OK;
}

bdh_status bdh_cuda_state_copy(bdh_state *dst, const bdh_state *src)
{
    cuda_state *d = (cuda_state *)dst->cuda;
    const cuda_state *sc = (const cuda_state *)src->cuda;
    bdh_status rc = use_device((const cuda_model *)src->model->cuda);
    if (rc != BDH_OK) return rc;
    CU_TRY(cudaStreamSynchronize(sc->stream), "state copy");
    CU_TRY(cudaMemcpyAsync(d->S, sc->S, bdh_state_floats(&src->model->cfg) * sizeof(float), cudaMemcpyDeviceToDevice,
                           d->stream),
           "state copy");
    CU_TRY(cudaStreamSynchronize(d->stream), "state copy");
    return BDH_OK;
}

/* host may be unaligned (it points into a save blob): cudaMemcpy takes bytes. */
bdh_status bdh_cuda_state_download(const bdh_state *s, float *host)
{
    const cuda_state *cs = (const cuda_state *)s->cuda;
    bdh_status rc = use_device((const cuda_model *)s->model->cuda);
    if (rc != BDH_OK) return rc;
    CU_TRY(cudaStreamSynchronize(cs->stream), "state download");
    CU_TRY(cudaMemcpy((void *)host, cs->S, bdh_state_floats(&s->model->cfg) * sizeof(float), cudaMemcpyDeviceToHost),
           "state download");
    return BDH_OK;
}

bdh_status bdh_cuda_state_upload(bdh_state *s, const float *host)
{
    cuda_state *cs = (cuda_state *)s->cuda;
    bdh_status rc = use_device((const cuda_model *)s->model->cuda);
    if (rc != BDH_OK) return rc;
    CU_TRY(cudaStreamSynchronize(cs->stream), "state upload");
    CU_TRY(cudaMemcpy(cs->S, (const void *)host, bdh_state_floats(&s->model->cfg) * sizeof(float),
                      cudaMemcpyHostToDevice),
           "state upload");
    return BDH_OK;
}

/* ---------------------------------------------------------------- debug */

int bdh_cuda_debug_stats(const bdh_state *s, uint64_t out[4])
{
    const cuda_state *cs = s ? (const cuda_state *)s->cuda : NULL;
    if (!cs) return -1;
    unsigned long long v[4];
    if (cudaStreamSynchronize(cs->stream) != cudaSuccess ||
        cudaMemcpy(v, cs->st.stats, sizeof v, cudaMemcpyDeviceToHost) != cudaSuccess)
        return -1;
    for (int i = 0; i < 4; i++) out[i] = v[i];
    return 0;
}

int bdh_cuda_debug_reset_stats(bdh_state *s)
{
    cuda_state *cs = s ? (cuda_state *)s->cuda : NULL;
    if (!cs) return -1;
    if (cudaMemsetAsync(cs->st.stats, 0, 4 * sizeof(unsigned long long), cs->stream) != cudaSuccess ||
        cudaStreamSynchronize(cs->stream) != cudaSuccess)
        return -1;
    return 0;
}

size_t bdh_cuda_debug_weight_bytes(const bdh_model *m)
{
    const cuda_model *cm = m ? (const cuda_model *)m->cuda : NULL;
    return cm ? cm->weight_bytes : 0;
}

int bdh_cuda_debug_weight_type(const bdh_model *m)
{
    const cuda_model *cm = m ? (const cuda_model *)m->cuda : NULL;
    return cm ? cm->wtype : -1;
}

void bdh_cuda_describe(char *buf, size_t cap)
{
    int n = 0, rt = 0, drv = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();
        snprintf(buf, cap, "built, no device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return;
    }
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    size_t at = (size_t)snprintf(buf, cap, "runtime %d, driver %d, %d device%s", rt, drv, n, n == 1 ? "" : "s");
    for (int i = 0; i < n && at < cap; i++) {
        cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess) break;
        at += (size_t)snprintf(buf + at, cap - at, "%s %d: %s (sm_%d%d, %.0f GiB)", i ? ";" : ":", i, p.name, p.major,
                               p.minor, (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    }
}
