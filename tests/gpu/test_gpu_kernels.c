/*
 * test_gpu_kernels.c: the CUDA backend of kernels/lk.h, checked against the
 * CPU backend operation by operation.
 *
 * Every operation runs on "cuda:0" and on lk_cpu() with the same inputs, and
 * the two results are compared element by element; tests/unit/test_kernels.c
 * checks the CPU backend against the mathematical definitions, so agreement
 * here carries that over to the GPU. Inputs come from a seeded xorshift
 * generator, so a failure reproduces exactly. Both devices go through
 * lk_alloc, lk_upload and lk_download alike. Shapes are odd (37, 53, 71, 769,
 * 1031), row strides wider than the rows, and attention heads sit side by
 * side in [T, n_heads * d_head] rows as core/forward.c addresses them.
 *
 * Outputs are uploaded with NaN in every cell the call must write and a
 * sentinel in the cells it must leave alone (row padding, gaps between
 * batched products, TAIL cells past the end), so a cell the GPU forgets
 * fails, and so does one it writes out of bounds. lk_finish must return 0 on
 * both devices before every comparison.
 *
 * Without a GPU (none present, or a build without CUDA) every test is
 * skipped with the reason, the reason is printed once to stderr, and the
 * program exits with 77, which meson reports as SKIP, never as OK.
 *
 * Tolerances, with u = 2^-24 (float32's unit roundoff, 6e-8):
 * - Elementwise operations and row reductions: |gpu - cpu| <= 1e-6 +
 *   1e-5 |cpu|. The backends evaluate the same float32 formulas, but in
 *   different orders (tree reductions on the GPU, double accumulators on the
 *   CPU), with different libms (CUDA's erff, tanhf, expf against glibc's, a
 *   few ulps each) and with FMA contraction on the GPU: a few u apiece. The
 *   relative 1e-5 (about 170 u) leaves room for that, while a wrong index,
 *   stride, mask or formula is off by orders of magnitude more. The absolute
 *   1e-6 covers results that cancel to near zero, where relative error means
 *   nothing: GELU of x near -4 is 0.5x(1 + t) with t near -1 carrying an
 *   absolute error of an ulp of 1, and x*w + b with and without FMA differs
 *   by up to u|x*w|. Inputs are kept where those stay below it.
 *   lk_gated_activation's linear factor lies in [-1, 1], so the product
 *   carries at most the activation's error plus one rounding. lk_softcap
 *   and soft-capped scores are a division, tanhf (a few ulps on each
 *   side) and a product. lk_rotary rounds both products before their sum
 *   on both sides (__fmul_rn on the GPU); with |x|, |cos|, |sin| <= 1, a
 *   result that cancels is still within ATOL.
 * - Matrix products: a K-term float32 dot product, in any order or blocking,
 *   is within (K + 2) u (sum_k |a_ik b_kj| + |bias_j| + |out_ij| when
 *   accumulating) of the exact value (Higham, "Accuracy and Stability of
 *   Numerical Algorithms", 3.1). Two such results differ by at most twice
 *   that, which is below 1e-5 times the same sum for K <= 81; every product
 *   here has K <= 79, so the check is rigorous. TF32 tensor-core math
 *   (u = 2^-11) misses it by far, as it should: parity with TransformerLens
 *   needs full float32.
 * - Copies (lk_embed, lk_repeat_rows, lk_splice_prefix, lk_gather_rows) must be exact, and so
 *   must masking: -INFINITY wherever the CPU has -INFINITY, and exactly 0
 *   from softmax for -INFINITY inputs, all-masked rows included. lk_scale
 *   is one correctly rounded product per value: exact too, and so are the
 *   values past rotary_dim that lk_rotary must leave alone.
 */
#include <criterion/criterion.h>
#include <criterion/hooks.h>

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/lk.h"

#define RTOL 1e-5
#define ATOL 1e-6
#define MM_RTOL 1e-5

/* Cells a call must not write hold this; TAIL of them follow every output. */
#define SENTINEL (-1234.5f)
#define TAIL 16

#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))

/* ---- the two devices --------------------------------------------------- */

enum { CPU, GPU };
static const char *const SIDE[] = {"cpu", "gpu"};

static lk_device *dev[2];
static char no_gpu_why[256];
static int live_pairs;

#define EACH_SIDE(s) for (int s = CPU; s <= GPU; s++)

/* Runs in each test's process before the test. */
static void open_devices(void) {
    dev[CPU] = lk_cpu();
    dev[GPU] = lk_open("cuda:0", no_gpu_why, sizeof no_gpu_why);
}

/* A failed assertion leaves buffers allocated, which lk_close must not see;
 * the process ends right after and that releases them. */
static void close_devices(void) {
    if (live_pairs == 0) lk_close(dev[GPU]);
}

TestSuite(gpu_kernels, .init = open_devices, .fini = close_devices);

#define NEED_GPU()                                                                                 \
    do {                                                                                           \
        if (!dev[GPU]) cr_skip_test("skipped: no GPU (%s)", no_gpu_why);                           \
    } while (0)

/* ---- inputs ------------------------------------------------------------ */

/* xorshift64*; the seed must not be 0. */
typedef struct {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545f4914f6cdd1dULL;
}

/* Uniform in [lo, hi]. */
static float rng_float(rng *r, float lo, float hi) {
    return lo + (hi - lo) * (float)((double)(rng_next(r) >> 11) * 0x1p-53);
}

/* Uniform in [lo, hi). */
static int rng_int(rng *r, int lo, int hi) {
    return lo + (int)(rng_next(r) % (uint64_t)(hi - lo));
}

static void *host_alloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    cr_assert_not_null(p, "out of host memory (%zu bytes)", bytes);
    return p;
}

static float *host_floats(size_t n) {
    return host_alloc(n * sizeof(float));
}

/* Tolerances start at 0: cells nobody sets must come out equal. */
static double *zero_tols(size_t n) {
    double *t = calloc(n ? n : 1, sizeof *t);
    cr_assert_not_null(t, "out of host memory");
    return t;
}

static void frees(void *const *ptrs, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(ptrs[i]);
}

#define FREE_HOST(...)                                                                             \
    frees((void *const[]){__VA_ARGS__}, sizeof((void *const[]){__VA_ARGS__}) / sizeof(void *))

static void fill_value(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

static void set_block(float *x, int ld, int rows, int cols, float v) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            x[(size_t)i * ld + j] = v;
}

static void fill_block(rng *r, float *x, int ld, int rows, int cols, float lo, float hi) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            x[(size_t)i * ld + j] = rng_float(r, lo, hi);
}

static float *randoms(rng *r, size_t n, float lo, float hi) {
    float *x = host_floats(n);
    for (size_t i = 0; i < n; i++)
        x[i] = rng_float(r, lo, hi);
    return x;
}

/* [rows, cols] values at row stride ld, the padding NaN (so a wrong stride
 * shows). */
static float *random_matrix(rng *r, int rows, int cols, int ld, float lo, float hi) {
    float *x = host_floats((size_t)rows * ld);
    set_block(x, ld, rows, ld, NAN);
    fill_block(r, x, ld, rows, cols, lo, hi);
    return x;
}

/* The starting contents of an output of n floats, and TAIL more: all
 * SENTINEL, for the caller to poison with NaN the cells the call writes. */
static float *out_image(size_t n) {
    float *x = host_floats(n + TAIL);
    fill_value(x, n + TAIL, SENTINEL);
    return x;
}

static void poison(float *img, int ld, int rows, int cols) {
    set_block(img, ld, rows, cols, NAN);
}

/* ---- one buffer on both devices ---------------------------------------- */

typedef struct {
    size_t bytes;
    void *on[2]; /* indexed by CPU, GPU */
} pair;

