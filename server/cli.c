/*
 * cli.c: lensd's command-line tools over the engine: `info` (a model's
 * config and hook points as JSON), `run` (TransformerLens's
 * utils.test_prompt, printed as TL prints it) and `cache` (run_with_cache
 * written to a safetensors file).
 */
#include "server/cli.h"

#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/capture.h"
#include "core/forward.h"
#include "core/hooks.h"
#include "core/prompt.h"
#include "core/safetensors.h"
#include "server/reply.h"
#include "server/startup.h"
#include "core/test_prompt.h"

/* ---- options shared by the commands ------------------------------------- */

typedef struct prompt_row {
    const char *text; /* NULL when ids are given */
    int32_t *ids;
    int n_ids;
} prompt_row;

typedef struct cli_opts {
    const char *model;
    const char *device; /* "cpu", "cuda", "cuda:N" */
    lens_load_opts load;
    bool no_bos;
    bool pad_left;
    prompt_row *rows;
    int n_rows;
    json_t *prompts_file; /* keeps the strings of --prompts-file alive */
    const char **names;
    int n_names;
    const char **answers;
    int n_answers;
    int top_k;
    bool logits_only;
    const char *out;
    int32_t *positions; /* cache: positions to keep (TL's pos_slice), as given */
    int n_positions;
    bool last_logits; /* cache: logits at each prompt's last real token only */
    int repeat;       /* cache: forward passes to time */
    bool timings;     /* cache: print load/forward/write times as JSON on stderr */
    bool help;        /* --help: print the command's usage and do nothing else */
} cli_opts;

/* Each command's usage, printed by `lensd COMMAND --help`. */
static const char model_options_usage[] =
    "model options:\n"
    "  --model M                a model directory, a TransformerLens-native tl_config.json,\n"
    "                           or a Hugging Face id in the local cache (gpt2, gpt2-small)\n"
    "  --processing SPEC        default | none | comma list of fold_ln,\n"
    "                           center_writing_weights, center_unembed, fold_value_biases\n"
    "  --no-processing          as from_pretrained_no_processing\n"
    "  --device D               cpu (default), cuda or cuda:N\n"
    "  --use-attn-result, --use-split-qkv-input, --use-hook-mlp-in, --use-attn-in\n";

static const struct {
    const char *command, *usage;
} command_usage[] = {
    {"info", "usage: lensd info --model M [model options]\n"
             "\n"
             "Prints the model's config, weight processing, token rules and every hook\n"
             "point as JSON.\n"},
    {"run", "usage: lensd run --model M --prompt TEXT [--answer TEXT]... [--top-k K]\n"
            "                 [--no-bos] [model options]\n"
            "\n"
            "Prints what TransformerLens's utils.test_prompt prints.\n"},
    {"cache",
     "usage: lensd cache --model M (--prompt TEXT | --tokens ID,ID,... | --prompts-file "
     "F.json)...\n"
     "                   [--names GLOB]... [--positions P,P,...] [--logits-only | --last-logits]\n"
     "                   [--no-bos] [--padding-side left|right] [--repeat N] [--timings]\n"
     "                   [model options] --out FILE.safetensors\n"
     "\n"
     "run_with_cache: writes the tokens, the logits and the activations to FILE.\n"
     "\n"
     "  --prompt TEXT            one prompt row, tokenized as to_tokens does (repeatable)\n"
     "  --tokens ID,ID,...       one row of token ids (repeatable)\n"
     "  --prompts-file F.json    a JSON list of prompt strings, one row each\n"
     "                           rows of different lengths are padded with the pad token\n"
     "  --names GLOB             hook names to keep (blocks.*.attn.hook_pattern; repeatable;\n"
     "                           default every hook point)\n"
     "  --positions P,P,...      positions to keep, as TL's pos_slice (negative from the end)\n"
     "  --logits-only            no activations\n"
     "  --last-logits            logits at each row's last real token only\n"
     "  --no-bos                 no BOS before text prompts (prepend_bos=False)\n"
     "  --padding-side S         left or right (default right)\n"
     "  --repeat N               run the forward N times (with --timings)\n"
     "  --timings                print load, forward and write times as JSON on stderr\n"
     "  --out FILE.safetensors   where the tensors go\n"},
};

