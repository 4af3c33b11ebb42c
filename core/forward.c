/*
 * forward.c: the forward pass of every model lensd loads, driven by its
 * lens_config, computing what TransformerLens's HookedTransformer computes
 * in the same order and firing the same hook points.
 *
 * Shapes: B batch, T positions, N = B*T rows, d d_model, h n_heads,
 * dh d_head, hd = h*dh, m d_mlp, V d_vocab_out. Activations live in one
 * workspace; each buffer below is carved from it per run.
 */
#include "core/forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/lk.h"

/* The score a masked key gets from mask_pad_keys: the value the ARENA
 * bracket-classifier code writes into hook_attn_scores. */
#define PAD_KEY_SCORE (-100000.0f)

void lens_workspace_free(lens_workspace *ws) {
    free(ws->buf);
    ws->buf = NULL;
    ws->cap = 0;
}

typedef struct forward_ctx {
    const lens_model *m;
    const lens_config *c;
    const lens_batch *batch;
    const lens_run *run;
    int B, T;
    size_t N;
    lens_err *err;
} forward_ctx;

static bool enabled(const forward_ctx *x, lens_hook_kind kind, int layer) {
    const lens_run *r = x->run;
    return r->hooks_enabled && r->on_hook &&
           r->hooks_enabled[lens_hook_slot(x->c, (lens_hook){kind, layer})];
}

/* Fires hook (kind, layer) on data if it is enabled. */
static int fire(const forward_ctx *x, lens_hook_kind kind, int layer, void *data) {
    if (!enabled(x, kind, layer)) return 0;
    lens_hook hook = {kind, layer};
    lens_tensor t = {.data = data, .dtype = kind == LENS_HOOK_TOKENS ? LENS_I32 : LENS_F32};
    t.ndim = lens_hook_shape(x->c, hook, x->B, x->T, t.shape);
    return x->run->on_hook(x->run->user, hook, &t, x->err);
}

typedef struct buffers {
    float *resid, *resid_mid, *normed, *scale;
    float *head_inputs[3]; /* q, k, v inputs [N, h, d] when heads split the attention input */
    float *q, *k, *v, *z, *scores, *pattern, *result, *attn_out;
    float *mlp_in, *pre, *post, *mlp_out, *final_rows;
} buffers;

static bool heads_split_input(const lens_config *c) {
    return c->use_split_qkv_input || c->use_attn_in;
}

/* Lays the buffers out in the workspace (growing it) and returns 0, or -1. */
static int carve(forward_ctx *x, lens_workspace *ws, buffers *b) {
    const lens_config *c = x->c;
    const size_t N = x->N, d = (size_t)c->d_model, h = (size_t)c->n_heads;
    const size_t hd = h * (size_t)c->d_head, m = (size_t)c->d_mlp;
    const size_t attn = (size_t)x->B * h * (size_t)x->T * (size_t)x->T;
    const bool split = heads_split_input(c);
    struct {
        float **dst;
        size_t n;
    } plan[] = {
        {&b->resid, N * d},
        {&b->resid_mid, N * d},
        {&b->normed, N * d},
        {&b->scale, N * h},
        {&b->head_inputs[0], split ? N * h * d : 0},
        {&b->head_inputs[1], split ? N * h * d : 0},
        {&b->head_inputs[2], split ? N * h * d : 0},
        {&b->q, N * hd},
        {&b->k, N * hd},
        {&b->v, N * hd},
        {&b->z, N * hd},
        {&b->scores, attn},
        {&b->pattern, attn},
        {&b->result, c->use_attn_result ? N * h * d : 0},
        {&b->attn_out, N * d},
        {&b->mlp_in, c->attn_only ? 0 : N * d},
        {&b->pre, N * m},
        {&b->post, N * m},
        {&b->mlp_out, N * d},
        {&b->final_rows, (size_t)x->B * d},
    };
    const size_t n_plan = sizeof plan / sizeof plan[0];
    size_t total = 0;
    for (size_t i = 0; i < n_plan; i++)
        total += (plan[i].n + 15) & ~(size_t)15;
    if (total > ws->cap) {
        float *grown = realloc(ws->buf, total * sizeof(float));
        if (!grown) {
            lens_err_set(x->err, "out of memory: the activations of a %dx%d batch need %zu MB",
                         x->B, x->T, total * sizeof(float) >> 20);
            return -1;
        }
        ws->buf = grown;
        ws->cap = total;
    }
    float *p = ws->buf;
    for (size_t i = 0; i < n_plan; i++) {
        *plan[i].dst = plan[i].n ? p : NULL;
        p += (plan[i].n + 15) & ~(size_t)15;
    }
    return 0;
}

