/*
 * request.c: reading a request's fields (request.h).
 */
#include "server/request.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fails resp unless body's optional field has the JSON type (0: absent). */
int srv_optional_bool(json_t *body, const char *key, bool fallback, bool *out, srv_response *resp) {
    json_t *v = json_object_get(body, key);
    *out = fallback;
    if (!v) return 0;
    if (!json_is_boolean(v)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, key, "%s must be true or false", key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

int srv_optional_int(json_t *body, const char *key, long fallback, long min, long max, long *out,
                     srv_response *resp) {
    json_t *v = json_object_get(body, key);
    *out = fallback;
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        srv_error(resp, json_is_integer(v) ? SRV_ERR_UNPROCESSABLE : SRV_ERR_BAD_REQUEST, key,
                  "%s must be an integer from %ld to %ld", key, min, max);
        return -1;
    }
    *out = (long)json_integer_value(v);
    return 0;
}

/* The request's prompts as TL's to_tokens makes them: "prompt", "prompts" or
 * "tokens", with prepend_bos and padding_side. */
int srv_read_prompts(const lens_model *m, json_t *body, lens_token_batch *batch,
                     srv_response *resp) {
    const srv_limits *lim = &srv_d.cfg.limits;
    json_t *prompt = json_object_get(body, "prompt"), *prompts = json_object_get(body, "prompts"),
           *tokens = json_object_get(body, "tokens");
    if ((prompt != NULL) + (prompts != NULL) + (tokens != NULL) != 1) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "prompt",
                  "give exactly one of prompt (a string), prompts (a list of strings) or tokens "
                  "(a list of lists of token ids)");
        return -1;
    }
    bool prepend_bos;
    if (srv_optional_bool(body, "prepend_bos", m->cfg.default_prepend_bos, &prepend_bos, resp))
        return -1;
    json_t *side = json_object_get(body, "padding_side");
    if (side && (!json_is_string(side) || (strcmp(json_string_value(side), "left") &&
                                           strcmp(json_string_value(side), "right")))) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "padding_side",
                  "padding_side must be \"left\" or \"right\"");
        return -1;
    }
    /* token rows are used as given: TL's BOS-as-pad mask rule is for text it prefixed */
    const lens_pad_opts pad = {.prepend_bos = prepend_bos && !tokens,
                               .pad_left = side && strcmp(json_string_value(side), "left") == 0};
    json_t *list = prompt ? NULL : prompts ? prompts : tokens;
    const char *what = prompts ? "prompts" : "tokens";
    if (list && (!json_is_array(list) || json_array_size(list) == 0)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, what, "%s must be a non-empty list", what);
        return -1;
    }
    const int n = list ? (int)json_array_size(list) : 1;
    if (n > lim->max_batch_tokens) { /* each prompt has a token at least */
        srv_error(resp, SRV_ERR_TOO_LARGE, what,
                  "%d prompts is more than the limit of %d tokens per request "
                  "(limits.max_batch_tokens)",
                  n, lim->max_batch_tokens);
        return -1;
    }
    const int max_tokens =
        lim->max_tokens > 0 && lim->max_tokens < m->cfg.n_ctx ? lim->max_tokens : m->cfg.n_ctx;
    int32_t **rows = calloc((size_t)n, sizeof *rows);
    int *lens = calloc((size_t)n, sizeof *lens);
    int rc = -1, longest = 0;
    char field[64];
    lens_err err = {0};
    if (!rows || !lens) {
        srv_out_of_memory(resp);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        json_t *item = list ? json_array_get(list, (size_t)i) : prompt;
        if (list)
            snprintf(field, sizeof field, "%s[%d]", what, i);
        else
            snprintf(field, sizeof field, "prompt");
        if (tokens) {
            if (!json_is_array(item) || json_array_size(item) == 0) {
                srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                          "%s must be a non-empty list of token ids", field);
                goto out;
            }
            lens[i] = (int)json_array_size(item);
            if (!(rows[i] = malloc((size_t)lens[i] * sizeof **rows))) goto oom;
            for (int j = 0; j < lens[i]; j++) {
                json_t *id = json_array_get(item, (size_t)j);
                if (!json_is_integer(id) || json_integer_value(id) < 0 ||
                    json_integer_value(id) >= m->cfg.d_vocab) {
                    srv_error(resp,
                              json_is_integer(id) ? SRV_ERR_UNPROCESSABLE : SRV_ERR_BAD_REQUEST,
                              field, "%s[%d] must be a token id from 0 to %d (d_vocab - 1)", field,
                              j, m->cfg.d_vocab - 1);
                    goto out;
                }
                rows[i][j] = (int32_t)json_integer_value(id);
            }
        } else {
            if (!json_is_string(item)) {
                srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s must be a string", field);
                goto out;
            }
            bool truncated;
            if (lens_prompt_tokens(m, json_string_value(item), prepend_bos, &rows[i], &lens[i],
                                   &truncated, &err)) {
                srv_engine_error(resp, &err, field);
                goto out;
            }
            if (truncated) { /* found after n_ctx + 1 tokens: the rest is not tokenized */
                srv_error(resp, SRV_ERR_TOO_LARGE, field,
                          "%s is more than the model's context of %d tokens (TransformerLens "
                          "would cut it there; send at most that many)",
                          field, m->cfg.n_ctx);
                goto out;
            }
        }
        if (lens[i] == 0) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                      "%s has no tokens (an empty prompt without BOS)", field);
            goto out;
        }
        if (lens[i] > max_tokens) {
            srv_error(resp, SRV_ERR_TOO_LARGE, field, "%s is %d tokens, more than the limit of %d",
                      field, lens[i], max_tokens);
            goto out;
        }
        if (lens[i] > longest) longest = lens[i];
        if ((int64_t)(i + 1) * longest > lim->max_batch_tokens) {
            srv_error(resp, SRV_ERR_TOO_LARGE, what,
                      "%d prompts padded to %d tokens are more than the limit of %d tokens per "
                      "request (limits.max_batch_tokens)",
                      i + 1, longest, lim->max_batch_tokens);
            goto out;
        }
    }
    if (lens_pad_rows(m, rows, lens, n, &pad, batch, &err)) {
        srv_engine_error(resp, &err, what);
        goto out;
    }
    rc = 0;
    goto out;