/* Prints command's usage and the model options on stdout. */
static void print_command_usage(const char *command) {
    for (size_t i = 0; i < sizeof command_usage / sizeof command_usage[0]; i++) {
        if (strcmp(command_usage[i].command, command) == 0) {
            fputs(command_usage[i].usage, stdout);
            fputs("\n", stdout);
            fputs(model_options_usage, stdout);
            return;
        }
    }
}

enum {
    OPT_PROCESSING = 1000,
    OPT_NO_PROCESSING,
    OPT_NO_BOS,
    OPT_PADDING_SIDE,
    OPT_USE_ATTN_RESULT,
    OPT_USE_SPLIT_QKV,
    OPT_USE_MLP_IN,
    OPT_USE_ATTN_IN,
    OPT_TOKENS,
    OPT_PROMPTS_FILE,
    OPT_LOGITS_ONLY,
    OPT_TOP_K,
    OPT_REPEAT,
    OPT_TIMINGS,
    OPT_POSITIONS,
    OPT_LAST_LOGITS,
    OPT_DEVICE,
    OPT_HELP,
};

static const struct option long_options[] = {
    {"model", required_argument, NULL, 'm'},
    {"prompt", required_argument, NULL, 'p'},
    {"tokens", required_argument, NULL, OPT_TOKENS},
    {"prompts-file", required_argument, NULL, OPT_PROMPTS_FILE},
    {"names", required_argument, NULL, 'n'},
    {"answer", required_argument, NULL, 'a'},
    {"top-k", required_argument, NULL, OPT_TOP_K},
    {"out", required_argument, NULL, 'o'},
    {"processing", required_argument, NULL, OPT_PROCESSING},
    {"no-processing", no_argument, NULL, OPT_NO_PROCESSING},
    {"no-bos", no_argument, NULL, OPT_NO_BOS},
    {"padding-side", required_argument, NULL, OPT_PADDING_SIDE},
    {"use-attn-result", no_argument, NULL, OPT_USE_ATTN_RESULT},
    {"use-split-qkv-input", no_argument, NULL, OPT_USE_SPLIT_QKV},
    {"use-hook-mlp-in", no_argument, NULL, OPT_USE_MLP_IN},
    {"use-attn-in", no_argument, NULL, OPT_USE_ATTN_IN},
    {"logits-only", no_argument, NULL, OPT_LOGITS_ONLY},
    {"repeat", required_argument, NULL, OPT_REPEAT},
    {"positions", required_argument, NULL, OPT_POSITIONS},
    {"last-logits", no_argument, NULL, OPT_LAST_LOGITS},
    {"timings", no_argument, NULL, OPT_TIMINGS},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static void opts_free(cli_opts *o) {
    for (int i = 0; i < o->n_rows; i++)
        free(o->rows[i].ids);
    free(o->rows);
    free(o->names);
    free(o->answers);
    free(o->positions);
    json_decref(o->prompts_file);
}

static int add_row(cli_opts *o, const char *text, int32_t *ids, int n_ids) {
    prompt_row *grown = realloc(o->rows, (size_t)(o->n_rows + 1) * sizeof *grown);
    if (!grown) return -1;
    o->rows = grown;
    o->rows[o->n_rows++] = (prompt_row){text, ids, n_ids};
    return 0;
}

static int append_str(const char ***list, int *n, const char *s) {
    const char **grown = realloc(*list, (size_t)(*n + 1) * sizeof *grown);
    if (!grown) return -1;
    *list = grown;
    (*list)[(*n)++] = s;
    return 0;
}

/* Parses a comma-separated list of integers >= min ("1,2,3"; "0,-1") into
 * a new array of *n values. option names the flag in error messages. */
static int parse_int_list(const char *s, const char *option, long min, int32_t **out, int *n,
                          lens_err *err) {
    int count = 1;
    for (const char *p = s; *p; p++)
        count += *p == ',';
    int32_t *values = malloc((size_t)count * sizeof *values);
    if (!values) {
        lens_err_set(err, "out of memory");
        return -1;
    }
    const char *p = s;
    for (int i = 0; i < count; i++) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < min || v > INT32_MAX || (*end && *end != ',')) {
            lens_err_set(err, "%s \"%s\": expected comma-separated integers%s", option, s,
                         min >= 0 ? " of 0 or more" : "");
            free(values);
            return -1;
        }
        values[i] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    free(*out);
    *out = values;
    *n = count;
    return 0;
}

