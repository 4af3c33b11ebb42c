"""ActivationCache's analysis methods against TransformerLens 3.9's, on the same tokens.

A lensd daemon serves fixture models; the client's ``run_with_cache`` gives a
full cache. TransformerLens builds the same model (tests/parity/tl_parity.py's
``tl_model``: processed as lensd loads it) and runs ``run_with_cache`` on the
same token ids. Every case calls one method with the same arguments on
TL's ActivationCache (on TL's cache) and on ours, and compares values, shapes
and labels. Two of ours are checked:

- ``lensd``: ours on the cache lensd served. Tolerance: the parity suite's,
  1e-4 * max(1, max|TL|), because its inputs already differ from TL's by
  that much (float32, different kernels; tl_parity.py explains it).
- ``same``: ours on TL's own cache, copied to numpy. Same inputs, so only
  float32 summation order differs (means over d_model, sums over components,
  z @ W_O): 1e-5 * max(1, max|TL|), about 100 ulps of the tensor's scale.

Models: gpt2-a (GPT-2, fold_ln: LNPre) on a right-padded batch of two
prompts, native-attnonly (unfolded LN with ln_final's w and b, attn-only,
hook_result and split q/k/v inputs cached), native-solu (no normalization)
and native-lnpre-relu (LNPre, no processing), each on a batch of two.

The weights the methods need (W_O, W_out, b_O, b_out, ln_final.w/b, W_U
columns) come, for the matrix of cases, from a stand-in holding TL's weights
(``TLWeights``), so that the same weights serve TL's cache and ours: that
checks the cache's arithmetic. ``test_with_client_weights`` runs the methods
that need weights on the client's own Model (lensd/weights.py: weights
fetched from the daemon) and cache.

Environment (the tests fail, not skip, without it): LENSD_BIN, LENSD_FIXTURES.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import lensd
from lensd.cache import ActivationCache

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "parity"))
import tl_parity  # noqa: E402

pytestmark = pytest.mark.live

RTOL_LENSD = 1e-4  # inputs differ by the parity tolerance (see the module docstring)
RTOL_SAME = 1e-5  # same inputs: float32 summation order only

GPT2_PROMPTS = ["The Eiffel Tower is in Paris", "Hello there"]
SERVED = ["gpt2-a", "native-attnonly", "native-solu", "native-lnpre-relu", "brackets"]

# The largest error seen, by (model, method, which cache): printed at the end.
MAX_ERRORS: dict[tuple[str, str, str], float] = {}
# The cases TL refuses (and so must we), by model.
RAISED: dict[str, list[str]] = {}
# On these models TL 3.9 refuses only the case made to be refused.
ONLY_REFUSED = {"logit_attrs(mismatched incorrect shape)"}
FULLY_COMPARED = ("gpt2-a", "brackets")
# Why TL 3.9 refuses cases on the other fixtures; a refusal for any other reason fails.
TL_REFUSALS = re.compile(
    "|".join([
        r"tokens and incorrect_tokens must have the same shape",  # the case made to be refused
        r"hook_resid_mid'",  # attn-only models have no resid_mid
        r"Cached LN scale not found",  # no ln2 (attn-only), no LN at all (SoLU without LN)
        r"hook_scale'$",  # stack_activation("scale", ..., "ln1") without LN
        r"has no attribute 'mlp'",  # TL's accumulated_bias reads b_out of attn-only blocks
        r"stack expects a non-empty TensorList",  # decompose_resid(mode="mlp") of attn-only
        # ln1.hook_scale is per head, [batch, pos, n_heads, 1], with use_split_qkv_input or
        # use_attn_in (native-attnonly, native-lnpre-relu): it does not broadcast with a stack
        r"must match the size of tensor b|is out of bounds for dimension 0 with size 1",
    ])
)


# ---- setup ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixtures() -> Path:
    tl_parity.load_manifest()
    root = tl_parity.fixtures_dir()
    missing = [name for name in SERVED if not (root / "models" / name).is_dir()]
    if missing:
        pytest.fail(f"fixture models missing under {root}/models: {missing}", pytrace=False)
    return root


@pytest.fixture(scope="module")
def daemon_url(fixtures: Path) -> Iterator[str]:
    binary = os.environ.get("LENSD_BIN")
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail(f"LENSD_BIN={binary!r} is not an executable: these tests need lensd", pytrace=False)
    yield from tl_parity.serve_models(binary, {name: fixtures / "models" / name for name in SERVED})


@pytest.fixture(scope="module", autouse=True)
def report_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not MAX_ERRORS:
        return
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("\nmax abs error vs TransformerLens, by model / method / cache:")
        for (model, method, which), err in sorted(MAX_ERRORS.items()):
            reporter.write_line(f"  {model:18s} {method:30s} {which:6s} {err:.3g}")


class TLWeights:
    """A stand-in for the client Model's weights, read from TL's model: what the cache methods read.

    ``cfg`` is the daemon's config (the client's), the weights TL's
    (processed as lensd processes them).
    """

    def __init__(self, cfg: Any, tl: Any) -> None:
        def np_(t: Any) -> np.ndarray:
            return t.detach().numpy().astype(np.float32)

        self.cfg = cfg
        self._tl = tl
        self.blocks = [
            SimpleNamespace(
                attn=SimpleNamespace(W_O=np_(block.attn.W_O), b_O=np_(block.attn.b_O)),
                mlp=SimpleNamespace(W_out=np_(block.mlp.W_out), b_out=np_(block.mlp.b_out))
                if hasattr(block, "mlp")
                else None,
            )
            for block in tl.blocks
        ]
        ln_final = getattr(tl, "ln_final", None)
        self.ln_final = SimpleNamespace(
            w=np_(ln_final.w) if hasattr(ln_final, "w") else None,
            b=np_(ln_final.b) if hasattr(ln_final, "b") else None,
        )
        self.W_U = np_(tl.W_U)

    def to_single_token(self, string: str) -> int:
        return self._tl.to_single_token(string)

    def tokens_to_residual_directions(self, tokens: Any) -> np.ndarray:
        if isinstance(tokens, str):
            return self.W_U[:, self.to_single_token(tokens)]
        ids = np.asarray(tokens)
        if ids.size == 1:
            return self.W_U[:, int(ids.reshape(()))]
        return np.moveaxis(self.W_U[:, ids], 0, -1)


class Run:
    """One model on one batch: TL's cache and model, lensd's cache and client model."""

    def __init__(self, name: str, client_model: Any, tl: Any, tokens: np.ndarray) -> None:
        import torch

        self.name = name
        self.client_model = client_model
        self.tl = tl
        self.tokens = tokens
        _, self.lensd_cache = client_model.run_with_cache(tokens)
        with torch.no_grad():
            _, self.tl_cache = tl.run_with_cache(torch.tensor(tokens))
        self.weights = TLWeights(client_model.cfg, tl)

    def ours(self, which: str, has_batch_dim: bool = True) -> ActivationCache:
        """A fresh cache of ours (methods may add head results): "lensd"'s activations or TL's ("same")."""
        if which == "lensd":
            acts = dict(self.lensd_cache.cache_dict)
        else:
            acts = {k: v.detach().numpy() for k, v in self.tl_cache.cache_dict.items()}
        return ActivationCache(acts, self.tl.cfg.n_layers, model=self.weights, has_batch_dim=has_batch_dim)

    def theirs(self) -> Any:
        from transformer_lens.ActivationCache import ActivationCache as TLCache

        return TLCache(dict(self.tl_cache.cache_dict), self.tl, has_batch_dim=self.tl_cache.has_batch_dim)


_RUNS: dict[str, Run] = {}


@pytest.fixture(scope="module")
def runs(fixtures: Path, daemon_url: str) -> Callable[[str], Run]:
    client = lensd.Client(daemon_url)

    def get(name: str) -> Run:
        if name not in _RUNS:
            model = client.model(name)
            tl = tl_parity.tl_model(fixtures, name)
            if name == "gpt2-a":
                tokens = model.to_tokens(GPT2_PROMPTS)  # right-padded, as TL pads
                padded = (tokens[1] == tokens[1, -1]).sum() > 1
                assert tokens.shape[0] == 2 and padded, "expected a padded second row"
            else:
                rng = np.random.default_rng(sum(map(ord, name)))
                tokens = rng.integers(0, model.cfg.d_vocab, size=(2, 6))
            _RUNS[name] = Run(name, model, tl, np.asarray(tokens, dtype=np.int64))
        return _RUNS[name]

    return get


# ---- comparison ------------------------------------------------------------------


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().numpy()
    return value


def _compare(ref: Any, got: Any, rtol: float, what: str) -> float:
    """Asserts got matches TL's ref (array, or (array, labels)); returns the max abs error."""
    if isinstance(ref, tuple):
        assert isinstance(got, tuple) and len(got) == len(ref), f"{what}: {type(got)}, TL a {len(ref)}-tuple"
        assert list(got[1]) == list(ref[1]), f"{what}: labels {got[1]} != TL's {ref[1]}"
        ref, got = ref[0], got[0]
    ref = _to_numpy(ref)
    assert isinstance(got, np.ndarray), f"{what}: returns {type(got)}, not a numpy array"
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != TL's {ref.shape}"
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}, TL's is float32"
    if ref.size == 0:
        return 0.0
    err = float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max())
    bound = rtol * max(1.0, float(np.abs(ref).max()))
    assert np.isfinite(got).all() and err <= bound, f"{what}: max abs error {err:.3g} > {bound:.3g}"
    return err


