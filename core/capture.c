/*
 * capture.c: run_with_cache over lens_forward. The hook callback copies each
 * enabled activation of a chunk of rows into its place in the whole batch's
 * tensor, keeping only the requested positions.
 */
#include "core/capture.h"

#include <stdlib.h>
#include <string.h>

/* The position axis: the query axis (2) of attention scores and patterns,
 * axis 1 of everything else. This is the axis TL's
 * run_with_cache(pos_slice=...) slices, except where TL's rule (third from
 * last for q, k, v, z, result; else second from last) lands on another axis:
 * the head axis of the [batch, pos, head, d] split-input hooks and of ln1
 * under split inputs, the batch axis of hook_tokens. */
int lens_capture_pos_axis(const lens_config *cfg, lens_hook_kind kind) {
    return kind == LENS_HOOK_ATTN_SCORES || kind == LENS_HOOK_PATTERN ||
                   lens_hook_heads_first(cfg, kind)
               ? 2
               : 1;
}

typedef struct chunk_state {
    const lens_config *cfg;
    lens_captured **by_slot; /* [slots]: the tensor of an enabled hook */
    const lens_cache_request *req;
    int row0, rows; /* the chunk being run */
} chunk_state;

/* Copies act (the chunk's rows) into dst, the whole batch's tensor, keeping
 * the requested positions of axis; int32 ids become int64. */
static void copy_rows(lens_captured *dst, const lens_tensor *act, const chunk_state *st) {
    const int axis = lens_capture_pos_axis(st->cfg, dst->hook.kind);
    const size_t len = (size_t)act->shape[axis];
    const int32_t *keep = st->req->positions;
    const size_t P = keep ? (size_t)st->req->n_positions : len;
    size_t outer = 1, inner = 1;
    for (int i = 1; i < axis; i++)
        outer *= (size_t)act->shape[i];
    for (int i = axis + 1; i < act->ndim; i++)
        inner *= (size_t)act->shape[i];
    if (!keep && act->dtype == LENS_F32) {
        /* all positions: the chunk's rows are one run of dst */
        lk_host_copy((float *)dst->data + (size_t)st->row0 * outer * len * inner, act->data,
                     (size_t)st->rows * outer * len * inner * sizeof(float));
        return;
    }
    for (size_t b = 0; b < (size_t)st->rows; b++)
        for (size_t o = 0; o < outer; o++)
            for (size_t p = 0; p < P; p++) {
                size_t to = (((size_t)st->row0 + b) * outer + o) * P * inner + p * inner;
                size_t from = ((b * outer + o) * len + (keep ? (size_t)keep[p] : p)) * inner;
                if (act->dtype == LENS_I32) {
                    for (size_t i = 0; i < inner; i++)
                        ((int64_t *)dst->data)[to + i] = ((const int32_t *)act->data)[from + i];
                } else {
                    memcpy((float *)dst->data + to, (const float *)act->data + from,
                           inner * sizeof(float));
                }
            }
}

static int on_hook(void *user, lens_hook hook, lens_tensor *act, lens_err *err) {
    chunk_state *st = user;
    const size_t slot = lens_hook_slot(st->cfg, hook);
    const lens_cache_request *req = st->req;
    if (req->intervene && req->intervene[slot] &&
        req->intervention(req->intervention_user, hook, act, st->row0, err))
        return -1;
    if (st->by_slot[slot]) copy_rows(st->by_slot[slot], act, st);
    return 0;
}

/* Rows per forward: bounded so that activations (attention patterns grow
 * with T^2) stay within a few hundred MB whatever the batch on the CPU
 * (where smaller chunks stay in cache), and a few GB on a GPU (where larger
 * batches fill the device). */
static int chunk_rows(const lens_model *m, int B, int T) {
    const lens_config *c = &m->cfg;
    size_t per_row =
        (size_t)T * (size_t)(6 * c->d_model + 2 * c->d_mlp + 4 * c->n_heads * c->d_head) +
        2 * (size_t)c->n_heads * T * T;
    size_t budget = lk_host_memory(m->device) ? (size_t)64 << 20 : (size_t)1 << 30; /* floats */
    size_t rows = budget / (per_row ? per_row : 1);
    if (rows < 1) rows = 1;
    return rows > (size_t)B ? B : (int)rows;
}

typedef struct alloc_state {
    const lens_config *cfg;
    const lens_cache_request *req;
    lens_cache *out;
    bool failed;
} alloc_state;

/* Sets t's dtype, ndim and shape for hook in a B x T batch, the position
 * axis cut to req's positions; returns its bytes. */
static size_t captured_shape(const lens_config *c, const lens_cache_request *req, lens_hook hook,
                             int B, int T, lens_captured *t) {
    t->dtype = hook.kind == LENS_HOOK_TOKENS ? LENS_I64 : LENS_F32;
    t->ndim = lens_hook_shape(c, hook, B, T, t->shape);
    if (req->positions) t->shape[lens_capture_pos_axis(c, hook.kind)] = req->n_positions;
    size_t bytes = lens_dtype_size(t->dtype);
    for (int i = 0; i < t->ndim; i++)
        bytes *= (size_t)t->shape[i];
    return bytes;
}