/* hook_embed, hook_pos_embed, and their sum into resid. With an attention
 * mask, positions count real tokens only and pads get no position embedding
 * (TL's get_offset_position_ids). */
static int embed(forward_ctx *x, buffers *b) {
    const lens_config *c = x->c;
    const lens_weights *w = &x->m->w;
    const int d = c->d_model, T = x->T;
    const int32_t *tokens = x->batch->tokens;
    const uint8_t *mask = x->batch->attn_mask;
    if (fire(x, LENS_HOOK_TOKENS, 0, (void *)tokens)) return -1;
    float *tok_embed = b->resid, *pos_embed = b->resid_mid;
    for (size_t n = 0; n < x->N; n++)
        memcpy(tok_embed + n * d, w->W_E + (size_t)tokens[n] * d, (size_t)d * sizeof(float));
    for (int bi = 0; bi < x->B; bi++) {
        int seen = 0;
        for (int t = 0; t < T; t++) {
            size_t n = (size_t)bi * T + t;
            float *row = pos_embed + n * d;
            int pos = t;
            if (mask) {
                seen += mask[n] != 0;
                pos = seen > 0 ? seen - 1 : 0;
                if (!mask[n]) {
                    memset(row, 0, (size_t)d * sizeof(float));
                    continue;
                }
            }
            memcpy(row, w->W_pos + (size_t)pos * d, (size_t)d * sizeof(float));
        }
    }
    if (fire(x, LENS_HOOK_EMBED, 0, tok_embed) || fire(x, LENS_HOOK_POS_EMBED, 0, pos_embed))
        return -1;
    lk_add(b->resid, tok_embed, pos_embed, x->N * (size_t)d);
    return 0;
}

/* A LayerNorm as TL runs it on rows of width C: hook_scale and
 * hook_normalized fire on (x - mean) / scale, then the weight and bias apply
 * (LN) or not (LNPre). out may alias inp. */
static int layer_norm(forward_ctx *x, lens_norm norm, const float *w, const float *bias, float *out,
                      float *scale, const float *inp, size_t rows, int C, lens_hook_kind scale_hook,
                      lens_hook_kind normalized_hook, int layer) {
    lk_layernorm_pre(out, scale, inp, (int)rows, C, x->c->eps);
    if (fire(x, scale_hook, layer, scale) || fire(x, normalized_hook, layer, out)) return -1;
    if (norm == LENS_NORM_LN) lk_affine(out, out, w, bias, (int)rows, C);
    return 0;
}

/* Scores of one layer: q.k / attn_scale, then TL's masks and the pad-key
 * mask (-1e5). TL applies the causal, local-window and attention masks
 * (-inf) together, and only to causal attention: a bidirectional model
 * attends to left-padding pads unless the model masks pad keys itself. */
static void attention_scores(const forward_ctx *x, const buffers *b, int layer) {
    const lens_config *c = x->c;
    const int B = x->B, T = x->T, h = c->n_heads, dh = c->d_head, hd = h * dh;
    float attn_scale = c->attn_scale;
    if (c->scale_attn_by_inverse_layer_idx) attn_scale *= (float)(layer + 1);
    // scores[bi, hi] (T,T) = q[bi, :, hi, :] (T,dh) @ k[bi, :, hi, :]^T; heads sit side by side
    for (int bi = 0; bi < B; bi++)
        lk_matmul_batched(b->scores + (size_t)bi * h * T * T, T, (size_t)T * T,
                          b->q + (size_t)bi * T * hd, hd, (size_t)dh, b->k + (size_t)bi * T * hd,
                          hd, (size_t)dh, true, T, dh, T, h);
    const bool local = c->use_local_attn && c->layer_is_local[layer];
    const uint8_t *mask = x->batch->attn_mask;
    const int32_t *tokens = x->batch->tokens;
    const int32_t pad = x->m->rules.pad_id;
    const bool mask_pads = x->m->rules.mask_pad_keys;
#pragma omp parallel for collapse(2) if ((size_t)B * h * T * T > 16384)
    for (int bi = 0; bi < B; bi++) {
        for (int hi = 0; hi < h; hi++) {
            float *s = b->scores + ((size_t)bi * h + hi) * T * T;
            const int32_t *row_tokens = tokens + (size_t)bi * T;
            const uint8_t *row_mask = mask ? mask + (size_t)bi * T : NULL;
            for (int qi = 0; qi < T; qi++) {
                float *sq = s + (size_t)qi * T;
                for (int ki = 0; ki < T; ki++) {
                    bool masked = c->causal && (ki > qi || (local && ki <= qi - c->window_size) ||
                                                (row_mask && !row_mask[ki]));
                    sq[ki] = masked ? -INFINITY : sq[ki] / attn_scale;
                    if (mask_pads && row_tokens[ki] == pad) sq[ki] = PAD_KEY_SCORE;
                }
            }
        }
    }
}

