"""Offline tests of the lensd client: name resolution, body decoding, errors, and
the requests it builds (against a fake transport, no daemon). The error
classes and retries, against a real local HTTP server: test_client_errors.py."""

from __future__ import annotations

import io
import json
import pickle
import struct
from typing import Any

import numpy as np
import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter
from safetensors.numpy import save as save_safetensors

import lensd
import lensd.progress
from lensd.tensors import decode_body

# ---------------------------------------------------------------- get_act_name

# Expected names read off TransformerLens 3.9.0's get_act_name,
# transformer_lens/utilities/components_utils.py (its docstring's examples
# first), and ActivationCache.__getitem__ in transformer_lens/ActivationCache.py.
ACT_NAME_CASES = [
    # the docstring's examples
    (("k", 6, "a"), "blocks.6.attn.hook_k"),
    (("pre", 2), "blocks.2.mlp.hook_pre"),
    (("embed",), "hook_embed"),
    (("normalized", 27, "ln2"), "blocks.27.ln2.hook_normalized"),
    (("k6",), "blocks.6.attn.hook_k"),
    (("scale4ln1",), "blocks.4.ln1.hook_scale"),
    (("pre5",), "blocks.5.mlp.hook_pre"),
    # full names pass through when given alone
    (("blocks.0.attn.hook_z",), "blocks.0.attn.hook_z"),
    (("hook_embed",), "hook_embed"),
    (("ln_final.hook_scale",), "ln_final.hook_scale"),
    # names outside blocks
    (("pos_embed",), "hook_pos_embed"),
    (("tokens",), "hook_tokens"),
    # layer norms: without a layer they are ln_final's
    (("scale",), "ln_final.hook_scale"),
    (("normalized",), "ln_final.hook_normalized"),
    (("scale", 3, "ln1"), "blocks.3.ln1.hook_scale"),
    (("scale", 0, "ln2"), "blocks.0.ln2.hook_scale"),
    (("scale", None, "ln1"), "ln_final.ln1.hook_scale"),
    (("normalized3ln2",), "blocks.3.ln2.hook_normalized"),
    (("scale0",), "blocks.0.hook_scale"),
    # residual stream and block outputs: no layer type
    (("resid_pre", 0), "blocks.0.hook_resid_pre"),
    (("resid_mid", 1), "blocks.1.hook_resid_mid"),
    (("resid_post", 11), "blocks.11.hook_resid_post"),
    (("attn_out", 1), "blocks.1.hook_attn_out"),
    (("mlp_out", 2), "blocks.2.hook_mlp_out"),
    (("attn_in", 0), "blocks.0.hook_attn_in"),
    (("q_input", 0), "blocks.0.hook_q_input"),
    (("mlp_in", 3), "blocks.3.hook_mlp_in"),
    # attention names always live in attn, whatever layer type is given
    (("q", 2), "blocks.2.attn.hook_q"),
    (("k", 0), "blocks.0.attn.hook_k"),
    (("v", 1), "blocks.1.attn.hook_v"),
    (("z", 0, "mlp"), "blocks.0.attn.hook_z"),
    (("result", 3), "blocks.3.attn.hook_result"),
    (("rot_q", 1), "blocks.1.attn.hook_rot_q"),
    (("rot_k", 1), "blocks.1.attn.hook_rot_k"),
    (("pattern", 0), "blocks.0.attn.hook_pattern"),
    (("attn_scores", 1), "blocks.1.attn.hook_attn_scores"),
    # name aliases
    (("attn", 0), "blocks.0.attn.hook_pattern"),
    (("attn_logits", 1), "blocks.1.attn.hook_attn_scores"),
    (("query", 2), "blocks.2.attn.hook_q"),
    (("key", 2), "blocks.2.attn.hook_k"),
    (("value", 2), "blocks.2.attn.hook_v"),
    (("mlp_pre", 1), "blocks.1.mlp.hook_pre"),
    (("mlp_mid", 1), "blocks.1.mlp.hook_mid"),
    (("mlp_post", 1), "blocks.1.mlp.hook_post"),
    # mlp names always live in mlp
    (("post", 0), "blocks.0.mlp.hook_post"),
    (("mid", 0, "a"), "blocks.0.mlp.hook_mid"),
    (("pre_linear", 4), "blocks.4.mlp.hook_pre_linear"),
    # layer type aliases
    (("resid_post", 0, "b"), "blocks.0.hook_resid_post"),
    (("resid_post", 0, "block"), "blocks.0.hook_resid_post"),
    (("resid_post", 0, "blocks"), "blocks.0.hook_resid_post"),
    (("resid_pre", 1, "a"), "blocks.1.attn.hook_resid_pre"),
    (("pattern", 1, "attention"), "blocks.1.attn.hook_pattern"),
    (("resid_pre", 1, "m"), "blocks.1.mlp.hook_resid_pre"),
    # shorthands: letters, then the layer, then the layer type; they override the arguments
    (("k12a",), "blocks.12.attn.hook_k"),
    (("attn3",), "blocks.3.attn.hook_pattern"),
    (("k6", 2), "blocks.6.attn.hook_k"),
    (("v", "3"), "blocks.3.attn.hook_v"),
    # not a shorthand: the letters must be followed by the digits
    (("resid_pre10",), "hook_resid_pre10"),
]


@pytest.mark.parametrize(("args", "expected"), ACT_NAME_CASES, ids=[repr(a) for a, _ in ACT_NAME_CASES])
def test_get_act_name(args: tuple, expected: str) -> None:
    assert lensd.get_act_name(*args) == expected


