"""The real ARENA bracket classifier on all 100,000 strings: lensd vs TL.

TL runs the model the way the course does (make_fixtures.brackets_course_model:
HookedTransformer(cfg) + load_state_dict + permanent pad-key masking hooks;
class = argmax of the logits at position 0). lensd runs the directory
make_fixtures converted with convert_tl_checkpoint.py, through
`cache --prompts-file --logits-only`.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import torch
from tl_parity import float_error
import make_fixtures
from make_fixtures import BRACKETS, brackets_course_model, brackets_course_tokens
from safetensors.numpy import load_file

BATCH = 256  # small batches keep TL's [batch, pos, head, d_head, d_model] hook_result temporary in cache
FIRST = 5000  # the exercises' subset; the README says all of it is classified correctly
TL_CACHE = "brackets_tl_pos0.npz"  # TL's logits, kept beside the fixtures they were computed for


def course_logits_pos0(strings: list[str]) -> np.ndarray:
    """TL logits at position 0, [N, 2], in batches of similar length.

    Each batch is padded to its own longest string (the course's tokenizer);
    pad keys score -1e5, so the amount of padding does not change the result.
    """
    model = brackets_course_model()
    order = sorted(range(len(strings)), key=lambda i: len(strings[i]))
    out = np.empty((len(strings), 2), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            logits = model(brackets_course_tokens([strings[i] for i in idx]))
            out[idx] = logits[:, 0].numpy()
    return out


def tl_logits_pos0(strings: list[str], fixtures, data_bytes: bytes) -> tuple[np.ndarray, str]:
    """course_logits_pos0, computed once and stored in the fixture directory.

    The stored result is keyed by the fixture generator's hash and the data
    file's hash; any change recomputes it. Returns (logits, how obtained).
    """
    key = hashlib.sha256(data_bytes).hexdigest() + ":" + make_fixtures.generator_hash()
    path = fixtures / TL_CACHE
    if path.is_file():
        stored = np.load(path)
        if str(stored["key"]) == key:
            return stored["logits"], f"stored from an earlier run ({float(stored['seconds']):.1f} s to compute)"
    started = time.perf_counter()
    logits = course_logits_pos0(strings)
    seconds = time.perf_counter() - started
    np.savez(path, logits=logits, key=np.array(key), seconds=np.array(seconds))
    return logits, f"computed in {seconds:.1f} s (CPU, {torch.get_num_threads()} threads)"


def test_brackets_all_strings(fixtures, run_lensd, parity_table, tmp_path):
    data_bytes = (BRACKETS / "brackets_data.json").read_bytes()
    data = json.loads(data_bytes)
    strings = [s for s, _ in data]
    labels = np.array([int(b) for _, b in data])

    want, tl_how = tl_logits_pos0(strings, fixtures, data_bytes)

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(strings))
    out = tmp_path / "brackets.safetensors"
    lensd_seconds = run_lensd(fixtures / "models" / "brackets", ["--prompts-file", str(prompts), "--logits-only"],
                              out)
    got_all = load_file(str(out))
    assert set(got_all) == {"tokens", "logits"}, f"--logits-only output has {sorted(got_all)}"
    np.testing.assert_array_equal(got_all["tokens"], brackets_course_tokens(strings).numpy(),
                                  err_msg="lensd's bracket tokens differ from the course tokenizer's")
    got = got_all["logits"][:, 0, :]

    problems, err, ref_max, bound = float_error(want, got)
    parity_table.add("brackets/all-100000", "logits[:, 0]", err, ref_max, bound)
    tl_pred, lensd_pred = want.argmax(-1), got.argmax(-1)
    differ = np.flatnonzero(tl_pred != lensd_pred)
    tl_acc = float((tl_pred == labels).mean())
    lensd_acc = float((lensd_pred == labels).mean())
    first_tl = float((tl_pred[:FIRST] == labels[:FIRST]).mean())
    first_lensd = float((lensd_pred[:FIRST] == labels[:FIRST]).mean())
    parity_table.notes.append(
        f"brackets: accuracy on all {len(strings)} strings TL {tl_acc:.5f}, lensd {lensd_acc:.5f}; "
        f"first {FIRST}: TL {first_tl:.4f}, lensd {first_lensd:.4f}; predictions differ on {len(differ)}; "
        f"TL logits (course way) {tl_how}; lensd {lensd_seconds:.1f} s")
    print("\n" + parity_table.notes[-1])

    assert len(differ) == 0, (f"{len(differ)} predicted classes differ, first {differ[:10].tolist()}: "
                              f"{[strings[i] for i in differ[:3]]}")
    assert not problems, f"position-0 logits: {problems}"
    assert first_lensd == first_tl == 1.0, f"first {FIRST}: lensd {first_lensd}, TL {first_tl}"