def _check(run: Run, method: str, call: Callable[[Any, Callable], Any], has_batch_dim: bool = True) -> None:
    """call(cache, to_array) on TL's cache and on both of ours; equal results, or all raise."""
    import torch

    theirs = run.theirs()
    if not has_batch_dim:
        theirs.remove_batch_dim()
    try:
        with torch.no_grad():
            ref = call(theirs, torch.as_tensor)
    except Exception as tl_error:  # TL refuses these arguments: so must we
        for which in ("lensd", "same"):
            ours = run.ours(which)
            if not has_batch_dim:
                ours.remove_batch_dim()
            with pytest.raises(Exception):
                call(ours, np.asarray)
        assert TL_REFUSALS.search(str(tl_error)), f"{run.name} {method}: TL raises {tl_error!r}"
        RAISED.setdefault(run.name, []).append(method)
        print(f"{run.name} {method}: TL and ours both raise ({type(tl_error).__name__}: {tl_error})"[:300])
        return
    for which, rtol in (("lensd", RTOL_LENSD), ("same", RTOL_SAME)):
        ours = run.ours(which)
        if not has_batch_dim:
            assert ours.remove_batch_dim() is ours and not ours.has_batch_dim
        err = _compare(ref, call(ours, np.asarray), rtol, f"{run.name} {method} [{which} cache]")
        key = (run.name, method.split("(")[0], which)
        MAX_ERRORS[key] = max(MAX_ERRORS.get(key, 0.0), err)


