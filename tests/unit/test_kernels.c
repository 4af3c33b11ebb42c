/*
 * test_kernels.c: tests of kernels/lk.h, run against the CPU backend.
 *
 * Every kernel is compared with a reference written here from the
 * mathematical definition: plain loops in double precision, no BLAS, nothing
 * shared with kernels/cpu/. Inputs come from a seeded generator, so a failure
 * reproduces exactly. Shapes cover the odd sizes (1, 3, 17, 64, 129), row
 * strides wider than the rows (heads side by side in a [T, n_heads * d_head]
 * buffer, as core/forward.c addresses them), accumulation, bias or none, and
 * the special values each contract names (-INFINITY in softmax, constant
 * LayerNorm rows, zero RMSNorm rows, aliasing).
 *
 * Output buffers are filled with a sentinel and the cells a call must write
 * with NaN (or, when accumulating, with the values it adds to), so a kernel
 * that writes outside its rows or reads what it should only write fails.
 * The unused padding of matrix inputs is NaN too, so a wrong row stride
 * shows.
 *
 * Not here: speed, and the CUDA backend (tests/gpu/test_gpu_kernels.c
 * checks it against this one).
 *
 * Tolerances. u = 2^-24 is float32's unit roundoff. Each check is an error
 * bound per element, worked out from the float32 computation the definition
 * implies, with about a factor 2 to spare; a wrong formula, index or stride
 * misses them by orders of magnitude.
 *
 * - Matrix products: a K-term float32 dot product in any summation order,
 *   FMA or not, is off by at most about K*u*sum_k |a_ik * b_kj| (Higham,
 *   "Accuracy and Stability of Numerical Algorithms", 3.1); the bias, the
 *   accumulated value and beta add a few more roundings. The check is
 *   |got - ref| <= (K + 4) * u * (sum_k |a_ik b_kj| + |bias_j| + |prev_ij|):
 *   rigorous, per element, and for the shapes here (K <= 520) about as tight
 *   as the usual 1e-5 * sqrt(K) * max|ref| rule of thumb.
 * - lk_add is correctly rounded (one float addition): within half an ulp.
 *   LK_RELU is exact.
 * - lk_affine: x*w + b rounds twice: 4u * (|x*w| + |b|).
 * - GELUs and SiLU: 1e-6 * |ref| (about 8 to 16 ulps) plus FLT_MIN, below
 *   which float32 has no relative precision (silu(-100) is -3.7e-42). The
 *   GELUs compute 0.5*x*(1 + t) with t = erf or tanh in [-1, 1] rounded to
 *   float32: t carries an absolute error of an ulp of 1 or two, and for x < 0
 *   the sum 1 + t cancels, so the error there is up to about 0.5*|x|*2^-22
 *   whatever |ref| is; those get another 2^-21 * |x|. TransformerLens
 *   evaluates these formulas in float32 too, so parity asks no more.
 * - Softmax: rounding x_c - max in float32 costs u*d_c in the exponent
 *   (d_c = max - x_c), so exp(x_c - max) is off by about (d_c + 1)*u
 *   relative; the row sum inherits the p-weighted mean of those, which is at
 *   most (1 + entropy)*u <= (1 + ln C)*u; 1/sum and the product round twice.
 *   The check is 2u * (d_c + ln C + 5) * p_c, plus 2^-147 for results that
 *   fall among the subnormals. Masked (-INFINITY) entries must be exactly 0.
 *   SoLU multiplies that by |x_c|.
 * - LayerNorm: the mean rounded to float32 shifts every centred value by up
 *   to u*|mean|, i.e. u*max|x|/scale after scaling; no float32 algorithm
 *   does better, since the inputs themselves are only that precise. The
 *   variance does not see that shift to first order (the centred values sum
 *   to zero), so scale is good to a few u: 8u, plus (u*max|x|/scale)^2.
 *   normalized gets 4u*max|x|/scale + (4u + 2*scale's tolerance)*|ref|.
 * - RMSNorm: mean(x^2) is summed in double (exact squares, a negligible
 *   2^-53 per term), rounded to float32 (u), eps added in float32 (u), so
 *   mean(x^2) + eps is good to 2u; sqrt halves that and rounds: scale is
 *   within 1.5u, checked at 3u. x / scale adds a rounding: 2.5u, checked at
 *   5u. No centring, so no cancellation term.
 * - lk_scale is one float product, correctly rounded: half an ulp.
 * - Gated activation: act(gate) carries the activation's tolerance above;
 *   times linear that scales by |linear|, and the product rounds once more
 *   (2u |ref|, plus 2^-149 for products among the subnormals).
 * - Soft-capping: x / cap rounds (u) and tanh's relative condition number
 *   z tanh'(z) / tanh(z) is at most 1, so that passes through; glibc's
 *   tanhf is within 2 ulps (4u); the product rounds (u): 6u, and 7u for
 *   soft-capped scores, whose division by attn_scale adds one. Both are
 *   checked at 16u |ref|.
 * - Rotary: x_i cos - x_j sin (and the other of the pair) rounds both
 *   products and the sum: within u (|x_i cos| + |x_j sin|) + u |ref| <=
 *   2u (|x_i cos| + |x_j sin|), checked at 4u times that sum, which stays
 *   meaningful where the two terms cancel. Values past rotary_dim are
 *   copied, exactly.
 */
#include <criterion/criterion.h>

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/lk.h"

/* float32's unit roundoff */
#define U 0x1p-24

/* Outputs are prefilled with this where a call must not write. */
#define SENTINEL (-1234.5f)

/* Cells past the end of every output buffer, which must stay SENTINEL. */
#define TAIL 8

static const int SIZES[] = {1, 3, 17, 64, 129};
#define N_SIZES ((int)(sizeof SIZES / sizeof SIZES[0]))

/* ---- inputs ------------------------------------------------------------ */

/* splitmix64: small, seedable, good enough for test data. */
typedef struct {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rng_uniform(rng *r) {
    return (double)(rng_next(r) >> 11) * 0x1p-53;
}

/* Standard normal (Box-Muller). */
static double rng_normal(rng *r) {
    double u1 = 1.0 - rng_uniform(r), u2 = rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

static void fill_uniform(rng *r, float *x, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(lo + (hi - lo) * rng_uniform(r));
}

static void fill_normal(rng *r, float *x, size_t n, double mean, double std) {
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(mean + std * rng_normal(r));
}

static void fill_value(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

static float *new_floats(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    cr_assert_not_null(p, "out of memory for %zu floats", n);
    return p;
}

static double *new_doubles(size_t n) {
    double *p = malloc((n ? n : 1) * sizeof *p);
    cr_assert_not_null(p, "out of memory for %zu doubles", n);
    return p;
}

/* An output buffer of n cells plus TAIL, all SENTINEL, and the reference
 * and tolerance arrays for it, saying SENTINEL exactly until a reference
 * fills them in. */
typedef struct {
    size_t n;
    float *out;
    double *want, *tol;
} expected;

static expected expect_new(size_t n) {
    expected e = {n + TAIL, new_floats(n + TAIL), new_doubles(n + TAIL), new_doubles(n + TAIL)};
    fill_value(e.out, e.n, SENTINEL);
    for (size_t i = 0; i < e.n; i++) {
        e.want[i] = SENTINEL;
        e.tol[i] = 0.0;
    }
    return e;
}

static void expect_free(expected *e) {
    free(e->out);
    free(e->want);
    free(e->tol);
}

/* Sets the [rows, cols] block at out (row stride ld) to v: NaN for cells a
 * call must overwrite without reading. */
static void fill_block(float *out, int ld, int rows, int cols, float v) {
    for (int i = 0; i < rows; i++)
        fill_value(out + (size_t)i * ld, (size_t)cols, v);
}

/* Asserts |got[i] - want[i]| <= tol[i] for i < n, where equal values
 * (infinities included) pass and NaN never does; on failure names the
 * element furthest out of tolerance. */
static void assert_close(const char *what, const float *got, const double *want, const double *tol,
                         size_t n) {
    size_t n_bad = 0, worst = 0;
    double worst_ratio = 0.0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]);
        if ((double)got[i] == want[i] || err <= tol[i]) continue;
        double ratio = isnan(err) || tol[i] == 0.0 ? INFINITY : err / tol[i];
        if (n_bad++ == 0 || ratio > worst_ratio) {
            worst = i;
            worst_ratio = ratio;
        }
    }
    if (n_bad)
        cr_assert_fail("%s: %zu of %zu values out of tolerance; worst [%zu]: got %.9g, want "
                       "%.9g, tol %.3g",
                       what, n_bad, n, worst, (double)got[worst], want[worst], tol[worst]);
}

static void assert_expected(const char *what, const expected *e) {
    assert_close(what, e->out, e->want, e->tol, e->n);
}

/* ---- references -------------------------------------------------------- */

/* One product from its definition: want[i,j] = prev[i,j] + sum_k a[i,k] *
 * b[k,j] + bias[j] for i < M, j < N, where b[k,j] is b[j*ldb + k] when
 * b_transposed, prev is out before an accumulating call (else NULL) and
 * bias may be NULL. want, tol and prev are laid out like out (stride ldo).
 * tol is the dot-product bound described at the top. */
static void ref_matmul(double *want, double *tol, int ldo, const float *prev, const float *a,
                       int lda, const float *b, int ldb, bool b_transposed, const float *bias,
                       int M, int K, int N) {
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double sum = 0.0, mag = 0.0;
            for (int k = 0; k < K; k++) {
                double bkj = b_transposed ? b[(size_t)j * ldb + k] : b[(size_t)k * ldb + j];
                double term = (double)a[(size_t)i * lda + k] * bkj;
                sum += term;
                mag += fabs(term);
            }
            if (bias) {
                sum += bias[j];
                mag += fabs(bias[j]);
            }
            size_t o = (size_t)i * ldo + j;
            if (prev) {
                sum += prev[o];
                mag += fabs(prev[o]);
            }
            want[o] = sum;
            tol[o] = (K + 4) * U * mag;
        }
    }
}

