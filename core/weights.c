/*
 * weights.c: a model's parameters under TransformerLens's state_dict names
 * (weights.h). A table of where each TL parameter lives in lensd's layout
 * and how its bytes map; the only real conversion is W_Q/W_K/W_V, which
 * lensd keeps as [d, h*dh] (one GEMM for all heads) and TL as [h, d, dh].
 *
 * Not here: any processing of the weights (process.c) or any device memory
 * (the host copy, model->w, is always there).
 */
#include "core/weights.h"

#include <stdio.h>
#include <string.h>

/* The list being written: out[0 .. cap - 1], n entries so far. */
typedef struct param_list {
    lens_param *out;
    int cap, n;
} param_list;

/* Appends a parameter of shape dims[ndim] (name printf-style with the layer). */
static void add(param_list *pl, const float *src, lens_param_layout layout, int ndim,
                const int64_t *dims, const char *fmt, int layer) {
    if (pl->n < pl->cap) {
        lens_param *p = &pl->out[pl->n];
        snprintf(p->name, sizeof p->name, fmt, layer);
        p->ndim = ndim;
        memcpy(p->shape, dims, (size_t)ndim * sizeof *dims);
        p->layout = layout != LENS_PARAM_ABSENT && !src ? LENS_PARAM_ZEROS : layout;
        p->src = src;
    }
    pl->n++;
}

/* A normalisation's weight or bias: listed when the model has it, or, with
 * `folded` (the checkpoint has it and m's processing folded it), as ABSENT. */
static void add_norm(param_list *pl, const float *src, bool folded, int64_t len, const char *fmt,
                     int layer) {
    if (src)
        add(pl, src, LENS_PARAM_SAME, 1, (int64_t[]){len}, fmt, layer);
    else if (folded)
        add(pl, NULL, LENS_PARAM_ABSENT, 1, (int64_t[]){len}, fmt, layer);
}

int lens_params_list(const lens_model *m, bool any_processing, lens_param *out, int cap) {
    const lens_config *c = &m->cfg;
    const lens_weights *w = &m->w;
    const int64_t d = c->d_model, h = c->n_heads, kv = c->n_kv_heads, dh = c->d_head,
                  mlp = c->d_mlp;
    param_list pl = {out, out ? cap : 0, 0};
    /* norms fold_ln removes from this checkpoint: LN (weight and bias) or
     * RMS (weight only), as LNPre / RMSPre say now */
    const bool can_fold = any_processing && (m->processing & LENS_PROC_FOLD_LN);
    const bool fold_w =
        can_fold && (c->normalization == LENS_NORM_LNPRE || c->normalization == LENS_NORM_RMSPRE);
    const bool fold_b = fold_w && c->normalization == LENS_NORM_LNPRE;
    const bool gqa = kv != h;
    const int64_t q_norm = c->qk_norm == LENS_QK_NORM_WHOLE ? h * dh : dh;
    const int64_t k_norm = c->qk_norm == LENS_QK_NORM_WHOLE ? kv * dh : dh;

    add(&pl, w->W_E, LENS_PARAM_SAME, 2, (int64_t[]){c->d_vocab, d}, "embed.W_E", 0);
    if (c->positions == LENS_POS_STANDARD)
        add(&pl, w->W_pos, LENS_PARAM_SAME, 2, (int64_t[]){c->n_ctx, d}, "pos_embed.W_pos", 0);
    for (int l = 0; l < c->n_layers; l++) {
        const lens_layer_weights *lw = &w->layers[l];
        const bool has_ln2 = !c->attn_only && !c->shared_ln;
        add_norm(&pl, lw->ln1_w, fold_w, d, "blocks.%d.ln1.w", l);
        add_norm(&pl, lw->ln1_b, fold_b, d, "blocks.%d.ln1.b", l);
        add_norm(&pl, lw->ln1_post_w, false, d, "blocks.%d.ln1_post.w", l);
        add_norm(&pl, lw->ln2_w, fold_w && has_ln2, d, "blocks.%d.ln2.w", l);
        add_norm(&pl, lw->ln2_b, fold_b && has_ln2, d, "blocks.%d.ln2.b", l);
        add_norm(&pl, lw->ln2_post_w, false, d, "blocks.%d.ln2_post.w", l);
        /* attention's own parameters, then its q/k norms (submodules) */
        add(&pl, lw->W_Q, LENS_PARAM_HEADS, 3, (int64_t[]){h, d, dh}, "blocks.%d.attn.W_Q", l);
        add(&pl, lw->W_O, LENS_PARAM_SAME, 3, (int64_t[]){h, dh, d}, "blocks.%d.attn.W_O", l);
        add(&pl, lw->b_Q, LENS_PARAM_SAME, 2, (int64_t[]){h, dh}, "blocks.%d.attn.b_Q", l);
        add(&pl, lw->b_O, LENS_PARAM_SAME, 1, (int64_t[]){d}, "blocks.%d.attn.b_O", l);
        add(&pl, lw->W_K, LENS_PARAM_HEADS, 3, (int64_t[]){kv, d, dh},
            gqa ? "blocks.%d.attn._W_K" : "blocks.%d.attn.W_K", l);
        add(&pl, lw->W_V, LENS_PARAM_HEADS, 3, (int64_t[]){kv, d, dh},
            gqa ? "blocks.%d.attn._W_V" : "blocks.%d.attn.W_V", l);
        add(&pl, lw->b_K, LENS_PARAM_SAME, 2, (int64_t[]){kv, dh},
            gqa ? "blocks.%d.attn._b_K" : "blocks.%d.attn.b_K", l);
        add(&pl, lw->b_V, LENS_PARAM_SAME, 2, (int64_t[]){kv, dh},
            gqa ? "blocks.%d.attn._b_V" : "blocks.%d.attn.b_V", l);
        add_norm(&pl, lw->q_norm_w, false, q_norm, "blocks.%d.attn.q_norm.w", l);
        add_norm(&pl, lw->k_norm_w, false, k_norm, "blocks.%d.attn.k_norm.w", l);
        if (c->attn_only) continue;
        if (c->gated_mlp) { /* GatedMLP registers W_in, W_out, W_gate, then the biases */
            add(&pl, lw->W_in, LENS_PARAM_SAME, 2, (int64_t[]){d, mlp}, "blocks.%d.mlp.W_in", l);
            add(&pl, lw->W_out, LENS_PARAM_SAME, 2, (int64_t[]){mlp, d}, "blocks.%d.mlp.W_out", l);
            add(&pl, lw->W_gate, LENS_PARAM_SAME, 2, (int64_t[]){d, mlp}, "blocks.%d.mlp.W_gate",
                l);
            add(&pl, lw->b_in, LENS_PARAM_SAME, 1, (int64_t[]){mlp}, "blocks.%d.mlp.b_in", l);
            add(&pl, lw->b_out, LENS_PARAM_SAME, 1, (int64_t[]){d}, "blocks.%d.mlp.b_out", l);
        } else {
            add(&pl, lw->W_in, LENS_PARAM_SAME, 2, (int64_t[]){d, mlp}, "blocks.%d.mlp.W_in", l);
            add(&pl, lw->b_in, LENS_PARAM_SAME, 1, (int64_t[]){mlp}, "blocks.%d.mlp.b_in", l);
            add(&pl, lw->W_out, LENS_PARAM_SAME, 2, (int64_t[]){mlp, d}, "blocks.%d.mlp.W_out", l);
            add(&pl, lw->b_out, LENS_PARAM_SAME, 1, (int64_t[]){d}, "blocks.%d.mlp.b_out", l);
        }
        /* SoLU's LayerNorm over d_mlp goes with ln1/ln2 under fold_ln */
        const bool solu_ln = c->act_fn == LENS_ACT_SOLU_LN;
        add_norm(&pl, lw->mlp_ln_w, fold_b && solu_ln, mlp, "blocks.%d.mlp.ln.w", l);
        add_norm(&pl, lw->mlp_ln_b, fold_b && solu_ln, mlp, "blocks.%d.mlp.ln.b", l);
    }
    add_norm(&pl, w->ln_final_w, fold_w, d, "ln_final.w", 0);
    add_norm(&pl, w->ln_final_b, fold_b, d, "ln_final.b", 0);
    add(&pl, w->W_U, LENS_PARAM_SAME, 2, (int64_t[]){d, c->d_vocab_out}, "unembed.W_U", 0);
    add(&pl, w->b_U, LENS_PARAM_SAME, 1, (int64_t[]){c->d_vocab_out}, "unembed.b_U", 0);
    return pl.n;
}

