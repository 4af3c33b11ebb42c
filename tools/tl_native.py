"""lensd's TL-native model format, and TransformerLens reference runs.

Shared by tools/make_fixtures.py, tools/convert_tl_checkpoint.py and the
parity tests. It is the Python ground truth the C engine is checked against;
it is not part of lensd itself and never downloads anything.

TL-native model directory (the C reader implements exactly this):

  tl_config.json   A JSON object of HookedTransformerConfig field names and
                   values (cfg.to_dict() restricted to plain JSON values:
                   int, float, str, bool, null and lists of them; the
                   host-specific "device" is left out). TransformerLens
                   rebuilds the config with HookedTransformerConfig.from_dict
                   after dropping the extra key "lensd", which holds:
      "weights"        path of the weights file, relative to the directory.
      "tokenizer"      absent (token ids only) or one of
                       {"type": "list", "tokens": [...], "split": "chars"|"whitespace"}
                           id = index in "tokens"; "chars": every Unicode code
                           point of the text is one piece; "whitespace": the
                           text is split on runs of whitespace (Python's
                           str.split()), empty pieces dropped. A piece that is
                           not in "tokens" is an error.
                       {"type": "bpe", "vocab": "vocab.json", "merges": "merges.txt"}
                           GPT-2 byte-level BPE (paths relative to the dir).
                       {"type": "hf", "file": "tokenizer.json"}
      "bos_token", "eos_token", "pad_token"
                       token strings from the vocabulary; any may be absent.
                       As in TL's set_tokenizer, a missing pad falls back to
                       eos, a missing bos to eos.
      "append_eos"     bool: "list" tokenizers append eos to every text row.
      "mask_pad_keys"  bool: for every batch row b, head h and query q, the
                       score of every key k whose token id is the pad id is
                       set to -100000.0 after scaling and the causal/local
                       mask and before hook_attn_scores records it, so the
                       cached scores show -1e5 there (ARENA's perma hook).
      "processing"     "none" (HookedTransformer(cfg) + load_state_dict) or a
                       list of from_pretrained flag names (PROCESSING_FLAGS)
                       applied with load_and_process_state_dict.
      "masked_score"   absent (-inf) or a negative number: the value of every
                       attention layer's IGNORE buffer, which TL writes at the
                       keys the causal/local/attention mask masks (older TL
                       versions saved -1e5 in their state dicts).
  model.safetensors  The TL state dict in TL names and shapes, F32,
                   parameters only (no attn.mask / attn.IGNORE buffers).

A text row of a "list" tokenizer is: [bos] if a bos token exists and
prepend_bos (cfg.default_prepend_bos unless --no-bos), the pieces, [eos] if
append_eos. "bpe" and "hf" rows are whatever TL's to_tokens gives. Rows are
padded to the longest with the pad id on the padding side (default right).
An attention mask exists only for left padding (TL's rule,
HookedTransformer.input_to_embed): it comes from TL's get_attention_mask;
position ids are cumsum(mask)-1 clamped at 0, and masked positions get a zero
position embedding; the mask joins the causal mask, so it never reaches the
scores of a bidirectional model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

# Reference runs must never touch the network: a hub lookup is an error.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import save_file as save_numpy  # noqa: E402
from safetensors.torch import load_file as load_torch  # noqa: E402
from safetensors.torch import save_file as save_torch  # noqa: E402

LENSD_KEY = "lensd"
CONFIG_FILE = "tl_config.json"
WEIGHTS_FILE = "model.safetensors"
PAD_KEY_SCORE = -100000.0

PROCESSING_FLAGS = (
    "fold_ln",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "refactor_factored_attn_matrices",
)
# HookedTransformer.from_pretrained's defaults.
DEFAULT_PROCESSING = PROCESSING_FLAGS[:4]

# Fields the C reader relies on; config_to_json refuses a config without them.
REQUIRED_CONFIG_FIELDS = (
    "d_model", "d_head", "n_layers", "n_ctx", "n_heads", "d_mlp", "d_vocab",
    "d_vocab_out", "act_fn", "eps", "use_attn_scale", "attn_scale", "attn_only",
    "attention_dir", "normalization_type", "positional_embedding_type",
    "use_local_attn", "window_size", "attn_types", "use_attn_result",
    "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in", "use_hook_tokens",
    "default_prepend_bos", "original_architecture", "final_rms", "gated_mlp",
    "parallel_attn_mlp", "scale_attn_by_inverse_layer_idx",
    "tokenizer_prepends_bos",
)
HOST_SPECIFIC_FIELDS = ("device",)

# CLI hook-flag names -> HookedTransformer setters.
HOOK_FLAGS = {
    "use_attn_result": "set_use_attn_result",
    "use_split_qkv_input": "set_use_split_qkv_input",
    "use_hook_mlp_in": "set_use_hook_mlp_in",
    "use_attn_in": "set_use_attn_in",
}


class FormatError(ValueError):
    """A model directory, config or state dict that does not fit the format."""


# --------------------------------------------------------------------------
# Processing flags


def parse_processing(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'default' | 'none' | 'a,b' | ['a', 'b'] -> validated flag tuple."""
    if isinstance(spec, str):
        if spec == "default":
            return DEFAULT_PROCESSING
        if spec == "none":
            return ()
        spec = [s for s in spec.split(",") if s]
    flags = tuple(spec)
    unknown = [f for f in flags if f not in PROCESSING_FLAGS]
    if unknown:
        raise FormatError(f"unknown processing flag(s) {unknown}; known: {PROCESSING_FLAGS}")
    return flags


