"""lensd's command line refuses bad input with a message naming the problem
(exit status 1), and never crashes."""

from __future__ import annotations

import subprocess

import pytest

BAD = [
    (["--tokens", "1,2,x"], "--tokens \"1,2,x\""),
    (["--tokens", "1,99999"], "token id 99999"),
    (["--tokens", "1,2", "--positions", "5"], "--positions: 5 is outside"),
    (["--prompt", "hi", "--names", "blocks.0.attn.hook_patern"], "blocks.0.attn.hook_pattern"),
    (["--prompt", "hi", "--processing", "fold_everything"], "fold_everything"),
    (["--prompt", "bad \udcff utf8"], None),
    (["--prompt", "hi", "--padding-side", "middle"], "--padding-side"),
    (["--prompts-file", "/nonexistent.json"], "/nonexistent.json"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_cache_refuses_bad_input(args, message, fixtures, lensd_bin, tmp_path):
    cmd = [lensd_bin, "cache", "--model", str(fixtures / "models" / "gpt2-a"), *args,
           "--out", str(tmp_path / "out.safetensors")]
    # surrogateescape turns \udcff into the raw byte 0xff: invalid UTF-8 on the command line
    cmd = [a.encode("utf-8", "surrogateescape") for a in cmd]
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, stderr
    assert stderr.startswith("lensd cache: "), stderr
    if message:
        assert message in stderr, stderr
    else:
        assert "invalid UTF-8 at byte 4" in stderr, stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_missing_model_is_named(lensd_bin, tmp_path):
    proc = subprocess.run([lensd_bin, "info", "--model", str(tmp_path / "nothing-here")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "nothing-here" in proc.stderr and "Hugging Face cache" in proc.stderr
