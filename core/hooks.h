/*
 * hooks.h: TransformerLens's hook points as lensd names them internally.
 *
 * A hook point is (kind, layer): an enum and an int, never a string on the
 * hot path. Names ("blocks.3.attn.hook_pattern") are parsed once, when a
 * request is validated. Which points exist depends on the config exactly as
 * in TransformerLens (use_attn_result adds attn.hook_result, attn_only
 * removes the MLP's, normalization None removes the LN's, ...).
 */
#ifndef LENS_HOOKS_H
#define LENS_HOOKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/model.h"
#include "core/safetensors.h"

/* In the order TransformerLens fires them within a forward pass. */
typedef enum lens_hook_kind {
    LENS_HOOK_TOKENS,
    LENS_HOOK_EMBED,
    LENS_HOOK_POS_EMBED,
    LENS_HOOK_RESID_PRE, /* first per-layer kind */
    LENS_HOOK_ATTN_IN,
    LENS_HOOK_Q_INPUT,
    LENS_HOOK_K_INPUT,
    LENS_HOOK_V_INPUT,
    LENS_HOOK_LN1_SCALE,
    LENS_HOOK_LN1_NORMALIZED,
    LENS_HOOK_Q,
    LENS_HOOK_K,
    LENS_HOOK_V,
    LENS_HOOK_Q_NORM_SCALE,
    LENS_HOOK_Q_NORM_NORMALIZED,
    LENS_HOOK_K_NORM_SCALE,
    LENS_HOOK_K_NORM_NORMALIZED,
    LENS_HOOK_ROT_Q,
    LENS_HOOK_ROT_K,
    LENS_HOOK_ATTN_SCORES,
    LENS_HOOK_PATTERN,
    LENS_HOOK_Z,
    LENS_HOOK_RESULT,
    LENS_HOOK_LN1_POST_SCALE,
    LENS_HOOK_LN1_POST_NORMALIZED,
    LENS_HOOK_ATTN_OUT,
    LENS_HOOK_RESID_MID,
    LENS_HOOK_MLP_IN,
    LENS_HOOK_LN2_SCALE,
    LENS_HOOK_LN2_NORMALIZED,
    LENS_HOOK_MLP_PRE,
    LENS_HOOK_MLP_PRE_LINEAR,
    LENS_HOOK_MLP_MID,
    LENS_HOOK_MLP_LN_SCALE,
    LENS_HOOK_MLP_LN_NORMALIZED,
    LENS_HOOK_MLP_POST,
    LENS_HOOK_LN2_POST_SCALE,
    LENS_HOOK_LN2_POST_NORMALIZED,
    LENS_HOOK_MLP_OUT,
    LENS_HOOK_RESID_POST, /* last per-layer kind */
    LENS_HOOK_LN_FINAL_SCALE,
    LENS_HOOK_LN_FINAL_NORMALIZED,
    LENS_HOOK_UNEMBED_IN,
    LENS_HOOK_UNEMBED_OUT,
    LENS_HOOK_KIND_COUNT,
} lens_hook_kind;

typedef struct lens_hook {
    lens_hook_kind kind;
    int layer; /* 0 for the kinds outside the blocks */
} lens_hook;

/* The hook whose values attention's scores read as keys: hook_rot_k in
 * rotary models (keys after their norm and rotation), hook_k otherwise.
 * Runs that continue another (forward.h's lens_suffix) take its keys from
 * here. */
lens_hook_kind lens_attention_keys(const lens_config *cfg);

/* True for hooks whose activation TL lays out heads before positions
 * ([B, heads, T, ...]) although lensd computes it positions first
 * ([B, T, heads, ...]): the per-head q/k norms, which TransformerBridge
 * hooks inside Hugging Face's attention. The forward pass transposes them
 * for the hook callback. */
bool lens_hook_heads_first(const lens_config *cfg, lens_hook_kind kind);

/* True for kinds that exist once per block. */
bool lens_hook_is_per_layer(lens_hook_kind kind);

/* True when the hook point exists for this config (TL's gating). */
bool lens_hook_exists(const lens_config *cfg, lens_hook_kind kind);

/* Number of slots in a per-model hook table, and the slot of a hook. */
size_t lens_hook_slots(const lens_config *cfg);
size_t lens_hook_slot(const lens_config *cfg, lens_hook hook);

/* Writes TL's name for hook into buf ("blocks.0.attn.hook_q"). */
void lens_hook_name(lens_hook hook, char *buf, size_t buflen);

/* Parses a full TL hook name, or one of TransformerBridge's canonical names
 * for the same point ("blocks.0.hook_in" for blocks.0.hook_resid_pre,
 * "blocks.0.attn.q.hook_out" for blocks.0.attn.hook_q, ...). Returns -1
 * with a message listing the nearest names when it is not a hook point of
 * this model. */
int lens_hook_parse(const lens_config *cfg, const char *name, lens_hook *out, lens_err *err);

/* TL's shape of the activation at hook for a batch of B prompts of T
 * positions; returns ndim and fills shape. hook_tokens is int64, all others
 * float32 (see lens_hook_dtype). */
int lens_hook_shape(const lens_config *cfg, lens_hook hook, int B, int T,
                    int64_t shape[LENS_MAX_DIMS]);
lens_dtype lens_hook_dtype(lens_hook_kind kind);

/* Calls fn(user, hook) for every hook point of the model in firing order. */
void lens_hook_foreach(const lens_config *cfg, void (*fn)(void *user, lens_hook hook), void *user);

/* Sets enabled[slot] = 1 for every hook point whose name matches the shell
 * glob pattern (fnmatch) or, when no name does, whose canonical
 * TransformerBridge name does (so TL's filters keep their meaning:
 * "blocks.1.attn.hook_*" does not take hook_attn_out through its alias
 * blocks.1.attn.hook_out). Returns the number of points matched. */
size_t lens_hook_select_glob(const lens_config *cfg, const char *pattern, uint8_t *enabled);

#endif
