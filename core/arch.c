/*
 * arch.c: the architecture table (arch.h) and the reading of each family's
 * config.json into lens_config, as TransformerLens's convert_hf_model_config
 * reads it. Both spellings Hugging Face has used are accepted: the flat
 * rope_theta / rope_scaling / partial_rotary_factor keys of the checkpoints
 * on the Hub, and the "rope_parameters" object transformers 5 writes (per
 * attention type for Gemma 3).
 */
#include "core/arch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json_fields.h"

/* ---- shared pieces of the config readers -------------------------------- */

static const struct {
    const char *name;
    lens_act act;
} hf_activations[] = {
    {"relu", LENS_ACT_RELU},           {"gelu", LENS_ACT_GELU},
    {"gelu_new", LENS_ACT_GELU_NEW},   {"gelu_pytorch_tanh", LENS_ACT_GELU_NEW},
    {"gelu_fast", LENS_ACT_GELU_FAST}, {"silu", LENS_ACT_SILU},
    {"swish", LENS_ACT_SILU},
};

static int read_activation(json_t *root, const char *key, const char *fallback, lens_act *out,
                           const char *file, lens_err *err) {
    const char *name = lens_json_str(root, key, fallback);
    for (size_t i = 0; i < sizeof hf_activations / sizeof hf_activations[0]; i++) {
        if (strcmp(hf_activations[i].name, name) == 0) {
            *out = hf_activations[i].act;
            return 0;
        }
    }
    lens_err_set(err,
                 "%s: %s \"%s\" is not supported (relu, gelu, gelu_new, gelu_pytorch_tanh, "
                 "gelu_fast, silu)",
                 file, key, name);
    return -1;
}

int lens_alloc_local_layers(lens_config *c, lens_err *err) {
    c->layer_is_local = calloc((size_t)c->n_layers, sizeof(bool));
    if (!c->layer_is_local) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    return 0;
}

/* d_head = d_model / n_heads unless head_key gives it. */
static int read_heads(lens_config *c, json_t *root, const char *head_key, const char *file,
                      lens_err *err) {
    if (c->n_heads < 1 ||
        (!json_is_integer(json_object_get(root, head_key)) && c->d_model % c->n_heads)) {
        lens_err_set(err, "%s: the model width must be a multiple of the number of heads", file);
        return -1;
    }
    if (lens_json_int(root, head_key, c->d_model / c->n_heads, false, &c->d_head, file, err))
        return -1;
    if (c->n_kv_heads == 0) c->n_kv_heads = c->n_heads;
    if (c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads) {
        lens_err_set(err, "%s: %d attention heads cannot share %d key/value heads evenly", file,
                     c->n_heads, c->n_kv_heads);
        return -1;
    }
    return 0;
}

/* The rotary settings of one attention type: rope_parameters[type] (or
 * rope_parameters itself) in transformers 5's form, else the flat keys. */
static int read_rope_scaling(lens_rotary *r, json_t *params, const char *file, lens_err *err) {
    const char *type = lens_json_str(params, "rope_type", lens_json_str(params, "type", "default"));
    if (strcmp(type, "default") == 0) {
        r->scaling = LENS_ROPE_PLAIN;
        return 0;
    }
    if (lens_json_double(params, "factor", 1.0, &r->factor, file, err)) return -1;
    if (strcmp(type, "linear") == 0) {
        r->scaling = LENS_ROPE_LINEAR;
        return 0;
    }
    if (strcmp(type, "llama3") == 0) {
        r->scaling = LENS_ROPE_LLAMA3;
        return lens_json_double(params, "low_freq_factor", 1.0, &r->low_freq_factor, file, err) ||
               lens_json_double(params, "high_freq_factor", 4.0, &r->high_freq_factor, file, err) ||
               lens_json_int(params, "original_max_position_embeddings", 8192, false,
                             &r->original_context, file, err);
    }
    lens_err_set(err, "%s: rope scaling \"%s\" is not supported (default, linear, llama3)", file,
                 type);
    return -1;
}

/* Rotary embeddings of a Hugging Face config: bases, partial rotary and
 * scaling, in either spelling. dim_fraction_key / base_key name the flat
 * keys of older families (GPT-NeoX's rotary_pct, rotary_emb_base). */
