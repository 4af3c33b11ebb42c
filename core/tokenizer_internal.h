/*
 * tokenizer_internal.h: what core/tokenizer.c (tables, encoding, decoding),
 * core/tokenizer_json.c (tokenizer.json) and core/tokenizer_dir.c (model
 * directories, SentencePiece and tiktoken files) share. Not part of lensd's
 * API: include core/tokenizer.h instead.
 *
 * A BPE tokenizer is Hugging Face's pipeline written out as data:
 *   added tokens -> normalizers -> normalized added tokens -> pre-tokenizer
 *   steps -> BPE model, and for decoding a list of decoder steps.
 * The loaders fill it; tokenizer.c runs it and never writes it afterwards.
 */
#ifndef LENS_TOKENIZER_INTERNAL_H
#define LENS_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8

#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tokenizer.h"

/* Ids are stored as int32_t; this bound also keeps a hostile file from
 * making us allocate gigabytes for one huge id. */
#define MAX_TOKEN_ID (1 << 26)

/* Pipeline steps a tokenizer may hold, at most, of each kind. */
#define MAX_STEPS 16

typedef enum tok_kind { KIND_BPE, KIND_LIST } tok_kind;

/* ---- string -> id hash table (open addressing, linear probing) ---------- */

typedef struct key_block key_block;

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

/* Makes room for at least n keys. Returns -1 when out of memory. */
int str_table_reserve(str_table *t, size_t n);
/* Maps key to id, replacing the id of an existing key. Returns the stable
 * stored copy of the key, or NULL when out of memory. */
const char *str_table_put(str_table *t, const char *key, size_t len, int32_t id);
/* The id of key, or -1. */
int32_t str_table_get(const str_table *t, const char *key, size_t len);
void str_table_free(str_table *t);

/* ---- (left id, right id) -> merge hash table ---------------------------- */

typedef struct merge_slot {
    uint64_t pair; /* left << 32 | right; UINT64_MAX marks an empty slot */
    int32_t rank;  /* lower merges first */
    int32_t merged;
} merge_slot;

typedef struct merge_table {
    merge_slot *slots;
    size_t cap; /* a power of two */
    size_t count;
} merge_table;

int merge_table_reserve(merge_table *t, size_t n);

/* ---- the pipeline ------------------------------------------------------- */

/* A regex of HF's, compiled twice: `plain` with PCRE2's Unicode tables, and
 * `full` (NULL when the pattern has no \p{L}, \p{N} or \d) with the code
 * points that HF's Oniguruma has beyond them. Both read text without those
 * code points alike, and `plain` is faster, so it runs wherever it can. */
typedef struct tok_regex {
    pcre2_code *plain, *full;
} tok_regex;

typedef enum norm_kind {
    NORM_NFC,
    NORM_PREPEND, /* text before a non-empty segment */
    NORM_REPLACE, /* every match of literal or regex by text */
    NORM_STRIP,   /* white space at the left and/or right */
} norm_kind;

typedef struct norm_step {
    norm_kind kind;
    char *text; /* PREPEND: what is prepended; REPLACE: the replacement */
    size_t text_len;
    char *literal; /* REPLACE with a String pattern */
    size_t literal_len;
    tok_regex regex;  /* REPLACE with a Regex pattern */
    bool left, right; /* STRIP */
} norm_step;

typedef enum pretok_kind {
    PRE_SPLIT,      /* pieces by a regex or a literal, kept per behavior */
    PRE_DIGITS,     /* numeric characters apart (each, or in runs) */
    PRE_METASPACE,  /* ' ' -> replacement, maybe prepended, maybe split before it */
    PRE_BYTE_LEVEL, /* maybe a prefix space, maybe GPT-2's regex; always the last step */
} pretok_kind;

/* HF's SplitDelimiterBehavior. */
typedef enum split_behavior {
    SPLIT_REMOVED,
    SPLIT_ISOLATED,
    SPLIT_MERGED_WITH_PREVIOUS,
    SPLIT_MERGED_WITH_NEXT,
    SPLIT_CONTIGUOUS,
} split_behavior;

typedef enum prepend_scheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend_scheme;

