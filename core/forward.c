/*
 * forward.c: the forward pass of every model lensd loads, driven by its
 * lens_config, computing what TransformerLens's HookedTransformer computes
 * in the same order and firing the same hook points.
 *
 * Shapes: B batch, T positions, N = B*T rows (or, in a run with a suffix,
 * the computed rows: sum over b of Q_b = T - first[b], packed), d d_model,
 * h n_heads, kv n_kv_heads, dh d_head, hd = h*dh, kvd = kv*dh, m d_mlp,
 * V d_vocab_out. Activations live in one workspace; each buffer below is
 * carved from it per run.
 */
#include "core/forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/lk.h"

/* The score a masked key gets from mask_pad_keys: the value the ARENA
 * bracket-classifier code writes into hook_attn_scores. */
#define PAD_KEY_SCORE (-100000.0f)

/* Drops the recorded runs: they hold the workspace's old addresses. */
static void forget_graphs(lens_workspace *ws) {
    for (int i = 0; i < ws->n_graphs; i++)
        lk_graph_free(ws->dev, ws->graphs[i].graph);
    ws->n_graphs = 0;
}

void lens_workspace_free(lens_workspace *ws) {
    if (!ws->dev) return;
    forget_graphs(ws);
    lk_free(ws->dev, ws->buf);
    lk_host_free(ws->dev, ws->stage);
    *ws = (lens_workspace){0};
}

typedef struct forward_ctx {
    const lens_model *m;
    const lens_config *c;
    const lens_weights *w; /* on the device */
    lk_device *dev;
    lens_workspace *ws;
    const lens_batch *batch;
    const lens_run *run;
    int B, T;
    size_t N;
    const lens_suffix *suffix; /* run->suffix */
    const int32_t *first_row;  /* [B] host: each prompt's first row of the N */
    lk_query_rows queries;     /* the suffix's first positions and rows on the device */
    const int32_t *tokens;     /* [B, T] on the device */
    const uint8_t *attn_mask;  /* [B, T] on the device, or NULL */
    const int32_t *logit_rows; /* [B] on the device: the row of the N each prompt's logits
                                  come from; NULL for every row */
    const int32_t *logit_ids;  /* [P, n] on the device (run->logit_ids), or NULL */
    const int32_t *positions;  /* [N] on the device: each row's rotary position, or NULL */
    float *logits;             /* the unembedding's output on the device, or NULL */
    lens_err *err;
} forward_ctx;

/* The first computed position of prompt b and its first row of the N. */
static int first_position(const forward_ctx *x, int b) {
    return x->suffix ? x->suffix->first[b] : 0;
}

static size_t first_row(const forward_ctx *x, int b) {
    return (size_t)x->first_row[b];
}

/* The shape the hook callback sees (forward.h: packed in a suffix run). */
static int activation_shape(const forward_ctx *x, lens_hook hook, int64_t shape[LENS_MAX_DIMS]) {
    if (!x->suffix) return lens_hook_shape(x->c, hook, x->B, x->T, shape);
    if (lens_hook_heads_first(x->c, hook.kind)) {
        /* packed rows keep lensd's own order: [N, heads, 1 or d_head] */
        int64_t full[LENS_MAX_DIMS];
        lens_hook_shape(x->c, hook, 1, 1, full);
        shape[0] = (int64_t)x->N, shape[1] = full[1], shape[2] = full[3];
        return 3;
    }
    if (hook.kind == LENS_HOOK_ATTN_SCORES || hook.kind == LENS_HOOK_PATTERN) {
        shape[0] = (int64_t)x->c->n_heads * (int64_t)x->N;
        shape[1] = x->T;
        return 2;
    }
    const int ndim = lens_hook_shape(x->c, hook, 1, (int)x->N, shape);
    memmove(shape, shape + 1, (size_t)(ndim - 1) * sizeof *shape);
    return ndim - 1;
}

static bool enabled(const forward_ctx *x, lens_hook_kind kind, int layer) {
    const lens_run *r = x->run;
    return r->hooks_enabled && r->on_hook &&
           r->hooks_enabled[lens_hook_slot(x->c, (lens_hook){kind, layer})];
}

/* Makes the workspace's host staging buffer hold bytes. Returns 0 or -1. */
static int grow_stage(forward_ctx *x, size_t bytes) {
    lens_workspace *ws = x->ws;
    if (bytes <= ws->stage_cap) return 0;
    lk_host_free(ws->dev, ws->stage);
    ws->stage_cap = 0;
    if (!(ws->stage = lk_host_alloc(ws->dev, bytes))) {
        lens_err_set_code(x->err, LENS_ERR_NO_MEMORY,
                          "out of host memory: an activation needs %zu MB", bytes >> 20);
        return -1;
    }
    ws->stage_cap = bytes;
    return 0;
}

/* dst[b, j, i, :] = src[b, i, j, :] for src [B, I, J, X] (host memory). */
static void swap_axes(float *dst, const float *src, int64_t B, int64_t I, int64_t J, int64_t X) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < I; i++)
            for (int64_t j = 0; j < J; j++)
                memcpy(dst + ((b * J + j) * I + i) * X, src + ((b * I + i) * J + j) * X,
                       (size_t)X * sizeof *dst);
}

/* Calls the hook on host (the activation in lensd's [B, T, heads, X]
 * order) transposed to TL's [B, heads, T, X] (lens_hook_heads_first), and
 * writes changes back when the run lets the callback modify activations. */
static int fire_heads_first(forward_ctx *x, lens_hook hook, lens_tensor *t, float *host) {
    const int64_t B = t->shape[0], heads = t->shape[1], T = t->shape[2], X = t->shape[3];
    float *swapped = malloc((size_t)(B * heads * T * X) * sizeof *swapped);
    if (!swapped) {
        lens_err_set_code(x->err, LENS_ERR_NO_MEMORY, "out of host memory for an activation");
        return -1;
    }
    swap_axes(swapped, host, B, T, heads, X);
    t->data = swapped;
    int rc = x->run->on_hook(x->run->user, hook, t, x->err);
    if (rc == 0 && x->run->hooks_modify) swap_axes(host, swapped, B, heads, T, X);
    free(swapped);
    return rc;
}

