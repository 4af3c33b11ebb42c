/*
 * logits.c: POST /v1/models/{model}/logits — the logits of the prompts, or
 * their top k, log-probs and TransformerLens's loss. Requests queued one
 * behind another share one forward pass where they can (causal attention,
 * right padding), with the same numbers as alone.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/logits.h"
#include "server/endpoint.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/tensors.h"

/* A logits request between its parsing and its answer (the job's params). */
typedef struct logits_request {
    srv_job *job;  /* set when it runs */
    srv_answer *a; /* its batch; its cache's logits once run */
    int32_t *positions;
    int n_positions;
    bool want_log_probs, want_loss, want_per_token;
    bool one_position; /* one position and no loss: logits only there ([B, 1, V]) */
    long top_k;
} logits_request;

static int parse(const srv_model *sm, json_t *body, void **params, srv_response *resp) {
    const lens_config *c = &sm->model->cfg;
    logits_request *lr = calloc(1, sizeof *lr);
    if (!lr || !(lr->a = srv_answer_new(c))) {
        free(lr);
        srv_out_of_memory(resp);
        return -1;
    }
    *params = lr;
    if (srv_optional_bool(body, "log_probs", false, &lr->want_log_probs, resp) ||
        srv_optional_bool(body, "loss", false, &lr->want_loss, resp) ||
        srv_optional_bool(body, "per_token_loss", false, &lr->want_per_token, resp) ||
        srv_optional_int(body, "top_k", 0, 1, c->d_vocab_out, &lr->top_k, resp) ||
        srv_read_prompts(sm->model, body, &lr->a->batch, resp) ||
        srv_read_positions(body, lr->a->batch.T, &lr->positions, &lr->n_positions, resp))
        return -1;
    lr->one_position = lr->n_positions == 1 && !lr->want_loss && !lr->want_per_token;
    /* the rows answered ([B, P, V], twice with log_probs), counted before any is made */
    const int B = lr->a->batch.B, P = lr->n_positions ? lr->n_positions : lr->a->batch.T;
    const double bytes =
        (double)B * P * c->d_vocab_out * sizeof(float) * (lr->top_k ? 0 : 1 + lr->want_log_probs);
    if (bytes > (double)srv_d.cfg.limits.max_response_bytes) {
        srv_error(resp, SRV_ERR_TOO_LARGE, lr->n_positions ? "positions" : NULL,
                  "these logits are %.0f MB for %d prompt%s x %d positions, over the %zu MB of "
                  "limits.max_response_bytes; ask for fewer positions or prompts, or top_k",
                  bytes / (1 << 20), B, B == 1 ? "" : "s", P,
                  srv_d.cfg.limits.max_response_bytes >> 20);
        return -1;
    }
    return 0;
}

/* Frees what lr holds (its answer, once sent, is no longer its). */
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
    const lens_config *c = &job->lm->cfg;
    const int B = a->batch.B, T = a->batch.T, V = c->d_vocab_out;
    const int P = lr->n_positions ? lr->n_positions : T;
    const long top_k = lr->top_k;
    if (srv_answer_add_tokens(a)) goto oom;
    /* the kept positions' rows, and their log-probs */
    float *rows = a->cache.logits, *logp = NULL;
    if (lr->n_positions && !lr->one_position) {
        if (!(rows = srv_answer_alloc(a, (size_t)B * P * V * sizeof *rows))) goto oom;
        for (int b = 0; b < B; b++)
            for (int p = 0; p < P; p++)
                memcpy(rows + ((size_t)b * P + p) * V,
                       a->cache.logits + ((size_t)b * T + lr->positions[p]) * V,
                       (size_t)V * sizeof *rows);
    }
    if (lr->want_log_probs) {
        if (!(logp = srv_answer_alloc(a, (size_t)B * P * V * sizeof *logp))) goto oom;
        for (size_t r = 0; r < (size_t)B * P; r++)
            lens_log_softmax(rows + r * V, logp + r * V, V);
    }
    json_t *fields = json_pack("{s:s}", "model", job->model->name);
    srv_add_processing(job, fields);
    if (top_k) {
        int64_t *ids = srv_answer_alloc(a, (size_t)B * P * top_k * sizeof *ids);
        float *vals = srv_answer_alloc(a, (size_t)B * P * top_k * sizeof *vals);
        float *probs = srv_answer_alloc(a, (size_t)B * P * top_k * sizeof *probs);
        int32_t *picked = malloc((size_t)top_k * sizeof *picked); /* one row's ids */
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
    srv_answer_send(job->accept, resp, a, fields);
    logits_request_free(lr);
    return;
oom:
    srv_out_of_memory(resp);
    logits_request_free(lr);
}

/* One forward for several requests' prompts (rows stacked, right-padded to
 * the longest), each then given its own rows. Causal attention and right
 * padding make every real position's numbers those of running it alone.
 * The jobs share their weights (the scheduler batches one processing). */