static int read_rotary(lens_config *c, json_t *root, const char *dim_fraction_key,
                       const char *base_key, const char *file, lens_err *err) {
    lens_rotary *r = &c->rotary;
    json_t *params = json_object_get(root, "rope_parameters");
    json_t *global = json_object_get(params, "full_attention");
    json_t *local = json_object_get(params, "sliding_attention");
    if (!json_is_object(global)) global = json_is_object(params) ? params : NULL;
    json_t *scaling = global ? global : json_object_get(root, "rope_scaling");
    double fraction;
    if (lens_json_double(root, dim_fraction_key, 1.0, &fraction, file, err) ||
        lens_json_double(global, "partial_rotary_factor", fraction, &fraction, file, err) ||
        lens_json_double(root, base_key, 10000.0, &r->base, file, err) ||
        lens_json_double(global, "rope_theta", r->base, &r->base, file, err) ||
        lens_json_double(root, "rope_local_base_freq", r->base, &r->base_local, file, err) ||
        lens_json_double(local, "rope_theta", r->base_local, &r->base_local, file, err))
        return -1;
    if (json_is_object(scaling) && read_rope_scaling(r, scaling, file, err)) return -1;
    c->positions = LENS_POS_ROTARY;
    r->dim = (int)(fraction * c->d_head);
    if (r->dim < 2 || r->dim > c->d_head || r->dim % 2) {
        lens_err_set(err, "%s: %d rotary dimensions do not fit heads of %d", file, r->dim,
                     c->d_head);
        return -1;
    }
    return 0;
}

/* Which layers are local (sliding-window): config.json's "layer_types", or
 * the family's pattern. Needs c->layer_is_local allocated. */
static int read_local_layers(const lens_arch *arch, lens_config *c, json_t *root, const char *file,
                             lens_err *err) {
    json_t *types = json_object_get(root, "layer_types");
    json_t *window = json_object_get(root, "sliding_window");
    bool use_window = true;
    if (lens_json_bool(root, "use_sliding_window", true, &use_window, file, err)) return -1;
    if (!json_is_integer(window) || !use_window) return 0;
    c->window_size = (int)json_integer_value(window);
    if (c->window_size < 1) return 0;
    if (json_is_array(types)) {
        if (json_array_size(types) != (size_t)c->n_layers) goto bad_types;
        for (int l = 0; l < c->n_layers; l++) {
            const char *type = json_string_value(json_array_get(types, (size_t)l));
            if (!type || (strcmp(type, "sliding_attention") && strcmp(type, "full_attention")))
                goto bad_types;
            c->layer_is_local[l] = strcmp(type, "sliding_attention") == 0;
        }
    } else {
        int pattern = 6, first_windowed = 0;
        if (lens_json_int(root, "sliding_window_pattern", 6, false, &pattern, file, err) ||
            lens_json_int(root, "max_window_layers", 0, false, &first_windowed, file, err))
            return -1;
        for (int l = 0; l < c->n_layers; l++) {
            switch (arch->local_layers) {
            case LENS_LOCAL_NONE:
                break;
            case LENS_LOCAL_ALL:
                c->layer_is_local[l] = l >= first_windowed;
                break;
            case LENS_LOCAL_EVEN:
                c->layer_is_local[l] = l % 2 == 0;
                break;
            case LENS_LOCAL_BUT_EVERY_NTH:
                c->layer_is_local[l] = pattern < 1 || (l + 1) % pattern != 0;
                break;
            }
        }
    }
    for (int l = 0; l < c->n_layers; l++)
        c->use_local_attn |= c->layer_is_local[l];
    return 0;
bad_types:
    lens_err_set(err,
                 "%s: \"layer_types\" must give sliding_attention or full_attention for "
                 "each of the %d layers",
                 file, c->n_layers);
    return -1;
}

/* ---- the family readers -------------------------------------------------- */

