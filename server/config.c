/*
 * config.c: defaults, the JSON configuration file and the flags of
 * `lensd serve`, merged and checked into one srv_config.
 *
 * Order of work: the flags are read first (only to learn --config and to
 * check their own syntax), then the defaults are set, the file is applied,
 * the flags are applied over it, and last come the checks that need the
 * merged result (files exist, TLS certificate and key come as a pair), each
 * naming the place the failing value came from.
 */
#include "server/config.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Sizes are refused above 1 PiB: far beyond any machine, and exact in a
 * double, so "1.5GiB" converts without rounding surprises. */
#define MAX_SIZE_SETTING ((size_t)1 << 50)
#define MAX_SECONDS_SETTING 1e9
#define MAX_MODEL_NAME 128

/* ---- small helpers ------------------------------------------------------- */

static char *dup_or_fail(const char *s, lens_err *err) {
    char *d = strdup(s);
    if (!d) lens_err_set(err, "out of memory");
    return d;
}

/* Replaces *slot with a copy of s (NULL clears it). */
static int set_string(char **slot, const char *s, lens_err *err) {
    char *d = NULL;
    if (s && !(d = dup_or_fail(s, err))) return -1;
    free(*slot);
    *slot = d;
    return 0;
}

/* base_dir joined with p when p is relative and base_dir is not NULL; a copy
 * of p otherwise. Returns NULL when out of memory. */
static char *resolve_path(const char *base_dir, const char *p) {
    if (!base_dir || p[0] == '/') return strdup(p);
    size_t n = strlen(base_dir) + 1 + strlen(p) + 1;
    char *out = malloc(n);
    if (out) snprintf(out, n, "%s/%s", base_dir, p);
    return out;
}

/* The directory part of path ("." when it has none). Returns NULL when out
 * of memory. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* 0 when path names an existing directory (want_dir) or a readable regular
 * file; -1 with "<where>: <path>: <reason>". */
static int check_path(const char *path, bool want_dir, const char *where, lens_err *err) {
    struct stat st;
    if (stat(path, &st) != 0) {
        lens_err_set(err, "%s: %s: %s", where, path, strerror(errno));
        return -1;
    }
    if (want_dir && !S_ISDIR(st.st_mode)) {
        lens_err_set(err, "%s: %s is not a directory", where, path);
        return -1;
    }
    if (!want_dir && !S_ISREG(st.st_mode)) {
        lens_err_set(err, "%s: %s is not a regular file", where, path);
        return -1;
    }
    if (access(path, R_OK) != 0) {
        lens_err_set(err, "%s: %s: %s", where, path, strerror(errno));
        return -1;
    }
    return 0;
}

/* "cpu", "cuda" or "cuda:N" (N decimal, at most 4 digits). */
static bool valid_device(const char *d) {
    if (strcmp(d, "cpu") == 0 || strcmp(d, "cuda") == 0) return true;
    if (strncmp(d, "cuda:", 5) != 0) return false;
    size_t n = strlen(d + 5);
    return n >= 1 && n <= 4 && strspn(d + 5, "0123456789") == n;
}

static int check_device(const char *d, const char *where, lens_err *err) {
    if (valid_device(d)) return 0;
    lens_err_set(err, "%s: \"%s\" is not a device (cpu, cuda or cuda:N)", where, d);
    return -1;
}

/* Model names are one URL path segment: letters, digits, '.', '_', '-',
 * starting with a letter or digit (so never "." or ".."). */
static int check_model_name(const char *name, const char *where, lens_err *err) {
    size_t n = strlen(name);
    bool ok =
        n >= 1 && n <= MAX_MODEL_NAME &&
        strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n &&
        strchr("._-", name[0]) == NULL;
    if (ok) return 0;
    lens_err_set(err,
                 "%s: \"%s\" is not a model name (1 to %d letters, digits, '.', '_' or '-', "
                 "starting with a letter or digit)",
                 where, name, MAX_MODEL_NAME);
    return -1;
}

/* "default" keeps the model's own default (-1); anything else goes through
 * lens_processing_parse. */
static int parse_processing(const char *spec, int *out, const char *where, lens_err *err) {
    if (strcmp(spec, "default") == 0) {
        *out = -1;
        return 0;
    }
    unsigned flags;
    if (lens_processing_parse(spec, &flags, err)) {
        lens_err_prefix(err, "%s", where);
        return -1;
    }
    *out = (int)flags;
    return 0;
}

/* Parses "<number>[ ]<unit>" (number: digits with an optional fraction;
 * unit: B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of
 * 1024), any case; none means bytes) into bytes, rounded to the nearest. */
