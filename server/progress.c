/*
 * progress.c: a fixed table of running long jobs under one mutex. A
 * client's disconnect is seen by polling its socket for a hang-up between
 * passes: the connection is suspended while its job runs, so
 * libmicrohttpd itself does not look at it until the answer is ready.
 */
#include "server/progress.h"

#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MAX_JOBS 64
#define MAX_ID 64

struct srv_progress {
    bool used;
    const srv_job *job; /* compared, never read: its place in its model's queue */
    const srv_model *model;
    bool running;        /* its first update came */
    char id[MAX_ID + 1]; /* "" for a job nobody polls */
    char owner[128];     /* srv_token_owner of its caller */
    long done, total;
    double started;
    bool cancelled; /* by DELETE */
    bool gone;      /* the client closed its connection */
    int fd;         /* the client's socket, or -1 */
};

static srv_progress jobs[MAX_JOBS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static bool valid_id(const char *id) {
    size_t n = strlen(id);
    if (n == 0 || n > MAX_ID) return false;
    for (size_t i = 0; i < n; i++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", id[i]))
            return false;
    return true;
}

/* The running job called id (len bytes) whose owner is owner, or with
 * owner NULL, whose owner caller may use. Locked. */
static srv_progress *find_locked(const char *id, size_t len, const char *owner,
                                 const srv_token *caller) {
    for (int i = 0; i < MAX_JOBS; i++)
        if (jobs[i].used && jobs[i].id[0] && strlen(jobs[i].id) == len &&
            strncmp(jobs[i].id, id, len) == 0 &&
            (owner ? strcmp(jobs[i].owner, owner) == 0 : srv_token_may_use(caller, jobs[i].owner)))
            return &jobs[i];
    return NULL;
}

srv_progress *srv_progress_begin(const char *id, const srv_job *job, srv_response *resp) {
    const char *owner = srv_token_owner(job->token);
    struct MHD_Connection *connection = job->connection;
    if (id && !valid_id(id)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "progress_id",
                  "progress_id must be 1 to %d letters, digits, '.', '_' or '-'", MAX_ID);
        return NULL;
    }
    const union MHD_ConnectionInfo *info =
        connection ? MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD) : NULL;
    srv_progress *p = NULL;
    pthread_mutex_lock(&lock);
    if (id && find_locked(id, strlen(id), owner, NULL)) {
        pthread_mutex_unlock(&lock);
        srv_error(resp, SRV_ERR_CONFLICT, "progress_id",
                  "progress_id \"%s\" is in use by a running job", id);
        return NULL;
    }
    for (int i = 0; i < MAX_JOBS && !p; i++)
        if (!jobs[i].used) p = &jobs[i];
    if (p) {
        *p = (srv_progress){.used = true,
                            .job = job,
                            .model = job->model,
                            .started = srv_now_s(),
                            .fd = info ? info->connect_fd : -1};
        snprintf(p->id, sizeof p->id, "%s", id ? id : "");
        snprintf(p->owner, sizeof p->owner, "%s", owner);
    }
    pthread_mutex_unlock(&lock);
    if (!p)
        srv_error(resp, SRV_ERR_UNAVAILABLE, NULL,
                  "%d long jobs are queued or running already; try again later", MAX_JOBS);
    return p;
}

/* Has the peer closed the connection? (A hang-up, or an orderly shutdown
 * of its sending side, which clients do when they give up.) */
static bool client_gone(int fd) {
    if (fd < 0) return false;
    struct pollfd pfd = {.fd = fd, .events = POLLRDHUP};
    return poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

bool srv_progress_update(srv_progress *p, long done, long total) {
    const bool gone = client_gone(p->fd); /* fd is set once, at begin */
    pthread_mutex_lock(&lock);
    p->done = done;
    p->total = total;
    p->running = true;
    p->gone = gone;
    const bool stop = p->cancelled || gone;
    pthread_mutex_unlock(&lock);
    return stop;
}

srv_stop srv_progress_stopped(const srv_progress *p) {
    pthread_mutex_lock(&lock);
    const srv_stop why = p->cancelled ? SRV_STOP_CANCELLED
                         : p->gone    ? SRV_STOP_CLIENT_GONE
                                      : SRV_STOP_NONE;
    pthread_mutex_unlock(&lock);
    return why;
}

void srv_progress_end(srv_progress *p) {
    if (!p) return;
    pthread_mutex_lock(&lock);
    p->used = false;
    pthread_mutex_unlock(&lock);
}

/* How many jobs of its model are ahead of a queued job: those queued before
 * it, and the one running (still in the scheduler's inbox: all of them). */
static int position(const srv_progress *p) {
    srv_model *m = (srv_model *)p->model;
    pthread_mutex_lock(&m->lock);
    int ahead = m->busy ? 1 : 0, found = -1;
    for (const srv_job *j = m->head; j && found < 0; j = j->next, ahead++)
        if (j == p->job) found = ahead;
    if (found < 0) found = m->queued;
    pthread_mutex_unlock(&m->lock);
    return found;
}

void srv_progress_route(const char *method, const char *rest, const srv_token *caller,
                        srv_response *resp) {
    const bool get = strcmp(method, "GET") == 0, del = strcmp(method, "DELETE") == 0;
    if (!get && !del) {
        srv_error(resp, SRV_ERR_METHOD_NOT_ALLOWED, NULL, "progress takes GET and DELETE, not %s",
                  method);
        return;
    }
    pthread_mutex_lock(&lock);
    srv_progress *p = find_locked(rest, strlen(rest), NULL, caller);
    if (p) {
        if (del) p->cancelled = true;
        json_t *answer = json_pack("{s:s, s:s, s:I, s:I, s:f, s:b}", "id", p->id, "state",
                                   p->running ? "running" : "queued", "done", (json_int_t)p->done,
                                   "total", (json_int_t)p->total, "seconds",
                                   srv_now_s() - p->started, "cancelled", p->cancelled);
        if (!p->running) json_object_set_new(answer, "queue_position", json_integer(position(p)));
        srv_json(resp, 200, answer);
    }
    pthread_mutex_unlock(&lock);
    if (!p)
        srv_error(resp, SRV_ERR_NOT_FOUND, "progress_id",
                  "no running job \"%.64s\" (finished, or never started)", rest);
}
