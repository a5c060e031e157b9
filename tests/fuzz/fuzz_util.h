/* Shared by the libFuzzer targets that feed the loader (fuzz_load,
 * fuzz_checkpoint). Header-only: each target is one file. */
#ifndef BDH_FUZZ_UTIL_H
#define BDH_FUZZ_UTIL_H

#include <bdh.h>

/* Loads path with p; a model that loads is stepped once (vocabularies up to
 * 512). */
static inline void fuzz_load_and_step(const char *path, const bdh_model_params *p)
{
    bdh_model *m = NULL;
    if (bdh_model_load(path, p, &m) == BDH_OK) {
        bdh_config c;
        bdh_state *s = NULL;
        float logits[512];
        if (bdh_model_config(m, &c) == BDH_OK && c.vocab_size <= 512 && bdh_state_new(m, &s) == BDH_OK) {
            bdh_step(s, 0, logits);
            bdh_state_free(s);
        }
        bdh_model_free(m);
    } else if (m != NULL || bdh_last_error()[0] == '\0') {
        __builtin_trap(); /* a refusal must leave *out NULL and say why */
    }
}

#endif
