/*
 * hooks.c: names, gating and shapes of TransformerLens's hook points.
 */
#include "core/hooks.h"

#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Name of each kind; per-layer names take the layer for %d. */
static const char *const hook_formats[LENS_HOOK_KIND_COUNT] = {
    [LENS_HOOK_TOKENS] = "hook_tokens",
    [LENS_HOOK_EMBED] = "hook_embed",
    [LENS_HOOK_POS_EMBED] = "hook_pos_embed",
    [LENS_HOOK_RESID_PRE] = "blocks.%d.hook_resid_pre",
    [LENS_HOOK_ATTN_IN] = "blocks.%d.hook_attn_in",
    [LENS_HOOK_Q_INPUT] = "blocks.%d.hook_q_input",
    [LENS_HOOK_K_INPUT] = "blocks.%d.hook_k_input",
    [LENS_HOOK_V_INPUT] = "blocks.%d.hook_v_input",
    [LENS_HOOK_LN1_SCALE] = "blocks.%d.ln1.hook_scale",
    [LENS_HOOK_LN1_NORMALIZED] = "blocks.%d.ln1.hook_normalized",
    [LENS_HOOK_Q] = "blocks.%d.attn.hook_q",
    [LENS_HOOK_K] = "blocks.%d.attn.hook_k",
    [LENS_HOOK_V] = "blocks.%d.attn.hook_v",
    [LENS_HOOK_Q_NORM_SCALE] = "blocks.%d.attn.q_norm.hook_scale",
    [LENS_HOOK_Q_NORM_NORMALIZED] = "blocks.%d.attn.q_norm.hook_normalized",
    [LENS_HOOK_K_NORM_SCALE] = "blocks.%d.attn.k_norm.hook_scale",
    [LENS_HOOK_K_NORM_NORMALIZED] = "blocks.%d.attn.k_norm.hook_normalized",
    [LENS_HOOK_ROT_Q] = "blocks.%d.attn.hook_rot_q",
    [LENS_HOOK_ROT_K] = "blocks.%d.attn.hook_rot_k",
    [LENS_HOOK_ATTN_SCORES] = "blocks.%d.attn.hook_attn_scores",
    [LENS_HOOK_PATTERN] = "blocks.%d.attn.hook_pattern",
    [LENS_HOOK_Z] = "blocks.%d.attn.hook_z",
    [LENS_HOOK_RESULT] = "blocks.%d.attn.hook_result",
    [LENS_HOOK_LN1_POST_SCALE] = "blocks.%d.ln1_post.hook_scale",
    [LENS_HOOK_LN1_POST_NORMALIZED] = "blocks.%d.ln1_post.hook_normalized",
    [LENS_HOOK_ATTN_OUT] = "blocks.%d.hook_attn_out",
    [LENS_HOOK_RESID_MID] = "blocks.%d.hook_resid_mid",
    [LENS_HOOK_MLP_IN] = "blocks.%d.hook_mlp_in",
    [LENS_HOOK_LN2_SCALE] = "blocks.%d.ln2.hook_scale",
    [LENS_HOOK_LN2_NORMALIZED] = "blocks.%d.ln2.hook_normalized",
    [LENS_HOOK_MLP_PRE] = "blocks.%d.mlp.hook_pre",
    [LENS_HOOK_MLP_PRE_LINEAR] = "blocks.%d.mlp.hook_pre_linear",
    [LENS_HOOK_MLP_MID] = "blocks.%d.mlp.hook_mid",
    [LENS_HOOK_MLP_LN_SCALE] = "blocks.%d.mlp.ln.hook_scale",
    [LENS_HOOK_MLP_LN_NORMALIZED] = "blocks.%d.mlp.ln.hook_normalized",
    [LENS_HOOK_MLP_POST] = "blocks.%d.mlp.hook_post",
    [LENS_HOOK_LN2_POST_SCALE] = "blocks.%d.ln2_post.hook_scale",
    [LENS_HOOK_LN2_POST_NORMALIZED] = "blocks.%d.ln2_post.hook_normalized",
    [LENS_HOOK_MLP_OUT] = "blocks.%d.hook_mlp_out",
    [LENS_HOOK_RESID_POST] = "blocks.%d.hook_resid_post",
    [LENS_HOOK_LN_FINAL_SCALE] = "ln_final.hook_scale",
    [LENS_HOOK_LN_FINAL_NORMALIZED] = "ln_final.hook_normalized",
    [LENS_HOOK_UNEMBED_IN] = "unembed.hook_in",
    [LENS_HOOK_UNEMBED_OUT] = "unembed.hook_out",
};

