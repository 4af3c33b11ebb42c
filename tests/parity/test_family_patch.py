"""POST /patch and /run_with_hooks on the new model families against
TransformerLens 4.3's TransformerBridge, through the real daemon.

Models (tools/make_family_fixtures.py, $LENSD_FAMILY_FIXTURES): llama2
(grouped-query attention 4/2, RMSNorm, gated MLP), gemma2 (attention and
final soft caps, sliding window 4 on layer 0 — shorter than the T=6 prompts —
sandwich norms, GQA 4/2), pythia (parallel attention+MLP, partial rotary
0.25, MHA) and gemma3 (per-head q/k RMSNorm, sliding/global layers with their
own rope bases, GQA 4/2). Token-id inputs, B=2 prompts of T=6 tokens, so
tokenization takes no part. lensd serves them with its default processing;
the bridge is booted with `boot_transformers(dir, dtype=float32)` and
`enable_compatibility_mode()` (processed, default flags). TL 4.3 cannot share
a process with the venv's TL 3.9: everything on the bridge side runs once, in
a child process (this file run as a script, build/tl4 first on PYTHONPATH,
one torch thread), which writes its results as .npz files.

test_patch_matches_the_bridge: every sweep of test_patch.py's SWEEPS on every
model (its LARGE ones, attn_head_pattern_dest_src_pos and
attn_head_by_pos_every, on gemma2 only) against
`transformer_lens.patching.get_act_patch_<sweep>(bridge, corrupted,
clean_cache, metric)`, with test_patch.py's logit-difference metric at the
last position, within tl_parity.float_error's tolerance. On the grouped-query
models TL 4.3's k/v sweeps run (the crash of TransformerLens issue #980 is
gone, so no explicit reference is needed): they sweep the n_key_value_heads
key/value heads ([..., K]), and the stacked _every sweeps zero-pad their k
and v parts to n_heads. lensd's head axis counts query heads (docs/API.md: a
k/v patch at head h patches key/value head h // (H / K)), so TL's k/v values
are compared after repeating each key/value head's value for the H / K query
heads that read it (and TL's padding is checked to be zero). lensd's default
path (patched runs start at their layer and, causally, at their position)
must equal its "full_recompute": true path within 1e-5 of the scale.

test_patch_refuses_resid_mid_of_parallel_blocks: Pythia has no
hook_resid_mid (attention and MLP both read resid_pre); TL's resid_mid sweep
raises a KeyError on the bridge, lensd answers 400 naming the hook.
test_patch_refusal_of_resid_mid_names_the_reason: the message says why
(parallel attention and MLP), not "attention-only".

test_run_with_hooks_matches_the_bridge: interventions (zero hook_z of two
heads at two positions, scale hook_v of one key/value head, set
hook_rot_k at one position to a vector — Pythia's bridge has no rotary hooks,
so there it sets hook_k —, patch hook_resid_pre at two positions from
another run, and all four at once), sent with legacy names and again with
the bridge's canonical ones (blocks.0.attn.o.hook_in, blocks.1.attn.v.hook_out,
blocks.1.hook_in, ...; hook_rot_k has none), against the bridge's
run_with_hooks with the same interventions as fwd_hooks on the legacy names:
logits and ln_final.hook_normalized.

test_path_patching_matches_the_ioi_method: path_patch_heads with
receiver_input "q" on the grouped-query models (and "k", "v" on Pythia,
where the key/value heads are the query heads) against
tools/tl_path_patching.py run on the bridge; test_path_patching_refuses_kv_on_gqa:
"k" and "v" on llama2 are refused, saying why; test_path_patching_kv_on_gqa_is_422:
with the 422 docs/API.md promises.

Runtime: about 25 s on 2 cores (the bridge child ~15 s of it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_patch import LARGE, SWEEPS  # every sweep; the large ones (one forward per index in TL)
from tl_parity import REPO, daemon_post, daemon_request, float_error, serve_models

B, T = 2, 6
METRIC_POS = T - 1
# token ids drawn from [LOW, HIGH): below every vocabulary here (Gemma's 3264) and above the
# BOS, EOS and pad ids of these four (all < 3), so that no side can take a token for padding
LOW, HIGH = 10, 3000
MODELS = ["llama2", "gemma2", "pythia", "gemma3"]
GQA_MODELS = ["llama2", "gemma2", "gemma3"]
LARGE_MODEL = "gemma2"

# Pythia's parallel blocks have no hook_resid_mid (on either side)
LACKS = {"pythia": {"resid_mid"}}
CASES = [(m, s) for m in MODELS for s in SWEEPS
         if (s not in LARGE or m == LARGE_MODEL) and s not in LACKS.get(m, set())]
KV_SWEEPS = {"attn_head_k_by_pos", "attn_head_v_by_pos", "attn_head_k_all_pos", "attn_head_v_all_pos"}
HEAD_EVERY = {"attn_head_all_pos_every", "attn_head_by_pos_every"}  # components z, q, k, v, pattern

# Interventions: each hook under its legacy name, with the bridge's canonical name of the
# same hook point where it has one ("alias"). "vector": a fixed vector over the last axis.
SCENARIOS = {
    "zero-z-heads": [{"name": "blocks.0.attn.hook_z", "alias": "blocks.0.attn.o.hook_in", "op": "zero",
                      "heads": [1, 3], "positions": [2, 5]}],
    "scale-v-kv-head": [{"name": "blocks.1.attn.hook_v", "alias": "blocks.1.attn.v.hook_out", "op": "scale",
                         "factor": 2.5, "heads": [1]}],
    "set-rot-k-position": [{"name": "blocks.0.attn.hook_rot_k", "op": "set", "value": "vector",
                            "positions": [3]}],
    "patch-resid-pre": [{"name": "blocks.1.hook_resid_pre", "alias": "blocks.1.hook_in", "op": "patch",
                         "positions": [2, 4]}],
}
SCENARIOS["all-four"] = [h for s in list(SCENARIOS.values()) for h in s]
# the bridge gives Pythia (GPT-NeoX) no hook_rot_q / hook_rot_k: set hook_k there
PYTHIA_ROT_K = {"name": "blocks.0.attn.hook_k", "alias": "blocks.0.attn.k.hook_out", "op": "set",
                "value": "vector", "positions": [3]}


def model_hooks(model: str, scenario: str) -> list[dict]:
    hooks = SCENARIOS[scenario]
    if model == "pythia":
        hooks = [PYTHIA_ROT_K if h["name"].endswith("hook_rot_k") else h for h in hooks]
    return [dict(h) for h in hooks]


# each scenario with legacy names, and again with canonical ones where it has any
HOOK_CASES = [(m, s, naming) for m in MODELS for s in SCENARIOS for naming in ("legacy", "canonical")
              if naming == "legacy" or any("alias" in h for h in model_hooks(m, s))]

PATHS = [  # (model, receivers, receiver_input)
    ("llama2", [[1, 0], [1, 3]], "q"),
    ("gemma2", [[1, 2]], "q"),
    ("gemma3", [[2, 1], [1, 0]], "q"),
    ("pythia", [[1, 1], [1, 2]], "k"),
    ("pythia", [[1, 3]], "v"),
]


def inputs(model: str) -> dict:
    """Token ids of the model's runs: clean, corrupted (clean with positions 2 and 4
    changed), answers [B, 2] (answer, wrong), the patch_from source, a d_head vector."""
    rng = np.random.default_rng(11 + MODELS.index(model))
    clean = rng.integers(LOW, HIGH, size=(B, T))
    corrupted = clean.copy()
    corrupted[:, 2] = rng.integers(LOW, HIGH, size=B)
    corrupted[:, 4] = rng.integers(LOW, HIGH, size=B)
    return {"clean": clean.tolist(), "corrupted": corrupted.tolist(),
            "answers": rng.integers(LOW, HIGH, size=(B, 2)).tolist(),
            "source": rng.integers(LOW, HIGH, size=(B, T)).tolist(),
            "vector_seed": 100 + MODELS.index(model)}


def vector(data: dict, size: int) -> list[float]:
    return np.random.default_rng(data["vector_seed"]).standard_normal(size).astype(np.float32).tolist()


# ---- the bridge side (a child process: TL 4.3 first on PYTHONPATH) ---------


def bridge_child(spec_path: str, out_dir: str) -> None:
    """Runs every TL 4.3 reference of the spec; writes out_dir/<model>.npz and errors.json."""
    import logging
    import warnings
    from importlib.metadata import version

    import torch
    import transformer_lens

    assert version("transformer-lens") == "4.3.0", (version("transformer-lens"), transformer_lens.__file__)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    import tl_path_patching  # tools/ (on sys.path through tl_parity)

    torch.set_grad_enabled(False)
    torch.set_num_threads(1)  # tiny models: one thread is an order of magnitude faster here
    spec = json.loads(Path(spec_path).read_text())
    out = Path(out_dir)
    errors: dict[str, dict[str, str]] = {}
    for name, job in spec["models"].items():
        bridge = TransformerBridge.boot_transformers(job["dir"], device="cpu", dtype=torch.float32)
        bridge.enable_compatibility_mode(disable_warnings=True)
        cfg = bridge.cfg
        data = job["data"]
        clean, corrupted = torch.tensor(data["clean"]), torch.tensor(data["corrupted"])
        source = torch.tensor(data["source"])
        answers = torch.tensor(data["answers"])
        rows = torch.arange(clean.shape[0])

        def metric(logits):
            return (logits[rows, METRIC_POS, answers[:, 0]] - logits[rows, METRIC_POS, answers[:, 1]]).mean()

        _, clean_cache = bridge.run_with_cache(clean)
        results = {
            "n_layers": np.array(cfg.n_layers), "n_heads": np.array(cfg.n_heads),
            "n_kv_heads": np.array(cfg.n_key_value_heads or cfg.n_heads),
            "clean_metric": np.array(float(metric(bridge(clean)))),
            "corrupted_metric": np.array(float(metric(bridge(corrupted)))),
        }
        errors[name] = {}
        for sweep in job["sweeps"]:
            try:
                results[f"sweep/{sweep}"] = getattr(patching, f"get_act_patch_{sweep}")(
                    bridge, corrupted, clean_cache, metric).numpy()
            except Exception as e:  # noqa: BLE001 (recorded; the test decides)
                errors[name][sweep] = f"{type(e).__name__}: {e}"

        _, source_cache = bridge.run_with_cache(source)
        for scenario, hooks in job["hooks"].items():
            fwd_hooks = [(h["name"], intervention(h, source_cache)) for h in hooks]
            captured = {}
            fwd_hooks.append(("ln_final.hook_normalized", lambda act, hook: captured.__setitem__("n", act.clone())))
            logits = bridge.run_with_hooks(clean, fwd_hooks=fwd_hooks)
            results[f"hooks/{scenario}/logits"] = logits.numpy()
            results[f"hooks/{scenario}/ln_final.hook_normalized"] = captured["n"].numpy()
        results["plain_logits"] = bridge(clean).numpy()

        for i, (receivers, receiver_input) in enumerate(job["paths"]):
            results[f"path/{i}"] = tl_path_patching.path_patch_heads(
                bridge, [tuple(r) for r in receivers], receiver_input, metric, clean, corrupted)
        np.savez(out / f"{name}.npz", **results)
        del bridge
    (out / "errors.json").write_text(json.dumps(errors, indent=1))


def intervention(h: dict, source_cache):
    """A hook function doing what lensd's op h does (positions on axis 1, heads on axis 2:
    every hook the scenarios use is [batch, pos, head, ...] or [batch, pos, d_model])."""
    import torch

    name = h["name"]

    def selected(act, axis, indices):
        if indices is None:
            return torch.ones(act.shape, dtype=torch.bool)
        m = torch.zeros(act.shape[axis], dtype=torch.bool)
        m[indices] = True
        shape = [1] * act.ndim
        shape[axis] = -1
        return m.view(shape).expand(act.shape)

    def hook(act, hook):
        index = selected(act, 1, h.get("positions")) & selected(act, 2, h.get("heads"))
        if h["op"] == "zero":
            return torch.where(index, torch.zeros_like(act), act)
        if h["op"] == "scale":
            return torch.where(index, act * h["factor"], act)
        if h["op"] == "set":
            return torch.where(index, torch.tensor(h["value"], dtype=act.dtype).expand_as(act), act)
        if h["op"] == "patch":
            return torch.where(index, source_cache[name].expand_as(act), act)
        raise ValueError(h["op"])

    return hook


# ---- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def family_models() -> dict[str, Path]:
    from test_families import family_fixtures_dir, load_family_manifest

    manifest = load_family_manifest()  # builds the fixtures when missing or stale
    missing = [m for m in MODELS if m not in manifest["models"]]
    assert not missing, f"the family fixtures lack {missing}"
    return {m: family_fixtures_dir() / "models" / m for m in MODELS}


@pytest.fixture(scope="module")
def daemon(lensd_bin, family_models):
    """URL of a `lensd serve` with the four family models."""
    yield from serve_models(lensd_bin, family_models)


def resolved_hooks(model: str, scenario: str, data: dict, naming: str = "legacy") -> list[dict]:
    """The scenario's interventions for lensd (naming: legacy or canonical names)."""
    import make_family_fixtures

    config = json.loads((make_family_fixtures.out_dir_default() / "models" / model / "config.json").read_text())
    size = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    hooks = []
    for h in model_hooks(model, scenario):
        alias = h.pop("alias", None)
        if naming == "canonical" and alias:
            h["name"] = alias
        if h.get("value") == "vector":
            h["value"] = vector(data, size)
        hooks.append(h)
    return hooks


