/* The OpenAI side of bdh serve: POST /v1/completions and
 * /v1/chat/completions bodies in, responses and error objects out
 * (docs/server.md, "API"). Parsing is strict about types and ranges (400
 * naming the field) and ignores fields it does not know, as OpenAI's own
 * server does with fields it no longer uses. */
#define _GNU_SOURCE /* memmem */
#include "serve.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void api_error_set(api_error *e, int status, const char *type, const char *code, const char *param, const char *fmt, ...)
{
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

char *api_error_json(const api_error *e)
{
    cJSON *root = cJSON_CreateObject(), *err = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(err, "message", e->message);
    cJSON_AddStringToObject(err, "type", e->type);
    if (e->param[0]) cJSON_AddStringToObject(err, "param", e->param);
    else cJSON_AddNullToObject(err, "param");
    if (e->code) cJSON_AddStringToObject(err, "code", e->code);
    else cJSON_AddNullToObject(err, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* ------------------------------------------------------------ fields */

#define BAD(param, ...) (api_error_set(e, 400, "invalid_request_error", NULL, param, __VA_ARGS__), -1)

static bool is_null_or_absent(const cJSON *v) { return !v || cJSON_IsNull(v); }

/* An integer field in [lo, hi] (a JSON number with no fraction). */
static int get_int(const cJSON *root, const char *name, double lo, double hi, double *out, api_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (is_null_or_absent(v)) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return BAD(name, "'%s' must be an integer", name);
    if (v->valuedouble < lo || v->valuedouble > hi) return BAD(name, "'%s' must be in [%.0f, %.0f]", name, lo, hi);
    *out = v->valuedouble;
    return 0;
}

static int get_float(const cJSON *root, const char *name, float *out, api_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (is_null_or_absent(v)) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return BAD(name, "'%s' must be a number", name);
    *out = (float)v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *root, const char *name, bool *out, api_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (is_null_or_absent(v)) return 0;
    if (!cJSON_IsBool(v)) return BAD(name, "'%s' must be true or false", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* "prompt": a string (its UTF-8 bytes), a list of one string, or a list of
 * token ids. */
static int get_prompt(const cJSON *root, int32_t vocab_size, completion_request *r, api_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (is_null_or_absent(v)) return BAD("prompt", "'prompt' is required");
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 1 && cJSON_IsString(cJSON_GetArrayItem(v, 0)))
        v = cJSON_GetArrayItem(v, 0);
    if (cJSON_IsString(v)) {
        const size_t n = strlen(v->valuestring);
        if (n == 0) return BAD("prompt", "'prompt' is empty: at least one byte is needed");
        if (!(r->prompt = malloc(n * sizeof *r->prompt))) return BAD("prompt", "out of memory");
        for (size_t i = 0; i < n; i++) r->prompt[i] = (unsigned char)v->valuestring[i];
        r->n_prompt = n;
        return 0;
    }
    if (!cJSON_IsArray(v))
        return BAD("prompt", "'prompt' must be a string or an array of token ids");
    const int n = cJSON_GetArraySize(v);
    if (n == 0) return BAD("prompt", "'prompt' is empty: at least one token is needed");
    if (!(r->prompt = malloc((size_t)n * sizeof *r->prompt))) return BAD("prompt", "out of memory");
    int i = 0;
    for (const cJSON *t = v->child; t; t = t->next, i++) {
        if (!cJSON_IsNumber(t) || t->valuedouble != floor(t->valuedouble))
            return BAD("prompt", "'prompt' must be one string or one array of integer token ids (item %d is not)", i);
        if (t->valuedouble < 0 || t->valuedouble >= vocab_size)
            return BAD("prompt", "'prompt' token %d is %.0f, outside [0, %d)", i, t->valuedouble, (int)vocab_size);
        r->prompt[i] = (int32_t)t->valuedouble;
    }
    r->n_prompt = (size_t)n;
    return 0;
}

static int add_stop(completion_request *r, const cJSON *s, api_error *e)
{
    if (!cJSON_IsString(s)) return BAD("stop", "'stop' must be a string or an array of strings");
    const size_t n = strlen(s->valuestring);
    if (n == 0 || n > MAX_STOP_BYTES) return BAD("stop", "each stop sequence must have 1 to %d bytes", MAX_STOP_BYTES);
    if (r->n_stop == MAX_STOPS) return BAD("stop", "at most %d stop sequences", MAX_STOPS);
    memcpy(r->stop[r->n_stop], s->valuestring, n + 1);
    r->stop_len[r->n_stop++] = n;
    return 0;
}

static int get_stops(const cJSON *root, completion_request *r, api_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (is_null_or_absent(v)) return 0;
    if (!cJSON_IsArray(v)) return add_stop(r, v, e);
    for (const cJSON *s = v->child; s; s = s->next)
        if (add_stop(r, s, e)) return -1;
    return 0;
}

static int get_session(const cJSON *root, completion_request *r, api_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "session");
    if (is_null_or_absent(v)) return 0;
    if (!cJSON_IsString(v) || !store_id_valid(v->valuestring))
        return BAD("session", "'session' must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'");
    snprintf(r->session, sizeof r->session, "%s", v->valuestring);
    return 0;
}

/* OpenAI fields this server does not do: refused unless at their neutral value. */
static int refuse_unsupported(const cJSON *root, api_error *e)
{
    double n = 1;
    if (get_int(root, "n", 1, 1, &n, e) || get_int(root, "best_of", 1, 1, &n, e)) return -1;
    bool echo = false;
    if (get_bool(root, "echo", &echo, e)) return -1;
    if (echo) return BAD("echo", "'echo' is not supported");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "logprobs");
    if (!is_null_or_absent(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0) && !cJSON_IsFalse(v))
        return BAD("logprobs", "'logprobs' is not supported");
    v = cJSON_GetObjectItemCaseSensitive(root, "suffix");
    if (!is_null_or_absent(v)) return BAD("suffix", "'suffix' is not supported");
    v = cJSON_GetObjectItemCaseSensitive(root, "logit_bias");
    if (!is_null_or_absent(v) && !(cJSON_IsObject(v) && !v->child)) return BAD("logit_bias", "'logit_bias' is not supported");
    static const char *const penalties[] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++) {
        float p = 0;
        if (get_float(root, penalties[i], &p, e)) return -1;
        if (p != 0) return BAD(penalties[i], "'%s' is not supported (use repeat_penalty)", penalties[i]);
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!is_null_or_absent(v) && !cJSON_IsString(v)) return BAD("model", "'model' must be a string");
    return 0;
}

static int get_sampler(const cJSON *root, bdh_sampler_params *sp, api_error *e)
{
    double k = sp->top_k, w = sp->repeat_window, seed = -1;
    if (get_float(root, "temperature", &sp->temperature, e) || get_float(root, "top_p", &sp->top_p, e) ||
        get_float(root, "min_p", &sp->min_p, e) || get_float(root, "repeat_penalty", &sp->repeat_penalty, e) ||
        get_int(root, "top_k", 0, INT32_MAX, &k, e) || get_int(root, "repeat_window", 0, INT32_MAX, &w, e) ||
        get_int(root, "seed", 0, 9007199254740992.0, &seed, e))
        return -1;
    sp->top_k = (int32_t)k;
    sp->repeat_window = (int32_t)w;
    if (seed >= 0) sp->seed = (uint64_t)seed;
    /* the library is the one authority on valid sampler settings */
    bdh_sampler *probe;
    if (bdh_sampler_new(sp, 256, &probe) != BDH_OK) return BAD("", "%s", bdh_last_error());
    bdh_sampler_free(probe);
    return 0;
}

static uint64_t random_seed(void)
{
    uint64_t s = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(&s, sizeof s, 1, f) != 1) s = 0;
        fclose(f);
    }
    return s ^ (uint64_t)now_unix() ^ ((uint64_t)(now_monotonic() * 1e9) << 20);
}

