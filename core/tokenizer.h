/*
 * tokenizer.h: text <-> token ids, as the Hugging Face tokenizers that
 * TransformerLens wraps produce them.
 *
 * Two kinds:
 *  - BPE, as Hugging Face's `tokenizers` runs it (ids identical to it, and
 *    decodings identical to its decode): from a tokenizer.json (normalizers,
 *    pre-tokenizers, the BPE model with byte fallback, added tokens,
 *    decoders; tokenizer_json.c lists what is supported and refuses the
 *    rest by name), from GPT-2's vocab.json + merges.txt, or from a whole
 *    model directory (lens_tok_load_dir: also SentencePiece and tiktoken
 *    tokenizer.model files, built as transformers builds them). Regexes run
 *    on PCRE2 with Unicode properties, normalization on utf8proc.
 *  - a plain token list (algorithmic models): id i is tokens[i]; text is split
 *    into single characters (LENS_SPLIT_CHARS) or at whitespace
 *    (LENS_SPLIT_WHITESPACE), and every piece must be in the list.
 *
 * Encoding adds no BOS/EOS/padding: the model decides those, from what
 * lens_tok_load_dir reports in lens_tok_specials.
 * A tokenizer is immutable after loading and may be shared across threads.
 */
#ifndef LENS_TOKENIZER_H
#define LENS_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/lens_error.h"

typedef struct lens_tokenizer lens_tokenizer;

typedef enum lens_split {
    LENS_SPLIT_CHARS,
    LENS_SPLIT_WHITESPACE,
} lens_split;

/* Loads a byte-level BPE tokenizer from GPT-2's two files. Returns NULL on
 * error, naming the file and what is wrong with it. */
lens_tokenizer *lens_tok_load_bpe(const char *vocab_json_path, const char *merges_txt_path,
                                  lens_err *err);

/* Loads a Hugging Face tokenizer.json as `tokenizers.Tokenizer.from_file`
 * reads it (no tokenizer_config.json: see lens_tok_load_dir). Returns NULL on
 * error, naming the file and the field, or if the file describes a model or
 * a step that is not supported. */
lens_tokenizer *lens_tok_load_hf_json(const char *tokenizer_json_path, lens_err *err);

/* What a tokenizer's files say about special tokens (ids, -1 where none). */
typedef struct lens_tok_specials {
    int32_t bos_id, eos_id, pad_id, unk_id;
    bool adds_bos; /* encoding a single text with add_special_tokens adds BOS first (HF's
                      post-processor / add_bos_token) */
    bool adds_eos; /* ... and EOS last */
} lens_tok_specials;

/* Loads the tokenizer of a Hugging Face model directory: tokenizer.json if
 * present, else tokenizer.model (SentencePiece BPE as transformers'
 * LlamaTokenizerFast converts it, or a tiktoken file as Llama 3 ships it),
 * else vocab.json + merges.txt (as the tokenizer_class of
 * tokenizer_config.json builds them: GPT-2's, GPT-NeoX's, CodeGen's or
 * Qwen2's pipeline). Special tokens come from tokenizer_config.json
 * (bos_token, eos_token, pad_token, unk_token, add_bos_token, add_eos_token,
 * added_tokens_decoder) and special_tokens_map.json, and from the
 * post-processor, following transformers 5.23's AutoTokenizer: named special
 * tokens missing from the vocabulary are added as it adds them. `specials`
 * may be NULL. Returns NULL with a message naming the file and field. */
lens_tokenizer *lens_tok_load_dir(const char *dir, lens_tok_specials *specials, lens_err *err);

/* Makes a tokenizer over a plain list of n token strings (copied). Returns
 * NULL on error (empty or duplicate entries). */
lens_tokenizer *lens_tok_from_list(const char *const *tokens, size_t n, lens_split split,
                                   lens_err *err);

/* Frees the tokenizer. Accepts NULL. */
void lens_tok_free(lens_tokenizer *tok);

/* Number of ids (largest id + 1). */
size_t lens_tok_vocab_size(const lens_tokenizer *tok);

/* Encodes len bytes of text as HF's encode(text, add_special_tokens=False):
 * no BOS/EOS added, added tokens in the text matched. On success *ids is a
 * malloc'd array of *n ids (caller frees; may be NULL when *n is 0).
 * Returns -1 for text that is not valid UTF-8 (naming the byte offset), for
 * a list tokenizer a piece not in the list (naming it), or for a BPE model
 * whose unknown token is needed but missing from its vocabulary. */
int lens_tok_encode(const lens_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                    size_t *n, lens_err *err);

/* lens_tok_encode that stops once max_ids ids are out: returns 1 when the
 * text has more (then *ids holds its first max_ids, exactly those of the
 * whole encoding, and the rest of the text is not looked at), 0 when it had
 * no more, -1 as lens_tok_encode. */
int lens_tok_encode_at_most(const lens_tokenizer *tok, const char *text, size_t len, size_t max_ids,
                            int32_t **ids, size_t *n, lens_err *err);

/* Decodes ids into malloc'd, NUL-terminated UTF-8 text (*len bytes, not
 * counting the NUL), as HF's decode(ids, skip_special_tokens=False,
 * clean_up_tokenization_spaces=False) through the tokenizer's decoders:
 * byte sequences that are not valid UTF-8 become U+FFFD the way Rust's
 * String::from_utf8_lossy replaces them (ByteFallback: one per byte). A list tokenizer joins its
 * pieces (with no separator for CHARS, one space for WHITESPACE). Returns NULL for an id out of
 * range. */
char *lens_tok_decode(const lens_tokenizer *tok, const int32_t *ids, size_t n, size_t *len,
                      lens_err *err);

/* The id of an exact added token or vocabulary entry (as spelled in
 * vocab.json, e.g. "<|endoftext|>" or "\u0120the"), or -1 if there is none. */
int32_t lens_tok_lookup(const lens_tokenizer *tok, const char *entry);

#endif
