/*
 * test_arch.c: the architecture table (core/arch.c): finding a family,
 * reading its config.json in both spellings Hugging Face has used, and the
 * rotary tables against Hugging Face's formulas computed here in double.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>

#include "core/arch.h"

/* Reads config JSON text through its family's table entry into *c. */
static int read_config(const char *text, lens_config *c, lens_err *err) {
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    cr_assert_not_null(root, "%s", jerr.text);
    *c = (lens_config){0};
    const lens_arch *arch = lens_arch_find(root, "config.json", err);
    int rc = arch ? lens_arch_read_config(arch, c, root, "config.json", err) : -1;
    json_decref(root);
    return rc;
}

#define LLAMA_DIMS                                                                                 \
    "\"hidden_size\": 64, \"num_hidden_layers\": 3, \"num_attention_heads\": 4, "                  \
    "\"num_key_value_heads\": 2, \"intermediate_size\": 128, \"vocab_size\": 100, "                \
    "\"max_position_embeddings\": 32"

Test(arch, every_family_is_found_by_name_or_model_type) {
    const char *names[] = {"GPT2LMHeadModel",    "GPTNeoForCausalLM", "GPTJForCausalLM",
                           "GPTNeoXForCausalLM", "PhiForCausalLM",    "LlamaForCausalLM",
                           "MistralForCausalLM", "Qwen2ForCausalLM",  "Qwen3ForCausalLM",
                           "GemmaForCausalLM",   "Gemma2ForCausalLM", "Gemma3ForCausalLM",
                           "Olmo2ForCausalLM",   "Phi3ForCausalLM"};
    lens_err err;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        json_t *root = json_pack("{s:[s]}", "architectures", names[i]);
        const lens_arch *arch = lens_arch_find(root, "config.json", &err);
        cr_assert_not_null(arch, "%s: %s", names[i], err.msg);
        cr_assert_str_eq(arch->name, names[i]);
        json_decref(root);
    }
    json_t *by_type = json_pack("{s:s}", "model_type", "qwen3");
    cr_assert_str_eq(lens_arch_find(by_type, "config.json", &err)->name, "Qwen3ForCausalLM");
    json_decref(by_type);
    json_t *unknown = json_pack("{s:[s]}", "architectures", "MambaForCausalLM");
    cr_assert_null(lens_arch_find(unknown, "config.json", &err));
    cr_assert(strstr(err.msg, "MambaForCausalLM") && strstr(err.msg, "Gemma2ForCausalLM"), "%s",
              err.msg);
    json_decref(unknown);
}

/* transformers 5's rope_parameters and the Hub's flat rope_theta /
 * rope_scaling read to the same settings. */
Test(arch, llama3_rope_in_both_spellings) {
    lens_config flat, nested;
    lens_err err;
    cr_assert_eq(
        read_config("{\"architectures\": [\"LlamaForCausalLM\"], " LLAMA_DIMS
                    ", \"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": "
                    "\"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
                    "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 16}}",
                    &flat, &err),
        0, "%s", err.msg);
    cr_assert_eq(
        read_config("{\"architectures\": [\"LlamaForCausalLM\"], " LLAMA_DIMS
                    ", \"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": "
                    "500000.0, \"factor\": 8.0, \"low_freq_factor\": 1.0, "
                    "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 16}}",
                    &nested, &err),
        0, "%s", err.msg);
    const lens_config *cs[2] = {&flat, &nested};
    for (int i = 0; i < 2; i++) {
        const lens_config *c = cs[i];
        cr_assert_eq(c->positions, LENS_POS_ROTARY);
        cr_assert_eq(c->rotary.dim, 16);
        cr_assert_eq(c->rotary.base, 500000.0);
        cr_assert_eq(c->rotary.scaling, LENS_ROPE_LLAMA3);
        cr_assert_eq(c->rotary.factor, 8.0);
        cr_assert_eq(c->rotary.original_context, 16);
        cr_assert_eq(c->n_kv_heads, 2);
        cr_assert_eq(c->d_head, 16);
        cr_assert(c->gated_mlp && c->normalization == LENS_NORM_RMS && !c->use_local_attn);
        cr_assert_float_eq(c->attn_scale, 4.0f, 0.0f);
        free(c->layer_is_local);
    }
}

Test(arch, gemma3_layer_types_bases_and_scale) {
    lens_config c;
    lens_err err;
    cr_assert_eq(read_config("{\"architectures\": [\"Gemma3ForCausalLM\"], " LLAMA_DIMS
                             ", \"head_dim\": 24, \"query_pre_attn_scalar\": 20, "
                             "\"sliding_window\": 4, \"layer_types\": [\"sliding_attention\", "
                             "\"full_attention\", \"sliding_attention\"], \"rope_parameters\": "
                             "{\"sliding_attention\": {\"rope_type\": \"default\", \"rope_theta\": "
                             "10000.0}, \"full_attention\": {\"rope_type\": \"linear\", "
                             "\"factor\": 8.0, \"rope_theta\": 1000000.0}}}",
                             &c, &err),
                 0, "%s", err.msg);
    cr_assert_eq(c.d_head, 24);
    cr_assert_eq(c.rotary.base, 1e6);
    cr_assert_eq(c.rotary.base_local, 1e4);
    cr_assert_eq(c.rotary.scaling, LENS_ROPE_LINEAR);
    cr_assert(c.use_local_attn && c.window_size == 4);
    cr_assert(c.layer_is_local[0] && !c.layer_is_local[1] && c.layer_is_local[2]);
    cr_assert_float_eq(c.attn_scale, sqrtf(20.0f), 0.0f);
    cr_assert(c.norm_placement == LENS_NORM_SANDWICH && c.qk_norm == LENS_QK_NORM_PER_HEAD);
    cr_assert_eq(c.act_fn, LENS_ACT_GELU_NEW); /* hidden_activation absent: GELU-tanh */
    free(c.layer_is_local);
}