/* "max_tokens" (or its synonym name) into r->max_tokens, bounded by --max-tokens. */
static int get_max_tokens(const cJSON *root, const char *name, const serve_config *cfg, completion_request *r,
                          api_error *e)
{
    double n = r->max_tokens;
    if (get_int(root, name, 0, cfg->max_tokens, &n, e)) return -1;
    r->max_tokens = (int32_t)n;
    return 0;
}

/* ------------------------------------------------------------ NUL bytes */

/* cJSON ends a string at a NUL byte (raw, or the escape \u0000) and drops
 * the rest unseen. To tell, a body holding one is parsed again with each
 * NUL made a 0x01 (the same length): a string longer there held a NUL.
 * NULL when the body has none (or out of memory). */
static cJSON *parse_nul_shadow(const char *body, size_t len)
{
    if (!memchr(body, 0, len) && !memmem(body, len, "\\u0000", 6)) return NULL;
    char *copy = malloc(len ? len : 1);
    if (!copy) return NULL;
    memcpy(copy, body, len);
    for (size_t i = 0; i < len; i++)
        if (copy[i] == 0) copy[i] = 1;
    for (char *p = copy; (p = memmem(p, (size_t)(copy + len - p), "\\u0000", 6)); p += 6) p[5] = '1';
    cJSON *shadow = cJSON_ParseWithLength(copy, len);
    free(copy);
    return shadow;
}

