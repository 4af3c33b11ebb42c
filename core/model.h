/*
 * model.h: a loaded model — its configuration (TransformerLens's
 * HookedTransformerConfig fields that lensd supports), its weights in one
 * internal layout, its tokenizer and its token conventions.
 *
 * Architectures are data: GPT-2, GPT-Neo and TransformerLens-native models
 * all become the same lens_config + lens_weights, and one forward routine
 * (forward.h) reads them.
 *
 * Internal weight layout (float32, row-major, owned by the model). With
 * d = d_model, h = n_heads, dh = d_head, m = d_mlp, V = d_vocab,
 * Vo = d_vocab_out:
 *   W_E [V, d]; W_pos [n_ctx, d]
 *   W_Q, W_K, W_V [d, h*dh]  (TL's [h, d, dh] with heads side by side, so
 *                             one GEMM makes q in TL's [pos, h, dh] order)
 *   b_Q, b_K, b_V [h*dh]; W_O [h*dh, d] (TL's [h, dh, d], same bytes); b_O [d]
 *   W_in [d, m]; b_in [m]; W_out [m, d]; b_out [d]
 *   W_U [d, Vo]; b_U [Vo]
 *   ln*_w, ln*_b [d] (mlp_ln_* [m]) — NULL where the normalisation has none.
 * With grouped-query attention (kv = n_key_value_heads < h) keys and values
 * have kv heads: W_K, W_V [d, kv*dh], b_K, b_V [kv*dh]; query head i reads
 * key/value head i / (h / kv), as TL's repeat_interleave does.
 * Gated MLPs add W_gate [d, m]: hidden = act(x @ W_gate) * (x @ W_in) + b_in.
 * Sandwich norms (Gemma 2/3) add ln1_post_w, ln2_post_w [d] on the outputs;
 * q/k norms add q_norm_w, k_norm_w ([dh] per head, or [h*dh] / [kv*dh] over
 * the whole projection, OLMo 2). Gemma's RMSNorm weights are stored as
 * 1 + w, the form TL converts them to. Rotary models have no W_pos; their
 * rotary tables are rotary_cos/sin [n_ctx, rotary_dim / 2], one pair per
 * rotary base (index 1: local layers, Gemma 3).
 */
#ifndef LENS_MODEL_H
#define LENS_MODEL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/lens_error.h"
#include "core/tokenizer.h"
#include "kernels/lk.h"

typedef enum lens_norm {
    LENS_NORM_NONE,
    LENS_NORM_LN,     /* LayerNorm with weight and bias */
    LENS_NORM_LNPRE,  /* LayerNorm without them (after fold_ln) */
    LENS_NORM_RMS,    /* RMSNorm with its weight */
    LENS_NORM_RMSPRE, /* RMSNorm without it (after fold_ln) */
} lens_norm;

/* Where the blocks' normalisations sit. */
typedef enum lens_norm_placement {
    LENS_NORM_BEFORE,   /* pre-norm: ln1 before attention, ln2 before the MLP */
    LENS_NORM_SANDWICH, /* pre-norm plus ln1_post / ln2_post on the outputs (Gemma 2/3) */
    LENS_NORM_AFTER,    /* ln1 / ln2 on the outputs only (OLMo 2) */
} lens_norm_placement;

typedef enum lens_qk_norm {
    LENS_QK_NORM_NONE,
    LENS_QK_NORM_PER_HEAD, /* RMSNorm over each head's d_head (Qwen3, Gemma 3) */
    LENS_QK_NORM_WHOLE,    /* RMSNorm over all heads at once (OLMo 2) */
} lens_qk_norm;

typedef enum lens_positions {
    LENS_POS_STANDARD, /* learned W_pos added to the embeddings */
    LENS_POS_ROTARY,   /* rotary embeddings of q and k */
} lens_positions;

