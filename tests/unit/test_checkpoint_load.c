/*
 * test_checkpoint_load.c: what lensd does with converted (and unconverted)
 * checkpoints: a list tokenizer's pad and BOS falling back to its EOS, the
 * masked attention score an older TransformerLens checkpoint carries
 * (lensd.masked_score, through lk_mask_scores), and a torch.save'd file
 * handed over as a model, which must name the converter.
 *
 * Each test writes a tiny TL-native model (d_model 8, 2 heads, 1 layer, a
 * 6-token list vocabulary) into a fresh temporary directory.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/model.h"
#include "core/prompt.h"
#include "core/safetensors.h"
#include "kernels/lk.h"

#define D 8
#define H 2
#define DH 4
#define M 16
#define V 6
#define CTX 8

static char dir[384];

static void make_dir(void) {
    snprintf(dir, sizeof dir, "/tmp/lensd-ckpt-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(checkpoint_load, .init = make_dir, .fini = remove_dir);

static void write_file(const char *name, const void *bytes, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(bytes, 1, n, f), n);
    fclose(f);
}

/* tl_config.json with lensd_extra inside "lensd" (after the tokenizer), and
 * model.safetensors with the weights of an attention-only LNPre model. */
static void write_native(const char *lensd_extra) {
    char config[1024];
    snprintf(config, sizeof config,
             "{\"n_layers\": 1, \"d_model\": %d, \"n_ctx\": %d, \"d_head\": %d, \"n_heads\": %d, "
             "\"d_vocab\": %d, \"attn_only\": true, \"normalization_type\": \"LNPre\", "
             "\"lensd\": {\"tokenizer\": {\"type\": \"list\", \"tokens\": [\"a\", \"b\", \"c\", "
             "\"d\", \"e\", \"<eos>\"], \"split\": \"whitespace\"}%s}}",
             D, CTX, DH, H, V, lensd_extra);
    write_file("tl_config.json", config, strlen(config));
    const char *names[] = {"embed.W_E",         "pos_embed.W_pos",   "blocks.0.attn.W_Q",
                           "blocks.0.attn.W_K", "blocks.0.attn.W_V", "blocks.0.attn.W_O",
                           "unembed.W_U"};
    const int64_t shapes[][3] = {{V, D},     {CTX, D},   {H, D, DH}, {H, D, DH},
                                 {H, D, DH}, {H, DH, D}, {D, V}};
    const int ndims[] = {2, 2, 3, 3, 3, 3, 2};
    enum { N_TENSORS = 7 };
    lens_st_out outs[N_TENSORS];
    float *bufs[N_TENSORS];
    for (int i = 0; i < N_TENSORS; i++) {
        size_t numel = 1;
        for (int k = 0; k < ndims[i]; k++)
            numel *= (size_t)shapes[i][k];
        bufs[i] = malloc(numel * sizeof *bufs[i]);
        for (size_t j = 0; j < numel; j++)
            bufs[i][j] = (float)((j * 7 + (size_t)i * 3) % 11) / 11.0f - 0.5f;
        outs[i] = (lens_st_out){names[i], LENS_F32, ndims[i], {0}, bufs[i]};
        memcpy(outs[i].shape, shapes[i], sizeof shapes[i]);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    lens_err err;
    cr_assert_eq(lens_st_write(path, outs, N_TENSORS, NULL, 0, &err), 0, "%s", err.msg);
    for (int i = 0; i < N_TENSORS; i++)
        free(bufs[i]);
}

/* TL's set_tokenizer: pad <- eos, bos <- eos, so prompts of different
 * lengths batch (padded with EOS) where the config names only an EOS. */
Test(checkpoint_load, list_tokenizer_pad_and_bos_fall_back_to_eos) {
    write_native(", \"eos_token\": \"<eos>\"");
    lens_err err;
    lens_model *m = lens_model_load(dir, NULL, &err);
    cr_assert_not_null(m, "%s", err.msg);
    cr_assert_eq(m->rules.eos_id, 5);
    cr_assert_eq(m->rules.pad_id, 5, "a missing pad falls back to the EOS");
    cr_assert_eq(m->rules.bos_id, 5, "a missing BOS falls back to the EOS");
    int32_t long_row[] = {0, 1, 2}, short_row[] = {3};
    int32_t *rows[] = {long_row, short_row};
    int lens[] = {3, 1};
    lens_pad_opts pad = {.prepend_bos = false, .pad_left = false};
    lens_token_batch batch;
    cr_assert_eq(lens_pad_rows(m, rows, lens, 2, &pad, &batch, &err), 0, "%s", err.msg);
    const int32_t want[] = {0, 1, 2, 3, 5, 5};
    cr_assert_arr_eq(batch.tokens, want, sizeof want);
    lens_token_batch_free(&batch);
    lens_model_free(m);
}

Test(checkpoint_load, explicit_pad_is_kept) {
    write_native(", \"eos_token\": \"<eos>\", \"pad_token\": \"e\", \"bos_token\": \"a\"");
    lens_err err;
    lens_model *m = lens_model_load(dir, NULL, &err);
    cr_assert_not_null(m, "%s", err.msg);
    cr_assert(m->rules.pad_id == 4 && m->rules.bos_id == 0 && m->rules.eos_id == 5);
    lens_model_free(m);
}

Test(checkpoint_load, masked_score_is_read_and_defaults_to_minus_infinity) {
    write_native("");
    lens_err err;
    lens_model *m = lens_model_load(dir, NULL, &err);
    cr_assert_not_null(m, "%s", err.msg);
    cr_assert(isinf(m->cfg.masked_score) && m->cfg.masked_score < 0, "TL's own IGNORE is -inf");
    lens_model_free(m);
    write_native(", \"masked_score\": -100000.0");
    m = lens_model_load(dir, NULL, &err);
    cr_assert_not_null(m, "%s", err.msg);
    cr_assert_float_eq(m->cfg.masked_score, -100000.0f, 0.0f);
    lens_model_free(m);
    write_native(", \"masked_score\": \"low\"");
    cr_assert_null(lens_model_load(dir, NULL, &err));
    cr_assert_not_null(strstr(err.msg, "lensd.masked_score"), "%s", err.msg);
}

/* lk_mask_scores writes masked_score (not -inf) at the causal mask's keys,
 * -inf when it is 0, and the pad score over both. */
Test(checkpoint_load, mask_scores_write_the_masked_score) {
    enum { T = 3 };
    const float ignore[] = {0.0f, -100000.0f};
    for (int c = 0; c < 2; c++) {
        float scores[T * T];
        for (int i = 0; i < T * T; i++)
            scores[i] = 2.0f;
        const int32_t tokens[T] = {0, 0, 9};
        lk_score_mask mask = {.causal = true,
                              .tokens = tokens,
                              .pad_id = 9,
                              .pad_score = -7.0f,
                              .masked_score = ignore[c]};
        lk_mask_scores(lk_cpu(), scores, 1, 1, T, 2.0f, &mask);
        for (int q = 0; q < T; q++) {
            for (int k = 0; k < T; k++) {
                const float got = scores[q * T + k];
                if (k == 2)
                    cr_assert_eq(got, -7.0f, "pad key (%d, %d)", q, k);
                else if (k > q && c == 0)
                    cr_assert(isinf(got) && got < 0, "(%d, %d): %g", q, k, got);
                else if (k > q)
                    cr_assert_eq(got, -100000.0f, "(%d, %d)", q, k);
                else
                    cr_assert_eq(got, 1.0f, "(%d, %d)", q, k);
            }
        }
    }
}

/* torch.save's zip archive and its legacy pickle, handed over as the
 * model (or as the native weights file), name the converter. */
Test(checkpoint_load, torch_checkpoint_names_the_converter) {
    const char zip[] = "PK\3\4\0\0\0\0archive/data.pkl";
    /* protocol 2, then the LONG1 magic number torch's legacy format starts with */
    const char pickle[] = {'\x80', '\x02', '\x8a', '\x0a', 'l', '\xfc', '\x9c', 'F', '\xf9', 0};
    const char *bodies[] = {zip, pickle};
    const size_t sizes[] = {sizeof zip - 1, sizeof pickle - 1};
    const char *kinds[] = {"zip archive", "legacy pickle"};
    for (int i = 0; i < 2; i++) {
        write_file("model.pt", bodies[i], sizes[i]);
        char path[512];
        snprintf(path, sizeof path, "%s/model.pt", dir);
        lens_err err;
        cr_assert_null(lens_model_load(path, NULL, &err));
        cr_assert_not_null(strstr(err.msg, "this is a torch checkpoint"), "%s", err.msg);
        cr_assert_not_null(strstr(err.msg, kinds[i]), "%s", err.msg);
        cr_assert_not_null(strstr(err.msg, "tools/convert_tl_checkpoint.py"), "%s", err.msg);
        cr_assert_not_null(strstr(err.msg, path), "%s", err.msg);
    }
    write_native(", \"weights\": \"model.pt\"");
    lens_err err;
    cr_assert_null(lens_model_load(dir, NULL, &err));
    cr_assert_not_null(strstr(err.msg, "this is a torch checkpoint"), "%s", err.msg);
}