def processing_kwargs(flags: Iterable[str]) -> dict[str, bool]:
    """Keyword arguments for load_and_process_state_dict / from_pretrained."""
    flags = set(flags)
    return {f: f in flags for f in PROCESSING_FLAGS}


# --------------------------------------------------------------------------
# Config <-> JSON


def _plain(value: Any) -> tuple[bool, Any]:
    """(True, JSON-plain copy) or (False, None) for values JSON cannot hold."""
    if value is None or isinstance(value, (bool, str)):
        return True, value
    if isinstance(value, (int, np.integer)):
        return True, int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return (True, value) if math.isfinite(value) else (False, None)
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            ok, item = _plain(item)
            if not ok:
                return False, None
            out.append(item)
        return True, out
    return False, None


def config_to_json(cfg) -> dict[str, Any]:
    """HookedTransformerConfig -> dict of its JSON-plain fields (no "lensd")."""
    out = {}
    for key, value in cfg.to_dict().items():
        if key in HOST_SPECIFIC_FIELDS:
            continue
        ok, value = _plain(value)
        if ok:
            out[key] = value
    missing = [k for k in REQUIRED_CONFIG_FIELDS if k not in out]
    if missing:
        raise FormatError(f"config lacks required field(s) {missing}")
    return out


def config_from_json(fields: dict[str, Any]):
    """JSON dict (tl_config.json, "lensd" ignored) -> HookedTransformerConfig on CPU."""
    from transformer_lens import HookedTransformerConfig

    fields = {k: v for k, v in fields.items() if k != LENSD_KEY and k not in HOST_SPECIFIC_FIELDS}
    fields["device"] = "cpu"
    return HookedTransformerConfig.from_dict(fields)


# --------------------------------------------------------------------------
# State dicts


def quiet_hooked_transformer(cfg, tokenizer=None, **kwargs):
    """HookedTransformer(cfg, tokenizer) without its 3.x deprecation warning."""
    import warnings

    from transformer_lens import HookedTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg, tokenizer, **kwargs)


def parameter_shapes(cfg) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """({parameter name: shape}, {buffer names}) of HookedTransformer(cfg)."""
    import copy

    cfg = copy.deepcopy(cfg)
    cfg.init_weights = False
    with torch.device("meta"):
        model = quiet_hooked_transformer(cfg, move_to_device=False)
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    buffers = {n for n, _ in model.named_buffers()}
    return params, buffers