# ---- the cases -------------------------------------------------------------------
# Each is (id, call); call(cache, to_array) runs one method on TL's cache or ours.
# to_array makes a projection or token array of the cache's kind (torch / numpy).

VEC_SEED = 7


def _vec(d: int, k: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(VEC_SEED)
    return rng.standard_normal((d,) if k is None else (d, k)).astype(np.float32)


ACCUMULATED = [
    {},
    {"layer": 1},
    {"layer": -1},
    {"layer": 0},
    {"layer": 2},
    {"incl_mid": True},
    {"incl_mid": True, "layer": 1, "apply_ln": True},
    {"apply_ln": True},
    {"apply_ln": True, "layer": 1},
    {"apply_ln": True, "layer": 1, "mlp_input": True},
    {"apply_ln": True, "layer": 0, "mlp_input": True, "incl_mid": True},
    {"apply_ln": True, "pos_slice": -1},
    {"pos_slice": (1, 3), "incl_mid": True},
    {"pos_slice": [0, 2], "apply_ln": True, "incl_mid": True},
    {"pos_slice": slice(1, None), "apply_ln": True, "layer": 1, "incl_mid": True, "mlp_input": True},
    {"pos_slice": np.array([3, 1]), "apply_ln": True, "layer": 1},
]
DECOMPOSE = [
    {},
    {"layer": 1},
    {"layer": -1},
    {"layer": 0},
    {"mode": "attn"},
    {"mode": "mlp"},
    {"apply_ln": True},
    {"apply_ln": True, "layer": 1},
    {"apply_ln": True, "layer": 1, "mlp_input": True},
    {"apply_ln": True, "layer": 0, "mlp_input": True, "mode": "attn"},
    {"apply_ln": True, "pos_slice": -1, "mode": "mlp"},
    {"incl_embeds": False, "mode": "mlp", "layer": 2},
    {"pos_slice": (0, 4, 2), "apply_ln": True},
]
HEADS = [
    {},
    {"layer": 1},
    {"layer": None},
    {"incl_remainder": True},
    {"incl_remainder": True, "layer": 1, "apply_ln": True},
    {"apply_ln": True},
    {"pos_slice": -1, "apply_ln": True, "incl_remainder": True},
    {"pos_slice": (0, 2), "incl_remainder": True},
    {"layer": 0, "incl_remainder": True},
    {"layer": 0},
    {"layer": 0, "pos_slice": -1},
]
NEURONS: list[tuple[dict, Any]] = [
    ({"layer": 1}, None),
    ({"layer": -1, "pos_slice": -1}, None),
    ({"layer": 2, "incl_remainder": True, "apply_ln": True}, None),
    ({"layer": 2, "neuron_slice": (0, 5)}, None),
    ({"layer": 2, "neuron_slice": (3, 4), "pos_slice": -1, "incl_remainder": True}, None),
    ({"layer": 1, "neuron_slice": [4, 1], "apply_ln": True}, None),
    ({"layer": 0, "incl_remainder": True}, None),
    ({"layer": 0}, None),
    ({"layer": 2, "incl_remainder": True}, "vec"),
    ({"layer": 2, "apply_ln": True, "incl_remainder": True}, "mat"),
    ({"layer": 1, "apply_ln": True, "pos_slice": -1}, "vec"),
]
FULL: list[tuple[dict, Any]] = [
    ({}, None),
    ({"apply_ln": True}, None),
    ({"expand_neurons": False}, None),
    ({"expand_neurons": False, "apply_ln": True, "pos_slice": -1}, None),
    ({"layer": 1, "mlp_input": True, "apply_ln": True}, None),
    ({"layer": 1, "mlp_input": True, "expand_neurons": False}, None),
    ({"layer": 0}, None),
    ({"layer": 0, "mlp_input": True, "apply_ln": True}, None),
    ({"pos_slice": (1, 4), "apply_ln": True}, None),
    ({"apply_ln": True}, "vec"),
    ({"apply_ln": True, "layer": 1, "mlp_input": True}, "mat"),
    ({"pos_slice": -1}, "mat"),
    ({"expand_neurons": False, "apply_ln": True}, "mat"),
]


def _project(kind: Any, d_model: int, to_array: Callable) -> dict:
    if kind is None:
        return {}
    return {"project_output_onto": to_array(_vec(d_model) if kind == "vec" else _vec(d_model, 3))}


def _pos(kwargs: dict, to_array: Callable) -> dict:
    """TL's Slice takes a torch tensor (or numpy array) of indices; ours a numpy array."""
    if isinstance(kwargs.get("pos_slice"), np.ndarray):
        return {**kwargs, "pos_slice": to_array(kwargs["pos_slice"])}
    return kwargs


def _cases(cfg: Any) -> list[tuple[str, Callable]]:
    d = cfg.d_model
    cases: list[tuple[str, Callable]] = []
    for kw in ACCUMULATED:
        cases.append((
            f"accumulated_resid({kw})",
            lambda c, T, kw=kw: c.accumulated_resid(**_pos(kw, T), return_labels=True),
        ))
    for kw in DECOMPOSE:
        cases.append((
            f"decompose_resid({kw})",
            lambda c, T, kw=kw: c.decompose_resid(**_pos(kw, T), return_labels=True),
        ))
    for kw in HEADS:
        cases.append((
            f"stack_head_results({kw})",
            lambda c, T, kw=kw: c.stack_head_results(**kw, return_labels=True),
        ))
    if not cfg.attn_only:
        for kw, proj in NEURONS:
            cases.append((
                f"stack_neuron_results({kw}, {proj})",
                lambda c, T, kw=kw, proj=proj: c.stack_neuron_results(
                    **kw, **_project(proj, d, T), return_labels=True
                ),
            ))
        cases.append(("get_neuron_results(1)", lambda c, T: c.get_neuron_results(1)))
        cases.append((
            "get_neuron_results(0, neuron_slice=(2, 9), pos_slice=-1, mat)",
            lambda c, T: c.get_neuron_results(0, neuron_slice=(2, 9), pos_slice=-1, **_project("mat", d, T)),
        ))
    for kw, proj in FULL:
        cases.append((
            f"get_full_resid_decomposition({kw}, {proj})",
            lambda c, T, kw=kw, proj=proj: c.get_full_resid_decomposition(
                **kw, **_project(proj, d, T), return_labels=True
            ),
        ))
    cases += [
        ("stack_activation(pattern)", lambda c, T: c.stack_activation("pattern")),
        ("stack_activation(resid_post, 1)", lambda c, T: c.stack_activation("resid_post", 1)),
        ("stack_activation(scale, -1, ln1)", lambda c, T: c.stack_activation("scale", -1, "ln1")),
        ("compute_head_results", lambda c, T: (c.compute_head_results(), c["result", -1])[1]),
        # apply_ln_to_stack on its own: layers, mlp_input, pos and batch slices.
        ("apply_ln_to_stack(decomposed)", lambda c, T: c.apply_ln_to_stack(c.decompose_resid())),
        ("apply_ln_to_stack(layer=1)", lambda c, T: c.apply_ln_to_stack(c.decompose_resid(layer=1), layer=1)),
        (
            "apply_ln_to_stack(layer=1, mlp_input)",
            lambda c, T: c.apply_ln_to_stack(
                c.decompose_resid(layer=1, mlp_input=True), layer=1, mlp_input=True
            ),
        ),
        (
            "apply_ln_to_stack(pos_slice=-1, batch_slice=1)",
            lambda c, T: c.apply_ln_to_stack(c.decompose_resid(pos_slice=-1), pos_slice=-1, batch_slice=1),
        ),
        (
            "apply_ln_to_stack(pos_slice=(1,3), batch_slice=[1,0])",
            lambda c, T: c.apply_ln_to_stack(
                c.accumulated_resid(pos_slice=(1, 3)), pos_slice=(1, 3), batch_slice=[1, 0]
            ),
        ),
        (
            "apply_ln_to_stack(recompute_ln)",
            lambda c, T: c.apply_ln_to_stack(
                c.accumulated_resid(incl_mid=not cfg.attn_only), recompute_ln=True
            ),
        ),
        (
            "apply_ln_to_stack(layer=0, recompute_ln)",  # recompute_ln is for the unembed only
            lambda c, T: c.apply_ln_to_stack(c.accumulated_resid(layer=0), layer=0, recompute_ln=True),
        ),
    ]
    return cases


def _logit_cases(run: Run) -> list[tuple[str, Callable]]:
    tokens = run.tokens % run.client_model.cfg.d_vocab_out  # answers are output ids
    answer = np.ascontiguousarray(tokens[:, -1])
    wrong = np.ascontiguousarray(tokens[:, 0])
    cases: list[tuple[str, Callable]] = [
        ("logit_attrs(int)", lambda c, T: c.logit_attrs(c.decompose_resid(), int(tokens[0, 1]))),
        (
            "logit_attrs(per-row ids, pos -1)",
            lambda c, T: c.logit_attrs(c.decompose_resid(pos_slice=-1), T(answer), pos_slice=-1),
        ),
        (
            "logit_attrs(ids - incorrect, heads, pos -1)",
            lambda c, T: c.logit_attrs(c.stack_head_results(pos_slice=-1), T(answer), T(wrong), pos_slice=-1),
        ),
        (
            "logit_attrs([batch, pos] ids, accumulated)",
            lambda c, T: c.logit_attrs(c.accumulated_resid(), T(np.ascontiguousarray(tokens))),
        ),
        (
            "logit_attrs(batch_slice=1, pos -1)",
            lambda c, T: c.logit_attrs(
                c.decompose_resid(pos_slice=-1), int(tokens[1, 2]), pos_slice=-1, batch_slice=1
            ),
        ),
        (
            "logit_attrs(mismatched incorrect shape)",
            lambda c, T: c.logit_attrs(
                c.decompose_resid(pos_slice=-1), T(answer), int(wrong[0]), pos_slice=-1
            ),
        ),
    ]
    if run.name == "gpt2-a":
        cases.append(("logit_attrs(str, str)", _logit_attrs_str))
    return cases


def _logit_attrs_str(c: Any, T: Callable) -> Any:
    """logit_attrs of " Paris" minus " the" (gpt2-a's tokenizer), at the last position."""
    return c.logit_attrs(c.decompose_resid(pos_slice=-1), " Paris", " the", pos_slice=-1)


# ---- the tests -------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVED)
def test_methods_match_tl(runs: Callable[[str], Run], name: str) -> None:
    run = runs(name)
    failures = []
    for method, call in _cases(run.client_model.cfg) + _logit_cases(run):
        try:
            _check(run, method, call)
        except AssertionError as e:  # collect them all: one model's report in one run
            failures.append(str(e).split("\n")[0])
    assert not failures, f"{len(failures)} cases differ from TL:\n" + "\n".join(failures)
    if name in FULLY_COMPARED:
        assert set(RAISED.get(name, [])) == ONLY_REFUSED, f"TL refused other cases: {RAISED.get(name)}"


def test_cases_exercise_every_method(runs: Callable[[str], Run]) -> None:
    """Guards the matrix: each method runs on gpt2-a with results (not only 'both raise')."""
    seen = {method for model, method, _ in MAX_ERRORS if model == "gpt2-a"}
    if not seen:
        test_methods_match_tl(runs, "gpt2-a")
        seen = {method for model, method, _ in MAX_ERRORS if model == "gpt2-a"}
    want = {
        "accumulated_resid", "decompose_resid", "stack_head_results", "stack_neuron_results",
        "get_neuron_results", "get_full_resid_decomposition", "stack_activation", "compute_head_results",
        "apply_ln_to_stack", "logit_attrs",
    }
    assert want <= seen, f"methods never compared with a result: {sorted(want - seen)}"


def test_without_batch_dim(runs: Callable[[str], Run], fixtures: Path) -> None:
    """remove_batch_dim (in place, returns the cache) and the methods on [pos, ...] activations."""
    gpt2 = runs("gpt2-a")
    one = Run("gpt2-a[1]", gpt2.client_model, gpt2.tl, gpt2.tokens[:1, :5])
    with pytest.raises(ValueError, match="batch size 2"):
        gpt2.ours("lensd").remove_batch_dim()
    for method, call in [
        ("accumulated_resid(apply_ln)", lambda c, T: c.accumulated_resid(apply_ln=True, return_labels=True)),
        ("accumulated_resid(1, -1, ln)", lambda c, T: c.accumulated_resid(1, False, True, -1)),
        ("decompose_resid(1, mlp_input, ln)", lambda c, T: c.decompose_resid(1, True, apply_ln=True)),
        ("stack_head_results(remainder, ln)", lambda c, T: c.stack_head_results(-1, False, True, None, True)),
        (
            "get_full_resid_decomposition(ln, pos -1)",
            lambda c, T: c.get_full_resid_decomposition(apply_ln=True, pos_slice=-1),
        ),
        (
            "logit_attrs(no batch)",
            lambda c, T: c.logit_attrs(
                c.decompose_resid(pos_slice=-1), " Paris", pos_slice=-1, has_batch_dim=False
            ),
        ),
        (
            "apply_ln_to_stack(no batch, batch_slice ignored)",
            lambda c, T: c.apply_ln_to_stack(c.decompose_resid(), has_batch_dim=False, batch_slice=0),
        ),
    ]:
        _check(one, method, call, has_batch_dim=False)


def test_apply_slice_to_batch_dim(runs: Callable[[str], Run]) -> None:
    run = runs("gpt2-a")
    for batch_slice in (1, [1, 0], (0, 1)):
        theirs = run.theirs().apply_slice_to_batch_dim(batch_slice)
        ours = run.ours("lensd").apply_slice_to_batch_dim(batch_slice)
        assert ours.has_batch_dim == theirs.has_batch_dim
        assert sorted(ours) == sorted(theirs.cache_dict)
        for key in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "ln_final.hook_scale"):
            _compare(theirs[key], ours[key], RTOL_LENSD, f"apply_slice_to_batch_dim({batch_slice})[{key}]")
        _compare(
            theirs.decompose_resid(apply_ln=True, return_labels=True),
            ours.decompose_resid(apply_ln=True, return_labels=True),
            RTOL_LENSD,
            f"apply_slice_to_batch_dim({batch_slice}).decompose_resid",
        )


