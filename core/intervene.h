/*
 * intervene.h: interventions at hook points (TransformerLens's run_with_hooks
 * with the usual hook functions): zero, set, add, scale, and copy from
 * another run (patching; mean ablation copies the batch mean of a clean run),
 * each restricted to positions and heads. Plugs into lens_run_cache
 * (capture.h) as its intervention.
 */
#ifndef LENS_INTERVENE_H
#define LENS_INTERVENE_H

#include "core/capture.h"

typedef enum lens_op {
    LENS_OP_ZERO,
    LENS_OP_SET,   /* value: one number, or one per entry of the last axis */
    LENS_OP_ADD,   /* value, as for SET */
    LENS_OP_SCALE, /* factor */
    LENS_OP_COPY,  /* from source: the same hook in another run of the same shape */
} lens_op;

typedef struct lens_intervention {
    lens_hook hook;
    lens_op op;
    const int32_t *positions; /* positions (on the hook's position axis) it applies to; NULL: all */
    int n_positions;
    const int32_t *heads; /* heads it applies to; NULL: all */
    int n_heads;
    const float *value; /* SET, ADD: value_len 1 or the last axis's length */
    int value_len;
    float factor;
    const lens_captured *source; /* COPY: [B or 1, ...] with the hook's other dims */
} lens_intervention;

/* What lens_intervene applies. */
typedef struct lens_intervention_list {
    const lens_config *cfg;
    const lens_intervention *items;
    int n;
} lens_intervention_list;

/* The head axis of a hook's activation (2 for [batch, pos, head, ...], 1 for
 * attention scores, patterns and the hooks laid out heads first), or -1
 * where it has none. */
int lens_hook_head_axis(const lens_config *cfg, lens_hook_kind kind);

/* Applies every item of user (a lens_intervention_list) whose hook is hook
 * to act, rows row0.. of the batch. Matches lens_cache_request.intervention.
 * Returns -1 for an activation whose shape the item does not fit. */
int lens_intervene(void *user, lens_hook hook, lens_tensor *act, int row0, lens_err *err);

/* Mean ablation's source: *mean is t's mean over its first axis (prompts),
 * of shape [1, ...], its data malloc'd (the caller frees it). Sums in double.
 * Returns -1 when out of memory. */
int lens_batch_mean(const lens_captured *t, lens_captured *mean);

#endif
