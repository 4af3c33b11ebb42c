/*
 * test_cpu_gemm.c: lensd's own product kernels (kernels/cpu/lk_cpu_gemm.c)
 * against a double-precision loop, on every row count of a register tile and
 * its remainders, column counts that leave partial panels and partial
 * vectors, k blocks with remainders, strided rows, bias and accumulation, one
 * and several threads; and lk_matmul's dispatch to them.
 */
#include <criterion/criterion.h>

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/lk.h"

/* Uniform in [-1, 1) from a 32-bit LCG: the same numbers on every run. */
static float next_uniform(uint32_t *state) {
    *state = *state * 1664525u + 1013904223u;
    return (float)(*state >> 8) / 8388608.0f - 1.0f;
}

/* A pad value no product writes: any entry past column N that changes was
 * written out of bounds. */
#define PAD 1234.5f

typedef struct product_case {
    int M, K, N, lda_pad, ldb_pad, ldc_pad;
    bool bias, accumulate, b_transposed; /* b [K, N], or [N, K] used transposed */
} product_case;

/* Runs one case through `kernel`; the first wrong entry goes to why. Returns
 * true when every entry is within float32 rounding of the exact product
 * (2 (K + 2) FLT_EPSILON sum |terms|) and no pad entry changed. */
static bool check_product(lk_gemm_kernel kernel, const product_case *p, char *why, size_t len) {
    const int b_rows = p->b_transposed ? p->N : p->K, b_cols = p->b_transposed ? p->K : p->N;
    const int lda = p->K + p->lda_pad, ldb = b_cols + p->ldb_pad, ldc = p->N + p->ldc_pad;
    float *a = malloc(sizeof(float) * (size_t)p->M * lda);
    float *b = malloc(sizeof(float) * (size_t)b_rows * ldb);
    float *c = malloc(sizeof(float) * (size_t)p->M * ldc);
    float *c0 = malloc(sizeof(float) * (size_t)p->M * ldc);
    float *bias = malloc(sizeof(float) * (size_t)p->N);
    uint32_t state = (uint32_t)(p->M * 7919 + p->K * 131 + p->N);
    for (size_t i = 0; i < (size_t)p->M * lda; i++)
        a[i] = next_uniform(&state);
    for (size_t i = 0; i < (size_t)b_rows * ldb; i++)
        b[i] = next_uniform(&state);
    for (int j = 0; j < p->N; j++)
        bias[j] = next_uniform(&state);
    for (int i = 0; i < p->M; i++)
        for (int j = 0; j < ldc; j++)
            c0[(size_t)i * ldc + j] = j < p->N ? next_uniform(&state) : PAD;
    for (size_t i = 0; i < (size_t)p->M * ldc; i++)
        c[i] = c0[i];

    lk_gemm_matmul(kernel, c, ldc, a, lda, b, ldb, p->b_transposed, p->bias ? bias : NULL, p->M,
                   p->K, p->N, p->accumulate);

    bool ok = true;
    for (int i = 0; i < p->M && ok; i++)
        for (int j = 0; j < ldc && ok; j++) {
            const float got = c[(size_t)i * ldc + j];
            if (j >= p->N) {
                if (got != PAD)
                    snprintf(why, len, "%dx%dx%d: c[%d][%d] past column %d was written", p->M, p->K,
                             p->N, i, j, p->N);
                ok = got == PAD;
                continue;
            }
            double exact = 0.0, magnitude = 0.0;
            if (p->accumulate) exact += c0[(size_t)i * ldc + j], magnitude += fabs(exact);
            if (p->bias) exact += bias[j], magnitude += fabs(bias[j]);
            for (int k = 0; k < p->K; k++) {
                const float bkj = p->b_transposed ? b[(size_t)j * ldb + k] : b[(size_t)k * ldb + j];
                const double term = (double)a[(size_t)i * lda + k] * bkj;
                exact += term;
                magnitude += fabs(term);
            }
            const double bound = 2.0 * (p->K + 2) * FLT_EPSILON * magnitude;
            if (fabs(got - exact) > bound) {
                snprintf(why, len,
                         "%dx%dx%d (bias %d, accumulate %d, b transposed %d): c[%d][%d] = %.9g, "
                         "exact %.9g, bound %.3g",
                         p->M, p->K, p->N, p->bias, p->accumulate, p->b_transposed, i, j, got,
                         exact, bound);
                ok = false;
            }
        }
    free(a), free(b), free(c), free(c0), free(bias);
    return ok;
}

/* Every row count up to two tiles and a remainder of both kernels' tiles (4
 * and 6 rows), and counts of many tiles (a packed block's reuse), columns around both panel widths
 * (24, 64), vector widths (8, 16) and the threads' 16-column units, k around its 128-row block. */
static const int row_counts[] = {1, 2, 3, 4, 5, 6, 7, 11, 13, 16, 67, 130};
static const int column_counts[] = {1, 7, 8, 15, 17, 24, 25, 48, 63, 64, 65, 129, 200};
static const int k_counts[] = {1, 3, 127, 128, 129, 300};

