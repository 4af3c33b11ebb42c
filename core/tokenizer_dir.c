/*
 * tokenizer_dir.c: the tokenizer of a Hugging Face model directory, built as
 * transformers 5.23's AutoTokenizer builds it (lens_tok_load_dir).
 *
 * The files, in the order transformers prefers them:
 *  - tokenizer.json: the pipeline as written (tokenizer_json.c);
 *  - tokenizer.model: either SentencePiece (a protobuf ModelProto, read
 *    here: pieces and model type) converted as LlamaTokenizerFast does —
 *    vocabulary in piece order, merges generated from it, Metaspace
 *    pre-tokenizer, byte fallback — or a tiktoken file (base64 token and rank
 *    per line, Llama 3's) converted as TikTokenConverter does, with Meta's
 *    pattern and, without a tokenizer_config.json, Meta's 256 special tokens;
 *  - vocab.json + merges.txt, with the pipeline of the tokenizer class
 *    (GPT-2's and CodeGen's byte-level regex, GPT-NeoX's with NFC, Qwen2's
 *    NFC + Split regex + ByteLevel).
 * Then tokenizer_config.json's added_tokens_decoder and the named special
 * tokens (bos, eos, unk, pad, ...; config, else special_tokens_map.json,
 * else the class's defaults) are added where missing, and what a single
 * sequence gets (BOS, EOS) is worked out from add_bos_token / add_eos_token
 * or else the post-processor, as transformers does.
 *
 * Not supported (refused by name): SentencePiece Unigram models, tokenizer
 * classes outside CLASSES below for vocab.json + merges.txt, and added
 * tokens whose listed id is not the one transformers would give them.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/tokenizer_internal.h"

/* Meta's pre-tokenizer regex for Llama 3 (TikTokenConverter's default), and
 * Qwen2's (the same with single digits). */
static const char LLAMA3_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

typedef enum pipeline {
    PIPE_TOKENIZER_JSON, /* only from tokenizer.json */
    PIPE_GPT2,           /* ByteLevel with GPT-2's regex */
    PIPE_GPT_NEOX,       /* NFC, then as GPT-2 */
    PIPE_QWEN2,          /* NFC, Split(Qwen2's regex), ByteLevel */
    PIPE_LLAMA,          /* SentencePiece tokenizer.model */
} pipeline;

/* The tokenizer classes lensd builds (transformers' names, "Fast" dropped:
 * transformers 5 makes them aliases), with their default special tokens. */
typedef struct tok_class {
    const char *name;
    pipeline vocab_merges; /* what vocab.json + merges.txt become */
    const char *unk, *bos, *eos, *pad, *mask;
} tok_class;

static const tok_class CLASSES[] = {
    {"GPT2Tokenizer", PIPE_GPT2, "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", NULL, NULL},
    {"CodeGenTokenizer", PIPE_GPT2, "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", NULL, NULL},
    {"GPTNeoXTokenizer", PIPE_GPT_NEOX, "<|endoftext|>", "<|endoftext|>", "<|endoftext|>",
     "<|padding|>", NULL},
    {"Qwen2Tokenizer", PIPE_QWEN2, "<|endoftext|>", NULL, "<|endoftext|>", "<|endoftext|>", NULL},
    {"LlamaTokenizer", PIPE_LLAMA, "<unk>", "<s>", "</s>", NULL, NULL},
    {"CodeLlamaTokenizer", PIPE_LLAMA, "<unk>", "<s>", "</s>", NULL, NULL},
    {"GemmaTokenizer", PIPE_TOKENIZER_JSON, "<unk>", "<bos>", "<eos>", "<pad>", "<mask>"},
};

/* A class with no defaults: tokenizer.json as it is (transformers'
 * TokenizersBackend, e.g. for PreTrainedTokenizerFast). */
static const tok_class BACKEND_CLASS = {
    "PreTrainedTokenizerFast", PIPE_TOKENIZER_JSON, NULL, NULL, NULL, NULL, NULL};

/* transformers' special token attributes, in its order. */
static const char *const NAMED[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                    "pad_token", "cls_token", "mask_token"};
#define N_NAMED (sizeof NAMED / sizeof NAMED[0])
enum { NAMED_BOS, NAMED_EOS, NAMED_UNK, NAMED_SEP, NAMED_PAD, NAMED_CLS, NAMED_MASK };

/* A special token as the config files give it. */
typedef struct named_token {
    const char *content; /* NULL: none */
    bool lstrip, rstrip, normalized, single_word, special;
} named_token;

typedef struct dir_files {
    const char *dir;
    json_t *config;     /* tokenizer_config.json, or NULL */
    json_t *tokens_map; /* special_tokens_map.json, or NULL */
    const tok_class *cls;
    named_token named[N_NAMED];
} dir_files;

