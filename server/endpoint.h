/*
 * endpoint.h: the table of a model's endpoints, POST /v1/models/{model}/{name}.
 *
 * Each endpoint is one file in server/endpoints/ and one row here. The
 * router (routes.c), the 404 message, the metrics labels and /openapi.json
 * read the table; the scheduler calls a job's own run. A new endpoint is a
 * file, a row in srv_endpoints (endpoint.c), docs/API.md and a test.
 *
 * A request's path through its endpoint: parse, on libmicrohttpd's thread,
 * checks the JSON body against the model (tokenizing its prompts) and every
 * limit, and makes typed params, so a bad request is answered at once and
 * never queues; run, on the model's executor, computes and encodes the
 * answer into each job's response.
 */
#ifndef SRV_ENDPOINT_H
#define SRV_ENDPOINT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "server/daemon.h"

/* The most jobs one run_batch takes. */
#define SRV_MAX_BATCHED_JOBS 16

typedef struct srv_endpoint {
    const char *name;    /* the last part of the path: "logits" */
    const char *summary; /* one sentence, for /openapi.json */
    /* The request body's JSON Schema (a JSON object as text), for
     * /openapi.json: the fields parse reads. */
    const char *request_schema;
    /* Reads body for sm's model into *params (freed with free_params), or
     * fills resp with the error and returns -1. Reads only the model, which
     * cannot be unloaded meanwhile, and the configuration. */
    int (*parse)(const srv_model *sm, json_t *body, void **params, srv_response *resp);
    /* Runs a job on its model's executor, leaving its answer in its
     * response. */
    void (*run)(srv_job *job);
    /* Instead of run, for jobs that queued one behind another may share a
     * forward pass: runs n of them (1 to SRV_MAX_BATCHED_JOBS) for one
     * model, each answered on its own. */
    void (*run_batch)(srv_job **jobs, int n);
    void (*free_params)(void *params);
    /* A long job's "progress_id" in its params (NULL: none given), for
     * endpoints whose jobs report progress (progress.h); NULL for others. */
    const char *(*progress_id)(const void *params);
    /* Reads only the tokenizer: its jobs run on the model's own weights
     * whatever the body's "processing" says. */
    bool tokenizer_only;
} srv_endpoint;

extern const srv_endpoint srv_endpoint_tokenize, srv_endpoint_detokenize, srv_endpoint_logits,
    srv_endpoint_run_with_cache, srv_endpoint_attention, srv_endpoint_test_prompt,
    srv_endpoint_logit_diff, srv_endpoint_run_with_hooks, srv_endpoint_generate, srv_endpoint_patch,
    srv_endpoint_weights;

/* Every endpoint, in docs/API.md's order; srv_n_endpoints of them. */
extern const srv_endpoint *const srv_endpoints[];
extern const int srv_n_endpoints;

/* The endpoint called name[0..len-1], or NULL. */
const srv_endpoint *srv_endpoint_find(const char *name, size_t len);

#endif
