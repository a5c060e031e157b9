// include/bdh.h must compile as C++ (no C-only constructs, extern "C"
// linkage) and link against libbdh from C++ code.
#include "bdh.h"

#include <cstdio>
#include <cstring>

int main()
{
    bdh_model *model = nullptr;
    bdh_status rc = bdh_model_load("tests/data/golden/tiny.model.safetensors", nullptr, &model);
    if (rc != BDH_OK) {
        std::fprintf(stderr, "load failed: %s\n", bdh_last_error());
        return 1;
    }
    bdh_state *state = nullptr;
    float logits[256];
    rc = bdh_state_new(model, &state);
    if (rc == BDH_OK) rc = bdh_step(state, 'A', logits);
    if (rc == BDH_OK && bdh_step(state, 1000, nullptr) != BDH_ERR_TOKEN) rc = BDH_ERR_INVALID_ARGUMENT;
    bdh_state_free(state);
    bdh_model_free(model);
    std::printf("header_cxx: %s (library %s)\n", rc == BDH_OK ? "ok" : bdh_status_name(rc), bdh_version());
    return rc == BDH_OK ? 0 : 1;
}
