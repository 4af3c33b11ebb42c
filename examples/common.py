"""What the examples share: their command line, the TransformerLens model of
the same files (for --compare), and the comparison of their numbers.

Each example is one seed notebook's workflow, twice: ``run(model)`` on lensd
through the Python client, and ``run_with_transformer_lens(model)``, the
notebook's own TransformerLens code. Both return the same named numbers;
``--compare DIR`` runs the second on the model files lensd serves and checks
that they agree.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "clients" / "python"))

import lensd  # noqa: E402

# float32 on both sides, summed in different orders: the parity suites' bound
# (tests/parity/tl_parity.py), |lensd - TL| <= RTOL * max(1, max |TL|) per result.
RTOL = 1e-5

Results = dict[str, Any]


def transformer_lens_model(model_dir: str | Path, processing: str):
    """TransformerLens 3.9's HookedTransformer of a model directory, offline,
    processed as ``processing`` says (lensd's spelling: "default", "none" or
    a comma list of steps), as from_pretrained would build it."""
    sys.path.insert(0, str(REPO / "tools"))
    import tl_native

    model_dir = Path(model_dir)
    flags = tl_native.parse_processing(processing)
    if (model_dir / "tl_config.json").exists():
        return tl_native.build_native_tl(tl_native.load_native(model_dir), flags)
    return tl_native.build_hf_tl(model_dir, flags)


class Tolerances(NamedTuple):
    """How an example's results that are not plain activations are compared.

    scale_of: result -> the result holding the magnitudes of the terms it
        sums: a sum or difference of many terms carries their float32
        error, which cancellation does not shrink, so its error is measured
        against those magnitudes rather than its own.
    rtol_of: result -> a function of TransformerLens's results giving its
        relative tolerance (a least-squares fit moves by up to its condition
        number times the relative change of its inputs).
    Results whose names start with "_" feed these and are not compared.
    """

    scale_of: Mapping[str, str] = {}
    rtol_of: Mapping[str, Callable[[Results], float]] = {}


def compare(ours: Mapping[str, Any], theirs: Mapping[str, Any],
            tolerances: Tolerances = Tolerances()) -> float:
    """Checks every result of lensd's run against TransformerLens's: numbers
    within RTOL of the larger of 1 and the reference's largest magnitude
    (unless tolerances say otherwise), labels and token lists equal. Prints
    one line per result; returns the worst error relative to its tolerance's
    scale. Raises AssertionError naming those that disagree."""
    assert sorted(ours) == sorted(theirs), (sorted(ours), sorted(theirs))
    worst, failures = 0.0, []
    for name in (name for name in ours if not name.startswith("_")):
        got, want = ours[name], theirs[name]
        if isinstance(want, (str, list, tuple)) and not _numeric(want):
            ok = list(got) == list(want) if not isinstance(want, str) else got == want
            print(f"  {name:36} {'same' if ok else 'DIFFERENT'}")
            if not ok:
                failures.append(f"{name}: {got!r} != {want!r}")
            continue
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            failures.append(f"{name}: shape {got.shape} != {want.shape}")
            continue
        scale_name = tolerances.scale_of.get(name)
        reference = np.asarray(theirs[scale_name]) if scale_name else want
        scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
        rtol = tolerances.rtol_of[name](theirs) if name in tolerances.rtol_of else RTOL
        error = float(np.abs(got - want).max(initial=0.0)) / scale
        worst = max(worst, error)
        print(f"  {name:36} {str(list(want.shape)):12} max |lensd - ref| / scale = {error:.2e}"
              f" (tolerance {rtol:.1e})")
        if not error <= rtol:
            failures.append(f"{name}: relative error {error:.3g} > {rtol:.3g}")
    assert not failures, "lensd and TransformerLens disagree:\n  " + "\n  ".join(failures)
    return worst


def _numeric(value: Any) -> bool:
    return bool(np.asarray(value).dtype.kind in "biuf")


def main(description: str, run: Callable[..., Results],
         run_with_transformer_lens: Callable[..., Results], processing: str,
         default_model: str, tolerances: Tolerances = Tolerances(),
         build_reference: Callable[[str, str], Any] = transformer_lens_model,
         argv: list[str] | None = None) -> Results:
    """The examples' command line: runs ``run`` on lensd's model, and with
    ``--compare PATH`` the notebook's own code on what build_reference(PATH,
    processing) gives (by default TransformerLens's model of the directory
    lensd serves), and compares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", default=os.environ.get("LENSD_URL", "http://127.0.0.1:8080"),
                        help="the lensd daemon (default: $LENSD_URL or http://127.0.0.1:8080)")
    parser.add_argument("--model", default=default_model, help="the served model's name")
    parser.add_argument("--token", default=os.environ.get("LENSD_TOKEN"), help="a bearer token")
    parser.add_argument("--compare", metavar="PATH",
                        help="the model's files: run the notebook's own code on them and compare")
    args = parser.parse_args(argv)
    with lensd.Client(args.url, token=args.token) as client:
        ours = run(client.model(args.model, processing=processing))
    if args.compare:
        import torch

        with torch.no_grad():
            theirs = run_with_transformer_lens(build_reference(args.compare, processing))
        print("lensd against the notebook's own code:")
        compare(ours, theirs, tolerances)
    return ours
