"""family_tokenizers.py: the tokenizer files of a Hugging Face snapshot, per model family.

    import family_tokenizers
    family_tokenizers.write_tokenizer("llama3", Path("models/tiny-llama3"))

write_tokenizer(family, dest) puts into dest what a real Hugging Face model
snapshot of that family carries for its tokenizer: tokenizer.json (the
`tokenizers` pipeline), tokenizer_config.json and, where the family's
snapshots have one, special_tokens_map.json. Nothing is downloaded; every
file comes from the real tokenizer files in $LENSD_SHARED/data (default
../shared beside the repository) or, for the two families with no file
there (SmolLM, Gemma), is trained here with the `tokenizers` library in
that family's configuration on text of tests/tokenizer/make_corpus.py.
The output is the same bytes on every run.

Families (FAMILIES lists them):
  pythia   GPT-NeoX-20B's tokenizer.json (shared gpt-neox), as Pythia ships it
  gptj     GPT-2's vocab and merges as GPT2TokenizerFast's tokenizer.json, with
           GPT-J's 143 <|extratoken_N|> added tokens (vocab 50400)
  phi      GPT-2's vocab and merges as CodeGen's tokenizer.json (Phi-2): runs of
           2-31 spaces and 2-9 tabs as added tokens (vocab 50295)
  llama3   Meta's tiktoken tokenizer.model converted as transformers'
           TikTokenConverter does, Meta's 256 special tokens, and the
           post-processor of Llama 3's tokenizer.json (BOS <|begin_of_text|>)
  llama2   llama-2 tokenizer.model as LlamaTokenizerFast (transformers 5.23)
           converts it, add_bos_token true as Llama-2-hf's config says
  smollm   byte-level BPE trained here in SmolLM2's configuration (Digits
           individually, ByteLevel), specials <|endoftext|> <|im_start|> <|im_end|>
  mistral  Mistral-7B-Instruct-v0.3's files as they are
  qwen2    Qwen2.5's vocab, merges and config, tokenizer.json as transformers
           builds it from them (Qwen2Tokenizer: NFC, Split, ByteLevel)
  qwen3    the same for Qwen3
  gemma    SentencePiece-style BPE with byte fallback trained here in Gemma's
           configuration (Replace " " -> "▁", <pad>=0 <eos>=1 <bos>=2 <unk>=3,
           BOS added by the post-processor)
  olmo2    OLMo-2's vocab, merges and base config, tokenizer.json as
           transformers builds it from them (GPT2Tokenizer). The real HF
           OLMo-2 tokenizer.json (not in the shared data) splits with a
           cl100k-style regex instead; this one uses GPT-2's.
  phi3     Phi-3.5-mini-instruct's tokenizer.json, with a tokenizer_config.json
           written here in that snapshot's shape (LlamaTokenizer, bos <s>, eos and
           pad <|endoftext|>, no BOS added); the shared data has no copy of the
           real file, so its fields are not byte-for-byte the snapshot's

Needs the lensd venv (transformers, tokenizers, tiktoken); see tools/setup.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LENSD_SHARED", REPO.parent / "shared"))
TOKENIZERS = SHARED / "data" / "tokenizers"
GPT2_FILES = SHARED / "data" / "gpt2-tokenizer"

FAMILIES = ("pythia", "gptj", "phi", "llama3", "llama2", "smollm", "mistral", "qwen2", "qwen3",
            "gemma", "olmo2", "phi3")

# Meta's llama/tokenizer.py: 10 named special tokens, then reserved ones up to 256.
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_4|>", "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]
LLAMA3_BASE_VOCAB = 128000

# Training text for the two trained families: the first documents of the corpus.
TRAIN_DOCUMENTS = 400


def write_tokenizer(family: str, dest: Path) -> None:
    """Writes the tokenizer files of `family` (one of FAMILIES) into dest,
    creating it. Raises ValueError for an unknown family and FileNotFoundError
    when a shared file it is made from is missing."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tokenizer family {family!r}; known: {', '.join(FAMILIES)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    globals()[f"_write_{family}"](dest)


# ---- helpers ----------------------------------------------------------------


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (set LENSD_SHARED to the shared folder)")
    return path


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _save_tokenizer(tok, dest: Path) -> None:
    """A tokenizers.Tokenizer as tokenizer.json, the way save_pretrained writes it."""
    (dest / "tokenizer.json").write_text(tok.to_str(pretty=True), encoding="utf-8")


def _added_tokens_decoder(tok) -> dict:
    """tokenizer_config.json's added_tokens_decoder for a tokenizers.Tokenizer."""
    decoder = {}
    for entry in json.loads(tok.to_str())["added_tokens"]:
        decoder[str(entry["id"])] = {k: entry[k] for k in
                                     ("content", "lstrip", "normalized", "rstrip", "single_word",
                                      "special")}
    return decoder


