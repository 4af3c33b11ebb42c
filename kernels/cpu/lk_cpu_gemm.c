/*
 * lk_cpu_gemm.c: lensd's own product kernels (kernels/lk.h, "lensd's own
 * products on the CPU").
 *
 * A forward of a few tokens multiplies a handful of activation rows by every
 * weight matrix of the model once. OpenBLAS copies ("packs") the weight
 * operand into its own layout on every call, which at 16 rows is more than
 * half of its time (perf: sgemm_itcopy, bench/results/families-2026-12-01.md).
 * These kernels read the weights where they lie instead: the output is cut
 * into column panels, each thread takes a contiguous range of them, and a
 * register tile of MR rows by NR columns accumulates over k, reading one row
 * of the panel (NR consecutive floats of b) and broadcasting MR entries of a
 * per step, with the panel's next rows prefetched. k is cut into blocks of
 * KC; where several row tiles pass over a block, the first copies the rows
 * it reads (KC x NR floats, 32 KiB) into L1 for the others, so that only the
 * part of b in use is ever copied, and only when it is reused.
 *
 *   out [M, N] (row stride ldo) = a [M, K] (lda) @ b [K, N] (ldb) + bias [N]
 *
 * Each entry sums its K products in order, in float32 (as a single-threaded
 * sgemm does, within float32 rounding of any other order). The bias, when
 * there is one, is the first term, and with accumulate the old entry is.
 */
#include "kernels/lk.h"

#include <omp.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

/* k rows per block: a 64-column panel's block is 32 KiB, inside L1. */
#define KC 128
/* how many rows of b ahead the prefetches reach */
#define PREFETCH_ROWS 8
/* threads split the columns in units of this many */
#define COLUMN_UNIT 16
/* below this many multiply-adds a product runs on the calling thread alone */
#define THREADED_MIN ((size_t)1 << 16)

/* Address `rows` rows of stride ld after p, for a prefetch that may point
 * past the matrix (a prefetch never faults). */
static inline const char *rows_ahead(const float *p, int rows, int ld) {
    return (const char *)((uintptr_t)p + (uintptr_t)rows * (uintptr_t)ld * sizeof(float));
}

/* The cases of a switch on a tile's row count R that call CALL(r) with r
 * constant, so that the tile is compiled apart (its accumulators unrolled
 * into registers) for each row count. */
#define ROWS_1_TO_4(CALL)                                                                          \
    case 4:                                                                                        \
        CALL(4);                                                                                   \
        break;                                                                                     \
    case 3:                                                                                        \
        CALL(3);                                                                                   \
        break;                                                                                     \
    case 2:                                                                                        \
        CALL(2);                                                                                   \
        break;                                                                                     \
    default:                                                                                       \
        CALL(1);                                                                                   \
        break;
#define ROWS_1_TO_6(CALL)                                                                          \
    case 6:                                                                                        \
        CALL(6);                                                                                   \
        break;                                                                                     \
    case 5:                                                                                        \
        CALL(5);                                                                                   \
        break;                                                                                     \
        ROWS_1_TO_4(CALL)

/* One panel's block of k, given to a tile kernel. */
typedef struct tile_job {
    const float *a; /* the tile's first row at its block's first k */
    int lda;
    const float *b; /* the block's first row at the panel's first column */
    int ldb;
    float *c; /* the tile's first output row at the panel's first column */
    int ldc;
    const float *bias; /* the panel's first bias entry, or NULL */
    int kc;            /* rows of the block */
    int w;             /* columns of the panel, at most the kernel's NR */
    bool load_c;       /* start from c (accumulate, or not the first block) */
    float *pack;       /* or NULL: where to copy the block's rows of b as they are read,
                          KC x NR floats, for the row tiles after this one */
} tile_job;

/* ---- AVX-512: tiles of 6 rows by 64 columns (24 accumulators) ---- */

#define MR_512 6
#define NR_512 64

/* The 6 x 64 tile, for R <= 6 rows; full: all 64 columns (plain loads), else
 * mask[v] selects the columns of vector v. */
