#!/usr/bin/env python3
"""Build lensd's model-family parity fixtures: tiny random HF checkpoints of
every new family and TransformerLens 4.3 TransformerBridge references.

    make_family_fixtures.py [OUT_DIR] [--only ID,ID]

OUT_DIR defaults to $LENSD_FAMILY_FIXTURES or build/fixtures-families.
Writes, deterministically (fixed seeds, CPU, float32 compute):

  OUT_DIR/models/<id>/          Hugging Face snapshots: config.json, weights
                                (model.safetensors; one bfloat16 checkpoint,
                                one sharded with model.safetensors.index.json)
                                and the family's tokenizer files
                                (tools/family_tokenizers.py)
  OUT_DIR/refs/<case>.safetensors
                                tokens (I64), logits (F32) and every hook
                                point run_with_cache returned, once, under its
                                legacy (HookedTransformer-style) name
  OUT_DIR/refs/<case>.hf.safetensors
                                no-processing cases: Hugging Face's own logits
                                (eager attention) and the attention mask they
                                were computed with (hf_logits, attention_mask)
  OUT_DIR/manifest.json         the cases (lensd CLI args, model, references,
                                how each was produced), per model the features
                                switched on and the canonical bridge names of
                                every legacy name (aliases), the generator hash

References: TransformerBridge.boot_transformers(dir) +
enable_compatibility_mode() (processed, default flags) or
enable_compatibility_mode(no_processing=True), run_with_cache on the bridge's
own tokenization. TL 4.3 cannot share an environment with the venv's TL 3.9,
so that step runs in a child process with tools/setup_tl4.sh's folder first
on PYTHONPATH (this script re-invoked with --bridge-step). GPT-J is the
exception (TL 4.3's GPT-J adapter records post-softmax weights as
hook_attn_scores, see build/families/REPORT.md): its references come from TL
3.9's HookedTransformer on the same checkpoint, loaded as make_fixtures.py
loads GPT-2.

Not a test by itself, but it asserts what TL promises on the way: without
processing the bridge's logits equal HF's eager logits, with processing the
log-probs do (1e-4 relative, real positions only: left-pad query rows are
HF's undefined fully-masked rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(TOOLS))

GENERATOR_FILES = ("make_family_fixtures.py", "family_tokenizers.py", "tl_native.py", "setup_tl4.sh")
TL4_VERSION = "4.3.0"
DEFAULT_OUT = REPO / "build" / "fixtures-families"

TOLERANCE_NOTE = (
    "float32 on both sides; finite entries: max|lensd-TL| <= 1e-4 * max(1, max|TL|); "
    "-inf (masked scores) positions must coincide exactly"
)
DEFAULT_PROCESSING = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")

# Prompts: every one longer than the sliding window (4 tokens), three lengths in the batch.
SINGLE = "The quick brown fox jumps over the lazy dog"
BATCH = ["Hello world, this is a test", "When Mary and John went to the store, John gave a drink to",
         "1 2 3 4 5 6 7"]
TOKEN_IDS = [100, 2000, 37, 3000, 5, 1234, 42, 7, 999]  # below every vocabulary (Gemma's: 3263)


def generator_hash() -> str:
    """Hash of the scripts that define these fixtures; the test rebuilds on change."""
    h = hashlib.sha256()
    for name in GENERATOR_FILES:
        h.update(name.encode())
        h.update((TOOLS / name).read_bytes())
    return h.hexdigest()


def out_dir_default() -> Path:
    return Path(os.environ.get("LENSD_FAMILY_FIXTURES", DEFAULT_OUT)).resolve()


# --------------------------------------------------------------------------
# The models


def _rope(**extra):
    return {"rope_type": "default", "rope_theta": 10000.0, **extra}


# id -> (tokenizer family, HF config class name, model class name, config kwargs, options)
# options: dtype ("bfloat16"), shard (max_shard_size), gemma_norms (norm weights are
# offsets w of a (1 + w) gain), features (what the model exercises, for the manifest).
SMALL = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, max_position_embeddings=128)
MODELS = {
    "pythia": ("pythia", "GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        SMALL, num_hidden_layers=2, intermediate_size=256, rotary_pct=0.25, use_parallel_residual=True,
        hidden_act="gelu", tie_word_embeddings=False),
        {"features": ["LayerNorm", "parallel attention+MLP (use_parallel_residual)", "partial rotary 0.25",
                      "qkv/dense biases", "untied unembed"]}),
    "gptj": ("gptj", "GPTJConfig", "GPTJForCausalLM", dict(
        n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=128, activation_function="gelu_new",
        tie_word_embeddings=False),
        {"features": ["LayerNorm", "parallel attention+MLP, one norm", "rotary_dim 8 < head_dim 16 (interleaved)",
                      "untied unembed with bias"], "tl3": True}),
    "llama2": ("llama2", "LlamaConfig", "LlamaForCausalLM", dict(
        SMALL, num_hidden_layers=2, num_key_value_heads=2, rope_parameters=_rope(),
        tie_word_embeddings=False),
        {"features": ["RMSNorm", "GQA 4/2", "gated SiLU MLP", "rope without scaling (Llama 2 style)",
                      "untied unembed"]}),
    "llama3": ("llama3", "LlamaConfig", "LlamaForCausalLM", dict(
        SMALL, num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
        {"features": ["RMSNorm", "GQA 4/2", "rope_type llama3 (original_max_position_embeddings 16, so "
                      "every frequency band is touched)", "tied unembed", "sharded checkpoint"],
         "shard": "8MB"}),
    "smollm": ("smollm", "LlamaConfig", "LlamaForCausalLM", dict(
        SMALL, num_hidden_layers=3, num_key_value_heads=2, tie_word_embeddings=True,
        rope_parameters=_rope(rope_theta=100000.0)),
        {"features": ["Llama architecture with SmolLM2's tokenizer", "GQA 4/2", "rope theta 1e5",
                      "tied unembed", "3 layers"]}),
    "mistral": ("mistral", "MistralConfig", "MistralForCausalLM", dict(
        SMALL, num_hidden_layers=2, num_key_value_heads=2, head_dim=16, sliding_window=4,
        rope_parameters=_rope(), tie_word_embeddings=False),
        {"features": ["RMSNorm", "GQA 4/2", "sliding window 4", "bfloat16 checkpoint", "untied unembed"],
         "dtype": "bfloat16"}),
    "qwen2": ("qwen2", "Qwen2Config", "Qwen2ForCausalLM", dict(
        SMALL, num_hidden_layers=2, num_key_value_heads=2, rope_parameters=_rope(rope_theta=1000000.0),
        tie_word_embeddings=True),
        {"features": ["RMSNorm", "GQA 4/2", "q/k/v biases", "rope theta 1e6", "tied unembed"]}),
    "qwen3": ("qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(
        SMALL, num_hidden_layers=2, num_key_value_heads=2, head_dim=24, rope_parameters=_rope(rope_theta=1000000.0),
        tie_word_embeddings=False),
        {"features": ["RMSNorm", "GQA 4/2", "head_dim 24 != 64/4", "per-head q/k RMSNorm", "untied unembed"]}),
    "gemma": ("gemma", "GemmaConfig", "GemmaForCausalLM", dict(
        SMALL, num_hidden_layers=2, num_key_value_heads=1, head_dim=24, hidden_activation="gelu_pytorch_tanh",
        rope_parameters=_rope(), tie_word_embeddings=True),
        {"features": ["RMSNorm with (1 + w)", "multi-query (1 kv head)", "head_dim 24", "embedding * sqrt(d_model)",
                      "GeGLU (gelu tanh)", "tied unembed"], "gemma_norms": True}),
    "gemma2": ("gemma", "Gemma2Config", "Gemma2ForCausalLM", dict(
        SMALL, num_hidden_layers=2, num_key_value_heads=2, head_dim=24, hidden_activation="gelu_pytorch_tanh",
        sliding_window=4, layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=20,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0, rope_parameters=_rope(), tie_word_embeddings=True),
        {"features": ["RMSNorm with (1 + w)", "sandwich norms (post-attention, post-MLP)", "GQA 4/2", "head_dim 24",
                      "query_pre_attn_scalar 20", "attention soft cap 2", "final soft cap 3",
                      "sliding window 4 on layer 0, global layer 1", "tied unembed"], "gemma_norms": True}),
    "gemma3": ("gemma", "Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        SMALL, num_hidden_layers=3, num_key_value_heads=2, head_dim=24, hidden_activation="gelu_pytorch_tanh",
        sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        query_pre_attn_scalar=20, tie_word_embeddings=True,
        rope_parameters={"sliding_attention": _rope(), "full_attention": _rope(rope_theta=1000000.0)}),
        {"features": ["RMSNorm with (1 + w)", "sandwich norms", "per-head q/k RMSNorm (1 + w)", "GQA 4/2",
                      "head_dim 24", "query_pre_attn_scalar 20", "sliding window 4 (layers 0, 2), global layer 1",
                      "rope theta 1e4 local / 1e6 global", "tied unembed"], "gemma_norms": True}),
    "olmo2": ("olmo2", "Olmo2Config", "Olmo2ForCausalLM", dict(
        SMALL, num_hidden_layers=2, num_key_value_heads=2, rope_parameters=_rope(rope_theta=500000.0),
        rms_norm_eps=1e-6, tie_word_embeddings=False),
        {"features": ["post-norm only (RMSNorm after attention and MLP)", "q/k RMSNorm over the whole projection",
                      "GQA 4/2", "untied unembed"]}),
    "phi": ("phi", "PhiConfig", "PhiForCausalLM", dict(
        SMALL, num_hidden_layers=2, partial_rotary_factor=0.5, hidden_act="gelu_new", tie_word_embeddings=False),
        {"features": ["LayerNorm", "parallel attention+MLP, one norm", "partial rotary 0.5", "biases everywhere",
                      "untied unembed with bias"]}),
    "phi3": ("phi3", "Phi3Config", "Phi3ForCausalLM", dict(
        SMALL, num_hidden_layers=2, num_key_value_heads=2, rope_parameters=_rope(),
        original_max_position_embeddings=128, tie_word_embeddings=False),
        {"features": ["RMSNorm", "fused qkv and gate_up projections", "GQA 4/2", "untied unembed"]}),
}


def vocab_size_for(tokenizer_dir: Path) -> int:
    """The tokenizer's size rounded up to a multiple of 64 (as real checkpoints pad)."""
    from transformers import AutoTokenizer

    n = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    return int(math.ceil(n / 64) * 64)