#define F(p, s) ((float *)(p).on[s])
#define I32(p, s) ((const int32_t *)(p).on[s])
#define U8(p, s) ((const uint8_t *)(p).on[s])

static void pair_upload(const pair *p, const void *host) {
    EACH_SIDE(s) lk_upload(dev[s], p->on[s], host, p->bytes);
}

/* Allocates bytes on both devices and uploads host to each. A NULL host
 * gives the empty pair, whose pointers are NULL (an absent bias or mask). */
static pair pair_new(const void *host, size_t bytes) {
    pair p = {bytes, {NULL, NULL}};
    if (!host) return p;
    EACH_SIDE(s) {
        p.on[s] = lk_alloc(dev[s], bytes ? bytes : 64);
        cr_assert_not_null(p.on[s], "lk_alloc(%s, %zu) returned NULL", SIDE[s], bytes);
    }
    live_pairs++;
    pair_upload(&p, host);
    return p;
}

static pair floats_pair(const float *host, size_t n) {
    return pair_new(host, n * sizeof(float));
}

/* An output of n floats from out_image. */
static pair out_pair(const float *img, size_t n) {
    return floats_pair(img, n + TAIL);
}

static void pairs_free(pair *const *ps, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!ps[i]->on[CPU]) continue;
        EACH_SIDE(s) lk_free(dev[s], ps[i]->on[s]);
        ps[i]->on[CPU] = ps[i]->on[GPU] = NULL;
        live_pairs--;
    }
}

#define FREE_PAIRS(...)                                                                            \
    pairs_free((pair *const[]){__VA_ARGS__}, sizeof((pair *const[]){__VA_ARGS__}) / sizeof(pair *))

/* ---- comparisons ------------------------------------------------------- */

static void finish_both(void) {
    EACH_SIDE(s) {
        char why[256] = "";
        int rc = lk_finish(dev[s], why, sizeof why);
        cr_assert_eq(rc, 0, "lk_finish(%s) returned %d: %s", SIDE[s], rc, why);
    }
}

/* p's contents on one side, in a malloc'd host array. */
static float *fetch(const pair *p, int side) {
    float *x = host_alloc(p->bytes);
    lk_download(dev[side], x, p->on[side], p->bytes);
    return x;
}

/* Asserts that got matches want element by element: equal values pass
 * (infinities of the same sign included), NaN or an infinity against
 * anything else fails, and otherwise |got - want| <= tol[i], or 0 when
 * exact, or ATOL + RTOL |want| when tol is NULL. Names the element furthest
 * out of tolerance. */
static void compare(const char *what, const char *got_name, const float *got, const char *want_name,
                    const float *want, size_t n, const double *tol, bool exact) {
    size_t n_bad = 0, worst = 0;
    double worst_ratio = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (got[i] == want[i]) continue;
        double t = exact ? 0.0 : tol ? tol[i] : ATOL + RTOL * fabs((double)want[i]);
        double err = fabs((double)got[i] - (double)want[i]);
        if (isfinite(got[i]) && isfinite(want[i]) && err <= t) continue;
        double ratio = isfinite(err) && t > 0.0 ? err / t : INFINITY;
        if (n_bad++ == 0 || ratio > worst_ratio) {
            worst = i;
            worst_ratio = ratio;
        }
    }
    if (n_bad) {
        double t = exact ? 0.0 : tol ? tol[worst] : ATOL + RTOL * fabs((double)want[worst]);
        cr_assert_fail("%s: %zu of %zu values differ; worst [%zu]: %s %.9g, %s %.9g, tol %.3g",
                       what, n_bad, n, worst, got_name, (double)got[worst], want_name,
                       (double)want[worst], t);
    }
}

static void vcheck(const pair *p, const double *tol, bool exact, const char *fmt, va_list ap) {
    char what[256];
    vsnprintf(what, sizeof what, fmt, ap);
    finish_both();
    float *cpu = fetch(p, CPU), *gpu = fetch(p, GPU);
    compare(what, "gpu", gpu, "cpu", cpu, p->bytes / sizeof(float), tol, exact);
    FREE_HOST(cpu, gpu);
}

/* The GPU's copy of p within ATOL + RTOL |cpu| of the CPU's. */
PRINTF_LIKE(2, 3) static void check_close(const pair *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vcheck(p, NULL, false, fmt, ap);
    va_end(ap);
}

/* The same within tol[i] of element i. */
PRINTF_LIKE(3, 4) static void check_within(const pair *p, const double *tol, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vcheck(p, tol, false, fmt, ap);
    va_end(ap);
}

/* The same bit for bit (but for the sign of zeros). */
PRINTF_LIKE(2, 3) static void check_exact(const pair *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vcheck(p, NULL, true, fmt, ap);
    va_end(ap);
}

/* Tolerances of out[i, j] = prev[i, j] + sum_k a[i, k] b[k, j] + bias[j]
 * for i < M, j < N (stride ldo), where b[k, j] is b[j * ldb + k] when
 * b_transposed and prev and bias may be NULL: MM_RTOL times the sum of the
 * terms' magnitudes (see the top). */
static void matmul_tol(double *tol, int ldo, const float *prev, const float *a, int lda,
                       const float *b, int ldb, bool b_transposed, const float *bias, int M, int K,
                       int N) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            const size_t o = (size_t)i * ldo + j;
            double mag = (bias ? fabs(bias[j]) : 0.0) + (prev ? fabs(prev[o]) : 0.0);
            for (int k = 0; k < K; k++) {
                double bkj = b_transposed ? b[(size_t)j * ldb + k] : b[(size_t)k * ldb + j];
                mag += fabs((double)a[(size_t)i * lda + k] * bkj);
            }
            tol[o] = MM_RTOL * mag;
        }
}

/* ---- lk_matmul --------------------------------------------------------- */

typedef struct {
    int M, K, N, lda, ldb, ldo;
    bool bias, accumulate;
} mm_case;

static void check_matmul(uint64_t seed, mm_case c) {
    rng r = {seed};
    float *a = random_matrix(&r, c.M, c.K, c.lda, -1, 1);
    float *b = random_matrix(&r, c.K, c.N, c.ldb, -1, 1);
    float *bias = c.bias ? randoms(&r, (size_t)c.N, -1, 1) : NULL;
    const size_t n = (size_t)c.M * c.ldo;
    float *img = out_image(n);
    if (c.accumulate)
        fill_block(&r, img, c.ldo, c.M, c.N, -2, 2);
    else
        poison(img, c.ldo, c.M, c.N);
    double *tol = zero_tols(n + TAIL);
    matmul_tol(tol, c.ldo, c.accumulate ? img : NULL, a, c.lda, b, c.ldb, false, bias, c.M, c.K,
               c.N);

    pair pa = floats_pair(a, (size_t)c.M * c.lda), pb = floats_pair(b, (size_t)c.K * c.ldb);
    pair pbias = floats_pair(bias, (size_t)c.N), po = out_pair(img, n);
    EACH_SIDE(s) {
        lk_matmul(dev[s], F(po, s), c.ldo, F(pa, s), c.lda, F(pb, s), c.ldb, F(pbias, s), c.M, c.K,
                  c.N, c.accumulate);
    }
    check_within(&po, tol, "matmul M=%d K=%d N=%d lda=%d ldb=%d ldo=%d bias=%d accumulate=%d", c.M,
                 c.K, c.N, c.lda, c.ldb, c.ldo, c.bias, c.accumulate);

    FREE_PAIRS(&pa, &pb, &pbias, &po);
    FREE_HOST(a, b, bias, img, tol);
}

Test(gpu_kernels, matmul_contiguous) {
    NEED_GPU();
    check_matmul(101, (mm_case){37, 53, 71, 53, 71, 71, false, false});
}

