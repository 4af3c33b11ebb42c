#!/usr/bin/env python3
"""Convert a torch checkpoint into lensd's TL-native model directory.

    convert_tl_checkpoint.py STATE_DICT.pt CONFIG.json OUT_DIR [options]
    convert_tl_checkpoint.py STATE_DICT.pt [CONFIG.json] OUT_DIR --mapping MAP.json [options]

STATE_DICT.pt   a state dict saved with torch.save: in TransformerLens names
                (a HookedTransformer's), or in any layout a --mapping file
                describes (tools/mappings/: nanoGPT, seed 003's ParenTransformer)
CONFIG.json     a JSON object of HookedTransformerConfig fields; with --mapping
                optional, and laid over the mapping's own "config"
OUT_DIR         receives tl_config.json and model.safetensors (format: tools/tl_native.py)
--mapping       a key-mapping file (docs/FORMATS.md, "Key mappings"): source
                tensor-name patterns -> TL names, with transposes, rearranges,
                fused-qkv splits, scales, tied embeddings, and config fields
                given or derived from the shapes
--set FIELD=VALUE
                a config field (VALUE is JSON, else a string), over everything
--name          stored as the config's model_name
--tokenizer-json
                a JSON object (a file path, or the JSON text itself) with the
                "lensd" entries: tokenizer, bos_token, eos_token, pad_token,
                append_eos, mask_pad_keys, processing. Files a "bpe" or "hf"
                tokenizer names are taken relative to that JSON file and
                copied into OUT_DIR. Laid over the mapping's "lensd".

What is written:
- exactly the parameters of HookedTransformer(config), as float32, each shape
  checked against the config; a missing bias (b_Q, b_in, ln1.b, b_U, ...) is
  written as zeros, as TransformerLens fills it, and listed in the summary;
- buffers (blocks.N.attn.mask, ...) are dropped, except blocks.N.attn.IGNORE:
  older TransformerLens versions saved -1e5 there and used it as the masked
  attention score, so a finite IGNORE is kept as lensd.masked_score;
- default_prepend_bos is false when the model has no BOS token (none given,
  and no EOS for it to fall back to), so text prompts work without --no-bos.
The state dict is taken as saved: no TransformerLens weight processing is
applied. Everything that does not fit is reported at once: source keys no rule
maps, TL parameters nothing produced, and shapes that disagree (with the rule
that produced them).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tl_native as tn  # noqa: E402

TOKENIZER_FILE_KEYS = {"bpe": ("vocab", "merges"), "hf": ("file",)}
TOKENIZER_META_KEYS = {"tokenizer", "bos_token", "eos_token", "pad_token", "append_eos", "mask_pad_keys",
                       "processing"}
MAPPING_KEYS = {"description", "notes", "state_dict_key", "strip_prefixes", "config", "derive", "ignore",
                "rules", "ties", "zero_fill", "lensd"}
RULE_KEYS = {"from", "to", "ops"}
TIE_KEYS = {"to", "from_tl", "ops"}
OP_NAMES = {"transpose", "rearrange", "scale", "split", "slice"}
# TL parameters that may be missing: biases (b_Q, b_in, b_U, ..., LayerNorm's b).
DEFAULT_ZERO_FILL = [r"(.*\.)?b(_[A-Za-z]+)?"]
# Short axis names a rearrange may use for config fields (any field name works too).
AXIS_ALIASES = {"h": "n_heads", "dh": "d_head", "d": "d_model", "m": "d_mlp", "V": "d_vocab",
                "Vo": "d_vocab_out"}
IGNORE_SUFFIX = ".attn.IGNORE"
# The identity mapping: a state dict already in TL names.
TL_IDENTITY = {"rules": [{"from": "(.+)", "to": "{1}"}]}


def read_tokenizer_json(arg: str) -> tuple[dict, dict[str, Path]]:
    """(lensd entries, {file name in OUT_DIR: source path})."""
    text = arg.strip()
    base = Path.cwd()
    if not text.startswith("{"):
        path = Path(arg)
        text = path.read_text(encoding="utf-8")
        base = path.resolve().parent
    meta = json.loads(text)
    return check_tokenizer_meta(meta, base, "tokenizer JSON")


def check_tokenizer_meta(meta: dict, base: Path, what: str) -> tuple[dict, dict[str, Path]]:
    unknown = set(meta) - TOKENIZER_META_KEYS
    if unknown:
        raise tn.FormatError(f"{what} has unknown keys {sorted(unknown)}; allowed: {sorted(TOKENIZER_META_KEYS)}")
    meta = json.loads(json.dumps(meta))
    files = {}
    tok = meta.get("tokenizer")
    if tok is not None:
        for key in TOKENIZER_FILE_KEYS.get(tok.get("type"), ()):
            src = base / tok[key]
            files[Path(tok[key]).name] = src
            tok[key] = Path(tok[key]).name
    return meta, files


# --------------------------------------------------------------------------
# Expressions of "derive", "scale" and "slice": arithmetic over config fields
# and a few functions of the source state dict.


class Expr:
    """Evaluates one expression of a mapping, safely (no Python eval).

    Names are config fields; functions: shape(KEY, DIM) (a source tensor's
    size), count(REGEX) (distinct values of the regex's first group over the
    source keys: count(r'transformer\\.h\\.(\\d+)\\.') is the layer count),
    has(KEY), checkpoint('a.b') (a plain value stored beside the state dict,
    e.g. nanoGPT's model_args.n_head), sqrt(x); operators + - * / // ** and
    'x if c else y' with comparisons.
    """

    BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Pow: lambda a, b: a ** b}
    CMPOPS = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
              ast.Gt: lambda a, b: a > b, ast.LtE: lambda a, b: a <= b, ast.GtE: lambda a, b: a >= b}

    def __init__(self, state_dict: dict, extra: dict, fields: dict):
        self.sd, self.extra, self.fields = state_dict, extra, fields

    def __call__(self, text: Any, what: str) -> Any:
        if not isinstance(text, str):
            return text
        try:
            return self._eval(ast.parse(text, mode="eval").body)
        except (SyntaxError, KeyError, ValueError, TypeError, ZeroDivisionError, IndexError) as err:
            raise tn.FormatError(f"{what}: cannot evaluate {text!r}: {err}") from None

    def _eval(self, node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.fields:
                raise KeyError(f"config field {node.id!r} is not known (yet)")
            return self.fields[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in self.BINOPS:
            return self.BINOPS[type(node.op)](self._eval(node.left), self._eval(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -self._eval(node.operand)
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in self.CMPOPS:
            return self.CMPOPS[type(node.ops[0])](self._eval(node.left), self._eval(node.comparators[0]))
        if isinstance(node, ast.IfExp):
            return self._eval(node.body) if self._eval(node.test) else self._eval(node.orelse)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            args = [self._eval(a) for a in node.args]
            return self._call(node.func.id, args)
        raise ValueError(f"unsupported expression element {ast.dump(node)[:60]}")

    def _call(self, name: str, args: list):
        if name == "shape":
            key, dim = args
            if key not in self.sd:
                raise KeyError(f"no source tensor {key!r}")
            return int(self.sd[key].shape[dim])
        if name == "has":
            return args[0] in self.sd
        if name == "count":
            pattern = re.compile(args[0])
            return len({m.group(1) for k in self.sd if (m := pattern.match(k))})
        if name == "checkpoint":
            value: Any = self.extra
            for part in args[0].split("."):
                if not isinstance(value, dict) or part not in value:
                    raise KeyError(f"the checkpoint holds no {args[0]!r}")
                value = value[part]
            return value
        if name == "sqrt":
            return math.sqrt(args[0])
        raise ValueError(f"unknown function {name}()")


# --------------------------------------------------------------------------
# Mappings


@dataclass
class Mapping:
    """A key-mapping file, checked (docs/FORMATS.md, "Key mappings")."""

    path: str
    state_dict_key: list[str] = field(default_factory=list)
    strip_prefixes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    derive: dict[str, Any] = field(default_factory=dict)
    ignore: list[re.Pattern] = field(default_factory=list)
    rules: list[dict] = field(default_factory=list)
    ties: list[dict] = field(default_factory=list)
    zero_fill: list[re.Pattern] = field(default_factory=list)
    lensd: dict[str, Any] = field(default_factory=dict)


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise tn.FormatError(f"{where}: bad regex {pattern!r}: {err}") from None


def _check_ops(ops: Any, where: str, n_targets: int) -> None:
    if not isinstance(ops, list):
        raise tn.FormatError(f"{where}: \"ops\" must be a list")
    splits = 0
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or len(op) != 1 or next(iter(op)) not in OP_NAMES:
            raise tn.FormatError(f"{where}: ops[{i}] must be one of {sorted(OP_NAMES)} as {{\"name\": arg}}, "
                                 f"got {op!r}")
        splits += "split" in op
    if splits > 1:
        raise tn.FormatError(f"{where}: at most one split")
    parts = next((op["split"].get("parts") for op in ops if "split" in op), 1) if splits else 1
    if parts != n_targets:
        raise tn.FormatError(f"{where}: {n_targets} target name(s) for {parts} part(s)"
                             + ("" if splits else " (a list of targets needs a split)"))


def parse_mapping(obj: dict, path: str) -> Mapping:
    if not isinstance(obj, dict):
        raise tn.FormatError(f"{path}: a mapping is a JSON object")
    unknown = set(obj) - MAPPING_KEYS
    if unknown:
        raise tn.FormatError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(MAPPING_KEYS)}")
    m = Mapping(path=path)
    sdk = obj.get("state_dict_key", [])
    m.state_dict_key = [sdk] if isinstance(sdk, str) else list(sdk)
    m.strip_prefixes = list(obj.get("strip_prefixes", []))
    m.config = dict(obj.get("config", {}))
    m.derive = dict(obj.get("derive", {}))
    m.ignore = [_compile(p, f"{path}: ignore") for p in obj.get("ignore", [])]
    for i, rule in enumerate(obj.get("rules", [])):
        where = f"{path}: rules[{i}]"
        if not isinstance(rule, dict) or set(rule) - RULE_KEYS or "from" not in rule or "to" not in rule:
            raise tn.FormatError(f"{where}: a rule is {{\"from\": REGEX, \"to\": NAME | [NAMES], \"ops\": [...]}}")
        targets = rule["to"] if isinstance(rule["to"], list) else [rule["to"]]
        _check_ops(rule.get("ops", []), where, len(targets))
        m.rules.append({"index": i, "from": rule["from"], "regex": _compile(rule["from"], where),
                        "to": targets, "ops": rule.get("ops", [])})
    for i, tie in enumerate(obj.get("ties", [])):
        where = f"{path}: ties[{i}]"
        if not isinstance(tie, dict) or set(tie) - TIE_KEYS or "to" not in tie or "from_tl" not in tie:
            raise tn.FormatError(f"{where}: a tie is {{\"to\": TL_NAME, \"from_tl\": TL_NAME, \"ops\": [...]}}")
        _check_ops(tie.get("ops", []), where, 1)
        m.ties.append({"index": i, **tie})
    m.zero_fill = [_compile(p, f"{path}: zero_fill") for p in obj.get("zero_fill", DEFAULT_ZERO_FILL)]
    m.lensd = dict(obj.get("lensd", {}))
    return m


def load_mapping(path: str | Path | None) -> Mapping:
    if path is None:
        return parse_mapping(TL_IDENTITY, "(TransformerLens names)")
    return parse_mapping(json.loads(Path(path).read_text(encoding="utf-8")), str(path))


# --------------------------------------------------------------------------
# Tensor transforms


def _axis_lengths(pattern: str, fields: dict) -> dict[str, int]:
    """Lengths of the axes a rearrange must be told: those inside a group on its left."""
    left = pattern.split("->")[0]
    names = set()
    for group in re.findall(r"\(([^)]*)\)", left):
        names.update(group.split())
    out = {}
    for name in names:
        key = AXIS_ALIASES.get(name, name)
        if key in fields and isinstance(fields[key], int):
            out[name] = fields[key]
    return out


def apply_ops(tensor, ops: list[dict], expr: Expr, where: str) -> list:
    """The tensor after ops, as a list (one item, or a split's parts)."""
    import einops
    import torch

    parts = [tensor]
    for op in ops:
        name, arg = next(iter(op.items()))
        out = []
        for t in parts:
            try:
                if name == "transpose":
                    if arg is True:
                        if t.dim() != 2:
                            raise ValueError(f"transpose true needs a matrix, got shape {tuple(t.shape)}")
                        out.append(t.T)
                    else:
                        out.append(t.transpose(int(arg[0]), int(arg[1])))
                elif name == "rearrange":
                    out.append(einops.rearrange(t, arg, **_axis_lengths(arg, expr.fields)))
                elif name == "scale":
                    out.append(t * float(expr(arg, f"{where}: scale")))
                elif name == "slice":
                    dim = int(arg.get("dim", 0))
                    start = int(expr(arg.get("start", 0), f"{where}: slice start"))
                    stop = int(expr(arg.get("stop", t.shape[dim]), f"{where}: slice stop"))
                    if stop > t.shape[dim]:
                        raise ValueError(f"slice to {stop} along dim {dim} of shape {tuple(t.shape)}")
                    out.append(t.narrow(dim, start, stop - start))
                elif name == "split":
                    n, dim = int(arg["parts"]), int(arg.get("dim", 0))
                    if t.shape[dim] % n:
                        raise ValueError(f"dim {dim} of shape {tuple(t.shape)} does not split into {n}")
                    out.extend(torch.tensor_split(t, n, dim=dim))
            except tn.FormatError:
                raise
            except Exception as err:  # einops and torch raise many kinds; their last line says why
                why = [line.strip() for line in str(err).splitlines() if line.strip()][-1:] or [type(err).__name__]
                sizes = f" with {_axis_lengths(arg, expr.fields)}" if name == "rearrange" else ""
                raise tn.FormatError(f"{where}: {name} {arg!r}{sizes} on shape {tuple(t.shape)}: {why[0]}") from None
        parts = out
    return parts


# --------------------------------------------------------------------------
# Conversion


@dataclass
class Converted:
    params: dict[str, Any]
    fields: dict[str, Any]
    meta: dict[str, Any]
    files: dict[str, Path]
    zero_filled: list[str]
    dropped: list[str]
    notes: list[str]


def unwrap_checkpoint(obj: Any, mapping: Mapping) -> tuple[dict, dict]:
    """(state dict, the plain values beside it) from what torch.load returned."""
    import torch

    extra: dict = {}
    for key in mapping.state_dict_key:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            extra = {k: v for k, v in obj.items() if k != key}
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise tn.FormatError("the checkpoint is not a state dict (a dict of tensors)"
                             + (f"; looked under {mapping.state_dict_key}" if mapping.state_dict_key else ""))
    not_tensors = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise tn.FormatError(f"the state dict holds non-tensors at {not_tensors[:8]}"
                             + ("; give the mapping a \"state_dict_key\"" if not mapping.state_dict_key else ""))
    sd = {}
    for key, value in obj.items():
        for prefix in mapping.strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        sd[key] = value
    return sd, extra


def build_fields(mapping: Mapping, sd: dict, extra: dict, config: dict, overrides: dict) -> dict:
    fields = {**mapping.config, **config, **overrides}
    expr = Expr(sd, extra, fields)
    for key, text in mapping.derive.items():
        if key in config or key in overrides:
            continue
        fields[key] = expr(text, f"{mapping.path}: derive {key}")
    return fields


def has_bos(meta: dict) -> bool:
    """Whether lensd will have a BOS token: bos_token, or eos_token as its fallback."""
    return meta.get("bos_token") is not None or meta.get("eos_token") is not None


def convert_state_dict(obj: Any, mapping: Mapping, config: dict, overrides: dict | None = None,
                       meta: dict | None = None, files: dict | None = None) -> Converted:
    """Map a loaded checkpoint onto HookedTransformer(config)'s parameters.

    Raises FormatError listing every unmapped key, missing parameter and
    shape mismatch found.
    """
    import torch

    overrides = dict(overrides or {})
    sd, extra = unwrap_checkpoint(obj, mapping)
    fields = build_fields(mapping, sd, extra, config, overrides)
    meta = {**mapping.lensd, **(meta or {})}
    notes = []
    if not has_bos(meta) and fields.get("default_prepend_bos", True):
        notes.append("default_prepend_bos is written false: the model has no BOS token (nor an EOS to stand for it)")
        fields["default_prepend_bos"] = False
    try:
        cfg = tn.config_from_json(fields)
    except (TypeError, ValueError, AssertionError) as err:
        raise tn.FormatError(f"the config does not make a HookedTransformerConfig: {err}") from None
    fields = tn.config_to_json(cfg)
    shapes, buffers = tn.parameter_shapes(cfg)
    expr = Expr(sd, extra, fields)

    produced: dict[str, Any] = {}
    origin: dict[str, str] = {}
    unmapped, dropped, shape_errors, other = [], [], [], []
    misshaped: set[str] = set()
    ignore_values: dict[str, float] = {}
    for key, tensor in sd.items():
        if any(p.fullmatch(key) for p in mapping.ignore):
            dropped.append(key)
            continue
        rule = next((r for r in mapping.rules if r["regex"].fullmatch(key)), None)
        if rule is None:
            unmapped.append(f"{key} {tuple(tensor.shape)}")
            continue
        match = rule["regex"].fullmatch(key)
        where = f"rule {rule['index']} /{rule['from']}/ on {key}"
        try:
            targets = [t.format(match.group(0), *match.groups(), **match.groupdict()) for t in rule["to"]]
        except (IndexError, KeyError) as err:
            raise tn.FormatError(f"{mapping.path}: {where}: target template refers to group {err}") from None
        if all(t in buffers and t not in shapes for t in targets):
            for t in targets:
                if t.endswith(IGNORE_SUFFIX) and tensor.numel() == 1:
                    ignore_values[t] = float(tensor.item())
                else:
                    dropped.append(key)
            continue
        try:
            parts = apply_ops(tensor, rule["ops"], expr, where)
        except tn.FormatError as err:
            shape_errors.append(str(err))
            misshaped.update(targets)
            continue
        for target, part in zip(targets, parts):
            if target not in shapes:
                other.append(f"{where} makes {target!r}, which HookedTransformer(config) does not have")
            elif target in produced:
                other.append(f"{target} is made twice: by {origin[target]} and by {where}")
            elif tuple(part.shape) != shapes[target]:
                misshaped.add(target)
                shape_errors.append(f"{target}: expected {shapes[target]}, got {tuple(part.shape)} "
                                    f"(from {key} {tuple(tensor.shape)} by rule {rule['index']} /{rule['from']}/)")
            else:
                produced[target], origin[target] = part, where
    for tie in mapping.ties:
        target = tie["to"]
        if target in produced or target not in shapes:
            continue
        if tie["from_tl"] not in produced:
            continue
        where = f"tie {tie['index']} ({target} from {tie['from_tl']})"
        try:
            (part,) = apply_ops(produced[tie["from_tl"]], tie.get("ops", []), expr, where)
        except tn.FormatError as err:
            shape_errors.append(str(err))
            misshaped.add(target)
            continue
        if tuple(part.shape) != shapes[target]:
            misshaped.add(target)
            shape_errors.append(f"{target}: expected {shapes[target]}, got {tuple(part.shape)} (by {where})")
        else:
            produced[target], origin[target] = part, where
    zero_filled, missing = [], []
    for name, shape in shapes.items():
        if name in produced or name in misshaped:
            continue
        if any(p.fullmatch(name) for p in mapping.zero_fill):
            produced[name] = torch.zeros(shape, dtype=torch.float32)
            zero_filled.append(name)
        else:
            missing.append(f"{name} {shape}")
    problems = []
    if unmapped:
        problems.append(f"source keys no rule maps ({len(unmapped)}): {', '.join(unmapped)}")
    if missing:
        problems.append(f"TL parameters nothing produced ({len(missing)}): {', '.join(missing)}")
    if shape_errors:
        problems.append(f"shapes that disagree ({len(shape_errors)}):\n      " + "\n      ".join(shape_errors))
    problems += other
    if problems:
        raise tn.FormatError(f"the checkpoint does not fit {mapping.path} and the config:\n  - "
                             + "\n  - ".join(problems))

    masked = sorted(set(ignore_values.values()))
    if len(masked) > 1:
        raise tn.FormatError(f"the layers' attn.IGNORE buffers differ ({masked}); lensd keeps one masked score")
    kept_ignore = bool(masked) and math.isfinite(masked[0])
    if kept_ignore:
        meta["masked_score"] = masked[0]
        notes.append(f"attn.IGNORE is {masked[0]:g} (an older TransformerLens): kept as lensd.masked_score, "
                     "the score of masked keys in hook_attn_scores")
    params = {n: produced[n].detach().to(torch.float32).contiguous().clone() for n in shapes}
    dropped = sorted(dropped) + ([] if kept_ignore else sorted(ignore_values))
    return Converted(params, fields, meta, dict(files or {}), zero_filled, dropped, notes)


def parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise tn.FormatError(f"--set wants FIELD=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def convert(state_dict_path: Path, config_path: Path | None, out_dir: Path, name: str | None = None,
            tokenizer_json: str | None = None, mapping_path: Path | None = None,
            overrides: dict | None = None) -> Converted:
    """Write the native directory; returns what was converted (and zero-filled, dropped)."""
    import torch

    mapping = load_mapping(mapping_path)
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path else {}
    overrides = dict(overrides or {})
    if name is not None:
        overrides["model_name"] = name
    base = Path(mapping_path).resolve().parent if mapping_path else Path.cwd()
    map_meta, files = check_tokenizer_meta(mapping.lensd, base, f"{mapping.path}: lensd")
    mapping.lensd = map_meta
    meta, tok_files = read_tokenizer_json(tokenizer_json) if tokenizer_json else ({}, {})
    files.update(tok_files)
    try:
        obj = torch.load(state_dict_path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors alike
        raise tn.FormatError(f"{state_dict_path}: torch.load failed: {err}") from None
    result = convert_state_dict(obj, mapping, config, overrides, meta, files)
    cfg = tn.config_from_json(result.fields)
    tn.write_native(out_dir, cfg, result.params, result.meta, result.files)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="STATE_DICT [CONFIG] OUT_DIR")
    parser.add_argument("--mapping", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--name")
    parser.add_argument("--tokenizer-json")
    args = parser.parse_args(argv)
    if len(args.paths) == 3:
        state_dict, config, out_dir = args.paths
    elif len(args.paths) == 2 and args.mapping:
        (state_dict, out_dir), config = args.paths, None
    else:
        parser.error("give STATE_DICT CONFIG OUT_DIR, or STATE_DICT [CONFIG] OUT_DIR with --mapping")
    try:
        result = convert(state_dict, config, out_dir, args.name, args.tokenizer_json, args.mapping,
                         parse_set(args.set))
    except (tn.FormatError, OSError, json.JSONDecodeError) as err:
        print(f"convert_tl_checkpoint: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out_dir}: {len(result.params)} parameters")
    print(f"zero-filled (missing biases): {', '.join(result.zero_filled) or 'none'}")
    print(f"dropped buffers: {', '.join(result.dropped) or 'none'}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