/* softmax(x)_c = exp(x_c) / sum_j exp(x_j) over a row of C values, with its
 * tolerance (see the top). -INFINITY entries are exactly 0, and so is a row
 * of them (the contract's choice where the definition gives 0/0). */
static void ref_softmax_row(double *p, double *tol, const float *x, int C) {
    double max = -INFINITY;
    for (int c = 0; c < C; c++)
        max = fmax(max, x[c]);
    if (max == -INFINITY) {
        for (int c = 0; c < C; c++)
            p[c] = tol[c] = 0.0;
        return;
    }
    double sum = 0.0;
    for (int c = 0; c < C; c++)
        sum += exp((double)x[c] - max);
    for (int c = 0; c < C; c++) {
        p[c] = exp((double)x[c] - max) / sum;
        double d = max - x[c];
        tol[c] = x[c] == -INFINITY ? 0.0 : 2 * U * (d + log(C) + 5) * p[c] + 0x1p-147;
    }
}

/* LayerNorm's centring and scaling of one row of C values: normalized_c =
 * (x_c - mean) / scale, scale = sqrt(mean((x - mean)^2) + eps); tolerances
 * as described at the top. */
static void ref_layernorm_row(double *norm, double *norm_tol, double *scale, double *scale_tol,
                              const float *x, int C, float eps) {
    double mean = 0.0, var = 0.0, xmax = 0.0;
    for (int c = 0; c < C; c++)
        mean += x[c];
    mean /= C;
    for (int c = 0; c < C; c++)
        var += (x[c] - mean) * (x[c] - mean);
    var /= C;
    for (int c = 0; c < C; c++)
        xmax = fmax(xmax, fabs(x[c]));
    double s = sqrt(var + (double)eps);
    double shift = U * xmax / s; /* the float32 mean's error, in units of scale */
    double rel_s = 8 * U + shift * shift;
    *scale = s;
    *scale_tol = rel_s * s;
    for (int c = 0; c < C; c++) {
        norm[c] = (x[c] - mean) / s;
        norm_tol[c] = 4 * shift + (4 * U + 2 * rel_s) * fabs(norm[c]);
    }
}

/* RMSNorm's scaling of one row of C values: normalized_c = x_c / scale,
 * scale = sqrt(mean(x^2) + eps); tolerances as described at the top. */
static void ref_rmsnorm_row(double *norm, double *norm_tol, double *scale, double *scale_tol,
                            const float *x, int C, float eps) {
    double sq = 0.0;
    for (int c = 0; c < C; c++)
        sq += (double)x[c] * x[c];
    const double s = sqrt(sq / C + (double)eps);
    *scale = s;
    *scale_tol = 3 * U * s;
    for (int c = 0; c < C; c++) {
        norm[c] = x[c] / s;
        norm_tol[c] = 5 * U * fabs(norm[c]);
    }
}

/* Soft-capping: cap * tanh(x / cap). */
static double ref_softcap(double x, double cap) {
    return cap * tanh(x / cap);
}

/* The soft-capping tolerance described at the top. */
static double softcap_tol(double want) {
    return 16 * U * fabs(want);
}

/* Rotary embeddings of x [N, H, dh] as TransformerLens writes them (its
 * apply_rotary): the first rotary_dim values of each head become
 * x * cos + rotate(x) * sin, where GPT-NeoX style repeats the r/2 table
 * entries as (c_0 .. c_{r/2-1}, c_0 .. c_{r/2-1}) and rotates halves,
 * rotate(x) = (-x_{r/2} .. -x_{r-1}, x_0 .. x_{r/2-1}), and GPT-J style
 * repeats each entry twice (c_0, c_0, c_1, c_1, ...) and rotates pairs,
 * rotate(x) = (-x_1, x_0, -x_3, x_2, ...). The entries are row pos[n] of
 * cos_t and sin_t [n_positions, r/2]; values past r are copied. want and
 * tol are laid out like x; tol as described at the top. */
static void ref_rotary(double *want, double *tol, const float *x, int N, int H, int dh,
                       int rotary_dim, bool interleaved, const float *cos_t, const float *sin_t,
                       const int32_t *pos) {
    const int half = rotary_dim / 2;
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) {
            const size_t at = ((size_t)n * H + h) * dh;
            const float *v = x + at;
            const float *c = cos_t + (size_t)pos[n] * half, *s = sin_t + (size_t)pos[n] * half;
            for (int j = 0; j < dh; j++) {
                want[at + j] = v[j];
                tol[at + j] = 0.0;
            }
            for (int j = 0; j < rotary_dim; j++) {
                const int f = interleaved ? j / 2 : j % half;
                double rotated;
                if (interleaved)
                    rotated = j % 2 == 0 ? -(double)v[j + 1] : v[j - 1];
                else
                    rotated = j < half ? -(double)v[j + half] : v[j - half];
                const double a = (double)v[j] * c[f], b = rotated * s[f];
                want[at + j] = a + b;
                tol[at + j] = 4 * U * (fabs(a) + fabs(b));
            }
        }
}

static double ref_relu(double x) {
    return x > 0.0 ? x : 0.0;
}

static double ref_gelu(double x) {
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

static double ref_gelu_new(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

static double ref_gelu_fast(double x) {
    return 0.5 * x * (1.0 + tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)));
}

static double ref_silu(double x) {
    return x / (1.0 + exp(-x));
}

/* ---- lk_matmul --------------------------------------------------------- */

/* One lk_matmul call: a is [M, lda], b is [K, ldb], out is [M, ldo], the
 * columns past K, N and N NaN or SENTINEL. */
typedef struct {
    int M, K, N, lda, ldb, ldo;
    bool bias, accumulate;
} mm_case;

static void check_matmul(rng *r, mm_case c) {
    char what[128];
    snprintf(what, sizeof what, "matmul M=%d K=%d N=%d lda=%d ldb=%d ldo=%d bias=%d acc=%d", c.M,
             c.K, c.N, c.lda, c.ldb, c.ldo, c.bias, c.accumulate);
    float *a = new_floats((size_t)c.M * c.lda), *b = new_floats((size_t)c.K * c.ldb);
    float *bias = c.bias ? new_floats((size_t)c.N) : NULL;
    fill_value(a, (size_t)c.M * c.lda, NAN);
    fill_value(b, (size_t)c.K * c.ldb, NAN);
    for (int i = 0; i < c.M; i++)
        fill_uniform(r, a + (size_t)i * c.lda, (size_t)c.K, -1, 1);
    for (int k = 0; k < c.K; k++)
        fill_uniform(r, b + (size_t)k * c.ldb, (size_t)c.N, -1, 1);
    if (bias) fill_uniform(r, bias, (size_t)c.N, -1, 1);

    expected e = expect_new((size_t)c.M * c.ldo);
    float *prev = NULL;
    if (c.accumulate) {
        for (int i = 0; i < c.M; i++)
            fill_uniform(r, e.out + (size_t)i * c.ldo, (size_t)c.N, -2, 2);
        prev = new_floats(e.n);
        memcpy(prev, e.out, e.n * sizeof *prev);
    } else {
        fill_block(e.out, c.ldo, c.M, c.N, NAN);
    }
    ref_matmul(e.want, e.tol, c.ldo, prev, a, c.lda, b, c.ldb, false, bias, c.M, c.K, c.N);
    lk_matmul(lk_cpu(), e.out, c.ldo, a, c.lda, b, c.ldb, bias, c.M, c.K, c.N, c.accumulate);
    assert_expected(what, &e);

    expect_free(&e);
    free(prev);
    free(a);
    free(b);
    free(bias);
}

Test(matmul, contiguous_every_shape) {
    rng r = {1};
    for (int mi = 0; mi < N_SIZES; mi++)
        for (int ki = 0; ki < N_SIZES; ki++)
            for (int ni = 0; ni < N_SIZES; ni++)
                for (int v = 0; v < 4; v++) {
                    int M = SIZES[mi], K = SIZES[ki], N = SIZES[ni];
                    check_matmul(&r, (mm_case){M, K, N, K, N, N, v & 1, v & 2});
                }
}

Test(matmul, strided_operands) {
    rng r = {2};
    for (int mi = 0; mi < N_SIZES; mi++)
        for (int ki = 0; ki < N_SIZES; ki++)
            for (int ni = 0; ni < N_SIZES; ni++)
                for (int v = 0; v < 4; v++) {
                    int M = SIZES[mi], K = SIZES[ki], N = SIZES[ni];
                    check_matmul(&r, (mm_case){M, K, N, K + 3, N + 1, N + 5, v & 1, v & 2});
                }
}

/* Big enough for OpenBLAS to split the product across threads. */
Test(matmul, large_every_thread_count) {
    rng r = {3};
    static const int threads[] = {1, 0, 3};
    for (int t = 0; t < 3; t++) {
        lk_set_threads(threads[t]);
        check_matmul(&r, (mm_case){300, 257, 520, 257, 520, 520, true, false});
        check_matmul(&r, (mm_case){129, 520, 301, 530, 301, 310, true, true});
    }
}

/* q/k/v per head when TL splits the input by head (core/forward.c,
 * project_qkv): inputs [N, h, d], W [d, h*dh] with head hi's columns at
 * hi*dh, bias [h*dh], out [N, h*dh], one call per head. */