/* ---- files ---------------------------------------------------------------- */

static void join_path(char *out, size_t size, const char *dir, const char *name) {
    snprintf(out, size, "%s/%s", dir, name);
}

static bool file_exists(const char *dir, const char *name) {
    char path[4096];
    join_path(path, sizeof path, dir, name);
    return access(path, R_OK) == 0;
}

/* Reads dir/name as JSON into *out (NULL when the file is absent). */
static int read_optional_json(const char *dir, const char *name, json_t **out, lens_err *err) {
    char path[4096];
    join_path(path, sizeof path, dir, name);
    *out = NULL;
    if (access(path, F_OK) != 0) return 0;
    json_error_t jerr;
    /* As reals: model_max_length is often 1e30 written out as an integer,
     * too big for jansson's; no integer of these files is read here. */
    *out = json_load_file(path, JSON_DECODE_INT_AS_REAL, &jerr);
    if (!*out || !json_is_object(*out)) {
        lens_err_set(err, "%s: %s (line %d, column %d)", path,
                     *out ? "not a JSON object" : jerr.text, jerr.line, jerr.column);
        json_decref(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

static const tok_class *find_class(const json_t *config, bool *known) {
    const char *name = json_string_value(json_object_get(config, "tokenizer_class"));
    *known = name == NULL;
    if (!name) return NULL;
    size_t len = strlen(name);
    if (len > 4 && strcmp(name + len - 4, "Fast") == 0) len -= 4;
    for (size_t i = 0; i < sizeof CLASSES / sizeof CLASSES[0]; i++) {
        if (strlen(CLASSES[i].name) == len && strncmp(CLASSES[i].name, name, len) == 0) {
            *known = true;
            return &CLASSES[i];
        }
    }
    return NULL;
}

static bool json_flag(const json_t *obj, const char *key, bool otherwise) {
    const json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : otherwise;
}

/* A token value of the config files: a string, an AddedToken dict, or null. */
static named_token token_value(const json_t *v) {
    named_token t = {0};
    if (json_is_string(v)) {
        t.content = json_string_value(v);
        t.special = true;
    } else if (json_is_object(v) && json_is_string(json_object_get(v, "content"))) {
        t.content = json_string_value(json_object_get(v, "content"));
        t.special = json_flag(v, "special", true);
        t.lstrip = json_flag(v, "lstrip", false);
        t.rstrip = json_flag(v, "rstrip", false);
        t.single_word = json_flag(v, "single_word", false);
        t.normalized = json_flag(v, "normalized", !t.special);
    }
    return t;
}

/* The named special tokens: tokenizer_config.json's keys; without its
 * added_tokens_decoder, special_tokens_map.json's over them (transformers'
 * legacy path); else the class's defaults. */
static void resolve_named(dir_files *f) {
    const char *defaults[N_NAMED] = {0};
    if (f->cls) {
        defaults[NAMED_BOS] = f->cls->bos;
        defaults[NAMED_EOS] = f->cls->eos;
        defaults[NAMED_UNK] = f->cls->unk;
        defaults[NAMED_PAD] = f->cls->pad;
        defaults[NAMED_MASK] = f->cls->mask;
    }
    bool legacy_map = f->tokens_map && !json_object_get(f->config, "added_tokens_decoder");
    for (size_t k = 0; k < N_NAMED; k++) {
        const json_t *v = json_object_get(f->config, NAMED[k]);
        if (legacy_map && json_object_get(f->tokens_map, NAMED[k]))
            v = json_object_get(f->tokens_map, NAMED[k]);
        if (v) {
            f->named[k] = token_value(v);
        } else {
            f->named[k] = (named_token){.content = defaults[k], .special = true};
        }
    }
}

/* ---- SentencePiece tokenizer.model ------------------------------------------ */

typedef struct pb_reader {
    const uint8_t *p, *end;
} pb_reader;

static bool pb_varint(pb_reader *r, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64 && r->p < r->end; shift += 7) {
        uint8_t b = *r->p++;
        *v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) return true;
    }
    return false;
}

/* Reads the next field's key and, for a length-delimited one, its bytes
 * (*sub); other wire types are skipped over into *value. */
static bool pb_field(pb_reader *r, uint32_t *field, uint32_t *wire, pb_reader *sub,
                     uint64_t *value) {
    uint64_t key;
    if (!pb_varint(r, &key)) return false;
    *field = (uint32_t)(key >> 3);
    *wire = (uint32_t)(key & 7);
    switch (*wire) {
    case 0:
        return pb_varint(r, value);
    case 1:
        if (r->end - r->p < 8) return false;
        r->p += 8;
        return true;
    case 2: {
        uint64_t len;
        if (!pb_varint(r, &len) || len > (uint64_t)(r->end - r->p)) return false;
        *sub = (pb_reader){r->p, r->p + len};
        r->p += len;
        return true;
    }
    case 5:
        if (r->end - r->p < 4) return false;
        r->p += 4;
        return true;
    default:
        return false;
    }
}

typedef struct spm_piece {
    const char *text;
    size_t len;
    int type; /* 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte */
} spm_piece;

/* Reads a ModelProto's pieces (field 1: piece 1, type 3) and its
 * trainer_spec.model_type (field 2, then 3). */
static int parse_spm(const uint8_t *data, size_t len, spm_piece **pieces, size_t *n,
                     int *model_type, lens_err *err) {
    pb_reader r = {data, data + len};
    size_t cap = 0;
    *pieces = NULL;
    *n = 0;
    *model_type = 1; /* the proto's default: UNIGRAM */
    while (r.p < r.end) {
        uint32_t field, wire;
        pb_reader sub = {0};
        uint64_t value;
        if (!pb_field(&r, &field, &wire, &sub, &value)) goto bad;
        if (field == 1 && wire == 2) {
            spm_piece piece = {NULL, 0, 1};
            while (sub.p < sub.end) {
                uint32_t f, w;
                pb_reader s = {0};
                uint64_t v;
                if (!pb_field(&sub, &f, &w, &s, &v)) goto bad;
                if (f == 1 && w == 2) {
                    piece.text = (const char *)s.p;
                    piece.len = (size_t)(s.end - s.p);
                } else if (f == 3 && w == 0) {
                    piece.type = (int)v;
                }
            }
            if (!piece.text) goto bad;
            if (*n == cap) {
                cap = cap ? 2 * cap : 1024;
                spm_piece *grown = realloc(*pieces, cap * sizeof *grown);
                if (!grown) {
                    lens_err_set(err, "out of memory");
                    goto fail;
                }
                *pieces = grown;
            }
            (*pieces)[(*n)++] = piece;
        } else if (field == 2 && wire == 2) {
            while (sub.p < sub.end) {
                uint32_t f, w;
                pb_reader s = {0};
                uint64_t v;
                if (!pb_field(&sub, &f, &w, &s, &v)) goto bad;
                if (f == 3 && w == 0) *model_type = (int)v;
            }
        }
    }
    return 0;
bad:
    lens_err_set(err, "not a SentencePiece model (malformed protobuf at byte %zu)",
                 (size_t)(r.p - data));
fail:
    free(*pieces);
    *pieces = NULL;
    *n = 0;
    return -1;
}

/* SentencePiece BPE as LlamaTokenizerFast builds it: vocabulary in piece
 * order; merges generated from it (transformers' generate_merges: for each
 * piece in id order, every split into two vocabulary entries, shortest left
 * part first); Metaspace; byte fallback; control and user-defined pieces as
 * added tokens. */
static lens_tokenizer *load_spm(const char *path, const uint8_t *data, size_t len,
                                const dir_files *f, lens_err *err) {
    spm_piece *pieces;
    size_t n;
    int model_type;
    if (parse_spm(data, len, &pieces, &n, &model_type, err) < 0) {
        lens_err_prefix(err, "%s", path);
        return NULL;
    }
    lens_tokenizer *tok = NULL;
    if (model_type != 2) {
        lens_err_set(err, "SentencePiece model type %d is not supported (only BPE, 2)", model_type);
        goto done;
    }
    if (!(tok = tok_new(KIND_BPE, err))) goto done;
    for (size_t i = 0; i < n; i++) {
        if (str_table_get(&tok->vocab, pieces[i].text, pieces[i].len) >= 0) {
            lens_err_set(err, "piece %zu (\"%.*s\") is listed twice", i,
                         (int)(pieces[i].len > 64 ? 64 : pieces[i].len), pieces[i].text);
            goto fail;
        }
        if (tok_add_vocab(tok, pieces[i].text, pieces[i].len, (int64_t)i, err) < 0) goto fail;
    }
    size_t rank = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = pieces[i].text;
        for (size_t cut = 0; cut < pieces[i].len;) {
            size_t c = tok_utf8_len((const uint8_t *)p + cut, pieces[i].len - cut);
            if (c == 0) {
                lens_err_set(err, "piece %zu is not valid UTF-8", i);
                goto fail;
            }
            cut += c;
            if (cut >= pieces[i].len) break;
            if (str_table_get(&tok->vocab, p, cut) >= 0 &&
                str_table_get(&tok->vocab, p + cut, pieces[i].len - cut) >= 0 &&
                tok_add_merge(tok, p, cut, p + cut, pieces[i].len - cut, rank++, err) < 0)
                goto fail;
        }
    }
    tok->byte_fallback = tok->fuse_unk = true;
    bool prefix_space = json_flag(f->config, "add_prefix_space", true);
    bool legacy = json_flag(f->config, "legacy", false);
    prepend_scheme scheme = !prefix_space ? PREPEND_NEVER : legacy ? PREPEND_ALWAYS : PREPEND_FIRST;
    tok->pretoks[0] = (pretok_step){.kind = PRE_METASPACE,
                                    .replacement = "\xE2\x96\x81",
                                    .replacement_len = 3,
                                    .prepend = scheme,
                                    .split = false};
    tok->n_pretoks = 1;
    tok->decs[0] = (dec_step){.kind = DEC_REPLACE,
                              .literal = malloc(4),
                              .literal_len = 3,
                              .text = malloc(2),
                              .text_len = 1};
    tok->decs[1] = (dec_step){.kind = DEC_BYTE_FALLBACK};
    tok->decs[2] = (dec_step){.kind = DEC_FUSE};
    tok->decs[3] = (dec_step){.kind = DEC_STRIP, .content = ' ', .start = 1, .stop = 0};
    tok->n_decs = prefix_space ? 4 : 3;
    tok->has_decoder = true;
    if (!tok->decs[0].literal || !tok->decs[0].text) {
        lens_err_set(err, "out of memory");
        goto fail;
    }
    memcpy(tok->decs[0].literal, "\xE2\x96\x81", 4);
    memcpy(tok->decs[0].text, " ", 2);
    for (size_t i = 0; i < n; i++) {
        if (pieces[i].type != 3 && pieces[i].type != 4) continue;
        if (tok_add_added(tok, pieces[i].text, pieces[i].len, (int64_t)i, false, false, false,
                          false, pieces[i].type == 3, err) < 0)
            goto fail;
    }
    goto done;
fail:
    lens_tok_free(tok);
    tok = NULL;
done:
    free(pieces);
    if (!tok) lens_err_prefix(err, "%s", path);
    return tok;
}

