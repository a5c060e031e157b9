/* libFuzzer target: the parsers of bdh serve (tools/serve/api.c, utf8.c).
 * The input is a request body, parsed as POST /v1/completions, as POST
 * /v1/chat/completions and as a fork body; an accepted request must hold
 * what the scheduler relies on (a prompt of tokens in range, max_tokens
 * within the bound, stops within their sizes, sampler parameters the
 * library accepts; a chat prompt ending with its opened turn "NAME:\n"),
 * a refused one must
 * give an error object that is valid JSON. The same bytes, as generated
 * output, must become valid UTF-8 and a JSON string literal that cJSON
 * reads back to that text. */
#include "serve.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

/* Unicode's well-formed UTF-8 (Table 3-7): what the server may put in JSON. */
static int valid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        const uint8_t c = s[i];
        size_t len;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c < 0x80) len = 1;
        else if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else return 0;
        if (i + len > n) return 0;
        for (size_t k = 1; k < len; k++) {
            const uint8_t b = s[i + k];
            if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
        }
        i += len;
    }
    return 1;
}

typedef int parser(const char *body, size_t len, const serve_config *cfg, int32_t vocab_size, completion_request *out,
                   api_error *e);

static void check_request(parser *parse, const uint8_t *data, size_t size)
{
    const serve_config cfg = {.max_tokens = 8192};
    completion_request r;
    api_error e;
    if (parse((const char *)data, size, &cfg, 256, &r, &e) == 0) {
        if (r.max_tokens < 0 || r.max_tokens > cfg.max_tokens || r.n_stop < 0 || r.n_stop > MAX_STOPS) abort();
        if (r.n_prompt == 0) abort(); /* the scheduler feeds at least one token */
        for (size_t i = 0; i < r.n_prompt; i++)
            if (r.prompt[i] < 0 || r.prompt[i] > 255) abort();
        for (int i = 0; i < r.n_stop; i++)
            if (r.stop_len[i] == 0 || r.stop_len[i] > MAX_STOP_BYTES) abort();
        /* a chat prompt is turns, ending with the reply's opened turn "NAME:\n" */
        if (r.chat && (r.n_prompt < 3 || r.prompt[r.n_prompt - 2] != ':' || r.prompt[r.n_prompt - 1] != '\n')) abort();
        bdh_sampler *s;
        if (bdh_sampler_new(&r.sampler, 256, &s) != BDH_OK) abort(); /* accepted, so the scheduler can sample */
        bdh_sampler_free(s);
        api_request_free(&r);
    } else {
        char *json = api_error_json(&e);
        if (!json) return; /* out of memory */
        cJSON *back = cJSON_Parse(json);
        if (!back || !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(back, "error"))) abort();
        cJSON_Delete(back);
        free(json);
    }
}

static void check_fork(const uint8_t *data, size_t size)
{
    char id[80];
    api_error e;
    if (api_parse_fork((const char *)data, size, id, sizeof id, &e) == 0 && !store_id_valid(id)) abort();
}

static void check_text(const uint8_t *data, size_t size)
{
    strbuf text = {0};
    if (utf8_text(data, size, true, &text) != size) abort(); /* final: everything is consumed */
    if (text.failed) goto done;
    if (!valid_utf8((const uint8_t *)text.p, text.n)) abort();
    char *lit = json_literal(text.p ? text.p : "", text.n);
    if (!lit) goto done;
    cJSON *back = cJSON_Parse(lit);
    /* cJSON's strings end at a NUL, which the literal writes as \u0000 */
    const size_t upto = text.p ? strnlen(text.p, text.n) : 0;
    if (!back || !cJSON_IsString(back) || strlen(back->valuestring) != upto ||
        (upto && memcmp(back->valuestring, text.p, upto) != 0))
        abort();
    cJSON_Delete(back);
    free(lit);
done:
    strbuf_free(&text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_request(api_parse_completion, data, size);
    check_request(api_parse_chat, data, size);
    check_fork(data, size);
    check_text(data, size);
    return 0;
}
