/*
 * logit_diff.c: POST /v1/models/{model}/logit_diff — the logit difference
 * of answer and wrong answer at a position, and its attribution
 * (accumulated_resid, decompose_resid, stack_head_results) through
 * TransformerLens's residual-stack logit lens.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/attribution.h"
#include "server/endpoint.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/tensors.h"

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

/* The "attribution" names, by lens_stack_kind: bit 1 << kind of which. */
static const char *const stack_names[] = {"accumulated_resid", "decompose_resid", "heads"};
#define N_STACKS 3

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
        unsigned bit = 0;
        for (int k = 0; k < N_STACKS && s && !bit; k++)
            bit = strcmp(s, stack_names[k]) == 0 ? 1u << k : 0;
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

typedef struct logit_diff_params {
    lens_token_batch batch;
    unsigned which;                /* bit 1 << lens_stack_kind: the stacks asked for */
    int32_t *answer, *wrong, *pos; /* [B] */
} logit_diff_params;

static void free_params(void *params) {
    logit_diff_params *p = params;
    if (!p) return;
    lens_token_batch_free(&p->batch);
    free(p->answer);
    free(p->wrong);
    free(p->pos);
    free(p);
}

static int parse(const srv_model *sm, json_t *body, void **params, srv_response *resp) {
    const lens_model *m = sm->model;
    logit_diff_params *p = calloc(1, sizeof *p);
    long position;
    if (!p) {
        srv_out_of_memory(resp);
        return -1;
    }
    *params = p;
    if (read_attribution(body, &p->which, resp) || srv_read_prompts(m, body, &p->batch, resp) ||
        srv_optional_int(body, "position", 0, -(long)p->batch.T, p->batch.T - 1, &position, resp))
        return -1;
    const int B = p->batch.B, T = p->batch.T;
    p->answer = malloc((size_t)B * sizeof *p->answer);
    p->wrong = malloc((size_t)B * sizeof *p->wrong);
    p->pos = malloc((size_t)B * sizeof *p->pos);
    if (!p->answer || !p->wrong || !p->pos) {
        srv_out_of_memory(resp);
        return -1;
    }
    if (srv_read_answer_pairs(m, body, B, p->answer, p->wrong, resp)) return -1;
    const bool explicit_position = json_object_get(body, "position") != NULL;
    for (int b = 0; b < B; b++)
        p->pos[b] = explicit_position    ? (int32_t)(position < 0 ? position + T : position)
                    : p->batch.attn_mask ? T - 1 /* left padding: the last position is real */
                                         : p->batch.lengths[b] - 1;
    return 0;
}

static void run(srv_job *job) {
    const logit_diff_params *p = job->params;
    srv_model *sm = job->model;
    const lens_model *m = job->lm;
    const lens_config *c = &m->cfg;
    srv_response *resp = &job->response;
    const lens_token_batch batch = p->batch;
    const unsigned which = p->which;
    const int32_t *answer = p->answer, *wrong = p->wrong, *pos = p->pos;
    const int L = c->n_layers, H = c->n_heads, d = c->d_model, V = c->d_vocab_out;
    const int B = batch.B, T = batch.T;
    lens_cache cache = {0};
    uint8_t *enabled = calloc(lens_hook_slots(c), 1);
    float *dirs = malloc((size_t)B * d * sizeof *dirs);
    /* components: accumulated 2L+1, decompose 2+2L, heads L*H */
    const int max_components = 2 * L + 2 + L * H;
    float *stack = malloc((size_t)max_components * d * sizeof *stack);
    float *attrs = malloc((size_t)max_components * B * sizeof *attrs);
    lens_err err = {0};
    if (!enabled || !dirs || !stack || !attrs) goto oom;
    for (int b = 0; b < B; b++)
        lens_logit_direction(m, answer[b], wrong[b], dirs + (size_t)b * d);
    for (int k = 0; k < N_STACKS; k++)
        if (which & (1u << k)) lens_stack_hooks(c, (lens_stack_kind)k, enabled);
    const lens_cache_request req = {.enabled = enabled, .logits = true, .logit_positions = pos};
    srv_metrics_batch(B);
    if (lens_run_cache(m, &sm->ws, &batch, &req, &cache, &err)) {
        srv_engine_error(resp, &err, NULL);
        goto done;
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
    for (int k = 0; k < N_STACKS; k++) {
        if (!(which & (1u << k))) continue;
        const lens_stack_kind kind = (lens_stack_kind)k;
        const int n = lens_stack_size(c, kind);
        json_t *labels = json_array();
        for (int i = 0; i < n; i++) {
            char label[32];
            lens_stack_label(c, kind, i, label, sizeof label);
            json_array_append_new(labels, json_string(label));
        }
        float *col = malloc((size_t)n * sizeof *col);
        if (!col) {
            json_decref(labels);
            json_decref(result);
            goto oom;
        }
        for (int b = 0; b < B; b++) {
            lens_stack(m, &cache, kind, b, pos[b], stack);
            const float one_scale =
                scale ? ((const float *)scale->data)[(size_t)b * T + pos[b]] : 1.0f;
            lens_logit_attrs(c, stack, n, one_scale, dirs + (size_t)b * d, col);
            for (int i = 0; i < n; i++)
                attrs[(size_t)i * B + b] = col[i];
        }
        free(col);
        json_t *section = attribution_json(labels, attrs, n, B);
        if (kind == LENS_STACK_HEADS) { /* the mean as [layer][head], for heatmaps */
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
        json_object_set_new(result, stack_names[k], section);
    }
    srv_add_processing(job, result);
    srv_json(resp, MHD_HTTP_OK, result);
    goto done;
oom:
    srv_out_of_memory(resp);
done:
    free(enabled);
    free(dirs);
    free(stack);
    free(attrs);
    lens_cache_free(&cache);
}

const srv_endpoint srv_endpoint_logit_diff = {
    .name = "logit_diff",
    .summary = "The logit difference of answer and wrong answer, and its attribution to the "
               "residual stream's components and to heads.",
    .request_schema = SRV_PROMPTS_SCHEMA(
        ", \"answers\": {\"type\": \"array\", \"minItems\": 1}, \"position\": {\"type\": "
        "\"integer\"}, \"attribution\": {\"type\": \"array\", \"items\": {\"enum\": "
        "[\"accumulated_resid\", \"decompose_resid\", \"heads\"]}}"),
    .parse = parse,
    .run = run,
    .free_params = free_params,
};
