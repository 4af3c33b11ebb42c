/*
 * lk_cpu_blas.c: what the CPU can do and what the BLAS library makes of it —
 * the CPU's identity and instruction-set features (cpuid, xgetbv), the
 * OpenBLAS kernel running, which kernel a CPU deserves, and a self-check of
 * sgemm against a plain loop.
 *
 * Debian's OpenBLAS is built for many CPUs at once and picks a kernel
 * ("core") by CPU model when it loads; a model it does not know gets a
 * generic one (Intel's family 6 model 207 gets "Prescott", SSE3 only, a
 * third of the speed of its AVX-512 kernel). Kernels are ranked here by the
 * instruction set they need, so that a caller can notice such a fallback and
 * name the kernel to force (OpenBLAS reads OPENBLAS_CORETYPE when it loads).
 * Deciding, re-executing and logging is the caller's (server/startup.c):
 * nothing here changes the process.
 *
 * Not here: CPUs other than x86-64 (no features are reported there and no
 * kernel is ever preferred), and BLAS libraries other than OpenBLAS.
 */
#include "kernels/lk.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define LK_X86 1
#endif

/* ---- the CPU ------------------------------------------------------------ */

static const struct {
    unsigned bit;
    const char *name; /* as /proc/cpuinfo's "flags" line spells it, but SSE3 ("pni") */
} feature_names[] = {
    {LK_CPU_SSE3, "sse3"},
    {LK_CPU_AVX, "avx"},
    {LK_CPU_FMA, "fma"},
    {LK_CPU_AVX2, "avx2"},
    {LK_CPU_AVX512F, "avx512f"},
    {LK_CPU_AVX512BW, "avx512bw"},
    {LK_CPU_AVX512DQ, "avx512dq"},
    {LK_CPU_AVX512VL, "avx512vl"},
    {LK_CPU_AVX512_BF16, "avx512_bf16"},
    {LK_CPU_AMX_TILE, "amx_tile"},
    {LK_CPU_AMX_BF16, "amx_bf16"},
};

#define N_FEATURES (sizeof feature_names / sizeof feature_names[0])

const char *lk_cpu_feature_name(unsigned feature) {
    for (size_t i = 0; i < N_FEATURES; i++)
        if (feature_names[i].bit == feature) return feature_names[i].name;
    return NULL;
}

void lk_cpu_feature_list(unsigned features, char *buf, size_t len) {
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < N_FEATURES && used < len; i++)
        if (features & feature_names[i].bit)
            used += (size_t)snprintf(buf + used, len - used, "%s%s", used ? " " : "",
                                     feature_names[i].name);
}

#ifdef LK_X86
/* The register state the OS saves on a context switch (XCR0): a feature whose
 * registers it does not save cannot be used even where cpuid lists it. */
static uint64_t os_saved_state(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t)hi << 32 | lo;
}

