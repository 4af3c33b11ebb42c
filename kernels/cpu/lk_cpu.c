/*
 * lk_cpu.c: the CPU backend of kernels/lk.h.
 *
 * Matrix products go to lensd's own kernels (lk_cpu_gemm.c) up to a few
 * hundred rows and to OpenBLAS's cblas_sgemm above; everything else is a
 * plain C loop parallelised over rows with OpenMP. Reductions accumulate in
 * double where TransformerLens's float32 result would otherwise depend on the
 * summation order more than on the data (LayerNorm means and variances,
 * softmax denominators). Not here: fusion, intrinsics, low precision.
 *
 * The device is the host: memory is malloc'd, transfers are memcpy, every
 * operation has finished when it returns, and nothing can be recorded.
 */
#include "kernels/lk_backend.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include <sys/mman.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

void lk_set_threads(int n_threads) {
    if (n_threads <= 0) n_threads = omp_get_num_procs();
    omp_set_num_threads(n_threads);
    openblas_set_num_threads(n_threads);
}

#define HUGE_PAGE ((size_t)2 << 20)

void *lk_host_buffer(size_t bytes) {
    if (bytes < HUGE_PAGE) return aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    const size_t rounded = (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    void *p = aligned_alloc(HUGE_PAGE, rounded);
    /* advice only: where the kernel has no huge pages, 4 KiB pages serve */
    if (p) (void)madvise(p, rounded, MADV_HUGEPAGE);
    return p;
}

/* lk_host_copy: below STREAM_MIN bytes a memcpy; from THREADED_COPY_MIN
 * bytes on, the threads take pieces of COPY_PIECE bytes. */
#define STREAM_MIN ((size_t)64 << 10)
#define THREADED_COPY_MIN ((size_t)1 << 20)
#define COPY_PIECE ((size_t)256 << 10)

/* Copies bytes with 16-byte streaming stores, the head up to dst's first
 * 64-byte line and the tail after its last whole line by memcpy. */
static void stream_copy(char *dst, const char *src, size_t bytes) {
#if defined(__x86_64__)
    size_t head = (64 - ((uintptr_t)dst & 63)) & 63;
    if (head > bytes) head = bytes;
    memcpy(dst, src, head);
    size_t lines = (bytes - head) / 64;
    char *d = dst + head;
    const char *s = src + head;
    for (size_t i = 0; i < lines; i++, d += 64, s += 64) {
        _mm_stream_si128((__m128i *)d, _mm_loadu_si128((const __m128i *)s));
        _mm_stream_si128((__m128i *)(d + 16), _mm_loadu_si128((const __m128i *)(s + 16)));
        _mm_stream_si128((__m128i *)(d + 32), _mm_loadu_si128((const __m128i *)(s + 32)));
        _mm_stream_si128((__m128i *)(d + 48), _mm_loadu_si128((const __m128i *)(s + 48)));
    }
    _mm_sfence();
    memcpy(d, s, bytes - head - lines * 64);
#else
    memcpy(dst, src, bytes);
#endif
}

void lk_host_copy(void *dst, const void *src, size_t bytes) {
    if (bytes < STREAM_MIN) {
        memcpy(dst, src, bytes);
        return;
    }
    const size_t pieces = (bytes + COPY_PIECE - 1) / COPY_PIECE;
#pragma omp parallel for schedule(static) if (bytes >= THREADED_COPY_MIN && !omp_in_parallel())
    for (size_t i = 0; i < pieces; i++) {
        const size_t from = i * COPY_PIECE;
        stream_copy((char *)dst + from, (const char *)src + from,
                    bytes - from < COPY_PIECE ? bytes - from : COPY_PIECE);
    }
}

static void cpu_matmul(lk_device *dev, float *out, int ldo, const float *a, int lda, const float *b,
                       int ldb, const float *bias, int M, int K, int N, bool accumulate) {
    // out is (M,N), a is (M,K), b is (K,N), bias is (N)
    if (M == 0 || N == 0) return;
    const lk_gemm_kernel own = lk_gemm_chosen();
    if (K > 0 && M <= lk_gemm_max_rows(own)) {
        lk_gemm_matmul(own, out, ldo, a, lda, b, ldb, false, bias, M, K, N, accumulate);
        return;
    }
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

static void cpu_matmul_batched(lk_device *dev, float *out, int ldo, size_t out_step, const float *a,
                               int lda, size_t a_step, const float *b, int ldb, size_t b_step,
                               bool b_transposed, int M, int K, int N, int count) {
    if (M == 0 || N == 0 || count == 0) return;
    const lk_gemm_kernel own = lk_gemm_chosen();
    if (K > 0 && M <= lk_gemm_max_rows(own)) {
        // across the products when there are enough of them to share out evenly; else one after
        // another, each threaded over its columns (a head of a prompt at a time, as the
        // forward of a model without grouped heads asks)
        const bool across =
            count >= 4 * omp_get_max_threads() && (size_t)M * N * K * count >= ((size_t)4 << 20);
#pragma omp parallel for schedule(dynamic) if (across)
        for (int i = 0; i < count; i++)
            lk_gemm_matmul(own, out + i * out_step, ldo, a + i * a_step, lda, b + i * b_step, ldb,
                           b_transposed, NULL, M, K, N, false);
        return;
    }
    const enum CBLAS_TRANSPOSE trans_b = b_transposed ? CblasTrans : CblasNoTrans;
    // Each product is small (one attention head of one prompt), so the
    // parallelism is across products with single-threaded BLAS inside.
    // OpenBLAS's OpenMP build sets OpenMP's thread count with its own, so
    // the loop's threads are read first. Below about 4M multiply-adds in all
    // (12 heads of 16 tokens, even 8 prompts of them) waking a second thread
    // costs more than it saves.
    const int blas_threads = openblas_get_num_threads();
    const int loop_threads =
        (size_t)M * N * K * count >= ((size_t)4 << 20) ? omp_get_max_threads() : 1;
    openblas_set_num_threads(1);
#pragma omp parallel for schedule(dynamic) num_threads(loop_threads)
    for (int i = 0; i < count; i++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b, M, N, K, 1.0f, a + i * a_step, lda,
                    b + i * b_step, ldb, 0.0f, out + i * out_step, ldo);
    }
    openblas_set_num_threads(blas_threads);
}

static void cpu_layernorm_pre(lk_device *dev, float *normalized, float *scale, const float *inp,
                              int N, int C, float eps) {
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

static void cpu_rmsnorm_pre(lk_device *dev, float *normalized, float *scale, const float *inp,
                            int N, int C, float eps) {
    // inp, normalized are (N,C); scale is (N)
#pragma omp parallel for if ((size_t)N * C > 16384)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        float *y = normalized + (size_t)i * C;
        double sq = 0.0;
        for (int c = 0; c < C; c++)
            sq += (double)x[c] * x[c];
        const float s = sqrtf((float)(sq / C) + eps);
        scale[i] = s;
        for (int c = 0; c < C; c++)
            y[c] = x[c] / s;
    }
}

static void cpu_affine(lk_device *dev, float *out, const float *inp, const float *w, const float *b,
                       int N, int C) {
#pragma omp parallel for if ((size_t)N * C > 16384)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        float *y = out + (size_t)i * C;
        for (int c = 0; c < C; c++)
            y[c] = x[c] * w[c] + (b ? b[c] : 0.0f);
    }
}

