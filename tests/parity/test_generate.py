"""POST /generate, greedy, against TransformerLens's generate(do_sample=False).

Greedy decoding is deterministic, so the continuations must be the same
token ids (TL with its key-value cache, lensd recomputing each step: the same
logits to float32 rounding, and no near-ties in these cases — checked by
the margin between the two best logits at every step). Sampling is
reproducible from its seed; its random numbers are lensd's own, so it is
checked for that, not against torch's sampler.
"""

from __future__ import annotations

import numpy as np
import pytest
from tl_parity import daemon_post, tl_model

PROMPTS = ["The quick brown fox", "When Mary and John went to the store, John gave a drink to"]


@pytest.mark.parametrize("prompt", PROMPTS, ids=["fox", "ioi"])
def test_greedy_generation_matches_transformer_lens(daemon, fixtures, prompt):
    import torch

    model = tl_model(fixtures, "gpt2-a")
    got = daemon_post(daemon, "/v1/models/gpt2-a/generate",
                      {"prompt": prompt, "max_new_tokens": 8, "stop_at_eos": False})
    tokens = model.to_tokens(prompt)
    with torch.no_grad():
        want = model.generate(tokens, max_new_tokens=8, do_sample=False, stop_at_eos=False,
                              verbose=False)
        logits = model(want)[0, tokens.shape[1] - 1:-1]
    top2 = torch.topk(logits, 2, dim=-1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-3, "a near-tie: pick another prompt"
    assert got["tokens"][0] == want[0].tolist()


def test_sampling_is_reproducible_from_its_seed(daemon):
    body = {"prompts": PROMPTS, "max_new_tokens": 6, "do_sample": True, "temperature": 1.5,
            "top_k": 20, "seed": 1234, "stop_at_eos": False}
    first = daemon_post(daemon, "/v1/models/gpt2-a/generate", body)
    again = daemon_post(daemon, "/v1/models/gpt2-a/generate", body)
    other = daemon_post(daemon, "/v1/models/gpt2-a/generate", {**body, "seed": 99})
    assert first["tokens"] == again["tokens"]
    assert first["tokens"] != other["tokens"]
    assert all(isinstance(t, str) for t in first["text"])
    assert np.all([len(r) == len(p) + 6 for r, p in
                   zip(first["tokens"], [daemon_post(daemon, "/v1/models/gpt2-a/tokenize",
                                                     {"prompt": p})["tokens"][0] for p in PROMPTS])])
