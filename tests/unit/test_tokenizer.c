/*
 * test_tokenizer.c: unit tests for core/tokenizer.c.
 *
 * Expected GPT-2 ids were produced by transformers' GPT2TokenizerFast from the
 * same vocab.json and merges.txt (the broad parity check over a 1 MB corpus
 * lives in tests/tokenizer/test_hf_tokenizer_parity.py). The GPT-2 files are
 * read from $LENSD_SHARED/data/gpt2-tokenizer (default: ../shared beside the
 * repository root); the tests fail, not skip, when they are missing.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "core/tokenizer.h"

/* ---- helpers ------------------------------------------------------------ */

/* The shared directory: $LENSD_SHARED, else ../shared from the repository
 * root, found from the working directory or from this file's path (meson
 * compiles it as "../tests/unit/test_tokenizer.c" from the build dir). */
static const char *shared_dir(void) {
    static char dir[4096];
    const char *env = getenv("LENSD_SHARED");
    if (env) return env;
    static const char self[] = "tests/unit/test_tokenizer.c";
    size_t file_len = strlen(__FILE__), self_len = strlen(self);
    if (file_len >= self_len && strcmp(__FILE__ + file_len - self_len, self) == 0) {
        snprintf(dir, sizeof dir, "%.*s../shared", (int)(file_len - self_len), __FILE__);
        if (access(dir, F_OK) == 0) return dir;
    }
    return "../shared";
}

static void gpt2_paths(char *vocab, char *merges, size_t size) {
    int vocab_len = snprintf(vocab, size, "%s/data/gpt2-tokenizer/vocab.json", shared_dir());
    int merges_len = snprintf(merges, size, "%s/data/gpt2-tokenizer/merges.txt", shared_dir());
    cr_assert((size_t)vocab_len < size && (size_t)merges_len < size, "path too long");
    cr_assert(access(vocab, R_OK) == 0 && access(merges, R_OK) == 0,
              "GPT-2 tokenizer files not found at %s (set LENSD_SHARED)", vocab);
}

static lens_tokenizer *gpt2;

static void load_gpt2(void) {
    char vocab[4096], merges[4096];
    gpt2_paths(vocab, merges, sizeof vocab);
    lens_err err = {0};
    gpt2 = lens_tok_load_bpe(vocab, merges, &err);
    cr_assert_not_null(gpt2, "loading GPT-2: %s", err.msg);
}

static void free_gpt2(void) {
    lens_tok_free(gpt2);
}

static void assert_ids(const lens_tokenizer *tok, const char *text, size_t len,
                       const int32_t *expected, size_t n_expected) {
    int32_t *ids;
    size_t n;
    lens_err err = {0};
    cr_assert_eq(lens_tok_encode(tok, text, len, &ids, &n, &err), 0, "encode: %s", err.msg);
    cr_assert_eq(n, n_expected, "\"%s\": %zu ids, expected %zu", text, n, n_expected);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(ids[i], expected[i], "\"%s\": id %zu is %d, expected %d", text, i, ids[i],
                     expected[i]);
    free(ids);
}

#define ASSERT_IDS(tok, text, ...)                                                                 \
    do {                                                                                           \
        const int32_t expected_[] = {__VA_ARGS__};                                                 \
        assert_ids(tok, text, sizeof(text) - 1, expected_, sizeof expected_ / sizeof(int32_t));    \
    } while (0)

/* Asserts that encoding fails with a message containing `needle`. */
static void assert_encode_error(const lens_tokenizer *tok, const char *text, size_t len,
                                const char *needle) {
    int32_t *ids = (int32_t *)1;
    size_t n = 99;
    lens_err err = {0};
    cr_assert_eq(lens_tok_encode(tok, text, len, &ids, &n, &err), -1);
    cr_assert_null(ids);
    cr_assert_eq(n, 0);
    cr_assert(strstr(err.msg, needle), "message \"%s\" lacks \"%s\"", err.msg, needle);
}

static char *decode(const lens_tokenizer *tok, const int32_t *ids, size_t n, size_t *len) {
    lens_err err = {0};
    char *text = lens_tok_decode(tok, ids, n, len, &err);
    cr_assert_not_null(text, "decode: %s", err.msg);
    cr_assert_eq(strlen(text), *len);
    return text;
}

