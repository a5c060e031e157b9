/* A growing string, and the JSON string escaper of the trace file's header
 * (docs/trace-format.md, "The header"). */
#include "cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void sb_add(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        if (b->failed) return;
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->failed = 1;
            return;
        }
        if (b->p && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap ? b->cap : 1024;
        while (cap <= b->n + (size_t)k) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

/* The spec's escapes, which are Python's json.dumps(ensure_ascii=False):
 * '"' and '\' backslashed, the five control characters with short escapes
 * as such, every other byte below 0x20 as \u00xx (lower-case hex), all
 * other bytes (DEL, UTF-8 or not) as they are. */
void sb_json_string(sbuf *b, const char *s)
{
    sb_add(b, "\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        switch (*c) {
        case '"': sb_add(b, "\\\""); break;
        case '\\': sb_add(b, "\\\\"); break;
        case '\n': sb_add(b, "\\n"); break;
        case '\r': sb_add(b, "\\r"); break;
        case '\t': sb_add(b, "\\t"); break;
        case '\b': sb_add(b, "\\b"); break;
        case '\f': sb_add(b, "\\f"); break;
        default:
            if (*c < 0x20) sb_add(b, "\\u%04x", *c);
            else sb_add(b, "%c", *c);
        }
    }
    sb_add(b, "\"");
}