@pytest.fixture(scope="module")
def bridge(family_models, tmp_path_factory):
    """{model: {key: array}} of the bridge's results, and {model: {sweep: error}}."""
    import make_family_fixtures

    work = tmp_path_factory.mktemp("bridge")
    spec = {"models": {}}
    for m in MODELS:
        data = inputs(m)
        spec["models"][m] = {
            "dir": str(family_models[m]), "data": data,
            "sweeps": [s for mm, s in CASES if mm == m] + sorted(LACKS.get(m, ())),
            "hooks": {s: resolved_hooks(m, s, data) for s in SCENARIOS},
            "paths": [[r, i] for mm, r, i in PATHS if mm == m],
        }
    (work / "spec.json").write_text(json.dumps(spec))
    tl4 = make_family_fixtures.tl4_path()
    path = [str(tl4)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(path))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--bridge-child",
                           str(work / "spec.json"), str(work)], env=env, capture_output=True, text=True,
                          timeout=900, cwd=REPO)
    if proc.returncode != 0:
        pytest.fail(f"the TL 4.3 bridge child failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}",
                    pytrace=False)
    results = {m: dict(np.load(work / f"{m}.npz")) for m in MODELS}
    return results, json.loads((work / "errors.json").read_text())


def lensd_patch(daemon, model, sweep, data, **extra):
    return daemon_post(daemon, f"/v1/models/{model}/patch", {
        "sweep": sweep, "clean": {"tokens": data["clean"]}, "corrupted": {"tokens": data["corrupted"]},
        "metric": {"type": "logit_diff", "answers": data["answers"], "position": METRIC_POS}, **extra})