/* ---- tiktoken tokenizer.model ------------------------------------------------ */

/* Meta's llama/tokenizer.py: the 256 special tokens after the BPE ranks. */
static void llama3_special(size_t i, char *out, size_t size) {
    static const char *const named[] = {"<|begin_of_text|>",
                                        "<|end_of_text|>",
                                        "<|reserved_special_token_0|>",
                                        "<|reserved_special_token_1|>",
                                        "<|reserved_special_token_2|>",
                                        "<|reserved_special_token_3|>",
                                        "<|start_header_id|>",
                                        "<|end_header_id|>",
                                        "<|reserved_special_token_4|>",
                                        "<|eot_id|>"};
    if (i < 10)
        snprintf(out, size, "%s", named[i]);
    else
        snprintf(out, size, "<|reserved_special_token_%zu|>", i - 5);
}

static bool looks_like_tiktoken(const char *data, size_t len) {
    size_t i = 0;
    while (i < len &&
           (isalnum((unsigned char)data[i]) || data[i] == '+' || data[i] == '/' || data[i] == '='))
        i++;
    if (i == 0 || i >= len || data[i] != ' ') return false;
    size_t digits = 0;
    for (i++; i < len && data[i] >= '0' && data[i] <= '9'; i++)
        digits++;
    return digits > 0 && i < len && (data[i] == '\n' || data[i] == '\r');
}