def test_decompositions_sum_to_the_stream(runs: Callable[[str], Run]) -> None:
    """What TL promises of the stacks, on lensd's cache: the parts add up to the residual stream."""
    cache = runs("gpt2-a").ours("lensd")
    resid = cache["resid_post", -1]
    scale = max(1.0, float(np.abs(resid).max()))
    for what, stack in (
        ("decompose_resid", cache.decompose_resid()),
        ("stack_head_results + remainder", cache.stack_head_results(incl_remainder=True)),
        ("get_full_resid_decomposition", cache.get_full_resid_decomposition()),
        ("get_full_resid_decomposition(no expand)", cache.get_full_resid_decomposition(expand_neurons=False)),
    ):
        err = float(np.abs(stack.sum(axis=0) - resid).max())
        assert err <= RTOL_LENSD * scale, f"{what} sums to the stream within {err:.3g}"


def test_needs_a_model(runs: Callable[[str], Run]) -> None:
    cache = ActivationCache(runs("gpt2-a").lensd_cache.cache_dict, 2)
    assert cache["resid_post", -1].shape[0] == 2  # indexing needs no model
    with pytest.raises(ValueError, match="no model"):
        cache.decompose_resid()


def test_client_cache_has_the_model(runs: Callable[[str], Run]) -> None:
    """run_with_cache gives a cache that knows its model, so the methods work on it directly."""
    run = runs("native-solu")
    assert run.lensd_cache.model is run.client_model
    _compare(
        run.theirs().decompose_resid(return_labels=True),
        run.lensd_cache.decompose_resid(return_labels=True),
        RTOL_LENSD,
        "client cache decompose_resid",
    )


