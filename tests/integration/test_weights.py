"""POST /v1/models/{m}/weights: every parameter under its TransformerLens
state_dict name and shape, as the request's processing leaves it.

One daemon serves the fixture models (GPT-2, GPT-Neo, TL-native attn-only,
SoLU-LN, LNPre and the brackets model) and, where the family fixtures exist,
Mistral (grouped-query attention, RMSNorm, gated MLP, rotary). Each is asked
for its weights with "processing": "default" and "none" from that one daemon,
and compared with TransformerLens 3.9's HookedTransformer built with the same
flags: the same names in the same order (TL's state_dict() without its
buffers: attn.mask, attn.IGNORE, rotary tables), the same shapes, the same
values.

Tolerance: without processing the weights are copies (a transpose at most)
of the checkpoint's float32 values, compared for equality. Processed weights
come from float32 sums in another order (folding LayerNorm into the readers
sums d_model products, centring takes means over d_model or d_vocab,
fold_value_biases sums n_heads * d_head products), so they agree to a few
float32 ulps of the tensor's scale: |lensd - TL| <= 1e-5 * max(1, max|TL|),
the bound of the processing suite, about a hundred ulps of margin.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from lensd_http import Daemon, error_of, fixtures_dir, json_of, safetensors_of, tensor

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import tl_native  # noqa: E402

FIXTURES = ["gpt2-a", "neo", "native-attnonly", "native-solu-ln", "native-lnpre-relu", "brackets"]
FAMILY_DIR = REPO / "build" / "fixtures-families" / "models"
GQA = "mistral"  # n_heads 4, n_key_value_heads 2
RTOL = 1e-5
MAX_ERRORS: dict[str, float] = {}  # what each model's worst processed weight was off by


def served() -> dict[str, Path]:
    models = {name: fixtures_dir() / "models" / name for name in FIXTURES}
    if (FAMILY_DIR / GQA / "config.json").exists():
        models[GQA] = FAMILY_DIR / GQA
    return models


@pytest.fixture(scope="module")
def daemon(lensd_bin, tmp_path_factory):
    models = served()
    missing = [str(p) for p in models.values() if not p.is_dir()]
    if missing:
        pytest.fail(f"fixture models missing: {missing} (tools/make_fixtures.py)", pytrace=False)
    args = []
    for name, path in models.items():
        args += ["--model", f"{name}={path}"]
    d = Daemon(lensd_bin, args, tmp_path_factory.mktemp("weights") / "lensd.log").start()
    yield d
    assert d.stop() == 0, d.describe()


def tl_model(name: str, path: Path, mode: str):
    flags = tl_native.parse_processing(mode)
    if tl_native.is_native(path):
        return tl_native.build_native_tl(tl_native.load_native(path), flags)
    return tl_native.build_hf_tl(path, flags)


def fold_square_mlp(ref: dict, raw: dict, n_layers: int) -> None:
    """TL 3.9's fold_ln bug, undone in ref: for a square W_in (d_mlp == d_model, the
    brackets model) weight_processing.py tests `W_in.shape[1] == len(ln2.w)` first and
    scales W_in's columns by ln2.w instead of its rows (and centres it accordingly),
    which changes the MLP's output. lensd folds as TL does for every other shape:
    W_in' = centre_rows(diag(ln2.w) W_in), b_in' = b_in + ln2.b W_in (raw: TL's
    unprocessed weights)."""
    for layer in range(n_layers):
        p = f"blocks.{layer}."
        W, w, b = raw[p + "mlp.W_in"], raw[p + "ln2.w"], raw[p + "ln2.b"]
        folded = W * w[:, None]
        assert np.abs(ref[p + "mlp.W_in"] - (folded - folded.mean(0))).max() > 1e-3, \
            "TL folds square MLPs as it folds the others now: drop fold_square_mlp"
        ref[p + "mlp.W_in"] = folded - folded.mean(0)
        ref[p + "mlp.b_in"] = raw[p + "mlp.b_in"] + b @ W


def tl_state_dict(model) -> dict[str, np.ndarray]:
    """TL's state_dict() without its buffers, as float32 arrays, in its order."""
    buffers = {name for name, _ in model.named_buffers()}
    return {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items() if k not in buffers}


