/*
 * requests.c: libFuzzer harness for what the HTTP thread does with a request
 * before it queues: the router (srv_route: method and path, server/routes.h)
 * and each endpoint's parse of the JSON body (server/endpoint.h), on the
 * bundled model induction-2l loaded once, served as "m".
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
