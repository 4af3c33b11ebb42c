/*
 * tokenizer.c: text <-> token ids as Hugging Face's `tokenizers` library
 * computes them, for BPE models and for plain token lists. The contract is in
 * tokenizer.h; the pipeline's data structure in tokenizer_internal.h. This
 * file holds the tables, GPT-2's two-file loader, the token-list tokenizer,
 * and running the pipeline; tokenizer_json.c and tokenizer_dir.c fill it from
 * files.
 *
 * Encoding follows HF step by step, so that ids match exactly:
 *  1. added tokens whose text is matched raw (normalized false) are cut out
 *     first, leftmost-longest (a byte trie), with lstrip/rstrip/single_word;
 *  2. each remaining segment goes through the normalizers (NFC through
 *     utf8proc, Prepend, Replace, Strip), then the added tokens matched on
 *     normalized text are cut out of it;
 *  3. the pre-tokenizer steps (Split, Digits, Metaspace, ByteLevel) cut the
 *     rest into words, each step streaming its pieces into the next;
 *  4. each word starts as one symbol per character (per byte for byte-level
 *     words; unknown characters become <0xNN> byte tokens or the unknown
 *     token), and adjacent symbols are merged lowest merge rank first (a
 *     min-heap of candidate pairs over a linked list, stale ones skipped).
 * Decoding runs HF's decoders (ByteLevel, Metaspace, Replace, ByteFallback,
 * Fuse, Strip) over the tokens' texts; a ByteLevel-only decoder is a table of
 * bytes per id.
 *
 * What it deliberately is not: a general tokenizers interpreter (WordPiece,
 * Unigram, BERT-style normalizers are refused by the loaders, never
 * approximated). There is no per-word cache: a loaded tokenizer is never
 * written again, so threads share it without locks.
 */
#include "core/tokenizer_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/*
 * The GPT-2 pre-tokenizer regex. HF runs it on Oniguruma, whose \s is the
 * Unicode White_Space property; PCRE2's \s with UCP also takes U+180E (the
 * Mongolian vowel separator, White_Space until Unicode 6.3), so the class is
 * spelled out. (?![^WS]) is (?!\S).
 * Every character matches some alternative, so the matches tile the text.
 */
#define WS                                                                                         \
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"             \
    "\\x{202F}\\x{205F}\\x{3000}"
static const char GPT2_PATTERN[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+"
                                   "| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";

/* ---- string -> id hash table (open addressing, linear probing) ---------- */

/* Key bytes live in blocks that are never moved (slots point into them) and
 * are freed together with the table. */
struct key_block {
    struct key_block *next;
    size_t used, cap;
    char bytes[];
};

static uint32_t hash_bytes(const char *s, size_t len) {
    uint32_t h = 0x811c9dc5u; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x01000193u;
    }
    return h;
}

static str_slot *str_table_find(const str_table *t, const char *key, size_t len, uint32_t hash) {
    size_t mask = t->cap - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        str_slot *s = &t->slots[i];
        if (!s->key) return s;
        if (s->hash == hash && s->len == len && memcmp(s->key, key, len) == 0) return s;
    }
}

/* Makes room for at least n keys at most half full. */
int str_table_reserve(str_table *t, size_t n) {
    if (2 * n <= t->cap) return 0;
    size_t cap = t->cap ? t->cap : 1024;
    while (cap < 2 * n)
        cap *= 2;
    str_slot *slots = calloc(cap, sizeof *slots);
    if (!slots) return -1;
    str_table bigger = {slots, cap, t->count, t->keys};
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].key)
            *str_table_find(&bigger, t->slots[i].key, t->slots[i].len, t->slots[i].hash) =
                t->slots[i];
    free(t->slots);
    *t = bigger;
    return 0;
}

/* A stable copy of key[len] (NUL-terminated) in the table's key blocks. */
static const char *str_table_store(str_table *t, const char *key, size_t len) {
    if (!t->keys || t->keys->cap - t->keys->used < len + 1) {
        size_t cap = len + 1 > 65536 ? len + 1 : 65536;
        key_block *block = malloc(sizeof *block + cap);
        if (!block) return NULL;
        *block = (key_block){t->keys, 0, cap};
        t->keys = block;
    }
    char *copy = t->keys->bytes + t->keys->used;
    memcpy(copy, key, len);
    copy[len] = '\0';
    t->keys->used += len + 1;
    return copy;
}

const char *str_table_put(str_table *t, const char *key, size_t len, int32_t id) {
    if (len >= UINT32_MAX || str_table_reserve(t, t->count + 1) < 0) return NULL;
    uint32_t hash = hash_bytes(key, len);
    str_slot *s = str_table_find(t, key, len, hash);
    if (!s->key) {
        const char *copy = str_table_store(t, key, len);
        if (!copy) return NULL;
        *s = (str_slot){copy, (uint32_t)len, hash, id};
        t->count++;
    }
    s->id = id;
    return s->key;
}

int32_t str_table_get(const str_table *t, const char *key, size_t len) {
    if (t->cap == 0 || len >= UINT32_MAX) return -1;
    const str_slot *s = str_table_find(t, key, len, hash_bytes(key, len));
    return s->key ? s->id : -1;
}

void str_table_free(str_table *t) {
    for (key_block *b = t->keys, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    free(t->slots);
}

/* ---- (left id, right id) -> merge hash table ---------------------------- */

#define NO_PAIR UINT64_MAX

static uint64_t pack_pair(int32_t left, int32_t right) {
    return (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
}

static merge_slot *merge_table_find(const merge_table *t, uint64_t pair) {
    size_t mask = t->cap - 1;
    for (size_t i = (pair * 0x9e3779b97f4a7c15ull) >> 20 & mask;; i = (i + 1) & mask) {
        merge_slot *s = &t->slots[i];
        if (s->pair == pair || s->pair == NO_PAIR) return s;
    }
}

/* Makes room for at least n merges at most half full. */
int merge_table_reserve(merge_table *t, size_t n) {
    if (2 * n <= t->cap) return 0;
    size_t cap = t->cap ? t->cap : 1024;
    while (cap < 2 * n)
        cap *= 2;
    merge_slot *slots = malloc(cap * sizeof *slots);
    if (!slots) return -1;
    for (size_t i = 0; i < cap; i++)
        slots[i].pair = NO_PAIR;
    merge_table bigger = {slots, cap, t->count};
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].pair != NO_PAIR) *merge_table_find(&bigger, t->slots[i].pair) = t->slots[i];
    free(t->slots);
    *t = bigger;
    return 0;
}

/* A pair listed twice keeps its later rank, as HF's merge map does. */
static int merge_table_put(merge_table *t, int32_t left, int32_t right, int32_t rank,
                           int32_t merged) {
    if (merge_table_reserve(t, t->count + 1) < 0) return -1;
    merge_slot *s = merge_table_find(t, pack_pair(left, right));
    if (s->pair == NO_PAIR) t->count++;
    *s = (merge_slot){pack_pair(left, right), rank, merged};
    return 0;
}

static const merge_slot *merge_table_get(const merge_table *t, int32_t left, int32_t right) {
    if (t->cap == 0) return NULL;
    const merge_slot *s = merge_table_find(t, pack_pair(left, right));
    return s->pair == NO_PAIR ? NULL : s;
}

/* ---- UTF-8 -------------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at s[0 .. n) (n >= 1), or 0 if
 * there is none; then *invalid_len is the length of the maximal subpart of a
 * sequence (Unicode's "maximal subpart", what from_utf8_lossy replaces with one
 * U+FFFD). Overlongs, surrogates and code points above U+10FFFF are invalid. */
static size_t utf8_sequence(const uint8_t *s, size_t n, size_t *invalid_len) {
    uint8_t b = s[0];
    if (b < 0x80) return 1;
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (b >= 0xC2 && b <= 0xDF) {
        need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        if (b == 0xE0) lo = 0xA0; /* overlong */
        if (b == 0xED) hi = 0x9F; /* surrogates */
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        if (b == 0xF0) lo = 0x90; /* overlong */
        if (b == 0xF4) hi = 0x8F; /* above U+10FFFF */
    } else {
        *invalid_len = 1;
        return 0;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n || s[i] < lo || s[i] > hi) {
            *invalid_len = i;
            return 0;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

size_t tok_utf8_len(const uint8_t *s, size_t n) {
    size_t invalid_len;
    return n ? utf8_sequence(s, n, &invalid_len) : 0;
}

static int utf8_validate(const char *text, size_t len, lens_err *err) {
    const uint8_t *s = (const uint8_t *)text;
    size_t invalid_len;
    for (size_t i = 0; i < len;) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = utf8_sequence(s + i, len - i, &invalid_len);
        if (n == 0) {
            lens_err_set(err, "invalid UTF-8 at byte %zu", i);
            return -1;
        }
        i += n;
    }
    return 0;
}

uint32_t tok_utf8_decode(const uint8_t *s, size_t n) {
    static const uint8_t lead_mask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
    uint32_t cp = s[0] & lead_mask[n];
    for (size_t i = 1; i < n; i++)
        cp = cp << 6 | (s[i] & 0x3F);
    return cp;
}

size_t tok_utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The code point at s[0 .. n) of valid UTF-8 and its length in *len. */
static uint32_t next_char(const char *s, size_t n, size_t *len) {
    size_t invalid_len;
    *len = utf8_sequence((const uint8_t *)s, n, &invalid_len);
    return tok_utf8_decode((const uint8_t *)s, *len);
}

/* Start of the character that ends at s[end] (valid UTF-8, end > 0). */
static size_t char_start_before(const char *s, size_t end) {
    size_t start = end - 1;
    while (start > 0 && ((uint8_t)s[start] & 0xC0) == 0x80)
        start--;
    return start;
}

/* Rust's char::is_whitespace, i.e. the Unicode White_Space property. */
static bool is_unicode_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* Rust's char::is_numeric: general categories Nd, Nl and No. Rust's tables
 * are newer than utf8proc 2.8's (Unicode 15): the numbers they have beyond
 * it are listed, as HF tokenizers 0.23.3's Digits classifies them. */
static bool is_numeric(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    static const uint32_t rust_extra[][2] = {
        {0x10D40, 0x10D49}, {0x116D0, 0x116E3}, {0x11BF0, 0x11BF9},
        {0x11DE0, 0x11DE9}, {0x16130, 0x16139}, {0x16D70, 0x16D79},
        {0x16FF4, 0x16FF6}, {0x1CCF0, 0x1CCF9}, {0x1E5F1, 0x1E5FA}};
    for (size_t i = 0; i < sizeof rust_extra / sizeof rust_extra[0]; i++)
        if (cp >= rust_extra[i][0] && cp <= rust_extra[i][1]) return true;
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

/* The regex crate's \w, which HF's single_word tests beside an added token:
 * Alphabetic, marks, decimal digits, connector punctuation, join controls.
 * Alphabetic is taken as the letters, Nl, and the symbols with the
 * Other_Alphabetic property (circled and squared Latin letters). */
static bool is_word_char(uint32_t cp) {
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
               cp == '_';
    if (cp == 0x200C || cp == 0x200D || (cp >= 0x24B6 && cp <= 0x24E9) ||
        (cp >= 0x1F130 && cp <= 0x1F149) || (cp >= 0x1F150 && cp <= 0x1F169) ||
        (cp >= 0x1F170 && cp <= 0x1F189))
        return true;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return false;
    }
}

/* ---- GPT-2's byte <-> printable character mapping ----------------------- */

/* GPT-2 spells each byte as a printable character: the printable Latin-1
 * bytes as themselves, the other 68 as U+0100.. in byte order (space is
 * U+0120 'Ġ'). This is bytes_to_unicode() of GPT-2's encoder.py. */
static bool is_printable_byte(unsigned b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
}

/* The 68 others, in order: 0x00-0x20, 0x7F-0xA0, 0xAD. */
uint32_t tok_byte_char(uint8_t b) {
    if (is_printable_byte(b)) return b;
    return 256 + (b <= 0x20 ? b : b <= 0xA0 ? 33u + (b - 0x7Fu) : 67u);
}

/* The byte GPT-2's character cp spells, or -1. */
static int char_byte(uint32_t cp) {
    if (cp < 0x100) return is_printable_byte(cp) ? (int)cp : -1;
    if (cp >= 0x100 + 68) return -1;
    uint32_t k = cp - 0x100; /* the k-th non-printable byte */
    return k < 33 ? (int)k : k < 67 ? (int)(0x7F + k - 33) : 0xAD;
}

/* The bytes a token's text stands for under HF's ByteLevel decoder: its
 * characters mapped back to bytes if every one of them spells a byte, else
 * its own UTF-8 text (e.g. "<|endoftext|>"'s literal text). Writes at most
 * len bytes to out and returns how many. */
static size_t byte_level_bytes(const char *text, size_t len, char *out) {
    size_t n_out = 0;
    for (size_t i = 0; i < len;) {
        size_t n;
        uint32_t cp = next_char(text + i, len - i, &n);
        int b = n ? char_byte(cp) : -1;
        if (b < 0) {
            memcpy(out, text, len);
            return len;
        }
        out[n_out++] = (char)b;
        i += n;
    }
    return n_out;
}

/* ---- regexes ------------------------------------------------------------- */

static pcre2_code *compile_pcre2(const char *pattern, size_t len, const char *what, lens_err *err) {
    int code;
    PCRE2_SIZE offset;
    pcre2_code *re =
        pcre2_compile((PCRE2_SPTR)pattern, len, PCRE2_UTF | PCRE2_UCP, &code, &offset, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        lens_err_set(err, "%s: regex \"%.*s\": %s at offset %zu", what,
                     (int)(len > 200 ? 200 : len), pattern, (char *)msg, (size_t)offset);
        return NULL;
    }
    /* Without JIT support pcre2_match interprets the pattern: slower, same
     * matches, so a failure here is not an error. */
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    return re;
}

/*
 * HF compiles Regex patterns with Oniguruma (Ruby syntax). The patterns of
 * real tokenizers read the same in PCRE2 but for \s (spelled out as above)
 * and the Unicode version: tokenizers 0.23's Oniguruma has Unicode 16.0,
 * PCRE2 10.42 has 14.0, so \p{L}, \p{N} and \d get the characters that
 * Oniguruma has in them beyond PCRE2 (the tables below: every code point
 * classified by both, as HF tokenizers 0.23.3 and PCRE2 10.42 do; other
 * \p{...} classes are taken as PCRE2 has them). What the two engines read
 * differently is refused: \w \W \b \B (Unicode word classes differ), \h \H
 * (a hex digit in Oniguruma), \S and negated classes inside a class, ^ and
 * $ (line anchors in Ruby syntax), (?m) (dot-all in Ruby) and class
 * intersection (&&). \uHHHH becomes \x{HHHH}.
 */
#define ONIG_EXTRA_LETTERS                                                                         \
    "\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CD}\\x{A7DA}-\\x{A7DC}\\x{105C0}-\\x{105F3}"               \
    "\\x{10D4A}-\\x{10D65}\\x{10D6F}-\\x{10D85}\\x{10EC2}-\\x{10EC4}"                              \
    "\\x{1123F}-\\x{11240}\\x{11380}-\\x{11389}\\x{1138B}\\x{1138E}"                               \
    "\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}\\x{113D3}\\x{11BC0}-\\x{11BE0}"                     \
    "\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}\\x{1342F}"                               \
    "\\x{13441}-\\x{13446}\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}"                              \
    "\\x{16D40}-\\x{16D6C}\\x{18CFF}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}"                     \
    "\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}"                    \
    "\\x{2B739}\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}"
#define ONIG_EXTRA_NUMBERS                                                                         \
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}"                              \
    "\\x{11F50}-\\x{11F59}\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}"                              \
    "\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}\\x{1E4F0}-\\x{1E4F9}"                              \
    "\\x{1E5F1}-\\x{1E5FA}"
