/*
 * patch.c: activation patching sweeps as batched passes.
 *
 * A sweep is one or more components (the _every sweeps stack three or five),
 * each a hook kind and a patch setter — TL's layer_pos_patch_setter and its
 * siblings. Every index of every component is one patched run of the whole
 * corrupted batch of P prompts. The runs are grouped by layer and stacked
 * along the batch axis, n runs x P prompts per pass: row r of a pass is
 * prompt r % P of run r / P, and the hook callback copies that run's patch
 * from the clean run's activation of prompt r % P.
 *
 * Each pass starts at its layer from the corrupted run's residual stream.
 * With causal attention, a sweep that patches one position (or one
 * destination) also leaves every earlier position as in the corrupted run:
 * row r computes only positions from min(patched position, metric
 * position) on (forward.h's lens_suffix), with the corrupted run's keys and
 * values before it. A pass then holds as many runs as fit in its budget of
 * computed positions.
 *
 * A run whose patch is, for every prompt, what the corrupted run has there
 * bit for bit (the positions before the prompts first differ, masked pattern
 * entries) is the corrupted run; it is answered with the corrupted metric
 * and never computed.
 */
#include "core/patch.h"

#include <stdlib.h>
#include <string.h>

#include "core/capture.h"

typedef enum setter {
    AT_POS,                /* act[:, pos] of [B, T, ...]: resid_pre, resid_mid, attn_out, mlp_out */
    AT_POS_HEAD,           /* act[:, pos, head] of [B, T, H, d_head]: z, q, k, v */
    AT_HEAD,               /* act[:, :, head] of [B, T, H, d_head] */
    PATTERN_HEAD,          /* act[:, head] of [B, H, T, T] */
    PATTERN_HEAD_DEST,     /* act[:, head, dest] */
    PATTERN_HEAD_DEST_SRC, /* act[:, head, dest, src] */
} setter;

typedef struct component {
    const char *name;
    lens_hook_kind kind;
    setter set;
} component;

/* The components a sweep patches (macros: each is an initializer of SWEEPS). */
#define RESID_PRE                                                                                  \
    { "resid_pre", LENS_HOOK_RESID_PRE, AT_POS }
#define RESID_MID                                                                                  \
    { "resid_mid", LENS_HOOK_RESID_MID, AT_POS }
#define ATTN_OUT                                                                                   \
    { "attn_out", LENS_HOOK_ATTN_OUT, AT_POS }
#define MLP_OUT                                                                                    \
    { "mlp_out", LENS_HOOK_MLP_OUT, AT_POS }
#define Z_BY_POS                                                                                   \
    { "z", LENS_HOOK_Z, AT_POS_HEAD }
#define Q_BY_POS                                                                                   \
    { "q", LENS_HOOK_Q, AT_POS_HEAD }
#define K_BY_POS                                                                                   \
    { "k", LENS_HOOK_K, AT_POS_HEAD }
#define V_BY_POS                                                                                   \
    { "v", LENS_HOOK_V, AT_POS_HEAD }
#define Z_ALL                                                                                      \
    { "z", LENS_HOOK_Z, AT_HEAD }
#define Q_ALL                                                                                      \
    { "q", LENS_HOOK_Q, AT_HEAD }
#define K_ALL                                                                                      \
    { "k", LENS_HOOK_K, AT_HEAD }
#define V_ALL                                                                                      \
    { "v", LENS_HOOK_V, AT_HEAD }
#define PATTERN_ALL                                                                                \
    { "pattern", LENS_HOOK_PATTERN, PATTERN_HEAD }
#define PATTERN_DEST                                                                               \
    { "pattern", LENS_HOOK_PATTERN, PATTERN_HEAD_DEST }
#define PATTERN_DEST_SRC                                                                           \
    { "pattern", LENS_HOOK_PATTERN, PATTERN_HEAD_DEST_SRC }

typedef struct sweep_def {
    const char *name;
    int n_components;
    component components[5];
    bool dest_before_head; /* by_pos_every: the pattern's [layer, head, dest] stored as
                              [layer, dest, head], as TL rearranges it to stack */
} sweep_def;

static const sweep_def SWEEPS[LENS_SWEEP_COUNT] = {
    [LENS_SWEEP_RESID_PRE] = {"resid_pre", 1, {RESID_PRE}, false},
    [LENS_SWEEP_RESID_MID] = {"resid_mid", 1, {RESID_MID}, false},
    [LENS_SWEEP_ATTN_OUT] = {"attn_out", 1, {ATTN_OUT}, false},
    [LENS_SWEEP_MLP_OUT] = {"mlp_out", 1, {MLP_OUT}, false},
    [LENS_SWEEP_ATTN_HEAD_OUT_BY_POS] = {"attn_head_out_by_pos", 1, {Z_BY_POS}, false},
    [LENS_SWEEP_ATTN_HEAD_Q_BY_POS] = {"attn_head_q_by_pos", 1, {Q_BY_POS}, false},
    [LENS_SWEEP_ATTN_HEAD_K_BY_POS] = {"attn_head_k_by_pos", 1, {K_BY_POS}, false},
    [LENS_SWEEP_ATTN_HEAD_V_BY_POS] = {"attn_head_v_by_pos", 1, {V_BY_POS}, false},
    [LENS_SWEEP_ATTN_HEAD_PATTERN_BY_POS] = {"attn_head_pattern_by_pos", 1, {PATTERN_DEST}, false},
    [LENS_SWEEP_ATTN_HEAD_PATTERN_DEST_SRC_POS] = {"attn_head_pattern_dest_src_pos",
                                                   1,
                                                   {PATTERN_DEST_SRC},
                                                   false},
    [LENS_SWEEP_ATTN_HEAD_OUT_ALL_POS] = {"attn_head_out_all_pos", 1, {Z_ALL}, false},
    [LENS_SWEEP_ATTN_HEAD_Q_ALL_POS] = {"attn_head_q_all_pos", 1, {Q_ALL}, false},
    [LENS_SWEEP_ATTN_HEAD_K_ALL_POS] = {"attn_head_k_all_pos", 1, {K_ALL}, false},
    [LENS_SWEEP_ATTN_HEAD_V_ALL_POS] = {"attn_head_v_all_pos", 1, {V_ALL}, false},
    [LENS_SWEEP_ATTN_HEAD_PATTERN_ALL_POS] = {"attn_head_pattern_all_pos", 1, {PATTERN_ALL}, false},
    [LENS_SWEEP_BLOCK_EVERY] = {"block_every", 3, {RESID_PRE, ATTN_OUT, MLP_OUT}, false},
    [LENS_SWEEP_ATTN_HEAD_ALL_POS_EVERY] = {"attn_head_all_pos_every",
                                            5,
                                            {Z_ALL, Q_ALL, K_ALL, V_ALL, PATTERN_ALL},
                                            false},
    [LENS_SWEEP_ATTN_HEAD_BY_POS_EVERY] = {"attn_head_by_pos_every",
                                           5,
                                           {Z_BY_POS, Q_BY_POS, K_BY_POS, V_BY_POS, PATTERN_DEST},
                                           true},
};