static int read_gpt2(lens_config *c, json_t *root, const char *file, lens_err *err) {
    if (lens_json_int(root, "n_embd", 0, true, &c->d_model, file, err) ||
        lens_json_int(root, "n_head", 0, true, &c->n_heads, file, err) ||
        lens_json_int(root, "n_layer", 0, true, &c->n_layers, file, err) ||
        lens_json_int(root, "n_positions", 1024, false, &c->n_ctx, file, err) ||
        lens_json_int(root, "n_ctx", c->n_ctx, false, &c->n_ctx, file, err) ||
        lens_json_int(root, "n_inner", 0, false, &c->d_mlp, file, err) ||
        lens_json_float(root, "layer_norm_epsilon", 1e-5f, &c->eps, file, err) ||
        read_activation(root, "activation_function", "gelu_new", &c->act_fn, file, err) ||
        lens_json_bool(root, "scale_attn_weights", true, &c->use_attn_scale, file, err) ||
        lens_json_bool(root, "scale_attn_by_inverse_layer_idx", false,
                       &c->scale_attn_by_inverse_layer_idx, file, err) ||
        read_heads(c, root, "head_dim", file, err))
        return -1;
    if (c->d_mlp == 0) c->d_mlp = 4 * c->d_model;
    return lens_alloc_local_layers(c, err);
}

/* Expands GPT-Neo's attention_types [[["global","local"], 6]] into
 * layer_is_local. */
static int read_neo_attention_types(lens_config *c, json_t *root, const char *file, lens_err *err) {
    json_t *types = json_object_get(root, "attention_types");
    int layer = 0;
    size_t i;
    json_t *entry;
    if (!json_is_array(types)) goto bad;
    json_array_foreach(types, i, entry) {
        json_t *kinds = json_array_get(entry, 0);
        const json_int_t repeat = json_integer_value(json_array_get(entry, 1));
        if (!json_is_array(kinds) || repeat < 0) goto bad;
        for (json_int_t r = 0; r < repeat; r++) {
            for (size_t k = 0; k < json_array_size(kinds); k++) {
                const char *kind = json_string_value(json_array_get(kinds, k));
                if (!kind || (strcmp(kind, "global") && strcmp(kind, "local"))) goto bad;
                if (layer >= c->n_layers) goto bad;
                c->layer_is_local[layer++] = strcmp(kind, "local") == 0;
            }
        }
    }
    if (layer == c->n_layers) return 0;
bad:
    lens_err_set(err,
                 "%s: \"attention_types\" must name \"global\" or \"local\" for each of the %d "
                 "layers",
                 file, c->n_layers);
    return -1;
}

static int read_gpt_neo(lens_config *c, json_t *root, const char *file, lens_err *err) {
    if (lens_json_int(root, "hidden_size", 0, true, &c->d_model, file, err) ||
        lens_json_int(root, "num_heads", 0, true, &c->n_heads, file, err) ||
        lens_json_int(root, "num_layers", 0, true, &c->n_layers, file, err) ||
        lens_json_int(root, "max_position_embeddings", 2048, false, &c->n_ctx, file, err) ||
        lens_json_int(root, "intermediate_size", 0, false, &c->d_mlp, file, err) ||
        lens_json_int(root, "window_size", 256, false, &c->window_size, file, err) ||
        lens_json_float(root, "layer_norm_epsilon", 1e-5f, &c->eps, file, err) ||
        read_activation(root, "activation_function", "gelu_new", &c->act_fn, file, err) ||
        read_heads(c, root, "head_dim", file, err) || lens_alloc_local_layers(c, err) ||
        read_neo_attention_types(c, root, file, err))
        return -1;
    if (c->d_mlp == 0) c->d_mlp = 4 * c->d_model;
    c->use_attn_scale = false; /* GPT-Neo does not scale q.k by 1/sqrt(d_head) */
    c->use_local_attn = true;
    return 0;
}

static int read_gptj(lens_config *c, json_t *root, const char *file, lens_err *err) {
    int rotary_dim;
    if (lens_json_int(root, "n_embd", 0, true, &c->d_model, file, err) ||
        lens_json_int(root, "n_head", 0, true, &c->n_heads, file, err) ||
        lens_json_int(root, "n_layer", 0, true, &c->n_layers, file, err) ||
        lens_json_int(root, "n_positions", 2048, false, &c->n_ctx, file, err) ||
        lens_json_int(root, "n_inner", 0, false, &c->d_mlp, file, err) ||
        lens_json_float(root, "layer_norm_epsilon", 1e-5f, &c->eps, file, err) ||
        read_activation(root, "activation_function", "gelu_new", &c->act_fn, file, err) ||
        read_heads(c, root, "head_dim", file, err) ||
        read_rotary(c, root, "partial_rotary_factor", "rope_theta", file, err) ||
        lens_json_int(root, "rotary_dim", c->d_head, false, &rotary_dim, file, err))
        return -1;
    if (rotary_dim < 2 || rotary_dim > c->d_head || rotary_dim % 2) {
        lens_err_set(err, "%s: rotary_dim %d does not fit heads of %d", file, rotary_dim,
                     c->d_head);
        return -1;
    }
    if (c->d_mlp == 0) c->d_mlp = 4 * c->d_model;
    c->rotary.dim = rotary_dim;
    c->rotary.interleaved = true;
    return lens_alloc_local_layers(c, err);
}

