"""test_family_tokenizers.py: lensd's tokenizers of today's model families against Hugging Face.

For every tokenizer in $LENSD_SHARED/data/tokenizers (see its README) and for
every family of tools/family_tokenizers.py, a model directory is laid out
and loaded with lens_tok_load_dir through tests/tokenizer/tok_driver --dir
(path in $LENSD_TOK_DRIVER), then compared with the reference:

  tokenizer.json                 tokenizers.Tokenizer.from_file
  SentencePiece tokenizer.model  transformers' LlamaTokenizerFast.from_pretrained(folder)
  tiktoken tokenizer.model       the `tiktoken` package with Meta's pattern and 256
                                 special tokens (ids); transformers' TikTokenConverter
                                 of the same file (decoding, the code-point sweep, and
                                 its ids must agree with tiktoken's on the corpus)
  vocab.json + merges.txt        transformers' AutoTokenizer.from_pretrained(folder)

and checked, each a test of its own:
  - ids of every document of make_corpus.py (1.1 MB), no special tokens added;
  - the decoding of every id alone (TransformerLens's to_str_tokens: HF decode
    of [id], clean_up_tokenization_spaces=False) and of every whole document;
  - bos/eos/pad/unk ids and whether BOS/EOS are added, against what
    transformers' AutoTokenizer reports for the folder (for the bare tiktoken
    file, which AutoTokenizer cannot name specials for, against Meta's
    tokenizer: BOS <|begin_of_text|> 128000 added, EOS <|end_of_text|> 128001).
Then every code point beside letters, digits, punctuation and spaces (regex
classes, NFC, Digits, byte fallback), and pipeline steps no family uses
(Split behaviors, Metaspace options, unknown tokens, NFC + Strip, Replace)
on edited copies of the trained families' tokenizer.json.
Every count is printed (documents, ids, mismatches). A missing file fails.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer, LlamaTokenizerFast  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = Path(os.environ.get("LENSD_SHARED", REPO.parent / "shared"))
TOKENIZERS = SHARED / "data" / "tokenizers"

sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tools"))
import family_tokenizers  # noqa: E402
import make_corpus  # noqa: E402

hf_logging.set_verbosity_error()

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# name -> (files copied into the folder, how the reference is built)
SHARED_CASES = {
    "gpt-neox": ({"gpt-neox/20B_tokenizer.json": "tokenizer.json"}, "json"),
    "phi-3": ({"phi-3/tokenizer.json": "tokenizer.json"}, "json"),
    "mistral-v0.3": ({f"mistral-7b/v0.3/{n}": n for n in
                      ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                       "tokenizer.model")}, "json"),
    "llama-2": ({"llama-2/tokenizer.model": "tokenizer.model"}, "llama"),
    "mistral-v0.1": ({"mistral-7b/v0.1/tokenizer.model": "tokenizer.model"}, "llama"),
    "llama-3": ({"llama-3/tokenizer.model": "tokenizer.model"}, "tiktoken"),
    "qwen3": ({f"qwen3/{n}": n for n in ("vocab.json", "merges.txt", "tokenizer_config.json")},
              "auto"),
    "qwen2.5": ({f"qwen2.5/{n}": n for n in ("vocab.json", "merges.txt", "tokenizer_config.json")},
                "auto"),
    "olmo-2": ({"olmo-2/vocab.json": "vocab.json", "olmo-2/merges.txt": "merges.txt",
                "olmo-2/base/tokenizer_config.json": "tokenizer_config.json",
                "olmo-2/base/special_tokens_map.json": "special_tokens_map.json"}, "auto"),
}
CASES = list(SHARED_CASES) + [f"family:{f}" for f in family_tokenizers.FAMILIES]


# ---- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("family_tokenizers")


@pytest.fixture(scope="module")
def corpus():
    docs = make_corpus.build_corpus()
    assert sum(len(d.encode("utf-8")) for d in docs) >= 1_000_000
    return docs


class Reference:
    """How HF encodes and decodes for one case, and the folder lensd loads."""

    def __init__(self, name, folder, kind):
        self.name, self.folder, self.kind = name, folder, kind
        self.tiktoken = None
        if kind == "json":
            self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        elif kind == "tiktoken":
            self.tok = self._tiktoken_converted()
            self.tiktoken = self._tiktoken()
        elif kind == "llama":
            self.tok = LlamaTokenizerFast.from_pretrained(str(folder), local_files_only=True)
        else:
            self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.vocab_size = (self.tok.get_vocab_size() if isinstance(self.tok, Tokenizer)
                           else len(self.tok))

    def _tiktoken(self):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(self.folder / "tokenizer.model"))
        specials = {t: len(ranks) + i for i, t in enumerate(family_tokenizers.LLAMA3_SPECIALS)}
        return tiktoken.Encoding(name="llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                                 special_tokens=specials)

    def _tiktoken_converted(self):
        from transformers.convert_slow_tokenizer import TikTokenConverter

        return TikTokenConverter(vocab_file=str(self.folder / "tokenizer.model"),
                                 extra_special_tokens=family_tokenizers.LLAMA3_SPECIALS).converted()

    def encode(self, docs):
        if self.tiktoken is not None:
            return self.tiktoken.encode_batch(docs, allowed_special="all")
        if isinstance(self.tok, Tokenizer):
            return [e.ids for e in self.tok.encode_batch(docs, add_special_tokens=False)]
        return self.tok(docs, add_special_tokens=False)["input_ids"]

    def decode(self, ids):
        if isinstance(self.tok, Tokenizer):
            return self.tok.decode(ids, skip_special_tokens=False)
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


_references = {}


def reference(case, workdir):
    """The folder and reference of a case, built once."""
    if case in _references:
        return _references[case]
    folder = workdir / case.replace(":", "_")
    if case.startswith("family:"):
        family_tokenizers.write_tokenizer(case.split(":", 1)[1], folder)
        ref = Reference(case, folder, "json")
    else:
        files, kind = SHARED_CASES[case]
        folder.mkdir()
        for src, name in files.items():
            if not (TOKENIZERS / src).is_file():
                pytest.fail(f"{TOKENIZERS / src} is missing (set LENSD_SHARED)")
            shutil.copy(TOKENIZERS / src, folder / name)
        ref = Reference(case, folder, kind)
    _references[case] = ref
    return ref


def run_driver(driver, folder, mode, data, workdir):
    in_path, out_path = workdir / f"{mode}_in.json", workdir / f"{mode}_out.json"
    args = [driver, "--dir", str(folder), mode]
    if data is not None:
        in_path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        args.append(str(in_path))
    args.append(str(out_path))
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed: {done.stderr}"
    return json.loads(out_path.read_text(encoding="utf-8"))


_reference_ids = {}


def reference_ids(ref, docs):
    if ref.name not in _reference_ids:
        _reference_ids[ref.name] = ref.encode(docs)
    return _reference_ids[ref.name]


# ---- tests ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_ids_match_hf(case, driver, corpus, workdir):
    ref = reference(case, workdir)
    expected = reference_ids(ref, corpus)
    ours = run_driver(driver, ref.folder, "encode", corpus, workdir)
    assert len(ours) == len(expected)
    bad = [i for i, (o, e) in enumerate(zip(ours, expected)) if o.get("ids") != e]
    n_ids = sum(len(e) for e in expected)
    print(f"\n{case}: {len(corpus)} documents, {n_ids} ids, {len(bad)} documents differ")
    if bad:
        i = bad[0]
        got = ours[i].get("ids")
        if got is None:
            pytest.fail(f"{len(bad)} documents differ; document {i} failed: {ours[i]['error']}")
        k = next((j for j, (a, b) in enumerate(zip(got, expected[i])) if a != b),
                 min(len(got), len(expected[i])))
        window = slice(max(0, k - 4), k + 4)
        pytest.fail(f"{len(bad)} of {len(corpus)} documents differ; document {i} first at id {k}:\n"
                    f"  lensd {got[window]} {[ref.decode([t]) for t in got[window]]}\n"
                    f"  HF    {expected[i][window]} {[ref.decode([t]) for t in expected[i][window]]}\n"
                    f"  text  {ref.decode(expected[i][window])!r}")


def test_tiktoken_reference_agrees_with_transformers_conversion(corpus, workdir):
    """The two references of the Llama 3 file give the same ids."""
    ref = reference("llama-3", workdir)
    converted = [e.ids for e in ref.tok.encode_batch(corpus, add_special_tokens=False)]
    assert converted == reference_ids(ref, corpus)


@pytest.mark.parametrize("case", CASES)
def test_decode_each_id_matches_to_str_tokens(case, driver, workdir):
    ref = reference(case, workdir)
    ours = run_driver(driver, ref.folder, "decode_each", None, workdir)
    assert len(ours) == ref.vocab_size
    expected = [ref.decode([i]) for i in range(ref.vocab_size)]
    bad = [i for i in range(ref.vocab_size) if ours[i] != expected[i]]
    print(f"\n{case}: {ref.vocab_size} ids decoded alone, {len(bad)} differ")
    assert not bad, f"{len(bad)} ids differ, first {bad[0]}: {ours[bad[0]]!r} != {expected[bad[0]]!r}"


@pytest.mark.parametrize("case", CASES)
def test_decode_documents_matches_hf(case, driver, corpus, workdir):
    ref = reference(case, workdir)
    ids = reference_ids(ref, corpus)
    ours = run_driver(driver, ref.folder, "decode", ids, workdir)
    bad = [i for i, (got, doc_ids) in enumerate(zip(ours, ids))
           if got.get("text") != ref.decode(doc_ids)]
    print(f"\n{case}: {len(ids)} documents decoded, {len(bad)} differ")
    assert not bad, f"document {bad[0]}: {ours[bad[0]]!r} != {ref.decode(ids[bad[0]])!r}"


def hf_specials(folder, kind):
    """What transformers reports for the folder: ids of the named special
    tokens and what encoding one text with special tokens adds around it."""
    if kind == "tiktoken":
        # AutoTokenizer knows no special tokens for Meta's bare file; Meta's
        # own tokenizer (llama/tokenizer.py) adds BOS when asked.
        return {"bos_id": 128000, "eos_id": 128001, "pad_id": -1, "unk_id": -1,
                "adds_bos": True, "adds_eos": False}
    tok = (LlamaTokenizerFast if kind == "llama" else AutoTokenizer).from_pretrained(
        str(folder), local_files_only=True)
    text = "Hello world"
    plain = tok(text, add_special_tokens=False)["input_ids"]
    full = tok(text)["input_ids"]
    k = next(k for k in range(len(full) - len(plain) + 1) if full[k:k + len(plain)] == plain)
    prefix, suffix = full[:k], full[k + len(plain):]
    ids = {name: -1 if getattr(tok, f"{name}_token_id") is None else getattr(tok, f"{name}_token_id")
           for name in ("bos", "eos", "pad", "unk")}
    assert prefix in ([], [ids["bos"]]) or ids["bos"] == -1, (prefix, ids)
    assert suffix in ([], [ids["eos"]]) or ids["eos"] == -1, (suffix, ids)
    if prefix and ids["bos"] == -1:
        ids["bos"] = prefix[0]  # lensd names the token the post-processor adds
    if suffix and ids["eos"] == -1:
        ids["eos"] = suffix[0]
    return {"bos_id": ids["bos"], "eos_id": ids["eos"], "pad_id": ids["pad"],
            "unk_id": ids["unk"], "adds_bos": bool(prefix), "adds_eos": bool(suffix)}


@pytest.mark.parametrize("case", CASES)
def test_specials_match_transformers(case, driver, workdir):
    ref = reference(case, workdir)
    ours = run_driver(driver, ref.folder, "specials", None, workdir)
    kind = "auto" if ref.kind == "json" else ref.kind
    expected = hf_specials(ref.folder, kind)
    print(f"\n{case}: {expected}")
    assert {k: ours[k] for k in expected} == expected
    assert ours["vocab_size"] == ref.vocab_size


@pytest.mark.parametrize("case", ["llama-3", "qwen3", "family:gemma", "family:llama2"])
def test_encode_throughput(case, driver, corpus, workdir):
    ref = reference(case, workdir)
    result = run_driver(driver, ref.folder, "bench", corpus, workdir)
    print(f"\n{case}: {result['bytes']} bytes in {result['seconds']:.3f} s, "
          f"{result['mb_per_s']:.1f} MB/s")
    assert result["seconds"] < 2.0


@pytest.mark.parametrize("case", ["gpt-neox", "llama-3", "qwen3", "llama-2", "phi-3",
                                  "family:smollm", "family:gemma"])
def test_every_code_point_like_hf(case, driver, workdir):
    """Every Unicode scalar value beside a letter, a digit, punctuation and a
    space: the regexes' classes (PCRE2 here, Oniguruma in HF), NFC
    (utf8proc here, Rust's unicode-normalization in HF), Digits' numeric
    characters and byte fallback, one code point at a time."""
    ref = reference(case, workdir)
    docs = make_corpus.code_point_sweep()
    if ref.kind == "tiktoken":
        # HF's regex engine (Oniguruma, Unicode 15), which lensd follows;
        # tiktoken's has Unicode 16 and differs on its new letters and digits.
        expected = [e.ids for e in ref.tok.encode_batch(docs, add_special_tokens=False)]
    else:
        expected = ref.encode(docs)
    ours = run_driver(driver, ref.folder, "encode", docs, workdir)
    bad = [i for i, (o, e) in enumerate(zip(ours, expected)) if o.get("ids") != e]
    print(f"\n{case}: {len(docs)} documents, {sum(map(len, expected))} ids, {len(bad)} differ")
    assert not bad, f"document {bad[0]} differs: {docs[bad[0]][:80]!r}"


# ---- pipeline steps no family above uses ------------------------------------
#
# Each variant edits a family's tokenizer.json (its vocabulary trained on the
# corpus) to use other steps or options, and lensd's --json loader is compared
# with tokenizers.Tokenizer.from_str on ids and decodings.

def _split(pattern, behavior, invert=False, regex=True):
    return {"type": "Split", "pattern": {"Regex" if regex else "String": pattern},
            "behavior": behavior, "invert": invert}


def _byte_level(prefix=False, regex=False):
    return {"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": True,
            "use_regex": regex}


def _seq(*steps):
    return {"type": "Sequence", "pretokenizers": list(steps)}


VARIANTS = {
    # byte-level vocabulary (smollm)
    "split-removed": ("smollm", {"pre_tokenizer": _seq(_split(r"\s+", "Removed"), _byte_level())}),
    "split-merged-with-previous": ("smollm", {"pre_tokenizer": _seq(
        _split(r"[0-9]+|\p{L}+", "MergedWithPrevious"), _byte_level())}),
    "split-merged-with-next-string": ("smollm", {"pre_tokenizer": _seq(
        _split(" ", "MergedWithNext", regex=False), _byte_level(prefix=True))}),
    "split-contiguous-inverted": ("smollm", {"pre_tokenizer": _seq(
        _split(r"\p{P}", "Contiguous", invert=True), _byte_level(regex=True))}),
    "digits-contiguous": ("smollm", {"pre_tokenizer": _seq(
        {"type": "Digits", "individual_digits": False}, _byte_level(regex=True))}),
    "byte-level-prefix-space": ("smollm", {"pre_tokenizer": _byte_level(prefix=True, regex=True)}),
    "nfc-strip": ("smollm", {"normalizer": {"type": "Sequence", "normalizers": [
        {"type": "NFC"}, {"type": "Strip", "strip_left": True, "strip_right": True}]}}),
    "replace-regex-prepend": ("smollm", {"normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"Regex": r"\p{N}\p{L}|\d\d|\s\s"}, "content": "#"},
        {"type": "Prepend", "prepend": "!"}]}}),
    "replace-string": ("smollm", {"normalizer": {"type": "Replace", "pattern": {"String": "th"},
                                                 "content": "TH"}}),
    "no-decoder": ("smollm", {"decoder": None}),
    # SentencePiece-style vocabulary with byte fallback (gemma)
    "metaspace-always-split": ("gemma", {
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "always", "split": True},
        "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always",
                    "split": True}}),
    "metaspace-never": ("gemma", {
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "never", "split": False},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 2, "stop": 0}]}}),
    "unk-not-fused": ("gemma", {"model": {"byte_fallback": False, "fuse_unk": False}}),
    "unk-fused": ("gemma", {"model": {"byte_fallback": False, "fuse_unk": True}}),
    "no-unk-token": ("gemma", {"model": {"byte_fallback": False, "unk_token": None}}),
    "ignore-merges": ("gemma", {"model": {"ignore_merges": True},
                                "pre_tokenizer": _split("\u2581", "MergedWithNext", regex=False)}),
}


def _variant_json(name, workdir):
    family, change = VARIANTS[name]
    folder = workdir / f"variant_base_{family}"
    if not (folder / "tokenizer.json").is_file():
        family_tokenizers.write_tokenizer(family, folder)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    for key, value in change.items():
        if key == "model":
            data["model"].update(value)
        else:
            data[key] = value
    path = workdir / f"variant_{name}.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path, Tokenizer.from_str(path.read_text(encoding="utf-8"))


def _run_json(driver, path, mode, data, workdir):
    in_path, out_path = workdir / f"v_{mode}_in.json", workdir / f"v_{mode}_out.json"
    args = [driver, "--json", str(path), mode]
    if data is not None:
        in_path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        args.append(str(in_path))
    args.append(str(out_path))
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed: {done.stderr}"
    return json.loads(out_path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_pipeline_variant_matches_tokenizers(name, driver, corpus, workdir):
    path, tok = _variant_json(name, workdir)
    expected = [e.ids for e in tok.encode_batch(corpus, add_special_tokens=False)]
    ours = run_json = _run_json(driver, path, "encode", corpus, workdir)
    bad = [i for i, (o, e) in enumerate(zip(run_json, expected)) if o.get("ids") != e]
    print(f"\n{name}: {len(corpus)} documents, {sum(map(len, expected))} ids, {len(bad)} differ")
    if bad:
        i = bad[0]
        got = ours[i].get("ids") or ours[i]
        pytest.fail(f"{len(bad)} documents differ; document {i}: lensd {str(got)[:300]}\n"
                    f"HF {expected[i][:40]}")
    each = _run_json(driver, path, "decode_each", None, workdir)
    want = [tok.decode([i], skip_special_tokens=False) for i in range(tok.get_vocab_size())]
    assert each == want
    docs = _run_json(driver, path, "decode", expected, workdir)
    assert [d.get("text") for d in docs] == [tok.decode(ids, skip_special_tokens=False)
                                             for ids in expected]
