"""Every endpoint of docs/API.md, checked for content, not just status.

Numbers are checked against `lensd cache` / `lensd run` on the same model
(the same engine: equal bit for bit) or recomputed with numpy from the
logits the daemon sent.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from lensd_http import (JSON, NPY, SAFETENSORS, error_of, json_of, log_softmax, npy_of,
                        run_cli, safetensors_of, tensor, wait_until)

GPT2 = "/v1/models/gpt2"
BRACKETS = "/v1/models/brackets"
BOS = 50256  # gpt2-a's bos = eos = pad id
PROMPTS = ["The cat sat on the mat because it was tired", "Hello", "When Mary and John went"]


def tensors_of_json(doc: dict) -> dict:
    """The tensors of a JSON answer (every {"shape", "dtype", "data"} field)."""
    return {k: tensor(v) for k, v in doc.items()
            if isinstance(v, dict) and set(v) == {"shape", "dtype", "data"}}


def assert_same_tensors(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for name, ref in want.items():
        assert got[name].dtype == ref.dtype, name
        assert got[name].shape == ref.shape, name
        assert np.array_equal(got[name], ref, equal_nan=True), f"{name} differs"


# ---- health, readiness, request ids, metrics ----------------------------------


def test_healthz(get):
    status, headers, body = get("/healthz")
    assert status == 200
    assert headers["Content-Type"].startswith(JSON)
    assert json_of(body) == {"status": "ok"}


def test_readyz_lists_the_models(get):
    status, _, body = get("/readyz")
    assert status == 200
    assert json_of(body) == {"status": "ready", "models": ["gpt2", "brackets"]}


def test_every_response_has_a_request_id_that_is_logged(lensd, get, post):
    answers = [get("/healthz"), get("/v1/models"), get("/v1/nowhere"),
               post(f"{GPT2}/tokenize", {"prompt": "Hi"})]
    ids = [headers["X-Request-Id"] for _, headers, _ in answers]
    assert all(i and i.isdigit() for i in ids), ids
    assert len(set(ids)) == len(ids), ids
    for rid, (status, _, _) in zip(ids, answers):
        entry = json.loads(lensd.wait_log(rf'^\{{"request": {rid}, .*$').group(0))
        assert entry["status"] == status, entry
        assert {"route", "model", "ms", "bytes_out"} <= set(entry), entry
    assert json.loads(lensd.wait_log(rf'^\{{"request": {ids[3]}, .*$').group(0))["model"] == "gpt2"


def test_readyz_says_starting_until_the_models_are_loaded(start_daemon, models):
    d = start_daemon(["--model", f"gpt2={models['gpt2']}", "--model", f"brackets={models['brackets']}"],
                     wait_ready=False)
    seen = []
    while True:
        status, headers, body = d.get("/readyz")
        doc = json_of(body)
        if status == 200:
            break
        assert status == 503 and doc["status"] == "starting", (status, doc)
        # model routes wait too
        status, headers, body = d.post(f"{GPT2}/tokenize", {"prompt": "Hi"})
        seen.append(status)
        assert status in (200, 503), body[:300]
        if status == 503:
            assert error_of(body)["code"] == "unavailable" and headers["Retry-After"]
    assert doc == {"status": "ready", "models": ["gpt2", "brackets"]}
    print(f"{len(seen)} answers while starting")


# name, optional {label="value",...} (values quoted, escapes allowed), value
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)'
                    r'(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$')


def parse_metrics(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


def test_metrics_count_requests(lensd, get, post):
    labels = 'route="POST /v1/models/{m}/logits",status="200"'
    before = lensd.metric("lensd_requests_total", labels) or 0
    assert post(f"{GPT2}/logits", {"prompt": "Hi", "top_k": 1})[0] == 200
    # counted once the response is sent, so just after the client has it
    wait_until(lambda: (lensd.metric("lensd_requests_total", labels) or 0) == before + 1,
               what="lensd_requests_total to count the request")
    status, headers, body = get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    for family, kind in [("lensd_requests_total", "counter"), ("lensd_request_seconds", "histogram"),
                         ("lensd_queue_depth", "gauge"), ("lensd_batch_size", "histogram"),
                         ("lensd_weights_bytes", "gauge")]:
        assert f"# TYPE {family} {kind}" in text, family
    samples = parse_metrics(text)
    route = 'route="POST /v1/models/{m}/logits"'
    assert samples[f'lensd_request_seconds_bucket{{{route},le="+Inf"}}'] == \
        samples[f"lensd_request_seconds_count{{{route}}}"] >= 1
    assert samples['lensd_queue_depth{model="gpt2"}'] == 0
    assert samples['lensd_queue_depth{model="brackets"}'] == 0
    weights = {k: v for k, v in samples.items() if k.startswith('lensd_weights_bytes{model="gpt2",')}
    assert len(weights) == 1 and list(weights.values())[0] > 0, weights


def test_metrics_has_kept_cache_bytes(get):
    """docs/API.md lists lensd_kept_cache_bytes among the metrics."""
    text = get("/metrics")[2].decode()
    assert re.search(r"^lensd_kept_cache_bytes(\{\})? \d", text, re.MULTILINE), \
        "lensd_kept_cache_bytes is missing from /metrics"


# ---- models -----------------------------------------------------------------


INFO_KEYS = {"name", "source", "device", "config", "processing", "tokens", "n_params"}


def test_models_list(get, models):
    status, _, body = get("/v1/models")
    assert status == 200
    listed = json_of(body)["models"]
    assert [m["name"] for m in listed] == ["gpt2", "brackets"]
    for m in listed:
        assert INFO_KEYS <= set(m), sorted(m)
        assert "hook_points" not in m
        assert {"name", "weights_bytes"} <= set(m["device"])
        assert {"bos_id", "eos_id", "pad_id"} <= set(m["tokens"])
    gpt2, brackets = listed
    assert gpt2["source"] == str(models["gpt2"])
    assert {k: gpt2["config"][k] for k in ("n_layers", "n_heads", "d_model", "n_ctx", "d_vocab")} == \
        {"n_layers": 2, "n_heads": 4, "d_model": 64, "n_ctx": 128, "d_vocab": 50257}
    assert gpt2["tokens"]["bos_id"] == BOS
    assert brackets["config"]["attention_dir"] == "bidirectional"
    assert brackets["config"]["d_vocab_out"] == 2
    assert gpt2["n_params"] > 0


def test_model_weights_bytes(get, lensd):
    """device.weights_bytes of the model info is the size of the weights (the
    same number /metrics gives as lensd_weights_bytes)."""
    info = json_of(get(f"{GPT2}")[2])
    metric = lensd.metric("lensd_weights_bytes", f'model="gpt2",device="{info["device"]["name"]}"')
    assert metric and metric > 0
    assert info["device"]["weights_bytes"] == metric, (info["device"], metric)


def test_model_detail_has_hook_points(get, post):
    status, _, body = get(GPT2)
    assert status == 200
    info = json_of(body)
    summary = [m for m in json_of(get("/v1/models")[2])["models"] if m["name"] == "gpt2"][0]
    assert {k: v for k, v in info.items() if k != "hook_points"} == summary
    points = {p["name"]: p for p in info["hook_points"]}
    assert all(set(p) == {"name", "shape", "dtype"} for p in points.values())
    assert points["blocks.0.attn.hook_pattern"]["shape"] == ["batch", 4, "query_pos", "key_pos"]
    assert points["blocks.1.attn.hook_attn_scores"]["shape"] == ["batch", 4, "query_pos", "key_pos"]
    assert points["blocks.0.hook_resid_pre"]["shape"] == ["batch", "pos", 64]
    assert points["blocks.0.attn.hook_q"]["shape"] == ["batch", "pos", 4, 16]
    assert points["blocks.1.mlp.hook_post"]["shape"] == ["batch", "pos", 256]
    # the hook points are exactly what run_with_cache captures, in those shapes
    tensors, _ = safetensors_of(post(f"{GPT2}/run_with_cache", {"prompt": "Hi there"},
                                     accept=SAFETENSORS)[2])
    captured = {k: v for k, v in tensors.items() if k not in ("tokens", "logits")}
    assert sorted(captured) == sorted(points)
    sizes = {"batch": 1, "pos": 3, "query_pos": 3, "key_pos": 3}
    for name, arr in captured.items():
        assert list(arr.shape) == [sizes.get(d, d) for d in points[name]["shape"]], name


# ---- tokenize / detokenize ------------------------------------------------------


def test_tokenize_one_prompt(post):
    doc = json_of(post(f"{GPT2}/tokenize", {"prompt": "The cat sat on the mat"})[2])
    assert set(doc) == {"tokens", "str_tokens", "attention_mask"}
    assert doc["tokens"][0][0] == BOS and len(doc["tokens"][0]) == 7
    assert doc["str_tokens"] == [["<|endoftext|>", "The", " cat", " sat", " on", " the", " mat"]]
    assert doc["attention_mask"] == [[1] * 7]


@pytest.mark.parametrize("side", ["right", "left"])
def test_tokenize_pads_a_batch(post, side):
    doc = json_of(post(f"{GPT2}/tokenize", {"prompts": ["Hello world, how are you", "Hi"],
                                            "padding_side": side})[2])
    long, short = doc["tokens"]
    assert len(long) == len(short) == 7
    assert doc["attention_mask"][0] == [1] * 7
    real = [1, 1] + [0] * 5
    assert doc["attention_mask"][1] == (real if side == "right" else real[::-1])
    real_short = [BOS, 17250]
    assert [t for t, m in zip(short, doc["attention_mask"][1]) if m] == real_short
    assert [t for t, m in zip(short, doc["attention_mask"][1]) if not m] == [BOS] * 5
    assert doc["str_tokens"][1][short.index(17250)] == "Hi"


def test_tokenize_without_bos_and_brackets(post):
    doc = json_of(post(f"{GPT2}/tokenize", {"prompt": "Hello world", "prepend_bos": False})[2])
    assert doc["tokens"] == [[15496, 995]]
    doc = json_of(post(f"{BRACKETS}/tokenize", {"prompt": "(())"})[2])
    assert doc["tokens"] == [[0, 3, 3, 4, 4, 2]]
    assert doc["str_tokens"] == [["[start]", "(", "(", ")", ")", "[end]"]]


@pytest.mark.parametrize("text", ["The Eiffel Tower is in Paris.",
                                  "Héllo, wörld! Ünïcode → ok 🙂 and  two  spaces\n",
                                  " leading space"])
def test_tokenize_detokenize_round_trip(post, text):
    doc = json_of(post(f"{GPT2}/tokenize", {"prompt": text, "prepend_bos": False})[2])
    ids = doc["tokens"][0]
    assert json_of(post(f"{GPT2}/detokenize", {"tokens": ids})[2]) == {"text": text}
    # with the BOS, the text starts with it
    with_bos = json_of(post(f"{GPT2}/tokenize", {"prompt": text})[2])["tokens"][0]
    assert json_of(post(f"{GPT2}/detokenize", {"tokens": with_bos})[2]) == {"text": "<|endoftext|>" + text}


def test_detokenize_batch(post):
    rows = json_of(post(f"{GPT2}/tokenize", {"prompts": ["Hello world", "Hi"],
                                             "prepend_bos": False})[2])["tokens"]
    assert json_of(post(f"{GPT2}/detokenize", {"tokens": [rows[0], [17250]]})[2]) == \
        {"text": ["Hello world", "Hi"]}


# ---- logits -----------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_logits(post):
    """logits of PROMPTS (right-padded), with the tokenize answer."""
    tensors, fields = safetensors_of(post(f"{GPT2}/logits", {"prompts": PROMPTS}, accept=SAFETENSORS)[2])
    tok = json_of(post(f"{GPT2}/tokenize", {"prompts": PROMPTS})[2])
    return tensors, fields, tok


def test_logits_json(post, cli_cache, models):
    status, headers, body = post(f"{GPT2}/logits", {"prompt": "Hi there"})
    assert status == 200 and headers["Content-Type"].startswith(JSON)
    doc = json_of(body)
    assert doc["model"] == "gpt2"
    t = tensors_of_json(doc)
    assert sorted(t) == ["logits", "tokens"]
    assert t["tokens"].tolist() == [[BOS, 17250, 612]]
    assert t["logits"].shape == (1, 3, 50257) and t["logits"].dtype == np.float32
    ref = cli_cache(models["gpt2"], ["--prompt", "Hi there", "--names", "hook_embed"])
    assert np.array_equal(t["logits"], ref["logits"])


def test_logits_batch(batch_logits, cli_cache, models):
    tensors, fields, tok = batch_logits
    assert fields["model"] == "gpt2"
    assert tensors["tokens"].tolist() == tok["tokens"]
    B, T = np.array(tok["tokens"]).shape
    assert tensors["logits"].shape == (B, T, 50257)
    args = [a for p in PROMPTS for a in ("--prompt", p)]
    ref = cli_cache(models["gpt2"], args + ["--names", "hook_embed"])
    assert np.array_equal(tensors["logits"], ref["logits"])


def test_logits_at_positions(post, batch_logits):
    full = batch_logits[0]["logits"]
    tensors, _ = safetensors_of(post(f"{GPT2}/logits", {"prompts": PROMPTS, "positions": [0, -1, 2]},
                                     accept=SAFETENSORS)[2])
    assert np.array_equal(tensors["logits"], full[:, [0, full.shape[1] - 1, 2]])


def test_top_k(post, batch_logits):
    logits = batch_logits[0]["logits"]
    K = 7
    tensors, _ = safetensors_of(post(f"{GPT2}/logits", {"prompts": PROMPTS, "top_k": K},
                                     accept=SAFETENSORS)[2])
    assert "logits" not in tensors
    ids, vals = tensors["top_k_ids"], tensors["top_k_logits"]
    assert ids.shape == vals.shape == logits.shape[:2] + (K,)
    assert ids.dtype == np.int64
    assert np.all(np.diff(vals, axis=-1) <= 0), "top_k_logits not largest first"
    assert np.array_equal(np.take_along_axis(logits, ids, -1), vals)
    # nothing left out is larger than the smallest kept
    kth = np.sort(logits, axis=-1)[..., -K]
    assert np.array_equal(vals[..., -1], kth)
    assert all(len(set(row)) == K for row in ids.reshape(-1, K).tolist())


def test_top_k_of_the_whole_vocabulary_is_a_sort(post, batch_logits):
    """top_k = d_vocab is every id, sorted: at once (partial selection, O(V log K) a
    row), where the selection it replaced took K^2 V steps: about 40 h for this one."""
    logits = batch_logits[0]["logits"][:, :2]
    V = logits.shape[-1]
    t0 = time.monotonic()
    status, _, body = post(f"{GPT2}/logits", {"prompts": PROMPTS, "top_k": V, "positions": [0, 1]},
                           accept=SAFETENSORS)
    assert status == 200 and time.monotonic() - t0 < 30
    tensors, _ = safetensors_of(body)
    # numpy's stable argsort of -logits: largest first, equal values lower id first
    want = np.argsort(-logits, axis=-1, kind="stable")
    assert np.array_equal(tensors["top_k_ids"], want)


def test_top_k_json(post):
    doc = json_of(post(f"{GPT2}/logits", {"prompt": "Hi there", "top_k": 3, "positions": [-1]})[2])
    ids, vals = tensor(doc["top_k_ids"]), tensor(doc["top_k_logits"])
    assert ids.shape == vals.shape == (1, 1, 3)
    full = tensor(json_of(post(f"{GPT2}/logits", {"prompt": "Hi there"})[2])["logits"])
    assert ids[0, 0].tolist() == np.argsort(-full[0, -1], kind="stable")[:3].tolist()


def test_log_probs(post, batch_logits):
    logits = batch_logits[0]["logits"]
    tensors, _ = safetensors_of(post(f"{GPT2}/logits", {"prompts": PROMPTS, "log_probs": True},
                                     accept=SAFETENSORS)[2])
    assert np.array_equal(tensors["logits"], logits)
    assert tensors["log_probs"].shape == logits.shape
    np.testing.assert_allclose(tensors["log_probs"], log_softmax(logits), atol=1e-5, rtol=0)


def per_token_nll(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    lp = log_softmax(logits)
    return -np.take_along_axis(lp[:, :-1], tokens[:, 1:, None], -1)[..., 0]


def test_loss_of_one_prompt(post):
    doc = json_of(post(f"{GPT2}/logits", {"prompt": PROMPTS[0], "loss": True, "per_token_loss": True})[2])
    logits, tokens = tensor(doc["logits"]), tensor(doc["tokens"])
    per = tensor(doc["per_token_loss"])
    want = per_token_nll(logits, tokens)
    assert per.shape == (1, tokens.shape[1] - 1)
    np.testing.assert_allclose(per, want, rtol=1e-5, atol=1e-5)
    assert doc["loss"] == pytest.approx(want.mean(), rel=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_loss_of_a_padded_batch_as_transformer_lens(post, side):
    """API: loss is TL's lm_cross_entropy_loss as HookedTransformer.forward
    calls it: with left padding TL has an attention mask and position t
    counts when tokens t and t+1 are both real (per_token_loss 0 elsewhere);
    with right padding it has none, and every position counts."""
    tensors, fields = safetensors_of(post(f"{GPT2}/logits", {
        "prompts": PROMPTS, "padding_side": side, "loss": True, "per_token_loss": True},
        accept=SAFETENSORS)[2])
    mask = np.array(json_of(post(f"{GPT2}/tokenize", {"prompts": PROMPTS, "padding_side": side})[2])
                    ["attention_mask"], dtype=bool)
    assert mask.sum() < mask.size, "the prompts must need padding"
    want = per_token_nll(tensors["logits"], tensors["tokens"])
    real = mask[:, :-1] & mask[:, 1:] if side == "left" else np.ones_like(want, dtype=bool)
    per = tensor(fields["per_token_loss"])
    assert per.shape == want.shape
    np.testing.assert_allclose(per[real], want[real], rtol=1e-5, atol=1e-5)
    assert np.all(per[~real] == 0)
    assert fields["loss"] == pytest.approx(want[real].mean(), rel=1e-5), \
        f"loss {fields['loss']} vs real-token mean {want[real].mean()} (all positions: {want.mean()})"


def test_logits_of_the_bidirectional_classifier(post, cli_cache, models):
    doc = json_of(post(f"{BRACKETS}/logits", {"prompt": "(()())"})[2])
    t = tensors_of_json(doc)
    assert t["tokens"].tolist() == [[0, 3, 3, 4, 3, 4, 4, 2]]
    assert t["logits"].shape == (1, 8, 2)
    ref = cli_cache(models["brackets"], ["--prompt", "(()())", "--names", "hook_embed"])
    assert np.array_equal(t["logits"], ref["logits"])


# ---- run_with_cache ---------------------------------------------------------------


@pytest.mark.parametrize("model,prompt", [("gpt2", "Hi there"), ("brackets", "(()())")])
def test_run_with_cache_json_equals_cli(post, cli_cache, models, model, prompt):
    status, headers, body = post(f"/v1/models/{model}/run_with_cache", {"prompt": prompt})
    assert status == 200 and headers["Content-Type"].startswith(JSON)
    doc = json_of(body)
    assert doc["model"] == model
    str_tokens = json_of(post(f"/v1/models/{model}/tokenize", {"prompt": prompt})[2])["str_tokens"]
    assert doc["str_tokens"] == str_tokens
    assert_same_tensors(tensors_of_json(doc), cli_cache(models[model], ["--prompt", prompt]))


@pytest.mark.parametrize("side", ["right", "left"])
def test_run_with_cache_safetensors_equals_cli(post, cli_cache, models, side):
    tensors, fields = safetensors_of(post(f"{GPT2}/run_with_cache",
                                          {"prompts": PROMPTS, "padding_side": side},
                                          accept=SAFETENSORS)[2])
    assert fields["model"] == "gpt2"
    assert fields["str_tokens"] == json_of(post(f"{GPT2}/tokenize", {
        "prompts": PROMPTS, "padding_side": side})[2])["str_tokens"]
    args = [a for p in PROMPTS for a in ("--prompt", p)] + ["--padding-side", side]
    assert_same_tensors(tensors, cli_cache(models["gpt2"], args))


def test_run_with_cache_tokens_input_equals_cli(post, cli_cache, models):
    rows = [[464, 3797, 3332, 319], [15496, 995]]
    tensors, _ = safetensors_of(post(f"{GPT2}/run_with_cache", {"tokens": rows}, accept=SAFETENSORS)[2])
    ref = cli_cache(models["gpt2"], ["--tokens", "464,3797,3332,319", "--tokens", "15496,995"])
    assert tensors["tokens"][0].tolist() == rows[0]
    assert_same_tensors(tensors, ref)


def test_run_with_cache_npy(post, cli_cache, models):
    name = "blocks.1.hook_resid_post"
    status, headers, body = post(f"{GPT2}/run_with_cache",
                                 {"prompt": PROMPTS[0], "names": [name], "logits": False}, accept=NPY)
    assert status == 200 and headers["Content-Type"] == NPY
    arr = npy_of(body)
    ref = cli_cache(models["gpt2"], ["--prompt", PROMPTS[0], "--names", name])[name]
    assert arr.dtype == np.float32 and np.array_equal(arr, ref)


def test_logits_npy(post, batch_logits):
    status, headers, body = post(f"{GPT2}/logits", {"prompts": PROMPTS}, accept=NPY)
    assert status == 200 and headers["Content-Type"] == NPY
    assert np.array_equal(npy_of(body), batch_logits[0]["logits"])


def test_run_with_cache_float16(post):
    body = {"prompts": PROMPTS[:2], "names_filter": ["blocks.0.*", "unembed.*"]}
    f32, _ = safetensors_of(post(f"{GPT2}/run_with_cache", body, accept=SAFETENSORS)[2])
    f16, _ = safetensors_of(post(f"{GPT2}/run_with_cache", {**body, "dtype": "float16"},
                                 accept=SAFETENSORS)[2])
    assert sorted(f16) == sorted(f32)
    assert f16["tokens"].dtype == np.int64 and np.array_equal(f16["tokens"], f32["tokens"])
    assert any(np.isneginf(v).any() for v in f32.values() if v.dtype == np.float32), \
        "expected masked -inf attention scores among the tensors"
    for name, ref in f32.items():
        if name == "tokens":
            continue
        got = f16[name]
        assert got.dtype == np.float16, name
        # within half precision: half an ulp of float16 (2^-11 relative; 2^-25 below 2^-14)
        finite = np.isfinite(ref)
        assert np.array_equal(np.isneginf(got), np.isneginf(ref)), name
        err = np.abs(got[finite].astype(np.float64) - ref[finite])
        bound = np.maximum(np.abs(ref[finite]) * 2.0**-11, 2.0**-25)
        assert np.all(err <= bound), f"{name}: max error {err.max()}"
        # and exactly IEEE round-to-nearest-even, as numpy converts
        assert np.array_equal(got, ref.astype(np.float16), equal_nan=True), name


def test_run_with_cache_float16_npy(post):
    body = {"prompt": "Hi there", "names": ["blocks.0.hook_mlp_out"], "logits": False}
    ref = npy_of(post(f"{GPT2}/run_with_cache", body, accept=NPY)[2])
    status, _, data = post(f"{GPT2}/run_with_cache", {**body, "dtype": "float16"}, accept=NPY)
    assert status == 200
    got = npy_of(data)
    assert got.dtype == np.float16 and np.array_equal(got, ref.astype(np.float16))


def test_run_with_cache_positions(post, cli_cache, models):
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_q"]
    body = {"prompts": PROMPTS, "names": names}
    full, _ = safetensors_of(post(f"{GPT2}/run_with_cache", body, accept=SAFETENSORS)[2])
    cut, _ = safetensors_of(post(f"{GPT2}/run_with_cache", {**body, "positions": [0, -1]},
                                 accept=SAFETENSORS)[2])
    T = full["tokens"].shape[1]
    keep = [0, T - 1]
    assert np.array_equal(cut["logits"], full["logits"])  # as TL: pos_slice cuts the cache only
    assert np.array_equal(cut["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"][:, keep])
    assert np.array_equal(cut["blocks.1.attn.hook_q"], full["blocks.1.attn.hook_q"][:, keep])
    assert np.array_equal(cut["blocks.1.attn.hook_pattern"],
                          full["blocks.1.attn.hook_pattern"][:, :, keep, :])
    args = [a for p in PROMPTS for a in ("--prompt", p)] + ["--positions", "0,-1"]
    args += [a for n in names for a in ("--names", n)]
    assert_same_tensors(cut, cli_cache(models["gpt2"], args))


def test_run_with_cache_names_and_filters(post):
    def names_of(body):
        tensors, _ = safetensors_of(post(f"{GPT2}/run_with_cache", {"prompt": "Hi", **body},
                                         accept=SAFETENSORS)[2])
        return sorted(tensors)

    assert names_of({"names": ["blocks.0.attn.hook_pattern", "hook_embed"]}) == \
        sorted(["tokens", "logits", "blocks.0.attn.hook_pattern", "hook_embed"])
    assert names_of({"names_filter": "blocks.*.hook_resid_post"}) == \
        sorted(["tokens", "logits", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"])
    assert names_of({"names_filter": ["blocks.1.attn.hook_*", "ln_final.*"], "logits": False}) == sorted(
        ["tokens"] + [f"blocks.1.attn.hook_{k}" for k in ("q", "k", "v", "attn_scores", "pattern", "z")]
        + ["ln_final.hook_scale", "ln_final.hook_normalized"])
    assert names_of({"names": ["hook_embed"], "names_filter": "blocks.0.hook_resid_*"}) == sorted(
        ["tokens", "logits", "hook_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid",
         "blocks.0.hook_resid_post"])


# ---- attention -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pattern_cache(post):
    prompt = "When Mary and John went to the store, John gave"
    tensors, _ = safetensors_of(post(f"{GPT2}/run_with_cache", {
        "prompt": prompt, "names_filter": "blocks.*.attn.hook_pattern"}, accept=SAFETENSORS)[2])
    return prompt, tensors


def test_attention_all_layers_and_heads(post, pattern_cache):
    prompt, cache = pattern_cache
    doc = json_of(post(f"{GPT2}/attention", {"prompt": prompt})[2])
    assert doc["layers"] == [0, 1] and doc["heads"] == [0, 1, 2, 3]
    assert doc["str_tokens"] == json_of(post(f"{GPT2}/tokenize", {"prompt": prompt})[2])["str_tokens"][0]
    assert np.array_equal(tensor(doc["tokens"]), cache["tokens"])
    patterns = tensor(doc["patterns"])
    T = cache["tokens"].shape[1]
    assert patterns.shape == (2, 4, T, T)
    for layer in (0, 1):
        assert np.array_equal(patterns[layer], cache[f"blocks.{layer}.attn.hook_pattern"][0])


def test_attention_some_layers_and_heads(post, pattern_cache):
    prompt, cache = pattern_cache
    doc = json_of(post(f"{GPT2}/attention", {"prompt": prompt, "layers": [1, 0], "heads": [3, 1]})[2])
    assert doc["layers"] == [1, 0] and doc["heads"] == [3, 1]
    patterns = tensor(doc["patterns"])
    for i, layer in enumerate([1, 0]):
        for j, head in enumerate([3, 1]):
            assert np.array_equal(patterns[i, j], cache[f"blocks.{layer}.attn.hook_pattern"][0, head])


def test_attention_of_the_classifier(post):
    doc = json_of(post(f"{BRACKETS}/attention", {"prompt": "(())", "layers": [2]})[2])
    patterns = tensor(doc["patterns"])
    assert patterns.shape == (1, 2, 6, 6)
    np.testing.assert_allclose(patterns.sum(-1), 1.0, atol=1e-5)
    assert (patterns[..., 0, 1:] > 0).any(), "a bidirectional model attends forwards"


# ---- test_prompt -------------------------------------------------------------------


@pytest.mark.parametrize("prompt,answer,top_k", [("The cat sat on the", "mat", None),
                                                  ("The Eiffel Tower is in", "Paris, France", 3)])
def test_test_prompt_text_is_what_lensd_run_prints(post, lensd_bin, models, prompt, answer, top_k):
    body = {"prompt": prompt, "answer": answer, **({"top_k": top_k} if top_k else {})}
    doc = json_of(post(f"{GPT2}/test_prompt", body)[2])
    args = ["run", "--model", str(models["gpt2"]), "--prompt", prompt, "--answer", answer]
    printed = run_cli(lensd_bin, args + (["--top-k", str(top_k)] if top_k else [])).stdout
    assert doc["text"] == printed


def test_test_prompt_numbers_match_the_logits(post):
    prompt, answer = "The Eiffel Tower is in", "Paris, France"
    doc = json_of(post(f"{GPT2}/test_prompt", {"prompt": prompt, "answer": answer, "top_k": 4})[2])
    tok = json_of(post(f"{GPT2}/tokenize", {"prompt": prompt})[2])
    assert doc["prompt_str_tokens"] == tok["str_tokens"][0]
    assert doc["answer_str_tokens"] == [" Paris", ",", " France"]
    answer_ids = json_of(post(f"{GPT2}/tokenize", {"prompt": " " + answer, "prepend_bos": False})[2])["tokens"][0]
    ids = tok["tokens"][0] + answer_ids
    logits = safetensors_of(post(f"{GPT2}/logits", {"tokens": [ids]}, accept=SAFETENSORS)[2])[0]["logits"][0]
    per_token = [v for k, v in doc.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
    assert len(per_token) == 1, f"expected one list of per-answer-token results in {sorted(doc)}"
    results = per_token[0]
    assert len(results) == len(answer_ids)
    P = len(tok["tokens"][0])
    for i, (r, tid) in enumerate(zip(results, answer_ids)):
        row = logits[P - 1 + i]
        probs = np.exp(log_softmax(row))
        assert r["token"] == doc["answer_str_tokens"][i]
        assert r["logit"] == pytest.approx(float(row[tid]), abs=1e-5)
        assert r["prob"] == pytest.approx(float(probs[tid]), rel=1e-4)
        assert r["rank"] == int((row > row[tid]).sum())
        assert len(r["top"]) == 4
        best = np.argsort(-row, kind="stable")[:4]
        assert [t["logit"] for t in r["top"]] == pytest.approx([float(row[b]) for b in best], abs=1e-5)
        assert all(t["prob"] == pytest.approx(float(probs[b]), rel=1e-4) for t, b in zip(r["top"], best))


# ---- padding -----------------------------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", ["prompts", "tokens"])
def test_padding_leaves_real_positions_alone(post, side, kind):
    if kind == "prompts":
        items = PROMPTS
    else:
        items = [[464, 3797, 3332, 319, 262, 2603], [15496], [2215, 5335, 290]]
    batch, _ = safetensors_of(post(f"{GPT2}/logits", {kind: items, "padding_side": side},
                                   accept=SAFETENSORS)[2])
    T = batch["tokens"].shape[1]
    lengths = []
    for row, item in enumerate(items):
        alone, _ = safetensors_of(post(f"{GPT2}/logits", {kind: [item]}, accept=SAFETENSORS)[2])
        L = alone["tokens"].shape[1]
        lengths.append(L)
        start = T - L if side == "left" else 0
        assert np.array_equal(batch["tokens"][row, start:start + L], alone["tokens"][0])
        np.testing.assert_allclose(batch["logits"][row, start:start + L], alone["logits"][0],
                                   atol=1e-5, rtol=0, err_msg=f"{kind}[{row}], {side} padding")
    assert len(set(lengths)) > 1 and max(lengths) == T


def test_static_dashboard(get, web_dir):
    status, headers, body = get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert body == (web_dir / "index.html").read_bytes()
    status, headers, body = get("/app.js")
    assert status == 200 and "javascript" in headers["Content-Type"]
    status, _, body = get("/missing.js")
    assert status == 404 and error_of(body)["code"] == "not_found"