static int parse_size_string(const char *s, size_t *out) {
    static const struct {
        const char *name;
        double mult;
    } units[] = {
        {"", 1},
        {"b", 1},
        {"kb", 1e3},
        {"mb", 1e6},
        {"gb", 1e9},
        {"tb", 1e12},
        {"kib", 1024.0},
        {"mib", 1048576.0},
        {"gib", 1073741824.0},
        {"tib", 1099511627776.0},
    };
    size_t n_int = strspn(s, "0123456789");
    size_t n_num = n_int;
    if (s[n_num] == '.') n_num += 1 + strspn(s + n_num + 1, "0123456789");
    if (n_int == 0 || s[n_num - 1] == '.') return -1;
    char num[64];
    if (n_num >= sizeof num) return -1;
    memcpy(num, s, n_num);
    num[n_num] = '\0';
    const char *unit = s + n_num;
    if (*unit == ' ') unit++;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(unit, units[i].name) != 0) continue;
        if (units[i].name[0] == '\0' && unit != s + n_num) return -1; /* "8 " */
        double v = floor(strtod(num, NULL) * units[i].mult + 0.5);
        if (!(v <= (double)MAX_SIZE_SETTING)) v = (double)MAX_SIZE_SETTING + 1; /* caller refuses */
        *out = (size_t)v;
        return 0;
    }
    return -1;
}

/* ---- JSON field readers ---------------------------------------------------
 * Each takes the value and its JSON path ("limits.max_batch_tokens") and fills
 * *out, or fails with a message that starts with that path. */

const char *srv_json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "a list";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "a value";
}

/* A non-empty string. */
static int json_str(const json_t *v, const char *where, const char **out, lens_err *err) {
    if (!json_is_string(v)) {
        lens_err_set(err, "%s: must be a string, not %s", where, srv_json_kind(v));
        return -1;
    }
    if (json_string_length(v) == 0 || strlen(json_string_value(v)) != json_string_length(v)) {
        lens_err_set(err, "%s: must be a non-empty string without NUL characters", where);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

static int json_bool(const json_t *v, const char *where, bool *out, lens_err *err) {
    if (!json_is_boolean(v)) {
        lens_err_set(err, "%s: must be true or false, not %s", where, srv_json_kind(v));
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

static int json_int_in(const json_t *v, const char *where, int lo, int hi, int *out,
                       lens_err *err) {
    if (!json_is_integer(v)) {
        lens_err_set(err, "%s: must be an integer, not %s", where, srv_json_kind(v));
        return -1;
    }
    json_int_t i = json_integer_value(v);
    if (i < lo || i > hi) {
        lens_err_set(err, "%s: %lld is out of range (%d to %d)", where, (long long)i, lo, hi);
        return -1;
    }
    *out = (int)i;
    return 0;
}

/* Seconds: a number in (0, MAX_SECONDS_SETTING]. */
static int json_seconds(const json_t *v, const char *where, double *out, lens_err *err) {
    if (!json_is_number(v)) {
        lens_err_set(err, "%s: must be a number of seconds, not %s", where, srv_json_kind(v));
        return -1;
    }
    double d = json_number_value(v);
    if (!(d > 0 && d <= MAX_SECONDS_SETTING)) {
        lens_err_set(err, "%s: %g is out of range (more than 0, at most %g seconds)", where, d,
                     MAX_SECONDS_SETTING);
        return -1;
    }
    *out = d;
    return 0;
}

/* Bytes: an integer, or a string with a unit ("8MiB"); in [lo, 1 PiB]. */
static int json_size(const json_t *v, const char *where, size_t lo, size_t *out, lens_err *err) {
    size_t n;
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < 0) {
            lens_err_set(err, "%s: %lld is out of range (at least %zu, at most 1PiB)", where,
                         (long long)i, lo);
            return -1;
        }
        n = (uint64_t)i > MAX_SIZE_SETTING ? MAX_SIZE_SETTING + 1 : (size_t)i;
    } else if (json_is_string(v)) {
        if (parse_size_string(json_string_value(v), &n)) {
            lens_err_set(err,
                         "%s: \"%s\" is not a size (a number of bytes, or a number with a unit: "
                         "B, kB, MB, GB, TB, KiB, MiB, GiB, TiB, e.g. \"8MiB\")",
                         where, json_string_value(v));
            return -1;
        }
    } else {
        lens_err_set(err, "%s: must be a number of bytes or a string such as \"8MiB\", not %s",
                     where, srv_json_kind(v));
        return -1;
    }
    if (n < lo || n > MAX_SIZE_SETTING) {
        lens_err_set(err, "%s: out of range (at least %zu, at most 1PiB)", where, lo);
        return -1;
    }
    *out = n;
    return 0;
}

/* Refuses keys of obj not in allowed (NULL-terminated). prefix is the JSON
 * path of obj with its trailing '.', "" at the top. */
static int check_keys(const json_t *obj, const char *prefix, const char *const *allowed,
                      lens_err *err) {
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        bool known = false;
        for (const char *const *a = allowed; *a && !known; a++)
            known = strcmp(key, *a) == 0;
        if (known) continue;
        char list[512] = "";
        size_t used = 0;
        for (const char *const *a = allowed; *a && used < sizeof list; a++)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%s",
                                     a == allowed ? "" : ", ", *a);
        lens_err_set(err, "%s%s: unknown key (expected one of: %s)", prefix, key, list);
        return -1;
    }
    return 0;
}

/* ---- models ---------------------------------------------------------------- */