static int base64_value(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decodes standard base64 (padded) s[len] into out; returns the length or -1. */
static long base64_decode(const char *s, size_t len, uint8_t *out) {
    if (len % 4 != 0) return -1;
    size_t n = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        for (int k = 0; k < 4; k++)
            v[k] = s[i + k] == '=' && i + 4 == len && k >= 2 ? -2 : base64_value(s[i + k]);
        if (v[0] < 0 || v[1] < 0 || v[2] == -1 || v[3] == -1 || (v[2] == -2 && v[3] != -2))
            return -1;
        out[n++] = (uint8_t)(v[0] << 2 | v[1] >> 4);
        if (v[2] >= 0) out[n++] = (uint8_t)((v[1] & 15) << 4 | v[2] >> 2);
        if (v[3] >= 0) out[n++] = (uint8_t)((v[2] & 3) << 6 | v[3]);
    }
    return (long)n;
}

typedef struct merge_candidate_ids {
    int32_t left, right;
} merge_candidate_ids;

static int compare_candidates(const void *a, const void *b) {
    const merge_candidate_ids *x = a, *y = b;
    if (x->left != y->left) return x->left < y->left ? -1 : 1;
    return (x->right > y->right) - (x->right < y->right);
}

/* A tiktoken file as transformers' TikTokenConverter converts it: each
 * token's bytes spelled in GPT-2's characters with its rank as id; merges
 * generated (for each token in rank order, every split into two tokens,
 * ordered by the ranks of the left then the right part); ignore_merges;
 * Split(Meta's regex) then ByteLevel. Special tokens: those of
 * added_tokens_decoder past the ranks (gaps as transformers fills them), or
 * without a tokenizer_config.json Meta's 256. */