Test(gpu_kernels, matmul_strided_bias_accumulate) {
    NEED_GPU();
    for (int v = 0; v < 4; v++)
        check_matmul(102 + v, (mm_case){37, 53, 71, 60, 80, 75, v & 1, v & 2});
}

/* One row, one column, one term: the shapes cuBLAS may route elsewhere. */
Test(gpu_kernels, matmul_thin) {
    NEED_GPU();
    static const int shapes[][3] = {{1, 53, 71}, {37, 53, 1}, {37, 1, 71}, {1, 1, 1}};
    for (int i = 0; i < 4; i++) {
        const int M = shapes[i][0], K = shapes[i][1], N = shapes[i][2];
        check_matmul(110 + i, (mm_case){M, K, N, K + 2, N + 3, N + 1, true, false});
        check_matmul(120 + i, (mm_case){M, K, N, K, N, N, false, true});
    }
}

/* Few rows against many columns and long sums, the shapes of short prompts
 * and last-position logits (where cuBLAS picks split-k and gemv-like
 * kernels), with every combination of bias and accumulate. The float32
 * bound of check_matmul is rigorous up to K = 81; beyond, rounding errors of
 * random products stay orders of magnitude under it. */
Test(gpu_kernels, matmul_skinny) {
    NEED_GPU();
    static const int shapes[][3] = {
        {1, 79, 771},   {2, 1000, 771}, {7, 3001, 771},   {16, 79, 5000},  {16, 1000, 5000},
        {5, 700, 9001}, {16, 33, 33},   {128, 1000, 771}, {100, 79, 5000}, {128, 300, 9001}};
    for (int i = 0; i < 10; i++) {
        const int M = shapes[i][0], K = shapes[i][1], N = shapes[i][2];
        for (int v = 0; v < 4; v++)
            check_matmul(150 + 4 * i + v, (mm_case){M, K, N, K + 3, N + 5, N + 1, v & 1, v & 2});
    }
}

/* An empty sum: out becomes bias or 0, or is left as it was plus bias when
 * accumulating. */
Test(gpu_kernels, matmul_k_zero) {
    NEED_GPU();
    for (int v = 0; v < 4; v++)
        check_matmul(130 + v, (mm_case){37, 0, 71, 1, 71, 75, v & 1, v & 2});
}

/* Several tiles in each direction. */
Test(gpu_kernels, matmul_large) {
    NEED_GPU();
    check_matmul(140, (mm_case){300, 79, 520, 83, 521, 530, true, false});
    check_matmul(141, (mm_case){300, 79, 520, 79, 520, 520, true, true});
}

/* q, k or v per head, each written into its columns of [T, h*dh] (with two
 * columns of padding) by its own call, b and bias offset to the head's
 * columns of W [d, h*dh]: core/forward.c's per-head addressing. */
Test(gpu_kernels, matmul_head_columns) {
    NEED_GPU();
    const int T = 37, d = 53, h = 5, dh = 23, hd = h * dh, ldo = hd + 2;
    rng r = {150};
    float *x = random_matrix(&r, T, d, d, -1, 1), *W = random_matrix(&r, d, hd, hd, -1, 1);
    float *bias = randoms(&r, (size_t)hd, -1, 1), *img = out_image((size_t)T * ldo);
    poison(img, ldo, T, hd);
    double *tol = zero_tols((size_t)T * ldo + TAIL);
    for (int hi = 0; hi < h; hi++)
        matmul_tol(tol + hi * dh, ldo, NULL, x, d, W + hi * dh, hd, false, bias + hi * dh, T, d,
                   dh);

    pair px = floats_pair(x, (size_t)T * d), pW = floats_pair(W, (size_t)d * hd);
    pair pbias = floats_pair(bias, (size_t)hd), po = out_pair(img, (size_t)T * ldo);
    EACH_SIDE(s) {
        for (int hi = 0; hi < h; hi++)
            lk_matmul(dev[s], F(po, s) + hi * dh, ldo, F(px, s), d, F(pW, s) + hi * dh, hd,
                      F(pbias, s) + hi * dh, T, d, dh, false);
    }
    check_within(&po, tol, "matmul per head T=%d d=%d h=%d dh=%d", T, d, h, dh);

    FREE_PAIRS(&px, &pW, &pbias, &po);
    FREE_HOST(x, W, bias, img, tol);
}

/* ---- lk_matmul_batched ------------------------------------------------- */

typedef struct {
    int M, K, N, count, lda, ldb, ldo;
    size_t a_step, b_step, out_step;
    bool trans;
} bm_case;

static size_t span(int count, size_t step, int rows, int ld) {
    return count > 0 && rows > 0 ? (size_t)(count - 1) * step + (size_t)rows * ld : 0;
}

static void check_batched(uint64_t seed, bm_case c) {
    rng r = {seed};
    const int b_rows = c.trans ? c.N : c.K, b_cols = c.trans ? c.K : c.N;
    const size_t a_len = span(c.count, c.a_step, c.M, c.lda);
    const size_t b_len = span(c.count, c.b_step, b_rows, c.ldb);
    const size_t n = span(c.count, c.out_step, c.M, c.ldo);
    float *a = host_floats(a_len), *b = host_floats(b_len), *img = out_image(n);
    double *tol = zero_tols(n + TAIL);
    fill_value(a, a_len, NAN);
    fill_value(b, b_len, NAN);
    for (int i = 0; i < c.count; i++) {
        fill_block(&r, a + i * c.a_step, c.lda, c.M, c.K, -1, 1);
        fill_block(&r, b + i * c.b_step, c.ldb, b_rows, b_cols, -1, 1);
        poison(img + i * c.out_step, c.ldo, c.M, c.N);
    }
    for (int i = 0; i < c.count; i++)
        matmul_tol(tol + i * c.out_step, c.ldo, NULL, a + i * c.a_step, c.lda, b + i * c.b_step,
                   c.ldb, c.trans, NULL, c.M, c.K, c.N);

    pair pa = floats_pair(a, a_len), pb = floats_pair(b, b_len), po = out_pair(img, n);
    EACH_SIDE(s) {
        lk_matmul_batched(dev[s], F(po, s), c.ldo, c.out_step, F(pa, s), c.lda, c.a_step, F(pb, s),
                          c.ldb, c.b_step, c.trans, c.M, c.K, c.N, c.count);
    }
    check_within(&po, tol,
                 "matmul_batched M=%d K=%d N=%d count=%d lda=%d ldb=%d ldo=%d steps a=%zu b=%zu "
                 "out=%zu b_transposed=%d",
                 c.M, c.K, c.N, c.count, c.lda, c.ldb, c.ldo, c.a_step, c.b_step, c.out_step,
                 c.trans);

    FREE_PAIRS(&pa, &pb, &po);
    FREE_HOST(a, b, img, tol);
}

enum { SEQ = 37, HEADS = 5, D_HEAD = 23 };

/* scores[hi] = q_hi @ k_hi^T, q and k [T, h*dh] with head hi at column
 * hi*dh, scores [h, T, T]. */
Test(gpu_kernels, matmul_batched_attention_scores) {
    NEED_GPU();
    check_batched(201, (bm_case){.M = SEQ,
                                 .K = D_HEAD,
                                 .N = SEQ,
                                 .count = HEADS,
                                 .lda = HEADS * D_HEAD,
                                 .a_step = D_HEAD,
                                 .ldb = HEADS * D_HEAD,
                                 .b_step = D_HEAD,
                                 .trans = true,
                                 .ldo = SEQ,
                                 .out_step = (size_t)SEQ * SEQ});
}

/* z_hi = pattern[hi] @ v_hi, pattern [h, T, T], v [T, h*dh], z written into
 * [T, h*dh] rows with two columns of padding. */
