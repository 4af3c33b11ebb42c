/*
 * tokenizer_json.c: libFuzzer harness for the tokenizer.json loader
 * (lens_tok_load_hf_json, core/tokenizer_json.c), which reads a Hugging
 * Face model's tokenizer from wherever the model came from.
 *
 * Input: the bytes of a tokenizer.json, handed over through a memfd.
 *
 * Contract checked: a file that does not load is refused with a message
 * that names it. A tokenizer that loads runs: a fixed sample text and the
 * input itself (when it is valid UTF-8, at most 4 KiB of it) encode either
 * to ids below lens_tok_vocab_size, or fail with a message; the ids of a
 * successful encoding decode to valid UTF-8; lens_tok_encode_at_most stops
 * at exactly the first ids of the whole encoding; and every id below 256
 * (and below the vocabulary size) decodes alone or fails with a message.
 * Anything else aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tokenizer.h"
#include "tests/fuzz/fuzz.h"

static const char sample[] = "Hello world, \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x99\x82 1234\n\t  "
                             "<|endoftext|><s> don't";

/* Encodes text[len] with tok and checks what comes back. */
static void check_text(const lens_tokenizer *tok, const char *text, size_t len) {
    size_t vocab = lens_tok_vocab_size(tok), n, m;
    int32_t *ids, *first;
    lens_err err = {0};
    if (lens_tok_encode(tok, text, len, &ids, &n, &err) != 0) {
        if (!err.msg[0]) fuzz_fail("encoding failed without a message");
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= vocab)
            fuzz_fail("id %d at %zu is outside the vocabulary of %zu", ids[i], i, vocab);
    size_t text_len;
    char *back = lens_tok_decode(tok, ids, n, &text_len, &err);
    if (!back) fuzz_fail("the ids of an encoding do not decode: %s", err.msg);
    if (back[text_len] != '\0' || !fuzz_valid_utf8((const uint8_t *)back, text_len))
        fuzz_fail("decoding gives %zu bytes that are not NUL-terminated UTF-8", text_len);
    free(back);
    size_t max = n / 2;
    int more = lens_tok_encode_at_most(tok, text, len, max, &first, &m, &err);
    if (more != (n > max) || m != (n > max ? max : n) ||
        (m && memcmp(first, ids, m * sizeof *ids) != 0))
        fuzz_fail("encoding at most %zu ids gives %d with %zu ids, not the first of %zu", max, more,
                  m, n);
    free(first);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_memfd(data, size, path, sizeof path);
    if (fd < 0) return 0;
    lens_err err = {0};
    lens_tokenizer *tok = lens_tok_load_hf_json(path, &err);
    close(fd);
    if (!tok) {
        if (!strstr(err.msg, path)) fuzz_fail("the message does not name the file: %s", err.msg);
        return 0;
    }
    check_text(tok, sample, sizeof sample - 1);
    if (fuzz_valid_utf8(data, size)) check_text(tok, (const char *)data, size < 4096 ? size : 4096);
    size_t vocab = lens_tok_vocab_size(tok);
    for (int32_t id = 0; id < 256 && (size_t)id < vocab; id++) {
        size_t len;
        err.msg[0] = '\0';
        char *text = lens_tok_decode(tok, &id, 1, &len, &err);
        if (text && !fuzz_valid_utf8((const uint8_t *)text, len))
            fuzz_fail("id %d decodes to text that is not UTF-8", id);
        if (!text && !err.msg[0]) fuzz_fail("id %d fails to decode without a message", id);
        free(text);
    }
    lens_tok_free(tok);
    return 0;
}
