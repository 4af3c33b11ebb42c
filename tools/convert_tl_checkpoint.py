#!/usr/bin/env python3
"""Convert a TransformerLens state dict into lensd's TL-native model directory.

    convert_tl_checkpoint.py STATE_DICT.pt CONFIG.json OUT_DIR [--name NAME] [--tokenizer-json JSON]

STATE_DICT.pt   a HookedTransformer state dict saved with torch.save
CONFIG.json     a JSON object of HookedTransformerConfig fields
OUT_DIR         receives tl_config.json and model.safetensors (format: tools/tl_native.py)
--name          stored as the config's model_name
--tokenizer-json
                a JSON object (a file path, or the JSON text itself) with the
                "lensd" entries: tokenizer, bos_token, eos_token, pad_token,
                append_eos, mask_pad_keys, processing. Files a "bpe" or "hf"
                tokenizer names are taken relative to that JSON file and
                copied into OUT_DIR.

Non-parameter buffers (blocks.N.attn.mask, blocks.N.attn.IGNORE, ...) are
dropped: a key is kept exactly when it is a parameter of
HookedTransformer(config). Shapes are checked against the config, and the
weights are written as float32. The state dict is taken as saved: no
TransformerLens weight processing is applied.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tl_native as tn  # noqa: E402

TOKENIZER_FILE_KEYS = {"bpe": ("vocab", "merges"), "hf": ("file",)}


def read_tokenizer_json(arg: str) -> tuple[dict, dict[str, Path]]:
    """(lensd entries, {file name in OUT_DIR: source path})."""
    text = arg.strip()
    base = Path.cwd()
    if not text.startswith("{"):
        path = Path(arg)
        text = path.read_text(encoding="utf-8")
        base = path.resolve().parent
    meta = json.loads(text)
    allowed = {"tokenizer", "bos_token", "eos_token", "pad_token", "append_eos", "mask_pad_keys", "processing"}
    unknown = set(meta) - allowed
    if unknown:
        raise tn.FormatError(f"tokenizer JSON has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    files = {}
    tok = meta.get("tokenizer")
    if tok is not None:
        for key in TOKENIZER_FILE_KEYS.get(tok.get("type"), ()):
            src = base / tok[key]
            files[Path(tok[key]).name] = src
            tok[key] = Path(tok[key]).name
    return meta, files


def convert(state_dict_path: Path, config_path: Path, out_dir: Path, name: str | None = None,
            tokenizer_json: str | None = None) -> list[str]:
    """Write the native directory; returns the dropped buffer names."""
    import torch

    fields = json.loads(config_path.read_text(encoding="utf-8"))
    if name is not None:
        fields["model_name"] = name
    cfg = tn.config_from_json(fields)
    state_dict = torch.load(state_dict_path, map_location="cpu", weights_only=True)
    meta, files = read_tokenizer_json(tokenizer_json) if tokenizer_json else ({}, {})
    return tn.write_native(out_dir, cfg, state_dict, meta, files)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("state_dict", type=Path)
    parser.add_argument("config", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--name")
    parser.add_argument("--tokenizer-json")
    args = parser.parse_args(argv)
    try:
        dropped = convert(args.state_dict, args.config, args.out_dir, args.name, args.tokenizer_json)
    except (tn.FormatError, OSError, json.JSONDecodeError) as err:
        print(f"convert_tl_checkpoint: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out_dir}; dropped buffers: {', '.join(dropped) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
