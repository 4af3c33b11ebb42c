/*
 * http.c: lensd's HTTP side on libmicrohttpd — its own epoll thread pool,
 * bounded bodies, access tokens and rate limits, static files, request ids
 * and the one log line per request. Model work never runs here: a request
 * that needs it becomes a job and its connection is suspended until the job
 * is done (daemon.h).
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "server/http.h"

#include "server/admin.h"
#include "server/caches.h"
#include "server/metrics.h"
#include "server/progress.h"
#include "server/routes.h"
#include "server/scheduler.h"

/* Request bodies above this size have their memory given back to the
 * system when they complete (on_completed). */
#define TRIM_AFTER_BODY_BYTES ((size_t)1 << 20)

/* One request from its first header to its log line. */
typedef struct request {
    uint64_t id;
    double started;
    char *body;
    size_t len, cap;
    bool too_large;
    srv_response refusal; /* access refused: sent once the body is read and dropped */
    bool refused;
    srv_job *job; /* submitted; the connection is suspended until it is done */
    const srv_token *token;
    char route[96];
    char model[128];
    bool close_connection; /* answered before its body was read: do not read on */
    unsigned status;
    size_t bytes_out;
} request;

static atomic_uint_fast64_t next_id = 1;

/* The method as logs and metrics name it: GET, POST, DELETE or OTHER. */
static const char *method_label(const char *method) {
    static const char *const known[] = {"GET", "POST", "DELETE"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(method, known[i]) == 0) return known[i];
    return "OTHER";
}

/* The route as logs and metrics name it, from a fixed set whatever the URL
 * (so that junk URLs neither forge log lines nor use up the metrics' route
 * slots): the model's name becomes {m}, ids {id}, anything lensd has no
 * route for "(unknown)". The model's name, kept for the log line, has every
 * byte outside printable ASCII, and any quote or backslash, replaced by '?'. */
static void route_label(request *r, const char *method_name, const char *url) {
    const char *method = method_label(method_name);
    const char *prefix = "/v1/models/";
    if (strncmp(url, prefix, strlen(prefix)) == 0) {
        const char *name = url + strlen(prefix);
        const char *slash = strchr(name, '/');
        size_t n = slash ? (size_t)(slash - name) : strlen(name);
        n = n < sizeof r->model - 1 ? n : sizeof r->model - 1;
        for (size_t i = 0; i < n; i++) {
            const unsigned char ch = (unsigned char)name[i];
            r->model[i] = ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\' ? '?' : (char)ch;
        }
        r->model[n] = '\0';
        const char *action = slash ? slash + 1 : "";
        if (!*action)
            snprintf(r->route, sizeof r->route, "%s /v1/models/{m}", method);
        else
            snprintf(r->route, sizeof r->route, "%s /v1/models/{m}/%s", method,
                     srv_is_model_action(action, strlen(action)) ? action : "(unknown)");
    } else if (strncmp(url, "/v1/caches/", 11) == 0) {
        snprintf(r->route, sizeof r->route, "%s /v1/caches/{id}%s", method,
                 strchr(url + 11, '/') ? "/{name}" : "");
    } else if (strncmp(url, "/v1/progress/", 13) == 0) {
        snprintf(r->route, sizeof r->route, "%s /v1/progress/{id}", method);
    } else if (strcmp(url, "/v1/admin/models") == 0) {
        snprintf(r->route, sizeof r->route, "%s /v1/admin/models", method);
    } else if (strncmp(url, "/v1/admin/models/", 17) == 0) {
        snprintf(r->route, sizeof r->route, "%s /v1/admin/models/{name}", method);
    } else if (srv_is_plain_route(url)) {
        snprintf(r->route, sizeof r->route, "%s %s", method, url);
    } else if (strncmp(url, "/v1/", 4) == 0) {
        snprintf(r->route, sizeof r->route, "%s /v1/(unknown)", method);
    } else {
        snprintf(r->route, sizeof r->route, "%s (static)", method);
    }
}