/* Parses a whole decimal integer >= min for option into *out. */
static int parse_count(const char *s, const char *option, int min, int *out, lens_err *err) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < min || v > INT32_MAX) {
        lens_err_set(err, "%s \"%s\": expected an integer of %d or more", option, s, min);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int load_prompts_file(cli_opts *o, const char *path, lens_err *err) {
    json_error_t jerr;
    json_t *list = json_load_file(path, 0, &jerr);
    if (!json_is_array(list)) {
        lens_err_set(err, "--prompts-file %s: %s", path,
                     list ? "expected a JSON list of strings" : jerr.text);
        json_decref(list);
        return -1;
    }
    size_t i;
    json_t *item;
    json_array_foreach(list, i, item) {
        if (!json_is_string(item)) {
            lens_err_set(err, "--prompts-file %s: item %zu is not a string", path, i);
            json_decref(list);
            return -1;
        }
        if (add_row(o, json_string_value(item), NULL, 0)) {
            lens_err_set(err, "out of memory");
            json_decref(list);
            return -1;
        }
    }
    json_decref(o->prompts_file);
    o->prompts_file = list;
    return 0;
}

static int parse_opts(int argc, char **argv, cli_opts *o, lens_err *err) {
    memset(o, 0, sizeof *o);
    o->load.processing = -1;
    o->device = "cpu";
    o->top_k = 10;
    o->repeat = 1;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "m:p:n:a:o:h", long_options, NULL)) != -1) {
        int32_t *ids;
        int n_ids;
        unsigned flags;
        int rc = 0;
        switch (c) {
        case 'h':
        case OPT_HELP:
            o->help = true;
            return 0;
        case 'm':
            o->model = optarg;
            break;
        case OPT_DEVICE:
            o->device = optarg;
            break;
        case 'p':
            rc = add_row(o, optarg, NULL, 0);
            break;
        case OPT_TOKENS:
            ids = NULL;
            if (parse_int_list(optarg, "--tokens", 0, &ids, &n_ids, err)) return -1;
            rc = add_row(o, NULL, ids, n_ids);
            break;
        case OPT_PROMPTS_FILE:
            if (load_prompts_file(o, optarg, err)) return -1;
            break;
        case 'n':
            rc = append_str(&o->names, &o->n_names, optarg);
            break;
        case 'a':
            rc = append_str(&o->answers, &o->n_answers, optarg);
            break;
        case 'o':
            o->out = optarg;
            break;
        case OPT_TOP_K:
            if (parse_count(optarg, "--top-k", 0, &o->top_k, err)) return -1;
            break;
        case OPT_PROCESSING:
            if (lens_processing_parse(optarg, &flags, err)) return -1;
            o->load.processing = (int)flags;
            break;
        case OPT_NO_PROCESSING:
            o->load.processing = LENS_PROC_NONE;
            break;
        case OPT_NO_BOS:
            o->no_bos = true;
            break;
        case OPT_PADDING_SIDE:
            if (strcmp(optarg, "left") && strcmp(optarg, "right")) {
                lens_err_set(err, "--padding-side must be left or right");
                return -1;
            }
            o->pad_left = strcmp(optarg, "left") == 0;
            break;
        case OPT_USE_ATTN_RESULT:
            o->load.use_attn_result = true;
            break;
        case OPT_USE_SPLIT_QKV:
            o->load.use_split_qkv_input = true;
            break;
        case OPT_USE_MLP_IN:
            o->load.use_hook_mlp_in = true;
            break;
        case OPT_USE_ATTN_IN:
            o->load.use_attn_in = true;
            break;
        case OPT_LOGITS_ONLY:
            o->logits_only = true;
            break;
        case OPT_REPEAT:
            if (parse_count(optarg, "--repeat", 1, &o->repeat, err)) return -1;
            break;
        case OPT_TIMINGS:
            o->timings = true;
            break;
        case OPT_LAST_LOGITS:
            o->last_logits = true;
            break;
        case OPT_POSITIONS:
            if (parse_int_list(optarg, "--positions", INT32_MIN, &o->positions, &o->n_positions,
                               err))
                return -1;
            break;
        default:
            lens_err_set(err, "unknown or incomplete option (see lensd --help)");
            return -1;
        }
        if (rc) {
            lens_err_set(err, "out of memory");
            return -1;
        }
    }
    if (optind < argc) {
        lens_err_set(err, "unexpected argument \"%s\"", argv[optind]);
        return -1;
    }
    if (!o->model) {
        lens_err_set(err, "--model is required");
        return -1;
    }
    return 0;
}