def weights(daemon: Daemon, model: str, body: dict, accept: str = "application/vnd.safetensors"):
    status, headers, data = daemon.post(f"/v1/models/{model}/weights", body, accept=accept)
    assert status == 200, data[:500]
    if accept == "application/vnd.safetensors":
        return safetensors_of(data)
    fields = json_of(data)
    return {k: tensor(v) for k, v in fields.items() if isinstance(v, dict)}, fields


@pytest.mark.parametrize("mode", ["default", "none"])
@pytest.mark.parametrize("name", list(served()))
def test_state_dict_equals_tl(daemon, name, mode):
    path = served()[name]
    tl = tl_model(name, path, mode)
    ref = tl_state_dict(tl)
    if mode == "default" and tl.cfg.d_mlp == tl.cfg.d_model and not tl.cfg.attn_only:
        fold_square_mlp(ref, tl_state_dict(tl_model(name, path, "none")), tl.cfg.n_layers)
    got, fields = weights(daemon, name, {"processing": mode})
    assert fields["model"] == name
    assert (fields["processing"] == "none") if mode == "none" else "center_unembed" in fields["processing"]
    listed = json_of(daemon.post(f"/v1/models/{name}/weights", {"processing": mode, "list": True})[2])
    assert list(listed["weights"]) == list(ref), f"{name}/{mode}: names or order differ from TL's state_dict"
    assert set(got) == set(ref)
    worst = 0.0
    for key, want in ref.items():
        have = got[key]
        assert have.dtype == np.float32 and listed["weights"][key]["dtype"] == "float32"
        assert have.shape == want.shape, f"{name}/{mode} {key}: shape {have.shape}, TL {want.shape}"
        assert listed["weights"][key]["shape"] == list(want.shape)
        err = float(np.abs(have - want).max()) if want.size else 0.0
        if mode == "none":
            assert err == 0, f"{name}/{mode} {key}: an unprocessed weight differs from TL's by {err:.3g}"
        bound = RTOL * max(1.0, float(np.abs(want).max()) if want.size else 0.0)
        assert err <= bound, f"{name}/{mode} {key}: max |lensd - TL| = {err:.3g} > {bound:.3g}"
        worst = max(worst, err / max(1.0, float(np.abs(want).max()) if want.size else 1.0))
    MAX_ERRORS[f"{name}/{mode}"] = worst
    print(f"{name}/{mode}: {len(ref)} parameters, max relative error {worst:.3g}")


def test_grouped_query_keys_are_tl_shaped(daemon):
    """Mistral's keys and values have 2 heads for 4 query heads: TL's _W_K/_W_V
    [n_key_value_heads, d_model, d_head], and _b_K/_b_V; without processing they
    are the checkpoint's k_proj/v_proj rows, head by head."""
    if GQA not in served():
        pytest.fail(f"the family fixture {FAMILY_DIR / GQA} is missing "
                    "(tools/make_family_fixtures.py)", pytrace=False)
    cfg = json.loads((FAMILY_DIR / GQA / "config.json").read_text())
    kv, h, d = cfg["num_key_value_heads"], cfg["num_attention_heads"], cfg["hidden_size"]
    dh = cfg.get("head_dim") or d // h
    listed = json_of(daemon.post(f"/v1/models/{GQA}/weights", {"list": True})[2])["weights"]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"blocks.{layer}.attn."
        assert listed[p + "_W_K"]["shape"] == listed[p + "_W_V"]["shape"] == [kv, d, dh]
        assert listed[p + "_b_K"]["shape"] == [kv, dh]
        assert listed[p + "W_Q"]["shape"] == [h, d, dh]
        assert p + "W_K" not in listed
    got, _ = weights(daemon, GQA, {"names": ["blocks.1.attn._W_K"], "processing": "none"})
    from safetensors.torch import load_file  # the checkpoint is bfloat16, which numpy lacks

    hf = {}
    for f in sorted((FAMILY_DIR / GQA).glob("*.safetensors")):
        hf.update(load_file(f))
    k_proj = hf["model.layers.1.self_attn.k_proj.weight"].float().numpy()  # [kv*dh, d]
    np.testing.assert_array_equal(got["blocks.1.attn._W_K"], k_proj.reshape(kv, dh, d).transpose(0, 2, 1))