def values(answer) -> np.ndarray:
    v = answer["values"]
    return np.array(v["data"], dtype=np.float32).reshape(v["shape"])


def expand_kv(want: np.ndarray, sweep: str, n_heads: int, n_kv: int) -> np.ndarray:
    """TL 4.3's k/v values on lensd's query-head axis: key/value head g's value for query
    heads g * group ... (g + 1) * group - 1 (the head axis is the last one throughout)."""
    group = n_heads // n_kv
    if group == 1:
        return want
    if sweep in KV_SWEEPS:
        assert want.shape[-1] == n_kv, f"TL's {sweep} has {want.shape[-1]} heads, expected {n_kv}"
        return np.repeat(want, group, axis=-1)
    if sweep in HEAD_EVERY:
        want = want.copy()
        for c in (2, 3):  # k, v: zero-padded from n_kv to n_heads by TL
            assert not want[c, ..., n_kv:].any(), f"TL's {sweep} padding of component {c} is not zero"
            want[c] = np.repeat(want[c, ..., :n_kv], group, axis=-1)
    return want


def patched_runs(sweep: str, values: np.ndarray, n_heads: int, n_kv: int) -> int:
    """The runs lensd makes (TL's forward passes): one per value, except that a
    k or v patch runs once per key/value head, not per query head sharing it."""
    components = {"attn_head_all_pos_every": ["z", "q", "k", "v", "pattern"],
                  "attn_head_by_pos_every": ["z", "q", "k", "v", "pattern"],
                  "block_every": ["resid_pre", "attn_out", "mlp_out"]}.get(sweep)
    shared = lambda name: name in ("k", "v") and n_kv < n_heads  # noqa: E731
    if components is None:
        kind = sweep.split("_")[2] if sweep.startswith("attn_head_") else sweep
        return values.size // (n_heads // n_kv) if shared(kind) else values.size
    per = values.size // len(components)
    return sum(per // (n_heads // n_kv) if shared(c) else per for c in components)


# ---- tests -----------------------------------------------------------------


@pytest.mark.parametrize(("model", "sweep"), CASES)
def test_patch_matches_the_bridge(daemon, bridge, parity_table, model, sweep):
    results, errors = bridge
    ref = results[model]
    assert sweep not in errors[model], f"TL 4.3's get_act_patch_{sweep} failed on {model}: {errors[model][sweep]}"
    n_heads, n_kv = int(ref["n_heads"]), int(ref["n_kv_heads"])
    assert (n_kv < n_heads) == (model in GQA_MODELS), f"{model}: {n_kv} key/value heads of {n_heads}"
    want = expand_kv(ref[f"sweep/{sweep}"], sweep, n_heads, n_kv)
    data = inputs(model)
    got = lensd_patch(daemon, model, sweep, data)
    have = values(got)
    assert list(have.shape) == list(want.shape), f"{model} {sweep}: lensd {have.shape}, TL {want.shape}"
    assert got["clean_metric"] == pytest.approx(float(ref["clean_metric"]), rel=1e-4, abs=1e-4)
    assert got["corrupted_metric"] == pytest.approx(float(ref["corrupted_metric"]), rel=1e-4, abs=1e-4)
    assert np.ptp(want) > 1e-3, f"{model} {sweep}: a reference that does not vary cannot tell indices apart"
    problems, err, ref_max, bound = float_error(want, have)
    parity_table.add(f"{model}/family-patch", f"patch {sweep}", err, ref_max, bound)
    assert not problems, f"{model} {sweep}: " + "; ".join(problems)
    assert got["runs"] == patched_runs(sweep, have, n_heads, n_kv)

    full = values(lensd_patch(daemon, model, sweep, data, full_recompute=True))
    scale = max(1.0, float(np.abs(want).max()))
    diff = float(np.abs(full - have).max())
    assert diff <= 1e-5 * scale, f"{model} {sweep}: default path != full_recompute by {diff:.3g}"


def test_patch_refuses_resid_mid_of_parallel_blocks(daemon, bridge):
    _, errors = bridge
    assert errors["pythia"].get("resid_mid", "").startswith("KeyError"), \
        f"TL 4.3's resid_mid sweep on Pythia's bridge: {errors['pythia'].get('resid_mid', 'no error')}"
    data = inputs("pythia")
    status, answer = daemon_request(daemon, "/v1/models/pythia/patch", {
        "sweep": "resid_mid", "clean": {"tokens": data["clean"]}, "corrupted": {"tokens": data["corrupted"]},
        "metric": {"answers": data["answers"]}})
    assert status == 400, (status, answer)
    assert "hook_resid_mid" in answer["error"]["message"], answer


def test_patch_refusal_of_resid_mid_names_the_reason(daemon):
    data = inputs("pythia")
    status, answer = daemon_request(daemon, "/v1/models/pythia/patch", {
        "sweep": "resid_mid", "clean": {"tokens": data["clean"]}, "corrupted": {"tokens": data["corrupted"]},
        "metric": {"answers": data["answers"]}})
    message = answer["error"]["message"]
    assert "attention-only" not in message and "parallel" in message, message


@pytest.mark.parametrize(("model", "scenario", "naming"), HOOK_CASES)
def test_run_with_hooks_matches_the_bridge(daemon, bridge, parity_table, model, scenario, naming):
    results, _ = bridge
    ref = results[model]
    data = inputs(model)
    hooks = resolved_hooks(model, scenario, data, naming)
    if naming == "canonical":  # every hook point that has a canonical name goes by it
        assert [h["name"] for h in hooks] == [h.get("alias", h["name"]) for h in model_hooks(model, scenario)]
    got = daemon_post(daemon, f"/v1/models/{model}/run_with_hooks", {
        "tokens": data["clean"], "hooks": hooks, "names": ["ln_final.hook_normalized"],
        "patch_from": {"tokens": data["source"]}})
    problems = []
    for name in ("logits", "ln_final.hook_normalized"):
        want = ref[f"hooks/{scenario}/{name}"]
        have = np.array(got[name]["data"], dtype=np.float32)
        if have.shape != want.shape:
            problems.append(f"{name}: lensd {have.shape}, TL {want.shape}")
            continue
        msgs, err, ref_max, bound = float_error(want, have)
        parity_table.add(f"{model}/family-hooks", f"run_with_hooks {name}", err, ref_max, bound)
        problems += [f"{name}: {p}" for p in msgs]
    assert not problems, f"{model} {scenario} ({naming} names): " + "; ".join(problems)
    # the interventions changed something, on both sides
    plain = ref["plain_logits"]
    assert not np.allclose(plain, ref[f"hooks/{scenario}/logits"], atol=1e-3), "TL: the logits did not change"
    assert not np.allclose(plain, np.array(got["logits"]["data"]), atol=1e-3), "lensd: the logits did not change"


@pytest.mark.parametrize(("model", "receivers", "receiver_input"), PATHS,
                         ids=[f"{m}-{i}" for m, _, i in PATHS])
def test_path_patching_matches_the_ioi_method(daemon, bridge, parity_table, model, receivers, receiver_input):
    results, _ = bridge
    index = [p for p in PATHS if p[0] == model].index((model, receivers, receiver_input))
    want = results[model][f"path/{index}"]
    data = inputs(model)
    got = lensd_patch(daemon, model, "path_patch_heads", data, receivers=receivers, receiver_input=receiver_input)
    have = values(got)
    assert list(have.shape) == list(want.shape)
    assert np.ptp(want) > 1e-3, "a reference that does not vary by sender cannot tell paths apart"
    problems, err, ref_max, bound = float_error(want, have)
    parity_table.add(f"{model}/family-patch", f"patch path_patch_heads {receiver_input}", err, ref_max, bound)
    assert not problems, f"{model} {receivers} {receiver_input}: " + "; ".join(problems)
    full = values(lensd_patch(daemon, model, "path_patch_heads", data, receivers=receivers,
                              receiver_input=receiver_input, full_recompute=True))
    assert np.abs(full - have).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))


