"""TransformerLens's activation names and a numpy ActivationCache that resolves them.

The name rules follow ``transformer_lens.utils.get_act_name`` (TransformerLens
3.9.0, transformer_lens/utilities/components_utils.py) and the indexing
follows ``ActivationCache.__getitem__`` (transformer_lens/ActivationCache.py);
the analysis methods (residual stacks, LayerNorm on a stack, logit
attribution) are that file's, on numpy arrays: no torch, no devices.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np

# A name such as "k6" or "scale4ln1": its letters, then a layer, then a layer type.
_SHORTHAND = re.compile(r"([a-z]+)(\d+)([a-z]?.*)")

_LAYER_TYPE_ALIASES = {
    "a": "attn",
    "attention": "attn",
    "m": "mlp",
    "b": "",
    "block": "",
    "blocks": "",
}
_NAME_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_ATTN_NAMES = frozenset({"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"})
_MLP_NAMES = frozenset({"pre", "post", "mid", "pre_linear"})
_LAYER_NORM_NAMES = frozenset({"scale", "normalized"})


def get_act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """The full hook name of a TransformerLens shorthand, by ``utils.get_act_name``'s rules.

    - A name with a dot or starting with ``hook_``, given alone, is already full.
    - A name of letters then digits then the rest (``"k6"``, ``"scale4ln1"``)
      is split into name, layer and layer type, which replace the arguments.
    - Aliases: ``attn`` → ``pattern``, ``attn_logits`` → ``attn_scores``,
      ``key``/``query``/``value`` → ``k``/``q``/``v``, ``mlp_pre``/``mlp_mid``/``mlp_post``
      → ``pre``/``mid``/``post``; layer types ``a``/``attention`` → ``attn``,
      ``m`` → ``mlp``, ``b``/``block``/``blocks`` → none.
    - q, k, v, z, rot_q, rot_k, result, pattern and attn_scores live in ``attn``;
      pre, post, mid and pre_linear in ``mlp``, whatever layer type is given.
    - ``scale`` and ``normalized`` without a layer are ``ln_final``'s.

    Examples: ``get_act_name("k", 6, "a") == "blocks.6.attn.hook_k"``,
    ``get_act_name("embed") == "hook_embed"``,
    ``get_act_name("scale4ln1") == "blocks.4.ln1.hook_scale"``,
    ``get_act_name("resid_post", 3) == "blocks.3.hook_resid_post"``.
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    shorthand = _SHORTHAND.match(name)
    if shorthand is not None:
        name, layer, layer_type = shorthand.groups()
    name = _NAME_ALIASES.get(name, name)
    if name in _ATTN_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIASES:
        layer_type = _LAYER_TYPE_ALIASES[layer_type]

    parts = []
    if layer is not None:
        parts.append(f"blocks.{layer}")
    elif name in _LAYER_NORM_NAMES:
        parts.append("ln_final")
    if layer_type:
        parts.append(layer_type)
    parts.append(f"hook_{name}")
    return ".".join(parts)


# What TransformerLens's ``utils.Slice`` accepts: None (everything), an int (that
# index; the axis goes), a slice, a tuple (``slice(*t)``), or indices / a boolean
# mask (a list or array).
SliceInput = int | slice | tuple | list | np.ndarray | None