static const cJSON *next_item(const cJSON *v) { return v ? v->next : NULL; }

static bool held_nul(const cJSON *v, const cJSON *shadow)
{
    return cJSON_IsString(v) && cJSON_IsString(shadow) && strlen(shadow->valuestring) != strlen(v->valuestring);
}

/* A NUL in "prompt" or "stop" would cut the string short unseen: refused,
 * with where to put such bytes. */
static int refuse_nul_strings(const cJSON *root, const cJSON *shadow, api_error *e)
{
    static const char *const fields[] = {"prompt", "stop"};
    for (size_t f = 0; shadow && f < sizeof fields / sizeof *fields; f++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, fields[f]);
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(shadow, fields[f]);
        if (held_nul(v, w)) return BAD(fields[f], "'%s' must not contain a NUL byte (send token ids for arbitrary bytes)", fields[f]);
        if (!cJSON_IsArray(v) || !cJSON_IsArray(w)) continue;
        for (v = v->child, w = w->child; v && w; v = v->next, w = w->next)
            if (cJSON_IsString(v) && held_nul(v, w))
                return BAD(fields[f], "'%s' must not contain a NUL byte (send token ids for arbitrary bytes)", fields[f]);
    }
    return 0;
}

/* What both bodies take alike: sampling, stops, streaming, the session and
 * the refusals. */
static int get_generation(const cJSON *root, completion_request *r, api_error *e)
{
    return get_sampler(root, &r->sampler, e) || get_stops(root, r, e) || get_bool(root, "stream", &r->stream, e) ||
                   get_session(root, r, e) || refuse_unsupported(root, e)
               ? -1
               : 0;
}

static int completion_fields(const cJSON *root, const char *body, size_t len, const serve_config *cfg,
                             int32_t vocab_size, completion_request *r, api_error *e)
{
    if (get_prompt(root, vocab_size, r, e) || get_max_tokens(root, "max_tokens", cfg, r, e) ||
        get_generation(root, r, e) || get_bool(root, "return_tokens", &r->return_tokens, e))
        return -1;
    cJSON *shadow = parse_nul_shadow(body, len);
    const int rc = refuse_nul_strings(root, shadow, e);
    cJSON_Delete(shadow);
    return rc;
}

typedef int body_fields(const cJSON *root, const char *body, size_t len, const serve_config *cfg, int32_t vocab_size,
                        completion_request *r, api_error *e);