bool lens_hook_heads_first(const lens_config *cfg, lens_hook_kind kind) {
    return cfg->qk_norm == LENS_QK_NORM_PER_HEAD && kind >= LENS_HOOK_Q_NORM_SCALE &&
           kind <= LENS_HOOK_K_NORM_NORMALIZED;
}

lens_hook_kind lens_attention_keys(const lens_config *cfg) {
    return cfg->positions == LENS_POS_ROTARY ? LENS_HOOK_ROT_K : LENS_HOOK_K;
}

bool lens_hook_is_per_layer(lens_hook_kind kind) {
    return kind >= LENS_HOOK_RESID_PRE && kind <= LENS_HOOK_RESID_POST;
}

bool lens_hook_exists(const lens_config *cfg, lens_hook_kind kind) {
    const bool post_only = cfg->norm_placement == LENS_NORM_AFTER;
    const bool norm = cfg->normalization != LENS_NORM_NONE;
    const bool mlp = !cfg->attn_only;
    const bool output_norms = norm && cfg->norm_placement != LENS_NORM_BEFORE;
    switch (kind) {
    case LENS_HOOK_TOKENS:
        return cfg->use_hook_tokens;
    case LENS_HOOK_POS_EMBED:
        return cfg->positions == LENS_POS_STANDARD;
    case LENS_HOOK_Q_NORM_SCALE:
    case LENS_HOOK_Q_NORM_NORMALIZED:
    case LENS_HOOK_K_NORM_SCALE:
    case LENS_HOOK_K_NORM_NORMALIZED:
        return cfg->qk_norm != LENS_QK_NORM_NONE;
    case LENS_HOOK_ROT_Q:
    case LENS_HOOK_ROT_K:
        return cfg->positions == LENS_POS_ROTARY;
    case LENS_HOOK_LN1_POST_SCALE:
    case LENS_HOOK_LN1_POST_NORMALIZED:
        return output_norms;
    case LENS_HOOK_LN2_POST_SCALE:
    case LENS_HOOK_LN2_POST_NORMALIZED:
        return output_norms && mlp;
    case LENS_HOOK_MLP_PRE_LINEAR:
        return mlp && cfg->gated_mlp;
    case LENS_HOOK_ATTN_IN:
        return cfg->use_attn_in;
    case LENS_HOOK_Q_INPUT:
    case LENS_HOOK_K_INPUT:
    case LENS_HOOK_V_INPUT:
        return cfg->use_split_qkv_input;
    case LENS_HOOK_LN1_SCALE:
    case LENS_HOOK_LN1_NORMALIZED:
        return norm && !post_only;
    case LENS_HOOK_LN_FINAL_SCALE:
    case LENS_HOOK_LN_FINAL_NORMALIZED:
        return norm;
    case LENS_HOOK_RESULT:
        return cfg->use_attn_result;
    case LENS_HOOK_RESID_MID:
        return mlp && !cfg->parallel_attn_mlp;
    case LENS_HOOK_MLP_PRE:
    case LENS_HOOK_MLP_POST:
    case LENS_HOOK_MLP_OUT:
        return mlp;
    case LENS_HOOK_MLP_IN:
        return mlp && cfg->use_hook_mlp_in;
    case LENS_HOOK_LN2_SCALE:
    case LENS_HOOK_LN2_NORMALIZED:
        return mlp && norm && !post_only && !cfg->shared_ln;
    case LENS_HOOK_MLP_MID:
    case LENS_HOOK_MLP_LN_SCALE:
    case LENS_HOOK_MLP_LN_NORMALIZED:
        return mlp && cfg->act_fn == LENS_ACT_SOLU_LN;
    default:
        return kind < LENS_HOOK_KIND_COUNT;
    }
}