void lk_cpu_identify(lk_cpu_info *info) {
    memset(info, 0, sizeof *info);
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return;
    const unsigned max_leaf = a;
    memcpy(info->vendor, &b, 4);
    memcpy(info->vendor + 4, &d, 4);
    memcpy(info->vendor + 8, &c, 4);

    __cpuid(1, a, b, c, d);
    /* family and model as Linux and Intel's manuals combine them */
    const int base_family = (int)(a >> 8 & 0xf), base_model = (int)(a >> 4 & 0xf);
    info->family = base_family == 0xf ? base_family + (int)(a >> 20 & 0xff) : base_family;
    info->model = base_family == 0xf || base_family == 0x6 ? (int)(a >> 16 & 0xf) << 4 | base_model
                                                           : base_model;
    info->stepping = (int)(a & 0xf);
    const bool osxsave = c >> 27 & 1;
    const uint64_t xcr0 = osxsave ? os_saved_state() : 0;
    const bool avx_state = (xcr0 & 0x6) == 0x6;                   /* SSE and AVX registers */
    const bool avx512_state = avx_state && (xcr0 & 0xe0) == 0xe0; /* opmask, ZMM */
    const bool amx_state = (xcr0 & 0x60000) == 0x60000;           /* tile config and data */
    unsigned f = 0;
    if (c & 1) f |= LK_CPU_SSE3;
    if (avx_state && (c >> 28 & 1)) f |= LK_CPU_AVX;
    if (avx_state && (c >> 12 & 1)) f |= LK_CPU_FMA;
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        const unsigned leaf7_subleaves = a;
        if (avx_state && (b >> 5 & 1)) f |= LK_CPU_AVX2;
        if (avx512_state) {
            if (b >> 16 & 1) f |= LK_CPU_AVX512F;
            if (b >> 17 & 1) f |= LK_CPU_AVX512DQ;
            if (b >> 30 & 1) f |= LK_CPU_AVX512BW;
            if (b >> 31 & 1) f |= LK_CPU_AVX512VL;
        }
        if (amx_state && (d >> 24 & 1)) f |= LK_CPU_AMX_TILE;
        if (amx_state && (d >> 22 & 1)) f |= LK_CPU_AMX_BF16;
        if (leaf7_subleaves >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            if (avx512_state && (a >> 5 & 1)) f |= LK_CPU_AVX512_BF16;
        }
    }
    info->features = f;

    unsigned brand[12];
    if (__get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x80000004) {
        for (unsigned i = 0; i < 3; i++)
            __cpuid(0x80000002 + i, brand[4 * i], brand[4 * i + 1], brand[4 * i + 2],
                    brand[4 * i + 3]);
        char text[49];
        memcpy(text, brand, 48);
        text[48] = '\0';
        const char *s = text;
        while (*s == ' ')
            s++;
        snprintf(info->name, sizeof info->name, "%s", s);
        for (size_t n = strlen(info->name); n > 0 && info->name[n - 1] == ' '; n--)
            info->name[n - 1] = '\0';
    }
}
#else
void lk_cpu_identify(lk_cpu_info *info) {
    memset(info, 0, sizeof *info);
}
#endif

/* ---- OpenBLAS kernels, ranked ------------------------------------------- */

/* The instruction-set level a kernel needs, and a CPU offers. */
enum { LEVEL_BASE, LEVEL_AVX, LEVEL_AVX2, LEVEL_AVX512, LEVEL_UNKNOWN = -1 };

/* Every x86-64 kernel of OpenBLAS 0.3.x's DYNAMIC_ARCH builds, by the
 * instructions its sgemm uses. */
static const struct {
    const char *name;
    int level;
} kernels[] = {
    {"Unknown", LEVEL_BASE},      {"Prescott", LEVEL_BASE},
    {"Core2", LEVEL_BASE},        {"Penryn", LEVEL_BASE},
    {"Dunnington", LEVEL_BASE},   {"Nehalem", LEVEL_BASE},
    {"Atom", LEVEL_BASE},         {"Nano", LEVEL_BASE},
    {"Opteron", LEVEL_BASE},      {"Opteron_SSE3", LEVEL_BASE},
    {"Barcelona", LEVEL_BASE},    {"Bobcat", LEVEL_BASE},
    {"Sandybridge", LEVEL_AVX},   {"Bulldozer", LEVEL_AVX},
    {"Piledriver", LEVEL_AVX},    {"Steamroller", LEVEL_AVX},
    {"Haswell", LEVEL_AVX2},      {"Zen", LEVEL_AVX2},
    {"Excavator", LEVEL_AVX2},    {"SkylakeX", LEVEL_AVX512},
    {"Cooperlake", LEVEL_AVX512}, {"SapphireRapids", LEVEL_AVX512},
};

static int kernel_level(const char *name) {
    for (size_t i = 0; i < sizeof kernels / sizeof kernels[0]; i++)
        if (strcasecmp(kernels[i].name, name) == 0) return kernels[i].level;
    return LEVEL_UNKNOWN;
}

