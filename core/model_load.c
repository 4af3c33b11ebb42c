/*
 * model_load.c: finding a model, reading its configuration and turning its
 * checkpoint into lensd's internal weight layout (model.h).
 *
 * Three sources, one result:
 *  - Hugging Face directories (config.json + model.safetensors or a sharded
 *    index): GPT2LMHeadModel and GPTNeoForCausalLM, mapped the way
 *    TransformerLens's convert_gpt2_weights / convert_neo_weights map them;
 *  - TransformerLens-native models (tl_config.json with
 *    HookedTransformerConfig fields plus a "lensd" entry, and a state dict in
 *    TL naming);
 *  - Hugging Face ids in the local hub cache, and TL's aliases for them.
 * Every tensor's dtype and shape is checked against the configuration before
 * a byte is converted; weight processing (process.c) runs last.
 */
#include "core/model.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/arch.h"
#include "core/json_fields.h"
#include "core/process.h"
#include "core/safetensors.h"

/* The safetensors files of one checkpoint, searched by tensor name. */
typedef struct tensor_source {
    lens_st_file **files;
    size_t n_files;
} tensor_source;

static void source_close(tensor_source *src) {
    for (size_t i = 0; i < src->n_files; i++)
        lens_st_close(src->files[i]);
    free(src->files);
    src->files = NULL;
    src->n_files = 0;
}

static int source_add(tensor_source *src, const char *path, lens_err *err) {
    lens_st_file *file = lens_st_open(path, err);
    if (!file) return -1;
    lens_st_file **grown = realloc(src->files, (src->n_files + 1) * sizeof *grown);
    if (!grown) {
        lens_st_close(file);
        lens_err_set(err, "%s: out of memory", path);
        return -1;
    }
    src->files = grown;
    src->files[src->n_files++] = file;
    return 0;
}

static const lens_st_tensor *source_find(const tensor_source *src, const char *name,
                                         const lens_st_file **owner) {
    for (size_t i = 0; i < src->n_files; i++) {
        const lens_st_tensor *t = lens_st_find(src->files[i], name);
        if (t) {
            if (owner) *owner = src->files[i];
            return t;
        }
    }
    return NULL;
}

static bool path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *out = malloc(n);
    if (out) snprintf(out, n, "%s/%s", dir, name);
    return out;
}

static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    return strndup(path, (size_t)(slash - path == 0 ? 1 : slash - path));
}

/* Opens model.safetensors, or every shard named by model.safetensors.index.json. */
static int source_open_dir(tensor_source *src, const char *dir, lens_err *err) {
    char *single = path_join(dir, "model.safetensors");
    char *index = path_join(dir, "model.safetensors.index.json");
    int rc = -1;
    if (!single || !index) {
        lens_err_set(err, "out of memory");
    } else if (path_exists(single)) {
        rc = source_add(src, single, err);
    } else if (path_exists(index)) {
        json_error_t jerr;
        json_t *root = json_load_file(index, 0, &jerr);
        json_t *map = root ? json_object_get(root, "weight_map") : NULL;
        if (!json_is_object(map)) {
            lens_err_set(err, "%s: no \"weight_map\" object (%s)", index,
                         root ? "missing" : jerr.text);
        } else {
            rc = 0;
            const char *key;
            json_t *value;
            json_object_foreach(map, key, value) {
                const char *shard = json_string_value(value);
                if (!shard || strchr(shard, '/')) {
                    lens_err_set(err, "%s: weight_map[\"%s\"] is not a file name in %s", index, key,
                                 dir);
                    rc = -1;
                    break;
                }
                bool seen = false;
                for (size_t i = 0; i < src->n_files && !seen; i++) {
                    const char *p = lens_st_path(src->files[i]);
                    const char *base = strrchr(p, '/');
                    seen = strcmp(base ? base + 1 : p, shard) == 0;
                }
                if (seen) continue;
                char *shard_path = path_join(dir, shard);
                rc = shard_path ? source_add(src, shard_path, err) : -1;
                free(shard_path);
                if (rc) break;
            }
        }
        json_decref(root);
    } else {
        lens_err_set(err, "%s: no model.safetensors or model.safetensors.index.json", dir);
    }
    free(single);
    free(index);
    return rc;
}

/* ---- the weight plan ---------------------------------------------------- */

/*
 * Weights are planned, then read. The loaders below only name what they
 * need: each source tensor is found, and its shape and dtype checked against
 * the configuration, as it is named, and the plan records which internal
 * tensor it fills and how. Once the whole checkpoint has checked out, every
 * internal tensor is carved from one anonymous mapping (zero-filled by the
 * kernel, so tensors that no source fills are zeros) and filled with pread
 * straight from the file into its final layout, in blocks of rows spread
 * over the OpenMP threads. No tensor passes through an intermediate copy; a
 * tied unembedding is transposed from the embedding's blocks as they land.
 *
 * The mapping is faulted in before the reads, by each thread for its share
 * in one call: the page faults of fresh memory (650 MB for GPT-2 small) are
 * the largest part of loading, and cheaper so than taken one page at a time
 * inside the reads. Huge pages would make them cheaper still where memory is
 * at hand, but on a virtual machine that reports free memory to its host
 * every fresh huge page also faults in the host: there MADV_HUGEPAGE took
 * GPT-2 small's weights from 0.13 s to 0.75-1.7 s. So the pages are 4 KB.
 */

/* Floats per block of work when filling: a block that is rearranged goes
 * through a scratch buffer of this size, which stays in the L2 cache. A
 * transposed block is larger, so that each destination row gets a long run
 * (few pages touched per block, whole cache lines written). */
#define FILL_BLOCK 65536
#define FILL_BLOCK_TRANSPOSED (4 * FILL_BLOCK)

/* Each internal tensor starts on a cache line. */
#define TENSOR_ALIGN 16

/* One internal tensor: where its pointer goes and how many floats it has. */
typedef struct plan_tensor {
    float **field;
    size_t n;
} plan_tensor;

/* How one source tensor (or a block of it) reaches the internal layout. Its
 * `rows` rows of `width` values are read a block of rows at a time; each row
 * is cut into n_parts runs of width / n_parts values, run k becoming that
 * row of destination k (GPT-2's c_attn into W_Q|W_K|W_V, one head of TL's
 * W_Q into its columns, or with one part a plain copy); and with
 * `transposed`, the whole row also becomes that column of destination dst_t
 * [width, rows] (an unembedding, or a GPT-Neo Linear weight). */
typedef struct plan_fill {
    const lens_st_file *file;
    const lens_st_tensor *src;
    int64_t first; /* source element where row 0 starts */
    int64_t rows, width;
    int n_parts;        /* 0 to 3 */
    size_t dst[3];      /* plan tensor of each part */
    int64_t dst_first;  /* element of each part's destination that row 0 goes to */
    int64_t dst_stride; /* elements between rows there */
    bool transposed;
    size_t dst_t;
    int64_t dst_t_column; /* the transpose's first column in dst_t */
    int64_t dst_t_width;  /* dst_t's row length (rows, unless rows fill a slice of it) */
    bool count;           /* count non-finite values */
} plan_fill;

typedef struct weight_plan {
    const tensor_source *src;
    plan_tensor *tensors;
    size_t n_tensors, cap_tensors;
    plan_fill *fills;
    size_t n_fills, cap_fills;
} weight_plan;

static void plan_free(weight_plan *p) {
    free(p->tensors);
    free(p->fills);
}

/* Makes room for one more item in items (n used of *cap, each size bytes),
 * doubling from 64. Returns the array, moved or not, or NULL when out of
 * memory (items is then unchanged and still the caller's). */
static void *plan_grow(void *items, size_t n, size_t *cap, size_t size, lens_err *err) {
    if (n < *cap) return items;
    const size_t grown_cap = *cap ? 2 * *cap : 64;
    void *grown = realloc(items, grown_cap * size);
    if (!grown) {
        lens_err_set(err, "out of memory planning the weights");
        return NULL;
    }
    *cap = grown_cap;
    return grown;
}

/* Adds an internal tensor of n floats whose pointer goes to *field; it is
 * zeros unless fills write it. Sets *index to its number in the plan. */
static int plan_zeros(weight_plan *p, float **field, size_t n, size_t *index, lens_err *err) {
    plan_tensor *tensors =
        plan_grow(p->tensors, p->n_tensors, &p->cap_tensors, sizeof *tensors, err);
    if (!tensors) return -1;
    p->tensors = tensors;
    if (index) *index = p->n_tensors;
    p->tensors[p->n_tensors++] = (plan_tensor){field, n};
    return 0;
}

static int plan_add_fill(weight_plan *p, const plan_fill *fill, lens_err *err) {
    plan_fill *fills = plan_grow(p->fills, p->n_fills, &p->cap_fills, sizeof *fills, err);
    if (!fills) return -1;
    p->fills = fills;
    p->fills[p->n_fills++] = *fill;
    return 0;
}

static void format_shape(char *buf, size_t len, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && used < len; i++)
        used +=
            (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < len) snprintf(buf + used, len - used, "]");
}

/* Finds tensor `name` and checks that its shape is exactly `shape` and its
 * dtype a floating-point one. Returns NULL, naming file and tensor, if not. */