size_t lens_hook_slots(const lens_config *cfg) {
    return (size_t)LENS_HOOK_KIND_COUNT * (size_t)cfg->n_layers;
}

size_t lens_hook_slot(const lens_config *cfg, lens_hook hook) {
    return (size_t)hook.kind * (size_t)cfg->n_layers + (size_t)hook.layer;
}

void lens_hook_name(lens_hook hook, char *buf, size_t buflen) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(buf, buflen, hook_formats[hook.kind], hook.layer);
#pragma GCC diagnostic pop
}

/* TransformerBridge's canonical names of hook (TL 4.x, beside the legacy
 * names under enable_compatibility_mode) into names[]; returns how many.
 * Only names whose values are exactly this hook's are listed: the bridge's
 * hook_attn_out of a model with output norms is ln1_post.hook_out, its
 * attn.hook_out there (before the norm) has no lensd hook. */
static int hook_aliases(const lens_config *cfg, lens_hook hook, char names[3][96]) {
    const bool output_norms = cfg->norm_placement != LENS_NORM_BEFORE;
    const bool gated = cfg->gated_mlp;
    const char *formats[3] = {NULL, NULL, NULL};
    switch (hook.kind) {
    case LENS_HOOK_TOKENS:
        formats[0] = "embed.hook_in";
        break;
    case LENS_HOOK_EMBED:
        formats[0] = "embed.hook_out";
        break;
    case LENS_HOOK_RESID_PRE:
        formats[0] = "blocks.%d.hook_in";
        formats[1] = cfg->norm_placement != LENS_NORM_AFTER ? "blocks.%d.ln1.hook_in" : NULL;
        formats[2] = cfg->parallel_attn_mlp && !cfg->shared_ln ? "blocks.%d.ln2.hook_in" : NULL;
        break;
    case LENS_HOOK_Q:
        formats[0] = "blocks.%d.attn.q.hook_out";
        break;
    case LENS_HOOK_K:
        formats[0] = "blocks.%d.attn.k.hook_out";
        break;
    case LENS_HOOK_V:
        formats[0] = "blocks.%d.attn.v.hook_out";
        break;
    case LENS_HOOK_Z:
        formats[0] = "blocks.%d.attn.o.hook_in";
        break;
    case LENS_HOOK_ATTN_OUT:
        formats[0] = output_norms ? "blocks.%d.ln1_post.hook_out" : "blocks.%d.attn.hook_out";
        formats[1] = output_norms ? NULL : "blocks.%d.attn.o.hook_out";
        break;
    case LENS_HOOK_RESID_MID:
        formats[0] = cfg->norm_placement == LENS_NORM_AFTER ? "blocks.%d.mlp.hook_in"
                                                            : "blocks.%d.ln2.hook_in";
        break;
    case LENS_HOOK_MLP_PRE:
        formats[0] = gated ? "blocks.%d.mlp.gate.hook_out" : "blocks.%d.mlp.in.hook_out";
        break;
    case LENS_HOOK_MLP_PRE_LINEAR:
        formats[0] = "blocks.%d.mlp.in.hook_out";
        break;
    case LENS_HOOK_MLP_POST:
        formats[0] = "blocks.%d.mlp.out.hook_in";
        break;
    case LENS_HOOK_MLP_OUT:
        formats[0] = output_norms ? "blocks.%d.ln2_post.hook_out" : "blocks.%d.mlp.hook_out";
        formats[1] = output_norms ? NULL : "blocks.%d.mlp.out.hook_out";
        break;
    case LENS_HOOK_RESID_POST:
        formats[0] = "blocks.%d.hook_out";
        break;
    case LENS_HOOK_UNEMBED_OUT:
        formats[0] = "hook_unembed";
        break;
    default:
        break;
    }
    int n = 0;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    for (int i = 0; i < 3; i++)
        if (formats[i]) snprintf(names[n++], sizeof names[0], formats[i], hook.layer);
#pragma GCC diagnostic pop
    return n;
}

