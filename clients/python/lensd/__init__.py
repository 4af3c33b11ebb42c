"""lensd's notebook client: TransformerLens-style analysis from a lensd daemon, as numpy arrays.

    import lensd
    client = lensd.Client("http://127.0.0.1:8080")
    model = client.model("gpt2-small")
    logits, cache = model.run_with_cache("Hello there", names_filter="blocks.*.attn.hook_pattern")
    cache["pattern", 0].shape   # (1, n_heads, pos, pos)

The HTTP contract is docs/API.md in the lensd repository.
"""

from .cache import ActivationCache, get_act_name
from .client import PROCESSING_FLAGS, Client, Config, KeptCache, Model, Output, Patched, TopK, processing_spec
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
from .factored import FactoredMatrix
from .tensors import decode_json_tensor, decode_safetensors
from .weights import WeightsMixin

__version__ = "0.1.0"

__all__ = [
    "ERRORS",
    "PROCESSING_FLAGS",
    "ActivationCache",
    "BadRequest",
    "Cancelled",
    "Client",
    "ClientClosed",
    "Config",
    "Conflict",
    "FactoredMatrix",
    "Forbidden",
    "InsufficientStorage",
    "KeptCache",
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
    "TopK",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "UnsupportedMediaType",
    "WeightsMixin",
    "__version__",
    "decode_json_tensor",
    "decode_safetensors",
    "error_class",
    "get_act_name",
    "processing_spec",
]
