"""Requests in parallel get what they get one by one: each model's executor
runs one job at a time and nothing leaks from one job into another.

The one exception to bit-for-bit equality: logits requests that wait
together for a causal model share one forward pass (their prompts stacked,
right-padded), and OpenBLAS's float32 results for a row depend on how many
rows a product has (~1e-6 relative). Those are compared within the parity
tolerance (1e-5 of the tensor's scale); everything else exactly.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lensd_http import JSON, SAFETENSORS, json_of, safetensors_of

GPT2 = "/v1/models/gpt2"
BRACKETS = "/v1/models/brackets"

# 16 requests: both models, logits and run_with_cache, JSON and safetensors,
# different shapes, padding sides and positions, so that a mix-up shows.
REQUESTS = [
    (f"{GPT2}/logits", {"prompt": "The cat sat on the mat", "top_k": 5}, JSON),
    (f"{GPT2}/logits", {"prompts": ["Hello world", "Hi", "When Mary and John went"]}, SAFETENSORS),
    (f"{GPT2}/logits", {"prompts": ["a b c d e f g", "x"], "padding_side": "left",
                        "log_probs": True, "loss": True}, SAFETENSORS),
    (f"{GPT2}/logits", {"tokens": [[464, 3797, 3332], [15496]], "positions": [-1], "top_k": 3}, JSON),
    (f"{GPT2}/run_with_cache", {"prompt": "Hi there", "names_filter": "blocks.*.attn.hook_pattern"}, JSON),
    (f"{GPT2}/run_with_cache", {"prompts": ["The Eiffel Tower is in", "Paris"]}, SAFETENSORS),
    (f"{GPT2}/run_with_cache", {"prompt": "One two three four five", "positions": [0, -1],
                                "names_filter": "blocks.1.*", "logits": False}, JSON),
    (f"{GPT2}/run_with_cache", {"prompts": ["x y", "x y z w"], "padding_side": "left",
                                "dtype": "float16"}, SAFETENSORS),
    (f"{BRACKETS}/logits", {"prompt": "(())"}, JSON),
    (f"{BRACKETS}/logits", {"prompts": ["()()", "((()))", "(()"]}, SAFETENSORS),
    (f"{BRACKETS}/logits", {"prompt": "))((", "positions": [0]}, JSON),
    (f"{BRACKETS}/logits", {"prompt": "((((((((((((()))))))))))))", "log_probs": True}, SAFETENSORS),
    (f"{BRACKETS}/run_with_cache", {"prompt": "(()())"}, JSON),
    (f"{BRACKETS}/run_with_cache", {"prompts": ["()", "(())()"]}, SAFETENSORS),
    (f"{BRACKETS}/run_with_cache", {"prompt": "((", "names_filter": "blocks.2.*"}, JSON),
    (f"{BRACKETS}/run_with_cache", {"prompt": "())(", "dtype": "float16",
                                    "names": ["blocks.0.hook_resid_post"]}, SAFETENSORS),
]
assert len(REQUESTS) == 16


def decoded(answer):
    status, headers, body = answer
    assert status == 200, body[:500]
    if headers["Content-Type"] == SAFETENSORS:
        tensors, fields = safetensors_of(body)
        return {"fields": fields, **tensors}
    return json_of(body)


def numbers(x):
    """Every number in an answer, in order (tensors flattened), and the rest."""
    if isinstance(x, np.ndarray):
        return [x.astype(np.float64).ravel()], [(x.dtype.str, x.shape)]
    if isinstance(x, dict):
        nums, rest = [], []
        for k in sorted(x):
            n, r = numbers(x[k])
            nums += n
            rest.append((k, r))
        return nums, rest
    if isinstance(x, list):
        nums, rest = [], []
        for v in x:
            n, r = numbers(v)
            nums += n
            rest.append(r)
        return nums, rest
    if isinstance(x, float):
        return [np.array([x])], ["float"]
    return [], [x]


def assert_same(got, want, path: str, what: str):
    if not (path.startswith(GPT2) and path.endswith("/logits")):
        g, w = numbers(got), numbers(want)
        assert g[1] == w[1] and all(np.array_equal(a, b) for a, b in zip(g[0], w[0])), what
        return
    (g_nums, g_rest), (w_nums, w_rest) = numbers(got), numbers(want)
    assert g_rest == w_rest, what
    for a, b in zip(g_nums, w_nums):
        scale = max(1.0, float(np.abs(b).max())) if b.size else 1.0
        assert np.abs(a - b).max(initial=0.0) <= 1e-5 * scale, what


def test_parallel_requests_equal_sequential_ones(lensd):
    def send(req):
        path, body, accept = req
        return lensd.post(path, body, accept=accept)

    one_by_one = [decoded(send(r)) for r in REQUESTS]

    start = threading.Barrier(len(REQUESTS))

    def send_together(req):
        start.wait(timeout=30)
        return send(req)

    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        answers = list(pool.map(send_together, REQUESTS))
    ids = [headers["X-Request-Id"] for _, headers, _ in answers]
    assert len(set(ids)) == len(ids)
    for i, (req, answer) in enumerate(zip(REQUESTS, answers)):
        assert_same(decoded(answer), one_by_one[i], req[0],
                    f"request {i} ({req[0]}) differs when sent in parallel")


def test_repeated_parallel_rounds_stay_identical(lensd):
    """Three more rounds, in a different order each time."""
    reference = {i: decoded(lensd.post(p, b, accept=a)) for i, (p, b, a) in enumerate(REQUESTS)}
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(len(REQUESTS)).tolist()
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: (i, decoded(lensd.post(REQUESTS[i][0], REQUESTS[i][1],
                                                                 accept=REQUESTS[i][2]))), order))
        for i, answer in got:
            assert_same(answer, reference[i], REQUESTS[i][0], f"request {i} differs")
