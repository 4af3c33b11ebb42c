/*
 * lk_cuda.cu: the CUDA backend of kernels/lk.h.
 *
 * One device is one GPU with one non-blocking stream: every operation is
 * queued there, matrix products through cuBLAS (float32, no TF32) and the
 * rest through the small kernels below, and the first failure is kept until
 * lk_finish reports it. cuBLAS gets a workspace of its own so that its calls
 * can be recorded into CUDA graphs.
 *
 * The numerics mirror kernels/cpu/lk_cpu.c rather than chase speed: the same
 * formulas, reductions in double where the CPU accumulates in double, IEEE
 * division and sqrt, no fast-math intrinsics, and __fmul_rn / __dmul_rn
 * where nvcc would otherwise fuse a product and a sum that the CPU build
 * rounds separately. Row reductions take one block per row; elementwise
 * kernels are grid-stride loops over a one-dimensional grid.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "kernels/lk_backend.h"
}

#define THREADS 256       /* threads per block, a multiple of 32 */
#define MAX_BLOCKS 65535u /* grid-stride kernels loop past this */
#define WORKSPACE_BYTES ((size_t)32 << 20)

struct lk_graph {
    cudaGraphExec_t exec;
};

typedef struct cuda_device {
    lk_device base; /* first: lk.c sees only this */
    int ordinal;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *workspace; /* cuBLAS's, so that it never allocates while recording */
    bool failed;     /* error holds the first failure since lk_finish */
    char error[512];
    char name[128];
} cuda_device;

/* ---- errors and launches ---------------------------------------------- */

static void fail(cuda_device *d, const char *op, const char *what) {
    if (d->failed) return;
    d->failed = true;
    snprintf(d->error, sizeof d->error, "cuda:%d: %s: %s", d->ordinal, op, what);
}

static void check_cuda(cuda_device *d, const char *op, cudaError_t err) {
    if (err != cudaSuccess) fail(d, op, cudaGetErrorString(err));
}

static void check_blas(cuda_device *d, const char *op, cublasStatus_t status) {
    if (status != CUBLAS_STATUS_SUCCESS) fail(d, op, cublasGetStatusString(status));
}

/* The device behind dev, made current for the calling thread. */
static cuda_device *enter(lk_device *dev) {
    cuda_device *d = (cuda_device *)dev;
    check_cuda(d, "cudaSetDevice", cudaSetDevice(d->ordinal));
    return d;
}

/* Blocks for a grid-stride loop over n elements. */
static unsigned blocks_for(size_t n) {
    size_t blocks = (n + THREADS - 1) / THREADS;
    return blocks < MAX_BLOCKS ? (unsigned)blocks : MAX_BLOCKS;
}

/* Queues kernel<<<blocks, THREADS>>>(args) on the device's stream. */
template <typename... P, typename... A>
static void launch(cuda_device *d, const char *op, void (*kernel)(P...), unsigned blocks,
                   A... args) {
    kernel<<<blocks, THREADS, 0, d->stream>>>(args...);
    check_cuda(d, op, cudaGetLastError());
}

#define GRID_STRIDE(i, n)                                                                          \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                        \
         i += (size_t)gridDim.x * blockDim.x)

/* ---- block reductions ------------------------------------------------- */

struct Sum {
    template <typename T> __device__ T operator()(T a, T b) const {
        return a + b;
    }
};
struct Max {
    __device__ float operator()(float a, float b) const {
        return a > b ? a : b;
    }
};

/* Reduces v over the block (warp shuffles, then across warps); every thread
 * gets the result. identity fills the lanes past the last warp. */
