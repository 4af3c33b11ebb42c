"""lensd on the GPU vs lensd on the CPU: every fixture case, every hook point.

The CPU backend is itself held to TransformerLens by tests/parity (which can
also run on the GPU: LENSD_DEVICE=cuda:0). Here each case of the fixture
manifest (nine models, both processing modes, padded batches, the
flag-gated hook points) runs through `lensd cache` on --device cpu and
--device $LENSD_GPU (default cuda:0), and every tensor must agree within
the parity suite's float32 tolerance (tests/parity/conftest.py explains
it: 1e-4 relative to the tensor's scale; -inf and the -1e5 pad-key score
at exactly the same places). On the first case of each model, a run with
--logits-only --repeat 3 exercises the recorded (CUDA graph) path, first
recording then replaying, and one with --last-logits its row gather.

Without a GPU (or a lensd built without CUDA) every test is skipped with
"skipped: no GPU" and the reason; the summary counts them as skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "parity"))
import tl_parity as parity  # noqa: E402  (the parity suite's tolerance and fixtures)

GPU = os.environ.get("LENSD_GPU", "cuda:0")
CASES = parity.load_manifest()["cases"]


def lensd_bin() -> str:
    path = os.environ.get("LENSD_BIN")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"LENSD_BIN={path!r} is not an executable file", pytrace=False)
    return path


_gpu_state: dict = {}


def require_gpu() -> None:
    """Skips the calling test, loudly, unless lensd can open the GPU."""
    if "reason" not in _gpu_state:
        model = parity.fixtures_dir() / "models" / "native-attnonly"
        proc = subprocess.run([lensd_bin(), "info", "--model", str(model), "--device", GPU],
                              capture_output=True, text=True, timeout=120)
        _gpu_state["reason"] = None if proc.returncode == 0 else proc.stderr.strip()
        if _gpu_state["reason"]:
            print(f"\nskipped: no GPU: {_gpu_state['reason']}", file=sys.stderr)
    if _gpu_state["reason"]:
        pytest.skip(f"skipped: no GPU: {_gpu_state['reason']}")


def run_cache(model: Path, args: list[str], device: str, out: Path) -> dict[str, np.ndarray]:
    cmd = [lensd_bin(), "cache", "--model", str(model), "--device", device, *args, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"lensd failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}",
                    pytrace=False)
    return load_file(str(out))


def compare(cpu: dict[str, np.ndarray], gpu: dict[str, np.ndarray]) -> list[str]:
    problems = []
    if cpu.keys() != gpu.keys():
        problems.append(f"tensor names differ: cpu only {sorted(cpu.keys() - gpu.keys())}, "
                        f"gpu only {sorted(gpu.keys() - cpu.keys())}")
    for name in sorted(cpu.keys() & gpu.keys()):
        a, b = cpu[name], gpu[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{name}: cpu {a.dtype}{list(a.shape)}, gpu {b.dtype}{list(b.shape)}")
        elif a.dtype.kind != "f":
            if not np.array_equal(a, b):
                problems.append(f"{name}: {int((a != b).sum())} entries differ")
        else:
            sentinel = parity.PAD_KEY_SCORE if name.endswith("hook_attn_scores") else None
            msgs = parity.float_error(a, b, sentinel)[0]
            problems += [f"{name}: {m}".replace("TL", "cpu").replace("lensd", "gpu") for m in msgs]
    return problems


FIRST_OF_MODEL = list({c["model"]: c for c in reversed(CASES)}.values())
RUNS = [(c, "cache") for c in CASES] + [(c, mode) for c in FIRST_OF_MODEL
                                        for mode in ("logits-replayed", "last-logits")]


@pytest.mark.parametrize("case,mode", RUNS, ids=[f"{c['id']}/{m}" for c, m in RUNS])
def test_gpu_matches_cpu(case, mode, tmp_path):
    require_gpu()
    extra = {"cache": [],
             "logits-replayed": ["--logits-only", "--repeat", "3"],
             "last-logits": ["--last-logits", "--logits-only"]}[mode]
    model = parity.fixtures_dir() / case["model"]
    cpu = run_cache(model, case["args"] + extra, "cpu", tmp_path / "cpu.safetensors")
    gpu = run_cache(model, case["args"] + extra, GPU, tmp_path / "gpu.safetensors")
    problems = compare(cpu, gpu)
    if problems:
        pytest.fail(f"{case['id']} {mode} (args {case['args'] + extra}):\n  " + "\n  ".join(problems),
                    pytrace=False)
