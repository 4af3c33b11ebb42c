#!/usr/bin/env python3
"""Train lensd's bundled `brackets` model with TransformerLens.

    train_brackets.py [OUT_DIR] [--steps N] [--seed S] [--arena DATA.json]

The balanced-bracket classifier of ARENA's exercise (seed 002), with its
architecture, tokens and pad masking (../shared/data/arena-brackets/README.md),
trained from scratch on freshly generated strings (generate()). OUT_DIR
(default models/brackets) receives lensd's TransformerLens-native directory
and the model card README.md with the accuracies measured on the trained
model: on held-out generated strings and, when --arena names ARENA's
dataset, on it too. Deterministic for a given seed on a given torch build;
about 8 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tl_native as tn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKENS = ["[start]", "[pad]", "[end]", "(", ")"]
START, PAD, END, OPEN, CLOSE = range(5)
MAX_LEN = 40
CONFIG = {
    "n_layers": 3, "d_model": 56, "n_heads": 2, "d_head": 28, "d_mlp": 56, "n_ctx": MAX_LEN + 2,
    "d_vocab": 5, "d_vocab_out": 2, "attention_dir": "bidirectional", "act_fn": "relu",
    "normalization_type": "LN", "eps": 1e-5, "positional_embedding_type": "standard",
    "use_attn_result": True, "use_hook_tokens": True, "model_name": "brackets", "seed": 0,
}
META = {"tokenizer": {"type": "list", "tokens": TOKENS, "split": "chars"},
        "bos_token": "[start]", "eos_token": "[end]", "pad_token": "[pad]",
        "append_eos": True, "mask_pad_keys": True}
HELD_OUT = 20_000
EVAL_SEED = 12345  # a stream of its own, apart from training's
ARENA_EXERCISE = 5_000  # the exercises use the first 5,000 strings of ARENA's dataset


def is_balanced(s: str) -> bool:
    height = 0
    for c in s:
        height += 1 if c == "(" else -1
        if height < 0:
            return False
    return height == 0


def balanced_string(rng: np.random.Generator, n: int) -> str:
    """A random balanced string of even length n (a random walk kept feasible)."""
    out, height = [], 0
    for i in range(n):
        left = n - i
        if height == 0 or (height < left and rng.random() < 0.5):
            out.append("(")
            height += 1
        else:
            out.append(")")
            height -= 1
    return "".join(out)


def unbalanced_string(rng: np.random.Generator) -> str:
    """One of four kinds of unbalanced string, the near misses most often."""
    kind = rng.integers(4)
    while True:
        if kind == 0:    # equal counts, but the height dips below zero somewhere
            n = 2 * int(rng.integers(1, MAX_LEN // 2 + 1))
            s = "".join(rng.permutation(list("(" * (n // 2) + ")" * (n // 2))))
        elif kind == 1:  # never below zero, but ends above zero
            n = int(rng.integers(1, MAX_LEN + 1))
            s = balanced_string(rng, n + n % 2)[:n]
        elif kind == 2:  # a balanced string with one bracket flipped
            n = 2 * int(rng.integers(1, MAX_LEN // 2 + 1))
            s = list(balanced_string(rng, n))
            i = int(rng.integers(n))
            s[i] = "(" if s[i] == ")" else ")"
            s = "".join(s)
        else:            # any string, odd lengths included
            n = int(rng.integers(1, MAX_LEN + 1))
            s = "".join(rng.choice(["(", ")"], size=n))
        if not is_balanced(s):
            return s


def generate(rng: np.random.Generator, count: int) -> tuple[list[str], np.ndarray]:
    """count strings of 1..40 brackets, half balanced; labels 1 = balanced."""
    strings, labels = [], np.zeros(count, dtype=np.int64)
    for i in range(count):
        if rng.random() < 0.5:
            strings.append(balanced_string(rng, 2 * int(rng.integers(1, MAX_LEN // 2 + 1))))
            labels[i] = 1
        else:
            strings.append(unbalanced_string(rng))
    return strings, labels


def tokenize(strings: list[str]) -> torch.Tensor:
    """[batch, 2 + longest]: [start] + brackets + [end], right-padded with [pad]."""
    width = 2 + max(len(s) for s in strings)
    rows = torch.full((len(strings), width), PAD, dtype=torch.int64)
    for r, s in enumerate(strings):
        ids = [START] + [OPEN if c == "(" else CLOSE for c in s] + [END]
        rows[r, :len(ids)] = torch.tensor(ids)
    return rows


def accuracy(model, strings: list[str], labels: np.ndarray, batch: int = 2000, per_string: bool = False):
    """The fraction classified right, or with per_string the [len(strings)] bool array."""
    correct = []
    with torch.no_grad():
        for i in range(0, len(strings), batch):
            logits = model(tokenize(strings[i:i + batch]))[:, 0]
            correct.append(logits.argmax(-1).numpy() == labels[i:i + batch])
    correct = np.concatenate(correct)
    return correct if per_string else float(correct.mean())


def train(steps: int, seed: int, batch: int = 128):
    from transformer_lens import HookedTransformerConfig

    torch.manual_seed(seed)
    # use_attn_result only adds a hook point (per-head outputs), and computing
    # it makes TransformerLens's training steps about five times slower: it is
    # off while training and on in the saved config.
    cfg = HookedTransformerConfig(**{**CONFIG, "seed": seed, "device": "cpu", "use_attn_result": False})
    model = tn.quiet_hooked_transformer(cfg)
    tn.add_pad_key_mask_hooks(model, PAD)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    start = time.time()
    for step in range(steps):
        strings, labels = generate(rng, batch)
        logits = model(tokenize(strings))[:, 0]
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:.0f} s", flush=True)
    model.eval()
    model.set_use_attn_result(True)
    return model, time.time() - start


CARD = """\
# brackets

