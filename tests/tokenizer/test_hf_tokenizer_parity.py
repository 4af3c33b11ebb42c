"""test_hf_tokenizer_parity.py: lensd's tokenizer against Hugging Face's.

Runs core/tokenizer.c through tests/tokenizer/tok_driver (path in
$LENSD_TOK_DRIVER) on the corpus of make_corpus.py and compares, document by
document:
  - ids from vocab.json + merges.txt with transformers' GPT2TokenizerFast;
  - ids from a tokenizer.json (saved by that same GPT2TokenizerFast) with
    tokenizers.Tokenizer.from_file, so both of lensd's loaders are covered;
  - the decoding of every id alone (TransformerLens's to_str_tokens), of
    whole documents and of random id sequences (lossy UTF-8);
  - the refusal of invalid UTF-8, at the byte offset Python reports;
  - every Unicode code point beside a letter, a digit, punctuation and a space
    (the regex's character classes; PCRE2 here, Oniguruma in HF);
  - added tokens with lstrip, rstrip, single_word and normalized set, in a
    tokenizer.json made for this test;
  - what is not supported is refused, naming the step.
The other families' tokenizers are compared in test_family_tokenizers.py.
The GPT-2 files come from $LENSD_SHARED/data/gpt2-tokenizer (default
../shared beside the repository). Nothing is downloaded: HF runs offline.
A missing driver or data file fails the tests; it never skips them.
"""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from tokenizers import AddedToken, Tokenizer  # noqa: E402
from transformers import GPT2TokenizerFast  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = Path(os.environ.get("LENSD_SHARED", REPO.parent / "shared"))
GPT2_FILES = SHARED / "data" / "gpt2-tokenizer"
GPT2_VOCAB_SIZE = 50257

sys.path.insert(0, str(HERE))
import make_corpus  # noqa: E402

hf_logging.set_verbosity_error()  # no "sequence longer than 1024" warnings


# ---- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizer_parity")