static int parse_request(const char *body, size_t len, const serve_config *cfg, int32_t vocab_size,
                         body_fields *fields, completion_request *r, api_error *e)
{
    memset(r, 0, sizeof *r);
    r->max_tokens = 16; /* OpenAI's default */
    r->sampler = bdh_sampler_default_params();
    r->sampler.seed = random_seed(); /* unless the request gives one */
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return BAD("", "the body is not valid JSON");
    int rc = -1;
    if (!cJSON_IsObject(root)) (void)BAD("", "the body must be a JSON object");
    else rc = fields(root, body, len, cfg, vocab_size, r, e);
    cJSON_Delete(root);
    if (rc) api_request_free(r);
    return rc;
}

int api_parse_completion(const char *body, size_t len, const serve_config *cfg, int32_t vocab_size,
                         completion_request *r, api_error *e)
{
    return parse_request(body, len, cfg, vocab_size, completion_fields, r, e);
}

/* ------------------------------------------------------------ chat */

/* A speaker's name ("name", "assistant_name"): one line of text. */
static int check_name(const cJSON *v, const cJSON *shadow, const char *param, api_error *e)
{
    if (!cJSON_IsString(v) || !v->valuestring[0]) return BAD(param, "'%s' must be a non-empty string", param);
    if (strpbrk(v->valuestring, "\r\n") || held_nul(v, shadow))
        return BAD(param, "'%s' must not contain a newline or a NUL byte", param);
    return 0;
}

static const char *role_name(const char *role)
{
    static const char *const roles[][2] = {{"system", "SYSTEM"}, {"user", "USER"}, {"assistant", "ASSISTANT"}};
    for (size_t i = 0; i < sizeof roles / sizeof *roles; i++)
        if (strcmp(role, roles[i][0]) == 0) return roles[i][1];
    return NULL;
}

/* A message's "content": a string, or OpenAI's [{"type": "text", "text": ...}]
 * parts, concatenated; appended to out. */
static int put_content(const cJSON *v, const cJSON *shadow, int i, strbuf *out, api_error *e)
{
    char param[API_PARAM_MAX];
    snprintf(param, sizeof param, "messages[%d].content", i);
    if (cJSON_IsString(v)) {
        if (held_nul(v, shadow)) return BAD(param, "'%s' must not contain a NUL byte", param);
        strbuf_put(out, v->valuestring, strlen(v->valuestring));
        return 0;
    }
    if (!cJSON_IsArray(v)) return BAD(param, "'%s' must be a string or an array of text parts", param);
    int j = 0;
    const cJSON *shadow_part = shadow ? shadow->child : NULL; /* walked in step: the same structure */
    for (const cJSON *part = v->child; part; part = part->next, j++, shadow_part = next_item(shadow_part)) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        const cJSON *shadow_text = cJSON_GetObjectItemCaseSensitive(shadow_part, "text");
        snprintf(param, sizeof param, "messages[%d].content[%d]", i, j);
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0)
            return BAD(param, "'%s' must be a part of type \"text\" (no other type is supported)", param);
        if (!cJSON_IsString(text)) return BAD(param, "'%s' must have a string 'text'", param);
        if (held_nul(text, shadow_text)) return BAD(param, "'%s' must not contain a NUL byte", param);
        strbuf_put(out, text->valuestring, strlen(text->valuestring));
    }
    return 0;
}

/* "NAME:\n", the opening of a turn in the template. */
static void put_speaker(strbuf *out, const char *name)
{
    strbuf_put(out, name, strlen(name));
    strbuf_put(out, ":\n", 2);
}

