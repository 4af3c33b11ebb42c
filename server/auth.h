/*
 * auth.h: access tokens and per-token rate limits of `lensd serve`.
 *
 * The tokens file is a JSON list; each entry names a caller, its role and
 * its token, normally as the SHA-256 of the token (hashed at rest):
 *
 *   [{"name": "alice", "role": "read",  "sha256": "<64 hex digits>"},
 *    {"name": "ops",   "role": "admin", "token": "plain text"}]
 *
 * "token" (plain text) is accepted and hashed on load. tools/lensd_token.py
 * makes a new random token and its entry. Requests carry the token as
 * "Authorization: Bearer <token>".
 *
 * The loaded table is read-only after srv_auth_load, so srv_auth_check may
 * run on many threads at once; srv_rate_allow serialises on a mutex of its
 * own. Not here: deciding which routes need which role (the routes do).
 */
#ifndef SRV_AUTH_H
#define SRV_AUTH_H

#include <stdbool.h>

#include "core/lens_error.h"

typedef struct srv_auth srv_auth;

/* One entry of the tokens file, as the routes see it. Owned by the
 * srv_auth it came from; valid until srv_auth_free. */
typedef struct srv_token {
    const char *name; /* the entry's "name" */
    bool admin;       /* role "admin" (else "read") */
} srv_token;

/* Reads the tokens file at path. Returns the table, or NULL with a message
 * that names the file and the entry and field at fault ("tokens.json:
 * [1].sha256: ...") for: an unreadable file, invalid JSON, anything but a
 * non-empty list of objects, unknown keys, a missing or empty name, a name
 * given twice, a role other than "read" or "admin", neither or both of
 * "sha256" and "token", a sha256 that is not 64 hex digits, a plain token
 * with characters a Bearer header cannot carry, or two entries with the same
 * token. Free the table with srv_auth_free. */
srv_auth *srv_auth_load(const char *path, lens_err *err);

/* The entry whose token the Authorization header value carries, or NULL.
 * The value must be exactly "Bearer" (any case), one space and the token
 * (RFC 6750's b64token characters: letters, digits, -._~+/ then '='
 * padding); anything else (another scheme, "Bearer" alone, extra spaces, a
 * NULL header) is NULL. The token's SHA-256 is compared with every entry in
 * time that does not depend on where the hashes differ, and all entries are
 * compared whatever matches. Thread-safe; can't fail otherwise. */
const srv_token *srv_auth_check(const srv_auth *a, const char *authorization_header);

/* Who owns what a request leaves behind (a kept cache, a progress id): the
 * token's name, or "" for a NULL token (no access control). */
const char *srv_token_owner(const srv_token *t);

/* Whether caller may read, cancel or delete what owner owns: always without
 * access control (NULL caller) and for admin tokens; a read token only what
 * it owns itself. */
bool srv_token_may_use(const srv_token *caller, const char *owner);

/* Failed-token throttling per client address (a string: the numeric IPv4
 * or IPv6 address, at most 63 bytes). Each address may present 10 wrong
 * tokens a minute (a bucket of 10 that refills at 1 every 6 s, with the same
 * clock as srv_rate_allow); srv_auth_may_guess says whether a request from
 * address may have its token checked now, and if not sets *retry_after_s to
 * the seconds until it may. While an address is refused, every request from
 * it is, right token or wrong: a guesser learns nothing from the answers.
 * The last 1,024 addresses to guess wrong are remembered. Thread-safe. */
bool srv_auth_may_guess(srv_auth *a, const char *address, double now_s, double *retry_after_s);

/* Records a wrong token (a 401) from address, taking one from its bucket. */
void srv_auth_guessed_wrong(srv_auth *a, const char *address, double now_s);

/* Number of entries in the table (at least 1). */
int srv_auth_count(const srv_auth *a);

/* Takes one request from t's token bucket: the bucket holds at most
 * per_minute requests, starts full the first time t is seen and refills at
 * per_minute / 60 requests per second of now_s (any clock in seconds that
 * does not go backwards; a step backwards refills nothing). Returns true
 * when a request was available (and takes it). Returns false when not, with
 * *retry_after_s (if not NULL) set to the seconds until one will be; it is
 * 0 when allowed. per_minute <= 0 means unlimited: always true. t must be
 * an entry of a (from srv_auth_check(a, ...)); any other t is refused.
 * Thread-safe. */
bool srv_rate_allow(srv_auth *a, const srv_token *t, int per_minute, double now_s,
                    double *retry_after_s);

/* Frees the table and its entries (srv_token pointers from it become
 * invalid). Accepts NULL. */
void srv_auth_free(srv_auth *a);

#endif
