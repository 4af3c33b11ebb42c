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

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tl_parity import (  # noqa: E402
    SERVED_MODELS,
    DEVICE,
    LENSD_TIMEOUT_S,
    REPO,
    fixtures_dir,
    load_manifest,
)


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


@pytest.fixture(scope="session")
def daemon(fixtures, lensd_bin):
    """URL of a `lensd serve` on a free port with SERVED_MODELS (by their
    fixture names), stopped (SIGTERM, exit 0) at the end."""
    import urllib.request

    args = [lensd_bin, "serve", "--port", "0", "--device", DEVICE]
    for name in SERVED_MODELS:
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


