/*
 * startup.c: the lensd process before any work (startup.h).
 *
 * libgomp and OpenBLAS read their settings from the environment when they
 * load, before main(): lensd decides what it wants, sets it and runs itself
 * again — at most once in the normal case, once more per kernel a failed
 * self-check rules out. Variables lensd sets carry a note of their own
 * (LENSD_BLAS_CHOICE, LENSD_BLAS_REASON), so that the next process can tell
 * lensd's choice from the user's, says why in its log and never loops.
 */
#include "server/startup.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

static srv_host host;

/* The kernel lensd set last and why (the user sets OPENBLAS_CORETYPE alone). */
#define CHOICE_VAR "LENSD_BLAS_CHOICE"
#define REASON_VAR "LENSD_BLAS_REASON"

/* Runs argv again as this executable with the environment as it is now.
 * Returns only when that fails. */
static void restart(char **argv) {
    execv("/proc/self/exe", argv);
}

static void choose_kernel(const char *kernel, const char *reason) {
    setenv("OPENBLAS_CORETYPE", kernel, 1);
    setenv(CHOICE_VAR, kernel, 1);
    setenv(REASON_VAR, reason, 1);
}

/* The self-check in a child process: 0 when it passed, else -1 with why
 * (the first wrong entry, or the signal the kernel died of). */
static int selfcheck_isolated(char *why, size_t why_len) {
    int fds[2];
    if (pipe(fds) != 0) return lk_blas_selfcheck(NULL, why, why_len);
    fflush(NULL);
    pid_t child = fork();
    if (child < 0) {
        close(fds[0]);
        close(fds[1]);
        return lk_blas_selfcheck(NULL, why, why_len);
    }
    if (child == 0) {
        close(fds[0]);
        char reason[512] = "";
        int rc = lk_blas_selfcheck(NULL, reason, sizeof reason);
        if (rc != 0 && write(fds[1], reason, strlen(reason)) < 0) rc = -1;
        _exit(rc == 0 ? 0 : 1);
    }
    close(fds[1]);
    size_t got = 0;
    for (ssize_t n; got + 1 < why_len && (n = read(fds[0], why + got, why_len - 1 - got)) != 0;) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        got += (size_t)n;
    }
    why[got] = '\0';
    close(fds[0]);
    int status;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        continue;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    if (WIFSIGNALED(status))
        snprintf(why, why_len, "sgemm crashed with signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else if (!why[0])
        snprintf(why, why_len, "the self-check process failed");
    return -1;
}

/* lensd's own product kernel: the user's (LENSD_GEMM_KERNEL) where the
 * CPU runs it, else the best the CPU runs. */
static void choose_gemm_kernel(void) {
    const lk_gemm_kernel best = lk_gemm_best(&host.cpu);
    const char *asked = getenv("LENSD_GEMM_KERNEL");
    host.gemm = best;
    snprintf(host.gemm_choice, sizeof host.gemm_choice, "the best this CPU runs");
    for (lk_gemm_kernel k = LK_GEMM_OPENBLAS; asked && k <= LK_GEMM_AVX512; k++) {
        if (strcasecmp(asked, lk_gemm_name(k)) != 0) continue;
        if (k <= best) {
            host.gemm = k;
            snprintf(host.gemm_choice, sizeof host.gemm_choice, "set by LENSD_GEMM_KERNEL=%s",
                     asked);
        } else {
            snprintf(host.gemm_choice, sizeof host.gemm_choice,
                     "the best this CPU runs; it cannot run LENSD_GEMM_KERNEL=%s", asked);
        }
        asked = NULL;
    }
    if (asked)
        snprintf(host.gemm_choice, sizeof host.gemm_choice,
                 "the best this CPU runs; LENSD_GEMM_KERNEL=%.40s is none of openblas, "
                 "avx2, avx512",
                 asked);
    lk_gemm_choose(host.gemm);
}