/* Rotary embeddings: which values rotate, how they pair and their frequencies. */
typedef struct lens_rotary {
    int dim;           /* values of each head that rotate (even, <= d_head) */
    bool interleaved;  /* GPT-J's adjacent pairs; else GPT-NeoX's halves */
    double base;       /* theta of the global layers */
    double base_local; /* theta of the local (sliding-window) layers */
    /* frequency scaling of the global layers: "linear" divides every
     * frequency by factor; "llama3" is Llama 3.1's NTK-by-parts */
    enum { LENS_ROPE_PLAIN, LENS_ROPE_LINEAR, LENS_ROPE_LLAMA3 } scaling;
    double factor, low_freq_factor, high_freq_factor;
    int original_context;
} lens_rotary;

typedef enum lens_act {
    LENS_ACT_RELU,
    LENS_ACT_GELU,
    LENS_ACT_GELU_NEW,
    LENS_ACT_GELU_FAST,
    LENS_ACT_SILU,
    LENS_ACT_SOLU_LN,
} lens_act;

/* Weight processing steps, as TransformerLens's from_pretrained flags. */
enum {
    LENS_PROC_FOLD_LN = 1 << 0,
    LENS_PROC_CENTER_WRITING_WEIGHTS = 1 << 1,
    LENS_PROC_CENTER_UNEMBED = 1 << 2,
    LENS_PROC_FOLD_VALUE_BIASES = 1 << 3,
    LENS_PROC_REFACTOR_FACTORED_ATTN_MATRICES = 1 << 4,
};
#define LENS_PROC_DEFAULT                                                                          \
    (LENS_PROC_FOLD_LN | LENS_PROC_CENTER_WRITING_WEIGHTS | LENS_PROC_CENTER_UNEMBED |             \
     LENS_PROC_FOLD_VALUE_BIASES)
#define LENS_PROC_NONE 0

typedef struct lens_config {
    char architecture[64]; /* original_architecture, e.g. "GPT2LMHeadModel" */
    int n_layers, d_model, n_heads, d_head, d_mlp, n_ctx, d_vocab, d_vocab_out;
    int n_kv_heads; /* key/value heads: n_heads, or fewer with grouped-query attention */
    lens_act act_fn;
    lens_norm normalization; /* in force now (fold_ln turns LN into LNPre, RMS into RMSPre) */
    lens_norm_placement norm_placement;
    lens_qk_norm qk_norm;
    float eps;
    lens_positions positions;
    lens_rotary rotary;
    bool gated_mlp;
    bool parallel_attn_mlp; /* attention and MLP both read resid_pre (NeoX, GPT-J, Phi) */
    bool shared_ln;         /* the MLP reads ln1's output: there is no ln2 (GPT-J, Phi) */
    float attn_softcap;     /* > 0: scores become cap * tanh(scores / cap) (Gemma 2) */
    float logit_softcap;    /* > 0: the same on the final logits */
    bool use_attn_scale;
    float attn_scale; /* scores are divided by this (sqrt(d_head) by default) */
    bool scale_attn_by_inverse_layer_idx;
    bool attn_only;
    bool causal; /* attention_dir "causal" (else "bidirectional") */
    bool use_local_attn;
    int window_size;
    bool *layer_is_local; /* [n_layers], all false without local attention */
    bool use_attn_result, use_split_qkv_input, use_hook_mlp_in, use_attn_in, use_hook_tokens;
    bool default_prepend_bos;
    /* the score the causal, window and attention masks give a masked key:
     * -INFINITY (TL's IGNORE buffer today), or the IGNORE value an older
     * TL checkpoint carries (-1e5); 0 in a hand-built config means -INFINITY */
    float masked_score;
} lens_config;

typedef struct lens_layer_weights {
    float *ln1_w, *ln1_b;
    float *W_Q, *W_K, *W_V, *b_Q, *b_K, *b_V;
    float *q_norm_w, *k_norm_w;
    float *W_O, *b_O;
    float *ln1_post_w;
    float *ln2_w, *ln2_b;
    float *W_gate, *W_in, *b_in, *W_out, *b_out;
    float *mlp_ln_w, *mlp_ln_b;
    float *ln2_post_w;
} lens_layer_weights;

