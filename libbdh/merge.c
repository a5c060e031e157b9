/* Model merging (bdh_model_merge, behind `bdh merge`; docs/merging.md): two
 * models with the same n_layer, n_embd, n_head and vocab_size become one
 * whose every head holds both neuron populations, A's N_A neurons then B's
 * N_B. Neurons are independent along N everywhere in BDH-GPU except in the
 * sums over N (the state read a = S^T q and the decoder product), which then
 * add A's and B's contributions; the LayerNorms after both sums take out
 * their scale. So per head h:
 *   encoder, encoder_v [H][D][N]  -> [H][D][N_A+N_B]: head h's columns A then B
 *   decoder [H*N][D]              -> rows h*(N_A+N_B) + j: head h's rows A then B
 *                                    (not A's H*N_A rows then B's: that mixes heads)
 *   attn.freqs [1,1,1,N]          -> [1,1,1,N_A+N_B]: A's then B's (shared by all
 *                                    heads, so "per head" is this one concatenation)
 *   embed.weight, lm_head         -> the mean, or A's or B's (params.embed)
 * Inputs are read through the loader's checks (bdh_weights_open) in any
 * stored type, Q8_0 dequantized; the output is F32. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bdh_merge_params bdh_merge_default_params(void)
{
    bdh_merge_params p;
    memset(&p, 0, sizeof p);
    p.embed = BDH_MERGE_EMBED_MEAN;
    return p;
}

typedef struct merge_input {
    const char *path;
    bdh_safetensors st;
    bdh_weight_views w;
    bdh_config c;
    float *freqs; /* [N]: the file's, or the reference's default */
} merge_input;

/* "'path': reason", keeping a reason that names the path already */
static bdh_status with_path(bdh_status rc, const char *path)
{
    char reason[600];
    snprintf(reason, sizeof reason, "%s", bdh_last_error());
    return strstr(reason, path) ? rc : bdh_fail(rc, "'%s': %s", path, reason);
}

static bdh_status open_input(merge_input *in, const char *path)
{
    memset(in, 0, sizeof *in);
    in->path = path;
    bdh_status rc = bdh_weights_open(path, NULL, &in->st, &in->w, &in->c);
    if (rc != BDH_OK) {
        in->path = NULL;
        return with_path(rc, path);
    }
    const size_t n = (size_t)in->c.n_neurons;
    /* the loader refused unknown tensors by name, and dropped lm_gate */
    if (!(in->freqs = malloc(n * sizeof(float))))
        rc = bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    if (rc != BDH_OK) {
        bdh_safetensors_close(&in->st);
        in->path = NULL;
        return rc;
    }
    const bdh_tensor_view *f = in->w.t[BDH_T_FREQS];
    if (f) bdh_elem_to_f32(f->dtype, f->data, in->freqs, n);
    else bdh_default_freqs(in->freqs, (int)n);
    return BDH_OK;
}

static void close_input(merge_input *in)
{
    if (!in->path) return;
    free(in->freqs);
    bdh_safetensors_close(&in->st);
}

/* The merged configuration, or a refusal naming what differs. */
static bdh_status merged_config(const merge_input *a, const merge_input *b, bdh_config *out)
{
    const struct { const char *name; int32_t va, vb; } same[] = {
        {"n_layer", a->c.n_layer, b->c.n_layer},
        {"n_embd", a->c.n_embd, b->c.n_embd},
        {"n_head", a->c.n_head, b->c.n_head},
        {"vocab_size", a->c.vocab_size, b->c.vocab_size},
    };
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++)
        if (same[i].va != same[i].vb)
            return bdh_fail(BDH_ERR_CONFIG,
                            "%s is %d in '%s' but %d in '%s': a merge needs the same n_layer, n_embd, n_head and "
                            "vocab_size",
                            same[i].name, (int)same[i].va, a->path, (int)same[i].vb, b->path);
    *out = a->c;
    out->n_neurons = a->c.n_neurons + b->c.n_neurons;
    out->mlp_internal_dim_multiplier = a->c.mlp_internal_dim_multiplier + b->c.mlp_internal_dim_multiplier;
    /* The loader checks N = multiplier * n_embd / n_head (integer division,
     * as the reference): a sum of two rounded-down N may not be one. */
    const int64_t n = (int64_t)out->mlp_internal_dim_multiplier * out->n_embd / out->n_head;
    if (n != out->n_neurons)
        return bdh_fail(BDH_ERR_CONFIG,
                        "N = %d + %d = %d neurons per head is not mlp_internal_dim_multiplier (%d + %d) * n_embd / "
                        "n_head = %lld: no configuration describes the merge",
                        (int)a->c.n_neurons, (int)b->c.n_neurons, (int)out->n_neurons, (int)a->c.mlp_internal_dim_multiplier,
                        (int)b->c.mlp_internal_dim_multiplier, (long long)n);
    return BDH_OK;
}