static inline __attribute__((always_inline, target("avx512f"))) void
tile_avx512(int R, bool full, const tile_job *t, const __mmask16 mask[4]) {
    const float *a = t->a, *b = t->b;
    const size_t lda = (size_t)t->lda, ldb = (size_t)t->ldb, ldc = (size_t)t->ldc;
    const __mmask16 m0 = full ? 0xFFFF : mask[0], m1 = full ? 0xFFFF : mask[1];
    const __mmask16 m2 = full ? 0xFFFF : mask[2], m3 = full ? 0xFFFF : mask[3];
#define LOAD_512(p, m) (full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p))
    __m512 acc[MR_512][4];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        const float *c = t->c + r * ldc;
        acc[r][0] = t->load_c ? LOAD_512(c, m0) : _mm512_setzero_ps();
        acc[r][1] = t->load_c ? LOAD_512(c + 16, m1) : _mm512_setzero_ps();
        acc[r][2] = t->load_c ? LOAD_512(c + 32, m2) : _mm512_setzero_ps();
        acc[r][3] = t->load_c ? LOAD_512(c + 48, m3) : _mm512_setzero_ps();
        if (t->bias) {
            acc[r][0] = _mm512_add_ps(acc[r][0], LOAD_512(t->bias, m0));
            acc[r][1] = _mm512_add_ps(acc[r][1], LOAD_512(t->bias + 16, m1));
            acc[r][2] = _mm512_add_ps(acc[r][2], LOAD_512(t->bias + 32, m2));
            acc[r][3] = _mm512_add_ps(acc[r][3], LOAD_512(t->bias + 48, m3));
        }
    }
#pragma GCC unroll 2
    for (int k = 0; k < t->kc; k++, a++, b += ldb) {
        const char *ahead = rows_ahead(b, PREFETCH_ROWS, (int)ldb);
        _mm_prefetch(ahead, _MM_HINT_T0);
        _mm_prefetch(ahead + 64, _MM_HINT_T0);
        _mm_prefetch(ahead + 128, _MM_HINT_T0);
        _mm_prefetch(ahead + 192, _MM_HINT_T0);
        const __m512 b0 = LOAD_512(b, m0), b1 = LOAD_512(b + 16, m1);
        const __m512 b2 = LOAD_512(b + 32, m2), b3 = LOAD_512(b + 48, m3);
        if (t->pack) {
            float *row = t->pack + (size_t)k * NR_512;
            _mm512_store_ps(row, b0);
            _mm512_store_ps(row + 16, b1);
            _mm512_store_ps(row + 32, b2);
            _mm512_store_ps(row + 48, b3);
        }
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m512 x = _mm512_set1_ps(a[r * lda]);
            acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(x, b2, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(x, b3, acc[r][3]);
        }
    }
#undef LOAD_512
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        float *c = t->c + r * ldc;
        if (full) {
            _mm512_storeu_ps(c, acc[r][0]);
            _mm512_storeu_ps(c + 16, acc[r][1]);
            _mm512_storeu_ps(c + 32, acc[r][2]);
            _mm512_storeu_ps(c + 48, acc[r][3]);
        } else {
            _mm512_mask_storeu_ps(c, m0, acc[r][0]);
            _mm512_mask_storeu_ps(c + 16, m1, acc[r][1]);
            _mm512_mask_storeu_ps(c + 32, m2, acc[r][2]);
            _mm512_mask_storeu_ps(c + 48, m3, acc[r][3]);
        }
    }
}

/* A tile of R <= 6 rows of the panel's t->w columns. */
__attribute__((target("avx512f"))) static void tile_rows_avx512(int R, const tile_job *t) {
    __mmask16 mask[4];
    for (int v = 0; v < 4; v++) {
        const int left = t->w - 16 * v;
        mask[v] = left >= 16 ? 0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
    }
#define FULL_512(r) tile_avx512(r, true, t, mask)
#define PART_512(r) tile_avx512(r, false, t, mask)
    if (t->w == NR_512) {
        switch (R) { ROWS_1_TO_6(FULL_512) }
    } else {
        switch (R) { ROWS_1_TO_6(PART_512) }
    }
#undef FULL_512
#undef PART_512
}

/* ---- AVX2 + FMA: tiles of 4 rows by 24 columns (12 accumulators) ---- */

#define MR_256 4
#define NR_256 24

/* The 4 x 24 tile, for R <= 4 rows; full: all 24 columns (plain loads and
 * stores), else mask[v] selects the columns of vector v. */
