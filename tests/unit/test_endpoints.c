/*
 * test_endpoints.c: every endpoint's parse, as the HTTP thread calls it, on
 * a real model (the bundled induction-2l: 2 layers, 4 heads, n_ctx 256, a
 * 257-token byte-level vocabulary) with the default limits: what it accepts,
 * what it refuses with which error and field, and that it is pure (the body
 * unchanged, the same answer twice).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/endpoint.h"

static srv_model model;

static void load_model(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/models/induction-2l", LENSD_SOURCE_DIR);
    char *argv[] = {"serve", "--model", "m=x", NULL};
    lens_err err = {0};
    cr_assert_eq(srv_config_load(&srv_d.cfg, 3, argv, &err), 0, "%s", err.msg);
    model = (srv_model){.name = "m", .present = true};
    model.model = lens_model_load(path, NULL, &err);
    cr_assert_not_null(model.model, "%s", err.msg);
}

static void free_model(void) {
    lens_model_free(model.model);
    srv_config_free(&srv_d.cfg);
}

TestSuite(endpoints, .init = load_model, .fini = free_model);

typedef struct parse_case {
    const char *endpoint;
    const char *body;
    unsigned status; /* 0: parsed */
    const char *code, *field;
} parse_case;

static const parse_case cases[] = {
    {"tokenize", "{\"prompt\": \"ab\"}", 0, NULL, NULL},
    {"tokenize", "{\"prompts\": [\"a\", \"bc\"], \"padding_side\": \"left\"}", 0, NULL, NULL},
    {"tokenize", "{}", 400, "bad_request", "prompt"},
    {"tokenize", "{\"prompt\": \"a\", \"tokens\": [[1]]}", 400, "bad_request", "prompt"},
    {"tokenize", "{\"tokens\": [[1, 300]]}", 422, "unprocessable", "tokens[0]"},
    {"tokenize", "{\"tokens\": [[1, \"x\"]]}", 400, "bad_request", "tokens[0]"},
    {"tokenize", "{\"prompts\": []}", 400, "bad_request", "prompts"},
    {"tokenize", "{\"prompt\": \"a\", \"padding_side\": \"up\"}", 400, "bad_request",
     "padding_side"},
    {"detokenize", "{\"tokens\": [1, 2]}", 0, NULL, NULL},
    {"detokenize", "{\"tokens\": [[1], [2, 3]]}", 0, NULL, NULL},
    {"detokenize", "{\"tokens\": [1, 257]}", 422, "unprocessable", "tokens"},
    {"detokenize", "{\"tokens\": 5}", 400, "bad_request", "tokens"},
    {"logits", "{\"prompt\": \"ab\", \"top_k\": 3, \"positions\": [-1]}", 0, NULL, NULL},
    {"logits", "{\"prompt\": \"ab\", \"top_k\": 0}", 422, "unprocessable", "top_k"},
    {"logits", "{\"prompt\": \"ab\", \"top_k\": \"3\"}", 400, "bad_request", "top_k"},
    {"logits", "{\"prompt\": \"ab\", \"positions\": [5]}", 422, "unprocessable", "positions[0]"},
    {"logits", "{\"prompt\": \"ab\", \"loss\": 1}", 400, "bad_request", "loss"},
    {"run_with_cache", "{\"prompt\": \"ab\", \"names_filter\": \"blocks.0.*\"}", 0, NULL, NULL},
    {"run_with_cache", "{\"prompt\": \"ab\", \"names\": [\"blocks.2.hook_resid_pre\"]}", 400,
     "bad_request", "names[0]"},
    {"run_with_cache", "{\"prompt\": \"ab\", \"names_filter\": \"nothing*\"}", 400, "bad_request",
     "names_filter"},
    {"run_with_cache", "{\"prompt\": \"ab\", \"dtype\": \"int8\"}", 400, "bad_request", "dtype"},
    {"run_with_cache", "{\"prompt\": \"ab\", \"batch\": [1]}", 422, "unprocessable", "batch[0]"},
    {"attention", "{\"prompt\": \"ab\", \"layers\": [1], \"heads\": [0, 3]}", 0, NULL, NULL},
    {"attention", "{\"prompts\": [\"ab\"]}", 400, "bad_request", "prompt"},
    {"attention", "{\"prompt\": \"ab\", \"heads\": [4]}", 422, "unprocessable", "heads[0]"},
    {"test_prompt", "{\"prompt\": \"abc\", \"answer\": \"d\"}", 0, NULL, NULL},
    {"test_prompt", "{\"prompt\": \"abc\"}", 400, "bad_request", "answer"},
    {"test_prompt", "{\"prompt\": \"\", \"answer\": \"d\", \"prepend_bos\": false}", 400,
     "bad_request", "prompt"},
    {"logit_diff",
     "{\"prompts\": [\"ab\", \"cd\"], \"answers\": [\"e\", \"f\"], "
     "\"attribution\": [\"heads\"]}",
     0, NULL, NULL},
    {"logit_diff", "{\"prompt\": \"ab\", \"answers\": [\"e\"]}", 400, "bad_request", "answers"},
    {"logit_diff", "{\"prompt\": \"ab\", \"answers\": [\"e\", \"f\"], \"attribution\": [\"x\"]}",
     400, "bad_request", "attribution[0]"},
    {"run_with_hooks",
     "{\"prompt\": \"ab\", \"hooks\": [{\"name\": \"blocks.0.hook_resid_pre\", "
     "\"op\": \"zero\"}]}",
     0, NULL, NULL},
    {"run_with_hooks",
     "{\"prompt\": \"ab\", \"hooks\": [{\"name\": \"blocks.0.hook_resid_pre\", "
     "\"op\": \"patch\"}]}",
     400, "bad_request", "patch_from"},
    {"run_with_hooks",
     "{\"prompt\": \"ab\", \"hooks\": [{\"name\": \"blocks.0.hook_nothing\", "
     "\"op\": \"zero\"}]}",
     400, "bad_request", "hooks[0].name"},
    {"run_with_hooks",
     "{\"prompt\": \"ab\", \"hooks\": [{\"name\": \"blocks.0.hook_resid_pre\", "
     "\"op\": \"scale\"}]}",
     400, "bad_request", "hooks[0].factor"},
    {"generate", "{\"prompt\": \"ab\", \"max_new_tokens\": 3, \"progress_id\": \"g1\"}", 0, NULL,
     NULL},
    {"generate", "{\"prompt\": \"ab\", \"temperature\": 0}", 422, "unprocessable", "temperature"},
    {"generate", "{\"prompt\": \"ab\", \"progress_id\": 7}", 400, "bad_request", "progress_id"},
    {"generate", "{\"prompts\": [\"ab\", \"ab\", \"ab\", \"ab\"], \"max_new_tokens\": 256}", 0,
     NULL, NULL},
    {"patch",
     "{\"sweep\": \"resid_pre\", \"clean\": {\"prompt\": \"ab\"}, \"corrupted\": "
     "{\"prompt\": \"cd\"}, \"metric\": {\"answers\": [\"e\", \"f\"]}}",
     0, NULL, NULL},
    {"patch", "{\"sweep\": \"nothing\", \"clean\": {}, \"corrupted\": {}, \"metric\": {}}", 400,
     "bad_request", "sweep"},
    {"patch",
     "{\"sweep\": \"resid_pre\", \"clean\": {\"prompt\": \"ab\"}, \"corrupted\": "
     "{\"prompt\": \"cde\"}, \"metric\": {\"answers\": [\"e\", \"f\"]}}",
     422, "unprocessable", "corrupted"},
};