static void cpu_add(lk_device *dev, float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

/* Clones of a function for AVX-512 and AVX2 beside the baseline build,
 * chosen at load by the CPU's features (GCC's target_clones; an "arch="
 * clone would be chosen by the CPU's model instead, and missed by every
 * other model with the same instructions): for the loops the compiler
 * vectorises, which the baseline build does only 4 lanes wide. */
#if defined(__x86_64__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* exp(x) in plain arithmetic that the compiler vectorises (glibc's expf is
 * scalar): x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact
 * n ln2), exp(r) by its Taylor series to r^7/5040 (< 1.3e-7 relative), and
 * 2^n applied as 2^(n/2) 2^(n - n/2), two factors built in the exponent bits
 * that are normal floats for every n in [-150, 128]: results round to
 * subnormals below exp(-87.3) and overflow to inf above exp(88.7) as expf's
 * do. x is clamped to [-104, 89], past which those are the results anyway;
 * below -104 (and at -inf) the result is 0, as a masked score's weight must
 * be. */
static inline __attribute__((always_inline)) float exp_poly(float x) {
    /* NaN (an intervention's inf - inf, say) gives NaN, as torch's exp, and
     * takes the underflow path meanwhile: converting it to an integer and
     * shifting that would be undefined behaviour */
    const bool not_a_number = x != x, underflow = x < -104.0f;
    x = underflow || not_a_number ? -104.0f : (x > 89.0f ? 89.0f : x);
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
    const int32_t n1 = (int32_t)n / 2, n2 = (int32_t)n - n1;
    union {
        int32_t i;
        float f;
    } scale1 = {.i = (n1 + 127) << 23}, scale2 = {.i = (n2 + 127) << 23};
    return not_a_number ? NAN : underflow ? 0.0f : p * scale1.f * scale2.f;
}