const char *lens_sweep_name(lens_sweep sweep) {
    return sweep >= 0 && sweep < LENS_SWEEP_COUNT ? SWEEPS[sweep].name : "?";
}

int lens_sweep_parse(const char *name, lens_sweep *out) {
    for (int s = 0; s < LENS_SWEEP_COUNT; s++) {
        if (strcmp(name, SWEEPS[s].name) == 0) {
            *out = (lens_sweep)s;
            return 0;
        }
    }
    return -1;
}

/* One component's axes: ndim and shape (without the stacking axis). */
static int component_shape(const component *c, const lens_config *cfg, int T, int64_t shape[4]) {
    const int64_t L = cfg->n_layers, H = cfg->n_heads;
    switch (c->set) {
    case AT_POS:
        shape[0] = L, shape[1] = T;
        return 2;
    case AT_POS_HEAD:
        shape[0] = L, shape[1] = T, shape[2] = H;
        return 3;
    case AT_HEAD:
    case PATTERN_HEAD:
        shape[0] = L, shape[1] = H;
        return 2;
    case PATTERN_HEAD_DEST:
        shape[0] = L, shape[1] = H, shape[2] = T;
        return 3;
    case PATTERN_HEAD_DEST_SRC:
        shape[0] = L, shape[1] = H, shape[2] = T, shape[3] = T;
        return 4;
    }
    return 0;
}

/* Whether component c patches a key/value head that several query heads
 * share (k or v of a grouped-query model): its runs are made for the first
 * query head of each group only, and the group's other heads get that value
 * (the head axis counts query heads; docs/API.md). */
static bool shares_heads(const component *c, const lens_config *cfg) {
    return (c->kind == LENS_HOOK_K || c->kind == LENS_HOOK_V) && cfg->n_kv_heads < cfg->n_heads;
}

int lens_sweep_shape(const lens_config *cfg, lens_sweep sweep, int T, int64_t shape[4],
                     long *runs) {
    const sweep_def *s = &SWEEPS[sweep];
    int64_t part[4];
    const int n = component_shape(&s->components[0], cfg, T, part);
    long per = 1;
    for (int i = 0; i < n; i++)
        per *= (long)part[i];
    *runs = 0;
    for (int c = 0; c < s->n_components; c++)
        *runs += shares_heads(&s->components[c], cfg) ? per / cfg->n_heads * cfg->n_kv_heads : per;
    if (s->n_components == 1) {
        memcpy(shape, part, sizeof part);
        return n;
    }
    shape[0] = s->n_components;
    memcpy(shape + 1, part, (size_t)n * sizeof *part);
    if (s->dest_before_head) shape[2] = T, shape[3] = cfg->n_heads;
    return n + 1;
}

void lens_sweep_axes(lens_sweep sweep, const char *names[4]) {
    const sweep_def *s = &SWEEPS[sweep];
    int i = 0;
    if (s->n_components > 1) names[i++] = "component";
    switch (s->components[0].set) {
    case AT_POS:
        names[i++] = "layer", names[i++] = "pos";
        break;
    case AT_POS_HEAD:
        names[i++] = "layer", names[i++] = "pos", names[i++] = "head";
        break;
    case AT_HEAD:
    case PATTERN_HEAD:
        names[i++] = "layer", names[i++] = "head";
        break;
    case PATTERN_HEAD_DEST:
        names[i++] = "layer", names[i++] = "head", names[i++] = "dest_pos";
        break;
    case PATTERN_HEAD_DEST_SRC:
        names[i++] = "layer", names[i++] = "head", names[i++] = "dest_pos", names[i++] = "src_pos";
        break;
    }
}

int lens_sweep_components(lens_sweep sweep, const char *names[5]) {
    const sweep_def *s = &SWEEPS[sweep];
    for (int c = 0; c < s->n_components; c++)
        names[c] = s->components[c].name;
    return s->n_components;
}

/* One patched run: component, layer and indices (-1: all), and where its
 * metric goes in the output. */
typedef struct patch_item {
    int component, layer, pos, head, src;
    size_t out;
} patch_item;

/* Every run of the sweep, grouped by layer (all components of layer 0 first):
 * n of them (lens_sweep_shape's runs). A shared key/value head is run once,
 * at the first query head of its group (shares_heads). */
