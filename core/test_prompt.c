/*
 * test_prompt.c: utils.test_prompt. The text is TransformerLens's, byte for
 * byte (tests/parity/test_test_prompt.py): Python reprs of the token lists,
 * "Rank: ... Logit: ... Prob: ...%" lines, and the top-k by probability.
 */
#include "core/test_prompt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/logits.h"
#include "core/prompt.h"
#include "core/pyrepr.h"

/* probs = softmax(logits) in double. */
static void softmax_double(const float *logits, double *probs, int V) {
    const double log_sum = lens_log_sum_exp(logits, V);
    for (int v = 0; v < V; v++)
        probs[v] = exp((double)logits[v] - log_sum);
}

static json_t *str_token_json(const lens_model *m, int32_t id) {
    char *s = lens_str_token(m, id, NULL);
    json_t *j = json_string(s ? s : "?");
    free(s);
    return j;
}

/* Prints the top k by probability and returns them as JSON. */
static json_t *top_k(const lens_model *m, const float *logits, const double *probs, int V, int k,
                     FILE *text) {
    json_t *list = json_array();
    k = k < V ? k : V;
    int32_t *order = k > 0 ? malloc((size_t)k * sizeof *order) : NULL;
    if (!order) return list;
    lens_top_k(logits, V, k, order);
    for (int i = 0; i < k; i++) {
        json_t *token = str_token_json(m, order[i]);
        fprintf(text, "Top %dth token. Logit: %5.2f Prob: %5.2f%% Token: |%s|\n", i,
                logits[order[i]], 100.0 * probs[order[i]], json_string_value(token));
        json_array_append_new(list, json_pack("{s:o, s:i, s:f, s:f}", "token", token, "id",
                                              order[i], "logit", (double)logits[order[i]], "prob",
                                              probs[order[i]]));
    }
    free(order);
    return list;
}

static char **str_tokens(const lens_model *m, const int32_t *ids, int n) {
    char **out = calloc((size_t)n + 1, sizeof *out);
    for (int i = 0; out && i < n; i++) {
        out[i] = lens_str_token(m, ids[i], NULL);
        if (!out[i]) out[i] = strdup("?");
    }
    return out;
}

static json_t *strs_json(char **strs, int n) {
    json_t *list = json_array();
    for (int i = 0; strs && i < n; i++)
        json_array_append_new(list, json_string(strs[i]));
    return list;
}

static void free_strs(char **strs, int n) {
    for (int i = 0; strs && i < n; i++)
        free(strs[i]);
    free(strs);
}

