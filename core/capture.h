/*
 * capture.h: run_with_cache — the activations of chosen hook points, cut to
 * chosen positions, gathered into host tensors while a batch runs in chunks
 * of rows that keep the activation memory bounded.
 */
#ifndef LENS_CAPTURE_H
#define LENS_CAPTURE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/forward.h"
#include "core/prompt.h"

/* One captured activation, in TransformerLens's shape (the position axis cut
 * to the kept positions). */
typedef struct lens_captured {
    lens_hook hook;
    char name[96];
    lens_dtype dtype; /* LENS_F32, or LENS_I64 for hook_tokens (as TL stores ids) */
    int ndim;
    int64_t shape[LENS_MAX_DIMS];
    void *data; /* owned */
} lens_captured;

/* What to capture. */
typedef struct lens_cache_request {
    const uint8_t *enabled;   /* [lens_hook_slots(cfg)]: hook points to capture */
    const int32_t *positions; /* positions to keep, each in [0, T); NULL: all */
    int n_positions;
    bool logits;                    /* compute the logits too */
    const int32_t *logit_positions; /* [B]: one logit row per prompt there; NULL: every position */
    /* Interventions: at the hook points of intervene ([slots], or NULL for
     * none), intervention runs first and may change the activation in place
     * (its row0 argument locates the chunk's first prompt in the batch);
     * what it leaves is what the model and the capture see. */
    const uint8_t *intervene;
    int (*intervention)(void *user, lens_hook hook, lens_tensor *act, int row0, lens_err *err);
    void *intervention_user;
} lens_cache_request;

/* The result: tensors in TL's firing order, and the logits. */
typedef struct lens_cache {
    int B, T;
    lens_captured *tensors;
    int n;
    float *
        logits; /* [B, T, d_vocab_out], or [B, d_vocab_out] at logit_positions; NULL if not asked */
} lens_cache;

/* The axis a position slice cuts: the query axis (2) of attention scores and
 * patterns and of the hooks laid out heads first (lens_hook_heads_first),
 * axis 1 of everything else (TL's pos_slice, see capture.c). */
int lens_capture_pos_axis(const lens_config *cfg, lens_hook_kind kind);

/* Runs the batch capturing what req asks into out. out must be zeroed, or
 * hold the result of an earlier call with the same model, batch shape and
 * request, whose buffers are then reused (timing loops). Returns -1 with a
 * message (out of memory, or lens_forward's errors); out is then left for
 * lens_cache_free. */
int lens_run_cache(const lens_model *m, lens_workspace *ws, const lens_token_batch *batch,
                   const lens_cache_request *req, lens_cache *out, lens_err *err);

/* The bytes lens_run_cache allocates for req's tensors and logits on a
 * B x T batch (the kept positions counted as listed, repeats included):
 * what a caller checks against its memory limits before running. */
size_t lens_cache_bytes(const lens_config *c, int B, int T, const lens_cache_request *req);

/* The captured tensor of hook (kind, layer), or NULL. */
const lens_captured *lens_cache_find(const lens_cache *cache, lens_hook_kind kind, int layer);

/* Frees what a cache owns (accepts a zeroed one). */
void lens_cache_free(lens_cache *cache);

#endif
