"""Writes the seed inputs of tests/fuzz/corpus/<name>/ (files named seed-*),
small files derived from the real ones, so that each fuzzer starts from
inputs that load and reach deep into its parser.

  tokenizer_json   GPT-2's, Phi-3.5's, Mistral v0.3's and GPT-NeoX's
                   pipelines with their vocabularies cut to their first few
                   hundred entries (merges kept where all three strings
                   are), and GPT-2's with every other supported step
  tokenizer_model  Llama 2's and Mistral v0.1's SentencePiece protobuf cut
                   to their first pieces; Llama 3's tiktoken file cut to its
                   first ranks
  tokenizer_text   short texts: prose, code, Chinese, emoji, special tokens,
                   white space runs, invalid UTF-8
  safetensors      tests/unit/data/sample.safetensors, and small files of
                   each dtype, with metadata, empty tensors and the
                   harness's "header NUL data" form
  config           config/lensd.example.json with paths the harness's
                   scratch directory has, and smaller ones
  auth             tokens files with sha256 and plain entries, with and
                   without a header to check

Inputs libFuzzer adds with tools/fuzz.sh --merge are named by their SHA-1
and are kept; this script rewrites only seed-* files.

Usage: python3 tests/fuzz/make_corpus.py  (standard library only; reads
$LENSD_SHARED, else ../shared beside the checkout)
"""
import hashlib
import json
import os
import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
SHARED = pathlib.Path(os.environ.get("LENSD_SHARED", REPO.parent / "shared")) / "data"
TOKENIZERS = SHARED / "tokenizers"


def write(name, seed, data):
    folder = HERE / "corpus" / name
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    (folder / ("seed-" + seed)).write_bytes(data)


def dumps(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# ---- tokenizer_json ---------------------------------------------------------


def merge_parts(merge):
    return merge.split(" ", 1) if isinstance(merge, str) else merge


def cut_tokenizer_json(root, keep):
    """root with its vocabulary cut to ids below keep (and the single
    characters of ASCII and U+2581, which SentencePiece lists last), its
    added tokens to the first 16 (a dropped one leaves the vocabulary too),
    ids renumbered without holes in the same order, and merges kept where
    both parts and the result are left."""
    model = root["model"]
    added = root.get("added_tokens", [])[:16]
    dropped = {t["content"] for t in root.get("added_tokens", [])[16:]}
    kept = sorted((v, k) for k, v in model["vocab"].items()
                  if (v < keep or (len(k) == 1 and (k < "\x7f" or k == "\u2581")))
                  and k not in dropped)
    vocab = {k: i for i, (_, k) in enumerate(kept)}
    next_id = len(vocab)
    for t in added:
        if t["content"] in vocab:
            t["id"] = vocab[t["content"]]
        else:
            t["id"], next_id = next_id, next_id + 1
    merges = []
    for m in model.get("merges", []):
        left, right = merge_parts(m)
        if left in vocab and right in vocab and left + right in vocab:
            merges.append(m)
    model["vocab"], model["merges"], root["added_tokens"] = vocab, merges, added
    post = root.get("post_processor")
    if isinstance(post, dict):
        ids = {t["content"]: t["id"] for t in added}
        for t in (post.get("special_tokens") or {}).values():
            t["ids"] = [ids.get(t["id"], 0) for _ in t.get("ids", [])]
    return root


def gpt2_small(keep_merges=200):
    vocab = json.loads((SHARED / "gpt2-tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    lines = (SHARED / "gpt2-tokenizer" / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [line for line in lines if line and not line.startswith("#version")][:keep_merges]
    keep = 256 + keep_merges
    small = {k: v for k, v in vocab.items() if v < keep}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": keep, "content": "<|endoftext|>", "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False, "vocab": small,
                  "merges": merges},
    }


def tokenizer_json_seeds():
    base = gpt2_small()
    write("tokenizer_json", "gpt2.json", dumps(base))

    steps = gpt2_small(120)
    steps["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFC"},
        {"type": "Strip", "strip_left": True, "strip_right": False},
        {"type": "Replace", "pattern": {"Regex": "\\s{2,}"}, "content": " "},
        {"type": "Replace", "pattern": {"String": "``"}, "content": "\""},
        {"type": "Prepend", "prepend": " "}]}
    steps["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?"
                                               "\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                                               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithNext",
         "invert": False},
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
         "use_regex": False}]}
    steps["added_tokens"] += [
        {"id": 377, "content": "<mask>", "single_word": False, "lstrip": True, "rstrip": True,
         "normalized": False, "special": True},
        {"id": 378, "content": "lo", "single_word": True, "lstrip": False, "rstrip": False,
         "normalized": True, "special": False}]
    steps["post_processor"] = {"type": "TemplateProcessing",
                               "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                                          {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [],
                               "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>",
                                                                    "ids": [376],
                                                                    "tokens": ["<|endoftext|>"]}}}
    steps["model"]["ignore_merges"] = True
    write("tokenizer_json", "gpt2-steps.json", dumps(steps))

    for folder, seed, keep in (("phi-3", "phi3.json", 400),
                               ("mistral-7b/v0.3", "mistral-v0.3.json", 1200),
                               ("gpt-neox", "neox.json", 400)):
        path = TOKENIZERS / folder / ("20B_tokenizer.json" if folder == "gpt-neox"
                                      else "tokenizer.json")
        root = json.loads(path.read_text(encoding="utf-8"))
        write("tokenizer_json", seed, dumps(cut_tokenizer_json(root, keep)))

    meta = cut_tokenizer_json(json.loads((TOKENIZERS / "phi-3" / "tokenizer.json")
                                         .read_text(encoding="utf-8")), 330)
    meta["normalizer"] = None
    meta["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581",
                             "prepend_scheme": "first", "split": True}
    meta["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always",
         "split": True},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 1}]}
    meta["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1],
         "trim_offsets": True, "add_prefix_space": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
         "use_regex": False}]}
    meta["model"]["continuing_subword_prefix"] = None
    write("tokenizer_json", "metaspace.json", dumps(meta))