/* Fires hook (kind, layer) on data if it is enabled. hook_tokens' data is
 * the batch's host tokens; other data is device memory, which the callback
 * sees through the staging buffer unless the device is the host. */
static int fire(forward_ctx *x, lens_hook_kind kind, int layer, void *data) {
    if (!enabled(x, kind, layer)) return 0;
    lens_hook hook = {kind, layer};
    lens_tensor t = {.data = data, .dtype = kind == LENS_HOOK_TOKENS ? LENS_I32 : LENS_F32};
    t.ndim = activation_shape(x, hook, t.shape);
    const bool heads_first = !x->suffix && lens_hook_heads_first(x->c, kind);
    if (kind == LENS_HOOK_TOKENS || lk_host_memory(x->dev))
        return heads_first ? fire_heads_first(x, hook, &t, data)
                           : x->run->on_hook(x->run->user, hook, &t, x->err);
    size_t bytes = sizeof(float);
    for (int i = 0; i < t.ndim; i++)
        bytes *= (size_t)t.shape[i];
    if (grow_stage(x, bytes)) return -1;
    lk_download(x->dev, x->ws->stage, data, bytes);
    t.data = x->ws->stage;
    if (heads_first ? fire_heads_first(x, hook, &t, x->ws->stage)
                    : x->run->on_hook(x->run->user, hook, &t, x->err))
        return -1;
    if (x->run->hooks_modify) lk_upload(x->dev, data, x->ws->stage, bytes);
    return 0;
}

typedef struct buffers {
    float *resid, *resid_mid, *normed, *scale;
    float *head_inputs[3]; /* q, k, v inputs [N, h, d] when heads split the attention input */
    float *q, *k, *v, *z, *scores, *pattern, *result, *attn_out;
    float *k_all, *v_all;       /* a suffix run's keys and values at every position */
    float *prefix_k, *prefix_v; /* off the host only: the reference run's [P, T, kvd] */
    float *mlp_in, *pre, *pre_linear, *post, *mlp_out, *final_rows;
    int32_t *positions;           /* off the host only, rotary models: [N] */
    float *logits;                /* off the host only: [N or B, V], or [B, n] of chosen ids */
    int32_t *tokens, *logit_rows; /* off the host only: [B, T], [B] */
    int32_t *logit_ids;           /* off the host only: [P, n] */
    int32_t *first, *first_row;   /* off the host only, with a suffix: [B], [B] */
    uint8_t *attn_mask;           /* off the host only: [B, T] */
} buffers;

static bool heads_split_input(const lens_config *c) {
    return c->use_split_qkv_input || c->use_attn_in;
}

/* Lays the buffers out from base (or only measures them, with base NULL)
 * and returns the bytes they take. */
static size_t lay_out(const forward_ctx *x, buffers *b, char *base) {
    const lens_config *c = x->c;
    const size_t N = x->N, B = (size_t)x->B, d = (size_t)c->d_model, h = (size_t)c->n_heads;
    const size_t hd = h * (size_t)c->d_head, m = (size_t)c->d_mlp;
    const size_t kvd = (size_t)c->n_kv_heads * (size_t)c->d_head;
    const size_t T = (size_t)x->T, attn = N * h * T;
    const bool split = heads_split_input(c), off_host = !lk_host_memory(x->dev);
    const bool rotary = c->positions == LENS_POS_ROTARY;
    const size_t suffix_kv = x->suffix ? B * T * kvd : 0;
    const size_t prefix_kv = x->suffix && off_host ? (size_t)x->suffix->prompts * T * kvd : 0;
    const size_t suffix_rows = x->suffix && off_host ? B * sizeof(int32_t) : 0;
    const lens_logit_ids *ids = x->run->logit_ids;
    const size_t logit_rows = x->run->logit_positions ? B : N;
    const size_t logit_cols = ids ? (size_t)ids->n : (size_t)c->d_vocab_out;
    const size_t id_count = ids && off_host ? (size_t)ids->P * ids->n : 0;
    const size_t f = sizeof(float);
    struct {
        void **dst;
        size_t bytes;
    } plan[] = {
        {(void **)&b->resid, N * d * f},
        {(void **)&b->resid_mid, N * d * f},
        {(void **)&b->normed, N * d * f},
        {(void **)&b->scale, N * h * f},
        {(void **)&b->head_inputs[0], split ? N * h * d * f : 0},
        {(void **)&b->head_inputs[1], split ? N * h * d * f : 0},
        {(void **)&b->head_inputs[2], split ? N * h * d * f : 0},
        {(void **)&b->q, N * hd * f},
        {(void **)&b->k, N * kvd * f},
        {(void **)&b->v, N * kvd * f},
        {(void **)&b->k_all, suffix_kv * f},
        {(void **)&b->v_all, suffix_kv * f},
        {(void **)&b->prefix_k, prefix_kv * f},
        {(void **)&b->prefix_v, prefix_kv * f},
        {(void **)&b->z, N * hd * f},
        {(void **)&b->scores, attn * f},
        {(void **)&b->pattern, attn * f},
        {(void **)&b->result, c->use_attn_result ? N * h * d * f : 0},
        {(void **)&b->attn_out, N * d * f},
        {(void **)&b->mlp_in, c->attn_only ? 0 : N * d * f},
        {(void **)&b->pre, N * m * f},
        {(void **)&b->pre_linear, c->gated_mlp ? N * m * f : 0},
        {(void **)&b->post, N * m * f},
        {(void **)&b->mlp_out, N * d * f},
        {(void **)&b->final_rows, B * d * f},
        {(void **)&b->logits, off_host && x->run->logits ? logit_rows * logit_cols * f : 0},
        {(void **)&b->logit_ids, id_count * sizeof(int32_t)},
        {(void **)&b->tokens, off_host ? B * T * sizeof(int32_t) : 0},
        {(void **)&b->logit_rows, off_host ? B * sizeof(int32_t) : 0},
        {(void **)&b->first, suffix_rows},
        {(void **)&b->first_row, suffix_rows},
        {(void **)&b->attn_mask, off_host ? B * T : 0},
        {(void **)&b->positions, off_host && rotary ? N * sizeof(int32_t) : 0},
    };
    const size_t n_plan = sizeof plan / sizeof plan[0];
    size_t total = 0;
    for (size_t i = 0; i < n_plan; i++) {
        if (base) *plan[i].dst = plan[i].bytes ? base + total : NULL;
        total += (plan[i].bytes + 63) & ~(size_t)63;
    }
    return total;
}

