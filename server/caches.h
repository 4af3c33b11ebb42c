/*
 * caches.h: caches kept for later queries (run_with_cache with "keep": true):
 * GET /v1/caches/{id}, GET /v1/caches/{id}/{name}?batch=..&positions=..,
 * DELETE /v1/caches/{id}. Byte-budgeted (limits.max_kept_cache_bytes; the
 * least recently used go first) and dropped after limits.kept_cache_ttl_s
 * unused. Safe from any thread.
 */
#ifndef SRV_CACHES_H
#define SRV_CACHES_H

#include "server/tensors.h"

/* Keeps answer a (taken) of model, owned by owner (srv_token_owner), under
 * a new id (written to id, 33 bytes). Returns 0, or -1 with a 507 in resp
 * when a alone is over the budget (a is then freed). */
int srv_caches_keep(const char *model, const char *owner, srv_answer *a, char *id,
                    srv_response *resp);

/* Answers a request of caller under /v1/caches/ (rest: the path after it)
 * in resp. batch and positions are the query's comma lists, or NULL. A
 * cache caller may not use (srv_token_may_use) is answered as one that does
 * not exist: 404. */
void srv_caches_route(const char *method, const char *rest, const char *accept, const char *batch,
                      const char *positions, const srv_token *caller, srv_response *resp);

/* Drops the caches unused for longer than the TTL. */
void srv_caches_expire(double now_s);

/* Bytes of all kept caches. */
size_t srv_caches_bytes(void);

/* Frees every kept cache (shutdown). */
void srv_caches_clear(void);

#endif
