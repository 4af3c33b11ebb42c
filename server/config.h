/*
 * config.h: the configuration of `lensd serve` — where it listens, who may
 * call it, which models it serves and the limits it enforces.
 *
 * A configuration is built in three layers, each overriding the one before:
 * the defaults below, the JSON file named by --config (format documented in
 * config/README.md, example in config/lensd.example.json), then the other
 * command-line flags. Everything is checked here, before any model loads or
 * socket opens, so that a bad field is reported by name at startup.
 *
 * This module does not open devices, load models or read the tokens file;
 * it checks that the files it names exist and that the specs it keeps
 * (devices, weight processing) are well formed.
 */
#ifndef SRV_CONFIG_H
#define SRV_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/lens_error.h"
#include "core/model.h"

typedef struct srv_model_spec {
    char *name;          /* what clients call it: /v1/models/{name}; [A-Za-z0-9._-]+ */
    char *source;        /* a path or a Hugging Face id, as lens_model_load takes */
    char *device;        /* "cpu" (default), "cuda", "cuda:N" */
    lens_load_opts load; /* processing (-1 = the model's default) and use_* flags */
} srv_model_spec;

typedef struct srv_limits {
    size_t max_body_bytes;          /* request body; default 8 MiB; >= 1 */
    int max_batch_tokens;           /* prompts x padded length per request; default 1048576 */
    int max_tokens;                 /* tokens per prompt; 0 = the model's n_ctx (default) */
    size_t max_response_bytes;      /* activations in one response; default 1 GiB; >= 1 */
    size_t max_kept_cache_bytes;    /* all kept caches together; default 2 GiB; 0 = keep none */
    double kept_cache_ttl_s;        /* seconds a kept cache lives unused; default 600; > 0 */
    int queue_length;               /* waiting jobs per model; default 256; >= 1 */
    double request_timeout_s;       /* seconds; default 300; > 0 */
    double shutdown_timeout_s;      /* SIGTERM to exit, at most; default 30; > 0 */
    double read_timeout_s;          /* to send a whole request, headers and body; default 60 */
    int requests_per_minute;        /* per token; 0 = unlimited (default) */
    int max_patch_tokens;           /* patched runs x prompts x tokens in one sweep; default 20M */
    int max_generate_tokens;        /* token positions one generate runs; default 1M */
    int max_connections_per_client; /* open connections from one address; default 256 */
    int max_weight_variants;        /* other weight processings kept per model; default 2; 0 to 8 */
} srv_limits;

/* The most weight variants a model keeps besides its own. */
#define SRV_MAX_WEIGHT_VARIANTS 8

typedef struct srv_config {
    char *host;               /* default "127.0.0.1" */
    int port;                 /* default 8080; 0 = any free port */
    char *web_dir;            /* static files served at /; default srv_data_dir("web") (the
                                 dashboard), NULL when there is none */
    char *tokens_file;        /* NULL = no access control */
    char *tls_cert, *tls_key; /* PEM files; both or neither (NULL) */
    bool insecure;            /* allow a non-loopback bind without tokens */
    int http_threads;         /* libmicrohttpd thread pool; default 4 */
    srv_model_spec *models;   /* [n_models], in file order, then flag order */
    int n_models;
    char **model_roots; /* [n_model_roots]: directories (real paths) that admin loads
                           may read models from; default: those holding the
                           configured models given as paths */
    int n_model_roots;
    srv_limits limits;
} srv_config;

/* Defaults of srv_limits and srv_config, for callers and documentation. */
#define SRV_DEFAULT_HOST "127.0.0.1"
#define SRV_DEFAULT_PORT 8080
#define SRV_DEFAULT_HTTP_THREADS 4
#define SRV_DEFAULT_MAX_BODY_BYTES ((size_t)8 << 20)
#define SRV_DEFAULT_MAX_BATCH_TOKENS 1048576
#define SRV_DEFAULT_MAX_WEIGHT_VARIANTS 2
#define SRV_DEFAULT_MAX_RESPONSE_BYTES ((size_t)1 << 30)
#define SRV_DEFAULT_MAX_KEPT_CACHE_BYTES ((size_t)2 << 30)
#define SRV_DEFAULT_KEPT_CACHE_TTL_S 600.0
#define SRV_DEFAULT_QUEUE_LENGTH 256
#define SRV_DEFAULT_REQUEST_TIMEOUT_S 300.0
#define SRV_DEFAULT_SHUTDOWN_TIMEOUT_S 30.0
#define SRV_DEFAULT_READ_TIMEOUT_S 60.0
#define SRV_DEFAULT_MAX_PATCH_TOKENS 20000000
#define SRV_DEFAULT_MAX_GENERATE_TOKENS 1000000
#define SRV_DEFAULT_MAX_CONNECTIONS_PER_CLIENT 256
/* Open connections the HTTP side takes in all. */
#define SRV_MAX_CONNECTIONS 1024