static enum MHD_Result send_response(struct MHD_Connection *c, request *r, srv_response *resp) {
    struct MHD_Response *m = resp->stream;
    if (!m) {
        m = MHD_create_response_from_buffer(resp->body_len, resp->body, MHD_RESPMEM_MUST_FREE);
        resp->body = NULL;
        r->bytes_out = resp->body_len;
    } else {
        r->bytes_out = resp->body_len;
    }
    if (!m) return MHD_NO;
    if (resp->content_type) MHD_add_response_header(m, "Content-Type", resp->content_type);
    char id[32];
    snprintf(id, sizeof id, "%llu", (unsigned long long)r->id);
    MHD_add_response_header(m, "X-Request-Id", id);
    if (resp->retry_after_s > 0) {
        char secs[32];
        snprintf(secs, sizeof secs, "%.0f", resp->retry_after_s < 1 ? 1 : resp->retry_after_s);
        MHD_add_response_header(m, "Retry-After", secs);
    }
    if (resp->processing[0]) MHD_add_response_header(m, "X-Lensd-Processing", resp->processing);
    if (resp->status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(m, "WWW-Authenticate", "Bearer");
    if (r->close_connection) MHD_add_response_header(m, "Connection", "close");
    r->status = resp->status;
    enum MHD_Result ok = MHD_queue_response(c, resp->status, m);
    MHD_destroy_response(m);
    return ok;
}

/* How a request says where its body ends: its Content-Length and
 * Transfer-Encoding headers, counted. */
typedef struct body_framing {
    int content_lengths, transfer_encodings;
} body_framing;

static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value) {
    (void)kind;
    (void)value;
    body_framing *f = cls;
    f->content_lengths += strcasecmp(key, "Content-Length") == 0;
    f->transfer_encodings += strcasecmp(key, "Transfer-Encoding") == 0;
    return MHD_YES;
}

/* Refuses a request whose body could be read two ways (RFC 9112 6.3; behind
 * a proxy that reads it the other way, the rest would be smuggled in as a
 * request of its own): several Content-Length or Transfer-Encoding headers,
 * or both kinds. Returns 0, or -1 with the refusal in resp; the connection
 * is then closed after the answer, its body unread. */
static int check_framing(struct MHD_Connection *c, request *r, srv_response *resp) {
    body_framing f = {0};
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_framing, &f);
    if (f.content_lengths + f.transfer_encodings <= 1) return 0;
    r->close_connection = true;
    srv_error(resp, SRV_ERR_BAD_REQUEST, NULL,
              "ambiguous body length: %d Content-Length and %d Transfer-Encoding headers; send "
              "one of them, once",
              f.content_lengths, f.transfer_encodings);
    return -1;
}

/* The numeric address (IPv4 or IPv6) of sa into out[n], "" when unknown. */
static void address_of(const struct sockaddr *sa, char *out, size_t n) {
    out[0] = '\0';
    if (sa && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)n);
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)n);
}

/* The client's numeric address into out[n], "" when unknown. */
static void client_address(struct MHD_Connection *c, char *out, size_t n) {
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    address_of(info ? info->client_addr : NULL, out, n);
}

/* Open connections by client address, for limits.max_connections_per_client:
 * counted from libmicrohttpd's connection notifications, checked by its
 * accept policy (so a connection over the limit is closed on accept).
 * Connections accepted at the same moment on different HTTP threads may
 * pass the limit by a few. */
typedef struct open_client {
    char address[64];
    int open; /* 0: a free slot */
} open_client;

/* An open connection, for limits.read_timeout_s: the time its request began
 * (its connection, or its previous answer), and whether it is still being
 * read. A thread of its own (read_deadlines) shuts down the socket of one
 * read for longer: libmicrohttpd then closes it, on its own thread. */
typedef struct open_connection {
    open_client *client; /* NULL: a free slot */
    int fd;
    double since;
    bool reading;
} open_connection;

static open_client open_clients[SRV_MAX_CONNECTIONS];
static open_connection open_connections[SRV_MAX_CONNECTIONS];
static pthread_mutex_t open_clients_lock = PTHREAD_MUTEX_INITIALIZER; /* guards both */
static pthread_t deadline_thread;
static atomic_bool deadlines_stop;