static const lens_st_tensor *find_tensor(const tensor_source *src, const char *name, int ndim,
                                         const int64_t *shape, const lens_st_file **file,
                                         lens_err *err) {
    const lens_st_tensor *t = source_find(src, name, file);
    if (!t) {
        lens_err_set(err, "%s: missing tensor \"%s\"",
                     src->n_files ? lens_st_path(src->files[0]) : "checkpoint", name);
        return NULL;
    }
    bool same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char want[128], got[128];
        format_shape(want, sizeof want, ndim, shape);
        format_shape(got, sizeof got, t->ndim, t->shape);
        lens_err_set(err, "%s: tensor \"%s\" has shape %s but the config needs %s",
                     lens_st_path(*file), name, got, want);
        return NULL;
    }
    if (t->dtype != LENS_F32 && t->dtype != LENS_F16 && t->dtype != LENS_BF16 &&
        t->dtype != LENS_F64) {
        lens_err_set(err, "%s: tensor \"%s\": dtype %s is not a floating-point type",
                     lens_st_path(*file), name, lens_dtype_name(t->dtype));
        return NULL;
    }
    return t;
}

/* Plans *field as tensor `name` of exactly `shape`, in the same layout. */
static int plan_tensor_nd(weight_plan *p, float **field, const char *name, int ndim,
                          const int64_t *shape, lens_err *err) {
    const lens_st_file *file = NULL;
    const lens_st_tensor *t = find_tensor(p->src, name, ndim, shape, &file, err);
    size_t index;
    if (!t || plan_zeros(p, field, (size_t)t->numel, &index, err)) return -1;
    const int64_t width = shape[ndim - 1];
    if (t->numel == 0) return 0;
    return plan_add_fill(p,
                         &(plan_fill){.file = file,
                                      .src = t,
                                      .rows = t->numel / width,
                                      .width = width,
                                      .n_parts = 1,
                                      .dst = {index},
                                      .dst_stride = width,
                                      .count = true},
                         err);
}

static int plan_tensor_1d(weight_plan *p, float **field, const char *name, int64_t n0,
                          lens_err *err) {
    return plan_tensor_nd(p, field, name, 1, (int64_t[1]){n0}, err);
}

static int plan_tensor_2d(weight_plan *p, float **field, const char *name, int64_t n0, int64_t n1,
                          lens_err *err) {
    return plan_tensor_nd(p, field, name, 2, (int64_t[2]){n0, n1}, err);
}

/* Plans rows [row0, row0 + n) of tensor `name` [rows, cols], transposed,
 * as columns [column, column + n) of planned tensor dst [cols, width]. */
static int plan_rows_transposed(weight_plan *p, size_t dst, int64_t width, int64_t column,
                                const char *name, int64_t rows, int64_t cols, int64_t row0,
                                int64_t n, lens_err *err) {
    const lens_st_file *file = NULL;
    const lens_st_tensor *t = find_tensor(p->src, name, 2, (int64_t[2]){rows, cols}, &file, err);
    if (!t) return -1;
    if (n == 0 || cols == 0) return 0;
    return plan_add_fill(p,
                         &(plan_fill){.file = file,
                                      .src = t,
                                      .first = row0 * cols,
                                      .rows = n,
                                      .width = cols,
                                      .transposed = true,
                                      .dst_t = dst,
                                      .dst_t_column = column,
                                      .dst_t_width = width,
                                      .count = true},
                         err);
}

/* Plans *field [cols, rows] as the transpose of tensor `name` [rows, cols]. */
static int plan_transposed(weight_plan *p, float **field, const char *name, int64_t rows,
                           int64_t cols, lens_err *err) {
    size_t index;
    return plan_zeros(p, field, (size_t)(rows * cols), &index, err) ||
           plan_rows_transposed(p, index, rows, 0, name, rows, cols, 0, rows, err);
}

/* Plans *field [cols, rows] as the transpose of tensor `name` [rows, cols],
 * which is already planned as itself (a tied unembedding): it is written
 * from the same reads, and its values are not counted again. */
static int plan_tied_transposed(weight_plan *p, float **field, const char *name, lens_err *err) {
    const lens_st_tensor *t = source_find(p->src, name, NULL);
    for (size_t i = 0; t && i < p->n_fills; i++) {
        if (p->fills[i].src != t || p->fills[i].n_parts != 1 || p->fills[i].transposed) continue;
        if (plan_zeros(p, field, (size_t)t->numel, &p->fills[i].dst_t, err)) return -1;
        p->fills[i].transposed = true;
        p->fills[i].dst_t_width = p->fills[i].rows;
        return 0;
    }
    lens_err_set(err, "tensor \"%s\" is tied to one that was not read", name);
    return -1;
}

/* Plans each of n_parts fields as a slice of tensor `name` of exactly
 * `shape`, cut along its last axis: field k holds, of every row, the values
 * [k * cols, (k + 1) * cols) with cols = shape[ndim - 1] / n_parts. */
static int plan_split(weight_plan *p, float **fields[], int n_parts, const char *name, int ndim,
                      const int64_t *shape, lens_err *err) {
    const lens_st_file *file = NULL;
    const lens_st_tensor *t = find_tensor(p->src, name, ndim, shape, &file, err);
    if (!t) return -1;
    const int64_t width = shape[ndim - 1], cols = width / n_parts;
    plan_fill fill = {.file = file,
                      .src = t,
                      .rows = t->numel / width,
                      .width = width,
                      .n_parts = n_parts,
                      .dst_stride = cols,
                      .count = true};
    for (int k = 0; k < n_parts; k++)
        if (plan_zeros(p, fields[k], (size_t)(fill.rows * cols), &fill.dst[k], err)) return -1;
    return t->numel ? plan_add_fill(p, &fill, err) : 0;
}

/* The number of infinities and NaNs in x[n]: floats whose exponent bits
 * are all ones. Counted in 32 bits per piece, which vectorises. */
static size_t count_nonfinite(const float *x, size_t n) {
    size_t total = 0;
    for (size_t i0 = 0; i0 < n; i0 += FILL_BLOCK) {
        const size_t i1 = n - i0 < FILL_BLOCK ? n : i0 + FILL_BLOCK;
        uint32_t bad = 0;
        for (size_t i = i0; i < i1; i++) {
            uint32_t bits;
            memcpy(&bits, &x[i], sizeof bits);
            bad += (bits & 0x7f800000u) == 0x7f800000u;
        }
        total += bad;
    }
    return total;
}

/* dst[c * ld + r] = src[r * cols + c] for r < rows, c < cols, in blocks of
 * 4 x 4 (which the compiler makes into register shuffles, three times as
 * fast as a plain loop for the 50257 x 768 unembedding). */
static void transpose(float *dst, int64_t ld, const float *src, int64_t rows, int64_t cols) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        int64_t c = 0;
        for (; c + 4 <= cols; c += 4) {
            float t[4][4];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++)
                    t[j][i] = src[(r + i) * cols + c + j];
            for (int j = 0; j < 4; j++)
                memcpy(dst + (c + j) * ld + r, t[j], sizeof t[j]);
        }
        for (; c < cols; c++)
            for (int i = 0; i < 4; i++)
                dst[c * ld + r + i] = src[(r + i) * cols + c];
    }
    for (; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            dst[c * ld + r] = src[r * cols + c];
}

/* Whether fill f reads straight into its one destination, not through the
 * scratch buffer. */
static bool fill_is_direct(const plan_fill *f) {
    return f->n_parts == 1 && f->dst_stride == f->width;
}

/* Source rows per block of work of fill f. */
static int64_t fill_block_rows(const plan_fill *f) {
    const int64_t block = f->transposed ? FILL_BLOCK_TRANSPOSED : FILL_BLOCK;
    return f->width < block ? block / f->width : 1;
}

/* Fills one block: rows [r0, r1) of fill f. Counts non-finite values read
 * into *nonfinite; scratch holds the block unless the fill is direct. */
static int fill_block(const weight_plan *p, const plan_fill *f, int64_t r0, int64_t r1,
                      float *scratch, size_t *nonfinite, lens_err *err) {
    const int64_t width = f->width, n = (r1 - r0) * width;
    float *buf = fill_is_direct(f)
                     ? *p->tensors[f->dst[0]].field + f->dst_first + r0 * f->dst_stride
                     : scratch;
    if (lens_st_read_f32(f->file, f->src, f->first + r0 * width, n, buf, err)) return -1;
    if (f->count) *nonfinite += count_nonfinite(buf, (size_t)n);
    if (!fill_is_direct(f)) {
        const int64_t cols = f->n_parts ? width / f->n_parts : 0;
        for (int64_t r = r0; r < r1; r++)
            for (int k = 0; k < f->n_parts; k++)
                memcpy(*p->tensors[f->dst[k]].field + f->dst_first + r * f->dst_stride,
                       buf + (r - r0) * width + k * cols, (size_t)cols * sizeof(float));
    }
    if (f->transposed)
        transpose(*p->tensors[f->dst_t].field + f->dst_t_column + r0, f->dst_t_width, buf, r1 - r0,
                  width);
    return 0;
}

