#!/usr/bin/env python3
"""Seed 000, "Understanding bracket closing in GPT-Neo", on lensd: does the
model close the right bracket, and where in the model is that decided?

The notebook's steps, each one call: the vocabulary as strings
(to_str_tokens of every id) to find the bracket tokens; 72 exploratory
prompts padded into one batch, read at each prompt's last token; the
openness and bracket-symbol metrics on clean and corrupted prompts; the
logit difference of answer pairs and its direct attribution
(tokens_to_residual_directions, apply_ln_to_stack, accumulated_resid); and
the activation patching the notebook prepares its corrupted prompts for
(TransformerLens's get_act_patch_resid_pre).

    python examples/bracket_closing.py --url http://127.0.0.1:8080 --model neo
    python examples/bracket_closing.py --model neo --compare MODEL_DIR
"""

from __future__ import annotations

import numpy as np

from common import Results, Tolerances, main

# from_pretrained("gpt-neo-125M", center_unembed=True, center_writing_weights=True,
# fold_ln=True, refactor_factored_attn_matrices=True)
PROCESSING = "fold_ln,center_writing_weights,center_unembed,fold_value_biases," \
             "refactor_factored_attn_matrices"

BRACKETS = (tuple("([{<"), tuple(")]}>"))
BRACKETS_FLAT = BRACKETS[0] + BRACKETS[1]

EXPLORATORY_PROMPTS = [
    "def line(tensor, renderer=None", "def line(tensor, renderer=None)",
    "exploratory_prompts = ['test'", "exploratory_prompts = ['test']",
    "array[0", "array[0]",
    "exploratory_dict = {'test': 'four'", "exploratory_dict = {'test': 'four'}",
    "<template", "<template>",
    "def sieve(num, prime_list = [2, 3]", "def sieve(num, prime_list = [2, 3])",
    "exploratory_dict = {'test': [3, 5]", "exploratory_dict = {'test': [3, 5]}",
    "exploratory_dict = {'test': get_test()", "exploratory_dict = {'test': get_test()}",
    "html_to_markdown('<s>'", "html_to_markdown('<s>')",
    "<table id='name()'", "<table id='name()'>",
    "load_model(build_structure()", "load_model(build_structure())",
    "load_model(build_structure(), get_hyperparameters()",
    "load_model(build_structure(), get_hyperparameters())",
    "load_model(build_structure(), get_hyperparameters(), (True, False)",
    "load_model(build_structure(), get_hyperparameters(), (True, False))",
    "load_model(build_structure(), get_hyperparameters(True), (True, False), get_extra_config(x)",
    "load_model(build_structure(), get_hyperparameters(True), (True, False), get_extra_config(x))",
    "x.detach().cpu().to_numpy(", "x.detach().cpu().to_numpy()",
    "enumerate(list(zip([1,3,65], [1, 2, 3])", "enumerate(list(zip([1,3,65], [1, 2, 3]",
    "enumerate(list(zip([1,3,65], [1, 2, 3", "enumerate(list(zip([1,3,65], [1, 2, 3]))",
    "enumerate(list(zip([1,3,65], [1, 2, 3], [4, 3], [1], list(np.zeros(4))",
    "enumerate(list(zip([1,3,65], [1, 2, 3], [4, 3], [1], list(np.zeros(4)))",
    "zip(enumerate(list(zip([1,3,65], [1, 2, 3], [4, 3], [1], list(np.zeros(4)))), [3, 4]",
    "zip(enumerate(list(zip([1,3,65], [1, 2, 3], [4, 3], [1], list(np.zeros(4)))), [3, 4])",
    "zip(enumerate(list(zip([1,3,65], list(np.zeros(4)))), [3, 4], {1: 2}.items()",
    "zip(enumerate(list(zip([1,3,65], list(np.zeros(4)))), [3, 4], {1: 2}.items())",
    "list())))).append(x", "list())))).append(x)",
    "px.imshow(to_numpy(tensor), ccm=0.0, ccs='RdBu', labels={'x':xaxis, 'y':yaxis}, **kwargs",
    "px.imshow(to_numpy(tensor), ccm=0.0, ccs='RdBu', labels={'x':xaxis, 'y':yaxis}, **kwargs)",
    "In the course our our analysis (which was long",
    "In the course our our analysis (which was long)",
    "He was eating a apple [sic", "He was eating a apple [sic]",
    "In the course our our analysis (which was long (though not too long",
    "In the course our our analysis (which was long (though not too long))",
    "def sieve(,num prime_list = 2[, 3]", "def sieve(,num prime_list = 2[, 3])",
    "defn line(tensor, renderer===None", "defn line(tensor, renderer===None)",
    "exploratory_dict = {'test': [3,} 5]", "exploratory_dict = {'test': [3,} 5",
    "exploratory_prompts = ['test'(]", "exploratory_prompts = ['test'(])",
    "def safasfd(oubefwef, vcewfec=afuasvfs", "def safasfd(oubefwef, vcewfec=afuasvfs)",
    "asdjhvauyrfsac = ['asdasdasd'", "asdjhvauyrfsac = ['asdasdasd']",
    "dfc = {'sdasd': 'casdasd'", "dfc = {'sdasd': 'casdasd'}",
    "<bwevzcxc", "<bwevzcxc>",
    "([]", "([])", "([({},[{()}])])", "([({},[{()}])]", "([({},[{()}])", "([({},[{()}]",
]
# Clean prompts (a closing bracket is due) and their corrupted twins, all
# the same number of tokens.
PROMPTS = [
    "def line(data_tensor, renderer='four'",
    "model.dataset.data = table['responder'",
    "{b(), c(), d(), e(), f(x)",
    "<template id='named_carriage' name='time'",
    "sieve(7777, [2], 'recurse'",
    "[factor(x_new), test(), inspect(p)",
    "specification = {'<xml>': more(True)",
    "<html style='b.blue {color: blue}'",
]
CORRUPTED_PROMPTS = [
    "def line(data_tensor, renderer='four')",
    "model.dataset.data = table['responder']",
    "{b(), c(), d(), e(), f(x)}",
    "<template id='named_carriage' name='time'>",
    "sieve(7777, [2], 'recurse')",
    "[factor(x_new), test(), inspect(p)]",
    "specification = {'<xml>': more(True)}",
    "<html style='b.blue {color: blue}'>",
]
ANSWER_SYMBOLS = list(")]}>)]}>")
WRONG_SYMBOLS = list("([{<([{<")


