/*
 * tokenizer_json.c: a Hugging Face tokenizer.json read into lensd's pipeline
 * (tokenizer_internal.h). Each part is read as `tokenizers` deserializes it:
 * the BPE model (merges as "a b" or ["a", "b"], byte_fallback, unk_token and
 * fuse_unk, ignore_merges, continuing_subword_prefix / end_of_word_suffix),
 * the normalizers (Sequence, NFC, Prepend, Replace, Strip),
 * the pre-tokenizers (Sequence, Split, Digits, Metaspace, ByteLevel), the
 * added tokens, the decoders (Sequence, ByteLevel, Metaspace, Replace,
 * ByteFallback, Fuse, Strip) and what the post-processor (TemplateProcessing,
 * ByteLevel, RobertaProcessing, BertProcessing, Sequence) adds around one
 * sequence. Anything else is refused with the field named, never guessed.
 * Truncation and padding are ignored: lensd encodes whole texts.
 */
#include <stdlib.h>
#include <string.h>

#include "core/tokenizer_internal.h"

/* A missing key reads as null. */
static bool is_null_or_absent(const json_t *v) {
    return !v || json_is_null(v);
}

static const char *type_name(const json_t *obj) {
    const char *type = json_string_value(json_object_get(obj, "type"));
    return type ? type : "(no type)";
}

/* A bool field that defaults to `otherwise` when absent or null. */
static bool flag(const json_t *obj, const char *key, bool otherwise) {
    const json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : otherwise;
}

static char *copy_string(const char *s, size_t len) {
    char *copy = malloc(len + 1);
    if (copy) {
        memcpy(copy, s, len);
        copy[len] = '\0';
    }
    return copy;
}

/* A string field copied (NULL when absent, null or empty). Returns -1 when
 * out of memory or when the field is there but not a string. */
static int optional_string(const json_t *obj, const char *key, const char *where, char **out,
                           size_t *len, lens_err *err) {
    const json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (len) *len = 0;
    if (is_null_or_absent(v)) return 0;
    if (!json_is_string(v)) {
        lens_err_set(err, "%s.%s is not a string", where, key);
        return -1;
    }
    if (json_string_length(v) == 0) return 0;
    *out = copy_string(json_string_value(v), json_string_length(v));
    if (!*out) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    if (len) *len = json_string_length(v);
    return 0;
}

/* A {"String": s} or {"Regex": r} pattern: *literal or *regex is set. */
static int read_pattern(const json_t *obj, const char *where, char **literal, size_t *literal_len,
                        tok_regex *regex, lens_err *err) {
    const json_t *pattern = json_object_get(obj, "pattern");
    const json_t *string = json_object_get(pattern, "String");
    const json_t *re = json_object_get(pattern, "Regex");
    *literal = NULL;
    *regex = (tok_regex){NULL, NULL};
    if (json_is_string(string) && json_string_length(string) > 0) {
        *literal = copy_string(json_string_value(string), json_string_length(string));
        *literal_len = json_string_length(string);
        if (!*literal) lens_err_set(err, "out of memory");
        return *literal ? 0 : -1;
    }
    if (json_is_string(re)) {
        char what[128];
        snprintf(what, sizeof what, "%s.pattern.Regex", where);
        return tok_compile_regex(json_string_value(re), json_string_length(re), what, regex, err);
    }
    lens_err_set(err, "%s.pattern is neither a non-empty {\"String\": ...} nor {\"Regex\": ...}",
                 where);
    return -1;
}