/* q, k and v from the (normalised) attention input: one GEMM each, or one
 * per head when TL splits the input by head (use_split_qkv_input,
 * use_attn_in). */
static void project_qkv(const forward_ctx *x, const buffers *b, const lens_layer_weights *lw,
                        float *const inputs[3]) {
    const lens_config *c = x->c;
    const int d = c->d_model, h = c->n_heads, dh = c->d_head, hd = h * dh;
    const int N = (int)x->N;
    const float *W[3] = {lw->W_Q, lw->W_K, lw->W_V};
    const float *bias[3] = {lw->b_Q, lw->b_K, lw->b_V};
    float *out[3] = {b->q, b->k, b->v};
    for (int i = 0; i < 3; i++) {
        if (!heads_split_input(c)) {
            lk_matmul(out[i], hd, b->normed, d, W[i], hd, bias[i], N, d, hd, false);
            continue;
        }
        for (int hi = 0; hi < h; hi++)
            lk_matmul(out[i] + (size_t)hi * dh, hd, inputs[i] + (size_t)hi * d, h * d,
                      W[i] + (size_t)hi * dh, hd, bias[i] + (size_t)hi * dh, N, d, dh, false);
    }
}

static int attention(forward_ctx *x, buffers *b, int layer) {
    const lens_config *c = x->c;
    const lens_layer_weights *lw = &x->m->w.layers[layer];
    const int B = x->B, T = x->T, d = c->d_model, h = c->n_heads, dh = c->d_head, hd = h * dh;
    const size_t N = x->N;
    float *inputs[3] = {b->normed, b->normed, b->normed};
    if (heads_split_input(c)) {
        /* TL repeats resid_pre per head ([B, T, h, d]) and normalises each copy. */
        for (size_t n = 0; n < N; n++)
            for (int hi = 0; hi < h; hi++)
                memcpy(b->head_inputs[0] + (n * h + hi) * d, b->resid + n * d,
                       (size_t)d * sizeof(float));
        if (fire(x, LENS_HOOK_ATTN_IN, layer, b->head_inputs[0])) return -1;
        static const lens_hook_kind split_hooks[3] = {LENS_HOOK_Q_INPUT, LENS_HOOK_K_INPUT,
                                                      LENS_HOOK_V_INPUT};
        for (int i = 0; i < 3; i++) {
            if (i > 0) memcpy(b->head_inputs[i], b->head_inputs[0], N * h * d * sizeof(float));
            inputs[i] = b->head_inputs[i];
        }
        if (c->use_split_qkv_input)
            for (int i = 0; i < 3; i++)
                if (fire(x, split_hooks[i], layer, inputs[i])) return -1;
        for (int i = 0; i < 3 && c->normalization != LENS_NORM_NONE; i++)
            if (layer_norm(x, c->normalization, lw->ln1_w, lw->ln1_b, inputs[i], b->scale,
                           inputs[i], N * h, d, LENS_HOOK_LN1_SCALE, LENS_HOOK_LN1_NORMALIZED,
                           layer))
                return -1;
    } else if (c->normalization != LENS_NORM_NONE) {
        if (layer_norm(x, c->normalization, lw->ln1_w, lw->ln1_b, b->normed, b->scale, b->resid, N,
                       d, LENS_HOOK_LN1_SCALE, LENS_HOOK_LN1_NORMALIZED, layer))
            return -1;
    } else {
        memcpy(b->normed, b->resid, N * d * sizeof(float));
    }
    project_qkv(x, b, lw, inputs);
    if (fire(x, LENS_HOOK_Q, layer, b->q) || fire(x, LENS_HOOK_K, layer, b->k) ||
        fire(x, LENS_HOOK_V, layer, b->v))
        return -1;
    attention_scores(x, b, layer);
    if (fire(x, LENS_HOOK_ATTN_SCORES, layer, b->scores)) return -1;
    lk_softmax_rows(b->pattern, b->scores, B * h * T, T);
    if (fire(x, LENS_HOOK_PATTERN, layer, b->pattern)) return -1;
    // z[bi, :, hi, :] (T,dh) = pattern[bi, hi] (T,T) @ v[bi, :, hi, :] (T,dh)
    for (int bi = 0; bi < B; bi++)
        lk_matmul_batched(b->z + (size_t)bi * T * hd, hd, (size_t)dh,
                          b->pattern + (size_t)bi * h * T * T, T, (size_t)T * T,
                          b->v + (size_t)bi * T * hd, hd, (size_t)dh, false, T, T, dh, h);
    if (fire(x, LENS_HOOK_Z, layer, b->z)) return -1;
    if (c->use_attn_result) {
        // result[n, hi, :] (d) = z[n, hi, :] (dh) @ W_O[hi] (dh,d); attn_out sums heads + b_O
        for (int hi = 0; hi < h; hi++)
            lk_matmul(b->result + (size_t)hi * d, h * d, b->z + (size_t)hi * dh, hd,
                      lw->W_O + (size_t)hi * dh * d, d, NULL, (int)N, dh, d, false);
        if (fire(x, LENS_HOOK_RESULT, layer, b->result)) return -1;
        for (size_t n = 0; n < N; n++) {
            float *out = b->attn_out + n * d;
            memcpy(out, lw->b_O, (size_t)d * sizeof(float));
            for (int hi = 0; hi < h; hi++)
                lk_add(out, out, b->result + (n * h + hi) * d, d);
        }
    } else {
        lk_matmul(b->attn_out, d, b->z, hd, lw->W_O, d, lw->b_O, (int)N, hd, d, false);
    }
    return fire(x, LENS_HOOK_ATTN_OUT, layer, b->attn_out);
}