#define ONIG_EXTRA_DIGITS                                                                          \
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}"                              \
    "\\x{11F50}-\\x{11F59}\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}"                              \
    "\\x{1CCF0}-\\x{1CCF9}\\x{1E4F0}-\\x{1E4F9}\\x{1E5F1}-\\x{1E5FA}"

/* What Oniguruma's class that pattern[at..] (just after a backslash) names
 * has beyond PCRE2's, with *name_len the length of its name: \p{L}, \pL,
 * \p{N}, \pN, \d and their negations; else NULL. */
static const char *onig_extra(const char *pattern, size_t at, size_t len, size_t *name_len) {
    static const struct {
        const char *name, *extra;
    } classes[] = {{"p{L}", ONIG_EXTRA_LETTERS}, {"pL", ONIG_EXTRA_LETTERS},
                   {"P{L}", ONIG_EXTRA_LETTERS}, {"PL", ONIG_EXTRA_LETTERS},
                   {"p{N}", ONIG_EXTRA_NUMBERS}, {"pN", ONIG_EXTRA_NUMBERS},
                   {"P{N}", ONIG_EXTRA_NUMBERS}, {"PN", ONIG_EXTRA_NUMBERS},
                   {"d", ONIG_EXTRA_DIGITS},     {"D", ONIG_EXTRA_DIGITS}};
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++) {
        size_t n = strlen(classes[i].name);
        if (at + n <= len && memcmp(pattern + at, classes[i].name, n) == 0) {
            *name_len = n;
            return classes[i].extra;
        }
    }
    return NULL;
}
/* Translates and compiles pattern; with onig_tables false the classes keep
 * PCRE2's tables. *has_classes says whether there were any to extend. */
static pcre2_code *translate_regex(const char *pattern, size_t len, const char *what,
                                   bool onig_tables, bool *has_classes, lens_err *err) {
    size_t cap = 320 * len + 512; /* room for each escape's expansion */
    char *out = malloc(cap);
    if (!out) {
        lens_err_set(err, "out of memory");
        return NULL;
    }
    size_t n = 0;
    int class_depth = 0;
    const char *refused = NULL;
    char escape[3] = "\\?";
    for (size_t i = 0; i < len && !refused; i++) {
        char c = pattern[i];
        if (n + 400 > cap) {
            refused = "(too long)";
            break;
        }
        size_t name_len;
        const char *extra = c == '\\' ? onig_extra(pattern, i + 1, len, &name_len) : NULL;
        if (extra) {
            *has_classes = true;
            if (!onig_tables) extra = "";
            bool negated = pattern[i + 1] == 'P' || pattern[i + 1] == 'D';
            if (negated && class_depth) {
                refused = "a negated property class inside a character class";
                break;
            }
            /* \P{L} outside a class: [^\p{L}...]; \D: [^\d...]. */
            char name[8];
            memcpy(name, pattern + i + 1, name_len);
            name[0] = negated ? (char)(name[0] + ('a' - 'A')) : name[0];
            n += (size_t)sprintf(out + n,
                                 class_depth ? "\\%.*s%s"
                                 : negated   ? "[^\\%.*s%s]"
                                             : "[\\%.*s%s]",
                                 (int)name_len, name, extra);
            i += name_len;
            continue;
        }
        if (c == '\\' && i + 1 < len) {
            char e = pattern[++i];
            if (e == 's') {
                n += (size_t)sprintf(out + n, class_depth ? "%s" : "[%s]", WS);
            } else if (e == 'S') {
                if (class_depth) refused = "\\S inside a character class";
                n += (size_t)sprintf(out + n, "[^%s]", WS);
            } else if (strchr("wWbBhH", e)) {
                escape[1] = e;
                refused = escape;
            } else if (e == 'u' && i + 4 < len) {
                n += (size_t)sprintf(out + n, "\\x{%.4s}", pattern + i + 1);
                i += 4;
            } else {
                out[n++] = '\\';
                out[n++] = e;
            }
            continue;
        }
        if (class_depth == 0 && (c == '^' || c == '$')) {
            refused = c == '^' ? "^" : "$";
        } else if (c == '[') {
            class_depth++;
        } else if (c == ']' && class_depth > 0) {
            class_depth--;
        } else if (class_depth && c == '&' && i + 1 < len && pattern[i + 1] == '&') {
            refused = "&&";
        } else if (!class_depth && c == '(' && i + 2 < len && pattern[i + 1] == '?' &&
                   strchr("imx-", pattern[i + 2])) {
            for (size_t k = i + 2; k < len && pattern[k] != ')' && pattern[k] != ':'; k++)
                if (pattern[k] == 'm') refused = "(?m)";
        }
        out[n++] = c;
    }
    pcre2_code *re = NULL;
    if (refused)
        lens_err_set(err, "%s: regex \"%.*s\" uses %s, which Oniguruma and PCRE2 read differently",
                     what, (int)(len > 200 ? 200 : len), pattern, refused);
    else
        re = compile_pcre2(out, n, what, err);
    free(out);
    return re;
}

int tok_compile_regex(const char *pattern, size_t len, const char *what, tok_regex *out,
                      lens_err *err) {
    bool has_classes = false;
    out->full = NULL;
    out->plain = translate_regex(pattern, len, what, false, &has_classes, err);
    if (!out->plain) return -1;
    if (has_classes &&
        !(out->full = translate_regex(pattern, len, what, true, &has_classes, err))) {
        pcre2_code_free(out->plain);
        out->plain = NULL;
        return -1;
    }
    return 0;
}

static void regex_free(tok_regex *re) {
    pcre2_code_free(re->plain);
    pcre2_code_free(re->full);
}

/* Whether s[len] holds a code point of the tables above (all at U+1C89,
 * U+A7CB..U+A7DC or past U+FFFF): then only `full` reads it as HF does. */
static bool needs_onig_tables(const char *s, size_t len) {
    const uint8_t *b = (const uint8_t *)s;
    for (size_t i = 0; i < len; i++) {
        if (b[i] < 0xE1) continue;
        if (b[i] >= 0xF0 || (i + 1 < len && ((b[i] == 0xE1 && b[i + 1] == 0xB2) ||
                                             (b[i] == 0xEA && b[i + 1] == 0x9F))))
            return true;
    }
    return false;
}

/* The compiled regex to run on s[len]. */
static const pcre2_code *regex_for(const tok_regex *re, const char *s, size_t len) {
    return re->full && needs_onig_tables(s, len) ? re->full : re->plain;
}

int tok_gpt2_regex(tok_regex *out, lens_err *err) {
    return tok_compile_regex(GPT2_PATTERN, sizeof GPT2_PATTERN - 1, "GPT-2 pre-tokenizer", out,
                             err);
}

/* ---- loading ------------------------------------------------------------ */

lens_tokenizer *tok_new(tok_kind kind, lens_err *err) {
    lens_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        lens_err_set(err, "out of memory");
        return NULL;
    }
    tok->kind = kind;
    tok->unk_id = -1;
    return tok;
}

/* Records that id spells text (a pointer into a table). With replace false,
 * an id that already spells something is an error. */
