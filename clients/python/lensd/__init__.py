"""lensd's notebook client: TransformerLens-style analysis from a lensd daemon, as numpy arrays.

    import lensd
    client = lensd.Client("http://127.0.0.1:8080")
    model = client.model("gpt2-small")
    logits, cache = model.run_with_cache("Hello there", names_filter="blocks.*.attn.hook_pattern")
    cache["pattern", 0].shape   # (1, n_heads, pos, pos)

The HTTP contract is docs/API.md in the lensd repository.
"""

from .cache import ActivationCache, get_act_name
from .client import Client, Model, Output, Patched
from .errors import (
    ERRORS,
    BadRequest,
    Cancelled,
    ClientClosed,
    Conflict,
    Forbidden,
    InsufficientStorage,
    Internal,
    LensdConnectionError,
    LensdError,
    LensdException,
    LensdTimeout,
    LensdTransportError,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
    error_class,
)
from .tensors import decode_json_tensor, decode_safetensors

__version__ = "0.1.0"

__all__ = [
    "ERRORS",
    "ActivationCache",
    "BadRequest",
    "Cancelled",
    "Client",
    "ClientClosed",
    "Conflict",
    "Forbidden",
    "InsufficientStorage",
    "Internal",
    "LensdConnectionError",
    "LensdError",
    "LensdException",
    "LensdTimeout",
    "LensdTransportError",
    "MethodNotAllowed",
    "Model",
    "NotAcceptable",
    "NotFound",
    "Output",
    "Patched",
    "RateLimited",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "UnsupportedMediaType",
    "__version__",
    "decode_json_tensor",
    "decode_safetensors",
    "error_class",
    "get_act_name",
]
