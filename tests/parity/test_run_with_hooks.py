"""POST /run_with_hooks against TransformerLens's run_with_hooks.

Each case is a list of interventions sent to the daemon and the same
interventions written as TransformerLens hook functions; the logits (and a
captured activation downstream of the interventions) must agree within the
parity tolerance. Covers every op (zero, mean over the batch, set, add,
scale, patch from another run) with position and head restrictions.
"""

from __future__ import annotations

import numpy as np
import pytest
from tl_parity import daemon_post, float_error, tl_model

MODEL = "gpt2-a"
B, T = 3, 8


def tl_hook(op, positions=None, heads=None, value=None, factor=None, source=None):
    """A TransformerLens hook function doing what the daemon's op does."""
    import torch

    def selected(act, axis, indices):
        """A mask over act that is true at indices of axis (everywhere when None)."""
        if indices is None:
            return torch.ones(act.shape, dtype=torch.bool)
        m = torch.zeros(act.shape[axis], dtype=torch.bool)
        m[indices] = True
        shape = [1] * act.ndim
        shape[axis] = -1
        return m.view(shape).expand(act.shape)

    def hook(act, hook):
        pos_axis = 2 if hook.name.endswith(("hook_pattern", "hook_attn_scores")) else 1
        head_axis = 1 if pos_axis == 2 else 2
        index = selected(act, pos_axis, positions) & selected(act, head_axis, heads)
        new = act.clone()
        if op == "zero":
            new[index] = 0.0
        elif op == "mean":
            new = torch.where(index, act.mean(0, keepdim=True).expand_as(act), act)
        elif op == "set":
            new = torch.where(index, torch.tensor(value, dtype=act.dtype).expand_as(act), act)
        elif op == "add":
            new = torch.where(index, act + torch.tensor(value, dtype=act.dtype), act)
        elif op == "scale":
            new = torch.where(index, act * factor, act)
        elif op == "patch":
            new = torch.where(index, source[hook.name].expand_as(act), act)
        return new

    return hook


CASES = {
    "zero-head-positions": [{"name": "blocks.0.attn.hook_z", "op": "zero", "heads": [1, 3],
                             "positions": [2, 5]}],
    "mean-mlp-out": [{"name": "blocks.0.hook_mlp_out", "op": "mean"}],
    "set-scalar-resid": [{"name": "blocks.1.hook_resid_pre", "op": "set", "value": 0.5,
                          "positions": [-1]}],
    "add-vector": [{"name": "blocks.1.hook_resid_mid", "op": "add", "value": "vector"}],
    "scale-pattern": [{"name": "blocks.1.attn.hook_pattern", "op": "scale", "factor": 0.25,
                       "heads": [0]}],
    "patch-two-hooks": [{"name": "blocks.1.hook_resid_pre", "op": "patch", "positions": [3]},
                        {"name": "blocks.0.attn.hook_v", "op": "patch", "heads": [2]}],
}


@pytest.mark.parametrize("scenario", CASES, ids=list(CASES))
def test_run_with_hooks_matches_transformer_lens(daemon, fixtures, scenario):
    import torch

    model = tl_model(fixtures, MODEL)
    rng = np.random.default_rng(11)
    tokens = rng.integers(0, model.cfg.d_vocab, size=(B, T))
    source_tokens = rng.integers(0, model.cfg.d_vocab, size=(B, T))
    vector = rng.standard_normal(model.cfg.d_model).astype(np.float32)
    hooks = []
    for h in CASES[scenario]:
        h = dict(h)
        if h.get("value") == "vector":
            h["value"] = vector.tolist()
        hooks.append(h)
    body = {"tokens": tokens.tolist(), "hooks": hooks,
            "names": ["ln_final.hook_normalized"], "patch_from": {"tokens": source_tokens.tolist()}}
    got = daemon_post(daemon, f"/v1/models/{MODEL}/run_with_hooks", body)

    with torch.no_grad():
        _, source_cache = model.run_with_cache(torch.tensor(source_tokens))
        fwd_hooks = []
        for h in hooks:
            positions = [p % T for p in h["positions"]] if "positions" in h else None
            fwd_hooks.append((h["name"], tl_hook(h["op"], positions, h.get("heads"), h.get("value"),
                                                 h.get("factor"), source_cache)))
        captured = {}
        fwd_hooks.append(("ln_final.hook_normalized",
                          lambda act, hook: captured.__setitem__("n", act.clone())))
        logits = model.run_with_hooks(torch.tensor(tokens), fwd_hooks=fwd_hooks)
    problems = []
    for name, want in (("logits", logits.numpy()), ("ln_final.hook_normalized", captured["n"].numpy())):
        have = np.array(got[name]["data"], dtype=np.float32)
        problems += [f"{name}: {p}" for p in float_error(want, have)[0]]
    # and the interventions changed something
    plain = daemon_post(daemon, f"/v1/models/{MODEL}/logits", {"tokens": tokens.tolist()})
    assert not np.allclose(np.array(plain["logits"]["data"]), np.array(got["logits"]["data"])), \
        "the interventions left the logits as they were"
    assert not problems, f"{scenario}: " + "; ".join(problems)