/* Lays the buffers out in the workspace (growing it, on the model's device)
 * and returns 0, or -1. */
static int carve(forward_ctx *x, buffers *b) {
    const size_t total = lay_out(x, b, NULL);
    lens_workspace *ws = x->ws;
    if (ws->dev != x->dev) lens_workspace_free(ws);
    ws->dev = x->dev;
    if (total > ws->cap) {
        forget_graphs(ws);
        lk_free(ws->dev, ws->buf);
        ws->cap = 0;
        if (!(ws->buf = lk_alloc(ws->dev, total))) {
            lk_device_info info;
            lk_device_describe(ws->dev, &info);
            lens_err_set_code(x->err, LENS_ERR_NO_MEMORY,
                              "%s: the activations of a %dx%d batch need %zu MB", info.name, x->B,
                              x->T, total >> 20);
            return -1;
        }
        ws->cap = total;
    }
    lay_out(x, b, ws->buf);
    return 0;
}

/* Points x at the batch's tokens, mask, logit rows (host logit_rows [B]),
 * rotary positions (host positions [N], or NULL) and suffix rows on the
 * device, uploading them off the host. */
static void place_inputs(forward_ctx *x, buffers *b, const int32_t *logit_rows,
                         const int32_t *positions) {
    const lens_batch *batch = x->batch;
    x->positions = positions;
    x->tokens = batch->tokens;
    x->attn_mask = batch->attn_mask;
    x->logit_rows = x->run->logit_positions ? logit_rows : NULL;
    x->logits = x->run->logits;
    x->logit_ids = x->run->logit_ids ? x->run->logit_ids->ids : NULL;
    if (x->suffix) x->queries = (lk_query_rows){x->suffix->first, x->first_row, (int)x->N};
    if (lk_host_memory(x->dev)) return;
    if (positions) {
        lk_upload(x->dev, b->positions, positions, x->N * sizeof(int32_t));
        x->positions = b->positions;
    }
    lk_upload(x->dev, b->tokens, batch->tokens, (size_t)x->B * x->T * sizeof(int32_t));
    x->tokens = b->tokens;
    if (batch->attn_mask) {
        lk_upload(x->dev, b->attn_mask, batch->attn_mask, (size_t)x->B * x->T);
        x->attn_mask = b->attn_mask;
    }
    if (x->logit_rows) {
        lk_upload(x->dev, b->logit_rows, x->logit_rows, (size_t)x->B * sizeof(int32_t));
        x->logit_rows = b->logit_rows;
    }
    if (x->logit_ids) {
        const lens_logit_ids *ids = x->run->logit_ids;
        lk_upload(x->dev, b->logit_ids, ids->ids, (size_t)ids->P * ids->n * sizeof(int32_t));
        x->logit_ids = b->logit_ids;
    }
    if (x->suffix) {
        lk_upload(x->dev, b->first, x->suffix->first, (size_t)x->B * sizeof(int32_t));
        lk_upload(x->dev, b->first_row, x->first_row, (size_t)x->B * sizeof(int32_t));
        x->queries.start = b->first;
        x->queries.row = b->first_row;
    }
    x->logits = b->logits;
}

/* hook_embed, hook_pos_embed, and their sum into resid. With an attention
 * mask, positions count real tokens only and pads get no position embedding
 * (TL's get_offset_position_ids). Rotary models have no position
 * embedding: their positions enter q and k. */
static int embed(forward_ctx *x, buffers *b) {
    const int d = x->c->d_model;
    if (fire(x, LENS_HOOK_TOKENS, 0, (void *)x->batch->tokens)) return -1;
    float *tok_embed = b->resid, *pos_embed = b->resid_mid;
    if (x->c->positions == LENS_POS_ROTARY) {
        lk_gather_rows(x->dev, tok_embed, x->w->W_E, x->tokens, (int)x->N, d);
        return fire(x, LENS_HOOK_EMBED, 0, tok_embed);
    }
    lk_embed(x->dev, tok_embed, pos_embed, x->w->W_E, x->w->W_pos, x->tokens, x->attn_mask, x->B,
             x->T, d);
    if (fire(x, LENS_HOOK_EMBED, 0, tok_embed)) return -1;
    if (fire(x, LENS_HOOK_POS_EMBED, 0, pos_embed)) return -1;
    lk_add(x->dev, b->resid, tok_embed, pos_embed, x->N * (size_t)d);
    return 0;
}

/* A LayerNorm or RMSNorm as TL runs it on rows of width C: hook_scale and
 * hook_normalized fire on (x - mean) / scale or x / scale, then the weight
 * (and a LayerNorm's bias) apply unless the norm is LNPre / RMSPre. out may
 * alias inp. */
static int normalize(forward_ctx *x, lens_norm norm, const float *w, const float *bias, float *out,
                     float *scale, const float *inp, size_t rows, int C, lens_hook_kind scale_hook,
                     lens_hook_kind normalized_hook, int layer) {
    const bool rms = norm == LENS_NORM_RMS || norm == LENS_NORM_RMSPRE;
    if (rms)
        lk_rmsnorm_pre(x->dev, out, scale, inp, (int)rows, C, x->c->eps);
    else
        lk_layernorm_pre(x->dev, out, scale, inp, (int)rows, C, x->c->eps);
    if (fire(x, scale_hook, layer, scale) || fire(x, normalized_hook, layer, out)) return -1;
    if (norm == LENS_NORM_LN || norm == LENS_NORM_RMS)
        lk_affine(x->dev, out, out, w, rms ? NULL : bias, (int)rows, C);
    return 0;
}

/* Scores of one layer: q.k / attn_scale, then TL's masks and the pad-key
 * mask (-1e5). TL applies the causal, local-window and attention masks
 * together, writing its IGNORE value at masked keys (-inf, or the -1e5 an
 * older checkpoint's IGNORE buffer holds: cfg.masked_score), and only to
 * causal attention: a bidirectional model attends to left-padding pads
 * unless the model masks pad keys itself.
 * keys: [B, T, hd]. */
