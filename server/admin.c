/*
 * admin.c: loading and unloading models while the daemon runs (admin
 * tokens only, http.c checks the role). POST /v1/admin/models takes a model
 * entry as in the config file's "models" list; DELETE
 * /v1/admin/models/{name} unloads one after its queued requests. Each runs
 * on a thread of its own (loading takes seconds) with the connection
 * suspended; the model becomes visible to other requests only once it is
 * ready.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "server/admin.h"

#include "server/models.h"
#include "server/scheduler.h"
#include "server/tensors.h"

/* A model entry of the request body as srv_model_spec (strings borrowed
 * from body). Returns -1 with the field at fault in resp. */
static int read_spec(json_t *body, srv_model_spec *spec, srv_response *resp) {
    const char *key;
    json_t *value;
    json_object_foreach(body, key, value) {
        bool ok = false;
        for (size_t i = 0; srv_model_keys[i] && !ok; i++)
            ok = strcmp(key, srv_model_keys[i]) == 0;
        if (!ok) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, key,
                      "unknown field %s (a model entry has name, path or id, device, processing "
                      "and the use_* flags)",
                      key);
            return -1;
        }
    }
    const char *name = json_string_value(json_object_get(body, "name"));
    bool url_safe = name && *name && strlen(name) <= 128;
    for (const char *p = name; url_safe && *p; p++)
        url_safe = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                   (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-';
    if (!url_safe) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "name",
                  "name must be 1 to 128 letters, digits, '.', '_' or '-'");
        return -1;
    }
    json_t *path = json_object_get(body, "path"), *id = json_object_get(body, "id");
    if ((path != NULL) == (id != NULL) || !json_is_string(path ? path : id)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, path ? "path" : "id",
                  "give exactly one of path (a directory or tl_config.json on the server) or id "
                  "(a Hugging Face id in its cache)");
        return -1;
    }
    json_t *dtype = json_object_get(body, "dtype");
    if (dtype && (!json_is_string(dtype) || strcmp(json_string_value(dtype), "float32") != 0)) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, "dtype",
                  "lensd runs models in float32 only for now (float16 and bfloat16 weights are "
                  "not implemented yet)");
        return -1;
    }
    json_t *device = json_object_get(body, "device"),
           *processing = json_object_get(body, "processing");
    if (device && !json_is_string(device)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "device",
                  "device must be \"cpu\", \"cuda\" or \"cuda:N\"");
        return -1;
    }
    *spec = (srv_model_spec){.name = (char *)name,
                             .source = (char *)json_string_value(path ? path : id),
                             .device = (char *)(device ? json_string_value(device) : "cpu"),
                             .load = {.processing = -1}};
    if (processing) {
        unsigned flags;
        lens_err err = {0};
        if (!json_is_string(processing)) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, "processing",
                      "processing must be \"default\", \"none\" or a comma list of flags");
            return -1;
        }
        if (strcmp(json_string_value(processing), "default") != 0) {
            if (lens_processing_parse(json_string_value(processing), &flags, &err)) {
                srv_error(resp, SRV_ERR_BAD_REQUEST, "processing", "%s", err.msg);
                return -1;
            }
            spec->load.processing = (int)flags;
        }
    }
    static const char *const flags[] = {"use_attn_result", "use_split_qkv_input", "use_hook_mlp_in",
                                        "use_attn_in"};
    bool *targets[] = {&spec->load.use_attn_result, &spec->load.use_split_qkv_input,
                       &spec->load.use_hook_mlp_in, &spec->load.use_attn_in};
    for (int i = 0; i < 4; i++) {
        json_t *v = json_object_get(body, flags[i]);
        if (v && !json_is_boolean(v)) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, flags[i], "%s must be true or false", flags[i]);
            return -1;
        }
        *targets[i] = json_is_true(v);
    }
    return 0;
}

/* An admin job's params. */
typedef struct admin_params {
    bool unload;
    json_t *body; /* a load's model entry, or an unload's {"name"} */
} admin_params;

static void free_params(void *params) {
    admin_params *p = params;
    if (p) json_decref(p->body);
    free(p);
}