/* Metaspace's prepend_scheme, or the older add_prefix_space flag. */
static int read_prepend_scheme(const json_t *obj, const char *where, prepend_scheme *out,
                               lens_err *err) {
    const char *scheme = json_string_value(json_object_get(obj, "prepend_scheme"));
    if (!scheme) {
        *out = flag(obj, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
        return 0;
    }
    if (strcmp(scheme, "first") == 0)
        *out = PREPEND_FIRST;
    else if (strcmp(scheme, "always") == 0)
        *out = PREPEND_ALWAYS;
    else if (strcmp(scheme, "never") == 0)
        *out = PREPEND_NEVER;
    else {
        lens_err_set(err, "%s.prepend_scheme \"%s\" is not first, always or never", where, scheme);
        return -1;
    }
    return 0;
}

/* Metaspace's replacement: one character. */
static int read_char(const json_t *obj, const char *key, const char *where, char out[4],
                     size_t *len, lens_err *err) {
    const json_t *v = json_object_get(obj, key);
    size_t n = json_string_length(v);
    if (!json_is_string(v) || n == 0 || n > 4 ||
        tok_utf8_len((const uint8_t *)json_string_value(v), n) != n) {
        lens_err_set(err, "%s.%s is not one character", where, key);
        return -1;
    }
    memcpy(out, json_string_value(v), n);
    *len = n;
    return 0;
}

static int too_many(const char *what, lens_err *err) {
    lens_err_set(err, "%s: more than %d steps", what, MAX_STEPS);
    return -1;
}

/* ---- normalizers ---------------------------------------------------------- */

static int read_normalizer(lens_tokenizer *tok, const json_t *n, lens_err *err) {
    if (is_null_or_absent(n)) return 0;
    const char *type = type_name(n);
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(n, "normalizers");
        if (!json_is_array(list)) {
            lens_err_set(err, "normalizer Sequence has no \"normalizers\" list");
            return -1;
        }
        size_t i;
        json_t *item;
        json_array_foreach(list, i, item) {
            if (read_normalizer(tok, item, err) < 0) return -1;
        }
        return 0;
    }
    if (tok->n_norms == MAX_STEPS) return too_many("normalizer", err);
    norm_step *step = &tok->norms[tok->n_norms];
    *step = (norm_step){0};
    if (strcmp(type, "NFC") == 0) {
        step->kind = NORM_NFC;
        tok->n_norms++;
        return 0;
    }
    if (strcmp(type, "NFD") == 0 || strcmp(type, "NFKC") == 0 || strcmp(type, "NFKD") == 0) {
        /* HF's tables predate Unicode 13: for one code point (NFD) or some
         * 130 (NFKC, NFKD) they decompose differently from utf8proc's. */
        lens_err_set(err,
                     "normalizer \"%s\" is not supported (only NFC: HF's Unicode tables "
                     "for it differ from utf8proc's)",
                     type);
        return -1;
    }
    if (strcmp(type, "Prepend") == 0) {
        step->kind = NORM_PREPEND;
        if (optional_string(n, "prepend", "normalizer Prepend", &step->text, &step->text_len, err) <
            0)
            return -1;
        if (step->text) tok->n_norms++;
        return 0;
    }
    if (strcmp(type, "Replace") == 0) {
        step->kind = NORM_REPLACE;
        tok->n_norms++; /* owned from here on, freed with the tokenizer */
        const json_t *content = json_object_get(n, "content");
        if (!json_is_string(content)) {
            lens_err_set(err, "normalizer Replace.content is not a string");
            return -1;
        }
        step->text = copy_string(json_string_value(content), json_string_length(content));
        step->text_len = json_string_length(content);
        if (!step->text) {
            lens_err_set(err, "out of memory");
            return -1;
        }
        return read_pattern(n, "normalizer Replace", &step->literal, &step->literal_len,
                            &step->regex, err);
    }
    if (strcmp(type, "Strip") == 0) {
        step->kind = NORM_STRIP;
        step->left = flag(n, "strip_left", true);
        step->right = flag(n, "strip_right", true);
        tok->n_norms++;
        return 0;
    }
    lens_err_set(err, "normalizer \"%s\" is not supported", type);
    return -1;
}

/* ---- pre-tokenizers -------------------------------------------------------- */

