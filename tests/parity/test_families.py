"""lensd cache vs TransformerLens 4.3's TransformerBridge, on the new model families.

One test per case of the family manifest (tools/make_family_fixtures.py,
$LENSD_FAMILY_FIXTURES or build/fixtures-families, rebuilt when its generator
hash is stale): Pythia, GPT-J, Llama 2/3, SmolLM, Mistral, Qwen2/3, Gemma 1/2/3,
OLMo 2, Phi, Phi-3. lensd must produce every reference tensor (the bridge's
hook points under their legacy names, tokens, logits) with the same shape and
dtype, identical integers and every float within tl_parity.float_error's
tolerance; no-processing cases also compare the logits with Hugging Face's
eager logits at the real (unmasked) positions. Extra tensors in lensd's output
are listed in the parity table's notes, not failed: the bridge's hook set
differs per family for reasons of TL's internals (e.g. Phi-3 has no
hook_rot_q), and lensd may expose more.

test_canonical_alias: one `lensd cache --names CANONICAL ...` per model with
every canonical bridge name of a legacy hook (manifest models[id].aliases);
each must be accepted and give the legacy name's reference array.

Failures name the family and the first tensor (in forward order) that differs.
"""

from __future__ import annotations

import fnmatch
import functools
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from tl_parity import float_error, fresh_manifest

import make_family_fixtures  # noqa: E402  (tools/ is on sys.path through tl_parity)

def family_fixtures_dir() -> Path:
    return make_family_fixtures.out_dir_default()


@functools.cache
def load_family_manifest() -> dict:
    """The family manifest, building the fixtures first when missing or stale."""
    return fresh_manifest(family_fixtures_dir(), make_family_fixtures, "make_family_fixtures.py",
                          "model-family fixtures")


def pytest_generate_tests(metafunc):
    if "family_case" in metafunc.fixturenames:
        cases = load_family_manifest()["cases"]
        metafunc.parametrize("family_case", cases, ids=[c["id"] for c in cases])
    if "alias_model" in metafunc.fixturenames:
        models = load_family_manifest()["models"]
        metafunc.parametrize("alias_model", sorted(models), ids=sorted(models))


@pytest.fixture(scope="session")
def family_root() -> Path:
    load_family_manifest()
    return family_fixtures_dir()


