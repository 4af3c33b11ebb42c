"""Live tests of the Model methods' options against a daemon they start, compared with
TransformerLens 3.9 where TL has the same option.

Environment: LENSD_BIN and LENSD_TEST_MODEL as test_client_live.py (which starts the
daemon), and TransformerLens importable (the venv tools/setup.sh makes): the TL
references are built from LENSD_TEST_MODEL's HF directory by tools/tl_native.py's
``build_hf_tl``, with the weight processing each test names.

Tolerances. Both sides compute in float32 with different kernels (OpenBLAS here,
torch there), so sums of the same d_model / d_mlp / d_vocab terms are rounded in
different orders: ~1e-6 relative per op. RTOL = 1e-5 of the tensor's scale, the
float32 bound the parity suites hold, still catches a wrong fold, centring or mask
(1e-2 or worse). Token ids, shapes, and lensd against itself on the same inputs are
compared exactly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import lensd
import lensd.progress
# the live suite's daemon, client and model fixtures (one daemon for this module)
from test_client_live import MODEL, client, daemon, model  # noqa: F401

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[3]
PROMPT = "The Eiffel Tower is in"
PROMPTS = ["The quick brown fox", "When Mary and John went to the store, John gave a drink to"]
RTOL = 1e-5


def _close(got: np.ndarray, want: np.ndarray, rtol: float = RTOL) -> None:
    """got equals want to rtol of want's scale (absolute below scale 1)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= rtol * scale, f"max error {err:.3g} over {rtol:g} x scale {scale:.3g}"


_TL_MODELS: dict[tuple[str, ...], object] = {}


def tl(processing: tuple[str, ...] | str = "default"):
    """TL 3.9's HookedTransformer of LENSD_TEST_MODEL with that processing (built once)."""
    sys.path.insert(0, str(REPO / "tools"))
    import tl_native as tn

    flags = tn.parse_processing(processing)
    if flags not in _TL_MODELS:
        _TL_MODELS[flags] = tn.build_hf_tl(os.environ["LENSD_TEST_MODEL"], flags)
    return _TL_MODELS[flags]