oom:
    srv_out_of_memory(resp);
out:
    for (int i = 0; rows && i < n; i++)
        free(rows[i]);
    free(rows);
    free(lens);
    return rc;
}

void srv_add_processing(const srv_job *job, json_t *fields) {
    char names[128];
    lens_processing_names(job->lm->processing, names, sizeof names);
    json_object_set_new(fields, "processing", json_string(names));
}

/* "positions": a list of positions (negative from the end) resolved against
 * T into *out (NULL when absent). */
int srv_read_positions(json_t *body, int T, int32_t **out, int *n, srv_response *resp) {
    json_t *list = json_object_get(body, "positions");
    *out = NULL;
    *n = 0;
    if (!list) return 0;
    if (!json_is_array(list) || json_array_size(list) == 0) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "positions",
                  "positions must be a non-empty list of integers");
        return -1;
    }
    *n = (int)json_array_size(list);
    if (!(*out = malloc((size_t)*n * sizeof **out))) {
        srv_out_of_memory(resp);
        return -1;
    }
    for (int i = 0; i < *n; i++) {
        json_t *v = json_array_get(list, (size_t)i);
        long p = json_is_integer(v) ? (long)json_integer_value(v) : 0;
        if (p < 0) p += T;
        if (!json_is_integer(v) || p < 0 || p >= T) {
            char field[32];
            snprintf(field, sizeof field, "positions[%d]", i);
            srv_error(resp, json_is_integer(v) ? SRV_ERR_UNPROCESSABLE : SRV_ERR_BAD_REQUEST, field,
                      "%s must be a position in [-%d, %d)", field, T, T);
            free(*out);
            *out = NULL;
            return -1;
        }
        (*out)[i] = (int32_t)p;
    }
    return 0;
}