static patch_item *enumerate(const sweep_def *s, const lens_config *cfg, int T, long n) {
    patch_item *items = malloc((size_t)n * sizeof *items);
    if (!items) return NULL;
    const int L = cfg->n_layers, H = cfg->n_heads, group = cfg->n_heads / cfg->n_kv_heads;
    int64_t part[4];
    const int nd = component_shape(&s->components[0], cfg, T, part);
    size_t per = 1;
    for (int i = 0; i < nd; i++)
        per *= (size_t)part[i];
    long k = 0;
    for (int l = 0; l < L; l++) {
        for (int c = 0; c < s->n_components; c++) {
            const component *comp = &s->components[c];
            const size_t base = (size_t)c * per;
            patch_item it = {c, l, -1, -1, -1, 0};
            switch (comp->set) {
            case AT_POS:
                for (it.pos = 0; it.pos < T; it.pos++, k++)
                    it.out = base + (size_t)l * T + it.pos, items[k] = it;
                break;
            case AT_POS_HEAD:
                for (it.pos = 0; it.pos < T; it.pos++)
                    for (it.head = 0; it.head < H;
                         it.head += shares_heads(comp, cfg) ? group : 1, k++)
                        it.out = base + ((size_t)l * T + it.pos) * H + it.head, items[k] = it;
                break;
            case AT_HEAD:
            case PATTERN_HEAD:
                for (it.head = 0; it.head < H; it.head += shares_heads(comp, cfg) ? group : 1, k++)
                    it.out = base + (size_t)l * H + it.head, items[k] = it;
                break;
            case PATTERN_HEAD_DEST:
                for (it.head = 0; it.head < H; it.head++)
                    for (it.pos = 0; it.pos < T; it.pos++, k++) {
                        it.out = s->dest_before_head
                                     ? base + ((size_t)l * T + it.pos) * H + it.head
                                     : base + ((size_t)l * H + it.head) * T + it.pos;
                        items[k] = it;
                    }
                break;
            case PATTERN_HEAD_DEST_SRC:
                for (it.head = 0; it.head < H; it.head++)
                    for (it.pos = 0; it.pos < T; it.pos++)
                        for (it.src = 0; it.src < T; it.src++, k++)
                            it.out = base + (((size_t)l * H + it.head) * T + it.pos) * T + it.src,
                            items[k] = it;
                break;
            }
        }
    }
    return items;
}

/* The metric of P prompts' logit rows [P, V]. */
static double metric_of(const lens_patch_metric *m, const float *rows, int P, int V) {
    double sum = 0.0;
    for (int p = 0; p < P; p++) {
        const float *row = rows + (size_t)p * V;
        sum += m->kind == LENS_METRIC_LOGIT_DIFF ? (double)(row[m->answer[p]] - row[m->wrong[p]])
                                                 : (double)row[m->answer[p]];
    }
    return sum / P;
}

/* The output ids a metric reads per prompt (answer, and wrong for a logit
 * difference): 1 or 2. */
static int metric_ids(const lens_patch_metric *m) {
    return m->kind == LENS_METRIC_LOGIT_DIFF ? 2 : 1;
}

/* The metric of P prompts' answer logits [P, metric_ids(m)] (patched runs
 * unembed only those; lens_logit_ids). */
static double metric_of_answers(const lens_patch_metric *m, const float *answers, int P) {
    const int k = metric_ids(m);
    double sum = 0.0;
    for (int p = 0; p < P; p++)
        sum += k == 2 ? (double)(answers[2 * p] - answers[2 * p + 1]) : (double)answers[p];
    return sum / P;
}

/* The state of one pass for the hook callback. */
typedef struct pass_state {
    const sweep_def *sweep;
    const patch_item *items; /* this pass's runs */
    int P, T, H;
    size_t n_rows;            /* runs x P */
    const int32_t *first;     /* [rows]: each row's first computed position */
    const int32_t *first_row; /* [rows]: where its positions start among the computed rows */
    const lens_captured *const *clean; /* [component]: the clean activation at the pass's layer */
} pass_state;

/* Where prompt p's part of run it's patch lies in the component's
 * activation of the P prompts, act ([P, T, ...] or the pattern's
 * [P, H, T, T]): count spans of len floats, the first at offset, each next
 * stride further (AT_HEAD's span per position; one span otherwise). Query
 * head it->head of a grouped-query model reads (so patches) key/value head
 * it->head / (H / heads) of k and v. */
typedef struct patch_span {
    size_t offset, len, stride;
    int count;
} patch_span;

static patch_span source_span(const component *c, const patch_item *it, size_t p,
                              const lens_captured *act, int T, int H) {
    const int64_t *shape = act->shape;
    const int nd = act->ndim;
    const size_t t = (size_t)T, pos = (size_t)it->pos;
    switch (c->set) {
    case AT_POS: {
        const size_t D = (size_t)shape[nd - 1];
        return (patch_span){(p * t + pos) * D, D, 0, 1};
    }
    case AT_POS_HEAD:
    case AT_HEAD: {
        const size_t dh = (size_t)shape[nd - 1], heads = (size_t)shape[nd - 2];
        const size_t head = (size_t)it->head / ((size_t)H / heads);
        if (c->set == AT_POS_HEAD)
            return (patch_span){((p * t + pos) * heads + head) * dh, dh, 0, 1};
        return (patch_span){(p * t * heads + head) * dh, dh, heads * dh, T};
    }
    case PATTERN_HEAD:
    case PATTERN_HEAD_DEST:
    case PATTERN_HEAD_DEST_SRC:
        break;
    }
    const size_t block = (p * (size_t)H + (size_t)it->head) * t * t;
    if (c->set == PATTERN_HEAD) return (patch_span){block, t * t, 0, 1};
    if (c->set == PATTERN_HEAD_DEST) return (patch_span){block + pos * t, t, 0, 1};
    return (patch_span){block + pos * t + (size_t)it->src, 1, 0, 1};
}

/* Whether run it's patch writes, for every prompt, exactly what the
 * corrupted run has there (a position before the prompts first differ, a
 * pattern entry both runs mask): the patched run is then the corrupted run,
 * and its metric the corrupted run's. */
static bool patch_changes_nothing(const sweep_def *s, const patch_item *it, const lens_cache *clean,
                                  const lens_cache *corrupted, int P, int T, int H) {
    const component *c = &s->components[it->component];
    const lens_captured *from = lens_cache_find(clean, c->kind, it->layer);
    const lens_captured *to = lens_cache_find(corrupted, c->kind, it->layer);
    for (int p = 0; p < P; p++) {
        const patch_span span = source_span(c, it, (size_t)p, from, T, H);
        for (int i = 0; i < span.count; i++) {
            const size_t at = span.offset + (size_t)i * span.stride;
            if (memcmp((const float *)from->data + at, (const float *)to->data + at,
                       span.len * sizeof(float)) != 0)
                return false;
        }
    }
    return true;
}

/* Copies run r / P's patch into row r of act, from prompt r % P of the
 * clean run. Row r's position t is computed row first_row[r] + t - first[r]
 * of act (forward.h's packed layout; the dense one when every first is 0). */