static void free_model_spec(srv_model_spec *m) {
    free(m->name);
    free(m->source);
    free(m->device);
}

/* Appends a model (taking ownership of its strings on success and on
 * failure). where names the entry for the duplicate-name message. */
static int add_model(srv_config *cfg, srv_model_spec *m, const char *where, lens_err *err) {
    for (int i = 0; i < cfg->n_models; i++) {
        if (strcmp(cfg->models[i].name, m->name) == 0) {
            if (where[0] == '-')
                lens_err_set(err,
                             "%s: duplicate model name \"%s\" (the config file or an "
                             "earlier --model has it)",
                             where, m->name);
            else
                lens_err_set(err, "%s: duplicate model name \"%s\" (models[%d] has it already)",
                             where, m->name, i);
            free_model_spec(m);
            return -1;
        }
    }
    srv_model_spec *grown = realloc(cfg->models, (size_t)(cfg->n_models + 1) * sizeof *grown);
    if (!grown) {
        lens_err_set(err, "out of memory");
        free_model_spec(m);
        return -1;
    }
    cfg->models = grown;
    cfg->models[cfg->n_models++] = *m;
    return 0;
}

const char *const srv_model_keys[] = {"name",
                                      "path",
                                      "id",
                                      "device",
                                      "dtype",
                                      "processing",
                                      "use_attn_result",
                                      "use_split_qkv_input",
                                      "use_hook_mlp_in",
                                      "use_attn_in",
                                      NULL};

/* Appends root (malloc'd, taken; NULL: out of memory) to cfg's model roots. */
static int add_model_root(srv_config *cfg, char *root, lens_err *err) {
    char **grown =
        root ? realloc(cfg->model_roots, (size_t)(cfg->n_model_roots + 1) * sizeof *grown) : NULL;
    if (!grown) {
        free(root);
        lens_err_set(err, "out of memory");
        return -1;
    }
    cfg->model_roots = grown;
    cfg->model_roots[cfg->n_model_roots++] = root;
    return 0;
}

/* Turns the model roots into real paths, refusing one that is not a
 * directory; with none given, makes them the directories holding the
 * configured models that are paths (not Hugging Face ids). */
static int settle_model_roots(srv_config *cfg, lens_err *err) {
    if (cfg->n_model_roots == 0) {
        for (int i = 0; i < cfg->n_models; i++) {
            char real[PATH_MAX];
            if (!realpath(cfg->models[i].source, real)) continue; /* an id */
            char *slash = strrchr(real, '/');
            if (slash && slash != real) *slash = '\0';
            bool known = false;
            for (int r = 0; r < cfg->n_model_roots && !known; r++)
                known = strcmp(cfg->model_roots[r], real) == 0;
            if (!known && add_model_root(cfg, strdup(real), err)) return -1;
        }
        return 0;
    }
    for (int r = 0; r < cfg->n_model_roots; r++) {
        char real[PATH_MAX];
        struct stat st;
        if (!realpath(cfg->model_roots[r], real) || stat(real, &st) || !S_ISDIR(st.st_mode)) {
            lens_err_set(err, "model_roots[%d]: %s is not a directory", r, cfg->model_roots[r]);
            return -1;
        }
        char *copy = strdup(real);
        if (!copy) {
            lens_err_set(err, "out of memory");
            return -1;
        }
        free(cfg->model_roots[r]);
        cfg->model_roots[r] = copy;
    }
    return 0;
}

bool srv_config_in_model_root(const srv_config *cfg, const char *path) {
    char real[PATH_MAX];
    if (!realpath(path, real)) return false;
    for (int r = 0; r < cfg->n_model_roots; r++) {
        const size_t n = strlen(cfg->model_roots[r]);
        if (strncmp(real, cfg->model_roots[r], n) == 0 &&
            (real[n] == '/' || real[n] == '\0' || (n == 1 && cfg->model_roots[r][0] == '/')))
            return true;
    }
    return false;
}

