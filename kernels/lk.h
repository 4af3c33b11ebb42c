/*
 * lk.h: the numeric primitives lensd's forward pass is built from.
 *
 * One interface, one implementation per backend (a "device"): kernels/cpu/
 * works on host memory with OpenBLAS for matrix products and OpenMP loops
 * for the rest; kernels/cuda/ works on one GPU's memory with cuBLAS and CUDA
 * kernels, on one stream. Nothing above this layer knows which one runs: it
 * allocates through the device, uploads and downloads through it, and passes
 * the device's pointers to the operations below.
 *
 * Shapes are written with TransformerLens's names where one applies
 * (N rows, C channels). All matrices are row-major float32; `ld*` arguments
 * are row strides in floats, so heads inside a [pos, n_heads * d_head] buffer
 * can be addressed without copies. Every pointer an operation takes is device
 * memory (from lk_alloc, or weights uploaded there) unless its comment says
 * host.
 *
 * Operations are asynchronous on a GPU: they are queued in order on the
 * device's stream and a failure inside one is kept until lk_finish reports
 * it. On the CPU they run before returning. A device is used by one thread
 * at a time.
 */
#ifndef LENS_LK_H
#define LENS_LK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct lk_device lk_device;

/* A recorded sequence of operations that can be replayed (a CUDA graph). */
typedef struct lk_graph lk_graph;

/* ---- devices ---------------------------------------------------------- */

/* Opens a device: "cpu", or "cuda" / "cuda:N" for GPU number N. Returns NULL
 * with the reason in why (no GPU, a build without CUDA, the CUDA backend or
 * its libraries not installed, N out of range).
 * "cpu" always succeeds and returns the one CPU device of the process. */
lk_device *lk_open(const char *spec, char *why, size_t why_len);

/* Releases a device opened by lk_open (its stream, handles and graphs).
 * Memory still allocated on it must be freed first. NULL and the CPU device
 * are accepted and left alone. */
void lk_close(lk_device *dev);

/* The CPU device (never NULL, never needs closing). */
lk_device *lk_cpu(void);

typedef struct lk_device_info {
    char name[128];     /* "cpu (2 cores)", "NVIDIA H100 80GB HBM3 (cuda:0)" */
    bool host_memory;   /* device pointers are host pointers */
    size_t total_bytes; /* device memory; 0 for the CPU */
    size_t free_bytes;  /* device memory free now; 0 for the CPU */
} lk_device_info;

/* Fills info about the device. Can't fail. */
void lk_device_describe(lk_device *dev, lk_device_info *info);

/* True when the device's pointers are host pointers (the CPU): callers may
 * then read and write them directly instead of downloading. */
bool lk_host_memory(const lk_device *dev);

/* Sets the number of threads the CPU kernels use (0: the machine's cores).
 * Applies to the calling thread's OpenMP pool and to OpenBLAS. Can't fail. */
void lk_set_threads(int n_threads);

/* ---- the CPU and its BLAS (kernels/cpu/lk_cpu_blas.c) ------------------ */

/* Instruction-set features that decide which BLAS kernel can run. A bit is
 * set only when the CPU has the feature and the OS saves its registers, so
 * that code using it runs (the same rule as /proc/cpuinfo's flags). The bits
 * are consecutive from 1, so that a loop can visit them all. */
enum {
    LK_CPU_SSE3 = 1u << 0,
    LK_CPU_AVX = 1u << 1,
    LK_CPU_FMA = 1u << 2,
    LK_CPU_AVX2 = 1u << 3,
    LK_CPU_AVX512F = 1u << 4,
    LK_CPU_AVX512BW = 1u << 5,
    LK_CPU_AVX512DQ = 1u << 6,
    LK_CPU_AVX512VL = 1u << 7,
    LK_CPU_AVX512_BF16 = 1u << 8,
    LK_CPU_AMX_TILE = 1u << 9,
    LK_CPU_AMX_BF16 = 1u << 10,
};

typedef struct lk_cpu_info {
    char name[64];               /* cpuid's brand string, "AMD EPYC 9B14"; "" where none */
    char vendor[13];             /* "GenuineIntel", "AuthenticAMD" */
    int family, model, stepping; /* as /proc/cpuinfo numbers them */
    unsigned features;           /* LK_CPU_* */
} lk_cpu_info;

/* Reads the CPU this process runs on (cpuid and xgetbv). All zeros on CPUs
 * other than x86-64. Can't fail. */