Test(matmul, heads_split_input) {
    static const int shapes[][4] = {{1, 3, 1, 3}, {3, 17, 3, 5}, {17, 64, 4, 16}, {5, 129, 12, 64}};
    rng r = {4};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int N = shapes[si][0], d = shapes[si][1], h = shapes[si][2], dh = shapes[si][3];
        const int hd = h * dh;
        float *inp = new_floats((size_t)N * h * d), *W = new_floats((size_t)d * hd);
        float *bias = new_floats((size_t)hd);
        fill_normal(&r, inp, (size_t)N * h * d, 0, 1);
        fill_normal(&r, W, (size_t)d * hd, 0, 0.2);
        fill_normal(&r, bias, (size_t)hd, 0, 0.1);
        expected e = expect_new((size_t)N * hd);
        fill_block(e.out, hd, N, hd, NAN);
        for (int hi = 0; hi < h; hi++)
            ref_matmul(e.want + (size_t)hi * dh, e.tol + (size_t)hi * dh, hd, NULL,
                       inp + (size_t)hi * d, h * d, W + (size_t)hi * dh, hd, false,
                       bias + (size_t)hi * dh, N, d, dh);
        for (int hi = 0; hi < h; hi++)
            lk_matmul(lk_cpu(), e.out + (size_t)hi * dh, hd, inp + (size_t)hi * d, h * d,
                      W + (size_t)hi * dh, hd, bias + (size_t)hi * dh, N, d, dh, false);
        char what[64];
        snprintf(what, sizeof what, "N=%d d=%d h=%d dh=%d", N, d, h, dh);
        assert_expected(what, &e);
        expect_free(&e);
        free(inp);
        free(W);
        free(bias);
    }
}

/* Per-head attention results (core/forward.c, use_attn_result): z [N, h*dh]
 * read per head, W_O [h, dh, d], result [N, h, d], no bias. */
Test(matmul, heads_result_no_bias) {
    static const int shapes[][4] = {{1, 3, 1, 3}, {3, 17, 3, 5}, {17, 64, 4, 16}, {5, 129, 12, 64}};
    rng r = {5};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int N = shapes[si][0], d = shapes[si][1], h = shapes[si][2], dh = shapes[si][3];
        const int hd = h * dh;
        float *z = new_floats((size_t)N * hd), *W_O = new_floats((size_t)hd * d);
        fill_normal(&r, z, (size_t)N * hd, 0, 1);
        fill_normal(&r, W_O, (size_t)hd * d, 0, 0.2);
        expected e = expect_new((size_t)N * h * d);
        fill_block(e.out, h * d, N, h * d, NAN);
        for (int hi = 0; hi < h; hi++)
            ref_matmul(e.want + (size_t)hi * d, e.tol + (size_t)hi * d, h * d, NULL,
                       z + (size_t)hi * dh, hd, W_O + (size_t)hi * dh * d, d, false, NULL, N, dh,
                       d);
        for (int hi = 0; hi < h; hi++)
            lk_matmul(lk_cpu(), e.out + (size_t)hi * d, h * d, z + (size_t)hi * dh, hd,
                      W_O + (size_t)hi * dh * d, d, NULL, N, dh, d, false);
        char what[64];
        snprintf(what, sizeof what, "N=%d d=%d h=%d dh=%d", N, d, h, dh);
        assert_expected(what, &e);
        expect_free(&e);
        free(z);
        free(W_O);
    }
}

/* An empty sum is 0: out becomes bias (or 0), or gains bias when
 * accumulating. */
Test(matmul, k_zero) {
    rng r = {6};
    for (int ni = 0; ni < N_SIZES; ni++)
        for (int v = 0; v < 4; v++)
            check_matmul(&r, (mm_case){3, 0, SIZES[ni], 1, SIZES[ni], SIZES[ni] + 2, v & 1, v & 2});
}

Test(matmul, empty_output_writes_nothing) {
    rng r = {7};
    float a[16], b[16], bias[4];
    fill_uniform(&r, a, 16, -1, 1);
    fill_uniform(&r, b, 16, -1, 1);
    fill_uniform(&r, bias, 4, -1, 1);
    for (int v = 0; v < 4; v++) {
        expected e = expect_new(16);
        lk_matmul(lk_cpu(), e.out, 4, a, 4, b, 4, v & 1 ? bias : NULL, 0, 4, 4, v & 2);
        lk_matmul(lk_cpu(), e.out, 4, a, 4, b, 4, v & 1 ? bias : NULL, 4, 4, 0, v & 2);
        lk_matmul(lk_cpu(), e.out, 4, a, 4, b, 4, v & 1 ? bias : NULL, 0, 0, 0, v & 2);
        assert_expected("M or N = 0", &e);
        expect_free(&e);
    }
}

/* ---- lk_matmul_batched ------------------------------------------------- */

/* One lk_matmul_batched call; product i reads a + i*a_step ([M, K], stride
 * lda), b + i*b_step ([K, N], or [N, K] when trans, stride ldb) and writes
 * out + i*out_step ([M, N], stride ldo). */
typedef struct {
    int M, K, N, count;
    int lda, ldb, ldo;
    size_t a_step, b_step, out_step;
    bool trans;
} bm_case;

static size_t span(int count, size_t step, int rows, int ld) {
    return count && rows ? (size_t)(count - 1) * step + (size_t)rows * ld : 0;
}

/* Runs c on inputs drawn from seed and checks it; when result is not NULL
 * it receives the output buffer (span + TAIL floats) for the caller to free. */
static void check_batched(uint64_t seed, bm_case c, float **result) {
    char what[192];
    snprintf(what, sizeof what,
             "batched M=%d K=%d N=%d count=%d lda=%d ldb=%d ldo=%d steps=%zu,%zu,%zu trans=%d", c.M,
             c.K, c.N, c.count, c.lda, c.ldb, c.ldo, c.a_step, c.b_step, c.out_step, c.trans);
    rng r = {seed};
    const int b_rows = c.trans ? c.N : c.K, b_cols = c.trans ? c.K : c.N;
    const size_t a_len = span(c.count, c.a_step, c.M, c.lda);
    const size_t b_len = span(c.count, c.b_step, b_rows, c.ldb);
    float *a = new_floats(a_len), *b = new_floats(b_len);
    fill_value(a, a_len, NAN);
    fill_value(b, b_len, NAN);
    for (int i = 0; i < c.count; i++) {
        for (int m = 0; m < c.M; m++)
            fill_uniform(&r, a + i * c.a_step + (size_t)m * c.lda, (size_t)c.K, -1, 1);
        for (int k = 0; k < b_rows; k++)
            fill_uniform(&r, b + i * c.b_step + (size_t)k * c.ldb, (size_t)b_cols, -1, 1);
    }
    expected e = expect_new(span(c.count, c.out_step, c.M, c.ldo));
    for (int i = 0; i < c.count; i++) {
        fill_block(e.out + i * c.out_step, c.ldo, c.M, c.N, NAN);
        ref_matmul(e.want + i * c.out_step, e.tol + i * c.out_step, c.ldo, NULL, a + i * c.a_step,
                   c.lda, b + i * c.b_step, c.ldb, c.trans, NULL, c.M, c.K, c.N);
    }
    lk_matmul_batched(lk_cpu(), e.out, c.ldo, c.out_step, a, c.lda, c.a_step, b, c.ldb, c.b_step,
                      c.trans, c.M, c.K, c.N, c.count);
    assert_expected(what, &e);
    if (result) {
        *result = e.out;
        e.out = NULL;
    }
    expect_free(&e);
    free(a);
    free(b);
}

/* scores[hi] (T,T) = q[:, hi, :] (T,dh) @ k[:, hi, :]^T with q and k
 * [T, h*dh], as core/forward.c's attention_scores calls it. */
static bm_case scores_case(int T, int h, int dh) {
    return (bm_case){T, dh, T, h, h * dh, h * dh, T, (size_t)dh, (size_t)dh, (size_t)T * T, true};
}

/* z[:, hi, :] (T,dh) = pattern[hi] (T,T) @ v[:, hi, :] (T,dh) with v and z
 * [T, h*dh]: the output is strided too. */
static bm_case z_case(int T, int h, int dh) {
    return (bm_case){T, T, dh, h, T, h * dh, h * dh, (size_t)T * T, (size_t)dh, (size_t)dh, false};
}

Test(batched, attention_scores) {
    static const int heads[] = {1, 3, 12};
    for (int ti = 0; ti < N_SIZES; ti++)
        for (int di = 0; di < N_SIZES; di++)
            for (int hi = 0; hi < 3; hi++)
                check_batched(100 + ti * 100 + di * 10 + hi,
                              scores_case(SIZES[ti], heads[hi], SIZES[di]), NULL);
}

Test(batched, attention_z) {
    static const int heads[] = {1, 3, 12};
    for (int ti = 0; ti < N_SIZES; ti++)
        for (int di = 0; di < N_SIZES; di++)
            for (int hi = 0; hi < 3; hi++)
                check_batched(200 + ti * 100 + di * 10 + hi,
                              z_case(SIZES[ti], heads[hi], SIZES[di]), NULL);
}

/* Padded rows, gaps between products, and a b shared by every product
 * (b_step 0), with and without b_transposed. */
Test(batched, strided_every_shape) {
    static const int counts[] = {1, 3, 8};
    uint64_t seed = 300;
    for (int mi = 0; mi < N_SIZES; mi++)
        for (int ki = 0; ki < N_SIZES; ki++)
            for (int ni = 0; ni < N_SIZES; ni++)
                for (int v = 0; v < 4; v++) {
                    const int M = SIZES[mi], K = SIZES[ki], N = SIZES[ni];
                    const int count = counts[(mi + ki + ni) % 3];
                    const bool trans = v & 1, shared_b = v & 2;
                    const int lda = K + 2, ldb = (trans ? K : N) + 3, ldo = N + 1;
                    const size_t b_rows = (size_t)(trans ? N : K);
                    const size_t a_step = (size_t)M * lda + 5, out_step = (size_t)M * ldo + 2;
                    const size_t b_step = shared_b ? 0 : b_rows * ldb + 7;
                    bm_case c = {M, K, N, count, lda, ldb, ldo, a_step, b_step, out_step, trans};
                    check_batched(seed++, c, NULL);
                }
}

/* Products run in parallel; each is one single-threaded GEMM, so the thread
 * count must not change a bit of the result. */
