#!/usr/bin/env python3
"""Train lensd's bundled `induction-2l` model with TransformerLens.

    train_induction.py [OUT_DIR] [--steps N] [--seed S]

A two-layer attention-only HookedTransformer over bytes (ids 0..255 are the
bytes of the UTF-8 text, 256 is <|endoftext|>, the BOS/EOS/pad token), so it
reads any text. It is trained on token streams made of fresh random bytes
and copies of earlier spans, so the only way to predict the copies is the
two-head induction circuit: a previous-token head in layer 0 and an
induction head in layer 1 that K-composes with it.

OUT_DIR (default models/induction-2l) receives lensd's TransformerLens-native
directory (tl_config.json, model.safetensors, the byte tokenizer as GPT-2
style vocab.json + merges.txt with no merges) and the model card README.md
with the properties measured on the trained model (measure()).
Deterministic for a given seed on a given torch build; about 5 minutes on a
2-core CPU.
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
N_BYTES = 256
EOT = "<|endoftext|>"
BOS_ID = N_BYTES
N_CTX = 256
PRINTABLE = np.arange(32, 127)

CONFIG = {
    "n_layers": 2, "d_model": 64, "n_heads": 4, "d_head": 16, "n_ctx": N_CTX,
    "d_vocab": N_BYTES + 1, "d_vocab_out": N_BYTES + 1, "attn_only": True,
    "normalization_type": "LN", "positional_embedding_type": "standard",
    "attention_dir": "causal", "act_fn": "relu", "default_prepend_bos": True,
    "model_name": "induction-2l", "seed": 0,
}
# Evaluation: BOS + REPEAT_LEN random bytes + the same bytes again.
REPEAT_LEN = 50
EVAL_ROWS = 200
EVAL_SEED = 12345  # a stream of its own, apart from training's


def gpt2_byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table (vocab.json's alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_byte_tokenizer(out_dir: Path) -> None:
    """vocab.json (byte b has id b, <|endoftext|> 256) and merges.txt without merges."""
    vocab = {ch: b for b, ch in enumerate(gpt2_byte_chars())}
    vocab[EOT] = BOS_ID
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def training_rows(rng: np.random.Generator, batch: int, seq: int) -> np.ndarray:
    """[batch, seq] int64: BOS, then alternating fresh and copied spans.

    Fresh bytes are uniform over all 256 bytes or over printable ASCII (one
    alphabet per row); a copied span (8 to 48 tokens) repeats an earlier
    stretch of the same row from a random start.
    """
    rows = np.empty((batch, seq), dtype=np.int64)
    for r in range(batch):
        alphabet = PRINTABLE if rng.random() < 0.5 else np.arange(N_BYTES)
        row = [BOS_ID]
        row.extend(rng.choice(alphabet, size=int(rng.integers(8, 33))).tolist())
        while len(row) < seq:
            length = int(rng.integers(8, 49))
            start = int(rng.integers(1, len(row)))
            row.extend(row[start:start + length])
            row.extend(rng.choice(alphabet, size=int(rng.integers(1, 33))).tolist())
        rows[r] = row[:seq]
    return rows


def repeated_rows(rng: np.random.Generator, rows: int, length: int) -> torch.Tensor:
    """[rows, 1 + 2*length]: BOS, `length` random bytes, the same bytes again."""
    first = rng.integers(0, N_BYTES, size=(rows, length))
    bos = np.full((rows, 1), BOS_ID)
    return torch.from_numpy(np.concatenate([bos, first, first], axis=1))


def induction_scores(pattern: torch.Tensor, length: int) -> torch.Tensor:
    """pattern [batch, head, dest, src] of BOS + x + x -> [head] scores.

    Mean attention from each token of the second repeat (dest 1+length+j)
    to the token after its first occurrence (src 2+j), over all j < length.
    """
    dest = torch.arange(1 + length, 1 + 2 * length)
    src = dest - length + 1
    return pattern[:, :, dest, src].mean(dim=(0, 2))


def previous_token_scores(pattern: torch.Tensor) -> torch.Tensor:
    """pattern [batch, head, dest, src] -> [head] mean attention to dest-1 (dest >= 1)."""
    dest = torch.arange(1, pattern.shape[-1])
    return pattern[:, :, dest, dest - 1].mean(dim=(0, 2))


def measure(model, seed: int) -> dict:
    """The properties the model card states, on fresh repeated random bytes."""
    rng = np.random.default_rng(seed)
    tokens = repeated_rows(rng, EVAL_ROWS, REPEAT_LEN)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
        loss = model.loss_fn(logits, tokens, per_token=True)  # [rows, pos-1]: predicting pos+1
    first = loss[:, 1:REPEAT_LEN].mean().item()      # predicting tokens 2..L of the first repeat
    second = loss[:, REPEAT_LEN + 1:].mean().item()   # predicting tokens 2..L of the second repeat
    prev = previous_token_scores(cache["pattern", 0])
    induction = induction_scores(cache["pattern", 1], REPEAT_LEN)
    return {
        "loss_first_repeat": first,
        "loss_second_repeat": second,
        "uniform_loss": float(np.log(N_BYTES)),
        "previous_token_scores_layer0": [round(v, 4) for v in prev.tolist()],
        "induction_scores_layer1": [round(v, 4) for v in induction.tolist()],
        "best_previous_token_head": f"L0H{int(prev.argmax())}",
        "best_induction_head": f"L1H{int(induction.argmax())}",
        "best_induction_score": float(induction.max()),
    }


def train(steps: int, seed: int, batch: int = 32, seq: int = 129):
    from transformer_lens import HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(**{**CONFIG, "seed": seed, "device": "cpu"})
    model = tn.quiet_hooked_transformer(cfg)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    start = time.time()
    for step in range(steps):
        tokens = torch.from_numpy(training_rows(rng, batch, seq))
        loss = model(tokens, return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.time() - start:.0f} s", flush=True)
    model.eval()
    return model, time.time() - start


CARD = """\
# induction-2l