void lens_hook_foreach(const lens_config *cfg, void (*fn)(void *user, lens_hook hook), void *user) {
    for (int kind = LENS_HOOK_TOKENS; kind < LENS_HOOK_RESID_PRE; kind++)
        if (lens_hook_exists(cfg, (lens_hook_kind)kind)) fn(user, (lens_hook){kind, 0});
    for (int l = 0; l < cfg->n_layers; l++)
        for (int kind = LENS_HOOK_RESID_PRE; kind <= LENS_HOOK_RESID_POST; kind++)
            if (lens_hook_exists(cfg, (lens_hook_kind)kind)) fn(user, (lens_hook){kind, l});
    for (int kind = LENS_HOOK_RESID_POST + 1; kind < LENS_HOOK_KIND_COUNT; kind++)
        if (lens_hook_exists(cfg, (lens_hook_kind)kind)) fn(user, (lens_hook){kind, 0});
}

lens_dtype lens_hook_dtype(lens_hook_kind kind) {
    return kind == LENS_HOOK_TOKENS ? LENS_I64 : LENS_F32;
}

static bool heads_in_attn_input(const lens_config *cfg) {
    return cfg->use_split_qkv_input || cfg->use_attn_in;
}

int lens_hook_shape(const lens_config *cfg, lens_hook hook, int B, int T,
                    int64_t shape[LENS_MAX_DIMS]) {
    const int64_t d = cfg->d_model, h = cfg->n_heads, dh = cfg->d_head, m = cfg->d_mlp;
    shape[0] = B;
    shape[1] = T;
    switch (hook.kind) {
    case LENS_HOOK_TOKENS:
        return 2;
    case LENS_HOOK_ATTN_IN:
    case LENS_HOOK_Q_INPUT:
    case LENS_HOOK_K_INPUT:
    case LENS_HOOK_V_INPUT:
    case LENS_HOOK_RESULT:
        shape[2] = h;
        shape[3] = d;
        return 4;
    case LENS_HOOK_LN1_SCALE:
    case LENS_HOOK_LN1_NORMALIZED:
        if (heads_in_attn_input(cfg)) {
            shape[2] = h;
            shape[3] = hook.kind == LENS_HOOK_LN1_SCALE ? 1 : d;
            return 4;
        }
        shape[2] = hook.kind == LENS_HOOK_LN1_SCALE ? 1 : d;
        return 3;
    case LENS_HOOK_LN2_SCALE:
    case LENS_HOOK_LN1_POST_SCALE:
    case LENS_HOOK_LN2_POST_SCALE:
    case LENS_HOOK_MLP_LN_SCALE:
    case LENS_HOOK_LN_FINAL_SCALE:
        shape[2] = 1;
        return 3;
    case LENS_HOOK_Q:
    case LENS_HOOK_ROT_Q:
    case LENS_HOOK_Z:
        shape[2] = h;
        shape[3] = dh;
        return 4;
    case LENS_HOOK_K:
    case LENS_HOOK_ROT_K:
    case LENS_HOOK_V:
        shape[2] = cfg->n_kv_heads;
        shape[3] = dh;
        return 4;
    case LENS_HOOK_Q_NORM_SCALE:
    case LENS_HOOK_Q_NORM_NORMALIZED:
    case LENS_HOOK_K_NORM_SCALE:
    case LENS_HOOK_K_NORM_NORMALIZED: {
        /* per head: [B, heads, T, 1 or dh]; over the whole projection: [B, T, 1 or heads*dh] */
        const bool is_q = hook.kind <= LENS_HOOK_Q_NORM_NORMALIZED;
        const bool scale =
            hook.kind == LENS_HOOK_Q_NORM_SCALE || hook.kind == LENS_HOOK_K_NORM_SCALE;
        const int64_t heads = is_q ? h : cfg->n_kv_heads;
        if (cfg->qk_norm == LENS_QK_NORM_WHOLE) {
            shape[2] = scale ? 1 : heads * dh;
            return 3;
        }
        /* TransformerBridge's layout (HF's): heads before positions */
        shape[1] = heads;
        shape[2] = T;
        shape[3] = scale ? 1 : dh;
        return 4;
    }
    case LENS_HOOK_ATTN_SCORES:
    case LENS_HOOK_PATTERN:
        shape[1] = h;
        shape[2] = T;
        shape[3] = T;
        return 4;
    case LENS_HOOK_MLP_PRE:
    case LENS_HOOK_MLP_PRE_LINEAR:
    case LENS_HOOK_MLP_MID:
    case LENS_HOOK_MLP_LN_NORMALIZED:
    case LENS_HOOK_MLP_POST:
        shape[2] = m;
        return 3;
    case LENS_HOOK_UNEMBED_OUT:
        shape[2] = cfg->d_vocab_out;
        return 3;
    default:
        shape[2] = d;
        return 3;
    }
}