Test(batched, same_result_any_thread_count) {
    static const int threads[] = {1, 0, 5};
    const bm_case cases[] = {scores_case(129, 12, 64), z_case(129, 12, 64), scores_case(17, 3, 5)};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const bm_case c = cases[ci];
        const size_t n = span(c.count, c.out_step, c.M, c.ldo) + TAIL;
        float *first = NULL;
        for (int t = 0; t < 3; t++) {
            float *out;
            lk_set_threads(threads[t]);
            check_batched(400 + ci, c, &out);
            if (!first) {
                first = out;
                continue;
            }
            cr_assert(memcmp(first, out, n * sizeof *out) == 0,
                      "case %zu: lk_set_threads(%d) changed the result", ci, threads[t]);
            free(out);
        }
        free(first);
    }
}

Test(batched, k_zero_gives_zeros) {
    check_batched(500, (bm_case){3, 0, 4, 3, 1, 4, 5, 3, 0, 15, false}, NULL);
    check_batched(501, (bm_case){3, 0, 4, 3, 1, 1, 5, 3, 4, 15, true}, NULL);
}

Test(batched, empty_writes_nothing) {
    const bm_case cases[] = {
        {0, 4, 4, 3, 4, 4, 4, 16, 16, 16, false},
        {4, 4, 0, 3, 4, 4, 4, 16, 16, 16, true},
        {4, 4, 4, 0, 4, 4, 4, 16, 16, 16, false},
    };
    rng r = {600};
    float a[64], b[64];
    fill_uniform(&r, a, 64, -1, 1);
    fill_uniform(&r, b, 64, -1, 1);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const bm_case c = cases[ci];
        expected e = expect_new(64);
        lk_matmul_batched(lk_cpu(), e.out, c.ldo, c.out_step, a, c.lda, c.a_step, b, c.ldb,
                          c.b_step, c.trans, c.M, c.K, c.N, c.count);
        assert_expected("M, N or count = 0", &e);
        expect_free(&e);
    }
}

/* ---- lk_layernorm_pre -------------------------------------------------- */

/* Runs lk_layernorm_pre on inp [N, C] (in place when in_place) and checks
 * both outputs. */
static void check_layernorm(const char *what, const float *inp, int N, int C, float eps,
                            bool in_place) {
    const size_t n = (size_t)N * C;
    expected norm = expect_new(n), scale = expect_new((size_t)N);
    for (int i = 0; i < N; i++)
        ref_layernorm_row(norm.want + (size_t)i * C, norm.tol + (size_t)i * C, &scale.want[i],
                          &scale.tol[i], inp + (size_t)i * C, C, eps);
    fill_value(scale.out, (size_t)N, NAN);
    if (in_place) {
        memcpy(norm.out, inp, n * sizeof *inp);
        lk_layernorm_pre(lk_cpu(), norm.out, scale.out, norm.out, N, C, eps);
    } else {
        fill_value(norm.out, n, NAN);
        lk_layernorm_pre(lk_cpu(), norm.out, scale.out, inp, N, C, eps);
    }
    char buf[160];
    snprintf(buf, sizeof buf, "%s N=%d C=%d eps=%g in_place=%d: normalized", what, N, C, eps,
             in_place);
    assert_expected(buf, &norm);
    snprintf(buf, sizeof buf, "%s N=%d C=%d eps=%g in_place=%d: scale", what, N, C, eps, in_place);
    assert_expected(buf, &scale);
    expect_free(&norm);
    expect_free(&scale);
}

/* Rows with means from 0 to 1000 and spreads from 1e-3 (where eps
 * dominates) to 30. */
static float *layernorm_rows(rng *r, int N, int C) {
    static const double means[] = {0.0, 0.5, -3.0, 20.0, 1000.0};
    static const double stds[] = {1.0, 1e-3, 30.0, 0.1};
    float *x = new_floats((size_t)N * C);
    for (int i = 0; i < N; i++)
        fill_normal(r, x + (size_t)i * C, (size_t)C, means[i % 5], stds[i % 4]);
    return x;
}

Test(layernorm_pre, matches_definition) {
    static const int rows[] = {1, 3, 17, 20};
    static const int widths[] = {1, 3, 17, 64, 129, 768};
    static const float eps[] = {1e-5f, 1e-12f};
    rng r = {700};
    for (int ni = 0; ni < 4; ni++)
        for (int ci = 0; ci < 6; ci++)
            for (int ei = 0; ei < 2; ei++) {
                float *x = layernorm_rows(&r, rows[ni], widths[ci]);
                check_layernorm("random", x, rows[ni], widths[ci], eps[ei], false);
                free(x);
            }
}

/* core/forward.c normalises in place. */
Test(layernorm_pre, in_place) {
    rng r = {701};
    for (int ci = 0; ci < N_SIZES; ci++) {
        float *x = layernorm_rows(&r, 20, SIZES[ci]);
        check_layernorm("random", x, 20, SIZES[ci], 1e-5f, true);
        free(x);
    }
}

/* A constant row has variance 0: normalized is 0 and scale sqrt(eps), with
 * no 0/0 on the way. */
Test(layernorm_pre, constant_rows) {
    static const float values[] = {0.0f, 1.0f, 0.1f, -123.456f, 3e4f};
    static const int widths[] = {1, 3, 17, 64, 129, 768};
    for (int ci = 0; ci < 6; ci++) {
        const int N = 5, C = widths[ci];
        float *x = new_floats((size_t)N * C);
        for (int i = 0; i < N; i++)
            fill_value(x + (size_t)i * C, (size_t)C, values[i]);
        check_layernorm("constant", x, N, C, 1e-5f, false);
        check_layernorm("constant", x, N, C, 1e-12f, false);
        free(x);
    }
}

/* ---- lk_rmsnorm_pre ---------------------------------------------------- */

/* Runs lk_rmsnorm_pre on inp [N, C] (in place when in_place) and checks
 * both outputs. */
static void check_rmsnorm(const char *what, const float *inp, int N, int C, float eps,
                          bool in_place) {
    const size_t n = (size_t)N * C;
    expected norm = expect_new(n), scale = expect_new((size_t)N);
    for (int i = 0; i < N; i++)
        ref_rmsnorm_row(norm.want + (size_t)i * C, norm.tol + (size_t)i * C, &scale.want[i],
                        &scale.tol[i], inp + (size_t)i * C, C, eps);
    fill_value(scale.out, (size_t)N, NAN);
    if (in_place) {
        memcpy(norm.out, inp, n * sizeof *inp);
        lk_rmsnorm_pre(lk_cpu(), norm.out, scale.out, norm.out, N, C, eps);
    } else {
        fill_value(norm.out, n, NAN);
        lk_rmsnorm_pre(lk_cpu(), norm.out, scale.out, inp, N, C, eps);
    }
    char buf[160];
    snprintf(buf, sizeof buf, "rmsnorm %s N=%d C=%d eps=%g in_place=%d: normalized", what, N, C,
             eps, in_place);
    assert_expected(buf, &norm);
    snprintf(buf, sizeof buf, "rmsnorm %s N=%d C=%d eps=%g in_place=%d: scale", what, N, C, eps,
             in_place);
    assert_expected(buf, &scale);
    expect_free(&norm);
    expect_free(&scale);
}

static const float RMS_EPS[] = {1e-5f, 1e-6f, 1e-12f};

/* LayerNorm's rows (means up to 1000, spreads from 1e-3 to 30): RMSNorm
 * does not centre, so the mean counts in the scale. */
Test(rmsnorm_pre, matches_definition) {
    static const int rows[] = {1, 3, 17, 20};
    static const int widths[] = {1, 3, 17, 64, 129, 768};
    rng r = {750};
    for (int ni = 0; ni < 4; ni++)
        for (int ci = 0; ci < 6; ci++)
            for (int ei = 0; ei < 3; ei++) {
                float *x = layernorm_rows(&r, rows[ni], widths[ci]);
                check_rmsnorm("random", x, rows[ni], widths[ci], RMS_EPS[ei], false);
                free(x);
            }
}

Test(rmsnorm_pre, in_place) {
    rng r = {751};
    for (int ci = 0; ci < N_SIZES; ci++) {
        float *x = layernorm_rows(&r, 20, SIZES[ci]);
        check_rmsnorm("random", x, 20, SIZES[ci], 1e-6f, true);
        free(x);
    }
}

/* Zero rows give scale sqrt(eps) and normalized exactly 0; rows of values
 * near 1e-4, whose mean square is below eps, are scaled mostly by eps. */
Test(rmsnorm_pre, zero_and_small_rows) {
    static const int widths[] = {1, 3, 17, 64, 129, 768};
    rng r = {752};
    for (int ci = 0; ci < 6; ci++)
        for (int ei = 0; ei < 3; ei++) {
            const int N = 4, C = widths[ci];
            float *x = new_floats((size_t)N * C);
            fill_value(x, (size_t)C, 0.0f);
            fill_normal(&r, x + C, (size_t)C, 0, 1e-4);
            fill_normal(&r, x + 2 * (size_t)C, (size_t)C, 1e-4, 1e-5);
            fill_value(x + 3 * (size_t)C, (size_t)C, 0.0f);
            check_rmsnorm("zero and small", x, N, C, RMS_EPS[ei], false);
            check_rmsnorm("zero and small", x, N, C, RMS_EPS[ei], true);
            free(x);
        }
}

/* ---- lk_affine --------------------------------------------------------- */

