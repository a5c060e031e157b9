/* A byte-level model emits bytes, not characters: this turns them into
 * valid UTF-8 text (docs/server.md, "Text and bytes") and that text into
 * JSON string literals. */
#include "serve.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void strbuf_put(strbuf *b, const void *data, size_t n)
{
    if (b->failed) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = '\0';
}

void strbuf_free(strbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

/* Length of the sequence a lead byte starts (0: never a lead), and the
 * range its second byte must fall in (Unicode Table 3-7). */
static int lead_length(uint8_t c, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (c < 0x80) return 1;
    if (c < 0xC2) return 0;
    if (c < 0xE0) return 2;
    if (c < 0xF0) {
        if (c == 0xE0) *lo = 0xA0;
        if (c == 0xED) *hi = 0x9F;
        return 3;
    }
    if (c < 0xF5) {
        if (c == 0xF0) *lo = 0x90;
        if (c == 0xF4) *hi = 0x8F;
        return 4;
    }
    return 0;
}

size_t utf8_text(const uint8_t *s, size_t n, bool final, strbuf *out)
{
    size_t i = 0;
    while (i < n) {
        uint8_t lo, hi;
        const int len = lead_length(s[i], &lo, &hi);
        if (len == 0) {
            strbuf_put(out, REPLACEMENT, 3);
            i++;
            continue;
        }
        int good = 1; /* bytes of a valid prefix so far */
        while (good < len && i + (size_t)good < n) {
            const uint8_t c = s[i + (size_t)good];
            const bool ok = good == 1 ? c >= lo && c <= hi : c >= 0x80 && c <= 0xBF;
            if (!ok) break;
            good++;
        }
        if (good == len) {
            strbuf_put(out, s + i, (size_t)len);
        } else if (i + (size_t)good == n && !final) {
            return i; /* incomplete so far: wait for the rest */
        } else {
            strbuf_put(out, REPLACEMENT, 3); /* the maximal subpart, one U+FFFD */
        }
        i += (size_t)good;
    }
    return i;
}

char *json_literal(const char *s, size_t n)
{
    strbuf b = {0};
    strbuf_put(&b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        const unsigned char c = (unsigned char)s[i];
        char esc[8];
        const char *rep = NULL;
        switch (c) {
        case '"': rep = "\\\""; break;
        case '\\': rep = "\\\\"; break;
        case '\n': rep = "\\n"; break;
        case '\r': rep = "\\r"; break;
        case '\t': rep = "\\t"; break;
        case '\b': rep = "\\b"; break;
        case '\f': rep = "\\f"; break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                rep = esc;
            }
        }
        if (rep) strbuf_put(&b, rep, strlen(rep));
        else strbuf_put(&b, &s[i], 1);
    }
    strbuf_put(&b, "\"", 1);
    if (b.failed) {
        strbuf_free(&b);
        return NULL;
    }
    return b.p;
}
