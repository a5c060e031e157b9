/* Looking inside a state: activation observers, Hebbian co-activation
 * monitors, and readout of the state's rows. The forward paths hand every
 * finished layer to bdh_observe_layer() as dense xs and xy (H*N each), but
 * only while something is watching (bdh_observing()); otherwise nothing here
 * runs. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct bdh_observe {
    bdh_observer fn;
    void *user;
    /* the callback's lists, per head: indices and values of xs > 0, xy > 0 */
    int32_t *x_count, *y_count;        /* [H] */
    int32_t *x_idx, *y_idx;            /* [H*N] */
    float *x_val, *y_val;              /* [H*N] */
    const int32_t **x_index, **y_index; /* [H] pointers into the above */
    const float **x_value, **y_value;  /* [H] */
    /* monitors */
    float *xy_below;                   /* [H*N] xy of the layer below */
    size_t n_mon, cap;
    int32_t *mon;                      /* [n_mon][3]: layer, i, j */
    double *sigma;                     /* [n_mon] */
};

static bdh_status get_observe(bdh_state *s, bdh_observe **out)
{
    if (!s->obs) {
        const size_t H = (size_t)s->model->cfg.n_head, HN = H * (size_t)s->model->cfg.n_neurons;
        bdh_observe *o = calloc(1, sizeof *o);
        if (o) {
            o->x_count = calloc(2 * H, sizeof(int32_t));
            o->x_idx = calloc(2 * HN, sizeof(int32_t));
            o->x_val = calloc(3 * HN, sizeof(float));
            o->x_index = calloc(2 * H, sizeof(int32_t *));
            o->x_value = calloc(2 * H, sizeof(float *));
        }
        if (!o || !o->x_count || !o->x_idx || !o->x_val || !o->x_index || !o->x_value) {
            bdh_observe_free(o);
            return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory allocating observer buffers");
        }
        o->y_count = o->x_count + H;
        o->y_idx = o->x_idx + HN;
        o->y_val = o->x_val + HN;
        o->xy_below = o->x_val + 2 * HN;
        o->y_index = o->x_index + H;
        o->y_value = o->x_value + H;
        s->obs = o;
    }
    *out = s->obs;
    return BDH_OK;
}

void bdh_observe_free(bdh_observe *o)
{
    if (!o) return;
    free(o->x_count);
    free(o->x_idx);
    free(o->x_val);
    free(o->x_index);
    free(o->x_value);
    free(o->mon);
    free(o->sigma);
    free(o);
}

bool bdh_observing(const bdh_state *s) { return s->obs && (s->obs->fn || s->obs->n_mon); }

/* Observers and monitors need a backend whose steps report their layers. */
static bdh_status observable(const bdh_state *s, const char *fn)
{
    if (!s) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "%s: state is NULL", fn);
    if (!s->model->backend->observes)
        return bdh_fail(BDH_ERR_UNSUPPORTED, "%s: available on the CPU path only (this state is on the %s backend)", fn,
                        s->model->backend->name);
    return BDH_OK;
}

bdh_status bdh_state_set_observer(bdh_state *s, bdh_observer fn, void *user)
{
    bdh_status rc = observable(s, "bdh_state_set_observer");
    bdh_observe *o = NULL;
    if (rc == BDH_OK) rc = get_observe(s, &o);
    if (rc != BDH_OK) return rc;
    o->fn = fn;
    o->user = user;
    return BDH_OK;
}

/* One list per head of the entries of v [H*N] that are > 0. */
static float gather(const float *v, int H, int N, int32_t *count, int32_t *idx, float *val, const int32_t **index,
                    const float **value)
{
    int64_t total = 0;
    for (int h = 0; h < H; h++) {
        const float *vh = v + (size_t)h * N;
        int32_t *ih = idx + (size_t)h * N;
        float *xh = val + (size_t)h * N;
        int n = 0;
        for (int j = 0; j < N; j++)
            if (vh[j] > 0.0f) {
                ih[n] = j;
                xh[n++] = vh[j];
            }
        count[h] = n;
        index[h] = ih;
        value[h] = xh;
        total += n;
    }
    return (float)((double)total / ((double)H * N));
}