static void check_affine(rng *r, int N, int C, bool with_bias, bool in_place) {
    const size_t n = (size_t)N * C;
    float *x = new_floats(n), *w = new_floats((size_t)C);
    float *b = with_bias ? new_floats((size_t)C) : NULL;
    fill_normal(r, x, n, 0, 1);
    fill_normal(r, w, (size_t)C, 1, 0.3);
    if (b) fill_normal(r, b, (size_t)C, 0, 0.5);
    expected e = expect_new(n);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            const size_t o = (size_t)i * C + c;
            const double xw = (double)x[o] * w[c], bc = b ? b[c] : 0.0;
            e.want[o] = xw + bc;
            e.tol[o] = 4 * U * (fabs(xw) + fabs(bc));
        }
    if (in_place) {
        memcpy(e.out, x, n * sizeof *x);
        lk_affine(lk_cpu(), e.out, e.out, w, b, N, C);
    } else {
        fill_value(e.out, n, NAN);
        lk_affine(lk_cpu(), e.out, x, w, b, N, C);
    }
    char what[96];
    snprintf(what, sizeof what, "affine N=%d C=%d bias=%d in_place=%d", N, C, with_bias, in_place);
    assert_expected(what, &e);
    expect_free(&e);
    free(x);
    free(w);
    free(b);
}

Test(affine, with_bias) {
    rng r = {800};
    for (int ni = 0; ni < N_SIZES; ni++)
        for (int ci = 0; ci < N_SIZES; ci++)
            check_affine(&r, SIZES[ni], SIZES[ci], true, false);
}

Test(affine, null_bias) {
    rng r = {801};
    for (int ni = 0; ni < N_SIZES; ni++)
        for (int ci = 0; ci < N_SIZES; ci++)
            check_affine(&r, SIZES[ni], SIZES[ci], false, false);
}

/* core/forward.c applies the LayerNorm weight in place. */
Test(affine, in_place) {
    rng r = {802};
    for (int ci = 0; ci < N_SIZES; ci++) {
        check_affine(&r, 17, SIZES[ci], true, true);
        check_affine(&r, 17, SIZES[ci], false, true);
    }
}

/* ---- lk_add ------------------------------------------------------------ */

/* The spacing of float32 values around |x|. */
static double ulp_f(double x) {
    int e;
    if (fabs(x) < FLT_MIN) return 0x1p-149;
    frexp(x, &e);
    return ldexp(1.0, e - 24);
}

static const size_t LENGTHS[] = {0, 1, 3, 17, 64, 129, 4099, 200003};
#define N_LENGTHS (sizeof LENGTHS / sizeof LENGTHS[0])

Test(add, correctly_rounded) {
    rng r = {900};
    for (size_t li = 0; li < N_LENGTHS; li++) {
        const size_t n = LENGTHS[li];
        float *a = new_floats(n), *b = new_floats(n);
        fill_normal(&r, a, n, 0, 10);
        fill_normal(&r, b, n, 0, 1);
        expected e = expect_new(n);
        for (size_t i = 0; i < n; i++) {
            e.want[i] = (double)a[i] + b[i];
            e.tol[i] = 0.5 * ulp_f(e.want[i]);
        }
        fill_value(e.out, n, NAN);
        lk_add(lk_cpu(), e.out, a, b, n);
        char what[32];
        snprintf(what, sizeof what, "add n=%zu", n);
        assert_expected(what, &e);
        expect_free(&e);
        free(a);
        free(b);
    }
}

/* out may alias a, b, or both. */
Test(add, aliasing) {
    rng r = {901};
    const size_t n = 200003;
    float *a = new_floats(n), *b = new_floats(n);
    fill_normal(&r, a, n, 0, 10);
    fill_normal(&r, b, n, 0, 1);
    for (int v = 0; v < 3; v++) {
        expected e = expect_new(n);
        memcpy(e.out, v == 1 ? b : a, n * sizeof *a);
        for (size_t i = 0; i < n; i++) {
            e.want[i] = (double)a[i] + (v == 2 ? a[i] : b[i]);
            e.tol[i] = 0.5 * ulp_f(e.want[i]);
        }
        if (v == 0) lk_add(lk_cpu(), e.out, e.out, b, n);
        if (v == 1) lk_add(lk_cpu(), e.out, a, e.out, n);
        if (v == 2) lk_add(lk_cpu(), e.out, e.out, e.out, n);
        static const char *const names[] = {"out = a", "out = b", "out = a = b"};
        assert_expected(names[v], &e);
        expect_free(&e);
    }
    free(a);
    free(b);
}

/* ---- activations ------------------------------------------------------- */

/* Besides the random values, every activation sees zeros of both signs,
 * tiny values, and magnitudes where exp, erf and tanh saturate or overflow
 * in float32. None lies in (-91.9, -88.7): there silu's exp(-x)
 * overflows and it returns -0 where x * sigmoid(x) is a normal float of
 * about -1e-37, an error too small to matter and left unchecked. */
static const float EXTREMES[] = {0.0f,   -0.0f,  1e-30f,  -1e-30f, 1e-3f, -1e-3f, 0.5f,
                                 -0.5f,  1.0f,   -1.0f,   3.0f,    -3.0f, 5.0f,   -5.0f,
                                 10.0f,  -10.0f, 20.0f,   -20.0f,  50.0f, -50.0f, 87.0f,
                                 -87.0f, 100.0f, -100.0f, 1e4f,    -1e4f, 1e30f,  -1e30f};
#define N_EXTREMES (sizeof EXTREMES / sizeof EXTREMES[0])

/* Random values (sd 4, so mostly the curved part of each activation), with
 * EXTREMES at the start when they fit. */
static float *activation_inputs(rng *r, size_t n) {
    float *x = new_floats(n);
    fill_normal(r, x, n, 0, 4);
    if (n >= N_EXTREMES) memcpy(x, EXTREMES, sizeof EXTREMES);
    return x;
}

/* Each lk_act with its reference: exact demands equality, cancels adds the
 * GELUs' 2^-21*|x| for x < 0 to the tolerance. Indexed by lk_act. */
typedef struct {
    const char *name;
    lk_act act;
    double (*ref)(double);
    bool exact, cancels;
} act_case;

static const act_case ACTS[] = {
    {"relu", LK_RELU, ref_relu, true, false},
    {"gelu", LK_GELU, ref_gelu, false, true},
    {"gelu_new", LK_GELU_NEW, ref_gelu_new, false, true},
    {"gelu_fast", LK_GELU_FAST, ref_gelu_fast, false, true},
    {"silu", LK_SILU, ref_silu, false, false},
};
#define N_ACTS (sizeof ACTS / sizeof ACTS[0])

/* The tolerance of a's value at x, want being the reference (see the top). */
static double act_tol(const act_case *a, float x, double want) {
    if (a->exact) return 0.0;
    double tol = 1e-6 * fabs(want) + FLT_MIN;
    if (a->cancels && x < 0) tol += 0x1p-21 * fabs(x);
    return tol;
}

/* Checks activation a against its reference for every length, out of place
 * and in place. */
static void check_activation(const act_case *a) {
    rng r = {1000};
    for (size_t li = 0; li < N_LENGTHS; li++) {
        const size_t n = LENGTHS[li];
        float *x = activation_inputs(&r, n);
        expected e = expect_new(n);
        for (size_t i = 0; i < n; i++) {
            e.want[i] = a->ref(x[i]);
            e.tol[i] = act_tol(a, x[i], e.want[i]);
        }
        char what[64];
        fill_value(e.out, n, NAN);
        lk_activation(lk_cpu(), a->act, e.out, x, n);
        snprintf(what, sizeof what, "%s n=%zu", a->name, n);
        assert_expected(what, &e);
        memcpy(e.out, x, n * sizeof *x);
        lk_activation(lk_cpu(), a->act, e.out, e.out, n);
        snprintf(what, sizeof what, "%s n=%zu in place", a->name, n);
        assert_expected(what, &e);
        expect_free(&e);
        free(x);
    }
}

Test(activation, relu) {
    check_activation(&ACTS[LK_RELU]);
}

Test(activation, gelu_erf) {
    check_activation(&ACTS[LK_GELU]);
}

Test(activation, gelu_new) {
    check_activation(&ACTS[LK_GELU_NEW]);
}

Test(activation, gelu_fast) {
    check_activation(&ACTS[LK_GELU_FAST]);
}

Test(activation, silu) {
    check_activation(&ACTS[LK_SILU]);
}

/* NaN in, NaN out, as torch's activations and softmax, and no undefined
 * behaviour on the way for any non-finite input (tools/test.sh runs this
 * under UBSan: converting NaN to an integer in the vectorised exp was one,
 * reached by an intervention setting hook_embed to 1e308). */
Test(activation, non_finite_inputs) {
    const float in[4] = {NAN, INFINITY, -INFINITY, 1e30f};
    for (int a = LK_RELU; a <= LK_SILU; a++) {
        float out[4];
        lk_activation(lk_cpu(), (lk_act)a, out, in, 4);
        cr_expect(isnan(out[0]), "%s(NaN) = %g, not NaN", ACTS[a].name, out[0]);
        cr_expect(out[3] == 1e30f, "%s(1e30) = %g", ACTS[a].name, out[3]);
    }
    float row[3] = {NAN, 0.0f, 1.0f}, probs[3];
    lk_softmax_rows(lk_cpu(), probs, row, 1, 3);
    cr_expect(isnan(probs[0]) && isnan(probs[1]) && isnan(probs[2]),
              "softmax of a row with NaN: %g %g %g, not NaN", probs[0], probs[1], probs[2]);
}

/* ---- lk_gated_activation ----------------------------------------------- */

/* act(gate) * linear for every lk_act and length, with out separate, over
 * gate and over linear; the lengths cross the CPU kernel's blocks of 2048
 * and its threshold for going parallel. */