def _special_tokens_map(**tokens) -> dict:
    return {key: {"content": value, "lstrip": False, "normalized": False, "rstrip": False,
                  "single_word": False} for key, value in tokens.items() if value is not None}


def _copy(src: Path, dest: Path, name: str | None = None) -> None:
    shutil.copyfile(_need(src), dest / (name or src.name))


def _training_text():
    sys.path.insert(0, str(REPO / "tests" / "tokenizer"))
    import make_corpus

    return make_corpus.build_corpus()[:TRAIN_DOCUMENTS]


def _alphabet(text: list[str], n: int) -> list[str]:
    """The n most frequent characters of text ("▁" for a space), ties by code
    point. Given to BpeTrainer as its alphabet: its own limit_alphabet breaks
    ties in hash order, which differs from run to run."""
    counts = Counter(c for doc in text for c in doc.replace(" ", "\u2581"))
    return sorted(counts, key=lambda c: (-counts[c], c))[:n]


def _gpt2_fast():
    """GPT2TokenizerFast from the shared GPT-2 vocab.json and merges.txt."""
    from transformers import GPT2TokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("vocab.json", "merges.txt"):
            _copy(GPT2_FILES / name, Path(tmp))
        return GPT2TokenizerFast.from_pretrained(tmp, local_files_only=True)


def _gpt2_like(dest: Path, added, config: dict) -> None:
    """GPT-2's BPE with `added` AddedTokens after <|endoftext|>, and config."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(_gpt2_fast().backend_tokenizer.to_str())
    tok.add_tokens(added)
    _save_tokenizer(tok, dest)
    config = dict(config, added_tokens_decoder=_added_tokens_decoder(tok))
    _write_json(dest / "tokenizer_config.json", config)
    _write_json(dest / "special_tokens_map.json",
                _special_tokens_map(bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                    unk_token="<|endoftext|>"))


def _from_transformers(src_files: list[Path], dest: Path) -> None:
    """tokenizer.json as transformers' AutoTokenizer builds it from src_files
    (copied into one folder), plus those files themselves."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for path in src_files:
            _copy(path, Path(tmp))
        tok = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
    (dest / "tokenizer.json").write_text(tok.backend_tokenizer.to_str(pretty=True),
                                         encoding="utf-8")
    for path in src_files:
        _copy(path, dest)


# ---- families ---------------------------------------------------------------


def _write_pythia(dest: Path) -> None:
    _copy(TOKENIZERS / "gpt-neox" / "20B_tokenizer.json", dest, "tokenizer.json")
    _write_json(dest / "tokenizer_config.json", {
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "bos_token": "<|endoftext|>", "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "model_max_length": 1000000000000000019884624838656,
        "pad_token": None, "tokenizer_class": "GPTNeoXTokenizer", "unk_token": "<|endoftext|>"})
    _write_json(dest / "special_tokens_map.json",
                _special_tokens_map(bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                    unk_token="<|endoftext|>"))


def _write_gptj(dest: Path) -> None:
    from tokenizers import AddedToken

    added = [AddedToken(f"<|extratoken_{i}|>", normalized=True, special=False)
             for i in range(1, 144)]
    _gpt2_like(dest, added, {
        "add_bos_token": False, "add_prefix_space": False, "bos_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": True, "eos_token": "<|endoftext|>",
        "model_max_length": 2048, "pad_token": None, "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>"})


def _write_phi(dest: Path) -> None:
    from tokenizers import AddedToken

    runs = [" " * n for n in range(31, 1, -1)] + ["\t" * n for n in range(9, 1, -1)]
    added = [AddedToken(run, normalized=True, special=False) for run in runs]
    _gpt2_like(dest, added, {
        "add_prefix_space": False, "bos_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": True, "eos_token": "<|endoftext|>",
        "model_max_length": 2048, "return_token_type_ids": False,
        "tokenizer_class": "CodeGenTokenizer", "unk_token": "<|endoftext|>"})


def _write_llama3(dest: Path) -> None:
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    model = _need(TOKENIZERS / "llama-3" / "tokenizer.model")
    tok = TikTokenConverter(vocab_file=str(model), extra_special_tokens=LLAMA3_SPECIALS).converted()
    assert tok.token_to_id("<|begin_of_text|>") == LLAMA3_BASE_VOCAB
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, LLAMA3_BASE_VOCAB)]),
    ])
    _save_tokenizer(tok, dest)
    _write_json(dest / "tokenizer_config.json", {
        "added_tokens_decoder": _added_tokens_decoder(tok), "bos_token": bos,
        "clean_up_tokenization_spaces": True, "eos_token": "<|end_of_text|>",
        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 8192,
        "tokenizer_class": "PreTrainedTokenizerFast"})
    _write_json(dest / "special_tokens_map.json",
                _special_tokens_map(bos_token=bos, eos_token="<|end_of_text|>"))