void srv_prepare_process(char **argv) {
    lk_cpu_identify(&host.cpu);
    lk_blas_info loaded;
    lk_blas_describe(&loaded);
    const char *running = loaded.kernel;
    const char *forced = getenv("OPENBLAS_CORETYPE"), *choice = getenv(CHOICE_VAR);
    const bool lensd_forced = forced && choice && strcasecmp(forced, choice) == 0;

    bool again = false;
    if (!getenv("OMP_WAIT_POLICY")) {
        /* a forward ran 5x slower on a shared 2-core machine with spinning workers */
        setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
        again = true;
    }
    const char *better = forced ? NULL : lk_blas_preferred_kernel(&host.cpu, running);
    if (better) {
        char features[256], reason[384];
        lk_cpu_feature_list(host.cpu.features, features, sizeof features);
        snprintf(reason, sizeof reason,
                 "chosen by lensd: OpenBLAS picked %s, older than this CPU (%s)", running,
                 features);
        choose_kernel(better, reason);
        again = true;
    }
    if (again) restart(argv); /* on failure, go on as the process is */

    if (lensd_forced && strcasecmp(running, forced) != 0)
        snprintf(host.kernel_choice, sizeof host.kernel_choice,
                 "OpenBLAS's own: it did not accept %s, which lensd asked for", forced);
    else if (lensd_forced)
        snprintf(host.kernel_choice, sizeof host.kernel_choice, "%s",
                 getenv(REASON_VAR) ? getenv(REASON_VAR) : "chosen by lensd");
    else if (forced && strcasecmp(running, forced) != 0)
        snprintf(host.kernel_choice, sizeof host.kernel_choice,
                 "OpenBLAS's own: it did not accept OPENBLAS_CORETYPE=%s", forced);
    else if (forced && lk_blas_preferred_kernel(&host.cpu, running))
        snprintf(host.kernel_choice, sizeof host.kernel_choice,
                 "set by OPENBLAS_CORETYPE=%s; this CPU could run %s", forced,
                 lk_blas_preferred_kernel(&host.cpu, running));
    else if (forced)
        snprintf(host.kernel_choice, sizeof host.kernel_choice, "set by OPENBLAS_CORETYPE=%s",
                 forced);
    else
        snprintf(host.kernel_choice, sizeof host.kernel_choice, "OpenBLAS's own");

    char why[512];
    if (selfcheck_isolated(why, sizeof why) != 0) {
        const char *safer = lk_blas_safer_kernel(&host.cpu, running);
        if (!safer) {
            fprintf(stderr,
                    "lensd: the BLAS library computes wrong matrix products on this CPU, even "
                    "with its generic kernel %s: %s\n",
                    running, why);
            exit(1);
        }
        fprintf(stderr, "lensd: warning: BLAS kernel %s failed its self-check (%s); using %s\n",
                running, why, safer);
        char reason[768];
        snprintf(reason, sizeof reason, "chosen by lensd: %s failed the self-check: %s", running,
                 why);
        choose_kernel(safer, reason);
        restart(argv);
        fprintf(stderr, "lensd: cannot restart with a safer BLAS kernel: %s\n", strerror(errno));
        exit(1);
    }
    snprintf(host.self_check, sizeof host.self_check, "passed");
    choose_gemm_kernel();
    lk_set_threads(0);
    lk_blas_describe(&host.blas);
}

const srv_host *srv_host_get(void) {
    return &host;
}

void srv_host_log(FILE *out) {
    char features[256];
    lk_cpu_feature_list(host.cpu.features, features, sizeof features);
    fprintf(out,
            "lensd: cpu: %s (%s family %d model %d; %s); BLAS: %s %s, kernel %s (%s), %s, %d "
            "thread%s, self-check %s; own products of up to %d rows: %s (%s)\n",
            host.cpu.name[0] ? host.cpu.name : "unknown", host.cpu.vendor, host.cpu.family,
            host.cpu.model, features[0] ? features : "no SIMD features", host.blas.library,
            host.blas.version, host.blas.kernel, host.kernel_choice, host.blas.threading,
            host.blas.threads, host.blas.threads == 1 ? "" : "s", host.self_check,
            lk_gemm_max_rows(host.gemm), lk_gemm_name(host.gemm), host.gemm_choice);
}

json_t *srv_host_json(void) {
    json_t *features = json_array();
    for (unsigned bit = 1; features && lk_cpu_feature_name(bit); bit <<= 1)
        if (host.cpu.features & bit)
            json_array_append_new(features, json_string(lk_cpu_feature_name(bit)));
    return json_pack(
        "{s:{s:s, s:s, s:i, s:i, s:i, s:o*}, s:{s:s, s:s, s:s, s:s, s:s, s:i, s:s}, "
        "s:{s:s, s:s, s:i}}",
        "cpu", "name", host.cpu.name, "vendor", host.cpu.vendor, "family", host.cpu.family, "model",
        host.cpu.model, "stepping", host.cpu.stepping, "features", features, "blas", "library",
        host.blas.library, "version", host.blas.version, "kernel", host.blas.kernel,
        "kernel_choice", host.kernel_choice, "threading", host.blas.threading, "threads",
        host.blas.threads, "self_check", host.self_check, "gemm", "kernel", lk_gemm_name(host.gemm),
        "choice", host.gemm_choice, "max_rows", lk_gemm_max_rows(host.gemm));
}