static int set_id_text(lens_tokenizer *tok, const char *text, size_t len, int64_t id, bool replace,
                       lens_err *err) {
    if ((size_t)id >= tok->id_text_cap) {
        size_t cap = tok->id_text_cap ? tok->id_text_cap : 1024;
        while (cap <= (size_t)id)
            cap *= 2;
        const char **texts = realloc(tok->id_text, cap * sizeof *texts);
        if (texts) tok->id_text = texts;
        size_t *lens = realloc(tok->id_text_len, cap * sizeof *lens);
        if (lens) tok->id_text_len = lens;
        if (!texts || !lens) {
            lens_err_set(err, "out of memory");
            return -1;
        }
        memset(texts + tok->id_text_cap, 0, (cap - tok->id_text_cap) * sizeof *texts);
        tok->id_text_cap = cap;
    }
    if (tok->id_text[id] && !replace) {
        lens_err_set(err, "id %lld is given to both \"%.64s\" and \"%.64s\"", (long long)id,
                     tok->id_text[id], text);
        return -1;
    }
    tok->id_text[id] = text;
    tok->id_text_len[id] = len;
    if ((size_t)id >= tok->n_ids) tok->n_ids = (size_t)id + 1;
    return 0;
}

static int check_id(const char *text, int64_t id, lens_err *err) {
    if (id < 0 || id >= MAX_TOKEN_ID) {
        lens_err_set(err, "id %lld of \"%.64s\" is out of range [0, %d)", (long long)id, text,
                     MAX_TOKEN_ID);
        return -1;
    }
    return 0;
}

int tok_add_vocab(lens_tokenizer *tok, const char *text, size_t len, int64_t id, lens_err *err) {
    if (check_id(text, id, err) < 0) return -1;
    const char *stored = str_table_put(&tok->vocab, text, len, (int32_t)id);
    if (!stored) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    return set_id_text(tok, stored, len, id, false, err);
}

int32_t tok_lookup(const lens_tokenizer *tok, const char *text, size_t len) {
    int32_t id = str_table_get(&tok->added_by_text, text, len);
    return id >= 0 ? id : str_table_get(&tok->vocab, text, len);
}

int64_t tok_next_added_id(const lens_tokenizer *tok) {
    int64_t next = (int64_t)tok->vocab.count;
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].id >= next) next = tok->added[i].id + 1;
    return next;
}

int tok_add_merge(lens_tokenizer *tok, const char *left, size_t left_len, const char *right,
                  size_t right_len, size_t rank, lens_err *err) {
    int32_t left_id = str_table_get(&tok->vocab, left, left_len);
    int32_t right_id = str_table_get(&tok->vocab, right, right_len);
    /* HF's merged token is left + right[len(prefix)..]. */
    size_t cut = tok->prefix_len <= right_len ? tok->prefix_len : 0;
    size_t joined_len = left_len + right_len - cut;
    char small[256];
    char *joined = joined_len <= sizeof small ? small : malloc(joined_len);
    if (!joined) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    memcpy(joined, left, left_len);
    memcpy(joined + left_len, right + cut, right_len - cut);
    int32_t merged_id = str_table_get(&tok->vocab, joined, joined_len);
    if (left_id < 0 || right_id < 0 || merged_id < 0) {
        const char *missing = left_id < 0 ? left : right_id < 0 ? right : joined;
        size_t missing_len = left_id < 0 ? left_len : right_id < 0 ? right_len : joined_len;
        lens_err_set(err, "merge %zu: \"%.*s\" is not in the vocabulary", rank + 1,
                     (int)(missing_len > 64 ? 64 : missing_len), missing);
        if (joined != small) free(joined);
        return -1;
    }
    if (joined != small) free(joined);
    if (rank >= MAX_TOKEN_ID) {
        lens_err_set(err, "more than %d merges", MAX_TOKEN_ID);
        return -1;
    }
    if (merge_table_put(&tok->merges, left_id, right_id, (int32_t)rank, merged_id) < 0) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    return 0;
}

int tok_add_merge_ids(lens_tokenizer *tok, int32_t left, int32_t right, int32_t merged, size_t rank,
                      lens_err *err) {
    if (rank >= MAX_TOKEN_ID) {
        lens_err_set(err, "more than %d merges", MAX_TOKEN_ID);
        return -1;
    }
    if (merge_table_put(&tok->merges, left, right, (int32_t)rank, merged) < 0) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    return 0;
}

typedef struct byte_buf {
    char *bytes;
    size_t len, cap;
} byte_buf;

static int buf_reserve(byte_buf *b, size_t n) {
    if (n <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < n)
        cap *= 2;
    char *bytes = realloc(b->bytes, cap);
    if (!bytes) return -1;
    b->bytes = bytes;
    b->cap = cap;
    return 0;
}

static int buf_append(byte_buf *b, const char *s, size_t n) {
    if (buf_reserve(b, b->len + n + 1) < 0) return -1;
    if (n) memcpy(b->bytes + b->len, s, n); /* s may be NULL when n is 0 */
    b->len += n;
    return 0;
}

static int normalize(const lens_tokenizer *tok, const char *text, size_t len, byte_buf bufs[2],
                     const char **out, size_t *out_len, lens_err *err);

int tok_add_added(lens_tokenizer *tok, const char *content, size_t len, int64_t id, bool lstrip,
                  bool rstrip, bool normalized, bool single_word, bool special, lens_err *err) {
    if (len == 0) {
        lens_err_set(err, "added token %lld is empty", (long long)id);
        return -1;
    }
    if (check_id(content, id, err) < 0) return -1;
    if (str_table_get(&tok->added_by_text, content, len) >= 0) {
        lens_err_set(err, "added token \"%.64s\" is listed twice", content);
        return -1;
    }
    const char *stored = str_table_put(&tok->added_by_text, content, len, (int32_t)id);
    if (!stored || set_id_text(tok, stored, len, id, true, err) < 0) {
        if (!stored) lens_err_set(err, "out of memory");
        return -1;
    }
    added_token *grown = realloc(tok->added, (tok->n_added + 1) * sizeof *grown);
    if (!grown) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    tok->added = grown;
    added_token *t = &tok->added[tok->n_added];
    *t = (added_token){.len = len,
                       .id = (int32_t)id,
                       .lstrip = lstrip,
                       .rstrip = rstrip,
                       .normalized = normalized,
                       .single_word = single_word,
                       .special = special};
    /* A normalized token is matched as the normalizers spell it. */
    const char *pattern = content;
    size_t pattern_len = len;
    byte_buf bufs[2] = {{0}, {0}};
    if (normalized && tok->n_norms > 0 &&
        normalize(tok, content, len, bufs, &pattern, &pattern_len, err) < 0) {
        free(bufs[0].bytes);
        free(bufs[1].bytes);
        return -1;
    }
    t->content = malloc(len + 1);
    t->pattern = malloc(pattern_len + 1);
    if (t->content && t->pattern) {
        memcpy(t->content, content, len);
        t->content[len] = '\0';
        memcpy(t->pattern, pattern, pattern_len);
        t->pattern[pattern_len] = '\0';
        t->pattern_len = pattern_len;
    }
    free(bufs[0].bytes);
    free(bufs[1].bytes);
    tok->n_added++;
    if (!t->content || !t->pattern) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    return 0;
}

/* Adds added[index]'s pattern to trie. A pattern listed twice keeps the
 * first token, as the first one added wins in HF's automaton. */
static int trie_insert(added_trie *trie, const added_token *t, int32_t index) {
    if (!trie->nodes) {
        trie->cap_nodes = 64;
        trie->nodes = malloc(trie->cap_nodes * sizeof *trie->nodes);
        if (!trie->nodes) return -1;
        trie->nodes[0] = (trie_node){-1, -1, -1, 0};
        trie->n_nodes = 1;
        for (int b = 0; b < 256; b++)
            trie->root_child[b] = -1;
    }
    int32_t node = 0;
    for (size_t i = 0; i < t->pattern_len; i++) {
        uint8_t byte = (uint8_t)t->pattern[i];
        int32_t child = node == 0 ? trie->root_child[byte] : trie->nodes[node].first_child;
        if (node != 0)
            while (child >= 0 && trie->nodes[child].byte != byte)
                child = trie->nodes[child].next_sibling;
        if (child < 0) {
            if (trie->n_nodes == trie->cap_nodes) {
                trie_node *grown = realloc(trie->nodes, 2 * trie->cap_nodes * sizeof *trie->nodes);
                if (!grown) return -1;
                trie->nodes = grown;
                trie->cap_nodes *= 2;
            }
            child = (int32_t)trie->n_nodes++;
            trie->nodes[child] = (trie_node){-1, trie->nodes[node].first_child, -1, byte};
            trie->nodes[node].first_child = child;
            if (node == 0) trie->root_child[byte] = child;
        }
        node = child;
    }
    if (trie->nodes[node].token < 0) trie->nodes[node].token = index;
    trie->only_first = -1;
    for (int b = 0, seen = 0; b < 256; b++) {
        if (trie->root_child[b] < 0) continue;
        trie->only_first = seen++ ? -1 : b;
        if (seen > 1) break;
    }
    return 0;
}

/* The longest pattern of trie that starts at text[at], as an index into
 * added[] (its length in *match_len), or -1. */
static int32_t trie_longest(const added_trie *trie, const char *text, size_t at, size_t end,
                            size_t *match_len) {
    int32_t best = -1;
    int32_t node = trie->root_child[(uint8_t)text[at]];
    for (size_t i = at; node >= 0;) {
        if (trie->nodes[node].token >= 0) {
            best = trie->nodes[node].token;
            *match_len = i + 1 - at;
        }
        if (++i >= end) break;
        uint8_t byte = (uint8_t)text[i];
        node = trie->nodes[node].first_child;
        while (node >= 0 && trie->nodes[node].byte != byte)
            node = trie->nodes[node].next_sibling;
    }
    return best;
}

/* Builds the per-id texts from id_text and drops id_text: each id's bytes
 * under a ByteLevel-only decoder, else its token text. */
static int finish_texts(lens_tokenizer *tok, lens_err *err) {
    size_t total = 0;
    for (size_t i = 0; i < tok->n_ids; i++)
        total += tok->id_text[i] ? tok->id_text_len[i] : 0;
    if (total > UINT32_MAX) {
        lens_err_set(err, "vocabulary text is too large (%zu bytes)", total);
        return -1;
    }
    tok->text_off = malloc((tok->n_ids + 1) * sizeof *tok->text_off);
    tok->text_bytes = malloc(total ? total : 1);
    tok->has_text = malloc(tok->n_ids ? tok->n_ids : 1);
    if (!tok->text_off || !tok->text_bytes || !tok->has_text) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    uint32_t off = 0;
    for (size_t i = 0; i < tok->n_ids; i++) {
        tok->text_off[i] = off;
        const char *text = tok->id_text[i];
        tok->has_text[i] = text != NULL;
        if (!text) continue;
        size_t len = tok->id_text_len[i];
        if (tok->kind == KIND_BPE && tok->decode_bytes) {
            off += (uint32_t)byte_level_bytes(text, len, tok->text_bytes + off);
        } else {
            memcpy(tok->text_bytes + off, text, len);
            off += (uint32_t)len;
        }
    }
    tok->text_off[tok->n_ids] = off;
    free(tok->id_text);
    free(tok->id_text_len);
    tok->id_text = NULL;
    tok->id_text_len = NULL;
    return 0;
}

int tok_finish(lens_tokenizer *tok, lens_err *err) {
    for (unsigned b = 0; b < 256; b++) {
        char spelled[8];
        size_t len = tok_utf8_put(tok_byte_char((uint8_t)b), spelled);
        tok->byte_id[b] = str_table_get(&tok->vocab, spelled, len);
        snprintf(spelled, sizeof spelled, "<0x%02X>", b);
        tok->fallback_id[b] = str_table_get(&tok->vocab, spelled, 6);
    }
    for (unsigned c = 0; c < 128; c++) {
        char one = (char)c;
        tok->ascii_id[c] = str_table_get(&tok->vocab, &one, 1);
    }
    tok->all_bytes = true;
    for (unsigned b = 0; b < 256; b++)
        tok->all_bytes = tok->all_bytes && tok->byte_id[b] >= 0;
    if (tok->unk_token)
        tok->unk_id = str_table_get(&tok->vocab, tok->unk_token, strlen(tok->unk_token));
    for (size_t i = 0; i < tok->n_added; i++) {
        added_trie *trie = tok->added[i].normalized ? &tok->normalized_trie : &tok->raw_trie;
        if (trie_insert(trie, &tok->added[i], (int32_t)i) < 0) {
            lens_err_set(err, "out of memory");
            return -1;
        }
    }
    return finish_texts(tok, err);
}