def special_ids(tokenizer_dir: Path) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return {k: v for k, v in (("bos_token_id", tok.bos_token_id), ("eos_token_id", tok.eos_token_id),
                              ("pad_token_id", tok.pad_token_id)) if v is not None}


def add_noise_(model, seed: int, gemma_norms: bool) -> None:
    """Move every parameter away from its init so folding and centering matter
    (as make_fixtures.add_noise_): norm gains 1 + 0.2·N (Gemma's offsets
    0.2·N, i.e. gains 1 + 0.2·N), biases 0.1·N, everything else += 0.15·N."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied weight once
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            parts = name.split(".")
            owner = parts[-2] if len(parts) > 1 else ""
            is_norm = "norm" in owner or owner.startswith("ln") or owner.endswith("_ln")
            if is_norm and parts[-1] == "weight":
                p.copy_(0.2 * noise if gemma_norms else 1.0 + 0.2 * noise)
            elif parts[-1] == "bias":
                p.copy_(0.1 * noise)
            else:
                p.add_(0.15 * noise)


def make_model(dest: Path, model_id: str, seed: int) -> dict:
    """Writes the HF snapshot of MODELS[model_id] into dest; returns its manifest entry."""
    import torch
    import transformers
    import family_tokenizers

    tok_family, cfg_cls, model_cls, kwargs, opts = MODELS[model_id]
    dest.mkdir(parents=True, exist_ok=True)
    family_tokenizers.write_tokenizer(tok_family, dest)
    kwargs = dict(kwargs, vocab_size=vocab_size_for(dest), **special_ids(dest))
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**kwargs)
    cfg.architectures = [model_cls]
    model = getattr(transformers, model_cls)(cfg).eval()
    add_noise_(model, seed, opts.get("gemma_norms", False))
    dtype = opts.get("dtype", "float32")
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.config.dtype = dtype
    save = {"max_shard_size": opts["shard"]} if "shard" in opts else {}
    model.save_pretrained(str(dest), **save)
    if "shard" in opts:
        assert (dest / "model.safetensors.index.json").is_file(), f"{model_id}: not sharded"
    check_hf_reload(dest, model)
    files = sorted(p.name for p in dest.iterdir())
    return {
        "family": model_id,
        "architecture": model_cls,
        "tokenizer": tok_family,
        "features": opts["features"],
        "dtype": dtype,
        "sharded": "shard" in opts,
        "tied_unembed": bool(getattr(cfg, "tie_word_embeddings", False)),
        "vocab_size": cfg.vocab_size,
        "n_layers": cfg.num_hidden_layers,
        "files": files,
        "bytes": sum(p.stat().st_size for p in dest.iterdir()),
    }


def check_hf_reload(dest: Path, original) -> None:
    """transformers reads the written snapshot back to the same parameters."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(dest), dtype=original.dtype)
    want = dict(original.named_parameters())
    got = dict(reloaded.named_parameters())
    assert want.keys() == got.keys(), (dest, want.keys() ^ got.keys())
    for name, p in want.items():
        assert torch.equal(p, got[name]), f"{dest}: {name} differs after reload"