/* Reads models[idx] of the file (base_dir: the file's directory). */
static int parse_model(srv_config *cfg, const json_t *o, int idx, const char *base_dir,
                       lens_err *err) {
    char where[96], field[128];
    snprintf(where, sizeof where, "models[%d]", idx);
    if (!json_is_object(o)) {
        lens_err_set(err, "%s: must be an object, not %s", where, srv_json_kind(o));
        return -1;
    }
    char prefix[100];
    snprintf(prefix, sizeof prefix, "%s.", where);
    if (check_keys(o, prefix, srv_model_keys, err)) return -1;

    srv_model_spec m = {.load = {.processing = -1}};
    const char *name, *device = "cpu", *s;
    const json_t *v;
    snprintf(field, sizeof field, "%s.name", where);
    if (!(v = json_object_get(o, "name"))) {
        lens_err_set(err, "%s: is required", field);
        return -1;
    }
    if (json_str(v, field, &name, err) || check_model_name(name, field, err)) return -1;

    const json_t *path = json_object_get(o, "path"), *id = json_object_get(o, "id");
    if (!path == !id) {
        lens_err_set(err,
                     "%s: needs exactly one of \"path\" (a directory or file) and \"id\" "
                     "(a Hugging Face id or TransformerLens alias)",
                     where);
        return -1;
    }
    snprintf(field, sizeof field, "%s.%s", where, path ? "path" : "id");
    if (json_str(path ? path : id, field, &s, err)) return -1;

    if ((v = json_object_get(o, "device"))) {
        snprintf(field, sizeof field, "%s.device", where);
        if (json_str(v, field, &device, err) || check_device(device, field, err)) return -1;
    }
    if ((v = json_object_get(o, "dtype"))) {
        snprintf(field, sizeof field, "%s.dtype", where);
        const char *dtype;
        if (json_str(v, field, &dtype, err)) return -1;
        if (strcmp(dtype, "float32") != 0) {
            lens_err_set(err,
                         "%s: \"%s\": lensd runs models in float32 only for now (float16 and "
                         "bfloat16 weights are not implemented yet)",
                         field, dtype);
            return -1;
        }
    }
    if ((v = json_object_get(o, "processing"))) {
        snprintf(field, sizeof field, "%s.processing", where);
        const char *spec;
        if (json_str(v, field, &spec, err) ||
            parse_processing(spec, &m.load.processing, field, err))
            return -1;
    }
    static const struct {
        const char *key;
        size_t offset;
    } flags[] = {
        {"use_attn_result", offsetof(lens_load_opts, use_attn_result)},
        {"use_split_qkv_input", offsetof(lens_load_opts, use_split_qkv_input)},
        {"use_hook_mlp_in", offsetof(lens_load_opts, use_hook_mlp_in)},
        {"use_attn_in", offsetof(lens_load_opts, use_attn_in)},
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        if (!(v = json_object_get(o, flags[i].key))) continue;
        snprintf(field, sizeof field, "%s.%s", where, flags[i].key);
        if (json_bool(v, field, (bool *)((char *)&m.load + flags[i].offset), err)) return -1;
    }

    m.name = strdup(name);
    m.device = strdup(device);
    m.source = path ? resolve_path(base_dir, s) : strdup(s);
    if (!m.name || !m.device || !m.source) {
        free_model_spec(&m);
        lens_err_set(err, "out of memory");
        return -1;
    }
    if (path) {
        /* A path may name a directory or a tl_config.json file. */
        struct stat st;
        if (stat(m.source, &st) != 0) {
            lens_err_set(err, "%s.path: %s: %s", where, m.source, strerror(errno));
            free_model_spec(&m);
            return -1;
        }
    }
    snprintf(field, sizeof field, "%s.name", where);
    return add_model(cfg, &m, field, err);
}

/* ---- the file ---------------------------------------------------------------- */

/* Where each path setting came from, for the checks after merging: a JSON
 * path or a flag. */
typedef struct origins {
    const char *web, *tokens_file, *tls_cert, *tls_key;
} origins;

static const char *const top_keys[] = {
    "host",         "port",   "web",         "tokens_file", "tls", "insecure",
    "http_threads", "models", "model_roots", "limits",      NULL};
static const char *const tls_keys[] = {"cert", "key", NULL};
static const char *const limit_keys[] = {"max_body_bytes",       "max_batch_tokens",
                                         "max_tokens",           "max_response_bytes",
                                         "max_kept_cache_bytes", "kept_cache_ttl_s",
                                         "queue_length",         "request_timeout_s",
                                         "shutdown_timeout_s",   "read_timeout_s",
                                         "requests_per_minute",  "max_patch_tokens",
                                         "max_generate_tokens",  "max_connections_per_client",
                                         "max_weight_variants",  NULL};

/* A path setting of the file: a non-empty string (resolved against
 * base_dir) or null (none). */
static int file_path(const json_t *v, const char *where, const char *base_dir, char **slot,
                     const char **origin, lens_err *err) {
    if (json_is_null(v)) {
        free(*slot);
        *slot = NULL;
        *origin = NULL;
        return 0;
    }
    const char *s;
    if (json_str(v, where, &s, err)) return -1;
    char *p = resolve_path(base_dir, s);
    if (!p) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    free(*slot);
    *slot = p;
    *origin = where;
    return 0;
}

