#!/usr/bin/env python3
"""Build lensd's parity fixtures: small random models and TransformerLens's outputs.

    make_fixtures.py OUT_DIR

Writes, deterministically (fixed seeds, CPU, float32):
  OUT_DIR/models/<name>/      HF-style directories (config.json, model.safetensors,
                              vocab.json, merges.txt) and TL-native directories
  OUT_DIR/refs/<case>.safetensors
                              tokens (I64), logits (F32) and every activation
                              run_with_cache(names_filter=None) cached, by TL name
  OUT_DIR/src/brackets/       the config and tokenizer JSON given to convert_tl_checkpoint.py
  OUT_DIR/manifest.json       the cases: lensd CLI args, model, reference, and how
                              the reference was produced

HF models are built with transformers from random weights and loaded into
HookedTransformer the way from_pretrained does (tl_native.build_hf_tl: TL's own
config conversion, weight conversion and load_and_process_state_dict), offline.
The brackets model is the real ARENA checkpoint, converted with
convert_tl_checkpoint.py and run the way the course runs it.

Not a test by itself, but it asserts what TL promises on the way: TL without
processing reproduces the HF logits, processing leaves log-probs unchanged,
and every TL-native directory loads back to identical logits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

import tl_native as tn  # noqa: E402  (sets the offline environment first)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

SHARED = Path(os.environ.get("LENSD_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GPT2_TOKENIZER = SHARED / "data" / "gpt2-tokenizer"
BRACKETS = SHARED / "data" / "arena-brackets"
GENERATOR_FILES = ("make_fixtures.py", "tl_native.py", "convert_tl_checkpoint.py")
BUNDLED = TOOLS.parent / "models"  # lensd's bundled demo models

TOLERANCE_NOTE = (
    "float32 on both sides; finite entries: max|lensd-TL| <= 1e-4 * max(1, max|TL|); "
    "-inf (masked scores) and -1e5 (masked pad keys) positions must coincide exactly"
)

# Prompts: the batch has three lengths; all but "Hello world" are longer than
# the GPT-Neo window (4), so the local mask matters.
SINGLE = "The quick brown fox jumps over the lazy dog"
BATCH = ["Hello world", "When Mary and John went to the store", "1 2 3 4 5"]
NO_BOS = "The cat sat on the mat."
UNICODE = "naïve café — 日本語 🙂 ok"
TOKEN_IDS = [50256, 464, 3797, 3332, 0, 319, 262, 50255, 2603, 13]


def generator_hash() -> str:
    """Hash of the scripts that define the fixtures and of the bundled models
    they copy; conftest rebuilds on change."""
    h = hashlib.sha256()
    for name in GENERATOR_FILES:
        h.update(name.encode())
        h.update((TOOLS / name).read_bytes())
    for path in sorted(BUNDLED.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(BUNDLED)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def add_noise_(named_params, seed: int) -> None:
    """Perturb every parameter so folding and centering have work to do.

    Norm gains become 1 + 0.2·N(0,1), biases 0.1·N(0,1) and weight matrices
    gain 0.15·N(0,1): far from the init defaults of 1/0 and large enough for
    peaked attention patterns.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in named_params:  # named_parameters() yields a tied weight once
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            parts = name.split(".")
            is_norm = len(parts) > 1 and "ln" in parts[-2]  # ln_1, ln_f, ln1, ln_final, mlp.ln
            if is_norm and parts[-1] in ("weight", "w"):
                p.copy_(1.0 + 0.2 * noise)
            elif parts[-1] in ("bias", "b") or parts[-1].startswith("b_"):
                p.copy_(0.1 * noise)
            else:
                p.add_(0.15 * noise)


# --------------------------------------------------------------------------
# HF models


def copy_gpt2_tokenizer(dest: Path) -> None:
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(GPT2_TOKENIZER / name, dest / name)


