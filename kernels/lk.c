/*
 * lk.c: the public calls of kernels/lk.h, dispatched to the device's backend,
 * and lk_open, which knows the backends this build has: the CPU's, linked
 * in, and CUDA's, a module loaded on the first request for a GPU.
 */
#include "kernels/lk_backend.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef LENS_CUDA_MODULE
static pthread_once_t cuda_module_once = PTHREAD_ONCE_INIT;
static lk_cuda_open_fn *cuda_module_open;
static char cuda_module_error[512];

static void load_cuda_module(void) {
    /* found through the executable's run path or LD_LIBRARY_PATH; kept
     * loaded for the life of the process */
    void *module = dlopen(LENS_CUDA_MODULE, RTLD_NOW | RTLD_LOCAL);
    if (module) *(void **)&cuda_module_open = dlsym(module, "lk_cuda_open");
    if (!cuda_module_open)
        snprintf(cuda_module_error, sizeof cuda_module_error,
                 "the CUDA backend could not be loaded: %s", dlerror());
}

/* The CUDA backend's lk_cuda_open, loading its module on the first call;
 * NULL with dlopen's reason in why when it cannot be loaded (the module or
 * the CUDA libraries it needs are not installed). */
static lk_cuda_open_fn *cuda_module(char *why, size_t why_len) {
    pthread_once(&cuda_module_once, load_cuda_module);
    if (!cuda_module_open) snprintf(why, why_len, "%s", cuda_module_error);
    return cuda_module_open;
}
#endif

lk_device *lk_open(const char *spec, char *why, size_t why_len) {
    if (strcmp(spec, "cpu") == 0) return lk_cpu_device();
    int ordinal = 0;
    if (strcmp(spec, "cuda") != 0) {
        char *end = NULL;
        if (strncmp(spec, "cuda:", 5) != 0 || spec[5] < '0' || spec[5] > '9' ||
            (ordinal = (int)strtol(spec + 5, &end, 10), *end != '\0')) {
            snprintf(why, why_len, "unknown device \"%s\" (expected cpu, cuda or cuda:N)", spec);
            return NULL;
        }
    }
#ifdef LENS_CUDA_MODULE
    lk_cuda_open_fn *cuda_open = cuda_module(why, why_len);
    return cuda_open ? cuda_open(ordinal, why, why_len) : NULL;
#else
    (void)ordinal;
    snprintf(why, why_len, "device %s: this lensd was built without CUDA (meson -Dcuda=enabled)",
             spec);
    return NULL;
#endif
}

void lk_close(lk_device *dev) {
    if (dev) dev->ops->close(dev);
}

lk_device *lk_cpu(void) {
    return lk_cpu_device();
}

void lk_device_describe(lk_device *dev, lk_device_info *info) {
    memset(info, 0, sizeof *info);
    dev->ops->describe(dev, info);
    info->host_memory = dev->host_memory;
}

bool lk_host_memory(const lk_device *dev) {
    return dev->host_memory;
}

void *lk_alloc(lk_device *dev, size_t bytes) {
    return dev->ops->alloc(dev, bytes);
}

void lk_free(lk_device *dev, void *ptr) {
    if (ptr) dev->ops->free(dev, ptr);
}

void *lk_host_alloc(lk_device *dev, size_t bytes) {
    return dev->ops->host_alloc(dev, bytes);
}

void lk_host_free(lk_device *dev, void *ptr) {
    if (ptr) dev->ops->host_free(dev, ptr);
}

void lk_upload(lk_device *dev, void *dst, const void *host_src, size_t bytes) {
    if (bytes) dev->ops->upload(dev, dst, host_src, bytes);
}

void lk_download(lk_device *dev, void *host_dst, const void *src, size_t bytes) {
    if (bytes) dev->ops->download(dev, host_dst, src, bytes);
}

void lk_copy(lk_device *dev, void *dst, const void *src, size_t bytes) {
    if (bytes) dev->ops->copy(dev, dst, src, bytes);
}

int lk_finish(lk_device *dev, char *why, size_t why_len) {
    return dev->ops->finish(dev, why, why_len);
}

bool lk_record_begin(lk_device *dev) {
    return dev->ops->record_begin(dev);
}

lk_graph *lk_record_end(lk_device *dev) {
    return dev->ops->record_end(dev);
}

void lk_graph_launch(lk_device *dev, lk_graph *graph) {
    dev->ops->graph_launch(dev, graph);
}

void lk_graph_free(lk_device *dev, lk_graph *graph) {
    if (graph) dev->ops->graph_free(dev, graph);
}

void lk_matmul(lk_device *dev, float *out, int ldo, const float *a, int lda, const float *b,
               int ldb, const float *bias, int M, int K, int N, bool accumulate) {
    if (M > 0 && N > 0) dev->ops->matmul(dev, out, ldo, a, lda, b, ldb, bias, M, K, N, accumulate);
}

