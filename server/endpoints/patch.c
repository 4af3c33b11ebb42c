/*
 * patch.c: POST /v1/models/{model}/patch — activation patching sweeps, as
 * TransformerLens's patching.get_act_patch_* (and path patching of heads):
 * every position, layer or head of clean patched into the corrupted run,
 * scored by a metric (logit difference or logit).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/patch.h"
#include "server/endpoint.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/tensors.h"

/* The metric's answers: "logit_diff" pairs as in logit_diff, or for "logit"
 * one "answer" for every prompt or a list of one per prompt. */
static int read_metric_answers(const lens_model *m, json_t *metric, lens_metric_kind kind, int B,
                               int32_t *answer, int32_t *wrong, srv_response *resp) {
    if (kind == LENS_METRIC_LOGIT_DIFF)
        return srv_read_answer_pairs(m, metric, B, answer, wrong, resp);
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
        if (srv_read_answer(m, each ? json_array_get(v, (size_t)b) : v, field, &answer[b], resp))
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

typedef struct patch_params {
    const char *sweep_name; /* a static name: lens_sweep_name's or PATH_SWEEP */
    bool path;              /* path patching (receivers), else sweep */
    lens_sweep sweep;
    int (*receivers)[2];
    int n_receivers;
    lens_hook_kind receiver_input;
    lens_token_batch clean, corrupted;
    lens_metric_kind kind;
    int32_t *answer, *wrong, *pos; /* [B] */
    bool normalize, full_recompute;
    char *progress_id;
} patch_params;

static void free_params(void *params) {
    patch_params *p = params;
    if (!p) return;
    free(p->receivers);
    lens_token_batch_free(&p->clean);
    lens_token_batch_free(&p->corrupted);
    free(p->answer);
    free(p->wrong);
    free(p->pos);
    free(p->progress_id);
    free(p);
}

/* "sweep": one of lens_sweep's names or PATH_SWEEP (with its receivers). */
static int read_sweep(const lens_config *c, json_t *body, patch_params *p, srv_response *resp) {
    const char *name = json_string_value(json_object_get(body, "sweep"));
    p->path = name && strcmp(name, PATH_SWEEP) == 0;
    p->sweep = LENS_SWEEP_COUNT;
    if (!name || (!p->path && lens_sweep_parse(name, &p->sweep))) {
        char names[1024] = "";
        size_t used = 0;
        for (int i = 0; i < LENS_SWEEP_COUNT && used < sizeof names; i++)
            used += (size_t)snprintf(names + used, sizeof names - used, "%s, ",
                                     lens_sweep_name((lens_sweep)i));
        srv_error(resp, SRV_ERR_BAD_REQUEST, "sweep",
                  "sweep must be one of: %s(TransformerLens's get_act_patch_* names) or %s", names,
                  PATH_SWEEP);
        return -1;
    }
    p->sweep_name = p->path ? PATH_SWEEP : lens_sweep_name(p->sweep);
    p->receiver_input = LENS_HOOK_Q;
    return p->path
               ? read_receivers(c, body, &p->receivers, &p->n_receivers, &p->receiver_input, resp)
               : 0;
}

static const char *progress_id(const void *params) {
    return ((const patch_params *)params)->progress_id;
}

static int parse(const srv_model *sm, json_t *body, void **params, srv_response *resp) {
    const lens_model *m = sm->model;
    const lens_config *c = &m->cfg;
    patch_params *p = calloc(1, sizeof *p);
    if (!p) {
        srv_out_of_memory(resp);
        return -1;
    }
    *params = p;
    if (read_sweep(c, body, p, resp)) return -1;
    json_t *clean_json = json_object_get(body, "clean"),
           *bad_json = json_object_get(body, "corrupted"),
           *metric = json_object_get(body, "metric");
    if (!json_is_object(clean_json) || !json_is_object(bad_json) || !json_is_object(metric)) {
        const char *field = !json_is_object(clean_json) ? "clean"
                            : !json_is_object(bad_json) ? "corrupted"
                                                        : "metric";
        srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                  "%s must be an object (clean and corrupted: {\"prompts\": [...]} or "
                  "{\"tokens\": [[...]]}; metric: {\"type\": \"logit_diff\", \"answers\": [...]})",
                  field);
        return -1;
    }
    const char *type = json_string_value(json_object_get(metric, "type"));
    p->kind = LENS_METRIC_LOGIT_DIFF;
    if (type && strcmp(type, "logit") == 0) {
        p->kind = LENS_METRIC_LOGIT;
    } else if (json_object_get(metric, "type") && (!type || strcmp(type, "logit_diff") != 0)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "metric.type",
                  "metric.type must be \"logit_diff\" (the default) or \"logit\"");
        return -1;
    }
    long position;
    if (srv_optional_bool(metric, "normalize", false, &p->normalize, resp) ||
        srv_optional_bool(body, "full_recompute", false, &p->full_recompute, resp) ||
        srv_read_progress_id(body, &p->progress_id, resp) ||
        srv_read_prompts(m, clean_json, &p->clean, resp) ||
        srv_read_prompts(m, bad_json, &p->corrupted, resp))
        return -1;
    const int B = p->corrupted.B, T = p->corrupted.T;
    if (p->clean.B != B || p->clean.T != T) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, "corrupted",
                  "clean and corrupted must have the same shape: %d prompts of %d tokens against "
                  "%d of %d",
                  p->clean.B, p->clean.T, B, T);
        return -1;
    }
    if (srv_optional_int(metric, "position", 0, -(long)T, T - 1, &position, resp)) return -1;
    p->answer = malloc((size_t)B * sizeof *p->answer);
    p->wrong = malloc((size_t)B * sizeof *p->wrong);
    p->pos = malloc((size_t)B * sizeof *p->pos);
    if (!p->answer || !p->wrong || !p->pos) {
        srv_out_of_memory(resp);
        return -1;
    }
    if (read_metric_answers(m, metric, p->kind, B, p->answer, p->wrong, resp)) return -1;
    const bool explicit_position = json_object_get(metric, "position") != NULL;
    for (int b = 0; b < B; b++)
        p->pos[b] = explicit_position        ? (int32_t)(position < 0 ? position + T : position)
                    : p->corrupted.attn_mask ? T - 1
                                             : p->corrupted.lengths[b] - 1;
    int64_t shape[4];
    long runs = 0;
    if (p->path) {
        for (int i = 0; i < p->n_receivers; i++)
            runs = p->receivers[i][0] * c->n_heads > runs ? p->receivers[i][0] * c->n_heads : runs;
        runs *= 2; /* two passes per sender */
    } else {
        lens_sweep_shape(c, p->sweep, T, shape, &runs);
    }
    const double work = (double)runs * B * T;
    if (work > srv_d.cfg.limits.max_patch_tokens) {
        srv_error(resp, SRV_ERR_TOO_LARGE, "sweep",
                  "sweep %s is %ld patched runs of %d prompt%s x %d tokens (%.0f tokens), more "
                  "than limits.max_patch_tokens (%d): patch fewer positions or prompts",
                  p->sweep_name, runs, B, B == 1 ? "" : "s", T, work,
                  srv_d.cfg.limits.max_patch_tokens);
        return -1;
    }
    return 0;
}

