/*
 * daemon.h: the parts of `lensd serve` and how they meet.
 *
 * A request's path: libmicrohttpd's threads (http.c) collect and check the
 * body and authorisation, and routes.c turns it into a job, validated up to
 * what needs the model; the job goes to the scheduler (sched.c), whose libuv
 * loop thread queues it on its model (503 when the queue is full or the
 * daemon is draining); the model's executor thread, the only thread that
 * touches that model and its device memory, runs it (routes.c again) and
 * leaves a response in it; the connection, suspended meanwhile, resumes and
 * sends it.
 */
#ifndef SRV_DAEMON_H
#define SRV_DAEMON_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/forward.h"
#include "core/model.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/reply.h"

/* The kinds of work a model's executor runs. */
typedef enum srv_job_kind {
    SRV_JOB_TOKENIZE,
    SRV_JOB_DETOKENIZE,
    SRV_JOB_LOGITS,
    SRV_JOB_RUN_WITH_CACHE,
    SRV_JOB_ATTENTION,
    SRV_JOB_TEST_PROMPT,
    SRV_JOB_LOGIT_DIFF,
    SRV_JOB_RUN_WITH_HOOKS,
    SRV_JOB_GENERATE,
    SRV_JOB_PATCH,
    SRV_JOB_ADMIN_LOAD, /* admin.c, not an executor */
    SRV_JOB_ADMIN_UNLOAD,
} srv_job_kind;

typedef struct srv_model srv_model;

/* One request's work for a model: its parsed body and, once run, its
 * response. */
typedef struct srv_job {
    srv_job_kind kind;
    srv_model *model;
    json_t *body;       /* the request's JSON (owned) */
    const char *accept; /* the chosen response type */
    struct MHD_Connection *connection;
    const srv_token *token; /* the caller's (NULL without access control) */
    double submitted_s;     /* CLOCK_MONOTONIC, when the scheduler took it */
    srv_response response;
    struct srv_job *next;
} srv_job;

/* A loaded model and its executor: a slot of srv_daemon.models, in use
 * while present. An unloaded slot is reused by a later admin load once no
 * job points at it any more (jobs_out 0), so a job's pointer stays valid. */
struct srv_model {
    char *name;
    bool present;        /* loaded and answering; false once unloaded */
    atomic_int jobs_out; /* jobs routed to it and not yet answered */
    bool reusable;       /* unloaded: its executor stopped, its model freed */
    bool owns_name;      /* loaded at run time (name allocated) */
    lens_model *model;
    char *info_json;    /* GET /v1/models/{name}, made at load */
    char *summary_json; /* its entry in GET /v1/models */
    lens_workspace ws;  /* the executor's */
    pthread_t executor;
    pthread_mutex_t lock; /* guards the queue */
    pthread_cond_t wake;
    srv_job *head, *tail; /* waiting jobs */
    int queued;
    bool stopping;
    bool busy;
};

/* The daemon. One per process. */
typedef struct srv_daemon {
    srv_config cfg;
    srv_auth *auth;    /* NULL: no access control */
    srv_model *models; /* [cap_models]; slots 0..n_models-1 used, present or unloaded */
    int n_models, cap_models;
    pthread_rwlock_t models_lock; /* held to read or change which models are present */
    int ready;                    /* models loaded */
    struct MHD_Daemon *http;
    char web_root[4096]; /* realpath of cfg.web_dir, "" for none */
    volatile int draining;
    uint64_t next_request_id;
} srv_daemon;

extern srv_daemon srv_d;

/* ---- routes.c ---- */

/* The present model called name (len bytes), or NULL. Takes the read side
 * of models_lock, which the caller must not hold. */
srv_model *srv_find_model(const char *name, size_t len);

/* Routes one request whose body is complete: answers it in *resp and
 * returns NULL, or returns a job to run (body ownership passes to it; the
 * caller sets its connection and token). */
srv_job *srv_route(const char *method, const char *url, const char *accept, const char *body,
                   size_t body_len, srv_response *resp);

/* Whether action[0..len-1] names a route under /v1/models/{m}/ (logits,
 * patch, ...). */
bool srv_is_model_action(const char *action, size_t len);

/* Runs a job on its model's executor thread, filling job->response. */
void srv_run_job(srv_job *job);

/* Runs several logits jobs of one model as one forward pass where they can
 * share it (causal attention, right padding), with the same numbers as
 * alone; each gets its own response. */
void srv_run_logits_jobs(srv_job **jobs, int n);

/* ---- sched.c ---- */

/* Held while the CPU computes for a model (forward passes, weight
 * processing): OpenBLAS built on OpenMP must not be entered by two threads
 * at once, and the cores are shared anyway. GPU models don't take it. */
extern pthread_mutex_t srv_cpu_lock;

/* Starts the scheduler's loop thread and one executor per model. */
int srv_sched_start(lens_err *err);

/* Starts the executor of a model loaded at run time. Returns -1 if the
 * thread cannot start. */
int srv_sched_add(srv_model *m);

/* Stops a model's executor after its queued jobs (new ones get 503) and
 * waits for it. */
void srv_sched_remove(srv_model *m);

/* Hands a job to the scheduler: it runs later on its model's executor and
 * then the connection is resumed, or it fails at once (queue full,
 * draining) with its response filled in and the connection resumed. */
void srv_sched_submit(srv_job *job);

/* Jobs waiting or running, over all models. */
int srv_sched_depth(const srv_model *m);

/* Blocks until SIGINT or SIGTERM, then stops taking work, lets every queued
 * and running job finish, and stops the executors and the loop. From the
 * signal on, a watchdog ends the process (status 1, after a line on stderr)
 * if it has not exited within limits.shutdown_timeout_s. */
void srv_sched_run_until_signal(void);

/* ---- admin.c ---- */

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

/* Loads spec into slot sm (model, device, info JSON). Returns -1 with a
 * message. */
int srv_load_model(srv_model *sm, const srv_model_spec *spec, lens_err *err);

/* Frees what a slot holds (its executor must be stopped). */
void srv_unload_model(srv_model *sm);

/* ---- http.c ---- */

/* Starts libmicrohttpd on cfg's address (port 0: a free one) and returns
 * the port it listens on, or -1. */
int srv_http_start(lens_err *err);

/* Stops accepting connections and waits for the open ones to finish. */
void srv_http_stop(void);

/* ---- metrics.c ---- */

/* Counts a finished request. */
void srv_metrics_request(const char *route, unsigned status, double seconds);

/* Counts a forward's batch size. */
void srv_metrics_batch(int rows);

/* The Prometheus text of every metric (malloc'd). */
char *srv_metrics_text(size_t *len);

#endif