/* Edit distance between two short strings, for "did you mean". */
static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    size_t *row = malloc((lb + 1) * sizeof *row);
    if (!row) return (size_t)-1;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    size_t result = row[lb];
    free(row);
    return result;
}

typedef struct parse_state {
    const lens_config *cfg;
    const char *wanted;
    bool found;
    lens_hook hook;
    char near[3][96];
    size_t near_dist[3];
} parse_state;

static void parse_visit(void *user, lens_hook hook) {
    parse_state *st = user;
    char name[96];
    lens_hook_name(hook, name, sizeof name);
    char aliases[3][96];
    const int n_aliases = hook_aliases(st->cfg, hook, aliases);
    bool same = strcmp(name, st->wanted) == 0;
    for (int i = 0; i < n_aliases && !same; i++)
        same = strcmp(aliases[i], st->wanted) == 0;
    if (same) {
        st->found = true;
        st->hook = hook;
        return;
    }
    size_t dist = edit_distance(name, st->wanted);
    for (int i = 0; i < 3; i++) {
        if (dist < st->near_dist[i]) {
            for (int j = 2; j > i; j--) {
                st->near_dist[j] = st->near_dist[j - 1];
                memcpy(st->near[j], st->near[j - 1], sizeof st->near[j]);
            }
            st->near_dist[i] = dist;
            snprintf(st->near[i], sizeof st->near[i], "%s", name);
            break;
        }
    }
}

int lens_hook_parse(const lens_config *cfg, const char *name, lens_hook *out, lens_err *err) {
    parse_state st = {
        .cfg = cfg, .wanted = name, .near_dist = {(size_t)-1, (size_t)-1, (size_t)-1}};
    lens_hook_foreach(cfg, parse_visit, &st);
    if (st.found) {
        *out = st.hook;
        return 0;
    }
    lens_err_set(err, "\"%s\" is not a hook point of this model; nearest: %s%s%s%s%s", name,
                 st.near[0], st.near[1][0] ? ", " : "", st.near[1], st.near[2][0] ? ", " : "",
                 st.near[2]);
    return -1;
}

typedef struct glob_state {
    const lens_config *cfg;
    const char *pattern;
    bool aliases; /* match the canonical names instead of the legacy ones */
    uint8_t *enabled;
    size_t matched;
} glob_state;

static void glob_visit(void *user, lens_hook hook) {
    glob_state *st = user;
    char name[96], aliases[3][96];
    lens_hook_name(hook, name, sizeof name);
    bool match = !st->aliases && fnmatch(st->pattern, name, 0) == 0;
    const int n_aliases = st->aliases ? hook_aliases(st->cfg, hook, aliases) : 0;
    for (int i = 0; i < n_aliases && !match; i++)
        match = fnmatch(st->pattern, aliases[i], 0) == 0;
    if (match) {
        st->enabled[lens_hook_slot(st->cfg, hook)] = 1;
        st->matched++;
    }
}

size_t lens_hook_select_glob(const lens_config *cfg, const char *pattern, uint8_t *enabled) {
    glob_state st = {cfg, pattern, false, enabled, 0};
    lens_hook_foreach(cfg, glob_visit, &st);
    if (st.matched) return st.matched;
    st.aliases = true;
    lens_hook_foreach(cfg, glob_visit, &st);
    return st.matched;
}
