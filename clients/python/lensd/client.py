"""The HTTP client of lensd and its TransformerLens-like model handle."""

from __future__ import annotations

import contextlib
import numbers
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any, Literal, NamedTuple, TypeAlias
from urllib.parse import quote

import numpy as np
import numpy.typing as npt
import requests
import urllib3

from .cache import ActivationCache, CacheKey, get_act_name
from .errors import LensdConnectionError, LensdError, LensdTimeout, NotFound, Unavailable
from .progress import ProgressBar, interactive, new_progress_id
from .tensors import JSON_TYPE, SAFETENSORS_TYPE, as_numpy, decode_body, encode_json
from .weights import WeightsMixin

# Prompts: one text, a list of texts (a padded batch), or token ids ([pos] or
# [batch, pos]; a list of rows may be ragged, and is padded like texts).
PromptInput: TypeAlias = str | Sequence[str] | Sequence[Sequence[int]] | npt.ArrayLike
# Which hook points to cache: a name or glob, a list of names or globs, or a predicate on names.
NamesFilter: TypeAlias = str | Sequence[str] | Callable[[str], bool] | None
# Positions to keep, as TransformerLens's pos_slice: an int, a slice, a tuple
# (slice(*t)), indices or a boolean mask.
PosSlice: TypeAlias = int | tuple[int, ...] | slice | Sequence[int] | npt.ArrayLike | None
# Weight processing, as the daemon's "processing" field: "default" (TransformerLens's
# from_pretrained), "none" (from_pretrained_no_processing), a comma list of steps
# ("fold_ln,center_writing_weights"), a list of steps, or {flag: bool} as
# from_pretrained's keyword arguments.
Processing: TypeAlias = str | Sequence[str] | Mapping[str, bool] | None

# TransformerLens's from_pretrained weight-processing flags, with its defaults, in
# the order lensd names the steps (core/process.c, lens_processing_parse).
PROCESSING_FLAGS: dict[str, bool] = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
    "refactor_factored_attn_matrices": False,
}

_GLOB_CHARS = frozenset("*?[")

# The statuses that the client retries (honouring Retry-After): lensd answers
# them before the work runs (docs/API.md, "Errors").
_RETRY_STATUSES = frozenset({429, 503})


class Output(NamedTuple):
    """What ``Model(..., return_type="both")`` returns, as TransformerLens's ``Output``."""

    logits: np.ndarray
    loss: np.ndarray


class TopK(NamedTuple):
    """What the model returns in place of logits with ``top_k=K`` (the daemon's ``top_k``):
    each [batch, pos, K], largest logit first (equal logits: lower id first), as
    ``torch.topk`` of the logits orders them."""

    ids: np.ndarray
    logits: np.ndarray
    probs: np.ndarray  # softmax over the whole vocabulary, not over the K


def processing_spec(processing: Processing = None, **weight_flags: bool | None) -> str | None:
    """The daemon's ``"processing"`` string for a request (None: the model's own).

    Args:
        processing: ``"default"``, ``"none"``, a comma list of steps, a list of steps
            (``[]`` is ``"none"``), or ``{flag: bool}`` (as the keyword flags).
        weight_flags: TransformerLens's ``from_pretrained`` flags ``fold_ln``,
            ``center_writing_weights``, ``center_unembed``, ``fold_value_biases`` and
            ``refactor_factored_attn_matrices``. As in ``from_pretrained``, a flag not
            given takes its default there (all True but the last), so
            ``fold_ln=False`` is ``"center_writing_weights,center_unembed,fold_value_biases"``.
            A flag given as None counts as not given.

    Raises:
        TypeError: for a keyword that is not one of the flags.
        ValueError: for ``processing`` and flags together.
    """
    unknown = sorted(set(weight_flags) - PROCESSING_FLAGS.keys())
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r} (weight-processing flags are "
                        f"{', '.join(PROCESSING_FLAGS)})")
    flags = {name: value for name, value in weight_flags.items() if value is not None}
    if isinstance(processing, Mapping):
        if flags:
            raise ValueError("give processing as a mapping or as keyword flags, not both")
        return processing_spec(None, **dict(processing))
    if processing is not None and flags:
        raise ValueError(f"give processing={processing!r} or the flags {sorted(flags)}, not both")
    if flags:
        steps = [name for name, default in PROCESSING_FLAGS.items() if bool(flags.get(name, default))]
        return ",".join(steps) or "none"
    if processing is None or isinstance(processing, str):
        return processing
    steps = [str(step) for step in processing]
    return ",".join(steps) or "none"


class Config(SimpleNamespace):
    """A served model's configuration under TransformerLens's HookedTransformerConfig field
    names: ``n_layers``, ``d_model``, ``n_heads``, ``d_head``, ``d_mlp``, ``d_vocab``,
    ``d_vocab_out``, ``n_ctx``, ``act_fn``, ``normalization_type``, ``default_prepend_bos``,
    ``n_key_value_heads``, ``positional_embedding_type``, ``original_architecture``, ...
    (``GET /v1/models/{m}``'s ``config``), plus ``model_name``, ``tokenizer_name`` (the
    model's source), ``n_params``, ``device`` and ``dtype``.

    ``normalization_type`` is that of the weights requests run on: ``"LNPre"``
    (``"RMSPre"``) where ``fold_ln`` folded a LayerNorm (RMSNorm), as TL's cfg says after
    ``from_pretrained``.
    """

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (TL's ``cfg.to_dict()``)."""
        return dict(vars(self))

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)


# normalization_type with and without fold_ln (TL's from_pretrained rewrites it so)
_FOLDED_NORM = {"LN": "LNPre", "RMS": "RMSPre"}
_UNFOLDED_NORM = {folded: plain for plain, folded in _FOLDED_NORM.items()}


def _config(name: str, info: dict[str, Any], processing: str | None) -> Config:
    """The Config of a model's info, for requests sent with processing (None: its own)."""
    fields = dict(info.get("config", {}))
    device = info.get("device")
    fields.setdefault("model_name", name)
    fields.setdefault("tokenizer_name", info.get("source"))
    fields.setdefault("n_params", info.get("n_params"))
    fields.setdefault("device", device.get("name") if isinstance(device, dict) else device)
    fields.setdefault("dtype", "float32")
    if "d_vocab" in fields:
        fields.setdefault("d_vocab_out", fields["d_vocab"])
    own = str(info.get("processing", ""))
    if processing is not None and "normalization_type" in fields:
        steps = set(PROCESSING_FLAGS) if processing == "default" else set(processing.split(","))
        norm = fields["normalization_type"]
        if "fold_ln" in own.split(",") and "fold_ln" not in steps:
            fields["normalization_type"] = _UNFOLDED_NORM.get(norm, norm)
        elif "fold_ln" not in own.split(",") and "fold_ln" in steps:
            fields["normalization_type"] = _FOLDED_NORM.get(norm, norm)
    return Config(**fields)