def _np(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


# ---------------------------------------------------------------- forward


def test_loss_and_loss_per_token_equal_transformer_lens(model: lensd.Model) -> None:
    import torch

    ref = tl()
    with torch.no_grad():
        want_loss = float(ref(PROMPT, return_type="loss"))
        want_per_token = _np(ref(PROMPTS, return_type="loss", loss_per_token=True, padding_side="left"))
        want_both = ref(PROMPTS[1], return_type="both")
    _close(model(PROMPT, return_type="loss"), np.float64(want_loss))
    per_token = model(PROMPTS, return_type="loss", loss_per_token=True, padding_side="left")
    assert per_token.shape == want_per_token.shape
    _close(per_token, want_per_token)
    both = model(PROMPTS[1], return_type="both")
    assert isinstance(both, lensd.Output)
    _close(both.logits, _np(want_both.logits))
    _close(both.loss, np.float64(float(want_both.loss)))
    assert model(PROMPT, return_type=None) is None


def test_logits_positions_top_k_and_log_probs(model: lensd.Model) -> None:
    logits = model(PROMPTS).astype(np.float64)
    # one position: the daemon computes that row only (another product shape: rounding differs)
    _close(model(PROMPTS, positions=-1), logits[:, -1:], rtol=1e-5)
    _close(model(PROMPTS, positions=[0, -1]), logits[:, [0, -1]], rtol=1e-5)
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    got = model(PROMPTS, log_probs=True)
    assert got.shape == logits.shape
    _close(got, log_softmax, rtol=1e-5)
    top = model(PROMPTS, top_k=5, positions=-1)
    assert isinstance(top, lensd.TopK) and top.ids.shape == (2, 1, 5)
    assert top.ids.tolist() == np.argsort(-logits[:, -1:], axis=-1, kind="stable")[..., :5].tolist()
    _close(top.logits, np.take_along_axis(logits[:, -1:], top.ids, -1), rtol=1e-5)
    _close(top.probs, np.exp(np.take_along_axis(log_softmax[:, -1:], top.ids, -1)), rtol=1e-5)
    with pytest.raises(ValueError, match="top_k or log_probs"):
        model(PROMPT, top_k=3, log_probs=True)


# ---------------------------------------------------------------- weight processing


def test_processing_none_equals_transformer_lens_without_processing(model: lensd.Model) -> None:
    import torch

    ref = tl("none")
    with torch.no_grad():
        want_logits, want_cache = ref.run_with_cache(PROMPT)
    got = model(PROMPT, processing="none")
    _close(got, _np(want_logits))
    # the default-processed logits differ (center_unembed shifts each row by its mean)
    assert np.abs(model(PROMPT) - got).max() > 1e-3
    unprocessed = model.with_processing("none")
    assert unprocessed.processing == "none" and unprocessed.cfg.normalization_type == "LN"
    name = "blocks.1.attn.hook_v"  # with default processing, ln1's bias is in b_O, not here
    _, cache = unprocessed.run_with_cache(PROMPT, names_filter=name)
    _close(cache[name], _np(want_cache[name]))
    kept_logits, kept = unprocessed.run_with_cache(PROMPT, names_filter=name, keep=True)
    with kept:
        assert kept.processing == "none"
    _close(kept_logits, _np(want_logits))


def test_fold_ln_false_flags_equal_transformer_lens(client: lensd.Client, model: lensd.Model) -> None:
    import torch

    # from_pretrained(fold_ln=False): the other flags keep from_pretrained's defaults
    ref = tl(("center_writing_weights", "center_unembed", "fold_value_biases"))
    # fold_ln folds ln1's bias into b_V (and fold_value_biases on into b_O): hook_v differs
    name = "blocks.0.attn.hook_v"
    with torch.no_grad():
        want_logits, want_cache = ref.run_with_cache(PROMPTS[1])
    unfolded = client.model(MODEL, fold_ln=False)
    assert unfolded.processing == "center_writing_weights,center_unembed,fold_value_biases"
    assert unfolded.cfg.normalization_type == ref.cfg.normalization_type == "LN"
    assert model.cfg.normalization_type == tl().cfg.normalization_type == "LNPre"
    logits, cache = unfolded.run_with_cache(PROMPTS[1], names_filter=name)
    _close(logits, _np(want_logits))
    _close(cache[name], _np(want_cache[name]))
    # per request, on the model's own handle, the same numbers
    _, per_request = model.run_with_cache(PROMPTS[1], names_filter=name, fold_ln=False)
    np.testing.assert_array_equal(per_request[name], cache[name])
    # and unlike the folded model's
    _, folded = model.run_with_cache(PROMPTS[1], names_filter=name)
    assert np.abs(folded[name] - cache[name]).max() > 1e-3
    with pytest.raises(lensd.BadRequest, match="fold_lm"):
        model(PROMPT, processing="fold_lm")


# ---------------------------------------------------------------- numpy and torch inputs


def test_numpy_and_torch_inputs(model: lensd.Model) -> None:
    import torch

    tokens = model.to_tokens(PROMPTS, padding_side="left")
    want = model(tokens.tolist())
    np.testing.assert_array_equal(model(tokens), want)
    np.testing.assert_array_equal(model(torch.tensor(tokens)), want)
    np.testing.assert_array_equal(model(torch.tensor(tokens, dtype=torch.int32)), want)
    assert model.to_str_tokens(torch.tensor(tokens[0])) == model.to_str_tokens(tokens[0].tolist())
    assert model.to_string(torch.tensor(tokens[1])) == model.to_string(tokens[1].tolist())
    # an answer given back as input: generated tokens, a cached activation as a hook's value
    generated = model.generate(PROMPTS[0], max_new_tokens=3, return_type="tokens", verbose=False)
    assert isinstance(generated, np.ndarray)
    again = model.generate(generated, max_new_tokens=2, return_type="tokens", verbose=False)
    assert again[:, : generated.shape[1]].tolist() == generated.tolist()
    name = "blocks.0.hook_resid_post"
    _, cache = model.run_with_cache(PROMPT, names_filter=name)
    value = cache[name][0, -1]  # float32 [d_model]
    results = []
    for given in (value.tolist(), value, torch.from_numpy(value.copy()), np.float32(0.5)):
        logits, hooked, _ = model.run_with_hooks(
            PROMPT, [{"name": name, "op": "set", "value": given, "positions": [np.int64(0)]}],
            names_filter=name)
        results.append((logits, hooked[name]))
    for logits, hooked in results[1:3]:
        np.testing.assert_array_equal(logits, results[0][0])
        np.testing.assert_array_equal(hooked, results[0][1])
    np.testing.assert_array_equal(results[0][1][0, 0], value)
    assert np.all(results[3][1][0, 0] == 0.5)


# ---------------------------------------------------------------- run_with_cache


def test_run_with_cache_return_type_none(model: lensd.Model) -> None:
    glob = "blocks.*.hook_resid_post"
    logits, full = model.run_with_cache(PROMPTS, names_filter=glob)
    none, cache = model.run_with_cache(PROMPTS, names_filter=glob, return_type=None)
    assert logits is not None and none is None
    assert list(cache) == list(full)
    for name in full:
        np.testing.assert_array_equal(cache[name], full[name])
    with pytest.raises(ValueError, match="return_type"):
        model.run_with_cache(PROMPT, return_type="loss")  # type: ignore[arg-type]


def test_run_with_cache_remove_batch_dim_and_batch(model: lensd.Model) -> None:
    import torch

    name = "blocks.0.attn.hook_pattern"
    _, cache = model.run_with_cache(PROMPT, names_filter=name, remove_batch_dim=True)
    with torch.no_grad():
        _, want = tl().run_with_cache(PROMPT, names_filter=name, remove_batch_dim=True)
    assert cache[name].shape == tuple(want[name].shape)
    _close(cache[name], _np(want[name]))
    logits, full = model.run_with_cache(PROMPTS, names_filter=name)
    picked_logits, picked = model.run_with_cache(PROMPTS, names_filter=name, batch=[1])
    np.testing.assert_array_equal(picked[name], full[name][[1]])
    np.testing.assert_array_equal(picked_logits, logits[[1]])


def test_kept_cache_reads_equal_the_full_cache(model: lensd.Model) -> None:
    logits, full = model.run_with_cache(PROMPTS)
    kept_logits, kept = model.run_with_cache(PROMPTS, keep=True)
    assert isinstance(kept, lensd.KeptCache)
    with kept:
        assert list(kept.keys()) == list(full.keys()) and len(kept) == len(full)
        np.testing.assert_array_equal(kept_logits, logits)
        for name in full:
            assert kept.shapes[name] == full[name].shape
            np.testing.assert_array_equal(kept[name], full[name])
        n = model.cfg.n_layers
        assert kept["pattern", -1] is kept[f"blocks.{n - 1}.attn.hook_pattern"]
        assert ("resid_post", 0) in kept and "no_such_hook" not in kept
        with pytest.raises(KeyError):
            kept["blocks.0.hook_no_such"]
        # slices read on the daemon: prompts, and positions on the position (query) axis
        resid = f"blocks.{n - 1}.hook_resid_post"
        np.testing.assert_array_equal(kept.fetch(resid, batch=[1, 0], positions=-1),
                                      full[resid][[1, 0]][:, [-1]])
        np.testing.assert_array_equal(kept.fetch(("pattern", 0), positions=[0, 2]),
                                      full["pattern", 0][:, :, [0, 2]])
        assert kept.listing()["cache_id"] == kept.cache_id
        cache_id = kept.cache_id
    # left: freed on the daemon
    with pytest.raises(lensd.NotFound):
        model.client._request("GET", f"/v1/caches/{cache_id}")
    none, kept = model.run_with_cache(PROMPT, names_filter="hook_embed", keep=True, return_type=None)
    assert none is None and "logits" not in kept.shapes and list(kept) == ["hook_embed"]
    kept.delete()
    with pytest.raises(lensd.NotFound):
        kept.fetch("hook_embed")


# ---------------------------------------------------------------- generate


def test_generate_tokens_and_str_equal_transformer_lens_greedy(model: lensd.Model) -> None:
    import torch

    ref = tl()
    for prompt in (PROMPTS[0], PROMPTS):  # one prompt; a batch, which TL left-pads
        with torch.no_grad():
            want = ref.generate(prompt, max_new_tokens=8, do_sample=False, stop_at_eos=False,
                                return_type="tokens", verbose=False)
            want_str = ref.generate(prompt, max_new_tokens=8, do_sample=False, stop_at_eos=False,
                                    verbose=False)
        got = model.generate(prompt, max_new_tokens=8, stop_at_eos=False, return_type="tokens", verbose=False)
        assert got.dtype == np.int64 and got.tolist() == _np(want).tolist()
        assert model.generate(prompt, max_new_tokens=8, stop_at_eos=False, verbose=False) == want_str
    # token input returns tokens ("input"), as TL's
    tokens = model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        want = ref.generate(torch.tensor(tokens), max_new_tokens=5, do_sample=False, verbose=False)
    assert model.generate(tokens, max_new_tokens=5, verbose=False).tolist() == _np(want).tolist()


def test_generate_eos_token_id_equals_transformer_lens(model: lensd.Model) -> None:
    import torch

    ref = tl()
    free = model.generate(PROMPTS, max_new_tokens=8, stop_at_eos=False, return_type="tokens", verbose=False)
    width = free.shape[1] - 8
    stop = int(free[0, width + 2])  # row 0's third new token: row 0 ends there, row 1 goes on
    assert stop not in free[1, width:].tolist(), "pick another stop token"
    for eos_token_id in (stop, [stop, 10_000_000 % model.cfg.d_vocab]):
        with torch.no_grad():
            want = ref.generate(PROMPTS, max_new_tokens=8, do_sample=False, eos_token_id=eos_token_id,
                                return_type="tokens", verbose=False)
            want_str = ref.generate(PROMPTS, max_new_tokens=8, do_sample=False,
                                    eos_token_id=eos_token_id, verbose=False)
        got = model.generate(PROMPTS, max_new_tokens=8, eos_token_id=eos_token_id, return_type="tokens",
                             verbose=False)
        assert got.tolist() == _np(want).tolist()
        assert model.generate(PROMPTS, max_new_tokens=8, eos_token_id=eos_token_id, verbose=False) == want_str
    with pytest.raises(ValueError, match="top_p"):
        model.generate(PROMPT, top_p=0.9, do_sample=True)
    with pytest.raises(ValueError, match="freq_penalty"):
        model.generate(PROMPT, freq_penalty=1.0)


# ---------------------------------------------------------------- attention


def test_attention_of_token_ids(model: lensd.Model) -> None:
    tokens = model.to_tokens(PROMPT)
    by_text = model.attention(PROMPT, layers=-1, heads=[0, 1])
    for ids in (tokens, tokens[0], tokens[0].tolist()):
        got = model.attention(ids, layers=-1, heads=[0, 1])
        np.testing.assert_array_equal(got["patterns"], by_text["patterns"])
    _, cache = model.run_with_cache(PROMPT, names_filter=f"blocks.{model.cfg.n_layers - 1}.attn.hook_pattern")
    np.testing.assert_array_equal(by_text["patterns"][0], cache["pattern", -1][0, :2])
    with pytest.raises(ValueError, match="one prompt"):
        model.attention(PROMPTS)


# ---------------------------------------------------------------- progress bars


class _RecordingBar(lensd.progress.ProgressBar):
    made: list[_RecordingBar] = []

    def __enter__(self) -> _RecordingBar:
        _RecordingBar.made.append(self)
        return super().__enter__()


def test_progress_bars(model: lensd.Model, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(lensd.progress, "POLL_INTERVAL_S", 0.01)
    monkeypatch.setattr("lensd.client.ProgressBar", _RecordingBar)
    _RecordingBar.made.clear()
    # not interactive under pytest: no bar unless asked for
    model.generate(PROMPT, max_new_tokens=2)
    assert _RecordingBar.made == [] and capsys.readouterr().err == ""
    texts = model.generate(PROMPT, max_new_tokens=60, stop_at_eos=False, verbose=True)
    err = capsys.readouterr().err
    assert isinstance(texts, str) and "lensd generate" in err and "60/60" in err
    (bar,) = _RecordingBar.made
    assert any(poll["state"] == "running" and poll["total"] == 60 for poll in bar.polls), bar.polls
    dones = [poll["done"] for poll in bar.polls]
    assert dones == sorted(dones)
    clean, corrupted = PROMPTS[1], PROMPTS[1].replace("John gave", "Mary gave")
    result = model.patch("attn_head_by_pos_every", clean, corrupted, answers=[(" Mary", " John")],
                         full_recompute=True, progress=True)
    err = capsys.readouterr().err
    assert "lensd patch attn_head_by_pos_every" in err and "100%" in err
    assert result.shape[0] == 5
