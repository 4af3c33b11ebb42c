/*
 * reply.h: what every part of the server answers with: a response, the
 * table of errors, and JSON bodies. A leaf: it uses nothing of the server,
 * so anything in server/ may use it.
 */
#ifndef SRV_REPLY_H
#define SRV_REPLY_H

#include <jansson.h>
#include <stddef.h>

#include "core/lens_error.h"

/* A finished response: status, headers that matter, and a body that is
 * either bytes in memory or a stream (a safetensors cache). */
typedef struct srv_response {
    unsigned status;
    const char *content_type;
    char *body; /* owned */
    size_t body_len;
    struct MHD_Response *stream; /* a ready response instead of body, when set */
    double retry_after_s;        /* > 0: send Retry-After */
    char processing[128]; /* the weights' processing ("fold_ln,..."): X-Lensd-Processing; "" none */
} srv_response;

/* Every error lensd answers, as X(enum suffix, HTTP status, code): the code
 * is the body's error.code, and each code has one status. The Python
 * client's classes (clients/python/lensd/errors.py) and /openapi.json come
 * from this table; tests/integration/test_error_table.py checks both. */
#define SRV_ERRORS(X)                                                                              \
    X(BAD_REQUEST, 400, "bad_request")                                                             \
    X(UNAUTHORIZED, 401, "unauthorized")                                                           \
    X(FORBIDDEN, 403, "forbidden")                                                                 \
    X(NOT_FOUND, 404, "not_found")                                                                 \
    X(METHOD_NOT_ALLOWED, 405, "method_not_allowed")                                               \
    X(NOT_ACCEPTABLE, 406, "not_acceptable")                                                       \
    X(CONFLICT, 409, "conflict")                                                                   \
    X(CANCELLED, 409, "cancelled")                                                                 \
    X(TOO_LARGE, 413, "too_large")                                                                 \
    X(UNSUPPORTED_MEDIA_TYPE, 415, "unsupported_media_type")                                       \
    X(UNPROCESSABLE, 422, "unprocessable")                                                         \
    X(RATE_LIMITED, 429, "rate_limited")                                                           \
    X(CLIENT_CLOSED, 499, "client_closed")                                                         \
    X(INTERNAL, 500, "internal")                                                                   \
    X(UNAVAILABLE, 503, "unavailable")                                                             \
    X(INSUFFICIENT_STORAGE, 507, "insufficient_storage")

typedef enum srv_error_kind {
#define SRV_ERROR_ENUM(name, status, code) SRV_ERR_##name,
    SRV_ERRORS(SRV_ERROR_ENUM)
#undef SRV_ERROR_ENUM
        SRV_N_ERRORS
} srv_error_kind;

/* The HTTP status and the code of an error kind. */
unsigned srv_error_status(srv_error_kind kind);
const char *srv_error_code(srv_error_kind kind);

/* Fills resp (freeing a body it held) with the JSON error
 * {"error": {"code", "message", "field"}} of kind; field may be NULL. */
void srv_error(srv_response *resp, srv_error_kind kind, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A lens_err from the engine as an error: insufficient_storage for memory,
 * internal for a device failure, bad_request otherwise. */
void srv_engine_error(srv_response *resp, const lens_err *err, const char *field);

/* Fills resp with the insufficient_storage of a failed allocation. */
void srv_out_of_memory(srv_response *resp);

/* body as compact JSON text (NUL-terminated, *len bytes), or NULL when
 * memory runs out (never damaged text). */
char *srv_json_text(const json_t *body, size_t *len);

/* Fills resp with a JSON body (takes the reference; NULL, from a json_pack
 * that ran out of memory, is accepted). When memory runs out encoding it,
 * resp is a 507 instead, never the status with an empty body. */
void srv_json(srv_response *resp, unsigned status, json_t *body);

/* Fills resp with a copy of JSON text that is already encoded (status 200). */
void srv_json_raw(srv_response *resp, const char *json);

/* Seconds on CLOCK_MONOTONIC: the one clock of the server's timings,
 * deadlines and timeouts. */
double srv_now_s(void);

#endif
