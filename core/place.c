/*
 * place.c: moving a model's weights to the device its forwards run on.
 *
 * Every weight tensor of lens_weights is copied into one device allocation,
 * in a fixed order, and the device-side lens_weights points into it; the
 * forward pass reads only that copy (model->dw).
 */
#include <stdlib.h>
#include <string.h>

#include "core/model.h"

/* One weight tensor: where its host and device pointers live, and its size. */
typedef struct weight_slot {
    float *const *host;
    float **device;
    size_t floats;
} weight_slot;

/* Lists every weight tensor of the model (NULL ones included, with their
 * size) into slots, which must hold WEIGHT_SLOTS(n_layers) entries.
 * Returns the count. */
#define WEIGHT_SLOTS(n_layers) (10 + 24 * (size_t)(n_layers))
static size_t list_weights(const lens_model *m, lens_weights *dw, weight_slot *slots) {
    const lens_config *c = &m->cfg;
    const size_t d = (size_t)c->d_model, hd = (size_t)c->n_heads * c->d_head;
    const size_t kvd = (size_t)c->n_kv_heads * c->d_head, mlp = (size_t)c->d_mlp;
    const size_t q_norm = c->qk_norm == LENS_QK_NORM_WHOLE ? hd : (size_t)c->d_head;
    const size_t k_norm = c->qk_norm == LENS_QK_NORM_WHOLE ? kvd : (size_t)c->d_head;
    const size_t table = (size_t)c->n_ctx * (size_t)(c->rotary.dim / 2);
    size_t n = 0;
#define SLOT(field, count) slots[n++] = (weight_slot){&m->w.field, &dw->field, (count)}
    SLOT(W_E, (size_t)c->d_vocab * d);
    SLOT(W_pos, (size_t)c->n_ctx * d);
    for (int kind = 0; kind < 2; kind++) {
        SLOT(rotary_cos[kind], table);
        SLOT(rotary_sin[kind], table);
    }
    for (int l = 0; l < c->n_layers; l++) {
        SLOT(layers[l].ln1_w, d);
        SLOT(layers[l].ln1_b, d);
        SLOT(layers[l].W_Q, d * hd);
        SLOT(layers[l].W_K, d * kvd);
        SLOT(layers[l].W_V, d * kvd);
        SLOT(layers[l].b_Q, hd);
        SLOT(layers[l].b_K, kvd);
        SLOT(layers[l].b_V, kvd);
        SLOT(layers[l].q_norm_w, q_norm);
        SLOT(layers[l].k_norm_w, k_norm);
        SLOT(layers[l].ln1_post_w, d);
        SLOT(layers[l].ln2_post_w, d);
        SLOT(layers[l].W_gate, d * mlp);
        SLOT(layers[l].W_O, hd * d);
        SLOT(layers[l].b_O, d);
        SLOT(layers[l].ln2_w, d);
        SLOT(layers[l].ln2_b, d);
        SLOT(layers[l].W_in, d * mlp);
        SLOT(layers[l].b_in, mlp);
        SLOT(layers[l].W_out, mlp * d);
        SLOT(layers[l].b_out, d);
        SLOT(layers[l].mlp_ln_w, mlp);
        SLOT(layers[l].mlp_ln_b, mlp);
    }
    SLOT(ln_final_w, d);
    SLOT(ln_final_b, d);
    SLOT(W_U, d * (size_t)c->d_vocab_out);
    SLOT(b_U, (size_t)c->d_vocab_out);
#undef SLOT
    return n;
}

/* Drops the device copy: the model runs on the CPU from its host weights. */
static void place_on_cpu(lens_model *m) {
    if (m->device_block) {
        lk_free(m->device, m->device_block);
        free(m->dw.layers);
    }
    m->device = lk_cpu();
    m->dw = m->w;
    m->device_block = NULL;
    m->device_bytes = 0;
}

int lens_model_place(lens_model *m, lk_device *dev, lens_err *err) {
    if (dev == m->device) return 0;
    if (lk_host_memory(dev)) {
        place_on_cpu(m);
        return 0;
    }
    lens_weights dw = {0};
    weight_slot *slots = malloc(WEIGHT_SLOTS(m->cfg.n_layers) * sizeof *slots);
    dw.layers = calloc((size_t)m->cfg.n_layers, sizeof *dw.layers);
    if (!slots || !dw.layers) {
        free(slots);
        free(dw.layers);
        lens_err_set_code(err, LENS_ERR_NO_MEMORY, "out of host memory");
        return -1;
    }
    size_t n_slots = list_weights(m, &dw, slots), total = 0;
    for (size_t i = 0; i < n_slots; i++)
        if (*slots[i].host) total += (slots[i].floats + 15) & ~(size_t)15;
    lk_device_info info;
    lk_device_describe(dev, &info);
    char *block = lk_alloc(dev, total * sizeof(float));
    if (!block) {
        lens_err_set_code(err, LENS_ERR_NO_MEMORY,
                          "%s: the weights of %s need %zu MB of device memory and %zu MB are free",
                          info.name, m->name, (total * sizeof(float)) >> 20, info.free_bytes >> 20);
        free(slots);
        free(dw.layers);
        return -1;
    }
    char *p = block;
    for (size_t i = 0; i < n_slots; i++) {
        if (!*slots[i].host) continue;
        lk_upload(dev, p, *slots[i].host, slots[i].floats * sizeof(float));
        *slots[i].device = (float *)p;
        p += ((slots[i].floats + 15) & ~(size_t)15) * sizeof(float);
    }
    free(slots);
    char why[512];
    if (lk_finish(dev, why, sizeof why)) {
        lk_free(dev, block);
        free(dw.layers);
        lens_err_set_code(err, LENS_ERR_DEVICE, "%s: copying the weights of %s: %s", info.name,
                          m->name, why);
        return -1;
    }
    place_on_cpu(m);
    m->device = dev;
    m->dw = dw;
    m->device_block = block;
    m->device_bytes = total * sizeof(float);
    return 0;
}
