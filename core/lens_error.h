/*
 * lens_error.h: the error value every fallible lensd function fills.
 *
 * Convention (all of core/ and server/): a function that can fail takes a
 * `lens_err *err` last, returns 0 (or a non-NULL pointer) on success and -1
 * (or NULL) on failure, and on failure has written into err->msg a message
 * that can be shown to a user as it is: it names the file, tensor, field or
 * token involved. `err` may be NULL when the caller does not want the text.
 */
#ifndef LENS_ERROR_H
#define LENS_ERROR_H

#include <stdarg.h>

#define LENS_ERR_MAX 1024

/* What kind of failure, for callers that answer differently (the daemon's
 * HTTP status). Most failures are the request's or the file's fault. */
typedef enum lens_err_code {
    LENS_ERR_INVALID,   /* bad input: a file, a field, a token (HTTP 4xx) */
    LENS_ERR_NO_MEMORY, /* the device (GPU or host) has not the memory (HTTP 507) */
    LENS_ERR_DEVICE,    /* the device failed while running (HTTP 500) */
} lens_err_code;

typedef struct lens_err {
    lens_err_code code;
    char msg[LENS_ERR_MAX];
} lens_err;

/* Formats a message into err (if err is not NULL), with code
 * LENS_ERR_INVALID. Can't fail; long messages are truncated. */
void lens_err_set(lens_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* As lens_err_set, with another code. */
void lens_err_set_code(lens_err *err, lens_err_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to the message already in err (if err is not NULL),
 * to add context on the way up ("model.safetensors: tensor h.0.attn...").
 * Can't fail. */
void lens_err_prefix(lens_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
