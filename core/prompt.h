/*
 * prompt.h: TransformerLens's to_tokens / to_str_tokens for a loaded model:
 * BOS prepended by default, EOS appended where the model's tokenizer does,
 * truncation to n_ctx, and batches padded to the longest prompt with the pad
 * id on the right (TL's default) or the left, with TL's attention mask.
 */
#ifndef LENS_PROMPT_H
#define LENS_PROMPT_H

#include <stdbool.h>
#include <stdint.h>

#include "core/model.h"

/* A padded batch of token ids, owned by the struct. */
typedef struct lens_token_batch {
    int B, T;
    int32_t *tokens;    /* [B, T] */
    uint8_t *attn_mask; /* [B, T], or NULL where TL uses none (right padding) */
    int *lengths;       /* [B] real tokens per row */
} lens_token_batch;

typedef struct lens_pad_opts {
    bool prepend_bos; /* TL's prepend_bos (for text; also decides the BOS-as-pad mask rule) */
    bool pad_left;    /* padding_side "left" */
} lens_pad_opts;

/* Tokenizes one prompt as to_tokens does for a single string, into a
 * malloc'd array of *n ids, truncated to n_ctx as to_tokens truncates; with
 * truncated non-NULL, *truncated says whether it was (the text past n_ctx
 * tokens is then not tokenized at all). Returns -1 naming the problem (no
 * tokenizer, invalid UTF-8, unknown piece, no BOS token when one is asked
 * for). */
int lens_prompt_tokens(const lens_model *m, const char *text, bool prepend_bos, int32_t **ids,
                       int *n, bool *truncated, lens_err *err);

/* Pads rows (token arrays of lengths lens[i], used as given) into a batch as
 * TL's tokenizer pads, and computes TL's attention mask for left padding.
 * Returns -1 when the model has no pad token and rows differ in length, or
 * a row is empty. */
int lens_pad_rows(const lens_model *m, int32_t *const *rows, const int *lens, int n_rows,
                  const lens_pad_opts *opts, lens_token_batch *out, lens_err *err);

/* Frees what a batch owns. */
void lens_token_batch_free(lens_token_batch *batch);

/* TL's to_str_tokens for one id: the token decoded alone (malloc'd). */
char *lens_str_token(const lens_model *m, int32_t id, lens_err *err);

#endif