void lk_matmul_batched(lk_device *dev, float *out, int ldo, size_t out_step, const float *a,
                       int lda, size_t a_step, const float *b, int ldb, size_t b_step,
                       bool b_transposed, int M, int K, int N, int count) {
    if (M > 0 && N > 0 && count > 0)
        dev->ops->matmul_batched(dev, out, ldo, out_step, a, lda, a_step, b, ldb, b_step,
                                 b_transposed, M, K, N, count);
}

void lk_layernorm_pre(lk_device *dev, float *normalized, float *scale, const float *inp, int N,
                      int C, float eps) {
    if (N > 0 && C > 0) dev->ops->layernorm_pre(dev, normalized, scale, inp, N, C, eps);
}

void lk_rmsnorm_pre(lk_device *dev, float *normalized, float *scale, const float *inp, int N, int C,
                    float eps) {
    if (N > 0 && C > 0) dev->ops->rmsnorm_pre(dev, normalized, scale, inp, N, C, eps);
}

void lk_affine(lk_device *dev, float *out, const float *inp, const float *w, const float *b, int N,
               int C) {
    if (N > 0 && C > 0) dev->ops->affine(dev, out, inp, w, b, N, C);
}

void lk_add(lk_device *dev, float *out, const float *a, const float *b, size_t n) {
    if (n) dev->ops->add(dev, out, a, b, n);
}

void lk_activation(lk_device *dev, lk_act act, float *out, const float *inp, size_t n) {
    if (n) dev->ops->activation(dev, act, out, inp, n);
}

void lk_gated_activation(lk_device *dev, lk_act act, float *out, const float *gate,
                         const float *linear, size_t n) {
    if (n) dev->ops->gated_activation(dev, act, out, gate, linear, n);
}

void lk_scale(lk_device *dev, float *x, size_t n, float factor) {
    if (n) dev->ops->scale(dev, x, n, factor);
}

void lk_softcap(lk_device *dev, float *x, size_t n, float cap) {
    if (n && cap > 0) dev->ops->softcap(dev, x, n, cap);
}

void lk_rotary(lk_device *dev, float *x, int N, int H, int dh, int rotary_dim, bool interleaved,
               const float *cos, const float *sin, const int32_t *positions) {
    /* both backends rotate pairs inside a head: an odd or oversized width does nothing */
    if (N > 0 && H > 0 && rotary_dim >= 2 && rotary_dim % 2 == 0 && rotary_dim <= dh)
        dev->ops->rotary(dev, x, N, H, dh, rotary_dim, interleaved, cos, sin, positions);
}

void lk_solu(lk_device *dev, float *out, const float *inp, int N, int C) {
    if (N > 0 && C > 0) dev->ops->solu(dev, out, inp, N, C);
}

void lk_softmax_rows(lk_device *dev, float *out, const float *inp, int N, int C) {
    if (N > 0 && C > 0) dev->ops->softmax_rows(dev, out, inp, N, C);
}

void lk_embed(lk_device *dev, float *tok_out, float *pos_out, const float *W_E, const float *W_pos,
              const int32_t *tokens, const uint8_t *attn_mask, int B, int T, int d) {
    if (B > 0 && T > 0 && d > 0)
        dev->ops->embed(dev, tok_out, pos_out, W_E, W_pos, tokens, attn_mask, B, T, d);
}

void lk_mask_scores(lk_device *dev, float *scores, int B, int H, int T, float attn_scale,
                    const lk_score_mask *mask) {
    if (B > 0 && H > 0 && T > 0) dev->ops->mask_scores(dev, scores, B, H, T, attn_scale, mask);
}

void lk_repeat_rows(lk_device *dev, float *out, const float *inp, int N, int R, int C) {
    if (N > 0 && R > 0 && C > 0) dev->ops->repeat_rows(dev, out, inp, N, R, C);
}

void lk_sum_groups(lk_device *dev, float *out, const float *inp, const float *bias, int N, int G,
                   int C) {
    if (N > 0 && C > 0) dev->ops->sum_groups(dev, out, inp, bias, N, G, C);
}

void lk_matmul_columns(lk_device *dev, float *out, const float *x, const float *W,
                       const float *bias, const int32_t *ids, int B, int P, int n, int C, int V) {
    if (B > 0 && P > 0 && n > 0) dev->ops->matmul_columns(dev, out, x, W, bias, ids, B, P, n, C, V);
}

void lk_splice_prefix(lk_device *dev, float *out, const float *prefix, const float *computed,
                      lk_query_rows q, int B, int P, int T, int C) {
    if (B > 0 && T > 0 && C > 0) dev->ops->splice_prefix(dev, out, prefix, computed, q, B, P, T, C);
}

void lk_gather_rows(lk_device *dev, float *out, const float *inp, const int32_t *rows, int n,
                    int C) {
    if (n > 0 && C > 0) dev->ops->gather_rows(dev, out, inp, rows, n, C);
}