static int read_gpt_neox(lens_config *c, json_t *root, const char *file, lens_err *err) {
    if (lens_json_int(root, "hidden_size", 0, true, &c->d_model, file, err) ||
        lens_json_int(root, "num_attention_heads", 0, true, &c->n_heads, file, err) ||
        lens_json_int(root, "num_hidden_layers", 0, true, &c->n_layers, file, err) ||
        lens_json_int(root, "max_position_embeddings", 2048, false, &c->n_ctx, file, err) ||
        lens_json_int(root, "intermediate_size", 0, false, &c->d_mlp, file, err) ||
        lens_json_float(root, "layer_norm_eps", 1e-5f, &c->eps, file, err) ||
        read_activation(root, "hidden_act", "gelu", &c->act_fn, file, err) ||
        lens_json_bool(root, "use_parallel_residual", true, &c->parallel_attn_mlp, file, err) ||
        read_heads(c, root, "head_dim", file, err) ||
        read_rotary(c, root, "rotary_pct", "rotary_emb_base", file, err))
        return -1;
    if (c->d_mlp == 0) c->d_mlp = 4 * c->d_model;
    return lens_alloc_local_layers(c, err);
}

static int read_phi(lens_config *c, json_t *root, const char *file, lens_err *err) {
    if (json_is_true(json_object_get(root, "qk_layernorm"))) {
        lens_err_set(err, "%s: \"qk_layernorm\": true is not supported", file);
        return -1;
    }
    if (lens_json_int(root, "hidden_size", 0, true, &c->d_model, file, err) ||
        lens_json_int(root, "num_attention_heads", 0, true, &c->n_heads, file, err) ||
        lens_json_int(root, "num_key_value_heads", 0, false, &c->n_kv_heads, file, err) ||
        lens_json_int(root, "num_hidden_layers", 0, true, &c->n_layers, file, err) ||
        lens_json_int(root, "max_position_embeddings", 2048, false, &c->n_ctx, file, err) ||
        lens_json_int(root, "intermediate_size", 0, true, &c->d_mlp, file, err) ||
        lens_json_float(root, "layer_norm_eps", 1e-5f, &c->eps, file, err) ||
        read_activation(root, "hidden_act", "gelu_new", &c->act_fn, file, err) ||
        read_heads(c, root, "head_dim", file, err) ||
        read_rotary(c, root, "partial_rotary_factor", "rope_theta", file, err))
        return -1;
    return lens_alloc_local_layers(c, err);
}

/* Llama and the families built like it: Mistral, Qwen 2/3, Gemma 1/2/3,
 * OLMo 2, Phi-3. */
static int read_llama_like(lens_config *c, json_t *root, const char *file, lens_err *err) {
    bool mlp_bias = false;
    float query_pre_attn_scalar = 0;
    /* Gemma's MLP reads hidden_activation (GELU-tanh when it is null); the rest hidden_act */
    const bool gemma = strncmp(c->architecture, "Gemma", 5) == 0;
    const char *act_key = gemma ? "hidden_activation" : "hidden_act";
    if (lens_json_int(root, "hidden_size", 0, true, &c->d_model, file, err) ||
        lens_json_int(root, "num_attention_heads", 0, true, &c->n_heads, file, err) ||
        lens_json_int(root, "num_key_value_heads", 0, false, &c->n_kv_heads, file, err) ||
        lens_json_int(root, "num_hidden_layers", 0, true, &c->n_layers, file, err) ||
        lens_json_int(root, "max_position_embeddings", 2048, false, &c->n_ctx, file, err) ||
        lens_json_int(root, "intermediate_size", 0, true, &c->d_mlp, file, err) ||
        lens_json_float(root, "rms_norm_eps", 1e-6f, &c->eps, file, err) ||
        read_activation(root, act_key, gemma ? "gelu_pytorch_tanh" : "silu", &c->act_fn, file,
                        err) ||
        lens_json_bool(root, "mlp_bias", false, &mlp_bias, file, err) ||
        lens_json_float(root, "attn_logit_softcapping", 0, &c->attn_softcap, file, err) ||
        lens_json_float(root, "final_logit_softcapping", 0, &c->logit_softcap, file, err) ||
        lens_json_float(root, "query_pre_attn_scalar", 0, &query_pre_attn_scalar, file, err) ||
        read_heads(c, root, "head_dim", file, err) ||
        read_rotary(c, root, "partial_rotary_factor", "rope_theta", file, err) ||
        lens_alloc_local_layers(c, err))
        return -1;
    if (mlp_bias) {
        /* TL's gated MLP adds b_in after the gate: it cannot hold HF's biased projections */
        lens_err_set(err, "%s: \"mlp_bias\": true is not supported", file);
        return -1;
    }
    if (query_pre_attn_scalar > 0) c->attn_scale = sqrtf(query_pre_attn_scalar);
    return 0;
}

