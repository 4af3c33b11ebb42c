"""The HTTP client of lensd and its TransformerLens-like model handle."""

from __future__ import annotations

import numbers
import random
import time
from collections.abc import Callable, Iterable, Sequence
from types import SimpleNamespace
from typing import Any, Literal, NamedTuple, TypeAlias
from urllib.parse import quote

import numpy as np
import numpy.typing as npt
import requests
import urllib3

from .cache import ActivationCache
from .errors import LensdConnectionError, LensdError, LensdTimeout, Unavailable
from .tensors import JSON_TYPE, SAFETENSORS_TYPE, decode_body

# Prompts: one text, a list of texts (a padded batch), or token ids ([pos] or
# [batch, pos]; a list of rows may be ragged, and is padded like texts).
PromptInput: TypeAlias = str | Sequence[str] | Sequence[Sequence[int]] | npt.ArrayLike
# Which hook points to cache: a name or glob, a list of names or globs, or a predicate on names.
NamesFilter: TypeAlias = str | Sequence[str] | Callable[[str], bool] | None
# Positions to keep, as TransformerLens's pos_slice: an int, a slice, a tuple
# (slice(*t)), indices or a boolean mask.
PosSlice: TypeAlias = int | tuple[int, ...] | slice | Sequence[int] | npt.ArrayLike | None

_GLOB_CHARS = frozenset("*?[")

# The statuses that the client retries (honouring Retry-After): lensd answers
# them before the work runs (docs/API.md, "Errors").
_RETRY_STATUSES = frozenset({429, 503})


