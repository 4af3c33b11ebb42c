/*
 * routes.c: lensd's endpoints (docs/API.md). srv_route runs on
 * libmicrohttpd's threads: it answers what needs no model (health, metrics,
 * model info) and checks a model request's JSON as far as it can without the
 * model; srv_run_job runs on the model's executor and does the rest:
 * tokenizing, validating against the model, the forward pass, and encoding
 * the answer as JSON, safetensors (streamed) or npy.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/attribution.h"
#include "core/capture.h"
#include "core/intervene.h"
#include "core/logits.h"
#include "core/patch.h"
#include "core/prompt.h"
#include "core/safetensors.h"
#include "server/caches.h"
#include "server/daemon.h"
#include "server/progress.h"
#include "server/tensors.h"
#include "server/test_prompt.h"

/* ---- request fields ----------------------------------------------------- */

/* Fails resp unless body's optional field has the JSON type (0: absent). */
static int optional_bool(json_t *body, const char *key, bool fallback, bool *out,
                         srv_response *resp) {
    json_t *v = json_object_get(body, key);
    *out = fallback;
    if (!v) return 0;
    if (!json_is_boolean(v)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, key, "%s must be true or false", key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

static int optional_int(json_t *body, const char *key, long fallback, long min, long max, long *out,
                        srv_response *resp) {
    json_t *v = json_object_get(body, key);
    *out = fallback;
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        srv_error(resp, json_is_integer(v) ? SRV_ERR_UNPROCESSABLE : SRV_ERR_BAD_REQUEST, key,
                  "%s must be an integer from %ld to %ld", key, min, max);
        return -1;
    }
    *out = (long)json_integer_value(v);
    return 0;
}

/* The request's prompts as TL's to_tokens makes them: "prompt", "prompts" or
 * "tokens", with prepend_bos and padding_side. */
static int read_prompts(const srv_model *sm, json_t *body, lens_token_batch *batch,
                        srv_response *resp) {
    const lens_model *m = sm->model;
    const srv_limits *lim = &srv_d.cfg.limits;
    json_t *prompt = json_object_get(body, "prompt"), *prompts = json_object_get(body, "prompts"),
           *tokens = json_object_get(body, "tokens");
    if ((prompt != NULL) + (prompts != NULL) + (tokens != NULL) != 1) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "prompt",
                  "give exactly one of prompt (a string), prompts (a list of strings) or tokens "
                  "(a list of lists of token ids)");
        return -1;
    }
    bool prepend_bos;
    if (optional_bool(body, "prepend_bos", m->cfg.default_prepend_bos, &prepend_bos, resp))
        return -1;
    json_t *side = json_object_get(body, "padding_side");
    if (side && (!json_is_string(side) || (strcmp(json_string_value(side), "left") &&
                                           strcmp(json_string_value(side), "right")))) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "padding_side",
                  "padding_side must be \"left\" or \"right\"");
        return -1;
    }
    /* token rows are used as given: TL's BOS-as-pad mask rule is for text it prefixed */
    const lens_pad_opts pad = {.prepend_bos = prepend_bos && !tokens,
                               .pad_left = side && strcmp(json_string_value(side), "left") == 0};
    json_t *list = prompt ? NULL : prompts ? prompts : tokens;
    const char *what = prompts ? "prompts" : "tokens";
    if (list && (!json_is_array(list) || json_array_size(list) == 0)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, what, "%s must be a non-empty list", what);
        return -1;
    }
    const int n = list ? (int)json_array_size(list) : 1;
    if (n > lim->max_prompts) {
        srv_error(resp, SRV_ERR_TOO_LARGE, what,
                  "%d prompts is more than the limit of %d per request", n, lim->max_prompts);
        return -1;
    }
    const int max_tokens =
        lim->max_tokens > 0 && lim->max_tokens < m->cfg.n_ctx ? lim->max_tokens : m->cfg.n_ctx;
    int32_t **rows = calloc((size_t)n, sizeof *rows);
    int *lens = calloc((size_t)n, sizeof *lens);
    int rc = -1;
    char field[64];
    lens_err err = {0};
    if (!rows || !lens) {
        srv_out_of_memory(resp);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        json_t *item = list ? json_array_get(list, (size_t)i) : prompt;
        if (list)
            snprintf(field, sizeof field, "%s[%d]", what, i);
        else
            snprintf(field, sizeof field, "prompt");
        if (tokens) {
            if (!json_is_array(item) || json_array_size(item) == 0) {
                srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                          "%s must be a non-empty list of token ids", field);
                goto out;
            }
            lens[i] = (int)json_array_size(item);
            if (!(rows[i] = malloc((size_t)lens[i] * sizeof **rows))) goto oom;
            for (int j = 0; j < lens[i]; j++) {
                json_t *id = json_array_get(item, (size_t)j);
                if (!json_is_integer(id) || json_integer_value(id) < 0 ||
                    json_integer_value(id) >= m->cfg.d_vocab) {
                    srv_error(resp,
                              json_is_integer(id) ? SRV_ERR_UNPROCESSABLE : SRV_ERR_BAD_REQUEST,
                              field, "%s[%d] must be a token id from 0 to %d (d_vocab - 1)", field,
                              j, m->cfg.d_vocab - 1);
                    goto out;
                }
                rows[i][j] = (int32_t)json_integer_value(id);
            }
        } else {
            if (!json_is_string(item)) {
                srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s must be a string", field);
                goto out;
            }
            bool truncated;
            if (lens_prompt_tokens(m, json_string_value(item), prepend_bos, &rows[i], &lens[i],
                                   &truncated, &err)) {
                srv_engine_error(resp, &err, field);
                goto out;
            }
            if (truncated) { /* found after n_ctx + 1 tokens: the rest is not tokenized */
                srv_error(resp, SRV_ERR_TOO_LARGE, field,
                          "%s is more than the model's context of %d tokens (TransformerLens "
                          "would cut it there; send at most that many)",
                          field, m->cfg.n_ctx);
                goto out;
            }
        }
        if (lens[i] == 0) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                      "%s has no tokens (an empty prompt without BOS)", field);
            goto out;
        }
        if (lens[i] > max_tokens) {
            srv_error(resp, SRV_ERR_TOO_LARGE, field, "%s is %d tokens, more than the limit of %d",
                      field, lens[i], max_tokens);
            goto out;
        }
    }
    if (lens_pad_rows(m, rows, lens, n, &pad, batch, &err)) {
        srv_engine_error(resp, &err, what);
        goto out;
    }
    rc = 0;
    goto out;
oom:
    srv_out_of_memory(resp);
out:
    for (int i = 0; rows && i < n; i++)
        free(rows[i]);
    free(rows);
    free(lens);
    return rc;
}

/* "positions": a list of positions (negative from the end) resolved against
 * T into *out (NULL when absent). */
static int read_positions(json_t *body, int T, int32_t **out, int *n, srv_response *resp) {
    json_t *list = json_object_get(body, "positions");
    *out = NULL;
    *n = 0;
    if (!list) return 0;
    if (!json_is_array(list) || json_array_size(list) == 0) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "positions",
                  "positions must be a non-empty list of integers");
        return -1;
    }
    *n = (int)json_array_size(list);
    if (!(*out = malloc((size_t)*n * sizeof **out))) {
        srv_out_of_memory(resp);
        return -1;
    }
    for (int i = 0; i < *n; i++) {
        json_t *v = json_array_get(list, (size_t)i);
        long p = json_is_integer(v) ? (long)json_integer_value(v) : 0;
        if (p < 0) p += T;
        if (!json_is_integer(v) || p < 0 || p >= T) {
            char field[32];
            snprintf(field, sizeof field, "positions[%d]", i);
            srv_error(resp, json_is_integer(v) ? SRV_ERR_UNPROCESSABLE : SRV_ERR_BAD_REQUEST, field,
                      "%s must be a position in [-%d, %d)", field, T, T);
            free(*out);
            *out = NULL;
            return -1;
        }
        (*out)[i] = (int32_t)p;
    }
    return 0;
}

/* The hook points of "names" (exact) and "names_filter" (globs) into
 * enabled; neither: every hook point. */
static int read_names(const lens_config *c, json_t *body, uint8_t *enabled, srv_response *resp) {
    json_t *names = json_object_get(body, "names"), *filter = json_object_get(body, "names_filter");
    if (!names && !filter) {
        lens_hook_select_glob(c, "*", enabled);
        return 0;
    }
    if (names && !json_is_array(names)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "names", "names must be a list of hook names");
        return -1;
    }
    char field[48];
    for (size_t i = 0; names && i < json_array_size(names); i++) {
        json_t *v = json_array_get(names, i);
        snprintf(field, sizeof field, "names[%zu]", i);
        lens_hook hook;
        lens_err err = {0};
        if (!json_is_string(v)) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s must be a string", field);
            return -1;
        }
        if (lens_hook_parse(c, json_string_value(v), &hook, &err)) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s", err.msg);
            return -1;
        }
        enabled[lens_hook_slot(c, hook)] = 1;
    }
    if (!filter) return 0;
    const bool one = json_is_string(filter);
    if (!one && !json_is_array(filter)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "names_filter",
                  "names_filter must be a glob or a list of globs");
        return -1;
    }
    for (size_t i = 0; i < (one ? 1 : json_array_size(filter)); i++) {
        json_t *v = one ? filter : json_array_get(filter, i);
        snprintf(field, sizeof field, one ? "names_filter" : "names_filter[%zu]", i);
        if (!json_is_string(v) || lens_hook_select_glob(c, json_string_value(v), enabled) == 0) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                      json_is_string(v) ? "%s matches no hook point of this model"
                                        : "%s must be a string",
                      field);
            return -1;
        }
    }
    return 0;
}

/* A JSON list of the batch's str_tokens. */
static json_t *str_tokens_json(const lens_model *m, const lens_token_batch *b) {
    json_t *rows = json_array();
    for (int i = 0; i < b->B; i++) {
        json_t *row = json_array();
        for (int t = 0; t < b->T; t++) {
            char *s = lens_str_token(m, b->tokens[(size_t)i * b->T + t], NULL);
            json_array_append_new(row, json_string(s ? s : ""));
            free(s);
        }
        json_array_append_new(rows, row);
    }
    return rows;
}

static json_t *tokens_json(const lens_token_batch *b) {
    json_t *rows = json_array();
    for (int i = 0; i < b->B; i++) {
        json_t *row = json_array();
        for (int t = 0; t < b->T; t++)
            json_array_append_new(row, json_integer(b->tokens[(size_t)i * b->T + t]));
        json_array_append_new(rows, row);
    }
    return rows;
}

/* ---- the jobs ----------------------------------------------------------- */

static int read_indices(json_t *body, const char *key, int limit, int **out, int *n,
                        srv_response *resp);

static void run_tokenize(srv_job *job) {
    const lens_model *m = job->model->model;
    lens_token_batch b = {0};
    if (read_prompts(job->model, job->body, &b, &job->response)) return;
    json_t *mask = json_array();
    for (int i = 0; i < b.B; i++) {
        json_t *row = json_array();
        for (int t = 0; t < b.T; t++) {
            int real = b.attn_mask ? b.attn_mask[(size_t)i * b.T + t] : t < b.lengths[i];
            json_array_append_new(row, json_integer(real));
        }
        json_array_append_new(mask, row);
    }
    srv_json(&job->response, MHD_HTTP_OK,
             json_pack("{s:o, s:o, s:o}", "tokens", tokens_json(&b), "str_tokens",
                       str_tokens_json(m, &b), "attention_mask", mask));
    lens_token_batch_free(&b);
}

/* Decodes one list of ids, or fails resp naming field. */
static json_t *decode_ids(const lens_model *m, json_t *ids, const char *field, srv_response *resp) {
    size_t n = json_array_size(ids);
    int32_t *buf = malloc((n ? n : 1) * sizeof *buf);
    if (!buf) {
        srv_out_of_memory(resp);
        return NULL;
    }
    for (size_t j = 0; j < n; j++) {
        json_t *id = json_array_get(ids, j);
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= m->cfg.d_vocab) {
            srv_error(resp, json_is_integer(id) ? SRV_ERR_UNPROCESSABLE : SRV_ERR_BAD_REQUEST,
                      field, "%s[%zu] must be a token id from 0 to %d", field, j,
                      m->cfg.d_vocab - 1);
            free(buf);
            return NULL;
        }
        buf[j] = (int32_t)json_integer_value(id);
    }
    size_t len = 0;
    lens_err err = {0};
    char *text = m->tok ? lens_tok_decode(m->tok, buf, n, &len, &err) : NULL;
    free(buf);
    if (!text) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s",
                  m->tok ? err.msg : "this model has no tokenizer");
        return NULL;
    }
    json_t *s = json_stringn(text, len);
    free(text);
    if (!s) /* not valid UTF-8 on its own (a piece of a character) */
        srv_error(resp, SRV_ERR_UNPROCESSABLE, field, "%s decodes to bytes that are not UTF-8 text",
                  field);
    return s;
}

