/*
 * metrics.h: Prometheus metrics of requests, batches and caches.
 */
#ifndef SRV_METRICS_H
#define SRV_METRICS_H

#include <stddef.h>

/* Counts a finished request. */
void srv_metrics_request(const char *route, unsigned status, double seconds);

/* Counts a forward's batch size. */
void srv_metrics_batch(int rows);

/* The Prometheus text of every metric (malloc'd). */
char *srv_metrics_text(size_t *len);

#endif
