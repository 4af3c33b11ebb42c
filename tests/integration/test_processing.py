"""Weight processing chosen per request, and whole batches of any size.

One daemon answers in every processing mode a request names ("processing":
"default", "none", or a list of TL's steps): its answers must equal those of
daemons loaded with that processing, and TransformerLens's for the same
flags. A batch of 200 prompts is padded once, as TL's to_tokens pads the
whole list, and runs as TL runs it.

Tolerances: a mode served from a variant runs the same weights, read and
processed by the same code, through the same kernels as a daemon loaded in
that mode, so its numbers are compared for equality. Against TransformerLens
(torch float32, another summation order) the parity suite's bound holds:
|lensd - TL| <= 1e-5 * max(1, max|TL|), about 1e-5 relative for float32
activations of order one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lensd_http import Daemon, error_of, safetensors_of

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import tl_native  # noqa: E402

GPT2 = "/v1/models/gpt2"
PROMPTS = ["The cat sat on the mat", "Hello", "A longer prompt, with more words in it than the others"]
HOOKS = ["hook_embed", "blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_pattern",
         "blocks.1.attn.hook_z", "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post",
         "ln_final.hook_scale"]
# TL's weight processing steps, as lensd names them
ALL_STEPS = "fold_ln,center_writing_weights,center_unembed,fold_value_biases"


def close_to_tl(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    bound = 1e-5 * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(got - ref).max())
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    assert err <= bound, f"{what}: max |lensd - TL| = {err:.3g} > {bound:.3g}"


def run_with_cache(daemon: Daemon, body: dict) -> tuple[dict, dict, dict]:
    """(tensors, other fields, headers) of a safetensors run_with_cache answer."""
    status, headers, data = daemon.post(f"{GPT2}/run_with_cache", body,
                                        accept="application/vnd.safetensors")
    assert status == 200, data[:400]
    tensors, meta = safetensors_of(data)
    return tensors, meta, headers


@pytest.fixture(scope="module")
def daemons(lensd_bin, models, tmp_path_factory):
    """Two daemons on gpt2-a: loaded with TL's default processing, and with none."""
    logs = tmp_path_factory.mktemp("processing")
    unprocessed = logs / "none.json"
    unprocessed.write_text(json.dumps({"models": [
        {"name": "gpt2", "path": str(models["gpt2"]), "processing": "none"}]}))
    started = {
        "default": Daemon(lensd_bin, ["--model", f"gpt2={models['gpt2']}"], logs / "default.log"),
        "none": Daemon(lensd_bin, ["--config", str(unprocessed)], logs / "none.log"),
    }
    for daemon in started.values():
        daemon.start()
    yield started
    for name, daemon in started.items():
        rc = daemon.stop()
        assert rc == 0, f"{name}: lensd exited {rc}\n{daemon.describe()}"


@pytest.mark.parametrize("mode, other", [("none", "none"), ("default", "default"),
                                         (ALL_STEPS, "default")])
def test_a_mode_asked_for_equals_a_daemon_loaded_in_it(daemons, mode, other):
    served = daemons["default"] if mode != "default" or other != "default" else daemons["none"]
    body = {"prompts": PROMPTS, "names": HOOKS}
    got, got_meta, got_headers = run_with_cache(served, {**body, "processing": mode})
    want, want_meta, _ = run_with_cache(daemons[other], body)
    assert got_meta["processing"] == want_meta["processing"]
    assert got_headers["X-Lensd-Processing"] == got_meta["processing"]
    assert sorted(got) == sorted(want)
    for name in want:
        assert np.array_equal(got[name], want[name]), name


def test_every_answer_names_its_processing(daemons):
    default = daemons["default"]
    for endpoint, body in [("logits", {"prompt": "Hi", "top_k": 1}),
                           ("attention", {"prompt": "Hi"}),
                           ("logit_diff", {"prompt": "Hi", "answers": [[" the", " a"]]}),
                           ("test_prompt", {"prompt": "Hi", "answer": " there"}),
                           ("generate", {"prompt": "Hi", "max_new_tokens": 1}),
                           ("run_with_hooks", {"prompt": "Hi", "hooks": [
                               {"name": "blocks.0.hook_resid_post", "op": "zero"}]})]:
        for mode, named in [(None, ALL_STEPS), ("none", "none"), ("fold_ln", "fold_ln")]:
            request = dict(body) if mode is None else {**body, "processing": mode}
            status, headers, data = default.post(f"{GPT2}/{endpoint}", request)
            assert status == 200, (endpoint, mode, data[:300])
            assert json.loads(data)["processing"] == named, (endpoint, mode)
            assert headers["X-Lensd-Processing"] == named, (endpoint, mode)


def real_positions(daemon: Daemon, prompts: list[str]) -> np.ndarray:
    """bool [batch, pos]: lensd's attention mask of the padded batch (TL's)."""
    status, _, data = daemon.post(f"{GPT2}/tokenize", {"prompts": prompts})
    assert status == 200, data[:300]
    return np.asarray(json.loads(data)["attention_mask"], dtype=bool)


