/*
 * test_cpu_blas.c: the CPU's features against /proc/cpuinfo, the BLAS kernel
 * ranking, and the sgemm self-check — that it passes on the library and
 * fails on each kind of wrong product.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/lk.h"

/* ---- the CPU against /proc/cpuinfo --------------------------------------- */

/* The value of the first "key\t: value" line of /proc/cpuinfo in buf, or
 * NULL when there is none. */
static const char *cpuinfo_field(const char *key, char *buf, size_t len) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return NULL;
    const char *found = NULL;
    while (!found && fgets(buf, (int)len, f)) {
        size_t n = strlen(key);
        if (strncmp(buf, key, n) != 0 || (buf[n] != '\t' && buf[n] != ' ')) continue;
        char *colon = strchr(buf, ':');
        if (!colon) continue;
        found = colon + 1 + (colon[1] == ' ');
        buf[strcspn(buf, "\n")] = '\0';
    }
    fclose(f);
    return found;
}

static bool has_flag(const char *flags, const char *flag) {
    size_t n = strlen(flag);
    for (const char *p = flags; (p = strstr(p, flag)); p += n)
        if ((p == flags || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0')) return true;
    return false;
}

Test(cpu, features_match_proc_cpuinfo) {
    static char line[16384];
    const char *flags = cpuinfo_field("flags", line, sizeof line);
    if (!flags) cr_skip_test("skipped: no x86 \"flags\" line in /proc/cpuinfo on this machine");
    lk_cpu_info cpu;
    lk_cpu_identify(&cpu);
    int checked = 0;
    for (unsigned bit = 1; lk_cpu_feature_name(bit); bit <<= 1, checked++) {
        const char *name =
            strcmp(lk_cpu_feature_name(bit), "sse3") == 0 ? "pni" : lk_cpu_feature_name(bit);
        cr_expect_eq(has_flag(flags, name), (cpu.features & bit) != 0,
                     "%s: /proc/cpuinfo says %s, lk_cpu_identify says %s", name,
                     has_flag(flags, name) ? "yes" : "no", cpu.features & bit ? "yes" : "no");
    }
    cr_expect_eq(checked, 11, "every LK_CPU_* feature has a name");
}

Test(cpu, identity_matches_proc_cpuinfo) {
    char line[1024];
    const char *family = cpuinfo_field("cpu family", line, sizeof line);
    if (!family) cr_skip_test("skipped: no x86 \"cpu family\" line in /proc/cpuinfo");
    lk_cpu_info cpu;
    lk_cpu_identify(&cpu);
    cr_expect_eq(cpu.family, atoi(family));
    cr_expect_eq(cpu.model, atoi(cpuinfo_field("model", line, sizeof line)));
    cr_expect_str_eq(cpu.vendor, cpuinfo_field("vendor_id", line, sizeof line));
    cr_expect_str_eq(cpu.name, cpuinfo_field("model name", line, sizeof line));
}

Test(cpu, feature_list_names_each_feature) {
    char buf[256];
    lk_cpu_feature_list(LK_CPU_AVX2 | LK_CPU_FMA | LK_CPU_AVX512_BF16, buf, sizeof buf);
    cr_expect_str_eq(buf, "fma avx2 avx512_bf16");
    lk_cpu_feature_list(0, buf, sizeof buf);
    cr_expect_str_eq(buf, "");
    cr_expect_null(lk_cpu_feature_name(0));
    cr_expect_null(lk_cpu_feature_name(3));
}

/* ---- the kernel ranking ------------------------------------------------- */

static const unsigned avx2_cpu = LK_CPU_SSE3 | LK_CPU_AVX | LK_CPU_FMA | LK_CPU_AVX2;
static const unsigned avx512_cpu =
    avx2_cpu | LK_CPU_AVX512F | LK_CPU_AVX512BW | LK_CPU_AVX512DQ | LK_CPU_AVX512VL;

static lk_cpu_info cpu_of(const char *vendor, int family, int model, unsigned features) {
    lk_cpu_info cpu = {.family = family, .model = model, .features = features};
    snprintf(cpu.vendor, sizeof cpu.vendor, "%s", vendor);
    return cpu;
}

static void expect_kernel(const char *got, const char *want) {
    if (!want)
        cr_expect_null(got, "expected no kernel, got %s", got ? got : "");
    else
        cr_expect(got && strcmp(got, want) == 0, "expected %s, got %s", want, got ? got : "NULL");
}

Test(kernel_choice, unknown_intel_model_falls_back_to_prescott) {
    /* the Xeon of issue 13: OpenBLAS 0.3.21 does not know family 6 model 207 */
    lk_cpu_info xeon = cpu_of("GenuineIntel", 6, 207,
                              avx512_cpu | LK_CPU_AVX512_BF16 | LK_CPU_AMX_TILE | LK_CPU_AMX_BF16);
    expect_kernel(lk_blas_preferred_kernel(&xeon, "Prescott"), "SkylakeX");
    expect_kernel(lk_blas_preferred_kernel(&xeon, "prescott"), "SkylakeX");
    expect_kernel(lk_blas_preferred_kernel(&xeon, "Unknown"), "SkylakeX");
    expect_kernel(lk_blas_preferred_kernel(&xeon, "Haswell"), "SkylakeX");
    expect_kernel(lk_blas_preferred_kernel(&xeon, "SkylakeX"), NULL);
    expect_kernel(lk_blas_preferred_kernel(&xeon, "Cooperlake"), NULL);
    expect_kernel(lk_blas_preferred_kernel(&xeon, "SapphireRapids"), NULL);
}

Test(kernel_choice, amd_gets_zen_at_avx2) {
    lk_cpu_info zen2 = cpu_of("AuthenticAMD", 23, 49, avx2_cpu);
    expect_kernel(lk_blas_preferred_kernel(&zen2, "Prescott"), "Zen");
    expect_kernel(lk_blas_preferred_kernel(&zen2, "Zen"), NULL);
    expect_kernel(lk_blas_preferred_kernel(&zen2, "Haswell"), NULL);
    lk_cpu_info zen5 = cpu_of("AuthenticAMD", 26, 2, avx512_cpu | LK_CPU_AVX512_BF16);
    expect_kernel(lk_blas_preferred_kernel(&zen5, "Zen"), "SkylakeX");
}

Test(kernel_choice, levels_below_avx512) {
    lk_cpu_info haswell = cpu_of("GenuineIntel", 6, 60, avx2_cpu);
    expect_kernel(lk_blas_preferred_kernel(&haswell, "Sandybridge"), "Haswell");
    expect_kernel(lk_blas_preferred_kernel(&haswell, "Haswell"), NULL);
    expect_kernel(lk_blas_preferred_kernel(&haswell, "SkylakeX"), NULL);
    /* AVX-512F alone (Knights Landing) is not SkylakeX's instruction set */
    lk_cpu_info knl = cpu_of("GenuineIntel", 6, 87, avx2_cpu | LK_CPU_AVX512F);
    expect_kernel(lk_blas_preferred_kernel(&knl, "Prescott"), "Haswell");
    lk_cpu_info sandy = cpu_of("GenuineIntel", 6, 42, LK_CPU_SSE3 | LK_CPU_AVX);
    expect_kernel(lk_blas_preferred_kernel(&sandy, "Nehalem"), "Sandybridge");
    lk_cpu_info old = cpu_of("GenuineIntel", 6, 23, LK_CPU_SSE3);
    expect_kernel(lk_blas_preferred_kernel(&old, "Penryn"), NULL);
}

Test(kernel_choice, a_kernel_lensd_does_not_know_is_left_alone) {
    lk_cpu_info cpu = cpu_of("AuthenticAMD", 26, 2, avx512_cpu);
    expect_kernel(lk_blas_preferred_kernel(&cpu, "Zen5"), NULL);
}

Test(kernel_choice, safer_kernels_step_down_to_none) {
    lk_cpu_info xeon = cpu_of("GenuineIntel", 6, 207, avx512_cpu);
    const char *chain[] = {"SkylakeX", "Haswell", "Sandybridge", "Prescott", NULL};
    for (int i = 0; chain[i]; i++)
        expect_kernel(lk_blas_safer_kernel(&xeon, chain[i]), chain[i + 1]);
    expect_kernel(lk_blas_safer_kernel(&xeon, "Cooperlake"), "Haswell");
    lk_cpu_info zen = cpu_of("AuthenticAMD", 25, 17, avx512_cpu);
    expect_kernel(lk_blas_safer_kernel(&zen, "Cooperlake"), "Zen");
    /* a kernel above the CPU's level (forced by hand) steps to the CPU's own */
    lk_cpu_info haswell = cpu_of("GenuineIntel", 6, 60, avx2_cpu);
    expect_kernel(lk_blas_safer_kernel(&haswell, "SkylakeX"), "Haswell");
    expect_kernel(lk_blas_safer_kernel(&haswell, "Zen5"), "Haswell");
    /* any start ends at NULL */
    int steps = 0;
    for (const char *k = "Zen5"; k && steps < 10; k = lk_blas_safer_kernel(&xeon, k))
        steps++;
    cr_expect_lt(steps, 10);
}

Test(blas, describes_the_library) {
    lk_blas_info info;
    lk_blas_describe(&info);
    cr_expect_str_eq(info.library, "OpenBLAS");
    cr_expect(strchr(info.version, '.') != NULL, "version \"%s\"", info.version);
    cr_expect_neq(info.kernel[0], '\0');
    cr_expect_geq(info.threads, 1);
}

/* ---- the self-check ----------------------------------------------------- */

Test(selfcheck, passes_on_the_library) {
    char why[512] = "";
    cr_expect_eq(lk_blas_selfcheck(NULL, why, sizeof why), 0, "%s", why);
    cr_expect_eq(lk_blas_selfcheck(lk_blas_sgemm, why, sizeof why), 0, "%s", why);
}

/* Each of these is the library's sgemm with one kind of fault a broken
 * kernel has: a wrong entry, beta ignored or always 1, a partial tile left
 * out, a write past the last column, a row stride ignored. */
static void one_entry_off(bool bt, int M, int N, int K, float beta, const float *a, int lda,
                          const float *b, int ldb, float *c, int ldc) {
    lk_blas_sgemm(bt, M, N, K, beta, a, lda, b, ldb, c, ldc);
    c[(size_t)(M / 2) * ldc + N / 2] += 1e-3f;
}

static void beta_ignored(bool bt, int M, int N, int K, float beta, const float *a, int lda,
                         const float *b, int ldb, float *c, int ldc) {
    (void)beta;
    lk_blas_sgemm(bt, M, N, K, 0.0f, a, lda, b, ldb, c, ldc);
}

static void beta_always_one(bool bt, int M, int N, int K, float beta, const float *a, int lda,
                            const float *b, int ldb, float *c, int ldc) {
    (void)beta;
    lk_blas_sgemm(bt, M, N, K, 1.0f, a, lda, b, ldb, c, ldc);
}

static void last_row_skipped(bool bt, int M, int N, int K, float beta, const float *a, int lda,
                             const float *b, int ldb, float *c, int ldc) {
    if (M > 1) lk_blas_sgemm(bt, M - 1, N, K, beta, a, lda, b, ldb, c, ldc);
}

static void writes_past_n(bool bt, int M, int N, int K, float beta, const float *a, int lda,
                          const float *b, int ldb, float *c, int ldc) {
    lk_blas_sgemm(bt, M, N, K, beta, a, lda, b, ldb, c, ldc);
    if (ldc > N) c[N] = 0.0f;
}

static void lda_ignored(bool bt, int M, int N, int K, float beta, const float *a, int lda,
                        const float *b, int ldb, float *c, int ldc) {
    (void)lda;
    lk_blas_sgemm(bt, M, N, K, beta, a, K, b, ldb, c, ldc);
}

Test(selfcheck, fails_on_each_wrong_product) {
    struct {
        const char *fault;
        lk_sgemm_fn *sgemm;
        const char *why_contains;
    } faults[] = {
        {"one entry off by 1e-3", one_entry_off, "exact product"},
        {"beta ignored", beta_ignored, "beta 1"},
        {"beta always 1", beta_always_one, "beta 0"},
        {"the last row left out", last_row_skipped, "exact product"},
        {"a write past the last column", writes_past_n, "past its"},
        {"lda ignored", lda_ignored, "exact product"},
    };
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++) {
        char why[512] = "";
        cr_expect_eq(lk_blas_selfcheck(faults[i].sgemm, why, sizeof why), -1,
                     "the self-check missed: %s", faults[i].fault);
        cr_expect(strstr(why, faults[i].why_contains) != NULL, "%s: why = \"%s\"", faults[i].fault,
                  why);
    }
}