/* ---- the table ---------------------------------------------------------- */

#define LLAMA_ATTENTION                                                                            \
    .q = "layers.%d.self_attn.q_proj.weight", .k = "layers.%d.self_attn.k_proj.weight",            \
    .v = "layers.%d.self_attn.v_proj.weight", .q_b = "layers.%d.self_attn.q_proj.bias",            \
    .k_b = "layers.%d.self_attn.k_proj.bias", .v_b = "layers.%d.self_attn.v_proj.bias",            \
    .o = "layers.%d.self_attn.o_proj.weight", .o_b = "layers.%d.self_attn.o_proj.bias"
#define LLAMA_MLP                                                                                  \
    .gate = "layers.%d.mlp.gate_proj.weight", .up = "layers.%d.mlp.up_proj.weight",                \
    .down = "layers.%d.mlp.down_proj.weight"
#define LLAMA_ENDS                                                                                 \
    .prefix = "model.", .embed = "embed_tokens.weight", .final_w = "norm.weight",                  \
    .unembed = "lm_head.weight"
/* Llama's norms: input_layernorm before attention, post_attention_layernorm before the MLP */
#define LLAMA_NORMS                                                                                \
    .ln1_w = "layers.%d.input_layernorm.weight",                                                   \
    .ln2_w = "layers.%d.post_attention_layernorm.weight"
#define LLAMA_TENSORS                                                                              \
    { LLAMA_ENDS, LLAMA_ATTENTION, LLAMA_MLP, LLAMA_NORMS }
/* Gemma 2/3's: the same post_attention_layernorm name is the norm on attention's output */
#define SANDWICH_NORMS                                                                             \
    .ln1_w = "layers.%d.input_layernorm.weight",                                                   \
    .ln1_post_w = "layers.%d.post_attention_layernorm.weight",                                     \
    .ln2_w = "layers.%d.pre_feedforward_layernorm.weight",                                         \
    .ln2_post_w = "layers.%d.post_feedforward_layernorm.weight"
/* What every family built like Llama shares; Gemma's RMSNorm adds 1 to its weights and its
 * embeddings are scaled */
#define LLAMA_LIKE                                                                                 \
    .norm = LENS_NORM_RMS, .gated_mlp = true, .optional_biases = true,                             \
    .read_config = read_llama_like
#define GEMMA_LIKE LLAMA_LIKE, .norm_offset = 1.0f, .scale_embed = true
#define QK_NORMS                                                                                   \
    .q_norm = "layers.%d.self_attn.q_norm.weight", .k_norm = "layers.%d.self_attn.k_norm.weight"