# ---- tokenizer_model --------------------------------------------------------


def varint(data, i):
    value, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def cut_sentencepiece(data, keep):
    """The ModelProto with only its first keep pieces (field 1)."""
    out, i, pieces = bytearray(), 0, 0
    while i < len(data):
        start = i
        key, i = varint(data, i)
        wire = key & 7
        if wire == 2:
            n, i = varint(data, i)
            i += n
        elif wire == 0:
            _, i = varint(data, i)
        elif wire == 5:
            i += 4
        elif wire == 1:
            i += 8
        if key >> 3 == 1:
            pieces += 1
            if pieces > keep:
                continue
        out += data[start:i]
    return bytes(out)


def tokenizer_model_seeds():
    for folder, seed in (("llama-2", "llama2.model"), ("mistral-7b/v0.1", "mistral-v0.1.model")):
        data = (TOKENIZERS / folder / "tokenizer.model").read_bytes()
        write("tokenizer_model", seed, cut_sentencepiece(data, 400))
    lines = (TOKENIZERS / "llama-3" / "tokenizer.model").read_bytes().splitlines(keepends=True)
    write("tokenizer_model", "llama3.tiktoken", b"".join(lines[:400]))


# ---- tokenizer_text ---------------------------------------------------------

TEXTS = {
    "sample.txt": "Hello world, \u4f60\u597d \U0001f642 1234",
    "prose.txt": "When Mary and John went to the store, John gave a drink to Mary. "
                 "The Eiffel Tower is in Paris; it's 330 m tall, isn't it?\n",
    "code.txt": "def f(x):\n    return x ** 2  # square\n\n\tif (a && b) { c[i] = -1; }\r\n",
    "specials.txt": "<|endoftext|>a<s>b</s> <unk><|user|>hi<|end|><|assistant|>",
    "spaces.txt": "   two  spaces\n\n\n\t\t trailing   \u00a0\u2009\u3000end ",
    "unicode.txt": "caf\u00e9 cafe\u0301 \u00c5ngstr\u00f6m \u0645\u0631\u062d\u0628\u0627 "
                   "\u0928\u092e\u0938\u094d\u0924\u0947 \U0001f468\u200d\U0001f469\u200d\U0001f467"
                   " \ufb01 \u2160\u2161 \U00010348",
    "digits.txt": "3.14159 1,000,000 0x1F 1e-9 \u0661\u0662\u0663 \uff11\uff12",
}


def tokenizer_text_seeds():
    for seed, text in TEXTS.items():
        write("tokenizer_text", seed, text)
    write("tokenizer_text", "invalid.bin", b"ok \xff\xfe \xc3\x28 \xed\xa0\x80 \xf4\x90\x80\x80 end")
    write("tokenizer_text", "ids.bin", struct.pack("<12H", 15496, 995, 50256, 0, 1, 2, 3, 259,
                                                   32000, 32010, 65535, 220))