/* One block of work: rows [r0, r1) of a fill. */
typedef struct fill_work {
    const plan_fill *fill;
    int64_t r0, r1;
} fill_work;

/* Allocates every planned tensor in one mapping (m->arena) and fills them.
 * Returns -1 when out of memory or a read fails (naming file and tensor). */
static int plan_run(lens_model *m, const weight_plan *p, lens_err *err) {
    size_t total = 0;
    for (size_t i = 0; i < p->n_tensors; i++) {
        total += (p->tensors[i].n + TENSOR_ALIGN - 1) & ~(size_t)(TENSOR_ALIGN - 1);
        m->n_weight_floats += p->tensors[i].n;
    }
    size_t bytes = (total ? total : 1) * sizeof(float);
    void *arena = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (arena == MAP_FAILED) {
        lens_err_set_code(err, LENS_ERR_NO_MEMORY, "out of memory allocating %zu MB of weights",
                          bytes >> 20);
        return -1;
    }
    m->arena = arena;
    m->arena_bytes = bytes;
    float *next = arena;
    for (size_t i = 0; i < p->n_tensors; i++) {
        *p->tensors[i].field = next;
        next += (p->tensors[i].n + TENSOR_ALIGN - 1) & ~(size_t)(TENSOR_ALIGN - 1);
    }

    size_t n_work = 0, scratch_floats = 0;
    for (size_t i = 0; i < p->n_fills; i++) {
        const plan_fill *f = &p->fills[i];
        const int64_t per = fill_block_rows(f);
        n_work += (size_t)((f->rows + per - 1) / per);
        const size_t block = (size_t)(per * f->width);
        if (!fill_is_direct(f) && block > scratch_floats) scratch_floats = block;
    }
    fill_work *work = malloc((n_work ? n_work : 1) * sizeof *work);
    if (!work) {
        lens_err_set(err, "out of memory planning the weights");
        return -1;
    }
    n_work = 0;
    for (size_t i = 0; i < p->n_fills; i++) {
        const plan_fill *f = &p->fills[i];
        const int64_t per = fill_block_rows(f);
        for (int64_t r0 = 0; r0 < f->rows; r0 += per)
            work[n_work++] = (fill_work){f, r0, r0 + per < f->rows ? r0 + per : f->rows};
    }

    size_t nonfinite = 0;
    int failed = 0;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
#pragma omp parallel reduction(+ : nonfinite)
    {
        /* Each thread first faults in its share of the pages in one call:
         * cheaper than the reads taking the faults one page at a time.
         * Before Linux 5.14 the kernel refuses, and the reads fault. */
        const size_t share = (bytes / (size_t)omp_get_num_threads() + page - 1) / page * page;
        const size_t at = share * (size_t)omp_get_thread_num();
        if (at < bytes)
            madvise((char *)arena + at, bytes - at < share ? bytes - at : share,
                    MADV_POPULATE_WRITE);
#pragma omp barrier
        float *scratch = malloc((scratch_floats ? scratch_floats : 1) * sizeof *scratch);
#pragma omp for schedule(dynamic)
        for (size_t i = 0; i < n_work; i++) {
            int stop;
#pragma omp atomic read
            stop = failed;
            if (stop) continue;
            lens_err mine;
            if (!scratch)
                lens_err_set(&mine, "out of memory filling the weights");
            else if (fill_block(p, work[i].fill, work[i].r0, work[i].r1, scratch, &nonfinite,
                                &mine) == 0)
                continue;
#pragma omp critical(lens_model_fill_error)
            if (!failed) {
                if (err) *err = mine;
#pragma omp atomic write
                failed = 1;
            }
        }
        free(scratch);
    }
    free(work);
    m->n_nonfinite_weights += nonfinite;
    return failed ? -1 : 0;
}

/* ---- configuration ------------------------------------------------------ */

static const struct {
    const char *name;
    lens_act act;
} act_names[] = {
    {"relu", LENS_ACT_RELU},
    {"gelu", LENS_ACT_GELU},
    {"gelu_new", LENS_ACT_GELU_NEW},
    {"gelu_fast", LENS_ACT_GELU_FAST},
    {"silu", LENS_ACT_SILU},
    {"solu_ln", LENS_ACT_SOLU_LN},
    {"gelu_pytorch_tanh", LENS_ACT_GELU_NEW},
};

const char *lens_act_name(lens_act act) {
    for (size_t i = 0; i < sizeof act_names / sizeof act_names[0]; i++)
        if (act_names[i].act == act) return act_names[i].name;
    return "?";
}

const char *lens_norm_name(lens_norm norm) {
    switch (norm) {
    case LENS_NORM_LN:
        return "LN";
    case LENS_NORM_LNPRE:
        return "LNPre";
    case LENS_NORM_RMS:
        return "RMS";
    case LENS_NORM_RMSPRE:
        return "RMSPre";
    case LENS_NORM_NONE:
        return "None";
    }
    return "?";
}

static int parse_act(const char *name, lens_act *out, const char *file, lens_err *err) {
    for (size_t i = 0; i < sizeof act_names / sizeof act_names[0]; i++) {
        if (strcmp(act_names[i].name, name) == 0) {
            *out = act_names[i].act;
            return 0;
        }
    }
    lens_err_set(err,
                 "%s: act_fn \"%s\" is not supported (relu, gelu, gelu_new, gelu_fast, "
                 "silu, solu_ln)",
                 file, name);
    return -1;
}

static int check_dims(const lens_config *c, const char *file, lens_err *err) {
    if (c->n_layers < 1 || c->d_model < 1 || c->n_heads < 1 || c->d_head < 1 || c->n_ctx < 1 ||
        c->d_vocab < 1 || c->d_vocab_out < 1 || (!c->attn_only && c->d_mlp < 1)) {
        lens_err_set(err,
                     "%s: every dimension (n_layers, d_model, n_heads, d_head, d_mlp, "
                     "n_ctx, d_vocab) must be positive",
                     file);
        return -1;
    }
    return 0;
}

/* Reads TL's attn_types ["global", "local", ...] into layer_is_local. */
static int parse_attention_types(lens_config *c, json_t *types, const char *file, lens_err *err) {
    size_t i;
    json_t *entry;
    if (json_array_size(types) != (size_t)c->n_layers) goto bad;
    json_array_foreach(types, i, entry) {
        const char *kind = json_string_value(entry);
        if (!kind || (strcmp(kind, "global") && strcmp(kind, "local"))) goto bad;
        c->layer_is_local[i] = strcmp(kind, "local") == 0;
    }
    return 0;
bad:
    lens_err_set(err,
                 "%s: attention types must name \"global\" or \"local\" for each of the %d "
                 "layers",
                 file, c->n_layers);
    return -1;
}

static void set_attn_scale(lens_config *c) {
    c->attn_scale = c->use_attn_scale ? sqrtf((float)c->d_head) : 1.0f;
}

/* Refuses HookedTransformerConfig values that lensd does not implement, so a
 * model is never silently run with different semantics. */
static int check_native_unsupported(json_t *root, const char *file, lens_err *err) {
    static const char *must_be_false[] = {"parallel_attn_mlp", "gated_mlp", "final_rms",
                                          "use_normalization_before_and_after"};
    for (size_t i = 0; i < sizeof must_be_false / sizeof must_be_false[0]; i++) {
        if (json_is_true(json_object_get(root, must_be_false[i]))) {
            lens_err_set(err, "%s: \"%s\": true is not supported yet", file, must_be_false[i]);
            return -1;
        }
    }
    const char *pos = lens_json_str(root, "positional_embedding_type", "standard");
    if (strcmp(pos, "standard")) {
        lens_err_set(err,
                     "%s: positional_embedding_type \"%s\" is not supported yet "
                     "(standard)",
                     file, pos);
        return -1;
    }
    json_t *kv = json_object_get(root, "n_key_value_heads");
    if (kv && !json_is_null(kv) &&
        json_integer_value(kv) != json_integer_value(json_object_get(root, "n_heads"))) {
        lens_err_set(err, "%s: grouped-query attention (n_key_value_heads) is not supported yet",
                     file);
        return -1;
    }
    json_t *cap = json_object_get(root, "output_logits_soft_cap");
    json_t *acap = json_object_get(root, "attn_scores_soft_cap");
    if ((json_is_number(cap) && json_number_value(cap) > 0) ||
        (json_is_number(acap) && json_number_value(acap) > 0)) {
        lens_err_set(err, "%s: soft caps are not supported yet", file);
        return -1;
    }
    return 0;
}