def select_parameters(cfg, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Keep exactly HookedTransformer(cfg)'s parameters, as contiguous float32.

    Returns (parameters, dropped buffer names). Raises FormatError on a
    missing parameter, a shape that disagrees with the config, or a key that
    is neither a parameter nor a buffer of that model.
    """
    shapes, buffers = parameter_shapes(cfg)
    dropped = sorted(k for k in state_dict if k not in shapes and k in buffers)
    unknown = sorted(k for k in state_dict if k not in shapes and k not in buffers)
    missing = sorted(k for k in shapes if k not in state_dict)
    problems = []
    if unknown:
        problems.append(f"unexpected keys {unknown}")
    if missing:
        problems.append(f"missing parameters {missing}")
    for name, shape in shapes.items():
        if name in state_dict and tuple(state_dict[name].shape) != shape:
            problems.append(f"{name}: shape {tuple(state_dict[name].shape)}, config says {shape}")
    if problems:
        raise FormatError("state dict does not match the config: " + "; ".join(problems))
    params = {n: state_dict[n].detach().to(torch.float32).contiguous().clone() for n in shapes}
    return params, dropped


# --------------------------------------------------------------------------
# Writing


def _check_lensd_meta(meta: dict[str, Any], root: Path) -> None:
    tok = meta.get("tokenizer")
    vocab = None
    if tok is not None:
        kind = tok.get("type")
        if kind == "list":
            if tok.get("split") not in ("chars", "whitespace"):
                raise FormatError(f"list tokenizer split must be chars|whitespace, got {tok.get('split')!r}")
            vocab = list(tok["tokens"])
            if len(set(vocab)) != len(vocab):
                raise FormatError("list tokenizer has duplicate tokens")
        elif kind == "bpe":
            for key in ("vocab", "merges"):
                if not (root / tok[key]).is_file():
                    raise FormatError(f"bpe tokenizer file {tok[key]!r} missing in {root}")
            vocab = json.loads((root / tok["vocab"]).read_text(encoding="utf-8"))
        elif kind == "hf":
            if not (root / tok["file"]).is_file():
                raise FormatError(f"tokenizer file {tok['file']!r} missing in {root}")
        else:
            raise FormatError(f"unknown tokenizer type {kind!r}")
    for key in ("bos_token", "eos_token", "pad_token"):
        if key in meta and vocab is not None and meta[key] not in vocab:
            raise FormatError(f"{key} {meta[key]!r} is not in the vocabulary")
    if meta.get("append_eos") and "eos_token" not in meta:
        raise FormatError("append_eos needs an eos_token")
    processing = meta.get("processing", "none")
    if processing != "none":
        parse_processing(list(processing))


def write_native(
    out_dir: str | Path,
    cfg,
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any] | None = None,
    files: dict[str, str | Path] | None = None,
) -> list[str]:
    """Write a TL-native model directory; returns the dropped buffer names.

    meta: the "lensd" entries other than "weights" (tokenizer, special
    tokens, append_eos, mask_pad_keys, processing). files: {name in the
    directory: source path} copied in first (tokenizer files). The state
    dict is checked against HookedTransformer(cfg) (select_parameters).
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for name, src in (files or {}).items():
        shutil.copyfile(src, root / name)
    meta = dict(meta or {})
    meta.setdefault("processing", "none")
    _check_lensd_meta(meta, root)
    params, dropped = select_parameters(cfg, state_dict)
    fields = config_to_json(cfg)
    fields[LENSD_KEY] = {"weights": WEIGHTS_FILE, **meta}
    save_torch(params, str(root / WEIGHTS_FILE), metadata={"format": "pt"})
    (root / CONFIG_FILE).write_text(json.dumps(fields, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return dropped


# --------------------------------------------------------------------------
# Reading


@dataclass
class NativeModel:
    """A TL-native model directory read back."""

    root: Path
    fields: dict[str, Any]  # tl_config.json without "lensd"
    meta: dict[str, Any]  # the "lensd" entry

    def cfg(self):
        return config_from_json(self.fields)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return load_torch(str(self.root / self.meta.get("weights", WEIGHTS_FILE)))

    def processing(self) -> tuple[str, ...]:
        spec = self.meta.get("processing", "none")
        return parse_processing(spec if isinstance(spec, str) else list(spec))

    def vocabulary(self) -> list[str] | None:
        tok = self.meta.get("tokenizer")
        if tok is None:
            return None
        if tok["type"] == "list":
            return list(tok["tokens"])
        if tok["type"] == "bpe":
            vocab = json.loads((self.root / tok["vocab"]).read_text(encoding="utf-8"))
            return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        return None

    def special_id(self, key: str) -> int | None:
        """Id of "bos_token" / "eos_token" / "pad_token" with TL's fallbacks."""
        chain = {"bos_token": ("bos_token", "eos_token"), "eos_token": ("eos_token",),
                 "pad_token": ("pad_token", "eos_token")}[key]
        vocab = self.vocabulary()
        for k in chain:
            if k in self.meta:
                if vocab is None:
                    raise FormatError(f"{k} given but the vocabulary is unknown")
                return vocab.index(self.meta[k])
        return None


def load_native(path: str | Path) -> NativeModel:
    """Read a TL-native directory (or its tl_config.json path)."""
    path = Path(path)
    cfg_path = path / CONFIG_FILE if path.is_dir() else path
    fields = json.loads(cfg_path.read_text(encoding="utf-8"))
    meta = fields.pop(LENSD_KEY, {})
    return NativeModel(root=cfg_path.parent, fields=fields, meta=meta)


def is_native(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() or (path.is_file() and path.suffix == ".json")


# --------------------------------------------------------------------------
# Building HookedTransformers for reference runs


def _hf_tokenizer_for(native: NativeModel):
    """HF tokenizer object for "bpe"/"hf" tokenizers, None otherwise."""
    tok = native.meta.get("tokenizer")
    if tok is None or tok["type"] == "list":
        return None
    specials = {k: native.meta[k] for k in ("bos_token", "eos_token", "pad_token") if k in native.meta}
    if tok["type"] == "bpe":
        from transformers import GPT2Tokenizer

        hf = GPT2Tokenizer(vocab=str(native.root / tok["vocab"]), merges=str(native.root / tok["merges"]),
                           add_bos_token=True, **specials)
    else:
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(tokenizer_file=str(native.root / tok["file"]), add_bos_token=True, **specials)
    # TL's set_tokenizer reads name_or_path (set by from_pretrained); with
    # add_bos_token already on it keeps this object instead of reloading.
    hf.init_kwargs["name_or_path"] = str(native.root)
    hf.init_kwargs["add_bos_token"] = True
    return hf


def add_pad_key_mask_hooks(model, pad_id: int) -> None:
    """ARENA's add_perma_hooks_to_mask_pad_tokens, as the course writes it.

    A permanent hook on hook_tokens (or, without use_hook_tokens, a forward
    pre-hook on embed) remembers where the tokens are pad; permanent hooks
    on every attn.hook_attn_scores fill those keys with -1e5 in place for
    every query. Permanent hooks run before run_with_cache's caching hooks,
    so the cache holds the filled scores.
    """
    import einops

    state: dict[str, torch.Tensor] = {}

    def remember(tokens: torch.Tensor) -> None:
        state["padding_tokens_mask"] = einops.rearrange(tokens == pad_id, "b sK -> b 1 1 sK")

    def apply_padding_tokens_mask(attn_scores: torch.Tensor, hook) -> None:
        attn_scores.masked_fill_(state["padding_tokens_mask"], PAD_KEY_SCORE)

    if model.cfg.use_hook_tokens:
        model.hook_dict["hook_tokens"].add_perma_hook(lambda tokens, hook: remember(tokens))
    else:
        model.embed.register_forward_pre_hook(lambda module, args: remember(args[0]))
    for name, hook in model.hook_dict.items():
        if name.endswith("attn.hook_attn_scores"):
            hook.add_perma_hook(apply_padding_tokens_mask)


def set_hook_flags(model, flags: Iterable[str]) -> None:
    for flag in flags:
        getattr(model, HOOK_FLAGS[flag])(True)


def build_native_tl(native: NativeModel, processing: Sequence[str] | None = None):
    """HookedTransformer for a TL-native directory, as lensd must reproduce it.

    processing None means the directory's own "processing" entry.
    """
    cfg = native.cfg()
    flags = native.processing() if processing is None else tuple(processing)
    model = quiet_hooked_transformer(cfg, _hf_tokenizer_for(native))
    state_dict = native.state_dict()
    if flags:
        model.load_and_process_state_dict(state_dict, **processing_kwargs(flags))
    else:
        result = model.load_state_dict(state_dict, strict=False)
        _, buffers = parameter_shapes(cfg)
        if result.unexpected_keys or set(result.missing_keys) - buffers:
            raise FormatError(f"{native.root}: weights do not fit the config: {result}")
    model.eval()
    if native.meta.get("masked_score") is not None:
        # an older TL checkpoint's IGNORE buffer: TL uses it as the masked score
        for block in model.blocks:
            block.attn.IGNORE.fill_(float(native.meta["masked_score"]))
    if native.meta.get("mask_pad_keys"):
        pad = native.special_id("pad_token")
        if pad is None:
            raise FormatError("mask_pad_keys needs a pad_token")
        add_pad_key_mask_hooks(model, pad)
    return model


def hf_tl_config(hf_dir: str | Path, hf_model, fold_ln: bool):
    """The HookedTransformerConfig from_pretrained derives for a local HF dir.

    TL's own get_pretrained_model_config accepts a local path (it reads
    config.json there). One correction: TL's GPT-2 mapping sets d_mlp to
    4*n_embd and ignores n_inner; we take n_inner when set, else the
    converted weights would not fit.
    """
    import transformer_lens.loading_from_pretrained as loading

    cfg = loading.get_pretrained_model_config(
        str(hf_dir), hf_cfg=hf_model.config.to_dict(), fold_ln=fold_ln, device="cpu")
    n_inner = getattr(hf_model.config, "n_inner", None)
    if cfg.original_architecture == "GPT2LMHeadModel" and n_inner:
        cfg.d_mlp = n_inner
    return cfg


def build_hf_tl(hf_dir: str | Path, processing: Sequence[str], hf_model=None):
    """HookedTransformer.from_pretrained(hf_dir, **flags), offline.

    from_pretrained itself rejects a local path (get_official_model_name),
    so this is its body minus that lookup: TL's config conversion, TL's
    weight conversion (get_pretrained_state_dict -> convert_gpt2_weights /
    convert_neo_weights), HookedTransformer(cfg) with the tokenizer TL loads
    from cfg.tokenizer_name (= the directory), load_and_process_state_dict.
    """
    import transformer_lens.loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM

    if hf_model is None:
        hf_model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    kwargs = processing_kwargs(processing)
    cfg = hf_tl_config(hf_dir, hf_model, kwargs["fold_ln"])
    state_dict = loading.get_pretrained_state_dict(str(hf_dir), cfg, hf_model, dtype=torch.float32)
    # The converted tensors alias hf_model's parameters; keep processing off them.
    state_dict = {k: v.detach().clone() for k, v in state_dict.items()}
    model = quiet_hooked_transformer(cfg, None, move_to_device=False)
    model.load_and_process_state_dict(state_dict, **kwargs)
    return model.eval()


# --------------------------------------------------------------------------
# Tokenization of "list" tokenizers


def list_tokenize(native: NativeModel, texts: Sequence[str], prepend_bos: bool | None) -> list[list[int]]:
    tok = native.meta["tokenizer"]
    index = {t: i for i, t in enumerate(tok["tokens"])}
    if prepend_bos is None:
        prepend_bos = bool(native.fields.get("default_prepend_bos", True))
    bos = native.special_id("bos_token")
    eos = native.special_id("eos_token")
    rows = []
    for text in texts:
        pieces = list(text) if tok["split"] == "chars" else text.split()
        try:
            ids = [index[p] for p in pieces]
        except KeyError as err:
            raise FormatError(f"{err.args[0]!r} is not in the vocabulary") from None
        if prepend_bos and bos is not None:
            ids.insert(0, bos)
        if native.meta.get("append_eos"):
            ids.append(eos)
        rows.append(ids)
    return rows


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int | None, padding_side: str) -> torch.Tensor:
    width = max(len(r) for r in rows)
    if pad_id is None and any(len(r) != width for r in rows):
        raise FormatError("rows of different lengths need a pad token")
    out = torch.full((len(rows), width), pad_id if pad_id is not None else 0, dtype=torch.long)
    for i, r in enumerate(rows):
        if padding_side == "left":
            out[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        else:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


# --------------------------------------------------------------------------
# Reference runs


def run_reference(
    model,
    rows: Sequence[tuple[str, Any]],
    *,
    prepend_bos: bool | None = None,
    padding_side: str | None = None,
    native: NativeModel | None = None,
    names_filter=None,
) -> dict[str, np.ndarray]:
    """run_with_cache on the rows; returns {"tokens", "logits", hook name: array}.

    rows: ("text", str) or ("tokens", [ids]); all rows of one kind. Text
    goes through TL's own to_tokens when the model has a tokenizer, else
    through the native "list" tokenizer. prepend_bos/padding_side None mean
    TL's defaults.
    """
    from transformer_lens.utilities import get_attention_mask

    kinds = {kind for kind, _ in rows}
    if len(kinds) != 1:
        raise ValueError("rows must be all text or all tokens")
    side = padding_side or (model.tokenizer.padding_side if model.tokenizer is not None else "right")
    fwd: dict[str, Any] = {}
    if "text" in kinds and model.tokenizer is not None:
        texts = [t for _, t in rows]
        inp: Any = texts if len(texts) > 1 else texts[0]
        opts = {}
        if prepend_bos is not None:
            opts["prepend_bos"] = prepend_bos
        if padding_side is not None:
            opts["padding_side"] = padding_side
        tokens = model.to_tokens(inp, **opts)
        fwd = opts
    else:
        if "text" in kinds:
            if native is None or (native.meta.get("tokenizer") or {}).get("type") != "list":
                raise ValueError("text rows need a tokenizer")
            ids = list_tokenize(native, [t for _, t in rows], prepend_bos)
        else:
            ids = [list(t) for _, t in rows]
        pad = native.special_id("pad_token") if native is not None else None
        if pad is None and model.tokenizer is not None:
            pad = model.tokenizer.pad_token_id
        tokens = pad_rows(ids, pad, side)
        inp = tokens
        if side == "left":
            bos = native.special_id("bos_token") if native is not None else model.tokenizer.bos_token_id
            shim = types.SimpleNamespace(pad_token_id=pad, bos_token_id=bos, padding_side="left")
            use_bos = prepend_bos if prepend_bos is not None else model.cfg.default_prepend_bos
            fwd = {"attention_mask": get_attention_mask(shim, tokens, use_bos)}
    with torch.no_grad():
        logits, cache = model.run_with_cache(inp, names_filter=names_filter, **fwd)
    out = {"tokens": tokens.to(torch.int64).numpy(), "logits": logits.float().numpy()}
    for name, value in cache.items():
        out[name] = value.numpy() if value.dtype == torch.int64 else value.float().numpy()
    if "hook_tokens" in out and not np.array_equal(out["hook_tokens"], out["tokens"]):
        raise AssertionError("hook_tokens differs from the tokens fed in")
    return out


def save_arrays(arrays: dict[str, np.ndarray], path: str | Path) -> None:
    save_numpy({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