/* erf(x) by Abramowitz and Stegun 7.1.26 (absolute error < 1.5e-7), through
 * exp_poly so that it vectorises: the formula torch's vectorised erf uses
 * for GELU on the CPU. */
static inline __attribute__((always_inline)) float erf_poly(float x) {
    const float t = 1.0f / (1.0f + 0.3275911f * fabsf(x));
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    return copysignf(1.0f - p * t * exp_poly(-x * x), x);
}

/* The activations, each on one block of n entries (out may alias inp). */
typedef void activation_block(float *out, const float *inp, size_t n);

VECTOR_CLONES static void relu(float *out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++)
        out[i] = inp[i] < 0.0f ? 0.0f : inp[i]; /* NaN stays NaN, as torch.relu */
}

VECTOR_CLONES static void gelu(float *out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erf_poly(x * (float)M_SQRT1_2));
    }
}

VECTOR_CLONES static void gelu_new(float *out, const float *inp, size_t n) {
    /* 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)): the same function without
     * tanh's cancellation near -1, and vectorisable through exp_poly. */
    const float two_k = 2.0f * sqrtf(2.0f / (float)M_PI);
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = x / (1.0f + exp_poly(-two_k * (x + 0.044715f * x * x * x)));
    }
}

static void gelu_fast(float *out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(x * 0.7978845608f * (1.0f + 0.044715f * x * x)));
    }
}

VECTOR_CLONES static void silu(float *out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = x / (1.0f + exp_poly(-x));
    }
}

static activation_block *activation_of(lk_act act) {
    switch (act) {
    case LK_RELU:
        return relu;
    case LK_GELU:
        return gelu;
    case LK_GELU_NEW:
        return gelu_new;
    case LK_GELU_FAST:
        return gelu_fast;
    case LK_SILU:
        return silu;
    }
    return relu;
}

/* Entries per block of an activation: a block and its output stay in L1. */
enum { ACTIVATION_BLOCK = 2048 };

/* Softmax of one row; see lk_softmax_rows. */
VECTOR_CLONES static void softmax_row(float *y, const float *x, int C) {
    float maxval = -INFINITY;
#pragma omp simd reduction(max : maxval)
    for (int c = 0; c < C; c++)
        maxval = x[c] > maxval ? x[c] : maxval;
    if (maxval == -INFINITY) {
        for (int c = 0; c < C; c++)
            y[c] = 0.0f;
        return;
    }
    // maxval is subtracted only for numerical stability
    // two loops: the vectoriser leaves a loop that mixes the float exp and the double sum scalar
    for (int c = 0; c < C; c++)
        y[c] = exp_poly(x[c] - maxval);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; c++)
        sum += y[c];
    float inv = (float)(1.0 / sum);
    for (int c = 0; c < C; c++)
        y[c] *= inv;
}

