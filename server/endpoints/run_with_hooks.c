/*
 * run_with_hooks.c: POST /v1/models/{model}/run_with_hooks — a forward pass
 * with interventions at hook points (zero, mean, set, add, scale, patch from
 * another run), answering the logits, the activations asked for and, with
 * answers, the logit difference.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/endpoint.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/tensors.h"

typedef struct hooks_params {
    srv_answer *a;           /* its batch */
    uint8_t *capture;        /* hook slots answered (names, names_filter) */
    srv_hooks h;             /* source_batch: patch_from's prompts */
    int32_t *answer, *wrong; /* [B] when a logit difference is asked for, else NULL */
    bool with_logits;
} hooks_params;

static void free_params(void *params) {
    hooks_params *p = params;
    if (!p) return;
    srv_answer_free(p->a);
    free(p->capture);
    srv_hooks_free(&p->h);
    free(p->answer);
    free(p->wrong);
    free(p);
}

/* Whether any item's op is patch (or, with mean, mean). */
static bool any_copy(const srv_hooks *h, bool mean) {
    for (int i = 0; i < h->n; i++)
        if (h->items[i].op == LENS_OP_COPY && h->is_mean[i] == mean) return true;
    return false;
}

/* patch_from's prompts ("prompt", "prompts" or "tokens"; prepend_bos and
 * padding_side default to the request's): as many positions as the batch,
 * and one prompt or as many. */
static int read_patch_from(const lens_model *m, json_t *body, const lens_token_batch *batch,
                           srv_hooks *h, srv_response *resp) {
    json_t *from = json_object_get(body, "patch_from");
    if (!json_is_object(from)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "patch_from",
                  "patch needs patch_from: {\"prompt\" | \"prompts\" | \"tokens\"} to take "
                  "activations from");
        return -1;
    }
    json_t *merged = json_deep_copy(from);
    json_t *bos = json_object_get(body, "prepend_bos"),
           *side = json_object_get(body, "padding_side");
    if (!merged) {
        srv_out_of_memory(resp);
        return -1;
    }
    if (bos && !json_object_get(merged, "prepend_bos")) json_object_set(merged, "prepend_bos", bos);
    if (side && !json_object_get(merged, "padding_side"))
        json_object_set(merged, "padding_side", side);
    int rc = srv_read_prompts(m, merged, &h->source_batch, resp);
    json_decref(merged);
    if (rc) {
        srv_prefix_error_field(resp, "patch_from.", "prompt");
        return -1;
    }
    if (h->source_batch.T != batch->T ||
        (h->source_batch.B != 1 && h->source_batch.B != batch->B)) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, "patch_from",
                  "patch_from is %d prompts of %d positions; patching needs %d positions and 1 "
                  "or %d prompts",
                  h->source_batch.B, h->source_batch.T, batch->T, batch->B);
        return -1;
    }
    return 0;
}

static int parse(const srv_model *sm, json_t *body, void **params, srv_response *resp) {
    const lens_model *m = sm->model;
    const lens_config *c = &m->cfg;
    hooks_params *p = calloc(1, sizeof *p);
    if (!p || !(p->a = srv_answer_new(c)) || !(p->capture = calloc(lens_hook_slots(c), 1))) {
        free_params(p);
        srv_out_of_memory(resp);
        return -1;
    }
    *params = p;
    const bool want_cache = json_object_get(body, "names") || json_object_get(body, "names_filter");
    if (srv_optional_bool(body, "logits", true, &p->with_logits, resp) ||
        (want_cache && srv_read_names(c, body, p->capture, resp)) ||
        srv_read_prompts(m, body, &p->a->batch, resp) ||
        srv_read_hooks(c, body, p->a->batch.T, &p->h, resp) ||
        (any_copy(&p->h, false) && read_patch_from(m, body, &p->a->batch, &p->h, resp)))
        return -1;
    const int B = p->a->batch.B;
    const lens_cache_request req = {.enabled = p->capture, .logits = p->with_logits};
    const size_t bytes = lens_cache_bytes(c, B, p->a->batch.T, &req);
    if (bytes > srv_d.cfg.limits.max_response_bytes) {
        srv_error(resp, SRV_ERR_TOO_LARGE, NULL,
                  "this answer is %zu MB of tensors, over the %zu MB of "
                  "limits.max_response_bytes; ask for fewer names or prompts, or logits: false",
                  bytes >> 20, srv_d.cfg.limits.max_response_bytes >> 20);
        return -1;
    }
    if (!json_object_get(body, "answers")) return 0;
    p->answer = malloc((size_t)B * sizeof *p->answer);
    p->wrong = malloc((size_t)B * sizeof *p->wrong);
    if (!p->answer || !p->wrong) {
        srv_out_of_memory(resp);
        return -1;
    }
    return srv_read_answer_pairs(m, body, B, p->answer, p->wrong, resp);
}