static inline __attribute__((always_inline, target("avx2,fma"))) void
tile_avx2(int R, bool full, const tile_job *t, const __m256i mask[3]) {
    const float *a = t->a, *b = t->b;
    const size_t lda = (size_t)t->lda, ldb = (size_t)t->ldb, ldc = (size_t)t->ldc;
#define LOAD_256(p, v) (full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask[v]))
    __m256 acc[MR_256][3];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 3
        for (int v = 0; v < 3; v++) {
            acc[r][v] = t->load_c ? LOAD_256(t->c + r * ldc + 8 * v, v) : _mm256_setzero_ps();
            if (t->bias) acc[r][v] = _mm256_add_ps(acc[r][v], LOAD_256(t->bias + 8 * v, v));
        }
#pragma GCC unroll 2
    for (int k = 0; k < t->kc; k++, a++, b += ldb) {
        const char *ahead = rows_ahead(b, PREFETCH_ROWS, (int)ldb);
        _mm_prefetch(ahead, _MM_HINT_T0);
        _mm_prefetch(ahead + 64, _MM_HINT_T0);
        _mm_prefetch(ahead + 92, _MM_HINT_T0);
        const __m256 b0 = LOAD_256(b, 0), b1 = LOAD_256(b + 8, 1), b2 = LOAD_256(b + 16, 2);
        if (t->pack) {
            float *row = t->pack + (size_t)k * NR_256;
            _mm256_storeu_ps(row, b0);
            _mm256_storeu_ps(row + 8, b1);
            _mm256_storeu_ps(row + 16, b2);
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m256 x = _mm256_broadcast_ss(a + r * lda);
            acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(x, b2, acc[r][2]);
        }
    }
#undef LOAD_256
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 3
        for (int v = 0; v < 3; v++) {
            float *c = t->c + r * ldc + 8 * v;
            if (full)
                _mm256_storeu_ps(c, acc[r][v]);
            else
                _mm256_maskstore_ps(c, mask[v], acc[r][v]);
        }
}

/* A tile of R <= 4 rows of the panel's t->w columns. */
__attribute__((target("avx2,fma"))) static void tile_rows_avx2(int R, const tile_job *t) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i mask[3];
    for (int v = 0; v < 3; v++)
        mask[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32(t->w - 8 * v), lane);
#define FULL_256(r) tile_avx2(r, true, t, mask)
#define PART_256(r) tile_avx2(r, false, t, mask)
    if (t->w == NR_256) {
        switch (R) { ROWS_1_TO_4(FULL_256) }
    } else {
        switch (R) { ROWS_1_TO_4(PART_256) }
    }
#undef FULL_256
#undef PART_256
}

/* The columns [j0, j0 + w) (w <= the kernel's NR) of every row. A block of a
 * transposed b ([N, K]) is first copied into `packed` (KC x NR floats) as
 * [K, N]; otherwise, where more than one row tile passes over a block of the
 * panel, the first tile copies the rows it reads there: the tiles then read it from L1 in
 * order, instead of reading rows that lie a page or more apart (N >= 1024)
 * and miss the TLB on every k. */
static void run_panel(lk_gemm_kernel kernel, const tile_job *base, bool transposed, int M, int K,
                      int j0, int w, const float *bias, float *packed) {
    const int mr = kernel == LK_GEMM_AVX512 ? MR_512 : MR_256;
    const int nr = kernel == LK_GEMM_AVX512 ? NR_512 : NR_256;
    for (int k0 = 0; k0 < K; k0 += KC) {
        const int kc = K - k0 < KC ? K - k0 : KC;
        const float *b = base->b + (size_t)k0 * base->ldb + j0;
        int ldb = base->ldb;
        bool pack_in_first_tile = false;
        if (transposed) {
            /* b is [N, K]: the block is columns k0.. of rows j0.. */
            const float *rows = base->b + (size_t)j0 * base->ldb + k0;
            for (int j = 0; j < w; j++)
                for (int k = 0; k < kc; k++)
                    packed[(size_t)k * nr + j] = rows[(size_t)j * base->ldb + k];
            b = packed;
            ldb = nr;
        } else {
            pack_in_first_tile = M > mr;
        }
        for (int m0 = 0; m0 < M; m0 += mr) {
            tile_job t = *base;
            t.a += (size_t)m0 * base->lda + k0;
            t.b = m0 > 0 && pack_in_first_tile ? packed : b;
            t.ldb = m0 > 0 && pack_in_first_tile ? nr : ldb;
            t.pack = m0 == 0 && pack_in_first_tile ? packed : NULL;
            t.c += (size_t)m0 * base->ldc + j0;
            t.bias = k0 == 0 && bias ? bias + j0 : NULL;
            t.kc = kc;
            t.w = w;
            t.load_c = base->load_c || k0 > 0;
            if (kernel == LK_GEMM_AVX512)
                tile_rows_avx512(M - m0 < mr ? M - m0 : mr, &t);
            else
                tile_rows_avx2(M - m0 < mr ? M - m0 : mr, &t);
        }
    }
}

