/*
 * routes.c: the router (routes.h). It answers what needs no model (health,
 * readiness, metrics, the model list and details, capabilities, the OpenAPI
 * document) and hands a model's endpoint its body to parse, on
 * libmicrohttpd's thread: a request that parses is a job for the model's
 * executor, anything else is answered at once.
 */
#include "server/routes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/endpoint.h"
#include "server/metrics.h"
#include "server/models.h"
#include "server/openapi.h"
#include "server/progress.h"
#include "server/scheduler.h"

bool srv_is_model_action(const char *action, size_t len) {
    return srv_endpoint_find(action, len) != NULL;
}

/* The GET routes that need no model. */
static const char *const plain_routes[] = {"/healthz",   "/readyz",          "/metrics",
                                           "/v1/models", "/v1/capabilities", "/openapi.json"};

bool srv_is_plain_route(const char *url) {
    for (size_t i = 0; i < sizeof plain_routes / sizeof plain_routes[0]; i++)
        if (strcmp(url, plain_routes[i]) == 0) return true;
    return false;
}

/* The present models' names (readyz). */
static json_t *model_names(void) {
    json_t *names = json_array();
    pthread_rwlock_rdlock(&srv_d.models_lock);
    for (int i = 0; i < srv_d.n_models; i++)
        if (srv_d.models[i].present)
            json_array_append_new(names, json_string(srv_d.models[i].name));
    pthread_rwlock_unlock(&srv_d.models_lock);
    return names;
}

/* Free host memory (MemAvailable), or 0 where /proc/meminfo does not say. */
static size_t host_free_bytes(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[128];
    unsigned long long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    if (f) fclose(f);
    return (size_t)kb * 1024;
}

/* GET /v1/capabilities: what a router in front of several daemons needs to
 * place a request (docs/DEPLOY.md). */
static json_t *capabilities_json(void) {
    json_t *models = json_array(), *devices = json_array();
    long depth = 0;
    pthread_rwlock_rdlock(&srv_d.models_lock);
    for (int i = 0; i < srv_d.n_models; i++) {
        const srv_model *sm = &srv_d.models[i];
        if (!sm->present) continue;
        const lens_config *c = &sm->model->cfg;
        lk_device_info dev;
        lk_device_describe(sm->model->device, &dev);
        const int queued = srv_sched_depth(sm);
        depth += queued;
        json_array_append_new(
            models, json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:i}", "name", sm->name,
                              "architecture", c->architecture, "device", dev.name, "dtype",
                              "float32", "n_layers", c->n_layers, "d_model", c->d_model, "n_ctx",
                              c->n_ctx, "d_vocab", c->d_vocab, "queue_depth", queued));
        bool seen = false;
        for (size_t k = 0; k < json_array_size(devices); k++)
            seen |= strcmp(json_string_value(json_object_get(json_array_get(devices, k), "name")),
                           dev.name) == 0;
        if (!seen)
            json_array_append_new(
                devices,
                json_pack("{s:s, s:b, s:I, s:I}", "name", dev.name, "host_memory", dev.host_memory,
                          "total_bytes", (json_int_t)dev.total_bytes, "free_bytes",
                          (json_int_t)(dev.host_memory ? host_free_bytes() : dev.free_bytes)));
    }
    pthread_rwlock_unlock(&srv_d.models_lock);
    return json_pack("{s:s, s:o, s:o, s:[s], s:I, s:I, s:b}", "version", LENS_VERSION, "models",
                     models, "devices", devices, "dtypes", "float32", "queue_depth",
                     (json_int_t)depth, "free_memory_bytes", (json_int_t)host_free_bytes(), "ready",
                     srv_d.ready && !srv_d.draining);
}

/* The model list (GET /v1/models). */
static json_t *model_list(void) {
    json_t *list = json_array();
    pthread_rwlock_rdlock(&srv_d.models_lock);
    for (int i = 0; i < srv_d.n_models; i++)
        if (srv_d.models[i].present)
            json_array_append_new(list, json_loads(srv_d.models[i].summary_json, 0, NULL));
    pthread_rwlock_unlock(&srv_d.models_lock);
    return json_pack("{s:o}", "models", list);
}

/* Answers one of plain_routes into resp. */
static void answer_plain_get(const char *url, srv_response *resp) {
    if (strcmp(url, "/healthz") == 0) {
        srv_json(resp, 200, json_pack("{s:s}", "status", "ok"));
    } else if (strcmp(url, "/readyz") == 0) {
        const bool ready = srv_d.ready && !srv_d.draining;
        srv_json(resp, ready ? 200 : 503,
                 json_pack("{s:s, s:o}", "status",
                           ready            ? "ready"
                           : srv_d.draining ? "draining"
                                            : "starting",
                           "models", model_names()));
    } else if (strcmp(url, "/metrics") == 0) {
        resp->status = 200;
        resp->content_type = "text/plain; version=0.0.4";
        resp->body = srv_metrics_text(&resp->body_len);
        if (!resp->body) srv_out_of_memory(resp);
    } else if (strcmp(url, "/v1/models") == 0) {
        srv_json(resp, 200, model_list());
    } else if (strcmp(url, "/v1/capabilities") == 0) {
        srv_json(resp, 200, capabilities_json());
    } else {
        srv_json(resp, 200, srv_openapi_json(model_names()));
    }
}