static void alloc_tensor(void *user, lens_hook hook) {
    alloc_state *st = user;
    if (st->failed || !st->req->enabled[lens_hook_slot(st->cfg, hook)]) return;
    lens_captured *t = &st->out->tensors[st->out->n];
    t->hook = hook;
    lens_hook_name(hook, t->name, sizeof t->name);
    const size_t bytes = captured_shape(st->cfg, st->req, hook, st->out->B, st->out->T, t);
    st->failed = !(t->data = lk_host_buffer(bytes + 1));
    st->out->n += !st->failed;
}

typedef struct count_state {
    const lens_config *cfg;
    const lens_cache_request *req;
    int B, T;
    size_t bytes;
} count_state;

static void count_tensor(void *user, lens_hook hook) {
    count_state *st = user;
    lens_captured t;
    if (st->req->enabled[lens_hook_slot(st->cfg, hook)])
        st->bytes += captured_shape(st->cfg, st->req, hook, st->B, st->T, &t);
}

size_t lens_cache_bytes(const lens_config *c, int B, int T, const lens_cache_request *req) {
    count_state st = {c, req, B, T, 0};
    lens_hook_foreach(c, count_tensor, &st);
    if (req->logits)
        st.bytes += (req->logit_positions ? (size_t)B : (size_t)B * T) * (size_t)c->d_vocab_out *
                    sizeof(float);
    return st.bytes;
}

/* Allocates out's tensors and logits for the request. */
static int allocate(const lens_model *m, const lens_token_batch *batch,
                    const lens_cache_request *req, lens_cache *out, lens_err *err) {
    const lens_config *c = &m->cfg;
    out->B = batch->B;
    out->T = batch->T;
    size_t slots = lens_hook_slots(c), n_enabled = 0;
    for (size_t i = 0; i < slots; i++)
        n_enabled += req->enabled[i] != 0;
    out->tensors = calloc(n_enabled ? n_enabled : 1, sizeof *out->tensors);
    alloc_state st = {c, req, out, !out->tensors};
    if (!st.failed) lens_hook_foreach(c, alloc_tensor, &st);
    if (!st.failed && req->logits) {
        size_t rows = req->logit_positions ? (size_t)batch->B : (size_t)batch->B * batch->T;
        st.failed = !(out->logits = lk_host_buffer(rows * c->d_vocab_out * sizeof(float)));
    }
    if (st.failed) {
        lens_err_set_code(err, LENS_ERR_NO_MEMORY,
                          "out of host memory for the cache of a %dx%d batch", batch->B, batch->T);
        return -1;
    }
    return 0;
}

int lens_run_cache(const lens_model *m, lens_workspace *ws, const lens_token_batch *batch,
                   const lens_cache_request *req, lens_cache *out, lens_err *err) {
    const lens_config *c = &m->cfg;
    if (!out->tensors && allocate(m, batch, req, out, err)) return -1;
    lens_captured **by_slot = calloc(lens_hook_slots(c), sizeof *by_slot);
    if (!by_slot) {
        lens_err_set_code(err, LENS_ERR_NO_MEMORY, "out of host memory");
        return -1;
    }
    for (int i = 0; i < out->n; i++)
        by_slot[lens_hook_slot(c, out->tensors[i].hook)] = &out->tensors[i];
    const int B = batch->B, T = batch->T, V = c->d_vocab_out;
    const int step = chunk_rows(m, B, T);
    const size_t slots = lens_hook_slots(c);
    uint8_t *fire = req->intervene ? malloc(slots) : NULL;
    if (req->intervene && !fire) {
        free(by_slot);
        lens_err_set_code(err, LENS_ERR_NO_MEMORY, "out of host memory");
        return -1;
    }
    for (size_t i = 0; fire && i < slots; i++)
        fire[i] = req->enabled[i] || req->intervene[i];
    const size_t logit_rows_per_prompt = req->logit_positions ? 1 : (size_t)T;
    chunk_state st = {c, by_slot, req, 0, 0};
    int rc = 0;
    for (int row0 = 0; row0 < B && rc == 0; row0 += step) {
        st.row0 = row0;
        st.rows = B - row0 < step ? B - row0 : step;
        const lens_batch chunk = {
            .B = st.rows,
            .T = T,
            .tokens = batch->tokens + (size_t)row0 * T,
            .attn_mask = batch->attn_mask ? batch->attn_mask + (size_t)row0 * T : NULL,
        };
        const lens_run run = {
            .hooks_enabled = fire ? fire : req->enabled,
            .on_hook = on_hook,
            .user = &st,
            .hooks_modify = fire != NULL,
            .logits = out->logits ? out->logits + (size_t)row0 * logit_rows_per_prompt * V : NULL,
            .logit_positions = req->logit_positions ? req->logit_positions + row0 : NULL,
        };
        rc = lens_forward(m, ws, &chunk, &run, err);
    }
    free(fire);
    free(by_slot);
    return rc;
}

const lens_captured *lens_cache_find(const lens_cache *cache, lens_hook_kind kind, int layer) {
    for (int i = 0; i < cache->n; i++)
        if (cache->tensors[i].hook.kind == kind && cache->tensors[i].hook.layer == layer)
            return &cache->tensors[i];
    return NULL;
}

void lens_cache_free(lens_cache *cache) {
    for (int i = 0; i < cache->n; i++)
        free(cache->tensors[i].data);
    free(cache->tensors);
    free(cache->logits);
    *cache = (lens_cache){0};
}