static lens_tokenizer *load_tiktoken(const char *path, const char *data, size_t len,
                                     const dir_files *f, lens_err *err) {
    lens_tokenizer *tok = tok_new(KIND_BPE, err);
    if (!tok) return NULL;
    str_table raw = {0}; /* token bytes -> rank */
    uint8_t *bytes = malloc(len + 1);
    char *spelled = malloc(2 * len + 8);
    size_t *starts = NULL, *lens = NULL, n_tokens = 0, cap = 0;
    merge_candidate_ids *cands = NULL;
    if (!bytes || !spelled) goto oom;
    size_t used = 0, line_no = 0;
    int64_t last_rank = -1;
    for (size_t pos = 0; pos < len;) {
        const char *line = data + pos;
        const char *eol = memchr(line, '\n', len - pos);
        size_t line_len = eol ? (size_t)(eol - line) : len - pos;
        pos += line_len + 1;
        line_no++;
        if (line_len > 0 && line[line_len - 1] == '\r') line_len--;
        if (line_len == 0) continue;
        const char *space = memchr(line, ' ', line_len);
        long n = space ? base64_decode(line, (size_t)(space - line), bytes + used) : -1;
        char *end = NULL;
        long long rank = space ? strtoll(space + 1, &end, 10) : -1;
        if (n <= 0 || rank < 0 || end != line + line_len || rank >= MAX_TOKEN_ID) {
            lens_err_set(err, "line %zu is not a base64 token and a rank", line_no);
            goto fail;
        }
        if (rank <= last_rank) {
            lens_err_set(err, "line %zu: rank %lld is not above the one before", line_no, rank);
            goto fail;
        }
        last_rank = rank;
        if (!str_table_put(&raw, (const char *)bytes + used, (size_t)n, (int32_t)rank)) goto oom;
        size_t spelled_len = 0;
        for (long k = 0; k < n; k++)
            spelled_len +=
                tok_utf8_put(tok_byte_char(bytes[used + (size_t)k]), spelled + spelled_len);
        if (tok_add_vocab(tok, spelled, spelled_len, rank, err) < 0) goto fail;
        if (n_tokens == cap) {
            cap = cap ? 2 * cap : 4096;
            size_t *s = realloc(starts, cap * sizeof *s);
            if (s) starts = s;
            size_t *l = realloc(lens, cap * sizeof *l);
            if (l) lens = l;
            if (!s || !l) goto oom;
        }
        starts[n_tokens] = used;
        lens[n_tokens++] = (size_t)n;
        used += (size_t)n;
    }
    cands = malloc((used + 1) * sizeof *cands);
    if (!cands || merge_table_reserve(&tok->merges, used) < 0) goto oom;
    size_t rank = 0;
    for (size_t t = 0; t < n_tokens; t++) {
        const char *tb = (const char *)bytes + starts[t];
        int32_t merged = str_table_get(&raw, tb, lens[t]);
        size_t n_cands = 0;
        for (size_t cut = 1; cut < lens[t]; cut++) {
            int32_t left = str_table_get(&raw, tb, cut);
            int32_t right = str_table_get(&raw, tb + cut, lens[t] - cut);
            if (left >= 0 && right >= 0) cands[n_cands++] = (merge_candidate_ids){left, right};
        }
        qsort(cands, n_cands, sizeof *cands, compare_candidates);
        for (size_t k = 0; k < n_cands; k++)
            if (tok_add_merge_ids(tok, cands[k].left, cands[k].right, merged, rank++, err) < 0)
                goto fail;
    }
    tok->ignore_merges = true;
    tok->pretoks[0] = (pretok_step){.kind = PRE_SPLIT, .behavior = SPLIT_ISOLATED};
    tok->pretoks[1] = (pretok_step){.kind = PRE_BYTE_LEVEL};
    tok->n_pretoks = 2;
    if (tok_compile_regex(LLAMA3_PATTERN, sizeof LLAMA3_PATTERN - 1, "the Llama 3 pattern",
                          &tok->pretoks[0].regex, err) < 0)
        goto fail;
    tok->decs[0] = (dec_step){.kind = DEC_BYTE_LEVEL};
    tok->n_decs = 1;
    tok->has_decoder = tok->decode_bytes = true;
    /* The special tokens past the ranks. */
    const json_t *decoder = json_object_get(f->config, "added_tokens_decoder");
    int64_t base = (int64_t)n_tokens, top = base + 255;
    if (f->config) {
        top = base - 1;
        const char *key;
        json_t *value;
        json_object_foreach((json_t *)decoder, key, value) {
            long long id = strtoll(key, NULL, 10);
            if (id > top) top = id;
        }
    }
    for (int64_t id = base; id <= top && id < MAX_TOKEN_ID; id++) {
        char name[64], key[32];
        const char *content = name;
        snprintf(key, sizeof key, "%lld", (long long)id);
        const json_t *listed = json_object_get(decoder, key);
        if (!f->config)
            llama3_special((size_t)(id - base), name, sizeof name);
        else if (json_is_string(json_object_get(listed, "content")))
            content = json_string_value(json_object_get(listed, "content"));
        else
            snprintf(name, sizeof name, "<|reserved_token_%lld|>", (long long)id);
        if (tok_add_added(tok, content, strlen(content), id, false, false, false, false, true,
                          err) < 0)
            goto fail;
    }
    goto done;
oom:
    lens_err_set(err, "out of memory");
fail:
    lens_tok_free(tok);
    tok = NULL;
done:
    str_table_free(&raw);
    free(bytes);
    free(spelled);
    free(starts);
    free(lens);
    free(cands);
    if (!tok) lens_err_prefix(err, "%s", path);
    return tok;
}

