/*
 * startup.h: the lensd process before any work: the settings its libraries
 * read when they load, the BLAS kernel chosen and checked, and what was
 * found, for the log, `lensd info`, /v1/models and /metrics.
 */
#ifndef LENS_SRV_STARTUP_H
#define LENS_SRV_STARTUP_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "kernels/lk.h"

typedef struct srv_host {
    lk_cpu_info cpu;
    lk_blas_info blas;        /* as it runs, with the CPU backend's threads set */
    char kernel_choice[1024]; /* who chose blas.kernel, and why */
    char self_check[256];     /* "passed", or what failed first (then a safer kernel runs) */
    lk_gemm_kernel gemm;      /* lensd's own product kernel (lk_matmul's) */
    char gemm_choice[160];    /* who chose it, and why */
} srv_host;

/* Prepares the process; call first in main with main's argv. Sets, where the
 * user has not, OMP_WAIT_POLICY=PASSIVE (libgomp's spinning workers take the
 * cores BLAS needs) and, when OpenBLAS fell back to a kernel older than the
 * CPU (lk_blas_preferred_kernel), OPENBLAS_CORETYPE; both are read only when
 * the libraries load, so lensd then restarts itself once with them (execv of
 * /proc/self/exe). OPENBLAS_CORETYPE set by the user is kept. Then checks
 * the kernel that runs (lk_blas_selfcheck, in a child process, so that one
 * that crashes counts as failing): on a failure it logs why and restarts
 * with a safer kernel (lk_blas_safer_kernel); when none is left it exits
 * with status 1 and the reason, since every result would be wrong. Chooses
 * lensd's own product kernel: LENSD_GEMM_KERNEL (openblas, avx2, avx512)
 * where set and the CPU runs it, else the best one the CPU runs. Sets the
 * CPU backend's threads to the machine's cores. Returns in the process that
 * goes on. */
void srv_prepare_process(char **argv);

/* What srv_prepare_process found. Valid after it returned. */
const srv_host *srv_host_get(void);

/* One line for the start-up log: CPU, features, BLAS library, version,
 * kernel and why, threads, self-check. */
void srv_host_log(FILE *out);

/* {"cpu": {...}, "blas": {...}} for a CPU device's entry, or NULL when out
 * of memory. The caller owns it. */
json_t *srv_host_json(void);

#endif