def path_kv_request(daemon, receiver_input):
    data = inputs("llama2")
    return daemon_request(daemon, "/v1/models/llama2/patch", {
        "sweep": "path_patch_heads", "receivers": [[1, 0]], "receiver_input": receiver_input,
        "clean": {"tokens": data["clean"]}, "corrupted": {"tokens": data["corrupted"]},
        "metric": {"answers": data["answers"], "position": METRIC_POS}})


@pytest.mark.parametrize("receiver_input", ["k", "v"])
def test_path_patching_refuses_kv_on_gqa(daemon, receiver_input):
    """A receiver's k or v input is shared by the query heads of its group: lensd refuses,
    naming the head counts and pointing to q."""
    status, answer = path_kv_request(daemon, receiver_input)
    assert status in (400, 422), (status, answer)
    message = answer["error"]["message"]
    assert "key/value heads" in message and "2 of 4" in message and "q" in message, message


@pytest.mark.parametrize("receiver_input", ["k", "v"])
def test_path_patching_kv_on_gqa_is_422(daemon, receiver_input):
    status, answer = path_kv_request(daemon, receiver_input)
    assert status == 422, (status, answer)


if __name__ == "__main__" and sys.argv[1:2] == ["--bridge-child"]:
    bridge_child(sys.argv[2], sys.argv[3])