/* The hook points of "names" (exact) and "names_filter" (globs) into
 * enabled; neither: every hook point. */
int srv_read_names(const lens_config *c, json_t *body, uint8_t *enabled, srv_response *resp) {
    json_t *names = json_object_get(body, "names"), *filter = json_object_get(body, "names_filter");
    if (!names && !filter) {
        lens_hook_select_glob(c, "*", enabled);
        return 0;
    }
    if (names && !json_is_array(names)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "names", "names must be a list of hook names");
        return -1;
    }
    char field[48];
    for (size_t i = 0; names && i < json_array_size(names); i++) {
        json_t *v = json_array_get(names, i);
        snprintf(field, sizeof field, "names[%zu]", i);
        lens_hook hook;
        lens_err err = {0};
        if (!json_is_string(v)) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s must be a string", field);
            return -1;
        }
        if (lens_hook_parse(c, json_string_value(v), &hook, &err)) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s", err.msg);
            return -1;
        }
        enabled[lens_hook_slot(c, hook)] = 1;
    }
    if (!filter) return 0;
    const bool one = json_is_string(filter);
    if (!one && !json_is_array(filter)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "names_filter",
                  "names_filter must be a glob or a list of globs");
        return -1;
    }
    for (size_t i = 0; i < (one ? 1 : json_array_size(filter)); i++) {
        json_t *v = one ? filter : json_array_get(filter, i);
        snprintf(field, sizeof field, one ? "names_filter" : "names_filter[%zu]", i);
        if (!json_is_string(v) || lens_hook_select_glob(c, json_string_value(v), enabled) == 0) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                      json_is_string(v) ? "%s matches no hook point of this model"
                                        : "%s must be a string",
                      field);
            return -1;
        }
    }
    return 0;
}

/* A JSON list of the batch's str_tokens. */
json_t *srv_str_tokens_json(const lens_model *m, const lens_token_batch *b) {
    json_t *rows = json_array();
    for (int i = 0; i < b->B; i++) {
        json_t *row = json_array();
        for (int t = 0; t < b->T; t++) {
            char *s = lens_str_token(m, b->tokens[(size_t)i * b->T + t], NULL);
            json_array_append_new(row, json_string(s ? s : ""));
            free(s);
        }
        json_array_append_new(rows, row);
    }
    return rows;
}

json_t *srv_tokens_json(const lens_token_batch *b) {
    json_t *rows = json_array();
    for (int i = 0; i < b->B; i++) {
        json_t *row = json_array();
        for (int t = 0; t < b->T; t++)
            json_array_append_new(row, json_integer(b->tokens[(size_t)i * b->T + t]));
        json_array_append_new(rows, row);
    }
    return rows;
}

/* Reads an optional list of indices below limit into *out (all when
 * absent). */
int srv_read_indices(json_t *body, const char *key, int limit, int **out, int *n,
                     srv_response *resp) {
    json_t *list = json_object_get(body, key);
    *n = list ? (int)json_array_size(list) : limit;
    if (list && (!json_is_array(list) || *n == 0)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, key, "%s must be a non-empty list of integers", key);
        return -1;
    }
    if (!(*out = malloc((size_t)*n * sizeof **out))) {
        srv_out_of_memory(resp);
        return -1;
    }
    for (int i = 0; i < *n; i++) {
        json_t *v = list ? json_array_get(list, (size_t)i) : NULL;
        long x = v ? (json_is_integer(v) ? (long)json_integer_value(v) : -1) : i;
        if (x < 0 && v && json_is_integer(v)) x += limit;
        if (x < 0 || x >= limit) {
            char field[32];
            snprintf(field, sizeof field, "%s[%d]", key, i);
            const bool typed = !v || json_is_integer(v);
            srv_error(resp, typed ? SRV_ERR_UNPROCESSABLE : SRV_ERR_BAD_REQUEST, field,
                      "%s must be an integer from %d to %d (negatives count from the end)", field,
                      -limit, limit - 1);
            free(*out);
            *out = NULL;
            return -1;
        }
        (*out)[i] = (int)x;
    }
    return 0;
}