static void update_monitors(bdh_observe *o, int layer, const float *xs, const float *xy, size_t HN)
{
    for (size_t k = 0; k < o->n_mon; k++)
        if (o->mon[3 * k] == layer) o->sigma[k] += (double)o->xy_below[o->mon[3 * k + 1]] * xs[o->mon[3 * k + 2]];
    memcpy(o->xy_below, xy, HN * sizeof(float));
}

void bdh_observe_layer(bdh_state *s, int layer, int32_t token, const float *xs, const float *xy)
{
    bdh_observe *o = s->obs;
    const bdh_config *c = &s->model->cfg;
    const int H = c->n_head, N = c->n_neurons;
    if (o->n_mon) update_monitors(o, layer, xs, xy, (size_t)H * N);
    if (!o->fn) return;
    bdh_layer_activation a = {s->position, token, layer, H, N, o->x_count, o->x_index, o->x_value,
                              o->y_count, o->y_index, o->y_value, 0.0f, 0.0f};
    a.x_density = gather(xs, H, N, o->x_count, o->x_idx, o->x_val, o->x_index, o->x_value);
    a.y_density = gather(xy, H, N, o->y_count, o->y_idx, o->y_val, o->y_index, o->y_value);
    o->fn(&a, o->user);
}

/* ---- monitors */

/* A call that made the state's observation buffers and then failed takes
 * them away again: the state is left as it was. */
static void drop_if_new(bdh_state *s, bool had)
{
    if (had || !s->obs) return;
    bdh_observe_free(s->obs);
    s->obs = NULL;
}

/* Both arrays or neither: a failure leaves the monitors as they were. */
static bdh_status grow_monitors(bdh_observe *o, size_t want)
{
    if (want <= o->cap) return BDH_OK;
    size_t cap = o->cap ? 2 * o->cap : 16;
    while (cap < want) cap *= 2;
    int32_t *mon = malloc(cap * 3 * sizeof(int32_t));
    double *sigma = malloc(cap * sizeof(double));
    if (!mon || !sigma) {
        free(mon);
        free(sigma);
        return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory adding a monitor");
    }
    if (o->n_mon) {
        memcpy(mon, o->mon, o->n_mon * 3 * sizeof(int32_t));
        memcpy(sigma, o->sigma, o->n_mon * sizeof(double));
    }
    free(o->mon);
    free(o->sigma);
    o->mon = mon;
    o->sigma = sigma;
    o->cap = cap;
    return BDH_OK;
}

bdh_status bdh_state_add_monitor(bdh_state *s, int32_t layer, int32_t i, int32_t j, size_t *index)
{
    bdh_status rc = observable(s, "bdh_state_add_monitor");
    if (rc != BDH_OK) return rc;
    const bdh_config *c = &s->model->cfg;
    const int32_t HN = c->n_head * c->n_neurons;
    if (layer == 0)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_add_monitor: layer 0 has no layer below (monitors need 1 <= layer < %d)", c->n_layer);
    if (layer < 1 || layer >= c->n_layer)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_add_monitor: layer %d is outside [1, %d)", layer, c->n_layer);
    if (i < 0 || i >= HN || j < 0 || j >= HN)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_add_monitor: neuron (%d, %d) is outside [0, %d)", i, j, HN);
    bdh_observe *o = NULL;
    const bool had = s->obs != NULL;
    if ((rc = get_observe(s, &o)) != BDH_OK) return rc;
    if ((rc = grow_monitors(o, o->n_mon + 1)) != BDH_OK) return drop_if_new(s, had), rc;
    o->mon[3 * o->n_mon] = layer;
    o->mon[3 * o->n_mon + 1] = i;
    o->mon[3 * o->n_mon + 2] = j;
    o->sigma[o->n_mon] = 0.0;
    if (index) *index = o->n_mon;
    o->n_mon++;
    return BDH_OK;
}

size_t bdh_state_n_monitors(const bdh_state *s) { return s && s->obs ? s->obs->n_mon : 0; }

bdh_status bdh_state_monitor(const bdh_state *s, size_t index, int32_t *layer, int32_t *i, int32_t *j, double *sigma)
{
    if (!s) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_monitor: state is NULL");
    if (index >= bdh_state_n_monitors(s))
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_monitor: index %zu, but the state has %zu monitors", index,
                        bdh_state_n_monitors(s));
    const bdh_observe *o = s->obs;
    if (layer) *layer = o->mon[3 * index];
    if (i) *i = o->mon[3 * index + 1];
    if (j) *j = o->mon[3 * index + 2];
    if (sigma) *sigma = o->sigma[index];
    return BDH_OK;
}