char *tok_read_file(const char *path, size_t *len, lens_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        lens_err_set(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1) break;
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) free(buf);
        buf = bigger;
        cap *= 2;
    }
    bool failed = ferror(f);
    fclose(f);
    if (!buf) {
        lens_err_set(err, "%s: out of memory", path);
        return NULL;
    }
    if (failed) {
        free(buf);
        lens_err_set(err, "%s: read error", path);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Parses merges.txt: one merge per line, "left right" (lines may end in
 * \r\n; empty lines and "#version" lines are skipped, as HF does). */
int tok_load_merges_txt(lens_tokenizer *tok, const char *path, lens_err *err) {
    size_t len;
    char *text = tok_read_file(path, &len, err);
    if (!text) return -1;
    size_t lines = 1;
    for (const char *nl = text; (nl = memchr(nl, '\n', len - (size_t)(nl - text))); nl++)
        lines++;
    if (merge_table_reserve(&tok->merges, lines) < 0) {
        lens_err_set(err, "%s: out of memory", path);
        free(text);
        return -1;
    }
    size_t rank = 0, line_no = 0;
    for (size_t pos = 0; pos < len;) {
        char *line = text + pos;
        char *eol = memchr(line, '\n', len - pos);
        size_t line_len = eol ? (size_t)(eol - line) : len - pos;
        pos += line_len + 1;
        line_no++;
        if (line_len > 0 && line[line_len - 1] == '\r') line_len--;
        if (line_len == 0) continue;
        if (line_len >= 8 && memcmp(line, "#version", 8) == 0) continue;
        char *space = memchr(line, ' ', line_len);
        size_t left_len = space ? (size_t)(space - line) : 0;
        size_t right_len = space ? line_len - left_len - 1 : 0;
        if (!space || left_len == 0 || right_len == 0 || memchr(space + 1, ' ', right_len)) {
            lens_err_set(err, "%s: line %zu is not two tokens separated by one space", path,
                         line_no);
            free(text);
            return -1;
        }
        if (tok_add_merge(tok, line, left_len, space + 1, right_len, rank++, err) < 0) {
            lens_err_prefix(err, "%s: line %zu", path, line_no);
            free(text);
            return -1;
        }
    }
    free(text);
    return 0;
}

/*
 * vocab.json is one flat JSON object from entry to id: 50k entries, which
 * jansson would make into as many objects only for them to be copied into
 * the table and freed again (most of the time of loading a tokenizer). The
 * direct reader below takes that shape straight from the file's bytes into
 * the table. It accepts only what jansson reads the same way: well-formed
 * UTF-8, no control characters, the JSON escapes (a \u0000 or a lone
 * surrogate is refused, as jansson refuses them), integer ids, no entry
 * twice. Anything else, wrong or merely unusual, makes it give up and the
 * file is read with jansson, whose result, the entries or the error, is then
 * the answer.
 */

static char *skip_json_space(char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static int hex_digit(char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Reads the 4 hex digits after "\u" at p (p + 4 <= end). Returns the code
 * unit, or -1. */
static int32_t read_hex4(const char *p) {
    int32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int digit = hex_digit(p[i]);
        if (digit < 0) return -1;
        v = v << 4 | digit;
    }
    return v;
}

/* Decodes the JSON string whose opening quote is at *p, in place: its text
 * goes to *text (*len bytes, within the string's own bytes, which it never
 * outgrows) and *p moves past the closing quote. Returns -1 for anything
 * that the direct reader does not take. */
static int read_json_string(char **p, const char *end, char **text, size_t *len) {
    char *in = *p + 1, *out = in;
    *text = in;
    while (in < end && *in != '"') {
        uint8_t c = (uint8_t)*in;
        if (c < 0x20) return -1;
        if (c >= 0x80) {
            size_t invalid_len,
                n = utf8_sequence((const uint8_t *)in, (size_t)(end - in), &invalid_len);
            if (n == 0) return -1;
            memmove(out, in, n);
            in += n;
            out += n;
            continue;
        }
        if (c != '\\') {
            *out++ = *in++;
            continue;
        }
        if (end - in < 2) return -1;
        char e = in[1];
        in += 2;
        static const char plain[] = "\"\\/bfnrt", meaning[] = "\"\\/\b\f\n\r\t";
        const char *known = e ? strchr(plain, e) : NULL;
        if (known) {
            *out++ = meaning[known - plain];
            continue;
        }
        if (e != 'u' || end - in < 4) return -1;
        int32_t cp = read_hex4(in);
        in += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return -1;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (end - in < 6 || in[0] != '\\' || in[1] != 'u') return -1;
            int32_t low = read_hex4(in + 2);
            if (low < 0xDC00 || low > 0xDFFF) return -1;
            in += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        if (cp <= 0) return -1;
        out += tok_utf8_put((uint32_t)cp, out);
    }
    if (in >= end) return -1;
    *len = (size_t)(out - *text);
    *p = in + 1;
    return 0;
}

/* Reads a JSON integer (-?(0|[1-9][0-9]*), not followed by a fraction or an
 * exponent, within int64) at *p. */
static int read_json_integer(char **p, const char *end, int64_t *value) {
    const char *s = *p;
    bool negative = s < end && *s == '-';
    if (negative) s++;
    if (s >= end || *s < '0' || *s > '9' ||
        (*s == '0' && s + 1 < end && s[1] >= '0' && s[1] <= '9'))
        return -1;
    uint64_t v = 0;
    for (; s < end && *s >= '0' && *s <= '9'; s++) {
        if (v > (UINT64_C(1) << 63) / 10) return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    if (v > (negative ? UINT64_C(1) << 63 : (UINT64_C(1) << 63) - 1)) return -1;
    if (s < end && (*s == '.' || *s == 'e' || *s == 'E')) return -1;
    *value = negative ? (int64_t)(0 - v) : (int64_t)v;
    *p = (char *)s;
    return 0;
}

/* Reads the vocabulary object in text[len] (decoding its strings in place)
 * into tok's table. Returns -1 (tok then holds part of it) for anything the
 * direct reader does not take. */
static int parse_vocab_direct(lens_tokenizer *tok, char *text, size_t len) {
    const char *end = text + len;
    size_t colons = 0; /* at least one per entry: room enough in the table */
    for (const char *c = text; (c = memchr(c, ':', (size_t)(end - c))); c++)
        colons++;
    if (str_table_reserve(&tok->vocab, colons) < 0) return -1;
    char *p = skip_json_space(text, end);
    if (p >= end || *p++ != '{') return -1;
    p = skip_json_space(p, end);
    for (bool first = true; p < end && *p != '}'; first = false) {
        char *key;
        size_t key_len;
        int64_t id;
        if (!first && (p >= end || *p++ != ',')) return -1;
        p = skip_json_space(p, end);
        if (p >= end || *p != '"' || read_json_string(&p, end, &key, &key_len) < 0) return -1;
        p = skip_json_space(p, end);
        if (p >= end || *p++ != ':') return -1;
        p = skip_json_space(p, end);
        if (read_json_integer(&p, end, &id) < 0) return -1;
        if (str_table_get(&tok->vocab, key, key_len) >= 0) return -1; /* jansson: last one wins */
        if (tok_add_vocab(tok, key, key_len, id, NULL) < 0) return -1;
        p = skip_json_space(p, end);
    }
    if (p >= end) return -1;
    return skip_json_space(p + 1, end) == end ? 0 : -1;
}

static int load_vocab_object(lens_tokenizer *tok, const json_t *vocab, lens_err *err) {
    if (!json_is_object(vocab)) {
        lens_err_set(err, "the vocabulary is not a JSON object");
        return -1;
    }
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)vocab, key, value) {
        if (!json_is_integer(value)) {
            lens_err_set(err, "the id of \"%.64s\" is not an integer", key);
            return -1;
        }
        if (tok_add_vocab(tok, key, strlen(key), json_integer_value(value), err) < 0) return -1;
    }
    return 0;
}

/* Empties the model vocabulary, for a fresh start with jansson. */
static void clear_vocab(lens_tokenizer *tok) {
    str_table_free(&tok->vocab);
    memset(&tok->vocab, 0, sizeof tok->vocab);
    free(tok->id_text);
    free(tok->id_text_len);
    tok->id_text = NULL;
    tok->id_text_len = NULL;
    tok->id_text_cap = 0;
    tok->n_ids = 0;
}

int tok_load_vocab_json(lens_tokenizer *tok, const char *path, lens_err *err) {
    size_t len;
    char *text = tok_read_file(path, &len, NULL);
    int rc = text ? parse_vocab_direct(tok, text, len) : -1;
    free(text);
    if (rc == 0) return 0;
    clear_vocab(tok);
    json_error_t jerr;
    json_t *vocab = json_load_file(path, 0, &jerr);
    if (!vocab) {
        lens_err_set(err, "%s: %s (line %d, column %d)", path, jerr.text, jerr.line, jerr.column);
        return -1;
    }
    rc = load_vocab_object(tok, vocab, err);
    json_decref(vocab);
    if (rc < 0) lens_err_prefix(err, "%s", path);
    return rc;
}

/* Every byte must have a one-byte token in a byte-level vocabulary built
 * from GPT-2's files, or some text could not be encoded. */
static int check_byte_ids(const lens_tokenizer *tok, lens_err *err) {
    for (unsigned b = 0; b < 256; b++) {
        char spelled[4];
        size_t len = tok_utf8_put(tok_byte_char((uint8_t)b), spelled);
        if (str_table_get(&tok->vocab, spelled, len) < 0) {
            lens_err_set(err, "the vocabulary has no entry \"%.*s\" for byte 0x%02x", (int)len,
                         spelled, b);
            return -1;
        }
    }
    return 0;
}

lens_tokenizer *lens_tok_load_bpe(const char *vocab_json_path, const char *merges_txt_path,
                                  lens_err *err) {
    lens_tokenizer *tok = tok_new(KIND_BPE, err);
    if (!tok) return NULL;
    if (tok_load_vocab_json(tok, vocab_json_path, err) < 0) goto fail;
    if (check_byte_ids(tok, err) < 0) {
        lens_err_prefix(err, "%s", vocab_json_path);
        goto fail;
    }
    if (tok_load_merges_txt(tok, merges_txt_path, err) < 0) goto fail;
    tok->pretoks[0] = (pretok_step){.kind = PRE_BYTE_LEVEL};
    tok->n_pretoks = 1;
    if (tok_gpt2_regex(&tok->pretoks[0].regex, err) < 0) goto fail;
    tok->decs[0] = (dec_step){.kind = DEC_BYTE_LEVEL};
    tok->n_decs = 1;
    tok->has_decoder = tok->decode_bytes = true;
    /* GPT2TokenizerFast's one special token; it gets the next id if the
     * vocabulary lacks it, as HF would give it. */
    static const char eot[] = "<|endoftext|>";
    int32_t eot_id = str_table_get(&tok->vocab, eot, strlen(eot));
    if (tok_add_added(tok, eot, strlen(eot), eot_id >= 0 ? eot_id : tok_next_added_id(tok), false,
                      false, false, false, true, err) < 0 ||
        tok_finish(tok, err) < 0)
        goto fail;
    return tok;
fail:
    lens_tok_free(tok);
    return NULL;
}

lens_tokenizer *lens_tok_load_hf_json(const char *tokenizer_json_path, lens_err *err) {
    json_error_t jerr;
    json_t *root = json_load_file(tokenizer_json_path, 0, &jerr);
    if (!root) {
        lens_err_set(err, "%s: %s (line %d, column %d)", tokenizer_json_path, jerr.text, jerr.line,
                     jerr.column);
        return NULL;
    }
    lens_tokenizer *tok = tok_from_hf_json(root, err);
    json_decref(root);
    if (tok && tok_finish(tok, err) < 0) {
        lens_tok_free(tok);
        tok = NULL;
    }
    if (!tok) lens_err_prefix(err, "%s", tokenizer_json_path);
    return tok;
}

lens_tokenizer *lens_tok_from_list(const char *const *tokens, size_t n, lens_split split,
                                   lens_err *err) {
    if (n == 0) {
        lens_err_set(err, "the token list is empty");
        return NULL;
    }
    if (split != LENS_SPLIT_CHARS && split != LENS_SPLIT_WHITESPACE) {
        lens_err_set(err, "unknown split mode %d", (int)split);
        return NULL;
    }
    lens_tokenizer *tok = tok_new(KIND_LIST, err);
    if (!tok) return NULL;
    tok->split = split;
    for (size_t i = 0; i < n; i++) {
        size_t len = tokens[i] ? strlen(tokens[i]) : 0;
        if (len == 0) {
            lens_err_set(err, "token %zu is empty", i);
            goto fail;
        }
        if (utf8_validate(tokens[i], len, err) < 0) {
            lens_err_prefix(err, "token %zu", i);
            goto fail;
        }
        int32_t seen = str_table_get(&tok->vocab, tokens[i], len);
        if (seen >= 0) {
            lens_err_set(err, "token %zu (\"%.64s\") duplicates token %d", i, tokens[i], seen);
            goto fail;
        }
        if (tok_add_vocab(tok, tokens[i], len, (int64_t)i, err) < 0) goto fail;
        size_t invalid_len;
        if (utf8_sequence((const uint8_t *)tokens[i], len, &invalid_len) < len)
            tok->has_multichar_entry = true;
        if (len > tok->longest_entry) tok->longest_entry = len;
    }
    if (finish_texts(tok, err) < 0) goto fail;
    return tok;
fail:
    lens_tok_free(tok);
    return NULL;
}

void lens_tok_free(lens_tokenizer *tok) {
    if (!tok) return;
    str_table_free(&tok->vocab);
    str_table_free(&tok->added_by_text);
    free(tok->merges.slots);
    for (size_t i = 0; i < tok->n_added; i++) {
        free(tok->added[i].content);
        free(tok->added[i].pattern);
    }
    free(tok->added);
    free(tok->raw_trie.nodes);
    free(tok->normalized_trie.nodes);
    for (size_t i = 0; i < tok->n_norms; i++) {
        free(tok->norms[i].text);
        free(tok->norms[i].literal);
        regex_free(&tok->norms[i].regex);
    }
    for (size_t i = 0; i < tok->n_pretoks; i++) {
        free(tok->pretoks[i].literal);
        regex_free(&tok->pretoks[i].regex);
    }
    for (size_t i = 0; i < tok->n_decs; i++) {
        free(tok->decs[i].literal);
        free(tok->decs[i].text);
    }
    free(tok->unk_token);
    free(tok->prefix);
    free(tok->suffix);
    free(tok->text_off);
    free(tok->text_bytes);
    free(tok->has_text);
    free(tok->id_text);
    free(tok->id_text_len);
    free(tok);
}

size_t lens_tok_vocab_size(const lens_tokenizer *tok) {
    return tok->n_ids;
}

int32_t lens_tok_lookup(const lens_tokenizer *tok, const char *entry) {
    return tok_lookup(tok, entry, strlen(entry));
}

/* ---- normalizers -------------------------------------------------------- */

/* Runs one normalizer over text[len] into out (emptied first). Returns -1
 * with err set, or -2 when out of memory. */
static int normalize_step(const norm_step *step, const char *text, size_t len, byte_buf *out,
                          pcre2_match_data *match, lens_err *err) {
    out->len = 0;
    switch (step->kind) {
    case NORM_NFC: {
        bool ascii = true; /* ASCII is its own NFC */
        for (size_t i = 0; i < len && ascii; i++)
            ascii = (uint8_t)text[i] < 0x80;
        if (ascii) return buf_append(out, text, len) < 0 ? -2 : 0;
        utf8proc_uint8_t *mapped = NULL;
        utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len,
                                          &mapped, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (n < 0) {
            lens_err_set(err, "normalizer: %s", utf8proc_errmsg(n));
            return -1;
        }
        int rc = buf_append(out, (const char *)mapped, (size_t)n);
        free(mapped);
        return rc < 0 ? -2 : 0;
    }
    case NORM_PREPEND:
        if (len == 0) return 0;
        return buf_append(out, step->text, step->text_len) < 0 || buf_append(out, text, len) < 0
                   ? -2
                   : 0;
    case NORM_STRIP: {
        size_t start = 0, end = len, n;
        while (step->left && start < end &&
               is_unicode_space(next_char(text + start, end - start, &n)))
            start += n;
        while (step->right && end > start) {
            size_t at = char_start_before(text, end);
            if (!is_unicode_space(next_char(text + at, end - at, &n))) break;
            end = at;
        }
        return buf_append(out, text + start, end - start) < 0 ? -2 : 0;
    }
    case NORM_REPLACE: {
        if (buf_reserve(out, len + 1) < 0) return -2;
        const pcre2_code *regex = step->literal ? NULL : regex_for(&step->regex, text, len);
        size_t pos = 0;
        while (pos <= len) {
            size_t match_start, match_end;
            if (step->literal) {
                const char *hit =
                    pos < len ? memmem(text + pos, len - pos, step->literal, step->literal_len)
                              : NULL;
                if (!hit) break;
                match_start = (size_t)(hit - text);
                match_end = match_start + step->literal_len;
            } else {
                int rc =
                    pcre2_match(regex, (PCRE2_SPTR)text, len, pos, PCRE2_NO_UTF_CHECK, match, NULL);
                if (rc == PCRE2_ERROR_NOMATCH) break;
                if (rc < 0) {
                    lens_err_set(err, "Replace normalizer: regex match failed (%d)", rc);
                    return -1;
                }
                PCRE2_SIZE *span = pcre2_get_ovector_pointer(match);
                match_start = span[0];
                match_end = span[1];
            }
            if (buf_append(out, text + pos, match_start - pos) < 0 ||
                buf_append(out, step->text, step->text_len) < 0)
                return -2;
            if (match_end == match_start) { /* an empty match: keep one character, go on */
                if (match_end >= len) {
                    pos = len + 1;
                    break;
                }
                size_t n;
                next_char(text + match_end, len - match_end, &n);
                if (buf_append(out, text + match_end, n) < 0) return -2;
                match_end += n;
            }
            pos = match_end;
        }
        return pos < len && buf_append(out, text + pos, len - pos) < 0 ? -2 : 0;
    }
    }
    return 0;
}

/* Runs the normalizers over text[len]; the result is *out[*out_len], text
 * itself or one of bufs. */
static int normalize(const lens_tokenizer *tok, const char *text, size_t len, byte_buf bufs[2],
                     const char **out, size_t *out_len, lens_err *err) {
    pcre2_match_data *match = NULL;
    *out = text;
    *out_len = len;
    for (size_t i = 0; i < tok->n_norms; i++) {
        if (tok->norms[i].regex.plain && !match && !(match = pcre2_match_data_create(1, NULL))) {
            lens_err_set(err, "out of memory");
            return -1;
        }
        byte_buf *dst = &bufs[i % 2];
        int rc = normalize_step(&tok->norms[i], *out, *out_len, dst, match, err);
        if (rc == -1) {
            pcre2_match_data_free(match);
            return -1;
        }
        if (rc < 0 || buf_reserve(dst, 1) < 0) {
            pcre2_match_data_free(match);
            lens_err_set(err, "out of memory");
            return -1;
        }
        *out = dst->bytes;
        *out_len = dst->len;
    }
    pcre2_match_data_free(match);
    return 0;
}

/* ---- encoding ----------------------------------------------------------- */

/* A symbol of the word being merged: a token id spanning some bytes, linked
 * to its neighbours. A symbol merged into its left neighbour is dead. */
typedef struct symbol {
    int32_t id;         /* -1 once dead */
    int32_t prev, next; /* indices, -1 at the ends */
} symbol;

/* A merge that was possible when pushed: the symbols at pos and its next
 * (then spelled merge->pair). Popped lowest rank first, then leftmost. */
typedef struct merge_candidate {
    int32_t rank;
    int32_t pos;
    const merge_slot *merge;
} merge_candidate;

/* Per-call working memory; nothing in the tokenizer is written. */
typedef struct encode_state {
    int32_t *ids;
    size_t n_ids, cap_ids;
    int32_t *word_ids; /* a word's first symbols */
    size_t n_word, cap_word_ids;
    symbol *syms;
    merge_candidate *heap;
    size_t cap_syms;
    pcre2_match_data *match;
    byte_buf norm_bufs[2];
    byte_buf step_bufs[MAX_STEPS]; /* the text a pre-tokenizer step passes on */
    byte_buf scratch;              /* a character with prefix/suffix; a mapped word */
    size_t max_ids;                /* stop once this many ids are out */
    bool stopped;                  /* stopped there: the text has more */
} encode_state;

/* Appends id; at max_ids, stops the encoding (-1 with stopped set). */
static int push_id(encode_state *st, int32_t id, lens_err *err) {
    if (st->n_ids == st->max_ids) {
        st->stopped = true;
        return -1;
    }
    if (st->n_ids == st->cap_ids) {
        size_t cap = st->cap_ids ? st->cap_ids * 2 : 256;
        int32_t *ids = realloc(st->ids, cap * sizeof *ids);
        if (!ids) {
            lens_err_set(err, "out of memory");
            return -1;
        }
        st->ids = ids;
        st->cap_ids = cap;
    }
    st->ids[st->n_ids++] = id;
    return 0;
}

static int push_word_id(encode_state *st, int32_t id, lens_err *err) {
    if (st->n_word == st->cap_word_ids) {
        size_t cap = st->cap_word_ids ? st->cap_word_ids * 2 : 256;
        int32_t *ids = realloc(st->word_ids, cap * sizeof *ids);
        if (!ids) {
            lens_err_set(err, "out of memory");
            return -1;
        }
        st->word_ids = ids;
        st->cap_word_ids = cap;
    }
    st->word_ids[st->n_word++] = id;
    return 0;
}

static bool candidate_before(const merge_candidate *a, const merge_candidate *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(merge_candidate *heap, size_t *n, merge_candidate c) {
    size_t i = (*n)++;
    while (i > 0 && candidate_before(&c, &heap[(i - 1) / 2])) {
        heap[i] = heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    heap[i] = c;
}

static merge_candidate heap_pop(merge_candidate *heap, size_t *n) {
    merge_candidate top = heap[0], last = heap[--*n];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= *n) break;
        if (child + 1 < *n && candidate_before(&heap[child + 1], &heap[child])) child++;
        if (!candidate_before(&heap[child], &last)) break;
        heap[i] = heap[child];
        i = child;
    }
    if (*n > 0) heap[i] = last;
    return top;
}

static void push_candidate(const lens_tokenizer *tok, encode_state *st, size_t *n_heap,
                           int32_t pos) {
    const symbol *left = &st->syms[pos];
    const merge_slot *m = merge_table_get(&tok->merges, left->id, st->syms[left->next].id);
    if (m) heap_push(st->heap, n_heap, (merge_candidate){m->rank, pos, m});
}

/* Makes room for n symbols (and 3 * n merge candidates). */
static int reserve_syms(encode_state *st, size_t n, lens_err *err) {
    if (n > INT32_MAX / 4) {
        lens_err_set(err, "a pre-tokenized piece of %zu symbols is too long", n);
        return -1;
    }
    if (n > st->cap_syms) {
        symbol *syms = realloc(st->syms, n * sizeof *syms);
        if (syms) st->syms = syms;
        merge_candidate *heap = realloc(st->heap, 3 * n * sizeof *heap);
        if (heap) st->heap = heap;
        if (!syms || !heap) {
            lens_err_set(err, "out of memory");
            return -1;
        }
        st->cap_syms = n;
    }
    return 0;
}

/* Merges the linked symbols st->syms[0 .. n) (n >= 2) and pushes the
 * result. Each merge can add at most two candidates and removes a symbol, so
 * the heap never holds more than 3 * n entries. */
static int merge_syms(const lens_tokenizer *tok, encode_state *st, size_t n, lens_err *err) {
    symbol *syms = st->syms;
    size_t n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++)
        push_candidate(tok, st, &n_heap, (int32_t)i);
    while (n_heap > 0) {
        merge_candidate c = heap_pop(st->heap, &n_heap);
        symbol *left = &syms[c.pos];
        if (left->id < 0 || left->next < 0) continue;
        symbol *right = &syms[left->next];
        if (pack_pair(left->id, right->id) != c.merge->pair) continue; /* stale */
        left->id = c.merge->merged;
        left->next = right->next;
        if (right->next >= 0) syms[right->next].prev = c.pos;
        right->id = -1;
        if (left->prev >= 0) push_candidate(tok, st, &n_heap, left->prev);
        if (left->next >= 0) push_candidate(tok, st, &n_heap, c.pos);
    }
    for (int32_t i = 0; i >= 0; i = syms[i].next)
        if (push_id(st, syms[i].id, err) < 0) return -1;
    return 0;
}

