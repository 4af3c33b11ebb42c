/*
 * detokenize.c: POST /v1/models/{model}/detokenize — token ids back to text
 * (one list of ids, or a list of lists).
 */
#include <stdio.h>
#include <stdlib.h>

#include "server/endpoint.h"
#include "server/request.h"

/* The ids to decode: rows[i][0 .. lens[i] - 1]. */
typedef struct detokenize_params {
    bool batched; /* a list of lists: answered as a list of texts */
    int n;
    int32_t **rows;
    size_t *lens;
} detokenize_params;

static void free_params(void *params) {
    detokenize_params *p = params;
    for (int i = 0; p && p->rows && i < p->n; i++)
        free(p->rows[i]);
    if (p) {
        free(p->rows);
        free(p->lens);
    }
    free(p);
}

/* One list of ids, checked against the vocabulary, into *out[*n]. */
static int read_ids(const lens_model *m, json_t *ids, const char *field, int32_t **out, size_t *n,
                    srv_response *resp) {
    *n = json_array_size(ids);
    if (!(*out = malloc((*n ? *n : 1) * sizeof **out))) {
        srv_out_of_memory(resp);
        return -1;
    }
    for (size_t j = 0; j < *n; j++) {
        json_t *id = json_array_get(ids, j);
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= m->cfg.d_vocab) {
            srv_error(resp, json_is_integer(id) ? SRV_ERR_UNPROCESSABLE : SRV_ERR_BAD_REQUEST,
                      field, "%s[%zu] must be a token id from 0 to %d", field, j,
                      m->cfg.d_vocab - 1);
            return -1;
        }
        (*out)[j] = (int32_t)json_integer_value(id);
    }
    return 0;
}

static int parse(const srv_model *sm, json_t *body, void **params, srv_response *resp) {
    const lens_model *m = sm->model;
    json_t *tokens = json_object_get(body, "tokens");
    if (!json_is_array(tokens)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "tokens",
                  "tokens must be a list of ids or a list of lists of ids");
        return -1;
    }
    if (!m->tok) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "tokens", "this model has no tokenizer");
        return -1;
    }
    detokenize_params *p = calloc(1, sizeof *p);
    if (!p) {
        srv_out_of_memory(resp);
        return -1;
    }
    *params = p;
    p->batched = json_array_size(tokens) && json_is_array(json_array_get(tokens, 0));
    p->n = p->batched ? (int)json_array_size(tokens) : 1;
    if (p->n > srv_d.cfg.limits.max_batch_tokens) {
        srv_error(resp, SRV_ERR_TOO_LARGE, "tokens",
                  "%d lists of ids is more than the limit of %d tokens per request "
                  "(limits.max_batch_tokens)",
                  p->n, srv_d.cfg.limits.max_batch_tokens);
        return -1;
    }
    p->rows = calloc((size_t)p->n, sizeof *p->rows);
    p->lens = calloc((size_t)p->n, sizeof *p->lens);
    if (!p->rows || !p->lens) {
        srv_out_of_memory(resp);
        return -1;
    }
    for (int i = 0; i < p->n; i++) {
        char field[32];
        snprintf(field, sizeof field, p->batched ? "tokens[%d]" : "tokens", i);
        json_t *row = p->batched ? json_array_get(tokens, (size_t)i) : tokens;
        if (!json_is_array(row)) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s must be a list of ids", field);
            return -1;
        }
        if (read_ids(m, row, field, &p->rows[i], &p->lens[i], resp)) return -1;
    }
    return 0;
}

static void run(srv_job *job) {
    const detokenize_params *p = job->params;
    const lens_model *m = job->lm;
    json_t *texts = json_array();
    for (int i = 0; i < p->n; i++) {
        char field[32];
        snprintf(field, sizeof field, p->batched ? "tokens[%d]" : "tokens", i);
        size_t len = 0;
        lens_err err = {0};
        char *text = lens_tok_decode(m->tok, p->rows[i], p->lens[i], &len, &err);
        if (!text) {
            srv_error(&job->response, SRV_ERR_BAD_REQUEST, field, "%s", err.msg);
            json_decref(texts);
            return;
        }
        json_t *s = json_stringn(text, len);
        free(text);
        if (!s) { /* not valid UTF-8 on its own (a piece of a character) */
            srv_error(&job->response, SRV_ERR_UNPROCESSABLE, field,
                      "%s decodes to bytes that are not UTF-8 text", field);
            json_decref(texts);
            return;
        }
        json_array_append_new(texts, s);
    }
    json_t *text = p->batched ? texts : json_incref(json_array_get(texts, 0));
    if (!p->batched) json_decref(texts);
    srv_json(&job->response, 200, json_pack("{s:o}", "text", text));
}

const srv_endpoint srv_endpoint_detokenize = {
    .name = "detokenize",
    .summary = "Token ids back to text: one list of ids, or a list of lists.",
    .request_schema = "{\"type\": \"object\", \"required\": [\"tokens\"], \"properties\": "
                      "{\"tokens\": {\"type\": \"array\", \"items\": {\"oneOf\": [{\"type\": "
                      "\"integer\", \"minimum\": 0}, {\"type\": \"array\", \"items\": {\"type\": "
                      "\"integer\", \"minimum\": 0}}]}}}}",
    .parse = parse,
    .run = run,
    .free_params = free_params,
    .tokenizer_only = true,
};
