/* The canonical safetensors writer: the header exactly as
 * docs/trace-format.md ("The header") spells it, which is also what
 * bindings/python/libbdh/_safetensors.py writes. It is built here with
 * snprintf, not cJSON (which the library links but the tool does not), so
 * that the tool links with nothing but libbdh. */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* {"__metadata__":{"k":"v",...},"name":{"dtype":"D","shape":[..],
 * "data_offsets":[a,b]},...} with no spaces, then spaces up to a multiple
 * of 8 bytes. NULL (out of memory) or a malloc'd string of *len bytes. */
static char *header(const char *const *meta, int n_meta, const tensor_out *t, int n, size_t *len)
{
    sbuf b = {0};
    sb_add(&b, "{\"__metadata__\":{");
    for (int k = 0; k < n_meta; k++) {
        if (k) sb_add(&b, ",");
        sb_json_string(&b, meta[2 * k]);
        sb_add(&b, ":");
        sb_json_string(&b, meta[2 * k + 1]);
    }
    sb_add(&b, "}");
    uint64_t off = 0; /* data_offsets count from the end of the header */
    for (int k = 0; k < n; k++) {
        sb_add(&b, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[k].name, t[k].dtype);
        for (int d = 0; d < t[k].rank; d++) sb_add(&b, "%s%" PRId64, d ? "," : "", t[k].shape[d]);
        sb_add(&b, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + t[k].bytes);
        off += t[k].bytes;
    }
    sb_add(&b, "}");
    while (!b.failed && b.n % 8) sb_add(&b, " ");
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.n;
    return b.p;
}

int write_safetensors(const char *path, const char *const *meta, int n_meta, const tensor_out *t, int n)
{
    size_t n_header;
    char *h = header(meta, n_meta, t, n, &n_header);
    if (!h) {
        err("out of memory");
        return EXIT_RUNTIME;
    }
    /* written beside the target and renamed into place: a failed write
     * (a full disk) leaves any file already at `path` as it was */
    char tmp[4200];
    const int fd = snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path) < (int)sizeof tmp ? mkstemp(tmp) : -1;
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!f) {
        err("cannot create a file beside '%s': %s", path, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        free(h);
        return EXIT_RUNTIME;
    }
    unsigned char len[8];
    for (int k = 0; k < 8; k++) len[k] = (unsigned char)((uint64_t)n_header >> (8 * k)); /* little-endian */
    int bad = fwrite(len, 1, 8, f) != 8 || fwrite(h, 1, n_header, f) != n_header;
    for (int k = 0; k < n && !bad; k++) /* the data: host order, little-endian like the library */
        bad = t[k].bytes && fwrite(t[k].data, 1, t[k].bytes, f) != t[k].bytes;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fchmod(fileno(f), 0644) != 0) bad = 1;
    if (fclose(f) != 0) bad = 1;
    free(h);
    if (bad || rename(tmp, path) != 0) {
        err("cannot write '%s': %s (nothing was replaced)", path, strerror(errno));
        unlink(tmp);
        return EXIT_RUNTIME;
    }
    return 0;
}