static int read_native_config(lens_config *c, json_t *root, const char *file, lens_err *err) {
    if (check_native_unsupported(root, file, err)) return -1;
    snprintf(c->architecture, sizeof c->architecture, "%s",
             lens_json_str(root, "original_architecture", "HookedTransformer"));
    if (lens_json_int(root, "n_layers", 0, true, &c->n_layers, file, err) ||
        lens_json_int(root, "d_model", 0, true, &c->d_model, file, err) ||
        lens_json_int(root, "n_ctx", 0, true, &c->n_ctx, file, err) ||
        lens_json_int(root, "d_head", 0, true, &c->d_head, file, err) ||
        lens_json_int(root, "n_heads", -1, false, &c->n_heads, file, err) ||
        lens_json_int(root, "d_vocab", 0, true, &c->d_vocab, file, err) ||
        lens_json_bool(root, "attn_only", false, &c->attn_only, file, err))
        return -1;
    json_t *n_heads = json_object_get(root, "n_heads");
    if (json_is_integer(n_heads) && json_integer_value(n_heads) == -1) c->n_heads = -1;
    if (c->n_heads <= 0) c->n_heads = c->d_head ? c->d_model / c->d_head : 0;
    c->n_kv_heads = c->n_heads;
    json_t *d_mlp = json_object_get(root, "d_mlp");
    if (!d_mlp || json_is_null(d_mlp)) {
        c->d_mlp = c->attn_only ? 0 : 4 * c->d_model;
    } else if (lens_json_int(root, "d_mlp", 0, false, &c->d_mlp, file, err)) {
        return -1;
    }
    json_t *vout = json_object_get(root, "d_vocab_out");
    if (json_is_integer(vout) && json_integer_value(vout) > 0)
        c->d_vocab_out = (int)json_integer_value(vout);
    else
        c->d_vocab_out = c->d_vocab;

    json_t *act = json_object_get(root, "act_fn");
    if (!c->attn_only || json_is_string(act)) {
        if (!json_is_string(act)) {
            lens_err_set(err, "%s: missing field \"act_fn\"", file);
            return -1;
        }
        if (parse_act(json_string_value(act), &c->act_fn, file, err)) return -1;
    }
    json_t *norm = json_object_get(root, "normalization_type");
    const char *norm_name =
        json_is_null(norm) ? "None" : lens_json_str(root, "normalization_type", "LN");
    if (strcmp(norm_name, "LN") == 0)
        c->normalization = LENS_NORM_LN;
    else if (strcmp(norm_name, "LNPre") == 0)
        c->normalization = LENS_NORM_LNPRE;
    else if (strcmp(norm_name, "None") == 0)
        c->normalization = LENS_NORM_NONE;
    else {
        lens_err_set(err, "%s: normalization_type \"%s\" is not supported (LN, LNPre, None)", file,
                     norm_name);
        return -1;
    }
    const char *dir = lens_json_str(root, "attention_dir", "causal");
    if (strcmp(dir, "causal") && strcmp(dir, "bidirectional")) {
        lens_err_set(err, "%s: attention_dir must be \"causal\" or \"bidirectional\"", file);
        return -1;
    }
    c->causal = strcmp(dir, "causal") == 0;
    if (lens_json_float(root, "eps", 1e-5f, &c->eps, file, err) ||
        lens_json_bool(root, "use_attn_scale", true, &c->use_attn_scale, file, err) ||
        lens_json_bool(root, "scale_attn_by_inverse_layer_idx", false,
                       &c->scale_attn_by_inverse_layer_idx, file, err) ||
        lens_json_bool(root, "use_local_attn", false, &c->use_local_attn, file, err) ||
        lens_json_int(root, "window_size", 0, false, &c->window_size, file, err) ||
        lens_json_bool(root, "use_attn_result", false, &c->use_attn_result, file, err) ||
        lens_json_bool(root, "use_split_qkv_input", false, &c->use_split_qkv_input, file, err) ||
        lens_json_bool(root, "use_hook_mlp_in", false, &c->use_hook_mlp_in, file, err) ||
        lens_json_bool(root, "use_attn_in", false, &c->use_attn_in, file, err) ||
        lens_json_bool(root, "use_hook_tokens", false, &c->use_hook_tokens, file, err) ||
        lens_json_bool(root, "default_prepend_bos", true, &c->default_prepend_bos, file, err))
        return -1;
    if (check_dims(c, file, err)) return -1;
    set_attn_scale(c);
    float attn_scale;
    if (lens_json_float(root, "attn_scale", -1.0f, &attn_scale, file, err)) return -1;
    if (c->use_attn_scale && attn_scale > 0) c->attn_scale = attn_scale;
    if (lens_alloc_local_layers(c, err)) return -1;
    if (c->use_local_attn) {
        json_t *types = json_object_get(root, "attn_types");
        if (!json_is_array(types) || c->window_size < 1) {
            lens_err_set(err, "%s: use_local_attn needs \"attn_types\" and \"window_size\"", file);
            return -1;
        }
        if (parse_attention_types(c, types, file, err)) return -1;
    }
    return 0;
}

/* ---- Hugging Face checkpoints, by the architecture table ---------------- */

/* Names of one checkpoint's tensors: the table's patterns with the model's
 * prefix when the file uses it ("transformer.h.0..." or "h.0..."). */
typedef struct hf_names {
    const lens_arch_tensors *t;
    const char *prefix;
    char buf[256];
} hf_names;

/* The checkpoint name of pattern (with layer for %d), or NULL for none. */
static const char *hf_name(hf_names *n, const char *pattern, int layer) {
    if (!pattern) return NULL;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    int used = snprintf(n->buf, sizeof n->buf, "%s", n->prefix);
    snprintf(n->buf + used, sizeof n->buf - (size_t)used, pattern, layer);
#pragma GCC diagnostic pop
    return n->buf;
}

/* Plans *field [in, out] from a weight matrix: Conv1D's [in, out] as it
 * is, nn.Linear's [out, in] transposed. */
static int plan_matrix(weight_plan *p, bool conv1d, float **field, const char *name, int64_t in,
                       int64_t out, lens_err *err) {
    return conv1d ? plan_tensor_2d(p, field, name, in, out, err)
                  : plan_transposed(p, field, name, out, in, err);
}

/* Plans a bias of n values: tensor `name`, or zeros (as TL's conversions
 * make them) where the family has none (name NULL) or the file lacks an
 * optional one. */
static int plan_bias(weight_plan *p, float **field, const char *name, bool optional, int64_t n,
                     lens_err *err) {
    if (name && (!optional || source_find(p->src, name, NULL)))
        return plan_tensor_1d(p, field, name, n, err);
    return plan_zeros(p, field, (size_t)n, NULL, err);
}

/* Plans values [first, first + n) of 1-D tensor `name` [total] into
 * planned tensor dst from element dst_first. */
static int plan_slice(weight_plan *p, size_t dst, int64_t dst_first, const char *name,
                      int64_t total, int64_t first, int64_t n, lens_err *err) {
    const lens_st_file *file = NULL;
    const lens_st_tensor *t = find_tensor(p->src, name, 1, (int64_t[1]){total}, &file, err);
    if (!t) return -1;
    return plan_add_fill(p,
                         &(plan_fill){.file = file,
                                      .src = t,
                                      .first = first,
                                      .rows = 1,
                                      .width = n,
                                      .n_parts = 1,
                                      .dst = {dst},
                                      .dst_first = dst_first,
                                      .dst_stride = n,
                                      .count = true},
                         err);
}

/* W_Q, W_K, W_V and their biases of layer l in any of the table's layouts:
 * q [d, h*dh], k and v [d, kv*dh]. */
static int plan_hf_qkv(lens_model *m, const lens_arch *arch, weight_plan *p, hf_names *n, int l,
                       lens_err *err) {
    const lens_config *c = &m->cfg;
    const lens_arch_tensors *t = n->t;
    lens_layer_weights *lw = &m->w.layers[l];
    const int64_t d = c->d_model, dh = c->d_head, hd = (int64_t)c->n_heads * dh;
    const int64_t kvd = (int64_t)c->n_kv_heads * dh;
    float **W[3] = {&lw->W_Q, &lw->W_K, &lw->W_V}, **b[3] = {&lw->b_Q, &lw->b_K, &lw->b_V};
    const int64_t width[3] = {hd, kvd, kvd};
    char fused[256], fused_bias[256];
    snprintf(fused, sizeof fused, "%s", hf_name(n, t->q, l));
    snprintf(fused_bias, sizeof fused_bias, "%s", t->q_b ? hf_name(n, t->q_b, l) : "");
    const bool has_bias =
        t->q_b && (!arch->optional_biases || source_find(p->src, fused_bias, NULL));
    switch (t->qkv_layout) {
    case LENS_QKV_SEPARATE: {
        const char *weights[3] = {t->q, t->k, t->v}, *biases[3] = {t->q_b, t->k_b, t->v_b};
        for (int i = 0; i < 3; i++)
            if (plan_matrix(p, arch->conv1d, W[i], hf_name(n, weights[i], l), d, width[i], err) ||
                plan_bias(p, b[i], hf_name(n, biases[i], l), arch->optional_biases, width[i], err))
                return -1;
        return 0;
    }
    case LENS_QKV_CONV1D:
        return plan_split(p, W, 3, fused, 2, (int64_t[2]){d, 3 * hd}, err) ||
               plan_split(p, b, 3, fused_bias, 1, (int64_t[1]){3 * hd}, err);
    case LENS_QKV_FUSED_ROWS:
    case LENS_QKV_FUSED_HEADS: {
        const int64_t rows = hd + 2 * kvd;
        size_t dst[3], bias_dst[3];
        for (int i = 0; i < 3; i++)
            if (plan_zeros(p, W[i], (size_t)(d * width[i]), &dst[i], err) ||
                plan_zeros(p, b[i], (size_t)width[i], &bias_dst[i], err))
                return -1;
        if (t->qkv_layout == LENS_QKV_FUSED_ROWS) {
            /* rows q | k | v */
            for (int i = 0, row0 = 0; i < 3; row0 += (int)width[i], i++)
                if (plan_rows_transposed(p, dst[i], width[i], 0, fused, rows, d, row0, width[i],
                                         err) ||
                    (has_bias &&
                     plan_slice(p, bias_dst[i], 0, fused_bias, rows, row0, width[i], err)))
                    return -1;
            return 0;
        }
        /* GPT-NeoX: rows (head, q|k|v, dh), TL's "(i qkv h) m -> qkv i m h" */
        for (int hi = 0; hi < c->n_heads; hi++)
            for (int i = 0; i < 3; i++) {
                const int64_t row0 = ((int64_t)hi * 3 + i) * dh;
                if (plan_rows_transposed(p, dst[i], hd, hi * dh, fused, rows, d, row0, dh, err) ||
                    (has_bias &&
                     plan_slice(p, bias_dst[i], hi * dh, fused_bias, rows, row0, dh, err)))
                    return -1;
            }
        return 0;
    }
    }
    return -1;
}