static char *write_temp(const char *contents) {
    char *path = strdup("/tmp/lens_tok_test_XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    size_t len = strlen(contents);
    cr_assert_eq(write(fd, contents, len), (ssize_t)len);
    close(fd);
    return path;
}

/* ---- GPT-2 from vocab.json + merges.txt --------------------------------- */

TestSuite(gpt2, .init = load_gpt2, .fini = free_gpt2);

Test(gpt2, vocab_size_and_lookup) {
    cr_assert_eq(lens_tok_vocab_size(gpt2), 50257);
    cr_assert_eq(lens_tok_lookup(gpt2, "<|endoftext|>"), 50256);
    cr_assert_eq(lens_tok_lookup(gpt2, "\xc4\xa0the"), 262); /* "\u0120the" */
    cr_assert_eq(lens_tok_lookup(gpt2, "\xc4\xa0"), 220);
    cr_assert_eq(lens_tok_lookup(gpt2, " the"), -1); /* spelled with a real space */
    cr_assert_eq(lens_tok_lookup(gpt2, ""), -1);
}

Test(gpt2, words_and_leading_space) {
    ASSERT_IDS(gpt2, "Hello world", 15496, 995);
    ASSERT_IDS(gpt2, " Hello world", 18435, 995);
    ASSERT_IDS(gpt2, " ", 220);
}

Test(gpt2, empty_text_gives_no_ids) {
    int32_t *ids = (int32_t *)1;
    size_t n = 99;
    cr_assert_eq(lens_tok_encode(gpt2, "", 0, &ids, &n, NULL), 0);
    cr_assert_eq(n, 0);
    cr_assert_null(ids);
}

Test(gpt2, special_token_is_matched_literally) {
    ASSERT_IDS(gpt2, "a<|endoftext|>b", 64, 50256, 65);
    ASSERT_IDS(gpt2, "<|endoftext|><|endoftext|>", 50256, 50256);
    ASSERT_IDS(gpt2, "<|endoftext|", 27, 91, 437, 1659, 5239, 91);
}

Test(gpt2, contractions_are_lowercase_only) {
    ASSERT_IDS(gpt2, "it's I'M we'll", 270, 338, 314, 6, 44, 356, 1183);
}

Test(gpt2, whitespace_runs) {
    ASSERT_IDS(gpt2, "x  \n\n  y   ", 87, 220, 220, 628, 220, 331, 220, 220, 220);
    /* U+0085 is white space (Unicode White_Space); U+180E is not, though
     * PCRE2's \s takes it. */
    ASSERT_IDS(gpt2, "a  \xc2\x85x", 64, 220, 220, 126, 227, 87);
    ASSERT_IDS(gpt2, "a \xe1\xa0\x8ex", 64, 28053, 254, 236, 87);
}

Test(gpt2, numbers_accents_emoji_cjk) {
    ASSERT_IDS(gpt2, "3.14159 1,000,000", 18, 13, 1415, 19707, 352, 11, 830, 11, 830);
    ASSERT_IDS(gpt2, "caf\xc3\xa9 e\xcc\x81", 66, 1878, 2634, 304, 136, 223);
    ASSERT_IDS(gpt2, "\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x92\xbb\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd",
               41840, 102, 447, 235, 8582, 240, 119, 41840, 235, 8582, 237, 121);
    ASSERT_IDS(gpt2, "\xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96\xe7\x95\x8c", 19526, 254, 25001, 121,
               10310, 244, 45911, 234);
}

Test(gpt2, nul_bytes_are_text) {
    static const char text[] = "a\0b";
    const int32_t expected[] = {64, 188, 65}; /* 188 is byte 0x00, spelled U+0100 */
    assert_ids(gpt2, text, 3, expected, 3);
    size_t len;
    char *back = lens_tok_decode(gpt2, expected, 3, &len, NULL);
    cr_assert_not_null(back);
    cr_assert_eq(len, 3);
    cr_assert(memcmp(back, text, 3) == 0);
    free(back);
}

Test(gpt2, invalid_utf8_is_refused_with_offset) {
    assert_encode_error(gpt2, "abc\xff", 4, "invalid UTF-8 at byte 3");
    assert_encode_error(gpt2, "\xc0\xaf", 2, "invalid UTF-8 at byte 0");         /* overlong */
    assert_encode_error(gpt2, "x\xe0\x80\xaf", 4, "invalid UTF-8 at byte 1");    /* overlong */
    assert_encode_error(gpt2, "ab\xed\xa0\x80", 5, "invalid UTF-8 at byte 2");   /* surrogate */
    assert_encode_error(gpt2, "\xf4\x90\x80\x80", 4, "invalid UTF-8 at byte 0"); /* > 10FFFF */
    assert_encode_error(gpt2, "\xf5\x80\x80\x80", 4, "invalid UTF-8 at byte 0");
    assert_encode_error(gpt2, "x\xe2\x82", 3, "invalid UTF-8 at byte 1"); /* truncated */
    assert_encode_error(gpt2, "0123456789abcdef\x80", 17, "invalid UTF-8 at byte 16");
    assert_encode_error(gpt2, "0123456789abcdefg\x80", 18, "invalid UTF-8 at byte 17");
}

Test(gpt2, decode_round_trips_text) {
    static const char text[] = "Hello <|endoftext|> w\xc3\xb6rld \xe2\x82\xac 12,345\r\n\t ok";
    int32_t *ids;
    size_t n, len;
    cr_assert_eq(lens_tok_encode(gpt2, text, sizeof text - 1, &ids, &n, NULL), 0);
    char *back = decode(gpt2, ids, n, &len);
    cr_assert_str_eq(back, text);
    free(back);
    free(ids);
}

Test(gpt2, decode_special_token_is_its_text) {
    const int32_t ids[] = {50256};
    size_t len;
    char *text = decode(gpt2, ids, 1, &len);
    cr_assert_str_eq(text, "<|endoftext|>");
    free(text);
}

Test(gpt2, decode_partial_utf8_is_replaced_like_rust) {
    size_t len;
    /* 158 is byte 0xE2, 224 is 0x82, 105 is 0xAC: E2 82 AC is the euro sign. */
    const int32_t euro[] = {158, 224, 105};
    char *text = decode(gpt2, euro, 3, &len);
    cr_assert_str_eq(text, "\xe2\x82\xac");
    free(text);
    /* E2 82 then 'a': E2 82 is one maximal subpart, so one U+FFFD. */
    const int32_t cut[] = {158, 224, 64};
    text = decode(gpt2, cut, 3, &len);
    cr_assert_str_eq(text, "\xef\xbf\xbd\x61"); /* U+FFFD, then "a" */
    free(text);
    /* 0x82 alone, then 0xFF: each its own U+FFFD. */
    const int32_t stray[] = {224, 187};
    text = decode(gpt2, stray, 2, &len);
    cr_assert_str_eq(text, "\xef\xbf\xbd\xef\xbf\xbd");
    free(text);
}

Test(gpt2, decode_empty_and_out_of_range) {
    size_t len = 99;
    char *text = decode(gpt2, NULL, 0, &len);
    cr_assert_str_eq(text, "");
    cr_assert_eq(len, 0);
    free(text);
    lens_err err = {0};
    const int32_t bad[] = {15496, 50257};
    cr_assert_null(lens_tok_decode(gpt2, bad, 2, &len, &err));
    cr_assert(strstr(err.msg, "50257"), "%s", err.msg);
    const int32_t negative[] = {-1};
    cr_assert_null(lens_tok_decode(gpt2, negative, 1, &len, NULL));
}

/* Long runs of one character class must not exhaust the regex JIT stack. */
Test(gpt2, long_runs) {
    const size_t len = 1 << 20;
    char *text = malloc(len + 1);
    static const char fills[] = {' ', 'a', '7', '!', '\n'};
    for (size_t f = 0; f < sizeof fills; f++) {
        memset(text, fills[f], len);
        text[len - 1] = 'x';
        int32_t *ids;
        size_t n, out_len;
        lens_err err = {0};
        cr_assert_eq(lens_tok_encode(gpt2, text, len, &ids, &n, &err), 0, "fill '%c': %s", fills[f],
                     err.msg);
        char *back = lens_tok_decode(gpt2, ids, n, &out_len, &err);
        cr_assert_not_null(back);
        cr_assert_eq(out_len, len);
        cr_assert(memcmp(back, text, len) == 0);
        free(back);
        free(ids);
    }
    free(text);
}

/* encode_at_most gives the first max_ids ids of the whole encoding, and says
 * whether the text had more, for every cut of a text with words, spaces,
 * digits, accents and a special token; a megabyte stops at once. */
Test(gpt2, encode_at_most_is_a_prefix) {
    static const char text[] = "The cat sat on the mat, 1234 times; caf\xc3\xa9 <|endoftext|> ok!";
    int32_t *all, *part;
    size_t n_all, n_part;
    lens_err err = {0};
    cr_assert_eq(lens_tok_encode(gpt2, text, strlen(text), &all, &n_all, &err), 0, "%s", err.msg);
    for (size_t max = 0; max <= n_all + 1; max++) {
        const int rc = lens_tok_encode_at_most(gpt2, text, strlen(text), max, &part, &n_part, &err);
        cr_assert_eq(rc, max < n_all ? 1 : 0, "max %zu of %zu", max, n_all);
        cr_assert_eq(n_part, max < n_all ? max : n_all, "max %zu", max);
        cr_assert(n_part == 0 || memcmp(part, all, n_part * sizeof *part) == 0, "max %zu", max);
        free(part);
    }
    free(all);
    const size_t len = 8 << 20;
    char *big = malloc(len);
    for (size_t i = 0; i < len; i++)
        big[i] = "lorem ipsum dolor sit amet "[i % 27];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cr_assert_eq(lens_tok_encode_at_most(gpt2, big, len, 1024, &part, &n_part, &err), 1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_eq(n_part, 1024);
    free(part);
    free(big);
    const double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    cr_assert_lt(s, 1.0, "1024 ids of an 8 MiB text took %.2f s", s);
}

typedef struct thread_job {
    const char *text;
    int32_t *ids;
    size_t n;
    int ok;
} thread_job;

static void *encode_many(void *arg) {
    thread_job *job = arg;
    job->ok = 1;
    for (int round = 0; round < 50; round++) {
        int32_t *ids;
        size_t n;
        if (lens_tok_encode(gpt2, job->text, strlen(job->text), &ids, &n, NULL) < 0 ||
            n != job->n || memcmp(ids, job->ids, n * sizeof *ids) != 0)
            job->ok = 0;
        free(ids);
    }
    return NULL;
}

Test(gpt2, shared_across_threads) {
    static const char text[] = "The quick brown fox's 12,345 d\xc3\xa9j\xc3\xa0 vu "
                               "\xe4\xbd\xa0\xe5\xa5\xbd <|endoftext|>   \n\n\tend";
    int32_t *ids;
    size_t n;
    cr_assert_eq(lens_tok_encode(gpt2, text, sizeof text - 1, &ids, &n, NULL), 0);
    pthread_t threads[4];
    thread_job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (thread_job){text, ids, n, 0};
        cr_assert_eq(pthread_create(&threads[i], NULL, encode_many, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        cr_assert(jobs[i].ok, "thread %d got different ids", i);
    }
    free(ids);
}

/* ---- load errors --------------------------------------------------------- */

Test(load_errors, missing_files_are_named) {
    lens_err err = {0};
    cr_assert_null(lens_tok_load_bpe("/nonexistent/vocab.json", "/nonexistent/merges.txt", &err));
    cr_assert(strstr(err.msg, "/nonexistent/vocab.json"), "%s", err.msg);
    cr_assert_null(lens_tok_load_hf_json("/nonexistent/tokenizer.json", &err));
    cr_assert(strstr(err.msg, "/nonexistent/tokenizer.json"), "%s", err.msg);
}

Test(load_errors, malformed_vocab_json) {
    char vocab[4096], merges[4096];
    gpt2_paths(vocab, merges, sizeof vocab);
    lens_err err = {0};
    char *path = write_temp("{\"a\": 0, ");
    cr_assert_null(lens_tok_load_bpe(path, merges, &err));
    cr_assert(strstr(err.msg, path) && strstr(err.msg, "line 1"), "%s", err.msg);
    unlink(path);
    free(path);
    path = write_temp("{\"a\": \"zero\"}");
    cr_assert_null(lens_tok_load_bpe(path, merges, &err));
    cr_assert(strstr(err.msg, "\"a\" is not an integer"), "%s", err.msg);
    unlink(path);
    free(path);
    path = write_temp("{\"a\": 0, \"b\": 0}");
    cr_assert_null(lens_tok_load_bpe(path, merges, &err));
    cr_assert(strstr(err.msg, "id 0 is given to both"), "%s", err.msg);
    unlink(path);
    free(path);
    path = write_temp("{\"a\": 0}");
    cr_assert_null(lens_tok_load_bpe(path, merges, &err));
    cr_assert(strstr(err.msg, "for byte 0x"), "%s", err.msg);
    unlink(path);
    free(path);
}

/* vocab.json is read directly, without jansson, when it is a plain object of
 * integer ids; these check that it reads every JSON spelling of an entry as
 * jansson does, and that what it does not take goes to jansson. */

/* GPT-2's 256 byte entries (ids 0..255), each spelled with a \\u escape when
 * `escaped`, then `extra` (entries after a comma, or ""), the whole laid out
 * with the given whitespace between tokens. */
static char *byte_vocab_json(bool escaped, const char *space, const char *extra) {
    size_t cap = 65536, used = 0;
    char *json = malloc(cap);
    cr_assert_not_null(json);
    used += (size_t)snprintf(json + used, cap - used, "%s{", space);
    int next_extra = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        int cp = printable ? b : next_extra++;
        char spelled[16];
        if (escaped || cp == '"' || cp == '\\')
            snprintf(spelled, sizeof spelled, "\\u%04X", cp);
        else if (cp < 0x80)
            snprintf(spelled, sizeof spelled, "%c", cp);
        else
            snprintf(spelled, sizeof spelled, "%c%c", 0xC0 | cp >> 6, 0x80 | (cp & 0x3F));
        used += (size_t)snprintf(json + used, cap - used, "%s%s\"%s\"%s:%s%d", b ? "," : "", space,
                                 spelled, space, space, b);
    }
    snprintf(json + used, cap - used, "%s%s}%s", extra, space, space);
    return json;
}

static lens_tokenizer *load_vocab_text(const char *json, lens_err *err) {
    char *vocab = write_temp(json);
    char *merges = write_temp("#version: 0.2\n");
    lens_tokenizer *tok = lens_tok_load_bpe(vocab, merges, err);
    unlink(vocab);
    unlink(merges);
    free(vocab);
    free(merges);
    return tok;
}

Test(load_errors, vocab_json_spellings_read_as_jansson_reads_them) {
    static const char extra[] =
        ", \"a\\\"b\": 300, \"back\\\\slash\": 301, \"sl\\/ash\": 302,"
        "\"\\b\\f\\n\\r\\t\": 303, \"\\ud83d\\ude00\": 304, \"\xc3\xa9t\xc3\xa9\": 305,"
        "\"caf\\u00e9\": 306, \"\\u20AC\": 307, \"\": 308";
    const struct {
        const char *entry;
        int32_t id;
    } want[] = {{"a\"b", 300},        {"back\\slash", 301},      {"sl/ash", 302},
                {"\b\f\n\r\t", 303},  {"\xf0\x9f\x98\x80", 304}, {"\xc3\xa9t\xc3\xa9", 305},
                {"caf\xc3\xa9", 306}, {"\xe2\x82\xac", 307},     {"", 308}};
    const char *spaces[] = {"", " ", "\n\t \r\n"};
    for (int escaped = 0; escaped < 2; escaped++) {
        for (size_t s = 0; s < 3; s++) {
            char *json = byte_vocab_json(escaped, spaces[s], extra);
            lens_err err = {0};
            lens_tokenizer *tok = load_vocab_text(json, &err);
            cr_assert_not_null(tok, "escaped %d, space %zu: %s", escaped, s, err.msg);
            cr_assert_eq(lens_tok_lookup(tok, "\xc4\xa0"), 32, "the space byte, U+0120");
            cr_assert_eq(lens_tok_lookup(tok, "\""), '"');
            for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
                cr_assert_eq(lens_tok_lookup(tok, want[i].entry), want[i].id, "entry %zu", i);
            lens_tok_free(tok);
            free(json);
        }
    }
}

Test(load_errors, vocab_json_unusual_shapes_go_to_jansson) {
    /* an entry given twice: jansson keeps the last id */
    char *json = byte_vocab_json(false, " ", ", \"zz\": 300, \"zz\": 301");
    lens_err err = {0};
    lens_tokenizer *tok = load_vocab_text(json, &err);
    cr_assert_not_null(tok, "%s", err.msg);
    cr_assert_eq(lens_tok_lookup(tok, "zz"), 301);
    lens_tok_free(tok);
    free(json);
    /* each of these is an error, and jansson's message (or the tokenizer's
     * on what jansson read) is the one given */
    const struct {
        const char *extra, *needle;
    } cases[] = {
        {", \"x\": 1.0", "\"x\" is not an integer"},
        {", \"x\": 1e3", "\"x\" is not an integer"},
        {", \"x\": 99999999999999999999", "line 1"},
        {", \"x\": -1", "id -1 of \"x\" is out of range"},
        {", \"x\": 01", "line 1"},
        {", \"\\ud800\": 300", "line 1"},
        {", \"\\udc00x\": 300", "line 1"},
        {", \"\\u0000\": 300", "line 1"},
        {", \"a\\qb\": 300", "line 1"},
        {", \"\xff\": 300", "line 1"},
        {", \"\xc0\xaf\": 300", "line 1"},
        {", \"tab\there\": 300", "line 1"},
        {",", "line 1"},
        {", \"x\" 300", "line 1"},
        {", \"x\": 300 }", "line 1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json = byte_vocab_json(false, "", cases[i].extra);
        cr_assert_null(load_vocab_text(json, &err), "case %zu loaded", i);
        cr_assert(strstr(err.msg, cases[i].needle), "case %zu: %s", i, err.msg);
        free(json);
    }
}

Test(load_errors, malformed_merges_txt) {
    char vocab[4096], merges[4096];
    gpt2_paths(vocab, merges, sizeof vocab);
    lens_err err = {0};
    char *path = write_temp("#version: 0.2\n\xc4\xa0 t\nonlyone\n");
    cr_assert_null(lens_tok_load_bpe(vocab, path, &err));
    cr_assert(strstr(err.msg, "line 3 is not two tokens"), "%s", err.msg);
    unlink(path);
    free(path);
    path = write_temp("#version: 0.2\nqqqq zzzz\n");
    cr_assert_null(lens_tok_load_bpe(vocab, path, &err));
    cr_assert(strstr(err.msg, "line 2") && strstr(err.msg, "\"qqqq\" is not in the vocabulary"),
              "%s", err.msg);
    unlink(path);
    free(path);
}

/* ---- tokenizer.json ------------------------------------------------------ */

/* A tiny byte-level BPE tokenizer.json: ids 0..255 are the bytes (GPT-2's
 * spelling), then "he", "ll", "hell", "hello"; merges in both file formats;
 * added tokens "<mask>" (lstrip, rstrip) and "<|endoftext|>". */
static json_t *tiny_tokenizer_json(void) {
    json_t *vocab = json_object();
    int next_extra = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        int cp = printable ? b : next_extra++;
        char spelled[3] = {0};
        if (cp < 0x80) {
            spelled[0] = (char)cp;
        } else {
            spelled[0] = (char)(0xC0 | cp >> 6);
            spelled[1] = (char)(0x80 | (cp & 0x3F));
        }
        json_object_set_new(vocab, spelled, json_integer(b));
    }
    const char *words[] = {"he", "ll", "hell", "hello"};
    for (int i = 0; i < 4; i++)
        json_object_set_new(vocab, words[i], json_integer(256 + i));
    json_t *merges = json_pack("[s, [s, s], s, [s, s]]", "h e", "l", "l", "he ll", "hell", "o");
    json_t *added =
        json_pack("[{s:i, s:s, s:b, s:b, s:b, s:b, s:b}, {s:i, s:s, s:b, s:b, s:b, s:b, s:b}]",
                  "id", 260, "content", "<mask>", "single_word", 0, "lstrip", 1, "rstrip", 1,
                  "normalized", 0, "special", 1, "id", 261, "content", "<|endoftext|>",
                  "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 1, "special", 1);
    return json_pack("{s:o, s:n, s:{s:s, s:b, s:b, s:b}, s:{s:s}, s:{s:s, s:o, s:o}}",
                     "added_tokens", added, "normalizer", "pre_tokenizer", "type", "ByteLevel",
                     "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 1, "decoder", "type",
                     "ByteLevel", "model", "type", "BPE", "vocab", vocab, "merges", merges);
}

static lens_tokenizer *load_json(json_t *root, lens_err *err) {
    char *path = write_temp("");
    cr_assert_eq(json_dump_file(root, path, 0), 0);
    json_decref(root);
    lens_tokenizer *tok = lens_tok_load_hf_json(path, err);
    unlink(path);
    free(path);
    return tok;
}

Test(hf_json, loads_and_encodes) {
    lens_err err = {0};
    lens_tokenizer *tok = load_json(tiny_tokenizer_json(), &err);
    cr_assert_not_null(tok, "%s", err.msg);
    cr_assert_eq(lens_tok_vocab_size(tok), 262);
    cr_assert_eq(lens_tok_lookup(tok, "hello"), 259);
    ASSERT_IDS(tok, "hello", 259);
    ASSERT_IDS(tok, "hell", 258);
    ASSERT_IDS(tok, "shell", 's', 258);
    /* lstrip and rstrip swallow the white space around <mask>. */
    ASSERT_IDS(tok, "hello <mask>  lo", 259, 260, 'l', 'o');
    ASSERT_IDS(tok, "a<|endoftext|> ", 'a', 261, ' '); /* id b is byte b */
    lens_tok_free(tok);
}

Test(hf_json, decode_uses_byte_level_and_literal_added_tokens) {
    lens_err err = {0};
    lens_tokenizer *tok = load_json(tiny_tokenizer_json(), &err);
    cr_assert_not_null(tok, "%s", err.msg);
    const int32_t ids[] = {259, 32, 260, 261};
    size_t len;
    char *text = decode(tok, ids, 4, &len);
    cr_assert_str_eq(text, "hello <mask><|endoftext|>");
    free(text);
    lens_tok_free(tok);
}

static void assert_json_refused(json_t *root, const char *needle) {
    lens_err err = {0};
    lens_tokenizer *tok = load_json(root, &err);
    cr_assert_null(tok);
    cr_assert(strstr(err.msg, needle), "message \"%s\" lacks \"%s\"", err.msg, needle);
}

Test(hf_json, refuses_other_models) {
    json_t *root = tiny_tokenizer_json();
    json_object_set_new(json_object_get(root, "model"), "type", json_string("WordPiece"));
    assert_json_refused(root, "model type \"WordPiece\" is not supported");
}

/* Steps and fields lensd does not run are refused by name, never guessed. */
Test(hf_json, refuses_unsupported_steps) {
    json_t *root = tiny_tokenizer_json();
    json_object_set_new(root, "normalizer", json_pack("{s:s}", "type", "Lowercase"));
    assert_json_refused(root, "normalizer \"Lowercase\" is not supported");
    root = tiny_tokenizer_json();
    json_object_set_new(root, "normalizer",
                        json_pack("{s:s, s:[{s:s}, {s:s}]}", "type", "Sequence", "normalizers",
                                  "type", "NFC", "type", "BertNormalizer"));
    assert_json_refused(root, "normalizer \"BertNormalizer\" is not supported");
    root = tiny_tokenizer_json();
    json_object_set_new(root, "pre_tokenizer", json_pack("{s:s}", "type", "Whitespace"));
    assert_json_refused(root, "pre_tokenizer \"Whitespace\" is not supported");
    root = tiny_tokenizer_json();
    json_object_set_new(root, "pre_tokenizer",
                        json_pack("{s:s, s:[{s:s, s:b}, {s:s, s:b}]}", "type", "Sequence",
                                  "pretokenizers", "type", "ByteLevel", "add_prefix_space", 0,
                                  "type", "Digits", "individual_digits", 1));
    assert_json_refused(root, "ByteLevel step before other steps");
    root = tiny_tokenizer_json();
    json_object_set_new(root, "decoder", json_pack("{s:s}", "type", "WordPiece"));
    assert_json_refused(root, "decoder \"WordPiece\" is not supported");
    root = tiny_tokenizer_json();
    json_object_set_new(root, "post_processor", json_pack("{s:s}", "type", "Mystery"));
    assert_json_refused(root, "post_processor \"Mystery\" is not supported");
    root = tiny_tokenizer_json();
    json_object_set_new(json_object_get(root, "model"), "dropout", json_real(0.1));
    assert_json_refused(root, "model.dropout");
}

/* Regex features that Oniguruma (HF) and PCRE2 read differently. */
Test(hf_json, refuses_regexes_read_differently) {
    const char *patterns[] = {"\\w+", "\\b", "^a", "a$", "[\\S]", "(?m:.)", "[a&&b]", "\\h"};
    const char *named[] = {"\\w", "\\b", "^", "$", "\\S inside", "(?m)", "&&", "\\h"};
    for (size_t i = 0; i < sizeof patterns / sizeof patterns[0]; i++) {
        json_t *root = tiny_tokenizer_json();
        json_object_set_new(root, "pre_tokenizer",
                            json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b}]}",
                                      "type", "Sequence", "pretokenizers", "type", "Split",
                                      "pattern", "Regex", patterns[i], "behavior", "Isolated",
                                      "invert", 0, "type", "ByteLevel", "add_prefix_space", 0,
                                      "use_regex", 0));
        assert_json_refused(root, named[i]);
    }
}

