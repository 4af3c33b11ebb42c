/*
 * bench_blas.c: the matrix products of one gpt2-small forward, timed through
 * CBLAS as lensd's CPU backend (kernels/cpu/lk_cpu.c) calls them, each
 * checked once against a plain double-precision loop.
 *
 * Shapes are core/forward.c's for gpt2-small (d_model 768, 12 heads of
 * d_head 64, d_mlp 3072, d_vocab 50257, 12 layers), float32, row-major:
 * - the products of the rows at N = B*T: q/k/v, attention out, MLP in,
 *   MLP out and unembed, one cblas_sgemm each (NoTrans/NoTrans, beta 0) with
 *   BLAS at --threads threads;
 * - the per-head products of one prompt of T positions, q@k^T (NoTrans/Trans)
 *   and pattern@v, 12 heads with row strides h*dh, BLAS at 1 thread inside
 *   an OpenMP loop over the heads on --threads threads, as lk_cpu.c's
 *   matmul_batched runs them above 4M multiply-adds (OpenBLAS's OpenMP
 *   build makes openblas_set_num_threads(1) lower OpenMP's default too, so
 *   both loops say num_threads).
 *
 * Not here: lensd itself (bench_cache.py times it), the bias adds, softmax
 * and other loops around the products, any model but gpt2-small. The timed
 * part calls cblas_sgemm only; what is library-specific (threads, names) is
 * the one #if block below, chosen with -DBENCH_OPENBLAS or -DBENCH_BLIS.
 *
 * Output, fields separated by " | ": "info" lines (library, kernel,
 * threads, OMP_WAIT_POLICY), one "product" line per product, one "forward" line per N (the
 * sum of one 12-layer forward's products at their best times). Exit status
 * 1 if a product's error is above its limit, 2 on bad arguments or no memory.
 */
#define _POSIX_C_SOURCE 200809L

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(BENCH_OPENBLAS)
static void blas_set_threads(int n) {
    openblas_set_num_threads(n);
}
static void blas_describe(char *lib, size_t lib_len, char *kernel, size_t kernel_len) {
    snprintf(lib, lib_len, "%s", openblas_get_config());
    snprintf(kernel, kernel_len, "%s", openblas_get_corename());
}
#elif defined(BENCH_BLIS)
#include <blis.h>
static void blas_set_threads(int n) {
    bli_thread_set_num_threads(n);
}
static void blas_describe(char *lib, size_t lib_len, char *kernel, size_t kernel_len) {
    snprintf(lib, lib_len, "BLIS %s", bli_info_get_version_str());
    snprintf(kernel, kernel_len, "%s", bli_arch_string(bli_arch_query_id()));
}
#else
#error "compile with -DBENCH_OPENBLAS or -DBENCH_BLIS"
#endif

enum { D_MODEL = 768, N_HEADS = 12, D_HEAD = 64, D_MLP = 3072, D_VOCAB = 50257, N_LAYERS = 12 };

/* A repeat runs the product back to back for at least this long. */
#define MIN_REPEAT_S 0.2
/* Other processes' load (CPUs) that counts as idle before a product, and
 * that makes its measurement count as disturbed. */
#define IDLE_CPUS 0.1
#define DISTURBED_CPUS 0.2

/* The forward passes measured: N = B*T rows, the per-head products at T. */
static const struct { int B, T; } passes[] = {{1, 16}, {8, 16}, {8, 256}};
#define N_PASSES (sizeof passes / sizeof passes[0])
static const int head_T[] = {16, 256};
#define N_HEAD_T (sizeof head_T / sizeof head_T[0])

/* c (M,N) = a (M,K) @ b (K,N), or @ b^T with b stored (N,K); row strides
 * lda, ldb, ldc. heads 0: one sgemm. heads > 0: that many, matrix i at
 * a + i*a_step, b + i*b_step, c + i*c_step. */
typedef struct product {
    char name[48];
    int M, K, N;
    bool trans_b;
    int lda, ldb, ldc;
    int heads;
    size_t a_step, b_step, c_step;
} product;

/* The products of the rows, in the order forward.c runs them. */
enum { QKV, ATTN_OUT, MLP_IN, MLP_OUT, UNEMBED, N_ROW_PRODUCTS };
/* The per-head products of the attention. */
enum { QK, PV, N_HEAD_PRODUCTS };

/* out (N, n) = in (N, k) @ W (k, n), as forward.c calls lk_matmul for
 * gpt2-small: lda = k, ldb = ldc = n. */
