/*
 * lk_cpu.c: the CPU backend of kernels/lk.h.
 *
 * Matrix products go to OpenBLAS's cblas_sgemm; everything else is a plain C
 * loop parallelised over rows with OpenMP. Reductions accumulate in double
 * where TransformerLens's float32 result would otherwise depend on the
 * summation order more than on the data (LayerNorm means and variances,
 * softmax denominators). Not here: fusion, intrinsics, low precision.
 */
#include "kernels/lk.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <omp.h>

void lk_set_threads(int n_threads) {
    if (n_threads <= 0) n_threads = omp_get_num_procs();
    omp_set_num_threads(n_threads);
    openblas_set_num_threads(n_threads);
}

void lk_matmul(float *out, int ldo, const float *a, int lda, const float *b, int ldb,
               const float *bias, int M, int K, int N, bool accumulate) {
    // out is (M,N), a is (M,K), b is (K,N), bias is (N)
    if (M == 0 || N == 0) return;
    float beta = accumulate ? 1.0f : 0.0f;
    if (K > 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, lda, b, ldb, beta,
                    out, ldo);
    } else if (!accumulate) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                out[(size_t)i * ldo + j] = 0.0f;
    }
    if (bias) {
#pragma omp parallel for if ((size_t)M * N > 65536)
        for (int i = 0; i < M; i++) {
            float *row = out + (size_t)i * ldo;
            for (int j = 0; j < N; j++)
                row[j] += bias[j];
        }
    }
}

void lk_matmul_batched(float *out, int ldo, size_t out_step, const float *a, int lda, size_t a_step,
                       const float *b, int ldb, size_t b_step, bool b_transposed, int M, int K,
                       int N, int count) {
    if (M == 0 || N == 0 || count == 0) return;
    const enum CBLAS_TRANSPOSE trans_b = b_transposed ? CblasTrans : CblasNoTrans;
    // Each product is small (one attention head of one prompt), so the
    // parallelism is across products with single-threaded BLAS inside.
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < count; i++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b, M, N, K, 1.0f, a + i * a_step, lda,
                    b + i * b_step, ldb, 0.0f, out + i * out_step, ldo);
    }
    openblas_set_num_threads(blas_threads);
}

void lk_layernorm_pre(float *normalized, float *scale, const float *inp, int N, int C, float eps) {
    // inp, normalized are (N,C); scale is (N)
#pragma omp parallel for if ((size_t)N * C > 16384)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        float *y = normalized + (size_t)i * C;
        double sum = 0.0;
        for (int c = 0; c < C; c++)
            sum += x[c];
        float mean = (float)(sum / C);
        double sq = 0.0;
        for (int c = 0; c < C; c++) {
            float centred = x[c] - mean;
            sq += (double)centred * centred;
        }
        float s = sqrtf((float)(sq / C) + eps);
        scale[i] = s;
        for (int c = 0; c < C; c++)
            y[c] = (x[c] - mean) / s;
    }
}

void lk_affine(float *out, const float *inp, const float *w, const float *b, int N, int C) {
#pragma omp parallel for if ((size_t)N * C > 16384)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        float *y = out + (size_t)i * C;
        for (int c = 0; c < C; c++)
            y[c] = x[c] * w[c] + (b ? b[c] : 0.0f);
    }
}

void lk_add(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

void lk_relu(float *out, const float *inp, size_t n) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++)
        out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

void lk_gelu(float *out, const float *inp, size_t n) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2));
    }
}

/* exp(x) in plain arithmetic that the compiler vectorises (glibc's expf is
 * scalar): x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact
 * n ln2), exp(r) by its Taylor series to r^7/5040 (< 1.3e-7 relative), and
 * 2^n built in the exponent bits. x is clamped to [-87, 88], where the
 * result stays a normal float. */
static inline float exp_poly(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    /* round x / ln2 to the nearest integer by the 1.5 * 2^23 trick */
    float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145752f - n * 1.42860677e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale = {.i = ((int32_t)n + 127) << 23};
    return p * scale.f;
}

void lk_gelu_new(float *out, const float *inp, size_t n) {
    /* 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)): the same function without
     * tanh's cancellation near -1, and vectorisable through exp_poly. */
    const float two_k = 2.0f * sqrtf(2.0f / (float)M_PI);
#pragma omp parallel for simd if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = x / (1.0f + exp_poly(-two_k * (x + 0.044715f * x * x * x)));
    }
}

void lk_gelu_fast(float *out, const float *inp, size_t n) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(x * 0.7978845608f * (1.0f + 0.044715f * x * x)));
    }
}

void lk_silu(float *out, const float *inp, size_t n) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = x / (1.0f + expf(-x));
    }
}

/* Softmax of one row; see lk_softmax_rows. */
static void softmax_row(float *y, const float *x, int C) {
    float maxval = -INFINITY;
    for (int c = 0; c < C; c++)
        maxval = x[c] > maxval ? x[c] : maxval;
    if (maxval == -INFINITY) {
        for (int c = 0; c < C; c++)
            y[c] = 0.0f;
        return;
    }
    // maxval is subtracted only for numerical stability
    double sum = 0.0;
    for (int c = 0; c < C; c++) {
        y[c] = expf(x[c] - maxval);
        sum += y[c];
    }
    float inv = (float)(1.0 / sum);
    for (int c = 0; c < C; c++)
        y[c] *= inv;
}

void lk_softmax_rows(float *out, const float *inp, int N, int C) {
#pragma omp parallel for if ((size_t)N * C > 16384)
    for (int i = 0; i < N; i++)
        softmax_row(out + (size_t)i * C, inp + (size_t)i * C, C);
}

void lk_solu(float *out, const float *inp, int N, int C) {
#pragma omp parallel for if ((size_t)N * C > 16384)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        float *y = out + (size_t)i * C;
        float maxval = -INFINITY;
        for (int c = 0; c < C; c++)
            maxval = x[c] > maxval ? x[c] : maxval;
        double sum = 0.0;
        for (int c = 0; c < C; c++)
            sum += expf(x[c] - maxval);
        for (int c = 0; c < C; c++)
            y[c] = x[c] * (float)(expf(x[c] - maxval) / sum);
    }
}