static void attention_scores(const forward_ctx *x, const buffers *b, const float *keys, int layer) {
    const lens_config *c = x->c;
    const int B = x->B, T = x->T, h = c->n_heads, dh = c->d_head, hd = h * dh;
    const int kv = c->n_kv_heads, group = h / kv, kvd = kv * dh;
    float attn_scale = c->attn_scale;
    if (c->scale_attn_by_inverse_layer_idx) attn_scale *= (float)(layer + 1);
    // scores[bi, hi] (Q,T) = q[bi, :, hi, :] (Q,dh) @ keys[bi, :, hi / group, :]^T (T,dh), for
    // bi's Q query rows; heads sit side by side, and the group of query heads that share a key
    // head is one batched product
    for (int bi = 0; bi < B; bi++) {
        const int Q = T - first_position(x, bi);
        const size_t row = first_row(x, bi);
        for (int g = 0; g < kv; g++)
            lk_matmul_batched(x->dev, b->scores + (row * h + (size_t)g * group * Q) * T, T,
                              (size_t)Q * T, b->q + row * hd + (size_t)g * group * dh, hd,
                              (size_t)dh, keys + (size_t)bi * T * kvd + (size_t)g * dh, kvd, 0,
                              true, Q, dh, T, group);
    }
    const bool local = c->use_local_attn && c->layer_is_local[layer];
    const lk_score_mask mask = {
        .causal = c->causal,
        .window = local ? c->window_size : 0,
        .attn_mask = x->attn_mask,
        .tokens = x->tokens,
        .pad_id = x->m->rules.mask_pad_keys ? x->m->rules.pad_id : -1,
        .pad_score = PAD_KEY_SCORE,
        .masked_score = c->masked_score,
        .softcap = c->attn_softcap,
        .queries = x->queries,
    };
    lk_mask_scores(x->dev, b->scores, B, h, T, attn_scale, &mask);
}

/* q, k and v from the (normalised) attention input: one GEMM each, or one
 * per head when TL splits the input by head (use_split_qkv_input,
 * use_attn_in). */
static void project_qkv(const forward_ctx *x, const buffers *b, const lens_layer_weights *lw,
                        float *const inputs[3]) {
    const lens_config *c = x->c;
    const int d = c->d_model, dh = c->d_head;
    const int N = (int)x->N;
    const float *W[3] = {lw->W_Q, lw->W_K, lw->W_V};
    const float *bias[3] = {lw->b_Q, lw->b_K, lw->b_V};
    const int heads[3] = {c->n_heads, c->n_kv_heads, c->n_kv_heads};
    float *out[3] = {b->q, b->k, b->v};
    for (int i = 0; i < 3; i++) {
        const int width = heads[i] * dh;
        if (!heads_split_input(c)) {
            lk_matmul(x->dev, out[i], width, b->normed, d, W[i], width, bias[i], N, d, width,
                      false);
            continue;
        }
        for (int hi = 0; hi < heads[i]; hi++)
            lk_matmul(x->dev, out[i] + (size_t)hi * dh, width, inputs[i] + (size_t)hi * d,
                      heads[i] * d, W[i] + (size_t)hi * dh, width, bias[i] + (size_t)hi * dh, N, d,
                      dh, false);
    }
}

/* A suffix run's keys (or values) at every position into all [B, T, kvd]:
 * the reference run's host [P, T, kvd] before each row's first position
 * (staged in prefix off the host), the computed rows [N, kvd] after. */
static void join_prefix(const forward_ctx *x, float *all, float *prefix, const float *reference,
                        const float *computed) {
    const int P = x->suffix->prompts, T = x->T, kvd = x->c->n_kv_heads * x->c->d_head;
    const float *from = reference;
    if (!lk_host_memory(x->dev)) {
        lk_upload(x->dev, prefix, reference, (size_t)P * T * kvd * sizeof(float));
        from = prefix;
    }
    lk_splice_prefix(x->dev, all, from, computed, x->queries, x->B, P, T, kvd);
}

/* The input of attention (TL's ln1 of resid_pre, per head when the input
 * is split by head) into b->normed or b->head_inputs; *inputs say which. */
static int attention_input(forward_ctx *x, buffers *b, int layer, float *inputs[3]) {
    const lens_config *c = x->c;
    const lens_layer_weights *lw = &x->w->layers[layer];
    const int d = c->d_model, h = c->n_heads;
    const size_t N = x->N;
    const bool pre_norm =
        c->normalization != LENS_NORM_NONE && c->norm_placement != LENS_NORM_AFTER;
    inputs[0] = inputs[1] = inputs[2] = b->normed;
    if (heads_split_input(c)) {
        /* TL repeats resid_pre per head ([B, T, h, d]) and normalises each copy. */
        lk_repeat_rows(x->dev, b->head_inputs[0], b->resid, (int)N, h, d);
        if (fire(x, LENS_HOOK_ATTN_IN, layer, b->head_inputs[0])) return -1;
        static const lens_hook_kind split_hooks[3] = {LENS_HOOK_Q_INPUT, LENS_HOOK_K_INPUT,
                                                      LENS_HOOK_V_INPUT};
        for (int i = 0; i < 3; i++) {
            if (i > 0)
                lk_copy(x->dev, b->head_inputs[i], b->head_inputs[0], N * h * d * sizeof(float));
            inputs[i] = b->head_inputs[i];
        }
        if (c->use_split_qkv_input)
            for (int i = 0; i < 3; i++)
                if (fire(x, split_hooks[i], layer, inputs[i])) return -1;
        for (int i = 0; i < 3 && pre_norm; i++)
            if (normalize(x, c->normalization, lw->ln1_w, lw->ln1_b, inputs[i], b->scale, inputs[i],
                          N * h, d, LENS_HOOK_LN1_SCALE, LENS_HOOK_LN1_NORMALIZED, layer))
                return -1;
        return 0;
    }
    if (pre_norm)
        return normalize(x, c->normalization, lw->ln1_w, lw->ln1_b, b->normed, b->scale, b->resid,
                         N, d, LENS_HOOK_LN1_SCALE, LENS_HOOK_LN1_NORMALIZED, layer);
    lk_copy(x->dev, b->normed, b->resid, N * d * sizeof(float));
    return 0;
}

