"""The analysis endpoints beyond run_with_cache: kept caches, logit_diff,
run_with_hooks and generate (docs/API.md). Each is checked against
identities that hold whatever the weights: the logits endpoint, sums of
the residual decomposition, patching a whole residual stream, greedy
decoding's argmax.
"""

from __future__ import annotations

import numpy as np
import pytest

from lensd_http import NPY, SAFETENSORS, error_of, json_of, npy_of, safetensors_of, tensor

GPT2 = "/v1/models/gpt2"
IOI = ["When Mary and John went to the store, John gave a drink to",
       "When Mary and John went to the park, John gave a ball to",
       "When Tom and James went to the park, James gave the ball to"]
ANSWERS = [[" Mary", " John"], [" Mary", " John"], [" Tom", " James"]]


def logits_of(post, body) -> np.ndarray:
    return safetensors_of(post(f"{GPT2}/logits", body, accept=SAFETENSORS)[2])[0]["logits"]


# ---- kept caches -------------------------------------------------------------------


def test_kept_cache_round_trip(lensd, post, get):
    body = {"prompts": ["Hi there", "Hello"], "names_filter": "blocks.*.hook_resid_post"}
    direct, _ = safetensors_of(post(f"{GPT2}/run_with_cache", body, accept=SAFETENSORS)[2])
    kept = json_of(post(f"{GPT2}/run_with_cache", {**body, "keep": True})[2])
    cid = kept["cache_id"]
    assert kept["model"] == "gpt2" and kept["ttl_s"] > 0
    assert kept["tensors"] == {k: list(v.shape) for k, v in direct.items()}
    status, _, data = get(f"/v1/caches/{cid}")
    assert status == 200 and json_of(data)["tensors"] == kept["tensors"]
    assert (lensd.metric("lensd_kept_cache_bytes") or 0) > 0

    name = "blocks.1.hook_resid_post"
    status, _, data = get(f"/v1/caches/{cid}/{name}", accept=NPY)
    assert status == 200 and np.array_equal(npy_of(data), direct[name])
    doc = json_of(get(f"/v1/caches/{cid}/{name}?batch=1&positions=-1,0")[2])
    assert np.array_equal(tensor(doc[name]), direct[name][[1]][:, [-1, 0]])
    tensors, _ = safetensors_of(get(f"/v1/caches/{cid}/logits?batch=0", accept=SAFETENSORS)[2])
    assert np.array_equal(tensors["logits"], direct["logits"][[0]])

    status, _, data = lensd.request("DELETE", f"/v1/caches/{cid}")
    assert status == 200
    for path in (f"/v1/caches/{cid}", f"/v1/caches/{cid}/{name}"):
        status, _, data = get(path)
        assert status == 404 and error_of(data)["code"] == "not_found"


def test_unknown_cache_is_404(get, lensd):
    for method, path in [("GET", "/v1/caches/c000000000000000"), ("DELETE", "/v1/caches/nope"),
                         ("GET", "/v1/caches/nope/logits")]:
        status, _, data = lensd.request(method, path)
        assert status == 404 and error_of(data)["code"] == "not_found", (method, path, data[:200])


# ---- logit_diff ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def logit_diff(post):
    return json_of(post(f"{GPT2}/logit_diff", {
        "prompts": IOI, "answers": ANSWERS,
        "attribution": ["accumulated_resid", "decompose_resid", "heads"]})[2])


def test_logit_diff_is_the_difference_of_logits(post, logit_diff):
    tok = json_of(post(f"{GPT2}/tokenize", {"prompts": IOI})[2])
    last = [sum(m) - 1 for m in tok["attention_mask"]]
    assert logit_diff["positions"] == last
    ids = [[json_of(post(f"{GPT2}/tokenize", {"prompt": a, "prepend_bos": False})[2])["tokens"][0][0]
            for a in pair] for pair in ANSWERS]
    assert logit_diff["answers"] == ids
    logits = logits_of(post, {"prompts": IOI})
    want = [logits[i, p, a] - logits[i, p, w] for i, (p, (a, w)) in enumerate(zip(last, ids))]
    np.testing.assert_allclose(logit_diff["logit_diff"], want, atol=1e-5)
    assert logit_diff["mean"] == pytest.approx(np.mean(logit_diff["logit_diff"]), abs=1e-6)