class Patched:
    """A patching sweep's result: the values in TransformerLens's shape and axis
    order, with every axis labelled. ``np.asarray(result)`` is the values.

    Attributes:
        values: np.ndarray, e.g. [n_layers, pos] for ``resid_pre``.
        axes: ``[(name, labels)]`` per axis: ``("layer", [0, 1, ...])``,
            ``("pos", [clean prompt 0's tokens])``, ``("head", ["H0", ...])``,
            ``("component", [...])`` (the ``_every`` sweeps).
        clean_metric, corrupted_metric: the unpatched runs' metric.
        runs: patched runs (TransformerLens's forward passes); passes: lensd's.
        unchanged_runs: of the runs, those whose patch is what the corrupted
            run already has there for every prompt (a position before the
            prompts differ): their value is the corrupted metric, not computed.
        block_positions: the work those passes did: positions computed x blocks
            run through (runs x prompts x tokens x layers for full recomputation).
        seconds: the daemon's time for the sweep.
    """

    def __init__(self, data: dict[str, Any]):
        self.values: np.ndarray = data["values"]
        self.axes: list[tuple[str, list[Any]]] = [(a["name"], a["labels"]) for a in data["axes"]]
        self.sweep: str = data["sweep"]
        self.clean_metric = float(data["clean_metric"])
        self.corrupted_metric = float(data["corrupted_metric"])
        self.normalized = bool(data["normalized"])
        self.runs = int(data["runs"])
        self.unchanged_runs = int(data["unchanged_runs"])
        self.passes = int(data["passes"])
        self.block_positions = int(data["block_positions"])
        self.seconds = float(data["seconds"])

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)

    def __getitem__(self, index):
        return self.values[index]

    def __repr__(self) -> str:
        axes = ", ".join(f"{name}={len(labels)}" for name, labels in self.axes)
        return f"Patched({self.sweep}: {axes}; {self.runs} runs in {self.seconds:.3g} s)"


class KeptCache(Mapping[str, np.ndarray]):
    """A run's activations kept on the daemon (``run_with_cache(..., keep=True)``), read one
    tensor at a time (docs/API.md, "Kept caches").

    Indexed as an :class:`ActivationCache` (a full name, ``cache["pattern", 0]``,
    ``cache["resid_post", -1]``, ``cache["k6"]``, ...): each name's tensor is fetched
    (``GET /v1/caches/{id}/{name}``) the first time it is read and then kept here;
    :meth:`fetch` reads a slice (prompts, positions) on the daemon instead, and keeps
    nothing. Iteration, ``len`` and ``keys()`` are over the hook names (``"logits"`` and
    ``"tokens"`` are kept too, and readable by those names, but are not hook points).

    The daemon drops a cache ``ttl_s`` seconds after its last use, or sooner when kept
    caches outgrow ``limits.max_kept_cache_bytes``; a read of a dropped cache is a
    :class:`lensd.NotFound`. :meth:`delete` frees it; as a context manager it is freed
    on leaving.

    Attributes:
        model: the model it was made by.
        cache_id: the daemon's id of it.
        shapes: every kept tensor's shape, by name.
        ttl_s: seconds it is kept after its last use.
        processing: the weight processing of the run.
    """

    _NOT_HOOKS = frozenset({"logits", "tokens"})

    def __init__(self, model: Model, handle: dict[str, Any]) -> None:
        self.model = model
        self.cache_id: str = handle["cache_id"]
        self.shapes: dict[str, tuple[int, ...]] = {
            name: tuple(int(n) for n in shape) for name, shape in handle["tensors"].items()
        }
        self.ttl_s = float(handle.get("ttl_s", 0.0))
        self.processing: str | None = handle.get("processing")
        self._read: dict[str, np.ndarray] = {}
        self._deleted = False

    def name(self, key: CacheKey) -> str:
        """The full name a key resolves to, by :class:`ActivationCache`'s rules.

        Raises:
            KeyError: when that name is not kept.
        """
        if isinstance(key, str):
            name = key if key in self.shapes else get_act_name(key)
        elif isinstance(key, tuple):
            if len(key) > 1 and key[1] is not None and key[1] < 0:
                key = (key[0], self.model.cfg.n_layers + key[1], *key[2:])
            name = get_act_name(*key)
        else:
            raise KeyError(key)
        if name not in self.shapes:
            raise KeyError(name)
        return name

    def __getitem__(self, key: CacheKey) -> np.ndarray:
        """The whole tensor of a name (fetched once, then kept here)."""
        name = self.name(key)
        if name not in self._read:
            self._read[name] = self.fetch(name)
        return self._read[name]

    def fetch(
        self, key: CacheKey, batch: int | Sequence[int] | None = None, positions: int | Sequence[int] | None = None
    ) -> np.ndarray:
        """One tensor, sliced on the daemon: the rows of ``batch`` (prompt indices, in that
        order) and ``positions`` on its position axis (the query axis of patterns and
        scores); negative indices count from the end; an int keeps its axis.

        Raises:
            KeyError: for a name not kept.
            LensdError: NotFound when the daemon no longer keeps the cache; Unprocessable
                for indices out of range.
        """
        name = self.name(key)
        query = []
        for field, indices in (("batch", batch), ("positions", positions)):
            if indices is not None:
                query.append(f"{field}=" + ",".join(str(i) for i in np.atleast_1d(_ids_array(indices)).tolist()))
        path = f"/v1/caches/{quote(self.cache_id, safe='')}/{quote(name, safe='')}"
        data = self.model.client._request("GET", path + ("?" + "&".join(query) if query else ""), tensors=True)
        return data[name]

    def listing(self) -> dict[str, Any]:
        """``GET /v1/caches/{id}``: ``{"cache_id", "model", "bytes", "tensors": {name: shape}}``
        (and the daemon counts it as a use: its TTL starts again)."""
        return self.model.client._request("GET", f"/v1/caches/{quote(self.cache_id, safe='')}")

    def delete(self) -> None:
        """Frees the cache on the daemon (``DELETE /v1/caches/{id}``); what was read stays here.

        Raises:
            LensdError: NotFound when the daemon had already dropped it.
        """
        self.model.client._request("DELETE", f"/v1/caches/{quote(self.cache_id, safe='')}")
        self._deleted = True

    def __enter__(self) -> KeptCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._deleted:
            try:
                self.delete()
            except NotFound:  # expired or evicted meanwhile: nothing left to free
                self._deleted = True

    def __iter__(self) -> Iterator[str]:
        return (name for name in self.shapes if name not in self._NOT_HOOKS)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        try:
            self.name(key)  # type: ignore[arg-type]
        except KeyError:
            return False
        return True

    def __repr__(self) -> str:
        return f"KeptCache({self.cache_id!r}, {len(self)} hook points, {len(self._read)} read)"