/* Tokenizes every row (text rows as to_tokens does) and pads them into a batch. */
static int build_batch(const lens_model *m, cli_opts *o, lens_token_batch *batch, lens_err *err) {
    bool prepend_bos = m->cfg.default_prepend_bos && !o->no_bos;
    for (int i = 0; i < o->n_rows; i++) {
        prompt_row *r = &o->rows[i];
        if (r->text && lens_prompt_tokens(m, r->text, prepend_bos, &r->ids, &r->n_ids, NULL, err)) {
            lens_err_prefix(err, "prompt %d", i);
            return -1;
        }
    }
    int32_t **ids = malloc((size_t)o->n_rows * sizeof *ids);
    int *lens = malloc((size_t)o->n_rows * sizeof *lens);
    int rc = -1;
    if (!ids || !lens) {
        lens_err_set(err, "out of memory");
    } else {
        for (int i = 0; i < o->n_rows; i++) {
            ids[i] = o->rows[i].ids;
            lens[i] = o->rows[i].n_ids;
        }
        lens_pad_opts pad = {.prepend_bos = prepend_bos, .pad_left = o->pad_left};
        rc = lens_pad_rows(m, ids, lens, o->n_rows, &pad, batch, err);
    }
    free(ids);
    free(lens);
    return rc;
}

/* Loads --model and places it on --device. */
static lens_model *load_model(const cli_opts *o, lens_err *err) {
    char why[512];
    lk_device *dev = lk_open(o->device, why, sizeof why);
    if (!dev) {
        lens_err_set(err, "--device: %s", why);
        return NULL;
    }
    lens_model *m = lens_model_load(o->model, &o->load, err);
    if (m && lens_model_place(m, dev, err)) {
        lens_model_free(m);
        m = NULL;
    }
    if (!m) {
        lk_close(dev);
        return NULL;
    }
    if (m->n_nonfinite_weights)
        fprintf(stderr, "lensd: warning: %s has %zu NaN or infinite weights\n", o->model,
                m->n_nonfinite_weights);
    return m;
}

/* Frees a model from load_model and closes its device. */
static void free_model(lens_model *m) {
    lk_device *dev = m->device;
    lens_model_free(m);
    lk_close(dev);
}

/* ---- info --------------------------------------------------------------- */

static void add_hook_json(void *user, lens_hook hook) {
    json_t *hooks = ((json_t **)user)[0];
    const lens_config *cfg = (const lens_config *)((json_t **)user)[1];
    char name[96];
    lens_hook_name(hook, name, sizeof name);
    int64_t shape[LENS_MAX_DIMS];
    int ndim = lens_hook_shape(cfg, hook, 1, 1, shape);
    json_t *dims = json_array();
    for (int i = 0; i < ndim; i++) {
        /* batch and pos (and the query/key axes of patterns) vary per run */
        bool attn = hook.kind == LENS_HOOK_ATTN_SCORES || hook.kind == LENS_HOOK_PATTERN;
        const char *sym = i == 0            ? "batch"
                          : attn && i >= 2  ? (i == 2 ? "query_pos" : "key_pos")
                          : !attn && i == 1 ? "pos"
                                            : NULL;
        json_array_append_new(dims, sym ? json_string(sym) : json_integer(shape[i]));
    }
    json_array_append_new(hooks, json_pack("{s:s, s:o, s:s}", "name", name, "shape", dims, "dtype",
                                           lens_dtype_name(lens_hook_dtype(hook.kind))));
}

