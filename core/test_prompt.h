/*
 * test_prompt.h: TransformerLens's utils.test_prompt, as its printed text and
 * as data, for `lensd run` and POST /v1/models/{m}/test_prompt.
 */
#ifndef LENS_TEST_PROMPT_H
#define LENS_TEST_PROMPT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "core/forward.h"

typedef struct lens_test_prompt_opts {
    bool prepend_bos;
    bool prepend_space_to_answer; /* TL's default: true */
    int top_k;
} lens_test_prompt_opts;

/* Runs prompt + answer (one answer: all its tokens, teacher-forced; several:
 * the first token of each; none: the next-token top-k only) and writes what
 * test_prompt prints to text. With data non-NULL, also returns the same as
 * JSON (a new reference): prompt_str_tokens, answer_str_tokens and, per
 * answer token, its rank, logit, prob and the top-k. Returns -1 with a
 * message (no tokenizer, an empty answer, too many tokens, a forward
 * error). */
int lens_test_prompt(const lens_model *m, lens_workspace *ws, const char *prompt,
                     const char *const *answers, int n_answers, const lens_test_prompt_opts *opts,
                     FILE *text, json_t **data, lens_err *err);

#endif