static int patch_rows(void *user, lens_hook hook, lens_tensor *act, lens_err *err) {
    (void)err;
    const pass_state *st = user;
    const size_t T = (size_t)st->T, H = (size_t)st->H;
    float *dst = act->data;
    const int64_t *shape = act->shape;
    const int nd = act->ndim;
    for (size_t r = 0; r < st->n_rows; r++) {
        const patch_item *it = &st->items[r / (size_t)st->P];
        const component *c = &st->sweep->components[it->component];
        if (c->kind != hook.kind || it->layer != hook.layer) continue;
        const lens_captured *clean = st->clean[it->component];
        const size_t p = r % (size_t)st->P, first = (size_t)st->first[r];
        const size_t row = (size_t)st->first_row[r] - first; /* + t: position t's row */
        const patch_span span = source_span(c, it, p, clean, st->T, st->H);
        const float *src = (const float *)clean->data + span.offset;
        switch (c->set) {
        case AT_POS:
            memcpy(dst + (row + it->pos) * span.len, src, span.len * sizeof *dst);
            break;
        case AT_POS_HEAD:
        case AT_HEAD: {
            const size_t dh = (size_t)shape[nd - 1], heads = (size_t)shape[nd - 2];
            const size_t head = (size_t)it->head / (H / heads);
            const int t0 = c->set == AT_HEAD ? 0 : it->pos;
            for (int i = 0; i < span.count; i++)
                memcpy(dst + ((row + t0 + i) * heads + head) * dh, src + (size_t)i * span.stride,
                       dh * sizeof *dst);
            break;
        }
        case PATTERN_HEAD:
        case PATTERN_HEAD_DEST:
        case PATTERN_HEAD_DEST_SRC: {
            /* row r's [H, Q, T] block of query rows from first, Q = T - first */
            const size_t Q = T - first, block = H * ((size_t)st->first_row[r]) * T;
            size_t at = block + (size_t)it->head * Q * T;
            if (c->set != PATTERN_HEAD) at += ((size_t)it->pos - first) * T;
            if (c->set == PATTERN_HEAD_DEST_SRC) at += (size_t)it->src;
            memcpy(dst + at, src, span.len * sizeof *dst);
            break;
        }
        }
    }
    return 0;
}

/* A run of the unpatched batch capturing enabled (or nothing), with the
 * logits at the metric's positions; its metric into *metric. */
static int plain_run(const lens_model *m, lens_workspace *ws, const lens_token_batch *batch,
                     const uint8_t *enabled, const lens_patch_metric *metric, lens_cache *out,
                     double *value, lens_err *err) {
    const lens_cache_request req = {
        .enabled = enabled, .logits = true, .logit_positions = metric->positions};
    if (lens_run_cache(m, ws, batch, &req, out, err)) return -1;
    *value = metric_of(metric, out->logits, batch->B, m->cfg.d_vocab_out);
    return 0;
}

/* Answer ids inside the output vocabulary, metric positions inside the prompts. */
static int check_metric(const lens_config *c, const lens_patch_metric *m, int B, int T,
                        lens_err *err) {
    for (int p = 0; p < B; p++) {
        const int32_t ids[2] = {m->answer[p], m->kind == LENS_METRIC_LOGIT_DIFF ? m->wrong[p] : 0};
        for (int i = 0; i < 2; i++) {
            if (ids[i] < 0 || ids[i] >= c->d_vocab_out) {
                lens_err_set(err,
                             "answer id %d of prompt %d is outside the output vocabulary of %d",
                             ids[i], p, c->d_vocab_out);
                return -1;
            }
        }
        if (m->positions[p] < 0 || m->positions[p] >= T) {
            lens_err_set(err, "metric position %d of prompt %d is outside its %d positions",
                         m->positions[p], p, T);
            return -1;
        }
    }
    return 0;
}

static int check_shapes(const lens_token_batch *clean, const lens_token_batch *corrupted,
                        lens_err *err) {
    if (clean->B != corrupted->B || clean->T != corrupted->T) {
        lens_err_set(err,
                     "clean and corrupted prompts must have the same shape: %d prompts of %d "
                     "tokens against %d of %d",
                     clean->B, clean->T, corrupted->B, corrupted->T);
        return -1;
    }
    return 0;
}

static int check_request(const lens_config *c, const lens_patch_request *req, lens_err *err) {
    const lens_token_batch *clean = req->clean;
    if (req->sweep < 0 || req->sweep >= LENS_SWEEP_COUNT) {
        lens_err_set(err, "unknown sweep %d", (int)req->sweep);
        return -1;
    }
    if (check_shapes(clean, req->corrupted, err)) return -1;
    const sweep_def *s = &SWEEPS[req->sweep];
    for (int i = 0; i < s->n_components; i++) {
        if (!lens_hook_exists(c, s->components[i].kind)) {
            lens_err_set(err, "sweep %s patches hook_%s, which this model lacks (%s)", s->name,
                         s->components[i].name,
                         c->attn_only ? "it is attention-only"
                                      : "its attention and MLP run in parallel: no resid_mid");
            return -1;
        }
    }
    return check_metric(c, &req->metric, clean->B, clean->T, err);
}

/* Buffers of one pass of up to `rows` rows (runs x P prompts) and `tokens`
 * computed positions: the corrupted tokens and mask repeated for every run,
 * each row's metric position, first computed position and first computed
 * row, room for the residual stream a pass starts from, the answers'
 * logits (ids: each prompt's answer ids) and a hook table. */
typedef struct pass_buffers {
    int32_t *tokens, *positions, *first, *first_row, *ids;
    lens_logit_ids answers;
    uint8_t *mask;
    float *resid, *logits;
    uint8_t *enabled;
} pass_buffers;

static void free_pass(pass_buffers *b) {
    free(b->tokens);
    free(b->positions);
    free(b->first);
    free(b->first_row);
    free(b->ids);
    free(b->mask);
    free(b->resid);
    free(b->logits);
    free(b->enabled);
}

