/* The CUDA backend's table (bdh_cuda_backend, libbdh/internal.h) and its
 * model and state lifecycle: the weights packed from the file's tensors
 * straight into the device's types and layouts (float32, bfloat16, or Q8_0
 * blocks quantized with the CPU's routine or copied from a Q8_0 file),
 * device state allocation, reset, copy, read/write for save/load, and
 * release; the bench's debug hooks. The forward functions of the table are
 * in cuda_forward.cu (the single-token step: cuda_step.cu). */
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

static bool is_cuda_model(const bdh_model *m) { return m && m->backend == &bdh_cuda_backend && m->impl; }

/* ---------------------------------------------------------------- parameters */

#define F16_REFUSED                                                                                         \
    bdh_fail(BDH_ERR_UNSUPPORTED, "params.weight_type = BDH_WEIGHTS_F16: the CUDA path holds float32, bfloat16 " \
                                  "or Q8_0 weights (use BDH_WEIGHTS_F32, BDH_WEIGHTS_BF16 or BDH_WEIGHTS_Q8_0)")

/* Before any file is read. (The ordinal's upper bound needs the runtime:
 * model_init checks it.) */
static bdh_status cuda_check_params(const bdh_model_params *p)
{
    if (p->weight_type == BDH_WEIGHTS_F16) return F16_REFUSED;
    if (p->cuda_device < 0)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "params.cuda_device = %d is negative (a CUDA device ordinal)",
                        (int)p->cuda_device);
    return BDH_OK;
}

/* ---------------------------------------------------------------- model */

static const int big_tensors[5] = {BDH_T_EMBED, BDH_T_ENCODER, BDH_T_ENCODER_V, BDH_T_DECODER, BDH_T_LM_HEAD};

/* The device weight type for a request: float32, bfloat16 or Q8_0 as
 * asked; AS_STORED keeps a Q8_0 file's blocks (its encoder is I8, as for
 * the CPU: bdh_weight_elem), keeps bfloat16 only when all five weight
 * tensors are BF16 in the file, and uses float32 otherwise (F32 or F16
 * files, or a mix). Anything else (F16) is not a device type: the caller
 * refuses it. */
static bdh_elem device_elem(bdh_weight_type requested, const bdh_weight_views *w)
{
    if (requested != BDH_WEIGHTS_AS_STORED) return bdh_weight_elem(requested, w->t[BDH_T_ENCODER]->dtype);
    if (w->t[BDH_T_ENCODER]->dtype == BDH_ELEM_I8) return BDH_ELEM_Q8_0;
    for (size_t i = 0; i < sizeof big_tensors / sizeof big_tensors[0]; i++)
        if (!w->t[big_tensors[i]] || w->t[big_tensors[i]]->dtype != BDH_ELEM_BF16) return BDH_ELEM_F32;
    return BDH_ELEM_BF16;
}

/* Packing: each tensor goes from the file's bytes (F32, F16 or BF16, maybe
 * unaligned) to the device type through one host staging buffer, reused
 * for every tensor, a piece at a time; a tensor already in the device type
 * and layout is copied to the device straight from the file. Conversions
 * pass through float32 (widening is exact) and round to nearest even
 * (dtype.h), as PyTorch's .bfloat16() does. */
#define PACK_BLOCK ((size_t)1 << 16) /* elements converted at a time (float32 scratch) */
#define PACK_CHUNK ((size_t)1 << 22) /* elements staged per upload, at least */

typedef struct packer {
    bdh_elem de;   /* device type */
    size_t esz;    /* its size */
    void *stage;   /* cap elements of de */
    size_t cap;
    float *f32;    /* max(PACK_BLOCK, N) floats */
    const bdh_weight_views *w;
} packer;

/* n elements of type se at src into dst (type pk->de). */
static void convert(const packer *pk, bdh_elem se, const void *src, void *dst, size_t n)
{
    const size_t ss = bdh_elem_size(se);
    if (se == pk->de) {
        memcpy(dst, src, n * ss);
        return;
    }
    for (size_t i = 0; i < n; i += PACK_BLOCK) {
        const size_t k = n - i < PACK_BLOCK ? n - i : PACK_BLOCK;
        bdh_elem_to_f32(se, (const char *)src + i * ss, pk->f32, k);
        bdh_elem_from_f32(pk->de, pk->f32, (char *)dst + i * pk->esz, k);
    }
}