static product row_product(int which, int N) {
    static const struct {
        const char *name;
        int k, n;
    } w[] = {
        [QKV] = {"q/k/v", D_MODEL, N_HEADS * D_HEAD},
        [ATTN_OUT] = {"attn out", N_HEADS * D_HEAD, D_MODEL},
        [MLP_IN] = {"mlp in", D_MODEL, D_MLP},
        [MLP_OUT] = {"mlp out", D_MLP, D_MODEL},
        [UNEMBED] = {"unembed", D_MODEL, D_VOCAB},
    };
    product p = {.M = N,
                 .K = w[which].k,
                 .N = w[which].n,
                 .lda = w[which].k,
                 .ldb = w[which].n,
                 .ldc = w[which].n};
    snprintf(p.name, sizeof p.name, "%s, N=%d", w[which].name, N);
    return p;
}

/* One prompt's per-head products, as forward.c's attention calls
 * lk_matmul_batched; q, k, v, z are (T, h*dh) with the heads side by side.
 * QK: scores[hi] (T,T) = q[:, hi] (T,dh) @ k[:, hi]^T, scores packed.
 * PV: z[:, hi] (T,dh) = pattern[hi] (T,T) @ v[:, hi] (T,dh). */
static product head_product(int which, int T) {
    const int hd = N_HEADS * D_HEAD;
    product p;
    if (which == QK)
        p = (product){.M = T,
                      .K = D_HEAD,
                      .N = T,
                      .trans_b = true,
                      .lda = hd,
                      .ldb = hd,
                      .ldc = T,
                      .a_step = D_HEAD,
                      .b_step = D_HEAD,
                      .c_step = (size_t)T * T};
    else
        p = (product){.M = T,
                      .K = T,
                      .N = D_HEAD,
                      .lda = T,
                      .ldb = hd,
                      .ldc = hd,
                      .a_step = (size_t)T * T,
                      .b_step = D_HEAD,
                      .c_step = D_HEAD};
    p.heads = N_HEADS;
    snprintf(p.name, sizeof p.name, "%s, T=%d, %d heads", which == QK ? "q@k^T" : "pattern@v", T,
             N_HEADS);
    return p;
}

/* The floats each operand spans, strides included. */
static size_t a_span(const product *p) {
    return (p->heads ? (size_t)(p->heads - 1) * p->a_step : 0) + (size_t)(p->M - 1) * p->lda + p->K;
}
static size_t b_span(const product *p) {
    const int rows = p->trans_b ? p->N : p->K, cols = p->trans_b ? p->K : p->N;
    return (p->heads ? (size_t)(p->heads - 1) * p->b_step : 0) + (size_t)(rows - 1) * p->ldb + cols;
}
static size_t c_span(const product *p) {
    return (p->heads ? (size_t)(p->heads - 1) * p->c_step : 0) + (size_t)(p->M - 1) * p->ldc + p->N;
}

/* Runs p once. The caller has set BLAS's threads: threads for one sgemm,
 * 1 for heads, which run threads at a time as in lk_cpu.c. */
static void run(const product *p, const float *a, const float *b, float *c, int threads) {
    const enum CBLAS_TRANSPOSE trans_b = p->trans_b ? CblasTrans : CblasNoTrans;
    if (!p->heads) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b, p->M, p->N, p->K, 1.0f, a, p->lda, b,
                    p->ldb, 0.0f, c, p->ldc);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (int i = 0; i < p->heads; i++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b, p->M, p->N, p->K, 1.0f, a + i * p->a_step,
                    p->lda, b + i * p->b_step, p->ldb, 0.0f, c + i * p->c_step, p->ldc);
}

/* Up to 64 indices of [0, n): all of them, or the first and last 16 (where
 * kernels handle their edges) and 32 spread between. Returns the count. */
static int sample(int n, int idx[64]) {
    if (n <= 64) {
        for (int i = 0; i < n; i++)
            idx[i] = i;
        return n;
    }
    for (int i = 0; i < 16; i++) {
        idx[i] = i;
        idx[48 + i] = n - 16 + i;
    }
    for (int i = 0; i < 32; i++)
        idx[16 + i] = 16 + (int)((long long)(n - 32) * (2 * i + 1) / 64);
    return 64;
}

/* The largest error of p's result c over sampled entries of every head:
 * |c - ref| / sum_k |a_ik b_kj|, ref summed in double. A correct float32
 * product stays below (K+1) u (u = FLT_EPSILON/2) in any summation order;
 * a NaN or infinity counts as INFINITY. */
