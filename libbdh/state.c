/* A stream's state: lifecycle, reset, copy (fork), and save/load to bytes. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

bdh_status bdh_state_new(const bdh_model *model, bdh_state **out)
{
    if (!out) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_new: out is NULL");
    *out = NULL;
    if (!model) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_new: model is NULL");
    bdh_state *s = calloc(1, sizeof *s);
    if (!s) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory");
    s->model = model;
    bdh_model_retain(model);
    bdh_status rc = model->backend->state_init(s);
    if (rc != BDH_OK) {
        bdh_state_free(s);
        return rc;
    }
    *out = s;
    return BDH_OK;
}

void bdh_state_free(bdh_state *s)
{
    if (!s) return;
    s->model->backend->state_free(s);
    bdh_observe_free(s->obs);
    bdh_model_release(s->model);
    free(s);
}

bdh_status bdh_state_reset(bdh_state *s)
{
    if (!s) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_reset: state is NULL");
    bdh_status rc = s->model->backend->state_reset(s);
    if (rc != BDH_OK) return rc;
    bdh_observe_reset(s);
    s->position = 0;
    return BDH_OK;
}

bdh_status bdh_state_copy(const bdh_state *src, bdh_state **out)
{
    if (!out) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_copy: out is NULL");
    *out = NULL;
    if (!src) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_copy: src is NULL");
    bdh_state *s;
    bdh_status rc = bdh_state_new(src->model, &s);
    if (rc == BDH_OK) rc = src->model->backend->state_copy(s, src);
    if (rc == BDH_OK) rc = bdh_observe_copy_monitors(s, src);
    if (rc != BDH_OK) {
        bdh_state_free(s);
        return rc;
    }
    s->position = src->position;
    *out = s;
    return BDH_OK;
}

int64_t bdh_state_position(const bdh_state *s) { return s ? s->position : 0; }

bdh_status bdh_state_activity(const bdh_state *s, float *xs_frac, float *pair_frac, float *xy_frac)
{
    if (!s) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_activity: state is NULL");
    if (!s->model->backend->activity)
        return bdh_fail(BDH_ERR_UNSUPPORTED, "bdh_state_activity: counted on the CPU fast path only (this state is on the %s backend)",
                        s->model->backend->name);
    return s->model->backend->activity(s, xs_frac, pair_frac, xy_frac);
}

const bdh_model *bdh_state_model(const bdh_state *s) { return s ? s->model : NULL; }

/* ---- serialisation (docs/format.md, "State blobs"); little-endian hosts. */

#define BLOB_MAGIC "BDHSTATE"
#define BLOB_VERSION 1u
#define BLOB_HEADER 64u
#define CHECKSUM_AT 56u

typedef struct blob_header {
    uint32_t version, header_bytes;
    uint64_t fingerprint;
    int64_t position;
    int32_t n_layer, n_head, n_neurons, n_embd;
    uint64_t payload_bytes, checksum;
} blob_header;

static void put(uint8_t *p, size_t at, const void *v, size_t n) { memcpy(p + at, v, n); }
static void get(const uint8_t *p, size_t at, void *v, size_t n) { memcpy(v, p + at, n); }

static void write_header(uint8_t *p, const blob_header *h)
{
    memcpy(p, BLOB_MAGIC, 8);
    put(p, 8, &h->version, 4);
    put(p, 12, &h->header_bytes, 4);
    put(p, 16, &h->fingerprint, 8);
    put(p, 24, &h->position, 8);
    put(p, 32, &h->n_layer, 4);
    put(p, 36, &h->n_head, 4);
    put(p, 40, &h->n_neurons, 4);
    put(p, 44, &h->n_embd, 4);
    put(p, 48, &h->payload_bytes, 8);
}

static void read_header(const uint8_t *p, blob_header *h)
{
    get(p, 8, &h->version, 4);
    get(p, 12, &h->header_bytes, 4);
    get(p, 16, &h->fingerprint, 8);
    get(p, 24, &h->position, 8);
    get(p, 32, &h->n_layer, 4);
    get(p, 36, &h->n_head, 4);
    get(p, 40, &h->n_neurons, 4);
    get(p, 44, &h->n_embd, 4);
    get(p, 48, &h->payload_bytes, 8);
    get(p, CHECKSUM_AT, &h->checksum, 8);
}

