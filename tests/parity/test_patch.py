"""POST /patch against transformer_lens.patching: every sweep, every model
the daemon serves here (GPT-2, GPT-Neo with local attention, the gelu and
the bidirectional attention-only native models, the ARENA bracket
classifier with its pad masking).

TransformerLens runs get_act_patch_<sweep>(model, corrupted_tokens,
clean_cache, metric) — one forward per index — with the metric

    metric(logits) = mean_b logits[b, pos_b, answer_b] - logits[b, pos_b, wrong_b]

and lensd must give the same tensor (shape, axis order, values) within the
parity tolerance (tl_parity.float_error: 1e-4 relative to the tensor's
scale). lensd's two paths — each patched run from its layer's corrupted
residual stream (the default) and full recomputation from the embeddings —
must agree with each other within 1e-5 of the scale on every sweep: they
run the same arithmetic on batches of different sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
from tl_parity import DAEMON_MODELS, daemon_post, float_error, tl_model

SWEEPS = [
    "resid_pre", "resid_mid", "attn_out", "mlp_out",
    "attn_head_out_by_pos", "attn_head_q_by_pos", "attn_head_k_by_pos", "attn_head_v_by_pos",
    "attn_head_pattern_by_pos", "attn_head_pattern_dest_src_pos",
    "attn_head_out_all_pos", "attn_head_q_all_pos", "attn_head_k_all_pos", "attn_head_v_all_pos",
    "attn_head_pattern_all_pos",
    "block_every", "attn_head_all_pos_every", "attn_head_by_pos_every",
]
NEEDS_MLP = {"resid_mid", "mlp_out", "block_every"}
MODELS = DAEMON_MODELS + ["brackets"]
# every sweep on every model, except those of MLP hooks on the attention-only model (TL has
# no such hooks there; test_patch_refuses_what_the_model_lacks checks lensd's answer)
CASES = [(m, s) for m in MODELS for s in SWEEPS if not (m == "native-attnonly" and s in NEEDS_MLP)]
# TransformerLens takes a forward per index: the largest sweeps run on two models only
LARGE = {"attn_head_pattern_dest_src_pos", "attn_head_by_pos_every"}
CASES = [(m, s) for m, s in CASES if s not in LARGE or m in ("gpt2-a", "brackets")]
B, T = 2, 6


def inputs(model, name: str):
    """(clean, corrupted, answers [B, 2], metric positions [B]) for the model."""
    rng = np.random.default_rng(11)
    cfg = model.cfg
    if name == "brackets":  # [start] brackets [end]: the class is read at position 0
        clean = np.array([[0, 3, 3, 4, 4, 2], [0, 3, 4, 3, 4, 2]])
        corrupted = np.array([[0, 4, 3, 4, 3, 2], [0, 3, 3, 3, 4, 2]])
        return clean, corrupted, np.array([[1, 0], [1, 0]]), np.zeros(B, dtype=int)
    clean = rng.integers(0, cfg.d_vocab, size=(B, T))
    corrupted = clean.copy()
    corrupted[:, 2] = rng.integers(0, cfg.d_vocab, size=B)
    corrupted[:, 4] = rng.integers(0, cfg.d_vocab, size=B)
    return clean, corrupted, rng.integers(0, cfg.d_vocab_out, size=(B, 2)), np.full(B, T - 1)


@pytest.fixture(scope="module")
def references(fixtures):
    """{model: (TL model, inputs, clean cache, metric)}, built once."""
    import torch

    built = {}

    def get(name):
        if name not in built:
            model = tl_model(fixtures, name)
            clean, corrupted, answers, positions = inputs(model, name)
            with torch.no_grad():
                _, cache = model.run_with_cache(torch.tensor(clean))
            rows = torch.arange(B)

            def metric(logits):
                pos = torch.tensor(positions)
                return (logits[rows, pos, answers[:, 0]] - logits[rows, pos, answers[:, 1]]).mean()

            built[name] = (model, (clean, corrupted, answers, positions), cache, metric)
        return built[name]

    return get


def lensd_patch(daemon, name, sweep, data, **extra):
    clean, corrupted, answers, positions = data
    metric = {"type": "logit_diff", "answers": answers.tolist(), "position": int(positions[0])}
    metric.update(extra.pop("metric", {}))
    return daemon_post(daemon, f"/v1/models/{name}/patch", {
        "sweep": sweep, "clean": {"tokens": clean.tolist()}, "corrupted": {"tokens": corrupted.tolist()},
        "metric": metric, **extra})


def values(answer) -> np.ndarray:
    v = answer["values"]
    return np.array(v["data"], dtype=np.float32).reshape(v["shape"])


@pytest.mark.parametrize(("name", "sweep"), CASES)
def test_patch_matches_transformer_lens(daemon, references, parity_table, name, sweep):
    import torch
    from transformer_lens import patching

    model, data, cache, metric = references(name)
    with torch.no_grad():
        want = getattr(patching, f"get_act_patch_{sweep}")(
            model, torch.tensor(data[1]), cache, metric).numpy()
    got = lensd_patch(daemon, name, sweep, data)
    assert list(got["values"]["shape"]) == list(want.shape)
    problems, err, ref_max, bound = float_error(want, values(got))
    parity_table.add(f"{name}/patch", f"patch {sweep}", err, ref_max, bound)
    assert not problems, f"{name} {sweep}: " + "; ".join(problems)
    assert got["runs"] == want.size

    full = lensd_patch(daemon, name, sweep, data, full_recompute=True)
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(values(full) - values(got)).max() <= 1e-5 * scale, f"{name} {sweep}: prefix reuse != full"


@pytest.mark.parametrize("name", ["gpt2-a", "brackets"])
def test_normalized_metric_and_axes(daemon, fixtures, references, name):
    import tl_native as tn
    import torch
    from transformer_lens import patching

    model, data, cache, metric = references(name)
    with torch.no_grad():
        raw = patching.get_act_patch_resid_pre(model, torch.tensor(data[1]), cache, metric).numpy()
        clean_metric = metric(model(torch.tensor(data[0]))).item()
        corrupted_metric = metric(model(torch.tensor(data[1]))).item()
    got = lensd_patch(daemon, name, "resid_pre", data, metric={"normalize": True})
    assert got["clean_metric"] == pytest.approx(clean_metric, rel=1e-4, abs=1e-4)
    assert got["corrupted_metric"] == pytest.approx(corrupted_metric, rel=1e-4, abs=1e-4)
    want = (raw - corrupted_metric) / (clean_metric - corrupted_metric)
    problems, *_ = float_error(want, values(got))
    assert not problems, "; ".join(problems)
    assert [a["name"] for a in got["axes"]] == ["layer", "pos"]
    assert got["axes"][0]["labels"] == list(range(model.cfg.n_layers))
    if model.tokenizer is not None:
        assert got["axes"][1]["labels"] == model.to_str_tokens(torch.tensor(data[0][0]))
    else:
        vocabulary = tn.load_native(fixtures / "models" / name).vocabulary()
        assert got["axes"][1]["labels"] == [vocabulary[i] for i in data[0][0]]


def test_patch_refuses_what_the_model_lacks(daemon):
    import json
    import urllib.error
    import urllib.request

    body = {"sweep": "mlp_out", "clean": {"tokens": [[1, 2, 3]]}, "corrupted": {"tokens": [[1, 2, 4]]},
            "metric": {"answers": [1, 2]}}
    request = urllib.request.Request(f"{daemon}/v1/models/native-attnonly/patch", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=60)
    assert e.value.code in (400, 422)
    assert "attention-only" in e.value.read().decode()


@pytest.mark.parametrize(("name", "receivers", "receiver_input"), [
    ("gpt2-a", [[1, 0], [1, 3]], "q"),
    ("neo", [[2, 1], [3, 0]], "v"),
    ("native-gelu", [[1, 2]], "k"),
    ("brackets", [[2, 0], [2, 1]], "q"),
])
def test_path_patching_matches_the_ioi_method(daemon, references, parity_table, name, receivers,
                                              receiver_input):
    import torch

    model, data, _, metric = references(name)
    from tl_path_patching import path_patch_heads

    with torch.no_grad():
        want = path_patch_heads(model, [tuple(r) for r in receivers], receiver_input, metric,
                                torch.tensor(data[0]), torch.tensor(data[1]))
    got = lensd_patch(daemon, name, "path_patch_heads", data, receivers=receivers,
                      receiver_input=receiver_input)
    assert list(got["values"]["shape"]) == list(want.shape)
    assert np.ptp(want) > 1e-3, "a reference that does not vary by sender cannot tell paths apart"
    problems, err, ref_max, bound = float_error(want, values(got))
    parity_table.add(f"{name}/patch", f"patch path_patch_heads {receiver_input}", err, ref_max, bound)
    assert not problems, f"{name}: " + "; ".join(problems)
    full = lensd_patch(daemon, name, "path_patch_heads", data, receivers=receivers,
                       receiver_input=receiver_input, full_recompute=True)
    assert np.abs(values(full) - values(got)).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))


REUSE_SWEEPS = ["resid_pre", "mlp_out", "attn_head_v_by_pos", "attn_head_pattern_by_pos",
                "attn_head_pattern_dest_src_pos", "attn_head_q_all_pos", "block_every",
                "attn_head_by_pos_every"]
# clean and corrupted differ in one name; the two prompts have different lengths
PADDED_CLEAN = ["When Mary and John went to the store, John gave a drink to", "Then John met Mary"]
PADDED_CORRUPTED = ["When Mary and John went to the store, Mary gave a drink to", "Then Mary met Mary"]


def expected_block_positions(got, n_layers: int, T: int, metric_positions, unchanged) -> int:
    """The work of the sweep's patched runs: for each run (an index of the values) but the
    unchanged ones, each prompt computes its positions from min(patched position, metric
    position) on (from 0 for sweeps without a position axis), through the blocks from the
    patched layer on."""
    names = [a["name"] for a in got["axes"]]
    shape = got["values"]["shape"]
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    layer = grids[names.index("layer")]
    pos_axis = next((names.index(a) for a in ("pos", "dest_pos") if a in names), None)
    total = 0
    for m in metric_positions:
        first = np.minimum(grids[pos_axis], m) if pos_axis is not None else np.zeros_like(layer)
        total += int(((T - first) * (n_layers - layer))[~unchanged].sum())
    return total


COMPONENT_HOOKS = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid",
                   "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "z": "attn.hook_z",
                   "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v",
                   "pattern": "attn.hook_pattern"}


def unchanged_runs(daemon, name: str, got, clean: dict, corrupted: dict) -> np.ndarray:
    """Which of the sweep's runs patch in, for every prompt, bit for bit what the corrupted
    run already has there (from the daemon's own caches of both runs): [values' shape]."""
    names = [a["name"] for a in got["axes"]]
    components = got["components"]
    hooks = sorted({f"blocks.{layer}.{COMPONENT_HOOKS[c]}"
                    for c in components for layer in got["axes"][names.index("layer")]["labels"]})
    caches = [daemon_post(daemon, f"/v1/models/{name}/run_with_cache",
                          {**batch, "names": hooks, "logits": False}) for batch in (clean, corrupted)]
    acts = [{h: np.array(c[h]["data"], dtype=np.float32).reshape(c[h]["shape"]).view(np.uint32)
             for h in hooks} for c in caches]
    unchanged = np.zeros(got["values"]["shape"], dtype=bool)
    for index in np.ndindex(*unchanged.shape):
        at = dict(zip(names, index))
        component = components[at.get("component", 0)]
        hook = f"blocks.{at['layer']}.{COMPONENT_HOOKS[component]}"
        pos = at.get("pos", at.get("dest_pos"))
        parts = []
        for act in (a[hook] for a in acts):
            if component == "pattern":
                part = act[:, at["head"]]
                part = part if pos is None else part[:, pos]
                part = part if "src_pos" not in at else part[:, at["src_pos"]]
            elif component in ("z", "q", "k", "v"):
                heads = {a["name"]: len(a["labels"]) for a in got["axes"]}["head"]
                kv_head = at["head"] // (heads // act.shape[2])
                part = act[:, :, kv_head] if pos is None else act[:, pos, kv_head]
            else:
                part = act[:, pos]
            parts.append(part)
        unchanged[index] = np.array_equal(parts[0], parts[1])
    return unchanged


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("sweep", REUSE_SWEEPS)
@pytest.mark.parametrize("name", ["gpt2-a", "neo"])
def test_position_reuse_matches_full_recompute_on_padded_prompts(daemon, name, sweep, padding_side):
    """Causal position reuse (each patched run computes only the positions from the patched
    one on, or from its prompt's metric position if that comes first, with the corrupted
    run's keys and values before) gives full recomputation's values on padded batches
    whose prompts read the metric at different positions (right padding: each prompt's
    last real token, before some patched positions), with GPT-Neo's local attention; runs
    whose patch is what the corrupted run has there (the shared first tokens, pads, masked
    pattern entries) are the corrupted metric, and not computed; and it does exactly the
    work it claims."""
    mask = np.array(daemon_post(daemon, f"/v1/models/{name}/tokenize", {
        "prompts": PADDED_CLEAN, "padding_side": padding_side})["attention_mask"])
    B, T = mask.shape
    metric_positions = mask.sum(1) - 1 if padding_side == "right" else np.full(B, T - 1)
    assert padding_side == "left" or metric_positions.min() < T - 1, "the prompts must differ in length"
    body = {"clean": {"prompts": PADDED_CLEAN, "padding_side": padding_side},
            "corrupted": {"prompts": PADDED_CORRUPTED, "padding_side": padding_side},
            "metric": {"type": "logit_diff", "answers": [[" Mary", " John"], [" John", " Mary"]]}}
    got = daemon_post(daemon, f"/v1/models/{name}/patch", {"sweep": sweep, **body})
    full = daemon_post(daemon, f"/v1/models/{name}/patch", {"sweep": sweep, "full_recompute": True, **body})
    reused, reference = values(got), values(full)
    scale = max(1.0, float(np.abs(reference).max()))
    assert np.abs(reused - reference).max() <= 1e-5 * scale, f"{name} {sweep} {padding_side}"
    assert np.ptp(reference) > 1e-3, "a sweep whose values do not vary cannot tell runs apart"

    n_layers = len(got["axes"][[a["name"] for a in got["axes"]].index("layer")]["labels"])
    assert full["block_positions"] == got["runs"] * B * T * n_layers and full["unchanged_runs"] == 0
    unchanged = unchanged_runs(daemon, name, got, body["clean"], body["corrupted"])
    assert got["unchanged_runs"] == unchanged.sum()
    by_position = {"pos", "dest_pos"} & {a["name"] for a in got["axes"]}
    assert unchanged.any() == bool(by_position), "the prompts share their first positions"
    assert np.all(reused[unchanged] == np.float32(got["corrupted_metric"]))
    assert got["block_positions"] == expected_block_positions(got, n_layers, T, metric_positions,
                                                              unchanged)