static void run_detokenize(srv_job *job) {
    const lens_model *m = job->model->model;
    json_t *tokens = json_object_get(job->body, "tokens");
    if (!json_is_array(tokens)) {
        srv_error(&job->response, SRV_ERR_BAD_REQUEST, "tokens",
                  "tokens must be a list of ids or a list of lists of ids");
        return;
    }
    bool batched = json_array_size(tokens) && json_is_array(json_array_get(tokens, 0));
    if (!batched) {
        json_t *text = decode_ids(m, tokens, "tokens", &job->response);
        if (text) srv_json(&job->response, MHD_HTTP_OK, json_pack("{s:o}", "text", text));
        return;
    }
    json_t *texts = json_array();
    for (size_t i = 0; i < json_array_size(tokens); i++) {
        char field[32];
        snprintf(field, sizeof field, "tokens[%zu]", i);
        json_t *row = json_array_get(tokens, i), *text;
        if (!json_is_array(row)) {
            srv_error(&job->response, SRV_ERR_BAD_REQUEST, field, "%s must be a list of ids",
                      field);
            json_decref(texts);
            return;
        }
        if (!(text = decode_ids(m, row, field, &job->response))) {
            json_decref(texts);
            return;
        }
        json_array_append_new(texts, text);
    }
    srv_json(&job->response, MHD_HTTP_OK, json_pack("{s:o}", "text", texts));
}

/* srv_answer_send with the job's Accept, into its response. */
static void answer_tensors(srv_job *job, srv_answer *a, json_t *fields) {
    srv_answer_send(job->accept, &job->response, a, fields);
}

static void run_with_cache(srv_job *job) {
    srv_model *sm = job->model;
    const lens_config *c = &sm->model->cfg;
    srv_response *resp = &job->response;
    srv_answer *a = srv_answer_new(c);
    uint8_t *enabled = calloc(lens_hook_slots(c), 1);
    int32_t *positions = NULL;
    int n_positions = 0;
    bool with_logits, keep;
    json_t *dtype = json_object_get(job->body, "dtype");
    lens_err err = {0};
    if (!a || !enabled) {
        srv_out_of_memory(resp);
        goto fail;
    }
    if (dtype && (!json_is_string(dtype) || (strcmp(json_string_value(dtype), "float32") &&
                                             strcmp(json_string_value(dtype), "float16")))) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "dtype", "dtype must be \"float32\" or \"float16\"");
        goto fail;
    }
    const bool half = dtype && strcmp(json_string_value(dtype), "float16") == 0;
    if (optional_bool(job->body, "logits", true, &with_logits, resp) ||
        optional_bool(job->body, "keep", false, &keep, resp) ||
        read_names(c, job->body, enabled, resp) || read_prompts(sm, job->body, &a->batch, resp) ||
        read_positions(job->body, a->batch.T, &positions, &n_positions, resp))
        goto fail;
    const lens_cache_request req = {.enabled = enabled,
                                    .positions = positions,
                                    .n_positions = n_positions,
                                    .logits = with_logits};
    /* the whole batch's cache is allocated, whatever part of it is answered */
    const size_t bytes = lens_cache_bytes(c, a->batch.B, a->batch.T, &req);
    const size_t limit =
        keep ? srv_d.cfg.limits.max_kept_cache_bytes : srv_d.cfg.limits.max_response_bytes;
    if (bytes > limit) {
        srv_error(resp, keep ? SRV_ERR_INSUFFICIENT_STORAGE : SRV_ERR_TOO_LARGE,
                  keep ? "keep" : NULL,
                  "this cache is %zu MB of tensors for %d prompt%s x %d tokens, over the %zu MB "
                  "of limits.%s; ask for fewer names, positions or prompts",
                  bytes >> 20, a->batch.B, a->batch.B == 1 ? "" : "s", a->batch.T, limit >> 20,
                  keep ? "max_kept_cache_bytes" : "max_response_bytes");
        goto fail;
    }
    srv_metrics_batch(a->batch.B);
    if (lens_run_cache(sm->model, &sm->ws, &a->batch, &req, &a->cache, &err)) {
        srv_engine_error(resp, &err, NULL);
        goto fail;
    }
    if (srv_answer_add_tokens(a)) goto oom;
    const int B = a->batch.B, T = a->batch.T, V = c->d_vocab_out;
    if (with_logits)
        srv_answer_add(a, "logits", LENS_F32, 3, (int64_t[]){B, T, V}, a->cache.logits);
    for (int i = 0; i < a->cache.n; i++) {
        const lens_captured *t = &a->cache.tensors[i];
        srv_answer_add(a, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    json_t *batch = json_object_get(job->body, "batch");
    if (batch) { /* the prompts to answer for (the batch slice) */
        int *rows = NULL, n_rows = 0;
        json_t *wrapped = json_pack("{s:O}", "batch", batch);
        int rc = read_indices(wrapped, "batch", a->batch.B, &rows, &n_rows, resp);
        json_decref(wrapped);
        int64_t *rows64 = rc ? NULL : malloc((size_t)n_rows * sizeof *rows64);
        for (int i = 0; rows64 && i < n_rows; i++)
            rows64[i] = rows[i];
        if (!rc && (!rows64 || srv_answer_select_rows(a, rows64, n_rows))) {
            srv_out_of_memory(resp);
            rc = -1;
        }
        free(rows);
        free(rows64);
        if (rc) goto fail;
    }
    if (half) srv_answer_to_half(a);
    free(enabled);
    free(positions);
    if (keep) { /* answered with a handle: GET /v1/caches/{id}[/{name}] */
        json_t *tensors = srv_answer_shapes(a);
        char id[33];
        if (srv_caches_keep(sm->name, srv_token_owner(job->token), a, id, resp)) {
            json_decref(tensors);
            return;
        }
        srv_json(resp, MHD_HTTP_OK,
                 json_pack("{s:s, s:s, s:o, s:f}", "cache_id", id, "model", sm->name, "tensors",
                           tensors, "ttl_s", srv_d.cfg.limits.kept_cache_ttl_s));
        return;
    }
    answer_tensors(job, a,
                   json_pack("{s:s, s:o}", "model", sm->name, "str_tokens",
                             str_tokens_json(sm->model, &a->batch)));
    return;
oom:
    srv_out_of_memory(resp);
fail:
    free(enabled);
    free(positions);
    srv_answer_free(a);
}

/* A logits request between its parsing and its answer. */
typedef struct logits_request {
    srv_job *job;
    srv_answer *a; /* its batch; its cache's logits once run */
    int32_t *positions;
    int n_positions;
    bool want_log_probs, want_loss, want_per_token;
    bool one_position; /* one position and no loss: logits only there ([B, 1, V]) */
    long top_k;
} logits_request;

/* Parses a logits job (0), or answers it with the error (-1). */
static int logits_prepare(srv_job *job, logits_request *lr) {
    srv_model *sm = job->model;
    const lens_config *c = &sm->model->cfg;
    srv_response *resp = &job->response;
    *lr = (logits_request){.job = job, .a = srv_answer_new(c)};
    if (!lr->a) {
        srv_out_of_memory(resp);
        return -1;
    }
    if (optional_bool(job->body, "log_probs", false, &lr->want_log_probs, resp) ||
        optional_bool(job->body, "loss", false, &lr->want_loss, resp) ||
        optional_bool(job->body, "per_token_loss", false, &lr->want_per_token, resp) ||
        optional_int(job->body, "top_k", 0, 1, c->d_vocab_out, &lr->top_k, resp) ||
        read_prompts(sm, job->body, &lr->a->batch, resp) ||
        read_positions(job->body, lr->a->batch.T, &lr->positions, &lr->n_positions, resp))
        return -1;
    lr->one_position = lr->n_positions == 1 && !lr->want_loss && !lr->want_per_token;
    return 0;
}

static void logits_request_free(logits_request *lr) {
    srv_answer_free(lr->a);
    free(lr->positions);
    lr->a = NULL;
    lr->positions = NULL;
}

/* Builds the answer of a request whose a->cache.logits holds its rows
 * ([B, T, V], or [B, 1, V] when one_position), and sends it. */
static void logits_finish(logits_request *lr) {
    srv_job *job = lr->job;
    srv_answer *a = lr->a;
    srv_response *resp = &job->response;
    const lens_config *c = &job->model->model->cfg;
    const int B = a->batch.B, T = a->batch.T, V = c->d_vocab_out;
    const int P = lr->n_positions ? lr->n_positions : T;
    const long top_k = lr->top_k;
    if (srv_answer_add_tokens(a)) goto oom;
    /* the kept positions' rows, and their log-probs */
    float *rows = a->cache.logits, *logp = NULL;
    if (lr->n_positions && !lr->one_position) {
        if (!(rows = a->extra[0] = malloc((size_t)B * P * V * sizeof *rows))) goto oom;
        for (int b = 0; b < B; b++)
            for (int p = 0; p < P; p++)
                memcpy(rows + ((size_t)b * P + p) * V,
                       a->cache.logits + ((size_t)b * T + lr->positions[p]) * V,
                       (size_t)V * sizeof *rows);
    }
    if (lr->want_log_probs) {
        if (!(logp = a->extra[1] = malloc((size_t)B * P * V * sizeof *logp))) goto oom;
        for (size_t r = 0; r < (size_t)B * P; r++)
            lens_log_softmax(rows + r * V, logp + r * V, V);
    }
    json_t *fields = json_pack("{s:s}", "model", job->model->name);
    if (top_k) {
        int64_t *ids = malloc((size_t)B * P * top_k * sizeof *ids);
        float *vals = a->extra[2] = malloc((size_t)B * P * top_k * sizeof *vals);
        float *probs = a->extra[4] = malloc((size_t)B * P * top_k * sizeof *probs);
        int32_t *picked = malloc((size_t)top_k * sizeof *picked); /* one row's ids */
        a->extra[3] = (float *)ids;
        if (!ids || !vals || !probs || !picked) {
            free(picked);
            json_decref(fields);
            goto oom;
        }
        for (size_t r = 0; r < (size_t)B * P; r++) {
            const float *row = rows + r * V;
            const double log_sum = lens_log_sum_exp(row, V);
            lens_top_k(row, V, (int)top_k, picked);
            for (long k = 0; k < top_k; k++) {
                const int32_t id = picked[k];
                ids[r * top_k + k] = id;
                vals[r * top_k + k] = row[id];
                probs[r * top_k + k] = (float)exp((double)row[id] - log_sum);
            }
        }
        free(picked);
        srv_answer_add(a, "top_k_ids", LENS_I64, 3, (int64_t[]){B, P, top_k}, ids);
        srv_answer_add(a, "top_k_logits", LENS_F32, 3, (int64_t[]){B, P, top_k}, vals);
        srv_answer_add(a, "top_k_probs", LENS_F32, 3, (int64_t[]){B, P, top_k}, probs);
    } else {
        srv_answer_add(a, "logits", LENS_F32, 3, (int64_t[]){B, P, V}, rows);
    }
    if (lr->want_log_probs) srv_answer_add(a, "log_probs", LENS_F32, 3, (int64_t[]){B, P, V}, logp);
    if (lr->want_loss || lr->want_per_token) {
        /* TL's lm_cross_entropy_loss: -log_softmax(logits[:, :-1])[next token], the mean
         * over the positions TL counts: with left padding those where t and t+1 are real
         * (0 elsewhere); with right padding all of them, as TL has no mask then */
        double total = 0.0;
        long counted = 0;
        float *per = malloc((size_t)B * (T > 1 ? T - 1 : 1) * sizeof *per);
        if (!per) {
            json_decref(fields);
            goto oom;
        }
        for (int b = 0; b < B; b++)
            for (int t = 0; t + 1 < T; t++) {
                const float *row = a->cache.logits + ((size_t)b * T + t) * V;
                const uint8_t *mask =
                    a->batch.attn_mask ? a->batch.attn_mask + (size_t)b * T : NULL;
                const bool real = !mask || (mask[t] && mask[t + 1]);
                const int32_t next = a->batch.tokens[(size_t)b * T + t + 1];
                float l = real ? -(float)((double)row[next] - lens_log_sum_exp(row, V)) : 0.0f;
                per[(size_t)b * (T - 1) + t] = l;
                total += l;
                counted += real;
            }
        if (lr->want_loss)
            json_object_set_new(fields, "loss", json_real(counted ? total / counted : NAN));
        if (lr->want_per_token) {
            json_object_set_new(fields, "per_token_loss",
                                srv_tensor_json(LENS_F32, 2, (int64_t[]){B, T - 1}, per));
        }
        free(per);
    }
    lr->a = NULL;
    answer_tensors(job, a, fields);
    logits_request_free(lr);
    return;
oom:
    srv_out_of_memory(resp);
    logits_request_free(lr);
}

/* One forward for several requests' prompts (rows stacked, right-padded to
 * the longest), each then given its own rows. Causal attention and right
 * padding make every real position's numbers those of running it alone. */
static void logits_together(srv_model *sm, logits_request *lrs, int n) {
    const lens_config *c = &sm->model->cfg;
    const int V = c->d_vocab_out;
    if (n == 1) { /* alone: its own batch, attention mask included */
        srv_answer *a = lrs->a;
        uint8_t *none = calloc(lens_hook_slots(c), 1);
        int32_t *at = lrs->one_position ? malloc((size_t)a->batch.B * sizeof *at) : NULL;
        lens_err err = {0};
        for (int r = 0; at && r < a->batch.B; r++)
            at[r] = lrs->positions[0];
        const lens_cache_request req = {.enabled = none, .logits = true, .logit_positions = at};
        srv_metrics_batch(a->batch.B);
        int rc = !none || (lrs->one_position && !at)
                     ? (lens_err_set_code(&err, LENS_ERR_NO_MEMORY, "out of memory"), -1)
                     : lens_run_cache(sm->model, &sm->ws, &a->batch, &req, &a->cache, &err);
        free(none);
        free(at);
        if (rc) {
            srv_engine_error(&lrs->job->response, &err, NULL);
            logits_request_free(lrs);
        } else {
            logits_finish(lrs);
        }
        return;
    }
    int B = 0, T = 0;
    bool one_position = true;
    for (int i = 0; i < n; i++) {
        B += lrs[i].a->batch.B;
        T = lrs[i].a->batch.T > T ? lrs[i].a->batch.T : T;
        one_position &= lrs[i].one_position;
    }
    const int32_t pad = sm->model->rules.pad_id >= 0 ? sm->model->rules.pad_id : 0;
    lens_token_batch all = {.B = B, .T = T};
    lens_cache out = {0};
    uint8_t *none = calloc(lens_hook_slots(c), 1);
    int32_t *at = malloc((size_t)B * sizeof *at);
    all.tokens = malloc((size_t)B * T * sizeof *all.tokens);
    lens_err err = {0};
    int failed = !none || !at || !all.tokens;
    for (int i = 0, row = 0; !failed && i < n; i++) {
        const lens_token_batch *b = &lrs[i].a->batch;
        for (int r = 0; r < b->B; r++, row++) {
            for (int t = 0; t < T; t++)
                all.tokens[(size_t)row * T + t] = t < b->T ? b->tokens[(size_t)r * b->T + t] : pad;
            at[row] = lrs[i].one_position ? lrs[i].positions[0] : 0;
        }
    }
    const lens_cache_request req = {
        .enabled = none, .logits = true, .logit_positions = one_position ? at : NULL};
    srv_metrics_batch(B);
    if (!failed) failed = lens_run_cache(sm->model, &sm->ws, &all, &req, &out, &err);
    for (int i = 0, row = 0; i < n; i++) {
        srv_answer *a = lrs[i].a;
        const int Bi = a->batch.B, Ti = a->batch.T, rows_per = lrs[i].one_position ? 1 : Ti;
        if (!failed && (a->cache.logits = malloc((size_t)Bi * rows_per * V * sizeof(float)))) {
            for (int r = 0; r < Bi; r++, row++)
                for (int t = 0; t < rows_per; t++) {
                    const size_t from =
                        one_position ? (size_t)row
                                     : (size_t)row * T +
                                           (size_t)(lrs[i].one_position ? lrs[i].positions[0] : t);
                    memcpy(a->cache.logits + ((size_t)r * rows_per + t) * V, out.logits + from * V,
                           (size_t)V * sizeof(float));
                }
            logits_finish(&lrs[i]);
        } else {
            if (failed)
                srv_engine_error(&lrs[i].job->response, &err, NULL);
            else
                srv_out_of_memory(&lrs[i].job->response);
            logits_request_free(&lrs[i]);
            row += Bi;
        }
    }
    lens_cache_free(&out);
    lens_token_batch_free(&all);
    free(none);
    free(at);
}

void srv_run_logits_jobs(srv_job **jobs, int n) {
    logits_request *lrs = calloc((size_t)n, sizeof *lrs);
    if (!lrs) {
        for (int i = 0; i < n; i++)
            srv_out_of_memory(&jobs[i]->response);
        return;
    }
    srv_model *sm = jobs[0]->model;
    int together = 0;
    for (int i = 0; i < n; i++) {
        if (logits_prepare(jobs[i], &lrs[together])) {
            logits_request_free(&lrs[together]);
            continue;
        }
        /* left padding (a mask) shifts positions: such a request runs alone */
        if (lrs[together].a->batch.attn_mask || !sm->model->cfg.causal)
            logits_together(sm, &lrs[together], 1);
        else
            together++;
    }
    if (together) logits_together(sm, lrs, together);
    free(lrs);
}

static void run_logits(srv_job *job) {
    srv_run_logits_jobs(&job, 1);
}

/* Reads an optional list of indices below limit into *out (all when
 * absent). */
static int read_indices(json_t *body, const char *key, int limit, int **out, int *n,
                        srv_response *resp) {
    json_t *list = json_object_get(body, key);
    *n = list ? (int)json_array_size(list) : limit;
    if (list && (!json_is_array(list) || *n == 0)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, key, "%s must be a non-empty list of integers", key);
        return -1;
    }
    if (!(*out = malloc((size_t)*n * sizeof **out))) {
        srv_out_of_memory(resp);
        return -1;
    }
    for (int i = 0; i < *n; i++) {
        json_t *v = list ? json_array_get(list, (size_t)i) : NULL;
        long x = v ? (json_is_integer(v) ? (long)json_integer_value(v) : -1) : i;
        if (x < 0 && v && json_is_integer(v)) x += limit;
        if (x < 0 || x >= limit) {
            char field[32];
            snprintf(field, sizeof field, "%s[%d]", key, i);
            const bool typed = !v || json_is_integer(v);
            srv_error(resp, typed ? SRV_ERR_UNPROCESSABLE : SRV_ERR_BAD_REQUEST, field,
                      "%s must be an integer from %d to %d (negatives count from the end)", field,
                      -limit, limit - 1);
            free(*out);
            *out = NULL;
            return -1;
        }
        (*out)[i] = (int)x;
    }
    return 0;
}