static int parse_limits(srv_limits *l, const json_t *o, lens_err *err) {
    if (!json_is_object(o)) {
        lens_err_set(err, "limits: must be an object, not %s", srv_json_kind(o));
        return -1;
    }
    if (check_keys(o, "limits.", limit_keys, err)) return -1;
    const json_t *v;
    if ((v = json_object_get(o, "max_body_bytes")) &&
        json_size(v, "limits.max_body_bytes", 1, &l->max_body_bytes, err))
        return -1;
    if ((v = json_object_get(o, "max_batch_tokens")) &&
        json_int_in(v, "limits.max_batch_tokens", 1, INT_MAX, &l->max_batch_tokens, err))
        return -1;
    if ((v = json_object_get(o, "max_tokens")) &&
        json_int_in(v, "limits.max_tokens", 0, 1 << 24, &l->max_tokens, err))
        return -1;
    if ((v = json_object_get(o, "max_response_bytes")) &&
        json_size(v, "limits.max_response_bytes", 1, &l->max_response_bytes, err))
        return -1;
    if ((v = json_object_get(o, "max_kept_cache_bytes")) &&
        json_size(v, "limits.max_kept_cache_bytes", 0, &l->max_kept_cache_bytes, err))
        return -1;
    if ((v = json_object_get(o, "kept_cache_ttl_s")) &&
        json_seconds(v, "limits.kept_cache_ttl_s", &l->kept_cache_ttl_s, err))
        return -1;
    if ((v = json_object_get(o, "queue_length")) &&
        json_int_in(v, "limits.queue_length", 1, 1000000, &l->queue_length, err))
        return -1;
    if ((v = json_object_get(o, "shutdown_timeout_s")) &&
        json_seconds(v, "limits.shutdown_timeout_s", &l->shutdown_timeout_s, err))
        return -1;
    if ((v = json_object_get(o, "read_timeout_s")) &&
        json_seconds(v, "limits.read_timeout_s", &l->read_timeout_s, err))
        return -1;
    if ((v = json_object_get(o, "request_timeout_s")) &&
        json_seconds(v, "limits.request_timeout_s", &l->request_timeout_s, err))
        return -1;
    if ((v = json_object_get(o, "requests_per_minute")) &&
        json_int_in(v, "limits.requests_per_minute", 0, 1000000, &l->requests_per_minute, err))
        return -1;
    if ((v = json_object_get(o, "max_connections_per_client")) &&
        json_int_in(v, "limits.max_connections_per_client", 1, SRV_MAX_CONNECTIONS,
                    &l->max_connections_per_client, err))
        return -1;
    if ((v = json_object_get(o, "max_generate_tokens")) &&
        json_int_in(v, "limits.max_generate_tokens", 1, INT_MAX, &l->max_generate_tokens, err))
        return -1;
    if ((v = json_object_get(o, "max_weight_variants")) &&
        json_int_in(v, "limits.max_weight_variants", 0, SRV_MAX_WEIGHT_VARIANTS,
                    &l->max_weight_variants, err))
        return -1;
    if ((v = json_object_get(o, "max_patch_tokens")) &&
        json_int_in(v, "limits.max_patch_tokens", 1, INT_MAX, &l->max_patch_tokens, err))
        return -1;
    return 0;
}

/* Applies the parsed file root to cfg. */
static int apply_file(srv_config *cfg, const json_t *root, const char *base_dir, origins *org,
                      lens_err *err) {
    if (!json_is_object(root)) {
        lens_err_set(err, "the configuration must be a JSON object, not %s", srv_json_kind(root));
        return -1;
    }
    if (check_keys(root, "", top_keys, err)) return -1;
    const json_t *v;
    const char *s;
    if ((v = json_object_get(root, "host")) &&
        (json_str(v, "host", &s, err) || set_string(&cfg->host, s, err)))
        return -1;
    if ((v = json_object_get(root, "port")) && json_int_in(v, "port", 0, 65535, &cfg->port, err))
        return -1;
    if ((v = json_object_get(root, "web")) &&
        file_path(v, "web", base_dir, &cfg->web_dir, &org->web, err))
        return -1;
    if ((v = json_object_get(root, "tokens_file")) &&
        file_path(v, "tokens_file", base_dir, &cfg->tokens_file, &org->tokens_file, err))
        return -1;
    if ((v = json_object_get(root, "tls")) && !json_is_null(v)) {
        if (!json_is_object(v)) {
            lens_err_set(err,
                         "tls: must be an object {\"cert\": FILE, \"key\": FILE} or null, "
                         "not %s",
                         srv_json_kind(v));
            return -1;
        }
        if (check_keys(v, "tls.", tls_keys, err)) return -1;
        const json_t *f;
        if ((f = json_object_get(v, "cert")) &&
            file_path(f, "tls.cert", base_dir, &cfg->tls_cert, &org->tls_cert, err))
            return -1;
        if ((f = json_object_get(v, "key")) &&
            file_path(f, "tls.key", base_dir, &cfg->tls_key, &org->tls_key, err))
            return -1;
    }
    if ((v = json_object_get(root, "insecure")) && json_bool(v, "insecure", &cfg->insecure, err))
        return -1;
    if ((v = json_object_get(root, "http_threads")) &&
        json_int_in(v, "http_threads", 1, 1024, &cfg->http_threads, err))
        return -1;
    if ((v = json_object_get(root, "model_roots"))) {
        if (!json_is_array(v)) {
            lens_err_set(err, "model_roots: must be a list of directories, not %s",
                         srv_json_kind(v));
            return -1;
        }
        for (size_t i = 0; i < json_array_size(v); i++) {
            char where[48];
            snprintf(where, sizeof where, "model_roots[%zu]", i);
            if (json_str(json_array_get(v, i), where, &s, err)) return -1;
            if (add_model_root(cfg, resolve_path(base_dir, s), err)) return -1;
        }
    }
    if ((v = json_object_get(root, "models"))) {
        if (!json_is_array(v)) {
            lens_err_set(err, "models: must be a list, not %s", srv_json_kind(v));
            return -1;
        }
        for (size_t i = 0; i < json_array_size(v); i++)
            if (parse_model(cfg, json_array_get(v, i), (int)i, base_dir, err)) return -1;
    }
    if ((v = json_object_get(root, "limits")) && parse_limits(&cfg->limits, v, err)) return -1;
    return 0;
}