CLIENT_WEIGHTS = ("W_O", "W_out", "blocks", "ln_final", "tokens_to_residual_directions")


@pytest.mark.parametrize("name", ["gpt2-a", "native-lnpre-relu", "brackets", "native-attnonly"])
def test_with_client_weights(runs: Callable[[str], Run], name: str) -> None:
    """The methods that need weights, on the client's own cache and Model (lensd/weights.py, fetched from
    the daemon): head results from z @ W_O, neurons and biases, ln_final's w and b (brackets and
    native-attnonly are unfolded LN), and W_U's columns."""
    run = runs(name)
    model = run.client_model
    wanted = [attr for attr in CLIENT_WEIGHTS if attr != "W_out" or not model.cfg.attn_only]
    missing = [attr for attr in wanted if not hasattr(model, attr)]
    assert not missing, f"lensd.client.Model lacks {missing} (lensd/weights.py)"
    answer = np.ascontiguousarray(run.tokens[:, -1] % model.cfg.d_vocab_out)
    cases = [
        ("compute_head_results", lambda c, T: (c.compute_head_results(), c["result", 0])[1]),
        (
            "stack_head_results(remainder, pos -1)",
            lambda c, T: c.stack_head_results(incl_remainder=True, pos_slice=-1, return_labels=True),
        ),
        ("accumulated_resid(apply_ln)", lambda c, T: c.accumulated_resid(apply_ln=True, return_labels=True)),
        (
            "logit_attrs(ids, pos -1)",
            lambda c, T: c.logit_attrs(c.decompose_resid(pos_slice=-1), T(answer), pos_slice=-1),
        ),
    ]
    if not model.cfg.attn_only:
        cases += [
            # positional, in TL's order: layer, pos_slice, neuron_slice, return_labels, incl_remainder,
            # apply_ln
            ("stack_neuron_results(ln)", lambda c, T: c.stack_neuron_results(-1, None, None, True, 0, 1)),
            (
                "get_full_resid_decomposition(ln)",
                lambda c, T: c.get_full_resid_decomposition(apply_ln=True, return_labels=True),
            ),
            ("get_full_resid_decomposition(layer 1, mlp_input)",
             lambda c, T: c.get_full_resid_decomposition(1, mlp_input=True, return_labels=True)),
        ]
    if name == "gpt2-a":
        cases.append(("logit_attrs(str, str)", _logit_attrs_str))
    import torch

    for method, call in cases:
        with torch.no_grad():
            ref = call(run.theirs(), torch.as_tensor)
        # A fresh cache of the client's own activations and Model (no TL weights anywhere).
        ours = ActivationCache(dict(run.lensd_cache.cache_dict), model.cfg.n_layers, model=model)
        err = _compare(ref, call(ours, np.asarray), RTOL_LENSD, f"{name} {method} [client weights]")
        key = (name, method.split("(")[0], "client")
        MAX_ERRORS[key] = max(MAX_ERRORS.get(key, 0.0), err)