static void run_attention(srv_job *job) {
    srv_model *sm = job->model;
    const lens_config *c = &sm->model->cfg;
    srv_response *resp = &job->response;
    srv_answer *a = srv_answer_new(c);
    uint8_t *enabled = calloc(lens_hook_slots(c), 1);
    int *layers = NULL, *heads = NULL, n_layers = 0, n_heads = 0;
    lens_err err = {0};
    if (!a || !enabled) {
        srv_out_of_memory(resp);
        goto fail;
    }
    const json_t *prompt = json_object_get(job->body, "prompt");
    const json_t *tokens = json_object_get(job->body, "tokens");
    if (json_object_get(job->body, "prompts") || (prompt && !json_is_string(prompt)) ||
        (!prompt && !(json_is_array(tokens) && json_array_size(tokens) == 1))) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, tokens && !prompt ? "tokens" : "prompt",
                  "attention takes one prompt: \"prompt\" (a string) or \"tokens\" with one row");
        goto fail;
    }
    if (read_indices(job->body, "layers", c->n_layers, &layers, &n_layers, resp) ||
        read_indices(job->body, "heads", c->n_heads, &heads, &n_heads, resp) ||
        read_prompts(sm, job->body, &a->batch, resp))
        goto fail;
    for (int i = 0; i < n_layers; i++)
        enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_PATTERN, layers[i]})] = 1;
    const lens_cache_request req = {.enabled = enabled};
    srv_metrics_batch(1);
    if (lens_run_cache(sm->model, &sm->ws, &a->batch, &req, &a->cache, &err)) {
        srv_engine_error(resp, &err, NULL);
        goto fail;
    }
    const int T = a->batch.T;
    float *patterns = a->extra[0] = malloc((size_t)n_layers * n_heads * T * T * sizeof *patterns);
    if (!patterns || srv_answer_add_tokens(a)) {
        srv_out_of_memory(resp);
        goto fail;
    }
    for (int li = 0; li < n_layers; li++) {
        const lens_captured *t = NULL;
        for (int i = 0; i < a->cache.n && !t; i++)
            if (a->cache.tensors[i].hook.layer == layers[li]) t = &a->cache.tensors[i];
        for (int hi = 0; hi < n_heads; hi++)
            memcpy(patterns + ((size_t)li * n_heads + hi) * T * T,
                   (const float *)t->data + (size_t)heads[hi] * T * T,
                   (size_t)T * T * sizeof *patterns);
    }
    srv_answer_add(a, "patterns", LENS_F32, 4, (int64_t[]){n_layers, n_heads, T, T}, patterns);
    json_t *jl = json_array(), *jh = json_array();
    for (int i = 0; i < n_layers; i++)
        json_array_append_new(jl, json_integer(layers[i]));
    for (int i = 0; i < n_heads; i++)
        json_array_append_new(jh, json_integer(heads[i]));
    json_t *str_tokens = str_tokens_json(sm->model, &a->batch);
    json_t *fields = json_pack("{s:s, s:O, s:o, s:o}", "model", sm->name, "str_tokens",
                               json_array_get(str_tokens, 0), "layers", jl, "heads", jh);
    json_decref(str_tokens);
    free(enabled);
    free(layers);
    free(heads);
    answer_tensors(job, a, fields);
    return;
fail:
    free(enabled);
    free(layers);
    free(heads);
    srv_answer_free(a);
}

static void run_test_prompt(srv_job *job) {
    srv_model *sm = job->model;
    srv_response *resp = &job->response;
    json_t *prompt = json_object_get(job->body, "prompt"),
           *answer = json_object_get(job->body, "answer");
    bool prepend_space, prepend_bos;
    long top_k;
    if (!json_is_string(prompt) || !json_is_string(answer)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, json_is_string(prompt) ? "answer" : "prompt",
                  "test_prompt needs prompt and answer, both strings");
        return;
    }
    if (optional_bool(job->body, "prepend_space_to_answer", true, &prepend_space, resp) ||
        optional_bool(job->body, "prepend_bos", sm->model->cfg.default_prepend_bos, &prepend_bos,
                      resp) ||
        optional_int(job->body, "top_k", 10, 0, sm->model->cfg.d_vocab_out, &top_k, resp))
        return;
    const char *answers[1] = {json_string_value(answer)};
    char *text = NULL;
    size_t text_len = 0;
    FILE *out = open_memstream(&text, &text_len);
    json_t *data = NULL;
    lens_err err = {0};
    const srv_test_prompt_opts opts = {
        .prepend_bos = prepend_bos, .prepend_space_to_answer = prepend_space, .top_k = (int)top_k};
    int rc = out ? srv_test_prompt(sm->model, &sm->ws, json_string_value(prompt), answers, 1, &opts,
                                   out, &data, &err)
                 : -1;
    if (out) fclose(out);
    if (rc) {
        srv_engine_error(resp, &err, NULL);
    } else {
        json_object_set_new(data, "text", json_stringn(text, text_len));
        json_object_set_new(data, "model", json_string(sm->name));
        srv_json(resp, MHD_HTTP_OK, data);
    }
    free(text);
}

