/*
 * patch.h: activation patching sweeps — every get_act_patch_* function of
 * transformer_lens.patching, with the same output shapes and axis order,
 * computed as a few large batched passes instead of one forward per index.
 *
 * A sweep patches one activation at a time from the clean run into the
 * corrupted run (at a layer; a position, a head, a destination and source
 * position, or all of them, as TL's patch setters do, for every prompt of
 * the batch at once) and records the metric of each patched run. Patched
 * runs are stacked along the batch axis; with prefix reuse each pass starts
 * at the patched layer from the corrupted run's residual stream, since
 * nothing before that layer can change, and with causal attention a run
 * that patches one position computes only the positions from it on (from
 * the metric's, if that comes first), since nothing before it can change
 * either: their keys and values are the corrupted run's.
 */
#ifndef LENS_PATCH_H
#define LENS_PATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "core/forward.h"
#include "core/prompt.h"

typedef enum lens_sweep {
    LENS_SWEEP_RESID_PRE,                      /* [layer, pos] */
    LENS_SWEEP_RESID_MID,                      /* [layer, pos] */
    LENS_SWEEP_ATTN_OUT,                       /* [layer, pos] */
    LENS_SWEEP_MLP_OUT,                        /* [layer, pos] */
    LENS_SWEEP_ATTN_HEAD_OUT_BY_POS,           /* [layer, pos, head] (hook_z) */
    LENS_SWEEP_ATTN_HEAD_Q_BY_POS,             /* [layer, pos, head] */
    LENS_SWEEP_ATTN_HEAD_K_BY_POS,             /* [layer, pos, head] */
    LENS_SWEEP_ATTN_HEAD_V_BY_POS,             /* [layer, pos, head] */
    LENS_SWEEP_ATTN_HEAD_PATTERN_BY_POS,       /* [layer, head, dest] */
    LENS_SWEEP_ATTN_HEAD_PATTERN_DEST_SRC_POS, /* [layer, head, dest, src] */
    LENS_SWEEP_ATTN_HEAD_OUT_ALL_POS,          /* [layer, head] */
    LENS_SWEEP_ATTN_HEAD_Q_ALL_POS,            /* [layer, head] */
    LENS_SWEEP_ATTN_HEAD_K_ALL_POS,            /* [layer, head] */
    LENS_SWEEP_ATTN_HEAD_V_ALL_POS,            /* [layer, head] */
    LENS_SWEEP_ATTN_HEAD_PATTERN_ALL_POS,      /* [layer, head] */
    LENS_SWEEP_BLOCK_EVERY,                    /* [3, layer, pos]: resid_pre, attn_out, mlp_out */
    LENS_SWEEP_ATTN_HEAD_ALL_POS_EVERY,        /* [5, layer, head]: out, q, k, v, pattern */
    LENS_SWEEP_ATTN_HEAD_BY_POS_EVERY,         /* [5, layer, pos, head]: out, q, k, v, pattern
                                                  (pattern by destination position) */
    LENS_SWEEP_COUNT
} lens_sweep;

/* TL's function name without "get_act_patch_" ("resid_pre",
 * "attn_head_pattern_dest_src_pos", "block_every"). */
const char *lens_sweep_name(lens_sweep sweep);

/* The sweep named name, or -1. */
int lens_sweep_parse(const char *name, lens_sweep *out);

/* The output's axes for prompts of T positions: returns ndim (2 to 4) and
 * fills shape; *runs is the number of patched runs (TL's forward passes). */
int lens_sweep_shape(const lens_config *cfg, lens_sweep sweep, int T, int64_t shape[4], long *runs);

/* The axis names of the output, ndim of them ("component", "layer", "pos",
 * "head", "dest_pos", "src_pos"). */
void lens_sweep_axes(lens_sweep sweep, const char *names[4]);

/* The names of the stacked components of an _every sweep ("resid_pre",
 * "attn_out", ...), in order; returns how many (1 for the other sweeps,
 * whose one name is the hook's). */
int lens_sweep_components(lens_sweep sweep, const char *names[5]);

typedef enum lens_metric_kind {
    LENS_METRIC_LOGIT_DIFF, /* mean over prompts of logit[answer] - logit[wrong] */
    LENS_METRIC_LOGIT,      /* mean over prompts of logit[answer] */
} lens_metric_kind;

