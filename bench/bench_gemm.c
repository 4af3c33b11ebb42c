/*
 * bench_gemm.c: lensd's own product kernels (kernels/cpu/lk_cpu_gemm.c)
 * against OpenBLAS's cblas_sgemm, on the weight shapes of gpt2-small,
 * Pythia-160M and SmolLM2-135M at 1 to 2048 rows, as lk_matmul calls them:
 * out [M, N] = a [M, K] @ W [K, N] + bias, row-major, W not transposed.
 *
 * Each product runs over `copies` distinct weight matrices (at least 64 MB
 * of them, so that the weights come from memory as in a forward, not from
 * the cache), best of --repeat passes; OpenBLAS's bias add is the loop
 * lk_cpu.c runs after its sgemm. Every product is checked once: the two
 * results agree within 1e-4 of their scale.
 *
 * Output: one Markdown table, GFLOP/s of each side per shape and row count,
 * and their ratio (OpenBLAS's time over lensd's: above 1, lensd's kernel is
 * faster). Exit status 1 when a result disagrees.
 *
 * Build and run (from the repository root; bench/README.md):
 *   gcc -O3 -fopenmp -I. -I/usr/include/$(gcc -print-multiarch)/openblas-openmp \
 *     bench/bench_gemm.c kernels/cpu/lk_cpu_gemm.c kernels/cpu/lk_cpu_blas.c \
 *     -o build/bench/bench_gemm -lopenblas -lm
 *   build/bench/bench_gemm [--kernel avx512|avx2] [--repeat N]
 * OPENBLAS_CORETYPE=Haswell with --kernel avx2 compares like with like on an
 * AVX-512 machine.
 */
#define _POSIX_C_SOURCE 200809L

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/lk.h"

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Uniform in [-0.5, 0.5) from a 32-bit LCG. */
static float next_uniform(uint32_t *state) {
    *state = *state * 1664525u + 1013904223u;
    return (float)(*state >> 8) / 16777216.0f - 0.5f;
}

typedef struct shape {
    const char *model, *what;
    int K, N;
} shape;

static const shape shapes[] = {
    {"gpt2-small", "q/k/v", 768, 2304},      {"gpt2-small", "attn out", 768, 768},
    {"gpt2-small", "mlp in", 768, 3072},     {"gpt2-small", "mlp out", 3072, 768},
    {"gpt2-small", "unembed", 768, 50257},   {"Pythia-160M", "unembed", 768, 50304},
    {"SmolLM2-135M", "q, o", 576, 576},      {"SmolLM2-135M", "k, v (GQA)", 576, 192},
    {"SmolLM2-135M", "gate, up", 576, 1536}, {"SmolLM2-135M", "down", 1536, 576},
    {"SmolLM2-135M", "unembed", 576, 49152},
};
static const int row_counts[] = {1, 16, 64, 128, 256, 512, 2048};
enum {
    N_SHAPES = sizeof shapes / sizeof shapes[0],
    N_ROWS = sizeof row_counts / sizeof row_counts[0]
};

