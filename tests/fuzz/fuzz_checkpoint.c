/* libFuzzer target: checkpoint layouts (libbdh/checkpoint.c), the
 * config.json and tensor-name path. The input is a config.json, the line
 * SEPARATOR, and a safetensors file (no separator: the file alone); both
 * are written into a directory that is then loaded, as a save_pretrained
 * checkpoint (and, by the input's size, with a load-parameter override that
 * must agree with them). Seeds: tests/data/checkpoints (make fuzz). Any
 * crash, leak, hang or sanitizer report is a finding. */
#define _GNU_SOURCE
#include "fuzz_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SEPARATOR "\n--bdh-fuzz--\n"

static char dir[64], config_path[96], model_path[96];

static int write_to(const char *path, const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    const size_t n = fwrite(data, 1, size, f);
    return fclose(f) == 0 && n == size ? 0 : -1;
}

static void remove_dir(void)
{
    unlink(config_path);
    unlink(model_path);
    rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/bdh-fuzz-ckpt-XXXXXX");
        if (!mkdtemp(dir)) abort();
        snprintf(config_path, sizeof config_path, "%s/config.json", dir);
        snprintf(model_path, sizeof model_path, "%s/model.safetensors", dir);
        atexit(remove_dir);
    }
    const uint8_t *sep = memmem(data, size, SEPARATOR, strlen(SEPARATOR));
    unlink(config_path);
    if (sep) {
        if (write_to(config_path, data, (size_t)(sep - data)) != 0) return 0;
        const size_t skip = (size_t)(sep - data) + strlen(SEPARATOR);
        data += skip, size -= skip;
    }
    if (write_to(model_path, data, size) != 0) return 0;

    bdh_config override = {0};
    override.n_layer = 2;
    bdh_model_params p = bdh_model_default_params();
    p.n_threads = 1;
    if (size % 3 == 0) p.config = &override;
    fuzz_load_and_step(dir, &p);
    return 0;
}