/* ---- vocab.json + merges.txt --------------------------------------------------- */

static lens_tokenizer *load_vocab_merges(const dir_files *f, lens_err *err) {
    char vocab[4096], merges[4096], config[4096];
    join_path(vocab, sizeof vocab, f->dir, "vocab.json");
    join_path(merges, sizeof merges, f->dir, "merges.txt");
    join_path(config, sizeof config, f->dir, "tokenizer_config.json");
    if (f->cls == &BACKEND_CLASS || f->cls->vocab_merges == PIPE_LLAMA ||
        f->cls->vocab_merges == PIPE_TOKENIZER_JSON) {
        lens_err_set(err,
                     "%s: tokenizer_class \"%s\" has no vocab.json + merges.txt form that "
                     "lensd builds (GPT2Tokenizer, CodeGenTokenizer, GPTNeoXTokenizer, "
                     "Qwen2Tokenizer)",
                     config, f->cls->name);
        return NULL;
    }
    lens_tokenizer *tok = tok_new(KIND_BPE, err);
    if (!tok) return NULL;
    if (tok_load_vocab_json(tok, vocab, err) < 0 || tok_load_merges_txt(tok, merges, err) < 0)
        goto fail;
    if (f->cls->vocab_merges != PIPE_GPT2)
        tok->norms[tok->n_norms++] = (norm_step){.kind = NORM_NFC};
    bool prefix_space = json_flag(f->config, "add_prefix_space", false);
    if (f->cls->vocab_merges == PIPE_QWEN2) {
        tok->pretoks[0] = (pretok_step){.kind = PRE_SPLIT, .behavior = SPLIT_ISOLATED};
        tok->pretoks[1] = (pretok_step){.kind = PRE_BYTE_LEVEL, .add_prefix_space = prefix_space};
        tok->n_pretoks = 2;
        if (tok_compile_regex(QWEN2_PATTERN, sizeof QWEN2_PATTERN - 1, "the Qwen2 pattern",
                              &tok->pretoks[0].regex, err) < 0)
            goto fail;
    } else {
        tok->pretoks[0] = (pretok_step){.kind = PRE_BYTE_LEVEL, .add_prefix_space = prefix_space};
        tok->n_pretoks = 1;
        if (tok_gpt2_regex(&tok->pretoks[0].regex, err) < 0) goto fail;
    }
    tok->decs[0] = (dec_step){.kind = DEC_BYTE_LEVEL};
    tok->n_decs = 1;
    tok->has_decoder = tok->decode_bytes = true;
    return tok;
fail:
    lens_tok_free(tok);
    return NULL;
}

/* ---- added tokens from the config files ------------------------------------------ */