static const lens_arch archs[] = {
    {.name = "GPT2LMHeadModel",
     .model_type = "gpt2",
     .norm = LENS_NORM_LN,
     .conv1d = true,
     .read_config = read_gpt2,
     .tensors = {.prefix = "transformer.",
                 .embed = "wte.weight",
                 .pos_embed = "wpe.weight",
                 .ln1_w = "h.%d.ln_1.weight",
                 .ln1_b = "h.%d.ln_1.bias",
                 .qkv_layout = LENS_QKV_CONV1D,
                 .q = "h.%d.attn.c_attn.weight",
                 .q_b = "h.%d.attn.c_attn.bias",
                 .o = "h.%d.attn.c_proj.weight",
                 .o_b = "h.%d.attn.c_proj.bias",
                 .ln2_w = "h.%d.ln_2.weight",
                 .ln2_b = "h.%d.ln_2.bias",
                 .up = "h.%d.mlp.c_fc.weight",
                 .up_b = "h.%d.mlp.c_fc.bias",
                 .down = "h.%d.mlp.c_proj.weight",
                 .down_b = "h.%d.mlp.c_proj.bias",
                 .final_w = "ln_f.weight",
                 .final_b = "ln_f.bias",
                 .unembed = "lm_head.weight"}},
    {.name = "GPTNeoForCausalLM",
     .model_type = "gpt_neo",
     .norm = LENS_NORM_LN,
     .read_config = read_gpt_neo,
     .tensors = {.prefix = "transformer.",
                 .embed = "wte.weight",
                 .pos_embed = "wpe.weight",
                 .ln1_w = "h.%d.ln_1.weight",
                 .ln1_b = "h.%d.ln_1.bias",
                 .q = "h.%d.attn.attention.q_proj.weight",
                 .k = "h.%d.attn.attention.k_proj.weight",
                 .v = "h.%d.attn.attention.v_proj.weight",
                 .o = "h.%d.attn.attention.out_proj.weight",
                 .o_b = "h.%d.attn.attention.out_proj.bias",
                 .ln2_w = "h.%d.ln_2.weight",
                 .ln2_b = "h.%d.ln_2.bias",
                 .up = "h.%d.mlp.c_fc.weight",
                 .up_b = "h.%d.mlp.c_fc.bias",
                 .down = "h.%d.mlp.c_proj.weight",
                 .down_b = "h.%d.mlp.c_proj.bias",
                 .final_w = "ln_f.weight",
                 .final_b = "ln_f.bias",
                 .unembed = "lm_head.weight"}},
    {.name = "GPTJForCausalLM",
     .model_type = "gptj",
     .norm = LENS_NORM_LN,
     .parallel = true,
     .shared_ln = true,
     .read_config = read_gptj,
     .tensors = {.prefix = "transformer.",
                 .embed = "wte.weight",
                 .ln1_w = "h.%d.ln_1.weight",
                 .ln1_b = "h.%d.ln_1.bias",
                 .q = "h.%d.attn.q_proj.weight",
                 .k = "h.%d.attn.k_proj.weight",
                 .v = "h.%d.attn.v_proj.weight",
                 .o = "h.%d.attn.out_proj.weight",
                 .up = "h.%d.mlp.fc_in.weight",
                 .up_b = "h.%d.mlp.fc_in.bias",
                 .down = "h.%d.mlp.fc_out.weight",
                 .down_b = "h.%d.mlp.fc_out.bias",
                 .final_w = "ln_f.weight",
                 .final_b = "ln_f.bias",
                 .unembed = "lm_head.weight",
                 .unembed_b = "lm_head.bias"}},
    {.name = "GPTNeoXForCausalLM",
     .no_default_bos = true,
     .optional_biases = true,
     .model_type = "gpt_neox",
     .norm = LENS_NORM_LN,
     .read_config = read_gpt_neox,
     .tensors = {.prefix = "gpt_neox.",
                 .embed = "embed_in.weight",
                 .ln1_w = "layers.%d.input_layernorm.weight",
                 .ln1_b = "layers.%d.input_layernorm.bias",
                 .qkv_layout = LENS_QKV_FUSED_HEADS,
                 .q = "layers.%d.attention.query_key_value.weight",
                 .q_b = "layers.%d.attention.query_key_value.bias",
                 .o = "layers.%d.attention.dense.weight",
                 .o_b = "layers.%d.attention.dense.bias",
                 .ln2_w = "layers.%d.post_attention_layernorm.weight",
                 .ln2_b = "layers.%d.post_attention_layernorm.bias",
                 .up = "layers.%d.mlp.dense_h_to_4h.weight",
                 .up_b = "layers.%d.mlp.dense_h_to_4h.bias",
                 .down = "layers.%d.mlp.dense_4h_to_h.weight",
                 .down_b = "layers.%d.mlp.dense_4h_to_h.bias",
                 .final_w = "final_layer_norm.weight",
                 .final_b = "final_layer_norm.bias",
                 .unembed = "embed_out.weight"}},
    {.name = "PhiForCausalLM",
     .no_default_bos = true,
     .model_type = "phi",
     .norm = LENS_NORM_LN,
     .parallel = true,
     .shared_ln = true,
     .read_config = read_phi,
     .tensors = {.prefix = "model.",
                 .embed = "embed_tokens.weight",
                 .ln1_w = "layers.%d.input_layernorm.weight",
                 .ln1_b = "layers.%d.input_layernorm.bias",
                 .q = "layers.%d.self_attn.q_proj.weight",
                 .k = "layers.%d.self_attn.k_proj.weight",
                 .v = "layers.%d.self_attn.v_proj.weight",
                 .q_b = "layers.%d.self_attn.q_proj.bias",
                 .k_b = "layers.%d.self_attn.k_proj.bias",
                 .v_b = "layers.%d.self_attn.v_proj.bias",
                 .o = "layers.%d.self_attn.dense.weight",
                 .o_b = "layers.%d.self_attn.dense.bias",
                 .up = "layers.%d.mlp.fc1.weight",
                 .up_b = "layers.%d.mlp.fc1.bias",
                 .down = "layers.%d.mlp.fc2.weight",
                 .down_b = "layers.%d.mlp.fc2.bias",
                 .final_w = "final_layernorm.weight",
                 .final_b = "final_layernorm.bias",
                 .unembed = "lm_head.weight",
                 .unembed_b = "lm_head.bias"}},
    {LLAMA_LIKE, .name = "LlamaForCausalLM", .model_type = "llama", .tensors = LLAMA_TENSORS},
    {LLAMA_LIKE, .name = "MistralForCausalLM", .model_type = "mistral",
     .local_layers = LENS_LOCAL_ALL, .tensors = LLAMA_TENSORS},
    {LLAMA_LIKE, .name = "Qwen2ForCausalLM", .model_type = "qwen2", .no_default_bos = true,
     .local_layers = LENS_LOCAL_ALL, .tensors = LLAMA_TENSORS},
    {LLAMA_LIKE, .name = "Qwen3ForCausalLM", .model_type = "qwen3", .no_default_bos = true,
     .qk_norm = LENS_QK_NORM_PER_HEAD, .local_layers = LENS_LOCAL_ALL,
     .tensors = {LLAMA_ENDS, LLAMA_ATTENTION, LLAMA_MLP, QK_NORMS, LLAMA_NORMS}},
    {GEMMA_LIKE, .name = "GemmaForCausalLM", .model_type = "gemma", .tensors = LLAMA_TENSORS},
    {GEMMA_LIKE, .name = "Gemma2ForCausalLM", .model_type = "gemma2",
     .placement = LENS_NORM_SANDWICH, .local_layers = LENS_LOCAL_EVEN,
     .tensors = {LLAMA_ENDS, LLAMA_ATTENTION, LLAMA_MLP, SANDWICH_NORMS}},
    {GEMMA_LIKE, .name = "Gemma3ForCausalLM", .model_type = "gemma3_text",
     .placement = LENS_NORM_SANDWICH, .qk_norm = LENS_QK_NORM_PER_HEAD,
     .local_layers = LENS_LOCAL_BUT_EVERY_NTH,
     .tensors = {LLAMA_ENDS, LLAMA_ATTENTION, LLAMA_MLP, QK_NORMS, SANDWICH_NORMS}},
    {LLAMA_LIKE, .name = "Olmo2ForCausalLM", .model_type = "olmo2", .placement = LENS_NORM_AFTER,
     .qk_norm = LENS_QK_NORM_WHOLE,
     .tensors = {LLAMA_ENDS, LLAMA_ATTENTION, LLAMA_MLP, QK_NORMS,
                 .ln1_post_w = "layers.%d.post_attention_layernorm.weight",
                 .ln2_post_w = "layers.%d.post_feedforward_layernorm.weight"}},
    {LLAMA_LIKE, .name = "Phi3ForCausalLM", .model_type = "phi3", .local_layers = LENS_LOCAL_ALL,
     .tensors = {LLAMA_ENDS, .ln1_w = "layers.%d.input_layernorm.weight",
                 .qkv_layout = LENS_QKV_FUSED_ROWS, .q = "layers.%d.self_attn.qkv_proj.weight",
                 .o = "layers.%d.self_attn.o_proj.weight",
                 .ln2_w = "layers.%d.post_attention_layernorm.weight",
                 .gate_layout = LENS_GATE_FUSED_ROWS, .gate = "layers.%d.mlp.gate_up_proj.weight",
                 .down = "layers.%d.mlp.down_proj.weight"}},
};

