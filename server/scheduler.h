/*
 * scheduler.h: the scheduler: a libuv loop that queues jobs on their models, one executor thread
 * per model, and shutdown.
 */
#ifndef SRV_SCHEDULER_H
#define SRV_SCHEDULER_H

#include <pthread.h>

#include "server/daemon.h"

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

/* Jobs waiting or running for m. */
int srv_sched_depth(const srv_model *m);

/* Blocks until SIGINT or SIGTERM, then stops taking work, lets every queued
 * and running job finish, and stops the executors and the loop. From the
 * signal on, a watchdog ends the process (status 1, after a line on stderr)
 * if it has not exited within limits.shutdown_timeout_s. */
void srv_sched_run_until_signal(void);

#endif
