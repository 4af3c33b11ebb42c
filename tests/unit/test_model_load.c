/*
 * test_model_load.c: model discovery, config readers, checkpoint layouts
 * (GPT-2, GPT-Neo, TL-native, F64 sources) and their errors, weight
 * processing invariants and its equality, bit for bit and on any number of
 * threads, with TL's steps written out plainly, hook-point naming, and the
 * workspace a forward pass of the loaded model takes.
 *
 * Each test writes a tiny checkpoint (d_model 8, 2 heads, 1 layer, 6 tokens)
 * into a fresh temporary directory with lens_st_write; numbers checked here
 * are properties (two layouts of one checkpoint load to the same weights,
 * processing leaves centred matrices), never values copied from the code.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/forward.h"
#include "core/hooks.h"
#include "core/model.h"
#include "core/safetensors.h"

#define D 8
#define H 2
#define M 32
#define V 257 /* GPT-2's 256 byte tokens and <|endoftext|> */
#define CTX 16

static char dir[384];

static void make_dir(void) {
    snprintf(dir, sizeof dir, "/tmp/lensd-test-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void write_text(const char *name, const char *text) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

static void remove_dir(void) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* Deterministic pseudo-random values in [-1, 1). */
static float *random_floats(size_t n, unsigned seed) {
    float *p = malloc(n * sizeof *p);
    unsigned s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1103515245u + 12345u;
        p[i] = (float)((s >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
    return p;
}

typedef struct gpt2_opts {
    const char *prefix;
    bool lm_head;
    bool mask_buffers;
    const char *skip;      /* a tensor to leave out */
    const char *bad_shape; /* a tensor to write with a wrong shape */
    const char *as_int;    /* a tensor to write as I32 */
    bool nan;              /* put a NaN into the token embedding */
    bool sharded;          /* two shards and model.safetensors.index.json */
    bool f64;              /* every tensor as F64 (the same values) */
    int d_model, vocab;    /* other than D and V (d_mlp is 4 * d_model) */
} gpt2_opts;

/* Writes vocab.json with GPT-2's byte-level alphabet: bytes that are
 * printable Latin-1 ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) stand for themselves,
 * the others for U+0100 upwards in byte order; <|endoftext|> is id 256. */
static void write_byte_vocab(void) {
    char json[8192];
    size_t used = (size_t)snprintf(json, sizeof json, "{");
    int next_extra = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        unsigned cp = printable ? (unsigned)b : 256u + (unsigned)next_extra++;
        used += (size_t)snprintf(json + used, sizeof json - used, "\"\\u%04x\": %d, ", cp, b);
    }
    snprintf(json + used, sizeof json - used, "\"<|endoftext|>\": 256}");
    write_text("vocab.json", json);
}

/* Writes a GPT-2 checkpoint (config.json, model.safetensors, tokenizer). */
static void write_gpt2(const gpt2_opts *o) {
    const int64_t d = o->d_model ? o->d_model : D, m = 4 * d, v = o->vocab ? o->vocab : V;
    char config[512];
    snprintf(config, sizeof config,
             "{\"architectures\": [\"GPT2LMHeadModel\"], \"n_embd\": %lld, \"n_head\": 2, "
             "\"n_layer\": 1, \"n_positions\": 16, \"vocab_size\": %lld, "
             "\"layer_norm_epsilon\": 1e-5, \"activation_function\": \"gelu_new\"}",
             (long long)d, (long long)v);
    write_text("config.json", config);
    write_byte_vocab();
    write_text("merges.txt", "#version: 0.2\n");
    struct {
        const char *name;
        int ndim;
        int64_t shape[2];
    } spec[] = {
        {"wte.weight", 2, {v, d}},
        {"wpe.weight", 2, {CTX, d}},
        {"h.0.ln_1.weight", 1, {d}},
        {"h.0.ln_1.bias", 1, {d}},
        {"h.0.attn.c_attn.weight", 2, {d, 3 * d}},
        {"h.0.attn.c_attn.bias", 1, {3 * d}},
        {"h.0.attn.c_proj.weight", 2, {d, d}},
        {"h.0.attn.c_proj.bias", 1, {d}},
        {"h.0.ln_2.weight", 1, {d}},
        {"h.0.ln_2.bias", 1, {d}},
        {"h.0.mlp.c_fc.weight", 2, {d, m}},
        {"h.0.mlp.c_fc.bias", 1, {m}},
        {"h.0.mlp.c_proj.weight", 2, {m, d}},
        {"h.0.mlp.c_proj.bias", 1, {d}},
        {"ln_f.weight", 1, {d}},
        {"ln_f.bias", 1, {d}},
        {"lm_head.weight", 2, {v, d}},
        {"h.0.attn.bias", 2, {CTX, CTX}},
    };
    const size_t n_spec = sizeof spec / sizeof spec[0];
    lens_st_out outs[32];
    char names[32][64];
    void *bufs[32];
    size_t n = 0;
    for (size_t i = 0; i < n_spec; i++) {
        bool is_lm = strcmp(spec[i].name, "lm_head.weight") == 0;
        bool is_mask = strcmp(spec[i].name, "h.0.attn.bias") == 0;
        if ((is_lm && !o->lm_head) || (is_mask && !o->mask_buffers)) continue;
        if (o->skip && strcmp(o->skip, spec[i].name) == 0) continue;
        size_t numel = 1;
        for (int k = 0; k < spec[i].ndim; k++)
            numel *= (size_t)spec[i].shape[k];
        /* the tied head is the embedding itself: same seed */
        float *values = random_floats(numel, is_lm ? 0 : (unsigned)i);
        if (o->nan && i == 0) values[3] = NAN;
        snprintf(names[n], sizeof names[n], "%s%s", is_lm ? "" : o->prefix, spec[i].name);
        outs[n] = (lens_st_out){names[n], LENS_F32, spec[i].ndim, {0}, values};
        memcpy(outs[n].shape, spec[i].shape, sizeof spec[i].shape);
        if (o->bad_shape && strcmp(o->bad_shape, spec[i].name) == 0) {
            outs[n].shape[0] += 1;
            free(values);
            values = random_floats(numel + (size_t)(numel / spec[i].shape[0]), 1);
            outs[n].data = values;
        }
        if (o->as_int && strcmp(o->as_int, spec[i].name) == 0) outs[n].dtype = LENS_I32;
        if (o->f64) {
            double *wide = malloc(numel * sizeof *wide);
            for (size_t k = 0; k < numel; k++)
                wide[k] = values[k];
            free(values);
            outs[n] = (lens_st_out){names[n], LENS_F64, outs[n].ndim, {0}, wide};
            memcpy(outs[n].shape, spec[i].shape, sizeof spec[i].shape);
        }
        bufs[n] = (void *)outs[n].data;
        n++;
    }
    char path[1024];
    lens_err err;
    if (o->sharded) {
        /* the first half of the tensors in one shard, the rest in another */
        size_t half = n / 2;
        char index[8192];
        size_t used = (size_t)snprintf(index, sizeof index, "{\"weight_map\": {");
        for (size_t i = 0; i < n; i++)
            used += (size_t)snprintf(index + used, sizeof index - used,
                                     "%s\"%s\": \"shard-%d.safetensors\"", i ? ", " : "",
                                     outs[i].name, i < half ? 1 : 2);
        snprintf(index + used, sizeof index - used, "}}");
        write_text("model.safetensors.index.json", index);
        snprintf(path, sizeof path, "%s/shard-1.safetensors", dir);
        cr_assert_eq(lens_st_write(path, outs, half, NULL, 0, &err), 0, "%s", err.msg);
        snprintf(path, sizeof path, "%s/shard-2.safetensors", dir);
        cr_assert_eq(lens_st_write(path, outs + half, n - half, NULL, 0, &err), 0, "%s", err.msg);
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        cr_assert_eq(lens_st_write(path, outs, n, NULL, 0, &err), 0, "%s", err.msg);
    }
    for (size_t i = 0; i < n; i++)
        free(bufs[i]);
}

static lens_model *load(int processing, lens_err *err) {
    lens_load_opts opts = {.processing = processing};
    return lens_model_load(dir, &opts, err);
}

TestSuite(model_load, .init = make_dir, .fini = remove_dir);

Test(model_load, gpt2_layouts_agree) {
    /* Without prefix, tied head, with mask buffers ... */
    write_gpt2(&(gpt2_opts){.prefix = "", .mask_buffers = true});
    lens_err err;
    lens_model *a = load(LENS_PROC_NONE, &err);
    cr_assert_not_null(a, "%s", err.msg);
    /* ... and with "transformer." prefix, an explicit lm_head, no buffers. */
    write_gpt2(&(gpt2_opts){.prefix = "transformer.", .lm_head = true});
    lens_model *b = load(LENS_PROC_NONE, &err);
    cr_assert_not_null(b, "%s", err.msg);
    cr_assert_eq(a->cfg.d_head, D / H);
    cr_assert_eq(a->cfg.d_mlp, M);
    cr_assert_float_eq(a->cfg.attn_scale, sqrtf(D / H), 1e-6);
    cr_assert_eq(memcmp(a->w.W_U, b->w.W_U, sizeof(float) * D * V), 0);
    cr_assert_eq(memcmp(a->w.layers[0].W_K, b->w.layers[0].W_K, sizeof(float) * D * D), 0);
    /* W_U is the transpose of the (tied) embedding */
    cr_assert_eq(a->w.W_U[1 * V + 4], a->w.W_E[4 * D + 1]);
    cr_assert_eq(a->rules.bos_id, 256);
    cr_assert_eq(a->rules.pad_id, 256);
    lens_model_free(a);
    lens_model_free(b);
}

Test(model_load, sharded_checkpoint_equals_single_file) {
    write_gpt2(&(gpt2_opts){.prefix = "transformer.", .lm_head = true});
    lens_err err;
    lens_model *one = load(LENS_PROC_NONE, &err);
    cr_assert_not_null(one, "%s", err.msg);
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    cr_assert_eq(unlink(path), 0);
    write_gpt2(&(gpt2_opts){.prefix = "transformer.", .lm_head = true, .sharded = true});
    lens_model *two = load(LENS_PROC_NONE, &err);
    cr_assert_not_null(two, "%s", err.msg);
    cr_assert_eq(memcmp(one->w.W_U, two->w.W_U, sizeof(float) * D * V), 0);
    cr_assert_eq(memcmp(one->w.layers[0].W_out, two->w.layers[0].W_out, sizeof(float) * M * D), 0);
    cr_assert_eq(memcmp(one->w.ln_final_b, two->w.ln_final_b, sizeof(float) * D), 0);
    lens_model_free(one);
    lens_model_free(two);
}

Test(model_load, missing_tensor_is_named) {
    write_gpt2(&(gpt2_opts){.prefix = "", .skip = "h.0.mlp.c_fc.bias"});
    lens_err err;
    cr_assert_null(load(-1, &err));
    cr_assert(strstr(err.msg, "h.0.mlp.c_fc.bias") && strstr(err.msg, "model.safetensors"), "%s",
              err.msg);
}

Test(model_load, wrong_shape_is_named) {
    write_gpt2(&(gpt2_opts){.prefix = "", .bad_shape = "h.0.attn.c_proj.weight"});
    lens_err err;
    cr_assert_null(load(-1, &err));
    cr_assert(strstr(err.msg, "h.0.attn.c_proj.weight") && strstr(err.msg, "[9, 8]") &&
                  strstr(err.msg, "[8, 8]"),
              "%s", err.msg);
}

Test(model_load, nan_weights_are_counted_not_fatal) {
    write_gpt2(&(gpt2_opts){.prefix = "", .nan = true});
    lens_err err;
    lens_model *m = load(LENS_PROC_NONE, &err);
    cr_assert_not_null(m, "%s", err.msg);
    cr_assert_eq(m->n_nonfinite_weights, 1); /* counted where read; the tied head is a copy */
    lens_model_free(m);
}

/* The tensors of a one-layer model, with their element counts (NULL ones
 * included), for comparing two loads. Returns how many. */
typedef struct tensor_ref {
    const char *name;
    const float *data;
    size_t n;
} tensor_ref;

static size_t list_tensors(const lens_model *m, tensor_ref *out) {
    const lens_config *c = &m->cfg;
    const size_t d = (size_t)c->d_model, hd = (size_t)c->n_heads * c->d_head,
                 mlp = (size_t)c->d_mlp;
    const lens_layer_weights *l = &m->w.layers[0];
    const tensor_ref refs[] = {
        {"W_E", m->w.W_E, (size_t)c->d_vocab * d},
        {"W_pos", m->w.W_pos, (size_t)c->n_ctx * d},
        {"ln1_w", l->ln1_w, d},
        {"ln1_b", l->ln1_b, d},
        {"W_Q", l->W_Q, d * hd},
        {"W_K", l->W_K, d * hd},
        {"W_V", l->W_V, d * hd},
        {"b_Q", l->b_Q, hd},
        {"b_K", l->b_K, hd},
        {"b_V", l->b_V, hd},
        {"W_O", l->W_O, hd * d},
        {"b_O", l->b_O, d},
        {"ln2_w", l->ln2_w, d},
        {"ln2_b", l->ln2_b, d},
        {"W_in", l->W_in, d * mlp},
        {"b_in", l->b_in, mlp},
        {"W_out", l->W_out, mlp * d},
        {"b_out", l->b_out, d},
        {"ln_final_w", m->w.ln_final_w, d},
        {"ln_final_b", m->w.ln_final_b, d},
        {"W_U", m->w.W_U, d * (size_t)c->d_vocab_out},
        {"b_U", m->w.b_U, (size_t)c->d_vocab_out},
    };
    memcpy(out, refs, sizeof refs);
    return sizeof refs / sizeof refs[0];
}

/* Tensor `name` of dir/model.safetensors as n floats (caller frees). */
static float *read_source(const char *name, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    lens_err err;
    lens_st_file *f = lens_st_open(path, &err);
    cr_assert_not_null(f, "%s", err.msg);
    const lens_st_tensor *t = lens_st_find(f, name);
    cr_assert(t && (size_t)t->numel == n, "%s", name);
    float *out = malloc(n * sizeof *out);
    cr_assert_eq(lens_st_to_f32(f, t, out, &err), 0, "%s", err.msg);
    lens_st_close(f);
    return out;
}

/* Asserts that a and b hold the same weights, bit for bit. */
static void expect_same_weights(const lens_model *a, const lens_model *b) {
    tensor_ref ta[32], tb[32];
    size_t n = list_tensors(a, ta);
    cr_assert_eq(list_tensors(b, tb), n);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(!ta[i].data, !tb[i].data, "%s is in only one model", ta[i].name);
        if (ta[i].data)
            cr_assert_eq(memcmp(ta[i].data, tb[i].data, ta[i].n * sizeof(float)), 0, "%s differs",
                         ta[i].name);
    }
}

Test(model_load, f64_checkpoint_loads_the_same_weights) {
    /* the non-F32 reads go through conversion: plain copies, c_attn's split
     * and the tied transpose, with and without an lm_head */
    for (int lm_head = 0; lm_head < 2; lm_head++) {
        write_gpt2(&(gpt2_opts){.prefix = "", .lm_head = lm_head});
        lens_err err;
        lens_model *a = load(LENS_PROC_NONE, &err);
        cr_assert_not_null(a, "%s", err.msg);
        write_gpt2(&(gpt2_opts){.prefix = "", .lm_head = lm_head, .f64 = true});
        lens_model *b = load(LENS_PROC_NONE, &err);
        cr_assert_not_null(b, "%s", err.msg);
        expect_same_weights(a, b);
        lens_model_free(a);
        lens_model_free(b);
    }
}

Test(model_load, weights_are_the_internal_tensors_only) {
    /* no raw c_attn or untransposed head is kept beside them */
    write_gpt2(&(gpt2_opts){.prefix = "", .lm_head = true});
    lens_err err;
    lens_model *m = load(LENS_PROC_NONE, &err);
    cr_assert_not_null(m, "%s", err.msg);
    tensor_ref refs[32];
    size_t n = list_tensors(m, refs), floats = 0;
    for (size_t i = 0; i < n; i++)
        floats += refs[i].n;
    cr_assert_eq(m->n_weight_floats, floats);
    /* W_Q | W_K | W_V are c_attn's columns, b_Q | b_K | b_V its bias */
    float *c_attn = read_source("h.0.attn.c_attn.weight", D * 3 * D);
    float *c_attn_b = read_source("h.0.attn.c_attn.bias", 3 * D);
    const lens_layer_weights *l = &m->w.layers[0];
    const float *parts[3] = {l->W_Q, l->W_K, l->W_V}, *biases[3] = {l->b_Q, l->b_K, l->b_V};
    for (int k = 0; k < 3; k++)
        for (int r = 0; r < D; r++) {
            cr_assert_eq(biases[k][r], c_attn_b[k * D + r]);
            for (int c = 0; c < D; c++)
                cr_assert_eq(parts[k][r * D + c], c_attn[r * 3 * D + k * D + c]);
        }
    free(c_attn);
    free(c_attn_b);
    lens_model_free(m);
}

/* The address space this process has mapped, in bytes. */
static size_t mapped_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    cr_assert_not_null(f);
    char line[256];
    size_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %zu kB", &kb) == 1) break;
    fclose(f);
    cr_assert_gt(kb, 0);
    return kb << 10;
}

Test(model_load, out_of_memory_for_the_weights_is_an_error) {
    /* W_E is 5 MB and the tied W_U as much again: room for the file's
     * mapping but not for the weights */
    write_gpt2(&(gpt2_opts){.prefix = "", .d_model = 64, .vocab = 20000});
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    const size_t limit = mapped_bytes() + (size_t)st.st_size + (4 << 20);
    cr_assert_eq(setrlimit(RLIMIT_AS, &(struct rlimit){limit, limit}), 0);
    lens_err err;
    cr_assert_null(load(LENS_PROC_DEFAULT, &err));
    cr_assert_eq(err.code, LENS_ERR_NO_MEMORY, "%s", err.msg);
    cr_assert(strstr(err.msg, "out of memory") && strstr(err.msg, "weights"), "%s", err.msg);
}

Test(model_load, integer_tensor_is_named) {
    write_gpt2(&(gpt2_opts){.prefix = "", .as_int = "h.0.ln_2.bias"});
    lens_err err;
    cr_assert_null(load(-1, &err));
    cr_assert(strstr(err.msg, "h.0.ln_2.bias") && strstr(err.msg, "I32") &&
                  strstr(err.msg, "model.safetensors"),
              "%s", err.msg);
}

Test(model_load, bad_config_json_names_file) {
    write_gpt2(&(gpt2_opts){.prefix = ""});
    write_text("config.json", "{\"n_embd\": 8,,}");
    lens_err err;
    cr_assert_null(load(-1, &err));
    cr_assert(strstr(err.msg, "config.json") && strstr(err.msg, "line 1"), "%s", err.msg);
}

Test(model_load, unsupported_architecture_is_named) {
    write_gpt2(&(gpt2_opts){.prefix = ""});
    write_text("config.json", "{\"architectures\": [\"MambaForCausalLM\"], \"vocab_size\": 257}");
    lens_err err;
    cr_assert_null(load(-1, &err));
    cr_assert(strstr(err.msg, "MambaForCausalLM") && strstr(err.msg, "LlamaForCausalLM"), "%s",
              err.msg);
}

Test(model_load, missing_directory_contents) {
    lens_err err;
    cr_assert_null(load(-1, &err));
    cr_assert(strstr(err.msg, "tl_config.json") && strstr(err.msg, "config.json"), "%s", err.msg);
}

Test(model_load, unknown_name_suggests_hf_cache) {
    lens_err err;
    setenv("HF_HOME", dir, 1);
    cr_assert_null(lens_model_load("no-such-org/no-such-model", NULL, &err));
    cr_assert(strstr(err.msg, "no-such-org/no-such-model") && strstr(err.msg, "cache"), "%s",
              err.msg);
}

/* Writes a GPT-2 checkpoint as snapshot `snapshot` of hub repository
 * `repo` ("models--ORG--NAME") under dir, with refs/main naming it when
 * with_ref, and points HF_HOME at dir. The snapshot's path goes to snap. */
static void write_hub_snapshot(const char *repo, const char *snapshot, bool with_ref,
                               char snap[384]) {
    char refs[384], cmd[1400], saved[384];
    snprintf(snap, 384, "%.200s/hub/%.60s/snapshots/%.60s", dir, repo, snapshot);
    snprintf(refs, sizeof refs, "%.200s/hub/%.60s/refs", dir, repo);
    if (with_ref)
        snprintf(cmd, sizeof cmd, "mkdir -p '%s' '%s' && printf %s > '%s/main'", snap, refs,
                 snapshot, refs);
    else
        snprintf(cmd, sizeof cmd, "mkdir -p '%s'", snap);
    cr_assert_eq(system(cmd), 0);
    snprintf(saved, sizeof saved, "%s", dir);
    snprintf(dir, sizeof dir, "%s", snap);
    write_gpt2(&(gpt2_opts){.prefix = ""});
    snprintf(dir, sizeof dir, "%s", saved);
    setenv("HF_HOME", dir, 1);
}

Test(model_load, hf_cache_by_id_and_alias) {
    char snap[384];
    write_hub_snapshot("models--gpt2", "abc123", true, snap);
    lens_err err;
    const char *names[] = {"gpt2", "gpt2-small"};
    for (int i = 0; i < 2; i++) {
        lens_model *m = lens_model_load(names[i], NULL, &err);
        cr_assert_not_null(m, "%s: %s", names[i], err.msg);
        cr_assert_str_eq(m->source, snap);
        lens_model_free(m);
    }
}

/* A snapshot of ORG/NAME in the hub cache under dir, found by NAME alone
 * in any case, as TL's get_official_model_name finds it; two
 * repositories of the same name make the name ambiguous. */
Test(model_load, hf_cache_by_name_without_org) {
    char snap[384], other[384];
    write_hub_snapshot("models--TestOrg--Tiny-GPT2-1B", "abc", false, snap);
    lens_err err;
    lens_model *m = lens_model_load("tiny-gpt2-1b", NULL, &err);
    cr_assert_not_null(m, "%s", err.msg);
    cr_assert_str_eq(m->source, snap);
    lens_model_free(m);
    write_hub_snapshot("models--Other--tiny-gpt2-1B", "x", false, other);
    cr_assert_null(lens_model_load("tiny-gpt2-1b", NULL, &err));
}

#define RELU ", \"act_fn\": \"relu\""

static void write_native(const char *config_extra, bool with_ln) {
    char config[2048];
    snprintf(config, sizeof config,
             "{\"n_layers\": 1, \"d_model\": 8, \"n_ctx\": 16, \"d_head\": 4, \"n_heads\": 2, "
             "\"d_mlp\": 32, \"d_vocab\": 6, \"d_vocab_out\": 2, "
             "\"normalization_type\": \"%s\"%s, \"lensd\": {\"tokenizer\": {\"type\": \"list\", "
             "\"tokens\": [\"<s>\", \"<pad>\", \"(\", \")\", \"x\", \"y\"]}, \"bos_token\": "
             "\"<s>\", \"pad_token\": \"<pad>\"}}",
             with_ln ? "LN" : "LNPre", config_extra);
    write_text("tl_config.json", config);
    const char *names[] = {"embed.W_E",         "pos_embed.W_pos",    "blocks.0.attn.W_Q",
                           "blocks.0.attn.W_K", "blocks.0.attn.W_V",  "blocks.0.attn.W_O",
                           "blocks.0.mlp.W_in", "blocks.0.mlp.W_out", "unembed.W_U",
                           "blocks.0.ln1.w",    "blocks.0.ln1.b",     "blocks.0.ln2.w",
                           "blocks.0.ln2.b",    "ln_final.w",         "ln_final.b"};
    int64_t shapes[][3] = {{6, D},    {CTX, D}, {H, D, 4}, {H, D, 4}, {H, D, 4},
                           {H, 4, D}, {D, M},   {M, D},    {D, 2},    {D},
                           {D},       {D},      {D},       {D},       {D}};
    int ndims[] = {2, 2, 3, 3, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1};
    size_t n = with_ln ? 15 : 9;
    lens_st_out outs[15];
    float *bufs[15];
    for (size_t i = 0; i < n; i++) {
        size_t numel = 1;
        for (int k = 0; k < ndims[i]; k++)
            numel *= (size_t)shapes[i][k];
        bufs[i] = random_floats(numel, (unsigned)i + 7);
        outs[i] = (lens_st_out){names[i], LENS_F32, ndims[i], {0}, bufs[i]};
        memcpy(outs[i].shape, shapes[i], sizeof shapes[i]);
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    lens_err err;
    cr_assert_eq(lens_st_write(path, outs, n, NULL, 0, &err), 0, "%s", err.msg);
    for (size_t i = 0; i < n; i++)
        free(bufs[i]);
}

Test(model_load, native_model_and_its_tokens) {
    write_native(RELU, true);
    lens_err err;
    lens_model *m = load(-1, &err);
    cr_assert_not_null(m, "%s", err.msg);
    cr_assert_eq(m->processing, LENS_PROC_NONE, "native models default to no processing");
    cr_assert_eq(m->cfg.d_vocab_out, 2);
    cr_assert_eq(m->rules.bos_id, 0);
    cr_assert_eq(m->rules.pad_id, 1);
    cr_assert_eq(m->rules.eos_id, -1);
    lens_model_free(m);
}

Test(model_load, native_heads_become_columns) {
    /* TL's W_Q [h, d, dh] is the internal [d, h * dh]; W_O [h, dh, d] the
     * same bytes */
    write_native(RELU, true);
    lens_err err;
    lens_model *m = load(LENS_PROC_NONE, &err);
    cr_assert_not_null(m, "%s", err.msg);
    const int dh = 4;
    const char *names[3] = {"blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_V"};
    const float *got[3] = {m->w.layers[0].W_Q, m->w.layers[0].W_K, m->w.layers[0].W_V};
    for (int k = 0; k < 3; k++) {
        float *raw = read_source(names[k], H * D * dh);
        for (int i = 0; i < H; i++)
            for (int r = 0; r < D; r++)
                for (int e = 0; e < dh; e++)
                    cr_assert_eq(got[k][r * H * dh + i * dh + e], raw[(i * D + r) * dh + e],
                                 "%s[%d, %d, %d]", names[k], i, r, e);
        free(raw);
    }
    float *W_O = read_source("blocks.0.attn.W_O", H * dh * D);
    cr_assert_eq(memcmp(m->w.layers[0].W_O, W_O, sizeof(float) * H * dh * D), 0);
    free(W_O);
    for (int i = 0; i < H * dh; i++)
        cr_assert_eq(m->w.layers[0].b_Q[i], 0.0f, "a missing bias is zeros");
    lens_model_free(m);
}

Test(model_load, native_config_file_path_works_too) {
    write_native(RELU, false);
    char path[1024];
    snprintf(path, sizeof path, "%s/tl_config.json", dir);
    lens_err err;
    lens_model *m = lens_model_load(path, NULL, &err);
    cr_assert_not_null(m, "%s", err.msg);
    cr_assert_eq(m->cfg.normalization, LENS_NORM_LNPRE);
    lens_model_free(m);
}

Test(model_load, native_unsupported_fields_refused) {
    const char *cases[][2] = {
        {RELU ", \"positional_embedding_type\": \"rotary\"", "rotary"},
        {RELU ", \"gated_mlp\": true", "gated_mlp"},
        {RELU ", \"attention_dir\": \"sideways\"", "attention_dir"},
        {", \"act_fn\": \"swish\"", "swish"},
        {RELU ", \"n_key_value_heads\": 1", "n_key_value_heads"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_native(cases[i][0], true);
        lens_err err;
        cr_assert_null(load(-1, &err), "case %zu loaded", i);
        cr_assert(strstr(err.msg, cases[i][1]) && strstr(err.msg, "tl_config.json"), "%s", err.msg);
    }
}

Test(model_load, native_missing_field_named) {
    write_native(RELU, true);
    write_text("tl_config.json", "{\"n_layers\": 1, \"d_model\": 8}");
    lens_err err;
    cr_assert_null(load(-1, &err));
    cr_assert(strstr(err.msg, "n_ctx"), "%s", err.msg);
}

/* Writes a one-layer GPT-Neo checkpoint: nn.Linear weights [out, in]. */
static void write_neo(void) {
    write_text("config.json",
               "{\"architectures\": [\"GPTNeoForCausalLM\"], \"hidden_size\": 8, "
               "\"num_heads\": 2, \"num_layers\": 1, \"max_position_embeddings\": 16, "
               "\"vocab_size\": 257, \"intermediate_size\": 32, \"window_size\": 4, "
               "\"attention_types\": [[[\"local\"], 1]], \"activation_function\": \"gelu_new\"}");
    write_byte_vocab();
    write_text("merges.txt", "#version: 0.2\n");
    struct {
        const char *name;
        int ndim;
        int64_t shape[2];
    } spec[] = {
        {"transformer.wte.weight", 2, {V, D}},
        {"transformer.wpe.weight", 2, {CTX, D}},
        {"transformer.h.0.ln_1.weight", 1, {D}},
        {"transformer.h.0.ln_1.bias", 1, {D}},
        {"transformer.h.0.attn.attention.q_proj.weight", 2, {D, D}},
        {"transformer.h.0.attn.attention.k_proj.weight", 2, {D, D}},
        {"transformer.h.0.attn.attention.v_proj.weight", 2, {D, D}},
        {"transformer.h.0.attn.attention.out_proj.weight", 2, {D, D}},
        {"transformer.h.0.attn.attention.out_proj.bias", 1, {D}},
        {"transformer.h.0.ln_2.weight", 1, {D}},
        {"transformer.h.0.ln_2.bias", 1, {D}},
        {"transformer.h.0.mlp.c_fc.weight", 2, {M, D}},
        {"transformer.h.0.mlp.c_fc.bias", 1, {M}},
        {"transformer.h.0.mlp.c_proj.weight", 2, {D, M}},
        {"transformer.h.0.mlp.c_proj.bias", 1, {D}},
        {"transformer.ln_f.weight", 1, {D}},
        {"transformer.ln_f.bias", 1, {D}},
    };
    const size_t n = sizeof spec / sizeof spec[0];
    lens_st_out outs[sizeof spec / sizeof spec[0]];
    for (size_t i = 0; i < n; i++) {
        size_t numel =
            (size_t)spec[i].shape[0] * (spec[i].ndim == 2 ? (size_t)spec[i].shape[1] : 1);
        outs[i] = (lens_st_out){
            spec[i].name, LENS_F32, spec[i].ndim, {0}, random_floats(numel, (unsigned)i + 3)};
        memcpy(outs[i].shape, spec[i].shape, sizeof spec[i].shape);
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    lens_err err;
    cr_assert_eq(lens_st_write(path, outs, n, NULL, 0, &err), 0, "%s", err.msg);
    for (size_t i = 0; i < n; i++)
        free((void *)outs[i].data);
}

Test(model_load, neo_linear_weights_are_transposed) {
    write_neo();
    lens_err err;
    lens_model *m = load(LENS_PROC_NONE, &err);
    cr_assert_not_null(m, "%s", err.msg);
    cr_assert(m->cfg.use_local_attn && m->cfg.layer_is_local[0]);
    const lens_layer_weights *l = &m->w.layers[0];
    const struct {
        const char *name;
        const float *internal;
        int out, in;
    } linear[] = {
        {"transformer.h.0.attn.attention.q_proj.weight", l->W_Q, D, D},
        {"transformer.h.0.attn.attention.k_proj.weight", l->W_K, D, D},
        {"transformer.h.0.attn.attention.v_proj.weight", l->W_V, D, D},
        {"transformer.h.0.attn.attention.out_proj.weight", l->W_O, D, D},
        {"transformer.h.0.mlp.c_fc.weight", l->W_in, M, D},
        {"transformer.h.0.mlp.c_proj.weight", l->W_out, D, M},
        {"transformer.wte.weight", m->w.W_U, V, D},
    };
    for (size_t k = 0; k < sizeof linear / sizeof linear[0]; k++) {
        float *raw = read_source(linear[k].name, (size_t)linear[k].out * linear[k].in);
        for (int o = 0; o < linear[k].out; o++)
            for (int i = 0; i < linear[k].in; i++)
                cr_assert_eq(linear[k].internal[i * linear[k].out + o], raw[o * linear[k].in + i],
                             "%s[%d, %d]", linear[k].name, o, i);
        free(raw);
    }
    for (int i = 0; i < D; i++)
        cr_assert(l->b_Q[i] == 0 && l->b_K[i] == 0 && l->b_V[i] == 0, "Q, K, V have no bias");
    for (int i = 0; i < V; i++)
        cr_assert_eq(m->w.b_U[i], 0.0f);
    lens_model_free(m);
}

/* Column means over d_model of a [d, n] reading matrix are ~0 after fold_ln;
 * row means of writing matrices are ~0 after center_writing_weights; W_U's
 * rows sum to ~0 after center_unembed. */
Test(model_load, processing_centres_what_tl_centres) {
    write_gpt2(&(gpt2_opts){.prefix = ""});
    lens_err err;
    lens_model *m = load(LENS_PROC_DEFAULT, &err);
    cr_assert_not_null(m, "%s", err.msg);
    cr_assert_eq(m->processing, LENS_PROC_DEFAULT);
    cr_assert_eq(m->cfg.normalization, LENS_NORM_LNPRE);
    cr_assert_null(m->w.layers[0].ln1_w);
    for (int col = 0; col < D; col++) {
        double sum = 0;
        for (int r = 0; r < D; r++)
            sum += m->w.layers[0].W_Q[r * D + col];
        cr_assert(fabs(sum) < 1e-5, "W_Q column %d sums to %g", col, sum);
    }
    for (int r = 0; r < V; r++) {
        double e = 0, u = 0;
        for (int c = 0; c < D; c++)
            e += m->w.W_E[r * D + c];
        cr_assert(fabs(e) < 1e-5, "W_E row %d sums to %g", r, e);
        (void)u;
    }
    for (int r = 0; r < D; r++) {
        double u = 0;
        for (int v = 0; v < V; v++)
            u += m->w.W_U[r * V + v];
        cr_assert(fabs(u) < 1e-5, "W_U row %d sums to %g", r, u);
    }
    for (int i = 0; i < D; i++)
        cr_assert_eq(m->w.layers[0].b_V[i], 0.0f);
    lens_model_free(m);
}

/* TL's processing written out plainly, one step after another, over the
 * internal layout: each sum in one double, over its row or column in order.
 * lens_process_weights must agree with it bit for bit, however it splits
 * the work. */
static void plain_fold_bias(float *b, const float *W, const float *v, int R, int N) {
    double *sum = calloc((size_t)N, sizeof *sum);
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++)
            sum[n] += (double)W[(size_t)r * N + n] * v[r];
    for (int n = 0; n < N; n++)
        b[n] += (float)sum[n];
    free(sum);
}

static void plain_fold_norm(float *W, float *b, const float *ln_w, const float *ln_b, int R,
                            int N) {
    plain_fold_bias(b, W, ln_b, R, N);
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++)
            W[(size_t)r * N + n] *= ln_w[r];
    double *sum = calloc((size_t)N, sizeof *sum);
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++)
            sum[n] += W[(size_t)r * N + n];
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++)
            W[(size_t)r * N + n] -= (float)(sum[n] / R);
    free(sum);
}