Test(gpu_kernels, matmul_batched_attention_values) {
    NEED_GPU();
    check_batched(202, (bm_case){.M = SEQ,
                                 .K = SEQ,
                                 .N = D_HEAD,
                                 .count = HEADS,
                                 .lda = SEQ,
                                 .a_step = (size_t)SEQ * SEQ,
                                 .ldb = HEADS * D_HEAD,
                                 .b_step = D_HEAD,
                                 .trans = false,
                                 .ldo = HEADS * D_HEAD + 2,
                                 .out_step = D_HEAD});
}

/* Padded strides, gaps between the products, and K = 0. */
Test(gpu_kernels, matmul_batched_gaps_and_k_zero) {
    NEED_GPU();
    for (int t = 0; t < 2; t++) {
        const bool trans = t;
        const int ldb = trans ? 33 : 45, b_rows = trans ? 41 : 29;
        check_batched(210 + t, (bm_case){.M = 7,
                                         .K = 29,
                                         .N = 41,
                                         .count = 3,
                                         .lda = 31,
                                         .a_step = 7 * 31 + 5,
                                         .ldb = ldb,
                                         .b_step = (size_t)b_rows * ldb + 7,
                                         .trans = trans,
                                         .ldo = 44,
                                         .out_step = 7 * 44 + 9});
        check_batched(220 + t, (bm_case){.M = 7,
                                         .K = 0,
                                         .N = 41,
                                         .count = 3,
                                         .lda = 1,
                                         .a_step = 7,
                                         .ldb = trans ? 1 : 41,
                                         .b_step = trans ? 41 : 0,
                                         .trans = trans,
                                         .ldo = 44,
                                         .out_step = 7 * 44 + 9});
    }
}

/* ---- lk_layernorm_pre and lk_affine ------------------------------------ */

static void check_layernorm(uint64_t seed, int N, int C, bool in_place) {
    rng r = {seed};
    const size_t n = (size_t)N * C;
    float *x = randoms(&r, n, -2.5f, 3.5f), *img = out_image(n), *scale_img = out_image(N);
    if (in_place)
        memcpy(img, x, n * sizeof *x);
    else
        poison(img, C, N, C);
    poison(scale_img, N, 1, N);

    pair px = floats_pair(x, n), po = out_pair(img, n), ps = out_pair(scale_img, N);
    EACH_SIDE(s) {
        lk_layernorm_pre(dev[s], F(po, s), F(ps, s), in_place ? F(po, s) : F(px, s), N, C, 1e-5f);
    }
    check_close(&po, "layernorm_pre normalized N=%d C=%d in_place=%d", N, C, in_place);
    check_close(&ps, "layernorm_pre scale N=%d C=%d in_place=%d", N, C, in_place);

    FREE_PAIRS(&px, &po, &ps);
    FREE_HOST(x, img, scale_img);
}

Test(gpu_kernels, layernorm_pre) {
    NEED_GPU();
    check_layernorm(301, 37, 1, false);
    check_layernorm(302, 37, 769, false);
    check_layernorm(303, 37, 769, true);
    check_layernorm(304, 1, 769, false);
}

/* Rows as check_layernorm's, but for N > 2 row 1 is small enough
 * (mean(x^2) about 3e-6) for eps to matter and row 2 is zeros (scale
 * sqrt(eps), normalized 0). */
static void check_rmsnorm(uint64_t seed, int N, int C, float eps, bool in_place) {
    rng r = {seed};
    const size_t n = (size_t)N * C;
    float *x = randoms(&r, n, -2.5f, 3.5f), *img = out_image(n), *scale_img = out_image(N);
    if (N > 2) {
        for (int c = 0; c < C; c++)
            x[C + c] *= 1e-3f;
        fill_value(x + 2 * (size_t)C, C, 0.0f);
    }
    if (in_place)
        memcpy(img, x, n * sizeof *x);
    else
        poison(img, C, N, C);
    poison(scale_img, N, 1, N);

    pair px = floats_pair(x, n), po = out_pair(img, n), ps = out_pair(scale_img, N);
    EACH_SIDE(s) {
        lk_rmsnorm_pre(dev[s], F(po, s), F(ps, s), in_place ? F(po, s) : F(px, s), N, C, eps);
    }
    check_close(&po, "rmsnorm_pre normalized N=%d C=%d eps=%g in_place=%d", N, C, eps, in_place);
    check_close(&ps, "rmsnorm_pre scale N=%d C=%d eps=%g in_place=%d", N, C, eps, in_place);

    FREE_PAIRS(&px, &po, &ps);
    FREE_HOST(x, img, scale_img);
}

Test(gpu_kernels, rmsnorm_pre) {
    NEED_GPU();
    check_rmsnorm(1501, 37, 1, 1e-5f, false);
    check_rmsnorm(1502, 37, 769, 1e-6f, false);
    check_rmsnorm(1503, 37, 769, 1e-5f, true);
    check_rmsnorm(1504, 1, 769, 1e-6f, false);
    check_rmsnorm(1505, 5, 4099, 1e-6f, false);
}

Test(gpu_kernels, affine) {
    NEED_GPU();
    const int N = 37, C = 769;
    const size_t n = (size_t)N * C;
    for (int v = 0; v < 4; v++) {
        const bool with_b = v & 1, in_place = v & 2;
        rng r = {(uint64_t)310 + v};
        float *x = randoms(&r, n, -4, 4), *w = randoms(&r, C, 0.5f, 1.5f);
        float *b = with_b ? randoms(&r, C, -1, 1) : NULL, *img = out_image(n);
        if (in_place)
            memcpy(img, x, n * sizeof *x);
        else
            poison(img, C, N, C);

        pair px = floats_pair(x, n), pw = floats_pair(w, C), pb = floats_pair(b, C);
        pair po = out_pair(img, n);
        EACH_SIDE(s) {
            lk_affine(dev[s], F(po, s), in_place ? F(po, s) : F(px, s), F(pw, s), F(pb, s), N, C);
        }
        check_close(&po, "affine N=%d C=%d bias=%d in_place=%d", N, C, with_b, in_place);

        FREE_PAIRS(&px, &pw, &pb, &po);
        FREE_HOST(x, w, b, img);
    }
}

/* ---- lk_add and lk_activation ------------------------------------------ */

static const size_t LENGTHS[] = {1, 37, 100003};

Test(gpu_kernels, add) {
    NEED_GPU();
    for (int li = 0; li < 3; li++)
        for (int in_place = 0; in_place < 2; in_place++) {
            const size_t n = LENGTHS[li];
            rng r = {(uint64_t)401 + 2 * li + in_place};
            float *a = randoms(&r, n, -10, 10), *b = randoms(&r, n, -1, 1), *img = out_image(n);
            if (in_place)
                memcpy(img, a, n * sizeof *a);
            else
                poison(img, (int)n, 1, (int)n);

            pair pa = floats_pair(a, n), pb = floats_pair(b, n), po = out_pair(img, n);
            EACH_SIDE(s) lk_add(dev[s], F(po, s), in_place ? F(po, s) : F(pa, s), F(pb, s), n);
            check_close(&po, "add n=%zu in_place=%d", n, in_place);

            FREE_PAIRS(&pa, &pb, &po);
            FREE_HOST(a, b, img);
        }
}

static const char *const ACT_NAMES[] = {"relu", "gelu", "gelu_new", "gelu_fast", "silu"};

/* Inputs in [-4, 4], the curved part of every activation, led by zeros of
 * both signs, the ends and small values. */
static float *activation_inputs(rng *r, size_t n) {
    static const float lead[] = {0.0f, -0.0f, 4.0f, -4.0f, 1e-3f, -1e-3f, 0.5f, -0.5f};
    float *x = randoms(r, n, -4, 4);
    for (size_t i = 0; i < n && i < sizeof lead / sizeof lead[0]; i++)
        x[i] = lead[i];
    return x;
}

