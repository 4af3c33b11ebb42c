/*
 * models.c: the daemon's model slots (models.h).
 */
#include "server/models.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/cli.h"
#include "server/scheduler.h"

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
    if (!m || lens_model_place(m, dev, err)) {
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

void srv_unload_model(srv_model *sm) {
    lens_workspace_free(&sm->ws);
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