@pytest.fixture(scope="module")
def gpt2_files(workdir):
    """vocab.json and merges.txt, copied into a directory of their own."""
    for name in ("vocab.json", "merges.txt"):
        if not (GPT2_FILES / name).is_file():
            pytest.fail(f"{GPT2_FILES / name} is missing (set LENSD_SHARED)")
    directory = workdir / "gpt2"
    directory.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(GPT2_FILES / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def hf_fast(gpt2_files):
    vocab, merges = str(gpt2_files / "vocab.json"), str(gpt2_files / "merges.txt")
    tok = GPT2TokenizerFast(vocab_file=vocab, merges_file=merges)
    if len(tok) != GPT2_VOCAB_SIZE:
        # transformers 5 ignores vocab_file/merges_file in the constructor and
        # builds an empty vocabulary; from_pretrained on the local directory
        # reads the same two files.
        tok = GPT2TokenizerFast.from_pretrained(str(gpt2_files), local_files_only=True)
    assert len(tok) == GPT2_VOCAB_SIZE
    return tok


@pytest.fixture(scope="module")
def tokenizer_json(hf_fast, workdir):
    path = workdir / "tokenizer.json"
    hf_fast.backend_tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def hf_json(tokenizer_json):
    return Tokenizer.from_file(str(tokenizer_json))


@pytest.fixture(scope="module")
def loaders(gpt2_files, tokenizer_json):
    """The driver's arguments for each of lensd's two loaders."""
    return {
        "bpe": ["--bpe", str(gpt2_files / "vocab.json"), str(gpt2_files / "merges.txt")],
        "json": ["--json", str(tokenizer_json)],
    }


@pytest.fixture(scope="module")
def corpus(workdir):
    path = workdir / "corpus.json"
    subprocess.run([sys.executable, str(HERE / "make_corpus.py"), str(path)], check=True)
    docs = json.loads(path.read_text(encoding="utf-8"))
    assert len(docs) > 500
    assert sum(len(d.encode("utf-8")) for d in docs) >= 1_000_000
    return path, docs


@pytest.fixture(scope="module")
def reference_ids(corpus, hf_fast, hf_json):
    _, docs = corpus
    fast = hf_fast(docs, add_special_tokens=False)["input_ids"]
    from_json = [e.ids for e in hf_json.encode_batch(docs, add_special_tokens=False)]
    assert fast == from_json, "GPT2TokenizerFast and its own tokenizer.json disagree"
    return fast


# ---- helpers ----------------------------------------------------------------


def run_driver(driver, loader_args, mode, data, workdir):
    """Runs tok_driver in `mode` on `data` (None for decode_each); returns its JSON."""
    in_path, out_path = workdir / f"{mode}_in.json", workdir / f"{mode}_out.json"
    args = [driver, *loader_args, mode]
    if data is not None:
        in_path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        args.append(str(in_path))
    args.append(str(out_path))
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed: {done.stderr}"
    return json.loads(out_path.read_text(encoding="utf-8"))


def assert_same_ids(docs, ours, expected, decode):
    """Compares per document; on a mismatch names the first document and the
    first differing position, with the text around it."""
    assert len(ours) == len(expected)
    bad = [i for i, (o, e) in enumerate(zip(ours, expected)) if o.get("ids") != e]
    if not bad:
        return
    i = bad[0]
    got = ours[i].get("ids")
    if got is None:
        pytest.fail(f"{len(bad)} documents differ; document {i} failed: {ours[i]['error']}")
    k = next((j for j, (a, b) in enumerate(zip(got, expected[i])) if a != b),
             min(len(got), len(expected[i])))
    window = slice(max(0, k - 4), k + 4)
    pytest.fail(
        f"{len(bad)} of {len(docs)} documents differ; document {i} first at id {k}:\n"
        f"  lensd {got[window]} {[decode([t]) for t in got[window]]}\n"
        f"  HF    {expected[i][window]} {[decode([t]) for t in expected[i][window]]}\n"
        f"  text  {decode(expected[i][window])!r}"
    )


def hf_decode(hf_fast):
    return lambda ids: hf_fast.decode(ids, clean_up_tokenization_spaces=False)


# ---- tests ------------------------------------------------------------------


def test_corpus_is_deterministic_and_varied(corpus):
    path, docs = corpus
    assert make_corpus.build_corpus() == docs
    text = "".join(docs)
    for needle in ("<|endoftext|>", "\r\n", "\t", "   ", "'ll", "'VE", "\u200d", "\U0001F3FD",
                   "e\u0301", ",000", "\u3002", "\u0085", "\u00a0", "\x00"):
        assert needle in text, f"the corpus lacks {needle!r}"
    for script, (lo, hi) in {"CJK": ("\u4e00", "\u9fff"), "Arabic": ("\u0621", "\u064a"),
                             "Devanagari": ("\u0905", "\u0939")}.items():
        assert any(lo <= c <= hi for c in text), f"the corpus lacks {script}"
    print(f"\ncorpus: {len(docs)} documents, {len(text.encode('utf-8'))} bytes")


@pytest.mark.parametrize("loader", ["bpe", "json"])
def test_encode_matches_hf(loader, driver, loaders, corpus, reference_ids, hf_fast, workdir):
    _, docs = corpus
    ours = run_driver(driver, loaders[loader], "encode", docs, workdir)
    assert_same_ids(docs, ours, reference_ids, hf_decode(hf_fast))


@pytest.mark.parametrize("loader", ["bpe", "json"])
def test_decode_each_id_matches_to_str_tokens(loader, driver, loaders, hf_fast, hf_json, workdir):
    ours = run_driver(driver, loaders[loader], "decode_each", None, workdir)
    assert len(ours) == GPT2_VOCAB_SIZE
    if loader == "bpe":
        expected = [hf_fast.decode([i], clean_up_tokenization_spaces=False)
                    for i in range(GPT2_VOCAB_SIZE)]
    else:
        expected = [hf_json.decode([i], skip_special_tokens=False) for i in range(GPT2_VOCAB_SIZE)]
    bad = [i for i in range(GPT2_VOCAB_SIZE) if ours[i] != expected[i]]
    assert not bad, f"{len(bad)} ids differ, first {bad[0]}: {ours[bad[0]]!r} != {expected[bad[0]]!r}"


def test_decode_documents(driver, loaders, corpus, reference_ids, hf_fast, workdir):
    _, docs = corpus
    ours = run_driver(driver, loaders["bpe"], "decode", reference_ids, workdir)
    for i, (doc, ids, got) in enumerate(zip(docs, reference_ids, ours)):
        expected = hf_fast.decode(ids, clean_up_tokenization_spaces=False)
        assert got.get("text") == expected, f"document {i}: {got} != {expected!r}"
        assert expected == doc, f"document {i} does not round-trip through HF"


def test_decode_random_id_sequences_is_lossy_like_hf(driver, loaders, hf_fast, workdir):
    """Ids of single bytes and partial characters, mixed: the replacement of
    invalid UTF-8 must match HF's (Rust's from_utf8_lossy)."""
    rng = random.Random(7)
    byte_tokens = list(range(0, 256)) + [i for i in range(GPT2_VOCAB_SIZE)
                                         if "\ufffd" in hf_fast.decode([i])][:2000]
    sequences = []
    for _ in range(3000):
        n = rng.randrange(1, 12)
        sequences.append([rng.choice(byte_tokens) if rng.random() < 0.8
                          else rng.randrange(GPT2_VOCAB_SIZE) for _ in range(n)])
    sequences += [[], [GPT2_VOCAB_SIZE - 1], [50256, 50256]]
    ours = run_driver(driver, loaders["bpe"], "decode", sequences, workdir)
    for ids, got in zip(sequences, ours):
        assert got.get("text") == hf_fast.decode(ids, clean_up_tokenization_spaces=False), ids


def test_decode_refuses_out_of_range_ids(driver, loaders, workdir):
    ours = run_driver(driver, loaders["bpe"], "decode", [[1, GPT2_VOCAB_SIZE], [-1]], workdir)
    assert str(GPT2_VOCAB_SIZE) in ours[0]["error"]
    assert "error" in ours[1]


def test_invalid_utf8_is_refused_at_the_right_byte(driver, loaders, corpus, hf_fast, workdir):
    _, docs = corpus
    rng = random.Random(11)
    bad_sequences = [b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
                     b"\xed\xbf\xbf", b"\xf0\x80\x80\xaf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
                     b"\xff", b"\xfe", b"\xe2\x82", b"\xf0\x9f\x98", b"\xc3", b"\xe2\x28\xa1"]
    cases = []
    for i in range(600):
        data = docs[rng.randrange(len(docs))].encode("utf-8")
        at = rng.randrange(len(data) + 1)
        cases.append(data[:at] + rng.choice(bad_sequences) + data[at:])
    cases += [bytes([b]) for b in range(0x80, 0x100)]
    valid = [d.encode("utf-8") for d in docs[:50]]
    ours = run_driver(driver, loaders["bpe"], "encode", [list(c) for c in cases + valid], workdir)
    for data, got in zip(cases, ours):
        try:
            data.decode("utf-8")
            pytest.fail(f"test case {data!r} is valid UTF-8")
        except UnicodeDecodeError as e:
            assert got.get("error") == f"invalid UTF-8 at byte {e.start}", (data[e.start - 5:e.start + 5], got)
    for data, got in zip(valid, ours[len(cases):]):
        assert got.get("ids") == hf_fast(data.decode("utf-8"))["input_ids"]


def test_every_code_point_is_classified_like_hf(driver, loaders, hf_fast, workdir):
    docs = make_corpus.code_point_sweep()
    expected = hf_fast(docs, add_special_tokens=False)["input_ids"]
    ours = run_driver(driver, loaders["bpe"], "encode", docs, workdir)
    assert_same_ids(docs, ours, expected, hf_decode(hf_fast))


def test_added_token_flags_match_tokenizers(driver, tokenizer_json, corpus, workdir):
    """lstrip/rstrip, single_word, normalized and non-normalized added tokens
    (matched in two passes), leftmost-longest between overlapping ones, and
    added tokens whose text is not byte-level (decoded as their own UTF-8)."""
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False),
                            AddedToken("[SEP]", lstrip=True, normalized=False),
                            AddedToken("<|end", normalized=False)])
    tok.add_tokens([AddedToken("world", single_word=True, normalized=False),
                    AddedToken("<w>", single_word=True, normalized=True),
                    AddedToken("h\u00e9llo w\u00f6rld", normalized=False),
                    AddedToken("\u0120\u0120x", normalized=True),
                    AddedToken("ab", normalized=False),
                    AddedToken("abc", normalized=True),
                    AddedToken(" the", rstrip=True, normalized=True)])
    path = workdir / "tokenizer_added.json"
    tok.save(str(path))
    rng = random.Random(3)
    pieces = ["<mask>", " <mask> ", "\t<mask>\u3000", "[SEP]", "  [SEP]  ", "<|end", "<|endoftext|>",
              "<|end<|endoftext|>", "h\u00e9llo w\u00f6rld", "\u0120\u0120x", "abc", "xabcx", "ab",
              " the  ", " then", "\u00a0<mask>\u00a0", "world", " world ", "worlds", "_world",
              "world\u00e9", "<w>", "a<w>b", " <w> ", "\u00e9<w>"]
    _, docs = corpus
    texts = []
    for doc in docs[:300]:
        chars = list(doc)
        for _ in range(rng.randrange(1, 6)):
            chars.insert(rng.randrange(len(chars) + 1), rng.choice(pieces))
        texts.append("".join(chars))
    texts += pieces + ["".join(pieces)]
    expected = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    ours = run_driver(driver, ["--json", str(path)], "encode", texts, workdir)
    assert_same_ids(texts, ours, expected, lambda ids: tok.decode(ids, skip_special_tokens=False))
    ids = list(range(GPT2_VOCAB_SIZE, tok.get_vocab_size()))
    decoded = run_driver(driver, ["--json", str(path)], "decode", [[i] for i in ids], workdir)
    assert [d["text"] for d in decoded] == [tok.decode([i], skip_special_tokens=False) for i in ids]


