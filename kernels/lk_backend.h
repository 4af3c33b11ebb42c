/*
 * lk_backend.h: what a backend of kernels/lk.h provides — a table with one
 * entry per public call, taking the device first. kernels/lk.c dispatches the
 * public calls through it; only backends include this header.
 */
#ifndef LENS_LK_BACKEND_H
#define LENS_LK_BACKEND_H

#include "kernels/lk.h"

typedef struct lk_ops {
    void (*close)(lk_device *dev);
    void (*describe)(lk_device *dev, lk_device_info *info);
    void *(*alloc)(lk_device *dev, size_t bytes);
    void (*free)(lk_device *dev, void *ptr);
    void *(*host_alloc)(lk_device *dev, size_t bytes);
    void (*host_free)(lk_device *dev, void *ptr);
    void (*upload)(lk_device *dev, void *dst, const void *src, size_t bytes);
    void (*download)(lk_device *dev, void *dst, const void *src, size_t bytes);
    void (*copy)(lk_device *dev, void *dst, const void *src, size_t bytes);
    int (*finish)(lk_device *dev, char *why, size_t why_len);
    bool (*record_begin)(lk_device *dev);
    lk_graph *(*record_end)(lk_device *dev);
    void (*graph_launch)(lk_device *dev, lk_graph *graph);
    void (*graph_free)(lk_device *dev, lk_graph *graph);

    void (*matmul)(lk_device *dev, float *out, int ldo, const float *a, int lda, const float *b,
                   int ldb, const float *bias, int M, int K, int N, bool accumulate);
    void (*matmul_batched)(lk_device *dev, float *out, int ldo, size_t out_step, const float *a,
                           int lda, size_t a_step, const float *b, int ldb, size_t b_step,
                           bool b_transposed, int M, int K, int N, int count);
    void (*layernorm_pre)(lk_device *dev, float *normalized, float *scale, const float *inp, int N,
                          int C, float eps);
    void (*rmsnorm_pre)(lk_device *dev, float *normalized, float *scale, const float *inp, int N,
                        int C, float eps);
    void (*affine)(lk_device *dev, float *out, const float *inp, const float *w, const float *b,
                   int N, int C);
    void (*add)(lk_device *dev, float *out, const float *a, const float *b, size_t n);
    void (*activation)(lk_device *dev, lk_act act, float *out, const float *inp, size_t n);
    void (*gated_activation)(lk_device *dev, lk_act act, float *out, const float *gate,
                             const float *linear, size_t n);
    void (*scale)(lk_device *dev, float *x, size_t n, float factor);
    void (*softcap)(lk_device *dev, float *x, size_t n, float cap);
    void (*rotary)(lk_device *dev, float *x, int N, int H, int dh, int rotary_dim, bool interleaved,
                   const float *cos, const float *sin, const int32_t *positions);
    void (*solu)(lk_device *dev, float *out, const float *inp, int N, int C);
    void (*softmax_rows)(lk_device *dev, float *out, const float *inp, int N, int C);
    void (*embed)(lk_device *dev, float *tok_out, float *pos_out, const float *W_E,
                  const float *W_pos, const int32_t *tokens, const uint8_t *attn_mask, int B, int T,
                  int d);
    void (*mask_scores)(lk_device *dev, float *scores, int B, int H, int T, float attn_scale,
                        const lk_score_mask *mask);
    void (*repeat_rows)(lk_device *dev, float *out, const float *inp, int N, int R, int C);
    void (*sum_groups)(lk_device *dev, float *out, const float *inp, const float *bias, int N,
                       int G, int C);
    void (*matmul_columns)(lk_device *dev, float *out, const float *x, const float *W,
                           const float *bias, const int32_t *ids, int B, int P, int n, int C,
                           int V);
    void (*splice_prefix)(lk_device *dev, float *out, const float *prefix, const float *computed,
                          lk_query_rows q, int B, int P, int T, int C);
    void (*gather_rows)(lk_device *dev, float *out, const float *inp, const int32_t *rows, int n,
                        int C);
} lk_ops;

/* The common head of every backend's device struct. */
struct lk_device {
    const lk_ops *ops;
    bool host_memory;
};

/* The CPU backend's device (kernels/cpu/lk_cpu.c). */
lk_device *lk_cpu_device(void);

/* Opens GPU number ordinal; returns NULL with the reason in why. Defined by
 * kernels/cuda/lk_cuda.cu, a module of its own that lk.c loads with dlopen
 * and finds by this name. */
typedef lk_device *lk_cuda_open_fn(int ordinal, char *why, size_t why_len);
lk_cuda_open_fn lk_cuda_open;

#endif