Test(gpu_kernels, activation) {
    NEED_GPU();
    for (int act = LK_RELU; act <= LK_SILU; act++)
        for (int li = 0; li < 3; li++)
            for (int in_place = 0; in_place < 2; in_place++) {
                const size_t n = LENGTHS[li];
                rng r = {(uint64_t)500 + 10 * act + 2 * li + in_place};
                float *x = activation_inputs(&r, n), *img = out_image(n);
                if (in_place)
                    memcpy(img, x, n * sizeof *x);
                else
                    poison(img, (int)n, 1, (int)n);

                pair px = floats_pair(x, n), po = out_pair(img, n);
                EACH_SIDE(s) {
                    lk_activation(dev[s], (lk_act)act, F(po, s), in_place ? F(po, s) : F(px, s), n);
                }
                check_close(&po, "activation %s n=%zu in_place=%d", ACT_NAMES[act], n, in_place);

                FREE_PAIRS(&px, &po);
                FREE_HOST(x, img);
            }
}

/* out separate from both inputs, or over gate, or over linear. */
Test(gpu_kernels, gated_activation) {
    NEED_GPU();
    static const char *const OUT[] = {"separate", "gate", "linear"};
    for (int act = LK_RELU; act <= LK_SILU; act++)
        for (int li = 0; li < 3; li++)
            for (int alias = 0; alias < 3; alias++) {
                const size_t n = LENGTHS[li];
                rng r = {(uint64_t)1600 + 10 * act + 3 * li + alias};
                float *gate = activation_inputs(&r, n), *linear = randoms(&r, n, -1, 1);
                float *img = out_image(n);
                if (alias == 0) poison(img, (int)n, 1, (int)n);
                if (alias == 1) memcpy(img, gate, n * sizeof *gate);
                if (alias == 2) memcpy(img, linear, n * sizeof *linear);

                pair pg = floats_pair(gate, n), pl = floats_pair(linear, n), po = out_pair(img, n);
                EACH_SIDE(s) {
                    const float *g = alias == 1 ? F(po, s) : F(pg, s);
                    const float *l = alias == 2 ? F(po, s) : F(pl, s);
                    lk_gated_activation(dev[s], (lk_act)act, F(po, s), g, l, n);
                }
                check_close(&po, "gated_activation %s n=%zu out=%s", ACT_NAMES[act], n, OUT[alias]);

                FREE_PAIRS(&pg, &pl, &po);
                FREE_HOST(gate, linear, img);
            }
}

/* ---- lk_scale and lk_softcap ------------------------------------------- */

/* Gemma's embedding scales sqrt(d_model) (2B and 9B), and an exact one. */
Test(gpu_kernels, scale) {
    NEED_GPU();
    const float factors[] = {sqrtf(2048.0f), sqrtf(3584.0f), 0.125f};
    for (int fi = 0; fi < 3; fi++)
        for (int li = 0; li < 3; li++) {
            const size_t n = LENGTHS[li];
            rng r = {(uint64_t)1701 + 3 * fi + li};
            float *x = randoms(&r, n, -10, 10), *img = out_image(n);
            memcpy(img, x, n * sizeof *x);

            pair po = out_pair(img, n);
            EACH_SIDE(s) lk_scale(dev[s], F(po, s), n, factors[fi]);
            check_exact(&po, "scale n=%zu factor=%.9g", n, (double)factors[fi]);

            FREE_PAIRS(&po);
            FREE_HOST(x, img);
        }
}

/* Gemma 2's caps of final logits (30) and attention scores (50), and a
 * small one; values from zero, where tanh is linear, to six caps, where it
 * has saturated, led by zeros of both signs. */
Test(gpu_kernels, softcap) {
    NEED_GPU();
    static const float caps[] = {30.0f, 50.0f, 0.5f};
    for (int ci = 0; ci < 3; ci++)
        for (int li = 0; li < 3; li++) {
            const size_t n = LENGTHS[li];
            const float cap = caps[ci];
            rng r = {(uint64_t)1801 + 3 * ci + li};
            float *x = randoms(&r, n, -6 * cap, 6 * cap), *img = out_image(n);
            x[0] = 0.0f;
            if (n > 1) x[1] = -0.0f;
            memcpy(img, x, n * sizeof *x);

            pair po = out_pair(img, n);
            EACH_SIDE(s) lk_softcap(dev[s], F(po, s), n, cap);
            check_close(&po, "softcap n=%zu cap=%g", n, (double)cap);

            FREE_PAIRS(&po);
            FREE_HOST(x, img);
        }
}

/* ---- lk_rotary ---------------------------------------------------------- */

enum { ROT_POSITIONS = 67 };

/* cos and sin [ROT_POSITIONS, rotary_dim / 2] of the angles
 * p * 10000^(-2i / rotary_dim), computed in double and rounded, as a model
 * loader fills them. */
static void rotary_tables(float *cos_t, float *sin_t, int rotary_dim) {
    const int half = rotary_dim / 2;
    for (int p = 0; p < ROT_POSITIONS; p++)
        for (int i = 0; i < half; i++) {
            const double angle = p * pow(10000.0, -2.0 * i / rotary_dim);
            cos_t[p * half + i] = (float)cos(angle);
            sin_t[p * half + i] = (float)sin(angle);
        }
}

typedef struct {
    int N, H, dh, rotary_dim;
} rot_case;

/* x [N, H, dh] rotated in place; positions are drawn at random (out of
 * order, repeated), the first being the tables' last row. */
static void check_rotary(uint64_t seed, rot_case c, bool interleaved) {
    rng r = {seed};
    const int half = c.rotary_dim / 2;
    const size_t n = (size_t)c.N * c.H * c.dh, table = (size_t)ROT_POSITIONS * half;
    float *x = randoms(&r, n, -1, 1), *img = out_image(n);
    float *cos_t = host_floats(table), *sin_t = host_floats(table);
    int32_t *pos = host_alloc((size_t)c.N * sizeof *pos);
    rotary_tables(cos_t, sin_t, c.rotary_dim);
    for (int i = 0; i < c.N; i++)
        pos[i] = rng_int(&r, 0, ROT_POSITIONS);
    pos[0] = ROT_POSITIONS - 1;
    memcpy(img, x, n * sizeof *x);

    const char *style = interleaved ? "GPT-J" : "GPT-NeoX";
    pair po = out_pair(img, n), pc = floats_pair(cos_t, table), ps = floats_pair(sin_t, table);
    pair pp = pair_new(pos, (size_t)c.N * sizeof *pos);
    EACH_SIDE(s) {
        lk_rotary(dev[s], F(po, s), c.N, c.H, c.dh, c.rotary_dim, interleaved, F(pc, s), F(ps, s),
                  I32(pp, s));
    }
    check_close(&po, "rotary %s N=%d H=%d dh=%d rotary_dim=%d", style, c.N, c.H, c.dh,
                c.rotary_dim);
    float *got = fetch(&po, GPU);
    for (size_t head = 0; head < (size_t)c.N * c.H; head++)
        for (int j = c.rotary_dim; j < c.dh; j++) {
            const size_t at = head * c.dh + j;
            cr_assert(memcmp(&got[at], &x[at], sizeof *got) == 0,
                      "rotary %s N=%d H=%d dh=%d rotary_dim=%d: value %d of head row %zu, past "
                      "rotary_dim, changed from %.9g to %.9g on the gpu",
                      style, c.N, c.H, c.dh, c.rotary_dim, j, head, (double)x[at], (double)got[at]);
        }

    free(got);
    FREE_PAIRS(&po, &pc, &ps, &pp);
    FREE_HOST(x, img, cos_t, sin_t, pos);
}