class Client:
    """A connection to one lensd daemon.

    Args:
        url: the daemon's base URL.
        token: a bearer token, for a daemon with access control.
        timeout: seconds to wait for each answer (requests' timeout), per attempt.
        retries: how many times a request answered 429 ``rate_limited`` or 503
            ``unavailable`` is sent again before its error is raised; 0 never
            retries. Each retry waits the answer's ``Retry-After`` seconds, or
            without one ``retry_backoff`` seconds doubled on every retry (with
            jitter). Other statuses are never retried.
        max_retry_wait: the longest wait before one retry, in seconds: an answer
            whose ``Retry-After`` is longer is raised at once (its
            ``retry_after`` says how long to wait); backoff is capped at it.
        retry_backoff: the first wait of the backoff, in seconds.
        retry_connection_errors: also retry, in the same way, a request that
            could not connect or whose connection broke (``LensdConnectionError``;
            default: no). A connection that broke after the request was sent
            may have run it. A read timeout (``LensdTimeout``) is never retried.

    Retrying is safe for every request, POSTs included: lensd answers 429 (too
    many wrong tokens, or a token over its requests per minute) and 503 (a
    model's queue full, a request that waited past the request timeout
    without starting, the models still loading, the daemon shutting down)
    before the work runs, or, for an admin load during shutdown, without
    keeping what it did. (A proxy in front of lensd may answer 503 itself:
    docs/DEPLOY.md's nginx does for a daemon it cannot reach, its 502, which
    also covers a daemon that closed the connection mid-request; sent again,
    an analysis request just runs again.)

    Raises, from every call: a :class:`LensdError` subclass for an error
    answer (``NotFound``, ``RateLimited``, ...), :class:`LensdConnectionError`
    or :class:`LensdTimeout` when no answer came; all are
    :class:`LensdException`.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        token: str | None = None,
        timeout: float = 300,
        *,
        retries: int = 3,
        max_retry_wait: float = 30.0,
        retry_backoff: float = 0.5,
        retry_connection_errors: bool = False,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        if max_retry_wait < 0 or retry_backoff < 0:
            raise ValueError("max_retry_wait and retry_backoff must be 0 or more seconds")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.retry_backoff = retry_backoff
        self.retry_connection_errors = retry_connection_errors
        self._session = requests.Session()
        if token is not None:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the client's pooled connections."""
        self._session.close()

    def progress(self, progress_id: str, cancel: bool = False) -> dict[str, Any]:
        """A running sweep's ``{"id", "done", "total", "seconds", "cancelled"}``
        (``GET /v1/progress/{id}``); with ``cancel``, stops it (``DELETE``).
        Raises LensdError (404) once it has ended."""
        return self._request("DELETE" if cancel else "GET", f"/v1/progress/{quote(progress_id, safe='')}")

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok"}`` while the daemon runs."""
        return self._request("GET", "/healthz")

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.1) -> dict[str, Any]:
        """Polls ``GET /readyz`` until every configured model is loaded.

        Returns:
            ``{"status": "ready", "models": [names]}``.

        Raises:
            TimeoutError: when the daemon is still starting after ``timeout`` seconds.
            LensdError: for an answer other than 200 or 503.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._request("GET", "/readyz", retry=False)
            except Unavailable as e:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"lensd at {self.url} not ready after {timeout} s: {e.message}") from e
            time.sleep(interval)

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the info of every model served (name, source, device, config, ...)."""
        return self._request("GET", "/v1/models")["models"]

    def model(self, name: str, processing: Processing = None, **weight_flags: bool | None) -> Model:
        """The model served under ``name``, with its full info (hook points included).

        Args:
            processing, weight_flags: the weight processing every request of the model
                asks for (see :func:`processing_spec`): ``"none"``, or TransformerLens's
                flags, so that ``HookedTransformer.from_pretrained(name, fold_ln=False)``
                is ``client.model(name, fold_ln=False)``. None: the model's own
                (``info["processing"]``). The daemon loads another processing's weights on
                the first request that asks for it, and keeps a few (limits.max_weight_variants).

        Raises:
            LensdError: 404 when no model has that name.
            TypeError, ValueError: for flags :func:`processing_spec` refuses.
        """
        spec = processing_spec(processing, **weight_flags)
        return Model(self, name, self._request("GET", _model_path(name)), spec)

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        tensors: bool = False,
        retry: bool = True,
    ) -> dict[str, Any]:
        """Sends one request, retrying as the client's settings say, and decodes
        its 2xx answer (tensors as numpy arrays).

        tensors: ask for a safetensors body instead of JSON.
        retry: retry 429 and 503 answers (and connection errors, when the client
            says so); False raises them at once.
        """
        attempt = 0
        while True:
            try:
                return self._send(method, path, body, tensors)
            except LensdError as e:
                wait = None
                if retry and e.status in _RETRY_STATUSES:
                    wait = self._retry_wait(attempt, e.retry_after)
                if wait is None:
                    raise
            except (LensdConnectionError, LensdTimeout) as e:
                # a connect timeout sent nothing; a read timeout's request may be running still
                retryable = isinstance(e, LensdConnectionError) or isinstance(e.__cause__, requests.ConnectTimeout)
                wait = None
                if retry and self.retry_connection_errors and retryable:
                    wait = self._retry_wait(attempt, None)
                if wait is None:
                    raise
            time.sleep(wait)
            attempt += 1

    def _send(self, method: str, path: str, body: dict[str, Any] | None, tensors: bool) -> dict[str, Any]:
        """One HTTP exchange, the one place where the client talks HTTP: the 2xx
        answer decoded, or the LensdError, LensdConnectionError or LensdTimeout."""
        url = self.url + path
        headers = {"Accept": SAFETENSORS_TYPE if tensors else JSON_TYPE}
        if body is not None:
            headers["Content-Type"] = JSON_TYPE
        try:
            response = self._session.request(
                method,
                url,
                data=None if body is None else encode_json(body),
                headers=headers,
                timeout=self.timeout,
                stream=True,
            )
            with response:
                if not 200 <= response.status_code < 300:
                    raise LensdError.from_response(response)  # reads the (small) body
                # read in 4 MiB pieces (requests' own 10 KiB reads cost more than the transfer)
                # into one writable buffer, which the arrays then share
                content = bytearray()
                for chunk in response.iter_content(chunk_size=1 << 22):
                    content += chunk
        except requests.ConnectTimeout as e:
            raise LensdTimeout(f"no connection to lensd at {url} within {self.timeout} s", url) from e
        except requests.Timeout as e:
            raise LensdTimeout(f"no answer from lensd at {url} within {self.timeout} s", url) from e
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
            if e.args and isinstance(e.args[0], urllib3.exceptions.ReadTimeoutError):
                # a read of the body that timed out, which requests reports as a ConnectionError
                raise LensdTimeout(f"no answer from lensd at {url} within {self.timeout} s", url) from e
            what = "cannot reach" if isinstance(e, requests.ConnectionError) else "an answer cut short from"
            raise LensdConnectionError(f"{what} lensd at {url}: {e}", url) from e
        return decode_body(response.headers.get("Content-Type", ""), content)

    def _retry_wait(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number attempt + 1, or None: do not retry."""
        if attempt >= self.retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_wait else None
        backoff = self.retry_backoff * 2**attempt * random.uniform(0.5, 1.0)
        return min(backoff, self.max_retry_wait)


class Model(WeightsMixin):
    """A model served by lensd, used as TransformerLens's HookedTransformer is.

    Attributes:
        client: the client it was obtained from.
        name: the name lensd serves it under.
        info: ``GET /v1/models/{name}``'s answer.
        cfg: a :class:`Config`: TransformerLens's HookedTransformerConfig fields
            (``cfg.n_layers``, ``cfg.d_model``, ...).
        hook_points: the names of its hook points, in the daemon's order.
        processing: the weight processing its requests ask for (``"none"``,
            ``"fold_ln,center_unembed"``, ...), or None: the model's own.

    Every method that runs the model also takes ``processing=`` and TransformerLens's
    weight-processing flags (``fold_ln=False``, ...) for that request alone (see
    :func:`processing_spec`); the tokenizer's methods do not (processing does not
    change tokens).
    """

    def __init__(self, client: Client, name: str, info: dict[str, Any], processing: str | None = None) -> None:
        self.client = client
        self.name = name
        self.info = info
        self.processing = processing
        self.cfg = _config(name, info, processing)
        self.hook_points: list[str] = [point["name"] for point in info.get("hook_points", [])]

    def __repr__(self) -> str:
        processing = "" if self.processing is None else f", processing={self.processing!r}"
        return f"Model({self.name!r}, client={self.client!r}{processing})"

    def with_processing(self, processing: Processing = None, **weight_flags: bool | None) -> Model:
        """The same model with its requests asking for another weight processing.

        ``model.with_processing(fold_ln=False)`` is TL's ``from_pretrained(..., fold_ln=False)``;
        ``model.with_processing("none")`` is ``from_pretrained_no_processing``; no arguments:
        the model's own processing. Costs no request.
        """
        return Model(self.client, self.name, self.info, processing_spec(processing, **weight_flags))

    def to_tokens(
        self,
        input: str | Sequence[str],
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
    ) -> np.ndarray:
        """Token ids, int64 [batch, pos], padded as TransformerLens pads a batch (TL's ``to_tokens``).

        prepend_bos and padding_side default to the model's.
        """
        body = _prompt_body(input, prepend_bos, padding_side)
        return np.asarray(self._post("tokenize", body)["tokens"], dtype=np.int64)

    def to_str_tokens(
        self, input: str | Sequence[str] | npt.ArrayLike, prepend_bos: bool | None = None
    ) -> list[str] | list[list[str]]:
        """Each token as a string (TL's ``to_str_tokens``).

        A text or token ids ([pos] or [1, pos]) give a list of strings; a list
        of texts gives one list per text, without padding. prepend_bos (default:
        the model's) applies to texts.
        """
        if isinstance(input, str):
            return self._str_tokens(input, prepend_bos)[0]
        if isinstance(input, (list, tuple)) and not (input and isinstance(input[0], numbers.Integral)):
            if input and all(isinstance(text, str) for text in input):
                return self._str_tokens(input, prepend_bos)
            return [self.to_str_tokens(item, prepend_bos) for item in input]
        ids = _ids_array(input).squeeze()
        if ids.ndim > 1:
            raise ValueError(f"to_str_tokens takes ids of shape [pos] or [1, pos], not {list(ids.shape)}")
        rows = [[token] for token in np.atleast_1d(ids).tolist()]
        if not rows:
            return []
        return self._post("detokenize", {"tokens": rows})["text"]

    def to_single_token(self, string: str) -> int:
        """The id of a text that is exactly one token, tokenized without BOS (TL's ``to_single_token``).

        Raises:
            ValueError: when the text is not exactly one token.
        """
        tokens = self.to_tokens(string, prepend_bos=False)[0]
        if len(tokens) != 1:
            raise ValueError(f"{string!r} is not a single token: it is {len(tokens)} tokens")
        return int(tokens[0])

    def to_string(
        self, tokens: int | Sequence[int] | Sequence[Sequence[int]] | npt.ArrayLike
    ) -> str | list[str]:
        """Detokenizes (TL's ``to_string``): ids [pos] give a string, ids [batch, pos] a list of strings."""
        ids = _ids_array(tokens, allow_empty=True)
        if ids.ndim > 2:
            raise ValueError(f"to_string takes ids of shape [pos] or [batch, pos], not {list(ids.shape)}")
        return self._post("detokenize", {"tokens": np.atleast_1d(ids).tolist()})["text"]

    def __call__(
        self,
        input: PromptInput,
        return_type: Literal["logits", "loss", "both"] | None = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        *,
        positions: PosSlice = None,
        top_k: int | None = None,
        log_probs: bool = False,
        processing: Processing = None,
        **weight_flags: bool | None,
    ) -> np.ndarray | TopK | Output | None:
        """Runs the model, as TL's forward (``POST .../logits``).

        Args:
            input: a text, a list of texts, or token ids (lists, numpy arrays or torch
                tensors, [pos] or [batch, pos]).
            return_type: ``"logits"`` (float32 [batch, pos, d_vocab_out]); ``"loss"``
                (the mean next-token loss over real tokens, a 0-d array, or with
                ``loss_per_token`` [batch, pos - 1]); ``"both"`` (an :class:`Output`);
                None (runs it and returns None).
            loss_per_token: per-token instead of mean loss.
            prepend_bos, padding_side: override the model's defaults for texts.
            positions: (lensd) the logits at these positions only, [batch, n_positions,
                d_vocab_out]; as ``pos_slice`` (an int keeps the axis). The loss is over
                every position whatever this says.
            top_k: (lensd) instead of the logits, a :class:`TopK` of ids, logits and
                probabilities [batch, pos, K].
            log_probs: (lensd) log-softmax over the vocabulary, computed by the daemon, in
                place of the logits.
            processing, weight_flags: this request's weight processing (:func:`processing_spec`).
        """
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, not {return_type!r}")
        if top_k is not None and log_probs:
            raise ValueError("top_k already answers probabilities: give top_k or log_probs, not both")
        spec = processing_spec(processing, **weight_flags)
        body = _prompt_body(input, prepend_bos, padding_side)
        if positions is not None:
            body["positions"] = self._positions(positions, body)
        if top_k is not None:
            body["top_k"] = int(top_k)
        if log_probs:
            body["log_probs"] = True
        loss_field = "per_token_loss" if loss_per_token else "loss"
        if return_type in ("loss", "both"):
            body[loss_field] = True
        data = self._post("logits", body, tensors=True, processing=spec)
        if return_type is None:
            return None
        logits: np.ndarray | TopK
        if top_k is not None:
            logits = TopK(data["top_k_ids"], data["top_k_logits"], data["top_k_probs"])
        else:
            logits = data["log_probs"] if log_probs else data["logits"]
        if return_type == "logits":
            return logits
        loss = np.asarray(data[loss_field], dtype=np.float32)
        return loss if return_type == "loss" else Output(logits, loss)

    def run_with_cache(
        self,
        input: PromptInput,
        names_filter: NamesFilter = None,
        pos_slice: PosSlice = None,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        dtype: npt.DTypeLike | None = None,
        *,
        return_type: Literal["logits"] | None = "logits",
        remove_batch_dim: bool = False,
        batch: Sequence[int] | None = None,
        keep: bool = False,
        processing: Processing = None,
        **weight_flags: bool | None,
    ) -> tuple[np.ndarray | None, ActivationCache | KeptCache]:
        """Runs the model and caches activations, as TL's ``run_with_cache``.

        Args:
            input: a text, a list of texts, or token ids.
            names_filter: None (every hook point); a name or a glob
                (``"blocks.*.attn.hook_pattern"``); a list of names or globs; or a
                callable, applied here to :attr:`hook_points`.
            pos_slice: keep only these positions of each activation, on the axis TL's
                pos_slice slices: an int (the axis is kept), a slice, a tuple
                (``slice(*t)``), indices or a boolean mask. A slice needs the batch's
                length, which costs a tokenize request first.
            prepend_bos, padding_side: override the model's defaults for texts.
            dtype: ``"float16"`` to receive activations and logits as float16.
            return_type: ``"logits"``, or None: the daemon leaves the logits out (they
                are often most of the answer: [64, 65] prompts of GPT-2's vocabulary are
                800 MiB of logits) and the logits returned are None, as TL's.
            remove_batch_dim: each activation without its batch axis, as TL's (for one
                prompt; a larger batch is a ValueError).
            batch: (lensd) the activations and logits of these prompts only, in this
                order (the whole batch still runs).
            keep: (lensd) keep the cache on the daemon and return a :class:`KeptCache`,
                which reads one tensor at a time (``limits.kept_cache_ttl_s`` after its
                last use it is dropped; ``delete()`` or ``with`` frees it at once).
            processing, weight_flags: this request's weight processing (:func:`processing_spec`).

        Returns:
            ``(logits, cache)``: float32 (or ``dtype``) logits [batch, pos, d_vocab_out],
            or None with ``return_type=None``, and an :class:`ActivationCache` (with
            ``keep``, a :class:`KeptCache`; its logits are read from it).
        """
        if return_type not in ("logits", None):
            raise ValueError(f"run_with_cache's return_type is 'logits' or None, not {return_type!r} "
                             "(the loss: call the model with return_type='loss')")
        if keep and remove_batch_dim:
            raise ValueError("remove_batch_dim applies to a cache sent back, not a kept one")
        spec = processing_spec(processing, **weight_flags)
        body = _prompt_body(input, prepend_bos, padding_side)
        positions = None if pos_slice is None else self._positions(pos_slice, body)
        body.update(self._names_body(names_filter))
        if positions is not None:
            body["positions"] = positions
        if dtype is not None:
            body["dtype"] = np.dtype(dtype).name
        if return_type is None:
            body["logits"] = False
        if batch is not None:
            body["batch"] = np.atleast_1d(_ids_array(batch)).tolist()
        if keep:
            body["keep"] = True
            kept = KeptCache(self, self._post("run_with_cache", body, processing=spec))
            return (kept["logits"] if return_type == "logits" else None), kept
        data = self._post("run_with_cache", body, tensors=True, processing=spec)
        logits = data.pop("logits", None)
        data.pop("tokens", None)
        activations = {name: value for name, value in data.items() if isinstance(value, np.ndarray)}
        cache = ActivationCache(activations, self.cfg.n_layers, model=self._processed_as(spec))
        # TL's remove_batch_dim: a batch of one's activations without their batch axis
        return logits, cache.remove_batch_dim() if remove_batch_dim else cache

    def test_prompt(
        self,
        prompt: str,
        answer: str,
        prepend_space_to_answer: bool = True,
        top_k: int = 10,
        print_details: bool = True,
        prepend_bos: bool | None = None,
        *,
        processing: Processing = None,
        **weight_flags: bool | None,
    ) -> dict[str, Any]:
        """Tests whether the model predicts ``answer`` after ``prompt`` (TL's ``utils.test_prompt``).

        Prints what TL's ``test_prompt`` prints when ``print_details``.

        Returns:
            lensd's answer: ``prompt_str_tokens``, ``answer_str_tokens``, per
            answer token its rank, logit, prob and top-k, and the printed ``text``.
        """
        body: dict[str, Any] = {
            "prompt": prompt,
            "answer": answer,
            "prepend_space_to_answer": prepend_space_to_answer,
            "top_k": top_k,
        }
        if prepend_bos is not None:
            body["prepend_bos"] = prepend_bos
        data = self._post("test_prompt", body, processing=processing_spec(processing, **weight_flags))
        if print_details:
            text = data["text"]
            print(text, end="" if text.endswith("\n") else "\n")
        return data

    def attention(
        self,
        input: str | npt.ArrayLike,
        layers: int | Iterable[int] | None = None,
        heads: int | Iterable[int] | None = None,
        prepend_bos: bool | None = None,
        *,
        processing: Processing = None,
        **weight_flags: bool | None,
    ) -> dict[str, Any]:
        """Attention patterns of one prompt (the dashboard's data): what TL's
        ``cache["pattern", layer][0, heads]`` holds, for the layers and heads asked.

        Args:
            input: a text, or one prompt's token ids ([pos] or [1, pos]: a list, numpy
                array or torch tensor).
            layers, heads: an index or indices (negatives count from the end); default all.
            prepend_bos: overrides the model's default, for a text.
            processing, weight_flags: this request's weight processing (:func:`processing_spec`).

        Returns:
            ``patterns`` (np.ndarray [n_layers_asked, n_heads_asked, query_pos, key_pos]),
            ``str_tokens``, ``tokens``, ``layers`` and ``heads``.
        """
        if not isinstance(input, str) and isinstance(input, (list, tuple)) and input and isinstance(input[0], str):
            raise ValueError("attention takes one prompt: a text or one row of token ids")
        body = _prompt_body(input, prepend_bos, None)
        if layers is not None:
            body["layers"] = np.atleast_1d(_ids_array(layers)).tolist()
        if heads is not None:
            body["heads"] = np.atleast_1d(_ids_array(heads)).tolist()
        return self._post("attention", body, tensors=True, processing=processing_spec(processing, **weight_flags))

    def logit_diff(
        self,
        input: PromptInput,
        answers: Sequence[Any],
        attribution: Iterable[str] = (),
        position: int | None = None,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        *,
        processing: Processing = None,
        **weight_flags: bool | None,
    ) -> dict[str, Any]:
        """The logit difference of answer pairs, and its attribution.

        Args:
            input: a text, a list of texts, or token ids.
            answers: one ``(answer, wrong)`` pair for every prompt, or one per prompt;
                each a one-token string or a token id.
            attribution: any of ``"accumulated_resid"`` (the logit lens),
                ``"decompose_resid"`` and ``"heads"``, computed as TL's
                ``ActivationCache.apply_ln_to_stack`` + ``logit_attrs`` do.
            position: where to read (default: each prompt's last real token).
            processing, weight_flags: this request's weight processing (:func:`processing_spec`).

        Returns:
            ``logit_diff`` (np.ndarray [batch]), ``mean``, and per attribution a dict of
            ``labels``, ``per_prompt`` (np.ndarray [components, batch]) and ``mean``
            (np.ndarray [components]; heads also ``grid`` [n_layers, n_heads]).
        """
        body = _prompt_body(input, prepend_bos, padding_side)
        body["answers"] = [list(pair) if isinstance(pair, (list, tuple)) else pair for pair in answers]
        body["attribution"] = list(attribution)
        if position is not None:
            body["position"] = position
        data = self._post("logit_diff", body, processing=processing_spec(processing, **weight_flags))
        data["logit_diff"] = np.asarray(data["logit_diff"], dtype=np.float32)
        for key in ("accumulated_resid", "decompose_resid", "heads"):
            for field in ("per_prompt", "mean", "grid"):
                if key in data and field in data[key]:
                    data[key][field] = np.asarray(data[key][field], dtype=np.float32)
        return data

    def run_with_hooks(
        self,
        input: PromptInput,
        hooks: Sequence[dict[str, Any]],
        names_filter: NamesFilter = None,
        answers: Sequence[Any] | None = None,
        patch_from: PromptInput | None = None,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        *,
        return_type: Literal["logits"] | None = "logits",
        processing: Processing = None,
        **weight_flags: bool | None,
    ) -> tuple[np.ndarray | None, ActivationCache, dict[str, Any]]:
        """A run with interventions.

        Args:
            hooks: ``{"name": hook, "op": "zero" | "mean" | "set" | "add" | "scale" |
                "patch", "positions": [...], "heads": [...], "value": ..., "factor": ...}``
                each (docs/API.md); a ``"value"`` may be a number, a list, a numpy array or
                a torch tensor (one value per entry of the hook's last axis).
            names_filter: activations to capture after the interventions (as in
                :meth:`run_with_cache`; None: none).
            answers: answer pairs, for the logit-difference metric.
            patch_from: the prompts whose activations ``"patch"`` copies.
            return_type: ``"logits"``, or None: no logits sent (returned as None), as TL's.
            processing, weight_flags: this request's weight processing (:func:`processing_spec`).

        Returns:
            ``(logits, cache, metric)``; metric has ``logit_diff`` and ``mean`` when
            ``answers`` is given.
        """
        if return_type not in ("logits", None):
            raise ValueError(f"run_with_hooks's return_type is 'logits' or None, not {return_type!r}")
        body = _prompt_body(input, prepend_bos, padding_side)
        body["hooks"] = [dict(hook) for hook in hooks]
        if names_filter is not None:
            body.update(self._names_body(names_filter))
        if answers is not None:
            body["answers"] = [list(p) if isinstance(p, (list, tuple)) else p for p in answers]
        if patch_from is not None:
            body["patch_from"] = _prompt_body(patch_from, None, None)
        if return_type is None:
            body["logits"] = False
        spec = processing_spec(processing, **weight_flags)
        data = self._post("run_with_hooks", body, tensors=True, processing=spec)
        logits = data.pop("logits", None)
        data.pop("tokens", None)
        activations = {name: value for name, value in data.items() if isinstance(value, np.ndarray)}
        metric = {key: data[key] for key in ("logit_diff", "mean") if key in data}
        cache = ActivationCache(activations, self.cfg.n_layers, model=self._processed_as(spec))
        return logits, cache, metric

    def generate(
        self,
        input: PromptInput = "",
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | Sequence[int] | None = None,
        do_sample: bool = False,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        return_type: Literal["input", "str", "tokens"] = "input",
        verbose: bool | None = None,
        *,
        seed: int = 0,
        hooks: Sequence[dict[str, Any]] = (),
        progress_id: str | None = None,
        processing: Processing = None,
        **weight_flags: bool | None,
    ) -> str | list[str] | np.ndarray:
        """Continues each prompt, as TL's ``generate``: greedily (``do_sample=False``, lensd's
        default; TL's is True) or by sampling reproducible from ``seed``.

        Args:
            input: a text, a list of texts, or token ids [batch, pos] (list, numpy or torch).
            max_new_tokens: the most tokens added to each prompt.
            stop_at_eos: a row stops at its first end token, and, as in TL, is then filled
                with the EOS id while others go on.
            eos_token_id: the end token(s): an id or a list of ids (TL's); default the
                model's EOS. Other ids than the model's EOS are applied here: the daemon
                runs the full ``max_new_tokens`` and each row is cut after its first end
                token, then filled as TL fills it (with that id when it is one id, else EOS).
            do_sample, top_k, temperature: sampling as TL's ``sample_logits`` (top_k None: all).
            top_p, freq_penalty: not served by lensd: only their no-op values (None or
                1.0, 0.0) are accepted, anything else is a ValueError.
            use_past_kv_cache: accepted for TL's signature; the numbers are the same either way.
            prepend_bos, padding_side: override the model's defaults for texts.
            return_type: ``"str"`` (the decoded texts: without BOS, EOS and pad tokens, as
                TL decodes them; one text for one prompt), ``"tokens"`` (int64 [batch,
                pos + new]: as TL's, the prompts left-padded to one length, each row filled
                with EOS after it ends), or ``"input"``: tokens for token input, else str.
            verbose: a progress bar of the steps (TL's ``verbose``, there True by default);
                None: shown when interactive (:func:`lensd.progress.interactive`). Its final
                count costs a tokenize request for text prompts.
            seed: (lensd) the sampling seed.
            hooks: (lensd) interventions during generation (zero, set, add, scale).
            progress_id: (lensd) a name to follow it by (``Client.progress``); one is made
                up for the bar when none is given.
            processing, weight_flags: this request's weight processing (:func:`processing_spec`).
        """
        if return_type not in ("input", "str", "tokens"):
            raise ValueError(f"return_type must be 'input', 'str' or 'tokens', not {return_type!r}")
        if top_p is not None and top_p != 1.0:
            raise ValueError("lensd's generate has no top_p (nucleus) sampling; use top_k or temperature")
        if freq_penalty != 0.0:
            raise ValueError("lensd's generate has no freq_penalty")
        spec = processing_spec(processing, **weight_flags)
        text_input = isinstance(input, str) or (
            isinstance(input, (list, tuple)) and bool(input) and all(isinstance(t, str) for t in input))
        if return_type == "input":
            return_type = "str" if text_input else "tokens"
        body = _prompt_body(input, prepend_bos, padding_side)
        eos = self.info.get("tokens", {}).get("eos_id")
        stops = None if eos_token_id is None else set(np.atleast_1d(_ids_array(eos_token_id)).tolist())
        own_stops = stops is None or stops == {eos}
        body.update({"max_new_tokens": int(max_new_tokens), "do_sample": bool(do_sample),
                     "temperature": float(temperature), "seed": int(seed),
                     "stop_at_eos": bool(stop_at_eos) and own_stops})
        if top_k is not None:
            body["top_k"] = int(top_k)
        if hooks:
            body["hooks"] = [dict(hook) for hook in hooks]
        if verbose is None:
            verbose = interactive()
        if verbose and progress_id is None:
            progress_id = new_progress_id()
        if progress_id is not None:
            body["progress_id"] = progress_id
        bar = ProgressBar(self.client, progress_id, "lensd generate", total=int(max_new_tokens)) if verbose else None
        with bar if bar is not None else contextlib.nullcontext():
            data = self._post("generate", body, processing=spec)
            rows: list[list[int]] = data["tokens"]
            if return_type == "str" and own_stops and bar is None:
                return data["text"][0] if len(rows) == 1 else data["text"]
            # each row is its prompt's real tokens, then its continuation
            prompts = self._prompt_rows(body)
            continuations = [row[len(prompt):] for row, prompt in zip(rows, prompts)]
            if not own_stops and stop_at_eos:
                continuations = [_cut_after(c, stops) for c in continuations]
            if bar is not None:
                bar.finish(max((len(c) for c in continuations), default=0))
        special = self.info.get("tokens", {})
        # TL fills a finished row with eos_token_id when it is one id, else with the tokenizer's EOS
        one_id = eos_token_id is not None and np.ndim(as_numpy(eos_token_id)) == 0
        fill = int(as_numpy(eos_token_id)) if one_id else eos if eos is not None else 0
        generated = _tl_generated_tokens(prompts, continuations, special.get("pad_id", fill), fill)
        if return_type == "tokens":
            return generated
        if own_stops:
            return data["text"][0] if len(rows) == 1 else data["text"]
        # TL decodes its tokens, fill included, skipping the special tokens
        skip = {special.get(key) for key in ("bos_id", "eos_id", "pad_id")}
        plain = [[t for t in row if t not in skip] for row in generated.tolist()]
        texts = self._post("detokenize", {"tokens": plain})["text"]
        return texts[0] if len(texts) == 1 else texts

    def patch(
        self,
        sweep: str,
        clean: PromptInput,
        corrupted: PromptInput,
        answers: Sequence[Any] | None = None,
        answer: Any = None,
        normalize: bool = False,
        position: int | None = None,
        full_recompute: bool = False,
        receivers: Sequence[tuple[int, int]] | None = None,
        receiver_input: Literal["q", "k", "v"] = "q",
        progress_id: str | None = None,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        *,
        progress: bool | None = None,
        processing: Processing = None,
        **weight_flags: bool | None,
    ) -> Patched:
        """An activation-patching sweep: ``transformer_lens.patching.get_act_patch_<sweep>``.

        Args:
            sweep: TL's function name without ``get_act_patch_`` (``"resid_pre"``,
                ``"attn_head_out_by_pos"``, ``"block_every"``, ...).
            clean, corrupted: prompts (texts or token ids) of the same token shape.
            answers: ``(answer, wrong)`` pairs (one for all prompts, or one per
                prompt): the metric is the mean logit difference.
            answer: instead of answers, one token (or one per prompt): the metric
                is its mean logit.
            normalize: scale so that corrupted scores 0 and clean 1.
            position: where the metric reads (default: each prompt's last real token).
            full_recompute: run every patched run from the embeddings (the reference path).
            receivers: for ``sweep="path_patch_heads"``: the receiver heads ``(layer, head)``,
                whose ``receiver_input`` (``"q"``, ``"k"`` or ``"v"``) the sender's path reaches.
            progress_id: a name for the sweep, so that ``GET /v1/progress/{id}`` follows it
                and ``DELETE`` cancels it (see :meth:`Client.progress`).
            progress: a tqdm bar of the sweep's passes, polled from the daemon while it runs
                (TL's patching functions show one always); None: shown when interactive
                (:func:`lensd.progress.interactive`: a notebook, or stderr on a terminal).
                An interrupt while it runs cancels the sweep on the daemon too.
            processing, weight_flags: this request's weight processing (:func:`processing_spec`).

        Returns:
            A :class:`Patched`: the values (np.ndarray in TL's shape) with labelled axes.
        """
        if (answers is None) == (answer is None):
            raise ValueError("give answers (pairs: logit difference) or answer (one token: logit)")
        metric: dict[str, Any] = {"normalize": normalize}
        if answers is not None:
            metric["type"] = "logit_diff"
            metric["answers"] = [list(p) if isinstance(p, (list, tuple)) else p for p in answers]
        else:
            metric["type"] = "logit"
            metric["answer"] = list(answer) if isinstance(answer, (list, tuple)) else answer
        if position is not None:
            metric["position"] = position
        body = {
            "sweep": sweep,
            "clean": _prompt_body(clean, prepend_bos, padding_side),
            "corrupted": _prompt_body(corrupted, prepend_bos, padding_side),
            "metric": metric,
            "full_recompute": full_recompute,
        }
        if receivers is not None:
            body["receivers"] = [[int(layer), int(head)] for layer, head in receivers]
            body["receiver_input"] = receiver_input
        spec = processing_spec(processing, **weight_flags)
        if progress is None:
            progress = interactive()
        if progress and progress_id is None:
            progress_id = new_progress_id()
        if progress_id is not None:
            body["progress_id"] = progress_id
        if not progress:
            return Patched(self._post("patch", body, tensors=True, processing=spec))
        with ProgressBar(self.client, progress_id, f"lensd patch {sweep}") as bar:
            result = Patched(self._post("patch", body, tensors=True, processing=spec))
            if bar.polls and isinstance(bar.polls[-1].get("total"), int) and bar.polls[-1]["total"] > 0:
                bar.finish(bar.polls[-1]["total"])  # answered: every pass done
            else:
                bar.finish(result.passes, result.passes)
        return result

    def _processed_as(self, spec: str | None) -> Model:
        """The model whose weights a request with this processing ran with (self for
        None): the one a cache's methods read W_O, W_U and the config of."""
        return self if spec is None or spec == self.processing else self.with_processing(spec)

    def _post(
        self, endpoint: str, body: dict[str, Any], *, tensors: bool = False, processing: str | None = None
    ) -> dict[str, Any]:
        """POSTs body to one of the model's endpoints. processing (this request's, else the
        model's bound one) goes in the body of every endpoint but the tokenizer's."""
        spec = processing if processing is not None else self.processing
        if spec is not None and endpoint not in ("tokenize", "detokenize"):
            body["processing"] = spec
        return self.client._request("POST", f"{_model_path(self.name)}/{endpoint}", body, tensors=tensors)

    def _prompt_rows(self, prompt_body: dict[str, Any]) -> list[list[int]]:
        """Each prompt's real token ids: token rows as given, texts tokenized (one request)."""
        if "tokens" in prompt_body:
            return [list(row) for row in prompt_body["tokens"]]
        fields = {k: v for k, v in prompt_body.items() if k in ("prompt", "prompts", "prepend_bos", "padding_side")}
        data = self._post("tokenize", fields)
        return [[t for t, real in zip(row, mask) if real] for row, mask in zip(data["tokens"], data["attention_mask"])]

    def _str_tokens(self, texts: str | Sequence[str], prepend_bos: bool | None) -> list[list[str]]:
        """Each text's string tokens, in one tokenize request, with the padding taken out."""
        data = self._post("tokenize", _prompt_body(texts, prepend_bos, None))
        return [
            [token for token, real in zip(row, mask) if real]
            for row, mask in zip(data["str_tokens"], np.asarray(data["attention_mask"]).tolist())
        ]

    def _names_body(self, names_filter: NamesFilter) -> dict[str, Any]:
        """The request fields for a names_filter: exact names as ``names`` (an unknown
        one is a 400 listing near matches), globs as ``names_filter``."""
        if names_filter is None:
            return {}
        if isinstance(names_filter, str):
            return {"names_filter": names_filter} if _is_glob(names_filter) else {"names": [names_filter]}
        if callable(names_filter):
            return {"names": [name for name in self.hook_points if names_filter(name)]}
        names = list(names_filter)
        return {"names_filter": names} if any(_is_glob(name) for name in names) else {"names": names}

    def _positions(self, pos_slice: PosSlice, prompt_body: dict[str, Any]) -> list[int]:
        """TL's pos_slice as the request's ``positions`` (a slice is resolved against the batch's length)."""
        if isinstance(pos_slice, numbers.Integral):
            return [int(pos_slice)]
        if isinstance(pos_slice, tuple):
            pos_slice = slice(*pos_slice)
        if isinstance(pos_slice, slice):
            n_pos = np.asarray(self._post("tokenize", prompt_body)["tokens"]).shape[-1]
            return list(range(n_pos))[pos_slice]
        positions = np.asarray(as_numpy(pos_slice))
        if positions.dtype == np.bool_:
            return np.flatnonzero(positions).tolist()
        if positions.ndim != 1 or positions.dtype.kind not in "iu":
            raise TypeError(
                f"pos_slice must be an int, a slice, a tuple, indices or a mask, not {pos_slice!r}"
            )
        return positions.tolist()


def _cut_after(tokens: list[int], stops: set[int] | None) -> list[int]:
    """tokens up to and with the first of stops (all of them when none is there)."""
    for i, token in enumerate(tokens):
        if stops and token in stops:
            return tokens[: i + 1]
    return tokens


def _tl_generated_tokens(
    prompts: list[list[int]], continuations: list[list[int]], pad_id: int, fill_id: int
) -> np.ndarray:
    """TL's generate output from per-row prompts and continuations: int64 [batch, T + N], each
    prompt left-padded with pad_id to the longest (T), each continuation filled with fill_id (TL's
    eos_token_for_padding) to the longest (N)."""
    T = max((len(p) for p in prompts), default=0)
    N = max((len(c) for c in continuations), default=0)
    out = [[pad_id] * (T - len(p)) + p + c + [fill_id] * (N - len(c)) for p, c in zip(prompts, continuations)]
    return np.asarray(out, dtype=np.int64).reshape(len(out), T + N)


def _model_path(name: str) -> str:
    return f"/v1/models/{quote(name, safe='')}"


def _is_glob(pattern: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(pattern)


def _prompt_body(
    input: PromptInput, prepend_bos: bool | None, padding_side: Literal["left", "right"] | None
) -> dict[str, Any]:
    """The prompt fields of a request: ``prompt``, ``prompts`` or ``tokens``, and the overrides."""
    body: dict[str, Any]
    if isinstance(input, str):
        body = {"prompt": input}
    elif isinstance(input, (list, tuple)) and not input:
        raise ValueError("no prompts given")
    elif isinstance(input, (list, tuple)) and all(isinstance(text, str) for text in input):
        body = {"prompts": list(input)}
    elif isinstance(input, (list, tuple)) and not isinstance(input[0], numbers.Integral):
        rows = [_ids_array(row) for row in input]  # they may differ in length
        if any(row.ndim != 1 for row in rows):
            raise ValueError("each row of token ids must be a list of ids")
        body = {"tokens": [row.tolist() for row in rows]}
    else:
        ids = _ids_array(input)
        if ids.ndim not in (1, 2):
            raise ValueError(f"token ids must have shape [pos] or [batch, pos], not {list(ids.shape)}")
        body = {"tokens": np.atleast_2d(ids).tolist()}
    if prepend_bos is not None:
        body["prepend_bos"] = prepend_bos
    if padding_side is not None:
        body["padding_side"] = padding_side
    return body


def _ids_array(tokens: Any, allow_empty: bool = False) -> np.ndarray:
    """Token ids (a list, numpy array or torch tensor) as an int64 array; raises TypeError for
    anything but integers."""
    ids = np.asarray(as_numpy(tokens))
    if ids.dtype.kind not in "iu" and not (allow_empty and ids.size == 0):
        raise TypeError(f"token ids must be integers, not {ids.dtype} ({type(tokens).__name__})")
    return ids.astype(np.int64)