static int read_behavior(const json_t *p, split_behavior *out, lens_err *err) {
    static const struct {
        const char *name;
        split_behavior behavior;
    } names[] = {{"Removed", SPLIT_REMOVED},
                 {"Isolated", SPLIT_ISOLATED},
                 {"MergedWithPrevious", SPLIT_MERGED_WITH_PREVIOUS},
                 {"MergedWithNext", SPLIT_MERGED_WITH_NEXT},
                 {"Contiguous", SPLIT_CONTIGUOUS}};
    const char *behavior = json_string_value(json_object_get(p, "behavior"));
    for (size_t k = 0; behavior && k < sizeof names / sizeof names[0]; k++) {
        if (strcmp(behavior, names[k].name) == 0) {
            *out = names[k].behavior;
            return 0;
        }
    }
    lens_err_set(err,
                 "pre_tokenizer Split.behavior \"%s\" is not one of Removed, Isolated, "
                 "MergedWithPrevious, MergedWithNext, Contiguous",
                 behavior ? behavior : "");
    return -1;
}

static int read_pre_tokenizer(lens_tokenizer *tok, const json_t *p, lens_err *err) {
    if (is_null_or_absent(p)) return 0;
    const char *type = type_name(p);
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list)) {
            lens_err_set(err, "pre_tokenizer Sequence has no \"pretokenizers\" list");
            return -1;
        }
        size_t i;
        json_t *item;
        json_array_foreach(list, i, item) {
            if (read_pre_tokenizer(tok, item, err) < 0) return -1;
        }
        return 0;
    }
    if (tok->n_pretoks == MAX_STEPS) return too_many("pre_tokenizer", err);
    pretok_step *step = &tok->pretoks[tok->n_pretoks];
    *step = (pretok_step){0};
    if (strcmp(type, "Split") == 0) {
        step->kind = PRE_SPLIT;
        step->invert = flag(p, "invert", false);
        if (read_behavior(p, &step->behavior, err) < 0) return -1;
        tok->n_pretoks++;
        return read_pattern(p, "pre_tokenizer Split", &step->literal, &step->literal_len,
                            &step->regex, err);
    }
    if (strcmp(type, "Digits") == 0) {
        step->kind = PRE_DIGITS;
        step->behavior = flag(p, "individual_digits", false) ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS;
        tok->n_pretoks++;
        return 0;
    }
    if (strcmp(type, "Metaspace") == 0) {
        step->kind = PRE_METASPACE;
        step->split = flag(p, "split", true);
        if (read_char(p, "replacement", "pre_tokenizer Metaspace", step->replacement,
                      &step->replacement_len, err) < 0 ||
            read_prepend_scheme(p, "pre_tokenizer Metaspace", &step->prepend, err) < 0)
            return -1;
        tok->n_pretoks++;
        return 0;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        step->kind = PRE_BYTE_LEVEL;
        step->add_prefix_space = flag(p, "add_prefix_space", true);
        tok->n_pretoks++;
        if (flag(p, "use_regex", true) && tok_gpt2_regex(&step->regex, err) < 0) return -1;
        return 0;
    }
    lens_err_set(err, "pre_tokenizer \"%s\" is not supported", type);
    return -1;
}

/* ---- decoders -------------------------------------------------------------- */

