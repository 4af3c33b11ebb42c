/*
 * metrics.c: the counters behind GET /metrics, in Prometheus's text format:
 * requests by route and status, latency histograms by route, batch sizes,
 * and, read when scraped, queue depths and weight bytes per model, and the
 * CPU and BLAS kernel the CPU backend runs.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/caches.h"
#include "server/metrics.h"
#include "server/daemon.h"
#include "server/scheduler.h"
#include "server/startup.h"

/* Room for every route label http.c makes: 4 method labels x 23 routes
 * (GET /healthz ... OTHER (static)); labels never come from raw URLs. */
#define MAX_ROUTES 96
#define N_BUCKETS 12

static const double latency_buckets[N_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                  0.1,   0.25,   0.5,   1.0,  2.5,   10.0};
static const double batch_buckets[N_BUCKETS] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};

typedef struct histogram {
    unsigned long long counts[N_BUCKETS + 1]; /* the last: above every bucket */
    unsigned long long n;
    double sum;
} histogram;

typedef struct route_stats {
    char route[96];
    histogram latency;
    struct {
        unsigned status;
        unsigned long long n;
    } statuses[16];
    int n_statuses;
} route_stats;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static route_stats routes[MAX_ROUTES];
static int n_routes;
static histogram batches;

static void observe(histogram *h, const double *buckets, double value) {
    int i = 0;
    while (i < N_BUCKETS && value > buckets[i])
        i++;
    h->counts[i]++;
    h->n++;
    h->sum += value;
}

void srv_metrics_request(const char *route, unsigned status, double seconds) {
    pthread_mutex_lock(&lock);
    route_stats *r = NULL;
    for (int i = 0; i < n_routes && !r; i++)
        if (strcmp(routes[i].route, route) == 0) r = &routes[i];
    if (!r && n_routes < MAX_ROUTES) {
        r = &routes[n_routes++];
        snprintf(r->route, sizeof r->route, "%s", route);
    }
    if (!r) r = &routes[MAX_ROUTES - 1]; /* not reached while MAX_ROUTES covers the set */
    observe(&r->latency, latency_buckets, seconds);
    int s = 0;
    while (s < r->n_statuses && r->statuses[s].status != status)
        s++;
    if (s == r->n_statuses && s < 16) r->statuses[r->n_statuses++].status = status;
    if (s < 16) r->statuses[s].n++;
    pthread_mutex_unlock(&lock);
}

void srv_metrics_batch(int rows) {
    pthread_mutex_lock(&lock);
    observe(&batches, batch_buckets, rows);
    pthread_mutex_unlock(&lock);
}

/* Prints s as a label value: backslash, double quote and newline escaped. */
static void print_label_value(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') fputc('\\', f);
        if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
}

/* lensd_cpu_info: the CPU and the BLAS kernel the CPU backend runs, as
 * labels of a constant 1 (the Prometheus convention for facts). */
static void print_host_info(FILE *f) {
    const srv_host *h = srv_host_get();
    char features[256], threads[16];
    lk_cpu_feature_list(h->cpu.features, features, sizeof features);
    snprintf(threads, sizeof threads, "%d", h->blas.threads);
    const char *labels[][2] = {
        {"cpu", h->cpu.name},
        {"features", features},
        {"blas", h->blas.library},
        {"blas_version", h->blas.version},
        {"blas_kernel", h->blas.kernel},
        {"blas_kernel_choice", h->kernel_choice},
        {"blas_threads", threads},
        {"self_check", h->self_check},
        {"gemm_kernel", lk_gemm_name(h->gemm)},
    };
    fputs("# HELP lensd_cpu_info The CPU and the BLAS library, version, kernel and threads the "
          "CPU backend runs.\n# TYPE lensd_cpu_info gauge\nlensd_cpu_info{",
          f);
    for (size_t i = 0; i < sizeof labels / sizeof labels[0]; i++) {
        fprintf(f, "%s%s=\"", i ? "," : "", labels[i][0]);
        print_label_value(f, labels[i][1]);
        fputc('"', f);
    }
    fputs("} 1\n", f);
}