def bracket_token_ids(vocabulary: list[str]) -> list[np.ndarray]:
    """Per bracket of BRACKETS_FLAT, the ids of the tokens that start with it,
    or with a space and it."""
    return [np.array([i for i, text in enumerate(vocabulary)
                      if text.startswith(bracket) or text.startswith(" " + bracket)])
            for bracket in BRACKETS_FLAT]


def bracket_scores(last_logits: np.ndarray, bracket_tokens: list[np.ndarray]) -> np.ndarray:
    """[batch, d_vocab] logits -> [batch, n_brackets]: the probability of each
    bracket, given that the next token is one (the notebook's compute_bracket_scores)."""
    shifted = last_logits - last_logits.max(-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    per_bracket = np.stack([probs[:, ids].sum(-1) for ids in bracket_tokens], axis=-1)
    return per_bracket / per_bracket.sum(-1, keepdims=True)


def bracket_metrics(last_logits: np.ndarray, bracket_tokens: list[np.ndarray],
                    openness: list[int], symbols: list[str]) -> dict[str, np.ndarray]:
    """The notebook's openness_metric and bracket_symbol_metric per prompt,
    the per-bracket logit sums [batch, n_brackets] both are made of, and the
    sums of those logits' magnitudes (summed in float64: what is compared is
    the logits' error, not the summation's)."""
    logits = last_logits.astype(np.float64)
    per_bracket = np.stack([logits[:, ids].sum(-1) for ids in bracket_tokens], axis=-1)
    magnitudes = np.stack([np.abs(logits[:, ids]).sum(-1) for ids in bracket_tokens], axis=-1)
    half = len(BRACKETS[0])
    sign = np.sign(2 * np.asarray(openness) - 1)
    answer = per_bracket[np.arange(len(symbols)), [BRACKETS_FLAT.index(s) for s in symbols]]
    return {"bracket_logit_sums": per_bracket,
            "_bracket_logit_magnitudes": magnitudes,
            "openness_metric": (per_bracket[:, :half].sum(-1) - per_bracket[:, half:].sum(-1)) * sign,
            "bracket_symbol_metric": 2 * answer - per_bracket.mean(-1)}


# Sums of up to a few hundred logits, and differences of those sums: each
# carries the float32 error of its terms, so it is measured against the sum
# of their magnitudes.
TOLERANCES = Tolerances(scale_of={name: "_bracket_logit_magnitudes" for name in (
    "bracket_logit_sums", "openness_metric", "bracket_symbol_metric")})


def run(model) -> Results:
    """The notebook on lensd."""
    vocabulary = model.to_str_tokens(np.arange(model.cfg.d_vocab - 1), prepend_bos=False)
    bracket_tokens = bracket_token_ids(vocabulary)

    # Left padding puts every prompt's last token at position -1: one request
    # reads all 72 there (the notebook gathers them from right-padded logits).
    exploratory_last = model(EXPLORATORY_PROMPTS, padding_side="left", positions=[-1])[:, 0]
    exploratory_scores = bracket_scores(exploratory_last, bracket_tokens)

    all_prompts = PROMPTS + CORRUPTED_PROMPTS
    all_tokens = model.to_tokens(all_prompts)  # [16, 14]
    all_last = model(all_tokens, positions=[-1])[:, 0]
    openness = [0] * len(PROMPTS) + [1] * len(CORRUPTED_PROMPTS)
    metrics = bracket_metrics(all_last, bracket_tokens, openness, ANSWER_SYMBOLS * 2)

    answer_tokens = np.array([[model.to_single_token(right), model.to_single_token(wrong)]
                              for right, wrong in zip(ANSWER_SYMBOLS, WRONG_SYMBOLS)])
    prompt_tokens = all_tokens[:len(PROMPTS)]
    logits, cache = model.run_with_cache(prompt_tokens)
    answer_logits = np.take_along_axis(logits[:, -1], answer_tokens, axis=-1)
    logit_diff = answer_logits[:, 0] - answer_logits[:, 1]
    directions = model.tokens_to_residual_directions(answer_tokens)  # [batch, 2, d_model]
    logit_diff_directions = directions[:, 0] - directions[:, 1]

    def residual_stack_to_logit_diff(stack: np.ndarray) -> np.ndarray:
        scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
        return np.einsum("...bd,bd->...", scaled, logit_diff_directions) / len(PROMPTS)

    accumulated, labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1,
                                                  return_labels=True)
    patched = model.patch("resid_pre", clean=prompt_tokens, corrupted=all_tokens[len(PROMPTS):],
                          answers=answer_tokens.tolist())
    return {
        "bracket_tokens_per_bracket": [len(ids) for ids in bracket_tokens],
        "exploratory_bracket_scores": exploratory_scores,
        **metrics,
        "logit_diff": logit_diff,
        "average_logit_diff_from_the_residual":
            residual_stack_to_logit_diff(cache["resid_post", -1][:, -1]),
        "logit_lens": residual_stack_to_logit_diff(accumulated),
        "logit_lens_labels": labels,
        "patch_resid_pre": np.asarray(patched),
    }