/* XXH3 of the header before the checksum field, then the payload. */
static uint64_t blob_checksum(const uint8_t *blob, const void *payload, size_t payload_bytes)
{
    XXH3_state_t *x = XXH3_createState();
    if (!x) return 0;
    XXH3_64bits_reset(x);
    XXH3_64bits_update(x, blob, CHECKSUM_AT);
    XXH3_64bits_update(x, payload, payload_bytes);
    uint64_t v = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    return v;
}

/* After the header: the state (L*H*N*D floats), then the monitors: u64
 * count, and per monitor i32 layer, i32 i, i32 j, i32 0, f64 sigma. */
#define MONITOR_BYTES 24u

static size_t state_bytes(const bdh_state *s) { return bdh_state_floats(&s->model->cfg) * sizeof(float); }

size_t bdh_state_save_size(const bdh_state *s)
{
    return s ? BLOB_HEADER + state_bytes(s) + 8 + MONITOR_BYTES * bdh_state_n_monitors(s) : 0;
}

static void write_monitors(const bdh_state *s, uint8_t *p)
{
    const double *sigma;
    const int32_t *mon = bdh_observe_monitor_list(s, &sigma);
    const uint64_t n = bdh_state_n_monitors(s);
    const int32_t zero = 0;
    put(p, 0, &n, 8);
    for (uint64_t k = 0; k < n; k++) {
        uint8_t *e = p + 8 + k * MONITOR_BYTES;
        put(e, 0, &mon[3 * k], 12);
        put(e, 12, &zero, 4);
        put(e, 16, &sigma[k], 8);
    }
}

bdh_status bdh_state_save(const bdh_state *s, void *buf, size_t cap, size_t *written)
{
    if (!s || !buf) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_save: state or buf is NULL");
    const size_t need = bdh_state_save_size(s);
    if (cap < need)
        return bdh_fail(BDH_ERR_BUFFER_TOO_SMALL, "bdh_state_save: buffer holds %zu bytes, the state needs %zu", cap, need);
    const bdh_config *c = &s->model->cfg;
    uint8_t *p = buf;
    uint8_t *payload = p + BLOB_HEADER;
    bdh_status rc = s->model->backend->state_read(s, payload);
    if (rc != BDH_OK) return rc;
    write_monitors(s, payload + state_bytes(s));
    blob_header h = {BLOB_VERSION, BLOB_HEADER, s->model->fingerprint, s->position,
                     c->n_layer, c->n_head, c->n_neurons, c->n_embd, need - BLOB_HEADER, 0};
    write_header(p, &h);
    h.checksum = blob_checksum(p, payload, h.payload_bytes);
    put(p, CHECKSUM_AT, &h.checksum, 8);
    if (written) *written = need;
    return BDH_OK;
}

static bdh_status check_blob(const bdh_state *s, const uint8_t *p, size_t len, blob_header *h)
{
    const bdh_config *c = &s->model->cfg;
    if (len < BLOB_HEADER || memcmp(p, BLOB_MAGIC, 8) != 0)
        return bdh_fail(BDH_ERR_FORMAT, "bdh_state_load: not a libbdh state (bad magic or shorter than its header)");
    read_header(p, h);
    if (h->version != BLOB_VERSION || h->header_bytes != BLOB_HEADER)
        return bdh_fail(BDH_ERR_FORMAT, "bdh_state_load: state format version %u is not supported (this library reads %u)",
                        h->version, BLOB_VERSION);
    if (h->payload_bytes != len - BLOB_HEADER)
        return bdh_fail(BDH_ERR_FORMAT, "bdh_state_load: blob is %zu bytes but its header announces %llu: truncated or padded",
                        len, (unsigned long long)(h->payload_bytes + BLOB_HEADER));
    if (blob_checksum(p, p + BLOB_HEADER, (size_t)h->payload_bytes) != h->checksum)
        return bdh_fail(BDH_ERR_FORMAT, "bdh_state_load: checksum mismatch: the blob is damaged");
    if (h->fingerprint != s->model->fingerprint || h->n_layer != c->n_layer || h->n_head != c->n_head ||
        h->n_neurons != c->n_neurons || h->n_embd != c->n_embd)
        return bdh_fail(BDH_ERR_MODEL_MISMATCH, "bdh_state_load: the state was saved from another model (fingerprint %016llx, this model %016llx)",
                        (unsigned long long)h->fingerprint, (unsigned long long)s->model->fingerprint);
    if (h->position < 0 || h->position > BDH_MAX_POSITION)
        return bdh_fail(BDH_ERR_FORMAT, "bdh_state_load: position %lld is outside [0, 2^53]", (long long)h->position);
    uint64_t n_mon = 0;
    if (h->payload_bytes >= state_bytes(s) + 8) get(p + BLOB_HEADER + state_bytes(s), 0, &n_mon, 8);
    if (h->payload_bytes < state_bytes(s) + 8 || n_mon > (h->payload_bytes - state_bytes(s) - 8) / MONITOR_BYTES ||
        h->payload_bytes != state_bytes(s) + 8 + n_mon * MONITOR_BYTES)
        return bdh_fail(BDH_ERR_FORMAT, "bdh_state_load: the monitor section does not match the blob's length");
    return BDH_OK;
}