static enum MHD_Result accept_client(void *cls, const struct sockaddr *addr, socklen_t len) {
    (void)cls;
    (void)len;
    char address[64];
    address_of(addr, address, sizeof address);
    int open = 0;
    pthread_mutex_lock(&open_clients_lock);
    for (int i = 0; i < SRV_MAX_CONNECTIONS && !open; i++)
        if (open_clients[i].open && strcmp(open_clients[i].address, address) == 0)
            open = open_clients[i].open;
    pthread_mutex_unlock(&open_clients_lock);
    return open < srv_d.cfg.limits.max_connections_per_client ? MHD_YES : MHD_NO;
}

/* Counts a connection in when it starts (its open_connection kept in
 * *socket_context) and out when it closes: libmicrohttpd notifies the close
 * before it closes the socket, so the deadline thread, which holds the lock,
 * never shuts down a socket number that another connection took meanwhile. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    (void)cls;
    pthread_mutex_lock(&open_clients_lock);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        char address[64];
        client_address(c, address, sizeof address);
        open_client *slot = NULL, *free_slot = NULL;
        for (int i = 0; i < SRV_MAX_CONNECTIONS && !slot; i++) {
            if (open_clients[i].open && strcmp(open_clients[i].address, address) == 0)
                slot = &open_clients[i];
            else if (!open_clients[i].open && !free_slot)
                free_slot = &open_clients[i];
        }
        if (!slot && (slot = free_slot))
            snprintf(slot->address, sizeof slot->address, "%s", address);
        open_connection *oc = NULL;
        for (int i = 0; i < SRV_MAX_CONNECTIONS && slot && !oc; i++)
            if (!open_connections[i].client) oc = &open_connections[i];
        if (oc) { /* there are slots: no more connections than slots */
            const union MHD_ConnectionInfo *info =
                MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
            slot->open++;
            *oc = (open_connection){.client = slot,
                                    .fd = info ? info->connect_fd : -1,
                                    .since = srv_now_s(),
                                    .reading = true};
        }
        *socket_context = oc;
    } else if (*socket_context) {
        open_connection *oc = *socket_context;
        oc->client->open--;
        oc->client = NULL;
    }
    pthread_mutex_unlock(&open_clients_lock);
}

/* Marks c's request as read in whole (reading false), or a new one begun. */
static void set_reading(struct MHD_Connection *c, bool reading) {
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    open_connection *oc = info ? info->socket_context : NULL;
    if (!oc) return;
    pthread_mutex_lock(&open_clients_lock);
    oc->reading = reading;
    if (reading) oc->since = srv_now_s();
    pthread_mutex_unlock(&open_clients_lock);
}

/* Four times a second, shuts down the sockets of requests read for longer than
 * limits.read_timeout_s (a client sending a byte now and then would keep
 * libmicrohttpd's idle timeout from ever ending it). */
static void *read_deadlines(void *arg) {
    (void)arg;
    while (!atomic_load(&deadlines_stop)) {
        usleep(250 * 1000);
        const double now = srv_now_s();
        pthread_mutex_lock(&open_clients_lock);
        for (int i = 0; i < SRV_MAX_CONNECTIONS; i++) {
            open_connection *oc = &open_connections[i];
            if (oc->client && oc->reading && oc->fd >= 0 &&
                now - oc->since > srv_d.cfg.limits.read_timeout_s) {
                shutdown(oc->fd, SHUT_RDWR);
                oc->reading = false; /* once */
            }
        }
        pthread_mutex_unlock(&open_clients_lock);
    }
    return NULL;
}

/* Checks the bearer token and the rate limit of a /v1/ request. Returns 0,
 * or -1 with the refusal in resp. */