static int cpu_level(unsigned f) {
    const unsigned avx512 = LK_CPU_AVX512F | LK_CPU_AVX512BW | LK_CPU_AVX512DQ | LK_CPU_AVX512VL;
    if ((f & avx512) == avx512 && (f & LK_CPU_FMA)) return LEVEL_AVX512;
    if ((f & (LK_CPU_AVX2 | LK_CPU_FMA)) == (LK_CPU_AVX2 | LK_CPU_FMA)) return LEVEL_AVX2;
    if (f & LK_CPU_AVX) return LEVEL_AVX;
    return LEVEL_BASE;
}

/* The kernel lensd forces for a level: the one OpenBLAS's own detection
 * gives the CPUs it knows at that level (Zen for AMD's AVX2 parts). */
static const char *kernel_for_level(int level, const char *vendor) {
    switch (level) {
    case LEVEL_AVX512:
        return "SkylakeX";
    case LEVEL_AVX2:
        return strcmp(vendor, "AuthenticAMD") == 0 ? "Zen" : "Haswell";
    case LEVEL_AVX:
        return "Sandybridge";
    default:
        return "Prescott";
    }
}

const char *lk_blas_preferred_kernel(const lk_cpu_info *cpu, const char *running) {
    const int have = kernel_level(running), can = cpu_level(cpu->features);
    if (have == LEVEL_UNKNOWN || have >= can) return NULL;
    return kernel_for_level(can, cpu->vendor);
}

const char *lk_blas_safer_kernel(const lk_cpu_info *cpu, const char *failed) {
    const int level = kernel_level(failed), can = cpu_level(cpu->features);
    if (level == LEVEL_UNKNOWN || level > can) return kernel_for_level(can, cpu->vendor);
    return level > LEVEL_BASE ? kernel_for_level(level - 1, cpu->vendor) : NULL;
}

/* ---- the library -------------------------------------------------------- */

void lk_blas_describe(lk_blas_info *info) {
    memset(info, 0, sizeof *info);
    snprintf(info->library, sizeof info->library, "OpenBLAS");
    /* openblas_get_config(): "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ..." */
    const char *config = openblas_get_config();
    const char *version = strncmp(config, "OpenBLAS ", 9) == 0 ? config + 9 : "";
    snprintf(info->version, sizeof info->version, "%.*s", (int)strcspn(version, " "), version);
    snprintf(info->kernel, sizeof info->kernel, "%s", openblas_get_corename());
    static const char *const threading[] = {"none", "pthreads", "OpenMP"};
    const int parallel = openblas_get_parallel();
    snprintf(info->threading, sizeof info->threading, "%s",
             parallel >= 0 && parallel <= 2 ? threading[parallel] : "?");
    info->threads = openblas_get_num_threads();
}

/* ---- the self-check ----------------------------------------------------- */

void lk_blas_sgemm(bool b_transposed, int M, int N, int K, float beta, const float *a, int lda,
                   const float *b, int ldb, float *c, int ldc) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, b_transposed ? CblasTrans : CblasNoTrans, M, N, K,
                1.0f, a, lda, b, ldb, beta, c, ldc);
}

/* One product of the check: c[M, N] (row stride ldc) = a[M, K] @ b + beta c,
 * with b [K, N] or, transposed, [N, K]; each stride past its minimum. */
typedef struct check_case {
    bool b_transposed;
    int M, N, K, lda_pad, ldb_pad, ldc_pad;
    float beta;
} check_case;

/* The ways lensd calls sgemm (kernels/cpu/lk_cpu.c), at odd sizes that leave
 * partial tiles in every kernel's blocking: projections with and without
 * accumulation, one-row products, heads addressed inside wider rows (q @ k^T
 * with strides of a [pos, n_heads * d_head] buffer), and one product large
 * enough that OpenBLAS splits it across threads (above its 2^18
 * multiply-adds). */
static const check_case check_cases[] = {
    {false, 37, 53, 29, 3, 5, 7, 0.0f},       {false, 65, 129, 67, 0, 0, 0, 1.0f},
    {true, 17, 33, 64, 704, 704, 15, 0.0f},   {false, 1, 301, 77, 0, 11, 0, 1.0f},
    {false, 23, 64, 31, 737, 704, 704, 0.0f}, {false, 97, 131, 67, 1, 3, 2, 0.0f},
};

