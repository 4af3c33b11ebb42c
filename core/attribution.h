/*
 * attribution.h: logit attribution as TransformerLens's ActivationCache does
 * it (apply_ln_to_stack, then logit_attrs): components of the residual
 * stream, put through the final LayerNorm's cached scale, projected on a
 * residual direction (W_U[:, answer] - W_U[:, wrong answer]).
 */
#ifndef LENS_ATTRIBUTION_H
#define LENS_ATTRIBUTION_H

#include <stddef.h>
#include <stdint.h>

#include "core/capture.h"
#include "core/model.h"

/* The residual stacks TransformerLens's ActivationCache makes, one row of
 * d_model per component:
 * - accumulated_resid: resid_pre of each layer (and resid_mid, where the
 *   model has MLPs), then the last resid_post: labels "0_pre", "0_mid", ...,
 *   "final_post";
 * - decompose_resid: embed, pos_embed, then each layer's attn_out (and
 *   mlp_out): "embed", "pos_embed", "0_attn_out", "0_mlp_out", ...;
 * - stack_head_results: each head's result z[h] @ W_O[h] (no b_O), layer by
 *   layer: "L0H0", "L0H1", .... */
typedef enum lens_stack_kind {
    LENS_STACK_ACCUMULATED,
    LENS_STACK_DECOMPOSE,
    LENS_STACK_HEADS,
} lens_stack_kind;

/* The number of components of a stack. */
int lens_stack_size(const lens_config *c, lens_stack_kind kind);

/* Component i's label (see above) into buf[n]. */
void lens_stack_label(const lens_config *c, lens_stack_kind kind, int i, char *buf, size_t n);

/* Sets in enabled[lens_hook_slots(c)] the hook points the stack reads, and
 * the final LayerNorm's scale (for apply_ln_to_stack) where the model has
 * one. */
void lens_stack_hooks(const lens_config *c, lens_stack_kind kind, uint8_t *enabled);

/* stack[lens_stack_size, d_model]: the components of prompt b at position
 * pos, from a cache with lens_stack_hooks's hook points ([B, T, ...] each). */
void lens_stack(const lens_model *m, const lens_cache *cache, lens_stack_kind kind, int b, int pos,
                float *stack);

/* out[i] = apply_ln(stack[i]) . direction for the n components stack[n, d]
 * of one prompt at one position, where apply_ln centres each component
 * (x - mean(x)) and divides it by scale, the final LayerNorm's hook_scale
 * at that position, when the model normalises with LN or LNPre; with no
 * normalisation the components are projected as they are. */
void lens_logit_attrs(const lens_config *c, const float *stack, int n, float scale,
                      const float *direction, float *out);

/* direction[d] = W_U[:, answer] - W_U[:, wrong] (wrong < 0: W_U[:, answer]),
 * from the model's host weights (W_U is [d, d_vocab_out]). */
void lens_logit_direction(const lens_model *m, int answer, int wrong, float *direction);

#endif