/* Whole heads, partial rotary (Pythia's rotary_pct 0.25: 20 of 80), an odd
 * head size, one pair, and 4099 rows of Llama-sized heads (32 of 128). */
Test(gpu_kernels, rotary) {
    NEED_GPU();
    static const rot_case cases[] = {{37, 5, 64, 64}, {37, 3, 80, 20}, {11, 7, 23, 10},
                                     {1, 1, 2, 2},    {3, 2, 9, 2},    {4099, 32, 128, 128}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int interleaved = 0; interleaved < 2; interleaved++)
            check_rotary(1901 + 2 * i + interleaved, cases[i], interleaved);
}

/* ---- lk_softmax_rows and lk_solu --------------------------------------- */

/* [N, C] rows in five regimes: moderate, spread over [-1e4, 1e4] (one entry
 * takes nearly everything), packed just under 1e4 (exp must not overflow),
 * and, when masked, two with -INFINITY entries, plus row N - 2 all
 * -INFINITY. Unmasked, those two are [-30, 30] and [-100, 100]. */
static float *row_inputs(rng *r, int N, int C, bool masked) {
    float *x = host_floats((size_t)N * C);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            float *v = &x[(size_t)i * C + c];
            switch (i % 5) {
            case 0:
                *v = rng_float(r, -4, 4);
                break;
            case 1:
                *v = rng_float(r, -1e4f, 1e4f);
                break;
            case 2:
                *v = 1e4f - rng_float(r, 0, 8);
                break;
            case 3:
                *v = masked && c % 3 == 0 ? -INFINITY : rng_float(r, -30, 30);
                break;
            default:
                *v = masked && c % 3 != 1 ? -INFINITY : rng_float(r, -100, 100);
                break;
            }
        }
    if (masked && N >= 2) set_block(x + (size_t)(N - 2) * C, C, 1, C, -INFINITY);
    return x;
}

static void check_rows(uint64_t seed, bool solu, int N, int C, bool in_place) {
    rng r = {seed};
    const size_t n = (size_t)N * C;
    float *x = row_inputs(&r, N, C, !solu), *img = out_image(n);
    if (in_place)
        memcpy(img, x, n * sizeof *x);
    else
        poison(img, C, N, C);

    const char *name = solu ? "solu" : "softmax_rows";
    pair px = floats_pair(x, n), po = out_pair(img, n);
    EACH_SIDE(s) {
        const float *inp = in_place ? F(po, s) : F(px, s);
        if (solu)
            lk_solu(dev[s], F(po, s), inp, N, C);
        else
            lk_softmax_rows(dev[s], F(po, s), inp, N, C);
    }
    check_close(&po, "%s N=%d C=%d in_place=%d", name, N, C, in_place);
    if (!solu) {
        float *got = fetch(&po, GPU);
        for (size_t i = 0; i < n; i++)
            if (x[i] == -INFINITY && got[i] != 0.0f)
                cr_assert_fail("softmax_rows N=%d C=%d: input [%zu] is -inf, gpu gives %.9g", N, C,
                               i, (double)got[i]);
        free(got);
    }

    FREE_PAIRS(&px, &po);
    FREE_HOST(x, img);
}

static const int WIDTHS[] = {1, 53, 1031};

Test(gpu_kernels, softmax_rows) {
    NEED_GPU();
    for (int ci = 0; ci < 3; ci++) {
        check_rows(601 + ci, false, 37, WIDTHS[ci], false);
        check_rows(611 + ci, false, 37, WIDTHS[ci], true);
    }
    check_rows(620, false, 1, 1031, false);
}

Test(gpu_kernels, solu) {
    NEED_GPU();
    for (int ci = 0; ci < 3; ci++) {
        check_rows(701 + ci, true, 37, WIDTHS[ci], false);
        check_rows(711 + ci, true, 37, WIDTHS[ci], true);
    }
}

/* ---- lk_embed and lk_mask_scores --------------------------------------- */

enum { PROMPTS = 3, VOCAB = 97, PAD_ID = 0 };

/* Left padding of the PROMPTS prompts of SEQ tokens: one none, one a few, one all
 * but the last token. */
static const int PADS[PROMPTS] = {0, 5, SEQ - 1};

static uint8_t *left_padded_mask(void) {
    uint8_t *m = host_alloc((size_t)PROMPTS * SEQ);
    for (int b = 0; b < PROMPTS; b++)
        for (int t = 0; t < SEQ; t++)
            m[b * SEQ + t] = t >= PADS[b];
    return m;
}

/* Random tokens, PAD_ID on the padding, and PAD_ID once inside each prompt
 * too (GPT-2 pads with its end-of-text token, which prompts may hold). */
static int32_t *padded_tokens(rng *r) {
    int32_t *tok = host_alloc((size_t)PROMPTS * SEQ * sizeof *tok);
    for (int b = 0; b < PROMPTS; b++)
        for (int t = 0; t < SEQ; t++)
            tok[b * SEQ + t] = t < PADS[b] ? PAD_ID : rng_int(r, 1, VOCAB);
    for (int b = 0; b < PROMPTS; b++)
        tok[b * SEQ + SEQ - 3] = PAD_ID;
    return tok;
}

Test(gpu_kernels, embed) {
    NEED_GPU();
    const int d = 71;
    const size_t n = (size_t)PROMPTS * SEQ * d;
    for (int with_mask = 0; with_mask < 2; with_mask++) {
        rng r = {(uint64_t)801 + with_mask};
        float *W_E = randoms(&r, (size_t)VOCAB * d, -1, 1), *W_pos = randoms(&r, SEQ * d, -1, 1);
        int32_t *tok = padded_tokens(&r);
        uint8_t *mask = with_mask ? left_padded_mask() : NULL;
        float *img = out_image(n);
        poison(img, d, PROMPTS * SEQ, d);

        pair pE = floats_pair(W_E, (size_t)VOCAB * d), pP = floats_pair(W_pos, SEQ * d);
        pair pt = pair_new(tok, (size_t)PROMPTS * SEQ * sizeof *tok);
        pair pm = pair_new(mask, (size_t)PROMPTS * SEQ);
        pair ptok = out_pair(img, n), ppos = out_pair(img, n);
        EACH_SIDE(s) {
            lk_embed(dev[s], F(ptok, s), F(ppos, s), F(pE, s), F(pP, s), I32(pt, s), U8(pm, s),
                     PROMPTS, SEQ, d);
        }
        check_exact(&ptok, "embed tokens B=%d T=%d d=%d attn_mask=%d", PROMPTS, SEQ, d, with_mask);
        check_exact(&ppos, "embed positions B=%d T=%d d=%d attn_mask=%d", PROMPTS, SEQ, d,
                    with_mask);

        FREE_PAIRS(&pE, &pP, &pt, &pm, &ptok, &ppos);
        FREE_HOST(W_E, W_pos, tok, mask, img);
    }
}

typedef struct {
    const char *name;
    bool causal;
    int window;
    bool attn_mask, pad_id, suffix;
    float softcap;
} ms_case;

/* Suffix queries (lk_query_rows): each prompt's first query position. */
static const int32_t SUFFIX_FIRST[PROMPTS] = {0, 9, SEQ - 1};

/* Each prompt's first packed row for SUFFIX_FIRST, and their number. */
static int suffix_rows(int32_t row[PROMPTS]) {
    int n = 0;
    for (int b = 0; b < PROMPTS; b++)
        row[b] = n, n += SEQ - SUFFIX_FIRST[b];
    return n;
}

