/*
 * progress.h: long jobs (patching sweeps) that report how far they are and
 * can be stopped. A request names its job with a client-chosen
 * "progress_id"; GET /v1/progress/{id} answers {"id", "state", "done",
 * "total", "seconds", "cancelled"} from when it is queued ("queued", with
 * "queue_position": how many jobs of its model are ahead of it) until it is
 * answered ("running"); DELETE /v1/progress/{id} cancels it, queued or
 * running.
 * A job is also cancelled when its client disconnects (checked between
 * passes). Thread-safe: executors update, HTTP threads read and cancel.
 */
#ifndef SRV_PROGRESS_H
#define SRV_PROGRESS_H

#include <stdbool.h>

#include "server/daemon.h"

typedef struct srv_progress srv_progress;

/* Registers a job as it is queued. id: the client's name for it
 * ([A-Za-z0-9._-], 1 to 64 characters), or NULL for a job nobody polls
 * (still cancelled when its client goes); job: the job, whose place in its
 * model's queue GET shows until it runs; its caller's token (each owner has
 * ids of its own) and connection are the job's. Returns NULL with a message
 * for a malformed id, an id of the owner's in use, or a full table (64
 * jobs). */
srv_progress *srv_progress_begin(const char *id, const srv_job *job, srv_response *resp);

/* Records done of total; returns true when the job should stop (cancelled,
 * or its client has closed the connection). */
bool srv_progress_update(srv_progress *p, long done, long total);

typedef enum srv_stop {
    SRV_STOP_NONE,
    SRV_STOP_CANCELLED,   /* DELETE /v1/progress/{id} */
    SRV_STOP_CLIENT_GONE, /* the client closed its connection */
} srv_stop;

/* Why srv_progress_update said to stop, if it did. */
srv_stop srv_progress_stopped(const srv_progress *p);

/* Unregisters the job (accepts NULL). */
void srv_progress_end(srv_progress *p);

/* GET and DELETE /v1/progress/{id} of caller: rest is the part after the
 * prefix. A read token finds only its own ids, an admin one (and any caller
 * without access control) every owner's. */
void srv_progress_route(const char *method, const char *rest, const srv_token *caller,
                        srv_response *resp);

#endif