def _write_llama2(dest: Path) -> None:
    from transformers import LlamaTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        _copy(TOKENIZERS / "llama-2" / "tokenizer.model", Path(tmp))
        tok = LlamaTokenizerFast.from_pretrained(tmp, local_files_only=True, legacy=False,
                                                 add_bos_token=True, add_eos_token=False)
    backend = tok.backend_tokenizer
    _save_tokenizer(backend, dest)
    _copy(TOKENIZERS / "llama-2" / "tokenizer.model", dest)
    _write_json(dest / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": _added_tokens_decoder(backend), "bos_token": "<s>",
        "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": False,
        "model_max_length": 1000000000000000019884624838656, "pad_token": None,
        "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>", "use_default_system_prompt": False})
    _write_json(dest / "special_tokens_map.json",
                _special_tokens_map(bos_token="<s>", eos_token="</s>", unk_token="<unk>"))


def _write_smollm(dest: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False,
                                              use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_text(), trainer=trainer)
    _save_tokenizer(tok, dest)
    _write_json(dest / "tokenizer_config.json", {
        "add_prefix_space": False, "added_tokens_decoder": _added_tokens_decoder(tok),
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|endoftext|>", "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer", "unk_token": "<|endoftext|>",
        "vocab_size": tok.get_vocab_size()})
    _write_json(dest / "special_tokens_map.json", dict(
        _special_tokens_map(bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>"),
        additional_special_tokens=["<|im_start|>", "<|im_end|>"]))


def _write_mistral(dest: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        _copy(TOKENIZERS / "mistral-7b" / "v0.3" / name, dest)


def _write_qwen2(dest: Path) -> None:
    folder = TOKENIZERS / "qwen2.5"
    _from_transformers([folder / "vocab.json", folder / "merges.txt",
                        folder / "tokenizer_config.json"], dest)


def _write_qwen3(dest: Path) -> None:
    folder = TOKENIZERS / "qwen3"
    _from_transformers([folder / "vocab.json", folder / "merges.txt",
                        folder / "tokenizer_config.json"], dest)


def _write_gemma(dest: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    # Train on words split at "▁" (Gemma's own pipeline has no pre-tokenizer,
    # which would make every document one word); a small alphabet leaves rare
    # characters to byte fallback.
    trainee = Tokenizer(models.BPE())
    trainee.normalizer = normalizers.Replace(" ", "\u2581")
    trainee.pre_tokenizer = pre_tokenizers.Split(Regex("\u2581[^\u2581]*|[^\u2581]+"), "isolated")
    text = _training_text()
    trainer = trainers.BpeTrainer(vocab_size=3000, initial_alphabet=_alphabet(text, 200),
                                  limit_alphabet=200, show_progress=False)
    trainee.train_from_iterator(text, trainer=trainer)
    trained = json.loads(trainee.to_str())["model"]
    vocab = {token: i for i, token in enumerate(specials + byte_tokens)}
    for token in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.add_special_tokens(specials)
    tok.add_special_tokens(["<start_of_turn>", "<end_of_turn>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1",
        special_tokens=[("<bos>", vocab["<bos>"])])
    _save_tokenizer(tok, dest)
    _write_json(dest / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": _added_tokens_decoder(tok), "bos_token": "<bos>",
        "clean_up_tokenization_spaces": False, "eos_token": "<eos>",
        "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>",
        "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer", "unk_token": "<unk>", "use_default_system_prompt": False})
    _write_json(dest / "special_tokens_map.json", dict(
        _special_tokens_map(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                            unk_token="<unk>"),
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"]))


def _write_olmo2(dest: Path) -> None:
    folder = TOKENIZERS / "olmo-2"
    _from_transformers([folder / "vocab.json", folder / "merges.txt",
                        folder / "base" / "tokenizer_config.json",
                        folder / "base" / "special_tokens_map.json"], dest)


def _write_phi3(dest: Path) -> None:
    from tokenizers import Tokenizer

    src = _need(TOKENIZERS / "phi-3" / "tokenizer.json")
    _copy(src, dest)
    tok = Tokenizer.from_file(str(src))
    _write_json(dest / "tokenizer_config.json", {
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": None,
        "added_tokens_decoder": _added_tokens_decoder(tok), "bos_token": "<s>",
        "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "legacy": False,
        "model_max_length": 131072, "pad_token": "<|endoftext|>", "padding_side": "left",
        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
        "use_default_system_prompt": False})
    _write_json(dest / "special_tokens_map.json",
                _special_tokens_map(bos_token="<s>", eos_token="<|endoftext|>",
                                    pad_token="<|endoftext|>", unk_token="<unk>"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: family_tokenizers.py FAMILY DEST")
    write_tokenizer(sys.argv[1], Path(sys.argv[2]))