Test(gated_activation, matches_definition) {
    static const char *const OUT[] = {"separate", "gate", "linear"};
    rng r = {1050};
    for (size_t ai = 0; ai < N_ACTS; ai++)
        for (size_t li = 0; li < N_LENGTHS; li++) {
            const act_case *a = &ACTS[ai];
            const size_t n = LENGTHS[li];
            float *gate = activation_inputs(&r, n), *linear = new_floats(n);
            fill_normal(&r, linear, n, 0, 1);
            expected e = expect_new(n);
            for (size_t i = 0; i < n; i++) {
                const double act = a->ref(gate[i]);
                e.want[i] = act * linear[i];
                e.tol[i] =
                    act_tol(a, gate[i], act) * fabs(linear[i]) + 2 * U * fabs(e.want[i]) + 0x1p-149;
            }
            for (int alias = 0; alias < 3; alias++) {
                const float *g = gate, *l = linear;
                if (alias == 0) fill_value(e.out, n, NAN);
                if (alias == 1) g = memcpy(e.out, gate, n * sizeof *gate);
                if (alias == 2) l = memcpy(e.out, linear, n * sizeof *linear);
                lk_gated_activation(lk_cpu(), a->act, e.out, g, l, n);
                char what[80];
                snprintf(what, sizeof what, "gated %s n=%zu out=%s", a->name, n, OUT[alias]);
                assert_expected(what, &e);
            }
            expect_free(&e);
            free(gate);
            free(linear);
        }
}

/* ---- lk_scale and lk_softcap ------------------------------------------- */

/* Gemma's embedding scales sqrt(d_model) (2B and 9B), an exact factor and
 * a negative one. */
Test(scale, correctly_rounded) {
    const float factors[] = {sqrtf(2048.0f), sqrtf(3584.0f), 0.125f, -3.0f};
    rng r = {1060};
    for (int fi = 0; fi < 4; fi++)
        for (size_t li = 0; li < N_LENGTHS; li++) {
            const size_t n = LENGTHS[li];
            float *x = new_floats(n);
            fill_normal(&r, x, n, 0, 10);
            expected e = expect_new(n);
            for (size_t i = 0; i < n; i++) {
                e.want[i] = (double)x[i] * factors[fi];
                e.tol[i] = 0.5 * ulp_f(e.want[i]);
            }
            memcpy(e.out, x, n * sizeof *x);
            lk_scale(lk_cpu(), e.out, n, factors[fi]);
            char what[64];
            snprintf(what, sizeof what, "scale n=%zu factor=%.9g", n, (double)factors[fi]);
            assert_expected(what, &e);
            expect_free(&e);
            free(x);
        }
}

/* Gemma 2's caps of final logits (30) and attention scores (50), and small
 * ones; values of sd 2 caps (tanh's curve and its saturation), led by
 * EXTREMES. */
Test(softcap, matches_definition) {
    static const float caps[] = {30.0f, 50.0f, 1.0f, 0.5f};
    rng r = {1070};
    for (int ci = 0; ci < 4; ci++)
        for (size_t li = 0; li < N_LENGTHS; li++) {
            const size_t n = LENGTHS[li];
            const float cap = caps[ci];
            float *x = new_floats(n);
            fill_normal(&r, x, n, 0, 2 * cap);
            if (n >= N_EXTREMES) memcpy(x, EXTREMES, sizeof EXTREMES);
            expected e = expect_new(n);
            for (size_t i = 0; i < n; i++) {
                e.want[i] = ref_softcap(x[i], cap);
                e.tol[i] = softcap_tol(e.want[i]);
            }
            memcpy(e.out, x, n * sizeof *x);
            lk_softcap(lk_cpu(), e.out, n, cap);
            char what[64];
            snprintf(what, sizeof what, "softcap n=%zu cap=%g", n, (double)cap);
            assert_expected(what, &e);
            expect_free(&e);
            free(x);
        }
}

/* ---- lk_rotary ---------------------------------------------------------- */

enum { ROT_POSITIONS = 67 };

/* cos and sin [ROT_POSITIONS, rotary_dim / 2] of the angles
 * p * 10000^(-2i / rotary_dim), rounded to float32 as a model loader fills
 * them. */
static void rotary_tables(float *cos_t, float *sin_t, int rotary_dim) {
    const int half = rotary_dim / 2;
    for (int p = 0; p < ROT_POSITIONS; p++)
        for (int i = 0; i < half; i++) {
            const double angle = p * pow(10000.0, -2.0 * i / rotary_dim);
            cos_t[p * half + i] = (float)cos(angle);
            sin_t[p * half + i] = (float)sin(angle);
        }
}

/* Whole heads, partial rotary (Pythia's rotary_pct 0.25: 20 of 80), odd
 * head sizes, one pair, and one large enough for the CPU loop to go
 * parallel; positions drawn at random (out of order, repeated), the first
 * being the tables' last row. */
Test(rotary, matches_definition) {
    static const int cases[][4] = {{1, 1, 2, 2},   {3, 2, 8, 8}, {17, 3, 64, 64},  {5, 4, 80, 20},
                                   {7, 3, 23, 10}, {3, 2, 9, 2}, {129, 12, 64, 32}};
    rng r = {1080};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
        for (int interleaved = 0; interleaved < 2; interleaved++) {
            const int N = cases[ci][0], H = cases[ci][1], dh = cases[ci][2], rd = cases[ci][3];
            const size_t n = (size_t)N * H * dh, table = (size_t)ROT_POSITIONS * (rd / 2);
            float *x = new_floats(n), *cos_t = new_floats(table), *sin_t = new_floats(table);
            int32_t *pos = malloc((size_t)N * sizeof *pos);
            cr_assert_not_null(pos, "out of memory");
            fill_normal(&r, x, n, 0, 1);
            rotary_tables(cos_t, sin_t, rd);
            for (int i = 0; i < N; i++)
                pos[i] = (int32_t)(rng_next(&r) % ROT_POSITIONS);
            pos[0] = ROT_POSITIONS - 1;
            expected e = expect_new(n);
            ref_rotary(e.want, e.tol, x, N, H, dh, rd, interleaved, cos_t, sin_t, pos);
            memcpy(e.out, x, n * sizeof *x);
            lk_rotary(lk_cpu(), e.out, N, H, dh, rd, interleaved, cos_t, sin_t, pos);
            char what[96];
            snprintf(what, sizeof what, "rotary %s N=%d H=%d dh=%d rotary_dim=%d",
                     interleaved ? "GPT-J" : "GPT-NeoX", N, H, dh, rd);
            assert_expected(what, &e);
            expect_free(&e);
            free(x);
            free(cos_t);
            free(sin_t);
            free(pos);
        }
}

/* ---- lk_softmax_rows and lk_solu --------------------------------------- */

/* Runs lk_softmax_rows on inp [N, C] (in place when in_place) and checks
 * it, asserting also that nothing came out NaN. */
static void check_softmax(const char *what, const float *inp, int N, int C, bool in_place) {
    const size_t n = (size_t)N * C;
    expected e = expect_new(n);
    for (int i = 0; i < N; i++)
        ref_softmax_row(e.want + (size_t)i * C, e.tol + (size_t)i * C, inp + (size_t)i * C, C);
    if (in_place) {
        memcpy(e.out, inp, n * sizeof *inp);
        lk_softmax_rows(lk_cpu(), e.out, e.out, N, C);
    } else {
        fill_value(e.out, n, NAN);
        lk_softmax_rows(lk_cpu(), e.out, inp, N, C);
    }
    char buf[128];
    snprintf(buf, sizeof buf, "softmax %s N=%d C=%d in_place=%d", what, N, C, in_place);
    assert_expected(buf, &e);
    expect_free(&e);
}

/* The same for lk_solu: out = x * softmax(x). */
static void check_solu(const char *what, const float *inp, int N, int C, bool in_place) {
    const size_t n = (size_t)N * C;
    expected e = expect_new(n);
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        double *want = e.want + (size_t)i * C, *tol = e.tol + (size_t)i * C;
        ref_softmax_row(want, tol, x, C);
        for (int c = 0; c < C; c++) {
            want[c] *= x[c];
            tol[c] = tol[c] * fabs(x[c]) + 2 * U * fabs(want[c]);
        }
    }
    if (in_place) {
        memcpy(e.out, inp, n * sizeof *inp);
        lk_solu(lk_cpu(), e.out, e.out, N, C);
    } else {
        fill_value(e.out, n, NAN);
        lk_solu(lk_cpu(), e.out, inp, N, C);
    }
    char buf[128];
    snprintf(buf, sizeof buf, "solu %s N=%d C=%d in_place=%d", what, N, C, in_place);
    assert_expected(buf, &e);
    expect_free(&e);
}

static const int ROWS[] = {1, 3, 17};
static const int WIDTHS[] = {1, 3, 17, 64, 129, 1024};

Test(softmax, matches_definition) {
    rng r = {1100};
    for (int ni = 0; ni < 3; ni++)
        for (int ci = 0; ci < 6; ci++) {
            const int N = ROWS[ni], C = WIDTHS[ci];
            float *x = new_floats((size_t)N * C);
            fill_normal(&r, x, (size_t)N * C, 0, 3);
            check_softmax("random", x, N, C, false);
            check_softmax("random", x, N, C, true);
            free(x);
        }
}

/* Attention's masks as core/forward.c applies them: -INFINITY above the
 * diagonal (those must come out exactly 0) and -1e5 for padded keys, which
 * take all the weight in a row with nothing else left. */
Test(softmax, masked_entries_are_zero) {
    rng r = {1101};
    for (int ti = 0; ti < N_SIZES; ti++) {
        const int T = SIZES[ti];
        float *s = new_floats((size_t)T * T);
        fill_normal(&r, s, (size_t)T * T, 0, 3);
        for (int q = 0; q < T; q++)
            for (int k = 0; k < T; k++) {
                if (k > q)
                    s[(size_t)q * T + k] = -INFINITY;
                else if (k % 3 == 0)
                    s[(size_t)q * T + k] = -1e5f;
            }
        check_softmax("causal", s, T, T, false);
        check_softmax("causal", s, T, T, true);
        free(s);
    }
}