def run_with_transformer_lens(model) -> Results:
    """The notebook's own TransformerLens code, for --compare."""
    import torch
    from transformer_lens import patching

    vocabulary = model.to_str_tokens(np.arange(model.cfg.d_vocab - 1), prepend_bos=False)
    bracket_tokens = bracket_token_ids(vocabulary)

    lengths = [model.to_tokens(prompt).shape[1] for prompt in EXPLORATORY_PROMPTS]
    exploratory_logits = model(model.to_tokens(EXPLORATORY_PROMPTS), return_type="logits")
    exploratory_last = exploratory_logits[torch.arange(len(lengths)), torch.tensor(lengths) - 1]
    exploratory_scores = bracket_scores(exploratory_last.numpy(), bracket_tokens)

    all_tokens = model.to_tokens(PROMPTS + CORRUPTED_PROMPTS)
    all_last = model(all_tokens, return_type="logits")[:, -1].numpy()
    openness = [0] * len(PROMPTS) + [1] * len(CORRUPTED_PROMPTS)
    metrics = bracket_metrics(all_last, bracket_tokens, openness, ANSWER_SYMBOLS * 2)

    answer_tokens = torch.tensor([[model.to_single_token(right), model.to_single_token(wrong)]
                                  for right, wrong in zip(ANSWER_SYMBOLS, WRONG_SYMBOLS)])
    prompt_tokens, corrupted_tokens = all_tokens[:len(PROMPTS)], all_tokens[len(PROMPTS):]
    logits, cache = model.run_with_cache(prompt_tokens)
    answer_logits = logits[:, -1].gather(dim=-1, index=answer_tokens)
    logit_diff = answer_logits[:, 0] - answer_logits[:, 1]
    directions = model.tokens_to_residual_directions(answer_tokens)
    logit_diff_directions = directions[:, 0] - directions[:, 1]

    def residual_stack_to_logit_diff(stack):
        scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
        return torch.einsum("...bd,bd->...", scaled, logit_diff_directions) / len(PROMPTS)

    accumulated, labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1,
                                                  return_labels=True)

    def mean_logit_diff(patched_logits):
        answers = patched_logits[:, -1].gather(dim=-1, index=answer_tokens)
        return (answers[:, 0] - answers[:, 1]).mean()

    _, clean_cache = model.run_with_cache(prompt_tokens)
    patched = patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, mean_logit_diff)
    return {
        "bracket_tokens_per_bracket": [len(ids) for ids in bracket_tokens],
        "exploratory_bracket_scores": exploratory_scores,
        **metrics,
        "logit_diff": logit_diff.numpy(),
        "average_logit_diff_from_the_residual":
            residual_stack_to_logit_diff(cache["resid_post", -1][:, -1]).numpy(),
        "logit_lens": residual_stack_to_logit_diff(accumulated).numpy(),
        "logit_lens_labels": labels,
        "patch_resid_pre": patched.numpy(),
    }


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run, run_with_transformer_lens, PROCESSING, "neo", TOLERANCES)