/* Finds lensd's data directory `name` ("models", "web"): first
 * <directory of the executable>/../share/lensd/<name> (an installed lensd:
 * meson install puts it there, relative to bin/), then <source tree>/<name>
 * (a lensd run from its build directory). Returns 0 with the path in out,
 * or -1 (out then holds the last path tried) when neither is a directory. */
int srv_data_dir(const char *name, char *out, size_t cap);

/* Fills cfg from the defaults, then the JSON file of --config, then the
 * other flags. argv is the command's own: argv[0] is "serve" (not parsed)
 * and argv[1..argc-1] are parsed with getopt_long (which may permute them;
 * getopt's global state is reset first, so this can be called repeatedly).
 *
 * Flags: --config FILE, --model NAME=PATH_OR_ID (repeatable; appends a model
 * after the file's, on the device of --device, with the model's default
 * processing), --device D (default "cpu"; applies to every --model),
 * --host ADDR, --port N, --web DIR, --tokens-file FILE, --tls-cert FILE,
 * --tls-key FILE, --insecure, --threads N. A flag overrides the file's value
 * of the same setting. Relative paths in the file are taken relative to the
 * file's directory; relative paths in flags relative to the working
 * directory.
 *
 * The default of "web" is the dashboard, srv_data_dir("web") ("web": null
 * in the file serves no files).
 * With no model from the file or the flags, the bundled models are served:
 * every directory of srv_data_dir("models") that holds a tl_config.json,
 * named after the directory, in name order, on --device.
 *
 * Returns 0 with cfg filled (every string owned by cfg; free it with
 * srv_config_free). Returns -1 with cfg empty (nothing to free, though
 * srv_config_free accepts it) and a message naming the field at fault — a
 * JSON path ("models[1].device", "limits.max_batch_tokens") prefixed by the
 * file's name, or the flag ("--port") — for: a missing or unparsable
 * config file, unknown keys, wrong types, out-of-range numbers, a bad size
 * string, duplicate model names, a model name unfit for a URL, a model with
 * neither or both of path and id, a bad device spec, a bad processing spec,
 * only one of the TLS certificate and key, a file or directory that does not
 * exist (config, tokens file, TLS files, web directory, a model's "path"),
 * an unknown flag, a flag without its value, or a stray argument.
 *
 * Not checked here: whether a non-loopback host has tokens or --insecure
 * (the caller decides with srv_config_loopback), whether a device exists,
 * whether a model loads. */
int srv_config_load(srv_config *cfg, int argc, char **argv, lens_err *err);

/* The fields of a model entry (models[i] in the file, the body of POST
 * /v1/admin/models), NULL-terminated. */
extern const char *const srv_model_keys[];

/* Whether path (any file or directory; symbolic links and ".." followed)
 * lies inside one of cfg's model roots. False for a path that does not
 * exist. */
bool srv_config_in_model_root(const srv_config *cfg, const char *path);

/* True when host is a loopback address: an IPv4 address in 127.0.0.0/8,
 * ::1 (also written [::1]), ::ffff:127.x.y.z, or the name "localhost"
 * (any case). False for NULL, names other than localhost and wildcard
 * addresses (0.0.0.0, ::). Can't fail. */
bool srv_config_loopback(const char *host);

/* Frees every string and the model array of cfg and leaves cfg zeroed
 * (safe to free twice). Accepts NULL. */
void srv_config_free(srv_config *cfg);

/* What a JSON value is, for messages: "a string", "an integer", "a list"... */
const char *srv_json_kind(const json_t *v);

#endif