static int read_decoder(lens_tokenizer *tok, const json_t *d, lens_err *err) {
    if (is_null_or_absent(d)) return 0;
    const char *type = type_name(d);
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(d, "decoders");
        if (!json_is_array(list)) {
            lens_err_set(err, "decoder Sequence has no \"decoders\" list");
            return -1;
        }
        size_t i;
        json_t *item;
        json_array_foreach(list, i, item) {
            if (read_decoder(tok, item, err) < 0) return -1;
        }
        return 0;
    }
    if (tok->n_decs == MAX_STEPS) return too_many("decoder", err);
    dec_step *step = &tok->decs[tok->n_decs];
    *step = (dec_step){0};
    if (strcmp(type, "ByteLevel") == 0 || strcmp(type, "ByteFallback") == 0 ||
        strcmp(type, "Fuse") == 0) {
        step->kind = type[0] == 'F'   ? DEC_FUSE
                     : type[4] == 'L' ? DEC_BYTE_LEVEL
                                      : DEC_BYTE_FALLBACK;
        tok->n_decs++;
        return 0;
    }
    if (strcmp(type, "Metaspace") == 0) {
        step->kind = DEC_METASPACE;
        char rep[4];
        size_t rep_len;
        if (read_char(d, "replacement", "decoder Metaspace", rep, &rep_len, err) < 0 ||
            read_prepend_scheme(d, "decoder Metaspace", &step->prepend, err) < 0)
            return -1;
        step->literal = copy_string(rep, rep_len);
        step->literal_len = rep_len;
        tok->n_decs++;
        if (!step->literal) lens_err_set(err, "out of memory");
        return step->literal ? 0 : -1;
    }
    if (strcmp(type, "Replace") == 0) {
        step->kind = DEC_REPLACE;
        tok->n_decs++;
        const json_t *pattern = json_object_get(json_object_get(d, "pattern"), "String");
        const json_t *content = json_object_get(d, "content");
        if (!json_is_string(pattern) || json_string_length(pattern) == 0 ||
            !json_is_string(content)) {
            lens_err_set(err, "decoder Replace: only a non-empty {\"String\": ...} pattern and a "
                              "string content are supported");
            return -1;
        }
        step->literal = copy_string(json_string_value(pattern), json_string_length(pattern));
        step->literal_len = json_string_length(pattern);
        step->text = copy_string(json_string_value(content), json_string_length(content));
        step->text_len = json_string_length(content);
        if (!step->literal || !step->text) lens_err_set(err, "out of memory");
        return step->literal && step->text ? 0 : -1;
    }
    if (strcmp(type, "Strip") == 0) {
        step->kind = DEC_STRIP;
        char content[4];
        size_t content_len;
        const json_t *start = json_object_get(d, "start"), *stop = json_object_get(d, "stop");
        if (read_char(d, "content", "decoder Strip", content, &content_len, err) < 0) return -1;
        if (!json_is_integer(start) || !json_is_integer(stop) || json_integer_value(start) < 0 ||
            json_integer_value(stop) < 0) {
            lens_err_set(err, "decoder Strip.start and .stop are not counts");
            return -1;
        }
        step->content = tok_utf8_decode((const uint8_t *)content, content_len);
        step->start = (size_t)json_integer_value(start);
        step->stop = (size_t)json_integer_value(stop);
        tok->n_decs++;
        return 0;
    }
    lens_err_set(err, "decoder \"%s\" is not supported", type);
    return -1;
}

/* ---- post-processors ------------------------------------------------------- */

typedef struct added_ids {
    int32_t ids[4];
    size_t n;
} added_ids;

static int append_ids(added_ids *to, const int32_t *ids, size_t n, lens_err *err) {
    if (to->n + n > sizeof to->ids / sizeof to->ids[0]) {
        lens_err_set(err, "post_processor adds more than 4 tokens around a sequence");
        return -1;
    }
    memcpy(to->ids + to->n, ids, n * sizeof *ids);
    to->n += n;
    return 0;
}

/* The ids of a TemplateProcessing SpecialToken named `name`. */
static int template_special(const json_t *post, const char *name, added_ids *to, lens_err *err) {
    const json_t *ids =
        json_object_get(json_object_get(json_object_get(post, "special_tokens"), name), "ids");
    if (!json_is_array(ids) || json_array_size(ids) == 0) {
        lens_err_set(err,
                     "post_processor TemplateProcessing: special token \"%s\" has no ids in "
                     "special_tokens",
                     name);
        return -1;
    }
    size_t i;
    json_t *id;
    json_array_foreach(ids, i, id) {
        int32_t value = (int32_t)json_integer_value(id);
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= MAX_TOKEN_ID) {
            lens_err_set(
                err, "post_processor TemplateProcessing: special token \"%s\" has a bad id", name);
            return -1;
        }
        if (append_ids(to, &value, 1, err) < 0) return -1;
    }
    return 0;
}