int main(int argc, char **argv) {
    lk_cpu_info cpu;
    lk_cpu_identify(&cpu);
    lk_gemm_kernel kernel = lk_gemm_best(&cpu);
    int repeat = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--kernel") == 0 && i + 1 < argc) {
            const char *name = argv[++i];
            kernel = strcmp(name, "avx2") == 0 ? LK_GEMM_AVX2 : LK_GEMM_AVX512;
        } else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
            repeat = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [--kernel avx512|avx2] [--repeat N]\n", argv[0]);
            return 2;
        }
    }
    if (kernel > lk_gemm_best(&cpu) || kernel == LK_GEMM_OPENBLAS) {
        fprintf(stderr, "bench_gemm: this CPU cannot run the %s kernel\n", lk_gemm_name(kernel));
        return 2;
    }
    lk_blas_info blas;
    lk_blas_describe(&blas);
    printf("CPU: %s (family %d model %d); OpenBLAS %s, kernel %s, %d threads; lensd's kernel: "
           "%s; OpenMP threads: %d\n\n",
           cpu.name, cpu.family, cpu.model, blas.version, blas.kernel, blas.threads,
           lk_gemm_name(kernel), omp_get_max_threads());
    printf("| model | product | K x N |");
    for (int r = 0; r < N_ROWS; r++)
        printf(" %d rows |", row_counts[r]);
    printf("\n|---|---|---|");
    for (int r = 0; r < N_ROWS; r++)
        printf("---:|");
    printf("\n");

    int status = 0;
    uint32_t state = 1;
    for (int s = 0; s < N_SHAPES; s++) {
        const int K = shapes[s].K, N = shapes[s].N;
        const size_t weight_floats = (size_t)K * N;
        int copies = (int)((64u << 20) / (weight_floats * sizeof(float))) + 1;
        if (copies > 64) copies = 64;
        float *w = malloc(weight_floats * copies * sizeof *w), *bias = malloc(N * sizeof *bias);
        const int max_rows = row_counts[N_ROWS - 1];
        float *a = malloc((size_t)max_rows * K * sizeof *a);
        float *ours = malloc((size_t)max_rows * N * sizeof *ours);
        float *theirs = malloc((size_t)max_rows * N * sizeof *theirs);
        if (!w || !bias || !a || !ours || !theirs) {
            fprintf(stderr, "bench_gemm: out of memory\n");
            return 2;
        }
        for (size_t i = 0; i < weight_floats * copies; i++)
            w[i] = next_uniform(&state);
        for (int j = 0; j < N; j++)
            bias[j] = next_uniform(&state);
        for (size_t i = 0; i < (size_t)max_rows * K; i++)
            a[i] = next_uniform(&state);
        printf("| %s | %s | %d x %d |", shapes[s].model, shapes[s].what, K, N);
        for (int r = 0; r < N_ROWS; r++) {
            const int M = row_counts[r];
            /* fewer copies for the large products: the time, not the cache, then dominates */
            const int used = M >= 512 && copies > 2 ? 2 : copies;
            double best_ours = INFINITY, best_theirs = INFINITY;
            for (int rep = 0; rep < repeat; rep++) {
                double t0 = now_s();
                for (int c = 0; c < used; c++) {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K,
                                w + c * weight_floats, N, 0.0f, theirs, N);
#pragma omp parallel for if ((size_t)M * N > 65536)
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < N; j++)
                            theirs[(size_t)i * N + j] += bias[j];
                }
                double t1 = now_s();
                for (int c = 0; c < used; c++)
                    lk_gemm_matmul(kernel, ours, N, a, K, w + c * weight_floats, N, false, bias, M,
                                   K, N, false);
                double t2 = now_s();
                best_theirs = fmin(best_theirs, t1 - t0);
                best_ours = fmin(best_ours, t2 - t1);
            }
            float worst = 0.0f, scale = 0.0f;
            for (size_t i = 0; i < (size_t)M * N; i++) {
                worst = fmaxf(worst, fabsf(ours[i] - theirs[i]));
                scale = fmaxf(scale, fabsf(theirs[i]));
            }
            if (worst > 1e-4f * fmaxf(scale, 1.0f)) {
                fprintf(stderr, "bench_gemm: %s %s at %d rows: off by %g\n", shapes[s].model,
                        shapes[s].what, M, worst);
                status = 1;
            }
            const double flops = 2.0 * M * N * K * used;
            printf(" %.0f / %.0f = **%.2fx** |", flops / best_theirs * 1e-9,
                   flops / best_ours * 1e-9, best_theirs / best_ours);
            fflush(stdout);
        }
        printf("\n");
        free(w), free(bias), free(a), free(ours), free(theirs);
    }
    printf("\nCells: OpenBLAS GFLOP/s / lensd GFLOP/s = OpenBLAS's time over lensd's.\n");
    return status;
}
