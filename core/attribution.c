/*
 * attribution.c: apply_ln_to_stack and logit_attrs for one position
 * (TL-REFERENCE.md, ActivationCache :504-622 and :1127-1218). Sums in double.
 */
#include "core/attribution.h"

#include <stdio.h>
#include <string.h>

void lens_logit_attrs(const lens_config *c, const float *stack, int n, float scale,
                      const float *direction, float *out) {
    const int d = c->d_model;
    const bool normalised = c->normalization != LENS_NORM_NONE;
    for (int i = 0; i < n; i++) {
        const float *x = stack + (size_t)i * d;
        double mean = 0.0, dot = 0.0, dir_sum = 0.0;
        for (int k = 0; k < d; k++) {
            mean += x[k];
            dot += (double)x[k] * direction[k];
            dir_sum += direction[k];
        }
        mean /= d;
        /* (x - mean) . dir / scale = (x . dir - mean * sum(dir)) / scale */
        out[i] = normalised ? (float)((dot - mean * dir_sum) / scale) : (float)dot;
    }
}

void lens_logit_direction(const lens_model *m, int answer, int wrong, float *direction) {
    const int d = m->cfg.d_model, V = m->cfg.d_vocab_out;
    for (int k = 0; k < d; k++)
        direction[k] = m->w.W_U[(size_t)k * V + answer] -
                       (wrong >= 0 ? m->w.W_U[(size_t)k * V + wrong] : 0.0f);
}

int lens_stack_size(const lens_config *c, lens_stack_kind kind) {
    const int per_layer = c->attn_only ? 1 : 2;
    switch (kind) {
    case LENS_STACK_ACCUMULATED:
        return per_layer * c->n_layers + 1;
    case LENS_STACK_DECOMPOSE:
        return 2 + per_layer * c->n_layers;
    case LENS_STACK_HEADS:
        break;
    }
    return c->n_layers * c->n_heads;
}

void lens_stack_label(const lens_config *c, lens_stack_kind kind, int i, char *buf, size_t n) {
    const int per_layer = c->attn_only ? 1 : 2;
    if (kind == LENS_STACK_HEADS) {
        snprintf(buf, n, "L%dH%d", i / c->n_heads, i % c->n_heads);
    } else if (kind == LENS_STACK_ACCUMULATED) {
        if (i == per_layer * c->n_layers)
            snprintf(buf, n, "final_post");
        else
            snprintf(buf, n, "%d_%s", i / per_layer, i % per_layer ? "mid" : "pre");
    } else if (i < 2) {
        snprintf(buf, n, "%s", i ? "pos_embed" : "embed");
    } else {
        snprintf(buf, n, "%d_%s", (i - 2) / per_layer,
                 (i - 2) % per_layer ? "mlp_out" : "attn_out");
    }
}

/* The hook points of a stack, component by component. */
static lens_hook component_hook(const lens_config *c, lens_stack_kind kind, int i) {
    const int per_layer = c->attn_only ? 1 : 2, L = c->n_layers;
    if (kind == LENS_STACK_ACCUMULATED)
        return i == per_layer * L
                   ? (lens_hook){LENS_HOOK_RESID_POST, L - 1}
                   : (lens_hook){i % per_layer ? LENS_HOOK_RESID_MID : LENS_HOOK_RESID_PRE,
                                 i / per_layer};
    if (i < 2) return (lens_hook){i ? LENS_HOOK_POS_EMBED : LENS_HOOK_EMBED, 0};
    return (lens_hook){(i - 2) % per_layer ? LENS_HOOK_MLP_OUT : LENS_HOOK_ATTN_OUT,
                       (i - 2) / per_layer};
}

void lens_stack_hooks(const lens_config *c, lens_stack_kind kind, uint8_t *enabled) {
    if (kind == LENS_STACK_HEADS)
        for (int l = 0; l < c->n_layers; l++)
            enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_Z, l})] = 1;
    else
        for (int i = 0; i < lens_stack_size(c, kind); i++)
            enabled[lens_hook_slot(c, component_hook(c, kind, i))] = 1;
    if (c->normalization != LENS_NORM_NONE)
        enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_LN_FINAL_SCALE, 0})] = 1;
}

void lens_stack(const lens_model *m, const lens_cache *cache, lens_stack_kind kind, int b, int pos,
                float *stack) {
    const lens_config *c = &m->cfg;
    const int d = c->d_model, H = c->n_heads, dh = c->d_head;
    if (kind != LENS_STACK_HEADS) {
        for (int i = 0; i < lens_stack_size(c, kind); i++) {
            const lens_hook hook = component_hook(c, kind, i);
            const lens_captured *t = lens_cache_find(cache, hook.kind, hook.layer);
            const size_t T = (size_t)t->shape[1];
            memcpy(stack + (size_t)i * d, (const float *)t->data + ((size_t)b * T + pos) * d,
                   (size_t)d * sizeof *stack);
        }
        return;
    }
    for (int l = 0; l < c->n_layers; l++) { /* z[b, pos, h] @ W_O[h], no b_O */
        const lens_captured *z = lens_cache_find(cache, LENS_HOOK_Z, l);
        const size_t T = (size_t)z->shape[1];
        const float *zrow = (const float *)z->data + ((size_t)b * T + pos) * H * dh;
        for (int h = 0; h < H; h++) {
            float *out = stack + ((size_t)l * H + h) * d;
            const float *W_O = m->w.layers[l].W_O + (size_t)h * dh * d;
            for (int k = 0; k < d; k++) {
                double sum = 0.0;
                for (int j = 0; j < dh; j++)
                    sum += (double)zrow[h * dh + j] * W_O[(size_t)j * d + k];
                out[k] = (float)sum;
            }
        }
    }
}