static void cpu_softmax_rows(lk_device *dev, float *out, const float *inp, int N, int C) {
#pragma omp parallel for if ((size_t)N * C > 16384)
    for (int i = 0; i < N; i++)
        softmax_row(out + (size_t)i * C, inp + (size_t)i * C, C);
}

static void cpu_solu(lk_device *dev, float *out, const float *inp, int N, int C) {
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

static void cpu_activation(lk_device *dev, lk_act act, float *out, const float *inp, size_t n) {
    activation_block *f = activation_of(act);
#pragma omp parallel for if (n > 65536)
    for (size_t i0 = 0; i0 < n; i0 += ACTIVATION_BLOCK)
        f(out + i0, inp + i0, n - i0 < ACTIVATION_BLOCK ? n - i0 : ACTIVATION_BLOCK);
}

static void cpu_gated_activation(lk_device *dev, lk_act act, float *out, const float *gate,
                                 const float *linear, size_t n) {
    // out = act(gate) * linear
    activation_block *f = activation_of(act);
#pragma omp parallel for if (n > 65536)
    for (size_t i0 = 0; i0 < n; i0 += ACTIVATION_BLOCK) {
        const size_t k = n - i0 < ACTIVATION_BLOCK ? n - i0 : ACTIVATION_BLOCK;
        float activated[ACTIVATION_BLOCK];
        f(activated, gate + i0, k);
        for (size_t i = 0; i < k; i++)
            out[i0 + i] = activated[i] * linear[i0 + i];
    }
}

static void cpu_scale(lk_device *dev, float *x, size_t n, float factor) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++)
        x[i] *= factor;
}

static void cpu_softcap(lk_device *dev, float *x, size_t n, float cap) {
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++)
        x[i] = cap * tanhf(x[i] / cap);
}

static void cpu_rotary(lk_device *dev, float *x, int N, int H, int dh, int rotary_dim,
                       bool interleaved, const float *cos, const float *sin,
                       const int32_t *positions) {
    // x is (N, H, dh); cos, sin are (n_positions, rotary_dim/2); positions (N)
    const int half = rotary_dim / 2;
#pragma omp parallel for if ((size_t)N * H * rotary_dim > 65536)
    for (int n = 0; n < N; n++) {
        const float *c = cos + (size_t)positions[n] * half, *s = sin + (size_t)positions[n] * half;
        for (int h = 0; h < H; h++) {
            float *v = x + ((size_t)n * H + h) * dh;
            for (int i = 0; i < half; i++) {
                const int i1 = interleaved ? 2 * i : i, i2 = interleaved ? 2 * i + 1 : i + half;
                const float a = v[i1], b = v[i2];
                v[i1] = a * c[i] - b * s[i];
                v[i2] = b * c[i] + a * s[i];
            }
        }
    }
}

static void cpu_embed(lk_device *dev, float *tok_out, float *pos_out, const float *W_E,
                      const float *W_pos, const int32_t *tokens, const uint8_t *attn_mask, int B,
                      int T, int d) {
    // tok_out, pos_out are (B*T, d); W_E is (d_vocab, d); W_pos is (n_ctx, d)
    const size_t row_bytes = (size_t)d * sizeof(float);
    for (size_t n = 0; n < (size_t)B * T; n++)
        memcpy(tok_out + n * d, W_E + (size_t)tokens[n] * d, row_bytes);
    for (int bi = 0; bi < B; bi++) {
        int seen = 0;
        for (int t = 0; t < T; t++) {
            size_t n = (size_t)bi * T + t;
            float *row = pos_out + n * d;
            int pos = t;
            if (attn_mask) {
                seen += attn_mask[n] != 0;
                pos = seen > 0 ? seen - 1 : 0;
                if (!attn_mask[n]) {
                    memset(row, 0, row_bytes);
                    continue;
                }
            }
            memcpy(row, W_pos + (size_t)pos * d, row_bytes);
        }
    }
}

