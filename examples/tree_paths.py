#!/usr/bin/env python3
"""Seed 004, "backward-chaining circuits" (a six-layer model that finds paths
in trees), on lensd: a custom HookedTransformerConfig model with its own
vocabulary, run greedily, its attention patterns read, and linear probes
trained on its residual stream.

The notebook's steps, each one call: greedy continuation of a tree prompt
(the notebook's loop of model(tokens)[0, -1].argmax()) as generate; the
layer-0 and layer-1 attention patterns (cache["pattern", L][0]); and probes
on cache["resid_post", L] at every edge's child position, for each layer,
predicting which node is there.

    python examples/tree_paths.py --url http://127.0.0.1:8080 --model tree
    python examples/tree_paths.py --model tree --compare MODEL_DIR
"""

from __future__ import annotations

import numpy as np

from common import Results, main

PROCESSING = "none"  # HookedTransformer(cfg) + load_state_dict
N_NODES = 16
# The notebook's vocabulary: separators, then the ">child" tokens, then the nodes.
NODE_NAMES = sorted((str(i) for i in range(N_NODES)), key=len, reverse=True)
VOCABULARY = [",", ":", "|"] + [f">{name}" for name in NODE_NAMES] + NODE_NAMES
TOKEN_IDS = {token: i for i, token in enumerate(VOCABULARY)}
CONFIG = {  # load_baseline_model's HookedTransformerConfig
    "n_layers": 6, "d_model": 128, "n_ctx": N_NODES * 4 + 1, "n_heads": 1, "d_mlp": 512,
    "d_head": 128, "d_vocab": len(VOCABULARY), "attention_dir": "causal", "act_fn": "gelu",
}
GREEDY_STEPS = 7
PROBE_TREES = 128


def random_tree_edges(rng: np.random.Generator) -> list[tuple[int, int]]:
    """A random binary tree over the N_NODES nodes, as (parent, child) edges in random order."""
    order = rng.permutation(N_NODES)
    children = {int(order[0]): 0}
    edges = []
    for node in order[1:]:
        parent = int(rng.choice([p for p, n in children.items() if n < 2]))
        children[parent] += 1
        children[int(node)] = 0
        edges.append((parent, int(node)))
    return [edges[i] for i in rng.permutation(len(edges))]


def tree_prompt(edges: list[tuple[int, int]]) -> str:
    """The notebook's prompt up to the root delimiter: "3 >0 , 0 >11 , ... |"."""
    return " , ".join(f"{parent} >{child}" for parent, child in edges) + " |"


def probe_data() -> tuple[list[str], np.ndarray, np.ndarray]:
    """PROBE_TREES prompts (equal lengths), the positions of the edges' child
    tokens [n_edges] and the child at each [trees, n_edges]."""
    rng = np.random.default_rng(4)
    trees = [random_tree_edges(rng) for _ in range(PROBE_TREES)]
    positions = np.arange(N_NODES - 1) * 3 + 1  # "parent", ">child", "," per edge
    children = np.array([[child for _, child in edges] for edges in trees])
    return [tree_prompt(edges) for edges in trees], positions, children


def probe_scores(resid: np.ndarray, children: np.ndarray) -> tuple[np.ndarray, float]:
    """A linear probe fitted by least squares to one-hot node labels:
    resid [trees, edges, d_model] -> (scores [trees * edges, N_NODES], accuracy)."""
    x = resid.reshape(-1, resid.shape[-1]).astype(np.float64)
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    labels = np.eye(N_NODES)[children.ravel()]
    weights, *_ = np.linalg.lstsq(x, labels, rcond=None)
    scores = x @ weights
    return scores, float((scores.argmax(-1) == children.ravel()).mean())


def run(model) -> Results:
    """The notebook on lensd."""
    edges = random_tree_edges(np.random.default_rng(42))
    prompt = model.to_tokens(tree_prompt(edges), prepend_bos=False)  # [1, pos]
    greedy = model.generate(prompt, max_new_tokens=GREEDY_STEPS, stop_at_eos=False,
                            return_type="tokens")[0, prompt.shape[1]:]
    print("greedy continuation:", [VOCABULARY[i] for i in greedy])

    _, cache = model.run_with_cache(prompt, names_filter="blocks.*.attn.hook_pattern",
                                    return_type=None)
    results: Results = {"greedy": greedy,
                        "l0_attention_pattern": cache["pattern", 0][0],
                        "l1_attention_pattern": cache["pattern", 1][0]}

    prompts, positions, children = probe_data()
    _, cache = model.run_with_cache(model.to_tokens(prompts, prepend_bos=False),
                                    names_filter="blocks.*.hook_resid_post", pos_slice=positions,
                                    return_type=None)
    for layer in range(model.cfg.n_layers):
        scores, accuracy = probe_scores(cache["resid_post", layer], children)
        print(f"probe on resid_post {layer}: accuracy {accuracy:.1%}")
        results[f"probe_scores_resid_post_{layer}"] = scores
    return results


def run_with_transformer_lens(model) -> Results:
    """The notebook's own TransformerLens code, for --compare."""
    import torch

    def tokens_of(text: str) -> list[int]:
        return [TOKEN_IDS[token] for token in text.split()]

    prompt_idx = tokens_of(tree_prompt(random_tree_edges(np.random.default_rng(42))))
    greedy = []
    for _ in range(GREEDY_STEPS):
        predicted = int(model(torch.tensor(prompt_idx))[0, -1].argmax())
        greedy.append(predicted)
        prompt_idx.append(predicted)
    _, cache = model.run_with_cache(torch.tensor(prompt_idx[:-GREEDY_STEPS])[None])
    results: Results = {"greedy": np.array(greedy),
                        "l0_attention_pattern": cache["pattern", 0][0].numpy(),
                        "l1_attention_pattern": cache["pattern", 1][0].numpy()}

    prompts, positions, children = probe_data()
    _, cache = model.run_with_cache(torch.tensor([tokens_of(p) for p in prompts]))
    for layer in range(model.cfg.n_layers):
        scores, _ = probe_scores(cache["resid_post", layer][:, positions].numpy(), children)
        results[f"probe_scores_resid_post_{layer}"] = scores
    return results


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run, run_with_transformer_lens, PROCESSING, "tree")