/* The status, code and field of a parse that refused. */
static void check_refusal(const parse_case *c, const srv_response *resp) {
    cr_assert_eq(resp->status, c->status, "%s %s: status %u, not %u: %.*s", c->endpoint, c->body,
                 resp->status, c->status, (int)resp->body_len, resp->body);
    json_t *doc = json_loadb(resp->body, resp->body_len, 0, NULL);
    json_t *error = json_object_get(doc, "error");
    cr_expect_str_eq(json_string_value(json_object_get(error, "code")), c->code, "%s %s",
                     c->endpoint, c->body);
    const char *field = json_string_value(json_object_get(error, "field"));
    cr_expect(field && strcmp(field, c->field) == 0, "%s %s: field %s, not %s", c->endpoint,
              c->body, field ? field : "(none)", c->field);
    json_decref(doc);
}

Test(endpoints, parse_accepts_and_refuses_with_the_field) {
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const parse_case *c = &cases[i];
        const srv_endpoint *e = srv_endpoint_find(c->endpoint, strlen(c->endpoint));
        cr_assert_not_null(e, "%s", c->endpoint);
        json_t *body = json_loads(c->body, 0, NULL);
        cr_assert_not_null(body, "case %zu is not JSON", i);
        char *before = json_dumps(body, JSON_SORT_KEYS);
        for (int twice = 0; twice < 2; twice++) {
            srv_response resp = {0};
            void *params = NULL;
            const int rc = e->parse(&model, body, &params, &resp);
            if (c->status == 0) {
                cr_expect_eq(rc, 0, "%s %s: %.*s", c->endpoint, c->body, (int)resp.body_len,
                             resp.body);
                cr_expect_not_null(params);
            } else {
                cr_expect_eq(rc, -1, "%s %s parsed", c->endpoint, c->body);
                check_refusal(c, &resp);
            }
            e->free_params(params);
            free(resp.body);
        }
        char *after = json_dumps(body, JSON_SORT_KEYS);
        cr_expect_str_eq(after, before, "%s changed its body", c->endpoint);
        free(before);
        free(after);
        json_decref(body);
    }
}

/* Sizes are checked in parse, before anything of their size is allocated:
 * repeated positions, layers and batch rows included. */
Test(endpoints, parse_checks_the_sizes) {
    const size_t saved = srv_d.cfg.limits.max_response_bytes;
    srv_d.cfg.limits.max_response_bytes = 1 << 20;
    const struct {
        const char *endpoint, *list; /* the list of repeats zeros */
        int repeats;
    } large[] = {
        {"logits", "positions", 2000},      /* 2,000 positions x 257 logits: 2 MB */
        {"attention", "layers", 10000},     /* 10,000 x 4 heads x 9 x 9 patterns: 13 MB */
        {"run_with_cache", "batch", 10000}, /* 10,000 copies of a prompt's cache */
    };
    for (size_t i = 0; i < sizeof large / sizeof large[0]; i++) {
        const srv_endpoint *e = srv_endpoint_find(large[i].endpoint, strlen(large[i].endpoint));
        json_t *body = json_object(), *list = json_array();
        for (int r = 0; r < large[i].repeats; r++)
            json_array_append_new(list, json_integer(0));
        json_object_set_new(body, "prompt", json_string("abcdefgh"));
        json_object_set_new(body, large[i].list, list);
        srv_response resp = {0};
        void *params = NULL;
        cr_expect_eq(e->parse(&model, body, &params, &resp), -1, "%s parsed", large[i].endpoint);
        cr_expect_eq(resp.status, 413, "%s: %u %.*s", large[i].endpoint, resp.status,
                     (int)resp.body_len, resp.body);
        e->free_params(params);
        free(resp.body);
        json_decref(body);
    }
    srv_d.cfg.limits.max_response_bytes = saved;
}