static void plain_center_rows(float *W, int R, int N) {
    for (int r = 0; r < R; r++) {
        double sum = 0;
        for (int n = 0; n < N; n++)
            sum += W[(size_t)r * N + n];
        float mean = (float)(sum / N);
        for (int n = 0; n < N; n++)
            W[(size_t)r * N + n] -= mean;
    }
}

/* from_pretrained's default processing of a one-layer GPT-2, in place. */
static void plain_default_processing(lens_model *m) {
    const lens_config *c = &m->cfg;
    const int d = c->d_model, hd = c->n_heads * c->d_head, mlp = c->d_mlp, V_out = c->d_vocab_out;
    lens_layer_weights *l = &m->w.layers[0];
    plain_fold_norm(l->W_Q, l->b_Q, l->ln1_w, l->ln1_b, d, hd);
    plain_fold_norm(l->W_K, l->b_K, l->ln1_w, l->ln1_b, d, hd);
    plain_fold_norm(l->W_V, l->b_V, l->ln1_w, l->ln1_b, d, hd);
    plain_fold_norm(l->W_in, l->b_in, l->ln2_w, l->ln2_b, d, mlp);
    plain_fold_norm(m->w.W_U, m->w.b_U, m->w.ln_final_w, m->w.ln_final_b, d, V_out);
    l->ln1_w = l->ln1_b = l->ln2_w = l->ln2_b = m->w.ln_final_w = m->w.ln_final_b = NULL;
    plain_center_rows(m->w.W_E, c->d_vocab, d);
    plain_center_rows(m->w.W_pos, c->n_ctx, d);
    plain_center_rows(l->W_O, hd, d);
    plain_center_rows(l->b_O, 1, d);
    plain_center_rows(l->W_out, mlp, d);
    plain_center_rows(l->b_out, 1, d);
    plain_center_rows(m->w.W_U, d, V_out);
    plain_center_rows(m->w.b_U, 1, V_out);
    plain_fold_bias(l->b_O, l->W_O, l->b_V, hd, d);
    memset(l->b_V, 0, (size_t)hd * sizeof(float));
    plain_center_rows(l->b_O, 1, d);
}

