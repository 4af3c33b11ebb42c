/*
 * test_attribution.c: the residual stacks of core/attribution.c on a cache
 * made here (hook points whose values say which hook, prompt, position and
 * entry they are), so that each component's row, order and label is checked
 * against ActivationCache's definitions; the numbers through real models
 * are tests/parity/test_logit_diff.py's.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "core/attribution.h"
#include "core/hooks.h"

enum { B = 2, T = 3, D = 4, L = 2, H = 2, DH = 2 };

/* The value at [b, t, k] of a hook point's [B, T, D] tensor. */
static float value_of(lens_hook h, int b, int t, int k) {
    return (float)(h.kind * 1000 + h.layer * 100 + b * 10 + t) + (float)k / 8;
}

static void add(lens_cache *cache, lens_hook h, int width) {
    lens_captured *c = &cache->tensors[cache->n++];
    *c = (lens_captured){.hook = h, .dtype = LENS_F32, .ndim = 3, .shape = {B, T, width}};
    float *data = malloc(sizeof(float) * B * T * width);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int k = 0; k < width; k++)
                data[(b * T + t) * width + k] = value_of(h, b, t, k);
    c->data = data;
}

static lens_config config(bool attn_only) {
    return (lens_config){.n_layers = L,
                         .n_heads = H,
                         .d_model = D,
                         .d_head = DH,
                         .d_mlp = 4,
                         .n_ctx = T,
                         .d_vocab = 5,
                         .d_vocab_out = 5,
                         .attn_only = attn_only,
                         .normalization = LENS_NORM_LN};
}

static void check_rows(bool attn_only, lens_stack_kind kind, const lens_hook *expected,
                       const char *const *labels, int n) {
    lens_model m = {.cfg = config(attn_only)};
    lens_cache cache = {.tensors = calloc(16, sizeof(lens_captured))};
    for (int i = 0; i < n; i++)
        add(&cache, expected[i], D);
    cr_assert_eq(lens_stack_size(&m.cfg, kind), n);
    uint8_t *enabled = calloc(lens_hook_slots(&m.cfg), 1);
    lens_stack_hooks(&m.cfg, kind, enabled);
    for (int i = 0; i < n; i++) {
        char label[32];
        lens_stack_label(&m.cfg, kind, i, label, sizeof label);
        cr_expect_str_eq(label, labels[i]);
        cr_expect(enabled[lens_hook_slot(&m.cfg, expected[i])], "%s not enabled", labels[i]);
    }
    cr_expect(enabled[lens_hook_slot(&m.cfg, (lens_hook){LENS_HOOK_LN_FINAL_SCALE, 0})]);
    float stack[16 * D];
    lens_stack(&m, &cache, kind, 1, 2, stack);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < D; k++)
            cr_expect_float_eq(stack[i * D + k], value_of(expected[i], 1, 2, k), 0, "%s[%d]",
                               labels[i], k);
    lens_cache_free(&cache);
    free(enabled);
}

Test(attribution, accumulated_resid) {
    const lens_hook hooks[] = {{LENS_HOOK_RESID_PRE, 0},
                               {LENS_HOOK_RESID_MID, 0},
                               {LENS_HOOK_RESID_PRE, 1},
                               {LENS_HOOK_RESID_MID, 1},
                               {LENS_HOOK_RESID_POST, 1}};
    const char *const labels[] = {"0_pre", "0_mid", "1_pre", "1_mid", "final_post"};
    check_rows(false, LENS_STACK_ACCUMULATED, hooks, labels, 5);
    const lens_hook attn_only[] = {
        {LENS_HOOK_RESID_PRE, 0}, {LENS_HOOK_RESID_PRE, 1}, {LENS_HOOK_RESID_POST, 1}};
    const char *const attn_only_labels[] = {"0_pre", "1_pre", "final_post"};
    check_rows(true, LENS_STACK_ACCUMULATED, attn_only, attn_only_labels, 3);
}

Test(attribution, decompose_resid) {
    const lens_hook hooks[] = {{LENS_HOOK_EMBED, 0},    {LENS_HOOK_POS_EMBED, 0},
                               {LENS_HOOK_ATTN_OUT, 0}, {LENS_HOOK_MLP_OUT, 0},
                               {LENS_HOOK_ATTN_OUT, 1}, {LENS_HOOK_MLP_OUT, 1}};
    const char *const labels[] = {"embed",     "pos_embed",  "0_attn_out",
                                  "0_mlp_out", "1_attn_out", "1_mlp_out"};
    check_rows(false, LENS_STACK_DECOMPOSE, hooks, labels, 6);
}

/* stack_head_results: z[b, pos, h] @ W_O[h] (no b_O), in layer-major order. */
Test(attribution, head_results) {
    lens_layer_weights layers[L];
    float W_O[L][H * DH * D];
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < H * DH * D; i++)
            W_O[l][i] = (float)((l * 7 + i * 3) % 5) - 2.0f;
        layers[l] = (lens_layer_weights){.W_O = W_O[l]};
    }
    lens_model m = {.cfg = config(false), .w = {.layers = layers}};
    lens_cache cache = {.tensors = calloc(L, sizeof(lens_captured))};
    for (int l = 0; l < L; l++)
        add(&cache, (lens_hook){LENS_HOOK_Z, l}, H * DH);
    cr_assert_eq(lens_stack_size(&m.cfg, LENS_STACK_HEADS), L * H);
    float stack[L * H * D];
    lens_stack(&m, &cache, LENS_STACK_HEADS, 1, 2, stack);
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++) {
            char label[32], want[32];
            lens_stack_label(&m.cfg, LENS_STACK_HEADS, l * H + h, label, sizeof label);
            snprintf(want, sizeof want, "L%dH%d", l, h);
            cr_expect_str_eq(label, want);
            for (int k = 0; k < D; k++) {
                double sum = 0;
                for (int j = 0; j < DH; j++)
                    sum += (double)value_of((lens_hook){LENS_HOOK_Z, l}, 1, 2, h * DH + j) *
                           W_O[l][(h * DH + j) * D + k];
                cr_expect_float_eq(stack[(l * H + h) * D + k], (float)sum, 1e-4, "L%dH%d[%d]", l, h,
                                   k);
            }
        }
    lens_cache_free(&cache);
}