class Output(NamedTuple):
    """What ``Model(..., return_type="both")`` returns, as TransformerLens's ``Output``."""

    logits: np.ndarray
    loss: np.ndarray


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

    def model(self, name: str) -> Model:
        """The model served under ``name``, with its full info (hook points included).

        Raises:
            LensdError: 404 when no model has that name.
        """
        return Model(self, name, self._request("GET", _model_path(name)))

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
        try:
            response = self._session.request(
                method,
                url,
                json=body,
                headers={"Accept": SAFETENSORS_TYPE if tensors else JSON_TYPE},
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


class Model:
    """A model served by lensd, used as TransformerLens's HookedTransformer is.

    Attributes:
        client: the client it was obtained from.
        name: the name lensd serves it under.
        info: ``GET /v1/models/{name}``'s answer.
        cfg: ``info["config"]`` as attributes (``cfg.n_layers``, ``cfg.d_model``, ...).
        hook_points: the names of its hook points, in the daemon's order.
    """

    def __init__(self, client: Client, name: str, info: dict[str, Any]) -> None:
        self.client = client
        self.name = name
        self.info = info
        self.cfg = SimpleNamespace(**info["config"])
        self.hook_points: list[str] = [point["name"] for point in info.get("hook_points", [])]

    def __repr__(self) -> str:
        return f"Model({self.name!r}, client={self.client!r})"

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
    ) -> np.ndarray | Output | None:
        """Runs the model, as TL's forward.

        Args:
            input: a text, a list of texts, or token ids.
            return_type: ``"logits"`` (float32 [batch, pos, d_vocab_out]); ``"loss"``
                (the mean next-token loss over real tokens, a 0-d array, or with
                ``loss_per_token`` [batch, pos - 1]); ``"both"`` (an :class:`Output`);
                None (runs it and returns None).
            loss_per_token: per-token instead of mean loss.
            prepend_bos, padding_side: override the model's defaults for texts.
        """
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, not {return_type!r}")
        body = _prompt_body(input, prepend_bos, padding_side)
        loss_field = "per_token_loss" if loss_per_token else "loss"
        if return_type in ("loss", "both"):
            body[loss_field] = True
        data = self._post("logits", body, tensors=True)
        if return_type is None:
            return None
        if return_type == "logits":
            return data["logits"]
        loss = np.asarray(data[loss_field], dtype=np.float32)
        return loss if return_type == "loss" else Output(data["logits"], loss)

    def run_with_cache(
        self,
        input: PromptInput,
        names_filter: NamesFilter = None,
        pos_slice: PosSlice = None,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        dtype: npt.DTypeLike | None = None,
    ) -> tuple[np.ndarray, ActivationCache]:
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

        Returns:
            ``(logits, cache)``: float32 (or ``dtype``) logits [batch, pos, d_vocab_out]
            and an :class:`ActivationCache`.
        """
        body = _prompt_body(input, prepend_bos, padding_side)
        positions = None if pos_slice is None else self._positions(pos_slice, body)
        body.update(self._names_body(names_filter))
        if positions is not None:
            body["positions"] = positions
        if dtype is not None:
            body["dtype"] = np.dtype(dtype).name
        data = self._post("run_with_cache", body, tensors=True)
        logits = data.pop("logits")
        data.pop("tokens", None)
        activations = {name: value for name, value in data.items() if isinstance(value, np.ndarray)}
        return logits, ActivationCache(activations, self.cfg.n_layers)

    def test_prompt(
        self,
        prompt: str,
        answer: str,
        prepend_space_to_answer: bool = True,
        top_k: int = 10,
        print_details: bool = True,
        prepend_bos: bool | None = None,
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
        data = self._post("test_prompt", body)
        if print_details:
            text = data["text"]
            print(text, end="" if text.endswith("\n") else "\n")
        return data

    def attention(
        self, prompt: str, layers: Iterable[int] | None = None, heads: Iterable[int] | None = None
    ) -> dict[str, Any]:
        """Attention patterns of one prompt (the dashboard's data).

        Returns:
            ``patterns`` (np.ndarray [n_layers_asked, n_heads_asked, query_pos, key_pos]),
            ``str_tokens``, ``tokens``, ``layers`` and ``heads``.
        """
        body: dict[str, Any] = {"prompt": prompt}
        if layers is not None:
            body["layers"] = [int(layer) for layer in layers]
        if heads is not None:
            body["heads"] = [int(head) for head in heads]
        return self._post("attention", body, tensors=True)

    def logit_diff(
        self,
        input: PromptInput,
        answers: Sequence[Any],
        attribution: Iterable[str] = (),
        position: int | None = None,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
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
        data = self._post("logit_diff", body)
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
    ) -> tuple[np.ndarray, ActivationCache, dict[str, Any]]:
        """A run with interventions.

        Args:
            hooks: ``{"name": hook, "op": "zero" | "mean" | "set" | "add" | "scale" |
                "patch", "positions": [...], "heads": [...], "value": ..., "factor": ...}``
                each (docs/API.md).
            names_filter: activations to capture after the interventions (as in
                :meth:`run_with_cache`; None: none).
            answers: answer pairs, for the logit-difference metric.
            patch_from: the prompts whose activations ``"patch"`` copies.

        Returns:
            ``(logits, cache, metric)``; metric has ``logit_diff`` and ``mean`` when
            ``answers`` is given.
        """
        body = _prompt_body(input, prepend_bos, padding_side)
        body["hooks"] = [dict(hook) for hook in hooks]
        if names_filter is not None:
            body.update(self._names_body(names_filter))
        if answers is not None:
            body["answers"] = [list(p) if isinstance(p, (list, tuple)) else p for p in answers]
        if patch_from is not None:
            body["patch_from"] = _prompt_body(patch_from, None, None)
        data = self._post("run_with_hooks", body, tensors=True)
        logits = data.pop("logits")
        data.pop("tokens", None)
        activations = {name: value for name, value in data.items() if isinstance(value, np.ndarray)}
        metric = {key: data[key] for key in ("logit_diff", "mean") if key in data}
        return logits, ActivationCache(activations, self.cfg.n_layers), metric

    def generate(
        self,
        input: PromptInput,
        max_new_tokens: int = 10,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
        stop_at_eos: bool = True,
        hooks: Sequence[dict[str, Any]] = (),
    ) -> list[str]:
        """Continues each prompt, greedily (TL's ``do_sample=False``) or by seeded sampling.

        Returns:
            The texts, prompt and continuation (``[..]`` of one for one prompt).
        """
        body = _prompt_body(input, None, None)
        body.update({"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                     "temperature": temperature, "seed": seed, "stop_at_eos": stop_at_eos})
        if top_k is not None:
            body["top_k"] = top_k
        if hooks:
            body["hooks"] = [dict(hook) for hook in hooks]
        return self._post("generate", body)["text"]

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
        if progress_id is not None:
            body["progress_id"] = progress_id
        return Patched(self._post("patch", body, tensors=True))

    def _post(self, endpoint: str, body: dict[str, Any], *, tensors: bool = False) -> dict[str, Any]:
        return self.client._request("POST", f"{_model_path(self.name)}/{endpoint}", body, tensors=tensors)

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
        positions = np.asarray(pos_slice)
        if positions.dtype == np.bool_:
            return np.flatnonzero(positions).tolist()
        if positions.ndim != 1 or positions.dtype.kind not in "iu":
            raise TypeError(
                f"pos_slice must be an int, a slice, a tuple, indices or a mask, not {pos_slice!r}"
            )
        return positions.tolist()


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
    """Token ids as an int64 array; raises TypeError for anything but integers."""
    ids = np.asarray(tokens)
    if ids.dtype.kind not in "iu" and not (allow_empty and ids.size == 0):
        raise TypeError(f"token ids must be integers, not {ids.dtype} ({type(tokens).__name__})")
    return ids.astype(np.int64)