static double max_error(const product *p, const float *a, const float *b, const float *c) {
    int rows[64], cols[64];
    const int n_rows = sample(p->M, rows), n_cols = sample(p->N, cols);
    double worst = 0.0;
    for (int h = 0; h < (p->heads ? p->heads : 1); h++) {
        const float *ah = a + h * p->a_step, *bh = b + h * p->b_step, *ch = c + h * p->c_step;
        for (int r = 0; r < n_rows; r++) {
            for (int s = 0; s < n_cols; s++) {
                const size_t i = (size_t)rows[r], j = (size_t)cols[s];
                double ref = 0.0, mag = 0.0;
                for (size_t k = 0; k < (size_t)p->K; k++) {
                    const double x = ah[i * p->lda + k];
                    const double y = p->trans_b ? bh[j * p->ldb + k] : bh[k * p->ldb + j];
                    ref += x * y;
                    mag += fabs(x * y);
                }
                double e = fabs(ch[i * p->ldc + j] - ref) / (mag > 0.0 ? mag : 1.0);
                if (!isfinite(e)) e = INFINITY;
                if (e > worst) worst = e;
            }
        }
    }
    return worst;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double own_cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* CPU seconds the whole machine has been busy (steal included), from
 * /proc/stat; NAN where it can't be read. */
static double machine_busy_s(void) {
    unsigned long long user, nice, sys, idle, iowait, irq, softirq, steal;
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return NAN;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &sys, &idle,
                   &iowait, &irq, &softirq, &steal);
    fclose(f);
    if (n != 8) return NAN;
    return (double)(user + nice + sys + irq + softirq + steal) / (double)sysconf(_SC_CLK_TCK);
}

typedef struct timing {
    double best_s;     /* per call, in the fastest repeat */
    double spread;     /* slowest repeat's per-call time / best - 1 */
    double other_busy; /* CPUs other processes kept busy, on average, meanwhile */
} timing;

/* Waits up to max_s seconds for a 0.5 s window in which other processes keep
 * under IDLE_CPUS CPUs busy; returns when one is seen or the time is up. */
static void wait_idle(double max_s) {
    const double end = now_s() + max_s;
    while (now_s() < end) {
        const double busy0 = machine_busy_s(), own0 = own_cpu_s(), t0 = now_s();
        nanosleep(&(struct timespec){0, 500000000}, NULL);
        const double other = machine_busy_s() - busy0 - (own_cpu_s() - own0);
        if (!(other / (now_s() - t0) >= IDLE_CPUS)) return;
    }
}

/* Times p: one warm-up call, then repeats of at least MIN_REPEAT_S. */
static timing time_product(const product *p, const float *a, const float *b, float *c, int threads,
                           int repeats) {
    run(p, a, b, c, threads);
    const double busy0 = machine_busy_s(), own0 = own_cpu_s(), wall0 = now_s();
    double best = INFINITY, worst = 0.0;
    for (int r = 0; r < repeats; r++) {
        const double t0 = now_s();
        long calls = 0;
        double t;
        do {
            run(p, a, b, c, threads);
            calls++;
        } while ((t = now_s() - t0) < MIN_REPEAT_S);
        t /= (double)calls;
        best = t < best ? t : best;
        worst = t > worst ? t : worst;
    }
    const double wall = now_s() - wall0;
    const double other = (machine_busy_s() - busy0 - (own_cpu_s() - own0)) / wall;
    return (timing){best, worst / best - 1.0, other > 0.0 ? other : 0.0};
}

static float *alloc_floats(size_t n) {
    return aligned_alloc(64, (n * sizeof(float) + 63) & ~(size_t)63);
}

/* Uniform in [-1, 1) from a fixed-seed xorshift. */
static void fill_random(float *x, size_t n, uint64_t *state) {
    for (size_t i = 0; i < n; i++) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        x[i] = (float)((double)(*state >> 11) * 0x1p-52 - 1.0);
    }
}

typedef struct options {
    int threads, repeats;
    int attempts;       /* timings of a product at most, while they are disturbed */
    double wait_idle_s; /* the most to wait for idle CPUs before each timing */
} options;

/* Checks and times p (the fastest of up to o->attempts timings, the next one
 * only when the last was disturbed), prints its line, and returns its best
 * time per call in seconds; -1 if its buffers can't be allocated. *failed is
 * set when its error is above the limit. */