typedef struct lens_weights {
    float *W_E, *W_pos;
    lens_layer_weights *layers; /* [n_layers] */
    float *ln_final_w, *ln_final_b;
    float *W_U, *b_U;
    float *rotary_cos[2], *rotary_sin[2]; /* [n_ctx, rotary.dim / 2]: global, local */
} lens_weights;

/* How text becomes a batch for this model (TransformerLens's to_tokens). */
typedef struct lens_token_rules {
    int32_t bos_id, eos_id, pad_id; /* -1 when the model has none */
    bool append_eos;                /* list tokenizers that end prompts with EOS */
    bool mask_pad_keys;             /* keys at pad tokens get score -1e5 */
} lens_token_rules;

typedef struct lens_model {
    char *name;   /* as the user called it */
    char *source; /* the directory or file it was loaded from */
    lens_config cfg;
    lens_weights w;
    lens_tokenizer *tok; /* NULL: token ids only */
    lens_token_rules rules;
    unsigned processing;        /* LENS_PROC_* flags applied to w */
    size_t n_weight_floats;     /* in the tensors of w */
    size_t n_nonfinite_weights; /* NaN/inf seen while loading (allowed, reported) */
    void *arena;                /* one mapping holding every tensor of w, freed with the model */
    size_t arena_bytes;
    lk_device *device;  /* where forwards run: the CPU unless lens_model_place moved it */
    lens_weights dw;    /* the weights as that device addresses them (w itself on the CPU) */
    void *device_block; /* the device's copy of the weights; NULL on the CPU */
    size_t device_bytes;
} lens_model;

/* What a caller may ask for when loading. */
typedef struct lens_load_opts {
    int processing; /* LENS_PROC_* flags, or -1 for the model's own default */
    bool use_attn_result, use_split_qkv_input, use_hook_mlp_in, use_attn_in;
    /* held around the weight processing (BLAS and LAPACK on the CPU), not
     * the reading of the files before it; NULL for none */
    pthread_mutex_t *processing_lock;
} lens_load_opts;

/* Loads a model named by spec: a Hugging Face model directory (config.json),
 * a TransformerLens-native model (a directory holding tl_config.json, or
 * that JSON file itself), a Hugging Face id found in the local cache
 * ($HF_HOME/hub or ~/.cache/huggingface/hub), or a TransformerLens alias of
 * one ("gpt2-small"). Weights are validated, converted to the internal
 * layout and processed as opts says (HF models default to from_pretrained's
 * processing, native ones to the "processing" entry of their config).
 * Returns NULL on error with a message naming the file and tensor or field. */
lens_model *lens_model_load(const char *spec, const lens_load_opts *opts, lens_err *err);

/* Copies the weights to dev in one allocation and makes dev the device the
 * model's forwards run on; the host weights stay (for analyses that read
 * them). Placing on the CPU device drops a device copy. Returns -1 with the
 * model unchanged when the device lacks the memory (LENS_ERR_NO_MEMORY, the
 * message says how much was needed and free) or fails. */
int lens_model_place(lens_model *m, lk_device *dev, lens_err *err);

/* Frees everything the model owns. Accepts NULL. */
void lens_model_free(lens_model *model);

/* Writes the names of the processing flags in `flags` as a comma list
 * ("fold_ln,center_writing_weights"; "none" when empty) into buf. */
void lens_processing_names(unsigned flags, char *buf, size_t buflen);

/* Parses "default", "none" or a comma list of flag names into *flags.
 * Returns -1 naming the unknown flag. */
int lens_processing_parse(const char *spec, unsigned *flags, lens_err *err);

/* The TransformerLens name of an activation function or normalisation. */
const char *lens_act_name(lens_act act);
const char *lens_norm_name(lens_norm norm);

#endif
