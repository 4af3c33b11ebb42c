/*
 * tokenizer.c: text <-> token ids for byte-level BPE (GPT-2, GPT-Neo) and for
 * plain token lists. The contract is in tokenizer.h.
 *
 * Encoding follows Hugging Face tokenizers step by step, so that ids match
 * GPT2TokenizerFast exactly:
 *  1. added tokens are cut out of the text first, leftmost-longest, the
 *     non-normalized ones before the normalized ones (two passes, as HF);
 *  2. each remaining segment is split by the GPT-2 pre-tokenizer regex (PCRE2,
 *     JIT when available);
 *  3. each piece's bytes start as one symbol per byte and adjacent symbols are
 *     merged lowest merge rank first (a min-heap of candidate pairs over a
 *     linked list of symbols, stale candidates skipped when popped).
 *
 * What it deliberately is not: a general tokenizer.json interpreter. Files with
 * a normalizer, a pre-tokenizer other than plain ByteLevel, BPE dropout,
 * subword prefixes or suffixes, byte fallback, ignore_merges or single_word
 * added tokens are refused rather than approximated. There is no per-word
 * cache: a loaded tokenizer is never written again, so threads share it
 * without locks.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "core/tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Ids are stored as int32_t; this bound also keeps a hostile vocab file from
 * making us allocate gigabytes for one huge id. */
#define MAX_TOKEN_ID (1 << 26)

typedef enum tok_kind { KIND_BPE, KIND_LIST } tok_kind;

/* ---- string -> id hash table (open addressing, linear probing) ---------- */

/* Key bytes live in blocks that are never moved (slots point into them) and
 * are freed together with the table. */
typedef struct key_block {
    struct key_block *next;
    size_t used, cap;
    char bytes[];
} key_block;

typedef struct str_slot {
    const char *key; /* NUL-terminated, in the table's key blocks; NULL marks an empty slot */
    uint32_t len;
    uint32_t hash; /* of the key, so that probes and growing rarely touch key bytes */
    int32_t id;
} str_slot;

