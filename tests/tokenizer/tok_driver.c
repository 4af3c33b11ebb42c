/*
 * tok_driver.c: test-only command line front end to core/tokenizer.c, used by
 * test_hf_tokenizer_parity.py to compare lensd's tokenizer with Hugging Face.
 *
 *   tok_driver (--bpe VOCAB_JSON MERGES_TXT | --json TOKENIZER_JSON | --dir DIR) MODE ARGS
 *
 *   encode IN OUT     IN: JSON list of documents, each a string or a list of
 *                     byte values (to send invalid UTF-8). OUT: a list with,
 *                     per document, {"ids": [...]} or {"error": "..."}.
 *   decode IN OUT     IN: JSON list of id lists. OUT: per list {"text": "..."}
 *                     or {"error": "..."}.
 *   decode_each OUT   OUT: the decoding of every id alone, id 0 first.
 *   bench IN OUT      encodes every document of IN five times; OUT:
 *                     {"bytes": ..., "seconds": best pass, "mb_per_s": ...}.
 *   specials OUT      (--dir only) lens_tok_specials as {"bos_id": ..., "eos_id",
 *                     "pad_id", "unk_id", "adds_bos", "adds_eos", "vocab_size"}.
 *
 * Not part of lensd; it exits 1 with a message on any trouble of its own.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "core/tokenizer.h"

static void die(const char *what, const char *detail) {
    fprintf(stderr, "tok_driver: %s: %s\n", what, detail);
    exit(1);
}

static json_t *load_json(const char *path) {
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!root) die(path, jerr.text);
    if (!json_is_array(root)) die(path, "not a JSON list");
    return root;
}

static void save_json(json_t *root, const char *path) {
    if (json_dump_file(root, path, JSON_COMPACT) < 0) die(path, "cannot write");
    json_decref(root);
}

/* The bytes of a document: a string's UTF-8, or a list of byte values. The
 * returned buffer is malloc'd. */
static char *document_bytes(const json_t *doc, size_t *len) {
    if (json_is_string(doc)) {
        *len = json_string_length(doc);
        char *bytes = malloc(*len + 1);
        memcpy(bytes, json_string_value(doc), *len);
        return bytes;
    }
    if (!json_is_array(doc)) die("input", "a document is neither a string nor a byte list");
    *len = json_array_size(doc);
    char *bytes = malloc(*len + 1);
    for (size_t i = 0; i < *len; i++)
        bytes[i] = (char)json_integer_value(json_array_get(doc, i));
    return bytes;
}

static json_t *error_object(const lens_err *err) {
    return json_pack("{s:s}", "error", err->msg);
}

static json_t *encode_all(const lens_tokenizer *tok, const json_t *docs) {
    json_t *results = json_array();
    size_t i;
    json_t *doc;
    json_array_foreach(docs, i, doc) {
        size_t len, n;
        char *text = document_bytes(doc, &len);
        int32_t *ids;
        lens_err err;
        if (lens_tok_encode(tok, text, len, &ids, &n, &err) < 0) {
            json_array_append_new(results, error_object(&err));
        } else {
            json_t *list = json_array();
            for (size_t k = 0; k < n; k++)
                json_array_append_new(list, json_integer(ids[k]));
            json_array_append_new(results, json_pack("{s:o}", "ids", list));
            free(ids);
        }
        free(text);
    }
    return results;
}

static json_t *decode_one(const lens_tokenizer *tok, const int32_t *ids, size_t n) {
    size_t len;
    lens_err err;
    char *text = lens_tok_decode(tok, ids, n, &len, &err);
    if (!text) return error_object(&err);
    json_t *s = json_stringn(text, len);
    if (!s) die("decode", "the decoded text is not valid UTF-8");
    free(text);
    return s;
}