class Slice:
    """TransformerLens's ``utils.Slice`` over numpy arrays: one index, range or set of indices on one axis.

    Modes, as TL names them: ``"int"`` (an integer: indexing drops the axis),
    ``"slice"`` (a slice, or a tuple taken as ``slice(*t)``: ``(k,)`` is ``:k``,
    ``(m, k)`` is ``m:k``, ``(m, k, n)`` is ``m:k:n``), ``"array"`` (a list or
    array of indices, or a boolean mask) and ``"identity"`` (None: unchanged).
    numpy integers count as ints here (TL refuses them).

    Raises:
        ValueError: for any other input.
    """

    def __init__(self, input_slice: SliceInput = None) -> None:
        if isinstance(input_slice, tuple):
            self.slice: int | slice | np.ndarray = slice(*input_slice)
            self.mode = "slice"
        elif isinstance(input_slice, (int, np.integer)):
            self.slice = int(input_slice)
            self.mode = "int"
        elif isinstance(input_slice, slice):
            self.slice = input_slice
            self.mode = "slice"
        elif isinstance(input_slice, (list, np.ndarray)):
            self.slice = np.asarray(input_slice)
            self.mode = "array"
        elif input_slice is None:
            self.slice = slice(None)
            self.mode = "identity"
        else:
            raise ValueError(f"Invalid input_slice {input_slice!r}")

    @classmethod
    def of(cls, input_slice: Slice | SliceInput) -> Slice:
        """``input_slice`` itself when it is a Slice, else ``Slice(input_slice)``."""
        return input_slice if isinstance(input_slice, Slice) else cls(input_slice)

    def apply(self, array: np.ndarray, dim: int = 0) -> np.ndarray:
        """``array`` indexed by this slice on axis ``dim`` (negative counts from the end)."""
        index: list[Any] = [slice(None)] * array.ndim
        index[dim] = self.slice
        return array[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        """The indices this slice takes of an axis of length ``max_ctx`` (an int's: ``[i]``).

        Raises:
            ValueError: when max_ctx is missing and the slice is not an int.
        """
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("max_ctx must be specified if slice is not an integer")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    def __repr__(self) -> str:
        return f"Slice: {self.slice} Mode: {self.mode} "


CacheKey = str | tuple


def _projection_2d(project: np.ndarray | None) -> tuple[np.ndarray | None, bool]:
    """``(project as [d_model, n_outs], whether to squeeze the last axis at the end)``."""
    if project is None:
        return None, False
    project = np.asarray(project)
    if project.ndim == 1:
        return project[:, None], True
    return project, False


class ActivationCache(Mapping[str, np.ndarray]):
    """The activations of one run, by hook name, indexed as TransformerLens's ActivationCache is.

    ``cache["blocks.0.attn.hook_z"]`` takes a full name; ``cache["pattern", 0]``,
    ``cache["resid_post", -1]`` (negative layers count from ``n_layers``),
    ``cache["scale"]`` (``ln_final.hook_scale``), ``cache["scale", 3, "ln1"]``,
    ``cache["embed"]`` or ``cache["k6"]`` take :func:`get_act_name`'s shorthands.
    Iteration, ``len``, ``keys()``, ``items()`` and ``values()`` are over the
    full names; ``in`` accepts whatever indexing accepts.

    The analysis methods are TransformerLens 3.9's (ActivationCache.py), with
    its signatures, labels and numerics, on numpy float32 arrays: residual
    stacks (:meth:`accumulated_resid`, :meth:`decompose_resid`,
    :meth:`stack_head_results`, :meth:`stack_neuron_results`,
    :meth:`get_full_resid_decomposition`, :meth:`stack_activation`), the
    cached-scale LayerNorm (:meth:`apply_ln_to_stack`) and direct logit
    attribution (:meth:`logit_attrs`). Shapes: a stack is
    ``[components, *batch_and_pos, d_model]``, where batch_and_pos is
    ``[batch, pos]``, ``[pos]`` without a batch axis, and loses pos under an int
    pos_slice. They read ``model.cfg``; those that need weights
    (head results from ``hook_z``, neuron results, biases, the final
    LayerNorm's ``w``/``b`` for an unfolded LN or RMS logit lens, token
    directions) read them from ``model`` by TL's names.

    Attributes:
        cache_dict: the activations by full hook name.
        n_layers: the model's number of layers, for negative layer indices.
        model: the :class:`lensd.client.Model` the activations are from, or None
            (then only indexing works).
        has_batch_dim: whether the activations have a leading batch axis.
    """

    def __init__(
        self,
        cache_dict: Mapping[str, np.ndarray],
        n_layers: int,
        model: Any = None,
        has_batch_dim: bool = True,
    ) -> None:
        self.cache_dict: dict[str, np.ndarray] = dict(cache_dict)
        self.n_layers = n_layers
        self.model = model
        self.has_batch_dim = has_batch_dim

    # ---- the mapping ------------------------------------------------------

    def __getitem__(self, key: CacheKey) -> np.ndarray:
        """The activation named by a full name, a shorthand, or a tuple ``(name, layer[, layer_type])``.

        Raises:
            KeyError: when the name it resolves to is not in the cache.
        """
        if isinstance(key, str):
            if key in self.cache_dict:
                return self.cache_dict[key]
            return self.cache_dict[get_act_name(key)]
        if isinstance(key, tuple):
            if len(key) > 1 and key[1] is not None and key[1] < 0:
                key = (key[0], self.n_layers + key[1], *key[2:])
            return self.cache_dict[get_act_name(*key)]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __repr__(self) -> str:
        return f"ActivationCache with keys {list(self.cache_dict)}"

    @property
    def has_embed(self) -> bool:
        """Whether ``hook_embed`` is cached."""
        return "hook_embed" in self.cache_dict

    @property
    def has_pos_embed(self) -> bool:
        """Whether ``hook_pos_embed`` is cached."""
        return "hook_pos_embed" in self.cache_dict

    # ---- the batch axis ---------------------------------------------------

    def _batch_size(self) -> int:
        """The batch size: the most common leading length over the entries (TL's rule), 1 if none."""
        counts = Counter(v.shape[0] for v in self.cache_dict.values() if v.ndim > 0)
        return counts.most_common(1)[0][0] if counts else 1

    def remove_batch_dim(self) -> ActivationCache:
        """Drops the batch axis of a batch of one, in place, and returns this cache (as TL does).

        Entries whose leading length is not 1 are left as they are. A second call
        only logs a warning.

        Raises:
            ValueError: when the batch size is not 1.
        """
        if not self.has_batch_dim:
            logging.warning("Tried removing batch dimension after already having removed it.")
            return self
        batch_size = self._batch_size()
        if batch_size != 1:
            raise ValueError(f"Cannot remove batch dimension from cache with batch size {batch_size}")
        for key, value in self.cache_dict.items():
            if value.ndim > 0 and value.shape[0] == 1:
                self.cache_dict[key] = value[0]
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice: Slice | SliceInput) -> ActivationCache:
        """A new cache of the batch rows ``batch_slice`` takes (an int drops the batch axis).

        Entries whose leading length is not the batch size are shared unchanged.

        Raises:
            ValueError: when the cache has no batch axis and batch_slice is not None.
        """
        batch_slice = Slice.of(batch_slice)
        if not self.has_batch_dim and batch_slice.mode != "identity":
            raise ValueError("Cannot index into a cache without a batch dim")
        batch_size = self._batch_size()
        sliced = {
            name: (
                batch_slice.apply(value, dim=0) if value.ndim > 0 and value.shape[0] == batch_size else value
            )
            for name, value in self.cache_dict.items()
        }
        return ActivationCache(
            sliced, self.n_layers, self.model, has_batch_dim=self.has_batch_dim and batch_slice.mode != "int"
        )

    # ---- what the model provides -----------------------------------------

    def _cfg(self) -> Any:
        if self.model is None:
            raise ValueError(
                "this ActivationCache has no model: build it with "
                "ActivationCache(cache_dict, n_layers, model=...) (run_with_cache does) "
                "to use its analysis methods"
            )
        return self.model.cfg

    def _layer_weight(self, layer: int, module: str, name: str) -> np.ndarray:
        """``model.blocks[layer].<module>.<name>``, else the stacked ``model.<name>[layer]``."""
        self._cfg()
        blocks = getattr(self.model, "blocks", None)
        if blocks is not None:
            value = getattr(getattr(blocks[layer], module, None), name, None)
            if value is not None:
                return np.asarray(value)
        stacked = getattr(self.model, name, None)
        if stacked is None:
            raise AttributeError(
                f"the model has no weight {name} (neither blocks[{layer}].{module}.{name} nor a stacked "
                f"{name}); this method needs the model's weights"
            )
        return np.asarray(stacked)[layer]

    def _accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> np.ndarray:
        """TL's ``model.accumulated_bias``, [d_model]: Σ b_O (+ Σ b_out) of the layers before
        ``layer``, + layer's b_O if mlp_input."""
        cfg = self._cfg()
        bias = np.zeros(cfg.d_model, dtype=np.float32)
        for l in range(layer):
            bias = bias + self._layer_weight(l, "attn", "b_O")
            if include_mlp_biases:
                bias = bias + self._layer_weight(l, "mlp", "b_out")
        if mlp_input:
            if layer >= cfg.n_layers:
                raise ValueError("Cannot include attn_bias from beyond the final layer")
            bias = bias + self._layer_weight(layer, "attn", "b_O")
        return bias

    def _ln_final(self, stack: np.ndarray) -> np.ndarray:
        """``model.ln_final`` on each vector of ``stack`` ([..., d_model]), statistics recomputed per vector.

        LN/LNPre centre; all divide by sqrt(mean(x²) + eps); LN and RMS then
        apply ``ln_final.w`` (and LN ``ln_final.b``), read from the model.
        """
        cfg = self._cfg()
        norm = cfg.normalization_type
        x = stack.astype(np.float32, copy=False)
        if norm in ("LN", "LNPre"):
            x = x - x.mean(axis=-1, keepdims=True)
        scale = np.sqrt((x * x).mean(axis=-1, keepdims=True) + np.float32(cfg.eps))
        x = x / scale
        if norm in ("LN", "RMS"):
            ln_final = getattr(self.model, "ln_final", None)
            w = getattr(ln_final, "w", None)
            b = getattr(ln_final, "b", None) if norm == "LN" else np.float32(0)
            if w is None or b is None:
                raise AttributeError(
                    f"recomputing the final {norm} needs model.ln_final.w"
                    f"{' and .b' if norm == 'LN' else ''}, which this model does not provide "
                    f"(a model processed with fold_ln needs neither)"
                )
            x = x * np.asarray(w) + np.asarray(b)
        return x

    def _cached_ln_scale(
        self, layer: int | None, mlp_input: bool, pos_slice: Slice, batch_slice: Slice | None = None
    ) -> np.ndarray:
        """The cached hook_scale of the LayerNorm in front of ``layer`` ([batch, pos, 1]), sliced.

        ``ln_final`` for layer None or n_layers, else ``blocks.{layer}.ln2`` if
        mlp_input else ``ln1``.

        Raises:
            KeyError: naming the hook when it is not cached.
        """
        if layer is None or layer == self._cfg().n_layers:
            key = "ln_final.hook_scale"
        else:
            key = f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        if key not in self.cache_dict:
            raise KeyError(
                f"Cached LN scale not found at '{key}'. apply_ln operations need that hook in the cache "
                f"(a names_filter may have left it out)"
            )
        scale = pos_slice.apply(self.cache_dict[key], dim=-2)
        if batch_slice is not None and self.has_batch_dim:
            scale = batch_slice.apply(scale)
        return scale

    # ---- LayerNorm on a stack ---------------------------------------------

    def apply_ln_to_stack(
        self,
        residual_stack: np.ndarray,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: Slice | SliceInput = None,
        batch_slice: Slice | SliceInput = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> np.ndarray:
        """The stack as ``layer``'s LayerNorm treats its input: centred (LN, LNPre), over the cached scale.

        Args:
            residual_stack: [components, *batch_and_pos, d_model], already pos-sliced
                by pos_slice (which is applied here to the scale only).
            layer: the layer whose input this is, in [0, n_layers]; None, -1 and
                n_layers mean the unembed (``ln_final``).
            mlp_input: use ``ln2`` (the MLP's input) instead of ``ln1``.
            pos_slice: the positions residual_stack holds.
            batch_slice: batch rows to take, of residual_stack (axis 1, when
                has_batch_dim) and of the scale.
            has_batch_dim: whether residual_stack has a batch axis.
            recompute_ln: for the unembed only, apply ``ln_final`` to each
                component with statistics of its own (the logit lens) instead of
                the cached scale.

        Returns:
            [components, *batch_and_pos, d_model]; the stack unchanged when the
            model has no LayerNorm or RMSNorm.
        """
        cfg = self._cfg()
        if cfg.normalization_type not in ("LN", "LNPre", "RMS", "RMSPre"):
            return residual_stack
        pos_slice = Slice.of(pos_slice)
        batch_slice = Slice.of(batch_slice)
        if layer is None or layer == -1:
            layer = cfg.n_layers
        if has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        if recompute_ln and layer == cfg.n_layers:
            return self._ln_final(residual_stack)
        if cfg.normalization_type in ("LN", "LNPre"):
            residual_stack = residual_stack - residual_stack.mean(axis=-1, keepdims=True)
        return residual_stack / self._cached_ln_scale(layer, mlp_input, pos_slice, batch_slice)

    # ---- residual stacks ----------------------------------------------------

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: Slice | SliceInput = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, list[str]]:
        """The residual stream at each layer up to the input of ``layer`` (the logit lens's stack).

        ``resid_pre`` of layers 0..layer-1 and of layer (labels ``"{l}_pre"``),
        with ``resid_mid`` of the earlier layers if incl_mid and of ``layer`` if
        mlp_input (``"{l}_mid"``); for layer None, -1 or n_layers the last is
        ``resid_post`` of the final layer (``"final_post"``).

        Args:
            apply_ln: apply the LayerNorm in front of ``layer``; for the whole
                stream that is ``ln_final`` recomputed per component (TL's logit
                lens), else the cached scale.
            pos_slice: positions to keep (axis -2).

        Returns:
            [components, *batch_and_pos, d_model], and the labels if return_labels.
        """
        cfg = self._cfg()
        pos_slice = Slice.of(pos_slice)
        if layer is None or layer == -1:
            layer = cfg.n_layers
        labels: list[str] = []
        parts: list[np.ndarray] = []
        for l in range(layer + 1):
            if l == cfg.n_layers:
                parts.append(self[("resid_post", cfg.n_layers - 1)])
                labels.append("final_post")
                continue
            parts.append(self[("resid_pre", l)])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self[("resid_mid", l)])
                labels.append(f"{l}_mid")
        components = np.stack([pos_slice.apply(p, dim=-2) for p in parts], axis=0)
        if apply_ln:
            components = self.apply_ln_to_stack(
                components,
                layer,
                pos_slice=pos_slice,
                mlp_input=mlp_input,
                has_batch_dim=self.has_batch_dim,
                recompute_ln=layer == cfg.n_layers,
            )
        return (components, labels) if return_labels else components

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: Slice | SliceInput = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, list[str]]:
        """The input of ``layer`` as the outputs that sum to it: embeddings, earlier attn and MLP outputs.

        Labels ``"embed"``, ``"pos_embed"`` (when cached and incl_embeds), then
        ``"{l}_attn_out"``, ``"{l}_mlp_out"`` for l < layer (mode ``"attn"`` or
        ``"mlp"`` keeps one kind; attn-only models have no MLP), and
        ``"{layer}_attn_out"`` if mlp_input. Biases are inside the outputs.
        layer None, -1 or n_layers means the whole stream.

        Returns:
            [components, *batch_and_pos, d_model], and the labels if return_labels.
        """
        cfg = self._cfg()
        pos_slice = Slice.of(pos_slice)
        if layer is None or layer == -1:
            layer = cfg.n_layers
        incl_attn = mode != "mlp"
        incl_mlp = mode != "attn" and not cfg.attn_only
        parts: list[np.ndarray] = []
        labels: list[str] = []
        if incl_embeds:
            if self.has_embed:
                parts.append(self["hook_embed"])
                labels.append("embed")
            if self.has_pos_embed:
                parts.append(self["hook_pos_embed"])
                labels.append("pos_embed")
        for l in range(layer):
            if incl_attn:
                parts.append(self[("attn_out", l)])
                labels.append(f"{l}_attn_out")
            if incl_mlp:
                parts.append(self[("mlp_out", l)])
                labels.append(f"{l}_mlp_out")
        if mlp_input and incl_attn:
            parts.append(self[("attn_out", layer)])
            labels.append(f"{layer}_attn_out")
        components = np.stack([pos_slice.apply(p, dim=-2) for p in parts], axis=0)
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        return (components, labels) if return_labels else components

    def compute_head_results(self) -> None:
        """Adds ``blocks.L.attn.hook_result`` = z[h] @ W_O[h], [*batch, pos, n_heads, d_model], no b_O.

        Nothing is done (but a warning logged) when layer 0's is already cached,
        as TL checks (TL also replaces a Bridge's stale 3-d entries, which a lensd
        cache never holds). W_O is read from the model (``blocks[L].attn.W_O``, or
        the stacked ``W_O``).
        """
        cfg = self._cfg()
        if "blocks.0.attn.hook_result" in self.cache_dict:
            logging.warning("Tried to compute head results when they were already cached")
            return
        for l in range(cfg.n_layers):
            z = self[("z", l, "attn")]  # [*batch, pos, n_heads, d_head]
            W_O = self._layer_weight(l, "attn", "W_O")  # [n_heads, d_head, d_model]
            # [..., h, 1, dh] @ [h, dh, d] sums over d_head for each head.
            self.cache_dict[f"blocks.{l}.attn.hook_result"] = np.matmul(z[..., None, :], W_O)[..., 0, :]

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: Slice | SliceInput = None,
        apply_ln: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, list[str]]:
        """Every head's output (its hook_result) of the layers before ``layer``, one component each.

        Labels ``"L{l}H{h}"``, layer-major; incl_remainder adds
        ``resid_post[layer - 1]`` minus their sum (``"remainder"``). Head
        results are computed from hook_z first when not cached
        (:meth:`compute_head_results`). layer None, -1 or n_layers: all layers.

        Returns:
            [layer * n_heads (+1), *batch_and_pos, d_model], and the labels if return_labels.
        """
        cfg = self._cfg()
        pos_slice = Slice.of(pos_slice)
        if layer is None or layer == -1:
            layer = cfg.n_layers
        self.compute_head_results()
        parts: list[np.ndarray] = []
        labels: list[str] = []
        for l in range(layer):
            # [*batch, pos, n_heads, d_model]: positions are axis -3.
            parts.append(pos_slice.apply(self[("result", l, "attn")], dim=-3))
            labels.extend(f"L{l}H{h}" for h in range(cfg.n_heads))
        if parts:
            components = np.moveaxis(np.concatenate(parts, axis=-2), -2, 0)
            if incl_remainder:
                remainder = pos_slice.apply(self[("resid_post", layer - 1)], dim=-2) - components.sum(axis=0)
                components = np.concatenate([components, remainder[None]], axis=0)
                labels.append("remainder")
        elif incl_remainder:
            components = pos_slice.apply(self[("resid_post", layer - 1)], dim=-2)[None]
            labels.append("remainder")
        else:
            components = np.zeros((0, *pos_slice.apply(self["hook_embed"], dim=-2).shape), dtype=np.float32)
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice)
        return (components, labels) if return_labels else components

    def stack_activation(
        self, activation_name: str, layer: int = -1, sublayer_type: str | None = None
    ) -> np.ndarray:
        """``activation_name`` of each layer before ``layer`` (None, -1: all), stacked: [layers, ...].

        sublayer_type is passed to :func:`get_act_name` (normally inferred).
        """
        if layer is None or layer == -1:
            layer = self._cfg().n_layers
        return np.stack([self[(activation_name, l, sublayer_type)] for l in range(layer)], axis=0)

    def get_neuron_results(
        self,
        layer: int,
        neuron_slice: Slice | SliceInput = None,
        pos_slice: Slice | SliceInput = None,
        project_output_onto: np.ndarray | None = None,
    ) -> np.ndarray:
        """Each neuron's output of ``layer``'s MLP: post[..., n] * W_out[n] (not cached: large and cheap).

        Args:
            neuron_slice: the neurons to take (default all).
            pos_slice: the positions to take.
            project_output_onto: [d_model] or [d_model, n_outs]; contracted with
                W_out first, so [..., d_mlp, d_model] is never formed.

        Returns:
            [*batch_and_pos, neurons, d_model] ([..., n_outs] projected onto a
            matrix; [..., neurons] onto a vector).
        """
        neuron_slice = Slice.of(neuron_slice)
        pos_slice = Slice.of(pos_slice)
        acts = self[("post", layer, "mlp")]
        W_out = self._layer_weight(layer, "mlp", "W_out")  # [d_mlp, d_model]
        # Positions first: an int neuron slice would move the position axis.
        acts = neuron_slice.apply(pos_slice.apply(acts, dim=-2), dim=-1)
        W_out = neuron_slice.apply(W_out, dim=0)
        if project_output_onto is None:
            return acts[..., None] * W_out
        projected = W_out @ np.asarray(project_output_onto)
        if projected.ndim == 1:
            return acts * projected
        return acts[..., None] * projected

    def _stack_neuron_results_ln_projected(
        self, layer: int, pos_slice: Slice, neuron_slice: Slice, project_2d: np.ndarray
    ) -> np.ndarray:
        """LN-applied, projected neuron stack without the [..., d_mlp, d_model] intermediate.

        With the cached ln1 scale s: LN_s(a_n W_out_n) @ p = (a_n / s)(W_out_n @ p
        - mean(W_out_n) Σp), the centring term only for LN/LNPre (TL's formula).
        """
        cfg = self._cfg()
        scale = self._cached_ln_scale(layer, False, pos_slice)
        centre = cfg.normalization_type in ("LN", "LNPre")
        sum_p = project_2d.sum(axis=0)
        parts = []
        for l in range(layer):
            W_out = neuron_slice.apply(self._layer_weight(l, "mlp", "W_out"), dim=0)
            linear = W_out @ project_2d  # [neurons, n_outs]
            if centre:
                linear = linear - W_out.mean(axis=-1)[:, None] * sum_p[None, :]
            acts = neuron_slice.apply(pos_slice.apply(self[("post", l, "mlp")], dim=-2), dim=-1)
            parts.append((acts / scale)[..., None] * linear)
        if not parts:
            empty = pos_slice.apply(self["hook_embed"], dim=-2)
            return np.zeros((0, *empty.shape[:-1], project_2d.shape[-1]), dtype=np.float32)
        return np.moveaxis(np.concatenate(parts, axis=-2), -2, 0)

    def stack_neuron_results(
        self,
        layer: int,
        pos_slice: Slice | SliceInput = None,
        neuron_slice: Slice | SliceInput = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
        project_output_onto: np.ndarray | None = None,
    ) -> np.ndarray | tuple[np.ndarray, list[str]]:
        """Every neuron's output of the MLPs before ``layer``, one component each (labels ``"L{l}N{n}"``).

        incl_remainder adds ``resid_post[layer - 1]`` minus their sum
        (``"remainder"``). project_output_onto ([d_model] or [d_model, n_outs])
        replaces each component's d_model axis by its projection, never forming
        [..., d_mlp, d_model]; with apply_ln the cached-scale LN is folded into
        it. layer None or -1: all layers. Memory: d_mlp times a residual stack
        per layer without a projection.

        Returns:
            [layer * neurons (+1), *batch_and_pos, d_model | n_outs | ()], and the
            labels if return_labels.
        """
        cfg = self._cfg()
        if layer is None or layer == -1:
            layer = cfg.n_layers
        neuron_slice = Slice.of(neuron_slice)
        pos_slice = Slice.of(pos_slice)
        project_2d, squeeze = _projection_2d(project_output_onto)
        neurons = np.atleast_1d(neuron_slice.apply(np.arange(cfg.d_mlp), dim=0))
        labels = [f"L{l}N{n}" for l in range(layer) for n in neurons]
        if apply_ln and project_2d is not None:
            components = self._stack_neuron_results_ln_projected(layer, pos_slice, neuron_slice, project_2d)
            if incl_remainder:
                resid = pos_slice.apply(self[("resid_post", layer - 1)], dim=-2)
                remainder = self.apply_ln_to_stack(resid[None], layer, pos_slice=pos_slice)[0] @ project_2d
                if components.shape[0] > 0:
                    remainder = remainder - components.sum(axis=0)
                components = np.concatenate([components, remainder[None]], axis=0)
                labels.append("remainder")
        else:
            parts = [
                self.get_neuron_results(
                    l, pos_slice=pos_slice, neuron_slice=neuron_slice, project_output_onto=project_2d
                )
                for l in range(layer)
            ]
            if parts:
                components = np.moveaxis(np.concatenate(parts, axis=-2), -2, 0)
                if incl_remainder:
                    resid = pos_slice.apply(self[("resid_post", layer - 1)], dim=-2)
                    if project_2d is not None:
                        resid = resid @ project_2d
                    components = np.concatenate([components, (resid - components.sum(axis=0))[None]], axis=0)
                    labels.append("remainder")
            elif incl_remainder:
                resid = pos_slice.apply(self[("resid_post", layer - 1)], dim=-2)
                if project_2d is not None:
                    resid = resid @ project_2d
                components = resid[None]
                labels.append("remainder")
            else:
                empty = pos_slice.apply(self["hook_embed"], dim=-2)
                if project_2d is not None:
                    empty = empty @ project_2d
                components = np.zeros((0, *empty.shape), dtype=np.float32)
            if apply_ln:
                components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice)
        if squeeze:
            components = components[..., 0]
        return (components, labels) if return_labels else components

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: Slice | SliceInput = None,
        return_labels: bool = False,
        project_output_onto: np.ndarray | None = None,
    ) -> np.ndarray | tuple[np.ndarray, list[str]]:
        """The input of ``layer`` as every head, neuron (or MLP), the embeddings and biases, which sum to it.

        Order and labels: heads ``"L{l}H{h}"`` (of layer too if mlp_input), then
        neurons ``"L{l}N{n}"`` (or ``"{l}_mlp_out"`` without expand_neurons; none
        for attn-only models or layer 0), ``"embed"``, ``"pos_embed"``, and
        ``"bias"`` (Σ b_O, + Σ b_out when neurons are expanded, since MLP outputs
        already hold theirs). project_output_onto ([d_model] or [d_model, n_outs])
        projects each component, never forming the [..., d_mlp, d_model] neuron
        stack. layer None, -1 or n_layers: the whole stream.

        Returns:
            [components, *batch_and_pos, d_model | n_outs | ()], and the labels if return_labels.
        """
        cfg = self._cfg()
        if layer is None or layer == -1:
            layer = cfg.n_layers
        pos_slice = Slice.of(pos_slice)
        project_2d, squeeze = _projection_2d(project_output_onto)
        # With both, LN goes on each component (analytically for neurons) before projecting.
        ln_folded = apply_ln and project_2d is not None

        def ln_then_project(stack: np.ndarray) -> np.ndarray:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
            return stack @ project_2d if project_2d is not None else stack

        def finish(stack: np.ndarray) -> np.ndarray:
            if ln_folded:
                return ln_then_project(stack)
            return stack @ project_2d if project_2d is not None else stack

        head_stack, labels = self.stack_head_results(
            layer + (1 if mlp_input else 0), pos_slice=pos_slice, return_labels=True
        )
        head_stack = finish(head_stack)
        components = [head_stack]
        if not cfg.attn_only and layer > 0:
            if expand_neurons:
                neuron_stack, neuron_labels = self.stack_neuron_results(
                    layer,
                    pos_slice=pos_slice,
                    return_labels=True,
                    apply_ln=ln_folded,
                    project_output_onto=project_2d,
                )
            else:
                neuron_stack, neuron_labels = self.decompose_resid(
                    layer,
                    mlp_input=mlp_input,
                    pos_slice=pos_slice,
                    incl_embeds=False,
                    mode="mlp",
                    return_labels=True,
                )
                neuron_stack = finish(neuron_stack)
            labels.extend(neuron_labels)
            components.append(neuron_stack)
        for name, present in (("embed", self.has_embed), ("pos_embed", self.has_pos_embed)):
            if present:
                components.append(finish(pos_slice.apply(self[name], dim=-2)[None]))
                labels.append(name)
        bias = self._accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons)
        if ln_folded:
            bias = ln_then_project(np.broadcast_to(bias, (1, *head_stack.shape[1:-1], cfg.d_model)))
        else:
            if project_2d is not None:
                bias = bias @ project_2d
            bias = np.broadcast_to(bias, (1, *head_stack.shape[1:]))
        components.append(bias)
        labels.append("bias")
        residual_stack = np.concatenate(components, axis=0)
        if apply_ln and not ln_folded:
            residual_stack = self.apply_ln_to_stack(
                residual_stack, layer, pos_slice=pos_slice, mlp_input=mlp_input
            )
        if squeeze:
            residual_stack = residual_stack[..., 0]
        return (residual_stack, labels) if return_labels else residual_stack

    # ---- attribution ----------------------------------------------------------

    def _token_shape(self, tokens: Any) -> tuple[int, ...]:
        if isinstance(tokens, str):
            return np.shape(self.model.to_single_token(tokens))
        return np.shape(tokens)

    def logit_attrs(
        self,
        residual_stack: np.ndarray,
        tokens: str | int | np.ndarray,
        incorrect_tokens: str | int | np.ndarray | None = None,
        pos_slice: Slice | SliceInput = None,
        batch_slice: Slice | SliceInput = None,
        has_batch_dim: bool = True,
    ) -> np.ndarray:
        """Each component's direct contribution to the logit of ``tokens`` (minus ``incorrect_tokens``'s).

        The stack goes through the final LayerNorm's cached scale
        (:meth:`apply_ln_to_stack` with layer -1, pos_slice, batch_slice,
        has_batch_dim) and is dotted with ``model.tokens_to_residual_directions``
        of the tokens (W_U columns: a str or int gives [d_model]; ids [batch] or
        [batch, pos] give [..., d_model], broadcast against the stack). No b_U.

        Args:
            residual_stack: [components, *batch_and_pos, d_model].
            tokens: a single-token string, an id, or ids.
            incorrect_tokens: same shape as tokens; attributes the logit difference.

        Returns:
            [components, *batch_and_pos_out].

        Raises:
            ValueError: when tokens and incorrect_tokens differ in shape.
        """
        self._cfg()
        pos_slice = Slice.of(pos_slice)
        batch_slice = Slice.of(batch_slice)
        directions = np.asarray(self.model.tokens_to_residual_directions(tokens))
        if incorrect_tokens is not None:
            shape, incorrect_shape = self._token_shape(tokens), self._token_shape(incorrect_tokens)
            if shape != incorrect_shape:
                raise ValueError(
                    f"tokens and incorrect_tokens must have the same shape! "
                    f"(tokens.shape={shape}, incorrect_tokens.shape={incorrect_shape})"
                )
            directions = directions - np.asarray(self.model.tokens_to_residual_directions(incorrect_tokens))
        scaled = self.apply_ln_to_stack(
            residual_stack,
            layer=-1,
            pos_slice=pos_slice,
            batch_slice=batch_slice,
            has_batch_dim=has_batch_dim,
        )
        return (scaled * directions).sum(axis=-1)