/* q/k norms (RMSNorm with weight, per head or over all heads) and rotary
 * embeddings on q [N, h, dh] and k [N, kv, dh], with their hook points. */
static int position_queries_keys(forward_ctx *x, buffers *b, int layer) {
    const lens_config *c = x->c;
    const lens_layer_weights *lw = &x->w->layers[layer];
    const int dh = c->d_head, N = (int)x->N;
    const int heads[2] = {c->n_heads, c->n_kv_heads};
    float *qk[2] = {b->q, b->k};
    const float *norm_w[2] = {lw->q_norm_w, lw->k_norm_w};
    static const lens_hook_kind norm_hooks[2][2] = {
        {LENS_HOOK_Q_NORM_SCALE, LENS_HOOK_Q_NORM_NORMALIZED},
        {LENS_HOOK_K_NORM_SCALE, LENS_HOOK_K_NORM_NORMALIZED}};
    for (int i = 0; i < 2 && c->qk_norm != LENS_QK_NORM_NONE; i++) {
        const bool per_head = c->qk_norm == LENS_QK_NORM_PER_HEAD;
        const int rows = per_head ? N * heads[i] : N, width = per_head ? dh : heads[i] * dh;
        if (normalize(x, LENS_NORM_RMS, norm_w[i], NULL, qk[i], b->scale, qk[i], (size_t)rows,
                      width, norm_hooks[i][0], norm_hooks[i][1], layer))
            return -1;
    }
    if (c->positions != LENS_POS_ROTARY) return 0;
    const int table = c->use_local_attn && c->layer_is_local[layer] ? 1 : 0;
    static const lens_hook_kind rot_hooks[2] = {LENS_HOOK_ROT_Q, LENS_HOOK_ROT_K};
    for (int i = 0; i < 2; i++) {
        lk_rotary(x->dev, qk[i], N, heads[i], dh, c->rotary.dim, c->rotary.interleaved,
                  x->w->rotary_cos[table], x->w->rotary_sin[table], x->positions);
        if (fire(x, rot_hooks[i], layer, qk[i])) return -1;
    }
    return 0;
}

/* A norm on a block's output (ln1_post / ln2_post: Gemma 2/3's sandwich
 * norms, OLMo 2's only norms) in place, with its hook points. They keep
 * their weights whatever fold_ln did, and every family that has them uses
 * RMSNorm. */
static int output_norm_in_place(forward_ctx *x, buffers *b, float *out, const float *w,
                                lens_hook_kind scale_hook, lens_hook_kind normalized_hook,
                                int layer) {
    return normalize(x, LENS_NORM_RMS, w, NULL, out, b->scale, out, x->N, x->c->d_model, scale_hook,
                     normalized_hook, layer);
}

static int attention(forward_ctx *x, buffers *b, int layer) {
    const lens_config *c = x->c;
    const lens_layer_weights *lw = &x->w->layers[layer];
    const int B = x->B, T = x->T, d = c->d_model, h = c->n_heads, dh = c->d_head, hd = h * dh;
    const int kv = c->n_kv_heads, group = h / kv, kvd = kv * dh;
    const size_t N = x->N;
    float *inputs[3];
    if (attention_input(x, b, layer, inputs)) return -1;
    project_qkv(x, b, lw, inputs);
    if (fire(x, LENS_HOOK_Q, layer, b->q) || fire(x, LENS_HOOK_K, layer, b->k) ||
        fire(x, LENS_HOOK_V, layer, b->v) || position_queries_keys(x, b, layer))
        return -1;
    const float *keys = b->k, *values = b->v;
    if (x->suffix) {
        join_prefix(x, b->k_all, b->prefix_k, x->suffix->k[layer], b->k);
        join_prefix(x, b->v_all, b->prefix_v, x->suffix->v[layer], b->v);
        keys = b->k_all, values = b->v_all;
    }
    attention_scores(x, b, keys, layer);
    if (fire(x, LENS_HOOK_ATTN_SCORES, layer, b->scores)) return -1;
    lk_softmax_rows(x->dev, b->pattern, b->scores, (int)N * h, T);
    if (fire(x, LENS_HOOK_PATTERN, layer, b->pattern)) return -1;
    // z[bi, :, hi, :] (Q,dh) = pattern[bi, hi] (Q,T) @ values[bi, :, hi / group, :] (T,dh)
    for (int bi = 0; bi < B; bi++) {
        const int Q = T - first_position(x, bi);
        const size_t row = first_row(x, bi);
        for (int g = 0; g < kv; g++)
            lk_matmul_batched(x->dev, b->z + row * hd + (size_t)g * group * dh, hd, (size_t)dh,
                              b->pattern + (row * h + (size_t)g * group * Q) * T, T, (size_t)Q * T,
                              values + (size_t)bi * T * kvd + (size_t)g * dh, kvd, 0, false, Q, T,
                              dh, group);
    }
    if (fire(x, LENS_HOOK_Z, layer, b->z)) return -1;
    if (c->use_attn_result) {
        // result[n, hi, :] (d) = z[n, hi, :] (dh) @ W_O[hi] (dh,d); attn_out sums heads + b_O
        for (int hi = 0; hi < h; hi++)
            lk_matmul(x->dev, b->result + (size_t)hi * d, h * d, b->z + (size_t)hi * dh, hd,
                      lw->W_O + (size_t)hi * dh * d, d, NULL, (int)N, dh, d, false);
        if (fire(x, LENS_HOOK_RESULT, layer, b->result)) return -1;
        lk_sum_groups(x->dev, b->attn_out, b->result, lw->b_O, (int)N, h, d);
    } else {
        lk_matmul(x->dev, b->attn_out, d, b->z, hd, lw->W_O, d, lw->b_O, (int)N, hd, d, false);
    }
    if (c->norm_placement != LENS_NORM_BEFORE &&
        output_norm_in_place(x, b, b->attn_out, lw->ln1_post_w, LENS_HOOK_LN1_POST_SCALE,
                             LENS_HOOK_LN1_POST_NORMALIZED, layer))
        return -1;
    return fire(x, LENS_HOOK_ATTN_OUT, layer, b->attn_out);
}