def _load(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        pytest.fail(f"{what} {path} is missing (rebuild with tools/make_family_fixtures.py)", pytrace=False)
    return load_file(str(path))


def _forward_order(names, order: list[str]) -> list[str]:
    rank = {n: i for i, n in enumerate(order)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def run_case(run_lensd, model_id: str, architecture: str, model_dir: Path, args: list[str], out: Path) -> None:
    """run_lensd, with a failure message that starts with the family."""
    try:
        run_lensd(model_dir, args, out)
    except pytest.fail.Exception as e:
        pytest.fail(f"{model_id} ({architecture}): lensd cache did not run: {e.msg}", pytrace=False)


def compare_tensor(name: str, a: np.ndarray, b: np.ndarray) -> tuple[list[str], tuple | None]:
    """(problems, (err, ref_max, bound) for float tensors)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return [f"TL {a.dtype}{list(a.shape)}, lensd {b.dtype}{list(b.shape)}"], None
    if a.dtype.kind != "f":
        if np.array_equal(a, b):
            return [], None
        diff = np.argwhere(a != b)
        first = tuple(int(i) for i in diff[0])
        return [f"{len(diff)} entries differ, first at {first}: TL {a[first]}, lensd {b[first]}"], None
    msgs, err, ref_max, bound = float_error(a, b)
    return msgs, (err, ref_max, bound)


# Hook points of the references that lensd does not produce, each with why.
# A reference hook missing from lensd's output fails the test unless it
# matches one of these (docs/API.md lists them too).
NOT_PRODUCED = [
    ("embed.hook_in", "the token ids: lensd's hook_tokens (with use_hook_tokens)"),
    ("rotary_emb.*", "the bridge's rotary module: lensd keeps cos/sin as tables, not activations"),
    ("blocks.*.attn.hook_cos", "the layer's rotary table"),
    ("blocks.*.attn.hook_sin", "the layer's rotary table"),
    ("blocks.*.ln*.hook_in", "a module input equal to resid_pre / resid_mid / the sublayer output"),
    ("blocks.*.ln*.hook_out", "a norm's output: hook_normalized after fold_ln"),
    ("ln_final.hook_in", "equal to the last hook_resid_post"),
    ("ln_final.hook_out", "the final norm's output: unembed.hook_in"),
    ("blocks.*.attn.hook_in", "attention's input: ln1's output"),
    ("blocks.*.attn.[qkv].hook_in", "the projections' input: ln1's output"),
    ("blocks.*.attn.o.hook_out", "the output projection's output before any output norm"),
    ("blocks.*.attn.hook_out", "Gemma 2/3, OLMo 2: attention's output before ln1_post"),
    ("blocks.*.attn.hook_hidden_states", "equal to hook_attn_out"),
    ("blocks.*.attn.[qk]_norm.hook_in", "equal to hook_q / hook_k (transposed)"),
    ("blocks.*.attn.[qk]_norm.hook_out", "the q/k norm's output: rotary's input"),
    ("blocks.*.attn.hook_[qk]_normed", "the q/k norm's output: rotary's input"),
    ("blocks.*.mlp.hook_in", "the MLP's input: ln2's output"),
    ("blocks.*.mlp.in.hook_in", "the MLP's input: ln2's output"),
    ("blocks.*.mlp.gate.hook_in", "the MLP's input: ln2's output"),
    ("blocks.*.mlp.out.hook_out", "the down projection's output before any output norm"),
    ("blocks.*.mlp.hook_out", "Gemma 2/3, OLMo 2: the MLP's output before ln2_post"),
]
# TL 3.9 (GPT-J's reference) copies GPT-J's one LayerNorm into ln2 and hooks it
# twice; lensd, like the bridge for Phi, has no ln2 where the MLP shares ln1.
SHARED_LN_NOT_PRODUCED = ["blocks.*.ln2.hook_scale", "blocks.*.ln2.hook_normalized"]


def not_produced(name: str, architecture: str) -> bool:
    if any(fnmatch.fnmatchcase(name, pattern) for pattern, _ in NOT_PRODUCED):
        return True
    return architecture == "GPTJForCausalLM" and any(
        fnmatch.fnmatchcase(name, p) for p in SHARED_LN_NOT_PRODUCED)


def left_pad_query_rows(tokens: np.ndarray, pad_id: int) -> np.ndarray:
    """[B, T] True at a left-padded row's pad positions: the leading pad ids
    but the last, which is the prompt's BOS when BOS is the pad id."""
    pads = np.zeros(tokens.shape, dtype=bool)
    for b, row in enumerate(tokens):
        leading = 0
        while leading < len(row) and row[leading] == pad_id:
            leading += 1
        pads[b, : max(leading - 1, 0)] = True
    return pads


def test_family(family_case, family_root, run_lensd, parity_table, tmp_path):
    case = family_case
    model = load_family_manifest()["models"][case["model_id"]]
    mode = case["id"].split("/")[1]
    out = tmp_path / "lensd.safetensors"
    run_case(run_lensd, case["model_id"], model["architecture"], family_root / case["model"], case["args"], out)
    ref = _load(family_root / case["reference"], "reference")
    got = load_file(str(out))

    problems: list[tuple[str, str]] = []
    if "tokens" in got:
        msgs, _ = compare_tensor("tokens", ref["tokens"], got["tokens"])
        if msgs:  # every other tensor would differ too; keep them out of the table
            pytest.fail(f"{case['model_id']} ({model['architecture']}): first difference at tokens: {msgs[0]}\n"
                        f"case {case['id']}; args {case['args']}\nTL tokens {ref['tokens'].tolist()}\n"
                        f"lensd tokens {got['tokens'].tolist()}", pytrace=False)
    skipped = []
    # GPT-J's reference (TL 3.9) rotates pad positions as position 0, the bridge as 1:
    # a left pad's rotated q and k are arbitrary, so they are compared at real rows only
    gptj_left = model["architecture"] == "GPTJForCausalLM" and "left" in case["args"]
    pads = left_pad_query_rows(ref["tokens"], int(ref["tokens"][0, 0])) if gptj_left else None
    for name in _forward_order(ref, model.get("hook_order", {}).get(mode, [])):
        if name not in got:
            if not_produced(name, model["architecture"]):
                skipped.append(name)
            else:
                problems.append((name, "missing in lensd output"))
            continue
        want, have = ref[name], got[name]
        if pads is not None and name.endswith((".attn.hook_rot_q", ".attn.hook_rot_k")) \
                and want.shape == have.shape:
            want, have = want[~pads], have[~pads]
        msgs, stats = compare_tensor(name, want, have)
        if stats is not None:
            parity_table.add(case["id"], name, *stats)
        problems += [(name, m) for m in msgs]
    if skipped:
        parity_table.notes.append(f"{case['id']}: {len(skipped)} bridge hook point(s) lensd does not produce "
                                  f"(test_families.NOT_PRODUCED), e.g. {', '.join(skipped[:4])}")
    extra = sorted(got.keys() - ref.keys())
    if extra:
        parity_table.notes.append(f"{case['id']}: lensd output has {len(extra)} tensor(s) the TL reference "
                                  f"lacks: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")

    if case.get("hf_reference"):
        hf = _load(family_root / case["hf_reference"], "HF reference")
        real = hf["attention_mask"].astype(bool)
        if "logits" in got and got["logits"].shape == hf["hf_logits"].shape:
            msgs, err, ref_max, bound = float_error(hf["hf_logits"][real], got["logits"][real])
            parity_table.add(case["id"], "logits vs HF eager (real positions)", err, ref_max, bound)
            problems += [("logits vs HF eager logits (real positions)", m) for m in msgs]

    if problems:
        first_name, first_msg = problems[0]
        lines = [f"{n}: {m}" for n, m in problems]
        pytest.fail(f"{case['model_id']} ({model['architecture']}): first difference at {first_name}: {first_msg}\n"
                    f"case {case['id']}; {len(problems)} problem(s); args {case['args']}\n"
                    f"reference: {case['produced_by']}\n  " + "\n  ".join(lines[:40])
                    + ("\n  ..." if len(lines) > 40 else ""), pytrace=False)


def test_canonical_alias(alias_model, family_root, run_lensd, tmp_path):
    """Every canonical bridge name of a legacy hook, given to --names, yields the legacy array."""
    manifest = load_family_manifest()
    model = manifest["models"][alias_model]
    case = next(c for c in manifest["cases"] if c["id"] == f"{alias_model}/none/single")
    ref = _load(family_root / case["reference"], "reference")
    pairs = [(canon, legacy) for legacy, canons in sorted(model.get("aliases", {}).items()) if legacy in ref
             for canon in canons]
    assert pairs, f"{alias_model}: the manifest lists no canonical aliases"
    args = list(case["args"])
    for canon, _ in pairs:
        args += ["--names", canon]
    out = tmp_path / "lensd.safetensors"
    run_case(run_lensd, alias_model, model["architecture"], family_root / case["model"], args, out)
    got = load_file(str(out))
    problems = []
    for canon, legacy in pairs:
        value = got.get(canon, got.get(legacy))
        if value is None:
            problems.append(f"--names {canon}: neither {canon} nor {legacy} in the output")
            continue
        msgs, _ = compare_tensor(legacy, ref[legacy], value)
        problems += [f"--names {canon} (legacy {legacy}): {m}" for m in msgs]
    if problems:
        pytest.fail(f"{alias_model} ({model['architecture']}): canonical names, first: {problems[0]}\n  "
                    + "\n  ".join(problems), pytrace=False)
