/*
 * caches.c: the kept caches, a list under one mutex. A query copies the
 * slice it asks for out of the cache while holding the lock, so a cache can
 * be evicted or deleted at any time without a reader in it.
 */
#include "server/caches.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct kept {
    char id[33];
    char model[128];
    char owner[128]; /* srv_token_owner of the request that kept it */
    srv_answer *answer;
    size_t bytes;
    double last_used;
    struct kept *next;
} kept;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static kept *head;
static size_t total_bytes;
static unsigned long long serial;

/* Unlinks and frees the entry after prev (prev NULL: the head). Locked. */
static void drop(kept *prev) {
    kept *k = prev ? prev->next : head;
    if (prev)
        prev->next = k->next;
    else
        head = k->next;
    total_bytes -= k->bytes;
    srv_answer_free(k->answer);
    free(k);
}

int srv_caches_keep(const char *model, const char *owner, srv_answer *a, char *id,
                    srv_response *resp) {
    size_t bytes = 0;
    for (int i = 0; i < a->n; i++)
        bytes += lens_st_out_bytes(&a->outs[i]);
    const size_t budget = srv_d.cfg.limits.max_kept_cache_bytes;
    if (bytes > budget) {
        srv_answer_free(a);
        srv_error(resp, SRV_ERR_INSUFFICIENT_STORAGE, "keep",
                  "this cache is %zu MB, over the %zu MB kept caches may use", bytes >> 20,
                  budget >> 20);
        return -1;
    }
    kept *k = calloc(1, sizeof *k);
    if (!k) {
        srv_answer_free(a);
        srv_out_of_memory(resp);
        return -1;
    }
    pthread_mutex_lock(&lock);
    while (head && total_bytes + bytes > budget) { /* evict the least recently used */
        kept *oldest_prev = NULL;
        double oldest = head->last_used;
        for (kept *p = head; p->next; p = p->next)
            if (p->next->last_used < oldest) oldest = p->next->last_used, oldest_prev = p;
        drop(oldest_prev);
    }
    unsigned long long r = ((unsigned long long)rand() << 32) ^ (unsigned long long)rand() ^
                           (unsigned long long)(srv_now_s() * 1e9);
    snprintf(k->id, sizeof k->id, "c%llx%016llx", ++serial, r);
    snprintf(k->model, sizeof k->model, "%s", model);
    snprintf(k->owner, sizeof k->owner, "%s", owner);
    k->answer = a;
    k->bytes = bytes;
    k->last_used = srv_now_s();
    k->next = head;
    head = k;
    total_bytes += bytes;
    memcpy(id, k->id, sizeof k->id);
    pthread_mutex_unlock(&lock);
    return 0;
}

/* Parses a comma list of integers (negatives from the end of len) into
 * out[*n]. Returns -1 for anything else or an index outside [-len, len). */
static int parse_indices(const char *s, int64_t len, int64_t *out, int *n, int max) {
    *n = 0;
    while (*s) {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s || (*end && *end != ',') || *n == max) return -1;
        if (v < 0) v += len;
        if (v < 0 || v >= len) return -1;
        out[(*n)++] = v;
        s = *end ? end + 1 : end;
    }
    return *n ? 0 : -1;
}

/* Copies the selected rows (axis 0) and positions (pos_axis) of t into a
 * new buffer, and sets shape. */
static void *slice(const lens_st_out *t, int pos_axis, const int64_t *rows, int n_rows,
                   const int64_t *pos, int n_pos, int64_t *shape) {
    memcpy(shape, t->shape, sizeof t->shape);
    shape[0] = n_rows;
    if (pos) shape[pos_axis] = n_pos;
    const size_t elem = lens_dtype_size(t->dtype);
    size_t outer = 1, inner = elem;
    for (int i = 1; i < pos_axis; i++)
        outer *= (size_t)t->shape[i];
    for (int i = pos_axis + 1; i < t->ndim; i++)
        inner *= (size_t)t->shape[i];
    const size_t len = (size_t)t->shape[pos_axis], P = pos ? (size_t)n_pos : len;
    char *out = malloc((size_t)n_rows * outer * P * inner + 1), *to = out;
    for (int r = 0; out && r < n_rows; r++)
        for (size_t o = 0; o < outer; o++)
            for (size_t p = 0; p < P; p++) {
                size_t from =
                    (((size_t)rows[r] * outer + o) * len + (pos ? (size_t)pos[p] : p)) * inner;
                memcpy(to, (const char *)t->data + from, inner);
                to += inner;
            }
    return out;
}

/* GET /v1/caches/{id}/{name}: the tensor, sliced (a copy), in a new answer
 * with its fields in *fields, for the caller to encode once it has let go
 * of the lock. NULL with the refusal in resp. Locked. */
