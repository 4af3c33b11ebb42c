"""Live tests of the lensd client against a daemon they start themselves.

Environment (both required; the tests fail, not skip, without them):
  LENSD_BIN         the lensd executable (build/server/lensd)
  LENSD_TEST_MODEL  a model directory with a GPT-2-style text tokenizer
                    (build/fixtures/models/gpt2-a)

Each daemon runs `LENSD_BIN serve --model test=LENSD_TEST_MODEL --port 0`; its
first stdout line gives the URL, and SIGTERM must make it exit 0.
"""

from __future__ import annotations

import fnmatch
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest

import lensd

pytestmark = pytest.mark.live

MODEL = "test"
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60
PROMPT = "The Eiffel Tower is in"


def _fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


def _required_env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        _fail(f"{name} is not set: the live tests need {what} (they do not skip without it)")
    return value


class Daemon:
    """A `lensd serve` process: started, its URL read from its first stdout line, stopped by SIGTERM."""

    def __init__(self, binary: str, model_dir: str) -> None:
        self._stderr = tempfile.TemporaryFile()
        self._stdout_lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.proc = subprocess.Popen(
            [binary, "serve", "--model", f"{MODEL}={model_dir}", "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        try:
            first = self._stdout_lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.stop()
            _fail(f"lensd printed nothing on stdout in {START_TIMEOUT_S} s\n{self.logs()}")
        if first is None:
            status = self.proc.wait()
            _fail(f"lensd exited with status {status} before printing its URL\n{self.logs()}")
        match = re.fullmatch(r"lensd listening on (http://\S+)", first.strip())
        if match is None:
            self.stop()
            _fail(f"lensd's first stdout line is not 'lensd listening on URL': {first!r}\n{self.logs()}")
        self.url = match.group(1)

    def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line)
            self._stdout_lines.put(line)
        self._stdout_lines.put(None)

    def stop(self) -> int:
        """Sends SIGTERM and returns the exit status (killing the daemon if it outlives STOP_TIMEOUT_S)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                _fail(f"lensd did not exit within {STOP_TIMEOUT_S} s of SIGTERM\n{self.logs()}")
        return self.proc.returncode

    def logs(self) -> str:
        self._stderr.seek(0)
        stderr = self._stderr.read().decode(errors="replace")
        return f"--- lensd stdout ---\n{''.join(self.stdout)}--- lensd stderr (tail) ---\n{stderr[-4000:]}"


def _start() -> Daemon:
    binary = _required_env("LENSD_BIN", "the lensd executable, e.g. build/server/lensd")
    model_dir = _required_env("LENSD_TEST_MODEL", "a model directory, e.g. build/fixtures/models/gpt2-a")
    if not Path(binary).is_file():
        _fail(f"LENSD_BIN={binary} is not a file")
    return Daemon(binary, model_dir)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    daemon = _start()
    try:
        yield daemon
    finally:
        status = daemon.stop()
        if status != 0:
            _fail(f"lensd exited {status} after SIGTERM\n{daemon.logs()}")


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[lensd.Client]:
    with lensd.Client(daemon.url, timeout=120) as client:
        client.wait_ready(timeout=START_TIMEOUT_S)
        yield client


@pytest.fixture(scope="module")
def model(client: lensd.Client) -> lensd.Model:
    return client.model(MODEL)


def test_health_and_models(client: lensd.Client) -> None:
    assert client.health() == {"status": "ok"}
    infos = client.models()
    assert [info["name"] for info in infos] == [MODEL]
    assert infos[0]["config"]["n_layers"] >= 1


def test_model_info(model: lensd.Model) -> None:
    assert model.name == MODEL
    assert model.cfg.n_layers >= 1 and model.cfg.d_model >= 1 and model.cfg.n_heads >= 1
    assert "blocks.0.attn.hook_pattern" in model.hook_points
    assert f"blocks.{model.cfg.n_layers - 1}.hook_resid_post" in model.hook_points


def test_tokens(model: lensd.Model) -> None:
    tokens = model.to_tokens(PROMPT)
    assert tokens.dtype == np.int64 and tokens.ndim == 2 and tokens.shape[0] == 1
    str_tokens = model.to_str_tokens(PROMPT)
    assert isinstance(str_tokens, list) and all(isinstance(t, str) for t in str_tokens)
    assert len(str_tokens) == tokens.shape[1]
    assert "".join(str_tokens).endswith(PROMPT)
    assert model.to_str_tokens(tokens) == str_tokens
    without_bos = model.to_tokens(PROMPT, prepend_bos=False)
    assert without_bos.shape[1] == tokens.shape[1] - int(model.cfg.default_prepend_bos)
    assert model.to_string(without_bos[0]) == PROMPT

    batch = model.to_tokens(["Hi", PROMPT])
    assert batch.shape == (2, tokens.shape[1])
    per_prompt = model.to_str_tokens(["Hi", PROMPT])
    assert per_prompt[1] == str_tokens and len(per_prompt[0]) < len(str_tokens)

    paris = model.to_single_token(" Paris")
    assert model.to_tokens(" Paris", prepend_bos=False).tolist() == [[paris]]
    with pytest.raises(ValueError, match="not a single token"):
        model.to_single_token(PROMPT)


def test_forward(model: lensd.Model) -> None:
    n_pos = model.to_tokens(["Hi", PROMPT]).shape[1]
    logits = model(["Hi", PROMPT])
    assert logits.dtype == np.float32 and logits.shape == (2, n_pos, model.cfg.d_vocab_out)
    assert np.isfinite(logits).all()
    loss = model(PROMPT, return_type="loss")
    assert loss.shape == () and np.isfinite(loss) and loss > 0
    per_token = model(PROMPT, return_type="loss", loss_per_token=True)
    assert per_token.shape == (1, model.to_tokens(PROMPT).shape[1] - 1)
    assert np.isclose(per_token.mean(), loss, rtol=1e-4)


def test_run_with_cache(model: lensd.Model) -> None:
    n_pos = model.to_tokens(PROMPT).shape[1]
    glob = "blocks.*.attn.hook_pattern"
    logits, cache = model.run_with_cache(PROMPT, names_filter=glob)
    assert logits.shape == (1, n_pos, model.cfg.d_vocab_out)
    assert list(cache) == fnmatch.filter(model.hook_points, glob) and len(cache) == model.cfg.n_layers
    pattern = cache["pattern", 0]
    assert pattern.shape == (1, model.cfg.n_heads, n_pos, n_pos)
    np.testing.assert_allclose(pattern.sum(-1), 1.0, rtol=1e-5)
    assert cache["pattern", -1] is cache[f"blocks.{model.cfg.n_layers - 1}.attn.hook_pattern"]


def test_run_with_cache_callable_filter_and_pos_slice(model: lensd.Model) -> None:
    _, cache = model.run_with_cache(
        PROMPT, names_filter=lambda name: name.endswith("hook_resid_post"), pos_slice=-1
    )
    assert list(cache) == [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    assert cache["resid_post", -1].shape == (1, 1, model.cfg.d_model)


def test_unknown_hook_name_is_a_400(model: lensd.Model) -> None:
    with pytest.raises(lensd.LensdError) as caught:
        model.run_with_cache(PROMPT, names_filter="blocks.0.attn.hook_patern")
    assert caught.value.status == 400 and str(caught.value).startswith("400 ")


def test_test_prompt(model: lensd.Model, capsys: pytest.CaptureFixture[str]) -> None:
    data = model.test_prompt(PROMPT, "Paris")
    assert data["text"].strip()
    assert capsys.readouterr().out.strip() == data["text"].strip()


def test_attention(model: lensd.Model) -> None:
    data = model.attention(PROMPT, layers=[0])
    n_pos = len(data["str_tokens"])
    assert isinstance(data["patterns"], np.ndarray)
    assert data["patterns"].shape == (1, model.cfg.n_heads, n_pos, n_pos)


def test_unknown_model_is_a_404(client: lensd.Client) -> None:
    with pytest.raises(lensd.LensdError) as caught:
        client.model("no-such-model")
    assert caught.value.status == 404 and caught.value.code == "not_found"
    assert str(caught.value).startswith("404 not_found: ")


def test_sigterm_exits_zero() -> None:
    """A daemon of its own, which serves a request and is then stopped by SIGTERM."""
    daemon = _start()
    try:
        with lensd.Client(daemon.url, timeout=120) as client:
            client.wait_ready(timeout=START_TIMEOUT_S)
            assert client.model(MODEL).to_tokens(PROMPT).shape[0] == 1
    finally:
        status = daemon.stop()
    assert status == 0, f"lensd exited {status} after SIGTERM\n{daemon.logs()}"


def test_logit_diff_run_with_hooks_and_generate(model):
    prompt = "When Mary and John went to the store, John gave a drink to"
    diff = model.logit_diff(prompt, [(" Mary", " John")], attribution=["accumulated_resid", "heads"])
    assert diff["logit_diff"].shape == (1,)
    n = model.cfg.n_layers
    assert diff["accumulated_resid"]["labels"][-1] == "final_post"
    assert diff["accumulated_resid"]["per_prompt"].shape == (2 * n + 1, 1)
    assert diff["heads"]["grid"].shape == (n, model.cfg.n_heads)
    logits, cache, metric = model.run_with_hooks(
        prompt, [{"name": "blocks.0.attn.hook_z", "op": "zero"}],
        names_filter="blocks.0.attn.hook_z", answers=[(" Mary", " John")])
    assert np.all(cache["z", 0] == 0)
    assert logits.shape[:2] == (1, len(model.to_str_tokens(prompt)))
    assert metric["mean"] != pytest.approx(float(diff["mean"]))
    texts = model.generate("The quick brown fox", max_new_tokens=3)
    assert isinstance(texts, str) and texts.startswith("The quick brown fox")  # as TL returns one text


def test_patch(model):
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupted = "When Mary and John went to the store, Mary gave a drink to"
    result = model.patch("resid_pre", clean, corrupted, answers=[(" Mary", " John")])
    tokens = model.to_str_tokens(clean)
    assert isinstance(result, lensd.Patched)
    assert result.shape == (model.cfg.n_layers, len(tokens))
    assert result.axes == [("layer", list(range(model.cfg.n_layers))), ("pos", tokens)]
    differ = [i for i, (a, b) in enumerate(zip(tokens, model.to_str_tokens(corrupted))) if a != b]
    assert len(differ) == 1
    # resid_pre of layer 0 at the one differing position is the whole difference
    assert result[0, differ[0]] == pytest.approx(result.clean_metric, abs=1e-4)
    assert np.asarray(result)[0, 0] == pytest.approx(result.corrupted_metric, abs=1e-4)
    normalized = model.patch("resid_pre", clean, corrupted, answers=[(" Mary", " John")], normalize=True)
    assert normalized[0, differ[0]] == pytest.approx(1.0, abs=1e-4)
    assert normalized.runs == result.runs and normalized.passes >= 1
    # each run from its layer and its position on: less work than recomputing everything
    full = model.patch("resid_pre", clean, corrupted, answers=[(" Mary", " John")], full_recompute=True)
    assert full.block_positions == full.runs * len(tokens) * model.cfg.n_layers
    assert 0 < result.block_positions < full.block_positions
    assert np.abs(np.asarray(full) - np.asarray(result)).max() <= 1e-4


def test_path_patching_and_progress(model, client):
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupted = "When Mary and John went to the store, Mary gave a drink to"
    n = model.cfg.n_layers
    result = model.patch("path_patch_heads", clean, corrupted, answers=[(" Mary", " John")],
                         receivers=[(n - 1, 0)], receiver_input="v", progress_id="client-path")
    assert result.shape == (n - 1, model.cfg.n_heads)
    assert [name for name, _ in result.axes] == ["layer", "head"]
    with pytest.raises(lensd.LensdError) as e:  # finished: nothing to follow any more
        client.progress("client-path")
    assert e.value.status == 404