/* The view of tensor `which`, checked to hold n elements of a float type. */
static bdh_status tensor_for(const packer *pk, int which, size_t n, const bdh_tensor_view **out)
{
    const bdh_tensor_view *t = pk->w->t[which];
    if (!t || !t->data || !bdh_elem_is_float(t->dtype) || t->nbytes < n * bdh_elem_size(t->dtype))
        return bdh_fail(BDH_ERR_FORMAT, "%s: expected %zu F32/F16/BF16 elements", bdh_tensor_name(which), n);
    *out = t;
    return BDH_OK;
}

/* Drop the file's pages of a tensor now on the device. */
static void release_pages(const packer *pk, const bdh_tensor_view *t)
{
    if (pk->w->file) bdh_safetensors_release(pk->w->file, t);
}

/* Device buffer of `bytes` bytes for tensor `which` (*dst is set only on success). */
static bdh_status device_alloc_bytes(void **dst, size_t bytes, int which)
{
    void *p = NULL;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return bdh_fail(e == cudaErrorMemoryAllocation ? BDH_ERR_OUT_OF_MEMORY : BDH_ERR_DEVICE,
                        "CUDA error allocating %zu device bytes for %s: %s (%s)", bytes, bdh_tensor_name(which),
                        cudaGetErrorString(e), cudaGetErrorName(e));
    }
    *dst = p;
    return BDH_OK;
}

/* Device buffer of n elements of the device type (*dst is set only on success). */
static bdh_status device_alloc(const packer *pk, void **dst, size_t n, int which)
{
    return device_alloc_bytes(dst, n * pk->esz, which);
}

/* Tensor `which` (n elements) in the file's layout. */
static bdh_status upload_as_is(const packer *pk, void **dst, int which, size_t n)
{
    const bdh_tensor_view *t;
    bdh_status rc = tensor_for(pk, which, n, &t);
    if (rc == BDH_OK) rc = device_alloc(pk, dst, n, which);
    if (rc != BDH_OK) return rc;
    const char *what = bdh_tensor_name(which);
    if (t->dtype == pk->de) {
        CU_TRY(cudaMemcpy(*dst, t->data, n * pk->esz, cudaMemcpyHostToDevice), what);
    } else {
        const size_t ss = bdh_elem_size(t->dtype);
        for (size_t i = 0; i < n; i += pk->cap) {
            const size_t k = n - i < pk->cap ? n - i : pk->cap;
            convert(pk, t->dtype, (const char *)t->data + i * ss, pk->stage, k);
            CU_TRY(cudaMemcpy((char *)*dst + i * pk->esz, pk->stage, k * pk->esz, cudaMemcpyHostToDevice), what);
        }
    }
    release_pages(pk, t);
    return BDH_OK;
}

/* encoder_v [H][D][N] -> [H][N][D], a head at a time: a neuron's weights
 * become one row. */
static bdh_status upload_encoder_v(const packer *pk, void **dst, size_t H, size_t D, size_t N)
{
    const bdh_tensor_view *t;
    bdh_status rc = tensor_for(pk, BDH_T_ENCODER_V, H * D * N, &t);
    if (rc == BDH_OK) rc = device_alloc(pk, dst, H * N * D, BDH_T_ENCODER_V);
    if (rc != BDH_OK) return rc;
    const size_t ss = bdh_elem_size(t->dtype);
    for (size_t h = 0; h < H; h++) {
        for (size_t d = 0; d < D; d++) {
            const float *row = pk->f32;
            bdh_elem_to_f32(t->dtype, (const char *)t->data + (h * D + d) * N * ss, pk->f32, N);
            if (pk->de == BDH_ELEM_BF16) {
                uint16_t *o = (uint16_t *)pk->stage + d;
                for (size_t j = 0; j < N; j++) o[j * D] = bdh_f32_to_bf16(row[j]);
            } else {
                float *o = (float *)pk->stage + d;
                for (size_t j = 0; j < N; j++) o[j * D] = row[j];
            }
        }
        CU_TRY(cudaMemcpy((char *)*dst + h * N * D * pk->esz, pk->stage, N * D * pk->esz, cudaMemcpyHostToDevice),
               "encoder_v");
    }
    release_pages(pk, t);
    return BDH_OK;
}