static json_t *decode_all(const lens_tokenizer *tok, const json_t *lists) {
    json_t *results = json_array();
    size_t i;
    json_t *list;
    json_array_foreach(lists, i, list) {
        size_t n = json_array_size(list);
        int32_t *ids = malloc((n + 1) * sizeof *ids);
        for (size_t k = 0; k < n; k++)
            ids[k] = (int32_t)json_integer_value(json_array_get(list, k));
        json_t *text = decode_one(tok, ids, n);
        json_array_append_new(results,
                              json_is_string(text) ? json_pack("{s:o}", "text", text) : text);
        free(ids);
    }
    return results;
}

static json_t *decode_each(const lens_tokenizer *tok) {
    json_t *results = json_array();
    for (int32_t id = 0; (size_t)id < lens_tok_vocab_size(tok); id++)
        json_array_append_new(results, decode_one(tok, &id, 1));
    return results;
}

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static json_t *bench(const lens_tokenizer *tok, const json_t *docs) {
    size_t n_docs = json_array_size(docs), total = 0;
    double best = 1e30;
    for (int pass = 0; pass < 5; pass++) {
        double start = seconds_now();
        total = 0;
        for (size_t i = 0; i < n_docs; i++) {
            const json_t *doc = json_array_get(docs, i);
            int32_t *ids;
            size_t n;
            lens_err err;
            if (lens_tok_encode(tok, json_string_value(doc), json_string_length(doc), &ids, &n,
                                &err) < 0)
                die("bench", err.msg);
            free(ids);
            total += json_string_length(doc);
        }
        double elapsed = seconds_now() - start;
        if (elapsed < best) best = elapsed;
    }
    return json_pack("{s:I, s:f, s:f}", "bytes", (json_int_t)total, "seconds", best, "mb_per_s",
                     (double)total / best / 1e6);
}

int main(int argc, char **argv) {
    const char *usage = "tok_driver (--bpe VOCAB MERGES | --json TOKENIZER_JSON | --dir DIR) "
                        "(encode IN OUT | decode IN OUT | decode_each OUT | bench IN OUT | "
                        "specials OUT)";
    lens_err err;
    lens_tokenizer *tok = NULL;
    lens_tok_specials specials;
    bool from_dir = false;
    int arg = 1;
    if (argc > 3 && strcmp(argv[1], "--bpe") == 0) {
        tok = lens_tok_load_bpe(argv[2], argv[3], &err);
        arg = 4;
    } else if (argc > 2 && strcmp(argv[1], "--json") == 0) {
        tok = lens_tok_load_hf_json(argv[2], &err);
        arg = 3;
    } else if (argc > 2 && strcmp(argv[1], "--dir") == 0) {
        tok = lens_tok_load_dir(argv[2], &specials, &err);
        from_dir = true;
        arg = 3;
    } else {
        die("usage", usage);
    }
    if (!tok) die("loading", err.msg);
    if (argc == arg + 2 && strcmp(argv[arg], "decode_each") == 0) {
        save_json(decode_each(tok), argv[arg + 1]);
    } else if (argc == arg + 2 && strcmp(argv[arg], "specials") == 0 && from_dir) {
        save_json(json_pack("{s:i, s:i, s:i, s:i, s:b, s:b, s:I}", "bos_id", specials.bos_id,
                            "eos_id", specials.eos_id, "pad_id", specials.pad_id, "unk_id",
                            specials.unk_id, "adds_bos", specials.adds_bos, "adds_eos",
                            specials.adds_eos, "vocab_size", (json_int_t)lens_tok_vocab_size(tok)),
                  argv[arg + 1]);
    } else if (argc == arg + 3) {
        const char *mode = argv[arg];
        json_t *in = load_json(argv[arg + 1]), *out = NULL;
        if (strcmp(mode, "encode") == 0)
            out = encode_all(tok, in);
        else if (strcmp(mode, "decode") == 0)
            out = decode_all(tok, in);
        else if (strcmp(mode, "bench") == 0)
            out = bench(tok, in);
        else
            die("usage", usage);
        json_decref(in);
        save_json(out, argv[arg + 2]);
    } else {
        die("usage", usage);
    }
    lens_tok_free(tok);
    return 0;
}
