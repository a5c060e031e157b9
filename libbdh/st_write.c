/* Writing a safetensors file (bdh_model_quantize, bdh_model_merge): the
 * header as the safetensors library writes it, then the tensors' bytes, into
 * a temporary file beside the destination that is fsynced and renamed into
 * place, so a failure leaves any existing file there as it was. */
#include "internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* cJSON's adders fail quietly when out of memory: each one is checked, so a
 * header is whole or not written at all. */
static bool add_array(cJSON *obj, const char *name, const double *v, int n)
{
    cJSON *a = cJSON_CreateDoubleArray(v, n);
    if (a && cJSON_AddItemToObject(obj, name, a)) return true;
    cJSON_Delete(a);
    return false;
}

/* The JSON header: metadata, then each tensor with its offsets; padded with
 * spaces to a multiple of 8 bytes. */
static char *header_json(const char *const *meta, int n_meta, const bdh_out_tensor *t, int n, size_t *len)
{
    cJSON *root = cJSON_CreateObject(), *md = cJSON_AddObjectToObject(root, "__metadata__");
    bool ok = md != NULL;
    for (int i = 0; ok && i < n_meta; i++) ok = cJSON_AddStringToObject(md, meta[2 * i], meta[2 * i + 1]) != NULL;
    size_t off = 0;
    for (int i = 0; ok && i < n; i++) {
        cJSON *e = cJSON_AddObjectToObject(root, t[i].name);
        double dims[BDH_MAX_DIMS], offs[2] = {(double)off, (double)(off + t[i].nbytes)};
        for (int d = 0; d < t[i].n_dims; d++) dims[d] = (double)t[i].shape[d];
        ok = e && cJSON_AddStringToObject(e, "dtype", bdh_elem_name(t[i].dtype)) && add_array(e, "shape", dims, t[i].n_dims) &&
             add_array(e, "data_offsets", offs, 2);
        off += t[i].nbytes;
    }
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) return NULL;
    const size_t raw = strlen(json), padded = (raw + 7) / 8 * 8;
    char *out = realloc(json, padded + 1);
    if (!out) {
        free(json);
        return NULL;
    }
    memset(out + raw, ' ', padded - raw);
    out[padded] = '\0';
    *len = padded;
    return out;
}

static bool write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        const ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        b += w;
        n -= (size_t)w;
    }
    return true;
}

bdh_status bdh_safetensors_write(const char *path, const char *const *meta, int n_meta, const bdh_out_tensor *t, int n)
{
    size_t hlen;
    char *json = header_json(meta, n_meta, t, n, &hlen);
    if (!json) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory writing the header of '%s'", path);
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path) >= (int)sizeof tmp) {
        free(json);
        return bdh_fail(BDH_ERR_INVALID_ARGUMENT, "output path is too long");
    }
    const int fd = mkstemp(tmp);
    if (fd < 0) {
        free(json);
        return bdh_fail(BDH_ERR_IO, "cannot create a file beside '%s': %s", path, strerror(errno));
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    bool ok = write_all(fd, len8, 8) && write_all(fd, json, hlen);
    for (int i = 0; ok && i < n; i++) ok = write_all(fd, t[i].data, t[i].nbytes);
    const int err = errno;
    ok = ok && fsync(fd) == 0 && fchmod(fd, 0644) == 0;
    ok = close(fd) == 0 && ok;
    free(json);
    if (!ok || rename(tmp, path) != 0) {
        const int e = ok ? errno : err;
        unlink(tmp);
        return bdh_fail(BDH_ERR_IO, "cannot write '%s': %s (nothing was replaced)", path, strerror(e));
    }
    return BDH_OK;
}

bool bdh_same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    if (strcmp(a, b) == 0) return true;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}