static lk_act kernel_activation(lens_act act) {
    switch (act) {
    case LENS_ACT_RELU:
        return LK_RELU;
    case LENS_ACT_GELU:
        return LK_GELU;
    case LENS_ACT_GELU_FAST:
        return LK_GELU_FAST;
    case LENS_ACT_SILU:
        return LK_SILU;
    case LENS_ACT_GELU_NEW:
    case LENS_ACT_SOLU_LN: /* not used: mlp() runs SoLU with its own hook points */
        break;
    }
    return LK_GELU_NEW;
}

/* The MLP of a block on its input `in` (resid_mid, or resid_pre in
 * parallel blocks) into b->mlp_out. */
static int mlp(forward_ctx *x, buffers *b, const float *in, int layer) {
    const lens_config *c = x->c;
    const lens_layer_weights *lw = &x->w->layers[layer];
    const int d = c->d_model, m = c->d_mlp;
    const size_t N = x->N;
    if (c->use_hook_mlp_in) {
        /* TL hooks a clone: an edit here changes the MLP's input, not the residual stream. */
        lk_copy(x->dev, b->mlp_in, in, N * d * sizeof(float));
        if (fire(x, LENS_HOOK_MLP_IN, layer, b->mlp_in)) return -1;
        in = b->mlp_in;
    }
    if (c->shared_ln) {
        in = b->normed; /* ln1's output, which attention read too (GPT-J, Phi) */
    } else if (c->normalization != LENS_NORM_NONE && c->norm_placement != LENS_NORM_AFTER) {
        if (normalize(x, c->normalization, lw->ln2_w, lw->ln2_b, b->normed, b->scale, in, N, d,
                      LENS_HOOK_LN2_SCALE, LENS_HOOK_LN2_NORMALIZED, layer))
            return -1;
        in = b->normed;
    }
    if (c->gated_mlp) {
        // post = act(in @ W_gate) * (in @ W_in), TL's GatedMLP (b_in is zeros for these families)
        lk_matmul(x->dev, b->pre, m, in, d, lw->W_gate, m, NULL, (int)N, d, m, false);
        if (fire(x, LENS_HOOK_MLP_PRE, layer, b->pre)) return -1;
        lk_matmul(x->dev, b->pre_linear, m, in, d, lw->W_in, m, lw->b_in, (int)N, d, m, false);
        if (fire(x, LENS_HOOK_MLP_PRE_LINEAR, layer, b->pre_linear)) return -1;
        lk_gated_activation(x->dev, kernel_activation(c->act_fn), b->post, b->pre, b->pre_linear,
                            N * m);
    } else {
        lk_matmul(x->dev, b->pre, m, in, d, lw->W_in, m, lw->b_in, (int)N, d, m, false);
        if (fire(x, LENS_HOOK_MLP_PRE, layer, b->pre)) return -1;
        if (c->act_fn == LENS_ACT_SOLU_LN) {
            lk_solu(x->dev, b->post, b->pre, (int)N, m);
            if (fire(x, LENS_HOOK_MLP_MID, layer, b->post)) return -1;
            lens_norm norm = lw->mlp_ln_w ? LENS_NORM_LN : LENS_NORM_LNPRE;
            if (normalize(x, norm, lw->mlp_ln_w, lw->mlp_ln_b, b->post, b->scale, b->post, N, m,
                          LENS_HOOK_MLP_LN_SCALE, LENS_HOOK_MLP_LN_NORMALIZED, layer))
                return -1;
        } else {
            lk_activation(x->dev, kernel_activation(c->act_fn), b->post, b->pre, N * m);
        }
    }
    if (fire(x, LENS_HOOK_MLP_POST, layer, b->post)) return -1;
    lk_matmul(x->dev, b->mlp_out, d, b->post, m, lw->W_out, d, lw->b_out, (int)N, m, d, false);
    if (c->norm_placement != LENS_NORM_BEFORE &&
        output_norm_in_place(x, b, b->mlp_out, lw->ln2_post_w, LENS_HOOK_LN2_POST_SCALE,
                             LENS_HOOK_LN2_POST_NORMALIZED, layer))
        return -1;
    return fire(x, LENS_HOOK_MLP_OUT, layer, b->mlp_out);
}

static int block(forward_ctx *x, buffers *b, int layer) {
    const lens_config *c = x->c;
    const size_t nd = x->N * (size_t)c->d_model;
    if (fire(x, LENS_HOOK_RESID_PRE, layer, b->resid) || attention(x, b, layer)) return -1;
    if (c->attn_only) {
        lk_add(x->dev, b->resid, b->resid, b->attn_out, nd);
    } else if (c->parallel_attn_mlp) {
        /* resid_post = resid_pre + attn_out + mlp_out, the MLP reading resid_pre too */
        if (mlp(x, b, b->resid, layer)) return -1;
        lk_add(x->dev, b->resid, b->resid, b->attn_out, nd);
        lk_add(x->dev, b->resid, b->resid, b->mlp_out, nd);
    } else {
        lk_add(x->dev, b->resid_mid, b->resid, b->attn_out, nd);
        if (fire(x, LENS_HOOK_RESID_MID, layer, b->resid_mid) || mlp(x, b, b->resid_mid, layer))
            return -1;
        lk_add(x->dev, b->resid, b->resid_mid, b->mlp_out, nd);
    }
    return fire(x, LENS_HOOK_RESID_POST, layer, b->resid);
}

/* The final LayerNorm and the unembedding into x->logits: every position, or
 * each prompt's logit position. */