static int alloc_pass(pass_buffers *b, const lens_config *c, const lens_token_batch *bad,
                      const lens_patch_metric *metric, size_t rows, size_t tokens, lens_err *err) {
    const int P = bad->B, T = bad->T, k = metric_ids(metric);
    *b = (pass_buffers){
        .tokens = malloc(rows * T * sizeof *b->tokens),
        .positions = malloc(rows * sizeof *b->positions),
        .first = calloc(rows, sizeof *b->first),
        .first_row = malloc(rows * sizeof *b->first_row),
        .ids = malloc((size_t)P * k * sizeof *b->ids),
        .mask = bad->attn_mask ? malloc(rows * T) : NULL,
        .resid = malloc(tokens * c->d_model * sizeof *b->resid),
        .logits = malloc(rows * k * sizeof *b->logits),
        .enabled = calloc(lens_hook_slots(c), 1),
    };
    if (!b->tokens || !b->positions || !b->first || !b->first_row || !b->ids ||
        (bad->attn_mask && !b->mask) || !b->resid || !b->logits || !b->enabled) {
        free_pass(b);
        lens_err_set_code(err, LENS_ERR_NO_MEMORY, "out of host memory for %zu patched rows", rows);
        return -1;
    }
    for (size_t r = 0; r < rows; r++) {
        memcpy(b->tokens + r * T, bad->tokens + (r % P) * T, (size_t)T * sizeof *b->tokens);
        if (b->mask) memcpy(b->mask + r * T, bad->attn_mask + (r % P) * T, (size_t)T);
        b->positions[r] = metric->positions[r % P];
        b->first_row[r] = (int32_t)(r * T);
    }
    for (int p = 0; p < P; p++) {
        b->ids[p * k] = metric->answer[p];
        if (k == 2) b->ids[p * k + 1] = metric->wrong[p];
    }
    b->answers = (lens_logit_ids){b->ids, P, k};
    return 0;
}

/* Copies the corrupted run's hook_resid_pre of layer into the pass's rows:
 * row r's positions from first[r] on (of prompt r % P) at computed rows
 * first_row[r] on. */
static void replicate_resid(const lens_cache *corrupted, int layer, const pass_buffers *b,
                            long rows, int P, int T, int d) {
    const float *from = lens_cache_find(corrupted, LENS_HOOK_RESID_PRE, layer)->data;
    for (long r = 0; r < rows; r++) {
        const size_t first = (size_t)b->first[r];
        memcpy(b->resid + (size_t)b->first_row[r] * d, from + ((r % P) * (size_t)T + first) * d,
               (T - first) * d * sizeof *b->resid);
    }
}

/* The number of values of out (its shape's product). */
static size_t value_count(const lens_patch_result *out) {
    size_t n = 1;
    for (int i = 0; i < out->ndim; i++)
        n *= (size_t)out->shape[i];
    return n;
}

/* Gives every query head of a group the value of the run made for the
 * group's first head, in the components that share key/value heads. */
static void fill_shared_heads(const sweep_def *s, const lens_config *cfg, const patch_item *items,
                              long n, lens_patch_result *out) {
    const int group = cfg->n_heads / cfg->n_kv_heads;
    for (long i = 0; i < n; i++)
        if (shares_heads(&s->components[items[i].component], cfg))
            for (int j = 1; j < group; j++)
                out->values[items[i].out + (size_t)j] = out->values[items[i].out];
}

/* Rescales out's values so that the corrupted run scores 0 and the clean run 1. */
static int normalize(lens_patch_result *out, lens_err *err) {
    const double span = out->clean_metric - out->corrupted_metric;
    if (span == 0.0) {
        lens_err_set(err,
                     "cannot normalize: the clean and corrupted runs have the same metric (%g)",
                     out->clean_metric);
        return -1;
    }
    for (size_t i = 0; i < value_count(out); i++)
        out->values[i] = (float)((out->values[i] - out->corrupted_metric) / span);
    return 0;
}

/* Whether the sweep's patched runs leave every position before the patched
 * one as in the corrupted run: causal attention, and a patch at one position
 * (or destination) rather than at all of them. */
static bool reuses_positions(const lens_config *c, const lens_patch_request *req) {
    if (!c->causal || req->full_recompute) return false;
    const sweep_def *s = &SWEEPS[req->sweep];
    for (int k = 0; k < s->n_components; k++)
        if (s->components[k].set == AT_HEAD || s->components[k].set == PATTERN_HEAD) return false;
    return true;
}

/* The limits of one pass: rows (runs x P) and computed positions. */
typedef struct pass_limits {
    size_t rows, tokens;
} pass_limits;

/* Fills the pass's rows with the runs from items[0] that share its layer and
 * fit in the limits (at least one): each row's first computed position
 * (0, or with position reuse the earlier of the patched and the metric
 * position) and first computed row. Returns the number of runs; *N is the
 * positions they compute. */
static long fill_pass(pass_buffers *b, const patch_item *items, long n_items, int P, int T,
                      const lens_patch_metric *metric, bool reuse, pass_limits lim, size_t *N) {
    long n = 0;
    size_t total = 0;
    for (; n < n_items && items[n].layer == items[0].layer && (size_t)(n + 1) * P <= lim.rows;
         n++) {
        size_t run_tokens = 0;
        for (int p = 0; p < P; p++) {
            const size_t r = (size_t)n * P + p;
            const int pos = items[n].pos, at = metric->positions[p];
            b->first[r] = reuse ? (pos < at ? pos : at) : 0;
            b->first_row[r] = (int32_t)(total + run_tokens);
            run_tokens += (size_t)(T - b->first[r]);
        }
        if (n > 0 && total + run_tokens > lim.tokens) break;
        total += run_tokens;
    }
    *N = total;
    return n;
}