/* scores[i] / attn_scale for i < n, soft-capped when softcap > 0. */
VECTOR_CLONES static void scale_scores(float *scores, int n, float attn_scale, float softcap) {
    if (softcap > 0) {
        for (int i = 0; i < n; i++)
            scores[i] = softcap * tanhf(scores[i] / attn_scale / softcap);
        return;
    }
    for (int i = 0; i < n; i++)
        scores[i] /= attn_scale;
}

static void cpu_mask_scores(lk_device *dev, float *scores, int B, int H, int T, float attn_scale,
                            const lk_score_mask *mask) {
    // prompt bi's block is (H, Q query, T key) for its Q queries from position q0
    const lk_score_mask mk = *mask;
    const float masked = mk.masked_score != 0.0f ? mk.masked_score : -INFINITY;
#pragma omp parallel for collapse(2) if ((size_t)B * H * T * T > 16384)
    for (int bi = 0; bi < B; bi++) {
        for (int hi = 0; hi < H; hi++) {
            const int q0 = mk.queries.start ? mk.queries.start[bi] : 0, Q = T - q0;
            const size_t first_row = mk.queries.row ? (size_t)mk.queries.row[bi] : (size_t)bi * T;
            float *s = scores + (first_row * H + (size_t)hi * Q) * T;
            const uint8_t *row_mask = mk.attn_mask ? mk.attn_mask + (size_t)bi * T : NULL;
            const int32_t *row_tokens = mk.pad_id >= 0 ? mk.tokens + (size_t)bi * T : NULL;
            for (int qi = q0; qi < T; qi++) {
                float *sq = s + (size_t)(qi - q0) * T;
                // the keys [lo, hi) that the causal mask and the window leave
                const int lo =
                    mk.causal && mk.window > 0 && qi - mk.window + 1 > 0 ? qi - mk.window + 1 : 0;
                const int hi = mk.causal ? qi + 1 : T;
                scale_scores(sq + lo, hi - lo, attn_scale, mk.softcap);
                for (int ki = 0; ki < lo; ki++)
                    sq[ki] = masked;
                for (int ki = hi; ki < T; ki++)
                    sq[ki] = masked;
                for (int ki = lo; mk.causal && row_mask && ki < hi; ki++)
                    if (!row_mask[ki]) sq[ki] = masked;
                for (int ki = 0; row_tokens && ki < T; ki++)
                    if (row_tokens[ki] == mk.pad_id) sq[ki] = mk.pad_score;
            }
        }
    }
}

static void cpu_matmul_columns(lk_device *dev, float *out, const float *x, const float *W,
                               const float *bias, const int32_t *ids, int B, int P, int n, int C,
                               int V) {
    // out is (B, n); x (B, C); W (C, V); ids (P, n). Each column of W is read once, strided,
    // in chunks of CHUNK channels into w, and dotted with the rows that use it: in double
    // within a chunk, the chunks' sums added in float (one chunk up to d_model 1024).
    enum { CHUNK = 1024 };
    float w[CHUNK];
    for (int p = 0; p < P; p++) {
        for (int j = 0; j < n; j++) {
            const size_t id = (size_t)ids[p * n + j];
            for (int b = p; b < B; b += P)
                out[(size_t)b * n + j] = bias ? bias[id] : 0.0f;
            for (int c0 = 0; c0 < C; c0 += CHUNK) {
                const int k = C - c0 < CHUNK ? C - c0 : CHUNK;
                for (int c = 0; c < k; c++)
                    w[c] = W[(size_t)(c0 + c) * V + id];
                for (int b = p; b < B; b += P) {
                    const float *xb = x + (size_t)b * C + c0;
                    double acc = 0.0;
                    for (int c = 0; c < k; c++)
                        acc += (double)xb[c] * w[c];
                    out[(size_t)b * n + j] += (float)acc;
                }
            }
        }
    }
}

