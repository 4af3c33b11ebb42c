"""Where lensd's CPU forward goes: its cblas_sgemm calls by shape, against torch's for the same products.

    ~/.cache/lensd/venv/bin/python bench/profile_gemm.py [--shape smollm2-135m] [--rows 1x16,8x16]
        [--full-cache] [--repeat 10] [--lensd BIN] [--workdir DIR] [--wait-idle S]

For each row (batch x tokens, the token ids of bench_cache.py's row):

1. `lensd cache --repeat N --timings` as bench_cache.py runs it (logits only,
   or --full-cache): forward_ms_median;
2. the same command with an LD_PRELOAD shim around cblas_sgemm (C source
   below, built with gcc into WORKDIR/profile/): the time and count of every
   product lensd calls, by shape, per forward. The products of the batch's
   B*T rows are the weight products (and the unembed); the rest are the
   attention's per-head products (scores and z);
3. the same weight products, in the same order and each with its own weight
   matrix (as in a forward, the weights stream from memory), through the
   OpenBLAS that lensd links (ctypes, called as lensd calls it: row-major,
   no transposes) and through torch (F.linear on [out, in] weights, the
   layout TransformerLens and the bridge use: MKL here), median of N.

The difference between 3's two columns is what the BLAS library alone
costs lensd on this CPU; 1 minus 2's total is lensd's own code (norms,
rotary, softmax, activations, the capture copies). Nothing is downloaded;
the model is bench_cache.py's (made when missing).
"""

import argparse
import ctypes
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cache  # noqa: E402

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
typedef void (*fn_t)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                     float, float *, int);
static fn_t real;
#define TAB 4096
static uint64_t keys[TAB], ns[TAB], cnt[TAB];
static uint64_t now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}
void cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    if (!real) real = (fn_t)dlsym(RTLD_NEXT, "cblas_sgemm");
    uint64_t t0 = now();
    real(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    uint64_t d = now() - t0;
    uint64_t key = 1 + (((uint64_t)M << 44) ^ ((uint64_t)N << 24) ^ ((uint64_t)K << 4) ^
                        (uint64_t)(tb == 112 ? 2 : 0) ^ (uint64_t)(beta != 0.0f));
    for (unsigned h = (unsigned)((key * 0x9E3779B97F4A7C15ull) >> 52) % TAB;; h = (h + 1) % TAB) {
        uint64_t k = __atomic_load_n(&keys[h], __ATOMIC_ACQUIRE);
        if (k == 0) {
            uint64_t z = 0;
            if (!__atomic_compare_exchange_n(&keys[h], &z, key, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) &&
                z != key)
                continue;
            k = key;
        }
        if (k == key) {
            __atomic_add_fetch(&ns[h], d, __ATOMIC_RELAXED);
            __atomic_add_fetch(&cnt[h], 1, __ATOMIC_RELAXED);
            break;
        }
    }
}
__attribute__((destructor)) static void dump(void) {
    const char *path = getenv("SGEMM_SHIM_OUT");
    if (!path) return;
    char p[4096];
    snprintf(p, sizeof p, "%s.%d", path, (int)getpid());
    FILE *f = fopen(p, "w");
    if (!f) return;
    for (int i = 0; i < TAB; i++)
        if (keys[i]) {
            uint64_t k = keys[i] - 1;
            fprintf(f, "%llu %llu %llu %d %d %llu %llu\n", (unsigned long long)(k >> 44),
                    (unsigned long long)((k >> 24) & 0xFFFFF), (unsigned long long)((k >> 4) & 0xFFFFF),
                    (int)((k >> 1) & 1), (int)(k & 1), (unsigned long long)cnt[i], (unsigned long long)ns[i]);
        }
    fclose(f);
}
"""


def openblas_of(lensd: Path) -> Path:
    out = subprocess.run(["ldd", str(lensd)], capture_output=True, text=True).stdout
    m = re.search(r"libopenblas[^ ]*\s+=>\s+(\S+)", out)
    if not m:
        sys.exit(f"{lensd} does not link OpenBLAS (ldd: {out.strip()})")
    return Path(m.group(1))


def build_shim(dest: Path, openblas: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    src, so = dest / "sgemm_shim.c", dest / "sgemm_shim.so"
    src.write_text(SHIM_C)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl",
                    f"-L{openblas.parent}", "-lopenblas"], check=True)
    return so


def lensd_cmd(lensd, model_dir, tokens, full, n, out):
    cmd = [str(lensd), "cache", "--model", str(model_dir), *bench_cache.tokens_args(tokens)]
    if not full:
        cmd.append("--logits-only")
    return cmd + ["--out", str(out), "--repeat", str(n), "--timings"]


def timings(p) -> dict:
    lines = [line for line in p.stderr.splitlines() if line.startswith("{")]
    if p.returncode != 0 or not lines:
        sys.exit(f"lensd failed ({p.returncode}): {p.stderr.strip()}")
    return json.loads(lines[-1])


def shim_products(lensd, model_dir, tokens, full, n, out, shim: Path, scratch: Path):
    """[(M, N, K, b_transposed, beta1, calls per forward, ms per forward)] and the forward ms."""
    for f in glob.glob(str(scratch / "shim.*")):
        os.unlink(f)
    env = dict(os.environ, LD_PRELOAD=str(shim), SGEMM_SHIM_OUT=str(scratch / "shim"))
    p = subprocess.run(lensd_cmd(lensd, model_dir, tokens, full, n, out), env=env,
                       capture_output=True, text=True)
    t = timings(p)
    # lensd's BLAS self-check runs in a child process (its own, smaller file); the forward's is the largest.
    files = sorted(glob.glob(str(scratch / "shim.*")), key=os.path.getsize)
    rows = []
    for line in Path(files[-1]).read_text().split("\n"):
        if line:
            M, N, K, tb, beta, c, ns = map(int, line.split())
            rows.append((M, N, K, tb, beta, c / n, ns / 1e6 / n))
    return rows, t


def perf_symbols(cmd, scratch: Path, label: str, limit: float = 0.5) -> list:
    """`perf record` of cmd: the share of CPU samples per (library, symbol) above limit percent
    (the load, about one forward's time, is in them too)."""
    data = scratch / "perf.data"
    subprocess.run(["perf", "record", "-q", "-F", "999", "-o", str(data), *cmd], check=True,
                   capture_output=True)
    rep = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,symbol",
                          "--stdio", "-q", "--percent-limit", str(limit)], capture_output=True,
                         text=True).stdout
    lines = [f"{label}: perf, share of CPU samples (>= {limit}%):"]
    for line in rep.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(\S+)", line)
        if m:
            lines.append(f"  {float(m.group(1)):5.1f}%  {m.group(2)}  {m.group(3)}")
    return lines


