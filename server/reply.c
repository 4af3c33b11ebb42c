/*
 * reply.c: responses, the error table and JSON bodies (reply.h).
 */
#include "server/reply.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const struct {
    unsigned status;
    const char *code;
} error_table[SRV_N_ERRORS] = {
#define SRV_ERROR_ROW(name, status, code) [SRV_ERR_##name] = {status, code},
    SRV_ERRORS(SRV_ERROR_ROW)
#undef SRV_ERROR_ROW
};

unsigned srv_error_status(srv_error_kind kind) {
    return error_table[kind].status;
}

const char *srv_error_code(srv_error_kind kind) {
    return error_table[kind].code;
}

/* The text srv_json_text grows. */
typedef struct text_buffer {
    char *data;
    size_t len, cap;
} text_buffer;

static int append_text(const char *chunk, size_t n, void *user) {
    text_buffer *t = user;
    if (t->len + n + 1 > t->cap) {
        size_t cap = (t->len + n + 1) * 2;
        char *grown = realloc(t->data, cap);
        if (!grown) return -1;
        t->data = grown;
        t->cap = cap;
    }
    memcpy(t->data + t->len, chunk, n);
    t->len += n;
    return 0;
}

/* Through json_dump_callback into a buffer of our own: json_dumps grows one
 * of its own and, when a growth fails, can return damaged text instead of
 * NULL (tests/unit/test_tensors.c). */
char *srv_json_text(const json_t *body, size_t *len) {
    text_buffer t = {0};
    if (!body || json_dump_callback(body, append_text, &t, JSON_COMPACT) || !t.data) {
        free(t.data);
        return NULL;
    }
    t.data[t.len] = '\0';
    *len = t.len;
    return t.data;
}

void srv_json(srv_response *resp, unsigned status, json_t *body) {
    size_t len = 0;
    char *text = srv_json_text(body, &len);
    json_decref(body);
    resp->content_type = "application/json";
    if (!text) { /* out of memory while encoding: never a 200 without its body */
        static const char failed[] = "{\"error\": {\"code\": \"insufficient_storage\", "
                                     "\"message\": \"out of memory encoding the answer\"}}";
        resp->status = srv_error_status(SRV_ERR_INSUFFICIENT_STORAGE);
        resp->body = strdup(failed);
        resp->body_len = resp->body ? strlen(resp->body) : 0;
        return;
    }
    resp->status = status;
    resp->body = text;
    resp->body_len = len;
}

void srv_json_raw(srv_response *resp, const char *json) {
    resp->status = 200;
    resp->content_type = "application/json";
    resp->body = strdup(json);
    resp->body_len = resp->body ? strlen(resp->body) : 0;
    if (!resp->body) srv_out_of_memory(resp);
}

void srv_error(srv_response *resp, srv_error_kind kind, const char *field, const char *fmt, ...) {
    char message[LENS_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    json_t *error = json_pack("{s:s, s:s}", "code", srv_error_code(kind), "message", message);
    if (field) json_object_set_new(error, "field", json_string(field));
    free(resp->body);
    *resp = (srv_response){0};
    srv_json(resp, srv_error_status(kind), json_pack("{s:o}", "error", error));
}

void srv_engine_error(srv_response *resp, const lens_err *err, const char *field) {
    switch (err->code) {
    case LENS_ERR_NO_MEMORY:
        srv_error(resp, SRV_ERR_INSUFFICIENT_STORAGE, field, "%s", err->msg);
        break;
    case LENS_ERR_DEVICE:
        srv_error(resp, SRV_ERR_INTERNAL, field, "%s", err->msg);
        break;
    case LENS_ERR_INVALID:
        srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s", err->msg);
        break;
    }
}

void srv_out_of_memory(srv_response *resp) {
    srv_error(resp, SRV_ERR_INSUFFICIENT_STORAGE, NULL, "out of memory");
}

double srv_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
