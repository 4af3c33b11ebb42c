/*
 * tokenize.c: POST /v1/models/{model}/tokenize — a request's prompts as
 * TransformerLens's to_tokens and to_str_tokens make them, with the
 * attention mask of the padded batch.
 */
#include <stdlib.h>

#include "server/endpoint.h"
#include "server/request.h"

static int parse(const srv_model *sm, json_t *body, void **params, srv_response *resp) {
    lens_token_batch *batch = calloc(1, sizeof *batch);
    if (!batch) {
        srv_out_of_memory(resp);
        return -1;
    }
    if (srv_read_prompts(sm->model, body, batch, resp)) {
        free(batch);
        return -1;
    }
    *params = batch;
    return 0;
}

static void free_params(void *params) {
    if (params) lens_token_batch_free(params);
    free(params);
}

static void run(srv_job *job) {
    const lens_token_batch *b = job->params;
    json_t *mask = json_array();
    for (int i = 0; i < b->B; i++) {
        json_t *row = json_array();
        for (int t = 0; t < b->T; t++) {
            int real = b->attn_mask ? b->attn_mask[(size_t)i * b->T + t] : t < b->lengths[i];
            json_array_append_new(row, json_integer(real));
        }
        json_array_append_new(mask, row);
    }
    srv_json(&job->response, 200,
             json_pack("{s:o, s:o, s:o}", "tokens", srv_tokens_json(b), "str_tokens",
                       srv_str_tokens_json(job->lm, b), "attention_mask", mask));
}

const srv_endpoint srv_endpoint_tokenize = {
    .name = "tokenize",
    .summary = "The prompts' token ids, str_tokens and attention mask, as to_tokens makes them.",
    .request_schema = SRV_PROMPTS_SCHEMA(""),
    .parse = parse,
    .run = run,
    .free_params = free_params,
    .tokenizer_only = true,
};