/* Tensor `which` (encoder, encoder_v or decoder) of the merge in its file
 * layout: for each head, A's neuron rows then B's. */
static void merge_neurons(const merge_input *a, const merge_input *b, const bdh_config *m, int which, float *dst, float *row)
{
    bdh_file_rows fa, fb, fo;
    const bdh_weight_views none = {{0}, {0}, NULL};
    bdh_file_rows_init(&fa, &a->w, which, &a->c);
    bdh_file_rows_init(&fb, &b->w, which, &b->c);
    bdh_file_rows_init(&fo, &none, which, m);
    const int64_t na = a->c.n_neurons, nb = b->c.n_neurons, n = m->n_neurons;
    for (int64_t h = 0; h < m->n_head; h++) {
        for (int64_t j = 0; j < na; j++) {
            bdh_file_row_f32(&fa, h * na + j, row);
            bdh_file_row_scatter(&fo, h * n + j, row, dst);
        }
        for (int64_t j = 0; j < nb; j++) {
            bdh_file_row_f32(&fb, h * nb + j, row);
            bdh_file_row_scatter(&fo, h * n + na + j, row, dst);
        }
    }
}

/* embed.weight or lm_head of the merge: per token row, the mean of A's and
 * B's ((a + b) * 0.5, one rounding), or one side's as it is. */
static void merge_tokens(const merge_input *a, const merge_input *b, const bdh_config *m, int which, bdh_merge_embed how,
                         float *dst, float *ra, float *rb)
{
    bdh_file_rows fa, fb, fo;
    const bdh_weight_views none = {{0}, {0}, NULL};
    bdh_file_rows_init(&fa, &a->w, which, &a->c);
    bdh_file_rows_init(&fb, &b->w, which, &b->c);
    bdh_file_rows_init(&fo, &none, which, m);
    for (int64_t r = 0; r < m->vocab_size; r++) {
        if (how != BDH_MERGE_EMBED_B) bdh_file_row_f32(&fa, r, ra);
        if (how != BDH_MERGE_EMBED_A) bdh_file_row_f32(&fb, r, rb);
        if (how == BDH_MERGE_EMBED_MEAN)
            for (int64_t d = 0; d < m->n_embd; d++) ra[d] = (ra[d] + rb[d]) * 0.5f;
        bdh_file_row_scatter(&fo, r, how == BDH_MERGE_EMBED_B ? rb : ra, dst);
    }
}

static const char *embed_name(bdh_merge_embed how)
{
    return how == BDH_MERGE_EMBED_A ? "a" : how == BDH_MERGE_EMBED_B ? "b" : "mean";
}

/* The merged tensors (sorted by name, as the safetensors library writes
 * them) into buf, then the file with the configuration in its metadata. */