Test(arch, sliding_windows_follow_the_config) {
    lens_config c;
    lens_err err;
    /* Mistral: every layer when sliding_window is set, none when it is null */
    cr_assert_eq(read_config("{\"architectures\": [\"MistralForCausalLM\"], " LLAMA_DIMS
                             ", \"sliding_window\": 4}",
                             &c, &err),
                 0, "%s", err.msg);
    cr_assert(c.use_local_attn && c.layer_is_local[0] && c.layer_is_local[2]);
    free(c.layer_is_local);
    cr_assert_eq(read_config("{\"architectures\": [\"MistralForCausalLM\"], " LLAMA_DIMS
                             ", \"sliding_window\": null}",
                             &c, &err),
                 0, "%s", err.msg);
    cr_assert(!c.use_local_attn);
    free(c.layer_is_local);
    /* Qwen2 keeps its window off unless use_sliding_window */
    cr_assert_eq(read_config("{\"architectures\": [\"Qwen2ForCausalLM\"], " LLAMA_DIMS
                             ", \"sliding_window\": 4, \"use_sliding_window\": false}",
                             &c, &err),
                 0, "%s", err.msg);
    cr_assert(!c.use_local_attn && !c.default_prepend_bos);
    free(c.layer_is_local);
    /* Gemma 2 without layer_types: even layers slide */
    cr_assert_eq(read_config("{\"architectures\": [\"Gemma2ForCausalLM\"], " LLAMA_DIMS
                             ", \"sliding_window\": 4, \"attn_logit_softcapping\": 50.0, "
                             "\"final_logit_softcapping\": 30.0}",
                             &c, &err),
                 0, "%s", err.msg);
    cr_assert(c.layer_is_local[0] && !c.layer_is_local[1] && c.layer_is_local[2]);
    cr_assert(c.attn_softcap == 50.0f && c.logit_softcap == 30.0f);
    free(c.layer_is_local);
}

Test(arch, unsupported_settings_are_named) {
    lens_config c;
    lens_err err;
    cr_assert_neq(read_config("{\"architectures\": [\"LlamaForCausalLM\"], " LLAMA_DIMS
                              ", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}}",
                              &c, &err),
                  0);
    cr_assert(strstr(err.msg, "yarn"), "%s", err.msg);
    cr_assert_neq(read_config("{\"architectures\": [\"LlamaForCausalLM\"], " LLAMA_DIMS
                              ", \"mlp_bias\": true}",
                              &c, &err),
                  0);
    cr_assert(strstr(err.msg, "mlp_bias"), "%s", err.msg);
    free(c.layer_is_local);
    cr_assert_neq(read_config("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
                              "\"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
                              "\"num_key_value_heads\": 3, \"intermediate_size\": 8, "
                              "\"vocab_size\": 10}",
                              &c, &err),
                  0);
    cr_assert(strstr(err.msg, "key/value heads"), "%s", err.msg);
}

/* HF's inv_freq = 1 / base^(2i/dim), scaled as modeling_rope_utils does. */
static double hf_inv_freq(const lens_rotary *r, int i) {
    double inv = 1.0 / pow(r->base, 2.0 * i / r->dim);
    if (r->scaling != LENS_ROPE_LLAMA3)
        return r->scaling == LENS_ROPE_LINEAR ? inv / r->factor : inv;
    const double wavelen = 2 * M_PI / inv;
    const double low = r->original_context / r->low_freq_factor;
    const double high = r->original_context / r->high_freq_factor;
    if (wavelen < high) return inv;
    if (wavelen > low) return inv / r->factor;
    const double smooth = (r->original_context / wavelen - r->low_freq_factor) /
                          (r->high_freq_factor - r->low_freq_factor);
    return (1 - smooth) * inv / r->factor + smooth * inv;
}

Test(arch, rotary_tables_match_hugging_face) {
    const lens_rotary kinds[] = {
        {.dim = 16, .base = 10000.0},
        {.dim = 8, .base = 1e6, .scaling = LENS_ROPE_LINEAR, .factor = 8.0},
        {.dim = 16,
         .base = 500000.0,
         .scaling = LENS_ROPE_LLAMA3,
         .factor = 8.0,
         .low_freq_factor = 1.0,
         .high_freq_factor = 4.0,
         .original_context = 16},
    };
    enum { CTX = 40 };
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        const lens_rotary *r = &kinds[k];
        const int half = r->dim / 2;
        float cos_t[CTX * 8], sin_t[CTX * 8];
        lens_rotary_tables(r, r->base, true, CTX, cos_t, sin_t);
        for (int p = 0; p < CTX; p++)
            for (int i = 0; i < half; i++) {
                /* the angle is HF's float32 product; cos/sin of it within float rounding */
                const float angle = (float)p * (float)hf_inv_freq(r, i);
                cr_assert_float_eq(cos_t[p * half + i], cos(angle), 2e-7, "kind %zu p %d i %d", k,
                                   p, i);
                cr_assert_float_eq(sin_t[p * half + i], sin(angle), 2e-7, "kind %zu p %d i %d", k,
                                   p, i);
            }
        /* unscaled tables (Gemma 3's local layers) ignore the scaling */
        lens_rotary_tables(r, r->base, false, CTX, cos_t, sin_t);
        const float angle = 7.0f * (float)(1.0 / pow(r->base, 2.0 * (half - 1) / r->dim));
        cr_assert_float_eq(cos_t[7 * half + half - 1], cos(angle), 2e-7);
    }
}
