/*
 * test_weights.c: core/weights.c on a hand-made model (d_model 3, 2 heads
 * of 2, d_mlp 4, one layer, 5 tokens, n_ctx 4), every weight filled with
 * distinct values: the names, order and shapes of TL's state_dict with and
 * without grouped-query attention, a gated MLP or folded LayerNorms; W_Q,
 * W_K, W_V converted from lensd's [d, h*dh] to TL's [h, d, dh] element by
 * element; the other tensors' bytes as they are; a bias lensd lacks as
 * zeros; and the nearest names of a misspelt one.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "core/weights.h"

enum { D = 3, H = 2, DH = 2, M = 4, V = 5, CTX = 4 };

static float buf[4096];
static size_t used;

/* n fresh floats, each distinct: 1000 * tensor + index. */
static float *tensor(size_t n) {
    static int serial;
    float *t = buf + used;
    used += n;
    cr_assert_leq(used, sizeof buf / sizeof *buf);
    serial++;
    for (size_t i = 0; i < n; i++)
        t[i] = (float)(1000 * serial) + (float)i;
    return t;
}

static lens_layer_weights layer;
static lens_model model;

/* A GPT-2-like model (LN, standard positions) with n_kv key/value heads. */
static void make_model(int n_kv, bool folded, bool gated) {
    used = 0;
    memset(&layer, 0, sizeof layer);
    memset(&model, 0, sizeof model);
    lens_config *c = &model.cfg;
    *c = (lens_config){.n_layers = 1,
                       .d_model = D,
                       .n_heads = H,
                       .d_head = DH,
                       .d_mlp = M,
                       .n_ctx = CTX,
                       .d_vocab = V,
                       .d_vocab_out = V,
                       .n_kv_heads = n_kv,
                       .normalization = folded ? LENS_NORM_LNPRE : LENS_NORM_LN,
                       .positions = LENS_POS_STANDARD,
                       .gated_mlp = gated};
    model.processing = folded ? LENS_PROC_DEFAULT : LENS_PROC_NONE;
    lens_weights *w = &model.w;
    w->W_E = tensor(V * D);
    w->W_pos = tensor(CTX * D);
    w->layers = &layer;
    if (!folded) {
        layer.ln1_w = tensor(D), layer.ln1_b = tensor(D);
        layer.ln2_w = tensor(D), layer.ln2_b = tensor(D);
        w->ln_final_w = tensor(D), w->ln_final_b = tensor(D);
    }
    layer.W_Q = tensor(D * H * DH);
    layer.W_K = tensor(D * n_kv * DH);
    layer.W_V = tensor(D * n_kv * DH);
    layer.b_Q = tensor(H * DH);
    layer.b_K = NULL; /* a checkpoint without key biases: TL has zeros */
    layer.b_V = tensor(n_kv * DH);
    layer.W_O = tensor(H * DH * D);
    layer.b_O = tensor(D);
    layer.W_in = tensor(D * M);
    if (gated) layer.W_gate = tensor(D * M);
    layer.b_in = tensor(M);
    layer.W_out = tensor(M * D);
    layer.b_out = tensor(D);
    w->W_U = tensor(D * V);
    w->b_U = tensor(V);
}

static int list(bool any, lens_param *out, int cap) {
    const int n = lens_params_list(&model, any, NULL, 0);
    cr_assert_leq(n, cap);
    cr_assert_eq(lens_params_list(&model, any, out, cap), n);
    return n;
}

static const lens_param *find(const lens_param *ps, int n, const char *name) {
    int near[3], n_near;
    const int at = lens_params_find(ps, n, name, near, &n_near);
    cr_assert_geq(at, 0, "%s is not listed", name);
    return &ps[at];
}

static void check_names(const lens_param *ps, int n, const char *const *want, int n_want) {
    cr_assert_eq(n, n_want, "%d parameters, want %d", n, n_want);
    for (int i = 0; i < n; i++)
        cr_assert_str_eq(ps[i].name, want[i], "parameter %d", i);
}

Test(weights, names_and_order_as_tl_state_dict) {
    static const char *const unfolded[] = {
        "embed.W_E",          "pos_embed.W_pos",    "blocks.0.ln1.w",    "blocks.0.ln1.b",
        "blocks.0.ln2.w",     "blocks.0.ln2.b",     "blocks.0.attn.W_Q", "blocks.0.attn.W_O",
        "blocks.0.attn.b_Q",  "blocks.0.attn.b_O",  "blocks.0.attn.W_K", "blocks.0.attn.W_V",
        "blocks.0.attn.b_K",  "blocks.0.attn.b_V",  "blocks.0.mlp.W_in", "blocks.0.mlp.b_in",
        "blocks.0.mlp.W_out", "blocks.0.mlp.b_out", "ln_final.w",        "ln_final.b",
        "unembed.W_U",        "unembed.b_U"};
    lens_param ps[64];
    make_model(H, false, false);
    check_names(ps, list(false, ps, 64), unfolded, 22);
    /* with fold_ln the norms are gone, unless listed for any processing */
    make_model(H, true, false);
    int n = list(false, ps, 64);
    cr_assert_eq(n, 16);
    for (int i = 0; i < n; i++)
        cr_assert_null(strstr(ps[i].name, "ln"), "%s", ps[i].name);
    check_names(ps, list(true, ps, 64), unfolded, 22);
    cr_assert_eq(find(ps, 22, "blocks.0.ln1.w")->layout, LENS_PARAM_ABSENT);
    cr_assert_eq(find(ps, 22, "ln_final.b")->shape[0], D);
    /* fewer params than room: only cap written, the count still whole */
    cr_assert_eq(lens_params_list(&model, false, ps, 3), 16);
}

