/*
 * lk.h: the numeric primitives lensd's forward pass is built from.
 *
 * One interface, one implementation per backend. kernels/cpu/ implements it
 * over host memory with OpenBLAS for matrix products and OpenMP loops for the
 * rest; the CUDA backend (kernels/cuda/, a later issue) implements the same
 * calls over device memory. Nothing above this layer knows which one runs.
 *
 * Shapes are written with TransformerLens's names where one applies
 * (N rows, C channels). All matrices are row-major float32; `ld*` arguments
 * are row strides in floats, so heads inside a [pos, n_heads * d_head] buffer
 * can be addressed without copies.
 */
#ifndef LENS_LK_H
#define LENS_LK_H

#include <stdbool.h>
#include <stddef.h>

/* out[M,N] = a[M,K] @ b[K,N] (+ bias[N] when bias is not NULL); when
 * accumulate is true the product is added to out instead of replacing it.
 * lda/ldb/ldo are row strides (>= K, N, N). */
void lk_matmul(float *out, int ldo, const float *a, int lda, const float *b, int ldb,
               const float *bias, int M, int K, int N, bool accumulate);

/* Many small products that share shapes and strides, run in parallel: for
 * i < count, out_i[M,N] = a_i[M,K] @ b_i with out_i = out + i*out_step (and
 * so on), where b_i is [K,N], or [N,K] used transposed when b_transposed
 * (q @ k^T). The steps locate one attention head of one prompt. */
void lk_matmul_batched(float *out, int ldo, size_t out_step, const float *a, int lda, size_t a_step,
                       const float *b, int ldb, size_t b_step, bool b_transposed, int M, int K,
                       int N, int count);

/* The centring and scaling half of LayerNorm, as TransformerLens splits it:
 * for each row of inp[N,C], normalized = (x - mean(x)) / scale with
 * scale = sqrt(mean((x - mean(x))^2) + eps). scale is [N]. normalized may alias
 * inp. */
void lk_layernorm_pre(float *normalized, float *scale, const float *inp, int N, int C, float eps);

/* out[N,C] = inp * w[C] + b[C] (b may be NULL). out may alias inp. */
void lk_affine(float *out, const float *inp, const float *w, const float *b, int N, int C);

/* out[n] = a[n] + b[n]. out may alias a or b. */
void lk_add(float *out, const float *a, const float *b, size_t n);

/* Element-wise activations over n values; out may alias inp.
 * gelu is the exact erf form; gelu_new the tanh approximation GPT-2 uses. */
void lk_relu(float *out, const float *inp, size_t n);
void lk_gelu(float *out, const float *inp, size_t n);
void lk_gelu_new(float *out, const float *inp, size_t n);
void lk_gelu_fast(float *out, const float *inp, size_t n);
void lk_silu(float *out, const float *inp, size_t n);

/* SoLU without its LayerNorm: out = x * softmax(x) over each row of
 * inp[N,C]. */
void lk_solu(float *out, const float *inp, int N, int C);

/* Softmax over each row of inp[N,C] into out. -INFINITY entries get 0; a row
 * whose entries are all -INFINITY becomes all zeros (TransformerLens turns
 * the NaNs of such rows into 0). out may alias inp. */
void lk_softmax_rows(float *out, const float *inp, int N, int C);

/* Sets the number of threads the CPU kernels use (0: the machine's cores).
 * Can't fail. */
void lk_set_threads(int n_threads);

#endif
