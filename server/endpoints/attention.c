/*
 * attention.c: POST /v1/models/{model}/attention — one prompt's attention
 * patterns (hook_pattern) of the layers and heads asked for, as
 * [layers, heads, query, key], for the dashboard's head views.
 */
#include <stdlib.h>
#include <string.h>

#include "server/endpoint.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/tensors.h"

typedef struct attention_params {
    srv_answer *a; /* its batch: one prompt */
    int *layers, *heads;
    int n_layers, n_heads;
} attention_params;

static void free_params(void *params) {
    attention_params *p = params;
    if (!p) return;
    srv_answer_free(p->a);
    free(p->layers);
    free(p->heads);
    free(p);
}

static int parse(const srv_model *sm, json_t *body, void **params, srv_response *resp) {
    const lens_config *c = &sm->model->cfg;
    attention_params *p = calloc(1, sizeof *p);
    if (!p || !(p->a = srv_answer_new(c))) {
        free(p);
        srv_out_of_memory(resp);
        return -1;
    }
    *params = p;
    const json_t *prompt = json_object_get(body, "prompt");
    const json_t *tokens = json_object_get(body, "tokens");
    if (json_object_get(body, "prompts") || (prompt && !json_is_string(prompt)) ||
        (!prompt && !(json_is_array(tokens) && json_array_size(tokens) == 1))) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, tokens && !prompt ? "tokens" : "prompt",
                  "attention takes one prompt: \"prompt\" (a string) or \"tokens\" with one row");
        return -1;
    }
    if (srv_read_indices(body, "layers", c->n_layers, &p->layers, &p->n_layers, resp) ||
        srv_read_indices(body, "heads", c->n_heads, &p->heads, &p->n_heads, resp) ||
        srv_read_prompts(sm->model, body, &p->a->batch, resp))
        return -1;
    const int T = p->a->batch.T;
    const double bytes = (double)p->n_layers * p->n_heads * T * T * sizeof(float);
    if (bytes > (double)srv_d.cfg.limits.max_response_bytes) {
        srv_error(resp, SRV_ERR_TOO_LARGE, "layers",
                  "%d layers x %d heads of %d x %d patterns are %.0f MB, over the %zu MB of "
                  "limits.max_response_bytes; ask for fewer layers or heads",
                  p->n_layers, p->n_heads, T, T, bytes / (1 << 20),
                  srv_d.cfg.limits.max_response_bytes >> 20);
        return -1;
    }
    return 0;
}

static void run(srv_job *job) {
    attention_params *p = job->params;
    srv_model *sm = job->model;
    const lens_config *c = &job->lm->cfg;
    srv_response *resp = &job->response;
    srv_answer *a = p->a;
    uint8_t *enabled = calloc(lens_hook_slots(c), 1);
    lens_err err = {0};
    if (!enabled) {
        srv_out_of_memory(resp);
        return;
    }
    for (int i = 0; i < p->n_layers; i++)
        enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_PATTERN, p->layers[i]})] = 1;
    const lens_cache_request req = {.enabled = enabled};
    srv_metrics_batch(1);
    const int rc = lens_run_cache(job->lm, &sm->ws, &a->batch, &req, &a->cache, &err);
    free(enabled);
    if (rc) {
        srv_engine_error(resp, &err, NULL);
        return;
    }
    const int T = a->batch.T, L = p->n_layers, H = p->n_heads;
    float *patterns = srv_answer_alloc(a, (size_t)L * H * T * T * sizeof *patterns);
    if (!patterns || srv_answer_add_tokens(a)) {
        srv_out_of_memory(resp);
        return;
    }
    for (int li = 0; li < L; li++) {
        const lens_captured *t = lens_cache_find(&a->cache, LENS_HOOK_PATTERN, p->layers[li]);
        for (int hi = 0; hi < H; hi++)
            memcpy(patterns + ((size_t)li * H + hi) * T * T,
                   (const float *)t->data + (size_t)p->heads[hi] * T * T,
                   (size_t)T * T * sizeof *patterns);
    }
    srv_answer_add(a, "patterns", LENS_F32, 4, (int64_t[]){L, H, T, T}, patterns);
    json_t *jl = json_array(), *jh = json_array();
    for (int i = 0; i < L; i++)
        json_array_append_new(jl, json_integer(p->layers[i]));
    for (int i = 0; i < H; i++)
        json_array_append_new(jh, json_integer(p->heads[i]));
    json_t *str_tokens = srv_str_tokens_json(job->lm, &a->batch);
    json_t *fields = json_pack("{s:s, s:O, s:o, s:o}", "model", sm->name, "str_tokens",
                               json_array_get(str_tokens, 0), "layers", jl, "heads", jh);
    json_decref(str_tokens);
    srv_add_processing(job, fields);
    p->a = NULL;
    srv_answer_send(job->accept, resp, a, fields);
}

const srv_endpoint srv_endpoint_attention = {
    .name = "attention",
    .summary = "One prompt's attention patterns [layers, heads, query, key] for the layers and "
               "heads asked for.",
    .request_schema = "{\"type\": \"object\", \"properties\": {\"prompt\": {\"type\": \"string\"}, "
                      "\"tokens\": {\"type\": \"array\", \"minItems\": 1, \"maxItems\": 1, "
                      "\"items\": {\"type\": \"array\", \"minItems\": 1, \"items\": {\"type\": "
                      "\"integer\", \"minimum\": 0}}}, \"prepend_bos\": {\"type\": \"boolean\"}, "
                      "\"layers\": {\"type\": \"array\", \"items\": {\"type\": \"integer\"}}, "
                      "\"heads\": {\"type\": \"array\", \"items\": {\"type\": \"integer\"}}}}",
    .parse = parse,
    .run = run,
    .free_params = free_params,
};