static int compare_ids(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* Adds a token the way transformers' add_tokens does: the id of its text in
 * the vocabulary, else the next free id; `listed` (>= 0) must agree. */
static int add_like_transformers(lens_tokenizer *tok, const named_token *t, long long listed,
                                 const char *where, lens_err *err) {
    size_t len = strlen(t->content);
    if (len == 0 || str_table_get(&tok->added_by_text, t->content, len) >= 0) return 0;
    int32_t known = str_table_get(&tok->vocab, t->content, len);
    int64_t id = known >= 0 ? known : tok_next_added_id(tok);
    if (listed >= 0 && id != listed) {
        lens_err_set(err,
                     "%s: \"%.64s\" is listed with id %lld, but transformers would give it "
                     "%lld",
                     where, t->content, listed, (long long)id);
        return -1;
    }
    return tok_add_added(tok, t->content, len, id, t->lstrip, t->rstrip, t->normalized,
                         t->single_word, t->special, err);
}

static int add_config_tokens(lens_tokenizer *tok, const dir_files *f, lens_err *err) {
    const json_t *decoder = json_object_get(f->config, "added_tokens_decoder");
    size_t n = json_object_size(decoder), k = 0;
    long long *ids = malloc((n + 1) * sizeof *ids);
    if (!ids) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)decoder, key, value) ids[k++] = strtoll(key, NULL, 10);
    qsort(ids, n, sizeof *ids, compare_ids);
    for (k = 0; k < n; k++) {
        char name[32];
        snprintf(name, sizeof name, "%lld", ids[k]);
        named_token t = token_value(json_object_get(decoder, name));
        if (!t.content) {
            lens_err_set(err, "tokenizer_config.json: added_tokens_decoder[\"%s\"] has no content",
                         name);
            free(ids);
            return -1;
        }
        t.special = json_flag(json_object_get(decoder, name), "special", false);
        t.normalized = json_flag(json_object_get(decoder, name), "normalized", !t.special);
        if (add_like_transformers(tok, &t, ids[k], "tokenizer_config.json: added_tokens_decoder",
                                  err) < 0) {
            free(ids);
            return -1;
        }
    }
    free(ids);
    for (k = 0; k < N_NAMED; k++)
        if (f->named[k].content &&
            add_like_transformers(tok, &f->named[k], -1, "special token", err) < 0)
            return -1;
    static const char *const extra_keys[] = {"additional_special_tokens", "extra_special_tokens"};
    for (size_t e = 0; e < 2; e++) {
        const json_t *list = json_object_get(f->config, extra_keys[e]);
        size_t i;
        json_t *item;
        json_array_foreach(list, i, item) {
            named_token t = token_value(item);
            if (t.content && add_like_transformers(tok, &t, -1, extra_keys[e], err) < 0) return -1;
        }
    }
    return 0;
}

/* ---- what a single sequence gets ---------------------------------------------------- */

static int32_t named_id(const lens_tokenizer *tok, const named_token *t) {
    return t->content ? tok_lookup(tok, t->content, strlen(t->content)) : -1;
}

/* transformers: explicit add_bos_token / add_eos_token in the config make
 * the post-processor "[bos] $A [eos]" (each flag false when absent); so does
 * a tokenizer without a post-processor, with both false. */
static void config_post_processor(lens_tokenizer *tok, const dir_files *f) {
    bool add_bos = json_flag(f->config, "add_bos_token", false);
    bool add_eos = json_flag(f->config, "add_eos_token", false);
    int32_t bos = named_id(tok, &f->named[NAMED_BOS]), eos = named_id(tok, &f->named[NAMED_EOS]);
    tok->n_post_prefix = tok->n_post_suffix = 0;
    if (add_bos && bos >= 0) tok->post_prefix[tok->n_post_prefix++] = bos;
    if (add_eos && eos >= 0) tok->post_suffix[tok->n_post_suffix++] = eos;
}

static int fill_specials(const lens_tokenizer *tok, const dir_files *f, lens_tok_specials *out,
                         lens_err *err) {
    lens_tok_specials s = {named_id(tok, &f->named[NAMED_BOS]),
                           named_id(tok, &f->named[NAMED_EOS]),
                           named_id(tok, &f->named[NAMED_PAD]),
                           named_id(tok, &f->named[NAMED_UNK]),
                           tok->n_post_prefix > 0,
                           tok->n_post_suffix > 0};
    struct {
        const char *what;
        size_t n;
        const int32_t *ids;
        int32_t *named;
    } ends[2] = {{"BOS", tok->n_post_prefix, tok->post_prefix, &s.bos_id},
                 {"EOS", tok->n_post_suffix, tok->post_suffix, &s.eos_id}};
    for (int e = 0; e < 2; e++) {
        if (ends[e].n == 0) continue;
        if (ends[e].n > 1) {
            lens_err_set(err, "post_processor: adds %zu tokens %s a sequence, not one %s",
                         ends[e].n, e ? "after" : "before", ends[e].what);
            return -1;
        }
        if (*ends[e].named < 0) {
            *ends[e].named = ends[e].ids[0];
        } else if (*ends[e].named != ends[e].ids[0]) {
            lens_err_set(err, "post_processor: adds id %d as %s but the %s token is id %d",
                         ends[e].ids[0], ends[e].what, ends[e].what, *ends[e].named);
            return -1;
        }
    }
    if (out) *out = s;
    return 0;
}

/* ---- the directory ---------------------------------------------------------------------- */

