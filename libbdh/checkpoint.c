/* Checkpoint layouts: a file or a save_pretrained directory, tensor names of
 * every project that writes BDH checkpoints, and the configuration from the
 * metadata, config.json and the load parameters (checkpoint.h). */
#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Largest value accepted for any configuration field: far beyond real
 * models, small enough that products of a few fields cannot overflow. */
#define MAX_DIM (1 << 24)
#define MAX_LAYERS 4096
/* A config.json this large is not a model configuration. */
#define MAX_CONFIG_JSON (1 << 20)

/* Wrappers' prefixes: Hugging Face-style wrappers (model.), bdh-transformers'
 * BDHForCausalLM (backbone.), DataParallel/DDP (module.), torch.compile
 * (_orig_mod.), in any combination. */
static const char *const prefixes[] = {"model.", "backbone.", "module.", "_orig_mod."};
#define PREFIX_LIST "model., backbone., module., _orig_mod."
/* Tensors a BDH checkpoint may carry that no forward pass reads. */
static const char *const harmless[] = {"lm_gate"};

static const char *strip_prefixes(const char *name)
{
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        const size_t n = strlen(prefixes[i]);
        if (strncmp(name, prefixes[i], n) == 0) {
            name += n;
            i = (size_t)-1; /* again from the first prefix */
        }
    }
    return name;
}

/* ------------------------------------------------------------ the path */

static bool is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* dir + "/" + name, or NULL (out of memory). */
static char *join(const char *dir, size_t dir_len, const char *name)
{
    char *s = malloc(dir_len + strlen(name) + 2);
    if (s) sprintf(s, "%.*s/%s", (int)dir_len, dir, name);
    return s;
}

/* The safetensors file and the config.json to read (NULL: none there). */
static bdh_status resolve_paths(const char *path, char **file, char **config)
{
    *file = *config = NULL;
    if (is_dir(path)) {
        *file = join(path, strlen(path), "model.safetensors");
        *config = join(path, strlen(path), "config.json");
        if (!*file || !*config) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
        if (!exists(*file)) {
            char *index = join(path, strlen(path), "model.safetensors.index.json");
            const bool sharded = index && exists(index);
            free(index);
            if (sharded)
                return bdh_fail(BDH_ERR_UNSUPPORTED, "'%s' holds a sharded checkpoint (model.safetensors.index.json); "
                                "libbdh reads one model.safetensors (save it with a larger max_shard_size)", path);
            return bdh_fail(BDH_ERR_IO, "'%s' is a directory without model.safetensors (a save_pretrained checkpoint "
                            "holds config.json and model.safetensors)", path);
        }
    } else {
        const char *slash = strrchr(path, '/');
        *file = strdup(path);
        *config = slash ? join(path, (size_t)(slash - path), "config.json") : strdup("config.json");
        if (!*file || !*config) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    }
    if (!exists(*config)) {
        free(*config);
        *config = NULL;
    }
    return BDH_OK;
}

/* ------------------------------------------------------- tensor names */

