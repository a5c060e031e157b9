/* The forward entry points: argument checks, then the model's backend. */
#include "internal.h"

bdh_status bdh_check_token(const bdh_model *m, int32_t token)
{
    if (token < 0 || token >= m->cfg.vocab_size)
        return bdh_fail(BDH_ERR_TOKEN, "token %d is outside [0, %d)", (int)token, (int)m->cfg.vocab_size);
    return BDH_OK;
}

/* Room for n more tokens before the largest position. */
static bdh_status check_room(const char *fn, const bdh_state *s, size_t n)
{
    if (n > (uint64_t)(BDH_MAX_POSITION - s->position))
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "%s: the state is at position %lld; %zu more tokens pass the largest, 2^53",
                        fn, (long long)s->position, n);
    return BDH_OK;
}

bdh_status bdh_step(bdh_state *state, int32_t token, float *logits)
{
    if (!state) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_step: state is NULL");
    bdh_status rc = bdh_check_token(state->model, token);
    if (rc == BDH_OK) rc = check_room("bdh_step", state, 1);
    if (rc != BDH_OK) return rc;
    return state->model->backend->step_batch(&state, &token, 1, logits);
}

static bdh_status check_tokens(const char *fn, const bdh_state *state, const int32_t *tokens, size_t n)
{
    if (!state) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "%s: state is NULL", fn);
    if (n == 0) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "%s: no tokens (n = 0)", fn);
    if (!tokens) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "%s: tokens is NULL", fn);
    for (size_t i = 0; i < n; i++)
        if (bdh_check_token(state->model, tokens[i]) != BDH_OK)
            return bdh_fail(BDH_ERR_TOKEN, "%s: tokens[%zu] = %d is outside [0, %d)", fn, i, (int)tokens[i],
                            (int)state->model->cfg.vocab_size);
    return check_room(fn, state, n);
}

/* Token by token: an observed state sees every token through the step path,
 * and a backend without a prefill of its own is stepped. */
bdh_status bdh_prefill_by_steps(bdh_state *state, const int32_t *tokens, size_t n, float *logits, bool all_rows)
{
    const size_t V = (size_t)state->model->cfg.vocab_size;
    for (size_t i = 0; i < n; i++) {
        float *row = !logits ? NULL : all_rows ? logits + i * V : i + 1 == n ? logits : NULL;
        bdh_status rc = state->model->backend->step_batch(&state, &tokens[i], 1, row);
        if (rc != BDH_OK) return rc;
    }
    return BDH_OK;
}

static bdh_status prefill(bdh_state *state, const int32_t *tokens, size_t n, float *logits, bool all_rows)
{
    const bdh_backend *b = state->model->backend;
    if (bdh_observing(state) || !b->prefill) return bdh_prefill_by_steps(state, tokens, n, logits, all_rows);
    return b->prefill(state, tokens, n, logits, all_rows);
}

bdh_status bdh_prefill(bdh_state *state, const int32_t *tokens, size_t n, float *logits)
{
    bdh_status rc = check_tokens("bdh_prefill", state, tokens, n);
    return rc != BDH_OK ? rc : prefill(state, tokens, n, logits, false);
}

bdh_status bdh_prefill_all(bdh_state *state, const int32_t *tokens, size_t n, float *logits_all)
{
    bdh_status rc = check_tokens("bdh_prefill_all", state, tokens, n);
    if (rc == BDH_OK && !logits_all) rc = bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_prefill_all: logits_all is NULL");
    return rc != BDH_OK ? rc : prefill(state, tokens, n, logits_all, true);
}

static bdh_status check_batch(bdh_state *const *states, const int32_t *tokens, size_t n)
{
    if (!states || !tokens || n == 0)
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_step_batch: states or tokens is NULL, or n = 0");
    for (size_t i = 0; i < n; i++) {
        if (!states[i]) return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_step_batch: states[%zu] is NULL", i);
        if (states[i]->model != states[0]->model)
            return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_step_batch: states[%zu] belongs to another model", i);
        for (size_t j = 0; j < i; j++)
            if (states[j] == states[i])
                return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "bdh_step_batch: states[%zu] and states[%zu] are the same state", j, i);
        bdh_status rc = bdh_check_token(states[0]->model, tokens[i]);
        if (rc != BDH_OK) return bdh_fail(rc, "bdh_step_batch: tokens[%zu] = %d is outside [0, %d)", i, (int)tokens[i],
                                          (int)states[0]->model->cfg.vocab_size);
        if ((rc = check_room("bdh_step_batch", states[i], 1)) != BDH_OK) return rc;
    }
    return BDH_OK;
}

bdh_status bdh_step_batch(bdh_state *const *states, const int32_t *tokens, size_t n, float *logits)
{
    bdh_status rc = check_batch(states, tokens, n);
    if (rc != BDH_OK) return rc;
    return states[0]->model->backend->step_batch(states, tokens, n, logits);
}
