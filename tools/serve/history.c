/* What a session's state has consumed, as a hash (docs/server.md, "Chat
 * history"): 64-bit FNV-1a over the bytes fed since position 0, and how
 * many bytes it covers. A chat client that resends its whole history is
 * recognised by it: when the rendered prompt's first P bytes hash to what
 * the session holds, only the rest is fed.
 *
 * A non-cryptographic hash is enough: a collision (2^-64 for unrelated
 * texts, or one crafted on purpose) only makes the server continue from
 * the session's own state as if the prompt's beginning were what it holds,
 * which misleads no one but the session's client, who chose the id and
 * could feed anything to it anyway. */
#include "serve.h"

/* FNV-1a, 64-bit: the definition's offset basis and prime */
#define FNV_BASIS 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

void history_reset(history *h)
{
    h->hash = FNV_BASIS;
    h->position = 0;
}

void history_invalidate(history *h) { h->position = -1; }

bool history_valid(const history *h, const bdh_state *st) { return h->position >= 0 && h->position == bdh_state_position(st); }

static void feed_byte(history *h, uint8_t byte)
{
    h->hash = (h->hash ^ byte) * FNV_PRIME;
    h->position++;
}

void history_feed(history *h, const int32_t *tokens, size_t n)
{
    for (size_t i = 0; i < n && h->position >= 0; i++) {
        if (tokens[i] < 0 || tokens[i] > 255) { /* not a byte: no text to recognise */
            history_invalidate(h);
            return;
        }
        feed_byte(h, (uint8_t)tokens[i]);
    }
}

void history_feed_bytes(history *h, const uint8_t *bytes, size_t n)
{
    for (size_t i = 0; i < n && h->position >= 0; i++) feed_byte(h, bytes[i]);
}

size_t history_match(const history *h, const bdh_state *st, const int32_t *tokens, size_t n)
{
    if (!history_valid(h, st) || (uint64_t)h->position >= n) return 0;
    history prefix;
    history_reset(&prefix);
    history_feed(&prefix, tokens, (size_t)h->position);
    return prefix.position == h->position && prefix.hash == h->hash ? (size_t)h->position : 0;
}