/* Sets each "mean" item's source: the batch mean (over prompts) of its hook
 * in a clean run of batch, as a one-row tensor. */
static int mean_sources(const lens_model *m, lens_workspace *ws, const lens_token_batch *batch,
                        srv_hooks *h, srv_response *resp) {
    const lens_config *c = &m->cfg;
    if (!any_copy(h, true)) return 0;
    uint8_t *enabled = calloc(lens_hook_slots(c), 1);
    if (!enabled) {
        srv_out_of_memory(resp);
        return -1;
    }
    for (int i = 0; i < h->n; i++)
        if (h->is_mean[i]) enabled[lens_hook_slot(c, h->items[i].hook)] = 1;
    lens_cache clean = {0};
    const lens_cache_request req = {.enabled = enabled};
    lens_err err = {0};
    int rc = lens_run_cache(m, ws, batch, &req, &clean, &err);
    if (rc) srv_engine_error(resp, &err, "hooks");
    for (int i = 0; rc == 0 && i < h->n; i++) {
        if (!h->is_mean[i]) continue;
        const lens_captured *t =
            lens_cache_find(&clean, h->items[i].hook.kind, h->items[i].hook.layer);
        if ((rc = lens_batch_mean(t, &h->means[i]))) {
            srv_out_of_memory(resp);
            break;
        }
        h->items[i].source = &h->means[i];
    }
    lens_cache_free(&clean);
    free(enabled);
    return rc;
}

/* Sets each "patch" item's source: its hook in the run of patch_from. */
static int patch_sources(const lens_model *m, lens_workspace *ws, srv_hooks *h,
                         srv_response *resp) {
    const lens_config *c = &m->cfg;
    if (!any_copy(h, false)) return 0;
    uint8_t *enabled = calloc(lens_hook_slots(c), 1);
    if (!enabled) {
        srv_out_of_memory(resp);
        return -1;
    }
    for (int i = 0; i < h->n; i++)
        if (h->items[i].op == LENS_OP_COPY && !h->is_mean[i])
            enabled[lens_hook_slot(c, h->items[i].hook)] = 1;
    const lens_cache_request req = {.enabled = enabled};
    lens_err err = {0};
    const int rc = lens_run_cache(m, ws, &h->source_batch, &req, &h->source, &err);
    free(enabled);
    if (rc) {
        srv_engine_error(resp, &err, "patch_from");
        return -1;
    }
    for (int i = 0; i < h->n; i++)
        if (h->items[i].op == LENS_OP_COPY && !h->is_mean[i])
            h->items[i].source =
                lens_cache_find(&h->source, h->items[i].hook.kind, h->items[i].hook.layer);
    return 0;
}

