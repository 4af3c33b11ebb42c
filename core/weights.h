/*
 * weights.h: a model's parameters as TransformerLens's state_dict() names
 * and shapes them (embed.W_E, blocks.0.attn.W_Q [n_heads, d_model, d_head],
 * ...), read out of lensd's internal layout (model.h) as the model runs with
 * them: after its weight processing, so a folded LayerNorm has no weights.
 *
 * Parameters only, never buffers (TL's attn.mask, attn.IGNORE, rotary
 * sin/cos tables): what a researcher reads as model.W_Q or state_dict().
 * Pure functions over the host copy of the weights (model->w, which stays
 * when a model is placed on a GPU): nothing here allocates.
 */
#ifndef LENS_WEIGHTS_H
#define LENS_WEIGHTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/model.h"

/* How a parameter's TL values come from the internal tensor. */
typedef enum lens_param_layout {
    LENS_PARAM_SAME,   /* the internal bytes are TL's (W_E, W_O [h*dh, d] = [h, dh, d], ...) */
    LENS_PARAM_HEADS,  /* internal [d, n*dh] (heads side by side) is TL's [n, d, dh] */
    LENS_PARAM_ZEROS,  /* lensd keeps none: TL's zeros (a bias the checkpoint lacks) */
    LENS_PARAM_ABSENT, /* only under another processing (listed with any_processing) */
} lens_param_layout;

/* One parameter: its TL name and shape, and where its values are. */
typedef struct lens_param {
    char name[64]; /* "blocks.3.attn.W_Q" */
    int ndim;
    int64_t shape[3];
    const float *src; /* the internal tensor (NULL for ZEROS and ABSENT) */
    lens_param_layout layout;
} lens_param;

/* Lists the parameters of m's TL state dict, in TL's order, into
 * out[0 .. cap - 1] (out may be NULL with cap 0 to count them). With
 * any_processing, also lists (as LENS_PARAM_ABSENT) the normalisation
 * weights that the checkpoint has but m's processing folded away, so the
 * list holds every name some processing of the checkpoint has; shapes do
 * not depend on the processing. Returns how many there are (only the first
 * cap written). Can't fail. */
int lens_params_list(const lens_model *m, bool any_processing, lens_param *out, int cap);

/* The number of values of p (the product of its shape). */
size_t lens_param_numel(const lens_param *p);

/* Writes p's values in TL's layout into dst[lens_param_numel(p)]. An ABSENT
 * parameter has no values: dst is left as it is. */
void lens_param_read(const lens_param *p, float *dst);

/* The index of the parameter called name in list[n], or -1 when there is
 * none; then near[0 .. *n_near - 1] (at most 3) are the indices of the
 * names closest to it by edit distance, closest first, for a "did you
 * mean". Can't fail. */
int lens_params_find(const lens_param *list, int n, const char *name, int near[3], int *n_near);

/* The layout conversion behind LENS_PARAM_HEADS: src is lensd's [d, n*dh]
 * (row i holds every head's dh values side by side), dst is TL's
 * [n, d, dh]: dst[k][i][j] = src[i][k*dh + j]. */
void lens_heads_to_tl(const float *src, int d, int n, int dh, float *dst);

#endif
