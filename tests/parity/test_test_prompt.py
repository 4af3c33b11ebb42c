"""`lensd run` prints exactly what transformer_lens.utils.test_prompt prints.

TransformerLens prints through rich; with stdout captured (not a terminal)
rich emits the text without markup, which is what is compared, line by line,
after TL's numbers have been recomputed from the same model: a single answer
(one and several tokens, teacher-forced) and several answers. rich would wrap
long lines at 80 columns when not on a terminal; a wide COLUMNS turns that off.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess

import pytest
import tl_native as tn

CASES = [
    ("Why did the elephant cross the", ["road"]),
    ("The quick brown fox", ["jumps over the lazy dog"]),
    ("When Mary and John went to the store, John gave a drink to", ["Mary", "John", " the"]),
]


@pytest.fixture(scope="module")
def gpt2_a(fixtures):
    model_dir = fixtures / "models" / "gpt2-a"
    return model_dir, tn.build_hf_tl(model_dir, tn.parse_processing("default"))


@pytest.mark.parametrize("prompt,answers", CASES, ids=["one-token", "many-tokens", "three-answers"])
def test_run_prints_test_prompt(gpt2_a, lensd_bin, prompt, answers):
    from transformer_lens import utils

    model_dir, model = gpt2_a
    os.environ["COLUMNS"] = "1000"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        utils.test_prompt(prompt, answers if len(answers) > 1 else answers[0], model, top_k=5)
    args = [lensd_bin, "run", "--model", str(model_dir), "--prompt", prompt, "--top-k", "5"]
    for answer in answers:
        args += ["--answer", answer]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    want = [line.rstrip() for line in printed.getvalue().splitlines() if line.strip()]
    got = [line.rstrip() for line in proc.stdout.splitlines() if line.strip()]
    assert got == want, "\n".join(f"TL:    {w}\nlensd: {g}" for w, g in zip(want, got) if w != g) \
        or f"TL printed {len(want)} lines, lensd {len(got)}"