def make_gpt2(dest: Path, seed: int, layout: str, **config) -> None:
    """Random GPT-2 checkpoint in one of two key layouts.

    layout "bare": keys without the "transformer." prefix, tied lm_head (no
    lm_head.weight), with the h.N.attn.bias causal buffers old checkpoints
    carry (as in the released gpt2 weights). layout "prefixed":
    "transformer."-prefixed keys, an explicit untied lm_head.weight, no
    buffers.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=50257, tie_word_embeddings=(layout == "bare"), **config)
    model = GPT2LMHeadModel(cfg).eval()
    add_noise_(model.named_parameters(), seed)
    dest.mkdir(parents=True, exist_ok=True)
    cfg.architectures = ["GPT2LMHeadModel"]
    cfg.save_pretrained(dest)
    tensors = {}
    for name, p in model.named_parameters():
        if layout == "bare":
            if name.startswith("lm_head."):
                continue
            name = name.removeprefix("transformer.")
        tensors[name] = p.detach().contiguous().clone()
    if layout == "bare":
        n = cfg.n_positions
        causal = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        for layer in range(cfg.n_layer):
            tensors[f"h.{layer}.attn.bias"] = causal.clone()
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    copy_gpt2_tokenizer(dest)
    check_hf_reload(dest, model)


def make_neo(dest: Path, seed: int, **config) -> None:
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(seed)
    model = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=50257, **config)).eval()
    add_noise_(model.named_parameters(), seed)
    model.save_pretrained(dest, safe_serialization=True)
    copy_gpt2_tokenizer(dest)
    check_hf_reload(dest, model)


def check_hf_reload(dest: Path, original) -> None:
    """transformers reads the written layout back to the same parameters."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(dest), dtype=torch.float32)
    want = dict(original.named_parameters())
    got = dict(reloaded.named_parameters())
    assert want.keys() == got.keys(), (dest, want.keys() ^ got.keys())
    for name, p in want.items():
        assert torch.equal(p, got[name]), f"{dest}: {name} differs after reload"


# --------------------------------------------------------------------------
# TL-native models