/* single_word: the token matches only where no word character touches it. */
Test(hf_json, single_word_added_tokens) {
    json_t *root = tiny_tokenizer_json();
    json_t *added = json_object_get(root, "added_tokens");
    json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 262,
                                           "content", "lo", "single_word", 1, "lstrip", 0, "rstrip",
                                           0, "normalized", 0, "special", 0));
    lens_err err = {0};
    lens_tokenizer *tok = load_json(root, &err);
    cr_assert_not_null(tok, "%s", err.msg);
    ASSERT_IDS(tok, "lo", 262);
    ASSERT_IDS(tok, "a lo.", 'a', ' ', 262, '.');
    ASSERT_IDS(tok, "hello", 259);                       /* inside a word: BPE, not the token */
    ASSERT_IDS(tok, "lo\xc3\xa9", 'l', 'o', 0xC3, 0xA9); /* é is a word character */
    lens_tok_free(tok);
}
Test(hf_json, refuses_bad_merges) {
    json_t *root = tiny_tokenizer_json();
    json_array_append_new(json_object_get(json_object_get(root, "model"), "merges"),
                          json_string("nospace"));
    assert_json_refused(root, "model.merges[4]");
    root = tiny_tokenizer_json();
    json_array_append_new(json_object_get(json_object_get(root, "model"), "merges"),
                          json_string("o o"));
    assert_json_refused(root, "\"oo\" is not in the vocabulary");
}