A two-layer attention-only transformer over bytes, trained by
`tools/train_induction.py` with TransformerLens so that it has the
classic induction circuit. lensd serves it by default.

## Architecture
`HookedTransformerConfig`: n_layers 2, d_model 64, n_heads 4, d_head 16,
n_ctx 256, attn_only, LayerNorm (eps 1e-5), learned absolute positions,
causal attention; d_vocab 257. {n_params:,} parameters, float32, no weight
processing (lensd serves the weights as trained).

## Tokenizer
Bytes: token id b < 256 is the byte b of the prompt's UTF-8 text;
256 is `<|endoftext|>`, prepended as BOS (TransformerLens's default
`prepend_bos`) and used as pad. It is written as a GPT-2 byte-level BPE with
no merges (vocab.json, merges.txt), so any text tokenizes, one token per
byte, in lensd and in TransformerLens alike.

## Data and training
Token streams of 128 tokens after BOS: fresh random bytes (uniform over all
bytes, or over printable ASCII, one choice per row) alternating with copies
of earlier spans of the same row (8 to 48 tokens). Fresh bytes cannot be
predicted; copies can, once their first token is seen. AdamW, one-cycle
learning rate up to 3e-3, batch 32, {steps} steps, seed {seed};
{train_seconds:.0f} s on {machine}.

## What to look at
- `blocks.0.attn.hook_pattern`, head {prev_head}: a previous-token head
  (each token attends to the one before it).
- `blocks.1.attn.hook_pattern`, head {ind_head}: the induction head. On a
  prompt that repeats itself (try `"The cat sat on the mat. The cat sat on
  the mat."`) each token of the second copy attends to the token after its
  first occurrence: a stripe one above the diagonal offset by the period.
- `logits` / `test_prompt`: the second copy is predicted confidently, the
  first is not.

## Measured properties
On {rows} rows of BOS + {length} uniformly random bytes repeated once
(seed {eval_seed}, not seen in training):

| property | value |
|---|---|
| per-token loss, first repeat | {loss_first_repeat:.4f} nats (a uniform guess: {uniform_loss:.4f}) |
| per-token loss, second repeat | {loss_second_repeat:.4f} nats |
| induction score of {ind_head} (mean attention from each token of the second repeat to the token after its first occurrence) | {best_induction_score:.4f} |
| induction scores, layer 1 heads 0..3 | {induction_scores_layer1} |
| previous-token scores, layer 0 heads 0..3 | {previous_token_scores_layer0} |

`tests/integration/test_demo_models.py` measures the induction score again
through lensd's attention endpoint, and the loss through its logits
endpoint, on every CI run.
"""


def write_card(out_dir: Path, model, props: dict, steps: int, seed: int, seconds: float) -> None:
    import platform

    n_params = sum(p.numel() for p in model.parameters())
    machine = f"{torch.get_num_threads()} CPU threads ({platform.machine()}), torch {torch.__version__}"
    text = CARD.format(n_params=n_params, steps=steps, seed=seed, train_seconds=seconds, machine=machine,
                       prev_head=props["best_previous_token_head"], ind_head=props["best_induction_head"],
                       rows=EVAL_ROWS, length=REPEAT_LEN, eval_seed=EVAL_SEED, **props)
    (out_dir / "README.md").write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=REPO / "models" / "induction-2l")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model, seconds = train(args.steps, args.seed)
    props = measure(model, EVAL_SEED)
    print(json.dumps(props, indent=1))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_byte_tokenizer(args.out_dir)
    meta = {"tokenizer": {"type": "bpe", "vocab": "vocab.json", "merges": "merges.txt"},
            "bos_token": EOT, "eos_token": EOT, "pad_token": EOT}
    tn.write_native(args.out_dir, model.cfg, model.state_dict(), meta)
    write_card(args.out_dir, model, props, args.steps, args.seed, seconds)
    if props["best_induction_score"] < 0.5 or props["loss_second_repeat"] > props["loss_first_repeat"] / 4:
        print("the trained model misses the card's targets (induction score >= 0.5, loss on the second "
              "repeat under a quarter of the first)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