/* ---- logit_diff and its attribution ---------------------------------------- */

/* One answer: a string that is one token (no BOS), or a token id. */
static int read_answer(const lens_model *m, json_t *v, const char *field, int32_t *id,
                       srv_response *resp) {
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0 || json_integer_value(v) >= m->cfg.d_vocab_out) {
            srv_error(resp, SRV_ERR_UNPROCESSABLE, field, "%s must be a token id from 0 to %d",
                      field, m->cfg.d_vocab_out - 1);
            return -1;
        }
        *id = (int32_t)json_integer_value(v);
        return 0;
    }
    if (!json_is_string(v)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s must be a string (one token) or a token id",
                  field);
        return -1;
    }
    int32_t *ids = NULL;
    int n = 0;
    lens_err err = {0};
    if (lens_prompt_tokens(m, json_string_value(v), false, &ids, &n, NULL, &err)) {
        srv_engine_error(resp, &err, field);
        return -1;
    }
    if (n != 1) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, field,
                  "%s is %d tokens; answers must be single tokens (to_single_token)", field, n);
        free(ids);
        return -1;
    }
    *id = ids[0] < m->cfg.d_vocab_out ? ids[0] : -1;
    free(ids);
    if (*id < 0) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, field, "%s is not an output token", field);
        return -1;
    }
    return 0;
}

/* "answers": one [answer, wrong] pair for every prompt, or a pair per prompt. */
static int read_answer_pairs(const lens_model *m, json_t *body, int B, int32_t *answer,
                             int32_t *wrong, srv_response *resp) {
    json_t *pairs = json_object_get(body, "answers");
    if (!json_is_array(pairs) || json_array_size(pairs) == 0) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "answers",
                  "answers must be a pair [answer, wrong answer] or a list of one pair per "
                  "prompt");
        return -1;
    }
    const bool one = !json_is_array(json_array_get(pairs, 0));
    if (!one && (int)json_array_size(pairs) != B) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, "answers", "answers has %zu pairs for %d prompts",
                  json_array_size(pairs), B);
        return -1;
    }
    for (int b = 0; b < B; b++) {
        json_t *pair = one ? pairs : json_array_get(pairs, (size_t)b);
        char field[48];
        snprintf(field, sizeof field, one ? "answers" : "answers[%d]", b);
        if (!json_is_array(pair) || json_array_size(pair) != 2) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s must be a pair [answer, wrong answer]",
                      field);
            return -1;
        }
        char f0[sizeof field + 4], f1[sizeof field + 4];
        snprintf(f0, sizeof f0, "%s[0]", field);
        snprintf(f1, sizeof f1, "%s[1]", field);
        if (read_answer(m, json_array_get(pair, 0), f0, &answer[b], resp) ||
            read_answer(m, json_array_get(pair, 1), f1, &wrong[b], resp))
            return -1;
    }
    return 0;
}

/* Row (b, t) of a [B, T, d] activation. */
static const float *row_at(const lens_captured *t, int b, int pos) {
    const size_t T = (size_t)t->shape[1], d = (size_t)t->shape[2];
    return (const float *)t->data + ((size_t)b * T + (size_t)pos) * d;
}

/* One attribution's labels and values [components, B] as JSON, with the
 * batch mean. */
static json_t *attribution_json(json_t *labels, const float *attrs, int n, int B) {
    json_t *per_prompt = json_array(), *mean = json_array();
    for (int i = 0; i < n; i++) {
        json_t *row = json_array();
        double sum = 0.0;
        for (int b = 0; b < B; b++) {
            json_array_append_new(row, srv_json_float(attrs[(size_t)i * B + b]));
            sum += attrs[(size_t)i * B + b];
        }
        json_array_append_new(per_prompt, row);
        json_array_append_new(mean, srv_json_float((float)(sum / B)));
    }
    return json_pack("{s:o, s:o, s:o}", "labels", labels, "per_prompt", per_prompt, "mean", mean);
}

enum { ATTR_ACCUMULATED = 1, ATTR_DECOMPOSE = 2, ATTR_HEADS = 4 };

static int read_attribution(json_t *body, unsigned *which, srv_response *resp) {
    json_t *list = json_object_get(body, "attribution");
    *which = 0;
    if (!list) return 0;
    if (!json_is_array(list)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "attribution",
                  "attribution must be a list of \"accumulated_resid\", \"decompose_resid\", "
                  "\"heads\"");
        return -1;
    }
    for (size_t i = 0; i < json_array_size(list); i++) {
        const char *s = json_string_value(json_array_get(list, i));
        unsigned bit = !s                                    ? 0
                       : strcmp(s, "accumulated_resid") == 0 ? ATTR_ACCUMULATED
                       : strcmp(s, "decompose_resid") == 0   ? ATTR_DECOMPOSE
                       : strcmp(s, "heads") == 0             ? ATTR_HEADS
                                                             : 0;
        if (!bit) {
            char field[48];
            snprintf(field, sizeof field, "attribution[%zu]", i);
            srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                      "%s must be \"accumulated_resid\", \"decompose_resid\" or \"heads\"", field);
            return -1;
        }
        *which |= bit;
    }
    return 0;
}

static void run_logit_diff(srv_job *job) {
    srv_model *sm = job->model;
    const lens_model *m = sm->model;
    const lens_config *c = &m->cfg;
    srv_response *resp = &job->response;
    const int L = c->n_layers, H = c->n_heads, d = c->d_model, dh = c->d_head, V = c->d_vocab_out;
    lens_token_batch batch = {0};
    lens_cache cache = {0};
    uint8_t *enabled = calloc(lens_hook_slots(c), 1);
    int32_t *answer = NULL, *wrong = NULL, *pos = NULL;
    float *dirs = NULL, *stack = NULL, *attrs = NULL;
    unsigned which;
    long position;
    lens_err err = {0};
    if (!enabled) goto oom;
    if (read_attribution(job->body, &which, resp) || read_prompts(sm, job->body, &batch, resp) ||
        optional_int(job->body, "position", 0, -(long)batch.T, batch.T - 1, &position, resp))
        goto out;
    const int B = batch.B, T = batch.T;
    answer = malloc((size_t)B * sizeof *answer);
    wrong = malloc((size_t)B * sizeof *wrong);
    pos = malloc((size_t)B * sizeof *pos);
    dirs = malloc((size_t)B * d * sizeof *dirs);
    /* components: accumulated 2L+1, decompose 2+2L, heads L*H */
    const int max_components = 2 * L + 2 + L * H;
    stack = malloc((size_t)max_components * d * sizeof *stack);
    attrs = malloc((size_t)max_components * B * sizeof *attrs);
    if (!answer || !wrong || !pos || !dirs || !stack || !attrs) goto oom;
    if (read_answer_pairs(m, job->body, B, answer, wrong, resp)) goto out;
    const bool explicit_position = json_object_get(job->body, "position") != NULL;
    for (int b = 0; b < B; b++) {
        pos[b] = explicit_position ? (int32_t)(position < 0 ? position + T : position)
                 : batch.attn_mask ? T - 1 /* left padding: the last position is real */
                                   : batch.lengths[b] - 1;
        lens_logit_direction(m, answer[b], wrong[b], dirs + (size_t)b * d);
    }
    if (which) {
        const bool mlp = !c->attn_only;
        for (int l = 0; l < L; l++) {
            enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_RESID_PRE, l})] |=
                which & ATTR_ACCUMULATED;
            if (mlp)
                enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_RESID_MID, l})] |=
                    which & ATTR_ACCUMULATED;
            enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_ATTN_OUT, l})] |=
                which & ATTR_DECOMPOSE;
            if (mlp)
                enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_MLP_OUT, l})] |=
                    which & ATTR_DECOMPOSE;
            enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_Z, l})] |= which & ATTR_HEADS;
        }
        enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_RESID_POST, L - 1})] |=
            which & ATTR_ACCUMULATED;
        enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_EMBED, 0})] |= which & ATTR_DECOMPOSE;
        enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_POS_EMBED, 0})] |= which & ATTR_DECOMPOSE;
        if (c->normalization != LENS_NORM_NONE)
            enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_LN_FINAL_SCALE, 0})] = 1;
    }
    const lens_cache_request req = {.enabled = enabled, .logits = true, .logit_positions = pos};
    srv_metrics_batch(B);
    if (lens_run_cache(m, &sm->ws, &batch, &req, &cache, &err)) {
        srv_engine_error(resp, &err, NULL);
        goto out;
    }
    json_t *diffs = json_array(), *pairs = json_array(), *positions = json_array();
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        const float *row = cache.logits + (size_t)b * V;
        float diff = row[answer[b]] - row[wrong[b]];
        total += diff;
        json_array_append_new(diffs, srv_json_float(diff));
        json_array_append_new(pairs, json_pack("[i, i]", answer[b], wrong[b]));
        json_array_append_new(positions, json_integer(pos[b]));
    }
    json_t *result =
        json_pack("{s:s, s:o, s:o, s:o, s:o}", "model", sm->name, "answers", pairs, "positions",
                  positions, "logit_diff", diffs, "mean", srv_json_float((float)(total / B)));
    const lens_captured *scale = lens_cache_find(&cache, LENS_HOOK_LN_FINAL_SCALE, 0);
    for (unsigned kind = ATTR_ACCUMULATED; kind <= ATTR_HEADS; kind <<= 1) {
        if (!(which & kind)) continue;
        json_t *labels = json_array();
        int n = 0;
        for (int b = 0; b < B; b++) {
            n = 0;
            char label[32];
#define PUSH(src, text)                                                                            \
    do {                                                                                           \
        memcpy(stack + (size_t)n * d, (src), (size_t)d * sizeof *stack);                           \
        if (b == 0) json_array_append_new(labels, json_string(text));                              \
        n++;                                                                                       \
    } while (0)
            if (kind == ATTR_ACCUMULATED) {
                for (int l = 0; l < L; l++) {
                    snprintf(label, sizeof label, "%d_pre", l);
                    PUSH(row_at(lens_cache_find(&cache, LENS_HOOK_RESID_PRE, l), b, pos[b]), label);
                    if (c->attn_only) continue;
                    snprintf(label, sizeof label, "%d_mid", l);
                    PUSH(row_at(lens_cache_find(&cache, LENS_HOOK_RESID_MID, l), b, pos[b]), label);
                }
                PUSH(row_at(lens_cache_find(&cache, LENS_HOOK_RESID_POST, L - 1), b, pos[b]),
                     "final_post");
            } else if (kind == ATTR_DECOMPOSE) {
                PUSH(row_at(lens_cache_find(&cache, LENS_HOOK_EMBED, 0), b, pos[b]), "embed");
                PUSH(row_at(lens_cache_find(&cache, LENS_HOOK_POS_EMBED, 0), b, pos[b]),
                     "pos_embed");
                for (int l = 0; l < L; l++) {
                    snprintf(label, sizeof label, "%d_attn_out", l);
                    PUSH(row_at(lens_cache_find(&cache, LENS_HOOK_ATTN_OUT, l), b, pos[b]), label);
                    if (c->attn_only) continue;
                    snprintf(label, sizeof label, "%d_mlp_out", l);
                    PUSH(row_at(lens_cache_find(&cache, LENS_HOOK_MLP_OUT, l), b, pos[b]), label);
                }
            } else {
                /* stack_head_results: z[b, pos, h] @ W_O[h], no b_O */
                for (int l = 0; l < L; l++) {
                    const lens_captured *z = lens_cache_find(&cache, LENS_HOOK_Z, l);
                    const float *zrow = (const float *)z->data + ((size_t)b * T + pos[b]) * H * dh;
                    for (int h = 0; h < H; h++) {
                        float *out = stack + (size_t)n * d;
                        const float *W_O = m->w.layers[l].W_O + (size_t)h * dh * d;
                        for (int k = 0; k < d; k++) {
                            double sum = 0.0;
                            for (int j = 0; j < dh; j++)
                                sum += (double)zrow[h * dh + j] * W_O[(size_t)j * d + k];
                            out[k] = (float)sum;
                        }
                        snprintf(label, sizeof label, "L%dH%d", l, h);
                        if (b == 0) json_array_append_new(labels, json_string(label));
                        n++;
                    }
                }
            }
#undef PUSH
            float one_scale = scale ? ((const float *)scale->data)[(size_t)b * T + pos[b]] : 1.0f;
            float *col = malloc((size_t)n * sizeof *col);
            if (!col) {
                json_decref(labels);
                json_decref(result);
                goto oom;
            }
            lens_logit_attrs(c, stack, n, one_scale, dirs + (size_t)b * d, col);
            for (int i = 0; i < n; i++)
                attrs[(size_t)i * B + b] = col[i];
            free(col);
        }
        const char *key = kind == ATTR_ACCUMULATED ? "accumulated_resid"
                          : kind == ATTR_DECOMPOSE ? "decompose_resid"
                                                   : "heads";
        json_t *section = attribution_json(labels, attrs, n, B);
        if (kind == ATTR_HEADS) { /* the mean as [layer][head], for heatmaps */
            json_t *grid = json_array();
            for (int l = 0; l < L; l++) {
                json_t *row = json_array();
                for (int h = 0; h < H; h++)
                    json_array_append(
                        row, json_array_get(json_object_get(section, "mean"), (size_t)l * H + h));
                json_array_append_new(grid, row);
            }
            json_object_set_new(section, "grid", grid);
        }
        json_object_set_new(result, key, section);
    }
    srv_json(resp, MHD_HTTP_OK, result);
    goto out;