void lk_cpu_identify(lk_cpu_info *info);

/* The name of one LK_CPU_* feature as /proc/cpuinfo spells it ("avx2",
 * "avx512_bf16"; "sse3", which /proc/cpuinfo calls "pni"), or NULL for a
 * value that is not one. */
const char *lk_cpu_feature_name(unsigned feature);

/* Writes the names of the features in `features`, space-separated, into buf
 * ("" when none). Can't fail; truncates to len. */
void lk_cpu_feature_list(unsigned features, char *buf, size_t len);

typedef struct lk_blas_info {
    char library[16];   /* "OpenBLAS" */
    char version[16];   /* "0.3.21" */
    char kernel[32];    /* the kernel in use ("Haswell", "SkylakeX", "Prescott") */
    char threading[16]; /* how it runs in parallel: "OpenMP", "pthreads", "none" */
    int threads;        /* threads a product may use now */
} lk_blas_info;

/* Describes the BLAS library the CPU backend runs. Can't fail. */
void lk_blas_describe(lk_blas_info *info);

/* The OpenBLAS kernel to force (OPENBLAS_CORETYPE) on `cpu` when `running`
 * needs fewer instructions than the CPU offers — the library fell back to an
 * older or generic kernel — or NULL when `running` is as good as the CPU
 * allows, or is a kernel this table does not know (a newer library's). */
const char *lk_blas_preferred_kernel(const lk_cpu_info *cpu, const char *running);

/* The kernel to try after `failed` computed wrong products (or crashed) on
 * `cpu`: one instruction-set level down (AVX-512 -> AVX2 -> AVX -> SSE3),
 * and no higher than the CPU's own level; NULL when `failed` is already the
 * generic kernel. Repeated calls on their own results end at NULL. */
const char *lk_blas_safer_kernel(const lk_cpu_info *cpu, const char *failed);

/* A row-major sgemm as lensd calls it: c[M, N] = a[M, K] @ b + beta * c, b
 * being [K, N], or [N, K] used transposed when b_transposed; lda/ldb/ldc are
 * row strides. */
typedef void lk_sgemm_fn(bool b_transposed, int M, int N, int K, float beta, const float *a,
                         int lda, const float *b, int ldb, float *c, int ldc);

/* The BLAS library's sgemm, as an lk_sgemm_fn. */
lk_sgemm_fn lk_blas_sgemm;

/* Checks sgemm (NULL: the library's) on small odd shapes in every way the
 * CPU backend calls it — beta 0 and 1, b transposed, strided rows, one-row
 * products, one product large enough to be threaded — against a plain
 * double-precision loop. Returns 0 when every entry is within float32
 * rounding of the exact product (2 (K + 1) FLT_EPSILON sum |a b|) and no
 * entry past N in a row was written; else -1 with the first wrong entry in
 * why. */
int lk_blas_selfcheck(lk_sgemm_fn *sgemm, char *why, size_t why_len);

/* ---- lensd's own products on the CPU (kernels/cpu/lk_cpu_gemm.c) ------ */

/* lensd's own CPU kernels for row-major products: they read the weight
 * operand where it lies and copy only a block of 128 rows of one 64-column
 * panel at a time, where OpenBLAS packs the whole operand on every call
 * (more than half its time at 16 rows). lk_matmul and lk_matmul_batched
 * (attention's per-head products, then one per thread) use the chosen one
 * for products of at most lk_gemm_max_rows rows and OpenBLAS for the rest. */
typedef enum lk_gemm_kernel {
    LK_GEMM_OPENBLAS, /* none of lensd's: every product goes to OpenBLAS */
    LK_GEMM_AVX2,     /* AVX2 + FMA, 4 x 24 register tiles */
    LK_GEMM_AVX512,   /* AVX-512F, 6 x 64 register tiles */
} lk_gemm_kernel;

/* The most rows lk_matmul and lk_matmul_batched give `kernel`: about where
 * it stops being faster than OpenBLAS 0.3.21 on the weight shapes of gpt2,
 * Pythia and SmolLM2 (bench/bench_gemm.c, bench/results/gemm-2026-12-02.md):
 * 512 for AVX-512 (against its SkylakeX kernel on an Ice Lake Xeon; behind
 * it at 2048 rows), 8 for AVX2 (against its Zen kernel on a Zen 3 EPYC,
 * whole forwards: 1.23-1.5x at 4-8 rows, 0.82x at 16, 0.72x at 64;
 * bench/results/zen3-2026-12-02.md); 0 for OpenBLAS. */