/* Words of at most this many symbols are merged by scanning their pairs,
 * which beats the heap for them (most pre-tokenized words are short). */
#define SHORT_WORD 24

/* Merges ids[0 .. n) (2 <= n <= SHORT_WORD) in the heap's order: the pair
 * of lowest rank, leftmost among equals, first. */
static int merge_short(const lens_tokenizer *tok, int32_t *ids, size_t n, encode_state *st,
                       lens_err *err) {
    const merge_slot *pair[SHORT_WORD];
    for (size_t i = 0; i + 1 < n; i++)
        pair[i] = merge_table_get(&tok->merges, ids[i], ids[i + 1]);
    while (n > 1) {
        size_t best = n;
        int32_t best_rank = INT32_MAX;
        for (size_t i = 0; i + 1 < n; i++) {
            if (pair[i] && pair[i]->rank < best_rank) {
                best_rank = pair[i]->rank;
                best = i;
            }
        }
        if (best == n) break;
        ids[best] = pair[best]->merged;
        memmove(ids + best + 1, ids + best + 2, (n - best - 2) * sizeof *ids);
        memmove(pair + best, pair + best + 1, (n - best - 2) * sizeof *pair);
        n--;
        if (best > 0) pair[best - 1] = merge_table_get(&tok->merges, ids[best - 1], ids[best]);
        if (best + 1 < n) pair[best] = merge_table_get(&tok->merges, ids[best], ids[best + 1]);
    }
    for (size_t i = 0; i < n; i++)
        if (push_id(st, ids[i], err) < 0) return -1;
    return 0;
}

