"""`lensd cache --repeat N --timings`: the JSON line benchmarks read.

bench/bench_cache.py, bench_gpu.py and profile_gemm.py time lensd with it and
treat the first forward as the warm-up, so its fields must say exactly that.
"""

from __future__ import annotations

import json
import statistics
import subprocess


def timings_of(lensd_bin, model, repeat, tmp_path) -> dict:
    proc = subprocess.run([lensd_bin, "cache", "--model", str(model), "--prompt", "Hi there",
                           "--logits-only", "--repeat", str(repeat), "--timings",
                           "--out", str(tmp_path / "out.safetensors")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stderr
    return json.loads(lines[0])


def test_first_forward_is_the_warm_up(lensd_bin, models, tmp_path):
    t = timings_of(lensd_bin, models["gpt2"], 6, tmp_path)
    runs = t["forward_ms"]
    assert t["repeat"] == 6 and len(runs) == 6 and all(ms > 0 for ms in runs)
    assert t["forward_ms_first"] == runs[0]
    # median of the 5 runs after the first (odd count: the middle one), and their min
    assert t["forward_ms_median"] == statistics.median(runs[1:])
    assert t["forward_ms_min"] == min(runs[1:])
    assert t["load_ms"] > 0 and t["write_ms"] >= 0 and t["total_ms"] >= t["load_ms"]


def test_one_run_is_its_own_median(lensd_bin, models, tmp_path):
    t = timings_of(lensd_bin, models["gpt2"], 1, tmp_path)
    assert len(t["forward_ms"]) == 1
    assert t["forward_ms_first"] == t["forward_ms_median"] == t["forward_ms_min"] == t["forward_ms"][0]