def test_safetensors_equals_json(daemon):
    for name, body in [("native-attnonly", {}), ("gpt2-a", {"names_filter": "blocks.1.*"}),
                       ("brackets", {"processing": "none"})]:
        st, st_fields = weights(daemon, name, body)
        js, js_fields = weights(daemon, name, body, accept="application/json")
        assert list(js) == [k for k in js_fields if isinstance(js_fields[k], dict)]
        assert set(st) == set(js) and st_fields == {k: v for k, v in js_fields.items() if k in ("model", "processing")}
        for key in st:
            np.testing.assert_array_equal(st[key], js[key], err_msg=f"{name} {key}")


def test_names_and_filters_choose(daemon):
    got, _ = weights(daemon, "gpt2-a", {"names": ["unembed.b_U", "blocks.0.attn.W_O"]})
    assert set(got) == {"unembed.b_U", "blocks.0.attn.W_O"}
    got, _ = weights(daemon, "gpt2-a", {"names_filter": "blocks.*.attn.W_[QK]"})
    assert sorted(got) == ["blocks.0.attn.W_K", "blocks.0.attn.W_Q", "blocks.1.attn.W_K", "blocks.1.attn.W_Q"]
    got, _ = weights(daemon, "gpt2-a", {"names_filter": ["embed.*", "ln_final.*"], "processing": "none",
                                        "names": ["unembed.W_U"]})
    assert sorted(got) == ["embed.W_E", "ln_final.b", "ln_final.w", "unembed.W_U"]
    half, _ = weights(daemon, "gpt2-a", {"names": ["blocks.0.mlp.W_in"], "dtype": "float16"})
    full, _ = weights(daemon, "gpt2-a", {"names": ["blocks.0.mlp.W_in"]})
    assert half["blocks.0.mlp.W_in"].dtype == np.float16
    np.testing.assert_array_equal(half["blocks.0.mlp.W_in"], full["blocks.0.mlp.W_in"].astype(np.float16))


def test_list_answers_shapes_without_data(daemon):
    # with fold_ln there are no LayerNorm weights: the glob (which matches names of the
    # checkpoint) chooses none of the folded weights
    status, _, data = daemon.post("/v1/models/gpt2-a/weights", {"list": True, "names_filter": "blocks.0.ln*"})
    assert status == 200 and json_of(data)["weights"] == {}, data[:300]
    status, _, data = daemon.post("/v1/models/gpt2-a/weights", {"list": True, "processing": "none",
                                                               "names_filter": "blocks.0.ln*"})
    assert status == 200, data[:300]
    answer = json_of(data)
    assert answer["processing"] == "none" and answer["model"] == "gpt2-a"
    assert answer["weights"] == {f"blocks.0.{ln}.{p}": {"shape": [64], "dtype": "float32"}
                                 for ln in ("ln1", "ln2") for p in ("w", "b")}
    status, _, data = daemon.post("/v1/models/gpt2-a/weights", {"list": True, "dtype": "float16"})
    listing = json_of(data)["weights"]
    assert listing["embed.W_E"] == {"shape": [50257, 64], "dtype": "float16"}
    assert len(data) < 10_000, "a listing carries no values"


