"""Bad requests: each gets the documented status, error.code and (where one
field is at fault) error.field, and never takes the daemon down or leaks
memory; the daemon keeps serving others while a client dawdles.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass, field as dc_field

import numpy as np
import pytest

from lensd_http import (JSON, NPY, SAFETENSORS, WEB_SECRET, error_of, json_of, model_path,
                        safetensors_of, wait_until)

GPT2 = "/v1/models/gpt2"
PATCH = {"clean": {"prompt": "Hello world"}, "corrupted": {"prompt": "Hello there"},
         "metric": {"answers": [" a", " b"]}}
BRACKETS = "/v1/models/brackets"


@dataclass
class Bad:
    id: str
    status: int
    code: str
    field: str | tuple | None = None  # None: not checked (the API names no field)
    path: str = f"{GPT2}/logits"
    body: object = None               # dict/list: JSON; str/bytes: raw; callable: made on use
    method: str = "POST"
    headers: dict = dc_field(default_factory=dict)
    accept: str | None = None
    message_has: tuple = ()


def nine_mib() -> bytes:
    return b'{"prompt": "' + b"a" * (9 << 20) + b'"}'


P = {"prompt": "The cat sat"}
LONG_TEXT = " a" * 140            # 141 tokens with the BOS: over gpt2-a's n_ctx of 128

CASES = [
    # -- the body as a whole
    Bad("malformed-json", 400, "bad_request", body="{bad"),
    Bad("truncated-json", 400, "bad_request", body='{"prompt": "x"'),
    Bad("body-is-a-list", 400, "bad_request", body="[1, 2]"),
    Bad("body-is-a-string", 400, "bad_request", body='"x"'),
    Bad("body-is-null", 400, "bad_request", body="null"),
    Bad("body-empty", 400, "bad_request", body=b""),
    Bad("body-not-utf8", 400, "bad_request", body=b'{"prompt": "\xff\xfe"}'),
    Bad("no-prompt", 400, "bad_request", "prompt", body={}),
    Bad("prompt-and-prompts", 400, "bad_request", "prompt", body={"prompt": "x", "prompts": ["y"]}),
    # -- prompts
    Bad("prompt-number", 400, "bad_request", "prompt", body={"prompt": 5}),
    Bad("prompt-list", 400, "bad_request", "prompt", body={"prompt": ["x"]}),
    Bad("prompt-null", 400, "bad_request", "prompt", body={"prompt": None}),
    Bad("prompts-string", 400, "bad_request", "prompts", body={"prompts": "abc"}),
    Bad("prompts-with-number", 400, "bad_request", "prompts[1]", body={"prompts": ["x", 5]}),
    Bad("prompts-empty", 400, "bad_request", "prompts", body={"prompts": []}),
    Bad("tokens-string", 400, "bad_request", "tokens", body={"tokens": "1 2"}),
    Bad("tokens-flat", 400, "bad_request", "tokens[0]", body={"tokens": [1, 2]}),
    Bad("tokens-with-strings", 400, "bad_request", ("tokens[0]", "tokens[0][1]"),
        body={"tokens": [[1, "a"]]}),
    Bad("tokens-with-float", 400, "bad_request", ("tokens[0]", "tokens[0][0]"), body={"tokens": [[1.5]]}),
    Bad("token-id-d_vocab", 422, "unprocessable", ("tokens[0]", "tokens[0][0]"), body={"tokens": [[50257]]}),
    Bad("token-id-negative", 422, "unprocessable", ("tokens[1]", "tokens[1][0]"),
        body={"tokens": [[1], [-1]]}),
    Bad("token-row-empty", 400, "bad_request", "tokens[0]", body={"tokens": [[]]}),
    Bad("tokens-empty", 400, "bad_request", "tokens", body={"tokens": []}),
    Bad("prepend_bos-string", 400, "bad_request", "prepend_bos", body={**P, "prepend_bos": "yes"}),
    Bad("prepend_bos-number", 400, "bad_request", "prepend_bos", body={**P, "prepend_bos": 1}),
    Bad("padding_side-wrong", 400, "bad_request", "padding_side", body={**P, "padding_side": "middle"}),
    Bad("padding_side-number", 400, "bad_request", "padding_side", body={**P, "padding_side": 1}),
    Bad("prompt-empty-no-bos", 400, "bad_request", "prompt", body={"prompt": "", "prepend_bos": False}),
    Bad("prompts-empty-item-no-bos", 400, "bad_request", "prompts[0]",
        body={"prompts": ["", "x"], "prepend_bos": False}),
    Bad("brackets-char-not-in-vocab", 400, "bad_request", "prompt", path=f"{BRACKETS}/logits",
        body={"prompt": "(x)"}),
    # BOS + "x" is two tokens: one prompt more than limits.max_batch_tokens (1,048,576) allows
    Bad("too-many-batch-tokens", 413, "too_large", "prompts", body={"prompts": ["x"] * 524289}),
    Bad("prompt-over-n_ctx", 413, "too_large", "prompt", body={"prompt": LONG_TEXT}),
    Bad("tokens-over-n_ctx", 413, "too_large", "tokens[0]", body={"tokens": [[257] * 129]}),
    Bad("brackets-tokens-over-n_ctx", 413, "too_large", "tokens[0]", path=f"{BRACKETS}/logits",
        body={"tokens": [[3] * 43]}),
    # -- positions, top_k and flags of logits
    Bad("positions-string", 400, "bad_request", "positions", body={**P, "positions": "0"}),
    Bad("positions-empty", 400, "bad_request", "positions", body={**P, "positions": []}),
    Bad("positions-with-string", 400, "bad_request", "positions[0]", body={**P, "positions": ["0"]}),
    Bad("positions-with-float", 400, "bad_request", "positions[1]", body={**P, "positions": [0, 0.5]}),
    Bad("positions-past-end", 422, "unprocessable", "positions[0]", body={**P, "positions": [99]}),
    Bad("positions-before-start", 422, "unprocessable", "positions[0]", body={**P, "positions": [-99]}),
    Bad("top_k-negative", 422, "unprocessable", "top_k", body={**P, "top_k": -3}),
    Bad("top_k-zero", 422, "unprocessable", "top_k", body={**P, "top_k": 0}),
    Bad("top_k-huge", 422, "unprocessable", "top_k", body={**P, "top_k": 10**12}),
    Bad("top_k-string", 400, "bad_request", "top_k", body={**P, "top_k": "3"}),
    Bad("top_k-float", 400, "bad_request", "top_k", body={**P, "top_k": 2.5}),
    Bad("top_k-bool", 400, "bad_request", "top_k", body={**P, "top_k": True}),
    Bad("log_probs-string", 400, "bad_request", "log_probs", body={**P, "log_probs": "true"}),
    Bad("loss-number", 400, "bad_request", "loss", body={**P, "loss": 1}),
    Bad("per_token_loss-null", 400, "bad_request", "per_token_loss", body={**P, "per_token_loss": None}),
    # -- run_with_cache
    Bad("names-unknown-hook", 400, "bad_request", "names[0]", path=f"{GPT2}/run_with_cache",
        body={**P, "names": ["blocks.0.attn.hook_patern"]}, message_has=("blocks.0.attn.hook_pattern",)),
    Bad("names-layer-out-of-range", 400, "bad_request", "names[1]", path=f"{GPT2}/run_with_cache",
        body={**P, "names": ["hook_embed", "blocks.7.hook_resid_post"]},
        message_has=("blocks.1.hook_resid_post",)),
    Bad("names-string", 400, "bad_request", "names", path=f"{GPT2}/run_with_cache",
        body={**P, "names": "hook_embed"}),
    Bad("names-with-number", 400, "bad_request", "names[0]", path=f"{GPT2}/run_with_cache",
        body={**P, "names": [3]}),
    Bad("names_filter-matches-nothing", 400, "bad_request", "names_filter", path=f"{GPT2}/run_with_cache",
        body={**P, "names_filter": "blocks.*.hook_nothing"}),
    Bad("names_filter-list-one-matches-nothing", 400, "bad_request", "names_filter[1]",
        path=f"{GPT2}/run_with_cache", body={**P, "names_filter": ["blocks.*", "nope.*"]}),
    Bad("names_filter-number", 400, "bad_request", "names_filter", path=f"{GPT2}/run_with_cache",
        body={**P, "names_filter": 5}),
    Bad("names_filter-list-with-number", 400, "bad_request", "names_filter[1]",
        path=f"{GPT2}/run_with_cache", body={**P, "names_filter": ["blocks.*", 5]}),
    Bad("dtype-unknown", 400, "bad_request", "dtype", path=f"{GPT2}/run_with_cache",
        body={**P, "dtype": "int8"}),
    Bad("dtype-number", 400, "bad_request", "dtype", path=f"{GPT2}/run_with_cache", body={**P, "dtype": 16}),
    Bad("float16-as-json", 406, "not_acceptable", None, path=f"{GPT2}/run_with_cache",
        body={**P, "dtype": "float16", "names": ["hook_embed"]}),
    Bad("logits-flag-string", 400, "bad_request", "logits", path=f"{GPT2}/run_with_cache",
        body={**P, "logits": "no"}),
    Bad("cache-positions-past-end", 422, "unprocessable", "positions[0]", path=f"{GPT2}/run_with_cache",
        body={**P, "names": ["hook_embed"], "positions": [4]}),
    Bad("npy-several-tensors", 406, "not_acceptable", path=f"{GPT2}/run_with_cache", body=P, accept=NPY),
    Bad("npy-logits-and-log_probs", 406, "not_acceptable", body={**P, "log_probs": True}, accept=NPY),
    # -- attention
    Bad("layers-out-of-range", 422, "unprocessable", "layers[0]", path=f"{GPT2}/attention",
        body={**P, "layers": [2]}),
    Bad("layers-negative-out-of-range", 422, "unprocessable", "layers[1]", path=f"{GPT2}/attention",
        body={**P, "layers": [0, -3]}),
    Bad("heads-out-of-range", 422, "unprocessable", "heads[0]", path=f"{GPT2}/attention",
        body={**P, "heads": [4]}),
    Bad("heads-string", 400, "bad_request", "heads", path=f"{GPT2}/attention", body={**P, "heads": "0"}),
    Bad("layers-with-string", 400, "bad_request", "layers[0]", path=f"{GPT2}/attention",
        body={**P, "layers": ["0"]}),
    Bad("layers-empty", 400, "bad_request", "layers", path=f"{GPT2}/attention", body={**P, "layers": []}),
    Bad("attention-prompts", 400, "bad_request", "prompt", path=f"{GPT2}/attention", body={"prompts": ["x"]}),
    Bad("attention-no-prompt", 400, "bad_request", "prompt", path=f"{GPT2}/attention", body={}),
    # -- test_prompt
    Bad("test_prompt-no-answer", 400, "bad_request", "answer", path=f"{GPT2}/test_prompt", body=P),
    Bad("test_prompt-answer-number", 400, "bad_request", "answer", path=f"{GPT2}/test_prompt",
        body={**P, "answer": 3}),
    Bad("test_prompt-prompt-number", 400, "bad_request", "prompt", path=f"{GPT2}/test_prompt",
        body={"prompt": 3, "answer": "x"}),
    Bad("test_prompt-top_k-string", 400, "bad_request", "top_k", path=f"{GPT2}/test_prompt",
        body={**P, "answer": "x", "top_k": "3"}),
    Bad("test_prompt-top_k-negative", 422, "unprocessable", "top_k", path=f"{GPT2}/test_prompt",
        body={**P, "answer": "x", "top_k": -1}),
    Bad("test_prompt-prepend_space-number", 400, "bad_request", "prepend_space_to_answer",
        path=f"{GPT2}/test_prompt", body={**P, "answer": "x", "prepend_space_to_answer": 1}),
    # -- detokenize
    Bad("detokenize-string", 400, "bad_request", "tokens", path=f"{GPT2}/detokenize", body={"tokens": "abc"}),
    Bad("detokenize-missing", 400, "bad_request", "tokens", path=f"{GPT2}/detokenize", body={"prompt": "x"}),
    Bad("detokenize-with-string", 400, "bad_request", ("tokens", "tokens[1]"), path=f"{GPT2}/detokenize",
        body={"tokens": [1, "a"]}),
    Bad("detokenize-id-d_vocab", 422, "unprocessable", ("tokens", "tokens[0]"), path=f"{GPT2}/detokenize",
        body={"tokens": [50257]}),
    Bad("detokenize-negative-id", 422, "unprocessable", ("tokens[1]", "tokens[1][0]"),
        path=f"{GPT2}/detokenize", body={"tokens": [[1], [-1]]}),
    Bad("detokenize-mixed-rows", 400, "bad_request", "tokens[1]", path=f"{GPT2}/detokenize",
        body={"tokens": [[1], 2]}),
    # -- logit_diff, run_with_hooks, generate, kept caches
    Bad("logit_diff-no-answers", 400, "bad_request", "answers", path=f"{GPT2}/logit_diff", body=P),
    Bad("logit_diff-answer-two-tokens", 422, "unprocessable", "answers[0]", path=f"{GPT2}/logit_diff",
        body={**P, "answers": [" Mary John", " x"]}),
    Bad("logit_diff-half-pair", 400, "bad_request", "answers[0]", path=f"{GPT2}/logit_diff",
        body={**P, "answers": [[" Mary"]]}),
    Bad("logit_diff-pairs-for-prompts", 422, "unprocessable", "answers", path=f"{GPT2}/logit_diff",
        body={"prompts": ["a", "b"], "answers": [[" a", " b"]]}),
    Bad("logit_diff-unknown-attribution", 400, "bad_request", "attribution[0]", path=f"{GPT2}/logit_diff",
        body={**P, "answers": [" a", " b"], "attribution": ["nope"]}),
    Bad("hooks-not-a-list", 400, "bad_request", "hooks", path=f"{GPT2}/run_with_hooks",
        body={**P, "hooks": "x"}),
    Bad("hooks-unknown-op", 400, "bad_request", "hooks[0].op", path=f"{GPT2}/run_with_hooks",
        body={**P, "hooks": [{"name": "hook_embed", "op": "explode"}]}),
    Bad("hooks-unknown-hook", 400, "bad_request", "hooks[0].name", path=f"{GPT2}/run_with_hooks",
        body={**P, "hooks": [{"name": "hook_embd", "op": "zero"}]}, message_has=("hook_embed",)),
    Bad("hooks-scale-without-factor", 400, "bad_request", "hooks[0].factor", path=f"{GPT2}/run_with_hooks",
        body={**P, "hooks": [{"name": "hook_embed", "op": "scale"}]}),
    Bad("hooks-patch-without-source", 400, "bad_request", "patch_from", path=f"{GPT2}/run_with_hooks",
        body={**P, "hooks": [{"name": "hook_embed", "op": "patch"}]}),
    Bad("generate-max_new_tokens-negative", 422, "unprocessable", "max_new_tokens", path=f"{GPT2}/generate",
        body={**P, "max_new_tokens": -1}),
    Bad("generate-max_new_tokens-string", 400, "bad_request", "max_new_tokens", path=f"{GPT2}/generate",
        body={**P, "max_new_tokens": "3"}),
    Bad("generate-temperature-negative", 422, "unprocessable", "temperature", path=f"{GPT2}/generate",
        body={**P, "do_sample": True, "temperature": -1}),
    Bad("patch-unknown-sweep", 400, "bad_request", "sweep", path=f"{GPT2}/patch",
        body={"sweep": "resid_post", **PATCH}, message_has=("resid_pre", "attn_head_by_pos_every")),
    Bad("patch-no-clean", 400, "bad_request", "clean", path=f"{GPT2}/patch",
        body={"sweep": "resid_pre", "corrupted": PATCH["corrupted"], "metric": PATCH["metric"]}),
    Bad("patch-metric-type", 400, "bad_request", "metric.type", path=f"{GPT2}/patch",
        body={"sweep": "resid_pre", **PATCH, "metric": {"type": "loss"}}),
    Bad("patch-shapes-differ", 422, "unprocessable", "corrupted", path=f"{GPT2}/patch",
        body={"sweep": "resid_pre", **PATCH, "corrupted": {"prompt": "Hello there world"}}),
    Bad("patch-too-much-work", 413, "too_large", "sweep", path=f"{GPT2}/patch",
        body={"sweep": "attn_head_pattern_dest_src_pos", "clean": {"tokens": [[1] * 128] * 2},
              "corrupted": {"tokens": [[2] * 128] * 2}, "metric": {"answers": [1, 2]}},
        message_has=("limits.max_patch_tokens", "131072 patched runs")),
    Bad("keep-string", 400, "bad_request", "keep", path=f"{GPT2}/run_with_cache", body={**P, "keep": "yes"}),
    Bad("cache-unknown", 404, "not_found", path="/v1/caches/c0123456789abcdef", method="GET"),
    # -- routes and methods
    Bad("unknown-model", 404, "not_found", "model", path="/v1/models/nope/logits", body=P),
    Bad("unknown-model-detail", 404, "not_found", "model", path="/v1/models/nope", method="GET"),
    Bad("unknown-route", 404, "not_found", path="/v1/nope", method="GET"),
    Bad("unknown-model-route", 404, "not_found", path=f"{GPT2}/no_such_action", body=P),
    Bad("get-logits", 405, "method_not_allowed", method="GET"),
    Bad("put-run_with_cache", 405, "method_not_allowed", path=f"{GPT2}/run_with_cache", method="PUT", body=P),
    Bad("post-healthz", 405, "method_not_allowed", path="/healthz", body={}),
    Bad("post-metrics", 405, "method_not_allowed", path="/metrics", body={}),
    Bad("post-models", 405, "method_not_allowed", path="/v1/models", body={}),
    Bad("delete-model", 405, "method_not_allowed", path=GPT2, method="DELETE"),
    Bad("post-static", 405, "method_not_allowed", path="/index.html", body={}),
    # -- media types and size
    Bad("accept-html", 406, "not_acceptable", body=P, accept="text/html"),
    Bad("accept-image-on-cache", 406, "not_acceptable", path=f"{GPT2}/run_with_cache", body=P,
        accept="image/png"),
    Bad("content-type-text", 415, "unsupported_media_type", body=json.dumps(P),
        headers={"Content-Type": "text/plain"}),
    Bad("content-type-xml", 415, "unsupported_media_type", body=json.dumps(P),
        headers={"Content-Type": "application/xml"}),
    Bad("body-9MiB", 413, "too_large", body=nine_mib, headers={"Content-Type": JSON}),
    # -- static files outside the web root
    Bad("traversal-dotdot", 404, "not_found", path="/../../etc/passwd", method="GET"),
    Bad("traversal-encoded", 404, "not_found", path="/%2e%2e/%2e%2e/%2e%2e/etc/passwd", method="GET"),
    Bad("traversal-encoded-slash", 404, "not_found", path="/..%2f..%2f..%2fetc%2fpasswd", method="GET"),
    Bad("traversal-sibling", 404, "not_found", path="/../secret.txt", method="GET"),
    Bad("traversal-symlink", 404, "not_found", path="/leak.txt", method="GET"),
    Bad("traversal-absolute", 404, "not_found", path="//etc/passwd", method="GET"),
]

assert len(CASES) >= 50 and len({c.id for c in CASES}) == len(CASES)


def send(daemon, case: Bad):
    body = case.body() if callable(case.body) else case.body
    return daemon.request(case.method, case.path, body, accept=case.accept, headers=case.headers)


def check(case: Bad, status: int, headers, body: bytes):
    assert b"root:x:0:0" not in body and WEB_SECRET.encode() not in body, "leaked a file"
    assert status == case.status, f"{case.id}: status {status}, body {body[:500]!r}"
    assert headers["Content-Type"].startswith(JSON), headers["Content-Type"]
    assert headers["X-Request-Id"]
    err = error_of(body)
    assert err["code"] == case.code, err
    if case.field is not None:
        allowed = case.field if isinstance(case.field, tuple) else (case.field,)
        assert err.get("field") in allowed, f"{case.id}: field {err.get('field')!r}, want {allowed}: {err}"
    for text in case.message_has:
        assert text in err["message"], err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request(lensd, case):
    check(case, *send(lensd, case))


def test_still_answers_correctly_after_the_table(post, cli_cache, models):
    tensors, _ = safetensors_of(post(f"{GPT2}/logits", {"prompt": "The cat sat"}, accept=SAFETENSORS)[2])
    ref = cli_cache(models["gpt2"], ["--prompt", "The cat sat", "--names", "hook_embed"])
    assert np.array_equal(tensors["tokens"], ref["tokens"])
    assert np.array_equal(tensors["logits"], ref["logits"])


def test_memory_stays_flat_over_the_table(lensd):
    """Five more runs of the table leave the daemon's RSS where it was.

    Warm-up first: glibc keeps a freed large buffer in the arena of the
    thread that used it, so the 9 MiB body raises each HTTP thread's
    high-water mark once (8 MiB per thread, 4 threads), wherever the kernel
    happens to hand the connection. That is a plateau, not a leak; the
    warm-up reaches it so that 5 runs measure growth. Each answer must
    also be the same as in the warm-up (the table test checks what it is).
    """
    first = {case.id: send(lensd, case)[0] for case in CASES}
    for case in CASES:
        send(lensd, case)
    big = next(c for c in CASES if c.id == "body-9MiB")
    for _ in range(12):
        send(lensd, big)
    before = lensd.rss_bytes()
    for _ in range(5):
        for case in CASES:
            assert send(lensd, case)[0] == first[case.id], case.id
    grown = lensd.rss_bytes() - before
    print(f"RSS {before / 2**20:.1f} MiB -> {(before + grown) / 2**20:.1f} MiB")
    assert grown <= 20 << 20, f"RSS grew by {grown / 2**20:.1f} MiB over 5 runs of {len(CASES)} bad requests"


def test_a_slow_client_does_not_hold_up_others(lensd, post, get):
    """Clients that send half a request and wait must not stop the daemon
    answering others meanwhile."""
    host, port = lensd.url.split("//")[1].split(":")
    stalled = []
    try:
        for i in range(8):
            s = socket.create_connection((host, int(port)), timeout=10)
            if i % 2:  # half the headers
                s.sendall(b"POST /v1/models/gpt2/logits HTTP/1.1\r\nHost: x\r\nContent-Le")
            else:      # the headers and half the body
                s.sendall(b"POST /v1/models/gpt2/logits HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"prompt\": ")
            stalled.append(s)
        started = time.monotonic()
        for _ in range(3):
            assert get("/healthz", timeout=10)[0] == 200
            status, _, body = post(f"{GPT2}/logits", {"prompt": "Hi", "top_k": 2}, timeout=10)
            assert status == 200, body[:300]
            assert json_of(body)["top_k_ids"]["shape"] == [1, 2, 2]
        assert time.monotonic() - started < 10
        # the stalled requests are still open (not answered, not dropped)
        for s in stalled:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
    finally:
        for s in stalled:
            s.close()
    assert get("/healthz")[0] == 200


def test_limits_from_a_config_file(start_daemon, models, tmp_path):
    """max_batch_tokens, max_tokens and max_body_bytes come from --config.

    gpt2 prepends BOS, so "a", "b" and "c" are two tokens each: two of them
    fill 4 of the 5 batch tokens allowed, three would take 6."""
    config = tmp_path / "limits.json"
    config.write_text(json.dumps({"limits": {"max_batch_tokens": 5, "max_tokens": 8,
                                             "max_body_bytes": "2KiB"}}))
    d = start_daemon(["--config", str(config), "--model", f"gpt2={models['gpt2']}"])
    assert d.post(f"{GPT2}/tokenize", {"prompts": ["a", "b"]})[0] == 200
    for body, status, code, fld in [
        ({"prompts": ["a", "b", "c"]}, 413, "too_large", "prompts"),
        ({"prompt": "one two three four five six seven eight"}, 413, "too_large", "prompt"),
        ({"tokens": [[1] * 9]}, 413, "too_large", "tokens[0]"),
        ({"tokens": [[1] * 2, [1] * 3]}, 413, "too_large", "tokens"),
        ({"prompt": "x" * 3000}, 413, "too_large", None),
    ]:
        got, headers, data = d.post(f"{GPT2}/logits", body)
        assert got == status, (body if len(str(body)) < 100 else "3000 chars", data[:300])
        err = error_of(data)
        assert err["code"] == code and (fld is None or err.get("field") == fld), err


def test_a_bad_config_file_is_refused_at_start(lensd_bin, models, tmp_path):
    import subprocess

    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"limits": {"max_batch_tokens": 0}}))
    proc = subprocess.run([lensd_bin, "serve", "--config", str(config), "--port", "0",
                           "--model", f"gpt2={models['gpt2']}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "limits.max_batch_tokens" in proc.stderr
    assert "listening" not in proc.stdout


def raw_exchange(lensd, request: bytes) -> tuple[bytes, bool]:
    """Sends request bytes as they are; returns everything the daemon answers
    within 10 s, and whether it closed the connection after."""
    host, port = lensd.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            return got, False
        return got, True


SMUGGLED = (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
AMBIGUOUS_FRAMING = [
    ("two Content-Length", b"Content-Length: 17\r\nContent-Length: 0\r\n"),
    ("the same Content-Length twice", b"Content-Length: 17\r\nContent-Length: 17\r\n"),
    ("Content-Length and chunked", b"Content-Length: 17\r\nTransfer-Encoding: chunked\r\n"),
]


@pytest.mark.parametrize("headers", [h for _, h in AMBIGUOUS_FRAMING],
                         ids=[name for name, _ in AMBIGUOUS_FRAMING])
def test_ambiguous_body_length_is_refused(lensd, get, headers):
    """A body that a proxy and lensd could delimit differently is refused with
    400 and the connection closed, so that no request hidden in it runs."""
    body = b'{"prompt": "Hi"}\n'
    assert len(body) == 17
    request = (b"POST /v1/models/gpt2/logits HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/json\r\n" + headers + b"\r\n" + body + SMUGGLED)
    got, closed = raw_exchange(lensd, request)
    status_line = got.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 400"), got[:300]
    assert b"ambiguous body length" in got
    assert got.count(b"HTTP/1.1 ") == 1, "the request after the body was answered too"
    assert closed
    assert get("/healthz")[0] == 200


def test_one_content_length_still_works(lensd):
    body = b'{"prompt": "Hi"}\n'
    got, _ = raw_exchange(lensd, b"POST /v1/models/gpt2/tokenize HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Type: application/json\r\nConnection: close\r\n"
                                 b"Content-Length: 17\r\n\r\n" + body)
    assert got.startswith(b"HTTP/1.1 200"), got[:300]


def test_junk_urls_neither_forge_logs_nor_use_up_metrics(start_daemon, models):
    """URLs are the client's: a quote or newline in one (percent-encoded;
    libmicrohttpd decodes it) must not make a log line or a /metrics series of
    its own, and junk routes must not take the route labels real ones need."""
    from urllib.parse import quote

    d = start_daemon(["--model", f"gpt2={models['gpt2']}"])
    forged = '"}\n{"request": 1, "route": "forged'
    for path in [f"/v1/models/{quote(forged)}/logits", f"/v1/models/gpt2/{quote(forged)}",
                 f"/v1/{quote(forged)}", f"/{quote(forged)}"]:
        assert d.post(path, {"prompt": "Hi"})[0] in (404, 405)
    for i in range(150):  # more distinct junk routes than there are label slots
        d.post(f"/v1/models/gpt2/junk{i}", {})
        d.get(f"/v1/junk{i}")
    assert d.post("/v1/models/gpt2/logits", {"prompt": "Hi", "top_k": 1})[0] == 200
    text = d.get("/metrics")[2].decode()
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert 'POST /v1/models/{m}/logits' in routes, sorted(routes)
    assert not any("junk" in r or "forged" in r for r in routes), sorted(routes)
    assert {"POST /v1/models/{m}/(unknown)", "GET /v1/(unknown)"} <= routes, sorted(routes)
    assert d.stop() == 0
    for line in d.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)  # every log line still one JSON object
            assert "forged" not in entry["route"], line


def test_one_client_cannot_take_every_connection(start_daemon, models, tmp_path):
    """limits.max_connections_per_client: idle sockets from one address beyond
    it are closed at once, and another address is still served (it was 1,024
    for everyone: 1,100 idle sockets made /healthz time out)."""
    config = tmp_path / "lensd.json"
    config.write_text(json.dumps({"limits": {"max_connections_per_client": 8}}))
    d = start_daemon(["--config", str(config), "--model", f"gpt2={models['gpt2']}"])
    host, port = d.url.split("//")[1].split(":")

    def healthz_from(source: str) -> bytes:
        """What GET /healthz on a new connection from source gets: b"" when closed."""
        with socket.create_connection((host, int(port)), timeout=10,
                                      source_address=(source, 0)) as s:
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return s.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return b""

    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(8)]
    try:
        # the 8 are counted as libmicrohttpd starts them; then a 9th is closed at once
        wait_until(lambda: healthz_from("127.0.0.1") == b"", 10, "the 9th connection to be refused")
        assert healthz_from("127.0.0.2").startswith(b"HTTP/1.1 200")
    finally:
        for s in idle:
            s.close()
    wait_until(lambda: healthz_from("127.0.0.1").startswith(b"HTTP/1.1 200"), 30,
               "the first address to be served again")


def test_repeated_positions_are_counted_before_the_forward(lensd, post):
    """A 2 MB request whose repeated positions make a cache over
    limits.max_response_bytes (1 GiB) and max_kept_cache_bytes (2 GiB) is
    refused before anything is allocated or run (it was computed first:
    peaks of 2-3 GB, then the 413)."""
    tokens = [[1 + (i * 13) % 500 for i in range(120)]]
    # 2 layers x [1, 4 heads, P, 120] floats: 3,840 bytes a position; 600,000 of them: 2.3 GB
    body = {"tokens": tokens, "names_filter": "blocks.*.attn.hook_pattern", "logits": False,
            "positions": [0] * 600_000}
    before = lensd.rss_bytes()
    started = time.monotonic()
    status, _, data = post(f"{GPT2}/run_with_cache", body)
    assert status == 413, data[:300]
    assert "limits.max_response_bytes" in error_of(data)["message"]
    assert time.monotonic() - started < 10
    assert lensd.rss_bytes() - before < 200 << 20
    kept = post(f"{GPT2}/run_with_cache", {**body, "keep": True})
    assert kept[0] == 507 and error_of(kept[2])["field"] == "keep", kept[2][:300]


def test_a_huge_prompt_is_refused_without_tokenizing_it_all(post):
    """A 7 MB text prompt is over n_ctx after its first 128 tokens: refused at
    once, the rest never tokenized (it took 11-15 s of the model's thread)."""
    started = time.monotonic()
    status, _, data = post(f"{GPT2}/logits", {"prompt": "lorem ipsum dolor " * 400_000})
    assert status == 413 and error_of(data)["field"] == "prompt", data[:300]
    assert "more than the model's context of 128 tokens" in error_of(data)["message"]
    assert time.monotonic() - started < 3


def test_a_request_must_arrive_within_its_deadline(start_daemon, models, tmp_path):
    """A client that sends a byte every second, of its headers or of its body,
    kept its connection forever (each byte restarts libmicrohttpd's 30 s idle
    timeout); limits.read_timeout_s bounds the whole request."""
    config = tmp_path / "limits.json"
    config.write_text(json.dumps({"limits": {"read_timeout_s": 3}}))
    d = start_daemon(["--config", str(config), "--model", f"gpt2={models['gpt2']}"])
    host, port = d.url.split("//")[1].split(":")
    heads = socket.create_connection((host, int(port)), timeout=10)
    body = socket.create_connection((host, int(port)), timeout=10)
    heads.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    body.sendall(b"POST /v1/models/gpt2/tokenize HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: 200\r\n\r\n{\"prompt\": \"")
    started, closed = time.monotonic(), {}
    for s in (heads, body):
        s.setblocking(False)
    while len(closed) < 2 and time.monotonic() - started < 15:
        time.sleep(1)
        for name, s in (("headers", heads), ("body", body)):
            if name in closed:
                continue
            try:
                s.sendall(b"X-Slow: 1\r\n" if s is heads else b"a")
                if s.recv(1) == b"":
                    closed[name] = time.monotonic() - started
            except BlockingIOError:
                pass
            except OSError:
                closed[name] = time.monotonic() - started
    heads.close()
    body.close()
    assert set(closed) == {"headers", "body"}, f"still open after 15 s: {closed}"
    assert all(2.5 < t < 6 for t in closed.values()), closed
    # a request sent in time is served as ever
    assert d.post(f"{GPT2}/tokenize", {"prompt": "Hi"})[0] == 200


def test_errors_name_a_model_by_its_served_name(start_daemon, tmp_path):
    """core's messages about a model ("has no BOS token") name it as the
    client does, not by the directory it was loaded from."""
    import shutil

    model = tmp_path / "dir-without-bos"
    shutil.copytree(model_path("native-attnonly"), model)
    config = json.loads((model / "tl_config.json").read_text())
    del config["lensd"]["bos_token"]
    (model / "tl_config.json").write_text(json.dumps(config))
    d = start_daemon(["--model", f"tiny={model}"])
    status, _, data = d.post("/v1/models/tiny/logits", {"prompt": "a"})
    assert status == 400, data[:300]
    message = error_of(data)["message"]
    assert "model tiny has no BOS token" in message and str(model) not in message, message
