/*
 * auth.c: the tokens file, Bearer-token checks and per-token token buckets.
 *
 * Tokens are kept only as SHA-256 digests (a plain "token" in the file is
 * hashed on load and its text dropped). A presented token is hashed and
 * compared with every digest without early exit, so timing says nothing
 * about how close a guess was; the hash itself makes prefix-by-prefix
 * guessing useless anyway, the constant-time compare is the belt to that
 * pair of braces.
 */
#include "server/auth.h"
#include "server/config.h"

#include <gnutls/crypto.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DIGEST_BYTES 32

typedef struct auth_entry {
    srv_token tok; /* what srv_auth_check hands out; tok.name is owned here */
    uint8_t digest[DIGEST_BYTES];
    double bucket;      /* requests available now */
    double bucket_time; /* now_s of the last refill */
    bool bucket_used;   /* the bucket has been started */
} auth_entry;

/* Wrong tokens from one client address: a bucket of GUESSES_PER_MINUTE
 * that each wrong token empties by one and time refills. */
typedef struct guesser {
    char address[64]; /* "" for a free slot */
    double bucket, bucket_time;
} guesser;

#define GUESSES_PER_MINUTE 10
#define GUESSERS 1024 /* addresses remembered; the one refilled longest ago goes first */

struct srv_auth {
    auth_entry *entries; /* [n] */
    int n;
    guesser guessers[GUESSERS];
    pthread_mutex_t lock; /* guards the bucket fields of entries, and guessers */
};

/* RFC 6750 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=" */
static bool is_b64token(const char *s, size_t n) {
    static const char chars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                                "-._~+/";
    size_t body = 0;
    while (body < n && s[body] && strchr(chars, s[body]))
        body++;
    if (body == 0) return false;
    size_t i = body;
    while (i < n && s[i] == '=')
        i++;
    return i == n;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int sha256(const char *text, size_t n, uint8_t out[DIGEST_BYTES]) {
    return gnutls_hash_fast(GNUTLS_DIG_SHA256, text, n, out) < 0 ? -1 : 0;
}

/* 0 when a and b are equal; the time taken does not depend on the bytes. */
static unsigned digest_diff(const uint8_t *a, const uint8_t *b) {
    volatile unsigned diff = 0;
    for (int i = 0; i < DIGEST_BYTES; i++)
        diff |= (unsigned)(a[i] ^ b[i]);
    return diff;
}

/* entry[i] as a non-empty string field; NULL with err set otherwise. */
static const char *entry_string(const json_t *o, int i, const char *key, lens_err *err) {
    const json_t *v = json_object_get(o, key);
    if (!json_is_string(v)) {
        if (v)
            lens_err_set(err, "[%d].%s: must be a string, not %s", i, key, srv_json_kind(v));
        else
            lens_err_set(err, "[%d].%s: is required", i, key);
        return NULL;
    }
    if (json_string_length(v) == 0 || strlen(json_string_value(v)) != json_string_length(v)) {
        lens_err_set(err, "[%d].%s: must be a non-empty string without NUL characters", i, key);
        return NULL;
    }
    return json_string_value(v);
}

/* Fills e from entry i of the file. Checks names and digests against the
 * entries before it. */
static int parse_entry(srv_auth *a, const json_t *o, int i, lens_err *err) {
    auth_entry *e = &a->entries[i];
    if (!json_is_object(o)) {
        lens_err_set(err,
                     "[%d]: must be an object {\"name\", \"role\", \"sha256\" or \"token\"}, "
                     "not %s",
                     i, srv_json_kind(o));
        return -1;
    }
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)o, key, v) {
        if (strcmp(key, "name") && strcmp(key, "role") && strcmp(key, "sha256") &&
            strcmp(key, "token")) {
            lens_err_set(err, "[%d].%s: unknown key (expected name, role, sha256 or token)", i,
                         key);
            return -1;
        }
    }
    const char *name = entry_string(o, i, "name", err);
    if (!name) return -1;
    for (int j = 0; j < i; j++) {
        if (strcmp(a->entries[j].tok.name, name) == 0) {
            lens_err_set(err, "[%d].name: duplicate name \"%s\" (entry %d has it)", i, name, j);
            return -1;
        }
    }
    const char *role = entry_string(o, i, "role", err);
    if (!role) return -1;
    if (strcmp(role, "read") && strcmp(role, "admin")) {
        lens_err_set(err, "[%d].role: must be \"read\" or \"admin\", not \"%s\"", i, role);
        return -1;
    }
    bool has_hash = json_object_get(o, "sha256"), has_plain = json_object_get(o, "token");
    if (has_hash == has_plain) {
        lens_err_set(err,
                     "[%d] (\"%s\"): needs exactly one of \"sha256\" (the token's SHA-256 "
                     "in hex) and \"token\" (the token itself)",
                     i, name);
        return -1;
    }
    if (has_hash) {
        const char *hex = entry_string(o, i, "sha256", err);
        if (!hex) return -1;
        bool ok = strlen(hex) == 2 * DIGEST_BYTES;
        for (int k = 0; ok && k < DIGEST_BYTES; k++) {
            int hi = hex_digit(hex[2 * k]), lo = hex_digit(hex[2 * k + 1]);
            ok = hi >= 0 && lo >= 0;
            if (ok) e->digest[k] = (uint8_t)(hi << 4 | lo);
        }
        if (!ok) {
            lens_err_set(err,
                         "[%d].sha256: must be 64 hexadecimal digits (the SHA-256 of the "
                         "token), got %zu characters",
                         i, strlen(hex));
            return -1;
        }
    } else {
        const char *plain = entry_string(o, i, "token", err);
        if (!plain) return -1;
        if (!is_b64token(plain, strlen(plain))) {
            lens_err_set(err,
                         "[%d].token: has characters a Bearer header cannot carry (use "
                         "letters, digits and -._~+/, then '=' padding)",
                         i);
            return -1;
        }
        if (sha256(plain, strlen(plain), e->digest)) {
            lens_err_set(err, "[%d].token: SHA-256 failed", i);
            return -1;
        }
    }
    for (int j = 0; j < i; j++) {
        if (digest_diff(a->entries[j].digest, e->digest) == 0) {
            lens_err_set(err, "[%d] (\"%s\"): the same token as entry %d (\"%s\")", i, name, j,
                         a->entries[j].tok.name);
            return -1;
        }
    }
    char *own = strdup(name);
    if (!own) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    e->tok.name = own;
    e->tok.admin = strcmp(role, "admin") == 0;
    return 0;
}

