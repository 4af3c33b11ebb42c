#!/usr/bin/env python3
"""Seed 003, MLAB's w5d5 "balanced brackets" ParenTransformer, on lensd: the
classifier as its own torch module wrote it, its checkpoint converted with
tools/mappings/paren_transformer.json, and the notebook's module-hook
analysis done as cache reads.

The notebook's steps, each one call: the classifier's probabilities on the
first 5,000 strings (one request); the post-final-LN "unbalanced" direction
from the decoder (W_U); the final LayerNorm's inputs and outputs (its
register_forward_hook functions) as hook points, fitted linearly at [start];
each head's output (the input of W_O, split by head, through W_O) as
hook_result; every component's output at [start] projected on the pre-LN
direction; and head 2.0's and 2.1's mean magnitude on each failure type.

    python examples/paren_transformer.py --url http://127.0.0.1:8080 --model paren
    python examples/paren_transformer.py --model paren --compare CHECKPOINT.pt

--compare takes the checkpoint itself: the notebook's reference is its own
module (ParenTransformer below) with load_simple_transformer_state_dict.
The checkpoint is the state dict in nn.TransformerEncoder names that the
module loads; convert it for lensd with
    tools/convert_tl_checkpoint.py CHECKPOINT.pt OUT_DIR --mapping tools/mappings/paren_transformer.json
"""

from __future__ import annotations

import math

import numpy as np

from bracket_classifier import dataset, ln_fit
from common import RTOL, Results, Tolerances, main

PROCESSING = "none"
TOKENS = {"[start]": 0, "[pad]": 1, "[end]": 2, "(": 3, ")": 4}


def tokenize(strings: list[str]):
    """The notebook's SimpleTokenizer("()"): [start], the brackets, [end], right-padded with [pad]."""
    import torch

    width = max(len(s) for s in strings)
    return torch.tensor([[0] + [TOKENS[c] for c in s] + [2] + [1] * (width - len(s))
                         for s in strings])


