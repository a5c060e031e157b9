/* Reading safetensors files: read the file into memory, parse the JSON header
 * with cJSON, and validate every tensor entry before anything points into the
 * data.
 *
 * Layout: u64 little-endian header length n, n bytes of JSON, then the data
 * section. Each tensor's data_offsets are relative to the data section. */
#include "internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header this large is not a weight file (real ones are a few KiB). */
#define MAX_HEADER_BYTES ((uint64_t)64 << 20)

/* A JSON number that is a whole number in [0, 2^53]. */
static bool json_uint(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsNumber(item)) return false;
    double v = item->valuedouble;
    if (!(v >= 0.0 && v <= 9007199254740992.0) || floor(v) != v) return false;
    *out = (uint64_t)v;
    return true;
}

static bdh_status parse_metadata(const cJSON *meta, bdh_safetensors *st)
{
    if (!cJSON_IsObject(meta))
        return bdh_fail(BDH_ERR_FORMAT, "safetensors: __metadata__ is not a JSON object");
    int n = cJSON_GetArraySize(meta);
    st->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    st->meta_values = calloc((size_t)n + 1, sizeof(char *));
    if (!st->meta_keys || !st->meta_values)
        return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "safetensors: out of memory reading metadata");
    const cJSON *kv;
    cJSON_ArrayForEach(kv, meta) {
        if (!cJSON_IsString(kv))
            return bdh_fail(BDH_ERR_FORMAT, "safetensors: metadata value of \"%s\" is not a string", kv->string);
        st->meta_keys[st->n_meta] = strdup(kv->string);
        st->meta_values[st->n_meta] = strdup(kv->valuestring);
        if (!st->meta_keys[st->n_meta] || !st->meta_values[st->n_meta])
            return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "safetensors: out of memory reading metadata");
        st->n_meta++;
    }
    return BDH_OK;
}

/* Validate one header entry and fill *t; data_size is the data section's size. */
static bdh_status parse_tensor(const cJSON *entry, const uint8_t *data, uint64_t data_size, bdh_tensor_view *t)
{
    const char *name = entry->string;
    if (!cJSON_IsObject(entry))
        return bdh_fail(BDH_ERR_FORMAT, "safetensors: entry \"%s\" is not a JSON object", name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs))
        return bdh_fail(BDH_ERR_FORMAT, "safetensors: tensor \"%s\" lacks a string dtype, a shape array or a data_offsets array", name);
    if (!bdh_elem_parse(dt->valuestring, &t->dtype))
        return bdh_fail(BDH_ERR_FORMAT, "safetensors: tensor \"%s\" has unsupported dtype \"%s\" (expected F32, F16, BF16, F64, I32, I64 or I8)", name, dt->valuestring);

    int nd = cJSON_GetArraySize(shape);
    if (nd > BDH_MAX_DIMS)
        return bdh_fail(BDH_ERR_FORMAT, "safetensors: tensor \"%s\" has %d dimensions (at most %d)", name, nd, BDH_MAX_DIMS);
    t->n_dims = nd;
    uint64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        uint64_t d;
        if (!json_uint(cJSON_GetArrayItem(shape, i), &d))
            return bdh_fail(BDH_ERR_FORMAT, "safetensors: tensor \"%s\" has a shape entry that is not a non-negative integer", name);
        if (d != 0 && numel > data_size / d)
            return bdh_fail(BDH_ERR_FORMAT, "safetensors: tensor \"%s\" has an absurd shape (more elements than the file has bytes)", name);
        numel *= d;
        t->shape[i] = (int64_t)d;
    }
    uint64_t begin, end;
    if (cJSON_GetArraySize(offs) != 2 || !json_uint(cJSON_GetArrayItem(offs, 0), &begin) ||
        !json_uint(cJSON_GetArrayItem(offs, 1), &end))
        return bdh_fail(BDH_ERR_FORMAT, "safetensors: tensor \"%s\" data_offsets must be two non-negative integers", name);
    if (begin > end || end > data_size)
        return bdh_fail(BDH_ERR_FORMAT, "safetensors: tensor \"%s\" data_offsets [%llu, %llu] out of range (data section is %llu bytes)",
                        name, (unsigned long long)begin, (unsigned long long)end, (unsigned long long)data_size);
    uint64_t expect = numel * bdh_elem_size(t->dtype);
    if (end - begin != expect)
        return bdh_fail(BDH_ERR_FORMAT, "safetensors: tensor \"%s\" has %llu bytes but its shape and dtype need %llu",
                        name, (unsigned long long)(end - begin), (unsigned long long)expect);
    t->name = strdup(name);
    if (!t->name) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "safetensors: out of memory");
    t->data = data + begin;
    t->nbytes = (size_t)(end - begin);
    return BDH_OK;
}

