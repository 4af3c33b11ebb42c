/*
 * admin.h: /v1/admin/: loading and unloading models at run time.
 */
#ifndef SRV_ADMIN_H
#define SRV_ADMIN_H

#include <stddef.h>

#include "server/daemon.h"

/* Routes a request under /v1/admin/ (POST /v1/admin/models loads a model,
 * DELETE /v1/admin/models/{name} unloads one): answers it in resp and
 * returns NULL, or returns a job for srv_admin_start. */
srv_job *srv_admin_route(const char *method, const char *url, const char *body, size_t body_len,
                         srv_response *resp);

/* Runs an admin job on a thread of its own, then resumes its connection. */
void srv_admin_start(srv_job *job);

/* Waits until every admin job started has resumed its connection (at
 * shutdown, before the HTTP side stops: libmicrohttpd aborts if a connection
 * is still suspended then). A load that finishes while draining is answered
 * 503 and its model not added. */
void srv_admin_wait(void);

#endif