srv_job *srv_admin_route(const char *method, const char *url, const char *body, size_t body_len,
                         srv_response *resp) {
    const char *prefix = "/v1/admin/models";
    const size_t n = strlen(prefix);
    if (strncmp(url, prefix, n) != 0 || (url[n] && url[n] != '/')) {
        srv_error(resp, SRV_ERR_NOT_FOUND, NULL,
                  "no such route: %s (admin routes: POST /v1/admin/models, DELETE "
                  "/v1/admin/models/{name})",
                  url);
        return NULL;
    }
    const char *name = url[n] == '/' ? url + n + 1 : NULL;
    const bool load = strcmp(method, "POST") == 0 && !name;
    const bool unload = strcmp(method, "DELETE") == 0 && name && *name;
    if (!load && !unload) {
        srv_error(resp, SRV_ERR_METHOD_NOT_ALLOWED, NULL,
                  "/v1/admin/models takes POST, /v1/admin/models/{name} DELETE");
        return NULL;
    }
    if (srv_d.draining) {
        srv_error(resp, SRV_ERR_UNAVAILABLE, NULL, "the server is shutting down");
        return NULL;
    }
    json_t *parsed = NULL;
    srv_model_spec spec;
    if (load) {
        json_error_t jerr;
        parsed = json_loadb(body ? body : "", body_len, 0, &jerr);
        if (!json_is_object(parsed)) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, NULL,
                      "the body must be a JSON object: a model entry as in the config file");
            json_decref(parsed);
            return NULL;
        }
        if (read_spec(parsed, &spec, resp)) {
            json_decref(parsed);
            return NULL;
        }
        /* checked before anything is read: a path elsewhere is refused the same way
         * whether it exists or not, and its contents are never quoted back */
        if (json_object_get(parsed, "path") && !srv_config_in_model_root(&srv_d.cfg, spec.source)) {
            srv_error(resp, SRV_ERR_FORBIDDEN, "path",
                      "path does not exist or is outside the model roots (the config's "
                      "\"model_roots\"; by default the directories holding the configured "
                      "models)");
            json_decref(parsed);
            return NULL;
        }
        if (srv_find_model(spec.name, strlen(spec.name))) {
            srv_error(resp, SRV_ERR_CONFLICT, "name", "a model called %s is loaded", spec.name);
            json_decref(parsed);
            return NULL;
        }
    } else {
        if (!srv_find_model(name, strlen(name))) {
            srv_error(resp, SRV_ERR_NOT_FOUND, "model", "no model called \"%s\"", name);
            return NULL;
        }
        parsed = json_pack("{s:s}", "name", name);
    }
    srv_job *job = calloc(1, sizeof *job);
    admin_params *p = calloc(1, sizeof *p);
    if (!job || !p) {
        free(job);
        free(p);
        json_decref(parsed);
        srv_out_of_memory(resp);
        return NULL;
    }
    *p = (admin_params){.unload = !load, .body = parsed};
    job->params = p;
    job->free_params = free_params;
    return job;
}

/* Admin jobs started and not yet answered. */
static pthread_mutex_t in_flight_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t in_flight_done = PTHREAD_COND_INITIALIZER;
static int in_flight;

