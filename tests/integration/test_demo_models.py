"""The bundled demo models (models/), measured through lensd itself.

`lensd serve` with no model serves every directory of models/; each model
card (models/NAME/README.md) states properties measured by the training
tool with TransformerLens. These tests measure them again through the
daemon's endpoints, so a broken loader, tokenizer or model file fails CI:

- induction-2l: on BOS + 50 random bytes repeated once, the best layer-1
  head's induction score (attention from each token of the second repeat to
  the token after its first occurrence), from /attention, is at least 0.5
  (the issue's target), and the per-token loss on the second repeat, from
  /logits, is under a quarter of the first repeat's.
- brackets: accuracy at least 99% on freshly generated held-out strings
  (tools/train_brackets.generate with a seed never used in training) and on
  the first 5,000 strings of ARENA's dataset (../shared), from /logits.

The card's own numbers are checked too: lensd's measurement of the same
rows must agree with what the card states within the float32 noise of a
different summation order (1e-3 absolute on a mean of attention weights,
0.1 percentage point, i.e. at most a handful of strings, on accuracies).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import train_brackets  # noqa: E402
import train_induction  # noqa: E402
from lensd_http import Daemon, request, tensor  # noqa: E402

MODELS = REPO / "models"
SHARED = Path(os.environ.get("LENSD_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="module")
def demo(lensd_bin, tmp_path_factory):
    """`lensd serve` with no model: the bundled models."""
    daemon = Daemon(lensd_bin, [], tmp_path_factory.mktemp("demo") / "lensd.stderr")
    daemon.start()
    yield daemon
    rc = daemon.stop()
    assert rc == 0, f"lensd exited {rc} after SIGTERM\n{daemon.describe()}"


def card_row(model: str, label: str) -> list[str]:
    """The cells of the card's table row whose first cell starts with label."""
    text = (MODELS / model / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {label}"))
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def card_value(model: str, label: str) -> str:
    """The last cell of that row."""
    return card_row(model, label)[-1]


def ok_json(response):
    status, _, body = response
    assert status == 200, body[:500]
    return json.loads(body)


def test_serve_without_a_model_serves_the_bundled_ones(demo):
    listed = ok_json(demo.get("/v1/models"))
    names = sorted(m["name"] for m in listed["models"])
    assert names == sorted(p.name for p in MODELS.iterdir() if (p / "tl_config.json").is_file())
    assert names == ["brackets", "induction-2l"]


def test_the_bundled_models_fit_in_8_mb():
    total = sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file())
    assert total <= 8 * 1024 * 1024, total


def test_induction_head_through_the_attention_endpoint(demo):
    tokens = train_induction.repeated_rows(np.random.default_rng(train_induction.EVAL_SEED),
                                           train_induction.EVAL_ROWS, train_induction.REPEAT_LEN).numpy()
    scores = []
    for row in tokens:
        answer = ok_json(demo.post("/v1/models/induction-2l/attention",
                                   {"tokens": [row.tolist()], "layers": [1]}))
        pattern = tensor(answer["patterns"]).astype(np.float64)[0]  # [head, dest, src]
        scores.append(train_induction.induction_scores(torch.from_numpy(pattern[None]),
                                                       train_induction.REPEAT_LEN).numpy())
    per_head = np.mean(scores, axis=0)
    best = float(per_head.max())
    assert best >= 0.5, per_head
    assert f"L1H{int(per_head.argmax())}" in card_row("induction-2l", "induction score of")[0]
    assert abs(best - float(card_value("induction-2l", "induction score of"))) < 1e-3