def paren_transformer_module():
    """The ParenTransformer class (w5d5_transformer.py's, as the notebook uses
    it): pre-LN blocks of bidirectional attention with separate W_Q/W_K/W_V/W_O
    and a relu MLP, a sqrt(d_model)-scaled embedding plus sinusoidal
    positions, [pad] keys masked with -1e4, a final LayerNorm and a decoder
    read at position 0 as log-probabilities."""
    import torch
    from torch import nn

    class SelfAttention(nn.Module):
        def __init__(self, d_model: int, num_heads: int):
            super().__init__()
            self.num_heads = num_heads
            self.W_Q, self.W_K, self.W_V, self.W_O = (nn.Linear(d_model, d_model) for _ in range(4))

        def forward(self, x, pad_keys):  # x [batch, pos, d_model], pad_keys [batch, pos]
            batch, pos, d_model = x.shape

            def heads(t):  # [batch, pos, d_model] -> [batch, head, pos, d_head]
                return t.reshape(batch, pos, self.num_heads, -1).transpose(1, 2)

            q, k, v = heads(self.W_Q(x)), heads(self.W_K(x)), heads(self.W_V(x))
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            scores = scores + torch.where(pad_keys, -10000.0, 0.0)[:, None, None, :]
            z = scores.softmax(-1) @ v  # [batch, head, pos, d_head]
            return self.W_O(z.transpose(1, 2).reshape(batch, pos, d_model))

    class Layer(nn.Module):
        def __init__(self, d_model: int, nhead: int, d_hid: int):
            super().__init__()
            self.self_attn = SelfAttention(d_model, nhead)
            self.linear1, self.linear2 = nn.Linear(d_model, d_hid), nn.Linear(d_hid, d_model)
            self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

        def forward(self, x, pad_keys):
            x = x + self.self_attn(self.norm1(x), pad_keys)
            return x + self.linear2(torch.relu(self.linear1(self.norm2(x))))

    class PositionalEncoding(nn.Module):
        def __init__(self, d_model: int, max_len: int = 5000):
            super().__init__()
            position = torch.arange(max_len, dtype=torch.float32)[:, None]
            freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                             * (-math.log(10000.0) / d_model))
            pe = torch.zeros(max_len, 1, d_model)  # [max_len, 1, d_model], as saved
            pe[:, 0, 0::2], pe[:, 0, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
            self.register_buffer("pe", pe)

        def forward(self, x):  # [batch, pos, d_model]
            return x + self.pe[: x.shape[1], 0][None]

    class ParenTransformer(nn.Module):
        def __init__(self, ntoken=5, nclasses=2, d_model=56, nhead=2, d_hid=56, nlayers=3):
            super().__init__()
            self.d_model = d_model
            self.encoder = nn.Embedding(ntoken, d_model)
            self.pos_encoder = PositionalEncoding(d_model)
            self.layers = nn.ModuleList(Layer(d_model, nhead, d_hid) for _ in range(nlayers))
            self.norm = nn.LayerNorm(d_model)
            self.decoder = nn.Linear(d_model, nclasses)

        def logits(self, tokens):  # [batch, pos] -> [batch, pos, nclasses]
            pad_keys = tokens == TOKENS["[pad]"]
            x = self.pos_encoder(self.encoder(tokens) * math.sqrt(self.d_model))
            for layer in self.layers:
                x = layer(x, pad_keys)
            return self.decoder(self.norm(x))

        def forward(self, tokens):  # [batch, pos] -> [batch, nclasses] log-probabilities
            return torch.log_softmax(self.logits(tokens)[:, 0], dim=-1)

        def load_simple_transformer_state_dict(self, state_dict):
            """Loads the checkpoint's nn.TransformerEncoder names: per layer a
            fused in_proj [3 d_model, d_model] and out_proj, under
            transformer_encoder.layers.N; the rest as named here."""
            own = {}
            for key, value in state_dict.items():
                if not key.startswith("transformer_encoder.layers."):
                    own[key] = value
                    continue
                layer, rest = key.removeprefix("transformer_encoder.layers.").split(".", 1)
                prefix = f"layers.{layer}."
                if rest.startswith("self_attn.in_proj_"):
                    kind = rest.removeprefix("self_attn.in_proj_")  # weight | bias
                    for name, part in zip(("W_Q", "W_K", "W_V"), value.chunk(3, dim=0)):
                        own[f"{prefix}self_attn.{name}.{kind}"] = part
                else:
                    own[prefix + rest.replace("self_attn.out_proj.", "self_attn.W_O.")] = value
            self.load_state_dict(own)

        def simple_transformer_state_dict(self):
            """The inverse: this module's weights in the checkpoint's names."""
            saved = {}
            for key, value in self.state_dict().items():
                if not key.startswith("layers."):
                    saved[key] = value
                    continue
                layer, rest = key.removeprefix("layers.").split(".", 1)
                prefix = f"transformer_encoder.layers.{layer}."
                if rest.startswith(("self_attn.W_Q.", "self_attn.W_K.", "self_attn.W_V.")):
                    continue
                if rest.startswith("self_attn.W_O."):
                    saved[prefix + rest.replace("self_attn.W_O.", "self_attn.out_proj.")] = value
                else:
                    saved[prefix + rest] = value
            for layer in range(len(self.layers)):
                attn = self.layers[layer].self_attn
                for kind in ("weight", "bias"):
                    saved[f"transformer_encoder.layers.{layer}.self_attn.in_proj_{kind}"] = torch.cat(
                        [getattr(attn, name).state_dict()[kind] for name in ("W_Q", "W_K", "W_V")])
            return saved

    return ParenTransformer


def failure_types(strings: list[str]) -> dict[str, np.ndarray]:
    """The notebook's failure classes: a prefix with more ")" than "(" read from
    the right (negative failure), and unequal counts (total elevation)."""
    def elevations(s: str) -> np.ndarray:
        return np.cumsum([1 if c == ")" else -1 for c in reversed(s)])

    negative = np.array([bool(s) and bool((elevations(s) < 0).any()) for s in strings])
    total = np.array([bool(s) and elevations(s)[-1] != 0 for s in strings])
    return {"both failures": negative & total, "just neg failure": negative & ~total,
            "just total elevation failure": ~negative & total, "balanced": ~negative & ~total}


def summarize(prob_balanced, balanced, post_final_ln_dir, ln_in, ln_out, components,
              strings) -> Results:
    """The notebook's numbers from what either side read: components is
    [10, batch, d_model] at [start] (embeddings, then per layer head 0, head 1, MLP)."""
    coefficients, r2, condition = ln_fit(ln_in, ln_out)
    unbalanced_dir = coefficients.T @ post_final_ln_dir
    magnitudes = components @ unbalanced_dir
    magnitudes = magnitudes - magnitudes[:, balanced].mean(-1, keepdims=True)
    head_means = {f"head_{name}_mean_by_failure_type": np.array(
        [magnitudes[index][mask].mean() if mask.any() else 0.0
         for mask in failure_types(strings).values()]) for name, index in (("2_0", 7), ("2_1", 8))}
    return {
        "prob_balanced": prob_balanced,
        "n_correct": int(((prob_balanced > 0.5) == balanced).sum()),
        "post_final_ln_dir": post_final_ln_dir,
        "final_ln_fit_r2": r2,
        "_ln_fit_condition": condition,
        "pre_final_ln_dir": unbalanced_dir,
        "component_magnitudes": magnitudes,
        **head_means,
    }


# As in bracket_classifier.py: the fitted direction moves by up to the fit's
# condition number times the relative change of its inputs.
TOLERANCES = Tolerances(rtol_of={"pre_final_ln_dir": lambda ref: RTOL * ref["_ln_fit_condition"]})


def run(model) -> Results:
    """The notebook on lensd."""
    strings, balanced = dataset()
    logits = model(strings, positions=[0])[:, 0]  # [batch, 2]
    log_probs = logits - np.logaddexp(logits[:, 0], logits[:, 1])[:, None]
    prob_balanced = np.exp(log_probs[:, 1])
    print(f"Model got {int(((prob_balanced > 0.5) == balanced).sum())} out of {len(strings)} "
          "training examples correct!")

    post_final_ln_dir = model.W_U[:, 0] - model.W_U[:, 1]  # decoder.weight[0] - decoder.weight[1]
    last = model.cfg.n_layers - 1
    _, cache = model.run_with_cache(strings, pos_slice=[0], return_type=None, names_filter=[
        "hook_embed", "hook_pos_embed", f"blocks.{last}.hook_resid_post", "ln_final.hook_normalized",
        "blocks.*.attn.hook_z", "blocks.*.hook_mlp_out"])
    heads, _ = cache.stack_head_results(layer=-1, pos_slice=0, return_labels=True)  # [L*H, batch, d]
    components = [(cache["embed"] + cache["pos_embed"])[:, 0]]
    for layer in range(model.cfg.n_layers):
        h = model.cfg.n_heads
        components += list(heads[layer * h:(layer + 1) * h])
        components.append(cache["mlp_out", layer][:, 0])
    # model.norm's output is the normalized stream through ln_final's weight and bias
    norm_out = cache["ln_final.hook_normalized"][:, 0] * model.ln_final.w + model.ln_final.b
    return summarize(prob_balanced, balanced, post_final_ln_dir, cache["resid_post", last][:, 0],
                     norm_out, np.stack(components), strings)


def run_with_module(checkpoint: str) -> Results:
    """The notebook's own code: its module, its forward hooks."""
    import torch
    from einops import rearrange

    model = paren_transformer_module()()
    model.load_simple_transformer_state_dict(torch.load(checkpoint, map_location="cpu",
                                                        weights_only=True))
    model.eval()
    strings, balanced = dataset()
    toks = tokenize(strings)

    def get_inputs_and_outputs(module):
        seen = {}
        handle = module.register_forward_hook(
            lambda _, inputs, output: seen.update(input=inputs[0], output=output))
        with torch.no_grad():
            out = model(toks)
        handle.remove()
        return seen["input"], seen["output"], out

    ln_in, ln_out, out = get_inputs_and_outputs(model.norm)
    post_final_ln_dir = model.decoder.weight[0] - model.decoder.weight[1]
    components = [get_inputs_and_outputs(model.pos_encoder)[1][:, 0]]
    for layer in model.layers:
        attn = layer.self_attn
        pre_w_o = rearrange(get_inputs_and_outputs(attn.W_O)[0], "b s (h e) -> b h s e",
                            h=attn.num_heads)
        w_o = rearrange(attn.W_O.weight, "o (h e) -> h o e", h=attn.num_heads)
        by_head = torch.einsum("bhse,hoe->bhso", pre_w_o, w_o)  # without W_O's bias
        components += [by_head[:, h, 0] for h in range(attn.num_heads)]
        components.append(get_inputs_and_outputs(layer.linear2)[1][:, 0])
    return summarize(out.exp()[:, 1].numpy(), balanced, post_final_ln_dir.detach().numpy(),
                     ln_in[:, 0].numpy(), ln_out[:, 0].numpy(),
                     torch.stack(components).detach().numpy(), strings)


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run, run_with_module, PROCESSING, "paren", TOLERANCES,
         build_reference=lambda checkpoint, _: checkpoint)
