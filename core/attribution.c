/*
 * attribution.c: apply_ln_to_stack and logit_attrs for one position
 * (TL-REFERENCE.md, ActivationCache :504-622 and :1127-1218). Sums in double.
 */
#include "core/attribution.h"

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