/* One answer: a string that is one token (no BOS), or a token id. */
int srv_read_answer(const lens_model *m, json_t *v, const char *field, int32_t *id,
                    srv_response *resp) {
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0 || json_integer_value(v) >= m->cfg.d_vocab_out) {
            srv_error(resp, SRV_ERR_UNPROCESSABLE, field, "%s must be a token id from 0 to %d",
                      field, m->cfg.d_vocab_out - 1);
            return -1;
        }
        *id = (int32_t)json_integer_value(v);
        return 0;
    }
    if (!json_is_string(v)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s must be a string (one token) or a token id",
                  field);
        return -1;
    }
    int32_t *ids = NULL;
    int n = 0;
    lens_err err = {0};
    if (lens_prompt_tokens(m, json_string_value(v), false, &ids, &n, NULL, &err)) {
        srv_engine_error(resp, &err, field);
        return -1;
    }
    if (n != 1) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, field,
                  "%s is %d tokens; answers must be single tokens (to_single_token)", field, n);
        free(ids);
        return -1;
    }
    *id = ids[0] < m->cfg.d_vocab_out ? ids[0] : -1;
    free(ids);
    if (*id < 0) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, field, "%s is not an output token", field);
        return -1;
    }
    return 0;
}

/* "answers": one [answer, wrong] pair for every prompt, or a pair per prompt. */
int srv_read_answer_pairs(const lens_model *m, json_t *body, int B, int32_t *answer, int32_t *wrong,
                          srv_response *resp) {
    json_t *pairs = json_object_get(body, "answers");
    if (!json_is_array(pairs) || json_array_size(pairs) == 0) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "answers",
                  "answers must be a pair [answer, wrong answer] or a list of one pair per "
                  "prompt");
        return -1;
    }
    const bool one = !json_is_array(json_array_get(pairs, 0));
    if (!one && (int)json_array_size(pairs) != B) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, "answers", "answers has %zu pairs for %d prompts",
                  json_array_size(pairs), B);
        return -1;
    }
    for (int b = 0; b < B; b++) {
        json_t *pair = one ? pairs : json_array_get(pairs, (size_t)b);
        char field[48];
        snprintf(field, sizeof field, one ? "answers" : "answers[%d]", b);
        if (!json_is_array(pair) || json_array_size(pair) != 2) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s must be a pair [answer, wrong answer]",
                      field);
            return -1;
        }
        char f0[sizeof field + 4], f1[sizeof field + 4];
        snprintf(f0, sizeof f0, "%s[0]", field);
        snprintf(f1, sizeof f1, "%s[1]", field);
        if (srv_read_answer(m, json_array_get(pair, 0), f0, &answer[b], resp) ||
            srv_read_answer(m, json_array_get(pair, 1), f1, &wrong[b], resp))
            return -1;
    }
    return 0;
}

/* Puts prefix before the field of the error in resp (or names fallback when
 * it has none): errors of a nested object name their full path. */
void srv_prefix_error_field(srv_response *resp, const char *prefix, const char *fallback) {
    json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
    json_t *error = json_object_get(root, "error");
    const char *field = json_string_value(json_object_get(error, "field"));
    char path[192];
    snprintf(path, sizeof path, "%s%s", prefix, field ? field : fallback);
    json_object_set_new(error, "field", json_string(path));
    size_t len = 0;
    char *body = srv_json_text(root, &len);
    json_decref(root);
    if (!body) return;
    free(resp->body);
    resp->body = body;
    resp->body_len = len;
}