#endif

/* ---- choosing and running ---- */

lk_gemm_kernel lk_gemm_best(const lk_cpu_info *cpu) {
#if !defined(__x86_64__)
    return LK_GEMM_OPENBLAS;
#endif
    const unsigned avx2 = LK_CPU_AVX2 | LK_CPU_FMA;
    if ((cpu->features & (avx2 | LK_CPU_AVX512F)) == (avx2 | LK_CPU_AVX512F)) return LK_GEMM_AVX512;
    if ((cpu->features & avx2) == avx2) return LK_GEMM_AVX2;
    return LK_GEMM_OPENBLAS;
}

int lk_gemm_max_rows(lk_gemm_kernel kernel) {
    switch (kernel) {
    case LK_GEMM_AVX512:
        return 512;
    case LK_GEMM_AVX2:
        return 8;
    default:
        return 0;
    }
}

const char *lk_gemm_name(lk_gemm_kernel kernel) {
    switch (kernel) {
    case LK_GEMM_AVX512:
        return "avx512";
    case LK_GEMM_AVX2:
        return "avx2";
    default:
        return "openblas";
    }
}

/* -1 until chosen, then an lk_gemm_kernel */
static _Atomic int chosen = -1;

void lk_gemm_choose(lk_gemm_kernel kernel) {
    atomic_store(&chosen, (int)kernel);
}

lk_gemm_kernel lk_gemm_chosen(void) {
    int kernel = atomic_load(&chosen);
    if (kernel < 0) {
        lk_cpu_info cpu;
        lk_cpu_identify(&cpu);
        kernel = (int)lk_gemm_best(&cpu);
        atomic_store(&chosen, kernel);
    }
    return (lk_gemm_kernel)kernel;
}

void lk_gemm_matmul(lk_gemm_kernel kernel, float *out, int ldo, const float *a, int lda,
                    const float *b, int ldb, bool b_transposed, const float *bias, int M, int K,
                    int N, bool accumulate) {
    // out is (M,N), a is (M,K), b is (K,N) or, transposed, (N,K), bias is (N)
    if (M <= 0 || N <= 0 || K <= 0) return;
#if defined(__x86_64__)
    const int panel = kernel == LK_GEMM_AVX512 ? NR_512 : NR_256;
    const int units = (N + COLUMN_UNIT - 1) / COLUMN_UNIT;
    int threads =
        (size_t)M * N * K >= THREADED_MIN && !omp_in_parallel() ? omp_get_max_threads() : 1;
    if (threads > units) threads = units;
    const tile_job base = {
        .a = a, .lda = lda, .b = b, .ldb = ldb, .c = out, .ldc = ldo, .load_c = accumulate};
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int j_begin = (int)((int64_t)units * t / n) * COLUMN_UNIT;
        int j_end = (int)((int64_t)units * (t + 1) / n) * COLUMN_UNIT;
        if (j_end > N) j_end = N;
        _Alignas(64) float packed[KC * NR_512];
        for (int j0 = j_begin; j0 < j_end; j0 += panel) {
            const int w = j_end - j0 < panel ? j_end - j0 : panel;
            run_panel(kernel, &base, b_transposed, M, K, j0, w, bias, packed);
        }
    }
#else
    (void)kernel;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float sum = accumulate ? out[(size_t)i * ldo + j] : 0.0f;
            if (bias) sum += bias[j];
            for (int k = 0; k < K; k++)
                sum += a[(size_t)i * lda + k] *
                       (b_transposed ? b[(size_t)j * ldb + k] : b[(size_t)k * ldb + j]);
            out[(size_t)i * ldo + j] = sum;
        }
#endif
}
