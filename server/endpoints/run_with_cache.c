/*
 * run_with_cache.c: POST /v1/models/{model}/run_with_cache — the activations
 * at the hook points asked for (TransformerLens's run_with_cache), answered
 * or kept on the server (keep: GET /v1/caches/{id}).
 */
#include <stdlib.h>
#include <string.h>

#include "server/caches.h"
#include "server/endpoint.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/tensors.h"

typedef struct cache_params {
    srv_answer *a; /* its batch; its tensors once run */
    uint8_t *enabled;
    int32_t *positions;
    int n_positions;
    int64_t *rows; /* "batch": the prompts answered for, n_rows (NULL: all) */
    int n_rows;
    bool with_logits, keep, half;
} cache_params;

static void free_params(void *params) {
    cache_params *p = params;
    if (!p) return;
    srv_answer_free(p->a);
    free(p->enabled);
    free(p->positions);
    free(p->rows);
    free(p);
}

/* "batch": the prompts to answer for, as int64 rows. */
static int read_rows(json_t *body, int B, cache_params *p, srv_response *resp) {
    if (!json_object_get(body, "batch")) return 0;
    int *rows = NULL;
    if (srv_read_indices(body, "batch", B, &rows, &p->n_rows, resp)) return -1;
    if (!(p->rows = malloc((size_t)p->n_rows * sizeof *p->rows))) {
        free(rows);
        srv_out_of_memory(resp);
        return -1;
    }
    for (int i = 0; i < p->n_rows; i++)
        p->rows[i] = rows[i];
    free(rows);
    return 0;
}

static int parse(const srv_model *sm, json_t *body, void **params, srv_response *resp) {
    const lens_config *c = &sm->model->cfg;
    cache_params *p = calloc(1, sizeof *p);
    if (!p || !(p->a = srv_answer_new(c)) || !(p->enabled = calloc(lens_hook_slots(c), 1))) {
        free_params(p);
        srv_out_of_memory(resp);
        return -1;
    }
    *params = p;
    json_t *dtype = json_object_get(body, "dtype");
    if (dtype && (!json_is_string(dtype) || (strcmp(json_string_value(dtype), "float32") &&
                                             strcmp(json_string_value(dtype), "float16")))) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "dtype", "dtype must be \"float32\" or \"float16\"");
        return -1;
    }
    p->half = dtype && strcmp(json_string_value(dtype), "float16") == 0;
    if (srv_optional_bool(body, "logits", true, &p->with_logits, resp) ||
        srv_optional_bool(body, "keep", false, &p->keep, resp) ||
        srv_read_names(c, body, p->enabled, resp) ||
        srv_read_prompts(sm->model, body, &p->a->batch, resp) ||
        srv_read_positions(body, p->a->batch.T, &p->positions, &p->n_positions, resp) ||
        read_rows(body, p->a->batch.B, p, resp))
        return -1;
    const lens_cache_request req = {.enabled = p->enabled,
                                    .positions = p->positions,
                                    .n_positions = p->n_positions,
                                    .logits = p->with_logits};
    /* the whole batch's cache is allocated, whatever part of it is answered,
     * and a "batch" selection is a copy of its rows */
    const int B = p->a->batch.B, T = p->a->batch.T;
    const size_t whole = lens_cache_bytes(c, B, T, &req);
    const double bytes = (double)whole + (p->rows ? (double)whole / B * p->n_rows : 0.0);
    const size_t limit =
        p->keep ? srv_d.cfg.limits.max_kept_cache_bytes : srv_d.cfg.limits.max_response_bytes;
    if (bytes > (double)limit) {
        srv_error(resp, p->keep ? SRV_ERR_INSUFFICIENT_STORAGE : SRV_ERR_TOO_LARGE,
                  p->keep ? "keep" : NULL,
                  "this cache is %.0f MB of tensors for %d prompt%s x %d tokens, over the %zu MB "
                  "of limits.%s; ask for fewer names, positions or prompts",
                  bytes / (1 << 20), B, B == 1 ? "" : "s", T, limit >> 20,
                  p->keep ? "max_kept_cache_bytes" : "max_response_bytes");
        return -1;
    }
    return 0;
}

static void run(srv_job *job) {
    cache_params *p = job->params;
    srv_model *sm = job->model;
    const lens_config *c = &job->lm->cfg;
    srv_response *resp = &job->response;
    srv_answer *a = p->a;
    lens_err err = {0};
    const lens_cache_request req = {.enabled = p->enabled,
                                    .positions = p->positions,
                                    .n_positions = p->n_positions,
                                    .logits = p->with_logits};
    srv_metrics_batch(a->batch.B);
    if (lens_run_cache(job->lm, &sm->ws, &a->batch, &req, &a->cache, &err)) {
        srv_engine_error(resp, &err, NULL);
        return;
    }
    if (srv_answer_add_tokens(a)) {
        srv_out_of_memory(resp);
        return;
    }
    const int B = a->batch.B, T = a->batch.T, V = c->d_vocab_out;
    if (p->with_logits)
        srv_answer_add(a, "logits", LENS_F32, 3, (int64_t[]){B, T, V}, a->cache.logits);
    for (int i = 0; i < a->cache.n; i++) {
        const lens_captured *t = &a->cache.tensors[i];
        srv_answer_add(a, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    if (p->rows && srv_answer_select_rows(a, p->rows, p->n_rows)) {
        srv_out_of_memory(resp);
        return;
    }
    if (p->half) srv_answer_to_half(a);
    p->a = NULL;   /* the answer's now, sent or kept */
    if (p->keep) { /* answered with a handle: GET /v1/caches/{id}[/{name}] */
        json_t *tensors = srv_answer_shapes(a);
        char id[33];
        if (srv_caches_keep(sm->name, srv_token_owner(job->token), a, id, resp)) {
            json_decref(tensors);
            return;
        }
        json_t *handle = json_pack("{s:s, s:s, s:o, s:f}", "cache_id", id, "model", sm->name,
                                   "tensors", tensors, "ttl_s", srv_d.cfg.limits.kept_cache_ttl_s);
        srv_add_processing(job, handle);
        srv_json(resp, 200, handle);
        return;
    }
    json_t *fields = json_pack("{s:s, s:o}", "model", sm->name, "str_tokens",
                               srv_str_tokens_json(job->lm, &a->batch));
    srv_add_processing(job, fields);
    srv_answer_send(job->accept, resp, a, fields);
}

const srv_endpoint srv_endpoint_run_with_cache = {
    .name = "run_with_cache",
    .summary = "The activations at the hook points asked for (names, names_filter), answered or "
               "kept on the server (keep).",
    .request_schema = SRV_PROMPTS_SCHEMA(
        ", \"names\": {\"type\": \"array\", \"items\": {\"type\": \"string\"}}, \"names_filter\": "
        "{\"oneOf\": [{\"type\": \"string\"}, {\"type\": \"array\", \"items\": {\"type\": "
        "\"string\"}}]}, \"positions\": {\"type\": \"array\", \"items\": {\"type\": \"integer\"}}, "
        "\"batch\": {\"type\": \"array\", \"items\": {\"type\": \"integer\"}}, \"logits\": "
        "{\"type\": \"boolean\"}, \"keep\": {\"type\": \"boolean\"}, \"dtype\": {\"enum\": "
        "[\"float32\", \"float16\"]}"),
    .parse = parse,
    .run = run,
    .free_params = free_params,
};
