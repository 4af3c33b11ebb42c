"""Shared setup of the parity suite: fixtures, the lensd binary, the parity table.

Environment:
  LENSD_BIN          the lensd executable (required: the suite fails without it)
  LENSD_FIXTURES     fixture directory (default build/fixtures); rebuilt with
                     tools/make_fixtures.py unless its manifest carries the
                     current generator hash
  LENSD_PARITY_TABLE where the parity table goes (default build/parity_table.md)
  LENSD_DEVICE       run lensd on this device (cpu, cuda:0; default cpu), so the
                     same references check the GPU backend
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
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


_manifest: dict | None = None


def load_manifest() -> dict:
    """The fixture manifest, building the fixtures first when missing or stale."""
    global _manifest
    if _manifest is None:
        root = fixtures_dir()
        path = root / "manifest.json"
        want = make_fixtures.generator_hash()
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        if manifest.get("generator_hash") != want:
            print(f"\nbuilding parity fixtures in {root} ...", file=sys.stderr)
            subprocess.run([sys.executable, str(TOOLS / "make_fixtures.py"), str(root)], check=True)
            manifest = json.loads(path.read_text())
            assert manifest["generator_hash"] == want
        _manifest = manifest
    return _manifest


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = load_manifest()["cases"]
        metafunc.parametrize("case", cases, ids=[c["id"] for c in cases])


@pytest.fixture(scope="session")
def fixtures() -> Path:
    load_manifest()
    return fixtures_dir()


@pytest.fixture(scope="session")
def lensd_bin() -> str:
    path = os.environ.get("LENSD_BIN")
    if not path:
        pytest.fail("LENSD_BIN is not set: point it at the lensd executable (e.g. build/lensd). "
                    "The parity suite never skips.", pytrace=False)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"LENSD_BIN={path!r} is not an executable file", pytrace=False)
    return path


@pytest.fixture(scope="session")
def run_lensd(lensd_bin):
    """run_lensd(model_dir, args, out_path) -> seconds; fails the test on a non-zero exit."""

    def run(model: Path, args: list[str], out: Path, timeout: int = LENSD_TIMEOUT_S) -> float:
        cmd = [lensd_bin, "cache", "--model", str(model), "--device", DEVICE, *args, "--out", str(out)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0 or not out.is_file():
            pytest.fail(f"lensd failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                        f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}", pytrace=False)
        return elapsed

    return run


class ParityTable:
    """Rows (case, hook kind, max abs error, ...) written as markdown at session end."""

    def __init__(self):
        self.rows: dict[tuple[str, str], dict] = {}
        self.notes: list[str] = []

    @staticmethod
    def hook_kind(name: str) -> str:
        return re.sub(r"^blocks\.\d+\.", "blocks.L.", name)

    def add(self, case: str, name: str, err: float, ref_max: float, bound: float) -> None:
        key = (case, self.hook_kind(name))
        row = self.rows.setdefault(key, {"err": 0.0, "ref_max": 0.0, "ratio": 0.0})
        row["err"] = max(row["err"], err)
        row["ref_max"] = max(row["ref_max"], ref_max)
        row["ratio"] = max(row["ratio"], err / bound if bound else 0.0)

    def write(self, path: Path) -> None:
        if not self.rows and not self.notes:
            return
        by_model: dict[tuple[str, str], dict] = {}
        for (case, kind), r in self.rows.items():
            agg = by_model.setdefault((case.split("/")[0], kind), {"err": 0.0, "ratio": 0.0, "cases": 0})
            agg["err"] = max(agg["err"], r["err"])
            agg["ratio"] = max(agg["ratio"], r["ratio"])
            agg["cases"] += 1
        lines = ["# lensd vs TransformerLens parity", "",
                 "max abs err: max |lensd - TL| over finite entries of every tensor of that kind "
                 "(all layers); err/tol: the largest ratio to that tensor's bound "
                 "1e-4 * max(1, max|TL|) (must be <= 1).", "",
                 "## By model (all cases of the model: processing modes, padding, flags)", "",
                 "| model | hook kind | cases | max abs err | err/tol |", "|---|---|---:|---:|---:|"]
        for (model, kind), r in sorted(by_model.items()):
            lines.append(f"| {model} | {kind} | {r['cases']} | {r['err']:.3g} | {r['ratio']:.3g} |")
        lines += ["", "## By case", "",
                  "| case | hook kind | max abs err | max abs TL | err/tol |",
                  "|---|---|---:|---:|---:|"]
        for (case, kind), r in sorted(self.rows.items()):
            lines.append(f"| {case} | {kind} | {r['err']:.3g} | {r['ref_max']:.3g} | {r['ratio']:.3g} |")
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def parity_table():
    table = ParityTable()
    yield table
    table.write(Path(os.environ.get("LENSD_PARITY_TABLE", REPO / "build" / "parity_table.md")))


# ---- the daemon, for the endpoints that only it answers -------------------

DAEMON_MODELS = ["gpt2-a", "neo", "native-gelu", "native-attnonly"]


@pytest.fixture(scope="session")
def daemon(fixtures, lensd_bin):
    """URL of a `lensd serve` on a free port with DAEMON_MODELS (by their
    fixture names), stopped (SIGTERM, exit 0) at the end."""
    import urllib.request

    args = [lensd_bin, "serve", "--port", "0", "--device", DEVICE]
    for name in DAEMON_MODELS:
        args += ["--model", f"{name}={fixtures / 'models' / name}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = proc.stdout.readline().split()[-1]
    deadline = time.monotonic() + LENSD_TIMEOUT_S
    while True:
        try:
            urllib.request.urlopen(url + "/readyz", timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("lensd serve did not become ready", pytrace=False)
            time.sleep(0.1)
    yield url
    proc.terminate()
    assert proc.wait(timeout=60) == 0


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


def tl_model(fixtures: Path, name: str):
    """The HookedTransformer of fixture model `name`, processed as lensd loads it by default."""
    import tl_native as tn

    model_dir = fixtures / "models" / name
    if (model_dir / "tl_config.json").exists():
        return tn.build_native_tl(tn.load_native(model_dir))
    return tn.build_hf_tl(model_dir, tn.parse_processing("default"))