template <typename T, typename Op> __device__ T block_reduce(T v, Op op, T identity) {
    __shared__ T partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads(); /* partial may still be read by a previous call */
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? partial[lane] : identity;
    for (int o = 16; o > 0; o >>= 1)
        v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ---- kernels ---------------------------------------------------------- */

/* out_i[M,N] (row stride ldo) = 0 for i < count, out_i = out + i*step. */
__global__ void zero_kernel(float *out, int ldo, size_t step, int M, int N, size_t total) {
    GRID_STRIDE(idx, total) {
        size_t j = idx % N, row = idx / N, i = row / M, r = row % M;
        out[i * step + r * ldo + j] = 0.0f;
    }
}

/* out[M,N] (row stride ldo) += bias[N] on every row. */
__global__ void bias_kernel(float *out, int ldo, const float *bias, int N, size_t total) {
    GRID_STRIDE(idx, total) out[(idx / N) * ldo + idx % N] += bias[idx % N];
}

/* One block per row of inp[N,C]: normalized[N,C] and scale[N]. */
__global__ void layernorm_pre_kernel(float *normalized, float *scale, const float *inp, int C,
                                     float eps) {
    const size_t row = blockIdx.x;
    const float *x = inp + row * C;
    float *y = normalized + row * C;
    double sum = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        sum += x[c];
    const float mean = (float)(block_reduce(sum, Sum(), 0.0) / C);
    double sq = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float centred = x[c] - mean;
        sq += __dmul_rn(centred, centred);
    }
    const float s = sqrtf((float)(block_reduce(sq, Sum(), 0.0) / C) + eps);
    if (threadIdx.x == 0) scale[row] = s;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        y[c] = (x[c] - mean) / s;
}

/* One block per row of inp[N,C]: normalized[N,C] = x / scale and scale[N]
 * = sqrt(mean(x^2) + eps). Squares of floats are exact in double, so only
 * the order of the sum differs from the CPU's. */
__global__ void rmsnorm_pre_kernel(float *normalized, float *scale, const float *inp, int C,
                                   float eps) {
    const size_t row = blockIdx.x;
    const float *x = inp + row * C;
    float *y = normalized + row * C;
    double sq = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        sq += __dmul_rn(x[c], x[c]);
    const float s = sqrtf((float)(block_reduce(sq, Sum(), 0.0) / C) + eps);
    if (threadIdx.x == 0) scale[row] = s;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        y[c] = x[c] / s;
}

/* out[N,C] = inp[N,C] * w[C] + b[C]; total = N*C. */
__global__ void affine_kernel(float *out, const float *inp, const float *w, const float *b, int C,
                              size_t total) {
    GRID_STRIDE(idx, total) {
        size_t c = idx % C;
        out[idx] = __fmul_rn(inp[idx], w[c]) + (b ? b[c] : 0.0f);
    }
}

/* out[n] = a[n] + b[n]. */
__global__ void add_kernel(float *out, const float *a, const float *b, size_t n) {
    GRID_STRIDE(idx, n) out[idx] = a[idx] + b[idx];
}

__device__ float activate(lk_act act, float x) {
    switch (act) {
    case LK_RELU:
        return x < 0.0f ? 0.0f : x; /* NaN stays NaN, as torch.relu */
    case LK_GELU:
        return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2));
    case LK_GELU_NEW: {
        /* 0.5 x (1 + tanh(u)) written as x / (1 + exp(-2u)), as the CPU does */
        const float two_k = 2.0f * sqrtf(2.0f / (float)M_PI);
        return x / (1.0f + expf(-two_k * (x + __fmul_rn(0.044715f * x * x, x))));
    }
    case LK_GELU_FAST:
        return 0.5f * x * (1.0f + tanhf(x * 0.7978845608f * (1.0f + __fmul_rn(0.044715f * x, x))));
    case LK_SILU:
        return x / (1.0f + expf(-x));
    }
    return x;
}

/* out[n] = act(inp[n]). */
__global__ void activation_kernel(lk_act act, float *out, const float *inp, size_t n) {
    GRID_STRIDE(idx, n) out[idx] = activate(act, inp[idx]);
}

/* out[n] = act(gate[n]) * linear[n]: the activation above, then one
 * product, as the CPU rounds them. */