static int unembed(forward_ctx *x, buffers *b) {
    const lens_config *c = x->c;
    const lens_weights *w = x->w;
    const int d = c->d_model, V = c->d_vocab_out;
    float *final = b->resid;
    if (c->normalization != LENS_NORM_NONE) {
        if (normalize(x, c->normalization, w->ln_final_w, w->ln_final_b, b->normed, b->scale,
                      b->resid, x->N, d, LENS_HOOK_LN_FINAL_SCALE, LENS_HOOK_LN_FINAL_NORMALIZED,
                      0))
            return -1;
        final = b->normed;
    }
    if (fire(x, LENS_HOOK_UNEMBED_IN, 0, final)) return -1;
    if (!x->logits) return 0;
    const lens_logit_ids *ids = x->run->logit_ids;
    const size_t rows = x->logit_rows ? (size_t)x->B : x->N;
    const size_t cols = ids ? (size_t)ids->n : (size_t)V;
    if (!x->logit_rows) {
        lk_matmul(x->dev, x->logits, V, final, d, w->W_U, V, w->b_U, (int)x->N, d, V, false);
        if (fire(x, LENS_HOOK_UNEMBED_OUT, 0, x->logits)) return -1;
    } else {
        lk_gather_rows(x->dev, b->final_rows, final, x->logit_rows, x->B, d);
        if (ids)
            lk_matmul_columns(x->dev, x->logits, b->final_rows, w->W_U, w->b_U, x->logit_ids, x->B,
                              ids->P, ids->n, d, V);
        else
            lk_matmul(x->dev, x->logits, V, b->final_rows, d, w->W_U, V, w->b_U, x->B, d, V, false);
    }
    /* TL soft-caps the logits after the unembedding (and its hook) */
    if (c->logit_softcap > 0) lk_softcap(x->dev, x->logits, rows * cols, c->logit_softcap);
    return 0;
}

/* The pass from the batch (or from the residual stream entering the start
 * layer) on the device to x->logits. */
static int run_layers(forward_ctx *x, buffers *b) {
    if (!x->run->resid_start) {
        if (embed(x, b)) return -1;
    } else {
        lk_upload(x->dev, b->resid, x->run->resid_start, x->N * x->c->d_model * sizeof(float));
    }
    const int end = x->run->end_layer ? x->run->end_layer : x->c->n_layers;
    for (int l = x->run->start_layer; l < end; l++)
        if (block(x, b, l)) return -1;
    return x->run->end_layer ? 0 : unembed(x, b);
}

static bool any_hook_enabled(const forward_ctx *x) {
    const lens_run *r = x->run;
    if (!r->hooks_enabled || !r->on_hook) return false;
    for (size_t i = 0; i < lens_hook_slots(x->c); i++)
        if (r->hooks_enabled[i]) return true;
    return false;
}

/* The recorded run for this batch's shape: found, or recorded now (NULL
 * where the device can't record). Recording does not run anything. */
static lk_graph *recorded_run(forward_ctx *x, buffers *b) {
    lens_workspace *ws = x->ws;
    const lens_graph_entry key = {x->m,
                                  x->B,
                                  x->T,
                                  x->batch->attn_mask != NULL,
                                  x->run->logit_positions != NULL,
                                  x->run->logits != NULL,
                                  NULL};
    for (int i = 0; i < ws->n_graphs; i++) {
        const lens_graph_entry *g = &ws->graphs[i];
        if (g->model == key.model && g->B == key.B && g->T == key.T && g->masked == key.masked &&
            g->at_positions == key.at_positions && g->logits == key.logits)
            return g->graph;
    }
    if (!lk_record_begin(x->dev)) return NULL;
    int rc = run_layers(x, b); /* no hook fires, so nothing here fails */
    lk_graph *graph = lk_record_end(x->dev);
    if (rc || !graph) {
        lk_graph_free(x->dev, graph);
        return NULL;
    }
    if (ws->n_graphs == LENS_MAX_GRAPHS) {
        lk_graph_free(x->dev, ws->graphs[0].graph);
        memmove(ws->graphs, ws->graphs + 1, (LENS_MAX_GRAPHS - 1) * sizeof ws->graphs[0]);
        ws->n_graphs--;
    }
    ws->graphs[ws->n_graphs] = key;
    ws->graphs[ws->n_graphs++].graph = graph;
    return graph;
}

static int check_suffix(const lens_config *c, const lens_batch *batch, const lens_run *run,
                        lens_err *err) {
    const lens_suffix *s = run->suffix;
    if (!c->causal) {
        lens_err_set(err, "position reuse needs causal attention; this model is bidirectional");
        return -1;
    }
    if (s->prompts < 1 || !s->k || !s->v) {
        lens_err_set(err, "position reuse needs the reference run's prompts, keys and values");
        return -1;
    }
    for (int l = run->start_layer; l < c->n_layers; l++) {
        if (!s->k[l] || !s->v[l]) {
            lens_err_set(err,
                         "position reuse needs the reference run's keys and values of layer %d", l);
            return -1;
        }
    }
    if (run->logits && !run->logit_positions) {
        lens_err_set(err, "a run with position reuse has logits at chosen positions only");
        return -1;
    }
    for (int bi = 0; bi < batch->B; bi++) {
        const int first = s->first[bi];
        if (first < 0 || first >= batch->T) {
            lens_err_set(err, "first position %d of prompt %d is outside its %d positions", first,
                         bi, batch->T);
            return -1;
        }
        if (run->logits && run->logit_positions[bi] < first) {
            lens_err_set(err,
                         "logit position %d of prompt %d comes before its first computed "
                         "position %d",
                         run->logit_positions[bi], bi, first);
            return -1;
        }
    }
    return 0;
}

static int check_logit_ids(const lens_config *c, const lens_run *run, lens_err *err) {
    const lens_logit_ids *ids = run->logit_ids;
    if (!run->logit_positions || ids->P < 1 || ids->n < 1) {
        lens_err_set(err,
                     "logits of chosen ids need logit positions and at least one id per prompt");
        return -1;
    }
    for (int i = 0; i < ids->P * ids->n; i++) {
        if (ids->ids[i] < 0 || ids->ids[i] >= c->d_vocab_out) {
            lens_err_set(err, "output id %d is outside the output vocabulary of %d", ids->ids[i],
                         c->d_vocab_out);
            return -1;
        }
    }
    return 0;
}