static void run(srv_job *job) {
    hooks_params *p = job->params;
    srv_model *sm = job->model;
    const lens_config *c = &job->lm->cfg;
    srv_response *resp = &job->response;
    srv_answer *a = p->a;
    srv_hooks *h = &p->h;
    uint8_t *intervene = calloc(lens_hook_slots(c), 1);
    lens_err err = {0};
    if (!intervene) {
        srv_out_of_memory(resp);
        return;
    }
    if (mean_sources(job->lm, &sm->ws, &a->batch, h, resp) ||
        patch_sources(job->lm, &sm->ws, h, resp)) {
        free(intervene);
        return;
    }
    const int B = a->batch.B, T = a->batch.T, V = c->d_vocab_out;
    for (int i = 0; i < h->n; i++)
        intervene[lens_hook_slot(c, h->items[i].hook)] = 1;
    const lens_intervention_list list = {c, h->items, h->n};
    const bool metric = p->answer != NULL;
    const lens_cache_request req = {.enabled = p->capture,
                                    .logits = p->with_logits || metric,
                                    .intervene = intervene,
                                    .intervention = lens_intervene,
                                    .intervention_user = (void *)&list};
    srv_metrics_batch(B);
    const int rc = lens_run_cache(job->lm, &sm->ws, &a->batch, &req, &a->cache, &err);
    free(intervene);
    if (rc) {
        srv_engine_error(resp, &err, "hooks");
        return;
    }
    json_t *fields = json_pack("{s:s}", "model", sm->name);
    srv_add_processing(job, fields);
    if (metric) { /* logit difference at each prompt's last real token */
        json_t *diffs = json_array();
        double total = 0.0;
        for (int b = 0; b < B; b++) {
            const int t = a->batch.attn_mask ? T - 1 : a->batch.lengths[b] - 1;
            const float *row = a->cache.logits + ((size_t)b * T + t) * V;
            const float diff = row[p->answer[b]] - row[p->wrong[b]];
            total += diff;
            json_array_append_new(diffs, srv_json_float(diff));
        }
        json_object_set_new(fields, "logit_diff", diffs);
        json_object_set_new(fields, "mean", srv_json_float((float)(total / B)));
    }
    if (srv_answer_add_tokens(a)) {
        json_decref(fields);
        srv_out_of_memory(resp);
        return;
    }
    if (p->with_logits)
        srv_answer_add(a, "logits", LENS_F32, 3, (int64_t[]){B, T, V}, a->cache.logits);
    for (int i = 0; i < a->cache.n; i++) {
        const lens_captured *t = &a->cache.tensors[i];
        srv_answer_add(a, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    p->a = NULL;
    srv_answer_send(job->accept, resp, a, fields);
}

const srv_endpoint srv_endpoint_run_with_hooks = {
    .name = "run_with_hooks",
    .summary = "A forward pass with interventions at hook points (zero, mean, set, add, scale, "
               "patch), answering logits, activations and the logit difference.",
    .request_schema = SRV_PROMPTS_SCHEMA(
        ", \"hooks\": {\"type\": \"array\", \"minItems\": 1, \"items\": {\"type\": \"object\", "
        "\"required\": [\"name\", \"op\"], \"properties\": {\"name\": {\"type\": \"string\"}, "
        "\"op\": {\"enum\": [\"zero\", \"mean\", \"set\", \"add\", \"scale\", \"patch\"]}, "
        "\"value\": {\"oneOf\": [{\"type\": \"number\"}, {\"type\": \"array\", \"items\": "
        "{\"type\": \"number\"}}]}, \"factor\": {\"type\": \"number\"}, \"positions\": {\"type\": "
        "\"array\", \"items\": {\"type\": \"integer\"}}, \"heads\": {\"type\": \"array\", "
        "\"items\": {\"type\": \"integer\"}}}}}, \"patch_from\": {\"type\": \"object\"}, "
        "\"names\": {\"type\": \"array\", \"items\": {\"type\": \"string\"}}, \"names_filter\": "
        "{\"oneOf\": [{\"type\": \"string\"}, {\"type\": \"array\", \"items\": {\"type\": "
        "\"string\"}}]}, \"logits\": {\"type\": \"boolean\"}, \"answers\": {\"type\": \"array\"}"),
    .parse = parse,
    .run = run,
    .free_params = free_params,
};