__global__ void gated_activation_kernel(lk_act act, float *out, const float *gate,
                                        const float *linear, size_t n) {
    GRID_STRIDE(idx, n) out[idx] = activate(act, gate[idx]) * linear[idx];
}

/* x[n] *= factor. */
__global__ void scale_kernel(float *x, size_t n, float factor) {
    GRID_STRIDE(idx, n) x[idx] *= factor;
}

/* cap * tanh(x / cap): lk_softcap's values and the soft-capped scores. */
__device__ float soft_cap(float x, float cap) {
    return cap * tanhf(x / cap);
}

/* x[n] = soft_cap(x[n], cap). */
__global__ void softcap_kernel(float *x, size_t n, float cap) {
    GRID_STRIDE(idx, n) x[idx] = soft_cap(x[idx], cap);
}

/* One thread per (row, head, pair) of x[N, H, dh], in place: the pair
 * (i1, i2) of frequency i < half = rotary_dim / 2 is (i, i + half) in
 * GPT-NeoX style, (2i, 2i + 1) interleaved (GPT-J); cos and sin are
 * [n_positions, half], positions [N]; total = N*H*half. Each product is
 * rounded before the sum, as on the CPU. */
__global__ void rotary_kernel(float *x, int H, int dh, int half, bool interleaved, const float *cos,
                              const float *sin, const int32_t *positions, size_t total) {
    GRID_STRIDE(idx, total) {
        const size_t i = idx % half, head = idx / half, n = head / H;
        const size_t angle = (size_t)positions[n] * half + i;
        const size_t i1 = interleaved ? 2 * i : i, i2 = interleaved ? 2 * i + 1 : i + half;
        float *v = x + head * dh;
        const float a = v[i1], b = v[i2], c = cos[angle], s = sin[angle];
        v[i1] = __fmul_rn(a, c) - __fmul_rn(b, s);
        v[i2] = __fmul_rn(b, c) + __fmul_rn(a, s);
    }
}

/* One block per row of inp[N,C]: the row's maximum, with the CPU's compare. */
__device__ float row_max(const float *x, int C) {
    float m = -INFINITY;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        m = x[c] > m ? x[c] : m;
    return block_reduce(m, Max(), -INFINITY);
}

/* One block per row of inp[N,C] -> out[N,C]. */
__global__ void softmax_kernel(float *out, const float *inp, int C) {
    const float *x = inp + (size_t)blockIdx.x * C;
    float *y = out + (size_t)blockIdx.x * C;
    const float m = row_max(x, C);
    if (m == -INFINITY) { /* the whole block takes this branch */
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            y[c] = 0.0f;
        return;
    }
    double sum = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        y[c] = expf(x[c] - m);
        sum += y[c];
    }
    const float inv = (float)(1.0 / block_reduce(sum, Sum(), 0.0));
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        y[c] *= inv;
}

/* One block per row of inp[N,C] -> out[N,C]: x * softmax(x). */
__global__ void solu_kernel(float *out, const float *inp, int C) {
    const float *x = inp + (size_t)blockIdx.x * C;
    float *y = out + (size_t)blockIdx.x * C;
    const float m = row_max(x, C);
    double sum = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        sum += expf(x[c] - m);
    sum = block_reduce(sum, Sum(), 0.0);
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        y[c] = x[c] * (float)(expf(x[c] - m) / sum);
}

/* One block per row n = b*T + t of tokens[B,T]: tok_out[n, :d] and
 * pos_out[n, :d], positions offset by the attention mask as lk.h says. */
__global__ void embed_kernel(float *tok_out, float *pos_out, const float *W_E, const float *W_pos,
                             const int32_t *tokens, const uint8_t *attn_mask, int T, int d) {
    const size_t n = blockIdx.x;
    const int t = (int)(n % T);
    int p = t;
    bool pad = false;
    if (attn_mask) {
        const uint8_t *prompt = attn_mask + (n - t);
        int seen = 0;
        for (int i = threadIdx.x; i <= t; i += blockDim.x)
            seen += prompt[i] != 0;
        seen = block_reduce(seen, Sum(), 0);
        p = seen > 0 ? seen - 1 : 0;
        pad = !attn_mask[n];
    }
    const float *e = W_E + (size_t)tokens[n] * d, *pe = W_pos + (size_t)p * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        tok_out[n * d + c] = e[c];
        pos_out[n * d + c] = pad ? 0.0f : pe[c];
    }
}