static int check_batch(const lens_config *c, const lens_batch *batch, const lens_run *run,
                       lens_err *err) {
    if (batch->B < 1 || batch->T < 1) {
        lens_err_set(err, "empty batch (%d prompts of %d tokens)", batch->B, batch->T);
        return -1;
    }
    if (batch->T > c->n_ctx) {
        lens_err_set(err, "%d tokens is more than the model's context of %d", batch->T, c->n_ctx);
        return -1;
    }
    const size_t N = (size_t)batch->B * batch->T;
    for (size_t n = 0; n < N; n++) {
        if (batch->tokens[n] < 0 || batch->tokens[n] >= c->d_vocab) {
            lens_err_set(err,
                         "token id %d at prompt %zu position %zu is outside the vocabulary "
                         "of %d",
                         batch->tokens[n], n / batch->T, n % batch->T, c->d_vocab);
            return -1;
        }
    }
    if (run->start_layer < 0 || run->start_layer >= c->n_layers) {
        lens_err_set(err, "start layer %d is outside the model's layers 0 to %d", run->start_layer,
                     c->n_layers - 1);
        return -1;
    }
    if (run->end_layer &&
        (run->end_layer <= run->start_layer || run->end_layer > c->n_layers || run->logits)) {
        lens_err_set(err,
                     "end layer %d must follow start layer %d, within the model's %d layers, "
                     "and a run that stops early has no logits",
                     run->end_layer, run->start_layer, c->n_layers);
        return -1;
    }
    if ((run->start_layer > 0 || run->suffix) && !run->resid_start) {
        lens_err_set(err, "a run from layer %d needs the residual stream entering it",
                     run->start_layer);
        return -1;
    }
    if (run->suffix && check_suffix(c, batch, run, err)) return -1;
    if (run->logit_ids && check_logit_ids(c, run, err)) return -1;
    for (int bi = 0; run->logits && run->logit_positions && bi < batch->B; bi++) {
        int t = run->logit_positions[bi];
        if (t < 0 || t >= batch->T) {
            lens_err_set(err, "logit position %d of prompt %d is outside its %d positions", t, bi,
                         batch->T);
            return -1;
        }
    }
    return 0;
}

/* Each prompt's first row among the rows the run computes (rows[b]), the
 * row its logits come from (rows[B + b], with logit positions), and their
 * number: B*T, or with a suffix the sum of T - first[b]. */
static size_t computed_rows(const lens_batch *batch, const lens_run *run, int32_t *rows) {
    size_t N = 0;
    for (int bi = 0; bi < batch->B; bi++) {
        const int first = run->suffix ? run->suffix->first[bi] : 0;
        if (rows) rows[bi] = (int32_t)N;
        if (rows && run->logit_positions)
            rows[batch->B + bi] = (int32_t)N + run->logit_positions[bi] - first;
        N += (size_t)(batch->T - first);
    }
    return N;
}

/* The rotary position of each computed row ([N], malloc'd; NULL when out
 * of memory): its position t, or with an attention mask (left padding) the
 * real tokens up to t minus one, and 1 at masked positions, as
 * TransformerBridge passes position ids to Hugging Face's forward. */
static int32_t *rotary_positions(const lens_batch *batch, const lens_run *run, size_t N) {
    int32_t *positions = malloc((N ? N : 1) * sizeof *positions);
    if (!positions) return NULL;
    size_t n = 0;
    for (int bi = 0; bi < batch->B; bi++) {
        const int first = run->suffix ? run->suffix->first[bi] : 0;
        int seen = 0;
        for (int t = 0; t < batch->T; t++) {
            const uint8_t *mask = batch->attn_mask;
            const bool real = !mask || mask[(size_t)bi * batch->T + t];
            seen += real;
            if (t >= first) positions[n++] = !mask ? t : real ? seen - 1 : 1;
        }
    }
    return positions;
}

size_t lens_forward_bytes(const lens_model *m, const lens_batch *batch, const lens_run *run) {
    const forward_ctx x = {.m = m,
                           .c = &m->cfg,
                           .dev = m->device,
                           .run = run,
                           .B = batch->B,
                           .T = batch->T,
                           .N = computed_rows(batch, run, NULL),
                           .suffix = run->suffix};
    buffers b;
    return lay_out(&x, &b, NULL);
}

int lens_forward(const lens_model *m, lens_workspace *ws, const lens_batch *batch,
                 const lens_run *run, lens_err *err) {
    const lens_config *c = &m->cfg;
    if (check_batch(c, batch, run, err)) return -1;
    /* each prompt's first row of the N, and the row its logits come from */
    int32_t *rows = malloc(2 * (size_t)batch->B * sizeof *rows);
    if (!rows) {
        lens_err_set_code(err, LENS_ERR_NO_MEMORY, "out of host memory for a batch of %d",
                          batch->B);
        return -1;
    }
    const size_t N = computed_rows(batch, run, rows);
    int32_t *positions = NULL;
    if (c->positions == LENS_POS_ROTARY && !(positions = rotary_positions(batch, run, N))) {
        free(rows);
        lens_err_set_code(err, LENS_ERR_NO_MEMORY, "out of host memory for %zu positions", N);
        return -1;
    }
    forward_ctx x = {.m = m,
                     .c = c,
                     .w = &m->dw,
                     .dev = m->device,
                     .ws = ws,
                     .batch = batch,
                     .run = run,
                     .B = batch->B,
                     .T = batch->T,
                     .N = N,
                     .suffix = run->suffix,
                     .first_row = rows,
                     .err = err};
    buffers b;
    if (carve(&x, &b)) {
        free(rows);
        free(positions);
        return -1;
    }
    place_inputs(&x, &b, rows + batch->B, positions);
    /* recorded: the plain runs, the ones repeated with the same shape */
    const bool plain =
        !any_hook_enabled(&x) && !run->resid_start && !run->logit_ids && !run->end_layer;
    lk_graph *graph = plain ? recorded_run(&x, &b) : NULL;
    int rc = graph ? (lk_graph_launch(x.dev, graph), 0) : run_layers(&x, &b);
    if (rc == 0 && run->logits && x.logits != run->logits) {
        size_t rows = run->logit_positions ? (size_t)x.B : x.N;
        size_t cols = run->logit_ids ? (size_t)run->logit_ids->n : (size_t)c->d_vocab_out;
        lk_download(x.dev, run->logits, x.logits, rows * cols * sizeof(float));
    }
    char why[512];
    if (lk_finish(x.dev, why, sizeof why)) {
        lk_device_info info;
        lk_device_describe(x.dev, &info);
        lens_err_set_code(err, LENS_ERR_DEVICE, "%s: %s", info.name, why);
        rc = -1;
    }
    free(rows);
    free(positions);
    return rc;
}
