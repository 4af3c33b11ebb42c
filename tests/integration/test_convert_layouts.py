"""tools/convert_tl_checkpoint.py with key mappings (tools/mappings/), and the
frictions around converted checkpoints.

Each layout test builds, here, a torch module with the source layout's module
tree and random weights, saves its state_dict, converts it with the mapping,
runs the result with `lensd cache` and compares lensd's outputs with the
module's own forward.

Tolerance: both sides compute in float32 with different kernels (summation
order, blocking), so each dot product of d_model/d_mlp terms rounds
differently by a few ulps; through a few layers and LayerNorm's division that
stays near 1e-6 relative. As the parity suite (tests/parity/tl_parity.py), we
allow 1e-4 of the tensor's scale (absolute below scale 1): two orders of
margin, while a wrong transpose, head split, scale or mask shows up at 1e-2
or worse.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
MAPPINGS = TOOLS / "mappings"
sys.path.insert(0, str(TOOLS))

import torch  # noqa: E402

nn = torch.nn
F = torch.nn.functional

import convert_tl_checkpoint as conv  # noqa: E402
import tl_native as tn  # noqa: E402

RTOL = 1e-4



def max_error(ref: np.ndarray, got: np.ndarray) -> float:
    assert ref.shape == got.shape, (ref.shape, got.shape)
    err = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64))))
    bound = RTOL * max(1.0, float(np.max(np.abs(ref))))
    assert err <= bound, f"max abs error {err:.3g} > {bound:.3g}"
    return err


def lensd_cache(lensd_bin: str, model: Path, args: list[str], out: Path, ok: bool = True):
    """`lensd cache` -> ({name: array}, completed process); asserts the exit status."""
    from safetensors.numpy import load_file

    cmd = [lensd_bin, "cache", "--model", str(model), *args, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-3000:]}"
        return load_file(str(out)), proc
    assert proc.returncode != 0, f"{' '.join(cmd)} succeeded"
    return None, proc


def run_converter(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS / "convert_tl_checkpoint.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def tokens_arg(row) -> list[str]:
    return ["--tokens", ",".join(str(int(t)) for t in row)]


# --------------------------------------------------------------------------
# Seed 003's ParenTransformer: the notebook's module (examples/paren_transformer.py),
# with random weights, saved in the checkpoint's nn.TransformerEncoder names.

sys.path.insert(0, str(REPO / "examples"))
from paren_transformer import paren_transformer_module  # noqa: E402
from paren_transformer import TOKENS as PAREN_TOKENS  # noqa: E402
from paren_transformer import tokenize as paren_tokens  # noqa: E402


@pytest.fixture(scope="module")
def paren_dir(tmp_path_factory):
    torch.manual_seed(3)
    model = paren_transformer_module()().eval()
    with torch.no_grad():  # LayerNorms away from the identity, so a swapped w/b shows
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                p.uniform_(0.5, 1.5)
            elif name.endswith(("norm1.bias", "norm2.bias", "norm.bias")):
                p.normal_(0, 0.2)
    root = tmp_path_factory.mktemp("paren")
    torch.save(model.simple_transformer_state_dict(), root / "paren.pt")
    proc = run_converter([root / "paren.pt", root / "native", "--mapping", MAPPINGS / "paren_transformer.json"])
    assert proc.returncode == 0, proc.stderr
    return model, root / "native", proc.stdout


def test_paren_transformer_mapping_matches_the_module(paren_dir, lensd_bin, tmp_path):
    model, native, _ = paren_dir
    fields = json.loads((native / "tl_config.json").read_text())
    assert (fields["n_layers"], fields["d_model"], fields["n_heads"], fields["d_head"], fields["d_mlp"],
            fields["d_vocab"], fields["d_vocab_out"], fields["n_ctx"]) == (3, 56, 2, 28, 56, 5, 2, 42)
    assert fields["attention_dir"] == "bidirectional" and fields["act_fn"] == "relu"
    strings = ["()", "(()())", "))((", "((((((()))))))", "()()()())("]
    toks = paren_tokens(strings)
    with torch.no_grad():
        ref_logits = model.logits(toks).numpy()
        ref_out = model(toks).numpy()
    # text prompts: lensd's list tokenizer builds the same rows ([start] ... [end], [pad]s)
    args = [a for s in strings for a in ("--prompt", s)]
    got, _ = lensd_cache(lensd_bin, native, args + ["--names", "blocks.*.attn.hook_pattern"], tmp_path / "c.st")
    np.testing.assert_array_equal(got["tokens"], toks.numpy())
    err_logits = max_error(ref_logits, got["logits"])
    got_out = torch.log_softmax(torch.from_numpy(got["logits"][:, 0, :]), -1).numpy()
    err_out = max_error(ref_out, got_out)
    pad_keys = (toks.numpy() == PAREN_TOKENS["[pad]"])[:, None, None, :]  # [b, 1, 1, k]
    for layer in range(3):  # the module's -1e4 and lensd's -1e5 both give pad keys weight 0
        pattern = got[f"blocks.{layer}.attn.hook_pattern"]
        assert np.all(pattern[np.broadcast_to(pad_keys, pattern.shape)] == 0)
    print(f"paren: max abs error logits {err_logits:.3g}, log-probs at position 0 {err_out:.3g}")


def test_paren_transformer_hooks_match_the_module(paren_dir, lensd_bin, tmp_path):
    """Residual stream after each layer and the attention patterns, from torch hooks."""
    model, native, _ = paren_dir
    toks = paren_tokens(["(())", "()((", ")"])
    captured = {}
    hooks = [layer.register_forward_hook(lambda mod, inp, out, i=i: captured.__setitem__(i, out))
             for i, layer in enumerate(model.layers)]
    with torch.no_grad():
        model.logits(toks)
    for h in hooks:
        h.remove()
    args = [a for row in toks for a in tokens_arg(row)]
    got, _ = lensd_cache(lensd_bin, native, args + ["--names", "blocks.*.hook_resid_post"], tmp_path / "c.st")
    errs = [max_error(captured[i].numpy(), got[f"blocks.{i}.hook_resid_post"]) for i in range(3)]
    print(f"paren resid_post max abs errors {errs}")


def test_paren_converter_reports_the_mapping(paren_dir):
    _, native, stdout = paren_dir
    assert "zero-filled (missing biases): none" in stdout
    meta = json.loads((native / "tl_config.json").read_text())["lensd"]
    assert meta["mask_pad_keys"] is True and meta["pad_token"] == "[pad]"


# --------------------------------------------------------------------------
# nanoGPT's GPT class layout (model.py), with and without biases.


class NanoAttention(nn.Module):
    def __init__(self, d, h, bias, ctx):
        super().__init__()
        self.h = h
        self.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.c_proj = nn.Linear(d, d, bias=bias)
        self.register_buffer("bias", torch.tril(torch.ones(ctx, ctx)).view(1, 1, ctx, ctx))

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (t.view(B, T, self.h, d // self.h).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf")).softmax(-1)
        return self.c_proj((att @ v).transpose(1, 2).reshape(B, T, d))


class NanoBlock(nn.Module):
    def __init__(self, d, h, bias, ctx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, bias=bias)
        self.attn = NanoAttention(d, h, bias, ctx)
        self.ln_2 = nn.LayerNorm(d, bias=bias)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(d, 4 * d, bias=bias)
        self.mlp.c_proj = nn.Linear(4 * d, d, bias=bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, vocab=50, ctx=16, d=32, h=4, layers=2, bias=True):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, d), wpe=nn.Embedding(ctx, d),
            h=nn.ModuleList(NanoBlock(d, h, bias, ctx) for _ in range(layers)), ln_f=nn.LayerNorm(d, bias=bias)))
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as nanoGPT
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                    p.uniform_(0.5, 1.5)
                elif name.endswith(".bias"):
                    p.normal_(0, 0.1)
                elif p.dim() == 2:
                    p.normal_(0, 0.2)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("saved", ["ckpt", "state_dict"])
def test_nanogpt_mapping_matches_the_module(bias, saved, lensd_bin, tmp_path):
    torch.manual_seed(7)
    model = NanoGPT(bias=bias).eval()
    if saved == "ckpt":  # train.py's checkpoint: n_head read from model_args, compiled names
        sd = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
        torch.save({"model": sd, "model_args": {"n_head": 4, "n_layer": 2}, "iter_num": 5}, tmp_path / "m.pt")
        extra = []
    else:  # a bare state dict without lm_head (the tie makes W_U = W_E.T)
        sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
        torch.save(sd, tmp_path / "m.pt")
        extra = ["--set", "n_heads=4"]
    proc = run_converter([tmp_path / "m.pt", tmp_path / "native", "--mapping", MAPPINGS / "nanogpt.json", *extra])
    assert proc.returncode == 0, proc.stderr
    zero = proc.stdout.split("zero-filled (missing biases): ")[1].splitlines()[0]
    if bias:
        assert zero == "unembed.b_U"
    else:
        assert "blocks.0.attn.b_Q" in zero and "blocks.1.ln2.b" in zero and "ln_final.b" in zero
    toks = torch.randint(0, 50, (3, 16))
    with torch.no_grad():
        ref = model(toks).numpy()
    got, _ = lensd_cache(lensd_bin, tmp_path / "native", [a for r in toks for a in tokens_arg(r)],
                         tmp_path / "c.st")
    err = max_error(ref, got["logits"])
    print(f"nanogpt bias={bias} {saved}: max abs logit error {err:.3g}")


def test_nanogpt_mapping_agrees_with_transformer_lens_converter(tmp_path):
    """TL 3.9's own convert_nanogpt_weights gives the same TL state dict."""
    from transformer_lens.pretrained.weight_conversions.nanogpt import convert_nanogpt_weights

    torch.manual_seed(11)
    model = NanoGPT(bias=True)
    sd = model.state_dict()
    result = conv.convert_state_dict(sd, conv.load_mapping(MAPPINGS / "nanogpt.json"), {}, {"n_heads": 4})
    theirs = convert_nanogpt_weights(dict(sd), tn.config_from_json(result.fields))
    assert set(theirs) - {k for k in theirs if k.endswith(".attn.IGNORE")} == set(result.params) - {"unembed.b_U"}
    for name, value in result.params.items():  # TL leaves b_U out when there are biases (zeros)
        expected = theirs.get(name, torch.zeros_like(value)).float()
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)


