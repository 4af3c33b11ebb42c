/*
 * requests.c: libFuzzer harness for what the HTTP thread does with a request
 * before it queues: the router (srv_route: method and path, server/routes.h)
 * and each endpoint's parse of the JSON body (server/endpoint.h), on the
 * bundled model induction-2l loaded once, served as "m".
 *
 * Also the kept caches' routes (srv_caches_route, server/caches.h) with
 * their query strings: a path under /v1/caches/ that starts with "*" is one
 * kept cache's, its id put for the "*" (two tensors, [2, 3, 4] and a
 * [2, 2, 3, 3] pattern), and "?batch=..&positions=.." are its comma lists,
 * as libmicrohttpd hands them over.
 *
 * Input: "METHOD PATH\n" then the body (the first line may be anything: the
 * harness splits at the first newline, and without one the whole input is
 * the path of a GET).
 *
 * Contract checked: srv_route either answers at once, with a status and a
 * JSON body (an error's code being its status's in SRV_ERRORS), or returns a
 * job of an endpoint in the table for model "m", whose params are made and
 * freed (libFuzzer's leak check sees what parse forgot); it never touches
 * the model's executor, which does not run here. Anything else aborts.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/caches.h"
#include "server/endpoint.h"
#include "server/progress.h"
#include "server/routes.h"
#include "tests/fuzz/fuzz.h"

static srv_model slot;

/* The daemon's state as `lensd serve --model m=models/induction-2l` leaves
 * it once ready, without its HTTP side or scheduler. */
static void serve_once(void) {
    if (slot.model) return;
    char path[4096];
    snprintf(path, sizeof path, "%s/models/induction-2l", LENSD_SOURCE_DIR);
    char *argv[] = {"serve", "--model", "m=x", NULL};
    lens_err err = {0};
    if (srv_config_load(&srv_d.cfg, 3, argv, &err)) fuzz_fail("config: %s", err.msg);
    slot = (srv_model){.name = "m", .present = true};
    if (!(slot.model = lens_model_load(path, NULL, &err))) fuzz_fail("%s: %s", path, err.msg);
    slot.info_json = strdup("{\"name\": \"m\"}");
    slot.summary_json = strdup("{\"name\": \"m\"}");
    srv_d.models = &slot;
    srv_d.n_models = srv_d.cap_models = 1;
    srv_d.ready = 1;
}

/* A cache kept for the /v1/caches/ routes, kept again once deleted; its id. */
static const char *kept_cache(void) {
    static char id[33];
    if (srv_caches_bytes() > 0) return id;
    srv_answer *a = srv_answer_with_room(2);
    float *resid = a ? srv_answer_alloc(a, 24 * sizeof *resid) : NULL;
    float *pattern = a ? srv_answer_alloc(a, 36 * sizeof *pattern) : NULL;
    if (!resid || !pattern) fuzz_fail("out of memory");
    for (int i = 0; i < 24; i++)
        resid[i] = (float)i - 3.5f;
    for (int i = 0; i < 36; i++)
        pattern[i] = (float)i / 36;
    srv_answer_add(a, "blocks.0.hook_resid_pre", LENS_F32, 3, (int64_t[]){2, 3, 4}, resid);
    srv_answer_add(a, "blocks.0.attn.hook_pattern", LENS_F32, 4, (int64_t[]){2, 2, 3, 3}, pattern);
    srv_response resp = {0};
    if (srv_caches_keep("m", srv_token_owner(NULL), a, id, &resp)) fuzz_fail("cannot keep a cache");
    return id;
}

/* The value of key in the query string query ("a=1&b=2"), into buf[cap], or
 * NULL when absent. */
static const char *query_value(const char *query, const char *key, char *buf, size_t cap) {
    for (const char *p = query; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL) {
        const size_t n = strlen(key);
        if (strncmp(p, key, n) == 0 && p[n] == '=') {
            const char *end = strchr(p + n + 1, '&');
            const size_t len = end ? (size_t)(end - p - n - 1) : strlen(p + n + 1);
            if (len >= cap) return NULL;
            memcpy(buf, p + n + 1, len);
            buf[len] = '\0';
            return buf;
        }
    }
    return NULL;
}

/* The route of a kept cache: path after "/v1/caches/", "*" its id. */
static void cache_route(const char *method, const char *path) {
    char rest[1200], batch[1024], positions[1024];
    const char *query = strchr(path, '?');
    const size_t len = query ? (size_t)(query - path) : strlen(path);
    snprintf(rest, sizeof rest, "%s%.*s", path[0] == '*' ? kept_cache() : "",
             (int)(len - (path[0] == '*')), path + (path[0] == '*'));
    srv_response resp = {0};
    srv_caches_route(method, rest, "application/json",
                     query ? query_value(query + 1, "batch", batch, sizeof batch) : NULL,
                     query ? query_value(query + 1, "positions", positions, sizeof positions)
                           : NULL,
                     NULL, &resp);
    if (resp.status < 200 || resp.status > 599 || (!resp.body && !resp.stream))
        fuzz_fail("/v1/caches/%s: status %u without a body", rest, resp.status);
    free(resp.body);
}

/* A refusal or a plain answer: a status and, but for /metrics, JSON. */
static void check_answer(const srv_response *resp, const char *path) {
    if (resp->status < 200 || resp->status > 599 || !resp->body)
        fuzz_fail("%s: status %u, body %p", path, resp->status, (void *)resp->body);
    if (strcmp(path, "/metrics") == 0) return;
    json_t *doc = json_loadb(resp->body, resp->body_len, 0, NULL);
    if (!doc) fuzz_fail("%s: status %u with a body that is not JSON", path, resp->status);
    const char *code = json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
    if (code) {
        int k = 0;
        while (k < SRV_N_ERRORS && strcmp(srv_error_code((srv_error_kind)k), code) != 0)
            k++;
        if (k == SRV_N_ERRORS || srv_error_status((srv_error_kind)k) != resp->status)
            fuzz_fail("%s: error %s with status %u", path, code, resp->status);
    }
    json_decref(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    serve_once();
    const uint8_t *newline = memchr(data, '\n', size);
    const size_t head = newline ? (size_t)(newline - data) : size;
    char line[1024];
    if (head >= sizeof line) return 0;
    memcpy(line, data, head);
    line[head] = '\0';
    if (strlen(line) != head) return 0; /* a NUL in the request line: HTTP never hands one over */
    char *space = newline ? strchr(line, ' ') : NULL;
    const char *method = space ? line : "GET", *path = space ? space + 1 : line;
    if (space) *space = '\0';
    if (strncmp(path, "/v1/caches/", 11) == 0) {
        cache_route(method, path + 11);
        return 0;
    }
    const char *body = newline ? (const char *)newline + 1 : "";
    const size_t body_len = newline ? size - head - 1 : 0;
    srv_response resp = {0};
    srv_job *job = srv_route(method, path, "application/json", body, body_len, NULL, NULL, &resp);
    if (!job) {
        check_answer(&resp, path);
        free(resp.body);
        return 0;
    }
    if (resp.body) fuzz_fail("%s %s: a job and an answer", method, path);
    bool known = false;
    for (int i = 0; i < srv_n_endpoints; i++)
        known |= job->endpoint == srv_endpoints[i];
    if (!known || job->model != &slot || !job->params)
        fuzz_fail("%s %s: a job without an endpoint, the model or params", method, path);
    srv_progress_end(job->progress);
    job->free_params(job->params);
    atomic_fetch_sub(&slot.jobs_out, 1);
    free(job);
    return 0;
}
