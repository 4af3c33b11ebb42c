"""Padding never changes a real position's numbers.

For causal models, every activation of a prompt run inside a padded batch
(right padding, TL's default, and left padding with TL's attention mask and
shifted positions) equals, at the prompt's real positions, the activation of
the prompt run alone — within the parity tolerance, since a batch changes
the GEMM blocking. Attention tensors are compared on the real query x key
block.
"""

from __future__ import annotations

import numpy as np
import pytest
from tl_parity import float_error
from safetensors.numpy import load_file

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "Hi", "The cat sat"]


def real_slice(name: str, arr: np.ndarray, row: int, start: int, length: int) -> np.ndarray:
    """The part of a batch activation that belongs to row's real tokens."""
    if name.endswith(("hook_attn_scores", "hook_pattern")):
        return arr[row, :, start:start + length, start:start + length]
    return arr[row, start:start + length]


@pytest.mark.parametrize("model", ["gpt2-a", "neo"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_leaves_real_positions_alone(model, side, fixtures, run_lensd, tmp_path):
    model_dir = fixtures / "models" / model
    batch_out = tmp_path / "batch.safetensors"
    args = ["--padding-side", side]
    for p in PROMPTS:
        args += ["--prompt", p]
    run_lensd(model_dir, args, batch_out)
    batch = load_file(str(batch_out))
    T = batch["tokens"].shape[1]
    problems = []
    for row, prompt in enumerate(PROMPTS):
        alone_out = tmp_path / f"alone{row}.safetensors"
        run_lensd(model_dir, ["--prompt", prompt], alone_out)
        alone = load_file(str(alone_out))
        length = alone["tokens"].shape[1]
        start = T - length if side == "left" else 0
        assert np.array_equal(batch["tokens"][row, start:start + length], alone["tokens"][0])
        for name, ref in alone.items():
            if name == "tokens":
                continue
            got = real_slice(name, batch[name], row, start, length)
            msgs, *_ = float_error(ref[0], got)
            problems += [f"prompt {row} {name}: {m}" for m in msgs]
    assert not problems, "\n".join(problems[:20])