void lens_arch_list(char *buf, size_t len) {
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof archs / sizeof archs[0] && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "", archs[i].name);
}

const lens_arch *lens_arch_find(json_t *root, const char *file, lens_err *err) {
    const char *name = json_string_value(json_array_get(json_object_get(root, "architectures"), 0));
    const char *model_type = lens_json_str(root, "model_type", "");
    /* GPT2Model (no LM head) checkpoints load as GPT2LMHeadModel with a tied unembedding */
    if (name && strcmp(name, "GPT2Model") == 0) name = "GPT2LMHeadModel";
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
        if (name ? strcmp(name, archs[i].name) == 0 : strcmp(model_type, archs[i].model_type) == 0)
            return &archs[i];
    }
    char supported[1024];
    lens_arch_list(supported, sizeof supported);
    lens_err_set(err, "%s: architecture \"%s\" is not supported (%s)", file,
                 name ? name : model_type, supported);
    return NULL;
}

int lens_arch_read_config(const lens_arch *arch, lens_config *c, json_t *root, const char *file,
                          lens_err *err) {
    snprintf(c->architecture, sizeof c->architecture, "%s", arch->name);
    c->normalization = arch->norm;
    c->norm_placement = arch->placement;
    c->qk_norm = arch->qk_norm;
    c->gated_mlp = arch->gated_mlp;
    c->parallel_attn_mlp = arch->parallel;
    c->shared_ln = arch->shared_ln;
    c->causal = true;
    c->default_prepend_bos = !arch->no_default_bos;
    c->use_attn_scale = true;
    if (lens_json_int(root, "vocab_size", 0, true, &c->d_vocab, file, err) ||
        arch->read_config(c, root, file, err) || read_local_layers(arch, c, root, file, err))
        return -1;
    c->d_vocab_out = c->d_vocab;
    if (c->n_kv_heads == 0) c->n_kv_heads = c->n_heads;
    if (c->attn_scale == 0) c->attn_scale = c->use_attn_scale ? sqrtf((float)c->d_head) : 1.0f;
    if (c->n_layers < 1 || c->d_model < 1 || c->d_head < 1 || c->n_ctx < 1 || c->d_vocab < 1 ||
        c->d_mlp < 1) {
        lens_err_set(err,
                     "%s: every dimension (layers, width, heads, MLP width, context, vocabulary) "
                     "must be positive",
                     file);
        return -1;
    }
    return 0;
}

