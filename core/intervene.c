/*
 * intervene.c: applying interventions to one activation. Every entry of the
 * activation is visited once per intervention on its hook; those whose
 * position and head are selected are changed.
 */
#include "core/intervene.h"

#include <stdlib.h>
#include <string.h>

int lens_hook_head_axis(const lens_config *cfg, lens_hook_kind kind) {
    if (lens_hook_heads_first(cfg, kind)) return 1;
    switch (kind) {
    case LENS_HOOK_Q:
    case LENS_HOOK_K:
    case LENS_HOOK_V:
    case LENS_HOOK_ROT_Q:
    case LENS_HOOK_ROT_K:
    case LENS_HOOK_Z:
    case LENS_HOOK_RESULT:
    case LENS_HOOK_Q_INPUT:
    case LENS_HOOK_K_INPUT:
    case LENS_HOOK_V_INPUT:
    case LENS_HOOK_ATTN_IN:
        return 2;
    case LENS_HOOK_ATTN_SCORES:
    case LENS_HOOK_PATTERN:
        return 1;
    default:
        return -1;
    }
}

static bool member(const int32_t *list, int n, int64_t x) {
    if (!list) return true;
    for (int i = 0; i < n; i++)
        if (list[i] == x) return true;
    return false;
}

static int apply(const lens_config *cfg, const lens_intervention *it, lens_tensor *act, int row0,
                 lens_err *err) {
    const int ndim = act->ndim, pos_axis = lens_capture_pos_axis(cfg, it->hook.kind);
    const int head_axis = lens_hook_head_axis(cfg, it->hook.kind);
    const int64_t last = act->shape[ndim - 1];
    size_t per_row = 1;
    for (int i = 1; i < ndim; i++)
        per_row *= (size_t)act->shape[i];
    if ((it->op == LENS_OP_SET || it->op == LENS_OP_ADD) && it->value_len != 1 &&
        it->value_len != last) {
        lens_err_set(err, "the value has %d entries; the activation's last axis has %lld",
                     it->value_len, (long long)last);
        return -1;
    }
    if (it->op == LENS_OP_COPY) {
        const lens_captured *s = it->source;
        bool same = s->ndim == ndim;
        for (int i = 1; same && i < ndim; i++)
            same = s->shape[i] == act->shape[i];
        if (!same) {
            lens_err_set(err,
                         "the source run's %s has another shape (another number of "
                         "positions?)",
                         s->name);
            return -1;
        }
    }
    float *x = act->data;
    const size_t n = (size_t)act->shape[0] * per_row;
    for (size_t i = 0; i < n; i++) {
        /* the multi-index of entry i, on the axes that select */
        size_t rest = i;
        int64_t index[LENS_MAX_DIMS];
        for (int a = ndim - 1; a >= 0; a--) {
            index[a] = (int64_t)(rest % (size_t)act->shape[a]);
            rest /= (size_t)act->shape[a];
        }
        if (!member(it->positions, it->n_positions, index[pos_axis]) ||
            (head_axis >= 0 && !member(it->heads, it->n_heads, index[head_axis])))
            continue;
        const float v = it->value ? it->value[it->value_len == 1 ? 0 : index[ndim - 1]] : 0.0f;
        switch (it->op) {
        case LENS_OP_ZERO:
            x[i] = 0.0f;
            break;
        case LENS_OP_SET:
            x[i] = v;
            break;
        case LENS_OP_ADD:
            x[i] += v;
            break;
        case LENS_OP_SCALE:
            x[i] *= it->factor;
            break;
        case LENS_OP_COPY: {
            const int64_t src_row = it->source->shape[0] == 1 ? 0 : row0 + index[0];
            x[i] = ((const float *)it->source->data)[(size_t)src_row * per_row + i % per_row];
            break;
        }
        }
    }
    return 0;
}

int lens_intervene(void *user, lens_hook hook, lens_tensor *act, int row0, lens_err *err) {
    const lens_intervention_list *list = user;
    for (int i = 0; i < list->n; i++) {
        const lens_intervention *it = &list->items[i];
        if (it->hook.kind != hook.kind || it->hook.layer != hook.layer) continue;
        if (act->dtype != LENS_F32) {
            lens_err_set(err, "hook_tokens holds token ids; intervene on hook_embed instead");
            return -1;
        }
        char name[96];
        lens_hook_name(hook, name, sizeof name);
        if (apply(list->cfg, it, act, row0, err)) {
            lens_err_prefix(err, "%s", name);
            return -1;
        }
    }
    return 0;
}

int lens_batch_mean(const lens_captured *t, lens_captured *mean) {
    size_t per_row = 1;
    for (int a = 1; a < t->ndim; a++)
        per_row *= (size_t)t->shape[a];
    double *sum = calloc(per_row ? per_row : 1, sizeof *sum);
    *mean = *t;
    mean->shape[0] = 1;
    mean->data = malloc((per_row ? per_row : 1) * sizeof(float));
    if (!sum || !mean->data) {
        free(sum);
        free(mean->data);
        mean->data = NULL;
        return -1;
    }
    const float *x = t->data;
    for (int64_t b = 0; b < t->shape[0]; b++)
        for (size_t k = 0; k < per_row; k++)
            sum[k] += x[(size_t)b * per_row + k];
    for (size_t k = 0; k < per_row; k++)
        ((float *)mean->data)[k] = (float)(sum[k] / (double)t->shape[0]);
    free(sum);
    return 0;
}