static void run(srv_job *job) {
    patch_params *p = job->params;
    srv_model *sm = job->model;
    const lens_model *m = job->lm;
    const lens_config *c = &m->cfg;
    srv_response *resp = &job->response;
    const lens_token_batch clean = p->clean, corrupted = p->corrupted;
    const lens_sweep sweep = p->sweep;
    const bool path = p->path, normalize = p->normalize, full_recompute = p->full_recompute;
    const char *sweep_name = p->sweep_name;
    const int B = corrupted.B;
    int(*receivers)[2] = p->receivers;
    const int n_receivers = p->n_receivers;
    const lens_hook_kind receiver_input = p->receiver_input;
    const lens_metric_kind kind = p->kind;
    int32_t *answer = p->answer, *wrong = p->wrong, *pos = p->pos;
    lens_patch_result result = {0};
    srv_answer *a = NULL;
    lens_err err = {0};
    srv_progress *progress = job->progress;
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
    /* cancelled while it was queued, or its client gone meanwhile */
    if (srv_progress_update(progress, 0, 0) &&
        srv_answer_if_stopped(job, progress, p->progress_id, "stopped before it started"))
        goto out;
    const double t0 = srv_now_s();
    srv_metrics_batch(B);
    if (path ? lens_path_patch(m, &sm->ws, &path_req, &result, &err)
             : lens_patch(m, &sm->ws, &req, &result, &err)) {
        if (!srv_answer_if_stopped(job, progress, p->progress_id, err.msg))
            srv_engine_error(resp, &err, NULL);
        goto out;
    }
    const double seconds = srv_now_s() - t0;
    if (!(a = srv_answer_new(c))) {
        srv_out_of_memory(resp);
        goto out;
    }
    float *values = result.values;
    result.values = NULL;
    if (srv_answer_own(a, values)) {
        srv_out_of_memory(resp);
        goto out;
    }
    srv_answer_add(a, "values", LENS_F32, result.ndim, result.shape, values);
    const char *axis_names[4] = {"layer", "head"}, *component_names[5] = {PATH_SWEEP};
    if (!path) lens_sweep_axes(sweep, axis_names);
    const int n_components = path ? 1 : lens_sweep_components(sweep, component_names);
    json_t *components = json_array(), *str_tokens = srv_str_tokens_json(m, &clean);
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
    srv_add_processing(job, fields);
    srv_answer_send(job->accept, resp, a, fields);
    a = NULL;
out:
    srv_answer_free(a);
    lens_patch_result_free(&result);
}

const srv_endpoint srv_endpoint_patch = {
    .name = "patch",
    .summary = "Activation patching sweeps (TransformerLens's get_act_patch_*, and path patching "
               "of heads) scored by a logit-difference or logit metric.",
    .request_schema =
        "{\"type\": \"object\", \"required\": [\"sweep\", \"clean\", \"corrupted\", \"metric\"], "
        "\"properties\": {\"sweep\": {\"type\": \"string\"}, \"clean\": {\"type\": \"object\"}, "
        "\"corrupted\": {\"type\": \"object\"}, \"metric\": {\"type\": \"object\", "
        "\"properties\": {\"type\": {\"enum\": [\"logit_diff\", \"logit\"]}, \"answers\": "
        "{\"type\": \"array\"}, \"answer\": {}, \"position\": {\"type\": \"integer\"}, "
        "\"normalize\": {\"type\": \"boolean\"}}}, \"receivers\": {\"type\": \"array\", "
        "\"items\": {\"type\": \"array\", \"items\": {\"type\": \"integer\"}}}, "
        "\"receiver_input\": {\"enum\": [\"q\", \"k\", \"v\"]}, \"full_recompute\": "
        "{\"type\": \"boolean\"}, \"progress_id\": {\"type\": \"string\"}}}",
    .parse = parse,
    .run = run,
    .free_params = free_params,
    .progress_id = progress_id,
};
