/*
 * routes.h: the router: a request's method and path to its answer or its job.
 */
#ifndef SRV_ROUTES_H
#define SRV_ROUTES_H

#include <stdbool.h>
#include <stddef.h>

#include "server/daemon.h"

/* Routes one request whose body is complete: answers it in *resp and
 * returns NULL, or returns a job to run for the caller's connection and
 * token, its body parsed by its endpoint and, for a long job, its progress
 * registered. */
srv_job *srv_route(const char *method, const char *url, const char *accept, const char *body,
                   size_t body_len, struct MHD_Connection *connection, const srv_token *token,
                   srv_response *resp);

/* Whether url is a GET route that needs no model (/healthz, /readyz,
 * /metrics, /v1/models, /v1/capabilities, /openapi.json). */
bool srv_is_plain_route(const char *url);

/* Whether action[0..len-1] names a route under /v1/models/{m}/ (logits,
 * patch, ...). */
bool srv_is_model_action(const char *action, size_t len);

#endif