typedef struct pretok_step {
    pretok_kind kind;
    split_behavior behavior; /* SPLIT (DIGITS: ISOLATED or CONTIGUOUS) */
    bool invert;             /* SPLIT */
    tok_regex regex;         /* SPLIT with a Regex; BYTE_LEVEL with use_regex */
    char *literal;           /* SPLIT with a String (matched as is) */
    size_t literal_len;
    char replacement[4]; /* METASPACE, as UTF-8 */
    size_t replacement_len;
    prepend_scheme prepend; /* METASPACE */
    bool split;             /* METASPACE: split before each replacement */
    bool add_prefix_space;  /* BYTE_LEVEL */
} pretok_step;

typedef enum dec_kind {
    DEC_BYTE_LEVEL,    /* GPT-2's characters back to bytes, then lossy UTF-8 */
    DEC_METASPACE,     /* replacement -> ' ' (dropped in the first token unless NEVER) */
    DEC_REPLACE,       /* a literal by text, in each token */
    DEC_BYTE_FALLBACK, /* runs of <0xNN> tokens -> their UTF-8, else one U+FFFD each */
    DEC_FUSE,          /* all tokens into one */
    DEC_STRIP,         /* up to `start` leading and `stop` trailing `content` characters */
} dec_kind;

typedef struct dec_step {
    dec_kind kind;
    char *literal, *text; /* REPLACE; METASPACE: literal is the replacement */
    size_t literal_len, text_len;
    prepend_scheme prepend; /* METASPACE */
    uint32_t content;       /* STRIP: a code point */
    size_t start, stop;     /* STRIP */
} dec_step;

/* A trie over added tokens' texts, for leftmost-longest matching. */
typedef struct trie_node {
    int32_t first_child, next_sibling; /* node indices, -1 for none */
    int32_t token;                     /* index into added[] that ends here, or -1 */
    uint8_t byte;
} trie_node;

typedef struct added_trie {
    trie_node *nodes; /* nodes[0] is the root */
    size_t n_nodes, cap_nodes;
    int32_t root_child[256]; /* child of the root for each first byte, or -1 */
    int only_first;          /* the one first byte of all patterns, or -1 */
} added_trie;

typedef struct added_token {
    char *content; /* as in the file */
    size_t len;
    char *pattern; /* what is matched: content, normalized when `normalized` */
    size_t pattern_len;
    int32_t id;
    bool lstrip, rstrip, normalized, single_word, special;
} added_token;

struct lens_tokenizer {
    tok_kind kind;
    lens_split split;        /* KIND_LIST only */
    size_t n_ids;            /* largest id + 1 */
    str_table vocab;         /* model vocabulary (KIND_LIST: the list) entry text -> id */
    str_table added_by_text; /* added token content -> id */
    uint32_t
        *text_off;    /* [n_ids + 1]: id i decodes from text_bytes[text_off[i] .. text_off[i+1]) */
    char *text_bytes; /* per id: its bytes (decode_bytes) or its token text (decoder steps) */
    bool *has_text;   /* [n_ids]: false for ids that spell nothing */

    /* KIND_BPE: the model */
    merge_table merges;
    int32_t byte_id[256];     /* byte-level models: id of GPT-2's character for each byte */
    int32_t fallback_id[256]; /* id of "<0xNN>", or -1 */
    int32_t ascii_id[128];    /* id of each one-character ASCII entry, or -1 */
    bool all_bytes;           /* every byte_id is there */
    bool byte_fallback, fuse_unk, ignore_merges;
    char *unk_token;       /* NULL when the model has none */
    int32_t unk_id;        /* -1 when unk_token is not in the vocabulary */
    char *prefix, *suffix; /* continuing_subword_prefix, end_of_word_suffix, or NULL */
    size_t prefix_len, suffix_len;

    /* KIND_BPE: the pipeline */
    added_token *added;
    size_t n_added;
    added_trie raw_trie, normalized_trie; /* over the non-normalized / normalized ones */
    norm_step norms[MAX_STEPS];
    size_t n_norms;
    pretok_step pretoks[MAX_STEPS];
    size_t n_pretoks;
    dec_step decs[MAX_STEPS];
    size_t n_decs;
    bool has_decoder;  /* false: tokens are joined with ' ' as HF does without one */
    bool decode_bytes; /* the decoder is ByteLevel alone: text_bytes holds bytes */

