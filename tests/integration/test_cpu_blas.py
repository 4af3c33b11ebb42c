"""The BLAS kernel lensd runs on this machine's CPU, and lensd's own product
kernel: chosen at start, checked, and reported by `lensd info`, the start-up
log, /v1/models and /metrics.

The CPU is read from /proc/cpuinfo here, independently of lensd's cpuid
reader. A test that needs AVX2 or AVX-512 (or a CPU without FMA4) skips,
saying so, on a machine without it.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from lensd_http import model_path, run_cli

AVX512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
# OpenBLAS 0.3.x's x86-64 kernels by the instructions their sgemm needs
AVX512_KERNELS = {"SkylakeX", "Cooperlake", "SapphireRapids"}
AVX2_KERNELS = {"Haswell", "Zen", "Excavator"} | AVX512_KERNELS


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def info(lensd_bin: str, **env_changes) -> tuple[dict, str]:
    """`lensd info` on the brackets fixture with the environment changed
    (None removes a variable): its device entry and its stderr."""
    env = dict(os.environ)
    for key in ("OPENBLAS_CORETYPE", "LENSD_BLAS_CHOICE", "LENSD_BLAS_REASON", "LENSD_GEMM_KERNEL"):
        env.pop(key, None)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    proc = run_cli(lensd_bin, ["info", "--model", str(model_path("brackets"))], env=env)
    return json.loads(proc.stdout)["device"], proc.stderr


def test_kernel_uses_the_cpus_widest_vectors(lensd_bin):
    flags = cpu_flags()
    device, _ = info(lensd_bin)
    blas = device["blas"]
    assert blas["library"] == "OpenBLAS" and re.fullmatch(r"\d+\.\d+\.\d+", blas["version"])
    assert blas["self_check"] == "passed"
    assert blas["threads"] == os.cpu_count()
    if AVX512 <= flags:
        assert blas["kernel"] in AVX512_KERNELS, blas
    elif {"avx2", "fma"} <= flags:
        assert blas["kernel"] in AVX2_KERNELS, blas
    else:
        pytest.skip(f"skipped: this CPU has neither AVX2 nor AVX-512 (lensd runs {blas['kernel']})")


def test_features_are_the_cpus(lensd_bin):
    flags = cpu_flags()
    if not flags:
        pytest.skip("skipped: no x86 flags line in /proc/cpuinfo")
    device, _ = info(lensd_bin)
    named = {"sse3": "pni"}
    reported = {named.get(f, f) for f in device["cpu"]["features"]}
    known = {"pni", "avx", "fma", "avx2", "avx512_bf16", "amx_tile", "amx_bf16"} | AVX512
    assert reported == flags & known


def test_kernel_set_by_the_user_is_kept(lensd_bin):
    if not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("skipped: this CPU has no AVX2, which the Haswell kernel needs")
    device, _ = info(lensd_bin, OPENBLAS_CORETYPE="Haswell")
    assert device["blas"]["kernel"] == "Haswell"
    assert device["blas"]["kernel_choice"].startswith("set by OPENBLAS_CORETYPE=Haswell")
    assert device["blas"]["self_check"] == "passed"


def test_a_kernel_that_crashes_is_replaced(lensd_bin):
    """OpenBLAS's Bulldozer kernel uses AMD's FMA4, which no Intel CPU and no
    Zen has: its first product dies of SIGILL, in the self-check's child."""
    if "fma4" in cpu_flags():
        pytest.skip("skipped: this CPU has FMA4, so the Bulldozer kernel runs on it")
    device, stderr = info(lensd_bin, OPENBLAS_CORETYPE="Bulldozer")
    blas = device["blas"]
    assert blas["kernel"] != "Bulldozer" and blas["self_check"] == "passed"
    assert "Bulldozer failed the self-check" in blas["kernel_choice"]
    assert "signal 4" in blas["kernel_choice"]
    assert "BLAS kernel Bulldozer failed its self-check" in stderr


def test_a_kernel_openblas_does_not_know(lensd_bin):
    device, _ = info(lensd_bin, OPENBLAS_CORETYPE="NoSuchKernel")
    assert device["blas"]["kernel_choice"] == (
        "OpenBLAS's own: it did not accept OPENBLAS_CORETYPE=NoSuchKernel")


def test_own_product_kernel_is_the_widest_the_cpu_runs(lensd_bin):
    flags = cpu_flags()
    gemm = info(lensd_bin)[0]["gemm"]
    want = "avx512" if "avx512f" in flags and "fma" in flags else (
        "avx2" if {"avx2", "fma"} <= flags else "openblas")
    assert gemm == {"kernel": want, "choice": "the best this CPU runs",
                    "max_rows": {"avx512": 512, "avx2": 8, "openblas": 0}[want]}


def test_own_product_kernel_set_by_the_user(lensd_bin):
    gemm = info(lensd_bin, LENSD_GEMM_KERNEL="openblas")[0]["gemm"]
    assert gemm == {"kernel": "openblas", "choice": "set by LENSD_GEMM_KERNEL=openblas",
                    "max_rows": 0}
    gemm = info(lensd_bin, LENSD_GEMM_KERNEL="sse9")[0]["gemm"]
    assert gemm["choice"] == ("the best this CPU runs; LENSD_GEMM_KERNEL=sse9 is none of "
                              "openblas, avx2, avx512")
    if "avx512f" not in cpu_flags():
        gemm = info(lensd_bin, LENSD_GEMM_KERNEL="avx512")[0]["gemm"]
        assert gemm["choice"] == "the best this CPU runs; it cannot run LENSD_GEMM_KERNEL=avx512"


def test_daemon_reports_the_kernel(lensd, get):
    line = lensd.wait_log(r"lensd: cpu: .*BLAS: OpenBLAS \S+, kernel (\S+) \(.*self-check passed")
    kernel = line.group(1)
    status, _, body = get("/v1/models")
    assert status == 200
    for entry in json.loads(body)["models"]:
        assert entry["device"]["blas"]["kernel"] == kernel
    status, _, body = get("/metrics")
    metric = re.search(r'^lensd_cpu_info\{(.*)\} 1$', body.decode(), re.M)
    assert metric, body.decode()[-2000:]
    assert f'blas_kernel="{kernel}"' in metric.group(1)
    assert f'blas_threads="{os.cpu_count()}"' in metric.group(1)
    assert re.search(r'gemm_kernel="(avx512|avx2|openblas)"', metric.group(1))
    assert re.search(r"self-check passed; own products of up to \d+ rows: (avx512|avx2|openblas) \(",
                     lensd.log_text())
