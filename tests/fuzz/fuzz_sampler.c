/* libFuzzer target: the sampler's parameters and logits. The first 40 bytes
 * are the parameters (any bits, NaN and inf included), the rest logits for a
 * vocabulary of up to 300 tokens. A sampler that is created must return a
 * token in range whose logit is not -inf (zero probability) and not NaN, or
 * refuse the logits with a status. (+inf is a certain token, by design.) */
#include <bdh.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 40) return 0;
    bdh_sampler_params p;
    memcpy(&p.temperature, data, 4);
    memcpy(&p.top_k, data + 4, 4);
    memcpy(&p.top_p, data + 8, 4);
    memcpy(&p.min_p, data + 12, 4);
    memcpy(&p.repeat_penalty, data + 16, 4);
    memcpy(&p.repeat_window, data + 20, 4);
    memcpy(&p.seed, data + 24, 8);
    p.repeat_window %= 4096; /* a window is allocated: keep it bounded */
    const size_t V = (size - 40) / 4;
    if (V == 0 || V > 300) return 0;
    float logits[300];
    memcpy(logits, data + 40, V * 4);
    bdh_sampler *s = NULL;
    if (bdh_sampler_new(&p, (int32_t)V, &s) != BDH_OK) {
        if (s != NULL) abort();
        return 0;
    }
    for (int i = 0; i < 4; i++) {
        int32_t tok = -1;
        if (bdh_sampler_sample(s, logits, &tok) != BDH_OK) break;
        if (tok < 0 || (size_t)tok >= V || !(logits[tok] > -INFINITY)) abort(); /* never an impossible token */
        bdh_sampler_accept(s, tok);
    }
    bdh_sampler_free(s);
    return 0;
}
