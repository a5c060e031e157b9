/* Status names and the per-thread message of the last failure. */
#include "internal.h"

#include <stdio.h>

static _Thread_local char last_error[512];

/* Messages quote file contents (names, metadata values); control bytes in
 * them are written as \xNN, so a message is safe to print on a terminal. */
static void escape_controls(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && o + 5 < cap; p++) {
        if (*p < 0x20 || *p == 0x7f) o += (size_t)snprintf(out + o, cap - o, "\\x%02x", *p);
        else out[o++] = (char)*p;
    }
    out[o] = '\0';
}

bdh_status bdh_fail(bdh_status status, const char *fmt, ...)
{
    char raw[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    escape_controls(raw, last_error, sizeof last_error);
    return status;
}

void bdh_clear_error(void) { last_error[0] = '\0'; }

const char *bdh_last_error(void) { return last_error; }

const char *bdh_status_name(bdh_status status)
{
    switch (status) {
    case BDH_OK: return "BDH_OK";
    case BDH_ERR_INVALID_ARGUMENT: return "BDH_ERR_INVALID_ARGUMENT";
    case BDH_ERR_IO: return "BDH_ERR_IO";
    case BDH_ERR_FORMAT: return "BDH_ERR_FORMAT";
    case BDH_ERR_CONFIG: return "BDH_ERR_CONFIG";
    case BDH_ERR_OUT_OF_MEMORY: return "BDH_ERR_OUT_OF_MEMORY";
    case BDH_ERR_TOKEN: return "BDH_ERR_TOKEN";
    case BDH_ERR_UNSUPPORTED: return "BDH_ERR_UNSUPPORTED";
    case BDH_ERR_MODEL_MISMATCH: return "BDH_ERR_MODEL_MISMATCH";
    case BDH_ERR_DEVICE: return "BDH_ERR_DEVICE";
    case BDH_ERR_BUFFER_TOO_SMALL: return "BDH_ERR_BUFFER_TOO_SMALL";
    }
    return "BDH_ERR_UNKNOWN";
}

#define BDH_STR2(x) #x
#define BDH_STR(x) BDH_STR2(x)
const char *bdh_version(void)
{
    return BDH_STR(BDH_VERSION_MAJOR) "." BDH_STR(BDH_VERSION_MINOR) "." BDH_STR(BDH_VERSION_PATCH);
}