static void check_mask_scores(uint64_t seed, ms_case c) {
    enum { H = 4 };
    int32_t row[PROMPTS];
    const int rows = c.suffix ? suffix_rows(row) : PROMPTS * SEQ;
    const size_t n = (size_t)rows * H * SEQ;
    rng r = {seed};
    float *scores = randoms(&r, n, -10, 10), *img = out_image(n);
    memcpy(img, scores, n * sizeof *scores);
    int32_t *tok = padded_tokens(&r);
    uint8_t *mask = left_padded_mask();

    pair po = out_pair(img, n), pt = pair_new(tok, (size_t)PROMPTS * SEQ * sizeof *tok);
    pair pm = pair_new(mask, (size_t)PROMPTS * SEQ);
    pair pf = pair_new(SUFFIX_FIRST, sizeof SUFFIX_FIRST), pr = pair_new(row, sizeof row);
    EACH_SIDE(s) {
        lk_score_mask m = {.causal = c.causal,
                           .window = c.window,
                           .attn_mask = c.attn_mask ? U8(pm, s) : NULL,
                           .tokens = c.pad_id ? I32(pt, s) : NULL,
                           .pad_id = c.pad_id ? PAD_ID : -1,
                           .pad_score = -1e5f,
                           .softcap = c.softcap};
        if (c.suffix) m.queries = (lk_query_rows){I32(pf, s), I32(pr, s), rows};
        lk_mask_scores(dev[s], F(po, s), PROMPTS, H, SEQ, sqrtf(D_HEAD), &m);
    }
    check_close(&po, "mask_scores %s B=%d H=%d T=%d", c.name, PROMPTS, H, SEQ);
    if (!c.causal) {
        float *got = fetch(&po, GPU);
        for (size_t i = 0; i < n; i++)
            cr_assert(got[i] != -INFINITY, "mask_scores %s: [%zu] is -inf on the gpu", c.name, i);
        free(got);
    }

    FREE_PAIRS(&po, &pt, &pm, &pf, &pr);
    FREE_HOST(scores, img, tok, mask);
}

/* The bidirectional cases pass a window and an attn_mask, which only apply
 * when causal: nothing may come out -inf there. */