int lk_gemm_max_rows(lk_gemm_kernel kernel);

/* The fastest kernel `cpu` can run. */
lk_gemm_kernel lk_gemm_best(const lk_cpu_info *cpu);

/* The kernel's name: "openblas", "avx2", "avx512". */
const char *lk_gemm_name(lk_gemm_kernel kernel);

/* Sets the kernel lk_matmul and lk_matmul_batched use from now on; it must be one the CPU runs
 * (at most lk_gemm_best's). Without a call: lk_gemm_best of this CPU. */
void lk_gemm_choose(lk_gemm_kernel kernel);

/* The kernel lk_matmul and lk_matmul_batched use. */
lk_gemm_kernel lk_gemm_chosen(void);

/* out[M,N] = a[M,K] @ b (+ bias[N]), b being [K,N] or, when b_transposed,
 * [N,K] used transposed; added to out when accumulate. As lk_matmul and
 * lk_matmul_batched compute it, by `kernel` (AVX2 or AVX-512, one the CPU
 * runs) for any M; threaded over column ranges with OpenMP's threads, or on
 * the calling thread alone inside a parallel region. Writes nothing past
 * column N of a row; does nothing when M, K or N is 0. */
void lk_gemm_matmul(lk_gemm_kernel kernel, float *out, int ldo, const float *a, int lda,
                    const float *b, int ldb, bool b_transposed, const float *bias, int M, int K,
                    int N, bool accumulate);

/* ---- memory ----------------------------------------------------------- */

/* Allocates bytes of device memory (64-byte aligned). Returns NULL when the
 * device has not that much free; nothing is left allocated then. */
void *lk_alloc(lk_device *dev, size_t bytes);

/* Frees memory from lk_alloc. Accepts NULL. Waits for queued work first. */
void lk_free(lk_device *dev, void *ptr);

/* Page-locked host memory for fast transfers (plain malloc on the CPU).
 * Returns NULL when out of memory. */
void *lk_host_alloc(lk_device *dev, size_t bytes);
void lk_host_free(lk_device *dev, void *ptr);

/* Copies host -> device. The host buffer may be reused when this returns. */
void lk_upload(lk_device *dev, void *dst, const void *host_src, size_t bytes);

/* Copies device -> host after all queued work, and waits for the copy. */
void lk_download(lk_device *dev, void *host_dst, const void *src, size_t bytes);

/* Copies device -> device (queued). Regions must not overlap. */
void lk_copy(lk_device *dev, void *dst, const void *src, size_t bytes);

/* bytes of host memory, 64-byte aligned, that free() releases; NULL when
 * out of memory. From 2 MiB up it is aligned to 2 MiB and advised onto
 * transparent huge pages (MADV_HUGEPAGE, which the kernel honours in its
 * "madvise" and "always" modes), so that first touching it takes one page
 * fault per 2 MiB instead of one per 4 KiB, and reading it misses the TLB
 * less. For weights, workspaces and captured activations. */
void *lk_host_buffer(size_t bytes);

/* Copies bytes host -> host into memory that is not read again soon (a
 * captured activation). Large copies run on every thread with streaming
 * stores, which go past the cache and so leave the running forward's data in
 * it; small ones are a memcpy. Regions must not overlap. */
void lk_host_copy(void *dst, const void *src, size_t bytes);

/* Waits for all queued work. Returns 0, or -1 with the first failure since
 * the last call (a kernel that could not start, a cuBLAS error) in why; the
 * failure is then cleared. */
int lk_finish(lk_device *dev, char *why, size_t why_len);

/* ---- recording (CUDA graphs) ------------------------------------------ */

/* Starts recording the operations that follow instead of running them.
 * Returns false (and records nothing) where the device can't record: the
 * CPU. Uploads and downloads must not happen while recording. */
bool lk_record_begin(lk_device *dev);

/* Ends a recording and returns the graph, or NULL when it failed (the
 * operations recorded did not run either way). */
lk_graph *lk_record_end(lk_device *dev);

/* Runs a recorded graph again, on the same memory it was recorded with. */
void lk_graph_launch(lk_device *dev, lk_graph *graph);

/* Frees a graph. Accepts NULL. */
void lk_graph_free(lk_device *dev, lk_graph *graph);

/* ---- operations ------------------------------------------------------- */