/* ---- rotary tables ------------------------------------------------------- */

void lens_rotary_tables(const lens_rotary *r, double base, bool scaled, int n_ctx, float *cos_out,
                        float *sin_out) {
    const int half = r->dim / 2;
    for (int i = 0; i < half; i++) {
        /* HF's inv_freq = 1 / base^(2i / dim), then its scaling */
        double inv_freq = 1.0 / pow(base, (double)(2 * i) / r->dim);
        if (scaled && r->scaling == LENS_ROPE_LINEAR) {
            inv_freq /= r->factor;
        } else if (scaled && r->scaling == LENS_ROPE_LLAMA3) {
            const double low_freq_wavelen = r->original_context / r->low_freq_factor;
            const double high_freq_wavelen = r->original_context / r->high_freq_factor;
            const double wavelen = 2 * M_PI / inv_freq;
            if (wavelen > low_freq_wavelen) {
                inv_freq /= r->factor;
            } else if (wavelen >= high_freq_wavelen) {
                const double smooth = (r->original_context / wavelen - r->low_freq_factor) /
                                      (r->high_freq_factor - r->low_freq_factor);
                inv_freq = (1 - smooth) * inv_freq / r->factor + smooth * inv_freq;
            }
        }
        /* HF multiplies in float32: the angle is the float product */
        const float freq = (float)inv_freq;
        for (int p = 0; p < n_ctx; p++) {
            const float angle = (float)p * freq;
            cos_out[(size_t)p * half + i] = (float)cos(angle);
            sin_out[(size_t)p * half + i] = (float)sin(angle);
        }
    }
}