/* W_gate and W_in of a gated MLP ([d, m] each), or W_in and b_in. */
static int plan_hf_mlp_in(lens_model *m, const lens_arch *arch, weight_plan *p, hf_names *n, int l,
                          lens_err *err) {
    const lens_config *c = &m->cfg;
    const lens_arch_tensors *t = n->t;
    lens_layer_weights *lw = &m->w.layers[l];
    const int64_t d = c->d_model, mlp = c->d_mlp;
    if (!c->gated_mlp)
        return plan_matrix(p, arch->conv1d, &lw->W_in, hf_name(n, t->up, l), d, mlp, err) ||
               plan_bias(p, &lw->b_in, hf_name(n, t->up_b, l), arch->optional_biases, mlp, err);
    if (t->gate_layout == LENS_GATE_SEPARATE)
        return plan_matrix(p, false, &lw->W_gate, hf_name(n, t->gate, l), d, mlp, err) ||
               plan_matrix(p, false, &lw->W_in, hf_name(n, t->up, l), d, mlp, err);
    /* Phi-3's gate_up_proj: rows gate | up */
    char fused[256];
    snprintf(fused, sizeof fused, "%s", hf_name(n, t->gate, l));
    size_t gate, up;
    return plan_zeros(p, &lw->W_gate, (size_t)(d * mlp), &gate, err) ||
           plan_zeros(p, &lw->W_in, (size_t)(d * mlp), &up, err) ||
           plan_rows_transposed(p, gate, mlp, 0, fused, 2 * mlp, d, 0, mlp, err) ||
           plan_rows_transposed(p, up, mlp, 0, fused, 2 * mlp, d, mlp, mlp, err);
}

/* A norm's weight of width n, and its bias where the family has one. */
static int plan_norm(weight_plan *p, hf_names *n, float **w, const char *w_name, float **b,
                     const char *b_name, int layer, int64_t width, lens_err *err) {
    if (!w_name) return 0;
    if (plan_tensor_1d(p, w, hf_name(n, w_name, layer), width, err)) return -1;
    return b_name ? plan_tensor_1d(p, b, hf_name(n, b_name, layer), width, err) : 0;
}

/* Plans every weight of a Hugging Face checkpoint by its architecture's
 * table, as TL's convert_*_weights functions map them. */
static int plan_hf_weights(lens_model *m, const lens_arch *arch, weight_plan *p, lens_err *err) {
    const lens_config *c = &m->cfg;
    const lens_arch_tensors *t = &arch->tensors;
    lens_weights *w = &m->w;
    const int64_t d = c->d_model, mlp = c->d_mlp, V = c->d_vocab, dh = c->d_head;
    hf_names n = {.t = t, .prefix = t->prefix};
    if (!source_find(p->src, hf_name(&n, t->embed, 0), NULL)) n.prefix = "";
    char embed[256];
    snprintf(embed, sizeof embed, "%s", hf_name(&n, t->embed, 0));
    if (plan_tensor_2d(p, &w->W_E, embed, V, d, err) ||
        (t->pos_embed &&
         plan_tensor_2d(p, &w->W_pos, hf_name(&n, t->pos_embed, 0), c->n_ctx, d, err)))
        return -1;
    const int64_t q_norm = c->qk_norm == LENS_QK_NORM_WHOLE ? (int64_t)c->n_heads * dh : dh;
    const int64_t k_norm = c->qk_norm == LENS_QK_NORM_WHOLE ? (int64_t)c->n_kv_heads * dh : dh;
    for (int l = 0; l < c->n_layers; l++) {
        lens_layer_weights *lw = &w->layers[l];
        if (plan_norm(p, &n, &lw->ln1_w, t->ln1_w, &lw->ln1_b, t->ln1_b, l, d, err) ||
            plan_hf_qkv(m, arch, p, &n, l, err) ||
            (t->q_norm &&
             (plan_tensor_1d(p, &lw->q_norm_w, hf_name(&n, t->q_norm, l), q_norm, err) ||
              plan_tensor_1d(p, &lw->k_norm_w, hf_name(&n, t->k_norm, l), k_norm, err))) ||
            plan_matrix(p, arch->conv1d, &lw->W_O, hf_name(&n, t->o, l), c->n_heads * dh, d, err) ||
            plan_bias(p, &lw->b_O, hf_name(&n, t->o_b, l), arch->optional_biases, d, err) ||
            (t->ln1_post_w &&
             plan_tensor_1d(p, &lw->ln1_post_w, hf_name(&n, t->ln1_post_w, l), d, err)) ||
            plan_norm(p, &n, &lw->ln2_w, t->ln2_w, &lw->ln2_b, t->ln2_b, l, d, err) ||
            plan_hf_mlp_in(m, arch, p, &n, l, err) ||
            plan_matrix(p, arch->conv1d, &lw->W_out, hf_name(&n, t->down, l), mlp, d, err) ||
            plan_bias(p, &lw->b_out, hf_name(&n, t->down_b, l), arch->optional_biases, d, err) ||
            (t->ln2_post_w &&
             plan_tensor_1d(p, &lw->ln2_post_w, hf_name(&n, t->ln2_post_w, l), d, err)))
            return -1;
    }
    if (plan_norm(p, &n, &w->ln_final_w, t->final_w, &w->ln_final_b, t->final_b, 0, d, err))
        return -1;
    /* the unembedding: its own matrix transposed, or the embedding's when tied */
    if (source_find(p->src, t->unembed, NULL) ? plan_transposed(p, &w->W_U, t->unembed, V, d, err)
                                              : plan_tied_transposed(p, &w->W_U, embed, err))
        return -1;
    if (plan_bias(p, &w->b_U, t->unembed_b, arch->optional_biases, V, err)) return -1;
    if (c->positions != LENS_POS_ROTARY) return 0;
    const size_t table = (size_t)c->n_ctx * (size_t)(c->rotary.dim / 2);
    for (int kind = 0; kind < (c->use_local_attn ? 2 : 1); kind++)
        if (plan_zeros(p, &w->rotary_cos[kind], table, NULL, err) ||
            plan_zeros(p, &w->rotary_sin[kind], table, NULL, err))
            return -1;
    return 0;
}

/* What the table says about the stored weights, applied once they are
 * read: Gemma's norm weights become 1 + w and its embeddings are scaled by
 * sqrt(d_model) (as TL's convert_gemma_weights does, in float32); rotary
 * models get their tables. */
static void finish_hf_weights(lens_model *m, const lens_arch *arch) {
    const lens_config *c = &m->cfg;
    lens_weights *w = &m->w;
    const size_t d = (size_t)c->d_model;
    if (arch->norm_offset != 0) {
        for (size_t i = 0; i < d; i++)
            w->ln_final_w[i] += arch->norm_offset;
        for (int l = 0; l < c->n_layers; l++) {
            lens_layer_weights *lw = &w->layers[l];
            float *layer_norms[] = {lw->ln1_w,      lw->ln1_post_w, lw->ln2_w,
                                    lw->ln2_post_w, lw->q_norm_w,   lw->k_norm_w};
            const size_t widths[] = {d, d, d, d, (size_t)c->d_head, (size_t)c->d_head};
            for (size_t k = 0; k < sizeof layer_norms / sizeof layer_norms[0]; k++)
                for (size_t i = 0; layer_norms[k] && i < widths[k]; i++)
                    layer_norms[k][i] += arch->norm_offset;
        }
    }
    if (arch->scale_embed) {
        const float factor = (float)sqrt((double)c->d_model);
        for (size_t i = 0; i < (size_t)c->d_vocab * d; i++)
            w->W_E[i] *= factor;
    }
    if (c->positions == LENS_POS_ROTARY) {
        lens_rotary_tables(&c->rotary, c->rotary.base, true, c->n_ctx, w->rotary_cos[0],
                           w->rotary_sin[0]);
        /* local layers keep their own base and are never scaled (Gemma 3) */
        if (w->rotary_cos[1])
            lens_rotary_tables(&c->rotary, c->rotary.base_local, false, c->n_ctx, w->rotary_cos[1],
                               w->rotary_sin[1]);
    }
}

