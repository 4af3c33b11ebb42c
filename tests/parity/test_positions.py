"""`lensd cache --positions` keeps what run_with_cache(pos_slice=...) keeps,
and `--last-logits` gives the logits at each prompt's last real token.

The reference is TL's full cache from the fixtures, sliced with TL's own
Slice the way HookedRootModule.get_caching_hooks slices it: the third axis
from the end for q, k, v, z and result, the second from the end for
everything else (for attention scores and patterns, the query axis). Where
that rule lands on another axis than the position — the head axis of the
[batch, pos, head, d] split-input hooks (and of ln1 under split inputs),
where TL slices heads or fails, and the batch axis of hook_tokens — lensd
slices the position axis, and the reference is sliced there too.
"""

from __future__ import annotations

import numpy as np
import pytest
from tl_parity import PAD_KEY_SCORE, float_error, load_manifest
from safetensors.numpy import load_file

POSITIONS = [0, -1, 2]
CASES = ["gpt2-a/default/batch-right", "native-attnonly/model/batch-right",
         "gpt2-a/default+all-hook-flags/batch-left", "neo/none/batch-left", "brackets/course/batch20"]


def case_by_id(case_id: str) -> dict:
    return next(c for c in load_manifest()["cases"] if c["id"] == case_id)


SPLIT_INPUT = ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input")


def tl_pos_slice(name: str, tensor: np.ndarray, positions: list[int]) -> np.ndarray:
    import torch
    from transformer_lens.utilities import Slice

    pos_dim = -3 if name.endswith(("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")) else -2
    if name.endswith(SPLIT_INPUT) or name == "hook_tokens" or (".ln1." in name and tensor.ndim == 4):
        pos_dim = 1  # lensd's deliberate difference: the position axis, not TL's pick
    return Slice(positions).apply(torch.from_numpy(tensor), dim=pos_dim).numpy()


@pytest.mark.parametrize("case_id", CASES)
def test_positions_match_tl_pos_slice(case_id, fixtures, run_lensd, tmp_path):
    case = case_by_id(case_id)
    out = tmp_path / "pos.safetensors"
    run_lensd(fixtures / case["model"],
              case["args"] + ["--positions", ",".join(map(str, POSITIONS))], out)
    ref, got = load_file(str(fixtures / case["reference"])), load_file(str(out))
    assert ref.keys() == got.keys()
    problems = []
    for name, full in ref.items():
        if name == "tokens":
            assert np.array_equal(full, got[name]), name
            continue
        want = full if name == "logits" else tl_pos_slice(name, full, POSITIONS)
        if name == "hook_tokens":
            assert np.array_equal(want, got[name]), name
            continue
        if want.shape != got[name].shape:
            problems.append(f"{name}: TL {want.shape}, lensd {got[name].shape}")
            continue
        sentinel = PAD_KEY_SCORE if name.endswith("hook_attn_scores") else None
        msgs, *_ = float_error(want, got[name], sentinel)
        problems += [f"{name}: {m}" for m in msgs]
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize("case_id", ["gpt2-a/default/single", "gpt2-a/default/batch-left",
                                     "neo/default/batch-left"])
def test_last_logits(case_id, fixtures, run_lensd, tmp_path):
    """Left padding and single prompts end every row at the last position."""
    case = case_by_id(case_id)
    out = tmp_path / "last.safetensors"
    run_lensd(fixtures / case["model"], case["args"] + ["--last-logits", "--logits-only"], out)
    ref, got = load_file(str(fixtures / case["reference"])), load_file(str(out))
    assert got["logits"].shape == (ref["logits"].shape[0], ref["logits"].shape[2])
    msgs, *_ = float_error(ref["logits"][:, -1], got["logits"])
    assert not msgs, msgs
