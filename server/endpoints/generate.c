/*
 * generate.c: POST /v1/models/{model}/generate — TransformerLens's generate:
 * greedy or sampled continuations of the prompts, optionally with
 * interventions (zero, set, add, scale) at every step.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/logits.h"
#include "server/endpoint.h"
#include "server/metrics.h"
#include "server/request.h"

typedef struct generate_params {
    lens_token_batch start;
    srv_hooks h;
    uint8_t *intervene; /* hook slots of h */
    bool sample, stop_at_eos;
    long max_new, top_k, seed;
    double temperature;
    char *progress_id;
} generate_params;

static void free_params(void *params) {
    generate_params *p = params;
    if (!p) return;
    lens_token_batch_free(&p->start);
    srv_hooks_free(&p->h);
    free(p->intervene);
    free(p->progress_id);
    free(p);
}

static const char *progress_id(const void *params) {
    return ((const generate_params *)params)->progress_id;
}

static int parse(const srv_model *sm, json_t *body, void **params, srv_response *resp) {
    const lens_config *c = &sm->model->cfg;
    generate_params *p = calloc(1, sizeof *p);
    if (!p || !(p->intervene = calloc(lens_hook_slots(c), 1))) {
        free(p);
        srv_out_of_memory(resp);
        return -1;
    }
    *params = p;
    json_t *temperature = json_object_get(body, "temperature");
    p->temperature = temperature ? json_number_value(temperature) : 1.0;
    if (srv_optional_bool(body, "do_sample", false, &p->sample, resp) ||
        srv_optional_bool(body, "stop_at_eos", true, &p->stop_at_eos, resp) ||
        srv_optional_int(body, "max_new_tokens", 10, 1, c->n_ctx, &p->max_new, resp) ||
        srv_optional_int(body, "top_k", 0, 0, c->d_vocab_out, &p->top_k, resp) ||
        srv_optional_int(body, "seed", 0, 0, INT64_MAX, &p->seed, resp) ||
        srv_read_progress_id(body, &p->progress_id, resp))
        return -1;
    if (temperature &&
        (!json_is_number(temperature) || !(p->temperature > 0) || !isfinite(p->temperature))) {
        srv_error(resp, json_is_number(temperature) ? SRV_ERR_UNPROCESSABLE : SRV_ERR_BAD_REQUEST,
                  "temperature", "temperature must be a finite number above 0");
        return -1;
    }
    if (srv_read_prompts(sm->model, body, &p->start, resp)) return -1;
    if (json_object_get(body, "hooks")) {
        /* positions are those of the whole sequence, which grows */
        if (srv_read_hooks(c, body, c->n_ctx, &p->h, resp)) return -1;
        for (int i = 0; i < p->h.n; i++) {
            if (p->h.items[i].op == LENS_OP_COPY) {
                char field[32];
                snprintf(field, sizeof field, "hooks[%d].op", i);
                srv_error(resp, SRV_ERR_UNPROCESSABLE, field,
                          "generate takes zero, set, add and scale; %s needs a fixed length",
                          p->h.is_mean[i] ? "mean" : "patch");
                return -1;
            }
            p->intervene[lens_hook_slot(c, p->h.items[i].hook)] = 1;
        }
    }
    const int B = p->start.B;
    const int T_max =
        p->start.T + (int)p->max_new > c->n_ctx ? c->n_ctx : p->start.T + (int)p->max_new;
    double work = 0.0; /* token positions through the model: each step runs the whole rows */
    for (int T = p->start.T; T < T_max; T++)
        work += (double)B * T;
    if (work > srv_d.cfg.limits.max_generate_tokens) {
        srv_error(resp, SRV_ERR_TOO_LARGE, "max_new_tokens",
                  "%d prompt%s of up to %d tokens and %ld new tokens each run %.0f token "
                  "positions through the model (every step runs the whole rows so far), more "
                  "than limits.max_generate_tokens (%d): ask for fewer prompts or new tokens",
                  B, B == 1 ? "" : "s", p->start.T, p->max_new, work,
                  srv_d.cfg.limits.max_generate_tokens);
        return -1;
    }
    return 0;
}

static void run(srv_job *job) {
    const generate_params *p = job->params;
    srv_model *sm = job->model;
    const lens_model *m = job->lm;
    const lens_config *c = &m->cfg;
    srv_response *resp = &job->response;
    const lens_token_batch start = p->start;
    const srv_hooks h = p->h;
    const bool stop_at_eos = p->stop_at_eos;
    const long max_new = p->max_new;
    const lens_sampling sampling = {
        .sample = p->sample, .temperature = (float)p->temperature, .top_k = (int)p->top_k};
    uint8_t *none = calloc(lens_hook_slots(c), 1), *intervene = p->intervene;
    int32_t *tokens = NULL, *last = NULL, *scratch_ids = NULL, *top_ids = NULL;
    srv_progress *progress = job->progress;
    lens_err err = {0};
    const int B = start.B, V = c->d_vocab_out;
    const int T_max = start.T + (int)max_new > c->n_ctx ? c->n_ctx : start.T + (int)max_new;
    if (!none) {
        srv_out_of_memory(resp);
        goto out;
    }
    tokens = malloc((size_t)B * T_max * sizeof *tokens);
    last = malloc((size_t)B * sizeof *last);
    top_ids = malloc((size_t)V * sizeof *top_ids);
    scratch_ids = malloc((size_t)T_max * sizeof *scratch_ids);
    int *length = calloc((size_t)B, sizeof *length);
    bool *done = calloc((size_t)B, sizeof *done);
    uint64_t rng = (uint64_t)p->seed;
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
            srv_answer_if_stopped(job, progress, p->progress_id, what);
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
            int32_t next = lens_pick_token(out.logits + (size_t)b * V, V, &sampling, &rng, top_ids);
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
        json_t *answer =
            json_pack("{s:s, s:o, s:o}", "model", sm->name, "tokens", rows, "text", texts);
        srv_add_processing(job, answer);
        srv_json(resp, 200, answer);
    }
    free(length);
    free(done);
out:
    free(none);
    free(tokens);
    free(last);
    free(top_ids);
    free(scratch_ids);
}

const srv_endpoint srv_endpoint_generate = {
    .name = "generate",
    .summary = "Greedy or sampled continuations of the prompts, as TransformerLens's generate, "
               "optionally with interventions.",
    .request_schema = SRV_PROMPTS_SCHEMA(
        ", \"max_new_tokens\": {\"type\": \"integer\", \"minimum\": 1}, \"do_sample\": "
        "{\"type\": \"boolean\"}, \"temperature\": {\"type\": \"number\", "
        "\"exclusiveMinimum\": 0}, \"top_k\": {\"type\": \"integer\", \"minimum\": 0}, "
        "\"seed\": {\"type\": \"integer\", \"minimum\": 0}, \"stop_at_eos\": {\"type\": "
        "\"boolean\"}, \"hooks\": {\"type\": \"array\"}, \"progress_id\": {\"type\": "
        "\"string\"}"),
    .parse = parse,
    .run = run,
    .free_params = free_params,
    .progress_id = progress_id,
};
