"""Decoding of lensd's response bodies, with their tensors as numpy arrays.

docs/API.md, "Tensors": a JSON body holds each tensor as ``{"shape",
"dtype", "data"}`` with nested lists (non-finite values as the strings
``"-inf"``, ``"inf"`` and ``"nan"``); a safetensors body holds every tensor
of the response, and the response's other fields as JSON in the
``__metadata__`` entry ``"lensd"``.

Also the encoding of request bodies: :func:`encode_json` writes numpy
scalars and arrays, and torch tensors, as the plain numbers and nested lists
of the JSON they stand for, so that what the client answered can be given
back as input. torch is never imported here: a tensor is recognised by its
type's module.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

JSON_TYPE = "application/json"
SAFETENSORS_TYPE = "application/vnd.safetensors"

# safetensors' dtype names, which lensd also uses (hook points' "dtype").
_SAFETENSORS_DTYPES = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "F16": np.float16,
    "U32": np.uint32,
    "I32": np.int32,
    "F32": np.float32,
    "U64": np.uint64,
    "I64": np.int64,
    "F64": np.float64,
}
_TENSOR_KEYS = frozenset({"shape", "dtype", "data"})


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a tensor's dtype name, numpy's (``"float32"``) or safetensors' (``"F32"``).

    Raises:
        ValueError: for a name numpy has no numeric dtype for (``"bfloat16"``, ``"str"``).
    """
    if name in _SAFETENSORS_DTYPES:
        return np.dtype(_SAFETENSORS_DTYPES[name])
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise ValueError(f"unsupported tensor dtype {name!r}")
    return dtype


def is_json_tensor(value: Any) -> bool:
    """Whether a decoded JSON value is a tensor object ``{"shape", "dtype", "data"}``."""
    return (
        isinstance(value, dict)
        and _TENSOR_KEYS <= value.keys()
        and isinstance(value["shape"], list)
        and isinstance(value["dtype"], str)
    )


def decode_json_tensor(tensor: dict[str, Any]) -> np.ndarray:
    """The numpy array of a JSON tensor ``{"shape": [..], "dtype": "float32", "data": nested lists}``.

    The strings ``"-inf"``, ``"inf"`` and ``"nan"`` in ``data`` become those
    floats. ``data``'s nesting must match ``shape`` (an empty tensor may be
    given as ``[]`` whatever its shape).

    Raises:
        ValueError: for an unsupported dtype, or data that does not fit the dtype or shape.
    """
    dtype = numpy_dtype(tensor["dtype"])
    shape = tuple(int(n) for n in tensor["shape"])
    try:
        # numpy parses the strings "-inf", "inf" and "nan" into floats itself.
        array = np.asarray(tensor["data"], dtype=dtype)
    except ValueError as e:
        raise ValueError(f"tensor data does not fit dtype {tensor['dtype']!r}: {e}") from None
    if array.shape != shape:
        if array.size != 0 or math.prod(shape) != 0:
            raise ValueError(f"tensor data has shape {list(array.shape)}, not {list(shape)}")
        array = array.reshape(shape)
    return array


def decode_json(value: Any) -> Any:
    """A decoded JSON value with every tensor object in it (at any depth) replaced by its array."""
    if is_json_tensor(value):
        return decode_json_tensor(value)
    if isinstance(value, dict):
        return {key: decode_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_json(item) for item in value]
    return value


def decode_safetensors(body: bytes | bytearray) -> dict[str, Any]:
    """The fields of a safetensors response: the JSON fields of ``__metadata__["lensd"]``, then its
    tensors in the order they lie in the body, as arrays over the body's memory (no copy; writable
    when the body is a bytearray).

    Raises:
        ValueError: when the body is not a safetensors file.
    """
    if len(body) < 8:
        raise ValueError("safetensors body shorter than its 8-byte header length")
    (header_len,) = struct.unpack_from("<Q", body)
    if 8 + header_len > len(body):
        raise ValueError(f"safetensors header of {header_len} bytes overruns a {len(body)}-byte body")
    header = json.loads(body[8 : 8 + header_len])
    metadata = header.pop("__metadata__", None) or {}
    fields = decode_json(json.loads(metadata["lensd"])) if "lensd" in metadata else {}
    data_start = 8 + header_len
    # In the body's order (lensd writes hook points in the model's order).
    for name in sorted(header, key=lambda name: header[name]["data_offsets"][0]):
        info = header[name]
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
        begin, end = info["data_offsets"]
        count = int(np.prod(info["shape"], dtype=np.int64))
        if data_start + end > len(body) or end - begin != count * dtype.itemsize:
            raise ValueError(f"safetensors tensor {name} does not fit the body")
        fields[name] = np.frombuffer(body, dtype=dtype, count=count,
                                     offset=data_start + begin).reshape(info["shape"])
    return fields


def as_numpy(value: Any) -> Any:
    """A torch tensor as a numpy array (detached, on the CPU; bfloat16 as float32), anything
    else as it is. Imports nothing: a tensor is recognised by its type's module, so torch
    stays optional."""
    if type(value).__module__.split(".", 1)[0] == "torch" and hasattr(value, "detach"):
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            tensor = tensor.float()
        return tensor.numpy()
    return value


def _json_default(value: Any) -> Any:
    """json.dumps's fallback: numpy arrays and torch tensors as nested lists, numpy scalars
    (and 0-d tensors) as Python numbers.

    Raises:
        TypeError: for any other object, as json.dumps does.
    """
    value = as_numpy(value)
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encode_json(body: Any) -> bytes:
    """A request body as compact UTF-8 JSON, numpy and torch values included (:func:`_json_default`).

    Non-finite floats are written as Python's ``NaN``/``Infinity``, which are not JSON:
    lensd answers such a body with a 400.
    """
    return json.dumps(body, default=_json_default, separators=(",", ":")).encode()


def decode_body(content_type: str, body: bytes | bytearray) -> dict[str, Any]:
    """The fields of a 2xx response body: safetensors by its media type, JSON otherwise."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == SAFETENSORS_TYPE:
        return decode_safetensors(body)
    return decode_json(json.loads(body))