/* Q8_0: tensor `which` (encoder, encoder_v or decoder) as int8 neuron rows
 * of cm->Dp bytes, [H*N][Dp] (row h*N + j: neuron j of head h, whatever
 * the file's layout), and their F16 scales [H*N][nb]. A row of a float file
 * is quantized with bdh_q8_quantize_row, exactly as the CPU backend does;
 * a Q8_0 file's blocks are copied as stored (so quantizing at load and a
 * pre-quantized file hold the same bits). Bytes D..Dp of a row are 0. Rows
 * are staged on the host a few MiB at a time. */
static bdh_status upload_q8(const cuda_model *cm, const bdh_model *m, const bdh_weight_views *w, int which, void **dq,
                            uint16_t **ds)
{
    bdh_file_rows f;
    bdh_file_rows_init(&f, w, which, &m->cfg);
    const size_t R = (size_t)f.rows, D = (size_t)f.cols, Dp = (size_t)cm->Dp, nb = (size_t)cm->nb;
    const bool file_q8 = f.t && f.t->dtype == BDH_ELEM_I8;
    if (!f.t || !f.t->data || (!file_q8 && !bdh_elem_is_float(f.t->dtype)) || (file_q8 && (!f.scale || !f.scale->data)) ||
        f.t->nbytes < R * D * bdh_elem_size(f.t->dtype) || R != (size_t)cm->H * cm->N || D != (size_t)cm->D)
        return bdh_fail(BDH_ERR_FORMAT, "%s: expected %zu F32/F16/BF16 elements, or I8 with F16 scales",
                        bdh_tensor_name(which), R * D);
    size_t chunk = ((size_t)4 << 20) / Dp; /* rows per upload */
    if (chunk < 1) chunk = 1;
    if (chunk > R) chunk = R;
    int8_t *q = (int8_t *)malloc(chunk * Dp);
    uint16_t *s = (uint16_t *)malloc(chunk * nb * sizeof(uint16_t));
    float *row = (float *)malloc(D * sizeof(float));
    void *dev_s = NULL;
    bdh_status rc = BDH_OK;
    if (!q || !s || !row)
        rc = bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory staging %s", bdh_tensor_name(which));
    if (rc == BDH_OK) rc = device_alloc_bytes(dq, R * Dp, which);
    if (rc == BDH_OK) rc = device_alloc_bytes(&dev_s, R * nb * sizeof(uint16_t), which);
    if (rc == BDH_OK) *ds = (uint16_t *)dev_s;
    for (size_t r0 = 0; rc == BDH_OK && r0 < R; r0 += chunk) {
        const size_t n = R - r0 < chunk ? R - r0 : chunk;
        for (size_t i = 0; i < n; i++) {
            int8_t *qr = q + i * Dp;
            uint16_t *sr = s + i * nb;
            if (file_q8) {
                bdh_file_row_q8_part(&f, (int64_t)(r0 + i), 0, (int64_t)D, qr, sr);
            } else {
                bdh_file_row_f32(&f, (int64_t)(r0 + i), row);
                bdh_q8_quantize_row(row, D, qr, sr);
            }
            memset(qr + D, 0, Dp - D);
        }
        cudaError_t e = cudaMemcpy((char *)*dq + r0 * Dp, q, n * Dp, cudaMemcpyHostToDevice);
        if (e == cudaSuccess) e = cudaMemcpy(*ds + r0 * nb, s, n * nb * sizeof(uint16_t), cudaMemcpyHostToDevice);
        if (e != cudaSuccess) rc = cuda_fail(e, bdh_tensor_name(which));
    }
    free(q);
    free(s);
    free(row);
    if (rc == BDH_OK && w->file) {
        bdh_safetensors_release(w->file, f.t);
        if (f.scale) bdh_safetensors_release(w->file, f.scale);
    }
    return rc;
}

static void model_free_device(cuda_model *cm)
{
    void *bufs[] = {cm->embed, cm->enc, cm->evT, cm->dec, cm->lm, cm->enc_s, cm->ev_s, cm->dec_s, cm->freqs};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) cudaFree(bufs[i]);
}