/* Takes the body's "processing" (TransformerLens's weight processing for
 * this request: "default", "none" or a comma list of steps) out of it into
 * *flags, which stay the model's own when it is absent or the endpoint
 * reads only the tokenizer. Returns -1 with the error in resp. */
static int take_processing(json_t *body, const srv_model *m, const srv_endpoint *endpoint,
                           unsigned *flags, srv_response *resp) {
    json_t *v = json_object_get(body, "processing");
    *flags = m->model->processing;
    if (!v) return 0;
    if (endpoint->tokenizer_only) {
        json_object_del(body, "processing");
        return 0;
    }
    lens_err err = {0};
    if (!json_is_string(v)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "processing",
                  "processing must be a string: \"default\", \"none\" or a comma list of "
                  "steps (\"fold_ln,center_writing_weights\")");
        return -1;
    }
    if (lens_processing_parse(json_string_value(v), flags, &err)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "processing", "%s", err.msg);
        return -1;
    }
    json_object_del(body, "processing");
    return 0;
}

/* Copies a model's detail into the response (srv_with_model). */
static void answer_info(const srv_model *m, void *resp) {
    srv_json_raw(resp, m->info_json);
}

srv_job *srv_route(const char *method, const char *url, const char *accept, const char *body,
                   size_t body_len, struct MHD_Connection *connection, const srv_token *token,
                   srv_response *resp) {
    const bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    if (srv_is_plain_route(url)) {
        if (get)
            answer_plain_get(url, resp);
        else
            srv_error(resp, SRV_ERR_METHOD_NOT_ALLOWED, NULL, "%s takes GET, not %s", url, method);
        return NULL;
    }
    const char *prefix = "/v1/models/";
    if (strncmp(url, prefix, strlen(prefix)) != 0) {
        srv_error(resp, SRV_ERR_NOT_FOUND, NULL, "no such route: %s", url);
        return NULL;
    }
    if (!srv_d.ready) {
        srv_error(resp, SRV_ERR_UNAVAILABLE, NULL, "the models are still loading");
        resp->retry_after_s = 2;
        return NULL;
    }
    const char *name = url + strlen(prefix), *slash = strchr(name, '/');
    const size_t name_len = slash ? (size_t)(slash - name) : strlen(name);
    if (!slash || !slash[1]) { /* the model's detail, read while it cannot be unloaded */
        if (get && srv_with_model(name, name_len, answer_info, resp) == 0) return NULL;
        if (!srv_find_model(name, name_len))
            srv_error(resp, SRV_ERR_NOT_FOUND, "model", "no model called \"%.*s\"", (int)name_len,
                      name);
        else
            srv_error(resp, SRV_ERR_METHOD_NOT_ALLOWED, NULL, "%s takes GET, not %s", url, method);
        return NULL;
    }
    if (!srv_find_model(name, name_len)) {
        srv_error(resp, SRV_ERR_NOT_FOUND, "model", "no model called \"%.*s\"", (int)name_len,
                  name);
        return NULL;
    }
    const srv_endpoint *endpoint = srv_endpoint_find(slash + 1, strlen(slash + 1));
    if (!endpoint) {
        char list[256] = "";
        for (int i = 0; i < srv_n_endpoints; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "",
                     srv_endpoints[i]->name);
        srv_error(resp, SRV_ERR_NOT_FOUND, NULL, "no such route: %s (model routes: %s)", url, list);
        return NULL;
    }
    if (!post) {
        srv_error(resp, SRV_ERR_METHOD_NOT_ALLOWED, NULL, "%s takes POST, not %s", url, method);
        return NULL;
    }
    json_error_t jerr;
    json_t *parsed = body_len ? json_loadb(body, body_len, 0, &jerr) : NULL;
    if (!json_is_object(parsed)) {
        if (body_len && !parsed)
            srv_error(resp, SRV_ERR_BAD_REQUEST, NULL,
                      "the body is not JSON: %s at line %d column %d", jerr.text, jerr.line,
                      jerr.column);
        else
            srv_error(resp, SRV_ERR_BAD_REQUEST, NULL, "the body must be a JSON object");
        json_decref(parsed);
        return NULL;
    }
    /* counted from here, so that the model stays loaded while it is parsed
     * here and until the job is answered */
    srv_model *m = srv_hold_model(name, name_len);
    srv_job *job = m ? calloc(1, sizeof *job) : NULL;
    void *params = NULL;
    unsigned processing = 0;
    if (!m) {
        srv_error(resp, SRV_ERR_NOT_FOUND, "model", "no model called \"%.*s\"", (int)name_len,
                  name);
    } else if (!job) {
        srv_out_of_memory(resp);
    } else if (take_processing(parsed, m, endpoint, &processing, resp)) {
        free(job);
        job = NULL;
    } else if (endpoint->parse(m, parsed, &params, resp)) {
        endpoint->free_params(params);
        free(job);
        job = NULL;
    }
    json_decref(parsed);
    if (!job) {
        if (m) atomic_fetch_sub(&m->jobs_out, 1);
        return NULL;
    }
    *job = (srv_job){.endpoint = endpoint,
                     .model = m,
                     .processing = processing,
                     .params = params,
                     .free_params = endpoint->free_params,
                     .accept = accept,
                     .connection = connection,
                     .token = token};
    if (endpoint->progress_id &&
        !(job->progress = srv_progress_begin(endpoint->progress_id(params), job, resp))) {
        endpoint->free_params(params);
        free(job);
        atomic_fetch_sub(&m->jobs_out, 1);
        return NULL;
    }
    return job;
}