/* out[M,N] = a[M,K] @ b[K,N] (+ bias[N] when bias is not NULL); when
 * accumulate is true the product is added to out instead of replacing it.
 * lda/ldb/ldo are row strides (>= K, N, N). */
void lk_matmul(lk_device *dev, float *out, int ldo, const float *a, int lda, const float *b,
               int ldb, const float *bias, int M, int K, int N, bool accumulate);

/* Many small products that share shapes and strides: for i < count,
 * out_i[M,N] = a_i[M,K] @ b_i with out_i = out + i*out_step (and so on),
 * where b_i is [K,N], or [N,K] used transposed when b_transposed (q @ k^T).
 * The steps locate one attention head of one prompt. */
void lk_matmul_batched(lk_device *dev, float *out, int ldo, size_t out_step, const float *a,
                       int lda, size_t a_step, const float *b, int ldb, size_t b_step,
                       bool b_transposed, int M, int K, int N, int count);

/* The centring and scaling half of LayerNorm, as TransformerLens splits it:
 * for each row of inp[N,C], normalized = (x - mean(x)) / scale with
 * scale = sqrt(mean((x - mean(x))^2) + eps). scale is [N]. normalized may alias
 * inp. */
void lk_layernorm_pre(lk_device *dev, float *normalized, float *scale, const float *inp, int N,
                      int C, float eps);

/* The scaling half of RMSNorm, as TransformerLens splits it: for each row
 * of inp[N,C], normalized = x / scale with scale = sqrt(mean(x^2) + eps).
 * scale is [N]. normalized may alias inp. */
void lk_rmsnorm_pre(lk_device *dev, float *normalized, float *scale, const float *inp, int N, int C,
                    float eps);

/* out[N,C] = inp * w[C] + b[C] (b may be NULL). out may alias inp. */
void lk_affine(lk_device *dev, float *out, const float *inp, const float *w, const float *b, int N,
               int C);

/* out[n] = a[n] + b[n]. out may alias a or b. */
void lk_add(lk_device *dev, float *out, const float *a, const float *b, size_t n);

typedef enum lk_act {
    LK_RELU,
    LK_GELU,      /* the exact erf form */
    LK_GELU_NEW,  /* the tanh approximation GPT-2 uses */
    LK_GELU_FAST, /* TransformerLens's gelu_fast */
    LK_SILU,
} lk_act;

/* out[n] = act(inp[n]) over n values; out may alias inp. */
void lk_activation(lk_device *dev, lk_act act, float *out, const float *inp, size_t n);

/* A gated MLP's hidden layer: out[n] = act(gate[n]) * linear[n] over n
 * values. out may alias gate or linear. */
void lk_gated_activation(lk_device *dev, lk_act act, float *out, const float *gate,
                         const float *linear, size_t n);

/* x[n] *= factor over n values (Gemma's embedding scale). */
void lk_scale(lk_device *dev, float *x, size_t n, float factor);

/* Soft-capping: x[n] = cap * tanh(x[n] / cap) over n values (Gemma 2's final
 * logits). Nothing happens unless cap > 0. */
void lk_softcap(lk_device *dev, float *x, size_t n, float cap);

/* Rotary position embeddings of rows of x [N, H, dh] (row stride H * dh),
 * in place: in each head, the first rotary_dim values (even, at most dh;
 * any other width does nothing) are rotated by the angles of the row's
 * position, the rest are left alone. cos and sin are
 * [n_positions, rotary_dim / 2] device tables (entry i of a position pairs
 * with frequency i); positions [N] device, each a row of the tables.
 * GPT-NeoX style (interleaved false) pairs value i with i + rotary_dim / 2:
 *   out[i] = x[i] cos - x[i + r/2] sin, out[i + r/2] = x[i + r/2] cos + x[i] sin;
 * GPT-J style (interleaved true) pairs 2i with 2i + 1 the same way. */
void lk_rotary(lk_device *dev, float *x, int N, int H, int dh, int rotary_dim, bool interleaved,
               const float *cos, const float *sin, const int32_t *positions);

/* SoLU without its LayerNorm: out = x * softmax(x) over each row of
 * inp[N,C]. out may alias inp. */
void lk_solu(lk_device *dev, float *out, const float *inp, int N, int C);

/* Softmax over each row of inp[N,C] into out. -INFINITY entries get 0; a row
 * whose entries are all -INFINITY becomes all zeros (TransformerLens turns
 * the NaNs of such rows into 0). out may alias inp. */