/* A row with every entry -INFINITY becomes zeros, among ordinary rows. */
Test(softmax, fully_masked_row_is_zero) {
    rng r = {1102};
    for (int ci = 0; ci < 6; ci++) {
        const int N = 4, C = WIDTHS[ci];
        float *x = new_floats((size_t)N * C);
        fill_normal(&r, x, (size_t)N * C, 0, 3);
        fill_value(x + C, (size_t)C, -INFINITY);
        fill_value(x + 3 * (size_t)C, (size_t)C, -INFINITY);
        check_softmax("masked rows", x, N, C, false);
        check_softmax("masked rows", x, N, C, true);
        free(x);
    }
}

/* Logits of size 1e4 must not overflow exp: rows spread over [-1e4, 1e4],
 * rows packed just under 1e4 and -1e4 (offsets exact in float32 there), and
 * a row of equal 1e4 (uniform). */
static float *large_rows(rng *r, int C) {
    float *x = new_floats(4 * (size_t)C);
    fill_uniform(r, x, (size_t)C, -1e4, 1e4);
    for (int c = 0; c < C; c++) {
        x[(size_t)C + c] = 1e4f - (float)(rng_next(r) % 512) / 64.0f;
        x[2 * (size_t)C + c] = -1e4f + (float)(rng_next(r) % 512) / 64.0f;
    }
    fill_value(x + 3 * (size_t)C, (size_t)C, 1e4f);
    return x;
}

Test(softmax, large_magnitudes) {
    rng r = {1103};
    for (int ci = 0; ci < 6; ci++) {
        float *x = large_rows(&r, WIDTHS[ci]);
        check_softmax("large", x, 4, WIDTHS[ci], false);
        free(x);
    }
}

Test(solu, matches_definition) {
    rng r = {1200};
    for (int ni = 0; ni < 3; ni++)
        for (int ci = 0; ci < 6; ci++) {
            const int N = ROWS[ni], C = WIDTHS[ci];
            float *x = new_floats((size_t)N * C);
            fill_normal(&r, x, (size_t)N * C, 0, 3);
            check_solu("random", x, N, C, false);
            check_solu("random", x, N, C, true);
            free(x);
        }
}

Test(solu, large_magnitudes) {
    rng r = {1201};
    for (int ci = 0; ci < 6; ci++) {
        float *x = large_rows(&r, WIDTHS[ci]);
        check_solu("large", x, 4, WIDTHS[ci], false);
        check_solu("large", x, 4, WIDTHS[ci], true);
        free(x);
    }
}

/* ---- attention masks, suffix queries, row copies ------------------------ */

/* Prompts of MS_T positions, MS_H heads; each prompt's first query position
 * (0: every position; a suffix otherwise) and left padding. */
enum { MS_B = 4, MS_H = 3, MS_T = 11, MS_PAD = 0 };
static const int32_t MS_FIRST[MS_B] = {0, 4, 10, 7};
static const int MS_LEFT_PAD[MS_B] = {0, 2, 0, 5};

/* Prompt b's first row among the packed query rows, and their number. */
static int ms_rows(const int32_t *first, int32_t row[MS_B]) {
    int n = 0;
    for (int b = 0; b < MS_B; b++)
        row[b] = n, n += MS_T - first[b];
    return n;
}

/* lk_mask_scores against the definition, for dense scores (every query) or
 * packed suffix queries: the score of (b, h, q, k) is raw / scale
 * (softcap * tanh(raw / scale / softcap) when softcap > 0) unless the causal
 * mask (k > q), the window (k <= q - window) or the left padding masks it
 * (-inf; causal only), then pad_score where key k holds the pad id. Without
 * a softcap, one division or a constant per element: bit for bit; with one,
 * the soft-capping tolerance of the top where not masked. */
static void check_mask_scores(bool causal, int window, bool padded, bool suffix, float softcap) {
    const int32_t zeros[MS_B] = {0};
    const int32_t *first = suffix ? MS_FIRST : zeros;
    int32_t row[MS_B];
    const int rows = ms_rows(first, row);
    const size_t n = (size_t)rows * MS_H * MS_T;
    const float scale = 2.5f, pad_score = -1e5f;
    rng r = {1501u + 8u * causal + 4u * (window > 0) + 2u * padded + suffix};
    float *raw = new_floats(n), *got = new_floats(n + TAIL);
    fill_normal(&r, raw, n, 0, 3);
    memcpy(got, raw, n * sizeof *got);
    fill_value(got + n, TAIL, SENTINEL);
    uint8_t mask[MS_B * MS_T];
    int32_t tokens[MS_B * MS_T];
    for (int b = 0; b < MS_B; b++)
        for (int t = 0; t < MS_T; t++) {
            mask[b * MS_T + t] = t >= MS_LEFT_PAD[b];
            tokens[b * MS_T + t] = t < MS_LEFT_PAD[b] || t == MS_T - 2 ? MS_PAD : 1 + t;
        }
    lk_score_mask m = {.causal = causal,
                       .window = window,
                       .attn_mask = padded ? mask : NULL,
                       .tokens = padded ? tokens : NULL,
                       .pad_id = padded ? MS_PAD : -1,
                       .pad_score = pad_score,
                       .softcap = softcap};
    if (suffix) m.queries = (lk_query_rows){first, row, rows};
    lk_mask_scores(lk_cpu(), got, MS_B, MS_H, MS_T, scale, &m);
    for (int b = 0; b < MS_B; b++)
        for (int h = 0; h < MS_H; h++)
            for (int q = first[b]; q < MS_T; q++)
                for (int k = 0; k < MS_T; k++) {
                    const size_t at =
                        (((size_t)row[b] * MS_H + (size_t)h * (MS_T - first[b])) + (q - first[b])) *
                            MS_T +
                        k;
                    const bool masked = causal && (k > q || (window > 0 && k <= q - window) ||
                                                   (padded && !mask[b * MS_T + k]));
                    const bool capped = softcap > 0 && !masked;
                    double want = masked ? -INFINITY : raw[at] / scale, tol = 0.0;
                    if (capped) {
                        want = ref_softcap((double)raw[at] / scale, softcap);
                        tol = softcap_tol(want);
                    }
                    if (padded && tokens[b * MS_T + k] == MS_PAD) {
                        want = pad_score;
                        tol = 0.0;
                    }
                    const float want_f = (float)want;
                    cr_assert(tol > 0.0 ? fabs(got[at] - want) <= tol
                                        : memcmp(&got[at], &want_f, sizeof want_f) == 0,
                              "mask_scores causal=%d window=%d padded=%d suffix=%d softcap=%g: "
                              "b=%d h=%d q=%d k=%d is %.9g, want %.9g",
                              causal, window, padded, suffix, (double)softcap, b, h, q, k,
                              (double)got[at], want);
                }
    for (int i = 0; i < TAIL; i++)
        cr_assert_eq(got[n + i], SENTINEL, "mask_scores wrote past its scores");
    free(raw);
    free(got);
}

Test(mask_scores, every_query) {
    for (int padded = 0; padded < 2; padded++) {
        check_mask_scores(true, 0, padded, false, 0.0f);
        check_mask_scores(true, 3, padded, false, 0.0f);
        check_mask_scores(false, 3, padded, false, 0.0f);
    }
}

Test(mask_scores, suffix_queries) {
    for (int padded = 0; padded < 2; padded++) {
        check_mask_scores(true, 0, padded, true, 0.0f);
        check_mask_scores(true, 3, padded, true, 0.0f);
    }
}

/* Gemma 2's cap of 50, and a cap of 1 that bends the scores (raw sd 3 over
 * scale 2.5) strongly, with and without a window, padding and suffix
 * queries. */
Test(mask_scores, softcap) {
    static const float caps[] = {50.0f, 1.0f};
    for (int ci = 0; ci < 2; ci++)
        for (int padded = 0; padded < 2; padded++) {
            check_mask_scores(true, 0, padded, false, caps[ci]);
            check_mask_scores(true, 3, padded, false, caps[ci]);
            check_mask_scores(false, 3, padded, false, caps[ci]);
            check_mask_scores(true, 0, padded, true, caps[ci]);
            check_mask_scores(true, 3, padded, true, caps[ci]);
        }
}

/* Keys of MS_B rows continuing MS_P reference prompts: the prefix rows are
 * the reference's, the rest the computed rows, copied exactly. */
Test(splice_prefix, matches_definition) {
    enum { MS_P = 3, C = 13 };
    int32_t row[MS_B];
    const int rows = ms_rows(MS_FIRST, row);
    const size_t n = (size_t)MS_B * MS_T * C;
    rng r = {1601};
    float *prefix = new_floats((size_t)MS_P * MS_T * C), *computed = new_floats((size_t)rows * C);
    float *got = new_floats(n + TAIL);
    fill_normal(&r, prefix, (size_t)MS_P * MS_T * C, 0, 1);
    fill_normal(&r, computed, (size_t)rows * C, 0, 1);
    fill_value(got, n, NAN);
    fill_value(got + n, TAIL, SENTINEL);
    lk_splice_prefix(lk_cpu(), got, prefix, computed, (lk_query_rows){MS_FIRST, row, rows}, MS_B,
                     MS_P, MS_T, C);
    for (int b = 0; b < MS_B; b++)
        for (int t = 0; t < MS_T; t++)
            for (int c = 0; c < C; c++) {
                const float want = t < MS_FIRST[b]
                                       ? prefix[((size_t)(b % MS_P) * MS_T + t) * C + c]
                                       : computed[((size_t)row[b] + t - MS_FIRST[b]) * C + c];
                const float g = got[((size_t)b * MS_T + t) * C + c];
                cr_assert(memcmp(&g, &want, sizeof g) == 0, "splice b=%d t=%d c=%d: %g, want %g", b,
                          t, c, (double)g, (double)want);
            }
    for (int i = 0; i < TAIL; i++)
        cr_assert_eq(got[n + i], SENTINEL, "splice_prefix wrote past its output");
    free(prefix);
    free(computed);
    free(got);
}

/* The logits of chosen ids: rows b, b + P, ... share prompt b % P's ids; a
 * K = C dot product plus a bias, so the matrix-product bound applies. C
 * spans more than one of the CPU kernel's chunks of 1024 channels. */
