/*
 * tokenizer_text.c: libFuzzer harness for encoding and decoding with real
 * tokenizers (lens_tok_encode, lens_tok_encode_at_most, lens_tok_decode,
 * core/tokenizer.c): the daemon's tokenize and detokenize endpoints, and
 * every prompt, hand these functions bytes from the network.
 *
 * The tokenizers, loaded once from the shared test data ($LENSD_SHARED,
 * else ../shared beside the checkout): GPT-2 (vocab.json + merges.txt:
 * byte-level BPE), Llama 2 (SentencePiece tokenizer.model: Metaspace, byte
 * fallback) and Phi-3.5 (tokenizer.json: normalizers, added tokens). Each
 * input goes through each of them, two ways:
 *  - as text: it encodes if and only if it is valid UTF-8, to ids below the
 *    vocabulary size, which decode to valid UTF-8 — for GPT-2 to exactly the
 *    input; lens_tok_encode_at_most (with a bound taken from the input)
 *    stops at exactly the first ids of the whole encoding;
 *  - as ids: each pair of bytes a little-endian number v, the id v mod
 *    (vocabulary + 2) - 1 (so -1 and the vocabulary size occur, out of
 *    range): the ids decode to NUL-terminated valid UTF-8 if all are in
 *    range, and fail with a message otherwise.
 * Anything else aborts. A tokenizer that does not load aborts too: the data
 * is part of the test.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tokenizer.h"
#include "tests/fuzz/fuzz.h"

typedef struct real_tokenizer {
    const char *name;
    lens_tokenizer *tok;
    int exact; /* decode(encode(text)) == text for every valid text */
} real_tokenizer;

static real_tokenizer tokenizers[3];

static lens_tokenizer *load(const char *what, const char *a, const char *b) {
    char first[4096], second[4096];
    lens_err err = {0};
    lens_tokenizer *tok;
    snprintf(first, sizeof first, "%s/data/%s", fuzz_shared_dir(), a);
    if (b) {
        snprintf(second, sizeof second, "%s/data/%s", fuzz_shared_dir(), b);
        tok = lens_tok_load_bpe(first, second, &err);
    } else {
        tok = lens_tok_load_dir(first, NULL, &err);
    }
    if (!tok) fuzz_fail("loading %s (set LENSD_SHARED to the shared/ folder): %s", what, err.msg);
    return tok;
}

static void load_all(void) {
    if (tokenizers[0].tok) return;
    tokenizers[0] = (real_tokenizer){
        "GPT-2", load("GPT-2", "gpt2-tokenizer/vocab.json", "gpt2-tokenizer/merges.txt"), 1};
    tokenizers[1] = (real_tokenizer){"Llama 2", load("Llama 2", "tokenizers/llama-2", NULL), 0};
    tokenizers[2] = (real_tokenizer){"Phi-3.5", load("Phi-3.5", "tokenizers/phi-3", NULL), 0};
}

static void check_text(const real_tokenizer *t, const uint8_t *data, size_t size) {
    int32_t *ids, *first;
    size_t n, m, vocab = lens_tok_vocab_size(t->tok);
    lens_err err = {0};
    int valid = fuzz_valid_utf8(data, size);
    int rc = lens_tok_encode(t->tok, (const char *)data, size, &ids, &n, &err);
    if (rc != 0) {
        if (valid) fuzz_fail("%s: valid UTF-8 does not encode: %s", t->name, err.msg);
        if (!err.msg[0]) fuzz_fail("%s: encoding fails without a message", t->name);
        return;
    }
    if (!valid) fuzz_fail("%s: text that is not UTF-8 encodes", t->name);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= vocab)
            fuzz_fail("%s: id %d at %zu is outside the vocabulary of %zu", t->name, ids[i], i,
                      vocab);
    size_t len;
    char *back = lens_tok_decode(t->tok, ids, n, &len, &err);
    if (!back) fuzz_fail("%s: the ids of an encoding do not decode: %s", t->name, err.msg);
    if (back[len] != '\0' || !fuzz_valid_utf8((const uint8_t *)back, len))
        fuzz_fail("%s: decoding gives %zu bytes that are not NUL-terminated UTF-8", t->name, len);
    if (t->exact && (len != size || memcmp(back, data, size) != 0))
        fuzz_fail("%s: %zu bytes encode to %zu ids that decode to %zu other bytes", t->name, size,
                  n, len);
    free(back);
    size_t max = size ? data[0] % (n + 2) : 0;
    int more = lens_tok_encode_at_most(t->tok, (const char *)data, size, max, &first, &m, &err);
    if (more != (n > max) || m != (n > max ? max : n) ||
        (m && memcmp(first, ids, m * sizeof *ids) != 0))
        fuzz_fail("%s: encoding at most %zu ids gives %d with %zu ids, not the first of %zu",
                  t->name, max, more, m, n);
    free(first);
    free(ids);
}

static void check_ids(const real_tokenizer *t, const uint8_t *data, size_t size) {
    size_t n = size / 2, vocab = lens_tok_vocab_size(t->tok);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) fuzz_fail("out of memory");
    int in_range = 1;
    for (size_t i = 0; i < n; i++) {
        ids[i] = (int32_t)((data[2 * i] | (uint32_t)data[2 * i + 1] << 8) % (vocab + 2)) - 1;
        in_range &= ids[i] >= 0 && (size_t)ids[i] < vocab;
    }
    size_t len;
    lens_err err = {0};
    char *text = lens_tok_decode(t->tok, ids, n, &len, &err);
    if (in_range && !text) fuzz_fail("%s: ids in range do not decode: %s", t->name, err.msg);
    if (!in_range && text) fuzz_fail("%s: an id out of range decodes", t->name);
    if (text && (text[len] != '\0' || !fuzz_valid_utf8((const uint8_t *)text, len)))
        fuzz_fail("%s: decoding gives %zu bytes that are not NUL-terminated UTF-8", t->name, len);
    if (!text && !err.msg[0]) fuzz_fail("%s: decoding fails without a message", t->name);
    free(text);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    load_all();
    for (size_t i = 0; i < sizeof tokenizers / sizeof tokenizers[0]; i++) {
        check_text(&tokenizers[i], data, size);
        check_ids(&tokenizers[i], data, size);
    }
    return 0;
}