A balanced-bracket classifier with the architecture, tokens and pad masking
of ARENA's "Balanced Bracket Classifier" exercise (the model that seed 002
interprets), trained from scratch by `tools/train_brackets.py` with
TransformerLens. lensd serves it by default.

## Architecture
`HookedTransformerConfig`: n_layers 3, d_model 56, n_heads 2, d_head 28,
d_mlp 56 (ReLU), n_ctx 42, LayerNorm (eps 1e-5), learned absolute
positions, **bidirectional** attention, d_vocab 5, d_vocab_out 2,
use_attn_result and use_hook_tokens on. {n_params:,} parameters, float32, no
weight processing.

## Tokens and readout
`[start]`=0, `[pad]`=1, `[end]`=2, `(`=3, `)`=4. A string becomes
`[start]` + its brackets + `[end]`, right-padded with `[pad]`. Keys at pad
positions get the score -100000 for every query (the exercise's hook on
`hook_attn_scores`; lensd's `mask_pad_keys`), so a padded string classifies
as it does alone. The class is read at position 0: logit 1 > logit 0 means
balanced.

## Data and training
Fresh strings every step (`generate()`): half balanced (random walks kept
feasible, even lengths 2 to 40), half unbalanced, in four kinds: equal counts
that dip below zero, prefixes that never dip but end above zero, balanced
strings with one bracket flipped, and arbitrary strings (odd lengths too).
Cross-entropy at position 0; AdamW, one-cycle learning rate up to 2e-3, batch
128, {steps} steps, seed {seed}; {train_seconds:.0f} s on {machine}.

## What to look at
- `blocks.*.attn.hook_pattern` at position 0: how `[start]` gathers the
  bracket counts; compare a balanced string with one that closes too early.
- The logit difference balanced − unbalanced (output 1 against 0) at
  position 0, split per head:
  `curl -s localhost:8080/v1/models/brackets/logit_diff -d '{{"prompts": ["(())", "(()"], "answers": [1, 0], "position": 0, "attribution": ["heads"]}}'`
- ARENA's exercise finds heads that count open minus close brackets and an
  "elevation never below zero" check; whether this independently trained
  model solved it the same way is an open question for the dashboard.

## Measured properties

| held-out set | strings | accuracy |
|---|---|---|
| freshly generated (seed {eval_seed}, not seen in training) | {held_out:,} | {held_out_accuracy:.4%} |
{arena_row}
`tests/integration/test_demo_models.py` measures the held-out accuracy
again through lensd's logits endpoint on every CI run.
"""


def write_card(out_dir: Path, model, steps: int, seed: int, seconds: float,
               held_out_accuracy: float, arena: tuple[float, float, int] | None) -> None:
    import platform

    n_params = sum(p.numel() for p in model.parameters())
    machine = f"{torch.get_num_threads()} CPU threads ({platform.machine()}), torch {torch.__version__}"
    arena_row = ("" if arena is None else
                 f"| ARENA's dataset, the first 5,000 strings (the exercise's set) | {ARENA_EXERCISE:,} | "
                 f"{arena[0]:.4%} |\n| ARENA's dataset, all of `brackets_data.json` | {arena[2]:,} | {arena[1]:.4%} |\n")
    text = CARD.format(n_params=n_params, steps=steps, seed=seed, train_seconds=seconds, machine=machine,
                       eval_seed=EVAL_SEED, held_out=HELD_OUT, held_out_accuracy=held_out_accuracy,
                       arena_row=arena_row)
    (out_dir / "README.md").write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=REPO / "models" / "brackets")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arena", type=Path, help="ARENA's brackets_data.json, also measured")
    args = parser.parse_args(argv)

    model, seconds = train(args.steps, args.seed)
    strings, labels = generate(np.random.default_rng(EVAL_SEED), HELD_OUT)
    held_out = accuracy(model, strings, labels)
    arena = None
    if args.arena:
        data = json.loads(args.arena.read_text())
        arena_labels = np.array([int(b) for _, b in data])
        arena_correct = accuracy(model, [s for s, _ in data], arena_labels, per_string=True)
        arena = (arena_correct[:ARENA_EXERCISE].mean(), arena_correct.mean(), len(data))
    print(f"held-out accuracy {held_out:.4%}" + ("" if arena is None else f", ARENA's dataset {arena}"))
    tn.write_native(args.out_dir, model.cfg, model.state_dict(), META)
    write_card(args.out_dir, model, args.steps, args.seed, seconds, held_out, arena)
    if held_out < 0.99:
        print("the trained model misses the card's target (99% held-out accuracy)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
