#!/usr/bin/env python3
"""Seed 001, "Exploring linearity of time within GPT-2 small", on lensd:
where GPT-2 finds the opposite of an adjective ("A mouse is small, but an
elephant is" -> " big"), by logit difference and direct logit attribution.

The notebook's steps, each one call: test_prompt; to_str_tokens, to_tokens
and to_single_token; run_with_cache; the logit difference of answer pairs;
tokens_to_residual_directions; cache["resid_post", -1] with
apply_ln_to_stack; accumulated_resid (the logit lens), decompose_resid and
stack_head_results; the attention patterns of the heads that matter most.

    python examples/adjective_opposites.py --url http://127.0.0.1:8080 --model gpt2
    python examples/adjective_opposites.py --model gpt2 --compare MODEL_DIR
"""

from __future__ import annotations

import numpy as np

from common import Results, main

# from_pretrained("gpt2-small", center_unembed=True, center_writing_weights=True,
# fold_ln=True, refactor_factored_attn_matrices=True) (fold_value_biases is on by default)
PROCESSING = "fold_ln,center_writing_weights,center_unembed,fold_value_biases," \
             "refactor_factored_attn_matrices"

# The prompts and answers as the notebook printed them: the incorrect adjective
# is in the prompt, the correct one is its opposite.
PROMPTS = [
    "A tortoise is old, but a kitten is",
    "A mouse is small, but, an elephant is",
    "A desert is dry, but a rainforest is",
    "A pillow is soft, but, a brick is",
    "A rock is hard, but, a sponge is",
    "A rose is beautiful, but, a weed is",
]
ANSWERS = [(" young", " old"), (" big", " small"), (" wet", " dry"), (" hard", " soft"),
           (" soft", " hard"), (" ugly", " beautiful")]
TOP_HEADS = 3


def run(model) -> Results:
    """The notebook on lensd: numpy arrays from the client."""
    model.test_prompt("A mouse is small, but an elephant is", "big", prepend_bos=True)
    for prompt in PROMPTS:
        print("Prompt as tokens:", model.to_str_tokens(prompt))
    answer_tokens = np.array([[model.to_single_token(right), model.to_single_token(wrong)]
                              for right, wrong in ANSWERS])  # [batch, 2]

    tokens = model.to_tokens(PROMPTS, prepend_bos=True)  # [batch, pos]: equal lengths here
    logits, cache = model.run_with_cache(tokens)
    final_logits = logits[:, -1]  # [batch, d_vocab]
    answer_logits = np.take_along_axis(final_logits, answer_tokens, axis=-1)
    logit_diff = answer_logits[:, 0] - answer_logits[:, 1]  # [batch]
    print("Per prompt logit difference:", logit_diff.round(3))

    directions = model.tokens_to_residual_directions(answer_tokens)  # [batch, 2, d_model]
    logit_diff_directions = directions[:, 0] - directions[:, 1]  # [batch, d_model]

    def residual_stack_to_logit_diff(stack: np.ndarray) -> np.ndarray:
        """[..., batch, d_model] -> [...]: the mean logit difference each component writes."""
        scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
        return np.einsum("...bd,bd->...", scaled, logit_diff_directions) / len(PROMPTS)

    final_residual = cache["resid_post", -1][:, -1]  # [batch, d_model]
    average_logit_diff = residual_stack_to_logit_diff(final_residual)
    print("Calculated average logit diff:", round(float(average_logit_diff), 3),
          "original:", round(float(logit_diff.mean()), 3))

    accumulated, accumulated_labels = cache.accumulated_resid(
        layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)
    per_layer, layer_labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    per_head, head_labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
    per_head_logit_diffs = residual_stack_to_logit_diff(per_head).reshape(
        model.cfg.n_layers, model.cfg.n_heads)

    # the attention patterns of the heads that help most, on the first prompt
    top = np.argsort(-per_head_logit_diffs.ravel(), kind="stable")[:TOP_HEADS]
    patterns = np.stack([cache["attn", int(h) // model.cfg.n_heads][0, int(h) % model.cfg.n_heads]
                         for h in top])  # [TOP_HEADS, query, key]
    return {
        "logit_diff": logit_diff,
        "average_logit_diff_from_the_residual": average_logit_diff,
        "logit_lens": residual_stack_to_logit_diff(accumulated),
        "logit_lens_labels": accumulated_labels,
        "per_layer": residual_stack_to_logit_diff(per_layer),
        "per_layer_labels": layer_labels,
        "per_head": per_head_logit_diffs,
        "per_head_labels": head_labels,
        "top_head_patterns": patterns,
    }


def run_with_transformer_lens(model) -> Results:
    """The notebook's own TransformerLens code, for --compare."""
    import torch
    from transformer_lens import utils

    utils.test_prompt("A mouse is small, but an elephant is", "big", model, prepend_bos=True)
    answer_tokens = torch.tensor([[model.to_single_token(right), model.to_single_token(wrong)]
                                  for right, wrong in ANSWERS])
    tokens = model.to_tokens(PROMPTS, prepend_bos=True)
    logits, cache = model.run_with_cache(tokens)
    answer_logits = logits[:, -1].gather(dim=-1, index=answer_tokens)
    logit_diff = answer_logits[:, 0] - answer_logits[:, 1]

    directions = model.tokens_to_residual_directions(answer_tokens)
    logit_diff_directions = directions[:, 0] - directions[:, 1]

    def residual_stack_to_logit_diff(stack):
        scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
        return torch.einsum("...bd,bd->...", scaled, logit_diff_directions) / len(PROMPTS)

    accumulated, accumulated_labels = cache.accumulated_resid(
        layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)
    per_layer, layer_labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    per_head, head_labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
    per_head_logit_diffs = residual_stack_to_logit_diff(per_head).reshape(
        model.cfg.n_layers, model.cfg.n_heads)
    top = np.argsort(-per_head_logit_diffs.flatten().numpy(), kind="stable")[:TOP_HEADS]
    patterns = torch.stack([cache["attn", int(h) // model.cfg.n_heads][0, int(h) % model.cfg.n_heads]
                            for h in top])
    return {
        "logit_diff": logit_diff.numpy(),
        "average_logit_diff_from_the_residual":
            residual_stack_to_logit_diff(cache["resid_post", -1][:, -1]).numpy(),
        "logit_lens": residual_stack_to_logit_diff(accumulated).numpy(),
        "logit_lens_labels": accumulated_labels,
        "per_layer": residual_stack_to_logit_diff(per_layer).numpy(),
        "per_layer_labels": layer_labels,
        "per_head": per_head_logit_diffs.numpy(),
        "per_head_labels": head_labels,
        "top_head_patterns": patterns.numpy(),
    }


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run, run_with_transformer_lens, PROCESSING, "gpt2")