/* The prompt whose packed query rows hold row n: the last b with row[b] <= n
 * (row is ascending, row[0] = 0). */
__device__ int prompt_of_row(const int32_t *row, int B, size_t n) {
    int lo = 0, hi = B - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if ((size_t)row[mid] <= n)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Scores in place (lk_mask_scores' layout); total = H*T*(query rows). */
__global__ void mask_scores_kernel(float *scores, int B, int H, int T, float attn_scale,
                                   lk_score_mask m, size_t total) {
    GRID_STRIDE(idx, total) {
        const int k = (int)(idx % T);
        int b, q;
        if (m.queries.start) {
            b = prompt_of_row(m.queries.row, B, idx / ((size_t)H * T));
            const int q0 = m.queries.start[b];
            const size_t in_block = idx - (size_t)m.queries.row[b] * H * T;
            q = q0 + (int)(in_block / T % (size_t)(T - q0));
        } else {
            b = (int)(idx / ((size_t)H * T * T));
            q = (int)(idx / T % T);
        }
        const size_t key = (size_t)b * T + k;
        bool masked = m.causal && (k > q || (m.window > 0 && k <= q - m.window) ||
                                   (m.attn_mask && !m.attn_mask[key]));
        float s = scores[idx] / attn_scale;
        if (m.softcap > 0.0f) s = soft_cap(s, m.softcap);
        if (masked) s = m.masked_score != 0.0f ? m.masked_score : -INFINITY;
        if (m.pad_id >= 0 && m.tokens[key] == m.pad_id) s = m.pad_score;
        scores[idx] = s;
    }
}

/* One block per output (b, j) of lk_matmul_columns: a dot product of x's row
 * with a (strided) column of W, summed in double. */
__global__ void matmul_columns_kernel(float *out, const float *x, const float *W, const float *bias,
                                      const int32_t *ids, int P, int n, int C, int V) {
    const size_t b = blockIdx.x / n, j = blockIdx.x % n;
    const size_t id = (size_t)ids[(b % P) * n + j];
    const float *xb = x + b * C;
    double acc = 0.0;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        acc += (double)xb[c] * W[(size_t)c * V + id];
    acc = block_reduce(acc, Sum(), 0.0);
    if (threadIdx.x == 0) out[blockIdx.x] = (float)(acc + (bias ? bias[id] : 0.0f));
}

/* lk_splice_prefix; total = B*T*C. */
__global__ void splice_prefix_kernel(float *out, const float *prefix, const float *computed,
                                     lk_query_rows q, int P, int T, int C, size_t total) {
    GRID_STRIDE(idx, total) {
        const size_t c = idx % C, t = idx / C % T, b = idx / ((size_t)C * T);
        const size_t t0 = (size_t)q.start[b];
        out[idx] = t < t0 ? prefix[((b % P) * T + t) * C + c]
                          : computed[((size_t)q.row[b] + t - t0) * C + c];
    }
}

/* out[N,R,C] = inp[N,C] repeated; total = N*R*C. */
__global__ void repeat_rows_kernel(float *out, const float *inp, int R, int C, size_t total) {
    GRID_STRIDE(idx, total) out[idx] = inp[idx / ((size_t)R * C) * C + idx % C];
}

/* out[N,C] = bias[C] + inp[N,0,C] + inp[N,1,C] + ... (G groups, in order). */
__global__ void sum_groups_kernel(float *out, const float *inp, const float *bias, int G, int C,
                                  size_t total) {
    GRID_STRIDE(idx, total) {
        const size_t n = idx / C, c = idx % C;
        float acc = bias ? bias[c] : 0.0f;
        for (int g = 0; g < G; g++)
            acc += inp[(n * G + g) * C + c];
        out[idx] = acc;
    }
}

/* out[n,C] = inp[rows[n], :]; total = n*C. */
__global__ void gather_rows_kernel(float *out, const float *inp, const int32_t *rows, int C,
                                   size_t total) {
    GRID_STRIDE(idx, total) out[idx] = inp[(size_t)rows[idx / C] * C + idx % C];
}

/* ---- device, memory, recording ---------------------------------------- */

static void cuda_close(lk_device *dev) {
    cuda_device *d = (cuda_device *)dev;
    cudaSetDevice(d->ordinal);
    if (d->blas) cublasDestroy(d->blas);
    if (d->workspace) cudaFree(d->workspace);
    if (d->stream) cudaStreamDestroy(d->stream);
    cudaGetLastError();
    free(d);
}

static void cuda_describe(lk_device *dev, lk_device_info *info) {
    cuda_device *d = (cuda_device *)dev;
    snprintf(info->name, sizeof info->name, "%s", d->name);
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaSetDevice(d->ordinal) == cudaSuccess &&
        cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
        info->total_bytes = total_bytes;
        info->free_bytes = free_bytes;
    }
    cudaGetLastError();
}

static void *cuda_alloc(lk_device *dev, size_t bytes) {
    enter(dev);
    void *ptr = NULL;
    if (cudaMalloc(&ptr, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError(); /* out of memory is an answer, not a device failure */
        return NULL;
    }
    return ptr;
}

static void cuda_free(lk_device *dev, void *ptr) {
    cuda_device *d = enter(dev);
    check_cuda(d, "free", cudaStreamSynchronize(d->stream));
    check_cuda(d, "free", cudaFree(ptr));
}

static void *cuda_host_alloc(lk_device *dev, size_t bytes) {
    enter(dev);
    void *ptr = NULL;
    if (cudaMallocHost(&ptr, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    return ptr;
}

static void cuda_host_free(lk_device *dev, void *ptr) {
    cuda_device *d = enter(dev);
    check_cuda(d, "host_free", cudaFreeHost(ptr));
}

static void cuda_upload(lk_device *dev, void *dst, const void *src, size_t bytes) {
    cuda_device *d = enter(dev);
    check_cuda(d, "upload", cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, d->stream));
    check_cuda(d, "upload", cudaStreamSynchronize(d->stream));
}

static void cuda_download(lk_device *dev, void *dst, const void *src, size_t bytes) {
    cuda_device *d = enter(dev);
    check_cuda(d, "download", cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, d->stream));
    check_cuda(d, "download", cudaStreamSynchronize(d->stream));
}

static void cuda_copy(lk_device *dev, void *dst, const void *src, size_t bytes) {
    cuda_device *d = enter(dev);
    check_cuda(d, "copy", cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, d->stream));
}

static int cuda_finish(lk_device *dev, char *why, size_t why_len) {
    cuda_device *d = enter(dev);
    check_cuda(d, "finish", cudaStreamSynchronize(d->stream));
    if (!d->failed) return 0;
    snprintf(why, why_len, "%s", d->error);
    d->failed = false;
    cudaGetLastError();
    return -1;
}

static bool cuda_record_begin(lk_device *dev) {
    cuda_device *d = enter(dev);
    if (cudaStreamBeginCapture(d->stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess)
        return true;
    cudaGetLastError();
    return false;
}

/* A recording during which an operation failed yields no graph; the failure
 * stays for lk_finish. */
static lk_graph *cuda_record_end(lk_device *dev) {
    cuda_device *d = enter(dev);
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t err = cudaStreamEndCapture(d->stream, &graph);
    if (err == cudaSuccess) {
        err = cudaGraphInstantiate(&exec, graph, 0);
        cudaGraphDestroy(graph);
    }
    cudaGetLastError();
    if (err != cudaSuccess || d->failed) {
        if (err == cudaSuccess) cudaGraphExecDestroy(exec);
        return NULL;
    }
    lk_graph *g = (lk_graph *)malloc(sizeof *g);
    if (!g) {
        cudaGraphExecDestroy(exec);
        return NULL;
    }
    g->exec = exec;
    return g;
}

static void cuda_graph_launch(lk_device *dev, lk_graph *graph) {
    cuda_device *d = enter(dev);
    check_cuda(d, "graph_launch", cudaGraphLaunch(graph->exec, d->stream));
}

static void cuda_graph_free(lk_device *dev, lk_graph *graph) {
    cuda_device *d = enter(dev);
    check_cuda(d, "graph_free", cudaStreamSynchronize(d->stream));
    check_cuda(d, "graph_free", cudaGraphExecDestroy(graph->exec));
    free(graph);
}

/* ---- operations ------------------------------------------------------- */

/* Row-major products go to column-major cuBLAS as their transposes:
 * out^T[N,M] = b^T[N,K] a^T[K,M], each row-major matrix read in place as
 * its column-major transpose. */
static void cuda_matmul(lk_device *dev, float *out, int ldo, const float *a, int lda,
                        const float *b, int ldb, const float *bias, int M, int K, int N,
                        bool accumulate) {
    cuda_device *d = enter(dev);
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    if (K > 0)
        check_blas(d, "matmul",
                   cublasSgemm(d->blas, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &one, b, ldb, a, lda,
                               &beta, out, ldo));
    else if (!accumulate)
        launch(d, "matmul", zero_kernel, blocks_for((size_t)M * N), out, ldo, (size_t)0, M, N,
               (size_t)M * N);
    if (bias)
        launch(d, "matmul bias", bias_kernel, blocks_for((size_t)M * N), out, ldo, bias, N,
               (size_t)M * N);
}

/* b_transposed: b_i is row-major [N,K], read as column-major [K,N] and
 * transposed by cuBLAS. */
static void cuda_matmul_batched(lk_device *dev, float *out, int ldo, size_t out_step,
                                const float *a, int lda, size_t a_step, const float *b, int ldb,
                                size_t b_step, bool b_transposed, int M, int K, int N, int count) {
    cuda_device *d = enter(dev);
    const float one = 1.0f, zero = 0.0f;
    if (K == 0) {
        const size_t total = (size_t)count * M * N;
        launch(d, "matmul_batched", zero_kernel, blocks_for(total), out, ldo, out_step, M, N,
               total);
        return;
    }
    check_blas(d, "matmul_batched",
               cublasSgemmStridedBatched(d->blas, b_transposed ? CUBLAS_OP_T : CUBLAS_OP_N,
                                         CUBLAS_OP_N, N, M, K, &one, b, ldb, (long long)b_step, a,
                                         lda, (long long)a_step, &zero, out, ldo,
                                         (long long)out_step, count));
}

static void cuda_layernorm_pre(lk_device *dev, float *normalized, float *scale, const float *inp,
                               int N, int C, float eps) {
    launch(enter(dev), "layernorm_pre", layernorm_pre_kernel, (unsigned)N, normalized, scale, inp,
           C, eps);
}

static void cuda_rmsnorm_pre(lk_device *dev, float *normalized, float *scale, const float *inp,
                             int N, int C, float eps) {
    launch(enter(dev), "rmsnorm_pre", rmsnorm_pre_kernel, (unsigned)N, normalized, scale, inp, C,
           eps);
}

static void cuda_affine(lk_device *dev, float *out, const float *inp, const float *w,
                        const float *b, int N, int C) {
    const size_t total = (size_t)N * C;
    launch(enter(dev), "affine", affine_kernel, blocks_for(total), out, inp, w, b, C, total);
}

static void cuda_add(lk_device *dev, float *out, const float *a, const float *b, size_t n) {
    launch(enter(dev), "add", add_kernel, blocks_for(n), out, a, b, n);
}

static void cuda_activation(lk_device *dev, lk_act act, float *out, const float *inp, size_t n) {
    launch(enter(dev), "activation", activation_kernel, blocks_for(n), act, out, inp, n);
}

static void cuda_gated_activation(lk_device *dev, lk_act act, float *out, const float *gate,
                                  const float *linear, size_t n) {
    launch(enter(dev), "gated_activation", gated_activation_kernel, blocks_for(n), act, out, gate,
           linear, n);
}

static void cuda_scale(lk_device *dev, float *x, size_t n, float factor) {
    launch(enter(dev), "scale", scale_kernel, blocks_for(n), x, n, factor);
}

static void cuda_softcap(lk_device *dev, float *x, size_t n, float cap) {
    launch(enter(dev), "softcap", softcap_kernel, blocks_for(n), x, n, cap);
}

static void cuda_rotary(lk_device *dev, float *x, int N, int H, int dh, int rotary_dim,
                        bool interleaved, const float *cos, const float *sin,
                        const int32_t *positions) {
    const int half = rotary_dim / 2;
    const size_t total = (size_t)N * H * half;
    launch(enter(dev), "rotary", rotary_kernel, blocks_for(total), x, H, dh, half, interleaved, cos,
           sin, positions, total);
}

static void cuda_solu(lk_device *dev, float *out, const float *inp, int N, int C) {
    launch(enter(dev), "solu", solu_kernel, (unsigned)N, out, inp, C);
}

static void cuda_softmax_rows(lk_device *dev, float *out, const float *inp, int N, int C) {
    launch(enter(dev), "softmax_rows", softmax_kernel, (unsigned)N, out, inp, C);
}

static void cuda_embed(lk_device *dev, float *tok_out, float *pos_out, const float *W_E,
                       const float *W_pos, const int32_t *tokens, const uint8_t *attn_mask, int B,
                       int T, int d) {
    launch(enter(dev), "embed", embed_kernel, (unsigned)B * (unsigned)T, tok_out, pos_out, W_E,
           W_pos, tokens, attn_mask, T, d);
}

static void cuda_mask_scores(lk_device *dev, float *scores, int B, int H, int T, float attn_scale,
                             const lk_score_mask *mask) {
    const size_t rows = mask->queries.start ? (size_t)mask->queries.rows : (size_t)B * T;
    const size_t total = rows * H * T;
    launch(enter(dev), "mask_scores", mask_scores_kernel, blocks_for(total), scores, B, H, T,
           attn_scale, *mask, total);
}

static void cuda_matmul_columns(lk_device *dev, float *out, const float *x, const float *W,
                                const float *bias, const int32_t *ids, int B, int P, int n, int C,
                                int V) {
    launch(enter(dev), "matmul_columns", matmul_columns_kernel, (unsigned)B * (unsigned)n, out, x,
           W, bias, ids, P, n, C, V);
}

static void cuda_splice_prefix(lk_device *dev, float *out, const float *prefix,
                               const float *computed, lk_query_rows q, int B, int P, int T, int C) {
    const size_t total = (size_t)B * T * C;
    launch(enter(dev), "splice_prefix", splice_prefix_kernel, blocks_for(total), out, prefix,
           computed, q, P, T, C, total);
}

static void cuda_repeat_rows(lk_device *dev, float *out, const float *inp, int N, int R, int C) {
    const size_t total = (size_t)N * R * C;
    launch(enter(dev), "repeat_rows", repeat_rows_kernel, blocks_for(total), out, inp, R, C, total);
}

static void cuda_sum_groups(lk_device *dev, float *out, const float *inp, const float *bias, int N,
                            int G, int C) {
    const size_t total = (size_t)N * C;
    launch(enter(dev), "sum_groups", sum_groups_kernel, blocks_for(total), out, inp, bias, G, C,
           total);
}

static void cuda_gather_rows(lk_device *dev, float *out, const float *inp, const int32_t *rows,
                             int n, int C) {
    const size_t total = (size_t)n * C;
    launch(enter(dev), "gather_rows", gather_rows_kernel, blocks_for(total), out, inp, rows, C,
           total);
}

static const lk_ops cuda_ops = {
    .close = cuda_close,
    .describe = cuda_describe,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .copy = cuda_copy,
    .finish = cuda_finish,
    .record_begin = cuda_record_begin,
    .record_end = cuda_record_end,
    .graph_launch = cuda_graph_launch,
    .graph_free = cuda_graph_free,
    .matmul = cuda_matmul,
    .matmul_batched = cuda_matmul_batched,
    .layernorm_pre = cuda_layernorm_pre,
    .rmsnorm_pre = cuda_rmsnorm_pre,
    .affine = cuda_affine,
    .add = cuda_add,
    .activation = cuda_activation,
    .gated_activation = cuda_gated_activation,
    .scale = cuda_scale,
    .softcap = cuda_softcap,
    .rotary = cuda_rotary,
    .solu = cuda_solu,
    .softmax_rows = cuda_softmax_rows,
    .embed = cuda_embed,
    .mask_scores = cuda_mask_scores,
    .repeat_rows = cuda_repeat_rows,
    .sum_groups = cuda_sum_groups,
    .matmul_columns = cuda_matmul_columns,
    .splice_prefix = cuda_splice_prefix,
    .gather_rows = cuda_gather_rows,
};

/* Opens GPU number ordinal with its own stream, cuBLAS handle (float32 math,
 * no TF32) and workspace. Returns NULL with the reason in why: no GPU or no
 * driver, ordinal out of range, or a setup step that failed (then nothing
 * stays allocated). */
extern "C" lk_device *lk_cuda_open(int ordinal, char *why, size_t why_len) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        snprintf(why, why_len, "no GPU: %s",
                 err != cudaSuccess ? cudaGetErrorString(err) : "the CUDA runtime sees no device");
        cudaGetLastError();
        return NULL;
    }
    if (ordinal < 0 || ordinal >= count) {
        snprintf(why, why_len, "cuda:%d: this machine has %d GPU%s", ordinal, count,
                 count == 1 ? "" : "s");
        return NULL;
    }
    cuda_device *d = (cuda_device *)calloc(1, sizeof *d);
    if (!d) {
        snprintf(why, why_len, "cuda:%d: out of host memory", ordinal);
        return NULL;
    }
    d->base.ops = &cuda_ops;
    d->base.host_memory = false;
    d->ordinal = ordinal;
    cudaDeviceProp prop;
    const char *step = NULL;
    if ((err = cudaSetDevice(ordinal)))
        step = "cudaSetDevice";
    else if ((err = cudaGetDeviceProperties(&prop, ordinal)))
        step = "cudaGetDeviceProperties";
    else if ((err = cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking)))
        step = "cudaStreamCreate";
    else if ((err = cudaMalloc(&d->workspace, WORKSPACE_BYTES)))
        step = "cudaMalloc (cuBLAS workspace)";
    if (step) {
        snprintf(why, why_len, "cuda:%d: %s: %s", ordinal, step, cudaGetErrorString(err));
        cuda_close(&d->base);
        return NULL;
    }
    /* cublasSetStream resets the workspace, so the workspace comes after */
    cublasStatus_t status;
    if ((status = cublasCreate(&d->blas)))
        step = "cublasCreate";
    else if ((status = cublasSetStream(d->blas, d->stream)))
        step = "cublasSetStream";
    else if ((status = cublasSetWorkspace(d->blas, d->workspace, WORKSPACE_BYTES)))
        step = "cublasSetWorkspace";
    else if ((status = cublasSetMathMode(d->blas, CUBLAS_DEFAULT_MATH)))
        step = "cublasSetMathMode";
    if (step) {
        snprintf(why, why_len, "cuda:%d: %s: %s", ordinal, step, cublasGetStatusString(status));
        cuda_close(&d->base);
        return NULL;
    }
    snprintf(d->name, sizeof d->name, "%.100s (cuda:%d)", prop.name, ordinal);
    return &d->base;
}