json_t *srv_model_info_json(const lens_model *m) {
    const lens_config *c = &m->cfg;
    char processing[256];
    lens_processing_names(m->processing, processing, sizeof processing);
    json_t *local = json_array();
    for (int l = 0; l < c->n_layers; l++)
        json_array_append_new(local, json_string(c->layer_is_local[l] ? "local" : "global"));
    json_t *cfg = json_pack(
        "{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:s, s:f, s:b, s:f, s:b, s:b, s:s, "
        "s:b, s:i, s:o, s:b, s:b, s:b, s:b, s:b, s:b}",
        "original_architecture", c->architecture, "n_layers", c->n_layers, "d_model", c->d_model,
        "n_heads", c->n_heads, "d_head", c->d_head, "d_mlp", c->d_mlp, "n_ctx", c->n_ctx, "d_vocab",
        c->d_vocab, "d_vocab_out", c->d_vocab_out, "act_fn", lens_act_name(c->act_fn),
        "normalization_type", lens_norm_name(c->normalization), "eps", (double)c->eps,
        "use_attn_scale", c->use_attn_scale, "attn_scale", (double)c->attn_scale,
        "scale_attn_by_inverse_layer_idx", c->scale_attn_by_inverse_layer_idx, "attn_only",
        c->attn_only, "attention_dir", c->causal ? "causal" : "bidirectional", "use_local_attn",
        c->use_local_attn, "window_size", c->window_size, "attn_types", local, "use_attn_result",
        c->use_attn_result, "use_split_qkv_input", c->use_split_qkv_input, "use_hook_mlp_in",
        c->use_hook_mlp_in, "use_attn_in", c->use_attn_in, "use_hook_tokens", c->use_hook_tokens,
        "default_prepend_bos", c->default_prepend_bos);
    /* the newer families' settings, under HookedTransformerConfig's names */
    const bool rotary = c->positions == LENS_POS_ROTARY;
    json_object_update_new(
        cfg,
        json_pack("{s:o, s:s, s:o, s:o, s:b, s:b, s:b, s:f, s:f, s:b, s:b}", "n_key_value_heads",
                  c->n_kv_heads != c->n_heads ? json_integer(c->n_kv_heads) : json_null(),
                  "positional_embedding_type", rotary ? "rotary" : "standard", "rotary_dim",
                  rotary ? json_integer(c->rotary.dim) : json_null(), "rotary_base",
                  rotary ? json_real(c->rotary.base) : json_null(), "rotary_adjacent_pairs",
                  rotary && c->rotary.interleaved, "gated_mlp", c->gated_mlp, "parallel_attn_mlp",
                  c->parallel_attn_mlp, "attn_scores_soft_cap",
                  c->attn_softcap > 0 ? (double)c->attn_softcap : -1.0, "output_logits_soft_cap",
                  c->logit_softcap > 0 ? (double)c->logit_softcap : -1.0,
                  "use_normalization_before_and_after", c->norm_placement == LENS_NORM_SANDWICH,
                  "use_qk_norm", c->qk_norm != LENS_QK_NORM_NONE));
    json_t *hooks = json_array();
    void *visit[2] = {hooks, (void *)c};
    lens_hook_foreach(c, add_hook_json, visit);
    lk_device_info dev;
    lk_device_describe(m->device, &dev);
    const size_t weights = m->device_block ? m->device_bytes : m->n_weight_floats * sizeof(float);
    json_t *device = json_pack("{s:s, s:I, s:I, s:I}", "name", dev.name, "memory_total_bytes",
                               (json_int_t)dev.total_bytes, "memory_free_bytes",
                               (json_int_t)dev.free_bytes, "weights_bytes", (json_int_t)weights);
    if (dev.host_memory && device) json_object_update_new(device, srv_host_json());
    return json_pack("{s:s, s:s, s:o, s:o, s:s, s:{s:i, s:i, s:i, s:b, s:b}, s:I, s:I, s:o}",
                     "name", m->name, "source", m->source, "device", device, "config", cfg,
                     "processing", processing, "tokens", "bos_id", m->rules.bos_id, "eos_id",
                     m->rules.eos_id, "pad_id", m->rules.pad_id, "append_eos", m->rules.append_eos,
                     "mask_pad_keys", m->rules.mask_pad_keys, "n_params",
                     (json_int_t)m->n_weight_floats, "nonfinite_weights",
                     (json_int_t)m->n_nonfinite_weights, "hook_points", hooks);
}

