/*
 * attribution.h: logit attribution as TransformerLens's ActivationCache does
 * it (apply_ln_to_stack, then logit_attrs): components of the residual
 * stream, put through the final LayerNorm's cached scale, projected on a
 * residual direction (W_U[:, answer] - W_U[:, wrong answer]).
 */
#ifndef LENS_ATTRIBUTION_H
#define LENS_ATTRIBUTION_H

#include "core/model.h"

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
