/*
 * models.c: the daemon's model slots (models.h).
 */
#include "server/models.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/process.h"
#include "server/cli.h"

pthread_mutex_t srv_cpu_lock = PTHREAD_MUTEX_INITIALIZER;

/* Renames a loaded model to the name it is served under, so that core's
 * messages ("model NAME has no BOS token") name it as clients do, not by its
 * path. Returns -1 with err set when out of memory. */
static int serve_as(lens_model *m, const char *name, lens_err *err) {
    char *copy = strdup(name);
    if (!copy) {
        lens_err_set_code(err, LENS_ERR_NO_MEMORY, "out of memory naming model %s", name);
        return -1;
    }
    free(m->name);
    m->name = copy;
    return 0;
}

/* srv_find_model with models_lock held. */
static srv_model *find_model_locked(const char *name, size_t len) {
    for (int i = 0; i < srv_d.n_models; i++)
        if (srv_d.models[i].present && strlen(srv_d.models[i].name) == len &&
            strncmp(srv_d.models[i].name, name, len) == 0)
            return &srv_d.models[i];
    return NULL;
}

srv_model *srv_find_model(const char *name, size_t len) {
    pthread_rwlock_rdlock(&srv_d.models_lock);
    srv_model *m = find_model_locked(name, len);
    pthread_rwlock_unlock(&srv_d.models_lock);
    return m;
}

srv_model *srv_hold_model(const char *name, size_t len) {
    pthread_rwlock_rdlock(&srv_d.models_lock);
    srv_model *m = find_model_locked(name, len);
    if (m) atomic_fetch_add(&m->jobs_out, 1);
    pthread_rwlock_unlock(&srv_d.models_lock);
    return m;
}

int srv_with_model(const char *name, size_t len, void (*f)(const srv_model *m, void *user),
                   void *user) {
    pthread_rwlock_rdlock(&srv_d.models_lock);
    srv_model *m = find_model_locked(name, len);
    if (m) f(m, user);
    pthread_rwlock_unlock(&srv_d.models_lock);
    return m ? 0 : -1;
}

int srv_load_model(srv_model *sm, const srv_model_spec *spec, lens_err *err) {
    char why[512];
    lk_device *dev = lk_open(spec->device ? spec->device : "cpu", why, sizeof why);
    if (!dev) {
        lens_err_set(err, "model %s: device: %s", spec->name, why);
        return -1;
    }
    /* the CPU models' turn is taken for the weight processing (BLAS and LAPACK)
     * alone: reading the files, which may take minutes, does not hold them up */
    lens_load_opts opts = spec->load;
    opts.processing_lock = &srv_cpu_lock;
    lens_model *m = lens_model_load(spec->source, &opts, err);
    if (!m || lens_model_place(m, dev, err) || serve_as(m, spec->name, err)) {
        lens_err_prefix(err, "model %s", spec->name);
        lens_model_free(m);
        lk_close(dev);
        return -1;
    }
    json_t *info = srv_model_info_json(m);
    json_object_set_new(info, "name", json_string(spec->name));
    size_t len;
    sm->info_json = srv_json_text(info, &len);
    json_object_del(info, "hook_points");
    sm->summary_json = srv_json_text(info, &len);
    json_decref(info);
    sm->model = m;
    if (m->n_nonfinite_weights)
        fprintf(stderr, "lensd: warning: %s has %zu NaN or infinite weights\n", spec->name,
                m->n_nonfinite_weights);
    fprintf(stderr, "lensd: loaded %s from %s on %s\n", spec->name, m->source,
            spec->device ? spec->device : "cpu");
    return sm->info_json && sm->summary_json ? 0 : -1;
}

lens_model *srv_model_weights(srv_model *sm, unsigned processing, lens_err *err) {
    const unsigned steps = lens_processing_applied(sm->model, processing);
    if (steps == sm->model->processing) return sm->model;
    const int cap = srv_d.cfg.limits.max_weight_variants;
    srv_weight_variant *slot = NULL;
    for (int i = 0; i < cap; i++) {
        srv_weight_variant *v = &sm->variants[i];
        if (v->model && v->model->processing == steps) {
            v->used_s = srv_now_s();
            return v->model;
        }
        if (!slot || (slot->model && (!v->model || v->used_s < slot->used_s))) slot = v;
    }
    char names[160];
    lens_processing_names(steps, names, sizeof names);
    if (!slot) {
        lens_err_set(err,
                     "model %s is served with its own weight processing only "
                     "(limits.max_weight_variants is 0): \"processing\": \"%s\" is not available",
                     sm->name, names);
        return NULL;
    }
    if (slot->model) { /* the least recently used makes room */
        char dropped[160];
        lens_processing_names(slot->model->processing, dropped, sizeof dropped);
        fprintf(stderr, "lensd: %s: dropped its weights processed %s\n", sm->name, dropped);
        lens_workspace_free(&sm->ws); /* its recorded runs point at those weights */
        lens_model_free(slot->model);
        slot->model = NULL;
    }
    const lens_config *c = &sm->model->cfg;
    const lens_load_opts opts = {.processing = (int)steps,
                                 .use_attn_result = c->use_attn_result,
                                 .use_split_qkv_input = c->use_split_qkv_input,
                                 .use_hook_mlp_in = c->use_hook_mlp_in,
                                 .use_attn_in = c->use_attn_in,
                                 .processing_lock = &srv_cpu_lock};
    lens_model *m = lens_model_load(sm->model->source, &opts, err);
    if (!m || lens_model_place(m, sm->model->device, err) || serve_as(m, sm->name, err)) {
        lens_err_prefix(err, "model %s, weights processed %s", sm->name, names);
        lens_model_free(m);
        return NULL;
    }
    fprintf(stderr, "lensd: %s: loaded its weights processed %s\n", sm->name, names);
    *slot = (srv_weight_variant){.model = m, .used_s = srv_now_s()};
    return m;
}

void srv_unload_model(srv_model *sm) {
    lens_workspace_free(&sm->ws);
    for (int i = 0; i < SRV_MAX_WEIGHT_VARIANTS; i++) {
        lens_model_free(sm->variants[i].model);
        sm->variants[i].model = NULL;
    }
    if (sm->model) {
        lk_device *dev = sm->model->device;
        lens_model_free(sm->model);
        lk_close(dev);
    }
    free(sm->info_json);
    free(sm->summary_json);
    sm->model = NULL;
    sm->info_json = sm->summary_json = NULL;
}
