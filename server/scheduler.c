/*
 * scheduler.c: the scheduler. A libuv loop, on the thread that calls
 * srv_sched_run_until_signal, takes jobs from libmicrohttpd's threads
 * through an inbox and queues each on its model, bounded (503 with
 * Retry-After when full, and while draining); it also owns SIGINT and
 * SIGTERM. Each model has one executor thread, the only one that touches
 * the model and its device memory, which runs its queue in order.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "kernels/lk.h"
#include "server/caches.h"
#include "server/endpoint.h"
#include "server/models.h"
#include "server/progress.h"
#include "server/scheduler.h"

static uv_loop_t loop;
static uv_async_t inbox_ready;
static uv_signal_t on_sigint, on_sigterm;
static uv_timer_t expiry; /* drops kept caches past their TTL */
static pthread_mutex_t inbox_lock = PTHREAD_MUTEX_INITIALIZER;
static srv_job *inbox_head, *inbox_tail;
static bool inbox_closed; /* draining: submissions are refused where they are made */

/* Hands a job's answer to its connection; the job no longer uses its model. */
static void finish(srv_job *job) {
    srv_progress_end(job->progress);
    job->progress = NULL;
    atomic_fetch_sub(&job->model->jobs_out, 1);
    MHD_resume_connection(job->connection);
}

/* Takes the job at the head of m's queue and, when its endpoint can batch,
 * the jobs of that endpoint and weight processing waiting right behind it,
 * which share its run. Returns how many; m->lock is held. */
static int take_jobs(srv_model *m, srv_job **jobs) {
    int n = 0;
    do {
        jobs[n++] = m->head;
        m->head = m->head->next;
    } while (n < SRV_MAX_BATCHED_JOBS && jobs[0]->endpoint->run_batch && m->head &&
             m->head->endpoint == jobs[0]->endpoint && m->head->processing == jobs[0]->processing);
    if (!m->head) m->tail = NULL;
    return n;
}

/* Runs taken jobs, answering those that waited past the request timeout
 * with a 503 instead, on the weights their processing asks for (loaded if
 * need be: those that fail are answered with why). CPU models take turns
 * (srv_cpu_lock). */
static void run_jobs(srv_model *m, srv_job **jobs, int n) {
    srv_job *ready[SRV_MAX_BATCHED_JOBS];
    int n_ready = 0;
    const double now = srv_now_s();
    for (int i = 0; i < n; i++) {
        const double waited = now - jobs[i]->submitted_s;
        if (waited <= srv_d.cfg.limits.request_timeout_s) {
            lens_err err = {0};
            if ((jobs[i]->lm = srv_model_weights(m, jobs[i]->processing, &err))) {
                ready[n_ready++] = jobs[i];
                if (!jobs[i]->endpoint->tokenizer_only)
                    lens_processing_names(jobs[i]->lm->processing, jobs[i]->response.processing,
                                          sizeof jobs[i]->response.processing);
            } else
                srv_engine_error(&jobs[i]->response, &err, "processing");
            continue;
        }
        srv_error(&jobs[i]->response, SRV_ERR_UNAVAILABLE, NULL,
                  "this request waited %.0f s for model %s, over the %.0f s request timeout",
                  waited, m->name, srv_d.cfg.limits.request_timeout_s);
        jobs[i]->response.retry_after_s = 1;
    }
    const bool cpu = lk_host_memory(m->model->device);
    if (cpu) pthread_mutex_lock(&srv_cpu_lock);
    if (n_ready && ready[0]->endpoint->run_batch)
        ready[0]->endpoint->run_batch(ready, n_ready);
    else if (n_ready)
        ready[0]->endpoint->run(ready[0]);
    if (cpu) pthread_mutex_unlock(&srv_cpu_lock);
}