/* The patched passes of the runs in items, grouped by layer. */
static int run_passes(const lens_model *m, lens_workspace *ws, const lens_patch_request *req,
                      const patch_item *items, long n_items, const lens_cache *clean,
                      const lens_cache *corrupted, pass_limits lim, lens_patch_result *out,
                      lens_err *err) {
    const long done_before = out->unchanged_runs; /* for progress: runs settled without a pass */
    const lens_config *c = &m->cfg;
    const sweep_def *s = &SWEEPS[req->sweep];
    const lens_token_batch *bad = req->corrupted;
    const int P = bad->B, T = bad->T, L = c->n_layers;
    const size_t slots = lens_hook_slots(c);
    const bool reuse = reuses_positions(c, req);
    const float **keys = calloc((size_t)L, sizeof *keys),
                **values = calloc((size_t)L, sizeof *values);
    pass_buffers b = {0};
    int rc = -1;
    if (!keys || !values) {
        lens_err_set_code(err, LENS_ERR_NO_MEMORY, "out of host memory for %d layers", L);
        goto done;
    }
    if (alloc_pass(&b, c, bad, &req->metric, lim.rows, lim.tokens, err)) goto done;
    for (int l = 0; reuse && l < L; l++) {
        keys[l] = lens_cache_find(corrupted, lens_attention_keys(c), l)->data;
        values[l] = lens_cache_find(corrupted, LENS_HOOK_V, l)->data;
    }
    const lens_suffix suffix = {b.first, P, keys, values};
    rc = 0;
    for (long i0 = 0; i0 < n_items && rc == 0;) {
        const int layer = items[i0].layer;
        size_t N;
        const long n = fill_pass(&b, items + i0, n_items - i0, P, T, &req->metric, reuse, lim, &N);
        const lens_captured *clean_at[5];
        memset(b.enabled, 0, slots);
        for (int k = 0; k < s->n_components; k++) {
            clean_at[k] = lens_cache_find(clean, s->components[k].kind, layer);
            b.enabled[lens_hook_slot(c, (lens_hook){s->components[k].kind, layer})] = 1;
        }
        const int start = req->full_recompute ? 0 : layer;
        if (!req->full_recompute) replicate_resid(corrupted, layer, &b, n * P, P, T, c->d_model);
        pass_state st = {s,       items + i0,  P,       T, c->n_heads, (size_t)n * P,
                         b.first, b.first_row, clean_at};
        const lens_batch batch = {
            .B = (int)(n * P), .T = T, .tokens = b.tokens, .attn_mask = b.mask};
        const lens_run run = {.hooks_enabled = b.enabled,
                              .on_hook = patch_rows,
                              .user = &st,
                              .hooks_modify = true,
                              .logits = b.logits,
                              .logit_positions = b.positions,
                              .logit_ids = &b.answers,
                              .start_layer = start,
                              .resid_start = req->full_recompute ? NULL : b.resid,
                              .suffix = reuse ? &suffix : NULL};
        rc = lens_forward(m, ws, &batch, &run, err);
        for (long k = 0; rc == 0 && k < n; k++)
            out->values[items[i0 + k].out] =
                (float)metric_of_answers(&req->metric, b.logits + (size_t)k * P * b.answers.n, P);
        out->passes++;
        out->block_positions += (long)N * (L - start);
        i0 += n;
        if (rc == 0 && req->progress &&
            req->progress(req->progress_user, done_before + i0, done_before + n_items)) {
            lens_err_set(err, "cancelled after %ld of %ld patched runs", done_before + i0,
                         done_before + n_items);
            rc = -1;
        }
    }
done:
    free(keys);
    free(values);
    free_pass(&b);
    return rc;
}

/* The positions one pass computes by default: LENS_PATCH_BATCH_TOKENS on
 * the CPU, where larger passes gain nothing; on a GPU as many as a quarter
 * of its free memory holds (the rest for the suffix runs' keys and values,
 * the logits and other work), up to LENS_PATCH_MAX_BATCH_TOKENS. */
static long pass_budget(const lens_model *m, int T) {
    lk_device_info info;
    lk_device_describe(m->device, &info);
    if (info.host_memory) return LENS_PATCH_BATCH_TOKENS;
    const lens_batch one = {.B = 1, .T = T};
    const int32_t last = T - 1;
    const lens_run run = {.logits = (float[1]){0}, .logit_positions = &last};
    const size_t per_position = lens_forward_bytes(m, &one, &run) / (size_t)T + 1;
    const size_t fits = info.free_bytes / 4 / per_position;
    return fits < LENS_PATCH_BATCH_TOKENS       ? LENS_PATCH_BATCH_TOKENS
           : fits > LENS_PATCH_MAX_BATCH_TOKENS ? LENS_PATCH_MAX_BATCH_TOKENS
                                                : (long)fits;
}

/* The most rows and positions of one pass: the budget of positions, or one
 * run if that is more. With position reuse a run computes about half its
 * positions, so a pass takes up to twice the runs (and their keys and
 * values at every position). */
static pass_limits limits_of(const lens_model *m, const lens_patch_request *req, long runs) {
    const long P = req->corrupted->B, per_run = P * req->corrupted->T;
    const long budget =
        req->max_batch_tokens ? req->max_batch_tokens : pass_budget(m, req->corrupted->T);
    long R = budget / per_run;
    if (R < 1) R = 1;
    if (reuses_positions(&m->cfg, req)) R *= 2;
    if (R > runs) R = runs;
    return (pass_limits){(size_t)(R * P), (size_t)(budget > per_run ? budget : per_run)};
}