Test(model_load, processing_equals_the_plain_steps_bit_for_bit) {
    /* big enough that W_E, W_U and the fills come in many pieces and blocks */
    write_gpt2(&(gpt2_opts){.prefix = "", .d_model = 64, .vocab = 20000});
    lens_err err;
    lens_model *plain = load(LENS_PROC_NONE, &err);
    cr_assert_not_null(plain, "%s", err.msg);
    plain_default_processing(plain);
    const int threads[] = {1, 3};
    for (size_t i = 0; i < sizeof threads / sizeof threads[0]; i++) {
        omp_set_num_threads(threads[i]);
        lens_model *m = load(LENS_PROC_DEFAULT, &err);
        cr_assert_not_null(m, "%s", err.msg);
        cr_assert_eq(m->processing, LENS_PROC_DEFAULT);
        expect_same_weights(plain, m);
        lens_model_free(m);
    }
    lens_model_free(plain);
}

Test(model_load, processing_names_round_trip) {
    unsigned flags;
    lens_err err;
    cr_assert_eq(lens_processing_parse("fold_ln,center_unembed", &flags, &err), 0);
    cr_assert_eq(flags, LENS_PROC_FOLD_LN | LENS_PROC_CENTER_UNEMBED);
    char buf[256];
    lens_processing_names(flags, buf, sizeof buf);
    cr_assert_str_eq(buf, "fold_ln,center_unembed");
    cr_assert_eq(lens_processing_parse("default", &flags, &err), 0);
    cr_assert_eq(flags, LENS_PROC_DEFAULT);
    cr_assert_eq(lens_processing_parse("fold_ln,bogus", &flags, &err), -1);
    cr_assert(strstr(err.msg, "bogus"), "%s", err.msg);
}