static int cmd_info(cli_opts *o, lens_err *err) {
    lens_model *m = load_model(o, err);
    if (!m) return -1;
    json_t *info = srv_model_info_json(m);
    json_dumpf(info, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(info);
    free_model(m);
    return 0;
}

/* ---- run: utils.test_prompt --------------------------------------------- */

static int cmd_run(cli_opts *o, lens_err *err) {
    if (o->n_rows != 1 || !o->rows[0].text) {
        lens_err_set(err, "run needs exactly one --prompt");
        return -1;
    }
    lens_model *m = load_model(o, err);
    if (!m) return -1;
    lens_workspace ws = {0};
    const lens_test_prompt_opts opts = {.prepend_bos = m->cfg.default_prepend_bos && !o->no_bos,
                                        .prepend_space_to_answer = true,
                                        .top_k = o->top_k};
    char processing[256];
    lens_processing_names(m->processing, processing, sizeof processing);
    fprintf(stderr, "lensd: model %s, weight processing: %s\n", m->name, processing);
    int rc = lens_test_prompt(m, &ws, o->rows[0].text, o->answers, o->n_answers, &opts, stdout,
                              NULL, err);
    lens_workspace_free(&ws);
    free_model(m);
    return rc;
}

/* ---- cache: run_with_cache to safetensors ------------------------------- */

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Prints cmd_cache's --timings line on stderr: one JSON object with the load,
 * write and total times, every forward's ms in run order, the first's, and the
 * median and min of the runs after the first (the first alone when n is 1),
 * the first being a warm-up that faults in workspace and output memory, as a
 * benchmark's warm-up run does on the other side. Sorts nothing in place. */
static void print_timings(const double *forward_ms, int n, double load_ms, double write_ms,
                          double total_ms) {
    int n_warm = n > 1 ? n - 1 : 1;
    double *warm = malloc((size_t)n_warm * sizeof *warm);
    if (!warm) return;
    memcpy(warm, forward_ms + (n > 1), (size_t)n_warm * sizeof *warm);
    qsort(warm, (size_t)n_warm, sizeof *warm, compare_doubles);
    fprintf(stderr,
            "{\"load_ms\": %.3f, \"forward_ms_first\": %.3f, \"forward_ms_median\": %.3f, "
            "\"forward_ms_min\": %.3f, \"write_ms\": %.3f, \"total_ms\": %.3f, \"repeat\": %d, "
            "\"forward_ms\": [",
            load_ms, forward_ms[0], warm[n_warm / 2], warm[0], write_ms, total_ms, n);
    for (int r = 0; r < n; r++)
        fprintf(stderr, "%s%.3f", r ? ", " : "", forward_ms[r]);
    fprintf(stderr, "]}\n");
    free(warm);
}

static int cmd_cache(cli_opts *o, lens_err *err) {
    if (!o->out || o->n_rows == 0) {
        lens_err_set(err, "cache needs --out FILE and at least one --prompt, --tokens or "
                          "--prompts-file");
        return -1;
    }
    double t_start = 1e3 * srv_now_s();
    lens_model *m = load_model(o, err);
    if (!m) return -1;
    const lens_config *c = &m->cfg;
    lens_token_batch batch = {0};
    lens_cache cache = {0};
    lens_workspace ws = {0};
    uint8_t *enabled = calloc(lens_hook_slots(c), 1);
    lens_st_out *outs = calloc(lens_hook_slots(c) + 2, sizeof *outs);
    int64_t *tokens64 = NULL;
    int32_t *last_pos = NULL;
    double *forward_ms = NULL;
    int rc = -1;
    if (!enabled || !outs) goto oom;
    if (build_batch(m, o, &batch, err)) goto out;
    const int B = batch.B, T = batch.T, V = c->d_vocab_out;
    if (!o->logits_only) {
        if (o->n_names == 0) lens_hook_select_glob(c, "*", enabled);
        for (int i = 0; i < o->n_names; i++) {
            if (lens_hook_select_glob(c, o->names[i], enabled) == 0) {
                lens_hook hook;
                if (lens_hook_parse(c, o->names[i], &hook, err) == 0)
                    lens_err_set(err, "--names %s matched nothing", o->names[i]);
                goto out;
            }
        }
    }
    /* Logits at each prompt's last real token: unembed.hook_out (all
     * positions) is then not computed. */
    if (o->last_logits) {
        enabled[lens_hook_slot(c, (lens_hook){LENS_HOOK_UNEMBED_OUT, 0})] = 0;
        if (!(last_pos = malloc((size_t)B * sizeof *last_pos))) goto oom;
        for (int i = 0; i < B; i++)
            last_pos[i] = o->pad_left ? T - 1 : batch.lengths[i] - 1;
    }
    for (int i = 0; i < o->n_positions; i++) {
        int p = o->positions[i] < 0 ? T + o->positions[i] : o->positions[i];
        if (p < 0 || p >= T) {
            lens_err_set(err, "--positions: %d is outside the batch's %d positions",
                         o->positions[i], T);
            goto out;
        }
        o->positions[i] = p;
    }
    const lens_cache_request req = {.enabled = enabled,
                                    .positions = o->n_positions ? o->positions : NULL,
                                    .n_positions = o->n_positions,
                                    .logits = true,
                                    .logit_positions = last_pos};
    double t_loaded = 1e3 * srv_now_s();
    if (!(forward_ms = malloc((size_t)o->repeat * sizeof *forward_ms))) goto oom;
    for (int r = 0; r < o->repeat; r++) {
        double t0 = 1e3 * srv_now_s();
        if (lens_run_cache(m, &ws, &batch, &req, &cache, err)) goto out;
        forward_ms[r] = 1e3 * srv_now_s() - t0;
    }
    double t_written = 1e3 * srv_now_s();
    if (!(tokens64 = malloc((size_t)B * T * sizeof *tokens64))) goto oom;
    for (size_t i = 0; i < (size_t)B * T; i++)
        tokens64[i] = batch.tokens[i];
    outs[0] = (lens_st_out){"tokens", LENS_I64, 2, {B, T}, tokens64};
    outs[1] = o->last_logits ? (lens_st_out){"logits", LENS_F32, 2, {B, V}, cache.logits}
                             : (lens_st_out){"logits", LENS_F32, 3, {B, T, V}, cache.logits};
    for (int i = 0; i < cache.n; i++) {
        const lens_captured *t = &cache.tensors[i];
        outs[2 + i] = (lens_st_out){t->name, t->dtype, t->ndim, {0}, t->data};
        memcpy(outs[2 + i].shape, t->shape, sizeof t->shape);
    }
    char processing[256];
    lens_processing_names(m->processing, processing, sizeof processing);
    lk_device_info device;
    lk_device_describe(m->device, &device);
    const lens_st_meta meta[] = {
        {"lensd_version", LENS_VERSION},
        {"model", m->name},
        {"device", device.name},
        {"source", m->source},
        {"processing", processing},
        {"prepend_bos", m->cfg.default_prepend_bos && !o->no_bos ? "true" : "false"},
        {"padding_side", o->pad_left ? "left" : "right"},
    };
    rc = lens_st_write(o->out, outs, (size_t)cache.n + 2, meta, sizeof meta / sizeof meta[0], err);
    if (rc == 0 && o->timings) {
        double total = 1e3 * srv_now_s() - t_start;
        double write = 1e3 * srv_now_s() - t_written;
        print_timings(forward_ms, o->repeat, t_loaded - t_start, write, total);
    }
    goto out;
oom:
    lens_err_set(err, "out of memory");
out:
    free(forward_ms);
    free(outs);
    free(enabled);
    free(tokens64);
    free(last_pos);
    lens_cache_free(&cache);
    lens_token_batch_free(&batch);
    lens_workspace_free(&ws);
    free_model(m);
    return rc;
}

int srv_cli_main(const char *command, int argc, char **argv) {
    cli_opts o;
    lens_err err = {0};
    int rc = parse_opts(argc, argv, &o, &err);
    if (rc == 0 && o.help) {
        print_command_usage(command);
    } else if (rc == 0) {
        if (strcmp(command, "info") == 0)
            rc = cmd_info(&o, &err);
        else if (strcmp(command, "run") == 0)
            rc = cmd_run(&o, &err);
        else
            rc = cmd_cache(&o, &err);
    }
    opts_free(&o);
    if (rc) fprintf(stderr, "lensd %s: %s\n", command, err.msg);
    return rc ? 1 : 0;
}