    /* What the post-processor adds around one sequence. */
    int32_t post_prefix[4], post_suffix[4];
    size_t n_post_prefix, n_post_suffix;

    /* KIND_LIST */
    size_t longest_entry; /* bytes */
    bool has_multichar_entry;

    /* While loading only: the text of each id (pointers into the tables). */
    const char **id_text;
    size_t *id_text_len;
    size_t id_text_cap;
};

/* ---- shared helpers (tokenizer.c) ---------------------------------------- */

lens_tokenizer *tok_new(tok_kind kind, lens_err *err);

/* Adds a model vocabulary entry. Two entries with one id are an error. */
int tok_add_vocab(lens_tokenizer *tok, const char *text, size_t len, int64_t id, lens_err *err);

/* Adds merge number rank: left + right -> their concatenation (right without
 * the continuing-subword prefix), all three model vocabulary entries. */
int tok_add_merge(lens_tokenizer *tok, const char *left, size_t left_len, const char *right,
                  size_t right_len, size_t rank, lens_err *err);

/* Adds merge number rank of ids left + right -> merged (all in the vocabulary). */
int tok_add_merge_ids(lens_tokenizer *tok, int32_t left, int32_t right, int32_t merged, size_t rank,
                      lens_err *err);

/* Adds an added token (after the model vocabulary, merges and normalizers:
 * its pattern is normalized here when `normalized`). An added token's text
 * wins over the model's for its id when decoding. */
int tok_add_added(lens_tokenizer *tok, const char *content, size_t len, int64_t id, bool lstrip,
                  bool rstrip, bool normalized, bool single_word, bool special, lens_err *err);

/* The id an added token or, failing that, a model entry spells, or -1. */
int32_t tok_lookup(const lens_tokenizer *tok, const char *text, size_t len);

/* The next id HF gives a new added token: past the model vocabulary and past
 * every added token. */
int64_t tok_next_added_id(const lens_tokenizer *tok);

/* Finishes loading: tries, per-id texts, lookup caches. */
int tok_finish(lens_tokenizer *tok, lens_err *err);

/* Compiles a regex of HF's (Oniguruma syntax) for PCRE2 into *out, refusing
 * what the two engines read differently. `what` names the field in
 * messages. Returns -1 on error. */
int tok_compile_regex(const char *pattern, size_t len, const char *what, tok_regex *out,
                      lens_err *err);

/* GPT-2's pre-tokenizer regex, compiled into *out. */
int tok_gpt2_regex(tok_regex *out, lens_err *err);

/* Reads a whole file (malloc'd, *len bytes, NUL-terminated). */
char *tok_read_file(const char *path, size_t *len, lens_err *err);

/* Parses merges.txt into tok (vocabulary already loaded). */
int tok_load_merges_txt(lens_tokenizer *tok, const char *path, lens_err *err);

/* Loads vocab.json (a flat object) into tok's model vocabulary. */
int tok_load_vocab_json(lens_tokenizer *tok, const char *path, lens_err *err);

/* GPT-2's byte -> character mapping: the character (code point) for each byte. */
uint32_t tok_byte_char(uint8_t byte);

/* Encodes cp as UTF-8 into out (4 bytes of room); returns the length. */
size_t tok_utf8_put(uint32_t cp, char *out);

/* Length of the well-formed UTF-8 sequence at s[0 .. n), or 0. */
size_t tok_utf8_len(const uint8_t *s, size_t n);

/* Decodes the code point of a well-formed sequence of n bytes. */
uint32_t tok_utf8_decode(const uint8_t *s, size_t n);

/* ---- tokenizer.json (tokenizer_json.c) ----------------------------------- */

#include <jansson.h>

/* Builds a tokenizer from a parsed tokenizer.json. `path` names the file in
 * messages. */
lens_tokenizer *tok_from_hf_json(const json_t *root, lens_err *err);

/* What the post_processor of a tokenizer.json adds around one sequence;
 * refuses kinds it does not know. */
int tok_parse_post_processor(lens_tokenizer *tok, const json_t *post, lens_err *err);

#endif