size_t lens_param_numel(const lens_param *p) {
    size_t n = 1;
    for (int i = 0; i < p->ndim; i++)
        n *= (size_t)p->shape[i];
    return n;
}

/* Edit distance between a and b, counting at most the first 63 bytes of
 * b (parameter names are shorter). */
static size_t edit_distance(const char *a, const char *b) {
    size_t row[64];
    const size_t la = strlen(a), lb = strnlen(b, sizeof row - 1);
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            const size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

int lens_params_find(const lens_param *list, int n, const char *name, int near[3], int *n_near) {
    size_t dist[3] = {0};
    *n_near = 0;
    for (int i = 0; i < n; i++)
        if (strcmp(list[i].name, name) == 0) return i;
    for (int i = 0; i < n; i++) {
        const size_t di = edit_distance(list[i].name, name);
        int at = *n_near < 3 ? (*n_near)++ : 3;
        while (at > 0 && dist[at - 1] > di) { /* insertion into the 3 closest, stable */
            if (at < 3) {
                dist[at] = dist[at - 1];
                near[at] = near[at - 1];
            }
            at--;
        }
        if (at < 3) {
            dist[at] = di;
            near[at] = i;
        }
    }
    return -1;
}

void lens_heads_to_tl(const float *src, int d, int n, int dh, float *dst) {
    /* src (d, n*dh), dst (n, d, dh) */
    for (int k = 0; k < n; k++)
        for (int i = 0; i < d; i++)
            memcpy(dst + ((size_t)k * d + i) * dh, src + (size_t)i * n * dh + (size_t)k * dh,
                   (size_t)dh * sizeof *dst);
}

void lens_param_read(const lens_param *p, float *dst) {
    const size_t n = lens_param_numel(p);
    switch (p->layout) {
    case LENS_PARAM_SAME:
        memcpy(dst, p->src, n * sizeof *dst);
        break;
    case LENS_PARAM_HEADS:
        lens_heads_to_tl(p->src, (int)p->shape[1], (int)p->shape[0], (int)p->shape[2], dst);
        break;
    case LENS_PARAM_ZEROS:
        memset(dst, 0, n * sizeof *dst);
        break;
    case LENS_PARAM_ABSENT:
        break;
    }
}
