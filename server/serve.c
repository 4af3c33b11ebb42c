/*
 * serve.c: `lensd serve` — configuration, start-up order and shutdown.
 *
 * Start-up: configuration (refused with the field named), access control
 * (no tokens and a non-loopback address: refused unless --insecure), HTTP
 * listening (the address is the first line on stdout; until the models are
 * loaded /readyz says "starting" and model routes answer 503), the models,
 * one executor each, then ready. SIGINT/SIGTERM: finish queued work, refuse
 * new work, exit 0.
 */
#include "server/serve.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/admin.h"
#include "server/caches.h"
#include "server/cli.h"
#include "server/daemon.h"
#include "server/http.h"
#include "server/models.h"
#include "server/scheduler.h"
#include "server/startup.h"

srv_daemon srv_d;

/* Models that /v1/admin/models may hold at once besides the configured ones
 * (an unloaded model's slot is reused). */
#define ADDED_MODELS_MAX 32

static void free_models(void) {
    for (int i = 0; i < srv_d.n_models; i++) {
        srv_unload_model(&srv_d.models[i]);
        if (srv_d.models[i].owns_name) free(srv_d.models[i].name);
    }
    free(srv_d.models);
}

int srv_serve_main(int argc, char **argv) {
    lens_err err = {0};
    int status = 1;
    if (srv_config_load(&srv_d.cfg, argc, argv, &err)) {
        fprintf(stderr, "lensd serve: %s\n", err.msg);
        return 1;
    }
    const srv_config *cfg = &srv_d.cfg;
    if (!cfg->tokens_file && !srv_config_loopback(cfg->host) && !cfg->insecure) {
        fprintf(stderr,
                "lensd serve: refusing to listen on %s without access tokens: set tokens_file "
                "(or --tokens-file), or pass --insecure to serve everyone who can reach it\n",
                cfg->host);
        goto out;
    }
    if (cfg->n_models == 0) {
        fprintf(stderr, "lensd serve: no models: give --model NAME=PATH or a config file with "
                        "\"models\"\n");
        goto out;
    }
    if (cfg->tokens_file && !(srv_d.auth = srv_auth_load(cfg->tokens_file, &err))) {
        fprintf(stderr, "lensd serve: %s\n", err.msg);
        goto out;
    }
    srv_d.n_models = cfg->n_models;
    srv_d.cap_models = cfg->n_models + ADDED_MODELS_MAX;
    pthread_rwlock_init(&srv_d.models_lock, NULL);
    if (!(srv_d.models = calloc((size_t)srv_d.cap_models, sizeof *srv_d.models))) goto out;
    for (int i = 0; i < cfg->n_models; i++)
        srv_d.models[i].name = cfg->models[i].name;
    int port = srv_http_start(&err);
    if (port < 0) {
        fprintf(stderr, "lensd serve: %s\n", err.msg);
        goto out;
    }
    const char *scheme = cfg->tls_cert ? "https" : "http";
    const bool v6 = strchr(cfg->host, ':') != NULL;
    printf("lensd listening on %s://%s%s%s:%d\n", scheme, v6 ? "[" : "", cfg->host, v6 ? "]" : "",
           port);
    if (srv_d.web_root[0])
        printf("dashboard: %s://%s%s%s:%d/\n", scheme, v6 ? "[" : "", cfg->host, v6 ? "]" : "",
               port);
    fflush(stdout);
    srv_host_log(stderr);
    for (int i = 0; i < cfg->n_models; i++) {
        if (srv_load_model(&srv_d.models[i], &cfg->models[i], &err)) {
            fprintf(stderr, "lensd serve: %s\n", err.msg);
            srv_http_stop();
            goto out;
        }
    }
    if (srv_sched_start(&err)) {
        fprintf(stderr, "lensd serve: %s\n", err.msg);
        srv_http_stop();
        goto out;
    }
    for (int i = 0; i < cfg->n_models; i++)
        srv_d.models[i].present = true;
    srv_d.ready = 1;
    fprintf(stderr, "lensd: ready: %d model%s\n", cfg->n_models, cfg->n_models == 1 ? "" : "s");
    srv_sched_run_until_signal();
    srv_admin_wait();
    srv_http_stop();
    fprintf(stderr, "lensd: stopped\n");
    status = 0;
out:
    srv_caches_clear();
    free_models();
    srv_auth_free(srv_d.auth);
    srv_config_free(&srv_d.cfg);
    return status;
}