/* Prints histogram h as name, labelled route="route" unless route is NULL. */
static void print_histogram(FILE *f, const char *name, const char *route, const histogram *h,
                            const double *buckets) {
    unsigned long long cumulative = 0;
    const char *open = route ? "route=\"" : "", *close = route ? "\"," : "";
    const char *label = route ? route : "";
    for (int i = 0; i <= N_BUCKETS; i++) {
        cumulative += h->counts[i];
        if (i < N_BUCKETS)
            fprintf(f, "%s_bucket{%s%s%sle=\"%g\"} %llu\n", name, open, label, close, buckets[i],
                    cumulative);
        else
            fprintf(f, "%s_bucket{%s%s%sle=\"+Inf\"} %llu\n", name, open, label, close, cumulative);
    }
    if (route)
        fprintf(f, "%s_sum{route=\"%s\"} %g\n%s_count{route=\"%s\"} %llu\n", name, route, h->sum,
                name, route, h->n);
    else
        fprintf(f, "%s_sum %g\n%s_count %llu\n", name, h->sum, name, h->n);
}

char *srv_metrics_text(size_t *len) {
    char *text = NULL;
    FILE *f = open_memstream(&text, len);
    if (!f) return NULL;
    pthread_mutex_lock(&lock);
    fputs("# HELP lensd_requests_total Requests answered, by route and status.\n"
          "# TYPE lensd_requests_total counter\n",
          f);
    for (int i = 0; i < n_routes; i++)
        for (int s = 0; s < routes[i].n_statuses; s++)
            fprintf(f, "lensd_requests_total{route=\"%s\",status=\"%u\"} %llu\n", routes[i].route,
                    routes[i].statuses[s].status, routes[i].statuses[s].n);
    fputs("# HELP lensd_request_seconds Time from the first header to the response, by route.\n"
          "# TYPE lensd_request_seconds histogram\n",
          f);
    for (int i = 0; i < n_routes; i++)
        print_histogram(f, "lensd_request_seconds", routes[i].route, &routes[i].latency,
                        latency_buckets);
    fputs("# HELP lensd_batch_size Prompts per forward pass.\n"
          "# TYPE lensd_batch_size histogram\n",
          f);
    print_histogram(f, "lensd_batch_size", NULL, &batches, batch_buckets);
    pthread_mutex_unlock(&lock);
    fputs("# HELP lensd_queue_depth Requests waiting or running, by model.\n"
          "# TYPE lensd_queue_depth gauge\n",
          f);
    pthread_rwlock_rdlock(&srv_d.models_lock);
    for (int i = 0; i < srv_d.n_models; i++)
        if (srv_d.models[i].present)
            fprintf(f, "lensd_queue_depth{model=\"%s\"} %d\n", srv_d.models[i].name,
                    srv_sched_depth(&srv_d.models[i]));
    fputs("# HELP lensd_weights_bytes Bytes of weights, by model and device.\n"
          "# TYPE lensd_weights_bytes gauge\n",
          f);
    for (int i = 0; i < srv_d.n_models; i++) {
        if (!srv_d.models[i].present) continue;
        const lens_model *m = srv_d.models[i].model;
        lk_device_info dev;
        lk_device_describe(m->device, &dev);
        size_t bytes = m->device_bytes ? m->device_bytes : m->n_weight_floats * sizeof(float);
        fprintf(f, "lensd_weights_bytes{model=\"%s\",device=\"%s\"} %zu\n", srv_d.models[i].name,
                dev.name, bytes);
    }
    pthread_rwlock_unlock(&srv_d.models_lock);
    fprintf(f,
            "# HELP lensd_kept_cache_bytes Bytes of caches kept for later queries.\n"
            "# TYPE lensd_kept_cache_bytes gauge\nlensd_kept_cache_bytes %zu\n",
            srv_caches_bytes());
    print_host_info(f);
    fclose(f);
    return text;
}