oom:
    srv_out_of_memory(resp);
out:
    free(enabled);
    free(answer);
    free(wrong);
    free(pos);
    free(dirs);
    free(stack);
    free(attrs);
    lens_cache_free(&cache);
    lens_token_batch_free(&batch);
}

/* Puts prefix before the field of the error in resp (or names fallback when
 * it has none): errors of a nested object name their full path. */
static void prefix_error_field(srv_response *resp, const char *prefix, const char *fallback) {
    json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
    json_t *error = json_object_get(root, "error");
    const char *field = json_string_value(json_object_get(error, "field"));
    char path[192];
    snprintf(path, sizeof path, "%s%s", prefix, field ? field : fallback);
    json_object_set_new(error, "field", json_string(path));
    size_t len = 0;
    char *body = srv_json_text(root, &len);
    json_decref(root);
    if (!body) return;
    free(resp->body);
    resp->body = body;
    resp->body_len = len;
}

/* ---- run_with_hooks ------------------------------------------------------ */

/* A list of numbers, or one number, into a new array. */
static float *read_numbers(json_t *v, int *n) {
    *n = json_is_array(v) ? (int)json_array_size(v) : 1;
    float *out = *n ? malloc((size_t)*n * sizeof *out) : NULL;
    for (int i = 0; out && i < *n; i++) {
        json_t *x = json_is_array(v) ? json_array_get(v, (size_t)i) : v;
        if (!json_is_number(x)) {
            free(out);
            return NULL;
        }
        out[i] = (float)json_number_value(x);
    }
    return out;
}

/* Everything one run_with_hooks request owns. */
typedef struct hooks_request {
    lens_intervention *items;
    int n;
    float **values;       /* per item */
    int32_t **positions;  /* per item */
    int32_t **heads;      /* per item */
    lens_captured *means; /* per item: the batch mean of a clean run (mean ablation) */
    lens_token_batch source_batch;
    lens_cache source; /* the patch_from run */
} hooks_request;

static void hooks_request_free(hooks_request *h) {
    for (int i = 0; i < h->n; i++) {
        free(h->values[i]);
        free(h->positions[i]);
        free(h->heads[i]);
        free(h->means ? h->means[i].data : NULL);
    }
    free(h->items);
    free(h->values);
    free(h->positions);
    free(h->heads);
    free(h->means);
    lens_token_batch_free(&h->source_batch);
    lens_cache_free(&h->source);
}

/* Parses "hooks" into h (T positions per prompt). Ops: zero, mean, set,
 * add, scale, patch. */
static int read_hooks(const lens_config *c, json_t *body, int T, hooks_request *h,
                      srv_response *resp) {
    json_t *list = json_object_get(body, "hooks");
    if (!json_is_array(list) || json_array_size(list) == 0) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "hooks",
                  "hooks must be a non-empty list of {\"name\", \"op\", ...}");
        return -1;
    }
    h->n = (int)json_array_size(list);
    h->items = calloc((size_t)h->n, sizeof *h->items);
    h->values = calloc((size_t)h->n, sizeof *h->values);
    h->positions = calloc((size_t)h->n, sizeof *h->positions);
    h->heads = calloc((size_t)h->n, sizeof *h->heads);
    h->means = calloc((size_t)h->n, sizeof *h->means);
    if (!h->items || !h->values || !h->positions || !h->heads || !h->means) {
        srv_out_of_memory(resp);
        return -1;
    }
    static const struct {
        const char *name;
        lens_op op;
    } ops[] = {{"zero", LENS_OP_ZERO}, {"mean", LENS_OP_COPY},   {"set", LENS_OP_SET},
               {"add", LENS_OP_ADD},   {"scale", LENS_OP_SCALE}, {"patch", LENS_OP_COPY}};
    for (int i = 0; i < h->n; i++) {
        json_t *item = json_array_get(list, (size_t)i);
        lens_intervention *it = &h->items[i];
        char field[64];
        snprintf(field, sizeof field, "hooks[%d]", i);
        if (!json_is_object(item)) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s must be an object", field);
            return -1;
        }
        const char *name = json_string_value(json_object_get(item, "name"));
        const char *op = json_string_value(json_object_get(item, "op"));
        lens_err err = {0};
        snprintf(field, sizeof field, "hooks[%d].name", i);
        if (!name || lens_hook_parse(c, name, &it->hook, &err)) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s",
                      name ? err.msg : "name must be a hook name");
            return -1;
        }
        if (it->hook.kind == LENS_HOOK_TOKENS) {
            srv_error(resp, SRV_ERR_UNPROCESSABLE, field,
                      "hook_tokens holds token ids; intervene on hook_embed instead");
            return -1;
        }
        snprintf(field, sizeof field, "hooks[%d].op", i);
        int found = -1;
        for (int k = 0; k < (int)(sizeof ops / sizeof ops[0]) && op && found < 0; k++)
            if (strcmp(op, ops[k].name) == 0) found = k;
        if (found < 0) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                      "op must be zero, mean, set, add, scale or patch");
            return -1;
        }
        it->op = ops[found].op;
        if (strcmp(op, "set") == 0 || strcmp(op, "add") == 0) {
            snprintf(field, sizeof field, "hooks[%d].value", i);
            if (!(h->values[i] = read_numbers(json_object_get(item, "value"), &it->value_len))) {
                srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                          "%s must be a number or a list of numbers (one per entry of the last "
                          "axis)",
                          field);
                return -1;
            }
            it->value = h->values[i];
        }
        if (strcmp(op, "scale") == 0) {
            json_t *factor = json_object_get(item, "factor");
            snprintf(field, sizeof field, "hooks[%d].factor", i);
            if (!json_is_number(factor)) {
                srv_error(resp, SRV_ERR_BAD_REQUEST, field, "scale needs a number, factor");
                return -1;
            }
            it->factor = (float)json_number_value(factor);
        }
        /* positions on the hook's position axis; heads where it has them */
        json_t *positions = json_object_get(item, "positions"),
               *heads = json_object_get(item, "heads");
        int n_pos = 0, n_heads = 0;
        char prefix[32];
        snprintf(prefix, sizeof prefix, "hooks[%d].", i);
        if (positions) {
            json_t *wrapped = json_pack("{s:O}", "positions", positions);
            int rc = read_positions(wrapped, T, &h->positions[i], &n_pos, resp);
            json_decref(wrapped);
            if (rc) {
                prefix_error_field(resp, prefix, "positions");
                return -1;
            }
            it->positions = h->positions[i];
            it->n_positions = n_pos;
        }
        snprintf(field, sizeof field, "hooks[%d].heads", i);
        if (heads) {
            if (lens_hook_head_axis(c, it->hook.kind) < 0) {
                srv_error(resp, SRV_ERR_UNPROCESSABLE, field, "%s has no head axis", name);
                return -1;
            }
            int *idx = NULL;
            json_t *wrapped = json_pack("{s:O}", "heads", heads);
            /* k and v of a grouped-query model have n_kv_heads heads */
            int64_t hook_shape[LENS_MAX_DIMS];
            lens_hook_shape(c, it->hook, 1, 1, hook_shape);
            const int hook_heads = (int)hook_shape[lens_hook_head_axis(c, it->hook.kind)];
            int rc = read_indices(wrapped, "heads", hook_heads, &idx, &n_heads, resp);
            json_decref(wrapped);
            if (rc) {
                prefix_error_field(resp, prefix, "heads");
                return -1;
            }
            h->heads[i] = malloc((size_t)n_heads * sizeof *h->heads[i]);
            for (int k = 0; h->heads[i] && k < n_heads; k++)
                h->heads[i][k] = idx[k];
            free(idx);
            it->heads = h->heads[i];
            it->n_heads = n_heads;
        }
    }
    return 0;
}

/* The batch mean (over prompts) of each "mean" item's hook in a clean run
 * of batch, as a one-row source. */
static int mean_sources(srv_model *sm, json_t *body, const lens_token_batch *batch,
                        hooks_request *h, srv_response *resp) {
    const lens_config *c = &sm->model->cfg;
    json_t *list = json_object_get(body, "hooks");
    uint8_t *enabled = calloc(lens_hook_slots(c), 1);
    bool any = false;
    for (int i = 0; enabled && i < h->n; i++) {
        const char *op = json_string_value(json_object_get(json_array_get(list, (size_t)i), "op"));
        if (strcmp(op, "mean") == 0) enabled[lens_hook_slot(c, h->items[i].hook)] = any = true;
    }
    if (!enabled || !any) {
        free(enabled);
        return enabled ? 0 : -1;
    }
    lens_cache clean = {0};
    const lens_cache_request req = {.enabled = enabled};
    lens_err err = {0};
    int rc = lens_run_cache(sm->model, &sm->ws, batch, &req, &clean, &err);
    if (rc) srv_engine_error(resp, &err, "hooks");
    for (int i = 0; rc == 0 && i < h->n; i++) {
        const char *op = json_string_value(json_object_get(json_array_get(list, (size_t)i), "op"));
        if (strcmp(op, "mean") != 0) continue;
        const lens_captured *t =
            lens_cache_find(&clean, h->items[i].hook.kind, h->items[i].hook.layer);
        lens_captured *mean = &h->means[i];
        *mean = *t;
        mean->shape[0] = 1;
        size_t per_row = 1;
        for (int a = 1; a < t->ndim; a++)
            per_row *= (size_t)t->shape[a];
        if (!(mean->data = calloc(per_row, sizeof(float)))) {
            rc = -1;
            srv_out_of_memory(resp);
            break;
        }
        for (int64_t b = 0; b < t->shape[0]; b++)
            for (size_t k = 0; k < per_row; k++)
                ((float *)mean->data)[k] += ((const float *)t->data)[(size_t)b * per_row + k];
        for (size_t k = 0; k < per_row; k++)
            ((float *)mean->data)[k] /= (float)t->shape[0];
        h->items[i].source = mean;
    }
    lens_cache_free(&clean);
    free(enabled);
    return rc;
}

/* The patch_from run (its prompts: "prompt", "prompts" or "tokens", the same
 * number of positions as the batch, and one prompt or as many), capturing
 * the hooks of the "patch" items. */