typedef struct str_table {
    str_slot *slots;
    size_t cap; /* a power of two */
    size_t count;
    key_block *keys; /* the block being filled first */
} str_table;

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
static int str_table_reserve(str_table *t, size_t n) {
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

/* Maps key to id, replacing the id of an existing key. Returns the (stable)
 * stored copy of the key, or NULL when out of memory (or for a key of 4 GB
 * or more). */
static const char *str_table_put(str_table *t, const char *key, size_t len, int32_t id) {
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

static int32_t str_table_get(const str_table *t, const char *key, size_t len) {
    if (t->cap == 0 || len >= UINT32_MAX) return -1;
    const str_slot *s = str_table_find(t, key, len, hash_bytes(key, len));
    return s->key ? s->id : -1;
}

static void str_table_free(str_table *t) {
    for (key_block *b = t->keys, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    free(t->slots);
}

/* ---- (left id, right id) -> merge hash table ---------------------------- */

#define NO_PAIR UINT64_MAX

typedef struct merge_slot {
    uint64_t pair; /* left << 32 | right; NO_PAIR marks an empty slot */
    int32_t rank;  /* line number in merges.txt, 0 first: lower merges first */
    int32_t merged;
} merge_slot;

typedef struct merge_table {
    merge_slot *slots;
    size_t cap; /* a power of two */
    size_t count;
} merge_table;

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
static int merge_table_reserve(merge_table *t, size_t n) {
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

/* ---- the tokenizer ------------------------------------------------------ */

typedef struct added_token {
    char *content;
    size_t len;
    int32_t id;
    bool lstrip, rstrip, normalized;
} added_token;

struct lens_tokenizer {
    tok_kind kind;
    lens_split split;   /* KIND_LIST only */
    size_t n_ids;       /* largest id + 1 */
    str_table entries;  /* entry text -> id; added tokens win over the model vocab */
    uint32_t *text_off; /* [n_ids + 1]: id i decodes to text_bytes[text_off[i] .. text_off[i+1]) */
    char *text_bytes;

    /* KIND_BPE */
    merge_table merges;
    int32_t byte_id[256]; /* id of the one-byte token for each byte */
    added_token *added;
    size_t n_added;
    pcre2_code *pretokenizer;

    /* KIND_LIST */
    size_t longest_entry; /* bytes */
    bool has_multichar_entry;

    /* While loading only: the entry text of each id (pointers into entries). */
    const char **id_text;
    size_t *id_text_len;
    size_t id_text_cap;
};

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

/* Decodes the code point of a well-formed sequence of n bytes. */
static uint32_t utf8_code_point(const uint8_t *s, size_t n) {
    static const uint8_t lead_mask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
    uint32_t cp = s[0] & lead_mask[n];
    for (size_t i = 1; i < n; i++)
        cp = cp << 6 | (s[i] & 0x3F);
    return cp;
}

static size_t utf8_put(uint32_t cp, char *out) {
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

/* Rust's char::is_whitespace, i.e. the Unicode White_Space property: what HF
 * strips beside an added token with lstrip or rstrip. */
static bool is_unicode_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* ---- GPT-2's byte <-> printable character mapping ----------------------- */

/* GPT-2 spells each byte as a printable character: the printable Latin-1
 * bytes as themselves, the other 68 as U+0100.. in byte order (space is
 * U+0120 'Ġ'). This is bytes_to_unicode() of GPT-2's encoder.py. */
typedef struct byte_alphabet {
    uint32_t code_point[256]; /* byte -> the character that spells it */
    int16_t byte[256 + 68];   /* character -> the byte it spells, or -1 */
} byte_alphabet;

static void byte_alphabet_init(byte_alphabet *a) {
    uint32_t next_extra = 256;
    for (unsigned b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        a->code_point[b] = printable ? b : next_extra++;
    }
    for (size_t cp = 0; cp < sizeof a->byte / sizeof a->byte[0]; cp++)
        a->byte[cp] = -1;
    for (unsigned b = 0; b < 256; b++)
        a->byte[a->code_point[b]] = (int16_t)b;
}

/* The bytes a vocabulary entry stands for: its characters mapped back to
 * bytes if every one of them spells a byte, else its own UTF-8 text (HF's
 * ByteLevel decoder does the same, e.g. for "<|endoftext|>"'s literal text).
 * Writes at most len bytes to out and returns how many. */
static size_t entry_bytes(const byte_alphabet *alphabet, const char *text, size_t len, char *out) {
    const uint8_t *s = (const uint8_t *)text;
    size_t n_out = 0, invalid_len;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_sequence(s + i, len - i, &invalid_len);
        uint32_t cp = n ? utf8_code_point(s + i, n) : UINT32_MAX;
        int b = cp < sizeof alphabet->byte / sizeof alphabet->byte[0] ? alphabet->byte[cp] : -1;
        if (b < 0) {
            memcpy(out, text, len);
            return len;
        }
        out[n_out++] = (char)b;
        i += n;
    }
    return n_out;
}

/* ---- loading ------------------------------------------------------------ */

static lens_tokenizer *tok_new(tok_kind kind, lens_err *err) {
    lens_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        lens_err_set(err, "out of memory");
        return NULL;
    }
    tok->kind = kind;
    return tok;
}

/* Records that id spells text. With replace false, an id that already spells
 * something else is an error (two vocabulary entries with one id); with
 * replace true (added tokens) the new text wins for both directions. */
static int set_entry(lens_tokenizer *tok, const char *text, size_t len, int64_t id, bool replace,
                     lens_err *err) {
    if (id < 0 || id >= MAX_TOKEN_ID) {
        lens_err_set(err, "id %lld of \"%.64s\" is out of range [0, %d)", (long long)id, text,
                     MAX_TOKEN_ID);
        return -1;
    }
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
    const char *stored = str_table_put(&tok->entries, text, len, (int32_t)id);
    if (!stored) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    tok->id_text[id] = stored;
    tok->id_text_len[id] = len;
    if ((size_t)id >= tok->n_ids) tok->n_ids = (size_t)id + 1;
    return 0;
}

/* Builds the per-id decoded bytes from id_text and drops id_text. Ids that
 * spell nothing (gaps) decode to nothing, as in HF. */
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
    if (!tok->text_off || !tok->text_bytes) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    byte_alphabet alphabet;
    byte_alphabet_init(&alphabet);
    uint32_t off = 0;
    for (size_t i = 0; i < tok->n_ids; i++) {
        tok->text_off[i] = off;
        const char *text = tok->id_text[i];
        if (!text) continue;
        size_t len = tok->id_text_len[i];
        if (tok->kind == KIND_BPE) {
            off += (uint32_t)entry_bytes(&alphabet, text, len, tok->text_bytes + off);
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
        if (set_entry(tok, key, strlen(key), json_integer_value(value), false, err) < 0) return -1;
    }
    return 0;
}

/* Finds the one-byte tokens; every byte must have one, or some text could not
 * be encoded. */
static int find_byte_ids(lens_tokenizer *tok, lens_err *err) {
    byte_alphabet alphabet;
    byte_alphabet_init(&alphabet);
    for (unsigned b = 0; b < 256; b++) {
        char spelled[4];
        size_t len = utf8_put(alphabet.code_point[b], spelled);
        tok->byte_id[b] = str_table_get(&tok->entries, spelled, len);
        if (tok->byte_id[b] < 0) {
            lens_err_set(err, "the vocabulary has no entry \"%.*s\" for byte 0x%02x", (int)len,
                         spelled, b);
            return -1;
        }
    }
    return 0;
}

/* Adds merge number rank: left + right -> their concatenation. All three must
 * be model vocabulary entries, so merges are added before added tokens. */
static int add_merge(lens_tokenizer *tok, const char *left, size_t left_len, const char *right,
                     size_t right_len, size_t rank, lens_err *err) {
    int32_t left_id = str_table_get(&tok->entries, left, left_len);
    int32_t right_id = str_table_get(&tok->entries, right, right_len);
    char small[256];
    char *joined = left_len + right_len <= sizeof small ? small : malloc(left_len + right_len);
    if (!joined) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    memcpy(joined, left, left_len);
    memcpy(joined + left_len, right, right_len);
    int32_t merged_id = str_table_get(&tok->entries, joined, left_len + right_len);
    if (joined != small) free(joined);
    if (left_id < 0 || right_id < 0 || merged_id < 0) {
        const char *missing = left_id < 0 ? left : right;
        size_t missing_len = left_id < 0 ? left_len : right_len;
        if (left_id >= 0 && right_id >= 0)
            lens_err_set(err, "merge %zu: \"%.*s%.*s\" is not in the vocabulary", rank + 1,
                         (int)(left_len > 64 ? 64 : left_len), left,
                         (int)(right_len > 64 ? 64 : right_len), right);
        else
            lens_err_set(err, "merge %zu: \"%.*s\" is not in the vocabulary", rank + 1,
                         (int)(missing_len > 64 ? 64 : missing_len), missing);
        return -1;
    }
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

static int add_added_token(lens_tokenizer *tok, const char *content, size_t len, int64_t id,
                           bool lstrip, bool rstrip, bool normalized, lens_err *err) {
    if (len == 0) {
        lens_err_set(err, "added token %lld is empty", (long long)id);
        return -1;
    }
    for (size_t i = 0; i < tok->n_added; i++) {
        if (tok->added[i].len == len && memcmp(tok->added[i].content, content, len) == 0) {
            lens_err_set(err, "added token \"%.64s\" is listed twice", content);
            return -1;
        }
    }
    if (set_entry(tok, content, len, id, true, err) < 0) return -1;
    added_token *grown = realloc(tok->added, (tok->n_added + 1) * sizeof *grown);
    char *copy = malloc(len);
    if (grown) tok->added = grown;
    if (!grown || !copy) {
        free(copy);
        lens_err_set(err, "out of memory");
        return -1;
    }
    memcpy(copy, content, len);
    tok->added[tok->n_added++] = (added_token){copy, len, (int32_t)id, lstrip, rstrip, normalized};
    return 0;
}

static int compile_pretokenizer(lens_tokenizer *tok, lens_err *err) {
    int code;
    PCRE2_SIZE offset;
    tok->pretokenizer = pcre2_compile((PCRE2_SPTR)GPT2_PATTERN, PCRE2_ZERO_TERMINATED,
                                      PCRE2_UTF | PCRE2_UCP, &code, &offset, NULL);
    if (!tok->pretokenizer) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        lens_err_set(err, "pre-tokenizer regex: %s at offset %zu", (char *)msg, (size_t)offset);
        return -1;
    }
    /* Without JIT support pcre2_match interprets the pattern: slower, same
     * matches, so a failure here is not an error. */
    pcre2_jit_compile(tok->pretokenizer, PCRE2_JIT_COMPLETE);
    return 0;
}

static char *read_file(const char *path, size_t *len, lens_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        lens_err_set(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
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
    *len = n;
    return buf;
}

/* Parses merges.txt: an optional "#version" first line, then one merge per
 * line, "left right" (lines may end in \r\n; empty lines are skipped). */
static int load_merges_txt(lens_tokenizer *tok, const char *path, lens_err *err) {
    size_t len;
    char *text = read_file(path, &len, err);
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
        if (line_no == 1 && line_len >= 8 && memcmp(line, "#version", 8) == 0) continue;
        char *space = memchr(line, ' ', line_len);
        size_t left_len = space ? (size_t)(space - line) : 0;
        size_t right_len = space ? line_len - left_len - 1 : 0;
        if (!space || left_len == 0 || right_len == 0 || memchr(space + 1, ' ', right_len)) {
            lens_err_set(err, "%s: line %zu is not two tokens separated by one space", path,
                         line_no);
            free(text);
            return -1;
        }
        if (add_merge(tok, line, left_len, space + 1, right_len, rank++, err) < 0) {
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
        out += utf8_put((uint32_t)cp, out);
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
    if (str_table_reserve(&tok->entries, colons) < 0) return -1;
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
        if (str_table_get(&tok->entries, key, key_len) >= 0) return -1; /* jansson: last one wins */
        if (set_entry(tok, key, key_len, id, false, NULL) < 0) return -1;
        p = skip_json_space(p, end);
    }
    if (p >= end) return -1;
    return skip_json_space(p + 1, end) == end ? 0 : -1;
}

/* Loads vocab.json directly into tok's table. Returns -1 (tok then holds
 * part of it; the caller starts again with jansson) for a file that cannot
 * be read or does not have the plain shape described above. */
static int load_vocab_direct(lens_tokenizer *tok, const char *path) {
    size_t len;
    char *text = read_file(path, &len, NULL);
    if (!text) return -1;
    int rc = parse_vocab_direct(tok, text, len);
    free(text);
    return rc;
}

lens_tokenizer *lens_tok_load_bpe(const char *vocab_json_path, const char *merges_txt_path,
                                  lens_err *err) {
    lens_tokenizer *tok = tok_new(KIND_BPE, err);
    if (!tok) return NULL;
    int rc = load_vocab_direct(tok, vocab_json_path);
    if (rc < 0) {
        lens_tok_free(tok);
        if (!(tok = tok_new(KIND_BPE, err))) return NULL;
        json_error_t jerr;
        json_t *vocab = json_load_file(vocab_json_path, 0, &jerr);
        if (!vocab) {
            lens_err_set(err, "%s: %s (line %d, column %d)", vocab_json_path, jerr.text, jerr.line,
                         jerr.column);
            goto fail;
        }
        rc = load_vocab_object(tok, vocab, err);
        json_decref(vocab);
    }
    if (rc < 0 || find_byte_ids(tok, err) < 0) {
        lens_err_prefix(err, "%s", vocab_json_path);
        goto fail;
    }
    if (load_merges_txt(tok, merges_txt_path, err) < 0) goto fail;
    /* GPT2TokenizerFast's one special token; it gets the next id if the
     * vocabulary lacks it, as HF would give it. */
    static const char eot[] = "<|endoftext|>";
    int32_t eot_id = str_table_get(&tok->entries, eot, strlen(eot));
    if (add_added_token(tok, eot, strlen(eot), eot_id >= 0 ? eot_id : (int64_t)tok->n_ids, false,
                        false, false, err) < 0 ||
        compile_pretokenizer(tok, err) < 0 || finish_texts(tok, err) < 0)
        goto fail;
    return tok;
fail:
    lens_tok_free(tok);
    return NULL;
}

/* A missing key reads as null. */
static bool json_is_null_or_absent(const json_t *v) {
    return !v || json_is_null(v);
}

static bool json_is_false_or_absent(const json_t *v) {
    return !v || json_is_false(v);
}

static bool json_is_empty_string_or_absent(const json_t *v) {
    return json_is_null_or_absent(v) || (json_is_string(v) && json_string_length(v) == 0);
}

static const char *json_type_name(const json_t *obj) {
    const char *type = json_string_value(json_object_get(obj, "type"));
    return type ? type : "(no type)";
}

/* Refuses any part of a tokenizer.json that would make HF's ids differ from
 * plain byte-level BPE. */
static int check_hf_pipeline(const json_t *root, const json_t *model, lens_err *err) {
    if (!json_is_object(model)) {
        lens_err_set(err, "no \"model\" object");
        return -1;
    }
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!type || strcmp(type, "BPE") != 0) {
        lens_err_set(err, "model type \"%s\" is not supported (only BPE)", type ? type : "");
        return -1;
    }
    if (!json_is_null_or_absent(json_object_get(model, "dropout")) ||
        !json_is_empty_string_or_absent(json_object_get(model, "continuing_subword_prefix")) ||
        !json_is_empty_string_or_absent(json_object_get(model, "end_of_word_suffix")) ||
        !json_is_false_or_absent(json_object_get(model, "byte_fallback")) ||
        !json_is_false_or_absent(json_object_get(model, "ignore_merges"))) {
        lens_err_set(err, "BPE options dropout, continuing_subword_prefix, end_of_word_suffix, "
                          "byte_fallback and ignore_merges are not supported");
        return -1;
    }
    const json_t *normalizer = json_object_get(root, "normalizer");
    if (!json_is_null_or_absent(normalizer)) {
        lens_err_set(err, "normalizer \"%s\" is not supported", json_type_name(normalizer));
        return -1;
    }
    const json_t *pre = json_object_get(root, "pre_tokenizer");
    const char *pre_type = json_string_value(json_object_get(pre, "type"));
    if (!pre_type || strcmp(pre_type, "ByteLevel") != 0) {
        lens_err_set(err, "pre_tokenizer \"%s\" is not supported (only ByteLevel)",
                     pre ? json_type_name(pre) : "null");
        return -1;
    }
    const json_t *use_regex = json_object_get(pre, "use_regex");
    if (!json_is_false(json_object_get(pre, "add_prefix_space")) ||
        (use_regex && !json_is_true(use_regex))) {
        lens_err_set(err, "ByteLevel pre_tokenizer must have add_prefix_space false and "
                          "use_regex true");
        return -1;
    }
    const json_t *decoder = json_object_get(root, "decoder");
    if (!json_is_null_or_absent(decoder) && strcmp(json_type_name(decoder), "ByteLevel") != 0) {
        lens_err_set(err, "decoder \"%s\" is not supported (only ByteLevel)",
                     json_type_name(decoder));
        return -1;
    }
    return 0;
}

/* model.merges: "left right" strings (older files) or ["left", "right"]. */
static int load_merges_json(lens_tokenizer *tok, const json_t *merges, lens_err *err) {
    if (!json_is_array(merges)) {
        lens_err_set(err, "model.merges is not an array");
        return -1;
    }
    if (merge_table_reserve(&tok->merges, json_array_size(merges)) < 0) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    size_t rank;
    json_t *merge;
    json_array_foreach(merges, rank, merge) {
        const char *left = NULL, *right = NULL;
        size_t left_len = 0, right_len = 0;
        if (json_is_string(merge)) {
            const char *s = json_string_value(merge);
            const char *space = strchr(s, ' ');
            if (space && !strchr(space + 1, ' ')) {
                left = s;
                left_len = (size_t)(space - s);
                right = space + 1;
                right_len = strlen(right);
            }
        } else if (json_is_array(merge) && json_array_size(merge) == 2 &&
                   json_is_string(json_array_get(merge, 0)) &&
                   json_is_string(json_array_get(merge, 1))) {
            left = json_string_value(json_array_get(merge, 0));
            left_len = json_string_length(json_array_get(merge, 0));
            right = json_string_value(json_array_get(merge, 1));
            right_len = json_string_length(json_array_get(merge, 1));
        }
        if (!left || left_len == 0 || right_len == 0) {
            lens_err_set(err, "model.merges[%zu] is neither \"left right\" nor [left, right]",
                         rank);
            return -1;
        }
        if (add_merge(tok, left, left_len, right, right_len, rank, err) < 0) return -1;
    }
    return 0;
}

/* Every added token is matched in the text, special or not, as HF does. */
static int load_added_tokens(lens_tokenizer *tok, const json_t *added, lens_err *err) {
    if (json_is_null_or_absent(added)) return 0;
    if (!json_is_array(added)) {
        lens_err_set(err, "added_tokens is not an array");
        return -1;
    }
    size_t i;
    json_t *entry;
    json_array_foreach(added, i, entry) {
        const json_t *id = json_object_get(entry, "id");
        const json_t *content = json_object_get(entry, "content");
        if (!json_is_integer(id) || !json_is_string(content)) {
            lens_err_set(err, "added_tokens[%zu] lacks an integer id or a string content", i);
            return -1;
        }
        if (json_is_true(json_object_get(entry, "single_word"))) {
            lens_err_set(err, "added token \"%.64s\": single_word is not supported",
                         json_string_value(content));
            return -1;
        }
        if (add_added_token(tok, json_string_value(content), json_string_length(content),
                            json_integer_value(id), json_is_true(json_object_get(entry, "lstrip")),
                            json_is_true(json_object_get(entry, "rstrip")),
                            !json_is_false(json_object_get(entry, "normalized")), err) < 0)
            return -1;
    }
    return 0;
}

lens_tokenizer *lens_tok_load_hf_json(const char *tokenizer_json_path, lens_err *err) {
    lens_tokenizer *tok = tok_new(KIND_BPE, err);
    if (!tok) return NULL;
    json_error_t jerr;
    json_t *root = json_load_file(tokenizer_json_path, 0, &jerr);
    if (!root) {
        lens_err_set(err, "%s: %s (line %d, column %d)", tokenizer_json_path, jerr.text, jerr.line,
                     jerr.column);
        lens_tok_free(tok);
        return NULL;
    }
    const json_t *model = json_object_get(root, "model");
    int rc = check_hf_pipeline(root, model, err);
    if (rc == 0) rc = load_vocab_object(tok, json_object_get(model, "vocab"), err);
    if (rc == 0) rc = find_byte_ids(tok, err);
    if (rc == 0) rc = load_merges_json(tok, json_object_get(model, "merges"), err);
    if (rc == 0) rc = load_added_tokens(tok, json_object_get(root, "added_tokens"), err);
    json_decref(root);
    if (rc == 0) rc = compile_pretokenizer(tok, err);
    if (rc == 0) rc = finish_texts(tok, err);
    if (rc < 0) {
        lens_err_prefix(err, "%s", tokenizer_json_path);
        lens_tok_free(tok);
        return NULL;
    }
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
        int32_t seen = str_table_get(&tok->entries, tokens[i], len);
        if (seen >= 0) {
            lens_err_set(err, "token %zu (\"%.64s\") duplicates token %d", i, tokens[i], seen);
            goto fail;
        }
        if (set_entry(tok, tokens[i], len, (int64_t)i, false, err) < 0) goto fail;
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
    str_table_free(&tok->entries);
    free(tok->merges.slots);
    for (size_t i = 0; i < tok->n_added; i++)
        free(tok->added[i].content);
    free(tok->added);
    pcre2_code_free(tok->pretokenizer);
    free(tok->text_off);
    free(tok->text_bytes);
    free(tok->id_text);
    free(tok->id_text_len);
    free(tok);
}

size_t lens_tok_vocab_size(const lens_tokenizer *tok) {
    return tok->n_ids;
}

int32_t lens_tok_lookup(const lens_tokenizer *tok, const char *entry) {
    return str_table_get(&tok->entries, entry, strlen(entry));
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
    symbol *syms;
    merge_candidate *heap;
    size_t cap_word;    /* capacity of syms and heap, in bytes of word */
    size_t *next_match; /* [2 * n_added]: per pass, where each added token next occurs */
    pcre2_match_data *match;
} encode_state;

static int push_id(encode_state *st, int32_t id, lens_err *err) {
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

/* BPE on one pre-tokenized piece. Each merge can add at most two candidates
 * and removes a symbol, so the heap never holds more than 3 * len entries. */
static int encode_word(const lens_tokenizer *tok, const uint8_t *word, size_t len, encode_state *st,
                       lens_err *err) {
    if (len == 1) return push_id(st, tok->byte_id[word[0]], err);
    if (len > INT32_MAX / 4) {
        lens_err_set(err, "a pre-tokenized piece of %zu bytes is too long", len);
        return -1;
    }
    if (len > st->cap_word) {
        symbol *syms = realloc(st->syms, len * sizeof *syms);
        if (syms) st->syms = syms;
        merge_candidate *heap = realloc(st->heap, 3 * len * sizeof *heap);
        if (heap) st->heap = heap;
        if (!syms || !heap) {
            lens_err_set(err, "out of memory");
            return -1;
        }
        st->cap_word = len;
    }
    symbol *syms = st->syms;
    for (size_t i = 0; i < len; i++)
        syms[i] =
            (symbol){tok->byte_id[word[i]], (int32_t)i - 1, i + 1 < len ? (int32_t)i + 1 : -1};
    size_t n_heap = 0;
    for (size_t i = 0; i + 1 < len; i++)
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

/* Splits a segment free of added tokens with the GPT-2 regex and encodes each
 * piece. The segment is the whole subject, so (?!\S) sees its end as HF's
 * per-segment pre-tokenizer does. */
static int encode_plain(const lens_tokenizer *tok, const char *seg, size_t len, encode_state *st,
                        lens_err *err) {
    size_t off = 0;
    while (off < len) {
        int rc = pcre2_match(tok->pretokenizer, (PCRE2_SPTR)seg, len, off, PCRE2_NO_UTF_CHECK,
                             st->match, NULL);
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            lens_err_set(err, "pre-tokenizer regex failed at byte %zu: %s", off, (char *)msg);
            return -1;
        }
        PCRE2_SIZE *span = pcre2_get_ovector_pointer(st->match);
        if (encode_word(tok, (const uint8_t *)seg + span[0], span[1] - span[0], st, err) < 0)
            return -1;
        off = span[1];
    }
    return 0;
}

/* Start of the run of Unicode white space that ends at text[at], not before lo. */
static size_t space_run_start(const char *text, size_t lo, size_t at) {
    const uint8_t *s = (const uint8_t *)text;
    while (at > lo) {
        size_t start = at - 1, invalid_len;
        while (start > lo && (s[start] & 0xC0) == 0x80)
            start--;
        size_t n = utf8_sequence(s + start, at - start, &invalid_len);
        if (!is_unicode_space(utf8_code_point(s + start, n))) break;
        at = start;
    }
    return at;
}

/* End of the run of Unicode white space that starts at text[at], not after hi. */
static size_t space_run_end(const char *text, size_t at, size_t hi) {
    const uint8_t *s = (const uint8_t *)text;
    size_t invalid_len;
    while (at < hi) {
        size_t n = utf8_sequence(s + at, hi - at, &invalid_len);
        if (!is_unicode_space(utf8_code_point(s + at, n))) break;
        at += n;
    }
    return at;
}

#define NO_MATCH SIZE_MAX

static size_t find_added(const added_token *t, const char *text, size_t from, size_t end) {
    const char *hit = memmem(text + from, end - from, t->content, t->len);
    return hit ? (size_t)(hit - text) : NO_MATCH;
}

/* Encodes text[start .. end). Pass 0 cuts out the added tokens that match
 * the raw text (normalized false), pass 1 those that match normalized text
 * (no normalizer is supported, so the same text), then the rest goes to the
 * pre-tokenizer. Matches are leftmost-longest and non-overlapping like HF's
 * Aho-Corasick search, which resumes after the matched text even when rstrip
 * took white space beyond it: a token that starts with white space can then
 * match again inside that white space, and HF emits both. */
static int encode_segment(const lens_tokenizer *tok, const char *text, size_t start, size_t end,
                          int pass, encode_state *st, lens_err *err) {
    if (pass == 2) return encode_plain(tok, text + start, end - start, st, err);
    size_t *next = st->next_match + pass * tok->n_added;
    for (size_t k = 0; k < tok->n_added; k++)
        next[k] = tok->added[k].normalized == (pass == 1)
                      ? find_added(&tok->added[k], text, start, end)
                      : NO_MATCH;
    size_t pos = start;         /* end of the text consumed so far */
    size_t search_from = start; /* end of the last match, before rstrip */
    for (;;) {
        size_t best = NO_MATCH;
        for (size_t k = 0; k < tok->n_added; k++) {
            if (next[k] != NO_MATCH && next[k] < search_from)
                next[k] = find_added(&tok->added[k], text, search_from, end);
            if (next[k] == NO_MATCH) continue;
            if (best == NO_MATCH || next[k] < next[best] ||
                (next[k] == next[best] && tok->added[k].len > tok->added[best].len))
                best = k;
        }
        if (best == NO_MATCH) break;
        const added_token *t = &tok->added[best];
        size_t match_start = next[best], match_end = next[best] + t->len;
        search_from = match_end;
        if (t->lstrip) match_start = space_run_start(text, pos, match_start);
        if (t->rstrip) match_end = space_run_end(text, match_end, end);
        if (pos < match_start && encode_segment(tok, text, pos, match_start, pass + 1, st, err) < 0)
            return -1;
        if (push_id(st, t->id, err) < 0) return -1;
        pos = match_end;
    }
    return pos < end ? encode_segment(tok, text, pos, end, pass + 1, st, err) : 0;
}

static int encode_bpe(const lens_tokenizer *tok, const char *text, size_t len, encode_state *st,
                      lens_err *err) {
    st->match = pcre2_match_data_create_from_pattern(tok->pretokenizer, NULL);
    st->next_match = malloc((2 * tok->n_added + 1) * sizeof *st->next_match);
    if (!st->match || !st->next_match) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    return encode_segment(tok, text, 0, len, 0, st, err);
}

static int encode_piece(const lens_tokenizer *tok, const char *piece, size_t len, size_t at,
                        encode_state *st, lens_err *err) {
    int32_t id = str_table_get(&tok->entries, piece, len);
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
                if (str_table_get(&tok->entries, text + pos, n) >= 0) {
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
    *ids = NULL;
    *n = 0;
    if (utf8_validate(text, len, err) < 0) return -1;
    if (len == 0) return 0;
    encode_state st = {0};
    int rc = tok->kind == KIND_BPE ? encode_bpe(tok, text, len, &st, err)
                                   : encode_list(tok, text, len, &st, err);
    free(st.syms);
    free(st.heap);
    free(st.next_match);
    pcre2_match_data_free(st.match);
    if (rc < 0) {
        free(st.ids);
        return -1;
    }
    *ids = st.ids;
    *n = st.n_ids;
    return 0;
}

/* ---- decoding ----------------------------------------------------------- */

char *lens_tok_decode(const lens_tokenizer *tok, const int32_t *ids, size_t n, size_t *len,
                      lens_err *err) {
    bool spaced = tok->kind == KIND_LIST && tok->split == LENS_SPLIT_WHITESPACE;
    size_t raw_len = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= tok->n_ids) {
            lens_err_set(err, "token id %d (position %zu) is out of range [0, %zu)", ids[i], i,
                         tok->n_ids);
            return NULL;
        }
        raw_len += tok->text_off[ids[i] + 1] - tok->text_off[ids[i]] + (spaced && i > 0);
    }
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
    size_t out_len = 0, invalid_len;
    for (size_t i = 0; i < raw_len;) {
        size_t seq = utf8_sequence((const uint8_t *)raw + i, raw_len - i, &invalid_len);
        if (seq) {
            memcpy(out + out_len, raw + i, seq);
            out_len += seq;
            i += seq;
        } else {
            out_len += utf8_put(0xFFFD, out + out_len);
            i += invalid_len;
        }
    }
    free(raw);
    out[out_len] = '\0';
    *len = out_len;
    return out;
}