int lens_patch(const lens_model *m, lens_workspace *ws, const lens_patch_request *req,
               lens_patch_result *out, lens_err *err) {
    const lens_config *c = &m->cfg;
    *out = (lens_patch_result){0};
    if (check_request(c, req, err)) return -1;
    const sweep_def *s = &SWEEPS[req->sweep];
    out->ndim = lens_sweep_shape(c, req->sweep, req->corrupted->T, out->shape, &out->runs);
    const size_t slots = lens_hook_slots(c);
    uint8_t *clean_hooks = calloc(slots, 1), *corrupted_hooks = calloc(slots, 1);
    patch_item *items = enumerate(s, c, req->corrupted->T, out->runs);
    patch_item *computed = malloc((size_t)out->runs * sizeof *computed);
    out->values = malloc(value_count(out) * sizeof *out->values);
    lens_cache clean = {0}, corrupted = {0};
    int rc = -1;
    if (!clean_hooks || !corrupted_hooks || !items || !computed || !out->values) {
        lens_err_set_code(err, LENS_ERR_NO_MEMORY, "out of host memory for %ld patched runs",
                          out->runs);
        goto done;
    }
    /* the clean activations to patch in and (but for full recomputation) the corrupted ones
     * they replace; the corrupted residual stream each pass starts from, and with position
     * reuse its keys and values */
    const bool reuse = reuses_positions(c, req);
    for (int l = 0; l < c->n_layers; l++) {
        corrupted_hooks[lens_hook_slot(c, (lens_hook){LENS_HOOK_RESID_PRE, l})] =
            !req->full_recompute;
        corrupted_hooks[lens_hook_slot(c, (lens_hook){lens_attention_keys(c), l})] = reuse;
        corrupted_hooks[lens_hook_slot(c, (lens_hook){LENS_HOOK_V, l})] = reuse;
        for (int k = 0; k < s->n_components; k++) {
            const size_t slot = lens_hook_slot(c, (lens_hook){s->components[k].kind, l});
            clean_hooks[slot] = 1;
            corrupted_hooks[slot] |= !req->full_recompute;
        }
    }
    if (plain_run(m, ws, req->clean, clean_hooks, &req->metric, &clean, &out->clean_metric, err) ||
        plain_run(m, ws, req->corrupted, corrupted_hooks, &req->metric, &corrupted,
                  &out->corrupted_metric, err))
        goto done;
    /* a run whose patch changes nothing is the corrupted run; full recomputation computes
     * every run (the reference path) */
    long n_computed = 0;
    for (long i = 0; i < out->runs; i++) {
        if (!req->full_recompute &&
            patch_changes_nothing(s, &items[i], &clean, &corrupted, req->corrupted->B,
                                  req->corrupted->T, c->n_heads)) {
            out->values[items[i].out] = (float)out->corrupted_metric;
            out->unchanged_runs++;
        } else {
            computed[n_computed++] = items[i];
        }
    }
    if (n_computed > 0 && run_passes(m, ws, req, computed, n_computed, &clean, &corrupted,
                                     limits_of(m, req, n_computed), out, err))
        goto done;
    fill_shared_heads(s, c, items, out->runs, out);
    if (req->metric.normalize && normalize(out, err)) goto done;
    rc = 0;
done:
    free(clean_hooks);
    free(corrupted_hooks);
    free(items);
    free(computed);
    lens_cache_free(&clean);
    lens_cache_free(&corrupted);
    if (rc) lens_patch_result_free(out);
    return rc;
}

/* ---- path patching to heads -------------------------------------------- */

/* One pass of path patching: n senders x P prompts. */
typedef struct path_state {
    const lens_path_request *req;
    int P, T;
    const int (*senders)[2];             /* this pass's {layer, head} */
    const lens_cache *clean, *corrupted; /* hook_z of every layer */
    float **inputs;                      /* [n_layers]: receiver inputs [rows, T, H, d_head] */
    bool record;                         /* step 1 (record) or step 2 (write back) */
} path_state;

static bool is_receiver(const lens_path_request *req, int layer, int head) {
    for (int i = 0; i < req->n_receivers; i++)
        if (req->receivers[i][0] == layer && req->receivers[i][1] == head) return true;
    return false;
}

static int path_hook(void *user, lens_hook hook, lens_tensor *act, lens_err *err) {
    (void)err;
    const path_state *st = user;
    const size_t rows = (size_t)act->shape[0], T = (size_t)st->T, H = (size_t)act->shape[2],
                 dh = (size_t)act->shape[3], per_row = T * H * dh;
    float *data = act->data;
    if (hook.kind == LENS_HOOK_Z) { /* step 1: every head frozen, the sender's from clean */
        const float *bad = lens_cache_find(st->corrupted, LENS_HOOK_Z, hook.layer)->data;
        const float *good = lens_cache_find(st->clean, LENS_HOOK_Z, hook.layer)->data;
        for (size_t r = 0; r < rows; r++) {
            const size_t p = r % (size_t)st->P;
            const int *sender = st->senders[r / (size_t)st->P];
            memcpy(data + r * per_row, bad + p * per_row, per_row * sizeof *data);
            if (sender[0] != hook.layer) continue;
            for (size_t t = 0; t < T; t++)
                memcpy(data + (r * T + t) * H * dh + (size_t)sender[1] * dh,
                       good + (p * T + t) * H * dh + (size_t)sender[1] * dh, dh * sizeof *data);
        }
        return 0;
    }
    float *saved = st->inputs[hook.layer];
    if (st->record) {
        memcpy(saved, data, rows * per_row * sizeof *data);
        return 0;
    }
    for (size_t h = 0; h < H; h++) {
        if (!is_receiver(st->req, hook.layer, (int)h)) continue;
        for (size_t rt = 0; rt < rows * T; rt++)
            memcpy(data + rt * H * dh + h * dh, saved + rt * H * dh + h * dh, dh * sizeof *data);
    }
    return 0;
}

static int check_path_request(const lens_config *c, const lens_path_request *req, int *max_layer,
                              int *min_layer, lens_err *err) {
    if (check_shapes(req->clean, req->corrupted, err) ||
        check_metric(c, &req->metric, req->clean->B, req->clean->T, err))
        return -1;
    if (req->receiver_input != LENS_HOOK_Q && req->receiver_input != LENS_HOOK_K &&
        req->receiver_input != LENS_HOOK_V) {
        lens_err_set(err, "the receivers' input must be q, k or v");
        return -1;
    }
    if (req->receiver_input != LENS_HOOK_Q && c->n_kv_heads != c->n_heads) {
        lens_err_set(err,
                     "path patching into k or v needs as many key/value heads as query heads "
                     "(this model has %d of %d); patch the receivers' q",
                     c->n_kv_heads, c->n_heads);
        return -1;
    }
    if (req->n_receivers < 1) {
        lens_err_set(err, "path patching needs at least one receiver head");
        return -1;
    }
    *max_layer = 0;
    *min_layer = c->n_layers;
    for (int i = 0; i < req->n_receivers; i++) {
        const int l = req->receivers[i][0], h = req->receivers[i][1];
        if (l < 0 || l >= c->n_layers || h < 0 || h >= c->n_heads) {
            lens_err_set(
                err, "receiver %d (layer %d, head %d) is outside the model's %d layers of %d heads",
                i, l, h, c->n_layers, c->n_heads);
            return -1;
        }
        *max_layer = l > *max_layer ? l : *max_layer;
        *min_layer = l < *min_layer ? l : *min_layer;
    }
    if (*max_layer == 0) {
        lens_err_set(err, "receivers in layer 0 only: no sender head comes before them");
        return -1;
    }
    return 0;
}