static int patch_sources(srv_model *sm, json_t *body, const lens_token_batch *batch,
                         hooks_request *h, srv_response *resp) {
    const lens_config *c = &sm->model->cfg;
    json_t *list = json_object_get(body, "hooks"), *from = json_object_get(body, "patch_from");
    uint8_t *enabled = calloc(lens_hook_slots(c), 1);
    bool any = false;
    for (int i = 0; enabled && i < h->n; i++) {
        const char *op = json_string_value(json_object_get(json_array_get(list, (size_t)i), "op"));
        if (strcmp(op, "patch") == 0) enabled[lens_hook_slot(c, h->items[i].hook)] = any = true;
    }
    int rc = -1;
    lens_err err = {0};
    if (!enabled || !any) {
        free(enabled);
        return enabled ? 0 : -1;
    }
    if (!json_is_object(from)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "patch_from",
                  "patch needs patch_from: {\"prompt\" | \"prompts\" | \"tokens\"} to take "
                  "activations from");
        goto out;
    }
    json_t *merged = json_deep_copy(from);
    json_t *bos = json_object_get(body, "prepend_bos"),
           *side = json_object_get(body, "padding_side");
    if (bos && !json_object_get(merged, "prepend_bos")) json_object_set(merged, "prepend_bos", bos);
    if (side && !json_object_get(merged, "padding_side"))
        json_object_set(merged, "padding_side", side);
    rc = read_prompts(sm, merged, &h->source_batch, resp);
    json_decref(merged);
    if (rc) {
        prefix_error_field(resp, "patch_from.", "prompt");
        goto out;
    }
    rc = -1;
    if (h->source_batch.T != batch->T ||
        (h->source_batch.B != 1 && h->source_batch.B != batch->B)) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, "patch_from",
                  "patch_from is %d prompts of %d positions; patching needs %d positions and 1 "
                  "or %d prompts",
                  h->source_batch.B, h->source_batch.T, batch->T, batch->B);
        goto out;
    }
    const lens_cache_request req = {.enabled = enabled};
    if (lens_run_cache(sm->model, &sm->ws, &h->source_batch, &req, &h->source, &err)) {
        srv_engine_error(resp, &err, "patch_from");
        goto out;
    }
    for (int i = 0; i < h->n; i++) {
        const char *op = json_string_value(json_object_get(json_array_get(list, (size_t)i), "op"));
        if (strcmp(op, "patch") == 0)
            h->items[i].source =
                lens_cache_find(&h->source, h->items[i].hook.kind, h->items[i].hook.layer);
    }
    rc = 0;
out:
    free(enabled);
    return rc;
}

static void run_hooks_job(srv_job *job) {
    srv_model *sm = job->model;
    const lens_config *c = &sm->model->cfg;
    srv_response *resp = &job->response;
    srv_answer *a = srv_answer_new(c);
    uint8_t *capture = calloc(lens_hook_slots(c), 1), *intervene = calloc(lens_hook_slots(c), 1);
    hooks_request h = {0};
    int32_t *answer = NULL, *wrong = NULL;
    bool with_logits;
    lens_err err = {0};
    if (!a || !capture || !intervene) {
        srv_out_of_memory(resp);
        goto out;
    }
    const bool want_cache =
        json_object_get(job->body, "names") || json_object_get(job->body, "names_filter");
    if (optional_bool(job->body, "logits", true, &with_logits, resp) ||
        (want_cache && read_names(c, job->body, capture, resp)) ||
        read_prompts(sm, job->body, &a->batch, resp) ||
        read_hooks(c, job->body, a->batch.T, &h, resp) ||
        mean_sources(sm, job->body, &a->batch, &h, resp) ||
        patch_sources(sm, job->body, &a->batch, &h, resp))
        goto out;
    const int B = a->batch.B, T = a->batch.T, V = c->d_vocab_out;
    json_t *fields = json_pack("{s:s}", "model", sm->name);
    for (int i = 0; i < h.n; i++)
        intervene[lens_hook_slot(c, h.items[i].hook)] = 1;
    const lens_intervention_list list = {c, h.items, h.n};
    const bool metric = json_object_get(job->body, "answers") != NULL;
    const lens_cache_request req = {.enabled = capture,
                                    .logits = with_logits || metric,
                                    .intervene = intervene,
                                    .intervention = lens_intervene,
                                    .intervention_user = (void *)&list};
    srv_metrics_batch(B);
    if (lens_run_cache(sm->model, &sm->ws, &a->batch, &req, &a->cache, &err)) {
        json_decref(fields);
        srv_engine_error(resp, &err, "hooks");
        goto out;
    }
    if (metric) { /* logit difference at each prompt's last real token */
        answer = malloc((size_t)B * sizeof *answer);
        wrong = malloc((size_t)B * sizeof *wrong);
        if (!answer || !wrong || read_answer_pairs(sm->model, job->body, B, answer, wrong, resp)) {
            json_decref(fields);
            if (!answer || !wrong) srv_out_of_memory(resp);
            goto out;
        }
        json_t *diffs = json_array();
        double total = 0.0;
        for (int b = 0; b < B; b++) {
            const int t = a->batch.attn_mask ? T - 1 : a->batch.lengths[b] - 1;
            const float *row = a->cache.logits + ((size_t)b * T + t) * V;
            total += row[answer[b]] - row[wrong[b]];
            json_array_append_new(diffs, srv_json_float(row[answer[b]] - row[wrong[b]]));
        }
        json_object_set_new(fields, "logit_diff", diffs);
        json_object_set_new(fields, "mean", srv_json_float((float)(total / B)));
    }
    if (srv_answer_add_tokens(a)) {
        json_decref(fields);
        srv_out_of_memory(resp);
        goto out;
    }
    if (with_logits)
        srv_answer_add(a, "logits", LENS_F32, 3, (int64_t[]){B, T, V}, a->cache.logits);
    for (int i = 0; i < a->cache.n; i++) {
        const lens_captured *t = &a->cache.tensors[i];
        srv_answer_add(a, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    answer_tensors(job, a, fields);
    a = NULL;
out:
    srv_answer_free(a);
    free(capture);
    free(intervene);
    free(answer);
    free(wrong);
    hooks_request_free(&h);
}

/* ---- generate -------------------------------------------------------------- */

/* splitmix64: the sampler's random numbers, reproducible from the seed. */
static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The next token from one row of logits: the argmax, or a sample from
 * softmax(logits / temperature) over the top_k largest (0: all); top_ids
 * is scratch for top_k ids. */
static int32_t pick_token(const float *logits, int V, bool sample, float temperature, int top_k,
                          uint64_t *rng, int32_t *top_ids) {
    int best = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = v;
    if (!sample) return best;
    float cutoff = -INFINITY;
    if (top_k > 0 && top_k < V) { /* the k-th largest logit */
        lens_top_k(logits, V, top_k, top_ids);
        cutoff = logits[top_ids[top_k - 1]];
    }
    double total = 0.0;
    for (int v = 0; v < V; v++)
        total += logits[v] >= cutoff ? exp(((double)logits[v] - logits[best]) / temperature) : 0.0;
    double u = (double)(next_random(rng) >> 11) / 9007199254740992.0 * total, acc = 0.0;
    for (int v = 0; v < V; v++) {
        if (logits[v] < cutoff) continue;
        acc += exp(((double)logits[v] - logits[best]) / temperature);
        if (acc >= u) return v;
    }
    return best;
}

/* Registers a long job under the request's optional "progress_id" (see
 * progress.h). Returns it, or NULL with the refusal in resp. */
static srv_progress *begin_progress(srv_job *job, srv_response *resp) {
    json_t *progress_id = json_object_get(job->body, "progress_id");
    if (progress_id && !json_is_string(progress_id)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "progress_id",
                  "progress_id must be a string (then GET /v1/progress/{id} follows the job)");
        return NULL;
    }
    return srv_progress_begin(json_string_value(progress_id), srv_token_owner(job->token),
                              job->connection, resp);
}

/* Answers a long job that progress said to stop: 409 cancelled (by DELETE
 * /v1/progress/{id}) or 499 (its client closed the connection; nobody reads
 * it, the log line shows it). what: how far it got. Returns false, answering
 * nothing, when the job was not stopped. */
static bool answer_if_stopped(srv_job *job, const srv_progress *progress, const char *what) {
    const char *id = json_string_value(json_object_get(job->body, "progress_id"));
    switch (srv_progress_stopped(progress)) {
    case SRV_STOP_CANCELLED:
        srv_error(&job->response, SRV_ERR_CANCELLED, "progress_id", "%s (DELETE /v1/progress/%s)",
                  what, id ? id : "");
        return true;
    case SRV_STOP_CLIENT_GONE:
        srv_error(&job->response, SRV_ERR_CLIENT_CLOSED, NULL,
                  "%s: the client closed the connection", what);
        return true;
    case SRV_STOP_NONE:
        break;
    }
    return false;
}

static void run_generate(srv_job *job) {
    srv_model *sm = job->model;
    const lens_model *m = sm->model;
    const lens_config *c = &m->cfg;
    srv_response *resp = &job->response;
    lens_token_batch start = {0};
    hooks_request h = {0};
    uint8_t *none = calloc(lens_hook_slots(c), 1), *intervene = calloc(lens_hook_slots(c), 1);
    int32_t *tokens = NULL, *last = NULL, *scratch_ids = NULL;
    int32_t *top_ids = NULL;
    srv_progress *progress = NULL;
    bool sample, stop_at_eos;
    long max_new, top_k, seed;
    json_t *temperature_json = json_object_get(job->body, "temperature");
    double temperature = temperature_json ? json_number_value(temperature_json) : 1.0;
    lens_err err = {0};
    if (!none || !intervene) {
        srv_out_of_memory(resp);
        goto out;
    }
    if (optional_bool(job->body, "do_sample", false, &sample, resp) ||
        optional_bool(job->body, "stop_at_eos", true, &stop_at_eos, resp) ||
        optional_int(job->body, "max_new_tokens", 10, 1, c->n_ctx, &max_new, resp) ||
        optional_int(job->body, "top_k", 0, 0, c->d_vocab_out, &top_k, resp) ||
        optional_int(job->body, "seed", 0, 0, INT64_MAX, &seed, resp))
        goto out;
    if (temperature_json && (!json_is_number(temperature_json) || temperature <= 0)) {
        srv_error(resp,
                  json_is_number(temperature_json) ? SRV_ERR_UNPROCESSABLE : SRV_ERR_BAD_REQUEST,
                  "temperature", "temperature must be a number above 0");
        goto out;
    }
    if (read_prompts(sm, job->body, &start, resp)) goto out;
    if (json_object_get(job->body, "hooks")) {
        /* positions are those of the whole sequence, which grows */
        if (read_hooks(c, job->body, c->n_ctx, &h, resp)) goto out;
        for (int i = 0; i < h.n; i++) {
            const char *op = json_string_value(json_object_get(
                json_array_get(json_object_get(job->body, "hooks"), (size_t)i), "op"));
            if (h.items[i].op == LENS_OP_COPY) {
                char field[32];
                snprintf(field, sizeof field, "hooks[%d].op", i);
                srv_error(resp, SRV_ERR_UNPROCESSABLE, field,
                          "generate takes zero, set, add and scale; %s needs a fixed length", op);
                goto out;
            }
            intervene[lens_hook_slot(c, h.items[i].hook)] = 1;
        }
    }
    const int B = start.B, V = c->d_vocab_out;
    const int T_max = start.T + (int)max_new > c->n_ctx ? c->n_ctx : start.T + (int)max_new;
    double work = 0.0; /* token positions through the model: each step runs the whole rows */
    for (int T = start.T; T < T_max; T++)
        work += (double)B * T;
    if (work > srv_d.cfg.limits.max_generate_tokens) {
        srv_error(resp, SRV_ERR_TOO_LARGE, "max_new_tokens",
                  "%d prompt%s of up to %d tokens and %ld new tokens each run %.0f token "
                  "positions through the model (every step runs the whole rows so far), more "
                  "than limits.max_generate_tokens (%d): ask for fewer prompts or new tokens",
                  B, B == 1 ? "" : "s", start.T, max_new, work,
                  srv_d.cfg.limits.max_generate_tokens);
        goto out;
    }
    if (!(progress = begin_progress(job, resp))) goto out;
    tokens = malloc((size_t)B * T_max * sizeof *tokens);
    last = malloc((size_t)B * sizeof *last);
    top_ids = malloc((size_t)V * sizeof *top_ids);
    scratch_ids = malloc((size_t)T_max * sizeof *scratch_ids);
    int *length = calloc((size_t)B, sizeof *length);
    bool *done = calloc((size_t)B, sizeof *done);
    uint64_t rng = (uint64_t)seed;
    if (!tokens || !last || !top_ids || !scratch_ids || !length || !done) {
        free(length);
        free(done);
        srv_out_of_memory(resp);
        goto out;
    }
    /* Every row grows from its own real tokens (right padding: pads are
     * dropped; left padding keeps its mask by regenerating it below). */
    for (int b = 0; b < B; b++) {
        length[b] = start.lengths[b];
        const int32_t *row =
            start.tokens + (size_t)b * start.T + (start.attn_mask ? start.T - start.lengths[b] : 0);
        memcpy(tokens + (size_t)b * T_max, row, (size_t)length[b] * sizeof *tokens);
    }
    const lens_intervention_list list = {c, h.items, h.n};
    const int32_t pad = m->rules.pad_id >= 0 ? m->rules.pad_id : 0;
    for (int step = 0; step < max_new; step++) {
        if (srv_progress_update(progress, step, max_new)) {
            char what[96];
            snprintf(what, sizeof what, "generate stopped after %d of %ld steps", step, max_new);
            answer_if_stopped(job, progress, what);
            break;
        }
        int T = 0;
        for (int b = 0; b < B; b++)
            T = length[b] > T ? length[b] : T;
        if (T >= c->n_ctx) break;
        /* right-padded batch of the current rows; each reads its last real position */
        lens_token_batch cur = {.B = B, .T = T};
        cur.tokens = malloc((size_t)B * T * sizeof *cur.tokens);
        cur.lengths = malloc((size_t)B * sizeof *cur.lengths);
        if (!cur.tokens || !cur.lengths) {
            lens_token_batch_free(&cur);
            srv_out_of_memory(resp);
            break;
        }
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T; t++)
                cur.tokens[(size_t)b * T + t] = t < length[b] ? tokens[(size_t)b * T_max + t] : pad;
            cur.lengths[b] = length[b];
            last[b] = length[b] - 1;
        }
        lens_cache out = {0};
        const lens_cache_request req = {.enabled = none,
                                        .logits = true,
                                        .logit_positions = last,
                                        .intervene = h.n ? intervene : NULL,
                                        .intervention = lens_intervene,
                                        .intervention_user = (void *)&list};
        srv_metrics_batch(B);
        int rc = lens_run_cache(m, &sm->ws, &cur, &req, &out, &err);
        lens_token_batch_free(&cur);
        if (rc) {
            lens_cache_free(&out);
            srv_engine_error(resp, &err, NULL);
            break;
        }
        bool all_done = true;
        for (int b = 0; b < B; b++) {
            if (done[b] || length[b] >= T_max) continue;
            int32_t next = pick_token(out.logits + (size_t)b * V, V, sample, (float)temperature,
                                      (int)top_k, &rng, top_ids);
            tokens[(size_t)b * T_max + length[b]++] = next;
            done[b] = stop_at_eos && next == m->rules.eos_id;
            all_done &= done[b] || length[b] >= T_max;
        }
        lens_cache_free(&out);
        if (all_done) break;
    }
    if (resp->status == 0) {
        json_t *rows = json_array(), *texts = json_array();
        for (int b = 0; b < B; b++) {
            json_t *row = json_array();
            for (int t = 0; t < length[b]; t++)
                json_array_append_new(row, json_integer(tokens[(size_t)b * T_max + t]));
            /* the text as TL's generate decodes it: skip_special_tokens */
            size_t n_plain = 0, len = 0;
            for (int t = 0; t < length[b]; t++) {
                const int32_t id = tokens[(size_t)b * T_max + t];
                if (id != m->rules.bos_id && id != m->rules.eos_id && id != m->rules.pad_id)
                    scratch_ids[n_plain++] = id;
            }
            char *text = m->tok ? lens_tok_decode(m->tok, scratch_ids, n_plain, &len, NULL) : NULL;
            json_array_append_new(texts, text ? json_stringn(text, len) : json_null());
            free(text);
            json_array_append_new(rows, row);
        }
        srv_json(resp, MHD_HTTP_OK,
                 json_pack("{s:s, s:o, s:o}", "model", sm->name, "tokens", rows, "text", texts));
    }
    free(length);
    free(done);