static bdh_status write_merge(const merge_input *a, const merge_input *b, const bdh_config *m, bdh_merge_embed how,
                              const char *out_path)
{
    const size_t D = (size_t)m->n_embd, V = (size_t)m->vocab_size, HN = (size_t)m->n_head * (size_t)m->n_neurons;
    const size_t n_tok = V * D, n_neu = HN * D;
    float *buf = malloc((2 * n_tok + 3 * n_neu + (size_t)m->n_neurons + 2 * D) * sizeof(float));
    if (!buf) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory merging into '%s'", out_path);
    float *embed = buf, *lm_head = embed + n_tok, *enc = lm_head + n_tok, *enc_v = enc + n_neu, *dec = enc_v + n_neu;
    float *freqs = dec + n_neu, *ra = freqs + m->n_neurons, *rb = ra + D;
    merge_tokens(a, b, m, BDH_T_EMBED, how, embed, ra, rb);
    merge_tokens(a, b, m, BDH_T_LM_HEAD, how, lm_head, ra, rb);
    merge_neurons(a, b, m, BDH_T_ENCODER, enc, ra);
    merge_neurons(a, b, m, BDH_T_ENCODER_V, enc_v, ra);
    merge_neurons(a, b, m, BDH_T_DECODER, dec, ra);
    memcpy(freqs, a->freqs, (size_t)a->c.n_neurons * sizeof(float));
    memcpy(freqs + a->c.n_neurons, b->freqs, (size_t)b->c.n_neurons * sizeof(float));

    const int64_t H = m->n_head, N = m->n_neurons, Dl = m->n_embd, Vl = m->vocab_size;
    const bdh_out_tensor t[] = {
        {"attn.freqs", BDH_ELEM_F32, 4, {1, 1, 1, N}, freqs, (size_t)N * sizeof(float)},
        {"decoder", BDH_ELEM_F32, 2, {H * N, Dl}, dec, n_neu * sizeof(float)},
        {"embed.weight", BDH_ELEM_F32, 2, {Vl, Dl}, embed, n_tok * sizeof(float)},
        {"encoder", BDH_ELEM_F32, 3, {H, Dl, N}, enc, n_neu * sizeof(float)},
        {"encoder_v", BDH_ELEM_F32, 3, {H, Dl, N}, enc_v, n_neu * sizeof(float)},
        {"lm_head", BDH_ELEM_F32, 2, {Dl, Vl}, lm_head, n_tok * sizeof(float)},
    };
    char v[5][16], parts[48];
    const int32_t cfg[5] = {m->n_layer, m->n_embd, m->n_head, m->mlp_internal_dim_multiplier, m->vocab_size};
    for (int i = 0; i < 5; i++) snprintf(v[i], sizeof v[i], "%d", (int)cfg[i]);
    snprintf(parts, sizeof parts, "%d+%d", (int)a->c.n_neurons, (int)b->c.n_neurons);
    const char *meta[] = {"n_layer", v[0], "n_embd", v[1], "n_head", v[2], "mlp_internal_dim_multiplier", v[3],
                          "vocab_size", v[4], "merged_neurons", parts, "merged_embed", embed_name(how)};
    const bdh_status rc = bdh_safetensors_write(out_path, meta, 7, t, 6);
    free(buf);
    return rc;
}

bdh_status bdh_model_merge(const char *path_a, const char *path_b, const char *out_path, const bdh_merge_params *params)
{
    if (!path_a || !path_b || !out_path) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_model_merge: a path is NULL");
    const bdh_merge_params p = params ? *params : bdh_merge_default_params();
    if ((int)p.embed < BDH_MERGE_EMBED_MEAN || p.embed > BDH_MERGE_EMBED_B)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_model_merge: params.embed = %d is not a bdh_merge_embed", (int)p.embed);
    if (bdh_same_file(out_path, path_a) || bdh_same_file(out_path, path_b))
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_model_merge: the output '%s' is an input", out_path);
    merge_input a, b = {0};
    bdh_config m;
    bdh_status rc = open_input(&a, path_a);
    if (rc != BDH_OK) return rc;
    if ((rc = open_input(&b, path_b)) == BDH_OK && (rc = merged_config(&a, &b, &m)) == BDH_OK)
        rc = write_merge(&a, &b, &m, p.embed, out_path);
    close_input(&b);
    close_input(&a);
    if (rc == BDH_OK) bdh_clear_error();
    return rc;
}