static int load_file(srv_config *cfg, const char *path, origins *org, lens_err *err) {
    if (check_path(path, false, "--config", err)) return -1;
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        lens_err_set(err, "--config: %s: line %d column %d: %s", path, jerr.line, jerr.column,
                     jerr.text);
        return -1;
    }
    char *base_dir = dir_of(path);
    int rc = -1;
    if (!base_dir) {
        lens_err_set(err, "out of memory");
    } else if ((rc = apply_file(cfg, root, base_dir, org, err)) != 0) {
        lens_err_prefix(err, "%s", path);
    }
    free(base_dir);
    json_decref(root);
    return rc;
}

/* ---- flags ------------------------------------------------------------------ */

typedef struct flag_vals {
    const char *config, *host, *web, *tokens_file, *tls_cert, *tls_key, *device;
    int port, threads; /* -1: not given */
    bool insecure;
    const char **models; /* [n_models] NAME=PATH_OR_ID, in order */
    int n_models;
} flag_vals;

enum {
    OPT_CONFIG = 1000,
    OPT_MODEL,
    OPT_DEVICE,
    OPT_HOST,
    OPT_PORT,
    OPT_WEB,
    OPT_TOKENS_FILE,
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_INSECURE,
    OPT_THREADS,
};

static const struct option serve_options[] = {
    {"config", required_argument, NULL, OPT_CONFIG},
    {"model", required_argument, NULL, OPT_MODEL},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, OPT_PORT},
    {"web", required_argument, NULL, OPT_WEB},
    {"tokens-file", required_argument, NULL, OPT_TOKENS_FILE},
    {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
    {"tls-key", required_argument, NULL, OPT_TLS_KEY},
    {"insecure", no_argument, NULL, OPT_INSECURE},
    {"threads", required_argument, NULL, OPT_THREADS},
    {NULL, 0, NULL, 0},
};

/* A decimal integer in [lo, hi], the whole of s. */
static int flag_int(const char *s, const char *flag, int lo, int hi, int *out, lens_err *err) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!strchr("+-0123456789", s[0]) || end == s || *end || errno || v < lo || v > hi) {
        lens_err_set(err, "%s: expected an integer from %d to %d, got \"%s\"", flag, lo, hi, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* A non-empty flag value. */
static int flag_str(const char *s, const char *flag, const char **out, lens_err *err) {
    if (!s[0]) {
        lens_err_set(err, "%s: must not be empty", flag);
        return -1;
    }
    *out = s;
    return 0;
}

static int parse_flags(int argc, char **argv, flag_vals *f, lens_err *err) {
    memset(f, 0, sizeof *f);
    f->port = f->threads = -1;
    if (argc <= 1) return 0;
    f->models = calloc((size_t)argc, sizeof *f->models);
    if (!f->models) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    int saved_opterr = opterr;
    opterr = 0; /* errors are reported through err, not printed */
    optind = 0; /* glibc: a full reset, also of a scan a previous call left halfway */
    int c, rc = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":", serve_options, NULL)) != -1) {
        switch (c) {
        case OPT_CONFIG:
            rc = flag_str(optarg, "--config", &f->config, err);
            break;
        case OPT_MODEL:
            f->models[f->n_models++] = optarg;
            break;
        case OPT_DEVICE:
            rc = check_device(optarg, "--device", err);
            f->device = optarg;
            break;
        case OPT_HOST:
            rc = flag_str(optarg, "--host", &f->host, err);
            break;
        case OPT_PORT:
            rc = flag_int(optarg, "--port", 0, 65535, &f->port, err);
            break;
        case OPT_WEB:
            rc = flag_str(optarg, "--web", &f->web, err);
            break;
        case OPT_TOKENS_FILE:
            rc = flag_str(optarg, "--tokens-file", &f->tokens_file, err);
            break;
        case OPT_TLS_CERT:
            rc = flag_str(optarg, "--tls-cert", &f->tls_cert, err);
            break;
        case OPT_TLS_KEY:
            rc = flag_str(optarg, "--tls-key", &f->tls_key, err);
            break;
        case OPT_INSECURE:
            f->insecure = true;
            break;
        case OPT_THREADS:
            rc = flag_int(optarg, "--threads", 1, 1024, &f->threads, err);
            break;
        case ':':
            lens_err_set(err, "%s: needs a value", argv[optind - 1]);
            rc = -1;
            break;
        default:
            if (optopt >= OPT_CONFIG) /* a known option given a value it does not take */
                lens_err_set(err, "\"%s\": this option takes no value", argv[optind - 1]);
            else if (optopt > 0 && optopt < 256) /* a short option, maybe inside a cluster */
                lens_err_set(err, "unknown option \"-%c\" (see lensd --help)", optopt);
            else
                lens_err_set(err, "unknown option \"%s\" (see lensd --help)", argv[optind - 1]);
            rc = -1;
            break;
        }
    }
    if (rc == 0 && optind < argc) {
        lens_err_set(err, "unexpected argument \"%s\"", argv[optind]);
        rc = -1;
    }
    opterr = saved_opterr;
    return rc;
}