srv_auth *srv_auth_load(const char *path, lens_err *err) {
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (jerr.line < 0) /* not a parse error: the file could not be read */
            lens_err_set(err, "%s", jerr.text);
        else
            lens_err_set(err, "%s: line %d column %d: %s", path, jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    srv_auth *a = calloc(1, sizeof *a);
    int rc = -1;
    if (!a) {
        lens_err_set(err, "out of memory");
    } else if (!json_is_array(root) || json_array_size(root) == 0) {
        lens_err_set(err,
                     "%s: must be a non-empty list of {\"name\", \"role\", \"sha256\"} "
                     "entries",
                     path);
    } else if (json_array_size(root) > INT32_MAX ||
               !(a->entries = calloc(json_array_size(root), sizeof *a->entries))) {
        lens_err_set(err, "out of memory");
    } else if (pthread_mutex_init(&a->lock, NULL) != 0) {
        lens_err_set(err, "%s: cannot create a mutex", path);
        free(a->entries);
        a->entries = NULL;
    } else {
        rc = 0;
        int n = (int)json_array_size(root);
        for (int i = 0; i < n && rc == 0; i++) {
            rc = parse_entry(a, json_array_get(root, (size_t)i), i, err);
            if (rc == 0) a->n = i + 1;
        }
        if (rc) lens_err_prefix(err, "%s", path);
    }
    json_decref(root);
    if (rc) {
        if (a && a->entries) {
            srv_auth_free(a);
        } else {
            free(a);
        }
        return NULL;
    }
    return a;
}

const srv_token *srv_auth_check(const srv_auth *a, const char *authorization_header) {
    static const char scheme[] = "Bearer ";
    const char *h = authorization_header;
    if (!a || !h || strncasecmp(h, scheme, sizeof scheme - 1) != 0) return NULL;
    const char *token = h + sizeof scheme - 1;
    size_t n = strlen(token);
    if (!is_b64token(token, n)) return NULL;
    uint8_t digest[DIGEST_BYTES];
    if (sha256(token, n, digest)) return NULL;
    const srv_token *found = NULL;
    for (int i = 0; i < a->n; i++)
        if (digest_diff(a->entries[i].digest, digest) == 0) found = &a->entries[i].tok;
    return found;
}

int srv_auth_count(const srv_auth *a) {
    return a->n;
}

const char *srv_token_owner(const srv_token *t) {
    return t ? t->name : "";
}

bool srv_token_may_use(const srv_token *caller, const char *owner) {
    return !caller || caller->admin || strcmp(caller->name, owner) == 0;
}

bool srv_rate_allow(srv_auth *a, const srv_token *t, int per_minute, double now_s,
                    double *retry_after_s) {
    if (retry_after_s) *retry_after_s = 0;
    if (per_minute <= 0) return true;
    auth_entry *e = NULL;
    for (int i = 0; a && t && i < a->n && !e; i++)
        if (&a->entries[i].tok == t) e = &a->entries[i];
    double rate = per_minute / 60.0; /* requests per second */
    if (!e) {
        if (retry_after_s) *retry_after_s = 1.0 / rate;
        return false;
    }
    pthread_mutex_lock(&a->lock);
    if (!e->bucket_used) {
        e->bucket_used = true;
        e->bucket = per_minute;
        e->bucket_time = now_s;
    } else if (now_s > e->bucket_time) {
        e->bucket += (now_s - e->bucket_time) * rate;
        e->bucket_time = now_s;
    }
    if (e->bucket > per_minute) e->bucket = per_minute; /* also when per_minute shrank */
    bool allowed = e->bucket >= 1.0;
    if (allowed)
        e->bucket -= 1.0;
    else if (retry_after_s)
        *retry_after_s = (1.0 - e->bucket) / rate;
    pthread_mutex_unlock(&a->lock);
    return allowed;
}

/* The guesser slot of address, refilled to now_s; with add, a new one (full)
 * when address has none. NULL when it has none and add is false. Locked. */
static guesser *guesser_of(srv_auth *a, const char *address, double now_s, bool add) {
    guesser *g = NULL, *oldest = &a->guessers[0];
    for (int i = 0; i < GUESSERS && !g; i++) {
        if (strcmp(a->guessers[i].address, address) == 0) g = &a->guessers[i];
        if (a->guessers[i].bucket_time < oldest->bucket_time) oldest = &a->guessers[i];
    }
    if (!g && !add) return NULL;
    if (!g) {
        g = oldest;
        snprintf(g->address, sizeof g->address, "%s", address);
        g->bucket = GUESSES_PER_MINUTE;
        g->bucket_time = now_s;
    }
    if (now_s > g->bucket_time) {
        g->bucket += (now_s - g->bucket_time) * (GUESSES_PER_MINUTE / 60.0);
        g->bucket_time = now_s;
    }
    if (g->bucket > GUESSES_PER_MINUTE) g->bucket = GUESSES_PER_MINUTE;
    return g;
}

bool srv_auth_may_guess(srv_auth *a, const char *address, double now_s, double *retry_after_s) {
    pthread_mutex_lock(&a->lock);
    const guesser *g = guesser_of(a, address, now_s, false);
    const bool allowed = !g || g->bucket >= 1.0;
    *retry_after_s = allowed ? 0.0 : (1.0 - g->bucket) / (GUESSES_PER_MINUTE / 60.0);
    pthread_mutex_unlock(&a->lock);
    return allowed;
}

void srv_auth_guessed_wrong(srv_auth *a, const char *address, double now_s) {
    pthread_mutex_lock(&a->lock);
    guesser *g = guesser_of(a, address, now_s, true);
    g->bucket = g->bucket >= 1.0 ? g->bucket - 1.0 : 0.0;
    pthread_mutex_unlock(&a->lock);
}

void srv_auth_free(srv_auth *a) {
    if (!a) return;
    for (int i = 0; i < a->n; i++)
        free((char *)a->entries[i].tok.name);
    free(a->entries);
    pthread_mutex_destroy(&a->lock);
    free(a);
}