typedef struct lens_patch_metric {
    lens_metric_kind kind;
    const int32_t *answer;    /* [B] output ids, one per prompt */
    const int32_t *wrong;     /* [B] (logit difference only) */
    const int32_t *positions; /* [B] the position each prompt's metric reads */
    bool normalize;           /* (m - corrupted) / (clean - corrupted): corrupted 0, clean 1 */
} lens_patch_metric;

typedef struct lens_patch_request {
    lens_sweep sweep;
    const lens_token_batch *clean, *corrupted; /* the same B and T */
    lens_patch_metric metric;
    bool full_recompute;   /* every patched run from the embeddings at every position (the
                              reference path) instead of from its layer's corrupted residual
                              stream at the positions it can change */
    long max_batch_tokens; /* positions computed per pass; 0: LENS_PATCH_BATCH_TOKENS on the
                              CPU, as many as fit in a quarter of a GPU's free memory (up to
                              LENS_PATCH_MAX_BATCH_TOKENS) */
    /* Called after each pass with runs done and in all; a nonzero return
     * cancels the sweep (lens_patch then fails with "cancelled"). May be NULL. */
    int (*progress)(void *user, long done, long total);
    void *progress_user;
} lens_patch_request;

#define LENS_PATCH_BATCH_TOKENS 4096
#define LENS_PATCH_MAX_BATCH_TOKENS 65536

typedef struct lens_patch_result {
    int ndim;
    int64_t shape[4];
    float *values; /* owned: the metric of each patched run, in TL's layout */
    double clean_metric, corrupted_metric; /* unpatched runs (before normalizing) */
    long runs;                             /* patched runs */
    long unchanged_runs;  /* of them, those whose patch is, for every prompt, what the
                             corrupted run has there (bit for bit): each is the corrupted
                             run, its value the corrupted metric, and it is not computed
                             (lens_patch without full recomputation; else 0) */
    long passes;          /* batched forward passes the others took */
    long block_positions; /* their work: positions computed x blocks they ran through,
                             summed over the passes (for lens_patch with full
                             recomputation, runs x prompts x T x n_layers) */
} lens_patch_result;

/* Runs the sweep. Returns 0 with out filled, or -1 with a message: batches
 * that differ in shape, a sweep whose hook point the model lacks (resid_mid
 * and mlp_out of attention-only models), an answer id outside the output
 * vocabulary, a metric position outside the prompts, cancellation, or
 * lens_forward's errors (code LENS_ERR_NO_MEMORY / LENS_ERR_DEVICE). */
int lens_patch(const lens_model *m, lens_workspace *ws, const lens_patch_request *req,
               lens_patch_result *out, lens_err *err);

/* Path patching to heads (the IOI paper's; ARENA's get_path_patching_to_heads
 * with orig = corrupted, new = clean). For every sender head (layer below
 * the last receiver layer): (1) run the corrupted prompts with every
 * head's hook_z frozen to its corrupted value except the sender's, taken
 * from the clean run, and record the receivers' input (hook_q, hook_k or
 * hook_v of each receiver head); (2) run the corrupted prompts with only
 * those receiver inputs replaced by what (1) recorded, and take the
 * metric. The result is [max receiver layer, n_heads]. */
typedef struct lens_path_request {
    const lens_token_batch *clean, *corrupted; /* the same B and T */
    lens_patch_metric metric;
    const int (*receivers)[2]; /* [n_receivers] {layer, head} */
    int n_receivers;
    lens_hook_kind receiver_input; /* LENS_HOOK_Q, LENS_HOOK_K or LENS_HOOK_V */
    bool full_recompute;           /* both steps from the embeddings (else from the first layer
                                      each can change) */
    long max_batch_tokens;         /* as lens_patch_request's */
    int (*progress)(void *user, long done, long total);
    void *progress_user;
} lens_path_request;

/* Runs the path patching. Errors as lens_patch's, and a receiver outside the
 * model, receivers all in layer 0 (no sender can reach them), or a
 * receiver input other than q, k, v. */
int lens_path_patch(const lens_model *m, lens_workspace *ws, const lens_path_request *req,
                    lens_patch_result *out, lens_err *err);

/* Frees what a result owns (accepts a zeroed one). */
void lens_patch_result_free(lens_patch_result *r);

#endif