static int check_access(struct MHD_Connection *c, const char *url, request *r, srv_response *resp) {
    if (!srv_d.auth || strncmp(url, "/v1/", 4) != 0) return 0;
    char address[64];
    client_address(c, address, sizeof address);
    double wait_s = 0;
    if (!srv_auth_may_guess(srv_d.auth, address, srv_now_s(), &wait_s)) {
        srv_error(resp, SRV_ERR_RATE_LIMITED, NULL,
                  "too many wrong access tokens from %s: try again in %.0f s", address,
                  wait_s < 1 ? 1 : wait_s + 0.5);
        resp->retry_after_s = wait_s;
        return -1;
    }
    const char *header = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!header) {
        srv_error(resp, SRV_ERR_UNAUTHORIZED, NULL,
                  "this server needs an access token: Authorization: Bearer TOKEN");
        return -1;
    }
    if (!(r->token = srv_auth_check(srv_d.auth, header))) {
        srv_auth_guessed_wrong(srv_d.auth, address, srv_now_s());
        srv_error(resp, SRV_ERR_UNAUTHORIZED, NULL, "unknown access token");
        return -1;
    }
    if (strncmp(url, "/v1/admin/", 10) == 0 && !r->token->admin) {
        srv_error(resp, SRV_ERR_FORBIDDEN, NULL,
                  "token \"%s\" has the read role; /v1/admin/ needs admin", r->token->name);
        return -1;
    }
    double retry = 0;
    if (!srv_rate_allow(srv_d.auth, r->token, srv_d.cfg.limits.requests_per_minute, srv_now_s(),
                        &retry)) {
        srv_error(resp, SRV_ERR_RATE_LIMITED, NULL,
                  "token \"%s\" is over its %d requests per minute", r->token->name,
                  srv_d.cfg.limits.requests_per_minute);
        resp->retry_after_s = retry;
        return -1;
    }
    return 0;
}

static const char *content_type_of(const char *path) {
    static const struct {
        const char *ext, *type;
    } types[] = {{".html", "text/html; charset=utf-8"},
                 {".js", "text/javascript; charset=utf-8"},
                 {".mjs", "text/javascript; charset=utf-8"},
                 {".css", "text/css; charset=utf-8"},
                 {".json", "application/json"},
                 {".svg", "image/svg+xml"},
                 {".png", "image/png"},
                 {".ico", "image/x-icon"},
                 {".txt", "text/plain; charset=utf-8"}};
    const char *dot = strrchr(path, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (strcmp(dot, types[i].ext) == 0) return types[i].type;
    return "application/octet-stream";
}

/* A file under web/, never outside it: the real path (links resolved) must
 * lie inside the real web root. */
static void static_file(const char *method, const char *url, srv_response *resp) {
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        srv_error(resp, SRV_ERR_METHOD_NOT_ALLOWED, NULL, "%s is not allowed here", method);
        return;
    }
    if (!srv_d.web_root[0]) {
        srv_error(resp, SRV_ERR_NOT_FOUND, NULL, "no such route: %s", url);
        return;
    }
    char path[PATH_MAX + 32], real[PATH_MAX];
    if (snprintf(path, sizeof path, "%s%s%s", srv_d.web_root, url,
                 url[strlen(url) - 1] == '/' ? "index.html" : "") >= (int)sizeof path) {
        srv_error(resp, SRV_ERR_NOT_FOUND, NULL, "no such file: %.200s", url);
        return;
    }
    size_t root_len = strlen(srv_d.web_root);
    struct stat st;
    int fd = -1;
    if (!realpath(path, real) || strncmp(real, srv_d.web_root, root_len) != 0 ||
        real[root_len] != '/' || stat(real, &st) != 0 || !S_ISREG(st.st_mode) ||
        (fd = open(real, O_RDONLY)) < 0) {
        srv_error(resp, SRV_ERR_NOT_FOUND, NULL, "no such file: %s", url);
        return;
    }
    resp->stream = MHD_create_response_from_fd((uint64_t)st.st_size, fd);
    if (!resp->stream) {
        close(fd);
        srv_error(resp, SRV_ERR_INTERNAL, NULL, "cannot send %s", url);
        return;
    }
    resp->status = MHD_HTTP_OK;
    resp->content_type = content_type_of(real);
    resp->body_len = (size_t)st.st_size;
}

/* The response type asked for by Accept: JSON unless a binary type is
 * named first. Returns NULL for a type lensd cannot produce. */