Test(weights, grouped_query_and_gated_names_and_shapes) {
    lens_param ps[64];
    make_model(1, true, true);
    const int n = list(false, ps, 64);
    static const char *const want[] = {
        "embed.W_E",           "pos_embed.W_pos",    "blocks.0.attn.W_Q",  "blocks.0.attn.W_O",
        "blocks.0.attn.b_Q",   "blocks.0.attn.b_O",  "blocks.0.attn._W_K", "blocks.0.attn._W_V",
        "blocks.0.attn._b_K",  "blocks.0.attn._b_V", "blocks.0.mlp.W_in",  "blocks.0.mlp.W_out",
        "blocks.0.mlp.W_gate", "blocks.0.mlp.b_in",  "blocks.0.mlp.b_out", "unembed.W_U",
        "unembed.b_U"};
    check_names(ps, n, want, 17);
    const lens_param *k = find(ps, n, "blocks.0.attn._W_K");
    cr_assert_eq(k->ndim, 3);
    cr_assert(k->shape[0] == 1 && k->shape[1] == D && k->shape[2] == DH);
    const lens_param *bk = find(ps, n, "blocks.0.attn._b_K");
    cr_assert(bk->ndim == 2 && bk->shape[0] == 1 && bk->shape[1] == DH);
    const lens_param *q = find(ps, n, "blocks.0.attn.W_Q");
    cr_assert(q->shape[0] == H && q->shape[1] == D && q->shape[2] == DH);
    const lens_param *o = find(ps, n, "blocks.0.attn.W_O");
    cr_assert(o->shape[0] == H && o->shape[1] == DH && o->shape[2] == D);
    const lens_param *u = find(ps, n, "unembed.W_U");
    cr_assert(u->ndim == 2 && u->shape[0] == D && u->shape[1] == V);
}

Test(weights, heads_become_tl_layout) {
    float src[D * H * DH], dst[H * D * DH];
    for (int i = 0; i < D * H * DH; i++)
        src[i] = (float)i;
    lens_heads_to_tl(src, D, H, DH, dst);
    for (int k = 0; k < H; k++)
        for (int i = 0; i < D; i++)
            for (int j = 0; j < DH; j++)
                cr_assert_eq(dst[(k * D + i) * DH + j], src[i * H * DH + k * DH + j],
                             "head %d row %d col %d", k, i, j);
}

Test(weights, values_read_in_tl_layout) {
    lens_param ps[64];
    make_model(1, false, false);
    const int n = list(false, ps, 64);
    float out[256];
    /* W_Q: [h, d, dh] from [d, h*dh] */
    lens_param_read(find(ps, n, "blocks.0.attn.W_Q"), out);
    for (int k = 0; k < H; k++)
        for (int i = 0; i < D; i++)
            for (int j = 0; j < DH; j++)
                cr_assert_eq(out[(k * D + i) * DH + j], layer.W_Q[i * H * DH + k * DH + j]);
    /* _W_V with one key/value head: [1, d, dh], the same bytes */
    lens_param_read(find(ps, n, "blocks.0.attn._W_V"), out);
    cr_assert_eq(memcmp(out, layer.W_V, D * DH * sizeof *out), 0);
    /* W_O, W_E, W_U: the same bytes */
    lens_param_read(find(ps, n, "blocks.0.attn.W_O"), out);
    cr_assert_eq(memcmp(out, layer.W_O, H * DH * D * sizeof *out), 0);
    lens_param_read(find(ps, n, "unembed.W_U"), out);
    cr_assert_eq(memcmp(out, model.w.W_U, D * V * sizeof *out), 0);
    lens_param_read(find(ps, n, "blocks.0.ln2.b"), out);
    cr_assert_eq(memcmp(out, layer.ln2_b, D * sizeof *out), 0);
    /* a bias lensd has none of: zeros, as TL fills it */
    const lens_param *bk = find(ps, n, "blocks.0.attn._b_K");
    cr_assert_eq(bk->layout, LENS_PARAM_ZEROS);
    cr_assert_eq(lens_param_numel(bk), DH);
    out[0] = out[1] = 7;
    lens_param_read(bk, out);
    cr_assert(out[0] == 0 && out[1] == 0);
}

Test(weights, nearest_names_of_a_misspelt_one) {
    lens_param ps[64];
    make_model(H, false, false);
    const int n = list(false, ps, 64);
    int near[3], n_near = -1;
    cr_assert_eq(lens_params_find(ps, n, "blocks.0.attn.W_q", near, &n_near), -1);
    cr_assert_eq(n_near, 3);
    cr_assert_str_eq(ps[near[0]].name, "blocks.0.attn.W_Q");
    cr_assert_eq(lens_params_find(ps, n, "unembed.b_U", near, &n_near), n - 1);
}