/* One message as a turn: "NAME:\n" content "\n\n". */
static int put_message(const cJSON *m, const cJSON *shadow, int i, strbuf *out, api_error *e)
{
    char param[API_PARAM_MAX];
    snprintf(param, sizeof param, "messages[%d]", i);
    if (!cJSON_IsObject(m)) return BAD(param, "'%s' must be an object with 'role' and 'content'", param);
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    snprintf(param, sizeof param, "messages[%d].role", i);
    const char *speaker = cJSON_IsString(role) ? role_name(role->valuestring) : NULL;
    if (!speaker) return BAD(param, "'%s' must be \"system\", \"user\" or \"assistant\"", param);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(m, "name");
    if (!is_null_or_absent(name)) {
        snprintf(param, sizeof param, "messages[%d].name", i);
        if (check_name(name, cJSON_GetObjectItemCaseSensitive(shadow, "name"), param, e)) return -1;
        speaker = name->valuestring;
    }
    put_speaker(out, speaker);
    if (put_content(cJSON_GetObjectItemCaseSensitive(m, "content"), cJSON_GetObjectItemCaseSensitive(shadow, "content"),
                    i, out, e))
        return -1;
    strbuf_put(out, "\n\n", 2);
    return 0;
}

/* The prompt: every message as a turn, then the assistant's turn opened. */
static int render_messages(const cJSON *root, const cJSON *shadow, completion_request *r, api_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!cJSON_IsArray(v) || !v->child) return BAD("messages", "'messages' must be a non-empty array of messages");
    const char *assistant = "ASSISTANT";
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "assistant_name");
    if (!is_null_or_absent(name)) {
        if (check_name(name, cJSON_GetObjectItemCaseSensitive(shadow, "assistant_name"), "assistant_name", e)) return -1;
        assistant = name->valuestring;
    }
    strbuf text = {0};
    int i = 0, rc = 0;
    const cJSON *shadow_m = cJSON_GetObjectItemCaseSensitive(shadow, "messages");
    shadow_m = shadow_m ? shadow_m->child : NULL;
    for (const cJSON *m = v->child; m && !rc; m = m->next, i++, shadow_m = next_item(shadow_m))
        rc = put_message(m, shadow_m, i, &text, e);
    if (!rc) put_speaker(&text, assistant);
    if (!rc && (text.failed || !(r->prompt = malloc(text.n * sizeof *r->prompt)))) rc = BAD("messages", "out of memory");
    for (size_t k = 0; !rc && k < text.n; k++) r->prompt[k] = (unsigned char)text.p[k];
    if (!rc) r->n_prompt = text.n;
    strbuf_free(&text);
    return rc;
}

/* Chat fields OpenAI has and a base model cannot do: refused unless neutral. */
static int refuse_chat_unsupported(const cJSON *root, api_error *e)
{
    static const char *const tool_fields[] = {"tools", "functions"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, tool_fields[i]);
        if (!is_null_or_absent(v) && !(cJSON_IsArray(v) && !v->child))
            return BAD(tool_fields[i], "'%s' is not supported (the model is a base model, not tuned for tools)",
                       tool_fields[i]);
    }
    static const char *const choice_fields[] = {"tool_choice", "function_call"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, choice_fields[i]);
        if (!is_null_or_absent(v) && !(cJSON_IsString(v) && strcmp(v->valuestring, "none") == 0))
            return BAD(choice_fields[i], "'%s' is not supported (only \"none\")", choice_fields[i]);
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "response_format");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(v, "type");
    if (!is_null_or_absent(v) && !(cJSON_IsString(type) && strcmp(type->valuestring, "text") == 0))
        return BAD("response_format", "'response_format' is not supported (only {\"type\": \"text\"})");
    double top = 0;
    if (get_int(root, "top_logprobs", 0, 0, &top, e)) return -1;
    return 0;
}

static int chat_fields(const cJSON *root, const char *body, size_t len, const serve_config *cfg, int32_t vocab_size,
                       completion_request *r, api_error *e)
{
    (void)vocab_size;
    r->chat = true;
    r->max_tokens = cfg->max_tokens; /* OpenAI's chat default: no limit but the context (here, --max-tokens) */
    if (get_max_tokens(root, "max_tokens", cfg, r, e) || get_max_tokens(root, "max_completion_tokens", cfg, r, e) ||
        get_generation(root, r, e) || refuse_chat_unsupported(root, e))
        return -1;
    cJSON *shadow = parse_nul_shadow(body, len);
    const int rc = refuse_nul_strings(root, shadow, e) || render_messages(root, shadow, r, e);
    cJSON_Delete(shadow);
    if (rc) return -1;
    if (is_null_or_absent(cJSON_GetObjectItemCaseSensitive(root, "stop"))) { /* a turn ends at a blank line */
        memcpy(r->stop[0], "\n\n", 3);
        r->stop_len[0] = 2;
        r->n_stop = 1;
    }
    return 0;
}

