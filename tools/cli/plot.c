/* bdh trace --png DIR: the pictures are drawn by the Python package
 * (python3 -m libbdh.plot OUT --out DIR); this runs it and explains failures. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* From a checkout (the executable in a build directory), the checkout's
 * bindings/python goes first on PYTHONPATH and the library next to the
 * executable is the one Python loads, unless BDH_LIBRARY says otherwise.
 * $BDH_PYTHON names another interpreter. */
int draw_pictures(const char *trace_path, const char *dir)
{
    const char *py = getenv("BDH_PYTHON");
    if (!py || !*py) py = "python3";
    char here[PATH_MAX], path[PATH_MAX + 64];
    exe_dir(here, sizeof here);
    if (*here) {
        snprintf(path, sizeof path, "%s/../bindings/python/libbdh/plot.py", here);
        if (file_exists(path)) {
            snprintf(path, sizeof path, "%s/../bindings/python", here);
            const char *old = getenv("PYTHONPATH");
            size_t len = strlen(path) + (old ? strlen(old) : 0) + 2;
            char *pp = malloc(len);
            if (pp) {
                snprintf(pp, len, "%s%s%s", path, old && *old ? ":" : "", old && *old ? old : "");
                setenv("PYTHONPATH", pp, 1);
                free(pp);
            }
        }
#ifndef __SANITIZE_ADDRESS__ /* Python cannot load an AddressSanitizer build of the library */
        snprintf(path, sizeof path, "%s/libbdh.so", here);
        const char *lib = getenv("BDH_LIBRARY");
        if ((!lib || !*lib) && file_exists(path)) setenv("BDH_LIBRARY", path, 1);
#endif
    }
    char *args[] = {(char *)py, "-m", "libbdh.plot", (char *)trace_path, "--out", (char *)dir, NULL};
    fflush(stdout);
    pid_t pid;
    int rc = posix_spawnp(&pid, py, NULL, NULL, args, environ);
    if (rc != 0) {
        err("--png: cannot run '%s': %s. The pictures need Python 3 with the bdh package and matplotlib "
            "(or set BDH_PYTHON); the trace is in '%s'", py, strerror(rc), trace_path);
        return EXIT_RUNTIME;
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            err("--png: waiting for '%s': %s", py, strerror(errno));
            return EXIT_RUNTIME;
        }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
        err("--png: matplotlib is missing (pip install matplotlib); the trace is in '%s'", trace_path);
    else
        err("--png: '%s -m libbdh.plot' failed (%s %d; is the libbdh Python package installed? pip install "
            "./bindings/python); the trace is in '%s'", py, WIFEXITED(status) ? "exit status" : "signal",
            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), trace_path);
    return EXIT_RUNTIME;
}