/* ---- model directories (lens_tok_load_dir) -------------------------------- */

/* A fresh temporary directory. */
static char *make_temp_dir(void) {
    char *dir = strdup("/tmp/lens_tok_dir_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    return dir;
}

static void write_file(const char *dir, const char *name, const void *bytes, size_t len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    cr_assert_eq(fwrite(bytes, 1, len, f), len);
    fclose(f);
}

static void remove_dir(char *dir) {
    char command[4200];
    snprintf(command, sizeof command, "rm -rf '%s'", dir);
    cr_assert_eq(system(command), 0);
    free(dir);
}

/* A protobuf writer, enough for a SentencePiece ModelProto. */
typedef struct pb_out {
    uint8_t bytes[65536];
    size_t len;
} pb_out;

static void pb_varint(pb_out *o, uint64_t v) {
    do {
        o->bytes[o->len++] = (uint8_t)((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
        v >>= 7;
    } while (v);
}

static void pb_bytes(pb_out *o, unsigned field, const void *bytes, size_t len) {
    pb_varint(o, field << 3 | 2);
    pb_varint(o, len);
    memcpy(o->bytes + o->len, bytes, len);
    o->len += len;
}

static void spm_piece(pb_out *o, const char *piece, int type) {
    pb_out p = {.len = 0};
    pb_bytes(&p, 1, piece, strlen(piece));
    p.bytes[p.len++] = 2 << 3 | 5; /* score: a float, ignored by the converter */
    memset(p.bytes + p.len, 0, 4);
    p.len += 4;
    pb_varint(&p, 3 << 3);
    pb_varint(&p, (uint64_t)type);
    pb_bytes(o, 1, p.bytes, p.len);
}

/* A SentencePiece BPE model: <unk> <s> </s>, the 256 byte pieces (ids
 * 3..258), then "▁" 259, "a" 260, "b" 261, "▁a" 262, "ab" 263, "▁ab" 264. */
static void write_spm(const char *dir, int model_type) {
    static pb_out o;
    o.len = 0;
    spm_piece(&o, "<unk>", 2);
    spm_piece(&o, "<s>", 3);
    spm_piece(&o, "</s>", 3);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        spm_piece(&o, name, 6);
    }
    const char *pieces[] = {"\xe2\x96\x81",
                            "a",
                            "b",
                            "\xe2\x96\x81"
                            "a",
                            "ab",
                            "\xe2\x96\x81"
                            "ab"};
    for (int i = 0; i < 6; i++)
        spm_piece(&o, pieces[i], 1);
    pb_out trainer = {.len = 0};
    pb_varint(&trainer, 3 << 3);
    pb_varint(&trainer, (uint64_t)model_type);
    pb_bytes(&o, 2, trainer.bytes, trainer.len);
    write_file(dir, "tokenizer.model", o.bytes, o.len);
}

static lens_tokenizer *load_dir(const char *dir, lens_tok_specials *specials) {
    lens_err err = {0};
    lens_tokenizer *tok = lens_tok_load_dir(dir, specials, &err);
    cr_assert_not_null(tok, "%s", err.msg);
    return tok;
}

static void assert_dir_refused(const char *dir, const char *needle) {
    lens_err err = {0};
    cr_assert_null(lens_tok_load_dir(dir, NULL, &err));
    cr_assert(strstr(err.msg, needle), "message \"%s\" lacks \"%s\"", err.msg, needle);
}

static void assert_decodes(const lens_tokenizer *tok, const int32_t *ids, size_t n,
                           const char *expected) {
    size_t len;
    char *text = decode(tok, ids, n, &len);
    cr_assert_str_eq(text, expected);
    free(text);
}

/* LlamaTokenizerFast's conversion: Metaspace with "first", merges generated
 * in piece order, byte fallback, control pieces as added tokens, and the
 * Replace / ByteFallback / Fuse / Strip decoder. */
Test(load_dir, sentencepiece_model) {
    char *dir = make_temp_dir();
    write_spm(dir, 2);
    lens_tok_specials sp;
    lens_tokenizer *tok = load_dir(dir, &sp);
    cr_assert_eq(lens_tok_vocab_size(tok), 265);
    ASSERT_IDS(tok, "ab ab", 264, 264);
    ASSERT_IDS(tok, "\xc3\xa9", 259, 3 + 0xC3, 3 + 0xA9);
    ASSERT_IDS(tok, "<s>ab", 1, 263); /* no "▁" after an added token */
    assert_decodes(tok, (const int32_t[]){264, 264}, 2, "ab ab");
    assert_decodes(tok, (const int32_t[]){259, 3 + 0xC3, 3 + 0xA9}, 3, "\xc3\xa9");
    assert_decodes(tok, (const int32_t[]){3 + 0xC3, 260}, 2,
                   "\xef\xbf\xbd"
                   "a");
    assert_decodes(tok, (const int32_t[]){1, 262}, 2, "<s> a");
    /* transformers 5.23 adds no BOS unless the config asks. */
    cr_assert(sp.bos_id == 1 && sp.eos_id == 2 && sp.unk_id == 0 && sp.pad_id == -1);
    cr_assert(!sp.adds_bos && !sp.adds_eos);
    lens_tok_free(tok);
    const char config[] = "{\"add_bos_token\": true, \"legacy\": true, \"model_max_length\": "
                          "1000000000000000019884624838656}";
    write_file(dir, "tokenizer_config.json", config, sizeof config - 1);
    tok = load_dir(dir, &sp);
    cr_assert(sp.adds_bos && !sp.adds_eos && sp.bos_id == 1);
    ASSERT_IDS(tok, "<s>ab", 1, 264); /* legacy: "always" */
    lens_tok_free(tok);
    write_spm(dir, 1);
    assert_dir_refused(dir, "SentencePiece model type 1 is not supported");
    write_file(dir, "tokenizer.model", "\x0a\xff\xff", 3);
    assert_dir_refused(dir, "not a SentencePiece model");
    remove_dir(dir);
}

/* Llama 3's tiktoken file: ranks as ids, merges generated, Meta's regex and
 * special tokens, BOS added. */
Test(load_dir, tiktoken_model) {
    char *dir = make_temp_dir();
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static char text[8192];
    size_t len = 0;
    for (int b = 0; b < 256; b++)
        len += (size_t)snprintf(text + len, sizeof text - len, "%c%c== %d\n", b64[b >> 2],
                                b64[(b & 3) << 4], b);
    /* "he" 256, "ll" 257, "hell" 258 */
    len += (size_t)snprintf(text + len, sizeof text - len, "aGU= 256\nbGw= 257\naGVsbA== 258\n");
    write_file(dir, "tokenizer.model", text, len);
    lens_tok_specials sp;
    lens_tokenizer *tok = load_dir(dir, &sp);
    cr_assert_eq(lens_tok_vocab_size(tok), 259 + 256);
    ASSERT_IDS(tok, "hello world", 258, 'o', ' ', 'w', 'o', 'r', 'l', 'd');
    ASSERT_IDS(tok, "<|begin_of_text|>hell", 259, 258);
    cr_assert_eq(lens_tok_lookup(tok, "<|eot_id|>"), 259 + 9);
    cr_assert(sp.bos_id == 259 && sp.eos_id == 260 && sp.adds_bos && !sp.adds_eos);
    assert_decodes(tok, (const int32_t[]){259, 258, 'o'}, 3, "<|begin_of_text|>hello");
    lens_tok_free(tok);
    const char bad[] = "aGU= 1\naGU 2\n";
    write_file(dir, "tokenizer.model", bad, sizeof bad - 1);
    assert_dir_refused(dir, "line 2 is not a base64 token and a rank");
    remove_dir(dir);
}

/* vocab.json + merges.txt: the class's pipeline and default special tokens. */
Test(load_dir, vocab_and_merges_by_class) {
    char vocab[4096], merges[4096];
    gpt2_paths(vocab, merges, sizeof vocab);
    char *dir = make_temp_dir();
    char command[12000];
    snprintf(command, sizeof command, "cp '%s' '%s' '%s'/", vocab, merges, dir);
    cr_assert_eq(system(command), 0);
    lens_tok_specials sp;
    lens_tokenizer *tok = load_dir(dir, &sp);
    ASSERT_IDS(tok, "Hello world<|endoftext|>", 15496, 995, 50256);
    cr_assert(sp.bos_id == 50256 && sp.eos_id == 50256 && sp.unk_id == 50256 && sp.pad_id == -1);
    cr_assert(!sp.adds_bos);
    lens_tok_free(tok);
    const char with_bos[] = "{\"tokenizer_class\": \"GPT2TokenizerFast\", \"add_bos_token\": true,"
                            " \"pad_token\": \"<pad>\"}";
    write_file(dir, "tokenizer_config.json", with_bos, sizeof with_bos - 1);
    tok = load_dir(dir, &sp);
    cr_assert(sp.adds_bos && sp.bos_id == 50256);
    cr_assert_eq(sp.pad_id, 50257, "a named token missing from the vocabulary is added");
    ASSERT_IDS(tok, "a<pad>", 64, 50257);
    lens_tok_free(tok);
    const char bert[] = "{\"tokenizer_class\": \"BertTokenizer\"}";
    write_file(dir, "tokenizer_config.json", bert, sizeof bert - 1);
    assert_dir_refused(dir, "tokenizer_class \"BertTokenizer\" is not supported");
    const char broken[] = "{\"tokenizer_class\": ";
    write_file(dir, "tokenizer_config.json", broken, sizeof broken - 1);
    assert_dir_refused(dir, "tokenizer_config.json");
    remove_dir(dir);
}

Test(load_dir, empty_directory_is_named) {
    char *dir = make_temp_dir();
    assert_dir_refused(dir, "no tokenizer.json, tokenizer.model or vocab.json + merges.txt");
    assert_dir_refused(dir, dir);
    remove_dir(dir);
}

/* A tokenizer.json's post-processor says what a sequence gets, unless the
 * config's add_bos_token / add_eos_token say otherwise (transformers). */
Test(load_dir, post_processor_and_config_flags) {
    char *dir = make_temp_dir();
    json_t *root = tiny_tokenizer_json();
    json_object_set_new(root, "post_processor",
                        json_pack("{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}], s:{s:{s:s, s:[i]}}}",
                                  "type", "TemplateProcessing", "single", "SpecialToken", "id",
                                  "<|endoftext|>", "type_id", 0, "Sequence", "id", "A", "type_id",
                                  0, "special_tokens", "<|endoftext|>", "id", "<|endoftext|>",
                                  "ids", 261));
    char *text = json_dumps(root, 0);
    write_file(dir, "tokenizer.json", text, strlen(text));
    free(text);
    json_decref(root);
    lens_tok_specials sp;
    lens_tokenizer *tok = load_dir(dir, &sp);
    cr_assert(sp.adds_bos && sp.bos_id == 261 && !sp.adds_eos, "bos %d", sp.bos_id);
    lens_tok_free(tok);
    const char flags[] = "{\"bos_token\": \"<mask>\", \"eos_token\": \"<|endoftext|>\", "
                         "\"add_bos_token\": false, \"add_eos_token\": true}";
    write_file(dir, "tokenizer_config.json", flags, sizeof flags - 1);
    tok = load_dir(dir, &sp);
    cr_assert(!sp.adds_bos && sp.adds_eos && sp.bos_id == 260 && sp.eos_id == 261);
    lens_tok_free(tok);
    const char clash[] = "{\"bos_token\": \"<mask>\"}";
    write_file(dir, "tokenizer_config.json", clash, sizeof clash - 1);
    assert_dir_refused(dir, "adds id 261 as BOS but the BOS token is id 260");
    remove_dir(dir);
}

/* ---- plain token lists --------------------------------------------------- */

Test(token_list, chars_with_multichar_entries) {
    const char *tokens[] = {"[start]", "(", ")", "[pad]", "a", "\xc3\xa9"};
    lens_err err = {0};
    lens_tokenizer *tok = lens_tok_from_list(tokens, 6, LENS_SPLIT_CHARS, &err);
    cr_assert_not_null(tok, "%s", err.msg);
    cr_assert_eq(lens_tok_vocab_size(tok), 6);
    cr_assert_eq(lens_tok_lookup(tok, "[pad]"), 3);
    ASSERT_IDS(tok, "[start](()", 0, 1, 1, 2);
    ASSERT_IDS(tok, "a\xc3\xa9[pad][pad]", 4, 5, 3, 3);
    assert_encode_error(tok, "a[b", 3, "\"[\" (at byte 1) is not in the token list");
    assert_encode_error(tok, "a \xff", 3, "invalid UTF-8 at byte 2");
    const int32_t ids[] = {0, 1, 5, 2};
    size_t len;
    char *text = decode(tok, ids, 4, &len);
    cr_assert_str_eq(text, "[start](\xc3\xa9)");
    free(text);
    lens_tok_free(tok);
}

Test(token_list, whitespace_split) {
    const char *tokens[] = {"BOS", "1", "+", "12", "="};
    lens_err err = {0};
    lens_tokenizer *tok = lens_tok_from_list(tokens, 5, LENS_SPLIT_WHITESPACE, &err);
    cr_assert_not_null(tok, "%s", err.msg);
    ASSERT_IDS(tok, "BOS 1 + 12  =\n\t1 ", 0, 1, 2, 3, 4, 1);
    assert_ids(tok, "   ", 3, NULL, 0);
    assert_encode_error(tok, "1 + 13", 6, "\"13\" (at byte 4) is not in the token list");
    const int32_t ids[] = {1, 2, 3};
    size_t len;
    char *text = decode(tok, ids, 3, &len);
    cr_assert_str_eq(text, "1 + 12");
    free(text);
    cr_assert_null(lens_tok_decode(tok, (const int32_t[]){5}, 1, &len, &err));
    lens_tok_free(tok);
}

Test(token_list, refuses_bad_lists) {
    lens_err err = {0};
    cr_assert_null(lens_tok_from_list(NULL, 0, LENS_SPLIT_CHARS, &err));
    cr_assert(strstr(err.msg, "empty"), "%s", err.msg);
    const char *dup[] = {"a", "b", "a"};
    cr_assert_null(lens_tok_from_list(dup, 3, LENS_SPLIT_CHARS, &err));
    cr_assert(strstr(err.msg, "token 2 (\"a\") duplicates token 0"), "%s", err.msg);
    const char *blank[] = {"a", ""};
    cr_assert_null(lens_tok_from_list(blank, 2, LENS_SPLIT_WHITESPACE, &err));
    cr_assert(strstr(err.msg, "token 1 is empty"), "%s", err.msg);
    const char *invalid[] = {"a", "\xc0\xaf"};
    cr_assert_null(lens_tok_from_list(invalid, 2, LENS_SPLIT_CHARS, &err));
    cr_assert(strstr(err.msg, "token 1: invalid UTF-8 at byte 0"), "%s", err.msg);
}

Test(token_list, free_accepts_null) {
    lens_tok_free(NULL);
}