static void logits_together(srv_model *sm, logits_request **lrs, int n) {
    const lens_model *m = lrs[0]->job->lm;
    const lens_config *c = &m->cfg;
    const int V = c->d_vocab_out;
    if (n == 1) { /* alone: its own batch, attention mask included */
        srv_answer *a = lrs[0]->a;
        uint8_t *none = calloc(lens_hook_slots(c), 1);
        int32_t *at = lrs[0]->one_position ? malloc((size_t)a->batch.B * sizeof *at) : NULL;
        lens_err err = {0};
        for (int r = 0; at && r < a->batch.B; r++)
            at[r] = lrs[0]->positions[0];
        const lens_cache_request req = {.enabled = none, .logits = true, .logit_positions = at};
        srv_metrics_batch(a->batch.B);
        int rc = !none || (lrs[0]->one_position && !at)
                     ? (lens_err_set_code(&err, LENS_ERR_NO_MEMORY, "out of memory"), -1)
                     : lens_run_cache(m, &sm->ws, &a->batch, &req, &a->cache, &err);
        free(none);
        free(at);
        if (rc) {
            srv_engine_error(&lrs[0]->job->response, &err, NULL);
            logits_request_free(lrs[0]);
        } else {
            logits_finish(lrs[0]);
        }
        return;
    }
    int B = 0, T = 0;
    bool one_position = true;
    for (int i = 0; i < n; i++) {
        B += lrs[i]->a->batch.B;
        T = lrs[i]->a->batch.T > T ? lrs[i]->a->batch.T : T;
        one_position &= lrs[i]->one_position;
    }
    const int32_t pad = m->rules.pad_id >= 0 ? m->rules.pad_id : 0;
    lens_token_batch all = {.B = B, .T = T};
    lens_cache out = {0};
    uint8_t *none = calloc(lens_hook_slots(c), 1);
    int32_t *at = malloc((size_t)B * sizeof *at);
    all.tokens = malloc((size_t)B * T * sizeof *all.tokens);
    lens_err err = {0};
    int failed = !none || !at || !all.tokens;
    for (int i = 0, row = 0; !failed && i < n; i++) {
        const lens_token_batch *b = &lrs[i]->a->batch;
        for (int r = 0; r < b->B; r++, row++) {
            for (int t = 0; t < T; t++)
                all.tokens[(size_t)row * T + t] = t < b->T ? b->tokens[(size_t)r * b->T + t] : pad;
            at[row] = lrs[i]->one_position ? lrs[i]->positions[0] : 0;
        }
    }
    const lens_cache_request req = {
        .enabled = none, .logits = true, .logit_positions = one_position ? at : NULL};
    srv_metrics_batch(B);
    if (!failed) failed = lens_run_cache(m, &sm->ws, &all, &req, &out, &err);
    for (int i = 0, row = 0; i < n; i++) {
        srv_answer *a = lrs[i]->a;
        const int Bi = a->batch.B, Ti = a->batch.T, rows_per = lrs[i]->one_position ? 1 : Ti;
        if (!failed && (a->cache.logits = malloc((size_t)Bi * rows_per * V * sizeof(float)))) {
            for (int r = 0; r < Bi; r++, row++)
                for (int t = 0; t < rows_per; t++) {
                    const size_t from =
                        one_position
                            ? (size_t)row
                            : (size_t)row * T +
                                  (size_t)(lrs[i]->one_position ? lrs[i]->positions[0] : t);
                    memcpy(a->cache.logits + ((size_t)r * rows_per + t) * V, out.logits + from * V,
                           (size_t)V * sizeof(float));
                }
            logits_finish(lrs[i]);
        } else {
            if (failed)
                srv_engine_error(&lrs[i]->job->response, &err, NULL);
            else
                srv_out_of_memory(&lrs[i]->job->response);
            logits_request_free(lrs[i]);
            row += Bi;
        }
    }
    lens_cache_free(&out);
    lens_token_batch_free(&all);
    free(none);
    free(at);
}

static void run(srv_job **jobs, int n) {
    logits_request *lrs[SRV_MAX_BATCHED_JOBS];
    srv_model *sm = jobs[0]->model;
    int together = 0;
    for (int i = 0; i < n; i++) {
        logits_request *lr = jobs[i]->params;
        lr->job = jobs[i];
        /* left padding (a mask) shifts positions: such a request runs alone */
        if (lr->a->batch.attn_mask || !jobs[i]->lm->cfg.causal)
            logits_together(sm, &lr, 1);
        else
            lrs[together++] = lr;
    }
    if (together) logits_together(sm, lrs, together);
}

static void free_params(void *params) {
    if (params) logits_request_free(params);
    free(params);
}

const srv_endpoint srv_endpoint_logits = {
    .name = "logits",
    .summary = "Logits (or their top k, log-probs and loss) of the prompts, at every position or "
               "the ones asked for.",
    .request_schema = SRV_PROMPTS_SCHEMA(
        ", \"positions\": {\"type\": \"array\", \"items\": {\"type\": \"integer\"}}, "
        "\"top_k\": {\"type\": \"integer\", \"minimum\": 1}, \"log_probs\": {\"type\": "
        "\"boolean\"}, \"loss\": {\"type\": \"boolean\"}, \"per_token_loss\": {\"type\": "
        "\"boolean\"}"),
    .parse = parse,
    .run_batch = run,
    .free_params = free_params,
};