/* Merges the symbols st->word_ids[0 .. n_word) and pushes the result. */
static int merge_word(const lens_tokenizer *tok, encode_state *st, lens_err *err) {
    size_t n = st->n_word;
    if (n <= 1) return n == 1 ? push_id(st, st->word_ids[0], err) : 0;
    if (n <= SHORT_WORD) return merge_short(tok, st->word_ids, n, st, err);
    if (reserve_syms(st, n, err) < 0) return -1;
    for (size_t i = 0; i < n; i++)
        st->syms[i] = (symbol){st->word_ids[i], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    return merge_syms(tok, st, n, err);
}

/* The unknown-token run waiting to be added (HF's fuse_unk joins runs). */
typedef struct unk_state {
    bool pending;
} unk_state;

/* A character (its text s[len], with prefix/suffix already on) that is not
 * in the vocabulary: its <0xNN> byte tokens with byte_fallback, else the
 * unknown token, else nothing, as HF's BPE does. */
static int missing_char(const lens_tokenizer *tok, const char *s, size_t len, unk_state *unk,
                        encode_state *st, lens_err *err) {
    if (tok->byte_fallback) {
        bool all = true;
        for (size_t i = 0; i < len && all; i++)
            all = tok->fallback_id[(uint8_t)s[i]] >= 0;
        if (all) {
            for (size_t i = 0; i < len; i++)
                if (push_word_id(st, tok->fallback_id[(uint8_t)s[i]], err) < 0) return -1;
            return 0;
        }
    }
    if (!tok->unk_token) return 0;
    if (tok->unk_id < 0) {
        lens_err_set(err, "the unknown token \"%.64s\" is not in the vocabulary", tok->unk_token);
        return -1;
    }
    if (unk->pending && !tok->fuse_unk && push_word_id(st, tok->unk_id, err) < 0) return -1;
    unk->pending = true;
    return 0;
}

static int found_char(encode_state *st, int32_t id, unk_state *unk, const lens_tokenizer *tok,
                      lens_err *err) {
    if (unk->pending) {
        unk->pending = false;
        if (push_word_id(st, tok->unk_id, err) < 0) return -1;
    }
    return push_word_id(st, id, err);
}

/* A byte-level word when every byte has its token (GPT-2's case): one
 * symbol per byte, merged. */
static int merge_known_bytes(const lens_tokenizer *tok, const uint8_t *w, size_t len,
                             encode_state *st, lens_err *err) {
    if (len == 1) return push_id(st, tok->byte_id[w[0]], err);
    if (len <= SHORT_WORD) {
        int32_t ids[SHORT_WORD];
        for (size_t i = 0; i < len; i++)
            ids[i] = tok->byte_id[w[i]];
        return merge_short(tok, ids, len, st, err);
    }
    if (reserve_syms(st, len, err) < 0) return -1;
    symbol *syms = st->syms;
    for (size_t i = 0; i < len; i++)
        syms[i] = (symbol){tok->byte_id[w[i]], (int32_t)i - 1, (int32_t)i + 1};
    syms[len - 1].next = -1;
    return merge_syms(tok, st, len, err);
}

/* Encodes one word with the BPE model. A byte-level word is raw bytes, each
 * standing for GPT-2's character of that byte; any other word is UTF-8, one
 * symbol per character. */
static int encode_word(const lens_tokenizer *tok, const char *word, size_t len, bool byte_level,
                       encode_state *st, lens_err *err) {
    if (len == 0) return 0;
    const uint8_t *w = (const uint8_t *)word;
    bool affixes = tok->prefix || tok->suffix;
    if (byte_level && !affixes && tok->all_bytes && !tok->ignore_merges)
        return merge_known_bytes(tok, w, len, st, err);
    if (tok->ignore_merges) {
        const char *key = word;
        size_t key_len = len;
        if (byte_level) {
            st->scratch.len = 0;
            for (size_t i = 0; i < len; i++) {
                char c[4];
                if (buf_append(&st->scratch, c, tok_utf8_put(tok_byte_char(w[i]), c)) < 0) {
                    lens_err_set(err, "out of memory");
                    return -1;
                }
            }
            key = st->scratch.bytes;
            key_len = st->scratch.len;
        }
        int32_t id = str_table_get(&tok->vocab, key, key_len);
        if (id >= 0) return push_id(st, id, err);
    }
    if (byte_level && !affixes && tok->all_bytes) /* the word was not one entry */
        return merge_known_bytes(tok, w, len, st, err);
    st->n_word = 0;
    unk_state unk = {false};
    for (size_t i = 0; i < len;) {
        char mapped[4];
        const char *c = word + i;
        size_t c_len;
        if (byte_level) {
            c_len = 1;
            if (!affixes && tok->byte_id[w[i]] >= 0) {
                if (found_char(st, tok->byte_id[w[i]], &unk, tok, err) < 0) return -1;
                i++;
                continue;
            }
            c = mapped;
            size_t mapped_len = tok_utf8_put(tok_byte_char(w[i]), mapped);
            i++;
            c_len = mapped_len;
            if (!affixes) {
                if (missing_char(tok, c, c_len, &unk, st, err) < 0) return -1;
                continue;
            }
        } else {
            size_t invalid_len;
            c_len = utf8_sequence(w + i, len - i, &invalid_len);
            i += c_len;
            if (!affixes) {
                int32_t id = c_len == 1 && w[i - 1] < 0x80 ? tok->ascii_id[w[i - 1]]
                                                           : str_table_get(&tok->vocab, c, c_len);
                int rc = id >= 0 ? found_char(st, id, &unk, tok, err)
                                 : missing_char(tok, c, c_len, &unk, st, err);
                if (rc < 0) return -1;
                continue;
            }
        }
        /* With a continuing-subword prefix or an end-of-word suffix. */
        bool first = (byte_level ? i - 1 : i - c_len) == 0, last = i == len;
        st->scratch.len = 0;
        if ((!first && tok->prefix && buf_append(&st->scratch, tok->prefix, tok->prefix_len) < 0) ||
            buf_append(&st->scratch, c, c_len) < 0 ||
            (last && tok->suffix && buf_append(&st->scratch, tok->suffix, tok->suffix_len) < 0)) {
            lens_err_set(err, "out of memory");
            return -1;
        }
        int32_t id = str_table_get(&tok->vocab, st->scratch.bytes, st->scratch.len);
        int rc = id >= 0 ? found_char(st, id, &unk, tok, err)
                         : missing_char(tok, st->scratch.bytes, st->scratch.len, &unk, st, err);
        if (rc < 0) return -1;
    }
    if (unk.pending && push_word_id(st, tok->unk_id, err) < 0) return -1;
    return merge_word(tok, st, err);
}

static int pretokenize(const lens_tokenizer *tok, size_t step, const char *s, size_t len,
                       bool first, encode_state *st, lens_err *err);

/* One kept piece of a Split or Digits step: into the next step. */
typedef struct split_emit {
    const lens_tokenizer *tok;
    size_t next_step;
    const char *s;
    bool first;
    encode_state *st;
    lens_err *err;
    split_behavior behavior;
    bool have, pending_match, prev_match;
    size_t pending_start, pending_end;
} split_emit;

static int emit_group(split_emit *e, size_t start, size_t end) {
    if (start == end) return 0;
    return pretokenize(e->tok, e->next_step, e->s + start, end - start, e->first && start == 0,
                       e->st, e->err);
}

/* Takes the next part (a match of the pattern or the text between two) and
 * keeps or joins it as HF's SplitDelimiterBehavior does. */
static int split_part(split_emit *e, size_t start, size_t end, bool is_match) {
    int rc = 0;
    switch (e->behavior) {
    case SPLIT_ISOLATED:
        return emit_group(e, start, end);
    case SPLIT_REMOVED:
        return is_match ? 0 : emit_group(e, start, end);
    case SPLIT_MERGED_WITH_PREVIOUS:
    case SPLIT_CONTIGUOUS: {
        bool join = e->behavior == SPLIT_CONTIGUOUS ? is_match == e->prev_match
                                                    : is_match && !e->prev_match;
        e->prev_match = is_match;
        if (e->have && join) {
            e->pending_end = end;
            return 0;
        }
        if (e->have) rc = emit_group(e, e->pending_start, e->pending_end);
        e->have = true;
        e->pending_start = start;
        e->pending_end = end;
        return rc;
    }
    case SPLIT_MERGED_WITH_NEXT:
        if (e->have && e->pending_match && !is_match) {
            e->have = false;
            return emit_group(e, e->pending_start, end);
        }
        if (e->have) rc = emit_group(e, e->pending_start, e->pending_end);
        e->have = true;
        e->pending_match = is_match;
        e->pending_start = start;
        e->pending_end = end;
        return rc;
    }
    return 0;
}

static int split_flush(split_emit *e) {
    if (!e->have) return 0;
    e->have = false;
    return emit_group(e, e->pending_start, e->pending_end);
}

/* The parts of s[len] around the matches of a Split step's pattern, as HF's
 * Pattern::find_matches gives them (invert flips which are matches). */
static int split_by_pattern(const pretok_step *p, const char *s, size_t len, split_emit *e,
                            encode_state *st, lens_err *err) {
    const pcre2_code *regex = p->literal ? NULL : regex_for(&p->regex, s, len);
    size_t prev = 0, pos = 0;
    while (pos <= len) {
        size_t match_start, match_end;
        if (p->literal) {
            const char *hit =
                pos < len ? memmem(s + pos, len - pos, p->literal, p->literal_len) : NULL;
            if (!hit) break;
            match_start = (size_t)(hit - s);
            match_end = match_start + p->literal_len;
        } else {
            int rc =
                pcre2_match(regex, (PCRE2_SPTR)s, len, pos, PCRE2_NO_UTF_CHECK, st->match, NULL);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(rc, msg, sizeof msg);
                lens_err_set(err, "pre-tokenizer regex failed at byte %zu: %s", pos, (char *)msg);
                return -1;
            }
            PCRE2_SIZE *span = pcre2_get_ovector_pointer(st->match);
            match_start = span[0];
            match_end = span[1];
        }
        if (prev != match_start && split_part(e, prev, match_start, p->invert) < 0) return -1;
        if (split_part(e, match_start, match_end, !p->invert) < 0) return -1;
        prev = match_end;
        if (match_end == match_start) {
            if (match_end >= len) break;
            size_t n;
            next_char(s + match_end, len - match_end, &n);
            match_end += n;
        }
        pos = match_end;
    }
    if (prev < len && split_part(e, prev, len, p->invert) < 0) return -1;
    return split_flush(e);
}