def test_logit_diff_attributions_add_up(logit_diff):
    acc, dec, heads = (logit_diff[k] for k in ("accumulated_resid", "decompose_resid", "heads"))
    assert acc["labels"] == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    assert dec["labels"] == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    assert heads["labels"] == [f"L{layer}H{h}" for layer in range(2) for h in range(4)]
    A = dict(zip(acc["labels"], np.array(acc["per_prompt"])))
    D = dict(zip(dec["labels"], np.array(dec["per_prompt"])))
    tol = dict(atol=1e-4, rtol=0)
    np.testing.assert_allclose(A["0_pre"], D["embed"] + D["pos_embed"], **tol)
    np.testing.assert_allclose(A["0_mid"], A["0_pre"] + D["0_attn_out"], **tol)
    np.testing.assert_allclose(A["1_pre"], A["0_mid"] + D["0_mlp_out"], **tol)
    np.testing.assert_allclose(A["1_mid"], A["1_pre"] + D["1_attn_out"], **tol)
    np.testing.assert_allclose(A["final_post"], A["1_mid"] + D["1_mlp_out"], **tol)
    # the logit lens of the final residual is the logit difference up to the
    # unembedding bias, which is the same for prompts with the same answers
    offset = np.array(logit_diff["logit_diff"]) - A["final_post"]
    assert offset[0] == pytest.approx(offset[1], abs=1e-4)
    for stack in (acc, dec, heads):
        per = np.array(stack["per_prompt"])
        assert per.shape == (len(stack["labels"]), len(IOI))
        np.testing.assert_allclose(stack["mean"], per.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(np.array(heads["grid"]), np.array(heads["mean"]).reshape(2, 4), atol=0)


# ---- run_with_hooks ---------------------------------------------------------------------


def test_hooks_that_change_nothing(post):
    base = logits_of(post, {"prompts": IOI})
    for hook in [{"name": "blocks.0.hook_resid_post", "op": "scale", "factor": 1.0},
                 {"name": "blocks.1.attn.hook_z", "op": "add", "value": 0.0},
                 {"name": "blocks.0.hook_mlp_out", "op": "patch"}]:
        body = {"prompts": IOI, "hooks": [hook], "patch_from": {"prompts": IOI}}
        tensors, _ = safetensors_of(post(f"{GPT2}/run_with_hooks", body, accept=SAFETENSORS)[2])
        np.testing.assert_allclose(tensors["logits"], base, atol=1e-5, err_msg=str(hook))


def test_patching_the_whole_residual_stream_gives_the_other_run(post):
    """After blocks.0.hook_resid_post is replaced at every position by another
    prompt's, everything downstream is that prompt's run."""
    a, b = "When Mary and John went to the store", "When Tom and James went to the park"
    la, lb = (json_of(post(f"{GPT2}/tokenize", {"prompt": p})[2])["tokens"][0] for p in (a, b))
    assert len(la) == len(lb)
    want = logits_of(post, {"prompt": b})
    tensors, _ = safetensors_of(post(f"{GPT2}/run_with_hooks", {
        "prompt": a, "patch_from": {"prompt": b},
        "hooks": [{"name": "blocks.0.hook_resid_post", "op": "patch"}],
        "names": ["blocks.1.hook_resid_post"]}, accept=SAFETENSORS)[2])
    np.testing.assert_allclose(tensors["logits"], want, atol=1e-5)
    ref, _ = safetensors_of(post(f"{GPT2}/run_with_cache", {"prompt": b, "names": ["blocks.1.hook_resid_post"]},
                                 accept=SAFETENSORS)[2])
    np.testing.assert_allclose(tensors["blocks.1.hook_resid_post"], ref["blocks.1.hook_resid_post"], atol=1e-5)


def test_zero_set_and_mean_hooks(post):
    name = "blocks.0.attn.hook_pattern"
    clean, _ = safetensors_of(post(f"{GPT2}/run_with_cache", {"prompts": IOI[:2], "names": [name]},
                                   accept=SAFETENSORS)[2])
    zeroed, _ = safetensors_of(post(f"{GPT2}/run_with_hooks", {
        "prompts": IOI[:2], "names": [name], "logits": False,
        "hooks": [{"name": name, "op": "zero", "heads": [2]}]}, accept=SAFETENSORS)[2])
    got = zeroed[name]
    assert np.all(got[:, 2] == 0)
    keep = [0, 1, 3]
    assert np.array_equal(got[:, keep], clean[name][:, keep])

    res = "blocks.1.hook_resid_pre"
    clean, _ = safetensors_of(post(f"{GPT2}/run_with_cache", {"prompts": IOI[:2], "names": [res]},
                                   accept=SAFETENSORS)[2])
    meaned, _ = safetensors_of(post(f"{GPT2}/run_with_hooks", {
        "prompts": IOI[:2], "names": [res], "logits": False,
        "hooks": [{"name": res, "op": "mean"}]}, accept=SAFETENSORS)[2])
    mean = clean[res].mean(axis=0)
    for row in range(2):
        np.testing.assert_allclose(meaned[res][row], mean, atol=1e-5)
    value = [float(i) for i in range(64)]
    set_, _ = safetensors_of(post(f"{GPT2}/run_with_hooks", {
        "prompt": IOI[0], "names": [res], "logits": False,
        "hooks": [{"name": res, "op": "set", "value": value, "positions": [-1]}]}, accept=SAFETENSORS)[2])
    assert np.array_equal(set_[res][0, -1], np.array(value, dtype=np.float32))
    np.testing.assert_allclose(set_[res][0, :-1], clean[res][0, :-1], atol=1e-5)


def test_hooks_with_answers_give_the_logit_diff(post, logit_diff):
    doc = json_of(post(f"{GPT2}/run_with_hooks", {
        "prompts": IOI, "answers": ANSWERS, "logits": False,
        "hooks": [{"name": "hook_embed", "op": "scale", "factor": 1.0}]})[2])
    np.testing.assert_allclose(doc["logit_diff"], logit_diff["logit_diff"], atol=1e-5)
    assert doc["mean"] == pytest.approx(logit_diff["mean"], abs=1e-5)


# ---- generate ---------------------------------------------------------------------------


def test_greedy_generation_takes_the_argmax(post):
    prompt_ids = json_of(post(f"{GPT2}/tokenize", {"prompt": "The cat sat on"})[2])["tokens"][0]
    doc = json_of(post(f"{GPT2}/generate", {"prompt": "The cat sat on", "max_new_tokens": 6,
                                            "stop_at_eos": False})[2])
    ids = doc["tokens"][0]
    assert ids[:len(prompt_ids)] == prompt_ids and len(ids) == len(prompt_ids) + 6
    logits = logits_of(post, {"tokens": [ids]})[0]
    for k in range(len(prompt_ids), len(ids)):
        assert ids[k] == int(np.argmax(logits[k - 1])), f"token {k}"
    # the text as TL's generate decodes it: skip_special_tokens (GPT-2's is 50256)
    plain = [i for i in ids if i != 50256]
    text = json_of(post(f"{GPT2}/detokenize", {"tokens": [plain]})[2])["text"]
    assert doc["text"] == text


def test_batched_generation_equals_one_by_one(post):
    prompts = ["The cat", "Hello there my friend"]
    both = json_of(post(f"{GPT2}/generate", {"prompts": prompts, "max_new_tokens": 4})[2])
    for i, p in enumerate(prompts):
        alone = json_of(post(f"{GPT2}/generate", {"prompt": p, "max_new_tokens": 4})[2])
        assert both["tokens"][i] == alone["tokens"][0]
        assert both["text"][i] == alone["text"][0]


def test_sampling_is_reproducible_from_the_seed(post):
    body = {"prompt": "The cat", "max_new_tokens": 8, "do_sample": True, "temperature": 1.5,
            "seed": 1234, "stop_at_eos": False}
    first = json_of(post(f"{GPT2}/generate", body)[2])
    assert json_of(post(f"{GPT2}/generate", body)[2]) == first
    others = {tuple(json_of(post(f"{GPT2}/generate", {**body, "seed": s})[2])["tokens"][0]) for s in range(4)}
    assert len(others) > 1, "different seeds always gave the same sample"


def test_run_with_cache_batch_slice(post):
    body = {"prompts": ["Hello world", "Hi", "The cat sat"], "names": ["blocks.0.hook_resid_post"]}
    everything, _ = safetensors_of(post(f"{GPT2}/run_with_cache", body, accept=SAFETENSORS)[2])
    some, _ = safetensors_of(post(f"{GPT2}/run_with_cache", {**body, "batch": [2, -3]},
                                  accept=SAFETENSORS)[2])
    assert set(some) == set(everything)
    for name, value in some.items():
        assert np.array_equal(value, everything[name][[2, 0]]), name
    status, _, answer = post(f"{GPT2}/run_with_cache", {**body, "batch": [3]})
    assert status == 422 and json_of(answer)["error"]["field"] == "batch[0]"


def test_a_large_json_cache_read_does_not_hold_up_other_caches(lensd, post, get):
    """A kept cache's tensor is sliced under the caches' lock and encoded after
    it: while one client reads a large one as JSON (seconds), others' cache
    requests answer at once (they waited for it: p99 2.8 s against 6 ms)."""
    import threading
    import time

    # [64, 4, 128, 128] floats: 16.8 MB, about 70 MB as JSON
    tokens = [[1 + (i * 31 + j * 7) % 500 for j in range(128)] for i in range(64)]
    big = json_of(post(f"{GPT2}/run_with_cache", {"tokens": tokens, "keep": True, "logits": False,
                                                  "names_filter": "blocks.*.attn.hook_pattern"})[2])
    small = json_of(post(f"{GPT2}/run_with_cache", {"prompt": "Hi", "keep": True,
                                                    "names_filter": "hook_embed"})[2])
    done = {}

    def read_big():
        t0 = time.monotonic()
        status = get(f"/v1/caches/{big['cache_id']}/blocks.1.attn.hook_pattern", timeout=300)[0]
        done.update(status=status, seconds=time.monotonic() - t0)

    reader = threading.Thread(target=read_big)
    reader.start()
    time.sleep(0.3)
    waits = []
    while reader.is_alive() and len(waits) < 20:
        t0 = time.monotonic()
        assert get(f"/v1/caches/{small['cache_id']}")[0] == 200
        waits.append(time.monotonic() - t0)
        time.sleep(0.05)
    reader.join()
    assert done["status"] == 200
    print(f"large JSON read {done['seconds']:.2f} s; other cache reads meanwhile: "
          f"{len(waits)}, slowest {max(waits, default=0):.3f} s")
    assert waits, f"the large read took only {done['seconds']:.2f} s: nothing to overlap"
    assert max(waits) < 0.5, waits