def replay(products, reps: int, openblas: Path):
    """The weight products (M, K, N, calls), each call its own weight: (OpenBLAS ms, torch ms), medians."""
    import torch

    lib = ctypes.CDLL(str(openblas))
    sgemm = lib.cblas_sgemm
    fp = ctypes.POINTER(ctypes.c_float)
    rng = np.random.default_rng(0)
    calls = []
    for M, K, N, c in products:
        for _ in range(int(round(c))):
            w = rng.standard_normal((K, N), dtype=np.float32)
            calls.append((M, K, N, w, torch.from_numpy(np.ascontiguousarray(w.T))))
    xs = {(M, K): rng.standard_normal((M, K), dtype=np.float32) for M, K, _, _, _ in calls}
    xt = {k: torch.from_numpy(v) for k, v in xs.items()}
    outs = {(M, N): np.empty((M, N), np.float32) for M, _, N, _, _ in calls}

    def run_openblas():
        for M, K, N, w, _ in calls:
            sgemm(101, 111, 111, M, N, K, ctypes.c_float(1.0), xs[(M, K)].ctypes.data_as(fp), K,
                  w.ctypes.data_as(fp), N, ctypes.c_float(0.0), outs[(M, N)].ctypes.data_as(fp), N)

    def run_torch():
        for M, K, N, _, wt in calls:
            torch.nn.functional.linear(xt[(M, K)], wt)

    res = []
    with torch.inference_mode():
        for fn in (run_openblas, run_torch):
            fn()
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t) * 1e3)
            res.append(statistics.median(ts))
    return res