static void cpu_splice_prefix(lk_device *dev, float *out, const float *prefix,
                              const float *computed, lk_query_rows q, int B, int P, int T, int C) {
    // out is (B, T, C); prefix (P, T, C); computed (sum of T - q.start[b], C)
    const size_t row_bytes = (size_t)C * sizeof(float);
    for (int bi = 0; bi < B; bi++) {
        const size_t t0 = (size_t)q.start[bi];
        float *o = out + (size_t)bi * T * C;
        memcpy(o, prefix + (size_t)(bi % P) * T * C, t0 * row_bytes);
        memcpy(o + t0 * C, computed + (size_t)q.row[bi] * C, (T - t0) * row_bytes);
    }
}

static void cpu_repeat_rows(lk_device *dev, float *out, const float *inp, int N, int R, int C) {
    // out is (N, R, C); inp is (N, C)
    for (size_t n = 0; n < (size_t)N; n++)
        for (int r = 0; r < R; r++)
            memcpy(out + (n * R + r) * C, inp + n * C, (size_t)C * sizeof(float));
}

static void cpu_sum_groups(lk_device *dev, float *out, const float *inp, const float *bias, int N,
                           int G, int C) {
    // out is (N, C); inp is (N, G, C)
#pragma omp parallel for if ((size_t)N * G * C > 65536)
    for (int n = 0; n < N; n++) {
        float *y = out + (size_t)n * C;
        for (int c = 0; c < C; c++)
            y[c] = bias ? bias[c] : 0.0f;
        for (int g = 0; g < G; g++) {
            const float *x = inp + ((size_t)n * G + g) * C;
            for (int c = 0; c < C; c++)
                y[c] += x[c];
        }
    }
}

static void cpu_gather_rows(lk_device *dev, float *out, const float *inp, const int32_t *rows,
                            int n, int C) {
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * C, inp + (size_t)rows[i] * C, (size_t)C * sizeof(float));
}

/* ---- the device: host memory, nothing queued, nothing to record ---- */

static void cpu_close(lk_device *dev) {}

static void cpu_describe(lk_device *dev, lk_device_info *info) {
    snprintf(info->name, sizeof info->name, "cpu (%d cores)", omp_get_num_procs());
}

static void *cpu_alloc(lk_device *dev, size_t bytes) {
    return lk_host_buffer(bytes);
}

static void cpu_free(lk_device *dev, void *ptr) {
    free(ptr);
}

static void cpu_copy(lk_device *dev, void *dst, const void *src, size_t bytes) {
    memcpy(dst, src, bytes);
}

static int cpu_finish(lk_device *dev, char *why, size_t why_len) {
    return 0;
}

static bool cpu_record_begin(lk_device *dev) {
    return false;
}

static lk_graph *cpu_record_end(lk_device *dev) {
    return NULL;
}

static void cpu_no_graph(lk_device *dev, lk_graph *graph) {}

static const lk_ops cpu_ops = {
    .close = cpu_close,
    .describe = cpu_describe,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .host_alloc = cpu_alloc,
    .host_free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .finish = cpu_finish,
    .record_begin = cpu_record_begin,
    .record_end = cpu_record_end,
    .graph_launch = cpu_no_graph,
    .graph_free = cpu_no_graph,
    .matmul = cpu_matmul,
    .matmul_batched = cpu_matmul_batched,
    .layernorm_pre = cpu_layernorm_pre,
    .rmsnorm_pre = cpu_rmsnorm_pre,
    .affine = cpu_affine,
    .add = cpu_add,
    .activation = cpu_activation,
    .gated_activation = cpu_gated_activation,
    .scale = cpu_scale,
    .softcap = cpu_softcap,
    .rotary = cpu_rotary,
    .solu = cpu_solu,
    .softmax_rows = cpu_softmax_rows,
    .embed = cpu_embed,
    .mask_scores = cpu_mask_scores,
    .repeat_rows = cpu_repeat_rows,
    .sum_groups = cpu_sum_groups,
    .matmul_columns = cpu_matmul_columns,
    .splice_prefix = cpu_splice_prefix,
    .gather_rows = cpu_gather_rows,
};

lk_device *lk_cpu_device(void) {
    static lk_device cpu = {.ops = &cpu_ops, .host_memory = true};
    return &cpu;
}