/* What one post-processor adds before and after a single sequence. */
static int read_post(const json_t *post, added_ids *prefix, added_ids *suffix, lens_err *err) {
    prefix->n = suffix->n = 0;
    if (is_null_or_absent(post)) return 0;
    const char *type = type_name(post);
    if (strcmp(type, "ByteLevel") == 0) return 0;
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(post, "processors");
        if (!json_is_array(list)) {
            lens_err_set(err, "post_processor Sequence has no \"processors\" list");
            return -1;
        }
        size_t i;
        json_t *item;
        json_array_foreach(list, i, item) {
            /* Each wraps the result of those before it. */
            added_ids p, s;
            if (read_post(item, &p, &s, err) < 0 ||
                append_ids(&p, prefix->ids, prefix->n, err) < 0 ||
                append_ids(suffix, s.ids, s.n, err) < 0)
                return -1;
            *prefix = p;
        }
        return 0;
    }
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        const json_t *cls = json_array_get(json_object_get(post, "cls"), 1);
        const json_t *sep = json_array_get(json_object_get(post, "sep"), 1);
        if (!json_is_integer(cls) || !json_is_integer(sep)) {
            lens_err_set(err, "post_processor %s: cls and sep are not [token, id]", type);
            return -1;
        }
        int32_t cls_id = (int32_t)json_integer_value(cls),
                sep_id = (int32_t)json_integer_value(sep);
        return append_ids(prefix, &cls_id, 1, err) < 0 ? -1 : append_ids(suffix, &sep_id, 1, err);
    }
    if (strcmp(type, "TemplateProcessing") == 0) {
        const json_t *single = json_object_get(post, "single");
        if (!json_is_array(single)) {
            lens_err_set(err, "post_processor TemplateProcessing has no \"single\" list");
            return -1;
        }
        bool seen_sequence = false;
        size_t i;
        json_t *piece;
        json_array_foreach(single, i, piece) {
            const json_t *special = json_object_get(piece, "SpecialToken");
            const json_t *sequence = json_object_get(piece, "Sequence");
            const char *id = json_string_value(json_object_get(special ? special : sequence, "id"));
            if (sequence && id && strcmp(id, "A") == 0 && !seen_sequence) {
                seen_sequence = true;
            } else if (special && id) {
                if (template_special(post, id, seen_sequence ? suffix : prefix, err) < 0) return -1;
            } else {
                lens_err_set(err,
                             "post_processor TemplateProcessing: single[%zu] is neither a "
                             "SpecialToken nor the one sequence A",
                             i);
                return -1;
            }
        }
        if (!seen_sequence) {
            lens_err_set(err, "post_processor TemplateProcessing: single has no sequence A");
            return -1;
        }
        return 0;
    }
    lens_err_set(err, "post_processor \"%s\" is not supported", type);
    return -1;
}

int tok_parse_post_processor(lens_tokenizer *tok, const json_t *post, lens_err *err) {
    added_ids prefix, suffix;
    if (read_post(post, &prefix, &suffix, err) < 0) return -1;
    memcpy(tok->post_prefix, prefix.ids, prefix.n * sizeof *prefix.ids);
    tok->n_post_prefix = prefix.n;
    memcpy(tok->post_suffix, suffix.ids, suffix.n * sizeof *suffix.ids);
    tok->n_post_suffix = suffix.n;
    return 0;
}

/* ---- the model and added tokens -------------------------------------------- */

static int read_model_options(lens_tokenizer *tok, const json_t *model, lens_err *err) {
    if (!json_is_object(model)) {
        lens_err_set(err, "no \"model\" object");
        return -1;
    }
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!type || strcmp(type, "BPE") != 0) {
        lens_err_set(err, "model type \"%s\" is not supported (only BPE)", type ? type : "");
        return -1;
    }
    const json_t *dropout = json_object_get(model, "dropout");
    if (!is_null_or_absent(dropout) &&
        !(json_is_number(dropout) && json_number_value(dropout) == 0)) {
        lens_err_set(err, "model.dropout is not supported (only null or 0)");
        return -1;
    }
    tok->byte_fallback = flag(model, "byte_fallback", false);
    tok->fuse_unk = flag(model, "fuse_unk", false);
    tok->ignore_merges = flag(model, "ignore_merges", false);
    return optional_string(model, "unk_token", "model", &tok->unk_token, NULL, err) < 0 ||
                   optional_string(model, "continuing_subword_prefix", "model", &tok->prefix,
                                   &tok->prefix_len, err) < 0 ||
                   optional_string(model, "end_of_word_suffix", "model", &tok->suffix,
                                   &tok->suffix_len, err) < 0
               ? -1
               : 0;
}