/* Adds the model of one --model NAME=PATH_OR_ID. */
static int add_flag_model(srv_config *cfg, const char *arg, const char *device, lens_err *err) {
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg || !eq[1]) {
        lens_err_set(err, "--model: expected NAME=PATH_OR_ID, got \"%s\"", arg);
        return -1;
    }
    srv_model_spec m = {.load = {.processing = -1}};
    m.name = strndup(arg, (size_t)(eq - arg));
    m.source = strdup(eq + 1);
    m.device = strdup(device);
    if (!m.name || !m.source || !m.device) {
        free_model_spec(&m);
        lens_err_set(err, "out of memory");
        return -1;
    }
    if (check_model_name(m.name, "--model", err)) {
        free_model_spec(&m);
        return -1;
    }
    return add_model(cfg, &m, "--model", err);
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Every model directory (one holding tl_config.json) of the bundled models
 * directory, at most 64, in name order, named after its directory, on device. */
static int add_bundled_models(srv_config *cfg, const char *device, lens_err *err) {
    char root[PATH_MAX];
    if (srv_data_dir("models", root, sizeof root)) {
        lens_err_set(err,
                     "no models given and no bundled models found (%s): give --model "
                     "NAME=PATH or a config file with \"models\"",
                     root);
        return -1;
    }
    DIR *dir = opendir(root);
    if (!dir) {
        lens_err_set(err, "bundled models: %s: %s", root, strerror(errno));
        return -1;
    }
    char *names[64];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) && n < (int)(sizeof names / sizeof names[0])) {
        char probe[PATH_MAX];
        struct stat st;
        if (e->d_name[0] == '.' ||
            snprintf(probe, sizeof probe, "%s/%s/tl_config.json", root, e->d_name) >=
                (int)sizeof probe ||
            stat(probe, &st) || !S_ISREG(st.st_mode))
            continue;
        if (!(names[n] = strdup(e->d_name))) break;
        n++;
    }
    closedir(dir);
    qsort(names, (size_t)n, sizeof names[0], by_name);
    int rc = n ? 0 : -1;
    if (!n) lens_err_set(err, "bundled models: %s holds no model directory", root);
    for (int i = 0; i < n; i++) {
        srv_model_spec m = {.load = {.processing = -1}};
        size_t len = strlen(root) + strlen(names[i]) + 2;
        m.name = names[i];
        m.source = malloc(len);
        m.device = strdup(device);
        if (!m.source || !m.device) {
            lens_err_set(err, "out of memory");
            free_model_spec(&m);
            rc = -1;
        } else {
            snprintf(m.source, len, "%s/%s", root, names[i]);
            if (rc == 0) rc = check_model_name(m.name, m.source, err);
            if (rc == 0)
                rc = add_model(cfg, &m, "bundled models", err);
            else
                free_model_spec(&m);
        }
    }
    return rc;
}

static int apply_flags(srv_config *cfg, const flag_vals *f, origins *org, lens_err *err) {
    if (f->host && set_string(&cfg->host, f->host, err)) return -1;
    if (f->port >= 0) cfg->port = f->port;
    if (f->threads >= 0) cfg->http_threads = f->threads;
    if (f->insecure) cfg->insecure = true;
    if (f->web) {
        if (set_string(&cfg->web_dir, f->web, err)) return -1;
        org->web = "--web";
    }
    if (f->tokens_file) {
        if (set_string(&cfg->tokens_file, f->tokens_file, err)) return -1;
        org->tokens_file = "--tokens-file";
    }
    if (f->tls_cert) {
        if (set_string(&cfg->tls_cert, f->tls_cert, err)) return -1;
        org->tls_cert = "--tls-cert";
    }
    if (f->tls_key) {
        if (set_string(&cfg->tls_key, f->tls_key, err)) return -1;
        org->tls_key = "--tls-key";
    }
    for (int i = 0; i < f->n_models; i++)
        if (add_flag_model(cfg, f->models[i], f->device ? f->device : "cpu", err)) return -1;
    return 0;
}

/* The checks that need the merged configuration. file names the config
 * file, to prefix messages about values that came from it. */
