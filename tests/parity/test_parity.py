"""lensd cache vs TransformerLens run_with_cache, one test per fixture case.

Each case (tools/make_fixtures.py, manifest.json) names a model, the lensd
CLI arguments and a reference file TL wrote. lensd must produce the same
tensor names, shapes and dtypes, identical tokens, and every float tensor
within the tolerance of conftest.float_error.
"""

from __future__ import annotations

import numpy as np
import pytest
from tl_parity import PAD_KEY_SCORE, float_error
from safetensors.numpy import load_file


def align_signs(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], groups: list[list[str]]) -> dict:
    """Copy of got with sign-free components flipped to match ref.

    groups: hook suffixes (e.g. ["attn.hook_q", "attn.hook_k"]) whose
    tensors [batch, pos, head, d_head] TL fixes only up to one sign per
    (layer, head, component) shared by the group (refactored attention
    weights come from SVDs whose signs LAPACK chooses). The sign is taken
    from the whole group's agreement with ref; a member that flips on its
    own, or any other error, still fails the comparison.
    """
    got = dict(got)
    layers = sorted({int(n.split(".")[1]) for n in ref if n.startswith("blocks.")})
    for group in groups:
        for layer in layers:
            names = [f"blocks.{layer}.{suffix}" for suffix in group]
            names = [n for n in names if n in ref and n in got and ref[n].shape == got[n].shape]
            if not names:
                continue
            agreement = sum((ref[n].astype(np.float64) * got[n]).sum(axis=(0, 1)) for n in names)
            sign = np.where(agreement < 0, -1.0, 1.0).astype(np.float32)
            for n in names:
                got[n] = got[n] * sign
    return got


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], case_id: str, table,
            sign_free: list[list[str]] = ()) -> list[str]:
    """All differences between a reference and a lensd output, as messages."""
    problems = []
    if sign_free:
        got = align_signs(ref, got, sign_free)
    missing, extra = sorted(ref.keys() - got.keys()), sorted(got.keys() - ref.keys())
    if missing:
        problems.append(f"missing in lensd output ({len(missing)}): {missing}")
    if extra:
        problems.append(f"extra in lensd output ({len(extra)}): {extra}")
    for name in sorted(ref.keys() & got.keys()):
        a, b = ref[name], got[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{name}: TL {a.dtype}{list(a.shape)}, lensd {b.dtype}{list(b.shape)}")
            continue
        if a.dtype.kind != "f":
            if not np.array_equal(a, b):
                diff = np.argwhere(a != b)
                problems.append(f"{name}: {len(diff)} entries differ, first at {tuple(diff[0])}: "
                                f"TL {a[tuple(diff[0])]}, lensd {b[tuple(diff[0])]}")
            continue
        sentinel = PAD_KEY_SCORE if name.endswith("hook_attn_scores") else None
        msgs, err, ref_max, bound = float_error(a, b, sentinel)
        table.add(case_id, name, err, ref_max, bound)
        problems += [f"{name}: {m}" for m in msgs]
    return problems


def test_parity(case, fixtures, run_lensd, parity_table, tmp_path):
    out = tmp_path / "lensd.safetensors"
    run_lensd(fixtures / case["model"], case["args"], out)
    ref = load_file(str(fixtures / case["reference"]))
    got = load_file(str(out))
    problems = compare(ref, got, case["id"], parity_table, case.get("sign_free", []))
    if problems:
        pytest.fail(f"{case['id']} ({case['produced_by']}; args {case['args']}):\n  " + "\n  ".join(problems),
                    pytrace=False)