int lens_path_patch(const lens_model *m, lens_workspace *ws, const lens_path_request *req,
                    lens_patch_result *out, lens_err *err) {
    const lens_config *c = &m->cfg;
    *out = (lens_patch_result){0};
    int max_layer, min_layer;
    if (check_path_request(c, req, &max_layer, &min_layer, err)) return -1;
    const lens_token_batch *bad = req->corrupted;
    const int P = bad->B, T = bad->T, H = c->n_heads, L = c->n_layers;
    const size_t slots = lens_hook_slots(c), per_input = (size_t)T * H * c->d_head;
    out->ndim = 2;
    out->shape[0] = max_layer;
    out->shape[1] = H;
    out->runs = (long)max_layer * H;
    const long per_pass =
        (req->max_batch_tokens ? req->max_batch_tokens : pass_budget(m, T)) / ((long)P * T);
    const int R = (int)(per_pass < 1 ? 1 : per_pass > H ? H : per_pass); /* senders of one layer */
    const size_t rows = (size_t)R * P;
    /* the plain runs capture hook_z everywhere (and, for the corrupted run's residual stream
     * to start from, hook_resid_pre); step 1 freezes z and records the receivers' input,
     * step 2 writes the receivers' input back */
    uint8_t *plain = calloc(slots, 1), *step1 = calloc(slots, 1), *step2 = calloc(slots, 1);
    int(*senders)[2] = malloc((size_t)R * sizeof *senders);
    float **inputs = calloc((size_t)L, sizeof *inputs);
    pass_buffers b = {0};
    out->values = malloc((size_t)out->runs * sizeof *out->values);
    lens_cache clean = {0}, corrupted = {0};
    int rc = -1;
    bool ok = plain && step1 && step2 && senders && inputs && out->values;
    for (int i = 0; ok && i < req->n_receivers; i++) {
        const int l = req->receivers[i][0];
        if (!inputs[l]) ok = (inputs[l] = malloc(rows * per_input * sizeof **inputs)) != NULL;
        step1[lens_hook_slot(c, (lens_hook){req->receiver_input, l})] = 1;
        step2[lens_hook_slot(c, (lens_hook){req->receiver_input, l})] = 1;
    }
    if (!ok) {
        lens_err_set_code(err, LENS_ERR_NO_MEMORY, "out of host memory for path patching");
        goto done;
    }
    if (alloc_pass(&b, c, bad, &req->metric, rows, rows * T, err)) goto done;
    for (int l = 0; l < L; l++) {
        plain[lens_hook_slot(c, (lens_hook){LENS_HOOK_Z, l})] = 1;
        step1[lens_hook_slot(c, (lens_hook){LENS_HOOK_Z, l})] = 1;
        if (l > 0 && !req->full_recompute)
            plain[lens_hook_slot(c, (lens_hook){LENS_HOOK_RESID_PRE, l})] = 1;
    }
    if (plain_run(m, ws, req->clean, plain, &req->metric, &clean, &out->clean_metric, err) ||
        plain_run(m, ws, bad, plain, &req->metric, &corrupted, &out->corrupted_metric, err))
        goto done;
    path_state st = {req, P, T, (const int(*)[2])senders, &clean, &corrupted, inputs, true};
    rc = 0;
    for (long i0 = 0; i0 < out->runs && rc == 0;) {
        const int layer = (int)(i0 / H);
        int n = 0;
        for (; n < R && i0 + n < out->runs && (i0 + n) / H == layer; n++)
            senders[n][0] = layer, senders[n][1] = (int)((i0 + n) % H);
        const lens_batch batch = {.B = n * P, .T = T, .tokens = b.tokens, .attn_mask = b.mask};
        /* step 1: from the sender's layer (everything before it is the corrupted run), or
         * from the first receiver layer, so that every receiver's input is recorded; up to
         * the last receiver layer (nothing after it is read) */
        const int start1 = req->full_recompute ? 0 : layer < min_layer ? layer : min_layer;
        if (start1 > 0) replicate_resid(&corrupted, start1, &b, (long)n * P, P, T, c->d_model);
        st.record = true;
        const lens_run run1 = {.hooks_enabled = step1,
                               .on_hook = path_hook,
                               .user = &st,
                               .hooks_modify = true,
                               .start_layer = start1,
                               .end_layer = max_layer + 1,
                               .resid_start = start1 > 0 ? b.resid : NULL};
        rc = lens_forward(m, ws, &batch, &run1, err);
        /* step 2: from the first receiver layer */
        const int start2 = req->full_recompute ? 0 : min_layer;
        if (rc == 0 && start2 > 0)
            replicate_resid(&corrupted, start2, &b, (long)n * P, P, T, c->d_model);
        st.record = false;
        const lens_run run2 = {.hooks_enabled = step2,
                               .on_hook = path_hook,
                               .user = &st,
                               .hooks_modify = true,
                               .logits = b.logits,
                               .logit_positions = b.positions,
                               .logit_ids = &b.answers,
                               .start_layer = start2,
                               .resid_start = start2 > 0 ? b.resid : NULL};
        if (rc == 0) rc = lens_forward(m, ws, &batch, &run2, err);
        for (int k = 0; rc == 0 && k < n; k++)
            out->values[i0 + k] =
                (float)metric_of_answers(&req->metric, b.logits + (size_t)k * P * b.answers.n, P);
        out->passes += 2;
        out->block_positions += (long)n * P * T * (max_layer + 1 - start1 + L - start2);
        i0 += n;
        if (rc == 0 && req->progress && req->progress(req->progress_user, i0, out->runs)) {
            lens_err_set(err, "cancelled after %ld of %ld senders", i0, out->runs);
            rc = -1;
        }
    }
    if (rc == 0 && req->metric.normalize) rc = normalize(out, err);
done:
    for (int l = 0; inputs && l < L; l++)
        free(inputs[l]);
    free(inputs);
    free(senders);
    free(plain);
    free(step1);
    free(step2);
    free_pass(&b);
    lens_cache_free(&clean);
    lens_cache_free(&corrupted);
    if (rc) lens_patch_result_free(out);
    return rc;
}

void lens_patch_result_free(lens_patch_result *r) {
    free(r->values);
    *r = (lens_patch_result){0};
}