/* Uniform in [-1, 1) from a 32-bit LCG: the same numbers on every run. */
static float next_uniform(uint32_t *state) {
    *state = *state * 1664525u + 1013904223u;
    return (float)(*state >> 8) / 8388608.0f - 1.0f;
}

/* Runs one case; 0 when every entry of c is within float32 rounding of the
 * double-precision product and nothing outside c's columns was written. */
static int check_one(lk_sgemm_fn *sgemm, const check_case *k, char *why, size_t why_len) {
    const int lda = k->K + k->lda_pad, ldc = k->N + k->ldc_pad;
    const int ldb = (k->b_transposed ? k->K : k->N) + k->ldb_pad;
    const size_t a_n = (size_t)k->M * lda, c_n = (size_t)k->M * ldc;
    const size_t b_n = (size_t)(k->b_transposed ? k->N : k->K) * ldb;
    float *a = malloc(a_n * sizeof *a), *b = malloc(b_n * sizeof *b);
    float *c = malloc(c_n * sizeof *c), *c0 = malloc(c_n * sizeof *c0);
    int rc = -1;
    if (!a || !b || !c || !c0) {
        snprintf(why, why_len, "out of memory");
        goto out;
    }
    uint32_t state = (uint32_t)(k->M * 7919 + k->N * 31 + k->K);
    for (size_t i = 0; i < a_n; i++)
        a[i] = next_uniform(&state);
    for (size_t i = 0; i < b_n; i++)
        b[i] = next_uniform(&state);
    for (size_t i = 0; i < c_n; i++)
        c0[i] = next_uniform(&state);
    memcpy(c, c0, c_n * sizeof *c);
    sgemm(k->b_transposed, k->M, k->N, k->K, k->beta, a, lda, b, ldb, c, ldc);
    for (int i = 0; i < k->M; i++) {
        for (int j = 0; j < ldc; j++) {
            const size_t at = (size_t)i * ldc + j;
            if (j >= k->N) {
                if (memcmp(&c[at], &c0[at], sizeof *c) != 0) {
                    snprintf(why, why_len,
                             "sgemm %dx%dx%d wrote c[%d][%d], past its %d columns (ldc %d)", k->M,
                             k->N, k->K, i, j, k->N, ldc);
                    goto out;
                }
                continue;
            }
            double exact = k->beta * (double)c0[at], magnitude = fabs(exact);
            for (int t = 0; t < k->K; t++) {
                const double bv = k->b_transposed ? b[(size_t)j * ldb + t] : b[(size_t)t * ldb + j];
                exact += (double)a[(size_t)i * lda + t] * bv;
                magnitude += fabs((double)a[(size_t)i * lda + t] * bv);
            }
            /* float32 products summed in any order: each of the K + 1 roundings
             * moves the sum by at most eps * magnitude */
            const double bound = 2.0 * (k->K + 1) * FLT_EPSILON * magnitude + 1e-30;
            if (!(fabs((double)c[at] - exact) <= bound)) {
                snprintf(why, why_len,
                         "sgemm %dx%dx%d (%s, beta %g): c[%d][%d] = %.9g, but the exact product "
                         "is %.9g (allowed error %.2g)",
                         k->M, k->N, k->K, k->b_transposed ? "b transposed" : "b as is",
                         (double)k->beta, i, j, (double)c[at], exact, bound);
                goto out;
            }
        }
    }
    rc = 0;
out:
    free(a), free(b), free(c), free(c0);
    return rc;
}

int lk_blas_selfcheck(lk_sgemm_fn *sgemm, char *why, size_t why_len) {
    for (size_t i = 0; i < sizeof check_cases / sizeof check_cases[0]; i++)
        if (check_one(sgemm ? sgemm : lk_blas_sgemm, &check_cases[i], why, why_len)) return -1;
    return 0;
}