Test(matmul_columns, matches_definition) {
    enum { B = 7, P = 3, n = 2, V = 101 };
    static const int widths[] = {1, 64, 1500};
    const int32_t ids[P * n] = {100, 0, 5, 5, 37, 99};
    for (int wi = 0; wi < 3; wi++) {
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            const int C = widths[wi];
            rng r = {1801u + 2u * wi + with_bias};
            float *x = new_floats((size_t)B * C), *W = new_floats((size_t)C * V);
            float *bias = new_floats(V), *got = new_floats((size_t)B * n + TAIL);
            fill_normal(&r, x, (size_t)B * C, 0, 1);
            fill_normal(&r, W, (size_t)C * V, 0, 1);
            fill_normal(&r, bias, V, 0, 1);
            fill_value(got, (size_t)B * n, NAN);
            fill_value(got + (size_t)B * n, TAIL, SENTINEL);
            lk_matmul_columns(lk_cpu(), got, x, W, with_bias ? bias : NULL, ids, B, P, n, C, V);
            for (int b = 0; b < B; b++)
                for (int j = 0; j < n; j++) {
                    const int id = ids[(b % P) * n + j];
                    double want = with_bias ? bias[id] : 0.0, mag = fabs(want);
                    for (int c = 0; c < C; c++) {
                        want += (double)x[(size_t)b * C + c] * W[(size_t)c * V + id];
                        mag += fabs((double)x[(size_t)b * C + c] * W[(size_t)c * V + id]);
                    }
                    const double g = got[(size_t)b * n + j];
                    cr_assert(fabs(g - want) <= (C + 4) * U * mag,
                              "matmul_columns C=%d bias=%d b=%d j=%d: %g, want %g", C, with_bias, b,
                              j, g, want);
                }
            for (int i = 0; i < TAIL; i++)
                cr_assert_eq(got[(size_t)B * n + i], SENTINEL,
                             "matmul_columns wrote past its output");
            free(x);
            free(W);
            free(bias);
            free(got);
        }
    }
}

Test(gather_rows, matches_definition) {
    enum { N = 9, C = 17, n = 5 };
    const int32_t rows[n] = {8, 0, 3, 3, 7};
    rng r = {1701};
    float *inp = new_floats((size_t)N * C), *got = new_floats((size_t)n * C + TAIL);
    fill_normal(&r, inp, (size_t)N * C, 0, 1);
    fill_value(got, (size_t)n * C, NAN);
    fill_value(got + (size_t)n * C, TAIL, SENTINEL);
    lk_gather_rows(lk_cpu(), got, inp, rows, n, C);
    for (int i = 0; i < n; i++)
        cr_assert(memcmp(got + (size_t)i * C, inp + (size_t)rows[i] * C, C * sizeof *got) == 0,
                  "gather_rows: row %d is not input row %d", i, rows[i]);
    for (int i = 0; i < TAIL; i++)
        cr_assert_eq(got[(size_t)n * C + i], SENTINEL, "gather_rows wrote past its output");
    free(inp);
    free(got);
}

/* ---- lk_set_threads ---------------------------------------------------- */

/* Element-wise and row-wise kernels compute each value the same way
 * whichever thread does it, so one thread and all cores must agree bit for
 * bit. Sizes are well past the point where the loops go parallel. */
static void assert_same_bits(const char *what, const float *one, const float *all, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(&one[i], &all[i], sizeof *one) != 0)
            cr_assert_fail("%s: [%zu] is %a with 1 thread, %a with all", what, i, (double)one[i],
                           (double)all[i]);
}

Test(threads, elementwise_kernels_agree) {
    const size_t n = 300007;
    rng r = {1300};
    float *x = activation_inputs(&r, n), *y = new_floats(n);
    float *one = new_floats(n), *all = new_floats(n);
    fill_normal(&r, y, n, 0, 1);
    for (size_t i = 0; i < N_ACTS; i++) {
        char what[32];
        lk_set_threads(1);
        lk_activation(lk_cpu(), ACTS[i].act, one, x, n);
        lk_set_threads(0);
        lk_activation(lk_cpu(), ACTS[i].act, all, x, n);
        assert_same_bits(ACTS[i].name, one, all, n);
        lk_set_threads(1);
        lk_gated_activation(lk_cpu(), ACTS[i].act, one, x, y, n);
        lk_set_threads(0);
        lk_gated_activation(lk_cpu(), ACTS[i].act, all, x, y, n);
        snprintf(what, sizeof what, "gated %s", ACTS[i].name);
        assert_same_bits(what, one, all, n);
    }
    lk_set_threads(1);
    lk_add(lk_cpu(), one, x, y, n);
    lk_set_threads(0);
    lk_add(lk_cpu(), all, x, y, n);
    assert_same_bits("add", one, all, n);
    memcpy(one, y, n * sizeof *y);
    memcpy(all, y, n * sizeof *y);
    lk_set_threads(1);
    lk_softcap(lk_cpu(), one, n, 1.0f);
    lk_set_threads(0);
    lk_softcap(lk_cpu(), all, n, 1.0f);
    assert_same_bits("softcap", one, all, n);
    free(x);
    free(y);
    free(one);
    free(all);
}

Test(threads, row_kernels_agree) {
    const int N = 64, C = 1027;
    const size_t n = (size_t)N * C;
    rng r = {1301};
    float *x = new_floats(n), *w = new_floats((size_t)C), *b = new_floats((size_t)C);
    float *one = new_floats(n), *all = new_floats(n);
    float scale_one[64], scale_all[64];
    fill_normal(&r, x, n, 0.5, 3);
    fill_normal(&r, w, (size_t)C, 1, 0.3);
    fill_normal(&r, b, (size_t)C, 0, 0.5);
    lk_set_threads(1);
    lk_softmax_rows(lk_cpu(), one, x, N, C);
    lk_set_threads(0);
    lk_softmax_rows(lk_cpu(), all, x, N, C);
    assert_same_bits("softmax", one, all, n);
    lk_set_threads(1);
    lk_solu(lk_cpu(), one, x, N, C);
    lk_set_threads(0);
    lk_solu(lk_cpu(), all, x, N, C);
    assert_same_bits("solu", one, all, n);
    lk_set_threads(1);
    lk_affine(lk_cpu(), one, x, w, b, N, C);
    lk_set_threads(0);
    lk_affine(lk_cpu(), all, x, w, b, N, C);
    assert_same_bits("affine", one, all, n);
    lk_set_threads(1);
    lk_layernorm_pre(lk_cpu(), one, scale_one, x, N, C, 1e-5f);
    lk_set_threads(0);
    lk_layernorm_pre(lk_cpu(), all, scale_all, x, N, C, 1e-5f);
    assert_same_bits("layernorm_pre normalized", one, all, n);
    assert_same_bits("layernorm_pre scale", scale_one, scale_all, (size_t)N);
    lk_set_threads(1);
    lk_rmsnorm_pre(lk_cpu(), one, scale_one, x, N, C, 1e-6f);
    lk_set_threads(0);
    lk_rmsnorm_pre(lk_cpu(), all, scale_all, x, N, C, 1e-6f);
    assert_same_bits("rmsnorm_pre normalized", one, all, n);
    assert_same_bits("rmsnorm_pre scale", scale_one, scale_all, (size_t)N);
    free(x);
    free(w);
    free(b);
    free(one);
    free(all);
}

/* lk_host_copy at sizes on both sides of its memcpy / streaming / threaded
 * thresholds (64 KiB, 1 MiB), at destination offsets across a 64-byte line
 * (every one for the small sizes, every 13th for the large) and source
 * offsets 0, 29 and 58: every byte arrives, none outside is written. */
Test(host_copy, every_size_and_alignment) {
    const size_t sizes[] = {0,
                            1,
                            63,
                            64,
                            65,
                            (64u << 10) - 1,
                            (64u << 10) + 13,
                            (1u << 20) - 5,
                            (1u << 20) + 77,
                            (3u << 20) + 1};
    const size_t largest = (3u << 20) + 1, guard = 128;
    unsigned char *src = malloc(largest + 64), *dst = malloc(largest + 64 + guard);
    cr_assert(src && dst);
    for (size_t i = 0; i < largest + 64; i++)
        src[i] = (unsigned char)(i * 131u + 7u);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (size_t d_off = 0; d_off < 64; d_off += s < 5 ? 1 : 13)
            for (size_t s_off = 0; s_off < 64; s_off += 29) {
                const size_t n = sizes[s];
                memset(dst, 0xA5, largest + 64 + guard);
                lk_host_copy(dst + d_off, src + s_off, n);
                cr_assert(memcmp(dst + d_off, src + s_off, n) == 0,
                          "%zu bytes at offsets %zu <- %zu differ", n, d_off, s_off);
                for (size_t i = 0; i < d_off; i++)
                    cr_assert_eq(dst[i], 0xA5, "wrote before the destination");
                for (size_t i = d_off + n; i < d_off + n + guard; i++)
                    cr_assert_eq(dst[i], 0xA5, "%zu bytes: wrote past the end", n);
            }
    free(src);
    free(dst);
}

/* lk_host_buffer: 64-byte aligned below 2 MiB, 2 MiB aligned from there on,
 * every byte writable, released by free(). */
Test(host_buffer, alignment_and_release) {
    const size_t sizes[] = {1, 4096, (2u << 20) - 1, 2u << 20, (5u << 20) + 3};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        unsigned char *p = lk_host_buffer(sizes[s]);
        cr_assert(p, "%zu bytes: NULL", sizes[s]);
        const uintptr_t align = sizes[s] >= (2u << 20) ? (2u << 20) : 64;
        cr_assert_eq((uintptr_t)p % align, 0, "%zu bytes at %p", sizes[s], (void *)p);
        memset(p, 0x5A, sizes[s]);
        cr_assert_eq(p[sizes[s] - 1], 0x5A);
        free(p);
    }
}