static const char *choose_accept(const char *accept) {
    if (!accept || !*accept) return "application/json";
    static const char *const offered[] = {"application/json", "application/vnd.safetensors",
                                          "application/x-npy"};
    for (const char *p = accept; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ",;");
        for (size_t i = 0; i < sizeof offered / sizeof offered[0]; i++)
            if (n == strlen(offered[i]) && strncmp(p, offered[i], n) == 0) return offered[i];
        if ((n == 3 && strncmp(p, "*/*", 3) == 0) ||
            (n == 13 && strncmp(p, "application/*", 13) == 0))
            return "application/json";
        p += n;
        while (*p && *p != ',')
            p++;
    }
    return NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    (void)cls;
    (void)version;
    request *r = *con_cls;
    srv_response resp = {0};
    if (!r) {
        if (!(r = calloc(1, sizeof *r))) return MHD_NO;
        r->id = atomic_fetch_add(&next_id, 1);
        r->started = srv_now_s();
        route_label(r, method, url);
        *con_cls = r;
        if (check_framing(c, r, &resp)) return send_response(c, r, &resp);
        /* a refused request's body, and an over-long one, is read and dropped, then
         * answered: a client that writes its whole body before reading would otherwise
         * see a broken pipe or a reset, not the 401, 403, 429 or 413 */
        r->refused = check_access(c, url, r, &r->refusal) != 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->refused) return MHD_YES;
        if (r->too_large || r->len + n > srv_d.cfg.limits.max_body_bytes) {
            r->too_large = true;
            return MHD_YES;
        }
        if (r->len + n + 1 > r->cap) {
            size_t cap = (r->len + n + 1) * 2;
            if (cap > srv_d.cfg.limits.max_body_bytes + 1)
                cap = srv_d.cfg.limits.max_body_bytes + 1;
            char *grown = realloc(r->body, cap);
            if (!grown) return MHD_NO;
            r->body = grown;
            r->cap = cap;
        }
        memcpy(r->body + r->len, upload_data, n);
        r->len += n;
        return MHD_YES;
    }
    /* The whole request is in: its deadline no longer runs. */
    set_reading(c, false);
    if (r->job) { /* resumed: the job is done */
        resp = r->job->response;
        r->job->response.body = NULL;
        if (r->job->free_params) r->job->free_params(r->job->params);
        free(r->job);
        r->job = NULL;
        return send_response(c, r, &resp);
    }
    if (r->refused) {
        resp = r->refusal;
        r->refusal = (srv_response){0};
        return send_response(c, r, &resp);
    }
    if (r->too_large) {
        srv_error(&resp, SRV_ERR_TOO_LARGE, NULL, "the request body is over the limit of %zu bytes",
                  srv_d.cfg.limits.max_body_bytes);
        return send_response(c, r, &resp);
    }
    const bool api = strncmp(url, "/v1/", 4) == 0 || srv_is_plain_route(url);
    if (!api) {
        static_file(method, url, &resp);
        return send_response(c, r, &resp);
    }
    const char *accept = choose_accept(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Accept"));
    if (!accept) {
        srv_error(&resp, SRV_ERR_NOT_ACCEPTABLE, NULL,
                  "lensd answers application/json, application/vnd.safetensors or "
                  "application/x-npy");
        return send_response(c, r, &resp);
    }
    /* JSON, or curl -d's default type, which notebooks send without thinking */
    const char *type = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    if (r->len && type && strncmp(type, "application/json", 16) != 0 &&
        strncmp(type, "application/x-www-form-urlencoded", 33) != 0) {
        srv_error(&resp, SRV_ERR_UNSUPPORTED_MEDIA_TYPE, NULL,
                  "request bodies are JSON (Content-Type: application/json), not %s", type);
        return send_response(c, r, &resp);
    }
    if (strncmp(url, "/v1/caches/", 11) == 0) {
        srv_caches_route(method, url + 11, accept,
                         MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "batch"),
                         MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "positions"),
                         r->token, &resp);
        return send_response(c, r, &resp);
    }
    if (strncmp(url, "/v1/progress/", 13) == 0) {
        srv_progress_route(method, url + 13, r->token, &resp);
        return send_response(c, r, &resp);
    }
    const bool admin = strncmp(url, "/v1/admin/", 10) == 0;
    srv_job *job = admin ? srv_admin_route(method, url, r->body, r->len, &resp)
                         : srv_route(method, url, accept, r->body, r->len, c, r->token, &resp);
    if (!job) return send_response(c, r, &resp);
    job->connection = c;
    job->token = r->token;
    r->job = job;
    MHD_suspend_connection(c);
    if (admin)
        srv_admin_start(job);
    else
        srv_sched_submit(job);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode why) {
    (void)cls;
    set_reading(c, true); /* a kept-alive connection's next request starts now */
    request *r = *con_cls;
    if (!r) return;
    double seconds = srv_now_s() - r->started;
    if (why != MHD_REQUEST_TERMINATED_COMPLETED_OK && !r->status) r->status = 499;
    fprintf(stderr,
            "{\"request\": %llu, \"route\": \"%s\", \"model\": \"%s\", \"status\": %u, "
            "\"ms\": %.1f, \"bytes_out\": %zu, \"token\": \"%s\"}\n",
            (unsigned long long)r->id, r->route, r->model, r->status, seconds * 1e3, r->bytes_out,
            r->token ? r->token->name : "");
    srv_metrics_request(r->route, r->status, seconds);
    /* r->job is NULL here: a suspended connection is not closed, so every job
     * is resumed and answered first */
    free(r->refusal.body);
    free(r->body);
    /* a large body's parse (a JSON tree, a whole batch's token rows) raised
     * this thread's malloc arena, which glibc keeps: give it back, or every
     * HTTP thread holds its own high-water mark (about 70 MB each after a
     * request of half a million prompts) */
    if (r->len > TRIM_AFTER_BODY_BYTES) malloc_trim(0);
    free(r);
    *con_cls = NULL;
}