static void check_kernel(lk_gemm_kernel kernel) {
    lk_cpu_info cpu;
    lk_cpu_identify(&cpu);
    if (lk_gemm_best(&cpu) < kernel)
        cr_skip_test("skipped: this CPU cannot run the %s kernel", lk_gemm_name(kernel));
    char why[512] = "";
    int cases = 0;
    for (size_t mi = 0; mi < sizeof row_counts / sizeof row_counts[0]; mi++)
        for (size_t ni = 0; ni < sizeof column_counts / sizeof column_counts[0]; ni++)
            for (size_t ki = 0; ki < sizeof k_counts / sizeof k_counts[0]; ki++) {
                const int variant = (int)(mi + ni + ki) % 8;
                const product_case p = {.M = row_counts[mi],
                                        .K = k_counts[ki],
                                        .N = column_counts[ni],
                                        .lda_pad = variant == 1 ? 5 : 0,
                                        .ldb_pad = variant % 4 >= 2 ? 3 : 0,
                                        .ldc_pad = 9,
                                        .bias = variant & 1,
                                        .accumulate = variant % 4 >= 2,
                                        .b_transposed = variant >= 4};
                cr_assert(check_product(kernel, &p, why, sizeof why), "%s: %s",
                          lk_gemm_name(kernel), why);
                cases++;
            }
    cr_expect_eq(cases, 12 * 13 * 6);
}

Test(gemm, avx2_matches_the_exact_product) {
    check_kernel(LK_GEMM_AVX2);
}

Test(gemm, avx512_matches_the_exact_product) {
    check_kernel(LK_GEMM_AVX512);
}

/* A product big enough to be split over threads, each thread's columns a
 * range of 16-column units with a partial panel at its end. */
Test(gemm, threaded_products_match) {
    lk_cpu_info cpu;
    lk_cpu_identify(&cpu);
    const lk_gemm_kernel best = lk_gemm_best(&cpu);
    if (best == LK_GEMM_OPENBLAS)
        cr_skip_test("skipped: this CPU runs none of lensd's own product kernels");
    const int saved = omp_get_max_threads();
    char why[512] = "";
    for (int threads = 2; threads <= 3; threads++) {
        omp_set_num_threads(threads);
        const product_case p = {.M = 16, .K = 576, .N = 1000, .ldc_pad = 4, .bias = true};
        for (lk_gemm_kernel k = LK_GEMM_AVX2; k <= best; k++)
            cr_expect(check_product(k, &p, why, sizeof why), "%d threads: %s", threads, why);
    }
    omp_set_num_threads(saved);
}

Test(gemm, best_kernel_follows_the_features) {
    lk_cpu_info cpu = {.features = LK_CPU_AVX | LK_CPU_AVX2};
    cr_expect_eq(lk_gemm_best(&cpu), LK_GEMM_OPENBLAS, "AVX2 without FMA");
    cpu.features |= LK_CPU_FMA;
    cr_expect_eq(lk_gemm_best(&cpu), LK_GEMM_AVX2);
    cpu.features |= LK_CPU_AVX512F;
    cr_expect_eq(lk_gemm_best(&cpu), LK_GEMM_AVX512);
    cpu.features = LK_CPU_AVX512F;
    cr_expect_eq(lk_gemm_best(&cpu), LK_GEMM_OPENBLAS, "AVX-512F without FMA's bit");
}

/* lk_matmul on the CPU gives the same product with every choice of kernel,
 * at each kernel's dispatch edge (lk_gemm_max_rows rows) and past it. */
Test(gemm, lk_matmul_agrees_with_every_choice) {
    lk_cpu_info cpu;
    lk_cpu_identify(&cpu);
    const lk_gemm_kernel best = lk_gemm_best(&cpu);
    lk_device *dev = lk_cpu();
    const int K = 200, N = 90;
    uint32_t state = 7;
    const int edges[] = {lk_gemm_max_rows(LK_GEMM_AVX2), lk_gemm_max_rows(LK_GEMM_AVX512)};
    for (int e = 0; e < 4; e++) {
        const int M = edges[e / 2] + e % 2;
        float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * K * N);
        float *bias = malloc(sizeof(float) * N);
        float *want = malloc(sizeof(float) * M * N), *got = malloc(sizeof(float) * M * N);
        for (int i = 0; i < M * K; i++)
            a[i] = next_uniform(&state);
        for (int i = 0; i < K * N; i++)
            b[i] = next_uniform(&state);
        for (int i = 0; i < N; i++)
            bias[i] = next_uniform(&state);
        lk_gemm_choose(LK_GEMM_OPENBLAS);
        lk_matmul(dev, want, N, a, K, b, N, bias, M, K, N, false);
        for (lk_gemm_kernel k = LK_GEMM_AVX2; k <= best; k++) {
            lk_gemm_choose(k);
            cr_expect_eq(lk_gemm_chosen(), k);
            lk_matmul(dev, got, N, a, K, b, N, bias, M, K, N, false);
            float worst = 0.0f;
            for (int i = 0; i < M * N; i++)
                worst = fmaxf(worst, fabsf(got[i] - want[i]));
            cr_expect_lt(worst, 1e-4f, "%s, %d rows: off by %g", lk_gemm_name(k), M, worst);
        }
        free(a), free(b), free(bias), free(want), free(got);
    }
    lk_gemm_choose(best);
}
