/*
 * forward.h: the one forward pass, with TransformerLens's hook points.
 *
 * A run takes a batch of token ids and a plan: which hook points fire (a
 * per-model table of slots, hooks.h) and the callback that receives each
 * activation. The callback may read the activation (a cache) or overwrite it
 * in place (an intervention); points that are not enabled cost nothing.
 *
 * The pass runs on the model's device (model.h, lens_model_place). The
 * callback always sees host memory: on a GPU each enabled activation is
 * copied once into a page-locked host buffer (and back when the run says the
 * callback may modify it). Runs with no hook enabled are recorded once per
 * batch shape and replayed (CUDA graphs).
 */
#ifndef LENS_FORWARD_H
#define LENS_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "core/hooks.h"
#include "core/model.h"

/* A view of one activation at a hook point, in TL's shape and memory order. */
typedef struct lens_tensor {
    void *data;
    lens_dtype dtype; /* LENS_F32, or LENS_I32 for hook_tokens */
    int ndim;
    int64_t shape[LENS_MAX_DIMS];
} lens_tensor;

/* Receives the activation at an enabled hook point. It may change the values
 * in place. Returning -1 (with err filled) stops the run with that error. */
typedef int (*lens_hook_fn)(void *user, lens_hook hook, lens_tensor *act, lens_err *err);

typedef struct lens_batch {
    int B, T;
    const int32_t *tokens;    /* [B, T] */
    const uint8_t *attn_mask; /* [B, T], 1 = a real token; NULL = none (as TL with right
                                 padding: pads are attended to, real positions unaffected) */
} lens_batch;

typedef struct lens_run {
    const uint8_t *hooks_enabled; /* [lens_hook_slots(cfg)], or NULL for none */
    lens_hook_fn on_hook;
    void *user;
    bool hooks_modify; /* on_hook may change activations (copied back to the device) */
    float *logits; /* out: [B, T, d_vocab_out], or [B, d_vocab_out] at logit_positions;
                      NULL to skip the unembedding */
    const int32_t *logit_positions; /* [B] or NULL for every position */
    int start_layer; /* the first block to run; 0 (the default): the whole pass */
    const float *resid_start; /* with start_layer > 0: host [B, T, d_model], the residual
                                 stream entering that block (hook_resid_pre of start_layer,
                                 which fires on it); embeddings and earlier blocks are skipped */
} lens_run;

#define LENS_MAX_GRAPHS 8

/* A recorded hook-free run, replayed for the same model and batch shape. */
typedef struct lens_graph_entry {
    const lens_model *model;
    int B, T;
    bool masked, at_positions, logits;
    lk_graph *graph;
} lens_graph_entry;

/* Scratch memory for activations on the model's device, grown as needed and
 * reused between runs so that nothing is allocated per token, with the
 * recorded runs that depend on its addresses and on the models it ran. One
 * per thread that runs forwards; free it before the models it ran.
 * Zero-initialise before first use. */
typedef struct lens_workspace {
    lk_device *dev; /* where buf lives (set at first use) */
    void *buf;
    size_t cap;  /* bytes */
    void *stage; /* page-locked host copy of one activation, off the CPU */
    size_t stage_cap;
    lens_graph_entry graphs[LENS_MAX_GRAPHS];
    int n_graphs;
} lens_workspace;

/* Frees the workspace's memory and graphs. */
void lens_workspace_free(lens_workspace *ws);

/* Runs the model on the batch. Returns 0, or -1 with a message for a token
 * outside the vocabulary, a batch longer than n_ctx, a logit position
 * outside the batch, a start layer outside the model (or without its
 * residual stream), an error returned by the hook callback, a device
 * without the memory for the activations (code LENS_ERR_NO_MEMORY) or a
 * device failure (LENS_ERR_DEVICE). */
int lens_forward(const lens_model *m, lens_workspace *ws, const lens_batch *batch,
                 const lens_run *run, lens_err *err);

#endif