static double measure(const product *p, const options *o, bool *failed) {
    float *a = alloc_floats(a_span(p)), *b = alloc_floats(b_span(p)), *c = alloc_floats(c_span(p));
    if (!a || !b || !c) {
        free(a), free(b), free(c);
        fprintf(stderr, "bench_blas: no memory for %s\n", p->name);
        return -1.0;
    }
    uint64_t state = 0x9e3779b97f4a7c15u;
    fill_random(a, a_span(p), &state);
    fill_random(b, b_span(p), &state);
    /* beta 0 must not read c: lensd's score buffers hold -inf from the mask */
    for (size_t i = 0; i < c_span(p); i++)
        c[i] = NAN;
    blas_set_threads(p->heads ? 1 : o->threads);
    run(p, a, b, c, o->threads);
    const double err = max_error(p, a, b, c), limit = (p->K + 1) * (FLT_EPSILON / 2);
    timing t = {.best_s = INFINITY};
    for (int i = 0; i < o->attempts; i++) {
        wait_idle(o->wait_idle_s);
        const timing ti = time_product(p, a, b, c, o->threads, o->repeats);
        if (ti.best_s < t.best_s) t = ti;
        if (ti.other_busy <= DISTURBED_CPUS) break;
    }
    const double flops = 2.0 * p->M * p->N * p->K * (p->heads ? p->heads : 1);
    char shape[96];
    snprintf(shape, sizeof shape, "[%d,%d]x[%d,%d]%s lda %d ldb %d ldc %d", p->M, p->K, p->K, p->N,
             p->trans_b ? " (b^T)" : "", p->lda, p->ldb, p->ldc);
    printf("product | %s | %s | %.1f | %.4f | %.1e%s | %.0f%% | %.2f\n", p->name, shape,
           flops / t.best_s * 1e-9, t.best_s * 1e3, err, err <= limit ? "" : " FAIL",
           t.spread * 100, t.other_busy);
    fflush(stdout);
    if (err > limit) *failed = true;
    free(a), free(b), free(c);
    return t.best_s;
}

static int usage(void) {
    fprintf(stderr,
            "usage: bench_blas [--threads N] [--repeats R] [--attempts A] [--wait-idle S]\n"
            "  --threads N    BLAS and OpenMP threads (default: all cores)\n"
            "  --repeats R    timed repeats per product, the best kept (default 5)\n"
            "  --attempts A   time a product again, up to A times in all, while other\n"
            "                 processes keep over %.1f CPUs busy (default 1)\n"
            "  --wait-idle S  before each timing, wait up to S s for idle CPUs (default 0)\n",
            DISTURBED_CPUS);
    return 2;
}

int main(int argc, char **argv) {
    options o = {.threads = omp_get_num_procs(), .repeats = 5, .attempts = 1};
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--threads") == 0)
            o.threads = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--repeats") == 0)
            o.repeats = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--attempts") == 0)
            o.attempts = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--wait-idle") == 0)
            o.wait_idle_s = atof(argv[++i]);
        else
            return usage();
    }
    if (o.threads < 1 || o.repeats < 1 || o.attempts < 1 || !(o.wait_idle_s >= 0)) return usage();
    omp_set_num_threads(o.threads);

    char lib[256], kernel[64];
    blas_describe(lib, sizeof lib, kernel, sizeof kernel);
    const char *wait = getenv("OMP_WAIT_POLICY");
    printf("info | library | %s\ninfo | kernel | %s\ninfo | threads | %d\n", lib, kernel,
           o.threads);
    printf("info | OMP_WAIT_POLICY | %s\n", wait ? wait : "(unset)");
    printf("# kind | product | shape | GFLOP/s | ms per call | max rel error | repeat spread | "
           "other CPUs busy\n");

    bool failed = false;
    double head_s[N_HEAD_T][N_HEAD_PRODUCTS];
    for (size_t t = 0; t < N_HEAD_T; t++) {
        for (int w = 0; w < N_HEAD_PRODUCTS; w++) {
            const product p = head_product(w, head_T[t]);
            if ((head_s[t][w] = measure(&p, &o, &failed)) < 0) return 2;
        }
    }
    double row_s[N_PASSES][N_ROW_PRODUCTS];
    for (size_t f = 0; f < N_PASSES; f++) {
        for (int w = 0; w < N_ROW_PRODUCTS; w++) {
            const product p = row_product(w, passes[f].B * passes[f].T);
            if ((row_s[f][w] = measure(&p, &o, &failed)) < 0) return 2;
        }
    }
    /* per layer: q, k and v, attention out, MLP in and out, and each prompt's
     * two per-head products; then the unembed */
    for (size_t f = 0; f < N_PASSES; f++) {
        size_t t = 0;
        while (head_T[t] != passes[f].T)
            t++;
        const double *r = row_s[f];
        const double layer = 3 * r[QKV] + r[ATTN_OUT] + r[MLP_IN] + r[MLP_OUT] +
                             passes[f].B * (head_s[t][QK] + head_s[t][PV]);
        printf("forward | N=%d (%dx%d) | %d layers + unembed | %.2f ms\n",
               passes[f].B * passes[f].T, passes[f].B, passes[f].T, N_LAYERS,
               (N_LAYERS * layer + r[UNEMBED]) * 1e3);
    }
    return failed ? 1 : 0;
}