static void activation(const lens_config *c, float *out, const float *inp, size_t n) {
    switch (c->act_fn) {
    case LENS_ACT_RELU:
        lk_relu(out, inp, n);
        break;
    case LENS_ACT_GELU:
        lk_gelu(out, inp, n);
        break;
    case LENS_ACT_GELU_NEW:
        lk_gelu_new(out, inp, n);
        break;
    case LENS_ACT_GELU_FAST:
        lk_gelu_fast(out, inp, n);
        break;
    case LENS_ACT_SILU:
        lk_silu(out, inp, n);
        break;
    case LENS_ACT_SOLU_LN:
        break; /* handled by mlp(): it has hook points of its own */
    }
}

static int mlp(forward_ctx *x, buffers *b, int layer) {
    const lens_config *c = x->c;
    const lens_layer_weights *lw = &x->m->w.layers[layer];
    const int d = c->d_model, m = c->d_mlp;
    const size_t N = x->N;
    const float *in = b->resid_mid;
    if (c->use_hook_mlp_in) {
        /* TL hooks a clone: an edit here changes the MLP's input, not resid_mid. */
        memcpy(b->mlp_in, b->resid_mid, N * d * sizeof(float));
        if (fire(x, LENS_HOOK_MLP_IN, layer, b->mlp_in)) return -1;
        in = b->mlp_in;
    }
    if (c->normalization != LENS_NORM_NONE) {
        if (layer_norm(x, c->normalization, lw->ln2_w, lw->ln2_b, b->normed, b->scale, in, N, d,
                       LENS_HOOK_LN2_SCALE, LENS_HOOK_LN2_NORMALIZED, layer))
            return -1;
        in = b->normed;
    }
    lk_matmul(b->pre, m, in, d, lw->W_in, m, lw->b_in, (int)N, d, m, false);
    if (fire(x, LENS_HOOK_MLP_PRE, layer, b->pre)) return -1;
    if (c->act_fn == LENS_ACT_SOLU_LN) {
        lk_solu(b->post, b->pre, (int)N, m);
        if (fire(x, LENS_HOOK_MLP_MID, layer, b->post)) return -1;
        lens_norm norm = lw->mlp_ln_w ? LENS_NORM_LN : LENS_NORM_LNPRE;
        if (layer_norm(x, norm, lw->mlp_ln_w, lw->mlp_ln_b, b->post, b->scale, b->post, N, m,
                       LENS_HOOK_MLP_LN_SCALE, LENS_HOOK_MLP_LN_NORMALIZED, layer))
            return -1;
    } else {
        activation(c, b->post, b->pre, N * m);
    }
    if (fire(x, LENS_HOOK_MLP_POST, layer, b->post)) return -1;
    lk_matmul(b->mlp_out, d, b->post, m, lw->W_out, d, lw->b_out, (int)N, m, d, false);
    return fire(x, LENS_HOOK_MLP_OUT, layer, b->mlp_out);
}