def make_native(dest: Path, seed: int, cfg_fields: dict, meta: dict, files=None) -> None:
    """Random HookedTransformer(cfg) written with tl_native.write_native, then
    read back through tl_native and checked for identical logits."""
    from transformer_lens import HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(device="cpu", seed=seed, **cfg_fields)
    model = tn.quiet_hooked_transformer(cfg).eval()
    add_noise_(model.named_parameters(), seed)
    tn.write_native(dest, cfg, model.state_dict(), meta, files)

    native = tn.load_native(dest)
    back = tn.build_native_tl(native, processing=())
    tokens = torch.randint(0, cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want, got = model(tokens), back(tokens)
    assert torch.equal(want, got), f"{dest}: native round trip changed the logits"


# --------------------------------------------------------------------------
# Cases


class Builder:
    def __init__(self, out: Path):
        self.out = out
        self.cases: list[dict] = []
        (out / "refs").mkdir(parents=True, exist_ok=True)

    def add(self, case_id: str, model_dir: Path, args: list[str], arrays: dict, how: str, **extra) -> None:
        ref = self.out / "refs" / (case_id.replace("/", "__") + ".safetensors")
        tn.save_arrays(arrays, ref)
        self.cases.append({
            "id": case_id,
            "model": str(model_dir.relative_to(self.out)),
            "args": args,
            "reference": str(ref.relative_to(self.out)),
            "tolerance_note": TOLERANCE_NOTE,
            "produced_by": how,
            "batch": int(arrays["tokens"].shape[0]),
            "positions": int(arrays["tokens"].shape[1]),
            "tensors": len(arrays),
            **extra,
        })


def row_args(rows) -> list[str]:
    args = []
    for kind, value in rows:
        if kind == "text":
            args += ["--prompt", value]
        else:
            args += ["--tokens", ",".join(str(i) for i in value)]
    return args


def text(*prompts):
    return [("text", p) for p in prompts]


# (name, rows, extra CLI args, run_reference options)
STANDARD_INPUTS = [
    ("single", text(SINGLE), [], {}),
    ("batch-right", text(*BATCH), [], {}),
    ("batch-left", text(*BATCH), ["--padding-side", "left"], {"padding_side": "left"}),
    ("no-bos", text(NO_BOS), ["--no-bos"], {"prepend_bos": False}),
    ("tokens", [("tokens", TOKEN_IDS)], [], {}),
]


def hf_cases(b: Builder, name: str, model_dir: Path, extra: bool = False) -> None:
    """Default and no-processing cases; with extra, single flags and hook flags."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    how = ("offline from_pretrained({flags}): TL get_pretrained_model_config + get_pretrained_state_dict "
           "+ HookedTransformer(cfg) + load_and_process_state_dict; run_with_cache(names_filter=None)")
    variants = [("default", ["--processing", "default"], tn.DEFAULT_PROCESSING, STANDARD_INPUTS, ()),
                ("none", ["--no-processing"], (), STANDARD_INPUTS, ())]
    if extra:
        variants.append(("default", ["--processing", "default"], tn.DEFAULT_PROCESSING,
                         [("unicode", text(UNICODE), [], {})], ()))
        for flag in tn.DEFAULT_PROCESSING:
            variants.append((f"only-{flag}", ["--processing", flag], (flag,), STANDARD_INPUTS[:1], ()))
        refactor = tn.DEFAULT_PROCESSING + ("refactor_factored_attn_matrices",)
        variants.append(("default+refactor", ["--processing", ",".join(refactor)], refactor,
                         STANDARD_INPUTS[:1], ()))
        for flag in tn.HOOK_FLAGS:
            variants.append((f"default+{flag}", ["--processing", "default", "--" + flag.replace("_", "-")],
                             tn.DEFAULT_PROCESSING, STANDARD_INPUTS[:1], (flag,)))
        variants.append(("default+all-hook-flags", ["--processing", "default"]
                         + ["--" + f.replace("_", "-") for f in tn.HOOK_FLAGS],
                         tn.DEFAULT_PROCESSING, STANDARD_INPUTS[2:3], tuple(tn.HOOK_FLAGS)))

    # refactor_factored_attn_matrices takes W_Q, W_K, W_V, W_O from SVDs
    # (torch.linalg.svd via FactoredMatrix); each singular vector's sign is
    # LAPACK's choice, so q and k (and v and z) are fixed only up to a sign
    # per (layer, head, d_head component), the same for both members of a pair.
    sign_free = [["attn.hook_q", "attn.hook_k"], ["attn.hook_v", "attn.hook_z"]]
    models = {}
    for label, proc_args, flags, inputs, hook_flags in variants:
        key = (flags, hook_flags)
        if key not in models:
            model = tn.build_hf_tl(model_dir, flags, hf_model=hf)
            tn.set_hook_flags(model, hook_flags)
            models[key] = model
        model = models[key]
        for input_name, rows, input_args, opts in inputs:
            arrays = tn.run_reference(model, rows, **opts)
            b.add(f"{name}/{label}/{input_name}", model_dir, proc_args + input_args + row_args(rows), arrays,
                  how.format(flags=", ".join(flags) or "all processing off"),
                  processing=list(flags), hook_flags=list(hook_flags),
                  **({"sign_free": sign_free} if "refactor_factored_attn_matrices" in flags else {}))
            check_against_hf(hf, arrays, flags, f"{name}/{label}/{input_name}", opts)


def check_against_hf(hf, arrays: dict, flags, case_id: str, opts: dict) -> None:
    """TL's claims about HF equivalence, asserted to 1e-4.

    No processing: TL logits == HF logits. Default processing: log-probs
    agree (center_unembed shifts logits by a per-position constant).
    Left-padded rows are skipped (HF needs its own mask/position ids).
    """
    if opts.get("padding_side") == "left" or set(flags) not in (set(), set(tn.DEFAULT_PROCESSING)):
        return
    tokens = torch.from_numpy(arrays["tokens"])
    with torch.no_grad():
        want = hf(tokens).logits
    got = torch.from_numpy(arrays["logits"])
    if flags:
        want, got = want.log_softmax(-1), got.log_softmax(-1)
    err = (want - got).abs().max().item()
    bound = 1e-4 * max(1.0, want.abs().max().item())
    assert err <= bound, f"{case_id}: TL vs HF max error {err:.3g} > {bound:.3g}"


def native_cases(b: Builder, name: str, model_dir: Path, inputs, variants=(("model", [], None),)) -> None:
    native = tn.load_native(model_dir)
    how = ("HookedTransformer(cfg from tl_config.json{tok}) + {load}; run_with_cache(names_filter=None); "
           "text rows: {tokenize}")
    tok = (native.meta.get("tokenizer") or {}).get("type")
    for label, proc_args, processing in variants:
        model = tn.build_native_tl(native, processing=processing)
        flags = native.processing() if processing is None else tuple(processing)
        load = f"load_and_process_state_dict({', '.join(flags)})" if flags else "load_state_dict"
        for input_name, rows, input_args, opts in inputs:
            arrays = tn.run_reference(model, rows, native=native, **opts)
            b.add(f"{name}/{label}/{input_name}", model_dir, proc_args + input_args + row_args(rows), arrays,
                  how.format(tok=", HF GPT-2 tokenizer" if tok == "bpe" else "", load=load,
                             tokenize="TL to_tokens" if tok == "bpe" else "tl_native list tokenizer"),
                  processing=list(flags), hook_flags=[])


# --------------------------------------------------------------------------
# Brackets


BRACKETS_CONFIG = {
    "n_layers": 3, "d_model": 56, "n_heads": 2, "d_head": 28, "d_mlp": 56, "n_ctx": 42,
    "d_vocab": 5, "d_vocab_out": 2, "attention_dir": "bidirectional", "act_fn": "relu",
    "normalization_type": "LN", "eps": 1e-5, "positional_embedding_type": "standard",
    "use_attn_result": True, "use_hook_tokens": True,
}
BRACKETS_TOKENIZER = {
    "tokenizer": {"type": "list", "tokens": ["[start]", "[pad]", "[end]", "(", ")"], "split": "chars"},
    "bos_token": "[start]", "eos_token": "[end]", "pad_token": "[pad]",
    "append_eos": True, "mask_pad_keys": True, "processing": "none",
}
BRACKETS_PAD = 1


def brackets_course_model():
    """The ARENA notebook's model: HookedTransformer(cfg), load_state_dict,
    permanent pad-key masking hooks."""
    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(device="cpu", **BRACKETS_CONFIG)
    model = tn.quiet_hooked_transformer(cfg).eval()
    state_dict = torch.load(BRACKETS / "brackets_model_state_dict.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict)
    tn.add_pad_key_mask_hooks(model, BRACKETS_PAD)
    return model


def brackets_course_tokens(strings) -> torch.Tensor:
    """The course's SimpleTokenizer: [start] + ids + [end], right-padded with [pad]."""
    ids = {"(": 3, ")": 4}
    return tn.pad_rows([[0] + [ids[c] for c in s] + [2] for s in strings], BRACKETS_PAD, "right")


def make_brackets(out: Path) -> Path:
    import convert_tl_checkpoint

    src = out / "src" / "brackets"
    src.mkdir(parents=True, exist_ok=True)
    (src / "config.json").write_text(json.dumps(BRACKETS_CONFIG, indent=1) + "\n")
    (src / "tokenizer.json").write_text(json.dumps(BRACKETS_TOKENIZER, indent=1) + "\n")
    dest = out / "models" / "brackets"
    rc = convert_tl_checkpoint.main([str(BRACKETS / "brackets_model_state_dict.pt"), str(src / "config.json"),
                                     str(dest), "--name", "arena-brackets",
                                     "--tokenizer-json", str(src / "tokenizer.json")])
    assert rc == 0
    return dest


def brackets_cases(b: Builder, dest: Path) -> None:
    data = json.loads((BRACKETS / "brackets_data.json").read_text())
    strings = [s for s, _ in data[:20]]
    course = brackets_course_model()
    native = tn.load_native(dest)
    converted = tn.build_native_tl(native)
    how = ("ARENA course: HookedTransformer(README cfg) + load_state_dict(brackets_model_state_dict.pt) + "
           "permanent hooks filling hook_attn_scores with -1e5 at [pad] keys; run_with_cache(names_filter=None)")
    for label, group in (("batch20", strings), ("single", strings[2:3])):
        tokens = brackets_course_tokens(group)
        with torch.no_grad():
            logits, cache = course.run_with_cache(tokens)
        arrays = {"tokens": tokens.numpy(), "logits": logits.numpy(), **{k: v.numpy() for k, v in cache.items()}}
        # The converted directory, run as lensd must run it, matches the course.
        mine = tn.run_reference(converted, text(*group), native=native)
        assert mine.keys() == arrays.keys(), mine.keys() ^ arrays.keys()
        for k, v in arrays.items():
            assert np.array_equal(mine[k], v), f"brackets/{label}: converted model differs at {k}"
        b.add(f"brackets/course/{label}", dest, row_args(text(*group)), arrays, how, processing=[], hook_flags=[])


# --------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    started = time.time()
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)

    import transformer_lens
    from importlib.metadata import version

    out = args.out_dir.resolve()
    if (out / "manifest.json").exists():
        (out / "manifest.json").unlink()  # a half-built directory must not look complete
    for sub in ("models", "refs", "src"):
        shutil.rmtree(out / sub, ignore_errors=True)
    models = out / "models"
    b = Builder(out)

    # 1-3: HF architectures.
    make_gpt2(models / "gpt2-a", 1, "bare", n_layer=2, n_embd=64, n_head=4, n_positions=128, n_ctx=128)
    make_gpt2(models / "gpt2-b", 2, "prefixed", n_layer=3, n_embd=96, n_head=3, n_inner=200,
              n_positions=64, n_ctx=64)
    make_neo(models / "neo", 3, num_layers=4, hidden_size=64, num_heads=4,
             attention_types=[[["global", "local"], 2]], window_size=4, max_position_embeddings=128)
    hf_cases(b, "gpt2-a", models / "gpt2-a", extra=True)
    hf_cases(b, "gpt2-b", models / "gpt2-b")
    hf_cases(b, "neo", models / "neo")

    # 4-7 (+ solu_ln with LN): TL-native models written by tl_native.
    digits = ["<bos>", "<pad>"] + [str(i) for i in range(10)]
    make_native(models / "native-attnonly", 4, dict(
        n_layers=2, d_model=32, n_heads=1, d_head=32, n_ctx=32, d_vocab=12, d_vocab_out=3,
        attn_only=True, attention_dir="bidirectional", normalization_type="LN",
        use_attn_result=True, use_split_qkv_input=True),
        {"tokenizer": {"type": "list", "tokens": digits, "split": "whitespace"},
         "bos_token": "<bos>", "pad_token": "<pad>"})
    letters = ["^", "_", " "] + [chr(c) for c in range(ord("a"), ord("r"))]
    make_native(models / "native-lnpre-relu", 5, dict(
        n_layers=2, d_model=48, n_heads=4, d_head=12, d_mlp=96, n_ctx=32, d_vocab=20, act_fn="relu",
        normalization_type="LNPre", use_hook_mlp_in=True, use_attn_in=True),
        {"tokenizer": {"type": "list", "tokens": letters, "split": "chars"},
         "bos_token": "^", "pad_token": "_"})
    make_native(models / "native-solu", 6, dict(
        n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=64, d_vocab=50257,
        act_fn="solu_ln", normalization_type=None),
        {"tokenizer": {"type": "bpe", "vocab": "vocab.json", "merges": "merges.txt"},
         "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        files={"vocab.json": GPT2_TOKENIZER / "vocab.json", "merges.txt": GPT2_TOKENIZER / "merges.txt"})
    words = ["<s>", "</s>", "<pad>", "the", "cat", "dog", "sat", "on", "mat", "a", "big", "small",
             "ran", "to", "and", "."]
    word_meta = {"tokenizer": {"type": "list", "tokens": words, "split": "whitespace"},
                 "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                 "processing": list(tn.DEFAULT_PROCESSING)}
    make_native(models / "native-gelu", 7, dict(
        n_layers=2, d_model=40, n_heads=5, d_head=8, d_mlp=80, n_ctx=32, d_vocab=len(words),
        act_fn="gelu", normalization_type="LN", default_prepend_bos=True), word_meta)
    make_native(models / "native-solu-ln", 8, dict(
        n_layers=2, d_model=40, n_heads=2, d_head=20, d_mlp=48, n_ctx=32, d_vocab=len(words),
        d_vocab_out=7, act_fn="solu_ln", normalization_type="LN"), word_meta)

    digit_inputs = [
        ("single", text("3 1 4 1 5 9 2 6"), [], {}),
        ("batch-right", text("1 2", "3 1 4 1 5 9 2 6", "7 7 7"), [], {}),
        ("batch-left", text("1 2", "3 1 4 1 5 9 2 6", "7 7 7"), ["--padding-side", "left"],
         {"padding_side": "left"}),
        ("no-bos", text("9 8 7 6"), ["--no-bos"], {"prepend_bos": False}),
        ("tokens", [("tokens", [0, 5, 1, 11, 3, 1])], [], {}),
    ]
    letter_inputs = [
        ("single", text("a bad cab fed"), [], {}),
        ("batch-right", text("ab", "a bad fig jab", "hope"), [], {}),
        ("batch-left", text("ab", "a bad fig jab", "hope"), ["--padding-side", "left"], {"padding_side": "left"}),
        ("no-bos", text("jig jog"), ["--no-bos"], {"prepend_bos": False}),
        ("tokens", [("tokens", [0, 3, 4, 19, 1, 2, 5])], [], {}),
    ]
    word_inputs = [
        ("single", text("the cat sat on the mat ."), [], {}),
        ("batch-right", text("a dog", "the big cat ran to the small dog and sat", "the mat ."), [], {}),
        ("batch-left", text("a dog", "the big cat ran to the small dog and sat", "the mat ."),
         ["--padding-side", "left"], {"padding_side": "left"}),
        ("no-bos", text("dog ran to a cat"), ["--no-bos"], {"prepend_bos": False}),
        ("tokens", [("tokens", [0, 3, 4, 2, 1, 15, 6])], [], {}),
    ]
    native_cases(b, "native-attnonly", models / "native-attnonly", digit_inputs)
    native_cases(b, "native-lnpre-relu", models / "native-lnpre-relu", letter_inputs)
    native_cases(b, "native-solu", models / "native-solu", STANDARD_INPUTS)
    native_cases(b, "native-gelu", models / "native-gelu", word_inputs, variants=(
        ("model", [], None),
        ("none", ["--no-processing"], ()),
        ("fold_ln+center_unembed", ["--processing", "fold_ln,center_unembed"], ("fold_ln", "center_unembed")),
    ))
    native_cases(b, "native-solu-ln", models / "native-solu-ln", word_inputs[:3], variants=(
        ("model", [], None), ("none", ["--no-processing"], ())))

    # 8: the real bracket classifier.
    brackets_cases(b, make_brackets(out))

    # 9-10: the bundled demo models, copied as shipped.
    for name in ("induction-2l", "brackets"):
        shutil.copytree(BUNDLED / name, models / f"bundled-{name}")
    native_cases(b, "bundled-induction-2l", models / "bundled-induction-2l", [
        ("single", text(SINGLE + ". " + SINGLE), [], {}),
        ("batch-right", text(*BATCH), [], {}),
        ("batch-left", text(*BATCH), ["--padding-side", "left"], {"padding_side": "left"}),
        ("unicode", text(UNICODE), [], {}),
        ("no-bos", text(NO_BOS), ["--no-bos"], {"prepend_bos": False}),
        ("tokens", [("tokens", [256, 0, 255, 65, 66, 67, 65, 66, 10, 256])], [], {}),
    ])
    native_cases(b, "bundled-brackets", models / "bundled-brackets", [
        ("single", text("(()())"), [], {}),
        ("batch-right", text("()", "(()))(", "((((()))))()", ")("), [], {}),
        ("tokens", [("tokens", [0, 3, 3, 4, 4, 2])], [], {}),
    ])

    manifest = {
        "generator_hash": generator_hash(),
        "tl_version": version("transformer-lens"),
        "transformer_lens_module": transformer_lens.__file__,
        "torch_version": torch.__version__,
        "transformers_version": version("transformers"),
        "numpy_version": np.__version__,
        "build_seconds": round(time.time() - started, 1),
        "notes": [
            "HF references: from_pretrained's body run offline on the local directory (TL's "
            "get_official_model_name rejects local paths). gpt2-b: TL's GPT-2 config mapping ignores "
            "n_inner (d_mlp = 4*n_embd); the reference uses d_mlp = n_inner.",
            "No-processing TL logits were asserted equal to the HF logits (1e-4) for single, "
            "right-padded batch, no-bos and tokens inputs; with default processing the log-probs.",
            "Native references were checked to load back into HookedTransformer with identical logits.",
            "Cases with refactor_factored_attn_matrices list sign_free hook pairs: TL fixes them only up "
            "to a sign per (layer, head, component), chosen by LAPACK's SVD.",
        ],
        "cases": b.cases,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{len(b.cases)} cases, {size / 2**20:.1f} MiB in {out}, {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