# --------------------------------------------------------------------------
# Cases shared by both reference steps


def inputs():
    """(name, rows, extra CLI args, padding side or None)."""
    return [
        ("single", [SINGLE], [], None),
        ("batch-right", list(BATCH), [], "right"),
        ("batch-left", list(BATCH), ["--padding-side", "left"], "left"),
        ("tokens", None, [], None),
    ]


def token_row(bos_id) -> list[int]:
    return ([bos_id] if bos_id is not None else []) + TOKEN_IDS


def row_args(rows, ids) -> list[str]:
    if rows is None:
        return ["--tokens", ",".join(str(i) for i in ids)]
    out = []
    for r in rows:
        out += ["--prompt", r]
    return out


MODES = [("default", ["--processing", "default"], False), ("none", ["--no-processing"], True)]


def compare_hf(hf_logits, got, mask, case_id: str, log_probs: bool) -> float:
    """Asserts TL's HF-equivalence claim at the real (mask 1) positions; returns the error."""
    want = hf_logits
    if log_probs:
        want, got = want.log_softmax(-1), got.log_softmax(-1)
    real = mask.bool()
    err = (want - got).abs()[real].max().item()
    bound = 1e-4 * max(1.0, want[real].abs().max().item())
    assert err <= bound, f"{case_id}: TL vs HF max error {err:.3g} > {bound:.3g}"
    return err