/* Digits: each numeric character is a match (runs of them joined unless
 * individual_digits, i.e. CONTIGUOUS). */
static int split_digits(const char *s, size_t len, split_emit *e) {
    size_t last = 0;
    for (size_t i = 0; i < len;) {
        size_t n;
        uint32_t cp = next_char(s + i, len - i, &n);
        if (is_numeric(cp)) {
            if (last < i && split_part(e, last, i, false) < 0) return -1;
            if (split_part(e, i, i + n, true) < 0) return -1;
            last = i + n;
        }
        i += n;
    }
    if (last < len && split_part(e, last, len, false) < 0) return -1;
    return split_flush(e);
}

/* Metaspace: ' ' becomes the replacement, which may be prepended, and the
 * text may be split before each replacement (MergedWithNext). */
static int metaspace(const lens_tokenizer *tok, size_t step, const char *s, size_t len, bool first,
                     encode_state *st, lens_err *err) {
    const pretok_step *p = &tok->pretoks[step];
    byte_buf *out = &st->step_bufs[step];
    out->len = 0;
    bool starts = len >= p->replacement_len && memcmp(s, p->replacement, p->replacement_len) == 0;
    bool starts_space = len > 0 && s[0] == ' ';
    bool prepend = !starts && !starts_space &&
                   (p->prepend == PREPEND_ALWAYS || (p->prepend == PREPEND_FIRST && first));
    if (prepend && buf_append(out, p->replacement, p->replacement_len) < 0) goto oom;
    for (size_t i = 0; i < len;) {
        const char *space = memchr(s + i, ' ', len - i);
        size_t run = space ? (size_t)(space - (s + i)) : len - i;
        if (buf_append(out, s + i, run) < 0) goto oom;
        i += run;
        if (space) {
            if (buf_append(out, p->replacement, p->replacement_len) < 0) goto oom;
            i++;
        }
    }
    if (buf_reserve(out, 1) < 0) goto oom;
    if (!p->split) return pretokenize(tok, step + 1, out->bytes, out->len, first, st, err);
    split_emit e = {.tok = tok,
                    .next_step = step + 1,
                    .s = out->bytes,
                    .first = first,
                    .st = st,
                    .err = err,
                    .behavior = SPLIT_MERGED_WITH_NEXT};
    pretok_step literal = {.literal = (char *)p->replacement, .literal_len = p->replacement_len};
    return split_by_pattern(&literal, out->bytes, out->len, &e, st, err);
oom:
    lens_err_set(err, "out of memory");
    return -1;
}

/* ByteLevel: a prefix space if asked, GPT-2's regex if asked, then the
 * pieces go to the model as bytes. */
static int byte_level(const lens_tokenizer *tok, size_t step, const char *s, size_t len,
                      encode_state *st, lens_err *err) {
    const pretok_step *p = &tok->pretoks[step];
    if (p->add_prefix_space && (len == 0 || s[0] != ' ')) {
        byte_buf *out = &st->step_bufs[step];
        out->len = 0;
        if (buf_append(out, " ", 1) < 0 || buf_append(out, s, len) < 0) {
            lens_err_set(err, "out of memory");
            return -1;
        }
        s = out->bytes;
        len = out->len;
    }
    if (!p->regex.plain) return encode_word(tok, s, len, true, st, err);
    const pcre2_code *regex = regex_for(&p->regex, s, len);
    size_t off = 0;
    while (off < len) {
        int rc = pcre2_match(regex, (PCRE2_SPTR)s, len, off, PCRE2_NO_UTF_CHECK, st->match, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            lens_err_set(err, "pre-tokenizer regex failed at byte %zu: %s", off, (char *)msg);
            return -1;
        }
        PCRE2_SIZE *span = pcre2_get_ovector_pointer(st->match);
        /* Isolated: text between matches is a piece too (GPT-2's regex
         * leaves none). */
        if (span[0] > off && encode_word(tok, s + off, span[0] - off, true, st, err) < 0) return -1;
        if (encode_word(tok, s + span[0], span[1] - span[0], true, st, err) < 0) return -1;
        off = span[1];
        if (span[1] == span[0]) { /* an empty match: step over one character */
            size_t n;
            next_char(s + off, len - off, &n);
            off += n;
        }
    }
    return off < len ? encode_word(tok, s + off, len - off, true, st, err) : 0;
}

/* Runs pre-tokenizer step `step` (and those after it) on s[len]; `first` is
 * true when s starts the input (HF: its original offset is 0). Past the last
 * step the piece is a word for the model. */
static int pretokenize(const lens_tokenizer *tok, size_t step, const char *s, size_t len,
                       bool first, encode_state *st, lens_err *err) {
    if (len == 0) return 0;
    if (step == tok->n_pretoks) return encode_word(tok, s, len, false, st, err);
    const pretok_step *p = &tok->pretoks[step];
    split_emit e = {.tok = tok,
                    .next_step = step + 1,
                    .s = s,
                    .first = first,
                    .st = st,
                    .err = err,
                    .behavior = p->behavior};
    switch (p->kind) {
    case PRE_SPLIT:
        return split_by_pattern(p, s, len, &e, st, err);
    case PRE_DIGITS:
        return split_digits(s, len, &e);
    case PRE_METASPACE:
        return metaspace(tok, step, s, len, first, st, err);
    case PRE_BYTE_LEVEL:
        return byte_level(tok, step, s, len, st, err);
    }
    return 0;
}

/* Start of the run of Unicode white space that ends at text[at], not before lo. */
static size_t space_run_start(const char *text, size_t lo, size_t at) {
    while (at > lo) {
        size_t start = char_start_before(text, at), n;
        if (start < lo || !is_unicode_space(next_char(text + start, at - start, &n))) break;
        at = start;
    }
    return at;
}

/* End of the run of Unicode white space that starts at text[at], not after hi. */
static size_t space_run_end(const char *text, size_t at, size_t hi) {
    while (at < hi) {
        size_t n;
        if (!is_unicode_space(next_char(text + at, hi - at, &n))) break;
        at += n;
    }
    return at;
}

/* HF's single_word: no word character touches the match on either side. */
static bool is_single_word(const char *text, size_t len, size_t start, size_t end) {
    size_t n;
    if (start > 0) {
        size_t at = char_start_before(text, start);
        if (is_word_char(next_char(text + at, start - at, &n))) return false;
    }
    return end >= len || !is_word_char(next_char(text + end, len - end, &n));
}

static int encode_normalized(const lens_tokenizer *tok, const char *text, size_t len, bool first,
                             encode_state *st, lens_err *err);

/* Cuts the added tokens of `trie` out of text[len] (leftmost-longest, as
 * HF's automaton; the search resumes after the matched text even when
 * rstrip took white space beyond it), pushing their ids; each segment
 * between them goes on to the normalizers (raw pass) or the pre-tokenizer
 * (normalized pass). `first`: text starts the input. */
static int cut_added(const lens_tokenizer *tok, const added_trie *trie, bool raw_pass,
                     const char *text, size_t len, bool first, encode_state *st, lens_err *err) {
    size_t pos = 0; /* end of the text consumed so far */
    if (trie->nodes) {
        for (size_t at = 0; at < len;) {
            if (trie->only_first >= 0) {
                const char *next = memchr(text + at, trie->only_first, len - at);
                if (!next) break;
                at = (size_t)(next - text);
            } else if (trie->root_child[(uint8_t)text[at]] < 0) {
                at++;
                continue;
            }
            size_t match_len = 0;
            int32_t k = trie_longest(trie, text, at, len, &match_len);
            if (k < 0) {
                at++;
                continue;
            }
            const added_token *t = &tok->added[k];
            size_t match_start = at, match_end = at + match_len;
            at = match_end;
            if (t->single_word && !is_single_word(text, len, match_start, match_end)) continue;
            if (t->lstrip) match_start = space_run_start(text, pos, match_start);
            if (t->rstrip) match_end = space_run_end(text, match_end, len);
            if (pos < match_start) {
                int rc = raw_pass ? encode_normalized(tok, text + pos, match_start - pos,
                                                      first && pos == 0, st, err)
                                  : pretokenize(tok, 0, text + pos, match_start - pos,
                                                first && pos == 0, st, err);
                if (rc < 0) return -1;
            }
            if (push_id(st, t->id, err) < 0) return -1;
            pos = match_end;
        }
    }
    if (pos >= len) return 0;
    return raw_pass ? encode_normalized(tok, text + pos, len - pos, first && pos == 0, st, err)
                    : pretokenize(tok, 0, text + pos, len - pos, first && pos == 0, st, err);
}

/* A segment free of raw-matched added tokens: normalized, then cut at the
 * normalized-matched ones. */
static int encode_normalized(const lens_tokenizer *tok, const char *text, size_t len, bool first,
                             encode_state *st, lens_err *err) {
    if (tok->n_norms > 0 && normalize(tok, text, len, st->norm_bufs, &text, &len, err) < 0)
        return -1;
    if (len == 0) return 0;
    return cut_added(tok, &tok->normalized_trie, false, text, len, first, st, err);
}

static int encode_piece(const lens_tokenizer *tok, const char *piece, size_t len, size_t at,
                        encode_state *st, lens_err *err) {
    int32_t id = str_table_get(&tok->vocab, piece, len);
    if (id < 0) {
        lens_err_set(err, "\"%.*s\" (at byte %zu) is not in the token list",
                     (int)(len > 64 ? 64 : len), piece, at);
        return -1;
    }
    return push_id(st, id, err);
}