def test_induction_loss_drops_on_the_second_repeat(demo):
    length = train_induction.REPEAT_LEN
    tokens = train_induction.repeated_rows(np.random.default_rng(train_induction.EVAL_SEED),
                                           train_induction.EVAL_ROWS, length).numpy()
    answer = ok_json(demo.post("/v1/models/induction-2l/logits",
                               {"tokens": tokens.tolist(), "per_token_loss": True, "top_k": 1}))
    loss = tensor(answer["per_token_loss"]).astype(np.float64)  # [rows, pos-1]: p predicts p+1
    first, second = loss[:, 1:length].mean(), loss[:, length + 1:].mean()
    assert second < first / 4, (first, second)
    assert abs(first - float(card_value("induction-2l", "per-token loss, first repeat").split()[0])) < 1e-3
    assert abs(second - float(card_value("induction-2l", "per-token loss, second repeat").split()[0])) < 1e-3


def bracket_accuracy(demo, strings: list[str], labels: np.ndarray) -> float:
    answer = ok_json(demo.post("/v1/models/brackets/logits", {"prompts": strings, "positions": [0]}))
    logits = tensor(answer["logits"])[:, 0]  # [batch, 2]
    return int((logits.argmax(-1) == labels).sum()) / len(strings)


def card_percent(label: str) -> float:
    return float(re.sub(r"[%,]", "", card_value("brackets", label))) / 100


def test_brackets_accuracy_on_held_out_strings(demo):
    strings, labels = train_brackets.generate(np.random.default_rng(train_brackets.EVAL_SEED),
                                              train_brackets.HELD_OUT)
    accuracy = bracket_accuracy(demo, strings, labels)
    assert accuracy >= 0.99
    assert abs(accuracy - card_percent("freshly generated")) <= 1e-3


def test_brackets_accuracy_on_arena_strings(demo):
    data = json.loads((SHARED / "data" / "arena-brackets" / "brackets_data.json").read_text())[:5000]
    accuracy = bracket_accuracy(demo, [s for s, _ in data], np.array([int(b) for _, b in data]))
    assert accuracy >= 0.99
    assert abs(accuracy - card_percent("ARENA's dataset, the first 5,000")) <= 1e-3


def test_the_first_readme_command_serves_the_bundled_models(tmp_path):
    """tools/demo.sh (the README's first command) as a newcomer runs it: it
    prints the dashboard and API URLs and serves both models; the curl lines
    it suggests, and the README's, answer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LENSD_PORT": str(port)}
    log = open(tmp_path / "demo.stderr", "wb")
    proc = subprocess.Popen([str(REPO / "tools" / "demo.sh")], stdout=subprocess.PIPE, stderr=log,
                            stdin=subprocess.DEVNULL, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("lensd listening on"):
                break
        banner = "\n".join(lines)
        assert lines and lines[-1].startswith("lensd listening on"), \
            f"{banner}\n{(tmp_path / 'demo.stderr').read_text()}"
        assert f"dashboard: http://127.0.0.1:{port}/" in banner, banner
        assert f"API:       http://127.0.0.1:{port}/v1/models" in banner, banner
        url = lines[-1].split()[-1]
        deadline = time.monotonic() + 120
        while request(url, "GET", "/readyz")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "demo.stderr").read_text()
            time.sleep(0.1)
        listed = json.loads(request(url, "GET", "/v1/models")[2])
        assert sorted(m["name"] for m in listed["models"]) == ["brackets", "induction-2l"]

        readme = (REPO / "README.md").read_text()
        first_section = readme[readme.index("## Two commands"):readme.index("## The daemon")]
        suggested = [line.strip() for line in banner.splitlines() if line.strip().startswith("curl ")]
        suggested.append(" ".join(re.search(r"(curl -s localhost:8080/v1/models/induction-2l/attention.*?)\n\n",
                                            first_section, re.S).group(1).replace("\\\n", " ").split()))
        assert len(suggested) == 4, suggested
        for line in suggested:
            args = shlex.split(line.replace(f"localhost:{port}", f"127.0.0.1:{port}")
                               .replace("localhost:8080", f"127.0.0.1:{port}"))
            done = subprocess.run([args[0], "-f", "--max-time", "60", *args[1:]], capture_output=True,
                                  timeout=90)
            assert done.returncode == 0 and done.stdout.strip(), (line, done.stderr)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        log.close()