static int block(forward_ctx *x, buffers *b, int layer) {
    const size_t nd = x->N * (size_t)x->c->d_model;
    if (fire(x, LENS_HOOK_RESID_PRE, layer, b->resid) || attention(x, b, layer)) return -1;
    if (x->c->attn_only) {
        lk_add(b->resid, b->resid, b->attn_out, nd);
    } else {
        lk_add(b->resid_mid, b->resid, b->attn_out, nd);
        if (fire(x, LENS_HOOK_RESID_MID, layer, b->resid_mid) || mlp(x, b, layer)) return -1;
        lk_add(b->resid, b->resid_mid, b->mlp_out, nd);
    }
    return fire(x, LENS_HOOK_RESID_POST, layer, b->resid);
}

static int unembed(forward_ctx *x, buffers *b) {
    const lens_config *c = x->c;
    const lens_weights *w = &x->m->w;
    const int d = c->d_model, V = c->d_vocab_out;
    float *final = b->resid;
    if (c->normalization != LENS_NORM_NONE) {
        if (layer_norm(x, c->normalization, w->ln_final_w, w->ln_final_b, b->normed, b->scale,
                       b->resid, x->N, d, LENS_HOOK_LN_FINAL_SCALE, LENS_HOOK_LN_FINAL_NORMALIZED,
                       0))
            return -1;
        final = b->normed;
    }
    if (fire(x, LENS_HOOK_UNEMBED_IN, 0, final)) return -1;
    float *logits = x->run->logits;
    if (!logits) return 0;
    if (!x->run->logit_positions) {
        lk_matmul(logits, V, final, d, w->W_U, V, w->b_U, (int)x->N, d, V, false);
        return fire(x, LENS_HOOK_UNEMBED_OUT, 0, logits);
    }
    for (int bi = 0; bi < x->B; bi++) {
        int t = x->run->logit_positions[bi];
        if (t < 0 || t >= x->T) {
            lens_err_set(x->err, "logit position %d of prompt %d is outside its %d positions", t,
                         bi, x->T);
            return -1;
        }
        memcpy(b->final_rows + (size_t)bi * d, final + ((size_t)bi * x->T + t) * d,
               (size_t)d * sizeof(float));
    }
    lk_matmul(logits, V, b->final_rows, d, w->W_U, V, w->b_U, x->B, d, V, false);
    return 0;
}

int lens_forward(const lens_model *m, lens_workspace *ws, const lens_batch *batch,
                 const lens_run *run, lens_err *err) {
    const lens_config *c = &m->cfg;
    forward_ctx x = {m, c, batch, run, batch->B, batch->T, (size_t)batch->B * batch->T, err};
    if (batch->B < 1 || batch->T < 1) {
        lens_err_set(err, "empty batch (%d prompts of %d tokens)", batch->B, batch->T);
        return -1;
    }
    if (batch->T > c->n_ctx) {
        lens_err_set(err, "%d tokens is more than the model's context of %d", batch->T, c->n_ctx);
        return -1;
    }
    for (size_t n = 0; n < x.N; n++) {
        if (batch->tokens[n] < 0 || batch->tokens[n] >= c->d_vocab) {
            lens_err_set(err,
                         "token id %d at prompt %zu position %zu is outside the vocabulary "
                         "of %d",
                         batch->tokens[n], n / batch->T, n % batch->T, c->d_vocab);
            return -1;
        }
    }
    buffers b;
    if (carve(&x, ws, &b) || embed(&x, &b)) return -1;
    for (int l = 0; l < c->n_layers; l++)
        if (block(&x, &b, l)) return -1;
    return unembed(&x, &b);
}