static int read_vocab(lens_tokenizer *tok, const json_t *vocab, lens_err *err) {
    if (!json_is_object(vocab)) {
        lens_err_set(err, "model.vocab is not a JSON object");
        return -1;
    }
    if (str_table_reserve(&tok->vocab, json_object_size(vocab)) < 0) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)vocab, key, value) {
        if (!json_is_integer(value)) {
            lens_err_set(err, "model.vocab: the id of \"%.64s\" is not an integer", key);
            return -1;
        }
        if (tok_add_vocab(tok, key, strlen(key), json_integer_value(value), err) < 0) return -1;
    }
    return 0;
}

/* model.merges: "left right" strings (older files) or ["left", "right"]. */
static int read_merges(lens_tokenizer *tok, const json_t *merges, lens_err *err) {
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
        if (tok_add_merge(tok, left, left_len, right, right_len, rank, err) < 0) return -1;
    }
    return 0;
}

/* Every added token is matched in the text, special or not, as HF does. Its
 * id is the one `tokenizers` gives it on loading: that of its text in the
 * vocabulary if there, else the next free one (the file's ids agree with
 * that in any file `tokenizers` wrote). */
static int read_added_tokens(lens_tokenizer *tok, const json_t *added, lens_err *err) {
    if (is_null_or_absent(added)) return 0;
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
        const char *text = json_string_value(content);
        size_t len = json_string_length(content);
        int32_t known = str_table_get(&tok->vocab, text, len);
        int64_t given = known >= 0 ? known : tok_next_added_id(tok);
        if (given != json_integer_value(id)) {
            lens_err_set(err,
                         "added_tokens[%zu] (\"%.64s\") has id %lld, but tokenizers gives it "
                         "%lld",
                         i, text, (long long)json_integer_value(id), (long long)given);
            return -1;
        }
        if (tok_add_added(tok, text, len, given, flag(entry, "lstrip", false),
                          flag(entry, "rstrip", false), flag(entry, "normalized", true),
                          flag(entry, "single_word", false), flag(entry, "special", false),
                          err) < 0)
            return -1;
    }
    return 0;
}

lens_tokenizer *tok_from_hf_json(const json_t *root, lens_err *err) {
    lens_tokenizer *tok = tok_new(KIND_BPE, err);
    if (!tok) return NULL;
    const json_t *model = json_object_get(root, "model");
    if (read_model_options(tok, model, err) < 0 ||
        read_vocab(tok, json_object_get(model, "vocab"), err) < 0 ||
        read_merges(tok, json_object_get(model, "merges"), err) < 0 ||
        read_normalizer(tok, json_object_get(root, "normalizer"), err) < 0 ||
        read_pre_tokenizer(tok, json_object_get(root, "pre_tokenizer"), err) < 0)
        goto fail;
    for (size_t i = 0; i + 1 < tok->n_pretoks; i++) {
        if (tok->pretoks[i].kind == PRE_BYTE_LEVEL) {
            lens_err_set(err, "pre_tokenizer: a ByteLevel step before other steps is not "
                              "supported (only as the last one)");
            goto fail;
        }
    }
    if (read_added_tokens(tok, json_object_get(root, "added_tokens"), err) < 0 ||
        read_decoder(tok, json_object_get(root, "decoder"), err) < 0 ||
        tok_parse_post_processor(tok, json_object_get(root, "post_processor"), err) < 0)
        goto fail;
    tok->has_decoder = !is_null_or_absent(json_object_get(root, "decoder"));
    tok->decode_bytes = tok->n_decs == 1 && tok->decs[0].kind == DEC_BYTE_LEVEL;
    return tok;
fail:
    lens_tok_free(tok);
    return NULL;
}