def hf_forward(hf, tokens, mask, left: bool):
    """HF eager logits, given what the bridge gives the model: for left padding
    the attention mask and position ids cumsum(mask) - 1 with pads at 1; else no mask."""
    import torch

    with torch.no_grad():
        if left:
            pos = mask.long().cumsum(-1) - 1
            pos = pos.masked_fill(mask == 0, 1)
            return hf(tokens, attention_mask=mask, position_ids=pos).logits.float()
        return hf(tokens).logits.float()


def save_case(out: Path, case_id: str, arrays: dict, hf_arrays: dict | None) -> tuple[str, str | None]:
    import tl_native as tn

    stem = case_id.replace("/", "__")
    ref = out / "refs" / f"{stem}.safetensors"
    tn.save_arrays(arrays, ref)
    hf_ref = None
    if hf_arrays is not None:
        hf_ref = out / "refs" / f"{stem}.hf.safetensors"
        tn.save_arrays(hf_arrays, hf_ref)
    return str(ref.relative_to(out)), (str(hf_ref.relative_to(out)) if hf_ref else None)


def case_entry(out, case_id, model_id, args, ref, hf_ref, arrays, how, flags, effective, extra=None) -> dict:
    return {
        "id": case_id,
        "model_id": model_id,
        "model": f"models/{model_id}",
        "args": args,
        "reference": ref,
        "hf_reference": hf_ref,
        "tolerance_note": TOLERANCE_NOTE,
        "produced_by": how,
        "processing": list(flags),
        "effective_processing": list(effective),
        "hook_flags": [],
        "batch": int(arrays["tokens"].shape[0]),
        "positions": int(arrays["tokens"].shape[1]),
        "tensors": len(arrays),
        **(extra or {}),
    }


# --------------------------------------------------------------------------
# TransformerLens 4.3 (child process, build/tl4 first on PYTHONPATH)