def test_get_act_name_agrees_with_transformer_lens() -> None:
    """Where TransformerLens is installed (the project's venv), the table is checked against it."""
    tl_utils = pytest.importorskip("transformer_lens.utils")
    for args, expected in ACT_NAME_CASES:
        assert tl_utils.get_act_name(*args) == expected, args


# -------------------------------------------------------------- ActivationCache

N_LAYERS = 4


def _hook_names(n_layers: int) -> list[str]:
    names = ["hook_embed", "hook_pos_embed"]
    for layer in range(n_layers):
        block = f"blocks.{layer}"
        names += [
            f"{block}.hook_resid_pre",
            f"{block}.ln1.hook_scale",
            f"{block}.ln1.hook_normalized",
            *(f"{block}.attn.hook_{n}" for n in ("q", "k", "v", "attn_scores", "pattern", "z")),
            f"{block}.hook_attn_out",
            f"{block}.hook_resid_mid",
            f"{block}.ln2.hook_scale",
            f"{block}.mlp.hook_pre",
            f"{block}.mlp.hook_post",
            f"{block}.hook_mlp_out",
            f"{block}.hook_resid_post",
        ]
    return names + ["ln_final.hook_scale", "ln_final.hook_normalized"]


@pytest.fixture
def cache() -> lensd.ActivationCache:
    return lensd.ActivationCache(
        {name: np.full((1, 2), i, dtype=np.float32) for i, name in enumerate(_hook_names(N_LAYERS))}, N_LAYERS
    )


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("blocks.0.attn.hook_z", "blocks.0.attn.hook_z"),
        (("pattern", 0), "blocks.0.attn.hook_pattern"),
        (("resid_post", -1), "blocks.3.hook_resid_post"),
        (("resid_pre", -4), "blocks.0.hook_resid_pre"),
        (("scale", -2, "ln1"), "blocks.2.ln1.hook_scale"),
        ("scale", "ln_final.hook_scale"),
        ("normalized", "ln_final.hook_normalized"),
        (("scale", 3, "ln1"), "blocks.3.ln1.hook_scale"),
        ("embed", "hook_embed"),
        (("embed",), "hook_embed"),
        ("pos_embed", "hook_pos_embed"),
        (("q", 2), "blocks.2.attn.hook_q"),
        (("attn_out", 1), "blocks.1.hook_attn_out"),
        (("mlp_out", 1), "blocks.1.hook_mlp_out"),
        (("post", 2), "blocks.2.mlp.hook_post"),
        (("attn", -1), "blocks.3.attn.hook_pattern"),
        ("k2", "blocks.2.attn.hook_k"),
        ("scale1ln2", "blocks.1.ln2.hook_scale"),
    ],
)
def test_cache_indexing(cache: lensd.ActivationCache, key: Any, name: str) -> None:
    assert cache[key] is cache.cache_dict[name]
    assert key in cache


def test_cache_mapping(cache: lensd.ActivationCache) -> None:
    names = _hook_names(N_LAYERS)
    assert len(cache) == len(names)
    assert list(cache) == names
    assert list(cache.keys()) == names
    assert [name for name, _ in cache.items()] == names
    assert "blocks.0.hook_resid_post" in cache
    assert ("pattern", N_LAYERS) not in cache
    assert "blocks.0.attn.hook_result" not in cache
    assert cache.get(("pattern", 1)) is cache.cache_dict["blocks.1.attn.hook_pattern"]
    assert repr(cache).startswith("ActivationCache with keys ['hook_embed', 'hook_pos_embed',")


def test_cache_missing_name_is_a_key_error_naming_it(cache: lensd.ActivationCache) -> None:
    with pytest.raises(KeyError, match=r"blocks\.4\.attn\.hook_pattern"):
        cache["pattern", 4]
    with pytest.raises(KeyError):
        cache[3]  # type: ignore[index]


# ----------------------------------------------------------------- JSON tensors


def test_json_tensor_with_non_finite_strings() -> None:
    array = lensd.decode_json_tensor(
        {"shape": [2, 2, 3], "dtype": "float32",
         "data": [[[0.5, "-inf", "-inf"], [1.0, 2.0, "-inf"]], [["nan", "inf", -3.25], [0, 1, 2]]]}
    )
    assert array.dtype == np.float32 and array.shape == (2, 2, 3)
    assert array[0, 0, 0] == 0.5 and array[1, 0, 2] == -3.25 and array[1, 1, 2] == 2.0
    assert np.isneginf(array[0, 0, 1:]).all() and np.isneginf(array[0, 1, 2])
    assert np.isnan(array[1, 0, 0]) and np.isposinf(array[1, 0, 1])
    assert np.isfinite(array).sum() == 7


@pytest.mark.parametrize(
    ("tensor", "dtype", "shape"),
    [
        ({"shape": [1, 3], "dtype": "int64", "data": [[50256, 15496, 995]]}, np.int64, (1, 3)),
        ({"shape": [2], "dtype": "float16", "data": [1.5, "-inf"]}, np.float16, (2,)),
        ({"shape": [], "dtype": "float32", "data": 3.5}, np.float32, ()),
        ({"shape": [0, 3], "dtype": "float32", "data": []}, np.float32, (0, 3)),
        ({"shape": [2, 1], "dtype": "F32", "data": [[1.0], ["nan"]]}, np.float32, (2, 1)),
        ({"shape": [2], "dtype": "I64", "data": [1, 2]}, np.int64, (2,)),
        ({"shape": [2], "dtype": "bool", "data": [True, False]}, np.bool_, (2,)),
    ],
)
def test_json_tensor_dtypes_and_shapes(tensor: dict, dtype: type, shape: tuple) -> None:
    array = lensd.decode_json_tensor(tensor)
    assert array.dtype == dtype and array.shape == shape