void lk_softmax_rows(lk_device *dev, float *out, const float *inp, int N, int C);

/* Token and position embeddings of a [B, T] batch:
 * tok_out[n] = W_E[tokens[n]] and pos_out[n] = W_pos[p(n)], rows of d. With
 * no attn_mask p is the position t; with one (1 = real token) p counts the
 * real tokens before t in its prompt (TransformerLens's offset position ids
 * for left padding) and pad rows of pos_out are zero. tokens must be valid
 * rows of W_E. */
void lk_embed(lk_device *dev, float *tok_out, float *pos_out, const float *W_E, const float *W_pos,
              const int32_t *tokens, const uint8_t *attn_mask, int B, int T, int d);

/* Queries that are a suffix of each prompt (causal position reuse): prompt
 * b's queries are its positions start[b] .. T-1, and row-wise buffers hold
 * them packed, prompt after prompt, prompt b's first at row row[b] =
 * sum over b' < b of (T - start[b']). */
typedef struct lk_query_rows {
    const int32_t *start; /* [B] device */
    const int32_t *row;   /* [B] device */
    int rows;             /* the sum over every b of T - start[b] */
} lk_query_rows;

/* The masks TransformerLens applies to attention scores. */
typedef struct lk_score_mask {
    bool causal; /* keys after the query are masked (-inf) */
    int window;  /* causal only: keys at or before query - window are masked; 0 = none */
    const uint8_t *attn_mask; /* [B, T] device, or NULL; causal only: pad keys are masked */
    const int32_t *tokens;    /* [B, T] device; read when pad_id >= 0 */
    int32_t pad_id;           /* keys holding this token get score pad_score; -1 = none */
    float pad_score;
    /* the score of a key the causal, window or attention mask masks:
     * -INFINITY when 0 (TL's own), else this value (older TL checkpoints'
     * IGNORE buffer, -1e5) */
    float masked_score;
    float softcap;         /* > 0: unmasked scores become softcap * tanh(score / softcap) */
    lk_query_rows queries; /* NULL members: every position is a query */
} lk_score_mask;

/* Scores (query rows, key columns) become scores / attn_scale (soft-capped
 * after the division when mask->softcap > 0) where unmasked and
 * mask->masked_score (-INFINITY when 0) where the causal, window or
 * attention mask masks them; then keys at pad
 * tokens get pad_score whatever they were. The
 * scores are [B, H, T, T], or with mask->queries prompt b's
 * [H, T - start[b], T] block at element row[b] * H * T (key positions
 * 0 .. T-1 always). */
void lk_mask_scores(lk_device *dev, float *scores, int B, int H, int T, float attn_scale,
                    const lk_score_mask *mask);

/* out[b, T, C] for b < B: the first start[b] rows are prefix[b % P, t, C],
 * the rest the computed rows computed[row[b] + t - start[b], C] (q.start,
 * q.row as lk_query_rows). The keys or values of a suffix run, joined to
 * those of the run it continues. */
void lk_splice_prefix(lk_device *dev, float *out, const float *prefix, const float *computed,
                      lk_query_rows q, int B, int P, int T, int C);

/* out[N, R, C] = inp[N, C] repeated R times per row. */
void lk_repeat_rows(lk_device *dev, float *out, const float *inp, int N, int R, int C);

/* out[N, C] = bias[C] + sum over g < G of inp[N, g, C], added in the order
 * g = 0, 1, ... (bias may be NULL). */
void lk_sum_groups(lk_device *dev, float *out, const float *inp, const float *bias, int N, int G,
                   int C);

/* The logits of chosen output ids only: out[b, j] = x[b, :] . W[:, ids[b % P, j]]
 * (+ bias[that id] when bias is not NULL) for b < B, j < n, from x [B, C] and
 * W [C, V] (an unembedding); ids [P, n] is device memory, each in [0, V).
 * Rows b, b + P, b + 2P, ... share their ids (runs of the same P prompts).
 * Costs B*n*C multiply-adds instead of the B*V*C of every logit. */
void lk_matmul_columns(lk_device *dev, float *out, const float *x, const float *W,
                       const float *bias, const int32_t *ids, int B, int P, int n, int C, int V);

/* out[i, C] = inp[rows[i], C] for i < n; rows [n] is device memory, each a
 * row of inp. */
void lk_gather_rows(lk_device *dev, float *out, const float *inp, const int32_t *rows, int n,
                    int C);

#endif
