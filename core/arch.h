/*
 * arch.h: the Hugging Face architectures lensd loads, as data.
 *
 * One table entry per architecture (config.json's "architectures"[0]) says
 * which config.json keys hold which lens_config fields, which numerics the
 * family uses (normalisation, rotary style, gated MLP, parallel blocks, ...)
 * and the name of every checkpoint tensor, in the way TransformerLens's
 * convert_*_weights functions map them. model_load.c reads a checkpoint by
 * these names; forward.c reads only lens_config. Adding a family is one
 * entry, plus whatever genuinely new numerics it brings.
 */
#ifndef LENS_ARCH_H
#define LENS_ARCH_H

#include <jansson.h>
#include <stdbool.h>

#include "core/model.h"

/* How a checkpoint stores the attention's input projections. */
typedef enum lens_qkv_layout {
    LENS_QKV_SEPARATE,    /* q, k, v: nn.Linear [out, in] each */
    LENS_QKV_CONV1D,      /* GPT-2's c_attn: Conv1D [d, 3 * d], columns q | k | v */
    LENS_QKV_FUSED_ROWS,  /* Phi-3's qkv_proj: Linear [(h + 2 kv) * dh, d], rows q | k | v */
    LENS_QKV_FUSED_HEADS, /* GPT-NeoX's query_key_value: Linear rows (head, q|k|v, dh) */
} lens_qkv_layout;

/* How a checkpoint stores a gated MLP's two input projections. */
typedef enum lens_gate_layout {
    LENS_GATE_SEPARATE,   /* gate_proj and up_proj */
    LENS_GATE_FUSED_ROWS, /* Phi-3's gate_up_proj: rows gate | up */
} lens_gate_layout;

/* The tensor names of one architecture. Per-layer names take the layer for
 * %d. Names are relative to the model's prefix (prefix below) unless they
 * are the unembedding's. NULL: the family has no such tensor (its bias is
 * zeros, as TransformerLens's conversions make it). */
typedef struct lens_arch_tensors {
    const char *prefix; /* "model.", "transformer.", ... (optional in files) */
    const char *embed, *pos_embed;
    const char *ln1_w, *ln1_b, *ln1_post_w; /* ln1_post: Gemma 2/3's post_attention_layernorm */
    lens_qkv_layout qkv_layout;
    const char *q, *k, *v, *q_b, *k_b, *v_b; /* q / q_b: the fused tensor where fused */
    const char *q_norm, *k_norm;
    const char *o, *o_b;
    const char *ln2_w, *ln2_b, *ln2_post_w;
    lens_gate_layout gate_layout;
    const char *gate, *up, *up_b, *down, *down_b; /* up: GPT-2 c_fc, NeoX dense_h_to_4h, ... */
    const char *final_w, *final_b;
    const char *unembed, *unembed_b; /* absolute names; unembed absent: tied to embed */
} lens_arch_tensors;

/* Which layers use sliding-window attention when config.json has no
 * "layer_types" list. */
typedef enum lens_local_layers {
    LENS_LOCAL_NONE,         /* none (GPT-Neo's attention_types are read by its reader) */
    LENS_LOCAL_ALL,          /* every layer, when "sliding_window" is set (Mistral) */
    LENS_LOCAL_EVEN,         /* layers 0, 2, 4, ... (Gemma 2) */
    LENS_LOCAL_BUT_EVERY_NTH /* all but every sliding_window_pattern-th (Gemma 3) */
} lens_local_layers;

typedef struct lens_arch {
    const char *name; /* "LlamaForCausalLM" */
    const char *model_type;
    lens_norm norm; /* LENS_NORM_LN or LENS_NORM_RMS */
    lens_norm_placement placement;
    lens_qk_norm qk_norm;
    lens_local_layers local_layers;
    bool gated_mlp;
    bool parallel;        /* attention and MLP in parallel (GPT-J, Phi; NeoX reads its config) */
    bool conv1d;          /* weights stored [in, out] (GPT-2's Conv1D), else nn.Linear [out, in] */
    bool shared_ln;       /* one LayerNorm feeds attention and MLP (GPT-J, Phi): ln2 = ln1 */
    float norm_offset;    /* Gemma's RMSNorm multiplies by 1 + w: the stored w gets this added */
    bool scale_embed;     /* the embeddings are multiplied by sqrt(d_model) (Gemma) */
    bool no_default_bos;  /* text prompts get no BOS unless asked (TransformerBridge's
                             default_prepend_bos False: Pythia, Qwen 2/3, Phi) */
    bool optional_biases; /* the config can turn biases off (attention_bias): a bias the file
                             lacks is zeros; otherwise every bias the table names must be there */
    lens_arch_tensors tensors;
    /* Reads the family's config.json into c (lens_arch_read_config's work). */
    int (*read_config)(lens_config *c, json_t *root, const char *file, lens_err *err);
} lens_arch;

/* The table entry for a config.json: by "architectures"[0], else by
 * "model_type". Returns NULL, with a message listing the supported
 * architectures, for any other. */
const lens_arch *lens_arch_find(json_t *config_root, const char *file, lens_err *err);

/* Fills c from config.json (root) as TransformerLens's
 * convert_hf_model_config does for this architecture, and allocates
 * c->layer_is_local. Refuses, naming the field, what lensd does not
 * implement (dynamic or YaRN rope scaling, biased gated MLPs, ...). */
int lens_arch_read_config(const lens_arch *arch, lens_config *c, json_t *root, const char *file,
                          lens_err *err);

/* Allocates c->layer_is_local [n_layers], every layer global. Returns -1
 * when out of memory. */
int lens_alloc_local_layers(lens_config *c, lens_err *err);

/* Writes the supported architecture names, comma-separated, into buf. */
void lens_arch_list(char *buf, size_t len);

/* The rotary tables of one rotary base: cos[p, i] and sin[p, i] of the
 * angle p * inv_freq[i] for positions p < n_ctx and i < rotary.dim / 2,
 * with Hugging Face's inv_freq (and its scaling when scaled is true). */
void lens_rotary_tables(const lens_rotary *rotary, double base, bool scaled, int n_ctx,
                        float *cos_out, float *sin_out);

#endif