static bdh_status upload_all(cuda_model *cm, const bdh_model *m, const bdh_weight_views *file_views)
{
    const size_t D = (size_t)cm->D, H = (size_t)cm->H, N = (size_t)cm->N, V = (size_t)cm->V;
    const bool q8 = cm->wtype == BDH_ELEM_Q8_0;
    /* a Q8_0 file held as floats: its dequantized values, as the other
     * backends that hold floats see them (quant.c's bdh_q8_dequantized_views) */
    bdh_weight_views wl = *file_views;
    bdh_q8_copies copies;
    memset(&copies, 0, sizeof copies);
    bool file_q8 = false;
    for (int i = 0; i < BDH_T_COUNT; i++) file_q8 |= wl.scale[i] != NULL;
    bdh_status rc = BDH_OK;
    if (!q8 && file_q8) rc = bdh_q8_dequantized_views(&m->cfg, &wl, &copies);
    const bdh_weight_views *w = &wl;
    packer pk;
    memset(&pk, 0, sizeof pk);
    pk.de = cuda_small_type(cm); /* every tensor the packer uploads (Q8_0: embed and lm_head) */
    pk.esz = bdh_elem_size(pk.de);
    pk.cap = N * D > PACK_CHUNK ? N * D : PACK_CHUNK;
    pk.w = w;
    pk.stage = rc == BDH_OK ? malloc(pk.cap * pk.esz) : NULL;
    pk.f32 = rc == BDH_OK ? (float *)malloc((N > PACK_BLOCK ? N : PACK_BLOCK) * sizeof(float)) : NULL;
    if (rc == BDH_OK && (!pk.stage || !pk.f32))
        rc = bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory allocating %zu bytes to stage the weights", pk.cap * pk.esz);
    if (rc == BDH_OK) rc = upload_as_is(&pk, &cm->embed, BDH_T_EMBED, V * D);
    if (q8) {
        if (rc == BDH_OK) rc = upload_q8(cm, m, w, BDH_T_ENCODER, &cm->enc, &cm->enc_s);
        if (rc == BDH_OK) rc = upload_q8(cm, m, w, BDH_T_ENCODER_V, &cm->evT, &cm->ev_s);
        if (rc == BDH_OK) rc = upload_q8(cm, m, w, BDH_T_DECODER, &cm->dec, &cm->dec_s);
    } else {
        if (rc == BDH_OK) rc = upload_as_is(&pk, &cm->enc, BDH_T_ENCODER, H * D * N);
        if (rc == BDH_OK) rc = upload_encoder_v(&pk, &cm->evT, H, D, N);
        if (rc == BDH_OK) rc = upload_as_is(&pk, &cm->dec, BDH_T_DECODER, H * N * D);
    }
    if (rc == BDH_OK) rc = upload_as_is(&pk, &cm->lm, BDH_T_LM_HEAD, D * V);
    free(pk.stage);
    free(pk.f32);
    bdh_q8_copies_free(&copies);
    if (rc == BDH_OK) {
        cudaError_t e = cudaMalloc((void **)&cm->freqs, N * sizeof(float));
        if (e == cudaSuccess) e = cudaMemcpy(cm->freqs, m->freqs, N * sizeof(float), cudaMemcpyHostToDevice);
        if (e != cudaSuccess) rc = cuda_fail(e, "upload of attn.freqs");
    }
    return rc;
}

static bdh_status cuda_model_init(bdh_model *m, const bdh_weight_views *w)
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
    if (!w->t[BDH_T_ENCODER]) return bdh_fail(BDH_ERR_FORMAT, "%s: missing", bdh_tensor_name(BDH_T_ENCODER));
    const bdh_elem wtype = device_elem(m->params.weight_type, w);
    if (wtype != BDH_ELEM_F32 && wtype != BDH_ELEM_BF16 && wtype != BDH_ELEM_Q8_0) return F16_REFUSED;
    const bdh_config *c = &m->cfg;
    if (c->n_embd > BDH_MAX_D)
        return bdh_fail(BDH_ERR_UNSUPPORTED, "n_embd = %d: the CUDA path supports n_embd up to %d", (int)c->n_embd,
                        BDH_MAX_D);
    if (!m->freqs) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "the model has no RoPE frequencies");

    cuda_model *cm = (cuda_model *)calloc(1, sizeof *cm);
    if (!cm) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    cm->device = m->params.cuda_device;
    cm->wtype = wtype;
    cm->L = c->n_layer;
    cm->D = c->n_embd;
    cm->H = c->n_head;
    cm->N = c->n_neurons;
    cm->V = c->vocab_size;
    cm->nb = (int)bdh_q8_blocks((size_t)c->n_embd);
    cm->Dp = wtype == BDH_ELEM_Q8_0 ? cm->nb * BDH_Q8_BLOCK : cm->D;
    cm->dense = env_flag("BDH_CUDA_DENSE", 0);
    cm->use_graph = env_flag("BDH_CUDA_GRAPH", 1);
    cm->pdl = env_flag("BDH_CUDA_PDL", 1);

    bdh_status rc = use_device(cm);
    if (rc == BDH_OK) {
        e = cudaDeviceGetAttribute(&cm->n_sm, cudaDevAttrMultiProcessorCount, cm->device);
        if (e != cudaSuccess) rc = cuda_fail(e, "cudaDeviceGetAttribute");
    }
    if (rc == BDH_OK) rc = upload_all(cm, m, w);
    if (rc != BDH_OK) {
        model_free_device(cm);
        free(cm);
        return rc;
    }
    const size_t D = (size_t)cm->D, HN = (size_t)cm->H * (size_t)cm->N, V = (size_t)cm->V;
    if (wtype == BDH_ELEM_Q8_0) /* float32 embed and lm_head; int8 rows of Dp bytes and their F16 scales */
        m->weight_bytes = 2 * V * D * sizeof(float) + 3 * HN * ((size_t)cm->Dp + (size_t)cm->nb * sizeof(uint16_t));
    else
        m->weight_bytes = (2 * V * D + 3 * HN * D) * bdh_elem_size(wtype); /* what the device holds (bf16: half) */
    m->impl = cm;
    return BDH_OK;
}