static bool is_ascii_space(char c) {
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static int encode_list(const lens_tokenizer *tok, const char *text, size_t len, encode_state *st,
                       lens_err *err) {
    size_t pos = 0, invalid_len;
    while (pos < len) {
        if (tok->split == LENS_SPLIT_WHITESPACE) {
            if (is_ascii_space(text[pos])) {
                pos++;
                continue;
            }
            size_t end = pos;
            while (end < len && !is_ascii_space(text[end]))
                end++;
            if (encode_piece(tok, text + pos, end - pos, pos, st, err) < 0) return -1;
            pos = end;
            continue;
        }
        size_t char_len = utf8_sequence((const uint8_t *)text + pos, len - pos, &invalid_len);
        size_t piece_len = char_len;
        /* Multi-character entries ("[pad]") match greedily, longest first. */
        if (tok->has_multichar_entry) {
            size_t longest = len - pos < tok->longest_entry ? len - pos : tok->longest_entry;
            for (size_t n = longest; n > char_len; n--) {
                if (str_table_get(&tok->vocab, text + pos, n) >= 0) {
                    piece_len = n;
                    break;
                }
            }
        }
        if (encode_piece(tok, text + pos, piece_len, pos, st, err) < 0) return -1;
        pos += piece_len;
    }
    return 0;
}

int lens_tok_encode(const lens_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                    size_t *n, lens_err *err) {
    return lens_tok_encode_at_most(tok, text, len, SIZE_MAX, ids, n, err) < 0 ? -1 : 0;
}

int lens_tok_encode_at_most(const lens_tokenizer *tok, const char *text, size_t len, size_t max_ids,
                            int32_t **ids, size_t *n, lens_err *err) {
    *ids = NULL;
    *n = 0;
    if (utf8_validate(text, len, err) < 0) return -1;
    if (len == 0) return 0;
    encode_state st = {.max_ids = max_ids};
    int rc;
    if (tok->kind == KIND_BPE) {
        st.match = pcre2_match_data_create(1, NULL);
        rc = st.match ? cut_added(tok, &tok->raw_trie, true, text, len, true, &st, err) : -1;
        if (!st.match) lens_err_set(err, "out of memory");
    } else {
        rc = encode_list(tok, text, len, &st, err);
    }
    free(st.word_ids);
    free(st.syms);
    free(st.heap);
    pcre2_match_data_free(st.match);
    free(st.norm_bufs[0].bytes);
    free(st.norm_bufs[1].bytes);
    for (size_t i = 0; i < MAX_STEPS; i++)
        free(st.step_bufs[i].bytes);
    free(st.scratch.bytes);
    if (rc < 0 && !st.stopped) {
        free(st.ids);
        return -1;
    }
    *ids = st.ids;
    *n = st.n_ids;
    return st.stopped ? 1 : 0;
}

/* ---- decoding ----------------------------------------------------------- */

/* Appends bytes[len] to out as from_utf8_lossy reads them: each maximal
 * invalid subpart becomes U+FFFD. out has room for 3 * len bytes. */
static size_t append_lossy(const char *bytes, size_t len, char *out) {
    size_t out_len = 0, invalid_len;
    for (size_t i = 0; i < len;) {
        size_t seq = utf8_sequence((const uint8_t *)bytes + i, len - i, &invalid_len);
        if (seq) {
            memcpy(out + out_len, bytes + i, seq);
            out_len += seq;
            i += seq;
        } else {
            out_len += tok_utf8_put(0xFFFD, out + out_len);
            i += invalid_len;
        }
    }
    return out_len;
}

/* The tokens a decoder step works on: token i is bytes[off[i] .. off[i+1]). */
typedef struct token_list {
    byte_buf text;
    size_t *off;
    size_t n, cap;
} token_list;

static int list_begin(token_list *l, size_t n) {
    l->text.len = 0;
    l->n = 0;
    if (n + 1 > l->cap) {
        size_t *off = realloc(l->off, (n + 1) * sizeof *off);
        if (!off) return -1;
        l->off = off;
        l->cap = n + 1;
    }
    l->off[0] = 0;
    return 0;
}

/* Ends the token being written (its bytes appended to l->text already). */
static int list_end_token(token_list *l) {
    if (l->n + 2 > l->cap) {
        size_t cap = 2 * l->cap + 2;
        size_t *off = realloc(l->off, cap * sizeof *off);
        if (!off) return -1;
        l->off = off;
        l->cap = cap;
    }
    l->off[++l->n] = l->text.len;
    return 0;
}

static int list_push(token_list *l, const char *s, size_t len) {
    return buf_append(&l->text, s, len) < 0 ? -1 : list_end_token(l);
}

/* HF's ByteFallback reads a token as a byte when it is 6 bytes, "<0x", two
 * characters u8::from_str_radix takes in base 16, ">". */
static int fallback_byte(const char *s, size_t len) {
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
    if (s[3] == '+' && lo >= 0) return lo; /* from_str_radix takes a sign */
    return hi >= 0 && lo >= 0 ? hi * 16 + lo : -1;
}

static int flush_fallback_bytes(token_list *out, byte_buf *bytes) {
    if (bytes->len == 0) return 0;
    int rc = 0;
    if (utf8_validate(bytes->bytes, bytes->len, NULL) == 0) {
        rc = list_push(out, bytes->bytes, bytes->len);
    } else {
        for (size_t i = 0; i < bytes->len && rc == 0; i++)
            rc = list_push(out, "\xEF\xBF\xBD", 3);
    }
    bytes->len = 0;
    return rc;
}

/* Runs one decoder step from `in` into `out`. */
static int decode_step(const dec_step *d, const token_list *in, token_list *out, byte_buf *tmp) {
    if (list_begin(out, in->n) < 0) return -1;
    const char *base = in->text.bytes ? in->text.bytes : ""; /* NULL while every token is empty */
    switch (d->kind) {
    case DEC_BYTE_LEVEL: {
        tmp->len = 0;
        if (buf_reserve(tmp, in->text.len + 1) < 0) return -1;
        for (size_t i = 0; i < in->n; i++)
            tmp->len += byte_level_bytes(base + in->off[i], in->off[i + 1] - in->off[i],
                                         tmp->bytes + tmp->len);
        if (buf_reserve(&out->text, 3 * tmp->len + 1) < 0) return -1;
        out->text.len = append_lossy(tmp->bytes, tmp->len, out->text.bytes);
        return list_end_token(out);
    }
    case DEC_FUSE:
        if (buf_append(&out->text, base, in->text.len) < 0) return -1;
        return list_end_token(out);
    case DEC_BYTE_FALLBACK:
        tmp->len = 0;
        for (size_t i = 0; i < in->n; i++) {
            const char *s = base + in->off[i];
            size_t len = in->off[i + 1] - in->off[i];
            int byte = fallback_byte(s, len);
            if (byte >= 0) {
                char b = (char)byte;
                if (buf_append(tmp, &b, 1) < 0) return -1;
                continue;
            }
            if (flush_fallback_bytes(out, tmp) < 0 || list_push(out, s, len) < 0) return -1;
        }
        return flush_fallback_bytes(out, tmp);
    case DEC_REPLACE:
    case DEC_METASPACE:
    case DEC_STRIP:
        break;
    }
    for (size_t i = 0; i < in->n; i++) {
        const char *s = base + in->off[i];
        size_t len = in->off[i + 1] - in->off[i];
        if (d->kind == DEC_STRIP) {
            /* Up to `start` leading and `stop` trailing content characters. */
            size_t start = 0, end = len, n, cut = 0;
            for (; cut < d->start && start < len; cut++) {
                if (next_char(s + start, len - start, &n) != d->content) break;
                start += n;
            }
            for (cut = 0; cut < d->stop && end > start; cut++) {
                size_t at = char_start_before(s, end);
                if (next_char(s + at, end - at, &n) != d->content) break;
                end = at;
            }
            if (list_push(out, s + start, end - start) < 0) return -1;
            continue;
        }
        bool drop = d->kind == DEC_METASPACE && i == 0 && d->prepend != PREPEND_NEVER;
        for (size_t at = 0; at < len;) {
            if (at + d->literal_len <= len && memcmp(s + at, d->literal, d->literal_len) == 0) {
                const char *with = d->kind == DEC_REPLACE ? d->text : " ";
                size_t with_len = d->kind == DEC_REPLACE ? d->text_len : (drop ? 0 : 1);
                if (buf_append(&out->text, with, with_len) < 0) return -1;
                at += d->literal_len;
                continue;
            }
            size_t n = tok_utf8_len((const uint8_t *)s + at, len - at);
            if (buf_append(&out->text, s + at, n) < 0) return -1;
            at += n;
        }
        if (list_end_token(out) < 0) return -1;
    }
    return 0;
}

/* Decodes through the decoder steps: the tokens' texts, each step in turn,
 * then joined (with ' ' when there is no decoder, as HF). */
static char *decode_steps(const lens_tokenizer *tok, const int32_t *ids, size_t n, size_t *len,
                          lens_err *err) {
    token_list lists[2] = {{{0}, NULL, 0, 0}, {{0}, NULL, 0, 0}};
    byte_buf tmp = {0};
    char *out = NULL;
    if (list_begin(&lists[0], n) < 0) goto oom;
    for (size_t i = 0; i < n; i++) {
        if (!tok->has_text[ids[i]]) continue;
        uint32_t off = tok->text_off[ids[i]];
        if (list_push(&lists[0], tok->text_bytes + off, tok->text_off[ids[i] + 1] - off) < 0)
            goto oom;
    }
    size_t cur = 0;
    for (size_t s = 0; s < tok->n_decs; s++, cur ^= 1)
        if (decode_step(&tok->decs[s], &lists[cur], &lists[cur ^ 1], &tmp) < 0) goto oom;
    const token_list *done = &lists[cur];
    size_t total = done->text.len + (done->n ? done->n - 1 : 0);
    out = malloc(total + 1);
    if (!out) goto oom;
    size_t pos = 0;
    for (size_t i = 0; i < done->n; i++) {
        if (i > 0 && !tok->has_decoder) out[pos++] = ' ';
        size_t piece = done->off[i + 1] - done->off[i];
        if (piece) memcpy(out + pos, done->text.bytes + done->off[i], piece);
        pos += piece;
    }
    out[pos] = '\0';
    *len = pos;
    goto done;
oom:
    lens_err_set(err, "out of memory");
done:
    free(lists[0].text.bytes);
    free(lists[0].off);
    free(lists[1].text.bytes);
    free(lists[1].off);
    free(tmp.bytes);
    return out;
}

char *lens_tok_decode(const lens_tokenizer *tok, const int32_t *ids, size_t n, size_t *len,
                      lens_err *err) {
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= tok->n_ids) {
            lens_err_set(err, "token id %d (position %zu) is out of range [0, %zu)", ids[i], i,
                         tok->n_ids);
            return NULL;
        }
    }
    if (tok->kind == KIND_BPE && !tok->decode_bytes) return decode_steps(tok, ids, n, len, err);
    bool spaced = tok->kind == KIND_LIST && tok->split == LENS_SPLIT_WHITESPACE;
    size_t raw_len = 0;
    for (size_t i = 0; i < n; i++)
        raw_len += tok->text_off[ids[i] + 1] - tok->text_off[ids[i]] + (spaced && i > 0);
    /* One invalid byte becomes the three bytes of U+FFFD. */
    char *raw = malloc(raw_len + 1), *out = malloc(3 * raw_len + 1);
    if (!raw || !out) {
        free(raw);
        free(out);
        lens_err_set(err, "out of memory");
        return NULL;
    }
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        if (spaced && i > 0) raw[pos++] = ' ';
        uint32_t off = tok->text_off[ids[i]], piece = tok->text_off[ids[i] + 1] - off;
        memcpy(raw + pos, tok->text_bytes + off, piece);
        pos += piece;
    }
    size_t out_len = append_lossy(raw, raw_len, out);
    free(raw);
    out[out_len] = '\0';
    *len = out_len;
    return out;
}