def test_json_tensor_exact_values() -> None:
    data = [[0.1, -2.5e-8], [3.4028234663852886e38, -0.0]]
    array = lensd.decode_json_tensor({"shape": [2, 2], "dtype": "float32", "data": data})
    np.testing.assert_array_equal(array, np.array(data, dtype=np.float32))
    assert np.signbit(array[1, 1])


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"shape": [2, 2], "dtype": "float32", "data": [1.0, 2.0, 3.0, 4.0]}, "shape"),
        ({"shape": [3], "dtype": "float32", "data": [1.0, 2.0]}, "shape"),
        ({"shape": [1], "dtype": "float32", "data": ["abc"]}, "dtype"),
        ({"shape": [1], "dtype": "int64", "data": ["-inf"]}, "dtype"),
        ({"shape": [1], "dtype": "bfloat16", "data": [1.0]}, "bfloat16"),
        ({"shape": [1], "dtype": "str", "data": ["a"]}, "'str'"),
    ],
)
def test_json_tensor_rejects_bad_tensors(tensor: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lensd.decode_json_tensor(tensor)


def test_json_body_decodes_tensors_at_any_depth() -> None:
    body = json.dumps({
        "tokens": {"shape": [1, 2], "dtype": "int64", "data": [[0, 7]]},
        "layers": [0, 1],
        "per_answer": [{"token": " Paris", "scores": {"shape": [1], "dtype": "float32", "data": ["-inf"]}}],
        "hook_points": [{"name": "hook_embed", "shape": ["batch", "pos", 64], "dtype": "F32"}],
    }).encode()
    data = decode_body("application/json; charset=utf-8", body)
    assert data["tokens"].dtype == np.int64 and data["tokens"].tolist() == [[0, 7]]
    assert data["layers"] == [0, 1]
    assert np.isneginf(data["per_answer"][0]["scores"][0]) and data["per_answer"][0]["token"] == " Paris"
    # a hook point's description has shape and dtype but no data: not a tensor
    assert data["hook_points"][0] == {"name": "hook_embed", "shape": ["batch", "pos", 64], "dtype": "F32"}


# ------------------------------------------------------------------ safetensors


def _safetensors_body(tensors: dict[str, np.ndarray], fields: dict[str, Any] | None) -> bytes:
    return save_safetensors(tensors, metadata=None if fields is None else {"lensd": json.dumps(fields)})


def test_safetensors_body() -> None:
    pattern = np.array([[[[1.0, 0.0], [0.25, 0.75]]]], dtype=np.float32)
    scores = np.array([[[[0.5, -np.inf], [1.0, 2.0]]]], dtype=np.float32)
    tensors = {
        "tokens": np.array([[50256, 15496]], dtype=np.int64),
        "logits": np.arange(2 * 5, dtype=np.float32).reshape(1, 2, 5),
        "blocks.0.attn.hook_pattern": pattern,
        "blocks.0.attn.hook_attn_scores": scores,
        "half": np.array([1.5, np.nan], dtype=np.float16),
        "loss": np.array(2.75, dtype=np.float32),
    }
    fields = {"model": "test", "str_tokens": [["<|endoftext|>", "Hello"]], "layers": [0]}
    data = lensd.decode_safetensors(_safetensors_body(tensors, fields))
    assert set(data) == set(tensors) | set(fields)
    for name, expected in tensors.items():
        assert data[name].dtype == expected.dtype and data[name].shape == expected.shape, name
        np.testing.assert_array_equal(data[name], expected)
    assert data["model"] == "test" and data["layers"] == [0]
    assert data["str_tokens"] == [["<|endoftext|>", "Hello"]]
    body = _safetensors_body(tensors, fields)
    assert decode_body("application/vnd.safetensors", body).keys() == data.keys()


def test_safetensors_body_keeps_the_body_order() -> None:
    """safetensors.numpy.save sorts the tensors and its loader forgets the order; the
    daemon's order (the model's hook order) must survive, so this body is made by hand."""
    names = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_q", "blocks.0.attn.hook_k",
             "logits"]
    header, data = {}, b""
    for i, name in enumerate(names):
        raw = np.full(3, i, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": [3], "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    decoded = lensd.decode_safetensors(struct.pack("<Q", len(header_bytes)) + header_bytes + data)
    assert list(decoded) == names
    assert [int(array[0]) for array in decoded.values()] == list(range(len(names)))


def test_safetensors_body_without_lensd_metadata() -> None:
    data = lensd.decode_safetensors(_safetensors_body({"x": np.zeros((2, 3), dtype=np.float32)}, None))
    assert list(data) == ["x"] and data["x"].shape == (2, 3)


@pytest.mark.parametrize("body", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{}"])
def test_safetensors_body_truncated(body: bytes) -> None:
    with pytest.raises(ValueError, match="safetensors"):
        lensd.decode_safetensors(body)


# ----------------------------------------------------------------------- errors


def test_error_formatting() -> None:
    error = lensd.LensdError(400, "bad_request", "prompt is empty", "prompts[2]")
    assert str(error) == "400 bad_request: prompt is empty (field: prompts[2])"
    assert (error.status, error.code, error.message, error.field) == (
        400, "bad_request", "prompt is empty", "prompts[2]")
    assert str(lensd.LensdError(404, "not_found", "no model 'x'")) == "404 not_found: no model 'x'"
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.field == "prompts[2]"


def _raw(status: int, body: bytes, headers: dict[str, str]) -> urllib3.HTTPResponse:
    return urllib3.HTTPResponse(body=io.BytesIO(body), headers=headers, status=status, preload_content=False)


def _response(status: int, body: bytes, headers: dict[str, str]) -> requests.Response:
    request = requests.Request("GET", "http://lensd.test/x").prepare()
    return HTTPAdapter().build_response(request, _raw(status, body, headers))


def test_error_from_response() -> None:
    body = {"error": {"code": "rate_limited", "message": "slow down", "field": None}}
    headers = {"Content-Type": "application/json", "Retry-After": "2", "X-Request-Id": "r-7"}
    error = lensd.LensdError.from_response(_response(429, json.dumps(body).encode(), headers))
    assert type(error) is lensd.RateLimited and str(error) == "429 rate_limited: slow down"
    assert (error.retry_after, error.request_id) == (2.0, "r-7")


def test_error_from_response_that_is_not_lensd_json() -> None:
    response = _response(413, b"<html>Request too large</html>", {"Content-Type": "text/html"})
    error = lensd.LensdError.from_response(response)
    assert type(error) is lensd.TooLarge and str(error) == "413 too_large: <html>Request too large</html>"
    assert error.retry_after is None and error.request_id is None


# ------------------------------------------- the client's requests, on a fake transport

INFO = {
    "name": "test",
    "config": {"n_layers": 2, "d_model": 4, "n_heads": 2, "d_vocab": 6, "d_vocab_out": 6,
               "default_prepend_bos": True},
    "tokens": {"bos_id": 0, "eos_id": 0, "pad_id": 0},
    "hook_points": [{"name": n, "shape": ["batch", "pos", 4], "dtype": "F32"} for n in _hook_names(2)],
}


class FakeDaemon(HTTPAdapter):
    """Answers each (method, path) with a canned reply, and records every request."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: dict[tuple[str, str], tuple[int, str, bytes]] = {}
        self.requests: list[requests.PreparedRequest] = []

    def reply(self, method: str, path: str, body: dict[str, Any] | bytes, status: int = 200) -> None:
        if isinstance(body, bytes):
            self.replies[method, path] = (status, "application/vnd.safetensors", body)
        else:
            self.replies[method, path] = (status, "application/json", json.dumps(body).encode())

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.requests.append(request)
        path = request.path_url
        no_route = {"error": {"code": "not_found", "message": f"no route {request.method} {path}"}}
        status, content_type, body = self.replies.get(
            (request.method, path), (404, "application/json", json.dumps(no_route).encode()))
        return self.build_response(request, _raw(status, body, {"Content-Type": content_type}))

    def body(self, index: int = -1) -> dict[str, Any]:
        return json.loads(self.requests[index].body)


@pytest.fixture
def fake() -> FakeDaemon:
    return FakeDaemon()


@pytest.fixture
def model(fake: FakeDaemon) -> lensd.Model:
    client = lensd.Client("http://lensd.test/", token="secret")
    client._session.mount("http://lensd.test", fake)
    fake.reply("GET", "/v1/models/test", INFO)
    return client.model("test")


def test_models_and_model(fake: FakeDaemon, model: lensd.Model) -> None:
    assert (model.name, model.cfg.n_layers, model.cfg.d_model) == ("test", 2, 4)
    assert model.info is not None and model.hook_points == _hook_names(2)
    request = fake.requests[-1]
    assert request.url == "http://lensd.test/v1/models/test"
    assert request.headers["Authorization"] == "Bearer secret"
    assert request.headers["Accept"] == "application/json"
    fake.reply("GET", "/v1/models", {"models": [{"name": "test"}]})
    assert model.client.models() == [{"name": "test"}]
    with pytest.raises(lensd.LensdError) as caught:
        model.client.model("a/b")
    assert caught.value.status == 404 and fake.requests[-1].path_url == "/v1/models/a%2Fb"
    assert type(caught.value) is lensd.NotFound


TOKENIZED = {
    "tokens": [[0, 3, 4], [0, 5, 0]],
    "str_tokens": [["<bos>", " a", " b"], ["<bos>", " c", "<bos>"]],
    "attention_mask": [[1, 1, 1], [1, 1, 0]],
}


def test_tokens(fake: FakeDaemon, model: lensd.Model) -> None:
    fake.reply("POST", "/v1/models/test/tokenize", TOKENIZED)
    tokens = model.to_tokens([" a b", " c"], padding_side="right")
    assert tokens.dtype == np.int64 and tokens.shape == (2, 3)
    assert fake.body() == {"prompts": [" a b", " c"], "padding_side": "right"}
    assert model.to_str_tokens([" a b", " c"], prepend_bos=True) == [["<bos>", " a", " b"], ["<bos>", " c"]]
    assert fake.body() == {"prompts": [" a b", " c"], "prepend_bos": True}
    fake.reply("POST", "/v1/models/test/tokenize", {k: v[:1] for k, v in TOKENIZED.items()})
    assert model.to_str_tokens(" a b") == ["<bos>", " a", " b"]
    assert fake.body() == {"prompt": " a b"}
    with pytest.raises(ValueError, match="not a single token"):
        model.to_single_token(" a b")
    assert fake.body() == {"prompt": " a b", "prepend_bos": False}
    one_token = {"tokens": [[3]], "str_tokens": [[" a"]], "attention_mask": [[1]]}
    fake.reply("POST", "/v1/models/test/tokenize", one_token)
    assert model.to_single_token(" a") == 3


def test_detokenize(fake: FakeDaemon, model: lensd.Model) -> None:
    fake.reply("POST", "/v1/models/test/detokenize", {"text": ["<bos>", " a"]})
    assert model.to_str_tokens(np.array([[0, 3]])) == ["<bos>", " a"]
    assert fake.body() == {"tokens": [[0], [3]]}
    fake.reply("POST", "/v1/models/test/detokenize", {"text": "<bos> a"})
    assert model.to_string(np.array([0, 3])) == "<bos> a"
    assert fake.body() == {"tokens": [0, 3]}
    model.to_string([[0, 3], [0, 4]])
    assert fake.body() == {"tokens": [[0, 3], [0, 4]]}


def test_forward(fake: FakeDaemon, model: lensd.Model) -> None:
    logits = np.random.default_rng(0).normal(size=(1, 3, 6)).astype(np.float32)
    fake.reply("POST", "/v1/models/test/logits", _safetensors_body(
        {"tokens": np.array([[0, 3, 4]]), "logits": logits, "loss": np.array(1.5, dtype=np.float32)}, {}))
    np.testing.assert_array_equal(model(np.array([[0, 3, 4]])), logits)
    assert fake.body() == {"tokens": [[0, 3, 4]]}
    assert fake.requests[-1].headers["Accept"] == "application/vnd.safetensors"
    assert model(" a b", return_type="loss") == np.float32(1.5)
    assert fake.body() == {"prompt": " a b", "loss": True}
    both = model([[0, 3, 4], [0, 5]], return_type="both")
    assert isinstance(both, lensd.Output) and both.logits.shape == (1, 3, 6) and float(both.loss) == 1.5
    assert fake.body() == {"tokens": [[0, 3, 4], [0, 5]], "loss": True}
    assert model(" a b", return_type=None) is None
    with pytest.raises(ValueError, match="return_type"):
        model(" a b", return_type="probs")  # type: ignore[arg-type]


def test_forward_loss_per_token(fake: FakeDaemon, model: lensd.Model) -> None:
    per_token = np.array([[0.5, 1.0]], dtype=np.float32)
    fake.reply("POST", "/v1/models/test/logits", _safetensors_body(
        {"logits": np.zeros((1, 3, 6), dtype=np.float32)}, {"per_token_loss": per_token.tolist()}))
    np.testing.assert_array_equal(model(" a b", return_type="loss", loss_per_token=True), per_token)
    assert fake.body() == {"prompt": " a b", "per_token_loss": True}


@pytest.fixture
def cached(fake: FakeDaemon) -> None:
    tensors = {
        "tokens": np.array([[0, 3, 4]]),
        "logits": np.zeros((1, 3, 6), dtype=np.float32),
        "blocks.0.attn.hook_pattern": np.full((1, 2, 3, 3), 0.0, dtype=np.float32),
        "blocks.1.attn.hook_pattern": np.full((1, 2, 3, 3), 1.0, dtype=np.float32),
    }
    fake.reply("POST", "/v1/models/test/run_with_cache", _safetensors_body(tensors, {"model": "test"}))
    fake.reply("POST", "/v1/models/test/tokenize", {k: v[:1] for k, v in TOKENIZED.items()})


@pytest.mark.parametrize(
    ("kwargs", "fields"),
    [
        ({}, {}),
        ({"names_filter": "blocks.*.attn.hook_pattern"}, {"names_filter": "blocks.*.attn.hook_pattern"}),
        ({"names_filter": "blocks.0.attn.hook_pattern"}, {"names": ["blocks.0.attn.hook_pattern"]}),
        ({"names_filter": ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]},
         {"names": ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]}),
        ({"names_filter": ["hook_embed", "blocks.?.attn.hook_pattern"]},
         {"names_filter": ["hook_embed", "blocks.?.attn.hook_pattern"]}),
        ({"names_filter": lambda name: name.endswith("hook_pattern")},
         {"names": ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]}),
        ({"pos_slice": -1}, {"positions": [-1]}),
        ({"pos_slice": [0, 2]}, {"positions": [0, 2]}),
        ({"pos_slice": np.array([True, False, True])}, {"positions": [0, 2]}),
        ({"pos_slice": slice(1, None)}, {"positions": [1, 2]}),
        ({"pos_slice": (1,)}, {"positions": [0]}),
        ({"dtype": np.float16}, {"dtype": "float16"}),
        ({"prepend_bos": False, "padding_side": "left"}, {"prepend_bos": False, "padding_side": "left"}),
    ],
)
def test_run_with_cache(
    fake: FakeDaemon, model: lensd.Model, cached: None, kwargs: dict, fields: dict
) -> None:
    logits, cache = model.run_with_cache(" a b", **kwargs)
    assert fake.requests[-1].path_url == "/v1/models/test/run_with_cache"
    assert fake.requests[-1].headers["Accept"] == "application/vnd.safetensors"
    assert fake.body() == {"prompt": " a b", **fields}
    assert logits.shape == (1, 3, 6)
    assert list(cache) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    assert cache["pattern", -1][0, 0, 0, 0] == 1.0 and cache["attn", 0].shape == (1, 2, 3, 3)
    if isinstance(kwargs.get("pos_slice"), slice):  # a slice is resolved against the tokenized length
        assert json.loads(fake.requests[-2].body) == {"prompt": " a b"}


def test_test_prompt_prints_text(
    fake: FakeDaemon, model: lensd.Model, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "Tokenized prompt: ['<bos>', ' a']\nTokenized answer: [' b']\n"
    fake.reply("POST", "/v1/models/test/test_prompt", {"prompt_str_tokens": ["<bos>", " a"], "text": text})
    data = model.test_prompt(" a", "b", top_k=3)
    assert data["prompt_str_tokens"] == ["<bos>", " a"] and capsys.readouterr().out == text
    assert fake.body() == {"prompt": " a", "answer": "b", "prepend_space_to_answer": True, "top_k": 3}
    model.test_prompt(" a", "b", print_details=False)
    assert capsys.readouterr().out == ""


def test_attention(fake: FakeDaemon, model: lensd.Model) -> None:
    patterns = np.full((1, 1, 2, 2), 0.5, dtype=np.float32)
    fake.reply("POST", "/v1/models/test/attention", _safetensors_body(
        {"patterns": patterns, "tokens": np.array([[0, 3]])},
        {"str_tokens": ["<bos>", " a"], "layers": [1], "heads": [0]}))
    data = model.attention(" a", layers=[1], heads=range(1))
    np.testing.assert_array_equal(data["patterns"], patterns)
    assert data["str_tokens"] == ["<bos>", " a"] and data["layers"] == [1]
    assert fake.body() == {"prompt": " a", "layers": [1], "heads": [0]}


def test_error_answer_raises(fake: FakeDaemon, model: lensd.Model) -> None:
    fake.reply("POST", "/v1/models/test/run_with_cache", {"error": {
        "code": "bad_request", "message": "unknown hook point; did you mean blocks.0.attn.hook_pattern?",
        "field": "names[0]"}}, status=400)
    with pytest.raises(lensd.BadRequest) as caught:
        model.run_with_cache(" a", names_filter="blocks.0.attn.hook_patern")
    assert str(caught.value) == ("400 bad_request: unknown hook point; did you mean "
                                 "blocks.0.attn.hook_pattern? (field: names[0])")


# ---------------------------------------------------------------- options: argument mapping

FOLDED_INFO = {**INFO, "source": "models/test", "processing": "fold_ln,center_writing_weights",
               "n_params": 123, "device": {"name": "cpu (2 cores)"},
               "config": {**INFO["config"], "normalization_type": "LNPre", "d_vocab_out": 6}}


@pytest.mark.parametrize(
    ("args", "kwargs", "spec"),
    [
        ((), {}, None),
        (("none",), {}, "none"),
        (("default",), {}, "default"),
        (("fold_ln,center_unembed",), {}, "fold_ln,center_unembed"),
        ((["fold_ln", "center_unembed"],), {}, "fold_ln,center_unembed"),
        (([],), {}, "none"),
        # TL's from_pretrained flags: the ones not given take from_pretrained's defaults
        ((), {"fold_ln": False}, "center_writing_weights,center_unembed,fold_value_biases"),
        ((), {"refactor_factored_attn_matrices": True},
         "fold_ln,center_writing_weights,center_unembed,fold_value_biases,refactor_factored_attn_matrices"),
        ((), {"fold_ln": False, "center_writing_weights": False, "center_unembed": False,
              "fold_value_biases": False}, "none"),
        ((), {"fold_ln": None}, None),
        (({"center_unembed": False},), {}, "fold_ln,center_writing_weights,fold_value_biases"),
    ],
)
def test_processing_spec(args: tuple, kwargs: dict, spec: str | None) -> None:
    assert lensd.processing_spec(*args, **kwargs) == spec


def test_processing_spec_refuses() -> None:
    with pytest.raises(TypeError, match="fold_lm"):
        lensd.processing_spec(fold_lm=False)
    with pytest.raises(ValueError, match="not both"):
        lensd.processing_spec("none", fold_ln=False)


def test_processing_goes_in_every_model_request_but_tokenizing(fake: FakeDaemon, model: lensd.Model) -> None:
    logits = _safetensors_body({"logits": np.zeros((1, 3, 6), dtype=np.float32)}, {})
    fake.reply("POST", "/v1/models/test/logits", logits)
    fake.reply("POST", "/v1/models/test/tokenize", {k: v[:1] for k, v in TOKENIZED.items()})
    model(" a", fold_ln=False)
    assert fake.body()["processing"] == "center_writing_weights,center_unembed,fold_value_biases"
    model(" a")
    assert "processing" not in fake.body()
    unprocessed = model.with_processing("none")
    assert unprocessed.processing == "none" and model.processing is None
    unprocessed(" a")
    assert fake.body()["processing"] == "none"
    unprocessed(" a", processing="fold_ln")  # the request's own wins
    assert fake.body()["processing"] == "fold_ln"
    unprocessed.to_tokens(" a")
    assert "processing" not in fake.body()
    with pytest.raises(TypeError, match="fold_lm"):
        model(" a", fold_lm=False)
    bound = model.client.model("test", fold_ln=False, center_unembed=False)
    assert bound.processing == "center_writing_weights,fold_value_biases"
    fake.reply("POST", "/v1/models/test/attention", _safetensors_body(
        {"patterns": np.zeros((1, 1, 1, 1), dtype=np.float32)}, {}))
    bound.attention(" a")
    assert fake.body()["processing"] == "center_writing_weights,fold_value_biases"


def test_config_has_transformer_lens_fields(fake: FakeDaemon, model: lensd.Model) -> None:
    fake.reply("GET", "/v1/models/test", FOLDED_INFO)
    folded = model.client.model("test")
    cfg = folded.cfg
    assert (cfg.model_name, cfg.tokenizer_name, cfg.n_params, cfg.device, cfg.dtype) == (
        "test", "models/test", 123, "cpu (2 cores)", "float32")
    assert cfg["n_layers"] == 2 and cfg.to_dict()["d_model"] == 4
    assert cfg.normalization_type == "LNPre"
    # as TL's cfg after from_pretrained(fold_ln=False) / with fold_ln
    assert folded.with_processing(fold_ln=False).cfg.normalization_type == "LN"
    assert folded.with_processing("none").cfg.normalization_type == "LN"
    assert folded.with_processing("default").cfg.normalization_type == "LNPre"
    assert model.cfg.d_vocab_out == 6 and model.cfg.model_name == "test"


def test_json_encoding_of_numpy_and_torch_values() -> None:
    import torch

    from lensd.tensors import encode_json

    body = {
        "tokens": np.array([[1, 2]], dtype=np.int32),
        "id": np.int64(7),
        "flag": np.bool_(True),
        "value": np.float32(0.5),
        "torch": torch.tensor([[3, 4]]),
        "torch_float": torch.tensor([0.25, 1.5], dtype=torch.bfloat16),
        "scalar": torch.tensor(2.0),
    }
    assert json.loads(encode_json(body)) == {
        "tokens": [[1, 2]], "id": 7, "flag": True, "value": 0.5, "torch": [[3, 4]],
        "torch_float": [0.25, 1.5], "scalar": 2.0}
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_json({"x": object()})


def test_numpy_and_torch_inputs_become_json(fake: FakeDaemon, model: lensd.Model) -> None:
    import torch

    fake.reply("POST", "/v1/models/test/logits", _safetensors_body(
        {"logits": np.zeros((1, 3, 6), dtype=np.float32)}, {}))
    for tokens in (np.array([[0, 3, 4]]), torch.tensor([[0, 3, 4]]), torch.tensor([0, 3, 4], dtype=torch.int32),
                   [np.int64(0), np.int64(3), np.int64(4)]):
        model(tokens)
        assert fake.body() == {"tokens": [[0, 3, 4]]}
        assert fake.requests[-1].headers["Content-Type"] == "application/json"
    with pytest.raises(TypeError, match="integers"):
        model(torch.tensor([[0.5, 1.0]]))
    fake.reply("POST", "/v1/models/test/run_with_hooks", _safetensors_body(
        {"logits": np.zeros((1, 3, 6), dtype=np.float32)}, {}))
    model.run_with_hooks(" a", [{"name": "hook_embed", "op": "set", "value": torch.ones(2),
                                 "positions": np.array([0, -1])}])
    assert fake.body()["hooks"] == [{"name": "hook_embed", "op": "set", "value": [1.0, 1.0], "positions": [0, -1]}]


def test_forward_extras(fake: FakeDaemon, model: lensd.Model) -> None:
    ids = np.array([[[5, 1]]])
    fake.reply("POST", "/v1/models/test/logits", _safetensors_body({
        "logits": np.ones((1, 1, 6), dtype=np.float32), "log_probs": np.full((1, 1, 6), -2.0, dtype=np.float32),
        "top_k_ids": ids, "top_k_logits": np.array([[[2.0, 1.0]]], dtype=np.float32),
        "top_k_probs": np.array([[[0.5, 0.2]]], dtype=np.float32)}, {"loss": 1.25}))
    top = model(" a", positions=-1, top_k=2)
    assert isinstance(top, lensd.TopK) and top.ids.tolist() == [[[5, 1]]] and top.probs[0, 0, 0] == 0.5
    assert fake.body() == {"prompt": " a", "positions": [-1], "top_k": 2}
    assert model(" a", log_probs=True)[0, 0, 0] == -2.0
    assert fake.body() == {"prompt": " a", "log_probs": True}
    both = model(" a", return_type="both", top_k=2)
    assert isinstance(both.logits, lensd.TopK) and float(both.loss) == 1.25
    assert fake.body() == {"prompt": " a", "top_k": 2, "loss": True}
    with pytest.raises(ValueError, match="not both"):
        model(" a", top_k=2, log_probs=True)


def test_run_with_cache_return_type_none_and_batch(fake: FakeDaemon, model: lensd.Model) -> None:
    fake.reply("POST", "/v1/models/test/run_with_cache", _safetensors_body(
        {"tokens": np.array([[0, 3]]), "hook_embed": np.ones((1, 2, 4), dtype=np.float32)}, {}))
    logits, cache = model.run_with_cache(" a", names_filter="hook_embed", return_type=None, batch=[0])
    assert logits is None and list(cache) == ["hook_embed"]
    assert fake.body() == {"prompt": " a", "names": ["hook_embed"], "logits": False, "batch": [0]}
    _, cache = model.run_with_cache(" a", names_filter="hook_embed", return_type=None, remove_batch_dim=True)
    assert cache["hook_embed"].shape == (2, 4)
    with pytest.raises(ValueError, match="return_type"):
        model.run_with_cache(" a", return_type="both")  # type: ignore[arg-type]


def test_kept_cache(fake: FakeDaemon, model: lensd.Model) -> None:
    handle = {"cache_id": "c1", "model": "test", "ttl_s": 600.0, "processing": "fold_ln",
              "tensors": {"tokens": [1, 3], "logits": [1, 3, 6], "blocks.1.attn.hook_pattern": [1, 2, 3, 3],
                          "blocks.0.hook_resid_post": [1, 3, 4]}}
    fake.reply("POST", "/v1/models/test/run_with_cache", handle)
    pattern = np.arange(18, dtype=np.float32).reshape(1, 2, 3, 3)
    fake.reply("GET", "/v1/caches/c1/blocks.1.attn.hook_pattern",
               _safetensors_body({"blocks.1.attn.hook_pattern": pattern}, {"cache_id": "c1"}))
    fake.reply("GET", "/v1/caches/c1/blocks.0.hook_resid_post?batch=0&positions=-1",
               _safetensors_body({"blocks.0.hook_resid_post": np.ones((1, 1, 4), dtype=np.float32)}, {}))
    fake.reply("DELETE", "/v1/caches/c1", {"deleted": "c1"})
    logits, kept = model.run_with_cache(" a", keep=True, return_type=None)
    assert logits is None and fake.body() == {"prompt": " a", "keep": True, "logits": False}
    assert fake.requests[-1].headers["Accept"] == "application/json"
    assert list(kept) == ["blocks.1.attn.hook_pattern", "blocks.0.hook_resid_post"] and len(kept) == 2
    assert kept.shapes["logits"] == (1, 3, 6) and kept.processing == "fold_ln"
    n_requests = len(fake.requests)
    with kept:
        np.testing.assert_array_equal(kept["pattern", -1], pattern)
        assert kept["attn", 1] is kept["blocks.1.attn.hook_pattern"]  # read once
        assert len(fake.requests) == n_requests + 1
        assert kept.fetch(("resid_post", 0), batch=0, positions=[-1]).shape == (1, 1, 4)
        assert ("resid_post", 0) in kept and ("resid_post", 1) not in kept
        with pytest.raises(KeyError):
            kept["resid_post", 1]
    assert fake.requests[-1].method == "DELETE" and fake.requests[-1].path_url == "/v1/caches/c1"
    with pytest.raises(ValueError, match="kept"):
        model.run_with_cache(" a", keep=True, remove_batch_dim=True)


def test_generate_options(fake: FakeDaemon, model: lensd.Model) -> None:
    # prompts [0, 3] and [0, 3, 4]; continuations [5] (then EOS 0) and [1, 2]
    fake.reply("POST", "/v1/models/test/generate",
               {"tokens": [[0, 3, 5, 0], [0, 3, 4, 1, 2]], "text": [" a c", " a b d e"]})
    fake.reply("POST", "/v1/models/test/tokenize", {
        "tokens": [[0, 3, 0], [0, 3, 4]], "str_tokens": [["", "", ""], ["", "", ""]],
        "attention_mask": [[1, 1, 0], [1, 1, 1]]})
    assert model.generate([" a", " a b"], max_new_tokens=2, verbose=False) == [" a c", " a b d e"]
    assert fake.body() == {"prompts": [" a", " a b"], "max_new_tokens": 2, "do_sample": False,
                           "temperature": 1.0, "seed": 0, "stop_at_eos": True}
    tokens = model.generate([" a", " a b"], max_new_tokens=2, return_type="tokens", verbose=False)
    # as TL's: left-padded prompts (pad 0), a finished row filled with EOS (0)
    assert tokens.tolist() == [[0, 0, 3, 5, 0], [0, 3, 4, 1, 2]]
    # token input: tokens back; an eos_token_id other than the model's is applied here
    fake.reply("POST", "/v1/models/test/generate", {"tokens": [[3, 4, 5, 1, 2]], "text": [None]})
    got = model.generate(np.array([[3, 4]]), max_new_tokens=3, eos_token_id=1, top_k=5, verbose=False)
    assert got.tolist() == [[3, 4, 5, 1]]
    assert fake.body()["stop_at_eos"] is False and fake.body()["top_k"] == 5
    assert fake.body()["tokens"] == [[3, 4]]
    fake.reply("POST", "/v1/models/test/detokenize", {"text": ["x"]})
    assert model.generate(np.array([[3, 4]]), eos_token_id=[1, 2], return_type="str", verbose=False) == "x"
    assert fake.body() == {"tokens": [[3, 4, 5, 1]]}  # EOS fills (0) skipped as special
    for bad, match in (({"top_p": 0.5}, "top_p"), ({"freq_penalty": 0.1}, "freq_penalty"),
                       ({"return_type": "embeds"}, "return_type")):
        with pytest.raises(ValueError, match=match):
            model.generate(" a", **bad)


def test_attention_of_token_ids(fake: FakeDaemon, model: lensd.Model) -> None:
    import torch

    fake.reply("POST", "/v1/models/test/attention", _safetensors_body(
        {"patterns": np.zeros((1, 1, 2, 2), dtype=np.float32)}, {}))
    for ids in ([0, 3], np.array([[0, 3]]), torch.tensor([0, 3])):
        model.attention(ids, layers=1, heads=np.array([0]))
        assert fake.body() == {"tokens": [[0, 3]], "layers": [1], "heads": [0]}
    model.attention(" a", prepend_bos=False)
    assert fake.body() == {"prompt": " a", "prepend_bos": False}
    with pytest.raises(ValueError, match="one prompt"):
        model.attention([" a", " b"])


def test_progress_is_off_when_not_interactive() -> None:
    # pytest captures stderr: not a terminal, and no Jupyter kernel
    assert lensd.progress.interactive() is False
    assert len(lensd.progress.new_progress_id()) <= 64