@pytest.mark.parametrize("body, field, words", [
    ({"names": ["blocks.0.attn.W_q"]}, "names[0]", ["blocks.0.attn.W_Q"]),
    ({"names": ["embed.WE"]}, "names[0]", ["embed.W_E"]),
    ({"names": ["blocks.0.attn.hook_z"]}, "names[0]", ["nearest"]),
    ({"names": [3]}, "names[0]", ["string"]),
    ({"names": "embed.W_E"}, "names", ["list"]),
    ({"names_filter": "blocks.9.*"}, "names_filter", ["matches no parameter"]),
    ({"names_filter": ["embed.*", "nothing*"]}, "names_filter[1]", ["matches no parameter"]),
    ({"names_filter": 5}, "names_filter", ["glob"]),
    ({"dtype": "int8"}, "dtype", ["float16"]),
    ({"list": "yes"}, "list", []),
    ({"processing": "fold_everything"}, "processing", []),
])
def test_bad_requests_name_the_field(daemon, body, field, words):
    status, _, data = daemon.post("/v1/models/gpt2-a/weights", body)
    assert status == 400, data[:300]
    err = error_of(data)
    assert err["code"] == "bad_request" and err["field"] == field, err
    for word in words:
        assert word in err["message"], err


def test_a_folded_norm_is_a_400_naming_the_processing(daemon):
    """blocks.0.ln1.w exists without fold_ln only: parse accepts it (the name is the
    checkpoint's), and the run on the folded weights refuses it, saying why."""
    status, _, data = daemon.post("/v1/models/gpt2-a/weights", {"names": ["blocks.0.ln1.w"]})
    assert status == 400, data[:300]
    assert "fold_ln" in error_of(data)["message"] and "none" in error_of(data)["message"]
    got, _ = weights(daemon, "gpt2-a", {"names": ["blocks.0.ln1.w"], "processing": "none"})
    assert got["blocks.0.ln1.w"].shape == (64,)


def test_over_the_response_limit_is_413_before_any_work(start_daemon, models, tmp_path):
    """gpt2-a's W_E alone is 50257 x 64 float32, 12.3 MiB: over a 4 MiB limit as
    float32 and float16; its W_pos (32 KiB) fits."""
    config = tmp_path / "limits.json"
    config.write_text(json.dumps({"limits": {"max_response_bytes": "4MiB"}}))
    d = start_daemon(["--config", str(config), "--model", f"gpt2={models['gpt2']}"])
    for body in [{}, {"names": ["embed.W_E"]}, {"names": ["embed.W_E"], "dtype": "float16"}]:
        status, _, data = d.post("/v1/models/gpt2/weights", body)
        assert status == 413, data[:300]
        assert "limits.max_response_bytes" in error_of(data)["message"]
    assert d.post("/v1/models/gpt2/weights", {"list": True})[0] == 200
    assert d.post("/v1/models/gpt2/weights", {"names": ["pos_embed.W_pos"]})[0] == 200


def test_the_api_doc_example_runs(daemon, tmp_path):
    """docs/API.md's curl line for this endpoint, against this daemon (gpt2 is gpt2-a here)."""
    import shlex
    import subprocess

    from safetensors.numpy import load_file

    doc = (REPO / "docs" / "API.md").read_text()
    section = doc[doc.index("### POST /v1/models/{m}/weights"):]
    block = section[section.index("```\n") + 4:section.index("\n```", section.index("```\n") + 4)]
    line = block.replace("\\\n", " ").replace("localhost:8080/v1/models/gpt2/",
                                              daemon.url.split("://", 1)[1] + "/v1/models/gpt2-a/")
    args, out = line.split(" > ")
    proc = subprocess.run(["curl", "-f", "--max-time", "60", *shlex.split(args)[1:], "-o", out.strip()],
                          cwd=tmp_path, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    got = load_file(str(tmp_path / out.strip()))
    assert sorted(got) == sorted(f"blocks.0.attn.W_{x}" for x in "QKVO")