static void admin_load(srv_job *job) {
    srv_model_spec spec;
    read_spec(((admin_params *)job->params)->body, &spec,
              &job->response); /* checked by srv_admin_route */
    srv_model loaded = {0};
    lens_err err = {0};
    if (srv_load_model(&loaded, &spec, &err)) {
        srv_error(&job->response,
                  err.code == LENS_ERR_NO_MEMORY ? SRV_ERR_INSUFFICIENT_STORAGE
                                                 : SRV_ERR_UNPROCESSABLE,
                  "path", "%s", err.msg);
        return;
    }
    pthread_rwlock_wrlock(&srv_d.models_lock);
    srv_model *slot = NULL;
    bool taken = false;
    /* checked under the lock that the shutdown's drain takes to stop every present
     * model: a model added before it is stopped by it, none is added after */
    const bool draining = srv_d.draining;
    for (int i = 0; i < srv_d.n_models; i++)
        taken |= srv_d.models[i].present && strcmp(srv_d.models[i].name, spec.name) == 0;
    for (int i = 0; i < srv_d.n_models && !taken && !draining && !slot; i++)
        if (srv_d.models[i].reusable && atomic_load(&srv_d.models[i].jobs_out) == 0)
            slot = &srv_d.models[i]; /* unloaded, and no job points at it any more */
    const bool reused = slot != NULL;
    if (reused) {
        pthread_mutex_destroy(&slot->lock); /* srv_sched_add makes them anew */
        pthread_cond_destroy(&slot->wake);
        if (slot->owns_name) free(slot->name);
    } else if (!taken && !draining && srv_d.n_models < srv_d.cap_models) {
        slot = &srv_d.models[srv_d.n_models];
    }
    if (slot) {
        *slot = loaded;
        slot->name = strdup(spec.name);
        slot->owns_name = true;
        if (!slot->name || srv_sched_add(slot)) {
            free(slot->name);
            *slot = (srv_model){0};
            slot = NULL; /* a reused slot stays an unloaded one */
        } else {
            slot->present = true;
            srv_d.n_models += !reused;
        }
    }
    pthread_rwlock_unlock(&srv_d.models_lock);
    if (!slot) {
        srv_unload_model(&loaded);
        if (draining)
            srv_error(&job->response, SRV_ERR_UNAVAILABLE, NULL,
                      "the server is shutting down; %s was loaded but not added", spec.name);
        else if (taken)
            srv_error(&job->response, SRV_ERR_CONFLICT, "name",
                      "a model called %s was loaded meanwhile", spec.name);
        else
            srv_error(&job->response, SRV_ERR_INSUFFICIENT_STORAGE, NULL,
                      "this daemon holds the %d models it has room for; unload one first",
                      srv_d.cap_models);
        return;
    }
    fprintf(stderr, "lensd: loaded %s at run time\n", spec.name);
    job->response.status = MHD_HTTP_CREATED;
    job->response.content_type = "application/json";
    job->response.body = strdup(slot->info_json);
    job->response.body_len = job->response.body ? strlen(job->response.body) : 0;
}

static void admin_unload(srv_job *job) {
    const char *name =
        json_string_value(json_object_get(((admin_params *)job->params)->body, "name"));
    pthread_rwlock_wrlock(&srv_d.models_lock);
    srv_model *m = NULL;
    for (int i = 0; i < srv_d.n_models && !m; i++)
        if (srv_d.models[i].present && strcmp(srv_d.models[i].name, name) == 0)
            m = &srv_d.models[i];
    if (m) m->present = false; /* no new requests find it */
    pthread_rwlock_unlock(&srv_d.models_lock);
    if (!m) {
        srv_error(&job->response, SRV_ERR_NOT_FOUND, "model", "no model called \"%s\"", name);
        return;
    }
    srv_sched_remove(m); /* its queued requests finish first */
    /* requests routed to it before it went are parsed on the HTTP threads,
     * reading the model, until they are refused: they are waited for */
    while (atomic_load(&m->jobs_out) > 0)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    srv_unload_model(m);
    pthread_rwlock_wrlock(&srv_d.models_lock);
    m->reusable = true;
    pthread_rwlock_unlock(&srv_d.models_lock);
    fprintf(stderr, "lensd: unloaded %s\n", name);
    srv_json(&job->response, MHD_HTTP_OK, json_pack("{s:s}", "unloaded", name));
}

static void *admin_thread(void *arg) {
    srv_job *job = arg;
    if (!((admin_params *)job->params)->unload)
        admin_load(job);
    else
        admin_unload(job);
    MHD_resume_connection(job->connection);
    pthread_mutex_lock(&in_flight_lock);
    in_flight--;
    pthread_cond_broadcast(&in_flight_done);
    pthread_mutex_unlock(&in_flight_lock);
    return NULL;
}

void srv_admin_start(srv_job *job) {
    pthread_mutex_lock(&in_flight_lock);
    in_flight++;
    pthread_mutex_unlock(&in_flight_lock);
    pthread_t thread;
    if (pthread_create(&thread, NULL, admin_thread, job)) {
        srv_error(&job->response, SRV_ERR_UNAVAILABLE, NULL,
                  "cannot start a thread for this request");
        MHD_resume_connection(job->connection);
        pthread_mutex_lock(&in_flight_lock);
        in_flight--;
        pthread_mutex_unlock(&in_flight_lock);
        return;
    }
    pthread_detach(thread);
}

void srv_admin_wait(void) {
    pthread_mutex_lock(&in_flight_lock);
    while (in_flight > 0)
        pthread_cond_wait(&in_flight_done, &in_flight_lock);
    pthread_mutex_unlock(&in_flight_lock);
}