def legacy_groups(bridge, cache) -> dict[str, list[str]]:
    """{reference key: [other names of the same hook point]} over the cache's names.

    Names reaching one HookPoint form a group; the key is the group's legacy
    name, the one whose last part is not hook_in/hook_out (exactly one such
    name in every group TL 4.3 forms for these families). One exception: the
    logits hook is keyed `unembed.hook_out`, HookedTransformer's (TL 3.9's and
    lensd's GPT-2) name; the bridge's `hook_unembed` is listed as its alias."""
    hook_dict = bridge.hook_dict
    groups: dict[int, list[str]] = {}
    for name in cache:
        groups.setdefault(id(hook_dict[name]), []).append(name)
    out = {}
    for members in groups.values():
        legacy = [m for m in members if m.split(".")[-1] not in ("hook_in", "hook_out")]
        assert len(legacy) <= 1, f"hook point with several legacy names: {members}"
        key = legacy[0] if legacy else members[0]
        if "unembed.hook_out" in members:
            key = "unembed.hook_out"
        out[key] = [m for m in members if m != key]
    return out


def effective_processing(bridge, cache, no_processing: bool) -> list[str]:
    """What process_weights actually applied. fold_ln is measured: some pre-norm
    (ln1, ln2, ln_final) has hook_out == hook_normalized, i.e. its weight was
    folded away (OLMo 2 folds nothing; Phi-3 folds in its own preprocess_weights).
    The others follow ProcessWeights.process_weights' gates: centering of the
    writing weights only for LayerNorm models, center_unembed off under a final
    soft cap."""
    import torch

    if no_processing:
        return []
    cfg, adapter = bridge.cfg, bridge.adapter
    out = []
    norms = [n for n in ("blocks.0.ln1", "blocks.0.ln2", "ln_final") if f"{n}.hook_out" in cache]
    if any(torch.equal(cache[f"{n}.hook_out"], cache[f"{n}.hook_normalized"]) for n in norms):
        out.append("fold_ln")
    if (getattr(adapter, "supports_center_writing_weights", True)
            and getattr(cfg, "normalization_type", "LN") in ("LN", "LNPre") and not getattr(cfg, "final_rms", False)):
        out.append("center_writing_weights")
    cap = getattr(cfg, "output_logits_soft_cap", None)
    if not (cap is not None and cap > 0):
        out.append("center_unembed")
    out.append("fold_value_biases")
    return out


