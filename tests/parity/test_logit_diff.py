"""POST /logit_diff against TransformerLens: the logit difference and its
attribution, as ActivationCache computes them.

For a batch of equal-length prompts (so that TL's pos_slice=-1 and lensd's
"each prompt's last real token" are the same position) and one answer pair
per prompt, TransformerLens gives

- logits[b, -1, answer] - logits[b, -1, wrong];
- cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1),
  cache.decompose_resid(layer=-1, pos_slice=-1) and
  cache.stack_head_results(layer=-1, pos_slice=-1), each through
  cache.logit_attrs(stack, tokens=answer, incorrect_tokens=wrong,
  pos_slice=-1) (which applies apply_ln_to_stack with the cached final
  scale), with their labels;

and the daemon must give the same labels and values within the parity
tolerance (conftest.float_error: 1e-4 relative to the tensor's scale).
"""

from __future__ import annotations

import numpy as np
import pytest
from tl_parity import DAEMON_MODELS, daemon_post, float_error, tl_model

@pytest.mark.parametrize("name", DAEMON_MODELS)
def test_logit_diff_matches_transformer_lens(daemon, fixtures, name):
    import torch

    model = tl_model(fixtures, name)
    cfg = model.cfg
    rng = np.random.default_rng(7)
    B, T = 3, 9
    tokens = rng.integers(0, cfg.d_vocab, size=(B, T))
    pairs = rng.integers(0, cfg.d_vocab_out, size=(B, 2))
    body = {"tokens": tokens.tolist(), "answers": pairs.tolist(),
            "attribution": ["accumulated_resid", "decompose_resid", "heads"]}
    got = daemon_post(daemon, f"/v1/models/{name}/logit_diff", body)

    with torch.no_grad():  # not inference_mode: logit_attrs builds tensors autograd sees
        logits, cache = model.run_with_cache(torch.tensor(tokens))
        answer, wrong = torch.tensor(pairs[:, 0]), torch.tensor(pairs[:, 1])
        want_diff = (logits[torch.arange(B), -1, answer] - logits[torch.arange(B), -1, wrong]).detach().numpy()
        problems = float_error(want_diff, np.array(got["logit_diff"], dtype=np.float32))[0]
        stacks = {
            "accumulated_resid": cache.accumulated_resid(layer=-1, incl_mid=not cfg.attn_only,
                                                         pos_slice=-1, return_labels=True),
            "decompose_resid": cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True),
            "heads": cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True),
        }
        for key, (stack, labels) in stacks.items():
            want = cache.logit_attrs(stack, tokens=answer, incorrect_tokens=wrong, pos_slice=-1).detach().numpy()
            assert got[key]["labels"] == list(labels), key
            values = np.array(got[key]["per_prompt"], dtype=np.float32)
            problems += [f"{key}: {p}" for p in float_error(want, values)[0]]
    assert not problems, f"{name}: " + "; ".join(problems)