static int cmp_by_offset(const void *a, const void *b)
{
    const bdh_tensor_view *x = a, *y = b;
    return (x->data > y->data) - (x->data < y->data);
}

static bdh_status check_no_overlap(bdh_safetensors *st)
{
    bdh_tensor_view *sorted = malloc((size_t)st->n_tensors * sizeof *sorted + 1);
    if (!sorted) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "safetensors: out of memory");
    memcpy(sorted, st->tensors, (size_t)st->n_tensors * sizeof *sorted);
    qsort(sorted, (size_t)st->n_tensors, sizeof *sorted, cmp_by_offset);
    bdh_status rc = BDH_OK;
    for (int i = 1; i < st->n_tensors && rc == BDH_OK; i++) {
        const uint8_t *prev_end = (const uint8_t *)sorted[i - 1].data + sorted[i - 1].nbytes;
        if ((const uint8_t *)sorted[i].data < prev_end)
            rc = bdh_fail(BDH_ERR_FORMAT, "safetensors: tensors \"%s\" and \"%s\" overlap in the data section",
                          sorted[i - 1].name, sorted[i].name);
    }
    free(sorted);
    return rc;
}

/* cJSON says only NULL when parsing fails: its allocations go through this
 * hook so that running out of memory is not reported as a malformed file.
 * (The hooks are cJSON's process-wide ones; they call malloc and free as
 * cJSON's defaults do.) */
static _Thread_local bool json_out_of_memory;

static void *json_malloc(size_t n)
{
    void *p = malloc(n);
    if (!p) json_out_of_memory = true;
    return p;
}

static pthread_once_t json_hooks_once = PTHREAD_ONCE_INIT;
static void install_json_hooks(void)
{
    cJSON_Hooks hooks = {json_malloc, free};
    cJSON_InitHooks(&hooks);
}

static bdh_status parse_header(const char *json, size_t len, const uint8_t *data, uint64_t data_size, bdh_safetensors *st)
{
    pthread_once(&json_hooks_once, install_json_hooks);
    json_out_of_memory = false;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root && json_out_of_memory) return bdh_fail(BDH_ERR_OUT_OF_MEMORY, "safetensors: out of memory parsing the header");
    if (!root) return bdh_fail(BDH_ERR_FORMAT, "safetensors: header is not valid JSON");
    bdh_status rc = BDH_OK;
    if (!cJSON_IsObject(root)) {
        rc = bdh_fail(BDH_ERR_FORMAT, "safetensors: header is not a JSON object");
        goto done;
    }
    int n = cJSON_GetArraySize(root);
    st->tensors = calloc((size_t)n + 1, sizeof *st->tensors);
    if (!st->tensors) { rc = bdh_fail(BDH_ERR_OUT_OF_MEMORY, "safetensors: out of memory"); goto done; }
    const cJSON *entry;
    cJSON_ArrayForEach(entry, root) {
        if (strcmp(entry->string, "__metadata__") == 0) {
            if (st->meta_keys) { rc = bdh_fail(BDH_ERR_FORMAT, "safetensors: __metadata__ appears twice"); goto done; }
            rc = parse_metadata(entry, st);
        } else if (bdh_safetensors_find(st, entry->string)) {
            rc = bdh_fail(BDH_ERR_FORMAT, "safetensors: tensor \"%s\" appears twice in the header", entry->string);
        } else {
            rc = parse_tensor(entry, data, data_size, &st->tensors[st->n_tensors]);
            if (rc == BDH_OK) st->n_tensors++;
        }
        if (rc != BDH_OK) goto done;
    }
    rc = check_no_overlap(st);
done:
    cJSON_Delete(root);
    return rc;
}

/* The whole file into anonymous memory with read(), not a mapping of the
 * file: a file that shrinks while it is read is then a short read and an
 * error, where a mapping would raise SIGBUS in whatever touched the missing
 * pages. The pages are released tensor by tensor as the backend packs them
 * (bdh_safetensors_release), so the load's peak memory is what a mapping
 * gave. */
static bdh_status read_into(int fd, const char *path, void *dst, size_t size)
{
    uint8_t *p = dst;
    size_t done = 0;
    while (done < size) {
        const ssize_t got = pread(fd, p + done, size - done, (off_t)done);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return bdh_fail(BDH_ERR_IO, "cannot read '%s': %s", path, strerror(errno));
        if (got == 0)
            return bdh_fail(BDH_ERR_IO, "'%s' shrank while it was read (%zu of %zu bytes there): it is being written?", path,
                            done, size);
        done += (size_t)got;
    }
    return BDH_OK;
}