out:
    free(none);
    free(intervene);
    free(tokens);
    free(last);
    free(top_ids);
    free(scratch_ids);
    srv_progress_end(progress);
    hooks_request_free(&h);
    lens_token_batch_free(&start);
}

/* ---- patch: activation patching sweeps -------------------------------------- */

/* The metric's answers: "logit_diff" pairs as in logit_diff, or for "logit"
 * one "answer" for every prompt or a list of one per prompt. */
static int read_metric_answers(const lens_model *m, json_t *metric, lens_metric_kind kind, int B,
                               int32_t *answer, int32_t *wrong, srv_response *resp) {
    if (kind == LENS_METRIC_LOGIT_DIFF) return read_answer_pairs(m, metric, B, answer, wrong, resp);
    json_t *v = json_object_get(metric, "answer");
    const bool each = json_is_array(v);
    if (each && (int)json_array_size(v) != B) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, "metric.answer",
                  "metric.answer has %zu answers for %d prompts", json_array_size(v), B);
        return -1;
    }
    for (int b = 0; b < B; b++) {
        char field[48];
        snprintf(field, sizeof field, each ? "metric.answer[%d]" : "metric.answer", b);
        if (read_answer(m, each ? json_array_get(v, (size_t)b) : v, field, &answer[b], resp))
            return -1;
    }
    return 0;
}

/* One labelled axis of a sweep's output. */
static json_t *axis_json(const char *name, const lens_config *c, json_t *pos_labels,
                         json_t *components) {
    json_t *labels;
    if (strcmp(name, "layer") == 0) {
        labels = json_array();
        for (int l = 0; l < c->n_layers; l++)
            json_array_append_new(labels, json_integer(l));
    } else if (strcmp(name, "head") == 0) {
        labels = json_array();
        for (int h = 0; h < c->n_heads; h++)
            json_array_append_new(labels, json_sprintf("H%d", h));
    } else if (strcmp(name, "component") == 0) {
        labels = json_incref(components);
    } else {
        labels = json_incref(pos_labels);
    }
    return json_pack("{s:s, s:o}", "name", name, "labels", labels);
}

#define PATH_SWEEP "path_patch_heads"

/* Path patching's "receivers" ([[layer, head], ...]) and "receiver_input"
 * ("q" default, "k", "v"). */
static int read_receivers(const lens_config *c, json_t *body, int (**out)[2], int *n,
                          lens_hook_kind *input, srv_response *resp) {
    json_t *list = json_object_get(body, "receivers");
    if (!json_is_array(list) || json_array_size(list) == 0) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "receivers",
                  "%s needs receivers: a list of [layer, head] pairs", PATH_SWEEP);
        return -1;
    }
    *n = (int)json_array_size(list);
    if (!(*out = malloc((size_t)*n * sizeof **out))) {
        srv_out_of_memory(resp);
        return -1;
    }
    for (int i = 0; i < *n; i++) {
        json_t *pair = json_array_get(list, (size_t)i);
        json_t *l = json_array_get(pair, 0), *h = json_array_get(pair, 1);
        if (json_array_size(pair) != 2 || !json_is_integer(l) || !json_is_integer(h) ||
            json_integer_value(l) < 0 || json_integer_value(l) >= c->n_layers ||
            json_integer_value(h) < 0 || json_integer_value(h) >= c->n_heads) {
            char field[32];
            snprintf(field, sizeof field, "receivers[%d]", i);
            srv_error(resp, SRV_ERR_UNPROCESSABLE, field,
                      "%s must be [layer, head] with a layer from 0 to %d and a head from 0 to %d",
                      field, c->n_layers - 1, c->n_heads - 1);
            return -1;
        }
        (*out)[i][0] = (int)json_integer_value(l);
        (*out)[i][1] = (int)json_integer_value(h);
    }
    const char *s = json_string_value(json_object_get(body, "receiver_input"));
    if (json_object_get(body, "receiver_input") &&
        (!s || (strcmp(s, "q") && strcmp(s, "k") && strcmp(s, "v")))) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "receiver_input",
                  "receiver_input must be \"q\", \"k\" or \"v\"");
        return -1;
    }
    *input = !s || s[0] == 'q' ? LENS_HOOK_Q : s[0] == 'k' ? LENS_HOOK_K : LENS_HOOK_V;
    if (*input != LENS_HOOK_Q && c->n_kv_heads != c->n_heads) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, "receiver_input",
                  "path patching into k or v needs as many key/value heads as query heads (this "
                  "model has %d of %d); patch the receivers' q",
                  c->n_kv_heads, c->n_heads);
        return -1;
    }
    return 0;
}

/* lens_patch's progress callback: nonzero stops the sweep. */
static int patch_progress(void *user, long done, long total) {
    return srv_progress_update(user, done, total);
}

static void run_patch(srv_job *job) {
    srv_model *sm = job->model;
    const lens_model *m = sm->model;
    const lens_config *c = &m->cfg;
    srv_response *resp = &job->response;
    json_t *body = job->body, *metric = json_object_get(body, "metric");
    lens_token_batch clean = {0}, corrupted = {0};
    lens_patch_result result = {0};
    srv_progress *progress = NULL;
    int32_t *answer = NULL, *wrong = NULL, *pos = NULL;
    srv_answer *a = NULL;
    lens_sweep sweep = LENS_SWEEP_COUNT;
    int(*receivers)[2] = NULL;
    int n_receivers = 0;
    lens_hook_kind receiver_input = LENS_HOOK_Q;
    lens_err err = {0};
    const char *sweep_name = json_string_value(json_object_get(body, "sweep"));
    const bool path = sweep_name && strcmp(sweep_name, PATH_SWEEP) == 0;
    if (!sweep_name || (!path && lens_sweep_parse(sweep_name, &sweep))) {
        char names[1024] = "";
        size_t used = 0;
        for (int i = 0; i < LENS_SWEEP_COUNT && used < sizeof names; i++)
            used += (size_t)snprintf(names + used, sizeof names - used, "%s, ",
                                     lens_sweep_name((lens_sweep)i));
        srv_error(resp, SRV_ERR_BAD_REQUEST, "sweep",
                  "sweep must be one of: %s(TransformerLens's get_act_patch_* names) or %s", names,
                  PATH_SWEEP);
        return;
    }
    if (path && read_receivers(c, body, &receivers, &n_receivers, &receiver_input, resp)) {
        free(receivers);
        return;
    }
    json_t *clean_json = json_object_get(body, "clean"),
           *bad_json = json_object_get(body, "corrupted");
    if (!json_is_object(clean_json) || !json_is_object(bad_json) || !json_is_object(metric)) {
        const char *field = !json_is_object(clean_json) ? "clean"
                            : !json_is_object(bad_json) ? "corrupted"
                                                        : "metric";
        srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                  "%s must be an object (clean and corrupted: {\"prompts\": [...]} or "
                  "{\"tokens\": [[...]]}; metric: {\"type\": \"logit_diff\", \"answers\": [...]})",
                  field);
        return;
    }
    const char *type = json_string_value(json_object_get(metric, "type"));
    lens_metric_kind kind = LENS_METRIC_LOGIT_DIFF;
    if (type && strcmp(type, "logit") == 0) {
        kind = LENS_METRIC_LOGIT;
    } else if (json_object_get(metric, "type") && (!type || strcmp(type, "logit_diff") != 0)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "metric.type",
                  "metric.type must be \"logit_diff\" (the default) or \"logit\"");
        return;
    }
    bool normalize, full_recompute;
    long position;
    if (optional_bool(metric, "normalize", false, &normalize, resp) ||
        optional_bool(body, "full_recompute", false, &full_recompute, resp) ||
        read_prompts(sm, clean_json, &clean, resp) || read_prompts(sm, bad_json, &corrupted, resp))
        goto out;
    const int B = corrupted.B, T = corrupted.T;
    if (clean.B != B || clean.T != T) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, "corrupted",
                  "clean and corrupted must have the same shape: %d prompts of %d tokens against "
                  "%d of %d",
                  clean.B, clean.T, B, T);
        goto out;
    }
    if (optional_int(metric, "position", 0, -(long)T, T - 1, &position, resp)) goto out;
    answer = malloc((size_t)B * sizeof *answer);
    wrong = malloc((size_t)B * sizeof *wrong);
    pos = malloc((size_t)B * sizeof *pos);
    if (!answer || !wrong || !pos) {
        srv_out_of_memory(resp);
        goto out;
    }
    if (read_metric_answers(m, metric, kind, B, answer, wrong, resp)) goto out;
    const bool explicit_position = json_object_get(metric, "position") != NULL;
    for (int b = 0; b < B; b++)
        pos[b] = explicit_position     ? (int32_t)(position < 0 ? position + T : position)
                 : corrupted.attn_mask ? T - 1
                                       : corrupted.lengths[b] - 1;
    int64_t shape[4];
    long runs = 0;
    if (path) {
        for (int i = 0; i < n_receivers; i++)
            runs = receivers[i][0] * c->n_heads > runs ? receivers[i][0] * c->n_heads : runs;
        runs *= 2; /* two passes per sender */
    } else {
        lens_sweep_shape(c, sweep, T, shape, &runs);
    }
    const double work = (double)runs * B * T;
    if (work > srv_d.cfg.limits.max_patch_tokens) {
        srv_error(resp, SRV_ERR_TOO_LARGE, "sweep",
                  "sweep %s is %ld patched runs of %d prompt%s x %d tokens (%.0f tokens), more "
                  "than limits.max_patch_tokens (%d): patch fewer positions or prompts",
                  sweep_name, runs, B, B == 1 ? "" : "s", T, work,
                  srv_d.cfg.limits.max_patch_tokens);
        goto out;
    }
    if (!(progress = begin_progress(job, resp))) goto out;
    const lens_patch_request req = {
        .sweep = sweep,
        .clean = &clean,
        .corrupted = &corrupted,
        .metric = {.kind = kind,
                   .answer = answer,
                   .wrong = wrong,
                   .positions = pos,
                   .normalize = normalize},
        .full_recompute = full_recompute,
        .progress = patch_progress,
        .progress_user = progress,
    };
    const lens_path_request path_req = {
        .clean = &clean,
        .corrupted = &corrupted,
        .metric = req.metric,
        .receivers = (const int(*)[2])receivers,
        .n_receivers = n_receivers,
        .receiver_input = receiver_input,
        .full_recompute = full_recompute,
        .progress = patch_progress,
        .progress_user = progress,
    };
    const double t0 = srv_now_s();
    srv_metrics_batch(B);
    if (path ? lens_path_patch(m, &sm->ws, &path_req, &result, &err)
             : lens_patch(m, &sm->ws, &req, &result, &err)) {
        if (!answer_if_stopped(job, progress, err.msg)) srv_engine_error(resp, &err, NULL);
        goto out;
    }
    const double seconds = srv_now_s() - t0;
    if (!(a = srv_answer_new(c))) {
        srv_out_of_memory(resp);
        goto out;
    }
    a->extra[0] = result.values;
    result.values = NULL;
    srv_answer_add(a, "values", LENS_F32, result.ndim, result.shape, a->extra[0]);
    const char *axis_names[4] = {"layer", "head"}, *component_names[5] = {PATH_SWEEP};
    if (!path) lens_sweep_axes(sweep, axis_names);
    const int n_components = path ? 1 : lens_sweep_components(sweep, component_names);
    json_t *components = json_array(), *str_tokens = str_tokens_json(m, &clean);
    for (int i = 0; i < n_components; i++)
        json_array_append_new(components, json_string(component_names[i]));
    json_t *axes = json_array();
    for (int i = 0; i < result.ndim; i++)
        json_array_append_new(
            axes, axis_json(axis_names[i], c, json_array_get(str_tokens, 0), components));
    json_t *fields = json_pack(
        "{s:s, s:s, s:o, s:O, s:o, s:o, s:b, s:i, s:i, s:i, s:i, s:b, s:f}", "model", sm->name,
        "sweep", sweep_name, "axes", axes, "components", components, "clean_metric",
        srv_json_float((float)result.clean_metric), "corrupted_metric",
        srv_json_float((float)result.corrupted_metric), "normalized", normalize, "runs",
        (json_int_t)result.runs, "unchanged_runs", (json_int_t)result.unchanged_runs, "passes",
        (json_int_t)result.passes, "block_positions", (json_int_t)result.block_positions,
        "full_recompute", full_recompute, "seconds", seconds);
    json_decref(components);
    json_decref(str_tokens);
    answer_tensors(job, a, fields);
    a = NULL;