bdh_status bdh_state_clear_monitors(bdh_state *s)
{
    if (!s) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_clear_monitors: state is NULL");
    if (s->obs) s->obs->n_mon = 0;
    return BDH_OK;
}

void bdh_observe_reset(bdh_state *s)
{
    if (!s->obs) return;
    memset(s->obs->sigma, 0, s->obs->n_mon * sizeof(double));
}

bdh_status bdh_observe_copy_monitors(bdh_state *dst, const bdh_state *src)
{
    if (!src->obs || !src->obs->n_mon) return BDH_OK;
    return bdh_observe_set_monitors(dst, src->obs->n_mon, src->obs->mon, src->obs->sigma);
}

bdh_status bdh_observe_reserve(bdh_state *s, size_t n)
{
    bdh_observe *o = NULL;
    if (n == 0) return BDH_OK;
    const bool had = s->obs != NULL;
    bdh_status rc = get_observe(s, &o);
    if (rc == BDH_OK && (rc = grow_monitors(o, n)) != BDH_OK) drop_if_new(s, had);
    return rc;
}

bdh_status bdh_observe_set_monitors(bdh_state *s, size_t n, const int32_t *mon, const double *sigma)
{
    bdh_status rc = bdh_observe_reserve(s, n);
    if (rc != BDH_OK) return rc;
    bdh_observe *o = s->obs;
    if (!o) return BDH_OK; /* n == 0 and nothing to clear */
    memcpy(o->mon, mon, n * 3 * sizeof(int32_t));
    memcpy(o->sigma, sigma, n * sizeof(double));
    o->n_mon = n;
    return BDH_OK;
}

const int32_t *bdh_observe_monitor_list(const bdh_state *s, const double **sigma)
{
    *sigma = s->obs ? s->obs->sigma : NULL;
    return s->obs ? s->obs->mon : NULL;
}

/* ---- readout */

static bdh_status check_layer_head(const bdh_state *s, const char *fn, int32_t layer, int32_t head)
{
    if (!s) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "%s: state is NULL", fn);
    if (!s->model->backend->state_rows)
        return bdh_fail(BDH_ERR_UNSUPPORTED, "%s: available on the CPU path only (this state is on the %s backend)", fn,
                        s->model->backend->name);
    const bdh_config *c = &s->model->cfg;
    if (layer < 0 || layer >= c->n_layer || head < 0 || head >= c->n_head)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "%s: (layer %d, head %d) is outside %d layers x %d heads", fn, layer, head,
                        c->n_layer, c->n_head);
    return BDH_OK;
}

static const float *head_state(const bdh_state *s, int32_t layer, int32_t head)
{
    return s->model->backend->state_rows(s, layer, head);
}

bdh_status bdh_state_row_norms(const bdh_state *s, int32_t layer, int32_t head, float *norms)
{
    bdh_status rc = check_layer_head(s, "bdh_state_row_norms", layer, head);
    if (rc != BDH_OK) return rc;
    if (!norms) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_row_norms: norms is NULL");
    const int D = s->model->cfg.n_embd;
    const float *S = head_state(s, layer, head);
    for (int n = 0; n < s->model->cfg.n_neurons; n++) {
        double sq = 0.0;
        for (int d = 0; d < D; d++) sq += (double)S[(size_t)n * D + d] * S[(size_t)n * D + d];
        norms[n] = (float)sqrt(sq);
    }
    return BDH_OK;
}

bdh_status bdh_state_row(const bdh_state *s, int32_t layer, int32_t head, int32_t neuron, float *row)
{
    bdh_status rc = check_layer_head(s, "bdh_state_row", layer, head);
    if (rc != BDH_OK) return rc;
    if (neuron < 0 || neuron >= s->model->cfg.n_neurons || !row)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_state_row: neuron %d is outside [0, %d), or row is NULL", neuron,
                        s->model->cfg.n_neurons);
    const int D = s->model->cfg.n_embd;
    memcpy(row, head_state(s, layer, head) + (size_t)neuron * D, (size_t)D * sizeof(float));
    return BDH_OK;
}