Test(model_load, hook_names_shapes_and_gating) {
    write_gpt2(&(gpt2_opts){.prefix = ""});
    lens_err err;
    lens_model *m = load(-1, &err);
    cr_assert_not_null(m, "%s", err.msg);
    lens_hook hook;
    cr_assert_eq(lens_hook_parse(&m->cfg, "blocks.0.attn.hook_pattern", &hook, &err), 0);
    cr_assert_eq(hook.kind, LENS_HOOK_PATTERN);
    int64_t shape[LENS_MAX_DIMS];
    cr_assert_eq(lens_hook_shape(&m->cfg, hook, 3, 5, shape), 4);
    cr_assert(shape[0] == 3 && shape[1] == H && shape[2] == 5 && shape[3] == 5);
    cr_assert_eq(lens_hook_parse(&m->cfg, "blocks.0.attn.hook_patern", &hook, &err), -1);
    cr_assert(strstr(err.msg, "blocks.0.attn.hook_pattern"), "%s", err.msg);
    /* gated: attn.hook_result only with use_attn_result */
    cr_assert_eq(lens_hook_parse(&m->cfg, "blocks.0.attn.hook_result", &hook, &err), -1);
    uint8_t *enabled = calloc(lens_hook_slots(&m->cfg), 1);
    /* GPT-2 has 17 per block + embed, pos_embed, ln_final x2, unembed x2 (TL 3.9) */
    cr_assert_eq(lens_hook_select_glob(&m->cfg, "*", enabled), 17 + 6);
    free(enabled);
    lens_model_free(m);
}

