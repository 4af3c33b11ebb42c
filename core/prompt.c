/*
 * prompt.c: text to padded token batches, as TransformerLens's to_tokens and
 * get_attention_mask (utilities/tokenize_utils.py) make them.
 */
#include "core/prompt.h"

#include <stdlib.h>
#include <string.h>

int lens_prompt_tokens(const lens_model *m, const char *text, bool prepend_bos, int32_t **ids,
                       int *n, bool *truncated, lens_err *err) {
    if (!m->tok) {
        lens_err_set(err, "model %s has no tokenizer: give token ids instead of text", m->name);
        return -1;
    }
    if (prepend_bos && m->rules.bos_id < 0) {
        lens_err_set(err, "model %s has no BOS token: ask for prepend_bos false", m->name);
        return -1;
    }
    int32_t *body = NULL;
    size_t n_body = 0;
    /* one id more than fits after BOS says that it does not fit */
    const size_t room = (size_t)m->cfg.n_ctx - (prepend_bos ? 1 : 0) + 1;
    if (lens_tok_encode_at_most(m->tok, text, strlen(text), room, &body, &n_body, err) < 0)
        return -1;
    size_t total = n_body + (prepend_bos ? 1 : 0) + (m->rules.append_eos ? 1 : 0);
    int32_t *out = malloc((total ? total : 1) * sizeof *out);
    if (!out) {
        free(body);
        lens_err_set(err, "out of memory");
        return -1;
    }
    size_t k = 0;
    if (prepend_bos) out[k++] = m->rules.bos_id;
    if (n_body) memcpy(out + k, body, n_body * sizeof *out);
    k += n_body;
    if (m->rules.append_eos) out[k++] = m->rules.eos_id;
    free(body);
    /* to_tokens truncates to n_ctx (truncation=True, max_length=n_ctx). */
    if (truncated) *truncated = k > (size_t)m->cfg.n_ctx;
    *n = k > (size_t)m->cfg.n_ctx ? m->cfg.n_ctx : (int)k;
    *ids = out;
    return 0;
}

int lens_pad_rows(const lens_model *m, int32_t *const *rows, const int *lens, int n_rows,
                  const lens_pad_opts *opts, lens_token_batch *out, lens_err *err) {
    memset(out, 0, sizeof *out);
    int T = 0;
    for (int i = 0; i < n_rows; i++) {
        if (lens[i] < 1) {
            lens_err_set(err, "prompt %d has no tokens", i);
            return -1;
        }
        if (lens[i] > T) T = lens[i];
    }
    bool ragged = false;
    for (int i = 0; i < n_rows; i++)
        ragged |= lens[i] != T;
    const int32_t pad = m->rules.pad_id;
    if (ragged && pad < 0) {
        lens_err_set(err, "model %s has no pad token, so its prompts must have equal lengths",
                     m->name);
        return -1;
    }
    out->B = n_rows;
    out->T = T;
    out->tokens = malloc((size_t)n_rows * T * sizeof *out->tokens);
    out->lengths = malloc((size_t)n_rows * sizeof *out->lengths);
    if (opts->pad_left) out->attn_mask = malloc((size_t)n_rows * T);
    if (!out->tokens || !out->lengths || (opts->pad_left && !out->attn_mask)) {
        lens_token_batch_free(out);
        lens_err_set(err, "out of memory");
        return -1;
    }
    for (int i = 0; i < n_rows; i++) {
        int32_t *row = out->tokens + (size_t)i * T;
        int n_pad = T - lens[i];
        int start = opts->pad_left ? n_pad : 0;
        for (int t = 0; t < T; t++)
            row[t] = pad;
        memcpy(row + start, rows[i], (size_t)lens[i] * sizeof *row);
        out->lengths[i] = lens[i];
        if (!opts->pad_left) continue;
        /* get_attention_mask: the leading run of pad ids is masked, except
         * that a BOS equal to the pad id (GPT-2) is attended to again. */
        uint8_t *mask = out->attn_mask + (size_t)i * T;
        int leading = 0;
        while (leading < T && row[leading] == pad)
            leading++;
        for (int t = 0; t < T; t++)
            mask[t] = t >= leading;
        if (opts->prepend_bos && m->rules.bos_id == pad && leading > 0) mask[leading - 1] = 1;
    }
    return 0;
}

void lens_token_batch_free(lens_token_batch *batch) {
    free(batch->tokens);
    free(batch->attn_mask);
    free(batch->lengths);
    memset(batch, 0, sizeof *batch);
}

char *lens_str_token(const lens_model *m, int32_t id, lens_err *err) {
    if (!m->tok) {
        lens_err_set(err, "model %s has no tokenizer", m->name);
        return NULL;
    }
    size_t len;
    return lens_tok_decode(m->tok, &id, 1, &len, err);
}