int api_parse_chat(const char *body, size_t len, const serve_config *cfg, int32_t vocab_size, completion_request *r,
                   api_error *e)
{
    return parse_request(body, len, cfg, vocab_size, chat_fields, r, e);
}

void api_request_free(completion_request *r)
{
    free(r->prompt);
    r->prompt = NULL;
}

int api_parse_fork(const char *body, size_t len, char *id, size_t cap, api_error *e)
{
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return BAD("", "the body is not valid JSON");
    const cJSON *v = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "id") : NULL;
    int rc = 0;
    if (!cJSON_IsString(v) || !store_id_valid(v->valuestring))
        rc = BAD("id", "'id' (the new session) must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'");
    else snprintf(id, cap, "%s", v->valuestring);
    cJSON_Delete(root);
    return rc;
}

/* ------------------------------------------------------------ responses */

/* choices[0]'s text: "text", or a chat's "message" / stream "delta" (an
 * empty delta in the last chunk, the role in the first). */
static bool add_text(cJSON *c, const completion_result *r)
{
    char *text = json_literal(r->text, r->text_len); /* cJSON strings end at a NUL byte; the model may emit one */
    if (!text) return false;
    if (!r->chat) {
        cJSON_AddRawToObject(c, "text", text);
    } else {
        cJSON *m = cJSON_AddObjectToObject(c, r->chunk ? "delta" : "message");
        if (!r->chunk || r->role) cJSON_AddStringToObject(m, "role", "assistant");
        if (!r->chunk || r->role || r->text_len) cJSON_AddRawToObject(m, "content", text);
    }
    free(text);
    return true;
}

char *api_completion_json(const completion_result *r)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", r->id);
    cJSON_AddStringToObject(root, "object",
                            !r->chat ? "text_completion" : r->chunk ? "chat.completion.chunk" : "chat.completion");
    cJSON_AddNumberToObject(root, "created", (double)r->created);
    cJSON_AddStringToObject(root, "model", r->model);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    const bool text = add_text(c, r);
    cJSON_AddNumberToObject(c, "index", 0);
    cJSON_AddNullToObject(c, "logprobs");
    if (r->finish_reason) cJSON_AddStringToObject(c, "finish_reason", r->finish_reason);
    else cJSON_AddNullToObject(c, "finish_reason");
    if (r->tokens) {
        cJSON *t = cJSON_AddArrayToObject(c, "tokens");
        for (size_t i = 0; i < r->n_tokens; i++) cJSON_AddItemToArray(t, cJSON_CreateNumber(r->tokens[i]));
    }
    if (r->usage) {
        cJSON *u = cJSON_AddObjectToObject(root, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", (double)r->prompt_tokens);
        cJSON_AddNumberToObject(u, "completion_tokens", (double)r->completion_tokens);
        cJSON_AddNumberToObject(u, "total_tokens", (double)(r->prompt_tokens + r->completion_tokens));
        if (r->chat) /* OpenAI's: the prompt's beginning the server did not feed again */
            cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "prompt_tokens_details"), "cached_tokens",
                                    (double)r->cached_tokens);
    }
    char *s = text ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return s;
}

char *api_models_json(const char *model, int64_t created)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data"), *m = cJSON_CreateObject();
    cJSON_AddItemToArray(data, m);
    cJSON_AddStringToObject(m, "id", model);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)created);
    cJSON_AddStringToObject(m, "owned_by", "libbdh");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}