static void *executor(void *arg) {
    srv_model *m = arg;
    lk_set_threads(0); /* OpenMP's thread count is per thread */
    srv_job *jobs[SRV_MAX_BATCHED_JOBS];
    pthread_mutex_lock(&m->lock);
    for (;;) {
        while (!m->head && !m->stopping)
            pthread_cond_wait(&m->wake, &m->lock);
        if (!m->head) break; /* stopping, and nothing left */
        const int n = take_jobs(m, jobs);
        m->busy = true;
        pthread_mutex_unlock(&m->lock);
        run_jobs(m, jobs, n);
        pthread_mutex_lock(&m->lock);
        m->busy = false;
        m->queued -= n; /* before the answers go: a client's next request may follow at once */
        pthread_mutex_unlock(&m->lock);
        for (int i = 0; i < n; i++)
            finish(jobs[i]);
        pthread_mutex_lock(&m->lock);
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/* Queues the inbox's jobs on their models (loop thread). */
static void take_inbox(uv_async_t *handle) {
    (void)handle;
    pthread_mutex_lock(&inbox_lock);
    srv_job *job = inbox_head;
    inbox_head = inbox_tail = NULL;
    pthread_mutex_unlock(&inbox_lock);
    while (job) {
        srv_job *next = job->next;
        job->next = NULL;
        srv_model *m = job->model;
        pthread_mutex_lock(&m->lock);
        const int limit = srv_d.cfg.limits.queue_length;
        const int waiting = m->queued - (m->busy ? 1 : 0);
        const bool refuse = srv_d.draining || m->stopping || waiting >= limit;
        if (!refuse) {
            if (m->tail)
                m->tail->next = job;
            else
                m->head = job;
            m->tail = job;
            m->queued++;
            pthread_cond_signal(&m->wake);
        }
        pthread_mutex_unlock(&m->lock);
        if (refuse) {
            if (srv_d.draining)
                srv_error(&job->response, SRV_ERR_UNAVAILABLE, NULL, "the server is shutting down");
            else
                srv_error(&job->response, SRV_ERR_UNAVAILABLE, NULL,
                          "model %s has %d requests waiting, its limit; try again shortly", m->name,
                          limit);
            job->response.retry_after_s = 1;
            finish(job);
        }
        job = next;
    }
}

void srv_sched_submit(srv_job *job) {
    job->submitted_s = srv_now_s();
    pthread_mutex_lock(&inbox_lock);
    if (inbox_closed) {
        pthread_mutex_unlock(&inbox_lock);
        srv_error(&job->response, SRV_ERR_UNAVAILABLE, NULL, "the server is shutting down");
        job->response.retry_after_s = 1;
        finish(job);
        return;
    }
    if (inbox_tail)
        inbox_tail->next = job;
    else
        inbox_head = job;
    inbox_tail = job;
    pthread_mutex_unlock(&inbox_lock);
    uv_async_send(&inbox_ready);
}

int srv_sched_depth(const srv_model *m) {
    pthread_mutex_lock((pthread_mutex_t *)&m->lock);
    int depth = m->queued;
    pthread_mutex_unlock((pthread_mutex_t *)&m->lock);
    return depth;
}

/* Ends the process limits.shutdown_timeout_s after the signal, if it is
 * still there: a sweep, a load or a client that keeps shutdown waiting
 * longer is cut off rather than waited for. */
static void *shutdown_watchdog(void *arg) {
    (void)arg;
    const double limit = srv_d.cfg.limits.shutdown_timeout_s;
    struct timespec left = {(time_t)limit, (long)((limit - (double)(time_t)limit) * 1e9)};
    while (nanosleep(&left, &left) == -1 && errno == EINTR) {
    }
    fprintf(stderr,
            "lensd: still shutting down %g s after the signal (limits.shutdown_timeout_s): "
            "exiting, work in flight cut off\n",
            limit);
    _exit(1);
}

/* SIGINT or SIGTERM: refuse new work, let the executors empty their queues,
 * then end the loop (loop thread). */
static void drain(uv_signal_t *handle, int signum) {
    (void)handle;
    if (srv_d.draining) return;
    fprintf(stderr, "lensd: %s: finishing %s work, refusing new requests\n",
            signum == SIGINT ? "SIGINT" : "SIGTERM", "queued");
    srv_d.draining = 1;
    pthread_t watchdog;
    if (pthread_create(&watchdog, NULL, shutdown_watchdog, NULL) == 0) pthread_detach(watchdog);
    MHD_socket listener = MHD_quiesce_daemon(srv_d.http); /* no new connections */
    if (listener != MHD_INVALID_SOCKET) close(listener);
    pthread_mutex_lock(&inbox_lock);
    inbox_closed = true;
    pthread_mutex_unlock(&inbox_lock);
    take_inbox(NULL); /* anything submitted before this answers 503 now */
    pthread_rwlock_rdlock(&srv_d.models_lock);
    for (int i = 0; i < srv_d.n_models; i++)
        if (srv_d.models[i].present) srv_sched_remove(&srv_d.models[i]);
    pthread_rwlock_unlock(&srv_d.models_lock);
    uv_timer_stop(&expiry);
    uv_close((uv_handle_t *)&expiry, NULL);
    uv_signal_stop(&on_sigint);
    uv_signal_stop(&on_sigterm);
    signal(SIGINT, SIG_IGN); /* a second signal must not cut the last answers short */
    signal(SIGTERM, SIG_IGN);
    uv_close((uv_handle_t *)&on_sigint, NULL);
    uv_close((uv_handle_t *)&on_sigterm, NULL);
    uv_close((uv_handle_t *)&inbox_ready, NULL);
}

static void expire_caches(uv_timer_t *handle) {
    (void)handle;
    srv_caches_expire(srv_now_s()); /* CLOCK_MONOTONIC, as caches.c */
}

int srv_sched_start(lens_err *err) {
    int rc = uv_loop_init(&loop);
    if (!rc) rc = uv_async_init(&loop, &inbox_ready, take_inbox);
    if (!rc) rc = uv_signal_init(&loop, &on_sigint);
    if (!rc) rc = uv_signal_init(&loop, &on_sigterm);
    if (!rc) rc = uv_signal_start(&on_sigint, drain, SIGINT);
    if (!rc) rc = uv_signal_start(&on_sigterm, drain, SIGTERM);
    if (!rc) rc = uv_timer_init(&loop, &expiry);
    if (!rc) rc = uv_timer_start(&expiry, expire_caches, 5000, 5000);
    if (rc) {
        lens_err_set(err, "scheduler: %s", uv_strerror(rc));
        return -1;
    }
    for (int i = 0; i < srv_d.n_models; i++) {
        if (srv_sched_add(&srv_d.models[i])) {
            lens_err_set(err, "scheduler: cannot start the executor of %s", srv_d.models[i].name);
            return -1;
        }
    }
    return 0;
}

int srv_sched_add(srv_model *m) {
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->wake, NULL);
    return pthread_create(&m->executor, NULL, executor, m) ? -1 : 0;
}

void srv_sched_remove(srv_model *m) {
    pthread_mutex_lock(&m->lock);
    const bool running = !m->stopping;
    m->stopping = true;
    pthread_cond_broadcast(&m->wake);
    pthread_mutex_unlock(&m->lock);
    if (running) pthread_join(m->executor, NULL);
}

void srv_sched_run_until_signal(void) {
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
}