/* Plans TL's [h, d, dh] W_Q/W_K/W_V as the internal [d, h*dh]: head i's
 * block becomes columns [i*dh, (i+1)*dh). */
static int plan_tl_qkv(lens_model *m, weight_plan *p, float **field, const char *name,
                       lens_err *err) {
    const lens_config *c = &m->cfg;
    const int h = c->n_heads, d = c->d_model, dh = c->d_head;
    const lens_st_file *file = NULL;
    const lens_st_tensor *t = find_tensor(p->src, name, 3, (int64_t[3]){h, d, dh}, &file, err);
    size_t index;
    if (!t || plan_zeros(p, field, (size_t)t->numel, &index, err)) return -1;
    for (int i = 0; i < h && t->numel; i++)
        if (plan_add_fill(p,
                          &(plan_fill){.file = file,
                                       .src = t,
                                       .first = (int64_t)i * d * dh,
                                       .rows = d,
                                       .width = dh,
                                       .n_parts = 1,
                                       .dst = {index},
                                       .dst_first = (int64_t)i * dh,
                                       .dst_stride = (int64_t)h * dh,
                                       .count = true},
                          err))
            return -1;
    return 0;
}

/* A tensor that TL fills with zeros when a state dict lacks it (biases). */
static int plan_optional(weight_plan *p, float **field, const char *name, int ndim,
                         const int64_t *shape, lens_err *err) {
    if (source_find(p->src, name, NULL)) return plan_tensor_nd(p, field, name, ndim, shape, err);
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    return plan_zeros(p, field, n, NULL, err);
}

static int plan_native_weights(lens_model *m, weight_plan *p, lens_err *err) {
    const lens_config *c = &m->cfg;
    lens_weights *w = &m->w;
    const int d = c->d_model, mlp = c->d_mlp, h = c->n_heads, dh = c->d_head;
    const bool has_ln = c->normalization == LENS_NORM_LN;
    char name[256];
#define NAME(...) (snprintf(name, sizeof name, __VA_ARGS__), name)
    int64_t s_d[1] = {d}, s_m[1] = {mlp}, s_hdh[2] = {h, dh}, s_vout[1] = {c->d_vocab_out};
    if (plan_tensor_2d(p, &w->W_E, "embed.W_E", c->d_vocab, d, err) ||
        plan_tensor_2d(p, &w->W_pos, "pos_embed.W_pos", c->n_ctx, d, err))
        return -1;
    for (int l = 0; l < c->n_layers; l++) {
        lens_layer_weights *lw = &w->layers[l];
        if (has_ln && (plan_tensor_1d(p, &lw->ln1_w, NAME("blocks.%d.ln1.w", l), d, err) ||
                       plan_tensor_1d(p, &lw->ln1_b, NAME("blocks.%d.ln1.b", l), d, err)))
            return -1;
        int64_t s_o[3] = {h, dh, d};
        if (plan_tl_qkv(m, p, &lw->W_Q, NAME("blocks.%d.attn.W_Q", l), err) ||
            plan_tl_qkv(m, p, &lw->W_K, NAME("blocks.%d.attn.W_K", l), err) ||
            plan_tl_qkv(m, p, &lw->W_V, NAME("blocks.%d.attn.W_V", l), err) ||
            plan_optional(p, &lw->b_Q, NAME("blocks.%d.attn.b_Q", l), 2, s_hdh, err) ||
            plan_optional(p, &lw->b_K, NAME("blocks.%d.attn.b_K", l), 2, s_hdh, err) ||
            plan_optional(p, &lw->b_V, NAME("blocks.%d.attn.b_V", l), 2, s_hdh, err) ||
            plan_tensor_nd(p, &lw->W_O, NAME("blocks.%d.attn.W_O", l), 3, s_o, err) ||
            plan_optional(p, &lw->b_O, NAME("blocks.%d.attn.b_O", l), 1, s_d, err))
            return -1;
        if (c->attn_only) continue;
        if (has_ln && (plan_tensor_1d(p, &lw->ln2_w, NAME("blocks.%d.ln2.w", l), d, err) ||
                       plan_tensor_1d(p, &lw->ln2_b, NAME("blocks.%d.ln2.b", l), d, err)))
            return -1;
        if (plan_tensor_2d(p, &lw->W_in, NAME("blocks.%d.mlp.W_in", l), d, mlp, err) ||
            plan_optional(p, &lw->b_in, NAME("blocks.%d.mlp.b_in", l), 1, s_m, err) ||
            plan_tensor_2d(p, &lw->W_out, NAME("blocks.%d.mlp.W_out", l), mlp, d, err) ||
            plan_optional(p, &lw->b_out, NAME("blocks.%d.mlp.b_out", l), 1, s_d, err))
            return -1;
        if (c->act_fn == LENS_ACT_SOLU_LN && has_ln &&
            (plan_tensor_1d(p, &lw->mlp_ln_w, NAME("blocks.%d.mlp.ln.w", l), mlp, err) ||
             plan_tensor_1d(p, &lw->mlp_ln_b, NAME("blocks.%d.mlp.ln.b", l), mlp, err)))
            return -1;
    }
    if (has_ln && (plan_tensor_1d(p, &w->ln_final_w, "ln_final.w", d, err) ||
                   plan_tensor_1d(p, &w->ln_final_b, "ln_final.b", d, err)))
        return -1;
    if (plan_tensor_2d(p, &w->W_U, "unembed.W_U", d, c->d_vocab_out, err) ||
        plan_optional(p, &w->b_U, "unembed.b_U", 1, s_vout, err))
        return -1;
#undef NAME
    return 0;
}

/* Plans the weights (by the architecture table for a Hugging Face
 * checkpoint, arch NULL for a TL-native one), then allocates and reads
 * them. */
static int load_weights(lens_model *m, const tensor_source *src, const lens_arch *arch,
                        lens_err *err) {
    weight_plan plan = {.src = src};
    int rc = arch ? plan_hf_weights(m, arch, &plan, err) : plan_native_weights(m, &plan, err);
    if (rc == 0) rc = plan_run(m, &plan, err);
    if (rc == 0 && arch) finish_hf_weights(m, arch);
    plan_free(&plan);
    return rc;
}

/* ---- tokenizers and token rules ---------------------------------------- */

static int32_t lookup_or_fail(const lens_tokenizer *tok, const char *entry, const char *what,
                              const char *file, lens_err *err) {
    int32_t id = lens_tok_lookup(tok, entry);
    if (id < 0) lens_err_set(err, "%s: %s \"%s\" is not in the vocabulary", file, what, entry);
    return id;
}

/* The tokenizer of a Hugging Face directory and TL's token rules: BOS,
 * EOS and PAD from the tokenizer's files, a missing PAD or BOS being the
 * EOS (TL's set_tokenizer), and GPT-2's <|endoftext|> where the files name
 * none (GPT-2's own vocab.json + merges.txt). */
static int load_hf_tokenizer(lens_model *m, const char *dir, lens_err *err) {
    lens_tok_specials specials;
    if (!(m->tok = lens_tok_load_dir(dir, &specials, err))) return -1;
    if (specials.eos_id < 0) specials.eos_id = lens_tok_lookup(m->tok, "<|endoftext|>");
    if (specials.bos_id < 0) specials.bos_id = specials.eos_id;
    if (specials.pad_id < 0) specials.pad_id = specials.eos_id;
    m->rules.bos_id = specials.bos_id;
    m->rules.eos_id = specials.eos_id;
    m->rules.pad_id = specials.pad_id;
    if ((size_t)m->cfg.d_vocab < lens_tok_vocab_size(m->tok)) {
        lens_err_set(err, "%s: the tokenizer has %zu tokens but the model only %d", dir,
                     lens_tok_vocab_size(m->tok), m->cfg.d_vocab);
        return -1;
    }
    return 0;
}