static lens_tokenizer *load_model_file(dir_files *f, lens_err *err) {
    char path[4096];
    join_path(path, sizeof path, f->dir, "tokenizer.model");
    size_t len;
    char *data = tok_read_file(path, &len, err);
    if (!data) return NULL;
    lens_tokenizer *tok = NULL;
    if (looks_like_tiktoken(data, len)) {
        /* transformers reads a tiktoken file whatever the class says. */
        if (!f->cls) f->cls = &BACKEND_CLASS;
        resolve_named(f);
        tok = load_tiktoken(path, data, len, f, err);
        if (tok && !f->config) {
            /* Meta's own tokenizer: BOS <|begin_of_text|>, EOS <|end_of_text|>. */
            f->named[NAMED_BOS] = (named_token){.content = "<|begin_of_text|>", .special = true};
            f->named[NAMED_EOS] = (named_token){.content = "<|end_of_text|>", .special = true};
            tok->post_prefix[0] = tok_lookup(tok, "<|begin_of_text|>", 17);
            tok->n_post_prefix = 1;
        }
    } else if (f->cls ? f->cls->vocab_merges != PIPE_LLAMA
                      : f->config && json_object_get(f->config, "tokenizer_class")) {
        lens_err_set(err,
                     "%s: tokenizer_class \"%s\" is not built from a SentencePiece model "
                     "(only LlamaTokenizer)",
                     path, json_string_value(json_object_get(f->config, "tokenizer_class")));
    } else {
        if (!f->cls) f->cls = &CLASSES[4]; /* LlamaTokenizerFast */
        resolve_named(f);
        tok = load_spm(path, (const uint8_t *)data, len, f, err);
    }
    free(data);
    return tok;
}

lens_tokenizer *lens_tok_load_dir(const char *dir, lens_tok_specials *specials, lens_err *err) {
    dir_files f = {dir, NULL, NULL, NULL, {{0}}};
    lens_tokenizer *tok = NULL;
    if (read_optional_json(dir, "tokenizer_config.json", &f.config, err) < 0 ||
        read_optional_json(dir, "special_tokens_map.json", &f.tokens_map, err) < 0)
        goto done;
    bool known;
    f.cls = find_class(f.config, &known);
    bool post_from_file = false;
    if (file_exists(dir, "tokenizer.json")) {
        if (!f.cls) f.cls = &BACKEND_CLASS;
        resolve_named(&f);
        char path[4096];
        join_path(path, sizeof path, dir, "tokenizer.json");
        json_error_t jerr;
        json_t *root = json_load_file(path, 0, &jerr);
        if (!root) {
            lens_err_set(err, "%s: %s (line %d, column %d)", path, jerr.text, jerr.line,
                         jerr.column);
            goto done;
        }
        tok = tok_from_hf_json(root, err);
        const json_t *post = json_object_get(root, "post_processor");
        post_from_file = post && !json_is_null(post);
        json_decref(root);
        if (!tok) {
            lens_err_prefix(err, "%s", path);
            goto done;
        }
    } else if (file_exists(dir, "tokenizer.model")) {
        if (!(tok = load_model_file(&f, err))) goto done;
        post_from_file = !f.config && tok->n_post_prefix > 0; /* Meta's BOS */
    } else if (file_exists(dir, "vocab.json") && file_exists(dir, "merges.txt")) {
        if (!known) {
            lens_err_set(err,
                         "%s/tokenizer_config.json: tokenizer_class \"%s\" is not supported "
                         "with vocab.json + merges.txt",
                         dir, json_string_value(json_object_get(f.config, "tokenizer_class")));
            goto done;
        }
        if (!f.cls) f.cls = &CLASSES[0]; /* GPT2Tokenizer */
        resolve_named(&f);
        if (!(tok = load_vocab_merges(&f, err))) goto done;
    } else {
        lens_err_set(err, "%s: no tokenizer.json, tokenizer.model or vocab.json + merges.txt", dir);
        goto done;
    }
    if (add_config_tokens(tok, &f, err) < 0) {
        lens_err_prefix(err, "%s", dir);
        goto fail;
    }
    if (json_object_get(f.config, "add_bos_token") || json_object_get(f.config, "add_eos_token") ||
        !post_from_file)
        config_post_processor(tok, &f);
    if (fill_specials(tok, &f, specials, err) < 0) {
        lens_err_prefix(err, "%s", dir);
        goto fail;
    }
    if (tok_finish(tok, err) < 0) {
        lens_err_prefix(err, "%s", dir);
        goto fail;
    }
    goto done;
fail:
    lens_tok_free(tok);
    tok = NULL;
done:
    json_decref(f.config);
    json_decref(f.tokens_map);
    return tok;
}