static int check_merged(const srv_config *cfg, const origins *org, const char *file,
                        lens_err *err) {
    struct {
        const char *path, *origin;
        bool dir;
    } paths[] = {
        {cfg->web_dir, org->web, true},
        {cfg->tokens_file, org->tokens_file, false},
        {cfg->tls_cert, org->tls_cert, false},
        {cfg->tls_key, org->tls_key, false},
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        if (!paths[i].path || !paths[i].origin) continue;
        if (check_path(paths[i].path, paths[i].dir, paths[i].origin, err)) {
            if (paths[i].origin[0] != '-') lens_err_prefix(err, "%s", file);
            return -1;
        }
    }
    if (!cfg->tls_cert != !cfg->tls_key) {
        bool cert = cfg->tls_cert != NULL;
        const char *given = cert ? org->tls_cert : org->tls_key;
        lens_err_set(err, "%s%s%s is given without a TLS %s: set both %s and %s (or neither)",
                     given[0] == '-' ? "" : file, given[0] == '-' ? "" : ": ", given,
                     cert ? "key" : "certificate", cert ? "--tls-key" : "--tls-cert",
                     cert ? "tls.key" : "tls.cert");
        return -1;
    }
    return 0;
}

/* ---- public --------------------------------------------------------------------- */

int srv_data_dir(const char *name, char *out, size_t cap) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    struct stat st;
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        if (snprintf(out, cap, "%s/../share/lensd/%s", exe, name) < (int)cap && !stat(out, &st) &&
            S_ISDIR(st.st_mode))
            return 0;
    }
    if (snprintf(out, cap, "%s/%s", LENSD_SOURCE_DIR, name) < (int)cap && !stat(out, &st) &&
        S_ISDIR(st.st_mode))
        return 0;
    return -1;
}

int srv_config_load(srv_config *cfg, int argc, char **argv, lens_err *err) {
    memset(cfg, 0, sizeof *cfg);
    flag_vals f;
    origins org = {0};
    int rc = parse_flags(argc, argv, &f, err);
    if (rc == 0) {
        cfg->port = SRV_DEFAULT_PORT;
        cfg->http_threads = SRV_DEFAULT_HTTP_THREADS;
        cfg->limits = (srv_limits){
            .max_body_bytes = SRV_DEFAULT_MAX_BODY_BYTES,
            .max_batch_tokens = SRV_DEFAULT_MAX_BATCH_TOKENS,
            .max_tokens = 0,
            .max_response_bytes = SRV_DEFAULT_MAX_RESPONSE_BYTES,
            .max_kept_cache_bytes = SRV_DEFAULT_MAX_KEPT_CACHE_BYTES,
            .kept_cache_ttl_s = SRV_DEFAULT_KEPT_CACHE_TTL_S,
            .queue_length = SRV_DEFAULT_QUEUE_LENGTH,
            .request_timeout_s = SRV_DEFAULT_REQUEST_TIMEOUT_S,
            .shutdown_timeout_s = SRV_DEFAULT_SHUTDOWN_TIMEOUT_S,
            .read_timeout_s = SRV_DEFAULT_READ_TIMEOUT_S,
            .requests_per_minute = 0,
            .max_patch_tokens = SRV_DEFAULT_MAX_PATCH_TOKENS,
            .max_generate_tokens = SRV_DEFAULT_MAX_GENERATE_TOKENS,
            .max_connections_per_client = SRV_DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            .max_weight_variants = SRV_DEFAULT_MAX_WEIGHT_VARIANTS,
        };
        rc = set_string(&cfg->host, SRV_DEFAULT_HOST, err);
        char web[PATH_MAX]; /* the dashboard; a default, so not checked again below */
        if (rc == 0 && srv_data_dir("web", web, sizeof web) == 0)
            rc = set_string(&cfg->web_dir, web, err);
    }
    if (rc == 0 && f.config) rc = load_file(cfg, f.config, &org, err);
    if (rc == 0) rc = apply_flags(cfg, &f, &org, err);
    if (rc == 0) rc = check_merged(cfg, &org, f.config, err);
    if (rc == 0 && cfg->n_models == 0)
        rc = add_bundled_models(cfg, f.device ? f.device : "cpu", err);
    if (rc == 0) rc = settle_model_roots(cfg, err);
    free(f.models);
    if (rc) srv_config_free(cfg);
    return rc;
}

bool srv_config_loopback(const char *host) {
    if (!host) return false;
    if (strcasecmp(host, "localhost") == 0) return true;
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    char buf[INET6_ADDRSTRLEN + 2];
    size_t n = strlen(host);
    if (n >= 2 && n < sizeof buf && host[0] == '[' && host[n - 1] == ']') {
        memcpy(buf, host + 1, n - 2);
        buf[n - 2] = '\0';
        host = buf;
    }
    struct in6_addr a6;
    if (inet_pton(AF_INET6, host, &a6) != 1) return false;
    if (IN6_IS_ADDR_LOOPBACK(&a6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
}

void srv_config_free(srv_config *cfg) {
    if (!cfg) return;
    free(cfg->host);
    free(cfg->web_dir);
    free(cfg->tokens_file);
    free(cfg->tls_cert);
    free(cfg->tls_key);
    for (int i = 0; i < cfg->n_models; i++)
        free_model_spec(&cfg->models[i]);
    free(cfg->models);
    for (int r = 0; r < cfg->n_model_roots; r++)
        free(cfg->model_roots[r]);
    free(cfg->model_roots);
    memset(cfg, 0, sizeof *cfg);
}