/* A list of numbers, or one number, into a new array. */
static float *read_numbers(json_t *v, int *n) {
    *n = json_is_array(v) ? (int)json_array_size(v) : 1;
    float *out = *n ? malloc((size_t)*n * sizeof *out) : NULL;
    for (int i = 0; out && i < *n; i++) {
        json_t *x = json_is_array(v) ? json_array_get(v, (size_t)i) : v;
        if (!json_is_number(x)) {
            free(out);
            return NULL;
        }
        out[i] = (float)json_number_value(x);
    }
    return out;
}

void srv_hooks_free(srv_hooks *h) {
    for (int i = 0; i < h->n; i++) {
        free(h->values[i]);
        free(h->positions[i]);
        free(h->heads[i]);
        free(h->means ? h->means[i].data : NULL);
    }
    free(h->items);
    free(h->values);
    free(h->positions);
    free(h->heads);
    free(h->means);
    free(h->is_mean);
    lens_token_batch_free(&h->source_batch);
    lens_cache_free(&h->source);
}

/* Parses "hooks" into h (T positions per prompt). Ops: zero, mean, set,
 * add, scale, patch. */
int srv_read_hooks(const lens_config *c, json_t *body, int T, srv_hooks *h, srv_response *resp) {
    json_t *list = json_object_get(body, "hooks");
    if (!json_is_array(list) || json_array_size(list) == 0) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "hooks",
                  "hooks must be a non-empty list of {\"name\", \"op\", ...}");
        return -1;
    }
    h->n = (int)json_array_size(list);
    h->items = calloc((size_t)h->n, sizeof *h->items);
    h->values = calloc((size_t)h->n, sizeof *h->values);
    h->positions = calloc((size_t)h->n, sizeof *h->positions);
    h->heads = calloc((size_t)h->n, sizeof *h->heads);
    h->means = calloc((size_t)h->n, sizeof *h->means);
    h->is_mean = calloc((size_t)h->n, sizeof *h->is_mean);
    if (!h->items || !h->values || !h->positions || !h->heads || !h->means || !h->is_mean) {
        srv_out_of_memory(resp);
        return -1;
    }
    static const struct {
        const char *name;
        lens_op op;
    } ops[] = {{"zero", LENS_OP_ZERO}, {"mean", LENS_OP_COPY},   {"set", LENS_OP_SET},
               {"add", LENS_OP_ADD},   {"scale", LENS_OP_SCALE}, {"patch", LENS_OP_COPY}};
    for (int i = 0; i < h->n; i++) {
        json_t *item = json_array_get(list, (size_t)i);
        lens_intervention *it = &h->items[i];
        char field[64];
        snprintf(field, sizeof field, "hooks[%d]", i);
        if (!json_is_object(item)) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s must be an object", field);
            return -1;
        }
        const char *name = json_string_value(json_object_get(item, "name"));
        const char *op = json_string_value(json_object_get(item, "op"));
        lens_err err = {0};
        snprintf(field, sizeof field, "hooks[%d].name", i);
        if (!name || lens_hook_parse(c, name, &it->hook, &err)) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s",
                      name ? err.msg : "name must be a hook name");
            return -1;
        }
        if (it->hook.kind == LENS_HOOK_TOKENS) {
            srv_error(resp, SRV_ERR_UNPROCESSABLE, field,
                      "hook_tokens holds token ids; intervene on hook_embed instead");
            return -1;
        }
        snprintf(field, sizeof field, "hooks[%d].op", i);
        int found = -1;
        for (int k = 0; k < (int)(sizeof ops / sizeof ops[0]) && op && found < 0; k++)
            if (strcmp(op, ops[k].name) == 0) found = k;
        if (found < 0) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                      "op must be zero, mean, set, add, scale or patch");
            return -1;
        }
        it->op = ops[found].op;
        h->is_mean[i] = strcmp(op, "mean") == 0;
        if (strcmp(op, "set") == 0 || strcmp(op, "add") == 0) {
            snprintf(field, sizeof field, "hooks[%d].value", i);
            if (!(h->values[i] = read_numbers(json_object_get(item, "value"), &it->value_len))) {
                srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                          "%s must be a number or a list of numbers (one per entry of the last "
                          "axis)",
                          field);
                return -1;
            }
            it->value = h->values[i];
        }
        if (strcmp(op, "scale") == 0) {
            json_t *factor = json_object_get(item, "factor");
            snprintf(field, sizeof field, "hooks[%d].factor", i);
            if (!json_is_number(factor)) {
                srv_error(resp, SRV_ERR_BAD_REQUEST, field, "scale needs a number, factor");
                return -1;
            }
            it->factor = (float)json_number_value(factor);
        }
        /* positions on the hook's position axis; heads where it has them */
        json_t *positions = json_object_get(item, "positions"),
               *heads = json_object_get(item, "heads");
        int n_pos = 0, n_heads = 0;
        char prefix[32];
        snprintf(prefix, sizeof prefix, "hooks[%d].", i);
        if (positions) {
            json_t *wrapped = json_pack("{s:O}", "positions", positions);
            int rc = srv_read_positions(wrapped, T, &h->positions[i], &n_pos, resp);
            json_decref(wrapped);
            if (rc) {
                srv_prefix_error_field(resp, prefix, "positions");
                return -1;
            }
            it->positions = h->positions[i];
            it->n_positions = n_pos;
        }
        snprintf(field, sizeof field, "hooks[%d].heads", i);
        if (heads) {
            if (lens_hook_head_axis(c, it->hook.kind) < 0) {
                srv_error(resp, SRV_ERR_UNPROCESSABLE, field, "%s has no head axis", name);
                return -1;
            }
            int *idx = NULL;
            json_t *wrapped = json_pack("{s:O}", "heads", heads);
            /* k and v of a grouped-query model have n_kv_heads heads */
            int64_t hook_shape[LENS_MAX_DIMS];
            lens_hook_shape(c, it->hook, 1, 1, hook_shape);
            const int hook_heads = (int)hook_shape[lens_hook_head_axis(c, it->hook.kind)];
            int rc = srv_read_indices(wrapped, "heads", hook_heads, &idx, &n_heads, resp);
            json_decref(wrapped);
            if (rc) {
                srv_prefix_error_field(resp, prefix, "heads");
                return -1;
            }
            h->heads[i] = malloc((size_t)n_heads * sizeof *h->heads[i]);
            for (int k = 0; h->heads[i] && k < n_heads; k++)
                h->heads[i][k] = idx[k];
            free(idx);
            it->heads = h->heads[i];
            it->n_heads = n_heads;
        }
    }
    return 0;
}

bool srv_answer_if_stopped(srv_job *job, const srv_progress *progress, const char *progress_id,
                           const char *what) {
    switch (srv_progress_stopped(progress)) {
    case SRV_STOP_CANCELLED:
        srv_error(&job->response, SRV_ERR_CANCELLED, "progress_id", "%s (DELETE /v1/progress/%s)",
                  what, progress_id ? progress_id : "");
        return true;
    case SRV_STOP_CLIENT_GONE:
        srv_error(&job->response, SRV_ERR_CLIENT_CLOSED, NULL,
                  "%s: the client closed the connection", what);
        return true;
    case SRV_STOP_NONE:
        break;
    }
    return false;
}

int srv_read_progress_id(json_t *body, char **out, srv_response *resp) {
    json_t *v = json_object_get(body, "progress_id");
    *out = NULL;
    if (!v) return 0;
    if (!json_is_string(v)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "progress_id",
                  "progress_id must be a string (then GET /v1/progress/{id} follows the job)");
        return -1;
    }
    if (!(*out = strdup(json_string_value(v)))) {
        srv_out_of_memory(resp);
        return -1;
    }
    return 0;
}