/* Reads a whole PEM file (NUL-terminated) or returns NULL. */
static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) &&
        fread(buf, 1, (size_t)n, f) == (size_t)n) {
        buf[n] = '\0';
    } else {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

static char *tls_cert, *tls_key;

int srv_http_start(lens_err *err) {
    const srv_config *cfg = &srv_d.cfg;
    struct sockaddr_in in4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->port)};
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)cfg->port)};
    const char *host = strcmp(cfg->host, "localhost") == 0 ? "127.0.0.1" : cfg->host;
    const struct sockaddr *addr = (const struct sockaddr *)&in4;
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC;
    if (inet_pton(AF_INET, host, &in4.sin_addr) != 1) {
        if (inet_pton(AF_INET6, host, &in6.sin6_addr) != 1) {
            lens_err_set(err, "host \"%s\": not an IPv4 or IPv6 address", cfg->host);
            return -1;
        }
        addr = (const struct sockaddr *)&in6;
        flags |= MHD_USE_IPv6;
    }
    if (cfg->tls_cert) {
        if (!(tls_cert = read_file(cfg->tls_cert)) || !(tls_key = read_file(cfg->tls_key))) {
            lens_err_set(err, "tls: cannot read %s", tls_cert ? cfg->tls_key : cfg->tls_cert);
            return -1;
        }
        flags |= MHD_USE_TLS;
    }
    if (srv_d.cfg.web_dir && !realpath(srv_d.cfg.web_dir, srv_d.web_root)) {
        lens_err_set(err, "web: %s is not a directory", srv_d.cfg.web_dir);
        return -1;
    }
    srv_d.http = MHD_start_daemon(
        flags, 0, accept_client, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->http_threads, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)SRV_MAX_CONNECTIONS, MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
        NULL, tls_cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, tls_cert,
        MHD_OPTION_HTTPS_MEM_KEY, tls_key, MHD_OPTION_END);
    if (!srv_d.http) {
        lens_err_set(err, "cannot listen on %s port %d (in use, or no permission)", cfg->host,
                     cfg->port);
        return -1;
    }
    if (pthread_create(&deadline_thread, NULL, read_deadlines, NULL)) {
        MHD_stop_daemon(srv_d.http);
        srv_d.http = NULL;
        lens_err_set(err, "cannot start the thread of request deadlines");
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv_d.http, MHD_DAEMON_INFO_BIND_PORT);
    return info ? info->port : cfg->port;
}

void srv_http_stop(void) {
    if (!srv_d.http) return;
    atomic_store(&deadlines_stop, true);
    pthread_join(deadline_thread, NULL);
    /* let resumed connections send what their jobs left, for a few seconds */
    for (int i = 0; i < 100; i++) {
        const union MHD_DaemonInfo *info =
            MHD_get_daemon_info(srv_d.http, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
        if (!info || info->num_connections == 0) break;
        usleep(50 * 1000);
    }
    MHD_stop_daemon(srv_d.http);
    srv_d.http = NULL;
    free(tls_cert);
    free(tls_key);
}