out:
    free(receivers);
    srv_progress_end(progress);
    srv_answer_free(a);
    lens_patch_result_free(&result);
    lens_token_batch_free(&clean);
    lens_token_batch_free(&corrupted);
    free(answer);
    free(wrong);
    free(pos);
}

void srv_run_job(srv_job *job) {
    switch (job->kind) {
    case SRV_JOB_TOKENIZE:
        run_tokenize(job);
        break;
    case SRV_JOB_DETOKENIZE:
        run_detokenize(job);
        break;
    case SRV_JOB_LOGITS:
        run_logits(job);
        break;
    case SRV_JOB_RUN_WITH_CACHE:
        run_with_cache(job);
        break;
    case SRV_JOB_ATTENTION:
        run_attention(job);
        break;
    case SRV_JOB_TEST_PROMPT:
        run_test_prompt(job);
        break;
    case SRV_JOB_LOGIT_DIFF:
        run_logit_diff(job);
        break;
    case SRV_JOB_RUN_WITH_HOOKS:
        run_hooks_job(job);
        break;
    case SRV_JOB_GENERATE:
        run_generate(job);
        break;
    case SRV_JOB_PATCH:
        run_patch(job);
        break;
    case SRV_JOB_ADMIN_LOAD:
    case SRV_JOB_ADMIN_UNLOAD:
        break; /* admin.c runs these on threads of their own */
    }
}

/* ---- routing ------------------------------------------------------------ */

/* find_model with models_lock held. */
static srv_model *find_model_locked(const char *name, size_t len) {
    for (int i = 0; i < srv_d.n_models; i++)
        if (srv_d.models[i].present && strlen(srv_d.models[i].name) == len &&
            strncmp(srv_d.models[i].name, name, len) == 0)
            return &srv_d.models[i];
    return NULL;
}

srv_model *srv_find_model(const char *name, size_t len) {
    pthread_rwlock_rdlock(&srv_d.models_lock);
    srv_model *m = find_model_locked(name, len);
    pthread_rwlock_unlock(&srv_d.models_lock);
    return m;
}

/* The routes under /v1/models/{m}/: each a POST, run as a job of its kind. */
static const struct {
    const char *action;
    srv_job_kind kind;
} model_actions[] = {{"tokenize", SRV_JOB_TOKENIZE},     {"detokenize", SRV_JOB_DETOKENIZE},
                     {"logits", SRV_JOB_LOGITS},         {"run_with_cache", SRV_JOB_RUN_WITH_CACHE},
                     {"attention", SRV_JOB_ATTENTION},   {"test_prompt", SRV_JOB_TEST_PROMPT},
                     {"logit_diff", SRV_JOB_LOGIT_DIFF}, {"run_with_hooks", SRV_JOB_RUN_WITH_HOOKS},
                     {"generate", SRV_JOB_GENERATE},     {"patch", SRV_JOB_PATCH}};
#define N_MODEL_ACTIONS (sizeof model_actions / sizeof model_actions[0])

/* The index in model_actions of the action action[0..len-1], or -1. */
static int model_action(const char *action, size_t len) {
    for (size_t i = 0; i < N_MODEL_ACTIONS; i++)
        if (strlen(model_actions[i].action) == len &&
            memcmp(action, model_actions[i].action, len) == 0)
            return (int)i;
    return -1;
}

bool srv_is_model_action(const char *action, size_t len) {
    return model_action(action, len) >= 0;
}

srv_job *srv_route(const char *method, const char *url, const char *accept, const char *body,
                   size_t body_len, srv_response *resp) {
    const bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    if (strcmp(url, "/healthz") == 0 || strcmp(url, "/readyz") == 0 ||
        strcmp(url, "/metrics") == 0 || strcmp(url, "/v1/models") == 0) {
        if (!get) {
            srv_error(resp, SRV_ERR_METHOD_NOT_ALLOWED, NULL, "%s takes GET, not %s", url, method);
        } else if (strcmp(url, "/healthz") == 0) {
            srv_json(resp, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
        } else if (strcmp(url, "/readyz") == 0) {
            json_t *names = json_array();
            pthread_rwlock_rdlock(&srv_d.models_lock);
            for (int i = 0; i < srv_d.n_models; i++)
                if (srv_d.models[i].present)
                    json_array_append_new(names, json_string(srv_d.models[i].name));
            pthread_rwlock_unlock(&srv_d.models_lock);
            bool ready = srv_d.ready && !srv_d.draining;
            srv_json(resp, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
                     json_pack("{s:s, s:o}", "status",
                               ready            ? "ready"
                               : srv_d.draining ? "draining"
                                                : "starting",
                               "models", names));
        } else if (strcmp(url, "/metrics") == 0) {
            resp->status = MHD_HTTP_OK;
            resp->content_type = "text/plain; version=0.0.4";
            resp->body = srv_metrics_text(&resp->body_len);
        } else {
            json_t *list = json_array();
            pthread_rwlock_rdlock(&srv_d.models_lock);
            for (int i = 0; i < srv_d.n_models; i++)
                if (srv_d.models[i].present)
                    json_array_append_new(list, json_loads(srv_d.models[i].summary_json, 0, NULL));
            pthread_rwlock_unlock(&srv_d.models_lock);
            srv_json(resp, MHD_HTTP_OK, json_pack("{s:o}", "models", list));
        }
        return NULL;
    }
    const char *prefix = "/v1/models/";
    if (strncmp(url, prefix, strlen(prefix)) != 0) {
        srv_error(resp, SRV_ERR_NOT_FOUND, NULL, "no such route: %s", url);
        return NULL;
    }
    if (!srv_d.ready) {
        srv_error(resp, SRV_ERR_UNAVAILABLE, NULL, "the models are still loading");
        resp->retry_after_s = 2;
        return NULL;
    }
    const char *name = url + strlen(prefix), *slash = strchr(name, '/');
    const size_t name_len = slash ? (size_t)(slash - name) : strlen(name);
    if (!slash || !slash[1]) { /* the model's detail, read while it cannot be unloaded */
        pthread_rwlock_rdlock(&srv_d.models_lock);
        srv_model *m = find_model_locked(name, name_len);
        if (!m)
            srv_error(resp, SRV_ERR_NOT_FOUND, "model", "no model called \"%.*s\"", (int)name_len,
                      name);
        else if (get)
            srv_json_raw(resp, m->info_json);
        else
            srv_error(resp, SRV_ERR_METHOD_NOT_ALLOWED, NULL, "%s takes GET, not %s", url, method);
        pthread_rwlock_unlock(&srv_d.models_lock);
        return NULL;
    }
    srv_model *m = srv_find_model(name, name_len);
    if (!m) {
        srv_error(resp, SRV_ERR_NOT_FOUND, "model", "no model called \"%.*s\"", (int)name_len,
                  name);
        return NULL;
    }
    const int found = model_action(slash + 1, strlen(slash + 1));
    if (found < 0) {
        char list[256] = "";
        for (size_t i = 0; i < N_MODEL_ACTIONS; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "",
                     model_actions[i].action);
        srv_error(resp, SRV_ERR_NOT_FOUND, NULL, "no such route: %s (model routes: %s)", url, list);
        return NULL;
    }
    if (!post) {
        srv_error(resp, SRV_ERR_METHOD_NOT_ALLOWED, NULL, "%s takes POST, not %s", url, method);
        return NULL;
    }
    json_error_t jerr;
    json_t *parsed = body_len ? json_loadb(body, body_len, 0, &jerr) : NULL;
    if (!json_is_object(parsed)) {
        if (body_len && !parsed)
            srv_error(resp, SRV_ERR_BAD_REQUEST, NULL,
                      "the body is not JSON: %s at line %d column %d", jerr.text, jerr.line,
                      jerr.column);
        else
            srv_error(resp, SRV_ERR_BAD_REQUEST, NULL, "the body must be a JSON object");
        json_decref(parsed);
        return NULL;
    }
    srv_job *job = calloc(1, sizeof *job);
    if (!job) {
        json_decref(parsed);
        srv_error(resp, SRV_ERR_UNAVAILABLE, NULL, "out of memory");
        return NULL;
    }
    /* counted under the lock, so that an admin load cannot reuse the slot of an
     * unloaded model that a job still points at */
    pthread_rwlock_rdlock(&srv_d.models_lock);
    if ((m = find_model_locked(name, name_len))) atomic_fetch_add(&m->jobs_out, 1);
    pthread_rwlock_unlock(&srv_d.models_lock);
    if (!m) {
        free(job);
        json_decref(parsed);
        srv_error(resp, SRV_ERR_NOT_FOUND, "model", "no model called \"%.*s\"", (int)name_len,
                  name);
        return NULL;
    }
    job->kind = model_actions[found].kind;
    job->model = m;
    job->body = parsed;
    job->accept = accept;
    return job;
}
