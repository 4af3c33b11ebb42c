"""What the parity suites share: the tolerance and its comparison, the
fixture manifest (built by tools/make_fixtures.py when stale), and helpers for
the daemon's endpoints. Imported by the tests as `tl_parity` (a name of its
own: several test folders have a conftest.py).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
sys.path.insert(0, str(TOOLS))

import make_fixtures  # noqa: E402

LENSD_TIMEOUT_S = 600
DEVICE = os.environ.get("LENSD_DEVICE", "cpu")

# Tolerance. Both sides compute in float32, but with different kernels: the
# dot products behind every activation (d_model, d_mlp, d_vocab terms, about
# 10^2-10^3 of them here) are summed in different orders and blockings, and
# the rounding of such a sum differs by a few ulps times sqrt(terms), i.e.
# ~1e-6 relative per op, growing through the layers and LayerNorm's division.
# 1e-4 relative to the tensor's scale (absolute below scale 1, where
# cancellation makes relative error meaningless) leaves two orders of margin
# over that while still catching any real bug (a wrong mask, scale or fold
# shows up at 1e-2 or worse).
RTOL = 1e-4
# ARENA's pad-key hook writes exactly this score; it must be reproduced bit for bit.
PAD_KEY_SCORE = -100000.0


def float_error(ref, got, sentinel: float | None = None) -> tuple[list[str], float, float, float]:
    """Compare float arrays of equal shape.

    Returns (problems, max abs error over finite entries, max |ref| over
    finite entries, bound). Non-finite entries (-inf of masked scores, +inf,
    NaN) and the sentinel value must sit at exactly the same places on both
    sides; they take no part in the error or the scale.
    """
    import numpy as np

    problems = []
    special = ~np.isfinite(ref)
    for label, mask_of in (("-inf", np.isneginf), ("+inf", np.isposinf), ("nan", np.isnan)):
        a, b = mask_of(ref), mask_of(got)
        if not np.array_equal(a, b):
            problems.append(f"{label} positions differ ({int(a.sum())} in TL, {int(b.sum())} in lensd, "
                            f"{int((a ^ b).sum())} mismatched)")
    if sentinel is not None:
        a, b = ref == sentinel, got == sentinel
        if not np.array_equal(a, b):
            problems.append(f"{sentinel} positions differ ({int(a.sum())} in TL, {int(b.sum())} in lensd)")
        special |= a
    finite = ~special & np.isfinite(got)
    if not finite.any():
        return problems, 0.0, 0.0, RTOL
    diff = np.abs(ref[finite].astype(np.float64) - got[finite].astype(np.float64))
    err = float(diff.max())
    ref_max = float(np.abs(ref[finite]).max())
    bound = RTOL * max(1.0, ref_max)
    if err > bound:
        where = np.unravel_index(np.flatnonzero(finite)[int(diff.argmax())], ref.shape)
        problems.append(f"max abs error {err:.3g} > {bound:.3g} at {tuple(int(i) for i in where)}")
    return problems, err, ref_max, bound


def fixtures_dir() -> Path:
    return Path(os.environ.get("LENSD_FIXTURES", REPO / "build" / "fixtures")).resolve()


def fresh_manifest(root: Path, generator, script: str, what: str) -> dict:
    """root's manifest.json, first (re)building root with tools/SCRIPT when it is
    missing or its generator_hash is not generator.generator_hash()."""
    path = root / "manifest.json"
    want = generator.generator_hash()
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if manifest.get("generator_hash") != want:
        print(f"\nbuilding {what} in {root} ...", file=sys.stderr)
        subprocess.run([sys.executable, str(TOOLS / script), str(root)], check=True)
        manifest = json.loads(path.read_text())
        assert manifest["generator_hash"] == want
    return manifest


@functools.cache
def load_manifest() -> dict:
    """The fixture manifest, building the fixtures first when missing or stale."""
    return fresh_manifest(fixtures_dir(), make_fixtures, "make_fixtures.py", "parity fixtures")


DAEMON_MODELS = ["gpt2-a", "neo", "native-gelu", "native-attnonly"]
# what the session daemon serves: those, and the bracket classifier (test_patch)
SERVED_MODELS = DAEMON_MODELS + ["brackets"]


def daemon_post(url: str, path: str, body: dict) -> dict:
    """POSTs JSON and returns the JSON answer (fails the test on an error status)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        return json.load(urllib.request.urlopen(request, timeout=LENSD_TIMEOUT_S))
    except urllib.error.HTTPError as e:
        pytest.fail(f"POST {path}: {e.code} {e.read().decode()}", pytrace=False)


def daemon_request(url: str, path: str, body: dict) -> tuple[int, dict]:
    """POSTs JSON; returns (HTTP status, JSON answer), error statuses included."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=LENSD_TIMEOUT_S) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or "{}")


def serve_models(lensd_bin: str, models: dict[str, Path]):
    """A generator for a fixture: starts `lensd serve` on a free port with `models`
    ({name: directory}) on DEVICE, yields its URL once /readyz answers, and stops
    it at the end (SIGTERM; the exit status must be 0). The session daemon
    (conftest.daemon) serves the fixture models; this serves any others."""
    import tempfile
    import time
    import urllib.request

    args = [lensd_bin, "serve", "--port", "0", "--device", DEVICE]
    for name, path in models.items():
        args += ["--model", f"{name}={path}"]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            line = proc.stdout.readline()
            url = line.split()[-1] if line.strip() else ""
            deadline = time.monotonic() + LENSD_TIMEOUT_S
            while True:
                try:
                    with urllib.request.urlopen(url + "/readyz", timeout=5):
                        break
                except (OSError, ValueError):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        log.seek(0)
                        pytest.fail(f"lensd serve did not become ready: {' '.join(args)}\n"
                                    f"{log.read()[-4000:]}", pytrace=False)
                    time.sleep(0.1)
            yield url
        finally:
            if proc.poll() is None:
                proc.terminate()
            code = proc.wait(timeout=60)
        assert code == 0, f"lensd serve exited with {code}"


def tl_model(fixtures: Path, name: str):
    """The HookedTransformer of fixture model `name`, processed as lensd loads it by default."""
    import tl_native as tn

    model_dir = fixtures / "models" / name
    if (model_dir / "tl_config.json").exists():
        return tn.build_native_tl(tn.load_native(model_dir))
    return tn.build_hf_tl(model_dir, tn.parse_processing("default"))