def bridge_step(out: Path, model_ids: list[str]) -> None:
    import numpy as np
    import torch
    import transformer_lens
    from importlib.metadata import version
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.utilities import get_attention_mask
    from transformers import AutoModelForCausalLM

    assert version("transformer-lens") == TL4_VERSION, (version("transformer-lens"), transformer_lens.__file__)
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    import logging
    import warnings

    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    cases, models, notes = [], {}, []
    for model_id in model_ids:
        model_dir = out / "models" / model_id
        hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                  attn_implementation="eager").eval()
        tl3 = MODELS[model_id][4].get("tl3", False)
        info = {}
        for label, mode_args, no_proc in MODES:
            bridge = TransformerBridge.boot_transformers(str(model_dir), device="cpu", dtype=torch.float32)
            bridge.enable_compatibility_mode(disable_warnings=True, no_processing=no_proc)
            tok = bridge.tokenizer
            info.update(default_prepend_bos=bool(bridge.cfg.default_prepend_bos), pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, adapter=type(bridge.adapter).__name__)
            how = (f"TL {TL4_VERSION} TransformerBridge.boot_transformers(dir, dtype=float32) + "
                   f"enable_compatibility_mode({'no_processing=True' if no_proc else 'default flags'}); "
                   "run_with_cache on the bridge's to_tokens (a list of prompts with padding_side for batches); "
                   "each hook point once, under its legacy name")
            for input_name, rows, input_args, side in inputs():
                case_id = f"{model_id}/{label}/{input_name}"
                ids = token_row(tok.bos_token_id)
                if rows is None:
                    tokens = torch.tensor([ids])
                    logits, cache = bridge.run_with_cache(tokens)
                elif len(rows) == 1:
                    tokens = bridge.to_tokens(rows[0])
                    logits, cache = bridge.run_with_cache(tokens)
                else:
                    tokens = bridge.to_tokens(rows, padding_side=side)
                    logits, cache = bridge.run_with_cache(rows, padding_side=side)
                left = side == "left"
                if left:
                    mask = get_attention_mask(tok, tokens, prepend_bos=bridge.cfg.default_prepend_bos,
                                              padding_side="left")
                else:
                    mask = torch.ones_like(tokens)
                groups = legacy_groups(bridge, cache)
                arrays = {"tokens": tokens.to(torch.int64).numpy(), "logits": logits.float().numpy()}
                for key in groups:
                    v = cache[key]
                    arrays[key] = v.numpy() if v.dtype == torch.int64 else v.float().numpy()
                if "embed.hook_in" in arrays:
                    assert np.array_equal(arrays["embed.hook_in"], arrays["tokens"]), case_id
                hf_logits = hf_forward(hf, tokens, mask, left)
                err = compare_hf(hf_logits, logits.float(), mask, case_id, log_probs=not no_proc)
                if tl3:
                    # Only the alias map and the measured defect are kept (refs come from TL 3.9).
                    if input_name == "single":
                        sc = cache["blocks.0.attn.hook_attn_scores"]
                        pat = cache["blocks.0.attn.hook_pattern"]
                        notes.append(f"{case_id}: TL 4.3 GPT-J hook_attn_scores == hook_pattern: "
                                     f"{bool(torch.equal(sc, pat))} (reference taken from TL 3.9)")
                    info["aliases"] = {k: v for k, v in groups.items() if v}
                    info[f"hf_error_{label}"] = max(info.get(f"hf_error_{label}", 0.0), err)
                    continue
                hf_arrays = None
                if no_proc:
                    hf_arrays = {"hf_logits": hf_logits.numpy(), "attention_mask": mask.to(torch.int64).numpy()}
                ref, hf_ref = save_case(out, case_id, arrays, hf_arrays)
                cases.append(case_entry(out, case_id, model_id, mode_args + input_args + row_args(rows, ids),
                                        ref, hf_ref, arrays, how, () if no_proc else DEFAULT_PROCESSING,
                                        effective_processing(bridge, cache, no_proc),
                                        {"hf_error": err, "reference_tl": TL4_VERSION}))
                info["aliases"] = {k: v for k, v in groups.items() if v}
                info.setdefault("hook_order", {})[label] = list(arrays)
            del bridge
        models[model_id] = info
    (out / "bridge_step.json").write_text(json.dumps({
        "cases": cases, "models": models, "notes": notes,
        "transformer_lens_module": transformer_lens.__file__, "tl_version": version("transformer-lens"),
    }, indent=1) + "\n")


# --------------------------------------------------------------------------
# TransformerLens 3.9 (this process): GPT-J


def tl3_step(out: Path, model_id: str) -> list[dict]:
    import torch
    import tl_native as tn
    from transformers import AutoModelForCausalLM

    model_dir = out / "models" / model_id
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                              attn_implementation="eager").eval()
    cases, order = [], {}
    for label, mode_args, no_proc in MODES:
        flags = () if no_proc else DEFAULT_PROCESSING
        model = tn.build_hf_tl(model_dir, flags, hf_model=hf)
        how = ("TL 3.9 HookedTransformer, offline from_pretrained body (tl_native.build_hf_tl: TL's GPT-J config "
               f"and weight conversion + load_and_process_state_dict({', '.join(flags) or 'nothing'})); "
               "run_with_cache(names_filter=None) on TL's to_tokens. TL 4.3's GPT-J adapter records "
               "post-softmax weights as hook_attn_scores, so 3.9 is the reference")
        for input_name, rows, input_args, side in inputs():
            case_id = f"{model_id}/{label}/{input_name}"
            ids = token_row(model.tokenizer.bos_token_id)
            if rows is None:
                refrows = [("tokens", ids)]
            else:
                refrows = [("text", r) for r in rows]
            arrays = tn.run_reference(model, refrows, padding_side=side)
            tokens = torch.from_numpy(arrays["tokens"])
            left = side == "left"
            if left:
                import types

                from transformer_lens.utilities import get_attention_mask

                shim = types.SimpleNamespace(pad_token_id=model.tokenizer.pad_token_id,
                                             bos_token_id=model.tokenizer.bos_token_id, padding_side="left")
                mask = get_attention_mask(shim, tokens, model.cfg.default_prepend_bos)
            else:
                mask = torch.ones_like(tokens)
            # TL 3.9 puts left-pad positions at 0, the bridge at 1; for HF's logits at the
            # real positions the pads' positions do not matter.
            hf_logits = hf_forward(hf, tokens, mask, left)
            err = compare_hf(hf_logits, torch.from_numpy(arrays["logits"]), mask, case_id, log_probs=not no_proc)
            hf_arrays = None
            if no_proc:
                hf_arrays = {"hf_logits": hf_logits.numpy(), "attention_mask": mask.to(torch.int64).numpy()}
            ref, hf_ref = save_case(out, case_id, arrays, hf_arrays)
            cases.append(case_entry(out, case_id, model_id, mode_args + input_args + row_args(rows, ids), ref,
                                    hf_ref, arrays, how, flags, flags, {"hf_error": err, "reference_tl": "3.9.0"}))
            order[label] = list(arrays)
    return cases, order