@pytest.mark.parametrize("change, message", [
    (lambda j: j["model"].update(type="WordPiece"), 'model type "WordPiece" is not supported'),
    (lambda j: j.update(normalizer={"type": "Lowercase"}), 'normalizer "Lowercase" is not supported'),
    (lambda j: j.update(normalizer={"type": "NFKC"}), 'normalizer "NFKC" is not supported'),
    (lambda j: j.update(pre_tokenizer={"type": "Whitespace"}),
     'pre_tokenizer "Whitespace" is not supported'),
    (lambda j: j.update(decoder={"type": "WordPiece", "prefix": "##"}),
     'decoder "WordPiece" is not supported'),
])
def test_unsupported_tokenizer_json_is_refused(change, message, driver, tokenizer_json, workdir):
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    change(data)
    path = workdir / "tokenizer_unsupported.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    done = subprocess.run([driver, "--json", str(path), "decode_each", str(workdir / "x.json")],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert message in done.stderr and str(path) in done.stderr, done.stderr


def test_encode_throughput(driver, loaders, corpus, workdir):
    path, _ = corpus
    done = subprocess.run([driver, *loaders["bpe"], "bench", str(path), str(workdir / "bench.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads((workdir / "bench.json").read_text())
    print(f"\nencode: {result['bytes']} bytes in {result['seconds']:.3f} s, "
          f"{result['mb_per_s']:.1f} MB/s")
    assert result["seconds"] < 1.0
