/*
 * tokenizer.h: text <-> token ids, as the Hugging Face tokenizers that
 * TransformerLens wraps produce them.
 *
 * Two kinds:
 *  - byte-level BPE (GPT-2, GPT-Neo): from vocab.json + merges.txt, or from a
 *    tokenizer.json whose model is BPE with a ByteLevel pre-tokenizer. The
 *    GPT-2 pre-tokenizer regex runs on PCRE2 with Unicode properties. Special
 *    tokens (tokenizer.json "added_tokens"; "<|endoftext|>" for the
 *    vocab.json form) are matched literally in the text first, as HF does.
 *    Ids are identical to GPT2TokenizerFast built from the same files.
 *  - a plain token list (algorithmic models): id i is tokens[i]; text is split
 *    into single characters (LENS_SPLIT_CHARS) or at whitespace
 *    (LENS_SPLIT_WHITESPACE), and every piece must be in the list.
 *
 * This layer knows nothing of BOS/EOS/padding; the model decides those.
 * A tokenizer is immutable after loading and may be shared across threads.
 */
#ifndef LENS_TOKENIZER_H
#define LENS_TOKENIZER_H

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

/* Loads a Hugging Face tokenizer.json (BPE model, ByteLevel pre-tokenizer and
 * decoder). Returns NULL on error, or if the file describes another kind. */
lens_tokenizer *lens_tok_load_hf_json(const char *tokenizer_json_path, lens_err *err);

/* Makes a tokenizer over a plain list of n token strings (copied). Returns
 * NULL on error (empty or duplicate entries). */
lens_tokenizer *lens_tok_from_list(const char *const *tokens, size_t n, lens_split split,
                                   lens_err *err);

/* Frees the tokenizer. Accepts NULL. */
void lens_tok_free(lens_tokenizer *tok);

/* Number of ids (largest id + 1). */
size_t lens_tok_vocab_size(const lens_tokenizer *tok);

/* Encodes len bytes of text (no BOS/EOS added). On success *ids is a
 * malloc'd array of *n ids (caller frees; may be NULL when *n is 0).
 * Returns -1 for text that is not valid UTF-8 (naming the byte offset) or,
 * for a list tokenizer, a piece not in the list (naming it). */
int lens_tok_encode(const lens_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                    size_t *n, lens_err *err);

/* Decodes ids into malloc'd, NUL-terminated UTF-8 text (*len bytes, not
 * counting the NUL), as HF's decode(ids, clean_up_tokenization_spaces=False):
 * byte sequences that are not valid UTF-8 become U+FFFD the way Rust's
 * String::from_utf8_lossy replaces them. A list tokenizer joins its pieces
 * (with no separator for CHARS, one space for WHITESPACE). Returns NULL for
 * an id out of range. */
char *lens_tok_decode(const lens_tokenizer *tok, const int32_t *ids, size_t n, size_t *len,
                      lens_err *err);

/* The id of an exact vocabulary entry (as spelled in vocab.json, e.g.
 * "<|endoftext|>" or "\u0120the"), or -1 if there is none. */
int32_t lens_tok_lookup(const lens_tokenizer *tok, const char *entry);

#endif