# --------------------------------------------------------------------------
# A wrong mapping: every misfit named at once.


def test_wrong_mapping_names_unmapped_missing_and_shapes(tmp_path):
    torch.manual_seed(1)
    sd = NanoGPT(bias=True).state_dict()
    sd["transformer.extra.weight"] = torch.zeros(3)
    del sd["transformer.h.1.ln_2.weight"]
    mapping = json.loads((MAPPINGS / "nanogpt.json").read_text())
    for rule in mapping["rules"]:  # forget the transpose of W_in
        if "c_fc\\.weight" in rule["from"]:
            rule["ops"] = []
    (tmp_path / "bad.json").write_text(json.dumps(mapping))
    torch.save(sd, tmp_path / "m.pt")
    proc = run_converter([tmp_path / "m.pt", tmp_path / "out", "--mapping", tmp_path / "bad.json",
                          "--set", "n_heads=4"])
    assert proc.returncode == 1
    err = proc.stderr
    assert "source keys no rule maps (1): transformer.extra.weight (3,)" in err
    assert "TL parameters nothing produced (1): blocks.1.ln2.w (32,)" in err
    assert "blocks.0.mlp.W_in: expected (32, 128), got (128, 32)" in err
    assert "from transformer.h.0.mlp.c_fc.weight (128, 32) by rule" in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_wrong_head_count_names_the_rearrange(tmp_path):
    torch.manual_seed(1)
    torch.save(NanoGPT(bias=False).state_dict(), tmp_path / "m.pt")
    proc = run_converter([tmp_path / "m.pt", tmp_path / "out", "--mapping", MAPPINGS / "nanogpt.json",
                          "--set", "n_heads=5"])
    assert proc.returncode == 1
    assert "rearrange" in proc.stderr and "c_attn.weight" in proc.stderr, proc.stderr