# ---- safetensors -----------------------------------------------------------

DTYPES = {"F64": ("d", 8), "F32": ("f", 4), "F16": ("e", 2), "BF16": (None, 2),
          "I64": ("q", 8), "I32": ("i", 4), "I16": ("h", 2), "I8": ("b", 1),
          "U8": ("B", 1), "BOOL": ("?", 1)}


def safetensors_file(tensors, metadata=None):
    """tensors: (name, dtype, shape, raw bytes) in order."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    write("safetensors", "sample.safetensors",
          (REPO / "tests" / "unit" / "data" / "sample.safetensors").read_bytes())
    tensors = []
    for dtype, (fmt, size) in DTYPES.items():
        values = [1, 0, 1, 1, 0, 0] if dtype == "BOOL" else [0, 1, 2, 3, 4, 5]
        raw = (struct.pack("<6H", 0x3F80, 0x7F80, 0xFF80, 0x7FC1, 0x0001, 0x8000)
               if dtype == "BF16" else struct.pack("<6" + fmt, *values))
        tensors.append(("t." + dtype.lower(), dtype, [2, 3], raw))
    write("safetensors", "dtypes.safetensors", safetensors_file(tensors, {"format": "pt"}))
    write("safetensors", "f16-specials.safetensors", safetensors_file(
        [("h", "F16", [8], struct.pack("<8H", 0x7C00, 0xFC00, 0x7E00, 0x0001, 0x03FF, 0x7BFF,
                                        0x8000, 0x3C00))]))
    write("safetensors", "empty.safetensors", safetensors_file(
        [("e0", "F32", [0, 4], b""), ("e1", "I8", [3, 0], b""), ("s", "F64", [], b"\0" * 8)]))
    write("safetensors", "nothing.safetensors", safetensors_file([], {"a": "b"}))
    header = json.dumps({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                         "y": {"dtype": "U8", "shape": [3], "data_offsets": [16, 19]},
                         "__metadata__": {"format": "np"}}).encode()
    write("safetensors", "split-form", header + b"\0" + struct.pack("<4f", 1, -2, 3.5, 1e30)
          + b"abc")


# ---- config -----------------------------------------------------------------


def config_seeds():
    example = json.loads((REPO / "config" / "lensd.example.json").read_text())
    example["web"] = "web"
    example["tls"] = {"cert": "cert.pem", "key": "key.pem"}
    example["models"][1]["path"] = "model"
    write("config", "example.json", json.dumps(example, indent=2))
    write("config", "empty.json", "{}")
    write("config", "small.json", json.dumps({
        "host": "::1", "port": 0, "web": None, "tokens_file": "tokens.json",
        "models": [{"name": "m.1_x-y", "path": "model/tl_config.json", "device": "cuda",
                    "dtype": "float32", "processing": "fold_ln"},
                   {"name": "hf", "id": "gpt2", "processing": "none"}],
        "model_roots": [".", "model"],
        "limits": {"max_body_bytes": 1024, "max_response_bytes": "1.5GiB",
                   "max_kept_cache_bytes": 0, "kept_cache_ttl_s": 0.5,
                   "request_timeout_s": 1e9, "max_tokens": 16777216}}))
    write("config", "tls-only-cert.json", json.dumps({"tls": {"cert": "cert.pem"},
                                                      "insecure": True, "http_threads": 1024}))


# ---- auth --------------------------------------------------------------------


def auth_seeds():
    digest = hashlib.sha256(b"s3cret-token").hexdigest()
    tokens = [{"name": "alice", "role": "read", "sha256": digest},
              {"name": "ops", "role": "admin", "token": "plain.Text_~+/=="},
              {"name": "bob", "role": "read", "token": "b0b"}]
    write("auth", "tokens.json", json.dumps(tokens, indent=1))
    write("auth", "with-header", json.dumps(tokens) + "\0Bearer s3cret-token")
    write("auth", "plain-header", json.dumps(tokens[1:]) + "\0bearer b0b")
    write("auth", "one.json", json.dumps([{"name": "x", "role": "admin",
                                           "sha256": digest.upper()}]) + "\0Basic dXNlcg==")


def main():
    tokenizer_json_seeds()
    tokenizer_model_seeds()
    tokenizer_text_seeds()
    safetensors_seeds()
    config_seeds()
    auth_seeds()


if __name__ == "__main__":
    main()
