"""The README's examples run as written: every curl line of the daemon
section against the session daemon (test models named "gpt2" and
"brackets", as in the README), and the notebook example with the client.

localhost:8080 becomes the daemon's address; each curl gets -f (fail on an
HTTP error) and must print something, or write the file it names.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def readme_block(language: str) -> str:
    text = (REPO / "README.md").read_text()
    daemon = text[text.index("## The daemon"):text.index("## The command line")]
    return re.search(rf"```{language}\n(.*?)```", daemon, re.S).group(1)


CURLS = [line for line in readme_block("sh").splitlines() if line.startswith("curl ")]


def test_the_readme_has_an_example_per_endpoint():
    endpoints = {"/v1/models", "tokenize", "detokenize", "logits", "test_prompt", "run_with_cache",
                 "attention", "logit_diff", "run_with_hooks", "generate", "patch", "weights", "/healthz",
                 "/metrics"}
    missing = {e for e in endpoints if not any(e in line for line in CURLS)}
    assert not missing


@pytest.mark.parametrize("line", CURLS, ids=[c.split()[2].split("8080")[-1][:40] for c in CURLS])
def test_readme_curl(lensd, line, tmp_path):
    host = lensd.url.split("://", 1)[1]
    args = shlex.split(line.replace("localhost:8080", host))
    proc = subprocess.run([args[0], "-f", "--max-time", "120", *args[1:]], cwd=tmp_path,
                          capture_output=True, timeout=180)
    assert proc.returncode == 0, f"{line}\nexit {proc.returncode}: {proc.stderr.decode()}"
    if "-o" in args:
        assert (tmp_path / args[args.index("-o") + 1]).stat().st_size > 0
    else:
        assert proc.stdout.strip(), line


def test_readme_notebook_example(lensd, tmp_path):
    code = readme_block("python").replace("http://localhost:8080", lensd.url)
    script = tmp_path / "notebook.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(REPO / "clients" / "python"), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first == "2 (1, 15, 50257) (1, 4, 15, 15) (1, 15, 64)", proc.stdout
    assert "Tokenized prompt" in proc.stdout