static void cuda_model_free(bdh_model *m)
{
    cuda_model *cm = cuda_model_of(m);
    if (!cm) return;
    cudaSetDevice(cm->device);
    model_free_device(cm);
    free(cm);
    m->impl = NULL;
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

static size_t state_bytes(const bdh_state *s) { return bdh_state_floats(&s->model->cfg) * sizeof(float); }

static bdh_status state_alloc(bdh_state *s, cuda_state *cs)
{
    const cuda_model *cm = cuda_model_of(s->model);
    CU_TRY(cudaStreamCreateWithFlags(&cs->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    CU_TRY(cudaMalloc((void **)&cs->S, state_bytes(s)), "allocating the device state");
    const size_t arena = layout_step(cm, NULL, &cs->st);
    CU_TRY(cudaMalloc(&cs->arena, arena), "allocating the step buffers");
    layout_step(cm, (char *)cs->arena, &cs->st);
    CU_TRY(cudaHostAlloc((void **)&cs->io, sizeof(step_io) + (size_t)cm->V * sizeof(float), cudaHostAllocMapped),
           "allocating pinned host memory");
    CU_TRY(cudaHostGetDevicePointer((void **)&cs->io_d, cs->io, 0), "cudaHostGetDevicePointer");
    memset(cs->io, 0, sizeof(step_io));
    CU_TRY(cudaMemsetAsync(cs->S, 0, state_bytes(s), cs->stream), "zeroing the state");
    CU_TRY(cudaMemsetAsync(cs->arena, 0, arena, cs->stream), "zeroing the step buffers");
    CU_TRY(cudaMemcpyAsync(cs->st.sptr, &cs->S, sizeof(float *), cudaMemcpyHostToDevice, cs->stream), "state setup");
    CU_TRY(cudaStreamSynchronize(cs->stream), "state setup");
    return BDH_OK;
}

static bdh_status cuda_state_init(bdh_state *s)
{
    const cuda_model *cm = cuda_model_of(s->model);
    if (!cm) return bdh_fail(BDH_ERR_DEVICE, "the model has no CUDA side");
    bdh_status rc = use_device(cm);
    if (rc != BDH_OK) return rc;
    cuda_state *cs = (cuda_state *)calloc(1, sizeof *cs);
    if (!cs) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    rc = state_alloc(s, cs);
    if (rc != BDH_OK) {
        if (cs->stream) cudaStreamSynchronize(cs->stream);
        state_free_device(cs);
        free(cs);
        return rc;
    }
    s->impl = cs;
    return BDH_OK;
}

static void cuda_state_free(bdh_state *s)
{
    cuda_state *cs = cuda_state_of(s);
    if (!cs) return;
    const cuda_model *cm = cuda_model_of(s->model);
    if (cm) cudaSetDevice(cm->device);
    if (cs->stream) cudaStreamSynchronize(cs->stream);
    state_free_device(cs);
    free(cs);
    s->impl = NULL;
}

/* The device state only: the core resets the position and the observer. */
static bdh_status cuda_state_reset(bdh_state *s)
{
    cuda_state *cs = cuda_state_of(s);
    bdh_status rc = use_device(cuda_model_of(s->model));
    if (rc != BDH_OK) return rc;
    CU_TRY(cudaMemsetAsync(cs->S, 0, state_bytes(s), cs->stream), "state reset");
    CU_TRY(cudaStreamSynchronize(cs->stream), "state reset");
    return BDH_OK;
}

/* dst is a fresh state of the same model: only S differs. */
static bdh_status cuda_state_copy(bdh_state *dst, const bdh_state *src)
{
    cuda_state *d = cuda_state_of(dst);
    const cuda_state *sc = cuda_state_of(src);
    bdh_status rc = use_device(cuda_model_of(src->model));
    if (rc != BDH_OK) return rc;
    CU_TRY(cudaStreamSynchronize(sc->stream), "state copy");
    CU_TRY(cudaMemcpyAsync(d->S, sc->S, state_bytes(src), cudaMemcpyDeviceToDevice, d->stream), "state copy");
    CU_TRY(cudaStreamSynchronize(d->stream), "state copy");
    return BDH_OK;
}

/* dst/src may be unaligned (they point into a save blob): cudaMemcpy takes bytes. */
static bdh_status cuda_state_read(const bdh_state *s, void *dst)
{
    const cuda_state *cs = cuda_state_of(s);
    bdh_status rc = use_device(cuda_model_of(s->model));
    if (rc != BDH_OK) return rc;
    CU_TRY(cudaStreamSynchronize(cs->stream), "state download");
    CU_TRY(cudaMemcpy(dst, cs->S, state_bytes(s), cudaMemcpyDeviceToHost), "state download");
    return BDH_OK;
}

static bdh_status cuda_state_write(bdh_state *s, const void *src)
{
    cuda_state *cs = cuda_state_of(s);
    bdh_status rc = use_device(cuda_model_of(s->model));
    if (rc != BDH_OK) return rc;
    CU_TRY(cudaStreamSynchronize(cs->stream), "state upload");
    CU_TRY(cudaMemcpy(cs->S, src, state_bytes(s), cudaMemcpyHostToDevice), "state upload");
    return BDH_OK;
}

/* ---------------------------------------------------------------- the table */

const bdh_backend bdh_cuda_backend = {
    "cuda",                         /* name */
    false,                          /* observes: steps do not report layers */
    cuda_check_params,              /* check_params */
    cuda_model_init,                /* model_init */
    cuda_model_free,                /* model_free */
    cuda_state_init,                /* state_init */
    cuda_state_free,                /* state_free */
    cuda_state_reset,               /* state_reset */
    cuda_state_copy,                /* state_copy */
    cuda_state_read,                /* state_read */
    cuda_state_write,               /* state_write */
    NULL,                           /* state_rows: the state is on the device */
    NULL,                           /* activity: not counted */
    bdh_cuda_forward_step_batch,    /* step_batch (cuda_forward.cu) */
    bdh_cuda_forward_prefill,       /* prefill (cuda_forward.cu) */
};

/* ---------------------------------------------------------------- debug */

static const cuda_state *debug_state(const bdh_state *s)
{
    if (!s || !is_cuda_model(s->model) || !s->impl) return NULL;
    if (cudaSetDevice(cuda_model_of(s->model)->device) != cudaSuccess) return NULL;
    return cuda_state_of(s);
}

int bdh_cuda_debug_stats(const bdh_state *s, uint64_t out[4])
{
    const cuda_state *cs = debug_state(s);
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
    const cuda_state *cs = debug_state(s);
    if (!cs) return -1;
    if (cudaMemsetAsync(cs->st.stats, 0, 4 * sizeof(unsigned long long), cs->stream) != cudaSuccess ||
        cudaStreamSynchronize(cs->stream) != cudaSuccess)
        return -1;
    return 0;
}

size_t bdh_cuda_debug_weight_bytes(const bdh_model *m) { return is_cuda_model(m) ? m->weight_bytes : 0; }

int bdh_cuda_debug_weight_type(const bdh_model *m)
{
    if (!is_cuda_model(m)) return -1;
    const bdh_elem t = cuda_model_of(m)->wtype;
    return t == BDH_ELEM_BF16 ? 1 : t == BDH_ELEM_Q8_0 ? 2 : 0;
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
