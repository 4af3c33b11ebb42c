"""TransformerLens's activation names and a numpy ActivationCache that resolves them.

The name rules follow ``transformer_lens.utils.get_act_name`` (TransformerLens
3.9.0, transformer_lens/utilities/components_utils.py) and the indexing
follows ``ActivationCache.__getitem__`` (transformer_lens/ActivationCache.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

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


CacheKey = str | tuple


class ActivationCache(Mapping[str, np.ndarray]):
    """The activations of one run, by hook name, indexed as TransformerLens's ActivationCache is.

    ``cache["blocks.0.attn.hook_z"]`` takes a full name; ``cache["pattern", 0]``,
    ``cache["resid_post", -1]`` (negative layers count from ``n_layers``),
    ``cache["scale"]`` (``ln_final.hook_scale``), ``cache["scale", 3, "ln1"]``,
    ``cache["embed"]`` or ``cache["k6"]`` take :func:`get_act_name`'s shorthands.
    Iteration, ``len``, ``keys()``, ``items()`` and ``values()`` are over the
    full names; ``in`` accepts whatever indexing accepts.

    Attributes:
        cache_dict: the activations by full hook name.
        n_layers: the model's number of layers, for negative layer indices.
    """

    def __init__(self, cache_dict: Mapping[str, np.ndarray], n_layers: int) -> None:
        self.cache_dict: dict[str, np.ndarray] = dict(cache_dict)
        self.n_layers = n_layers

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