def test_missing_head_count_says_how_to_give_it(tmp_path):
    torch.save(NanoGPT(bias=False).state_dict(), tmp_path / "m.pt")
    proc = run_converter([tmp_path / "m.pt", tmp_path / "out", "--mapping", MAPPINGS / "nanogpt.json"])
    assert proc.returncode == 1
    assert "derive n_heads" in proc.stderr and "model_args.n_head" in proc.stderr, proc.stderr


def test_bad_mapping_file_is_refused(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"rules": [{"from": "a", "to": ["x", "y"]}]}))
    torch.save({"a": torch.zeros(2)}, tmp_path / "m.pt")
    proc = run_converter([tmp_path / "m.pt", tmp_path / "out", "--mapping", tmp_path / "m.json"])
    assert proc.returncode == 1 and "2 target name(s) for 1 part(s)" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------
# Frictions


def tl_state_dict(cfg_fields: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = tn.quiet_hooked_transformer(tn.config_from_json(cfg_fields))
    return model, {k: v.clone() for k, v in model.state_dict().items()}


SMALL = {"n_layers": 2, "d_model": 16, "n_ctx": 12, "d_head": 4, "n_heads": 4, "d_mlp": 32, "d_vocab": 7,
         "act_fn": "relu", "normalization_type": "LN", "attention_dir": "causal"}


def test_missing_biases_are_zero_filled_and_listed(tmp_path, lensd_bin):
    model, sd = tl_state_dict(SMALL)
    for name in [k for k in sd if k.endswith((".b_Q", ".b_in")) or k == "unembed.b_U"]:
        del sd[name]
    torch.save(sd, tmp_path / "m.pt")
    (tmp_path / "cfg.json").write_text(json.dumps(SMALL))
    proc = run_converter([tmp_path / "m.pt", tmp_path / "cfg.json", tmp_path / "out"])
    assert proc.returncode == 0, proc.stderr
    assert ("zero-filled (missing biases): blocks.0.attn.b_Q, blocks.0.mlp.b_in, blocks.1.attn.b_Q, "
            "blocks.1.mlp.b_in, unembed.b_U") in proc.stdout
    del sd["blocks.0.attn.W_K"]
    torch.save(sd, tmp_path / "m2.pt")
    proc = run_converter([tmp_path / "m2.pt", tmp_path / "cfg.json", tmp_path / "out2"])
    assert proc.returncode == 1 and "blocks.0.attn.W_K (4, 16, 4)" in proc.stderr


def test_a_without_bos_default_prepend_bos_is_false(tmp_path, lensd_bin):
    """Friction a: no BOS token -> default_prepend_bos false, so text prompts work."""
    _, sd = tl_state_dict(SMALL)
    torch.save(sd, tmp_path / "m.pt")
    (tmp_path / "cfg.json").write_text(json.dumps(SMALL))
    tok = {"tokenizer": {"type": "list", "tokens": list("abcdefg"), "split": "chars"}, "pad_token": "g"}
    proc = run_converter([tmp_path / "m.pt", tmp_path / "cfg.json", tmp_path / "out", "--tokenizer-json",
                          json.dumps(tok)])
    assert proc.returncode == 0, proc.stderr
    fields = json.loads((tmp_path / "out" / "tl_config.json").read_text())
    assert fields["default_prepend_bos"] is False
    got, _ = lensd_cache(lensd_bin, tmp_path / "out", ["--prompt", "abc", "--logits-only"], tmp_path / "c.st")
    np.testing.assert_array_equal(got["tokens"], [[0, 1, 2]])
    # token-only (no tokenizer at all): false as well
    proc = run_converter([tmp_path / "m.pt", tmp_path / "cfg.json", tmp_path / "out2"])
    assert json.loads((tmp_path / "out2" / "tl_config.json").read_text())["default_prepend_bos"] is False


def test_b_list_tokenizer_pad_falls_back_to_eos(tmp_path, lensd_bin):
    """Friction b: EOS but no pad: ragged batches are padded with EOS."""
    _, sd = tl_state_dict(SMALL)
    torch.save(sd, tmp_path / "m.pt")
    (tmp_path / "cfg.json").write_text(json.dumps(SMALL))
    tok = {"tokenizer": {"type": "list", "tokens": list("abcdefg"), "split": "chars"}, "bos_token": "a",
           "eos_token": "g"}
    proc = run_converter([tmp_path / "m.pt", tmp_path / "cfg.json", tmp_path / "out", "--tokenizer-json",
                          json.dumps(tok)])
    assert proc.returncode == 0, proc.stderr
    got, _ = lensd_cache(lensd_bin, tmp_path / "out", ["--prompt", "bcd", "--prompt", "b", "--logits-only"],
                         tmp_path / "c.st")
    np.testing.assert_array_equal(got["tokens"], [[0, 1, 2, 3], [0, 1, 6, 6]])


def test_c_older_tl_ignore_buffer_is_the_masked_score(tmp_path, lensd_bin):
    """Friction c: IGNORE = -1e5 (older TL): TL 3.9 loads it and shows -1e5 in
    hook_attn_scores; so must lensd."""
    model, sd = tl_state_dict(SMALL, seed=5)
    for layer in range(SMALL["n_layers"]):
        sd[f"blocks.{layer}.attn.IGNORE"] = torch.tensor(-1e5)
    torch.save(sd, tmp_path / "m.pt")
    (tmp_path / "cfg.json").write_text(json.dumps(SMALL))
    proc = run_converter([tmp_path / "m.pt", tmp_path / "cfg.json", tmp_path / "out"])
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "out" / "tl_config.json").read_text())["lensd"]
    assert meta["masked_score"] == -100000.0
    model.load_state_dict(sd)  # TL 3.9 takes the buffer as saved
    toks = torch.randint(0, 7, (2, 9))
    with torch.no_grad():
        _, cache = model.run_with_cache(toks)
    got, _ = lensd_cache(lensd_bin, tmp_path / "out", [a for r in toks for a in tokens_arg(r)]
                         + ["--names", "blocks.*.attn.hook_attn_scores"], tmp_path / "c.st")
    for layer in range(SMALL["n_layers"]):
        ref = cache[f"blocks.{layer}.attn.hook_attn_scores"].numpy()
        assert np.count_nonzero(ref == -1e5) == 2 * 4 * 36  # the upper triangles
        mine = got[f"blocks.{layer}.attn.hook_attn_scores"]
        np.testing.assert_array_equal(mine == -1e5, ref == -1e5)
        max_error(ref, mine)
    # the reference builder for native directories reproduces it too
    rebuilt = tn.build_native_tl(tn.load_native(tmp_path / "out"))
    with torch.no_grad():
        _, cache2 = rebuilt.run_with_cache(toks)
    torch.testing.assert_close(cache2["blocks.0.attn.hook_attn_scores"], cache["blocks.0.attn.hook_attn_scores"])


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy-pickle"])
def test_d_torch_checkpoint_as_model_says_convert_it(tmp_path, lensd_bin, zipped):
    """Friction d: a .pt handed to lensd names the converter, not a JSON error."""
    path = tmp_path / "model.pth"
    torch.save({"embed.W_E": torch.zeros(2, 2)}, path, _use_new_zipfile_serialization=zipped)
    _, proc = lensd_cache(lensd_bin, path, ["--tokens", "0"], tmp_path / "c.st", ok=False)
    assert "this is a torch checkpoint" in proc.stderr, proc.stderr
    assert "tools/convert_tl_checkpoint.py" in proc.stderr and str(path) in proc.stderr
    assert "expected near" not in proc.stderr


def test_e_cache_help_prints_usage(lensd_bin):
    """Friction e: `lensd cache --help` prints the usage and exits 0."""
    for command in ("cache", "info", "run"):
        proc = subprocess.run([lensd_bin, command, "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"usage: lensd {command} --model M")
    proc = subprocess.run([lensd_bin, "cache", "--help"], capture_output=True, text=True, timeout=60)
    assert "--out FILE.safetensors" in proc.stdout and "--names GLOB" in proc.stdout
