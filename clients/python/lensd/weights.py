"""A served model's weights as TransformerLens's HookedTransformer shows them (``model.W_Q``,
``model.blocks[0].attn.W_O``, ``model.state_dict()``, ``model.OV``, ...), from
``POST /v1/models/{m}/weights``.

The weights come in one request, on first use, and are kept per processing mode (the
model's ``processing``): ``model.W_Q`` and ``model.with_processing("none").W_Q`` are two
fetches, each once. They are the weights the model runs with, after its weight processing
(with ``fold_ln`` there are no LayerNorm weights, as in TL). Arrays are read-only: they
are shared by every property that returns them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import TooLarge
from .factored import FactoredMatrix
from .tensors import as_numpy

# the weights fetched, per client: {(model name, processing spec): ({name: array}, the
# processing the daemon answered they have)}
_FETCHED: weakref.WeakKeyDictionary[Any, dict[tuple[str, str | None], tuple[dict[str, np.ndarray], str]]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()

# the block's modules that a TL HookedTransformer block may have
_BLOCK_MODULES = ("ln1", "ln1_post", "ln2", "ln2_post", "attn", "mlp")


def _expand_kv(value: np.ndarray, n_heads: int) -> np.ndarray:
    """Grouped-query keys/values [n_kv, ...] repeated to [n_heads, ...] as TL's repeat_interleave."""
    return np.repeat(value, n_heads // value.shape[0], axis=0)


class _Module:
    """One module of the model (``blocks[L].attn``, ``ln_final``): its parameters as
    attributes (``attn.W_O``), with TL's derived ones (``attn.W_K`` of grouped-query
    attention expanded, ``attn.OV``, ``attn.QK``)."""

    def __init__(self, model: WeightsMixin, prefix: str) -> None:
        self._model = model
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        weights = self._model._weights()
        key = f"{self._prefix}.{name}"
        if key in weights:
            return weights[key]
        if name in ("W_K", "W_V", "b_K", "b_V") and f"{self._prefix}._{name}" in weights:
            return _expand_kv(weights[f"{self._prefix}._{name}"], self._model.cfg.n_heads)
        if name == "OV" and f"{self._prefix}.W_O" in weights:
            return FactoredMatrix(self.W_V, self.W_O)
        if name == "QK" and f"{self._prefix}.W_Q" in weights:
            return FactoredMatrix(self.W_Q, np.swapaxes(self.W_K, -1, -2))
        if any(k.startswith(key + ".") for k in weights):
            return _Module(self._model, key)
        raise AttributeError(f"{self._prefix} of model {self._model.name!r} has no {name} "
                             f"(under its processing {self._model._answered_processing()!r})")

    def __dir__(self) -> list[str]:
        weights = self._model._weights()
        own = {k[len(self._prefix) + 1:].split(".")[0] for k in weights if k.startswith(self._prefix + ".")}
        return sorted(own)

    def __repr__(self) -> str:
        return f"<{self._prefix} of {self._model.name!r}>"


class _Block:
    """``model.blocks[L]``: its modules ``ln1``, ``attn``, ``ln2``, ``mlp`` (and Gemma's
    ``ln1_post``/``ln2_post``), as TL's TransformerBlock."""

    def __init__(self, model: WeightsMixin, layer: int) -> None:
        self._model = model
        self.layer = layer

    def __getattr__(self, name: str) -> _Module:
        if name in _BLOCK_MODULES:
            return _Module(self._model, f"blocks.{self.layer}.{name}")
        raise AttributeError(f"a block has no {name} (its modules: {', '.join(_BLOCK_MODULES)})")

    def __repr__(self) -> str:
        return f"<blocks.{self.layer} of {self._model.name!r}>"


class _Blocks:
    """``model.blocks``: a sequence of n_layers blocks."""

    def __init__(self, model: WeightsMixin) -> None:
        self._model = model

    def __len__(self) -> int:
        return int(self._model.cfg.n_layers)

    def __getitem__(self, layer: int) -> _Block:
        n = len(self)
        if not -n <= layer < n:
            raise IndexError(f"block {layer} of a model with {n} layers")
        return _Block(self._model, layer % n)

    def __iter__(self) -> Iterator[_Block]:
        return (self[layer] for layer in range(len(self)))


class WeightsMixin:
    """TransformerLens's weight properties for :class:`lensd.Model` (which supplies
    ``_post``, ``cfg``, ``name``, ``client``, ``processing`` and ``to_single_token``).

    Stacked over layers as TL stacks them: ``W_Q``, ``W_K``, ``W_V`` [n_layers, n_heads,
    d_model, d_head] (grouped-query keys and values expanded to n_heads, as TL's
    properties; the state dict holds TL's ``_W_K`` [n_key_value_heads, ...]), ``W_O``
    [n_layers, n_heads, d_head, d_model], ``b_Q``/``b_K``/``b_V`` [n_layers, n_heads,
    d_head], ``b_O`` [n_layers, d_model], ``W_in``/``W_gate`` [n_layers, d_model, d_mlp],
    ``W_out`` [n_layers, d_mlp, d_model], ``b_in`` [n_layers, d_mlp], ``b_out`` [n_layers,
    d_model]; and ``W_E`` [d_vocab, d_model], ``W_pos`` [n_ctx, d_model], ``W_E_pos``,
    ``W_U`` [d_model, d_vocab_out], ``b_U``; ``OV`` and ``QK`` as :class:`FactoredMatrix`
    [n_layers, n_heads, d_model, d_model].
    """

    # ---- fetching -----------------------------------------------------------

    def _weights(self) -> dict[str, np.ndarray]:
        """Every parameter of the model under its processing, fetched once."""
        return self._fetched()[0]

    def _fetched(self) -> tuple[dict[str, np.ndarray], str]:
        """The weights and their processing (as the daemon names it), fetched once per
        client, model and processing mode."""
        key = (self.name, self.processing)  # type: ignore[attr-defined]
        with _LOCK:
            per_client = _FETCHED.setdefault(self.client, {})  # type: ignore[attr-defined]
            cached = per_client.get(key)
        if cached is not None:
            return cached
        fetched = self._fetch_weights()
        with _LOCK:
            return per_client.setdefault(key, fetched)

    def _fetch_weights(self) -> tuple[dict[str, np.ndarray], str]:
        """The whole state dict in one request; when the daemon finds that over its
        response limit (413), in as many requests of fewer names as it takes."""
        try:
            data = self._post("weights", {}, tensors=True)  # type: ignore[attr-defined]
            processing = data.get("processing")
            arrays = {k: v for k, v in data.items() if isinstance(v, np.ndarray)}
        except TooLarge:
            listing = self._post("weights", {"list": True})  # type: ignore[attr-defined]
            processing = listing.get("processing")
            arrays = {}
            pending = [list(listing["weights"])]
            while pending:
                names = pending.pop(0)
                try:
                    part = self._post("weights", {"names": names}, tensors=True)  # type: ignore[attr-defined]
                except TooLarge:
                    if len(names) == 1:
                        raise
                    pending[:0] = [names[: len(names) // 2], names[len(names) // 2:]]
                    continue
                arrays.update({k: v for k, v in part.items() if isinstance(v, np.ndarray)})
            arrays = {name: arrays[name] for name in listing["weights"]}
        for value in arrays.values():
            value.flags.writeable = False
        return arrays, str(processing)

    def _answered_processing(self) -> str:
        """The processing the daemon said the fetched weights have ("none", "fold_ln,...")."""
        return self._fetched()[1]

    def _param(self, name: str) -> np.ndarray:
        weights = self._weights()
        if name not in weights:
            raise AttributeError(f"model {self.name!r} has no parameter {name}")  # type: ignore[attr-defined]
        return weights[name]

    def _stacked(self, module: str, name: str) -> np.ndarray:
        """``np.stack([block.<module>.<name> for block in blocks])``."""
        return np.stack([getattr(getattr(block, module), name) for block in self.blocks])

    # ---- TL's HookedTransformer API ----------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """TL's ``model.state_dict()`` without its buffers (``attn.mask``, ``attn.IGNORE``,
        rotary tables): every parameter under its TL name, in TL's order, read-only."""
        return dict(self._weights())

    @property
    def blocks(self) -> _Blocks:
        """The transformer blocks: ``model.blocks[L].attn.W_O``, ``.ln1.w``, ``.mlp.W_in``, ..."""
        return _Blocks(self)

    @property
    def ln_final(self) -> _Module:
        return _Module(self, "ln_final")

    @property
    def W_E(self) -> np.ndarray:
        """The token embedding [d_vocab, d_model]."""
        return self._param("embed.W_E")

    @property
    def W_pos(self) -> np.ndarray:
        """The learned position embedding [n_ctx, d_model] (none with rotary embeddings)."""
        return self._param("pos_embed.W_pos")

    @property
    def W_E_pos(self) -> np.ndarray:
        """W_E and W_pos concatenated [d_vocab + n_ctx, d_model]."""
        return np.concatenate([self.W_E, self.W_pos], axis=0)

    @property
    def W_U(self) -> np.ndarray:
        """The unembedding [d_model, d_vocab_out]."""
        return self._param("unembed.W_U")

    @property
    def b_U(self) -> np.ndarray:
        return self._param("unembed.b_U")

    @property
    def W_Q(self) -> np.ndarray:
        return self._stacked("attn", "W_Q")

    @property
    def W_K(self) -> np.ndarray:
        return self._stacked("attn", "W_K")

    @property
    def W_V(self) -> np.ndarray:
        return self._stacked("attn", "W_V")

    @property
    def W_O(self) -> np.ndarray:
        return self._stacked("attn", "W_O")

    @property
    def b_Q(self) -> np.ndarray:
        return self._stacked("attn", "b_Q")

    @property
    def b_K(self) -> np.ndarray:
        return self._stacked("attn", "b_K")

    @property
    def b_V(self) -> np.ndarray:
        return self._stacked("attn", "b_V")

    @property
    def b_O(self) -> np.ndarray:
        return self._stacked("attn", "b_O")

    @property
    def W_in(self) -> np.ndarray:
        return self._stacked("mlp", "W_in")

    @property
    def W_gate(self) -> np.ndarray | None:
        """The gate weights of a gated MLP [n_layers, d_model, d_mlp]; None otherwise, as TL."""
        if not getattr(self.cfg, "gated_mlp", False):  # type: ignore[attr-defined]
            return None
        return self._stacked("mlp", "W_gate")

    @property
    def W_out(self) -> np.ndarray:
        return self._stacked("mlp", "W_out")

    @property
    def b_in(self) -> np.ndarray:
        return self._stacked("mlp", "b_in")

    @property
    def b_out(self) -> np.ndarray:
        return self._stacked("mlp", "b_out")

    @property
    def QK(self) -> FactoredMatrix:
        """``FactoredMatrix(W_Q, W_K^T)`` [n_layers, n_heads, d_model, d_model]."""
        return FactoredMatrix(self.W_Q, np.swapaxes(self.W_K, -1, -2))

    @property
    def OV(self) -> FactoredMatrix:
        """``FactoredMatrix(W_V, W_O)`` [n_layers, n_heads, d_model, d_model]."""
        return FactoredMatrix(self.W_V, self.W_O)

    def tokens_to_residual_directions(self, tokens: str | int | npt.ArrayLike) -> np.ndarray:
        """The unembedding vectors of tokens (TL's): W_U's columns, [d_model] for one token
        (a string that is one token, an id, or one id in a list or array), else
        [*tokens.shape, d_model].

        Only meaningful for directions in the residual stream with fold_ln (LayerNorm's
        weights change the unembedding otherwise), and LayerNorm's scale still applies.

        Raises:
            ValueError: for a string that is not one token, or ids that are not integers.
        """
        W_U = self.W_U
        if isinstance(tokens, str):
            return W_U[:, self.to_single_token(tokens)]  # type: ignore[attr-defined]
        ids = np.asarray(as_numpy(tokens))
        if ids.dtype.kind not in "iu":
            raise ValueError(f"tokens must be a string or integer ids, not {ids.dtype}")
        if ids.size == 1:
            return W_U[:, int(ids.reshape(()))]
        return np.moveaxis(W_U[:, ids], 0, -1)