static int load_native_tokenizer(lens_model *m, json_t *lensd, const char *dir, const char *file,
                                 lens_err *err) {
    json_t *spec = json_object_get(lensd, "tokenizer");
    if (spec && !json_is_null(spec)) {
        const char *type = lens_json_str(spec, "type", "");
        if (strcmp(type, "list") == 0) {
            json_t *tokens = json_object_get(spec, "tokens");
            const char *split = lens_json_str(spec, "split", "chars");
            size_t n = json_array_size(tokens);
            const char **list = calloc(n ? n : 1, sizeof *list);
            if (!list) {
                lens_err_set(err, "out of memory");
                return -1;
            }
            for (size_t i = 0; i < n; i++)
                list[i] = json_string_value(json_array_get(tokens, i));
            for (size_t i = 0; i < n; i++) {
                if (!list[i]) {
                    lens_err_set(err, "%s: lensd.tokenizer.tokens[%zu] is not a string", file, i);
                    free(list);
                    return -1;
                }
            }
            if (strcmp(split, "chars") && strcmp(split, "whitespace")) {
                lens_err_set(err, "%s: lensd.tokenizer.split must be \"chars\" or \"whitespace\"",
                             file);
                free(list);
                return -1;
            }
            m->tok = lens_tok_from_list(
                list, n, strcmp(split, "chars") == 0 ? LENS_SPLIT_CHARS : LENS_SPLIT_WHITESPACE,
                err);
            free(list);
        } else if (strcmp(type, "bpe") == 0) {
            char *vocab = path_join(dir, lens_json_str(spec, "vocab", "vocab.json"));
            char *merges = path_join(dir, lens_json_str(spec, "merges", "merges.txt"));
            m->tok = vocab && merges ? lens_tok_load_bpe(vocab, merges, err) : NULL;
            free(vocab);
            free(merges);
        } else if (strcmp(type, "hf") == 0) {
            char *path = path_join(dir, lens_json_str(spec, "file", "tokenizer.json"));
            m->tok = path ? lens_tok_load_hf_json(path, err) : NULL;
            free(path);
        } else {
            lens_err_set(err, "%s: lensd.tokenizer.type must be \"list\", \"bpe\" or \"hf\"", file);
            return -1;
        }
        if (!m->tok) return -1;
        if (lens_tok_vocab_size(m->tok) > (size_t)m->cfg.d_vocab) {
            lens_err_set(err, "%s: the tokenizer has %zu tokens but d_vocab is %d", file,
                         lens_tok_vocab_size(m->tok), m->cfg.d_vocab);
            return -1;
        }
    }
    static const char *keys[3] = {"bos_token", "eos_token", "pad_token"};
    int32_t *ids[3] = {&m->rules.bos_id, &m->rules.eos_id, &m->rules.pad_id};
    for (int i = 0; i < 3; i++) {
        json_t *v = json_object_get(lensd, keys[i]);
        if (!v || json_is_null(v)) continue;
        if (json_is_integer(v)) {
            *ids[i] = (int32_t)json_integer_value(v);
        } else if (json_is_string(v) && m->tok) {
            *ids[i] = lookup_or_fail(m->tok, json_string_value(v), keys[i], file, err);
        } else {
            lens_err_set(err,
                         "%s: lensd.%s must be a token id, or a token when a tokenizer is "
                         "given",
                         file, keys[i]);
            return -1;
        }
        if (*ids[i] < 0 || *ids[i] >= m->cfg.d_vocab) {
            if (*ids[i] >= 0)
                lens_err_set(err, "%s: lensd.%s is outside the vocabulary", file, keys[i]);
            return -1;
        }
    }
    /* TL's set_tokenizer: a missing pad is the EOS, a missing BOS too */
    if (m->rules.pad_id < 0) m->rules.pad_id = m->rules.eos_id;
    if (m->rules.bos_id < 0) m->rules.bos_id = m->rules.eos_id;
    if (lens_json_bool(lensd, "append_eos", false, &m->rules.append_eos, file, err) ||
        lens_json_bool(lensd, "mask_pad_keys", false, &m->rules.mask_pad_keys, file, err))
        return -1;
    if ((m->rules.append_eos && m->rules.eos_id < 0) ||
        (m->rules.mask_pad_keys && m->rules.pad_id < 0)) {
        lens_err_set(err, "%s: append_eos needs eos_token and mask_pad_keys needs pad_token", file);
        return -1;
    }
    return 0;
}

/* ---- finding models ---------------------------------------------------- */

static const struct {
    const char *alias, *hf_id;
} tl_aliases[] = {
    {"gpt2-small", "gpt2"},
    {"gpt2-medium", "gpt2-medium"},
    {"gpt2-large", "gpt2-large"},
    {"gpt2-xl", "gpt2-xl"},
    {"distillgpt2", "distilgpt2"},
    {"distil-gpt2", "distilgpt2"},
    {"gpt-neo-125M", "EleutherAI/gpt-neo-125M"},
    {"gpt-neo-1.3B", "EleutherAI/gpt-neo-1.3B"},
    {"gpt-neo-2.7B", "EleutherAI/gpt-neo-2.7B"},
    {"neo-125M", "EleutherAI/gpt-neo-125M"},
    {"gpt-j", "EleutherAI/gpt-j-6B"},
    {"gptj", "EleutherAI/gpt-j-6B"},
    {"pythia", "EleutherAI/pythia-70m"},
    {"mistral-7b", "mistralai/Mistral-7B-v0.1"},
    {"mistral-7b-instruct", "mistralai/Mistral-7B-Instruct-v0.1"},
    {"phi-3", "microsoft/Phi-3-mini-4k-instruct"},
    {"olmo-2-1b", "allenai/OLMo-2-0425-1B"},
    {"olmo-2-7b", "allenai/OLMo-2-1124-7B"},
};

/* Finds, in the hub cache directory `hub`, the one repository whose name
 * (after its organisation) is `name` regardless of case, as TL's
 * get_official_model_name matches "Llama-3.2-1B" to meta-llama/Llama-3.2-1B
 * and "gemma-2-2b" to google/gemma-2-2b. Writes its "models--ORG--NAME"
 * directory name into repo; returns false when none or several match. */
static bool find_repo_by_name(const char *hub, const char *name, char *repo, size_t len) {
    DIR *dir = opendir(hub);
    if (!dir) return false;
    int found = 0;
    for (struct dirent *e; (e = readdir(dir));) {
        if (strncmp(e->d_name, "models--", 8)) continue;
        const char *sep = strstr(e->d_name + 8, "--");
        if (sep && strcasecmp(sep + 2, name) == 0 && found++ == 0)
            snprintf(repo, len, "%s", e->d_name);
    }
    closedir(dir);
    return found == 1;
}

/* Resolves a Hugging Face id to its snapshot directory in the local hub
 * cache: refs/main names the revision; otherwise the only snapshot. */
static char *find_in_hf_cache(const char *id) {
    for (size_t i = 0; i < sizeof tl_aliases / sizeof tl_aliases[0]; i++)
        if (strcmp(id, tl_aliases[i].alias) == 0) id = tl_aliases[i].hf_id;
    char hub[PATH_MAX];
    const char *hf_home = getenv("HF_HOME");
    const char *hub_cache = getenv("HF_HUB_CACHE");
    const char *home = getenv("HOME");
    if (hub_cache)
        snprintf(hub, sizeof hub, "%s", hub_cache);
    else if (hf_home)
        snprintf(hub, sizeof hub, "%s/hub", hf_home);
    else if (home)
        snprintf(hub, sizeof hub, "%s/.cache/huggingface/hub", home);
    else
        return NULL;
    char repo[PATH_MAX], by_name[NAME_MAX + 1];
    int n = snprintf(repo, sizeof repo, "%s/models--", hub);
    const bool named = !strchr(id, '/') && find_repo_by_name(hub, id, by_name, sizeof by_name);
    if (named) n = snprintf(repo, sizeof repo, "%s/%s", hub, by_name);
    for (const char *s = id; !named && *s && n < (int)sizeof repo - 2; s++) {
        if (*s == '/') {
            repo[n++] = '-';
            repo[n++] = '-';
        } else {
            repo[n++] = *s;
        }
    }
    repo[n] = '\0';
    char ref_path[PATH_MAX + 16], rev[128] = "";
    snprintf(ref_path, sizeof ref_path, "%s/refs/main", repo);
    FILE *f = fopen(ref_path, "r");
    if (f) {
        if (!fgets(rev, sizeof rev, f)) rev[0] = '\0';
        fclose(f);
        rev[strcspn(rev, "\r\n")] = '\0';
    }
    char snap[PATH_MAX * 2];
    if (rev[0]) {
        snprintf(snap, sizeof snap, "%s/snapshots/%s", repo, rev);
        return is_dir(snap) ? strdup(snap) : NULL;
    }
    snprintf(snap, sizeof snap, "%s/snapshots", repo);
    DIR *snapshots = opendir(snap);
    if (!snapshots) return NULL;
    char *only = NULL;
    int count = 0;
    for (struct dirent *e; (e = readdir(snapshots));) {
        if (e->d_name[0] == '.') continue;
        count++;
        free(only);
        only = path_join(snap, e->d_name);
    }
    closedir(snapshots);
    if (count != 1) {
        free(only);
        return NULL;
    }
    return only;
}

/* What a torch.save'd file is, from its first n (up to 4) bytes: "zip"
 * (torch >= 1.6 writes a zip archive, "PK\3\4"), "pickle" (the legacy
 * format opens with a pickle protocol marker, 0x80 and the protocol 2..5),
 * or NULL for anything else. */
static const char *torch_checkpoint_kind(const unsigned char *magic, size_t n) {
    if (n == 4 && memcmp(magic, "PK\3\4", 4) == 0) return "zip";
    if (n >= 2 && magic[0] == 0x80 && magic[1] >= 2 && magic[1] <= 5) return "pickle";
    return NULL;
}

/* -1 with a message saying how to convert path when its first bytes
 * magic[n] are a torch checkpoint's (what stands for a model's config or
 * weights), else 0. */