# --------------------------------------------------------------------------


def tl4_path() -> Path:
    proc = subprocess.run(["bash", str(TOOLS / "setup_tl4.sh")], check=True, capture_output=True, text=True)
    return Path(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, nargs="?", default=None)
    parser.add_argument("--only", default="", help="comma list of model ids (default: all)")
    parser.add_argument("--bridge-step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = (args.out_dir or out_dir_default()).resolve()
    ids = [m for m in args.only.split(",") if m] or list(MODELS)
    unknown = [m for m in ids if m not in MODELS]
    if unknown:
        parser.error(f"unknown model id(s) {unknown}; known: {', '.join(MODELS)}")
    if args.bridge_step:
        bridge_step(out, ids)
        return 0

    import torch
    from importlib.metadata import version

    started = time.time()
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    if (out / "manifest.json").exists():
        (out / "manifest.json").unlink()  # a half-built directory must not look complete
    for sub in ("models", "refs"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "refs").mkdir(parents=True)
    (out / "bridge_step.json").unlink(missing_ok=True)

    models = {}
    for model_id in ids:  # a model's seed is its place in MODELS, so --only builds the same bytes
        models[model_id] = make_model(out / "models" / model_id, model_id, 11 + list(MODELS).index(model_id))
    t_models = time.time() - started

    tl3_cases, tl3_order = [], {}
    for model_id in ids:
        if MODELS[model_id][4].get("tl3"):
            more, tl3_order[model_id] = tl3_step(out, model_id)
            tl3_cases += more

    tl4 = tl4_path()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tl4)] + [p for p in
                                                          os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out), "--only", ",".join(ids),
                    "--bridge-step"], check=True, env=env)
    step = json.loads((out / "bridge_step.json").read_text())
    (out / "bridge_step.json").unlink()
    for model_id, info in step["models"].items():
        models[model_id].update(info)
        if model_id in tl3_order:  # the bridge's own order is not the reference's
            models[model_id]["hook_order"] = tl3_order[model_id]
    cases = step["cases"] + tl3_cases
    order = {m: i for i, m in enumerate(ids)}
    cases.sort(key=lambda c: (order[c["model_id"]], c["id"]))

    manifest = {
        "generator_hash": generator_hash(),
        "tl4_version": step["tl_version"],
        "tl4_module": step["transformer_lens_module"],
        "tl3_version": version("transformer-lens"),
        "torch_version": torch.__version__,
        "transformers_version": version("transformers"),
        "build_seconds": round(time.time() - started, 1),
        "model_seconds": round(t_models, 1),
        "notes": [
            "References: TL 4.3 TransformerBridge in compatibility mode, processed (default flags) and with "
            "no_processing=True; every hook point once under its legacy name; models[id].aliases lists the "
            "bridge's other (canonical) names of each legacy name.",
            "No-processing bridge logits were asserted equal to HF eager logits (1e-4) and processed log-probs "
            "equal to HF's, at real positions; refs/*.hf.safetensors hold HF's logits and the mask used.",
            "gptj: TL 3.9 HookedTransformer references (TL 4.3 GPT-J records post-softmax weights as "
            "hook_attn_scores); its left-pad positions are 0 (TL 3.9) where the bridge uses 1.",
        ] + step["notes"],
        "models": models,
        "cases": cases,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{len(cases)} cases, {len(models)} models, {size / 2**20:.1f} MiB in {out}, "
          f"{time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
