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
 * callback may modify it). Plain runs (no hook enabled, from the embeddings,
 * every logit) are recorded once per batch shape and replayed (CUDA graphs).
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

/* Causal position reuse: row b of the batch computes only its positions
 * first[b] .. T-1. Under causal attention nothing at a later position can
 * change an earlier one, so at every block the run computes, the keys and
 * values of positions before first[b] are those of a reference run (the
 * unpatched prompt b % prompts), and the run starts from that run's
 * residual stream at the computed positions (lens_run.resid_start).
 *
 * The activations of such a run hold only the computed rows, packed prompt
 * after prompt (row b's positions first[b] .. T-1 after row b-1's): the hook
 * callback sees the batch and position axes as one axis of
 * N = sum of T - first[b] rows (hook_resid_pre [N, d_model], hook_z
 * [N, H, d_head]), and hook_attn_scores and hook_pattern as [H * N, T]
 * where row b's [H, T - first[b], T] block follows row b-1's. */
typedef struct lens_suffix {
    const int32_t *first;  /* [B] host, each in [0, T) */
    int prompts;           /* the reference run's P prompts: row b continues prompt b % P */
    const float *const *k; /* [n_layers] host [P, T, n_kv_heads, d_head]: the reference
                              run's keys as attention reads them (lens_attention_keys:
                              hook_k, or hook_rot_k in rotary models), for the layers the
                              run computes */
    const float *const *v; /* the same for hook_v */
} lens_suffix;

/* Logits of chosen output ids only (lens_run.logit_ids): row b gets the
 * logits of ids[b % P] (the answers of prompt b % P, for runs stacked from
 * the same P prompts). */
typedef struct lens_logit_ids {
    const int32_t *ids; /* [P, n] host, each in [0, d_vocab_out) */
    int P, n;
} lens_logit_ids;

typedef struct lens_run {
    const uint8_t *hooks_enabled; /* [lens_hook_slots(cfg)], or NULL for none */
    lens_hook_fn on_hook;
    void *user;
    bool hooks_modify; /* on_hook may change activations (copied back to the device) */
    float *logits;     /* out: [B, T, d_vocab_out], or [B, d_vocab_out] at logit_positions;
                          NULL to skip the unembedding */
    const int32_t *logit_positions;  /* [B] or NULL for every position */
    const lens_logit_ids *logit_ids; /* NULL: every output; else (with logit_positions)
                                        logits is [B, n], those ids' logits only */
    int start_layer;                 /* the first block to run; 0 (the default): the whole pass */
    int end_layer;             /* > 0: stop before this block (no unembedding; logits must be NULL);
                                  0 (the default): run to the end */
    const float *resid_start;  /* NULL: the pass embeds the tokens (start_layer must be 0).
                                  Else host [B, T, d_model] (with a suffix: [N, d_model],
                                  packed), the residual stream entering start_layer
                                  (its hook_resid_pre fires on it); the embeddings and
                                  the blocks before it are skipped */
    const lens_suffix *suffix; /* NULL: every position; else causal position reuse (needs
                                  resid_start, and logit_positions if logits) */
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
 * outside the batch (or before its row's first computed position), a start
 * layer outside the model (or without its residual stream), an end layer
 * not after it (or with logits), a suffix on a model without causal
 * attention, an error returned by the hook callback, a device
 * without the memory for the activations (code LENS_ERR_NO_MEMORY) or a
 * device failure (LENS_ERR_DEVICE). */
int lens_forward(const lens_model *m, lens_workspace *ws, const lens_batch *batch,
                 const lens_run *run, lens_err *err);

/* The device memory, in bytes, lens_forward's workspace needs for this batch
 * and run (its activations; the weights are already placed). Only the
 * shapes count: the batch's tokens and the run's buffers are not read (a
 * caller sizes batches by it before building them). */
size_t lens_forward_bytes(const lens_model *m, const lens_batch *batch, const lens_run *run);

#endif
