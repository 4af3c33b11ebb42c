"""Make a random-weight model with gpt2-small's exact shape, offline.

    python bench/make_gpt2_small_random.py OUT_DIR [--seed 0] [--tokenizer DIR]

OUT_DIR becomes a Hugging Face GPT-2 directory (config.json, model.safetensors,
vocab.json, merges.txt) that both `lensd --model OUT_DIR` and
`GPT2LMHeadModel.from_pretrained(OUT_DIR)` read. The weights are
transformers' own initialisation of GPT2LMHeadModel(GPT2Config()) under a
fixed seed: 12 layers, d_model 768, 12 heads, vocab 50257, 1024 positions,
124,439,808 parameters, the same shapes and the same amount of work as the
real gpt2-small, without downloading it. The tokenizer files are GPT-2's,
copied from ../shared/data/gpt2-tokenizer.

Nothing is downloaded. If OUT_DIR already holds a complete model made with the
same seed, nothing is done.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TOKENIZER = REPO.parent / "shared" / "data" / "gpt2-tokenizer"
FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
STAMP = "bench_model.txt"  # what made the directory; a different one remakes it
VERSION = 2


def make(out_dir: Path, seed: int = 0, tokenizer_dir: Path = DEFAULT_TOKENIZER) -> Path:
    """Write the model to out_dir unless it is already there; return out_dir."""
    out_dir = Path(out_dir)
    stamp = out_dir / STAMP
    if all((out_dir / f).exists() for f in FILES) and stamp.exists():
        if stamp.read_text().strip() == f"seed={seed} version={VERSION}":
            return out_dir
    for f in ("vocab.json", "merges.txt"):
        if not (tokenizer_dir / f).exists():
            sys.exit(f"missing {tokenizer_dir / f} (GPT-2 tokenizer files; pass --tokenizer DIR)")

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config()  # gpt2-small: n_layer 12, n_embd 768, n_head 12, vocab 50257
    config.architectures = ["GPT2LMHeadModel"]
    # The hub's gpt2/config.json carries n_ctx beside n_positions, and
    # TransformerLens's GPT-2 config mapping reads it.
    config.n_ctx = config.n_positions
    model = GPT2LMHeadModel(config).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for f in ("vocab.json", "merges.txt"):
        shutil.copyfile(tokenizer_dir / f, out_dir / f)
    # from_pretrained(DIR) of GPT2TokenizerFast reads these two as well.
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer"}) + "\n"
    )
    stamp.write_text(f"seed={seed} version={VERSION}\n")
    return out_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    args = ap.parse_args()
    print(make(args.out_dir, args.seed, args.tokenizer))


if __name__ == "__main__":
    main()
