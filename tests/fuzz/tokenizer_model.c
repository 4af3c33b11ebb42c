/*
 * tokenizer_model.c: libFuzzer harness for the tokenizer.model readers of
 * lens_tok_load_dir (core/tokenizer_dir.c): a SentencePiece ModelProto
 * (protobuf, Llama 2's and Mistral's) or a tiktoken file (base64 token and
 * rank per line, Llama 3's), read from a downloaded model directory.
 *
 * Input: the bytes of a tokenizer.model, written alone into a scratch
 * directory that lens_tok_load_dir then loads (so no tokenizer_config.json:
 * Meta's special tokens for tiktoken, LlamaTokenizerFast's for SentencePiece).
 *
 * Contract checked: a directory that does not load is refused with a
 * message that names the file or the directory. A tokenizer that loads
 * runs: a fixed sample text encodes to ids below the vocabulary size that
 * decode to valid UTF-8, or fails with a message (a file may lack the byte
 * tokens that the formats fall back to, and the unknown token); every id
 * below 512 decodes alone or fails with a message; the special tokens it
 * reports are ids of the vocabulary or -1. Anything else aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tokenizer.h"
#include "tests/fuzz/fuzz.h"

static const char sample[] = "Hello world, \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x99\x82 1234\n\t  "
                             "<s></s><|begin_of_text|> don't";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = fuzz_scratch_dir();
    char path[4200];
    fuzz_write_file(dir, "tokenizer.model", data, size, path, sizeof path);
    lens_tok_specials specials;
    lens_err err = {0};
    lens_tokenizer *tok = lens_tok_load_dir(dir, &specials, &err);
    if (!tok) {
        if (!strstr(err.msg, dir)) fuzz_fail("the message does not name the file: %s", err.msg);
        return 0;
    }
    size_t vocab = lens_tok_vocab_size(tok), n;
    int32_t *ids;
    size_t len;
    char *text;
    if (lens_tok_encode(tok, sample, sizeof sample - 1, &ids, &n, &err) == 0) {
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || (size_t)ids[i] >= vocab)
                fuzz_fail("id %d at %zu is outside the vocabulary of %zu", ids[i], i, vocab);
        text = lens_tok_decode(tok, ids, n, &len, &err);
        if (!text) fuzz_fail("the ids of an encoding do not decode: %s", err.msg);
        if (text[len] != '\0' || !fuzz_valid_utf8((const uint8_t *)text, len))
            fuzz_fail("decoding gives %zu bytes that are not NUL-terminated UTF-8", len);
        free(text);
        free(ids);
    } else if (!err.msg[0]) {
        fuzz_fail("encoding fails without a message");
    }
    for (int32_t id = 0; id < 512 && (size_t)id < vocab; id++) {
        err.msg[0] = '\0';
        text = lens_tok_decode(tok, &id, 1, &len, &err);
        if (text && !fuzz_valid_utf8((const uint8_t *)text, len))
            fuzz_fail("id %d decodes to text that is not UTF-8", id);
        if (!text && !err.msg[0]) fuzz_fail("id %d fails to decode without a message", id);
        free(text);
    }
    int32_t specials_ids[] = {specials.bos_id, specials.eos_id, specials.pad_id, specials.unk_id};
    for (size_t i = 0; i < 4; i++)
        if (specials_ids[i] < -1 || (specials_ids[i] >= 0 && (size_t)specials_ids[i] >= vocab))
            fuzz_fail("special token id %d is outside the vocabulary of %zu", specials_ids[i],
                      vocab);
    lens_tok_free(tok);
    return 0;
}
