/* libFuzzer target: the weight-file loader. The input is a whole file; it is
 * loaded from a memfd (float, 16-bit and Q8_0 layouts all come from the seed
 * corpus), and a model that loads is stepped once. Any crash, leak, hang or
 * sanitizer report is a finding (make fuzz). */
#define _GNU_SOURCE
#include "fuzz_util.h"

#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const int fd = memfd_create("bdh-fuzz", MFD_CLOEXEC);
    if (fd < 0) return 0;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    bdh_model_params p = bdh_model_default_params();
    p.n_threads = 1;
    p.weight_type = size % 2 ? BDH_WEIGHTS_Q8_0 : BDH_WEIGHTS_AS_STORED; /* both packings */
    fuzz_load_and_step(path, &p);
    close(fd);
    return 0;
}
