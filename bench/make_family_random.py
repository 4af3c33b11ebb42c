"""Make random-weight models with the exact shapes of SmolLM2-135M and Pythia-160M, offline.

    python bench/make_family_random.py OUT_DIR --shape smollm2-135m|pythia-160m [--seed 0]

The counterpart of make_gpt2_small_random.py for the newer families (the
"families" rows of bench_cache.py and bench_patch.py's --shape). OUT_DIR
becomes a Hugging Face snapshot (config.json, model.safetensors and the
family's tokenizer files) that `lensd --model OUT_DIR`,
`AutoModelForCausalLM.from_pretrained(OUT_DIR)` and TransformerLens 4.3's
`TransformerBridge.boot_transformers(OUT_DIR)` all read. The weights are
transformers' own initialisation of the model class under a fixed seed, in
float32; only their values differ from the real checkpoints, not the shapes
or the amount of work:

  smollm2-135m  LlamaForCausalLM(LlamaConfig(...)) as HuggingFaceTB/SmolLM2-135M:
                hidden 576, 30 layers, 9 heads (head_dim 64), 3 key/value heads,
                gated SiLU MLP 1536, vocab 49152, tied embeddings, rope_theta
                100000, rms_norm_eps 1e-5, 8192 positions (134,515,008 parameters)
  pythia-160m   GPTNeoXForCausalLM(GPTNeoXConfig(...)) as EleutherAI/pythia-160m:
                hidden 768, 12 layers, 12 heads, MLP 3072 (GELU), vocab 50304,
                rotary_pct 0.25, parallel attention + MLP, 2048 positions, untied
                embed_out (162,322,944 parameters)

The tokenizer files come from tools/family_tokenizers.py (SmolLM2's
configuration trained here, GPT-NeoX-20B's tokenizer.json from the shared
data); the benchmarks pass token ids, so they only have to exist (the bridge
loads a tokenizer when it boots). Nothing is downloaded. If OUT_DIR already
holds a complete model made with the same shape, seed and version, nothing is
done.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
STAMP = "bench_model.txt"  # what made the directory; a different one remakes it
VERSION = 1

# shape -> (tokenizer family, config class, model class, config kwargs)
SHAPES = {
    "smollm2-135m": ("smollm", "LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        head_dim=64, intermediate_size=1536, vocab_size=49152, hidden_act="silu",
        max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
        attention_bias=False, mlp_bias=False, initializer_range=0.041666666666666664,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        bos_token_id=0, eos_token_id=0)),
    "pythia-160m": ("pythia", "GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        vocab_size=50304, hidden_act="gelu", rotary_pct=0.25, rotary_emb_base=10000,
        use_parallel_residual=True, max_position_embeddings=2048, layer_norm_eps=1e-5,
        tie_word_embeddings=False, initializer_range=0.02, bos_token_id=0, eos_token_id=0)),
}
# What the benchmarks need to know without loading the model.
INFO = {
    "smollm2-135m": {"label": "SmolLM2-135M shape (Llama)", "bos": 0, "vocab": 49152},
    "pythia-160m": {"label": "Pythia-160M shape (GPT-NeoX)", "bos": 0, "vocab": 50304},
}


def _complete(out_dir: Path) -> bool:
    return all((out_dir / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


def make(out_dir: Path, shape: str, seed: int = 0) -> Path:
    """Write the model of `shape` to out_dir unless it is already there; return out_dir."""
    if shape not in SHAPES:
        sys.exit(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    out_dir = Path(out_dir)
    stamp = out_dir / STAMP
    want = f"shape={shape} seed={seed} version={VERSION}"
    if _complete(out_dir) and stamp.is_file() and stamp.read_text().strip() == want:
        return out_dir

    import torch
    import transformers

    sys.path.insert(0, str(REPO / "tools"))
    import family_tokenizers

    tok_family, cfg_cls, model_cls, kwargs = SHAPES[shape]
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    torch.manual_seed(seed)
    config = getattr(transformers, cfg_cls)(**kwargs)
    config.architectures = [model_cls]
    config.dtype = "float32"
    model = getattr(transformers, model_cls)(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    family_tokenizers.write_tokenizer(tok_family, out_dir)
    stamp.write_text(want + "\n")
    return out_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(make(args.out_dir, args.shape, args.seed))


if __name__ == "__main__":
    main()
