#!/usr/bin/env python3
"""Seed 002, ARENA's "Balanced bracket classifier" (1.5.1), on lensd: a
three-layer bidirectional classifier, read at its [start] token, traced back
to the components that push it towards "unbalanced".

The exercises' steps, each one call: the classifier's accuracy on the first
5,000 strings (one request: lensd pads the whole batch and masks [pad] keys
as the course's permanent hooks do); the post-final-LN "unbalanced"
direction from W_U; the final LayerNorm fitted as a linear map on cached
activations, which gives the pre-LN direction; the output of every
component (embeddings, each head's hook_result, each MLP) at [start]
projected on it; and head 2.0's OV circuit as a FactoredMatrix.

    python examples/bracket_classifier.py --url http://127.0.0.1:8080 --model brackets
    python examples/bracket_classifier.py --model brackets --compare MODEL_DIR

The strings come from $LENSD_BRACKETS_DATA (default:
../shared/data/arena-brackets/brackets_data.json beside the repository).
"""

from __future__ import annotations

import json
import os

import numpy as np

from common import REPO, RTOL, Results, Tolerances, main

PROCESSING = "none"  # the course loads the state dict as saved
N_SAMPLES = 5000


def dataset() -> tuple[list[str], np.ndarray]:
    """The course's first N_SAMPLES strings and whether each is balanced."""
    path = os.environ.get("LENSD_BRACKETS_DATA",
                          REPO.parent / "shared" / "data" / "arena-brackets" / "brackets_data.json")
    with open(path) as f:
        pairs = json.load(f)[:N_SAMPLES]
    return [s for s, _ in pairs], np.array([b for _, b in pairs], dtype=bool)


def ln_fit(inputs: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Least squares with an intercept, as sklearn's LinearRegression fits the
    final LayerNorm: inputs, outputs [n, d] -> (coefficients [d_out, d_in],
    r^2 averaged over outputs as sklearn's score, the fit's condition number)."""
    design = np.concatenate([inputs, np.ones((len(inputs), 1))], axis=1).astype(np.float64)
    solution, _, _, singular_values = np.linalg.lstsq(design, outputs.astype(np.float64), rcond=None)
    residual = outputs - design @ solution
    r2 = 1 - (residual ** 2).sum(0) / ((outputs - outputs.mean(0)) ** 2).sum(0)
    return solution[:-1].T, float(r2.mean()), float(singular_values[0] / singular_values[-1])


# The fitted direction moves by up to the fit's condition number times the
# relative change of its float32 inputs.
TOLERANCES = Tolerances(rtol_of={"pre_final_ln_dir": lambda tl: RTOL * tl["_ln_fit_condition"]})


def component_magnitudes(components: np.ndarray, unbalanced_dir: np.ndarray,
                         balanced: np.ndarray) -> np.ndarray:
    """[components, batch, d_model] at [start] -> [components, batch]: the
    projection on the unbalanced direction, less its mean over balanced strings."""
    magnitudes = components @ unbalanced_dir
    return magnitudes - magnitudes[:, balanced].mean(-1, keepdims=True)


def run(model) -> Results:
    """The exercises on lensd."""
    strings, balanced = dataset()
    # [batch, 1, 2]: position 0 of each string, the whole set in one request
    logits = model(strings, positions=[0])[:, 0]
    accuracy = float((logits.argmax(-1) == balanced).mean())
    print(f"accuracy on the first {N_SAMPLES} strings: {accuracy:.2%}")

    post_final_ln_dir = model.W_U[:, 0] - model.W_U[:, 1]  # [d_model]: towards "unbalanced"
    names = ["hook_embed", "hook_pos_embed", "ln_final.hook_normalized",
             f"blocks.{model.cfg.n_layers - 1}.hook_resid_post",
             "blocks.*.attn.hook_result", "blocks.*.hook_mlp_out"]
    # activations at [start] only: [batch, 1, ...], taken at [:, 0]
    _, cache = model.run_with_cache(strings, names_filter=names, pos_slice=[0], return_type=None)
    coefficients, r2, condition = ln_fit(cache["resid_post", -1][:, 0],
                                         cache["ln_final.hook_normalized"][:, 0])
    unbalanced_dir = coefficients.T @ post_final_ln_dir  # [d_model], before the final LN

    # embeddings, then per layer its heads and its MLP: [components, batch, d_model]
    components = [(cache["embed"] + cache["pos_embed"])[:, 0]]
    for layer in range(model.cfg.n_layers):
        components += list(cache["result", layer][:, 0].transpose(1, 0, 2))  # heads first
        components.append(cache["mlp_out", layer][:, 0])
    magnitudes = component_magnitudes(np.stack(components), unbalanced_dir, balanced)

    ov = model.blocks[2].attn.OV[0]  # head 2.0's OV circuit
    return {
        "accuracy": accuracy,
        "post_final_ln_dir": post_final_ln_dir,
        "final_ln_fit_r2": r2,
        "_ln_fit_condition": condition,
        "pre_final_ln_dir": unbalanced_dir,
        "component_magnitudes": magnitudes,
        "head_2_0_ov_singular_values": ov.S,
        "head_2_0_ov_to_post_final_ln_dir": ov.AB @ post_final_ln_dir,
    }


def run_with_transformer_lens(model) -> Results:
    """The course's own TransformerLens code, for --compare (the model comes with
    the course's pad-masking hooks: tools/tl_native.build_native_tl)."""
    import torch

    strings, balanced = dataset()
    # the course's SimpleTokenizer: [start]=0 + "("=3 / ")"=4 + [end]=2, right-padded with [pad]=1
    rows = [[0] + [3 if c == "(" else 4 for c in s] + [2] for s in strings]
    width = max(map(len, rows))
    tokens = torch.tensor([row + [1] * (width - len(row)) for row in rows])
    logits = model(tokens)[:, 0]
    accuracy = float((logits.argmax(-1).numpy() == balanced).mean())

    post_final_ln_dir = model.W_U[:, 0] - model.W_U[:, 1]
    _, cache = model.run_with_cache(tokens)
    last = model.cfg.n_layers - 1
    coefficients, r2, condition = ln_fit(cache["resid_post", last][:, 0].numpy(),
                                         cache["ln_final.hook_normalized"][:, 0].numpy())
    unbalanced_dir = coefficients.T @ post_final_ln_dir.numpy()
    components = [(cache["embed"] + cache["pos_embed"])[:, 0]]
    for layer in range(model.cfg.n_layers):
        components += list(cache["result", layer][:, 0].transpose(0, 1))
        components.append(cache["mlp_out", layer][:, 0])
    magnitudes = component_magnitudes(torch.stack(components).numpy(), unbalanced_dir, balanced)
    ov = model.blocks[2].attn.OV[0]
    return {
        "accuracy": accuracy,
        "post_final_ln_dir": post_final_ln_dir.numpy(),
        "final_ln_fit_r2": r2,
        "_ln_fit_condition": condition,
        "pre_final_ln_dir": unbalanced_dir,
        "component_magnitudes": magnitudes,
        "head_2_0_ov_singular_values": ov.S.numpy(),
        "head_2_0_ov_to_post_final_ln_dir": (ov.AB @ post_final_ln_dir).numpy(),
    }


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run, run_with_transformer_lens, PROCESSING, "brackets", TOLERANCES)
