/* Writes the seeds that the fuzz targets start from and that no test file
 * holds already: a Q8_0 copy of the tiny golden model (for fuzz_load) and a
 * saved state of it with a monitor (for fuzz_state). Run by make fuzz:
 *   make_seeds TINY_MODEL LOAD_CORPUS_DIR STATE_CORPUS_DIR */
#include <bdh.h>

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc != 4) return 2;
    char path[4096];
    snprintf(path, sizeof path, "%s/tiny.q8.safetensors", argv[2]);
    bdh_model *m;
    bdh_state *s;
    if (bdh_model_quantize(argv[1], path, BDH_WEIGHTS_Q8_0) != BDH_OK || bdh_model_load(argv[1], NULL, &m) != BDH_OK ||
        bdh_state_new(m, &s) != BDH_OK) {
        fprintf(stderr, "make_seeds: %s\n", bdh_last_error());
        return 1;
    }
    const int32_t prompt[5] = {'h', 'e', 'l', 'l', 'o'};
    bdh_prefill(s, prompt, 5, NULL);
    bdh_state_add_monitor(s, 1, 3, 4, NULL);
    size_t len = bdh_state_save_size(s);
    void *blob = malloc(len);
    bdh_state_save(s, blob, len, NULL);
    snprintf(path, sizeof path, "%s/tiny.state", argv[3]);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(blob, 1, len, f) != len || fclose(f) != 0) return 1;
    free(blob);
    bdh_state_free(s);
    bdh_model_free(m);
    return 0;
}