Test(gpu_kernels, mask_scores) {
    NEED_GPU();
    static const ms_case cases[] = {
        {"causal", true, 0, false, false, false, 0.0f},
        {"causal window 3", true, 3, false, false, false, 0.0f},
        {"causal left padding", true, 0, true, false, false, 0.0f},
        {"causal left padding pad_id", true, 0, true, true, false, 0.0f},
        {"causal window 3 left padding pad_id", true, 3, true, true, false, 0.0f},
        {"bidirectional", false, 3, true, false, false, 0.0f},
        {"bidirectional pad_id", false, 0, true, true, false, 0.0f},
        {"causal suffix queries", true, 0, false, false, true, 0.0f},
        {"causal window 3 left padding pad_id suffix queries", true, 3, true, true, true, 0.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_mask_scores(901 + i, cases[i]);
}

/* Soft-capped scores (Gemma 2): its cap of 50, and a cap of 1 where tanh
 * bends scores of [-2, 2] (raw scores over sqrt(D_HEAD)) strongly. */
Test(gpu_kernels, mask_scores_softcap) {
    NEED_GPU();
    static const ms_case cases[] = {
        {"causal softcap 50", true, 0, false, false, false, 50.0f},
        {"causal window 3 softcap 50", true, 3, false, false, false, 50.0f},
        {"causal softcap 1", true, 0, false, false, false, 1.0f},
        {"causal window 3 softcap 1", true, 3, false, false, false, 1.0f},
        {"causal window 3 left padding pad_id softcap 1", true, 3, true, true, false, 1.0f},
        {"bidirectional softcap 1", false, 3, true, false, false, 1.0f},
        {"causal window 3 left padding pad_id suffix queries softcap 1", true, 3, true, true, true,
         1.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_mask_scores(2001 + i, cases[i]);
}

/* ---- lk_repeat_rows, lk_sum_groups, lk_gather_rows --------------------- */

Test(gpu_kernels, repeat_rows) {
    NEED_GPU();
    static const int shapes[][3] = {{7, 5, 33}, {37, 1, 71}, {1, 4, 1}};
    for (int i = 0; i < 3; i++) {
        const int N = shapes[i][0], R = shapes[i][1], C = shapes[i][2];
        const size_t n = (size_t)N * R * C;
        rng r = {(uint64_t)1001 + i};
        float *x = randoms(&r, (size_t)N * C, -1, 1), *img = out_image(n);
        poison(img, C, N * R, C);

        pair px = floats_pair(x, (size_t)N * C), po = out_pair(img, n);
        EACH_SIDE(s) lk_repeat_rows(dev[s], F(po, s), F(px, s), N, R, C);
        check_exact(&po, "repeat_rows N=%d R=%d C=%d", N, R, C);

        FREE_PAIRS(&px, &po);
        FREE_HOST(x, img);
    }
}

/* G = 0 leaves the bias, or zeros. */
Test(gpu_kernels, sum_groups) {
    NEED_GPU();
    static const int shapes[][3] = {{11, 7, 65}, {37, 1, 71}, {5, 0, 33}};
    for (int i = 0; i < 3; i++)
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            const int N = shapes[i][0], G = shapes[i][1], C = shapes[i][2];
            const size_t n = (size_t)N * C;
            rng r = {(uint64_t)1101 + 2 * i + with_bias};
            float *x = randoms(&r, n * G, -2, 2), *img = out_image(n);
            float *bias = with_bias ? randoms(&r, C, -1, 1) : NULL;
            poison(img, C, N, C);

            pair px = floats_pair(x, n * G), pb = floats_pair(bias, C), po = out_pair(img, n);
            EACH_SIDE(s) lk_sum_groups(dev[s], F(po, s), F(px, s), F(pb, s), N, G, C);
            check_close(&po, "sum_groups N=%d G=%d C=%d bias=%d", N, G, C, with_bias);

            FREE_PAIRS(&px, &pb, &po);
            FREE_HOST(x, bias, img);
        }
}

Test(gpu_kernels, gather_rows) {
    NEED_GPU();
    static const struct {
        int N, n, C;
        int32_t rows[5];
    } cases[] = {{185, 5, 71, {0, 184, 17, 1, 184}}, {1, 1, 1, {0}}};
    for (int i = 0; i < 2; i++) {
        const int N = cases[i].N, n = cases[i].n, C = cases[i].C;
        rng r = {(uint64_t)1201 + i};
        float *x = randoms(&r, (size_t)N * C, -1, 1), *img = out_image((size_t)n * C);
        poison(img, C, n, C);

        pair px = floats_pair(x, (size_t)N * C), po = out_pair(img, (size_t)n * C);
        pair pp = pair_new(cases[i].rows, (size_t)n * sizeof(int32_t));
        EACH_SIDE(s) lk_gather_rows(dev[s], F(po, s), F(px, s), I32(pp, s), n, C);
        check_exact(&po, "gather_rows N=%d n=%d C=%d", N, n, C);

        FREE_PAIRS(&px, &po, &pp);
        FREE_HOST(x, img);
    }
}

/* The logits of chosen ids (rows b, b + P share prompt b % P's); K = 79
 * keeps the matrix-product tolerance rigorous. */
Test(gpu_kernels, matmul_columns) {
    NEED_GPU();
    enum { B = 37, P = 5, n = 2, C = 79, V = 1031 };
    rng r = {1401};
    int32_t ids[P * n];
    for (int i = 0; i < P * n; i++)
        ids[i] = rng_int(&r, 0, V);
    ids[0] = V - 1;
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        float *x = randoms(&r, (size_t)B * C, -1, 1), *W = randoms(&r, (size_t)C * V, -1, 1);
        float *bias = with_bias ? randoms(&r, V, -1, 1) : NULL, *img = out_image((size_t)B * n);
        poison(img, n, B, n);

        pair px = floats_pair(x, (size_t)B * C), pw = floats_pair(W, (size_t)C * V);
        pair pb = floats_pair(bias, V), pi = pair_new(ids, sizeof ids);
        pair po = out_pair(img, (size_t)B * n);
        EACH_SIDE(s) {
            lk_matmul_columns(dev[s], F(po, s), F(px, s), F(pw, s), F(pb, s), I32(pi, s), B, P, n,
                              C, V);
        }
        check_close(&po, "matmul_columns B=%d P=%d n=%d C=%d bias=%d", B, P, n, C, with_bias);

        FREE_PAIRS(&px, &pw, &pb, &pi, &po);
        FREE_HOST(x, W, bias, img);
    }
}

/* A suffix run's keys: the reference prompts' rows before each first
 * position (2 references for 3 rows, so row 2 continues reference 0), the
 * computed rows after. */
Test(gpu_kernels, splice_prefix) {
    NEED_GPU();
    enum { P = 2, C = 71 };
    int32_t row[PROMPTS];
    const int rows = suffix_rows(row);
    const size_t n = (size_t)PROMPTS * SEQ * C;
    rng r = {1301};
    float *prefix = randoms(&r, (size_t)P * SEQ * C, -1, 1);
    float *computed = randoms(&r, (size_t)rows * C, -1, 1), *img = out_image(n);
    poison(img, C, PROMPTS * SEQ, C);

    pair pp = floats_pair(prefix, (size_t)P * SEQ * C),
         pc = floats_pair(computed, (size_t)rows * C);
    pair pf = pair_new(SUFFIX_FIRST, sizeof SUFFIX_FIRST), pr = pair_new(row, sizeof row);
    pair po = out_pair(img, n);
    EACH_SIDE(s) {
        lk_splice_prefix(dev[s], F(po, s), F(pp, s), F(pc, s),
                         (lk_query_rows){I32(pf, s), I32(pr, s), rows}, PROMPTS, P, SEQ, C);
    }
    check_exact(&po, "splice_prefix B=%d P=%d T=%d C=%d", PROMPTS, P, SEQ, C);

    FREE_PAIRS(&pp, &pc, &pf, &pr, &po);
    FREE_HOST(prefix, computed, img);
}

/* ---- recording --------------------------------------------------------- */

/* out = softmax(x @ w + res), through the scratch h. */
static void small_forward(int side, const pair *out, const pair *h, const pair *x, const pair *w,
                          const pair *res, int M, int K, int N) {
    lk_device *d = dev[side];
    lk_matmul(d, F(*h, side), N, F(*x, side), K, F(*w, side), N, NULL, M, K, N, false);
    lk_add(d, F(*h, side), F(*h, side), F(*res, side), (size_t)M * N);
    lk_softmax_rows(d, F(*out, side), F(*h, side), M, N);
}

/* A recorded graph replays on whatever its buffers hold when launched. */
Test(gpu_kernels, graph_replays_on_new_data) {
    NEED_GPU();
    const int M = 37, K = 53, N = 71;
    const size_t mn = (size_t)M * N;
    rng r = {1301};
    float *x = randoms(&r, (size_t)M * K, -1, 1), *w = randoms(&r, (size_t)K * N, -0.25f, 0.25f);
    float *res = randoms(&r, mn, -1, 1), *img = out_image(mn);
    poison(img, N, M, N);
    pair px = floats_pair(x, (size_t)M * K), pw = floats_pair(w, (size_t)K * N);
    pair pres = floats_pair(res, mn), ph = out_pair(img, mn), pout = out_pair(img, mn);
    pair ph_direct = out_pair(img, mn), pout_direct = out_pair(img, mn);

    cr_assert(!lk_record_begin(dev[CPU]), "lk_record_begin(cpu) returned true");
    cr_assert(lk_record_begin(dev[GPU]), "lk_record_begin(gpu) returned false");
    small_forward(GPU, &pout, &ph, &px, &pw, &pres, M, K, N);
    lk_graph *graph = lk_record_end(dev[GPU]);
    cr_assert_not_null(graph, "lk_record_end returned NULL");
    finish_both();
    float *untouched = fetch(&pout, GPU);
    for (size_t i = 0; i < mn; i++)
        cr_assert(isnan(untouched[i]), "recording ran the operations: out[%zu] = %.9g", i,
                  (double)untouched[i]);
    free(untouched);

    for (int round = 0; round < 2; round++) {
        FREE_HOST(x, res);
        x = randoms(&r, (size_t)M * K, -1, 1);
        res = randoms(&r, mn, -1, 1);
        pair_upload(&px, x);
        pair_upload(&pres, res);
        pair_upload(&pout, img);
        pair_upload(&pout_direct, img);
        lk_graph_launch(dev[GPU], graph);
        EACH_SIDE(s) small_forward(s, &pout_direct, &ph_direct, &px, &pw, &pres, M, K, N);
        check_close(&pout_direct, "softmax(x @ w + res) M=%d K=%d N=%d, direct", M, K, N);

        finish_both();
        float *replayed = fetch(&pout, GPU), *direct = fetch(&pout_direct, GPU);
        compare("softmax(x @ w + res), graph against direct run on the gpu", "graph", replayed,
                "direct", direct, mn + TAIL, NULL, false);
        FREE_HOST(replayed, direct);
    }

    lk_graph_free(dev[GPU], graph);
    FREE_PAIRS(&px, &pw, &pres, &ph, &pout, &ph_direct, &pout_direct);
    FREE_HOST(x, w, res, img);
}

/* ---- running out of memory --------------------------------------------- */

Test(gpu_kernels, out_of_memory) {
    NEED_GPU();
    void *huge = lk_alloc(dev[GPU], (size_t)1 << 52);
    if (huge) lk_free(dev[GPU], huge);
    cr_assert_null(huge, "lk_alloc(gpu, 4 PiB) did not return NULL");

    const size_t n = 4099;
    rng r = {1401};
    float *a = randoms(&r, n, -1, 1), *b = randoms(&r, n, -1, 1), *img = out_image(n);
    poison(img, (int)n, 1, (int)n);
    pair pa = floats_pair(a, n), pb = floats_pair(b, n), po = out_pair(img, n);
    EACH_SIDE(s) lk_add(dev[s], F(po, s), F(pa, s), F(pb, s), n);
    check_close(&po, "add n=%zu after a failed lk_alloc", n);

    FREE_PAIRS(&pa, &pb, &po);
    FREE_HOST(a, b, img);
}

/* ---- main -------------------------------------------------------------- */

static size_t tests_skipped;

ReportHook(POST_ALL)(struct criterion_global_stats *stats) {
    tests_skipped = stats->tests_skipped;
}

/* Criterion's own main, but a run that skipped tests says why once, and
 * how many for tools/test_summary.py, and exits with 77 (meson's SKIP)
 * instead of passing. The tests ran in their
 * own processes and have ended, so probing the GPU here again is safe. */
int main(int argc, char *argv[]) {
    struct criterion_test_set *tests = criterion_initialize();
    int rc = 0;
    if (criterion_handle_args(argc, argv, true)) rc = !criterion_run_all_tests(tests);
    criterion_finalize(tests);
    if (rc != 0 || tests_skipped == 0) return rc;

    char why[256] = "";
    lk_device *gpu = lk_open("cuda:0", why, sizeof why);
    if (gpu) {
        lk_close(gpu);
        snprintf(why, sizeof why, "cuda:0 opened here but not in the tests");
    }
    fprintf(stderr, "skipped: no GPU: %s\nSkipped: %zu (no GPU: %s)\n", why, tests_skipped, why);
    return 77;
}