static int refuse_torch_checkpoint(const char *path, const unsigned char *magic, size_t n,
                                   lens_err *err) {
    const char *kind = torch_checkpoint_kind(magic, n);
    if (!kind) return 0;
    lens_err_set(err,
                 "%s: this is a torch checkpoint (a %s), not a model lensd reads: convert it "
                 "with tools/convert_tl_checkpoint.py %s CONFIG.json OUT_DIR (or --mapping "
                 "tools/mappings/NAME.json for other layouts) and load OUT_DIR",
                 path, strcmp(kind, "zip") == 0 ? "zip archive" : "legacy pickle", path);
    return -1;
}

/* refuse_torch_checkpoint on the first bytes of the file at path (0 when
 * it cannot be read: its loader says why). */
static int refuse_torch_file(const char *path, lens_err *err) {
    unsigned char magic[4];
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    const size_t n = fread(magic, 1, sizeof magic, f);
    fclose(f);
    return refuse_torch_checkpoint(path, magic, n, err);
}

/* A JSON file read once, through: its first bytes (already read, to tell
 * a torch checkpoint), then the rest of the stream. The file is opened
 * once, so a FIFO or a file being replaced reads as one file. */
typedef struct json_reader {
    unsigned char head[4];
    size_t n_head, head_used;
    FILE *f;
} json_reader;

static size_t read_json_bytes(void *buf, size_t len, void *data) {
    json_reader *r = data;
    if (r->head_used < r->n_head) {
        size_t n = r->n_head - r->head_used < len ? r->n_head - r->head_used : len;
        memcpy(buf, r->head + r->head_used, n);
        r->head_used += n;
        return n;
    }
    const size_t n = fread(buf, 1, len, r->f);
    return n == 0 && ferror(r->f) ? (size_t)-1 : n;
}

static json_t *load_json(const char *path, lens_err *err) {
    json_reader r = {.f = fopen(path, "rb")};
    if (!r.f) {
        lens_err_set(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    r.n_head = fread(r.head, 1, sizeof r.head, r.f);
    json_t *root = NULL;
    if (!refuse_torch_checkpoint(path, r.head, r.n_head, err)) {
        json_error_t jerr;
        root = json_load_callback(read_json_bytes, &r, JSON_REJECT_DUPLICATES, &jerr);
        if (!root)
            lens_err_set(err, "%s: line %d: %s", path, jerr.line, jerr.text);
        else if (!json_is_object(root)) {
            lens_err_set(err, "%s: not a JSON object", path);
            json_decref(root);
            root = NULL;
        }
    }
    fclose(r.f);
    return root;
}

void lens_model_free(lens_model *m) {
    if (!m) return;
    lens_model_place(m, lk_cpu(), NULL);
    if (m->arena) munmap(m->arena, m->arena_bytes);
    free(m->w.layers);
    free(m->cfg.layer_is_local);
    lens_tok_free(m->tok);
    free(m->name);
    free(m->source);
    free(m);
}

static int load_hf_dir(lens_model *m, const char *dir, lens_err *err) {
    char *config_path = path_join(dir, "config.json");
    json_t *root = config_path ? load_json(config_path, err) : NULL;
    tensor_source src = {0};
    int rc = -1;
    const lens_arch *arch = root ? lens_arch_find(root, config_path, err) : NULL;
    if (arch && lens_arch_read_config(arch, &m->cfg, root, config_path, err) == 0 &&
        (m->w.layers = calloc((size_t)m->cfg.n_layers, sizeof *m->w.layers)) &&
        source_open_dir(&src, dir, err) == 0) {
        rc = load_weights(m, &src, arch, err);
        if (rc == 0) rc = load_hf_tokenizer(m, dir, err);
    }
    source_close(&src);
    json_decref(root);
    free(config_path);
    return rc;
}

/* lensd.masked_score: the IGNORE value of the checkpoint's attention
 * layers (older TransformerLens versions saved -1e5), -INFINITY when absent. */
static int read_masked_score(lens_config *c, json_t *lensd, const char *file, lens_err *err) {
    json_t *v = json_object_get(lensd, "masked_score");
    c->masked_score = -INFINITY;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v) || !(json_number_value(v) < 0)) {
        lens_err_set(err, "%s: lensd.masked_score must be a negative number (older TL's -1e5)",
                     file);
        return -1;
    }
    c->masked_score = (float)json_number_value(v);
    return 0;
}

static int load_native(lens_model *m, const char *config_path, unsigned *processing,
                       lens_err *err) {
    json_t *root = load_json(config_path, err);
    if (!root) return -1;
    char *dir = dir_of(config_path);
    json_t *lensd = json_object_get(root, "lensd");
    tensor_source src = {0};
    int rc = -1;
    if (lensd && !json_is_object(lensd)) {
        lens_err_set(err, "%s: \"lensd\" must be an object", config_path);
    } else if (read_native_config(&m->cfg, root, config_path, err) == 0 &&
               (m->w.layers = calloc((size_t)m->cfg.n_layers, sizeof *m->w.layers))) {
        char *weights = path_join(dir, lens_json_str(lensd, "weights", "model.safetensors"));
        json_t *proc = json_object_get(lensd, "processing");
        rc = weights ? refuse_torch_file(weights, err) : -1;
        if (rc == 0) rc = source_add(&src, weights, err);
        if (rc == 0) rc = load_weights(m, &src, NULL, err);
        if (rc == 0) rc = load_native_tokenizer(m, lensd, dir, config_path, err);
        if (rc == 0) rc = read_masked_score(&m->cfg, lensd, config_path, err);
        if (rc == 0 && json_is_string(proc))
            rc = lens_processing_parse(json_string_value(proc), processing, err);
        else if (rc == 0 && json_is_array(proc)) {
            size_t i;
            json_t *flag;
            *processing = 0;
            json_array_foreach(proc, i, flag) {
                unsigned one;
                const char *s = json_string_value(flag);
                if (!s || (rc = lens_processing_parse(s, &one, err))) {
                    if (!s)
                        lens_err_set(err, "%s: lensd.processing[%zu] is not a string", config_path,
                                     i);
                    rc = -1;
                    break;
                }
                *processing |= one;
            }
        }
        if (rc) lens_err_prefix(err, "loading %s", config_path);
        free(weights);
    }
    source_close(&src);
    free(dir);
    json_decref(root);
    return rc;
}

lens_model *lens_model_load(const char *spec, const lens_load_opts *opts, lens_err *err) {
    lens_model *m = calloc(1, sizeof *m);
    if (!m || !(m->name = strdup(spec))) {
        free(m);
        lens_err_set(err, "out of memory");
        return NULL;
    }
    m->rules.bos_id = m->rules.eos_id = m->rules.pad_id = -1;
    char *native_config = NULL;
    char *hf_dir = NULL;
    if (is_dir(spec)) {
        char *tl = path_join(spec, "tl_config.json");
        char *hf = path_join(spec, "config.json");
        if (tl && path_exists(tl))
            native_config = tl, tl = NULL;
        else if (hf && path_exists(hf))
            hf_dir = strdup(spec);
        free(tl);
        free(hf);
        if (!native_config && !hf_dir) {
            lens_err_set(err, "%s: neither tl_config.json nor config.json is in this directory",
                         spec);
            goto fail;
        }
    } else if (path_exists(spec)) {
        native_config = strdup(spec);
    } else if (!(hf_dir = find_in_hf_cache(spec))) {
        lens_err_set(err,
                     "model \"%s\": no such file or directory, and no snapshot of it in the "
                     "local Hugging Face cache (set HF_HOME, or pass a path)",
                     spec);
        goto fail;
    }
    unsigned processing = native_config ? LENS_PROC_NONE : LENS_PROC_DEFAULT;
    m->source = strdup(native_config ? native_config : hf_dir);
    int rc = native_config ? load_native(m, native_config, &processing, err)
                           : load_hf_dir(m, hf_dir, err);
    if (rc) goto fail;
    if (m->cfg.masked_score == 0) m->cfg.masked_score = -INFINITY;
    if (opts) {
        if (opts->processing >= 0) processing = (unsigned)opts->processing;
        m->cfg.use_attn_result |= opts->use_attn_result;
        m->cfg.use_split_qkv_input |= opts->use_split_qkv_input;
        m->cfg.use_hook_mlp_in |= opts->use_hook_mlp_in;
        m->cfg.use_attn_in |= opts->use_attn_in;
    }
    if ((m->cfg.use_split_qkv_input || m->cfg.use_attn_in) &&
        (m->cfg.n_kv_heads != m->cfg.n_heads || m->cfg.shared_ln)) {
        /* TL repeats the input per key/value head under GQA (lensd per query head), and a
         * shared LayerNorm's one output, which the MLP reads, does not exist per head */
        lens_err_set(err,
                     "%s: use_split_qkv_input and use_attn_in are not supported with "
                     "grouped-query attention or an MLP that shares ln1 (%s)",
                     spec, m->cfg.architecture);
        goto fail;
    }
    pthread_mutex_t *lock = opts ? opts->processing_lock : NULL;
    if (lock) pthread_mutex_lock(lock);
    rc = lens_process_weights(m, processing, err);
    if (lock) pthread_mutex_unlock(lock);
    if (rc) goto fail;
    m->device = lk_cpu();
    m->dw = m->w;
    free(native_config);
    free(hf_dir);
    return m;
fail:
    free(native_config);
    free(hf_dir);
    lens_model_free(m);
    return NULL;
}
