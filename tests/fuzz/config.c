/*
 * config.c: libFuzzer harness for the configuration file of `lensd serve`
 * (srv_config_load with --config FILE, server/config.h).
 *
 * Input: the bytes of a config file, written as lensd.json into a scratch
 * directory that also holds what a config names, so that relative paths can
 * resolve: a model directory "model" (with an empty tl_config.json), a
 * "web" directory and the files "tokens.json", "cert.pem" and "key.pem".
 * It is loaded as `lensd serve --config <scratch>/lensd.json`.
 *
 * Contract checked: a file that is refused leaves a message and cfg empty.
 * A file that loads gives what config.h promises: a host, a port in
 * [0, 65535], 1 to 1024 HTTP threads, at least one model, each with a URL-safe
 * name unique among them, a source and a device "cpu", "cuda" or "cuda:N";
 * the TLS certificate and key both or neither; model roots that are
 * absolute; limits in their documented ranges; and srv_config_free leaves it
 * zeroed and may be called twice. Anything else aborts.
 *
 * The file is also parsed by the part of srv_config_load that is static
 * (apply_file); an in-memory entry point would save the write, not reach
 * more code.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "server/config.h"
#include "tests/fuzz/fuzz.h"

/* The scratch directory with the files a config may name. */
static const char *fixtures(void) {
    static const char *dir;
    if (dir) return dir;
    const char *d = fuzz_scratch_dir();
    char path[4200];
    snprintf(path, sizeof path, "%s/model", d);
    if (mkdir(path, 0700) != 0) fuzz_fail("mkdir %s failed", path);
    snprintf(path, sizeof path, "%s/web", d);
    if (mkdir(path, 0700) != 0) fuzz_fail("mkdir %s failed", path);
    fuzz_write_file(d, "model/tl_config.json", "{}", 2, path, sizeof path);
    fuzz_write_file(d, "tokens.json", "[]", 2, path, sizeof path);
    fuzz_write_file(d, "cert.pem", "", 0, path, sizeof path);
    fuzz_write_file(d, "key.pem", "", 0, path, sizeof path);
    dir = d;
    return dir;
}

static int url_safe(const char *name) {
    size_t n = strlen(name);
    return n >= 1 && n <= 128 &&
           strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n &&
           !strchr("._-", name[0]);
}

static int valid_device(const char *d) {
    if (strcmp(d, "cpu") == 0 || strcmp(d, "cuda") == 0) return 1;
    size_t n = strncmp(d, "cuda:", 5) == 0 ? strlen(d + 5) : 0;
    return n >= 1 && n <= 4 && strspn(d + 5, "0123456789") == n;
}

static void check_loaded(const srv_config *cfg) {
    if (!cfg->host || cfg->port < 0 || cfg->port > 65535)
        fuzz_fail("host %s, port %d", cfg->host ? cfg->host : "(none)", cfg->port);
    if (cfg->http_threads < 1 || cfg->http_threads > 1024)
        fuzz_fail("%d HTTP threads", cfg->http_threads);
    if (cfg->n_models < 1 || !cfg->models) fuzz_fail("%d models", cfg->n_models);
    for (int i = 0; i < cfg->n_models; i++) {
        const srv_model_spec *m = &cfg->models[i];
        if (!m->name || !url_safe(m->name)) fuzz_fail("model %d has no URL-safe name", i);
        if (!m->source || !m->source[0]) fuzz_fail("model %s has no source", m->name);
        if (!m->device || !valid_device(m->device))
            fuzz_fail("model %s has device %s", m->name, m->device ? m->device : "(none)");
        for (int j = 0; j < i; j++)
            if (strcmp(cfg->models[j].name, m->name) == 0)
                fuzz_fail("two models are called %s", m->name);
    }
    if (!cfg->tls_cert != !cfg->tls_key) fuzz_fail("a TLS certificate or key alone");
    for (int r = 0; r < cfg->n_model_roots; r++)
        if (!cfg->model_roots[r] || cfg->model_roots[r][0] != '/')
            fuzz_fail("model root %d is not an absolute path", r);
    const srv_limits *l = &cfg->limits;
    if (l->max_body_bytes < 1 || l->max_batch_tokens < 1 || l->max_tokens < 0 ||
        l->max_response_bytes < 1 || !(l->kept_cache_ttl_s > 0) || l->queue_length < 1 ||
        !(l->request_timeout_s > 0) || !(l->shutdown_timeout_s > 0) || l->requests_per_minute < 0 ||
        l->max_patch_tokens < 1 || l->max_generate_tokens < 1 ||
        l->max_connections_per_client < 1 || l->max_connections_per_client > SRV_MAX_CONNECTIONS ||
        l->max_weight_variants < 0 || l->max_weight_variants > SRV_MAX_WEIGHT_VARIANTS)
        fuzz_fail("a limit out of its range");
    srv_config_loopback(cfg->host);
    for (int i = 0; i < cfg->n_models; i++)
        srv_config_in_model_root(cfg, cfg->models[i].source);
}

static int is_zero(const srv_config *cfg) {
    static const srv_config zero;
    return memcmp(cfg, &zero, sizeof zero) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[4200];
    fuzz_write_file(fixtures(), "lensd.json", data, size, path, sizeof path);
    char *argv[] = {"serve", "--config", path, NULL};
    srv_config cfg;
    lens_err err = {0};
    if (srv_config_load(&cfg, 3, argv, &err) != 0) {
        if (!err.msg[0]) fuzz_fail("refused without a message");
        if (!is_zero(&cfg)) fuzz_fail("refused, but cfg is not left empty: %s", err.msg);
        return 0;
    }
    check_loaded(&cfg);
    srv_config_free(&cfg);
    if (!is_zero(&cfg)) fuzz_fail("srv_config_free does not zero cfg");
    srv_config_free(&cfg);
    return 0;
}
