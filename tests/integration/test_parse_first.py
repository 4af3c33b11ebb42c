"""Requests are parsed on the HTTP side, before they queue: a bad request is
answered at once even while its model runs a long sweep, and sizes are
counted on what the answer will hold before anything is allocated or run.
Against the session daemon (gpt2-a as "gpt2": 2 layers, 4 heads, d_model 64,
n_ctx 128, GPT-2's 50,257 tokens)."""
from __future__ import annotations

import json
import threading
import time

from lensd_http import error_of, json_of
from test_patch_progress import LONG, wait_for_progress

GPT2 = "/v1/models/gpt2"
ROW = [[1 + (i * 13) % 500 for i in range(128)]]


def test_a_bad_request_is_answered_while_its_model_runs_a_sweep(lensd, post):
    """It waited behind the sweep for its 400 (minutes), holding a queue slot."""
    answer = {}
    sweep = threading.Thread(target=lambda: answer.update(
        zip(("status", "headers", "body"),
            post(f"{GPT2}/patch", {**LONG, "progress_id": "p-parse-first"}))))
    sweep.start()
    try:
        wait_for_progress(lensd, "p-parse-first")
        for body, field in (({"prompt": 5}, "prompt"), ({"prompt": "hi", "top_k": "x"}, "top_k"),
                            ({"tokens": [[1, 2, 99999999]]}, "tokens[0]"),
                            ({"prompt": "hi", "names": ["blocks.9.hook_resid_post"]}, "names[0]")):
            path = "run_with_cache" if "names" in body else "logits"
            started = time.monotonic()
            status, _, data = post(f"{GPT2}/{path}", body)
            assert status in (400, 422), data[:300]
            assert error_of(data)["field"] == field
            assert time.monotonic() - started < 1.0, "answered only after the sweep"
        progress = json_of(lensd.get("/v1/progress/p-parse-first")[2])
        assert progress["done"] < progress["total"], "the sweep ended first: make it longer"
    finally:
        lensd.request("DELETE", "/v1/progress/p-parse-first")
        sweep.join(timeout=120)
    assert answer["status"] == 409, answer["body"][:300]


def test_repeated_logit_positions_are_counted_before_the_forward(lensd, post):
    """20,000 positions of 50,257 logits: 4 GB answered, refused before the forward."""
    before = lensd.rss_bytes()
    status, _, data = post(f"{GPT2}/logits", {"tokens": ROW, "positions": [0] * 20_000})
    assert status == 413 and error_of(data)["field"] == "positions", data[:300]
    assert "limits.max_response_bytes" in error_of(data)["message"]
    assert lensd.rss_bytes() - before < 100 << 20
    # top_k answers no rows of V: the same positions are fine
    status, _, data = post(f"{GPT2}/logits", {"tokens": ROW, "positions": [0] * 200, "top_k": 2})
    assert status == 200, data[:300]
    assert json.loads(data)["top_k_ids"]["shape"] == [1, 200, 2]


def test_repeated_attention_layers_are_counted_before_the_forward(lensd, post):
    """200,000 layers x 4 heads of 128 x 128 patterns: 52 GB (it was a 507 or worse)."""
    before = lensd.rss_bytes()
    status, _, data = post(f"{GPT2}/attention", {"tokens": ROW, "layers": [0] * 200_000})
    assert status == 413 and error_of(data)["field"] == "layers", data[:300]
    assert lensd.rss_bytes() - before < 100 << 20


def test_repeated_batch_rows_are_counted(lensd, post):
    """A "batch" selection is a copy of its rows: 100,000 copies of a 2 MB row."""
    body = {"tokens": ROW, "logits": False, "batch": [0] * 100_000}
    status, _, data = post(f"{GPT2}/run_with_cache", body)
    assert status == 413, data[:300]
    assert "limits.max_response_bytes" in error_of(data)["message"]


def test_a_kept_cache_holds_only_the_rows_it_answers(start_daemon, models):
    """keep with batch: [0] of 16 prompts kept the whole batch's buffers too:
    16x the memory its accounting (and the TTL eviction) counted."""
    d = start_daemon(["--model", f"gpt2={models['gpt2']}"])
    rows = [[1 + (i * k) % 500 for i in range(128)] for k in range(1, 17)]
    body = {"tokens": rows, "logits": False, "keep": True, "batch": [0]}
    d.post_json(f"{GPT2}/run_with_cache", body)  # the allocator's first growth, uncounted
    before = d.rss_bytes()
    kept = [d.post_json(f"{GPT2}/run_with_cache", body) for _ in range(8)]
    grown = d.rss_bytes() - before
    counted = d.metric("lensd_kept_cache_bytes")
    one = counted / 9
    assert all(k["tensors"]["blocks.0.hook_resid_pre"] == [1, 128, 64] for k in kept)
    # what 8 more kept caches really hold (measured: 1.16x what is counted; 2.1x before,
    # with each one's 16-prompt buffers)
    assert grown < 8 * one * 1.5, (grown, one)


def peak_rss_bytes(d) -> int:
    """VmHWM: the most memory the daemon has held."""
    for line in open(f"/proc/{d.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_json_answers_are_counted_as_text_and_written_as_text(start_daemon, models, tmp_path):
    """A JSON answer was a tree of values (about 20x its tensors' bytes: a 78 MB
    cache peaked 1.57 GB) and was counted as its binary bytes against
    limits.max_response_bytes."""
    config = tmp_path / "limits.json"
    config.write_text(json.dumps({"limits": {"max_response_bytes": "96MiB"}}))
    d = start_daemon(["--config", str(config), "--model", f"gpt2={models['gpt2']}"])
    rows = [[1 + (i * k) % 500 for i in range(128)] for k in range(1, 3)]
    # 2 prompts x 128 positions x 50,257 logits: 51 MB of float32, up to 206 MB as text
    status, _, data = d.post(f"{GPT2}/logits", {"tokens": rows})
    assert status == 413, data[:300]
    assert "application/vnd.safetensors" in error_of(data)["message"]
    status, _, data = d.post(f"{GPT2}/logits", {"tokens": rows}, accept="application/vnd.safetensors")
    assert status == 200
    # 12 MB of float32 as JSON: the text, not a tree 20x the tensor
    before = peak_rss_bytes(d)
    status, _, data = d.post(f"{GPT2}/logits", {"tokens": rows, "positions": list(range(32))})
    assert status == 200, data[:300]
    logits = json.loads(data)["logits"]
    assert logits["shape"] == [2, 32, 50257] and isinstance(logits["data"][0][0][0], float)
    grown = peak_rss_bytes(d) - before
    # measured: 103 MB (the forward's 51 MB of logits at every position, and the
    # text); 251 MB as a tree of values
    assert grown < 150 << 20, f"peak grew {grown >> 20} MB"