/* The first non-finite float of n at p (maybe unaligned), or n. */
static size_t first_non_finite(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, p + 4 * i, 4);
        if ((u & 0x7f800000u) == 0x7f800000u) return i;
    }
    return n;
}

/* The blob's monitors, unpacked and checked against the model. */
static bdh_status read_monitors(const bdh_state *s, const uint8_t *sec, size_t n, int32_t *mon, double *sigma)
{
    const bdh_config *c = &s->model->cfg;
    const int32_t HN = c->n_head * c->n_neurons;
    for (size_t k = 0; k < n; k++) {
        const uint8_t *e = sec + 8 + k * MONITOR_BYTES;
        get(e, 0, &mon[3 * k], 12);
        get(e, 16, &sigma[k], 8);
        const int32_t *t = &mon[3 * k];
        if (t[0] < 1 || t[0] >= c->n_layer || t[1] < 0 || t[1] >= HN || t[2] < 0 || t[2] >= HN)
            return bdh_fail(BDH_ERR_FORMAT, "bdh_state_load: monitor %zu (%d, %d, %d) does not fit this model", k, t[0], t[1], t[2]);
        if (!(sigma[k] - sigma[k] == 0.0))
            return bdh_fail(BDH_ERR_FORMAT, "bdh_state_load: monitor %zu has a non-finite sigma", k);
    }
    return BDH_OK;
}

bdh_status bdh_state_load(bdh_state *s, const void *buf, size_t len)
{
    if (!s || !buf) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_load: state or buf is NULL");
    blob_header h = {0};
    bdh_status rc = check_blob(s, buf, len, &h);
    if (rc != BDH_OK) return rc;
    const uint8_t *payload = (const uint8_t *)buf + BLOB_HEADER, *sec = payload + state_bytes(s);
    const size_t bad = first_non_finite(payload, bdh_state_floats(&s->model->cfg));
    if (bad < bdh_state_floats(&s->model->cfg))
        return bdh_fail(BDH_ERR_FORMAT, "bdh_state_load: the state has a non-finite value at float %zu", bad);
    uint64_t n_mon;
    get(sec, 0, &n_mon, 8);
    int32_t *mon = malloc(3 * sizeof(int32_t) * n_mon + 1);
    double *sigma = malloc(sizeof(double) * n_mon + 1);
    if (!mon || !sigma) rc = bdh_fail(BDH_ERR_OUT_OF_MEMORY, "bdh_state_load: out of memory");
    if (rc == BDH_OK) rc = read_monitors(s, sec, (size_t)n_mon, mon, sigma);
    if (rc == BDH_OK) rc = bdh_observe_reserve(s, (size_t)n_mon); /* nothing visible changes before this */
    if (rc == BDH_OK) rc = s->model->backend->state_write(s, payload); /* payload may be unaligned */
    if (rc == BDH_OK) {
        bdh_observe_set_monitors(s, (size_t)n_mon, mon, sigma); /* reserved: cannot fail */
        s->position = h.position;
    }
    free(mon);
    free(sigma);
    return rc;
}