/* The tensor names present, for messages: "a, b, c" (cut at cap). */
static void list_names(const bdh_safetensors *st, char *buf, size_t cap)
{
    size_t at = 0;
    buf[0] = '\0';
    for (int i = 0; i < st->n_tensors && at + 1 < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%s", i ? ", " : "", st->tensors[i].name);
    if (at >= cap && cap > 4) strcpy(buf + cap - 4, "...");
    if (st->n_tensors == 0) snprintf(buf, cap, "none");
}

/* Which of the reference's tensors a stripped name is; -1 none. *linear:
 * the name is nn.Linear's lm_head.weight ([V][D]). */
static int canonical_index(const char *name, bool *linear)
{
    *linear = false;
    if (strcmp(name, "lm_head.weight") == 0) {
        *linear = true;
        return BDH_T_LM_HEAD;
    }
    for (int i = 0; i < BDH_T_COUNT; i++)
        if (strcmp(name, bdh_tensor_name(i)) == 0) return i;
    return -1;
}

static bool is_harmless(const char *name)
{
    for (size_t i = 0; i < sizeof harmless / sizeof harmless[0]; i++)
        if (strcmp(name, harmless[i]) == 0) return true;
    return false;
}

/* A Q8_0 file's scales of an I8 tensor (quant.c checks them). */
static bool is_scale(const char *name)
{
    const size_t n = strlen(name);
    if (n < 7 || strcmp(name + n - 6, ".scale") != 0) return false;
    for (int i = 0; i < BDH_T_COUNT; i++)
        if (bdh_quantizable(i) && strlen(bdh_tensor_name(i)) == n - 6 && strncmp(name, bdh_tensor_name(i), n - 6) == 0)
            return true;
    return false;
}

/* Point t[] at the file's tensors by their names without prefixes; refuse a
 * tensor found twice and any tensor that is not a BDH one. */
static bdh_status map_names(const bdh_safetensors *st, const bdh_tensor_view **t, bool *linear_head)
{
    char unknown[300] = "";
    size_t at = 0;
    int n_unknown = 0;
    *linear_head = false;
    for (int i = 0; i < st->n_tensors; i++) {
        const bdh_tensor_view *v = &st->tensors[i];
        const char *name = strip_prefixes(v->name);
        bool linear;
        const int which = canonical_index(name, &linear);
        if (which < 0) {
            if (is_harmless(name) || is_scale(name)) continue;
            if (at + 1 < sizeof unknown)
                at += (size_t)snprintf(unknown + at, sizeof unknown - at, "%s%s", n_unknown ? ", " : "", v->name);
            n_unknown++;
            continue;
        }
        if (t[which])
            return bdh_fail(BDH_ERR_FORMAT, "tensors %s and %s are both %s", t[which]->name, v->name, bdh_tensor_name(which));
        t[which] = v;
        if (which == BDH_T_LM_HEAD) *linear_head = linear;
    }
    if (n_unknown)
        return bdh_fail(BDH_ERR_FORMAT, "the file has %d tensor%s that no BDH model has: %s (a BDH checkpoint has embed.weight, "
                        "encoder, encoder_v, decoder, lm_head or lm_head.weight, attn.freqs, optionally behind the prefixes "
                        PREFIX_LIST "; lm_gate is ignored)", n_unknown, n_unknown > 1 ? "s" : "", unknown);
    return BDH_OK;
}

/* The reference's lm_head [D][V] as a copy of a [V][D] tensor transposed
 * (nn.Linear's lm_head.weight, or embed.weight when tied), kept in the
 * file's element type so that the fingerprint is the converted file's. The
 * copy, not a strided view: every backend (CUDA uploads lm_head as stored),
 * the reference backend's held layout and bdh_model_quantize read lm_head as
 * [D][V], and it is a small tensor. */
static bdh_status transposed_head(bdh_safetensors *st, const bdh_tensor_view *src, const bdh_tensor_view **out)
{
    if (src->n_dims != 2)
        return bdh_fail(BDH_ERR_CONFIG, "tensor %s has %d dimensions, expected 2 ([vocab_size, n_embd])", src->name, src->n_dims);
    const size_t V = (size_t)src->shape[0], D = (size_t)src->shape[1], es = bdh_elem_size(src->dtype);
    uint8_t *dst = malloc(src->nbytes ? src->nbytes : 1);
    if (!dst) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory transposing %s", src->name);
    const uint8_t *s = src->data;
    for (size_t v = 0; v < V; v++)
        for (size_t d = 0; d < D; d++) memcpy(dst + (d * V + v) * es, s + (v * D + d) * es, es);
    st->owned = dst;
    st->owned_view = (bdh_tensor_view){.name = st->owned_name, .dtype = src->dtype, .n_dims = 2, .shape = {(int64_t)D, (int64_t)V},
                                       .data = dst, .nbytes = src->nbytes};
    snprintf(st->owned_name, sizeof st->owned_name, "lm_head");
    *out = &st->owned_view;
    return BDH_OK;
}

/* ------------------------------------------------------ configuration */

/* The fields a source may give, in bdh_config's terms; -1 = not given. */
enum { F_LAYER, F_EMBD, F_HEAD, F_VOCAB, F_MULT, F_NEURONS, F_COUNT };
static const char *const field_names[F_COUNT] = {"n_layer", "n_embd", "n_head", "vocab_size", "mlp_internal_dim_multiplier",
                                                 "n_neurons"};
/* Hugging Face's names (bdh-transformers' BDHConfig); NULL: the same. */
static const char *const hf_names[F_COUNT] = {"num_hidden_layers", "hidden_size", "num_attention_heads", NULL, NULL, NULL};

typedef struct {
    const char *name; /* "the metadata", "config.json", "the load parameters" */
    long v[F_COUNT];
    bool tie_word_embeddings;
} config_source;

static void source_init(config_source *s, const char *name)
{
    s->name = name;
    for (int f = 0; f < F_COUNT; f++) s->v[f] = -1;
    s->tie_word_embeddings = false;
}

static long field_max(int f) { return f == F_LAYER ? MAX_LAYERS : MAX_DIM; }

/* A whole decimal integer in [1, max]. */
static bool parse_int(const char *s, long max, long *out)
{
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    const long v = strtol(s, &end, 10);
    if (errno || *end != '\0' || v < 1 || v > max) return false;
    *out = v;
    return true;
}

static bdh_status from_metadata(const bdh_safetensors *st, config_source *s)
{
    source_init(s, "the metadata");
    for (int f = 0; f < F_NEURONS; f++) {
        const char *text = bdh_safetensors_meta(st, field_names[f]);
        if (text && !parse_int(text, field_max(f), &s->v[f]))
            return bdh_fail(BDH_ERR_CONFIG, "metadata %s = \"%s\" is not an integer in 1..%ld", field_names[f], text, field_max(f));
    }
    return BDH_OK;
}

/* One field of config.json under either name; both present must agree. */
static bdh_status json_field(const cJSON *root, int f, const char *path, long *out)
{
    const char *names[2] = {field_names[f], hf_names[f]};
    for (int k = 0; k < 2; k++) {
        const cJSON *item = names[k] ? cJSON_GetObjectItemCaseSensitive(root, names[k]) : NULL;
        if (!item || cJSON_IsNull(item)) continue;
        const double d = cJSON_IsNumber(item) ? item->valuedouble : NAN;
        if (!(d >= 1 && d <= (double)field_max(f)) || floor(d) != d)
            return bdh_fail(BDH_ERR_CONFIG, "'%s': %s is not an integer in 1..%ld", path, names[k], field_max(f));
        if (*out >= 0 && *out != (long)d)
            return bdh_fail(BDH_ERR_CONFIG, "'%s': %s = %ld but %s = %ld", path, names[0], *out, names[k], (long)d);
        *out = (long)d;
    }
    return BDH_OK;
}

static bdh_status from_config_json(const char *path, config_source *s)
{
    source_init(s, "config.json");
    FILE *fp = fopen(path, "rb");
    if (!fp) return bdh_fail(BDH_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    char *text = malloc(MAX_CONFIG_JSON + 1);
    const size_t n = text ? fread(text, 1, MAX_CONFIG_JSON + 1, fp) : 0;
    const bool read_error = ferror(fp);
    fclose(fp);
    if (!text) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory reading '%s'", path);
    bdh_status rc = BDH_OK;
    cJSON *root = NULL;
    if (read_error) rc = bdh_fail(BDH_ERR_IO, "cannot read '%s'", path);
    else if (n > MAX_CONFIG_JSON) rc = bdh_fail(BDH_ERR_CONFIG, "'%s' is over %d bytes: not a model configuration", path, MAX_CONFIG_JSON);
    else if (!(root = cJSON_ParseWithLength(text, n)) || !cJSON_IsObject(root))
        rc = bdh_fail(BDH_ERR_CONFIG, "'%s' is not a JSON object", path);
    for (int f = 0; f < F_NEURONS && rc == BDH_OK; f++) rc = json_field(root, f, path, &s->v[f]);
    if (rc == BDH_OK) {
        /* Hugging Face's PretrainedConfig ties by default */
        const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
        s->tie_word_embeddings = !cJSON_IsFalse(tie);
    }
    cJSON_Delete(root);
    free(text);
    return rc;
}

static bdh_status from_override(const bdh_config *o, config_source *s)
{
    source_init(s, "the load parameters");
    const int32_t v[F_COUNT] = {o->n_layer, o->n_embd, o->n_head, o->vocab_size, o->mlp_internal_dim_multiplier, o->n_neurons};
    for (int f = 0; f < F_COUNT; f++) {
        if (v[f] < 0 || v[f] > field_max(f))
            return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "params.config->%s = %d is not in 0..%ld (0: not given)", field_names[f],
                            (int)v[f], field_max(f));
        if (v[f] > 0) s->v[f] = v[f];
    }
    return BDH_OK;
}

/* Every value given by the sources agrees with the others and with the
 * shapes (c: D, H, N, V from them); n_layer is given by one of them. */
static bdh_status merge_sources(const config_source *src, int n, bdh_config *c)
{
    long v[F_COUNT];
    const char *from[F_COUNT];
    for (int f = 0; f < F_COUNT; f++) v[f] = -1, from[f] = NULL;
    for (int i = 0; i < n; i++)
        for (int f = 0; f < F_COUNT; f++) {
            if (src[i].v[f] < 0) continue;
            if (from[f] && v[f] != src[i].v[f])
                return bdh_fail(BDH_ERR_CONFIG, "%s says %s = %ld but %s says %ld", from[f], field_names[f], v[f], src[i].name,
                                src[i].v[f]);
            v[f] = src[i].v[f], from[f] = src[i].name;
        }
    const long shapes[F_COUNT] = {-1, c->n_embd, c->n_head, c->vocab_size, -1, c->n_neurons};
    for (int f = 0; f < F_COUNT; f++)
        if (shapes[f] >= 0 && from[f] && v[f] != shapes[f])
            return bdh_fail(BDH_ERR_CONFIG, "%s says %s = %ld but the tensor shapes give %ld", from[f], field_names[f], v[f], shapes[f]);
    if (!from[F_LAYER])
        return bdh_fail(BDH_ERR_CONFIG, "no n_layer in the metadata, in a config.json beside the file, or in the load parameters "
                        "(the layers share weights, so the shapes cannot tell it)");
    c->n_layer = (int32_t)v[F_LAYER];
    /* The reference: N = mlp_internal_dim_multiplier * n_embd // n_head. */
    if (from[F_MULT]) {
        const long long n_from_mult = (long long)v[F_MULT] * c->n_embd / c->n_head;
        if (n_from_mult != c->n_neurons)
            return bdh_fail(BDH_ERR_CONFIG, "%s says mlp_internal_dim_multiplier = %ld, giving N = %lld, but encoder has N = %d",
                            from[F_MULT], v[F_MULT], n_from_mult, c->n_neurons);
        c->mlp_internal_dim_multiplier = (int32_t)v[F_MULT];
    } else {
        c->mlp_internal_dim_multiplier = (int32_t)((int64_t)c->n_neurons * c->n_head / c->n_embd);
    }
    return BDH_OK;
}

/* ------------------------------------------------------------ shapes */

static bdh_status check_dims(const bdh_tensor_view *t, int which, int n_dims)
{
    if (t->n_dims != n_dims)
        return bdh_fail(BDH_ERR_CONFIG, "tensor %s has %d dimensions, expected %d", t->name, t->n_dims, n_dims);
    for (int i = 0; i < n_dims; i++)
        if (t->shape[i] < 1 || t->shape[i] > MAX_DIM)
            return bdh_fail(BDH_ERR_CONFIG, "tensor %s has dimension %d of size %lld (expected 1..%d)", t->name, i,
                            (long long)t->shape[i], MAX_DIM);
    if (!bdh_elem_is_float(t->dtype) && !(t->dtype == BDH_ELEM_I8 && bdh_quantizable(which)))
        return bdh_fail(BDH_ERR_CONFIG, "tensor %s has dtype %s; weights must be F32, F16 or BF16%s", t->name,
                        bdh_elem_name(t->dtype), bdh_quantizable(which) ? " (or I8 with Q8_0 scales)" : "");
    return BDH_OK;
}

static bdh_status shape_mismatch(int which, const char *expect)
{
    return bdh_fail(BDH_ERR_CONFIG, "tensor %s does not have the expected shape %s", bdh_tensor_name(which), expect);
}

/* Read D, H, N, V from the shapes and check that the tensors agree. */
static bdh_status config_from_shapes(const bdh_tensor_view *const *t, bdh_config *c)
{
    static const int rank[BDH_T_COUNT] = {2, 3, 3, 2, 2, 0};
    bdh_status rc;
    for (int i = 0; i < BDH_T_FREQS; i++)
        if ((rc = check_dims(t[i], i, rank[i])) != BDH_OK) return rc;
    c->vocab_size = (int32_t)t[BDH_T_EMBED]->shape[0];
    c->n_embd = (int32_t)t[BDH_T_EMBED]->shape[1];
    c->n_head = (int32_t)t[BDH_T_ENCODER]->shape[0];
    c->n_neurons = (int32_t)t[BDH_T_ENCODER]->shape[2];
    const int64_t D = c->n_embd, H = c->n_head, N = c->n_neurons, V = c->vocab_size;
    const int64_t *e = t[BDH_T_ENCODER]->shape, *ev = t[BDH_T_ENCODER_V]->shape;
    if (e[1] != D) return shape_mismatch(BDH_T_ENCODER, "[n_head, n_embd, N] with n_embd from embed.weight");
    if (ev[0] != H || ev[1] != D || ev[2] != N) return shape_mismatch(BDH_T_ENCODER_V, "equal to encoder's");
    if (t[BDH_T_DECODER]->shape[0] != H * N || t[BDH_T_DECODER]->shape[1] != D)
        return shape_mismatch(BDH_T_DECODER, "[n_head*N, n_embd]");
    if (t[BDH_T_LM_HEAD]->shape[0] != D || t[BDH_T_LM_HEAD]->shape[1] != V)
        return shape_mismatch(BDH_T_LM_HEAD, "[n_embd, vocab_size] (or lm_head.weight [vocab_size, n_embd])");
    if (N % 2 != 0) return bdh_fail(BDH_ERR_CONFIG, "N = %lld neurons per head is odd; RoPE needs pairs", (long long)N);
    const bdh_tensor_view *f = t[BDH_T_FREQS];
    if (f) {
        int64_t numel = 1;
        for (int i = 0; i < f->n_dims; i++) numel *= f->shape[i];
        if (numel != N || f->n_dims < 1 || f->shape[f->n_dims - 1] != N) return shape_mismatch(BDH_T_FREQS, "[1, 1, 1, N]");
        if (!bdh_elem_is_float(f->dtype))
            return bdh_fail(BDH_ERR_CONFIG, "tensor attn.freqs has dtype %s; expected F32", bdh_elem_name(f->dtype));
    }
    return BDH_OK;
}

/* ------------------------------------------------------------ opening */

/* Every tensor a forward pass needs is there (lm_head maybe tied). */
static bdh_status require_tensors(bdh_safetensors *st, bdh_weight_views *w, bool linear_head, const config_source *json)
{
    /* (every other tensor is checked first: a tied head is no reason to skip them) */
    const bool tied = !w->t[BDH_T_LM_HEAD] && w->t[BDH_T_EMBED] && json && json->tie_word_embeddings;
    for (int i = 0; i < BDH_T_FREQS; i++)
        if (!w->t[i] && !(i == BDH_T_LM_HEAD && tied)) {
            char names[240];
            list_names(st, names, sizeof names);
            return bdh_fail(BDH_ERR_CONFIG, "the file has no tensor named %s%s (prefixes " PREFIX_LIST " are removed); it has: %s",
                            bdh_tensor_name(i), i == BDH_T_LM_HEAD ? " or lm_head.weight (nor tie_word_embeddings in a config.json)" : "",
                            names);
        }
    if (tied) return transposed_head(st, w->t[BDH_T_EMBED], &w->t[BDH_T_LM_HEAD]);
    if (linear_head) return transposed_head(st, w->t[BDH_T_LM_HEAD], &w->t[BDH_T_LM_HEAD]);
    return BDH_OK;
}

static bdh_status open_mapped(const char *file, const char *config, const bdh_config *override, bdh_safetensors *st,
                              bdh_weight_views *w, bdh_config *c)
{
    config_source src[3];
    int n = 0;
    bool linear_head;
    bdh_status rc = bdh_safetensors_open(file, st);
    if (rc != BDH_OK) return rc;
    w->file = st;
    if ((rc = map_names(st, w->t, &linear_head)) != BDH_OK) return rc;
    if ((rc = from_metadata(st, &src[n++])) != BDH_OK) return rc;
    const config_source *json = NULL;
    if (config) {
        if ((rc = from_config_json(config, &src[n])) != BDH_OK) return rc;
        json = &src[n++];
    }
    if (override && (rc = from_override(override, &src[n++])) != BDH_OK) return rc;
    if ((rc = require_tensors(st, w, linear_head, json)) != BDH_OK) return rc;
    if ((rc = config_from_shapes(w->t, c)) != BDH_OK) return rc;
    return merge_sources(src, n, c);
}

bdh_status bdh_checkpoint_open(const char *path, const bdh_config *override, bdh_safetensors *st, bdh_weight_views *w,
                               bdh_config *c)
{
    memset(st, 0, sizeof *st);
    memset(w, 0, sizeof *w);
    memset(c, 0, sizeof *c);
    char *file, *config;
    bdh_status rc = resolve_paths(path, &file, &config);
    if (rc == BDH_OK) rc = open_mapped(file, config, override, st, w, c);
    if (rc != BDH_OK) bdh_safetensors_close(st);
    free(file);
    free(config);
    return rc;
}
