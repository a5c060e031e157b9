/* The server's clocks, on their own so that what reads the time (api.c's
 * default seeds, metrics.c's rate) links without the scheduler. */
#include "serve.h"

#include <time.h>

double now_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int64_t now_unix(void) { return (int64_t)time(NULL); }
