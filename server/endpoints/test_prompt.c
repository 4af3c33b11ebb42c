/*
 * test_prompt.c: POST /v1/models/{model}/test_prompt — TransformerLens's
 * utils.test_prompt: the answer's rank, logit and probability at each of its
 * tokens, the top tokens, and the text test_prompt prints.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/prompt.h"
#include "server/endpoint.h"
#include "server/request.h"
#include "core/test_prompt.h"

typedef struct test_prompt_params {
    char *prompt, *answer;
    lens_test_prompt_opts opts;
} test_prompt_params;

static void free_params(void *params) {
    test_prompt_params *p = params;
    if (!p) return;
    free(p->prompt);
    free(p->answer);
    free(p);
}

static int parse(const srv_model *sm, json_t *body, void **params, srv_response *resp) {
    const lens_config *c = &sm->model->cfg;
    json_t *prompt = json_object_get(body, "prompt"), *answer = json_object_get(body, "answer");
    bool prepend_space, prepend_bos;
    long top_k;
    if (!json_is_string(prompt) || !json_is_string(answer)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, json_is_string(prompt) ? "answer" : "prompt",
                  "test_prompt needs prompt and answer, both strings");
        return -1;
    }
    if (srv_optional_bool(body, "prepend_space_to_answer", true, &prepend_space, resp) ||
        srv_optional_bool(body, "prepend_bos", c->default_prepend_bos, &prepend_bos, resp) ||
        srv_optional_int(body, "top_k", 10, 0, c->d_vocab_out, &top_k, resp))
        return -1;
    /* a prompt past the context is refused here, tokenized no further than it */
    int32_t *ids = NULL;
    int n_ids = 0;
    bool truncated = false;
    lens_err err = {0};
    if (lens_prompt_tokens(sm->model, json_string_value(prompt), prepend_bos, &ids, &n_ids,
                           &truncated, &err)) {
        srv_engine_error(resp, &err, "prompt");
        return -1;
    }
    free(ids);
    if (n_ids == 0) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "prompt",
                  "prompt has no tokens (an empty prompt without BOS): the answer's first token "
                  "is predicted at the prompt's last");
        return -1;
    }
    if (truncated) {
        srv_error(resp, SRV_ERR_TOO_LARGE, "prompt",
                  "prompt is more than the model's context of %d tokens", c->n_ctx);
        return -1;
    }
    test_prompt_params *p = calloc(1, sizeof *p);
    if (p) {
        p->prompt = strdup(json_string_value(prompt));
        p->answer = strdup(json_string_value(answer));
        p->opts = (lens_test_prompt_opts){.prepend_bos = prepend_bos,
                                          .prepend_space_to_answer = prepend_space,
                                          .top_k = (int)top_k};
    }
    *params = p;
    if (!p || !p->prompt || !p->answer) {
        srv_out_of_memory(resp);
        return -1;
    }
    return 0;
}

static void run(srv_job *job) {
    const test_prompt_params *p = job->params;
    srv_model *sm = job->model;
    srv_response *resp = &job->response;
    const char *answers[1] = {p->answer};
    char *text = NULL;
    size_t text_len = 0;
    FILE *out = open_memstream(&text, &text_len);
    json_t *data = NULL;
    lens_err err = {0};
    int rc =
        out ? lens_test_prompt(job->lm, &sm->ws, p->prompt, answers, 1, &p->opts, out, &data, &err)
            : -1;
    if (out) fclose(out);
    if (rc) {
        if (out)
            srv_engine_error(resp, &err, NULL);
        else
            srv_out_of_memory(resp);
    } else {
        json_object_set_new(data, "text", json_stringn(text, text_len));
        json_object_set_new(data, "model", json_string(sm->name));
        srv_add_processing(job, data);
        srv_json(resp, 200, data);
    }
    free(text);
}

const srv_endpoint srv_endpoint_test_prompt = {
    .name = "test_prompt",
    .summary = "TransformerLens's test_prompt: the answer's rank, logit and probability, the top "
               "tokens, and the text it prints.",
    .request_schema = "{\"type\": \"object\", \"required\": [\"prompt\", \"answer\"], "
                      "\"properties\": {\"prompt\": {\"type\": \"string\"}, \"answer\": {\"type\": "
                      "\"string\"}, \"prepend_space_to_answer\": {\"type\": \"boolean\"}, "
                      "\"prepend_bos\": {\"type\": \"boolean\"}, \"top_k\": {\"type\": "
                      "\"integer\", \"minimum\": 0}}}",
    .parse = parse,
    .run = run,
    .free_params = free_params,
};
