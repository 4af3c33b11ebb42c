/*
 * test_prompt.c: padding and attention masks as TransformerLens's to_tokens
 * and get_attention_mask make them (tokenize_utils.py): right padding has no
 * mask; left padding masks the leading pad run, except a BOS that shares the
 * pad id when prepend_bos is on.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "core/prompt.h"

static lens_model model_with(int32_t bos, int32_t pad) {
    lens_model m;
    memset(&m, 0, sizeof m);
    m.name = "test";
    m.rules = (lens_token_rules){.bos_id = bos, .eos_id = bos, .pad_id = pad};
    return m;
}

/* Pads a GPT-2-like pair of rows ([BOS 1 2 3], [BOS 4]; BOS = pad = 9). */
static lens_token_batch pad_gpt2_pair(bool pad_left) {
    lens_model m = model_with(9, 9);
    int32_t a[] = {9, 1, 2, 3}, b[] = {9, 4};
    int32_t *rows[] = {a, b};
    int lens[] = {4, 2};
    lens_token_batch batch;
    lens_err err;
    lens_pad_opts opts = {.prepend_bos = true, .pad_left = pad_left};
    cr_assert_eq(lens_pad_rows(&m, rows, lens, 2, &opts, &batch, &err), 0, "%s", err.msg);
    return batch;
}

Test(prompt, right_padding_has_no_mask) {
    lens_token_batch batch = pad_gpt2_pair(false);
    int32_t want[] = {9, 1, 2, 3, 9, 4, 9, 9};
    cr_assert_eq(batch.T, 4);
    cr_assert_arr_eq(batch.tokens, want, sizeof want);
    cr_assert_null(batch.attn_mask);
    cr_assert_eq(batch.lengths[1], 2);
    lens_token_batch_free(&batch);
}

Test(prompt, left_padding_unmasks_bos_equal_to_pad) {
    lens_token_batch batch = pad_gpt2_pair(true);
    int32_t want[] = {9, 1, 2, 3, 9, 9, 9, 4};
    uint8_t want_mask[] = {1, 1, 1, 1, 0, 0, 1, 1};
    cr_assert_arr_eq(batch.tokens, want, sizeof want);
    cr_assert_arr_eq(batch.attn_mask, want_mask, sizeof want_mask);
    lens_token_batch_free(&batch);
}

Test(prompt, left_padding_without_bos_masks_whole_leading_run) {
    lens_model m = model_with(9, 9);
    int32_t a[] = {1, 2, 3}, b[] = {4};
    int32_t *rows[] = {a, b};
    int lens[] = {3, 1};
    lens_token_batch batch;
    lens_err err;
    lens_pad_opts opts = {.prepend_bos = false, .pad_left = true};
    cr_assert_eq(lens_pad_rows(&m, rows, lens, 2, &opts, &batch, &err), 0, "%s", err.msg);
    uint8_t want_mask[] = {1, 1, 1, 0, 0, 1};
    cr_assert_arr_eq(batch.attn_mask, want_mask, sizeof want_mask);
    lens_token_batch_free(&batch);
}

Test(prompt, ragged_rows_need_a_pad_token) {
    lens_model m = model_with(0, -1);
    int32_t a[] = {0, 1, 2}, b[] = {0};
    int32_t *rows[] = {a, b};
    int lens[] = {3, 1};
    lens_token_batch batch;
    lens_err err;
    lens_pad_opts opts = {.prepend_bos = true};
    cr_assert_eq(lens_pad_rows(&m, rows, lens, 2, &opts, &batch, &err), -1);
    cr_assert(strstr(err.msg, "pad"), "%s", err.msg);
    int lens_equal[] = {1, 1};
    cr_assert_eq(lens_pad_rows(&m, rows, lens_equal, 2, &opts, &batch, &err), 0);
    lens_token_batch_free(&batch);
}

Test(prompt, text_needs_a_tokenizer) {
    lens_model m = model_with(0, 1);
    int32_t *ids;
    int n;
    lens_err err;
    cr_assert_eq(lens_prompt_tokens(&m, "hello", true, &ids, &n, NULL, &err), -1);
    cr_assert(strstr(err.msg, "tokenizer"), "%s", err.msg);
}
