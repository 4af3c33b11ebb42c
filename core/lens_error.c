/* lens_error.c: formatting of lens_err messages. */
#include "core/lens_error.h"

#include <stdio.h>
#include <string.h>

void lens_err_set(lens_err *err, const char *fmt, ...) {
    if (!err) return;
    err->code = LENS_ERR_INVALID;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
}

void lens_err_set_code(lens_err *err, lens_err_code code, const char *fmt, ...) {
    if (!err) return;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
}

void lens_err_prefix(lens_err *err, const char *fmt, ...) {
    if (!err) return;
    char prefix[LENS_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    size_t plen = strlen(prefix);
    if (plen > sizeof err->msg - 3) plen = sizeof err->msg - 3;
    size_t room = sizeof err->msg - plen - 3;
    size_t mlen = strnlen(err->msg, room);
    memmove(err->msg + plen + 2, err->msg, mlen);
    memcpy(err->msg, prefix, plen);
    memcpy(err->msg + plen, ": ", 2);
    err->msg[plen + 2 + mlen] = '\0';
}