/* lens_forward_bytes is exactly the workspace lens_forward then takes: for a
 * run of every position and for a suffix run (causal position reuse), which
 * computes only the rows from each prompt's first position on. */
Test(model_load, forward_bytes_is_the_workspace_a_run_takes) {
    write_gpt2(&(gpt2_opts){.prefix = ""});
    lens_err err;
    lens_model *m = load(LENS_PROC_NONE, &err);
    cr_assert_not_null(m, "%s", err.msg);
    enum { B = 2, T = 5 };
    const int32_t tokens[B * T] = {256, 72, 101, 108, 108, 256, 111, 32, 119, 111};
    const int32_t positions[B] = {4, 4}, first[B] = {2, 4};
    static float logits[B * V], resid[B * T * D], reference[B * T * D];
    const lens_batch batch = {.B = B, .T = T, .tokens = tokens};

    lens_workspace ws = {0};
    const lens_run every = {.logits = logits, .logit_positions = positions};
    cr_assert_eq(lens_forward(m, &ws, &batch, &every, &err), 0, "%s", err.msg);
    cr_assert_eq(ws.cap, lens_forward_bytes(m, &batch, &every));

    const float *keys[1] = {reference};
    const lens_suffix suffix = {first, B, keys, keys};
    const lens_run suffix_run = {
        .logits = logits, .logit_positions = positions, .resid_start = resid, .suffix = &suffix};
    lens_workspace ws_suffix = {0};
    cr_assert_eq(lens_forward(m, &ws_suffix, &batch, &suffix_run, &err), 0, "%s", err.msg);
    cr_assert_eq(ws_suffix.cap, lens_forward_bytes(m, &batch, &suffix_run));
    cr_assert_lt(ws_suffix.cap, ws.cap, "the suffix run computes 4 of 10 rows");
    lens_workspace_free(&ws);
    lens_workspace_free(&ws_suffix);
    lens_model_free(m);
}