def test_the_modes_equal_transformerlens_built_with_those_flags(daemons, models):
    real = real_positions(daemons["default"], PROMPTS)
    for mode, flags in [("none", ()), ("default", tl_native.parse_processing("default")),
                        ("fold_ln", ("fold_ln",))]:
        got, _, _ = run_with_cache(daemons["default"], {"prompts": PROMPTS, "names": HOOKS,
                                                        "processing": mode})
        model = tl_native.build_hf_tl(models["gpt2"], flags)
        with torch.no_grad():
            logits, cache = model.run_with_cache(PROMPTS)  # padded as to_tokens pads the list
        close_to_tl(got["logits"][real], logits.numpy()[real], f"{mode}: logits")
        for name in HOOKS:
            ref = cache[name].numpy()
            if name.endswith("hook_pattern"):  # [batch, head, query, key]: the real queries
                close_to_tl(got[name].transpose(0, 2, 1, 3)[real],
                            ref.transpose(0, 2, 1, 3)[real], f"{mode}: {name}")
            else:
                close_to_tl(got[name][real], ref[real], f"{mode}: {name}")


def test_two_hundred_prompts_are_one_batch_as_transformerlens_pads_it(daemons, models):
    rng = np.random.default_rng(16)
    words = "the a cat dog sat ran on under mat tree quickly slowly red blue and then".split()
    prompts = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(200)]
    model = tl_native.build_hf_tl(models["gpt2"], tl_native.parse_processing("default"))
    tokens = model.to_tokens(prompts)  # [200, longest]: right-padded, BOS first
    status, _, data = daemons["default"].post(f"{GPT2}/tokenize", {"prompts": prompts})
    assert status == 200, data[:300]
    assert np.array_equal(np.asarray(json.loads(data)["tokens"]), tokens.numpy())

    names = ["blocks.1.hook_resid_post", "ln_final.hook_normalized"]
    got, _, _ = run_with_cache(daemons["default"], {"prompts": prompts, "names": names,
                                                    "logits": False})
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts, names_filter=names)
    real = np.asarray(json.loads(data)["attention_mask"], dtype=bool)
    for name in names:
        close_to_tl(got[name][real], cache[name].numpy()[real], name)

    status, _, data = daemons["default"].post(f"{GPT2}/logits", {
        "prompts": prompts, "per_token_loss": True, "top_k": 1})
    assert status == 200, data[:300]
    with torch.no_grad():
        ref = model(prompts, return_type="loss", loss_per_token=True).numpy()  # [200, pos - 1]
    got_loss = np.asarray(json.loads(data)["per_token_loss"]["data"], dtype=np.float32)
    predicted = real[:, 1:]  # the loss at p predicts token p + 1: real where that token is
    close_to_tl(got_loss[predicted], ref[predicted], "per-token loss")


@pytest.mark.parametrize("value, message", [
    ("fold_everything", "unknown weight processing step"),
    (5, "processing must be a string"),
])
def test_a_bad_processing_is_a_400_naming_it(daemons, value, message):
    status, _, data = daemons["default"].post(f"{GPT2}/logits", {"prompt": "Hi", "processing": value})
    assert status == 400, data[:300]
    error = error_of(data)
    assert error["code"] == "bad_request" and error["field"] == "processing", error
    assert message in error["message"], error


def test_tokenizing_ignores_processing(daemons):
    status, headers, data = daemons["default"].post(f"{GPT2}/tokenize",
                                                    {"prompt": "Hi", "processing": "none"})
    assert status == 200, data[:300]
    assert "processing" not in json.loads(data) and "X-Lensd-Processing" not in headers


def test_variants_beyond_the_budget_drop_the_least_recently_used(start_daemon, models, tmp_path):
    config = tmp_path / "one-variant.json"
    config.write_text(json.dumps({"limits": {"max_weight_variants": 1}}))
    daemon = start_daemon(["--config", str(config), "--model", f"gpt2={models['gpt2']}"])
    answers = {}
    for mode in ["none", "fold_ln", "none", "default"]:
        got, meta, _ = run_with_cache(daemon, {"prompt": "Hi there", "names": HOOKS,
                                               "processing": mode})
        assert meta["processing"] == ("none" if mode == "none" else
                                      "fold_ln" if mode == "fold_ln" else ALL_STEPS)
        answers.setdefault(mode, got)
        for name, value in answers[mode].items():  # a reloaded variant answers as before
            assert np.array_equal(got[name], value), (mode, name)
    log = daemon.log_text()
    assert log.count("gpt2: loaded its weights processed none") == 2, log[-2000:]
    assert log.count("gpt2: loaded its weights processed fold_ln") == 1, log[-2000:]
    assert log.count("gpt2: dropped its weights processed") == 2, log[-2000:]


def test_no_variants_serves_only_the_loaded_processing(start_daemon, models, tmp_path):
    config = tmp_path / "no-variants.json"
    config.write_text(json.dumps({"limits": {"max_weight_variants": 0}}))
    daemon = start_daemon(["--config", str(config), "--model", f"gpt2={models['gpt2']}"])
    status, _, data = daemon.post(f"{GPT2}/logits", {"prompt": "Hi", "processing": "default"})
    assert status == 200, data[:300]
    status, _, data = daemon.post(f"{GPT2}/logits", {"prompt": "Hi", "processing": "none"})
    assert status == 400, data[:300]
    error = error_of(data)
    assert error["field"] == "processing" and "limits.max_weight_variants is 0" in error["message"]