/* Open without blocking (a FIFO or a device would block a plain open), then
 * accept only a regular file. */
static bdh_status map_file(const char *path, void **map, size_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return bdh_fail(BDH_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat sb;
    bdh_status rc = BDH_OK;
    if (fstat(fd, &sb) != 0) {
        rc = bdh_fail(BDH_ERR_IO, "cannot stat '%s': %s", path, strerror(errno));
    } else if (S_ISDIR(sb.st_mode)) {
        rc = bdh_fail(BDH_ERR_IO, "'%s' is a directory, not a safetensors file", path);
    } else if (!S_ISREG(sb.st_mode)) {
        rc = bdh_fail(BDH_ERR_IO, "'%s' is not a regular file (a FIFO, socket or device)", path);
    } else if (sb.st_size < 8) {
        rc = bdh_fail(BDH_ERR_FORMAT, "'%s' is %lld bytes: too short for a safetensors file (8-byte header length first)",
                      path, (long long)sb.st_size);
    } else {
        *size = (size_t)sb.st_size;
        *map = mmap(NULL, *size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (*map == MAP_FAILED) {
            *map = NULL;
            rc = bdh_fail(BDH_ERR_OUT_OF_MEMORY, "out of memory reading '%s' (%zu bytes)", path, *size);
        } else if ((rc = read_into(fd, path, *map, *size)) != BDH_OK) {
            munmap(*map, *size);
            *map = NULL;
        }
    }
    close(fd);
    return rc;
}

bdh_status bdh_safetensors_open(const char *path, bdh_safetensors *out)
{
    memset(out, 0, sizeof *out);
    bdh_status rc = map_file(path, &out->map, &out->map_size);
    if (rc != BDH_OK) return rc;

    const uint8_t *bytes = out->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | bytes[i];
    uint64_t rest = out->map_size - 8;
    if (hlen > MAX_HEADER_BYTES || (hlen > 0 && bytes[8] != '{'))
        rc = bdh_fail(BDH_ERR_FORMAT, "'%s' is not a safetensors file (it does not start with a header length and a JSON object)",
                      path);
    else if (hlen > rest)
        rc = bdh_fail(BDH_ERR_FORMAT, "'%s': header length %llu runs past the end of the file (%llu bytes after it): truncated?",
                      path, (unsigned long long)hlen, (unsigned long long)rest);
    else
        rc = parse_header((const char *)bytes + 8, (size_t)hlen, bytes + 8 + hlen, rest - hlen, out);
    if (rc != BDH_OK) bdh_safetensors_close(out);
    return rc;
}

void bdh_safetensors_close(bdh_safetensors *st)
{
    if (!st) return;
    for (int i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    for (int i = 0; i < st->n_meta; i++) { free(st->meta_keys[i]); free(st->meta_values[i]); }
    /* entries past n_meta may hold a half-built pair */
    if (st->meta_keys) free(st->meta_keys[st->n_meta]);
    if (st->meta_values) free(st->meta_values[st->n_meta]); /* either array may be missing (out of memory) */
    free(st->meta_keys);
    free(st->meta_values);
    if (st->map) munmap(st->map, st->map_size);
    free(st->owned);
    memset(st, 0, sizeof *st);
}

/* Drop the pages that hold only this tensor: after a tensor is packed, this
 * keeps the load's peak memory near the weights as held. */
void bdh_safetensors_release(const bdh_safetensors *st, const bdh_tensor_view *t)
{
    if (!t || !st->map) return;
    if ((const uint8_t *)t->data < (const uint8_t *)st->map || (const uint8_t *)t->data >= (const uint8_t *)st->map + st->map_size)
        return; /* not the file's pages (checkpoint.c's lm_head copy) */
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t begin = ((uintptr_t)t->data + page - 1) / page * page;
    uintptr_t end = ((uintptr_t)t->data + t->nbytes) / page * page;
    if (end > begin) madvise((void *)begin, end - begin, MADV_DONTNEED);
}

const bdh_tensor_view *bdh_safetensors_find(const bdh_safetensors *st, const char *name)
{
    for (int i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

const char *bdh_safetensors_meta(const bdh_safetensors *st, const char *key)
{
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta_keys[i], key) == 0) return st->meta_values[i];
    return NULL;
}
