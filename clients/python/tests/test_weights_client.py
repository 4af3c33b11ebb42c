"""The client's weights (lensd.weights) and FactoredMatrix (lensd.factored) against
TransformerLens 3.9.

Offline: FactoredMatrix on random factors against TL's FactoredMatrix (torch, float64,
so both sides' numbers are exact to ~1e-12 and any difference is a semantic one).

Live (LENSD_BIN, LENSD_TEST_MODEL): one daemon serves LENSD_TEST_MODEL (GPT-2-like) as
"test" and, where the family fixtures exist, Mistral (grouped-query attention) as "gqa";
the model's weight properties, with its own processing and with "none", equal those of
TL's HookedTransformer built with the same flags. Tolerance: unprocessed weights are the
checkpoint's float32 values (equal); processed ones come from float32 sums in another
order, within 1e-5 * max(1, max|TL|) (tests/integration/test_weights.py says why); the
SVD, eigenvalues and norms of OV/QK, computed here in float32 by LAPACK from the factors
as TL computes them in torch, within 1e-4 of their scale (a float32 SVD of
a rank-d_head product loses a few digits to the conditioning of the middle matrix).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import torch

import lensd
from lensd import FactoredMatrix

REPO = Path(__file__).resolve().parents[3]
GQA_DIR = REPO / "build" / "fixtures-families" / "models" / "mistral"
RTOL = 1e-5



# ---- FactoredMatrix, offline -------------------------------------------------------


def tl_factored():
    from transformer_lens.FactoredMatrix import FactoredMatrix as TLFactoredMatrix

    return TLFactoredMatrix


def pair(rng, *shape_a_b):
    (sa, sb) = shape_a_b
    return rng.standard_normal(sa), rng.standard_normal(sb)


def t(x: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(x))


def close(got, want, what: str, tol: float = 1e-10) -> None:
    want = want.detach().numpy() if hasattr(want, "detach") else np.asarray(want)
    got = np.asarray(got)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.allclose(got, want, atol=tol, rtol=tol), f"{what}: max diff {np.abs(got - want).max():.3g}"


@pytest.mark.parametrize("sa, sb", [((5, 3), (3, 6)), ((2, 4, 6, 3), (2, 4, 3, 6)), ((4, 6, 2), (2, 6))])
def test_factored_matrix_matches_tl(sa, sb):
    TLF = tl_factored()
    rng = np.random.default_rng(0)
    A, B = pair(rng, sa, sb)
    ours, theirs = FactoredMatrix(A, B), TLF(t(A), t(B))
    assert ours.shape == tuple(theirs.shape) and ours.ndim == theirs.ndim
    assert (ours.ldim, ours.mdim, ours.rdim) == (theirs.ldim, theirs.mdim, theirs.rdim)
    close(ours.AB, theirs.AB, "AB")
    close(ours.T.AB, theirs.T.AB, "T")
    close(ours.S, theirs.S, "S")
    U, S, V = ours.svd()
    close(U @ (S[..., :, None] * np.swapaxes(V, -1, -2)), theirs.AB, "U S V^T")
    close(np.abs(ours.U), np.abs(theirs.U.numpy()), "|U|")  # singular vectors up to sign
    close(np.abs(ours.V), np.abs(theirs.V.numpy()), "|V|")
    close(ours.norm(), theirs.norm(), "norm")
    close(np.abs(ours.collapse_r()), np.abs(theirs.collapse_r().numpy()), "|collapse_r|")
    close(np.abs(ours.collapse_l()), np.abs(theirs.collapse_l().numpy()), "|collapse_l|")
    close(ours.make_even().AB, theirs.make_even().AB, "make_even")
    close(ours.get_corner(2), theirs.get_corner(2), "get_corner")
    close(ours.pair[0], theirs.pair[0], "pair A")
    close((ours * 2.5).AB, (theirs * 2.5).AB, "scalar")
    close(ours.unit_norm().norm(), np.ones(ours.shape[:-2]), "unit_norm")
    assert repr(ours) == f"FactoredMatrix: Shape({ours.shape}), Hidden Dim({ours.mdim})"
    # products with vectors, matrices (both inner-dimension branches) and FactoredMatrix
    v = rng.standard_normal(ours.rdim)
    close(ours @ v, theirs @ t(v), "@ vector")
    for cols in (2, 9):
        M = rng.standard_normal((ours.rdim, cols))
        close((ours @ M).AB, (theirs @ t(M)).AB, f"@ [{ours.rdim}, {cols}]")
        L = rng.standard_normal((cols, ours.ldim))
        close((L @ ours).AB, (t(L) @ theirs).AB, f"[{cols}, {ours.ldim}] @")
    u = rng.standard_normal(ours.ldim)
    close(u @ ours, t(u) @ theirs, "vector @")
    C, D = rng.standard_normal((ours.rdim, 2)), rng.standard_normal((2, 4))
    close((ours @ FactoredMatrix(C, D)).AB, (theirs @ TLF(t(C), t(D))).AB, "@ FactoredMatrix")


def test_factored_matrix_square_and_indexing_match_tl():
    TLF = tl_factored()
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((3, 4, 7, 2)), rng.standard_normal((3, 4, 2, 7))
    ours, theirs = FactoredMatrix(A, B), TLF(t(A), t(B))
    close(ours.BA, theirs.BA, "BA")
    ev, tev = ours.eigenvalues, theirs.eigenvalues.numpy()
    # the same eigenvalues of each 2x2 BA, in any order
    key = lambda e: np.sort_complex(np.round(e, 9))  # noqa: E731
    close(np.stack([key(e) for e in ev.reshape(-1, 2)]), np.stack([key(e) for e in tev.reshape(-1, 2)]), "eigenvalues")
    for index in [1, (2, 3), (slice(0, 2),), (1, 2, 3), (1, 2, slice(1, 4)), (0, 1, 2, 5), (-1, -1, -1, -1)]:
        close(ours[index].AB, theirs[index].AB, f"[{index}]")
    with pytest.raises(ValueError):
        FactoredMatrix(rng.standard_normal((3, 4)), rng.standard_normal((5, 3)))
    with pytest.raises(ValueError):
        FactoredMatrix(rng.standard_normal((3, 4)), rng.standard_normal((4, 5))).BA


# ---- the model's weights, live ------------------------------------------------------------


class Daemon:
    def __init__(self, binary: str, models: dict[str, str]) -> None:
        args = [binary, "serve", "--port", "0"]
        for name, path in models.items():
            args += ["--model", f"{name}={path}"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        first = self.proc.stdout.readline()
        match = re.fullmatch(r"lensd listening on (http://\S+)", first.strip())
        if not match:
            self.proc.kill()
            pytest.fail(f"lensd's first stdout line is {first!r}", pytrace=False)
        self.url = match.group(1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: the live tests need it (they do not skip)", pytrace=False)
    return value


@pytest.fixture(scope="module")
def client() -> Iterator[lensd.Client]:
    models = {"test": _env("LENSD_TEST_MODEL")}
    if (GQA_DIR / "config.json").exists():
        models["gqa"] = str(GQA_DIR)
    daemon = Daemon(_env("LENSD_BIN"), models)
    try:
        with lensd.Client(daemon.url, timeout=120) as c:
            c.wait_ready(timeout=120)
            yield c
    finally:
        assert daemon.stop() == 0


def tl(path: str | Path, mode: str):
    sys.path.insert(0, str(REPO / "tools"))
    import tl_native

    return tl_native.build_hf_tl(Path(path), tl_native.parse_processing(mode))


@pytest.fixture(scope="module", params=["default", "none"])
def pair_of_models(request, client):
    """(lensd model, TL model) with the same processing."""
    model = client.model("test")
    if request.param == "none":
        model = model.with_processing("none")
    return model, tl(_env("LENSD_TEST_MODEL"), request.param), request.param


def near(got, want, what: str, exact: bool) -> float:
    want = want.detach().float().numpy() if hasattr(want, "detach") else np.asarray(want)
    got = np.asarray(got)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = float(np.abs(got - want).max()) if want.size else 0.0
    if exact:
        assert err == 0, f"{what}: unprocessed weight differs by {err:.3g}"
    bound = RTOL * max(1.0, float(np.abs(want).max()))
    assert err <= bound, f"{what}: max |lensd - TL| = {err:.3g} > {bound:.3g}"
    return err


STACKED = ["W_E", "W_pos", "W_E_pos", "W_U", "b_U", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O",
           "W_in", "W_out", "b_in", "b_out"]


def test_stacked_properties_equal_tl(pair_of_models):
    model, ref, mode = pair_of_models
    for name in STACKED:
        near(getattr(model, name), getattr(ref, name), f"{mode} model.{name}", exact=mode == "none")
    assert model.W_gate is None and ref.W_gate is None
    assert model.W_Q.shape == (ref.cfg.n_layers, ref.cfg.n_heads, ref.cfg.d_model, ref.cfg.d_head)


def test_blocks_and_state_dict_equal_tl(pair_of_models):
    model, ref, mode = pair_of_models
    buffers = {name for name, _ in ref.named_buffers()}
    want = {k: v for k, v in ref.state_dict().items() if k not in buffers}
    got = model.state_dict()
    assert list(got) == list(want)
    for key in want:
        near(got[key], want[key], f"{mode} {key}", exact=mode == "none")
    for layer, block in enumerate(model.blocks):
        near(block.attn.W_O, ref.blocks[layer].attn.W_O, f"blocks[{layer}].attn.W_O", mode == "none")
        near(block.mlp.W_in, ref.blocks[layer].mlp.W_in, f"blocks[{layer}].mlp.W_in", mode == "none")
        near(block.attn.b_V, ref.blocks[layer].attn.b_V, f"blocks[{layer}].attn.b_V", mode == "none")
        if mode == "none":
            near(block.ln1.w, ref.blocks[layer].ln1.w, f"blocks[{layer}].ln1.w", True)
            near(block.ln2.b, ref.blocks[layer].ln2.b, f"blocks[{layer}].ln2.b", True)
        else:
            with pytest.raises(AttributeError):
                block.ln1.w  # folded, as TL's LayerNormPre has no w
    assert len(model.blocks) == ref.cfg.n_layers
    with pytest.raises(IndexError):
        model.blocks[ref.cfg.n_layers]
    with pytest.raises(ValueError):
        got["embed.W_E"][0, 0] = 1.0  # read-only: shared with every property


def test_factored_circuits_equal_tl(pair_of_models):
    model, ref, mode = pair_of_models
    for circuit in ("OV", "QK"):
        ours, theirs = getattr(model, circuit), getattr(ref, circuit)
        assert isinstance(ours, FactoredMatrix) and ours.shape == tuple(theirs.shape)
        AB = theirs.AB.detach().numpy()
        scale = max(1.0, float(np.abs(AB).max()))
        assert np.abs(ours.AB - AB).max() <= 1e-4 * scale, circuit
        S = theirs.S.detach().numpy()
        assert np.abs(ours.S - S).max() <= 1e-4 * max(1.0, float(S.max())), f"{circuit} S"
        norm = theirs.norm().detach().numpy()
        assert np.abs(ours.norm() - norm).max() <= 1e-4 * max(1.0, float(norm.max())), f"{circuit} norm"
        ev, tev = ours.eigenvalues, theirs.eigenvalues.detach().numpy()
        # the same multiset per head: compare sorted by (real, imag)
        flat, tflat = ev.reshape(-1, ev.shape[-1]), tev.reshape(-1, tev.shape[-1])
        for a, b in zip(flat, tflat):
            a, b = np.sort_complex(a), np.sort_complex(b)
            assert np.abs(a - b).max() <= 1e-3 * max(1.0, float(np.abs(b).max())), f"{circuit} eigenvalues"
        head = getattr(model.blocks[1].attn, circuit)[0]
        assert np.abs(head.AB - getattr(ref.blocks[1].attn, circuit)[0].AB.detach().numpy()).max() <= 1e-4 * scale


def test_tokens_to_residual_directions_equal_tl(pair_of_models):
    model, ref, mode = pair_of_models
    exact = mode == "none"
    near(model.tokens_to_residual_directions(" the"), ref.tokens_to_residual_directions(" the"), "str", exact)
    near(model.tokens_to_residual_directions(42), ref.tokens_to_residual_directions(42), "int", exact)
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    got = model.tokens_to_residual_directions(ids)
    assert got.shape == (2, 3, ref.cfg.d_model)
    near(got, ref.tokens_to_residual_directions(torch.tensor(ids)), "[2, 3] ids", exact)
    near(model.tokens_to_residual_directions([7, 8]), ref.tokens_to_residual_directions(torch.tensor([7, 8])),
         "list", exact)
    near(model.tokens_to_residual_directions(np.array([9])), ref.tokens_to_residual_directions(torch.tensor([9])),
         "one id", exact)
    near(model.tokens_to_residual_directions(torch.tensor(ids)), ref.tokens_to_residual_directions(torch.tensor(ids)),
         "torch ids", exact)
    with pytest.raises(ValueError):
        model.tokens_to_residual_directions(np.array([0.5]))


def test_weights_come_in_one_request_per_processing(client, monkeypatch):
    fresh = lensd.Client(client.url, timeout=120)
    calls = []
    send = fresh._send

    def counting(method, path, body, tensors):
        calls.append((path, dict(body or {})))
        return send(method, path, body, tensors)

    monkeypatch.setattr(fresh, "_send", counting)
    model = fresh.model("test")
    model.W_Q, model.W_K, model.blocks[0].attn.W_O, model.OV, model.state_dict()
    fresh.model("test").W_U  # another handle of the same model and processing: cached
    model.with_processing("none").W_E
    model.with_processing("none").blocks[0].ln1.w
    weight_calls = [body for path, body in calls if path.endswith("/weights")]
    assert weight_calls == [{}, {"processing": "none"}]
    assert model._answered_processing() != "none"
    assert model.with_processing("none")._answered_processing() == "none"
    fresh.close()


def test_grouped_query_keys_expand_as_tl(client):
    """W_K / W_V of a grouped-query model are TL's properties: _W_K repeated per query
    head (repeat_interleave); the state dict keeps _W_K [n_key_value_heads, ...]."""
    if not (GQA_DIR / "config.json").exists():
        pytest.fail(f"the family fixture {GQA_DIR} is missing (tools/make_family_fixtures.py)", pytrace=False)
    for mode in ("default", "none"):
        model = client.model("gqa") if mode == "default" else client.model("gqa").with_processing("none")
        ref = tl(GQA_DIR, mode)
        for name in ("W_K", "W_V", "b_K", "b_V", "W_Q", "W_gate", "W_in"):
            near(getattr(model, name), getattr(ref, name), f"gqa/{mode} {name}", exact=mode == "none")
        assert model.state_dict()["blocks.0.attn._W_K"].shape[0] == ref.cfg.n_key_value_heads
        assert model.W_K.shape[1] == ref.cfg.n_heads
        with pytest.raises(AttributeError):
            model.W_pos  # rotary: no positional embedding, as TL's has no pos_embed
