/*
 * daemon.h: the daemon's shared state — its models and their jobs — and how
 * the parts of `lensd serve` meet.
 *
 * A request's path: libmicrohttpd's threads (http.c) collect and check the
 * body and authorisation; the router (routes.c) hands the body to its
 * endpoint's parse (endpoint.h, server/endpoints/), still on that thread,
 * which checks it against the model and every limit into typed params: a
 * bad request is answered there and never queues. The job goes to the
 * scheduler (scheduler.c), whose libuv loop thread queues it on its model
 * (503 when the queue is full or the daemon is draining); the model's
 * executor thread, the only thread that computes with that model and its
 * device memory, calls the endpoint's run, which leaves a response in it;
 * the connection, suspended meanwhile, resumes and sends it. Everything
 * answers with reply.h, which uses nothing of the server.
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

typedef struct srv_model srv_model;
typedef struct srv_endpoint srv_endpoint;
typedef struct srv_progress srv_progress;

/* One request's work for a model: its parsed body and, once run, its
 * response. */
typedef struct srv_job {
    const srv_endpoint *endpoint; /* NULL for an admin job (admin.c) */
    srv_model *model;
    /* The requested weight processing (LENS_PROC_* flags: the request's
     * "processing", else how the model was loaded), and the weights of the
     * model processed so, which the executor sets before run (models.h,
     * srv_model_weights): run reads the model through lm, never model->model. */
    unsigned processing;
    const lens_model *lm;
    void *params;                      /* the parsed request (owned) */
    void (*free_params)(void *params); /* frees params */
    const char *accept;                /* the chosen response type */
    struct MHD_Connection *connection;
    const srv_token *token; /* the caller's (NULL without access control) */
    srv_progress *progress; /* a long job's, from queued to answered (progress.h), or NULL */
    double submitted_s;     /* CLOCK_MONOTONIC, when the scheduler took it */
    srv_response response;
    struct srv_job *next;
} srv_job;

/* A model's checkpoint loaded with another processing. */
typedef struct srv_weight_variant {
    lens_model *model; /* NULL: the slot is free */
    double used_s;     /* when a job last ran on it (CLOCK_MONOTONIC) */
} srv_weight_variant;

/* A loaded model and its executor: a slot of srv_daemon.models, in use
 * while present. An unloaded slot is reused by a later admin load once no
 * job points at it any more (jobs_out 0), so a job's pointer stays valid. */
struct srv_model {
    char *name;
    bool present;        /* loaded and answering; false once unloaded */
    atomic_int jobs_out; /* jobs routed to it and not yet answered */
    bool reusable;       /* unloaded: its executor stopped, its model freed */
    bool owns_name;      /* loaded at run time (name allocated) */
    lens_model *model;   /* loaded as its spec says */
    /* The same checkpoint under other weight processings, loaded when a
     * request first asks for one (srv_model_weights); only the executor
     * touches them. */
    srv_weight_variant variants[SRV_MAX_WEIGHT_VARIANTS];
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

#endif