static srv_answer *get_tensor(kept *k, const char *name, const char *batch, const char *positions,
                              json_t **fields, srv_response *resp) {
    const lens_st_out *t = NULL;
    for (int i = 0; i < k->answer->n && !t; i++)
        if (strcmp(k->answer->outs[i].name, name) == 0) t = &k->answer->outs[i];
    if (!t) {
        srv_error(resp, SRV_ERR_NOT_FOUND, "name", "cache %s holds no %s", k->id, name);
        return NULL;
    }
    const size_t n_name = strlen(name);
    const bool attn = (n_name > 12 && strcmp(name + n_name - 12, "hook_pattern") == 0) ||
                      (n_name > 16 && strcmp(name + n_name - 16, "hook_attn_scores") == 0);
    const int pos_axis = t->ndim < 2 ? 0 : attn ? 2 : 1;
    enum { MAX_INDICES = 65536 };
    int64_t *rows = malloc(MAX_INDICES * sizeof *rows), *pos = malloc(MAX_INDICES * sizeof *pos);
    int n_rows = (int)t->shape[0], n_pos = 0;
    srv_answer *a = NULL;
    if (!rows || !pos) goto oom;
    if (batch && parse_indices(batch, t->shape[0], rows, &n_rows, MAX_INDICES)) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, "batch",
                  "batch must be a comma list of prompt indices in [-%lld, %lld)",
                  (long long)t->shape[0], (long long)t->shape[0]);
        goto out;
    }
    for (int i = 0; !batch && i < n_rows; i++)
        rows[i] = i;
    if (positions &&
        (pos_axis == 0 || parse_indices(positions, t->shape[pos_axis], pos, &n_pos, MAX_INDICES))) {
        srv_error(resp, SRV_ERR_UNPROCESSABLE, "positions",
                  "positions must be a comma list of positions of %s", name);
        goto out;
    }
    int64_t shape[LENS_MAX_DIMS];
    void *data =
        slice(t, pos_axis ? pos_axis : 1, rows, n_rows, positions ? pos : NULL, n_pos, shape);
    a = data ? srv_answer_with_room(1) : NULL;
    if (!a || srv_answer_own(a, data)) {
        if (!a) free(data);
        goto oom;
    }
    srv_answer_add(a, t->name, t->dtype, t->ndim, shape, data);
    *fields = json_pack("{s:s, s:s}", "cache_id", k->id, "model", k->model);
    free(rows);
    free(pos);
    return a;
oom:
    srv_out_of_memory(resp);
out:
    srv_answer_free(a);
    free(rows);
    free(pos);
    return NULL;
}

void srv_caches_route(const char *method, const char *rest, const char *accept, const char *batch,
                      const char *positions, const srv_token *caller, srv_response *resp) {
    const char *slash = strchr(rest, '/');
    const size_t id_len = slash ? (size_t)(slash - rest) : strlen(rest);
    json_t *listing = NULL, *fields = NULL;
    srv_answer *sliced = NULL;
    pthread_mutex_lock(&lock);
    kept *prev = NULL, *k = head;
    while (k && (strlen(k->id) != id_len || strncmp(k->id, rest, id_len) != 0 ||
                 !srv_token_may_use(caller, k->owner)))
        prev = k, k = k->next;
    if (!k) {
        srv_error(resp, SRV_ERR_NOT_FOUND, "cache_id",
                  "no kept cache %.*s (deleted, expired or evicted)", (int)id_len, rest);
    } else if (strcmp(method, "DELETE") == 0 && !slash) {
        srv_json(resp, MHD_HTTP_OK, json_pack("{s:s}", "deleted", k->id));
        drop(prev);
    } else if (strcmp(method, "GET") != 0) {
        srv_error(resp, SRV_ERR_METHOD_NOT_ALLOWED, NULL,
                  "caches take GET, and DELETE on /v1/caches/{id}");
    } else if (!slash || !slash[1]) {
        k->last_used = srv_now_s();
        listing = json_pack("{s:s, s:s, s:I, s:o}", "cache_id", k->id, "model", k->model, "bytes",
                            (json_int_t)k->bytes, "tensors", srv_answer_shapes(k->answer));
    } else {
        k->last_used = srv_now_s();
        sliced = get_tensor(k, slash + 1, batch, positions, &fields, resp);
    }
    pthread_mutex_unlock(&lock);
    /* encoded without the lock: a large JSON answer takes seconds, and every
     * other cache request (and the expiry timer) would wait for it */
    if (listing) srv_json(resp, MHD_HTTP_OK, listing);
    if (sliced) srv_answer_send(accept, resp, sliced, fields);
}

void srv_caches_expire(double now) {
    pthread_mutex_lock(&lock);
    const double ttl = srv_d.cfg.limits.kept_cache_ttl_s;
    kept *prev = NULL;
    for (kept *k = head; k;) {
        kept *next = k->next;
        if (now - k->last_used > ttl)
            drop(prev);
        else
            prev = k;
        k = next;
    }
    pthread_mutex_unlock(&lock);
}

size_t srv_caches_bytes(void) {
    pthread_mutex_lock(&lock);
    size_t bytes = total_bytes;
    pthread_mutex_unlock(&lock);
    return bytes;
}

void srv_caches_clear(void) {
    pthread_mutex_lock(&lock);
    while (head)
        drop(NULL);
    pthread_mutex_unlock(&lock);
}