def measure(args, lensd, model_dir, tokens, out, shim, scratch, openblas, d_head, rows) -> dict:
    """One row: lensd's forward, its products through the shim, their replay; and the other load."""
    load = bench_cache.OtherLoad()
    plain = timings(subprocess.run(lensd_cmd(lensd, model_dir, tokens, args.full_cache, args.repeat, out),
                                   capture_output=True, text=True))
    prods, _ = shim_products(lensd, model_dir, tokens, args.full_cache, args.repeat, out, shim, scratch)
    # The attention's per-head products: scores (q k^T, b transposed) and z (pattern v, N = d_head).
    attn = [p for p in prods if p[3] or p[1] == d_head or p[0] != rows]
    weights = [p for p in prods if p not in attn]
    ob_ms, torch_ms = replay([(M, K, N, c) for M, N, K, _, _, c, _ in weights], args.repeat, openblas)
    return {"fwd": plain["forward_ms_median"], "load_ms": plain["load_ms"], "prods": prods,
            "w_ms": sum(p[6] for p in weights), "a_ms": sum(p[6] for p in attn),
            "ob_ms": ob_ms, "torch_ms": torch_ms, "other": load.cpus()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="smollm2-135m", choices=bench_cache.ALL_MODELS)
    ap.add_argument("--rows", default="1x16,8x16", help="comma list of BxT")
    ap.add_argument("--full-cache", action="store_true", help="full cache instead of logits only")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--lensd", help="the lensd binary (default build/server/lensd, or $LENSD_BIN)")
    ap.add_argument("--workdir", type=Path, default=REPO / "build" / "bench")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each row, wait up to S seconds for other processes to leave the CPUs")
    ap.add_argument("--attempts", type=int, default=3,
                    help="with --wait-idle, measurements of a row at most, the least disturbed kept")
    ap.add_argument("--perf", action="store_true",
                    help="also `perf record` each row (--repeat runs) and list where lensd's CPU samples "
                    "fall outside OpenBLAS's kernels")
    args = ap.parse_args()
    workdir = args.workdir.resolve()
    lensd = bench_cache.find_lensd(args.lensd)
    model_dir = bench_cache.make_model(workdir, args.shape, args.seed)
    scratch = workdir / "profile"
    openblas = openblas_of(lensd)
    shim = build_shim(scratch, openblas)
    out = scratch / "row.safetensors"
    info = json.loads(subprocess.run([str(lensd), "info", "--model", str(model_dir)], capture_output=True,
                                     text=True, check=True).stdout)
    d_head = info["config"]["d_head"]
    import torch

    print(f"cpu: {bench_cache.cpu_model()}\nlensd's BLAS: {bench_cache.lensd_blas(lensd, model_dir)} "
          f"({openblas})\ntorch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}\n", flush=True)
    table = [f"### lensd's sgemm calls on the {args.shape} shape "
             f"({'full cache' if args.full_cache else 'logits only'}), ms per forward", "",
             "| row | lensd forward | its sgemm: weight products | its sgemm: attention | lensd's own code "
             "| same weight products, OpenBLAS (lensd's calls) | same, torch F.linear | other CPUs busy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    details = []
    for row in args.rows.split(","):
        B, T = (int(x) for x in row.split("x"))
        tokens = bench_cache.model_tokens(args.shape, B, T, seed=args.seed * 1000 + T * 10 + B)
        best = None
        for attempt in range(args.attempts if args.wait_idle else 1):
            if args.wait_idle:
                bench_cache.wait_idle(args.wait_idle)
            got = measure(args, lensd, model_dir, tokens, out, shim, scratch, openblas, d_head, B * T)
            if best is None or got["other"] < best["other"]:
                best = got
            if best["other"] <= 0.2:
                break
            print(f"  {B}x{T}: other processes used {got['other']:.2f} CPUs", file=sys.stderr, flush=True)
        fwd, w_ms, a_ms, prods = best["fwd"], best["w_ms"], best["a_ms"], best["prods"]
        table.append(f"| {B}x{T} | {fwd:.1f} | {w_ms:.1f} | {a_ms:.1f} | {fwd - w_ms - a_ms:.1f} "
                     f"| {best['ob_ms']:.1f} | {best['torch_ms']:.1f} | {best['other']:.2f} |")
        details += [f"{B}x{T}: lensd's products per forward (M N K, b transposed, calls, ms, GFLOP/s):"]
        for M, N, K, tb, beta, c, ms in sorted(prods, key=lambda p: -p[6]):
            details.append(f"  {M:5d} {N:6d} {K:5d} {'T' if tb else 'N'}{' beta 1' if beta else ''} "
                           f"x{c:.0f}: {ms:.2f} ms, {2 * M * N * K * c / ms / 1e6:.0f} GFLOP/s")
        print(table[-1], flush=True)
        if args.perf:
            # Enough runs that the load (plan_run, fold_norm, ...) is under a tenth of the samples.
            n_perf = max(args.repeat, int(10 * best["load_ms"] / fwd) + 1)
            if args.wait_idle:
                bench_cache.wait_idle(args.wait_idle)
            load = bench_cache.OtherLoad()
            lines = perf_symbols(lensd_cmd(lensd, model_dir, tokens, args.full_cache, n_perf, out),
                                 scratch, f"{B}x{T} ({n_perf} forwards)")
            lines[0] = lines[0][:-1] + f", other CPUs busy {load.cpus():.2f}):"
            details += lines
    print("\n".join(table + [""] + details))


if __name__ == "__main__":
    main()
