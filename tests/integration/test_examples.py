"""The seeds' workflows in examples/, run as a user runs them: each script
against a live daemon on the fixture models, with --compare running the
notebook's TransformerLens code on the same files in the same run.

Each example exits non-zero when any of its numbers differs from
TransformerLens's by more than examples/common.py's RTOL (1e-5 of the
larger of 1 and the reference's largest magnitude: float32 on both sides,
summed in different orders), or when a label or a token differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lensd_http import Daemon, model_path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
sys.path.insert(0, str(EXAMPLES))

import paren_transformer  # noqa: E402
import tree_paths  # noqa: E402


@pytest.fixture(scope="module")
def tree_model(tmp_path_factory) -> Path:
    """Seed 004's model shape with random weights, converted as a user would:
    a torch.save'd HookedTransformer state dict and its config through
    tools/convert_tl_checkpoint.py, with the notebook's vocabulary."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    work = tmp_path_factory.mktemp("tree")
    # initializer_range 0.2 instead of TL's 0.8 / sqrt(d_model) ~ 0.07: larger
    # weights give distinct logits, so the greedy path cannot hinge on a tie
    cfg = HookedTransformerConfig(**tree_paths.CONFIG, initializer_range=0.2, seed=4)
    torch.save(HookedTransformer(cfg).state_dict(), work / "model.pt")
    (work / "config.json").write_text(json.dumps(tree_paths.CONFIG))
    tokenizer = {"tokenizer": {"type": "list", "tokens": tree_paths.VOCABULARY,
                               "split": "whitespace"}}
    out = work / "tree"
    subprocess.run([sys.executable, str(REPO / "tools" / "convert_tl_checkpoint.py"),
                    str(work / "model.pt"), str(work / "config.json"), str(out),
                    "--tokenizer-json", json.dumps(tokenizer)], check=True)
    return out


def paren_weights_from_transformer_lens(module, tl_state_dict) -> None:
    """Sets the notebook's ParenTransformer to the classifier seed 002 holds
    in TransformerLens's names (the same trained model: its W_pos is the
    module's sinusoidal table to 6e-8): the inverse of
    tools/mappings/paren_transformer.json."""
    import torch
    from einops import rearrange

    sd = tl_state_dict
    own = {"encoder.weight": sd["embed.W_E"] / module.d_model ** 0.5,
           "norm.weight": sd["ln_final.w"], "norm.bias": sd["ln_final.b"],
           "decoder.weight": sd["unembed.W_U"].T, "decoder.bias": sd["unembed.b_U"]}
    for layer in range(len(module.layers)):
        tl, ours = f"blocks.{layer}.", f"layers.{layer}."
        for name in ("Q", "K", "V"):
            own[f"{ours}self_attn.W_{name}.weight"] = rearrange(sd[f"{tl}attn.W_{name}"],
                                                                "h d e -> (h e) d")
            own[f"{ours}self_attn.W_{name}.bias"] = sd[f"{tl}attn.b_{name}"].reshape(-1)
        own[f"{ours}self_attn.W_O.weight"] = rearrange(sd[f"{tl}attn.W_O"], "h e d -> d (h e)")
        own[f"{ours}self_attn.W_O.bias"] = sd[f"{tl}attn.b_O"]
        for norm, ln in (("norm1", "ln1"), ("norm2", "ln2")):
            own[f"{ours}{norm}.weight"], own[f"{ours}{norm}.bias"] = sd[f"{tl}{ln}.w"], sd[f"{tl}{ln}.b"]
        own[f"{ours}linear1.weight"], own[f"{ours}linear1.bias"] = sd[f"{tl}mlp.W_in"].T, sd[f"{tl}mlp.b_in"]
        own[f"{ours}linear2.weight"], own[f"{ours}linear2.bias"] = sd[f"{tl}mlp.W_out"].T, sd[f"{tl}mlp.b_out"]
    own["pos_encoder.pe"] = module.pos_encoder.pe
    module.load_state_dict({k: torch.as_tensor(v).contiguous() for k, v in own.items()})


@pytest.fixture(scope="module")
def paren_model(tmp_path_factory) -> tuple[Path, Path]:
    """Seed 003's checkpoint (the state dict in nn.TransformerEncoder names
    its module loads), made from seed 002's trained classifier, and its
    conversion with the shipped mapping: (checkpoint, model directory)."""
    import torch

    shared = Path(os.environ.get("LENSD_SHARED", REPO.parent / "shared"))
    tl_state_dict = torch.load(shared / "data" / "arena-brackets" / "brackets_model_state_dict.pt",
                               map_location="cpu", weights_only=True)
    module = paren_transformer.paren_transformer_module()()
    paren_weights_from_transformer_lens(module, tl_state_dict)
    work = tmp_path_factory.mktemp("paren")
    checkpoint = work / "w5d5_balanced_brackets_state_dict.pt"
    torch.save(module.simple_transformer_state_dict(), checkpoint)
    out = work / "paren"
    subprocess.run([sys.executable, str(REPO / "tools" / "convert_tl_checkpoint.py"), str(checkpoint),
                    str(out), "--mapping", str(REPO / "tools" / "mappings" / "paren_transformer.json")],
                   check=True)
    return checkpoint, out


@pytest.fixture(scope="module")
def served(lensd_bin, tree_model, paren_model, tmp_path_factory):
    """One daemon serving every example's model: {name: (url, what --compare takes)}."""
    models = {"gpt2": model_path("gpt2-a"), "neo": model_path("neo"),
              "brackets": model_path("brackets"), "tree": tree_model, "paren": paren_model[1]}
    args = [arg for name, path in models.items() for arg in ("--model", f"{name}={path}")]
    daemon = Daemon(lensd_bin, args, tmp_path_factory.mktemp("examples") / "lensd.stderr")
    daemon.start()
    references = {**models, "paren": paren_model[0]}  # the notebook's module reads the checkpoint
    yield {name: (daemon.url, path) for name, path in references.items()}
    rc = daemon.stop()
    assert rc == 0, f"lensd exited {rc}\n{daemon.describe()}"


@pytest.mark.parametrize("example, model", [
    ("bracket_closing", "neo"),
    ("adjective_opposites", "gpt2"),
    ("bracket_classifier", "brackets"),
    ("tree_paths", "tree"),
    ("paren_transformer", "paren"),
])
def test_an_example_gives_transformerlens_s_numbers(served, example, model):
    url, directory = served[model]
    env = dict(os.environ, PYTHONPATH=str(REPO / "clients" / "python"))
    shared = os.environ.get("LENSD_SHARED")
    if shared:
        env["LENSD_BRACKETS_DATA"] = str(Path(shared) / "data" / "arena-brackets" /
                                         "brackets_data.json")
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{example}.py"), "--url", url,
                           "--model", model, "--compare", str(directory)],
                          capture_output=True, text=True, timeout=900, env=env)
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, f"{example} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "lensd against the notebook's own code:" in proc.stdout