int lens_test_prompt(const lens_model *m, lens_workspace *ws, const char *prompt_text,
                     const char *const *answers, int n_ans, const lens_test_prompt_opts *opts,
                     FILE *text, json_t **data, lens_err *err) {
    const int V = m->cfg.d_vocab_out;
    int32_t *prompt = NULL;
    int n_prompt = 0, rc = -1;
    int32_t **answer_ids = calloc((size_t)(n_ans ? n_ans : 1), sizeof *answer_ids);
    int *answer_len = calloc((size_t)(n_ans ? n_ans : 1), sizeof *answer_len);
    char *spaced = NULL, **prompt_strs = NULL, ***answer_strs = NULL;
    float *logits = NULL;
    double *probs = malloc((size_t)V * sizeof *probs);
    int32_t *tokens = NULL;
    int *ranks = NULL;
    json_t *result = json_object(), *performance = json_array();
    if (!answer_ids || !answer_len || !probs) goto oom;
    if (lens_prompt_tokens(m, prompt_text, opts->prepend_bos, &prompt, &n_prompt, NULL, err))
        goto out;
    if (n_prompt == 0) { /* the first answer token is predicted at the prompt's last */
        lens_err_set(err, "the prompt has no tokens (an empty prompt without BOS)");
        goto out;
    }
    for (int a = 0; a < n_ans; a++) {
        const char *ans = answers[a];
        free(spaced);
        if (!(spaced = malloc(strlen(ans) + 2))) goto oom;
        sprintf(spaced, "%s%s", opts->prepend_space_to_answer && ans[0] != ' ' ? " " : "", ans);
        if (lens_prompt_tokens(m, spaced, false, &answer_ids[a], &answer_len[a], NULL, err))
            goto out;
        if (answer_len[a] == 0) {
            lens_err_set(err, "answer \"%s\" has no tokens", ans);
            goto out;
        }
    }
    /* One answer: all its tokens, teacher-forced. Several: the first token of each. */
    const int n_answer_tokens = n_ans == 1 ? answer_len[0] : (n_ans ? 1 : 0);
    const int B = n_ans ? n_ans : 1, T = n_prompt + n_answer_tokens;
    if (T > m->cfg.n_ctx) {
        lens_err_set(err, "prompt and answer are %d tokens, more than n_ctx %d", T, m->cfg.n_ctx);
        goto out;
    }
    tokens = malloc((size_t)B * T * sizeof *tokens);
    logits = malloc((size_t)B * T * V * sizeof *logits);
    answer_strs = calloc((size_t)B, sizeof *answer_strs);
    ranks = calloc((size_t)B * (n_answer_tokens ? n_answer_tokens : 1), sizeof *ranks);
    if (!tokens || !logits || !answer_strs || !ranks) goto oom;
    for (int bi = 0; bi < B; bi++) {
        memcpy(tokens + (size_t)bi * T, prompt, (size_t)n_prompt * sizeof *tokens);
        if (n_ans)
            memcpy(tokens + (size_t)bi * T + n_prompt, answer_ids[bi],
                   (size_t)n_answer_tokens * sizeof *tokens);
    }
    const lens_batch batch = {.B = B, .T = T, .tokens = tokens};
    const lens_run run = {.logits = logits};
    if (lens_forward(m, ws, &batch, &run, err)) goto out;

    prompt_strs = str_tokens(m, prompt, n_prompt);
    fprintf(text, "Tokenized prompt: ");
    lens_py_repr_list(text, prompt_strs, (size_t)n_prompt);
    fprintf(text, "\n");
    json_object_set_new(result, "prompt_str_tokens", strs_json(prompt_strs, n_prompt));
    for (int a = 0; a < n_ans; a++)
        answer_strs[a] = str_tokens(m, answer_ids[a], answer_len[a]);
    json_t *answers_json = json_array();
    for (int a = 0; a < n_ans; a++)
        json_array_append_new(answers_json, strs_json(answer_strs[a], answer_len[a]));
    json_object_set_new(result, "answer_str_tokens",
                        n_ans == 1 ? json_incref(json_array_get(answers_json, 0)) : answers_json);
    if (n_ans == 1) json_decref(answers_json);
    if (n_ans == 1) {
        fprintf(text, "Tokenized answer: ");
        lens_py_repr_list(text, answer_strs[0], (size_t)answer_len[0]);
        fprintf(text, "\n");
    } else if (n_ans > 1) {
        fprintf(text, "Tokenized answers: [");
        for (int a = 0; a < n_ans; a++) {
            if (a) fprintf(text, ", ");
            lens_py_repr_list(text, answer_strs[a], (size_t)answer_len[a]);
        }
        fprintf(text, "]\n");
    }
    if (n_ans == 0) {
        const float *last = logits + (size_t)(T - 1) * V;
        softmax_double(last, probs, V);
        json_object_set_new(result, "top", top_k(m, last, probs, V, opts->top_k, text));
    }
    for (int i = 0; i < n_answer_tokens; i++) {
        const int index = n_prompt + i;
        fprintf(text, "Performance on answer token%s:\n", n_ans > 1 ? "s" : "");
        json_t *entries = json_array();
        for (int a = 0; a < B; a++) {
            const float *row = logits + ((size_t)a * T + index - 1) * V;
            const int32_t tok = tokens[(size_t)a * T + index];
            softmax_double(row, probs, V);
            ranks[i * B + a] = lens_rank(row, V, tok);
            fprintf(text, "Rank: %-8d Logit: %5.2f Prob: %5.2f%% Token: |%s|\n", ranks[i * B + a],
                    row[tok], 100.0 * probs[tok], answer_strs[a][i]);
            json_array_append_new(entries,
                                  json_pack("{s:s, s:i, s:i, s:f, s:f}", "token", answer_strs[a][i],
                                            "id", tok, "rank", ranks[i * B + a], "logit",
                                            (double)row[tok], "prob", probs[tok]));
        }
        const float *row0 = logits + ((size_t)index - 1) * V;
        softmax_double(row0, probs, V);
        json_t *top = top_k(m, row0, probs, V, opts->top_k, text);
        for (size_t e = 0; e < json_array_size(entries); e++)
            json_object_set(json_array_get(entries, e), "top", top);
        json_decref(top);
        json_array_append_new(performance, n_ans == 1 ? json_incref(json_array_get(entries, 0))
                                                      : json_incref(entries));
        json_decref(entries);
    }
    if (n_ans) {
        fprintf(text, "Ranks of the answer tokens: [");
        for (int i = 0; i < n_answer_tokens; i++) {
            if (i) fprintf(text, ", ");
            if (n_ans > 1) fprintf(text, "[");
            for (int a = 0; a < B; a++) {
                if (a) fprintf(text, ", ");
                fprintf(text, "(");
                lens_py_repr_str(text, answer_strs[a][i], strlen(answer_strs[a][i]));
                fprintf(text, ", %d)", ranks[i * B + a]);
            }
            if (n_ans > 1) fprintf(text, "]");
        }
        fprintf(text, "]\n");
    }
    json_object_set(result, "answer_tokens", performance);
    if (data) {
        *data = result;
        result = NULL;
    }
    rc = 0;
    goto out;
oom:
    lens_err_set_code(err, LENS_ERR_NO_MEMORY, "out of memory");
out:
    json_decref(result);
    json_decref(performance);
    free_strs(prompt_strs, n_prompt);
    for (int a = 0; answer_strs && a < n_ans; a++)
        free_strs(answer_strs[a], answer_len[a]);
    free(answer_strs);
    for (int a = 0; answer_ids && a < n_ans; a++)
        free(answer_ids[a]);
    free(answer_ids);
    free(answer_len);
    free(spaced);
    free(prompt);
    free(probs);
    free(tokens);
    free(logits);
    free(ranks);
    return rc;
}
