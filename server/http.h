/*
 * http.h: the HTTP side: libmicrohttpd, framing, access control and handing requests on.
 */
#ifndef SRV_HTTP_H
#define SRV_HTTP_H

#include "core/lens_error.h"

/* Starts libmicrohttpd on cfg's address (port 0: a free one) and returns
 * the port it listens on, or -1. */
int srv_http_start(lens_err *err);

/* Stops accepting connections and waits for the open ones to finish. */
void srv_http_stop(void);

#endif
