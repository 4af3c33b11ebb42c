/*
 * safetensors.c: the safetensors reader (mmap + jansson) and writer.
 *
 * The reader maps the file read-only, parses the JSON header once, checks
 * every entry against the rules in safetensors.h and keeps the parsed header
 * alive: tensor names and metadata strings point into it, tensor data points
 * into the mapping. Nothing is copied and nothing is converted until a caller
 * asks lens_st_to_f32 (from the mapping) or lens_st_read_f32 (with pread on
 * the descriptor kept open, for loaders that want the bytes in their own
 * memory without also faulting them into the mapping).
 *
 * Deliberately not here: big-endian hosts (the format is little-endian and
 * the bytes are handed out as they are), lazy or partial header parsing, and
 * protection against the file being truncated by someone else while mapped
 * (that raises SIGBUS, as for any mmap reader; lens_st_read_f32 reports it
 * as an error instead).
 */
#include "core/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c hands out little-endian tensor bytes as they are: little-endian hosts only"
#endif

/* The same bound as Hugging Face's reader: a longer header is an attack or a
 * corrupt length, never a real model. */
#define LENS_ST_MAX_HEADER 100000000ull

#define LENS_ST_METADATA "__metadata__"

static const struct {
    const char *name;
    size_t size;
} lens_st_dtypes[] = {
    [LENS_F64] = {"F64", 8},   [LENS_F32] = {"F32", 4}, [LENS_F16] = {"F16", 2},
    [LENS_BF16] = {"BF16", 2}, [LENS_I64] = {"I64", 8}, [LENS_I32] = {"I32", 4},
    [LENS_I16] = {"I16", 2},   [LENS_I8] = {"I8", 1},   [LENS_U8] = {"U8", 1},
    [LENS_BOOL] = {"BOOL", 1},
};

#define LENS_ST_NDTYPES (sizeof lens_st_dtypes / sizeof lens_st_dtypes[0])

struct lens_st_file {
    char *path;
    int fd; /* kept open for lens_st_read_f32 */
    void *map;
    size_t map_size;
    json_t *header;          /* owns the strings that names point to */
    json_t *metadata;        /* borrowed from header; NULL if absent */
    lens_st_tensor *tensors; /* header order */
    size_t count;
    const lens_st_tensor **by_name; /* sorted by strcmp of name, for find */
};

/* A tensor's [begin, end) inside the data section, for the overlap check. */
typedef struct lens_st_span {
    uint64_t begin, end;
    const char *name;
} lens_st_span;

static int lens_st_valid_dtype(lens_dtype dtype) {
    return (unsigned)dtype < LENS_ST_NDTYPES;
}

size_t lens_st_out_bytes(const lens_st_out *t) {
    size_t bytes = lens_dtype_size(t->dtype);
    for (int d = 0; d < t->ndim; d++)
        bytes *= (size_t)t->shape[d];
    return bytes;
}

size_t lens_dtype_size(lens_dtype dtype) {
    return lens_st_valid_dtype(dtype) ? lens_st_dtypes[dtype].size : 0;
}

const char *lens_dtype_name(lens_dtype dtype) {
    return lens_st_valid_dtype(dtype) ? lens_st_dtypes[dtype].name : "invalid";
}

static uint64_t lens_st_load_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void lens_st_store_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* "[768, 2304]" into buf. */
static void lens_st_fmt_shape(char *buf, size_t cap, const int64_t *shape, int ndim) {
    size_t used = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && used < cap; d++)
        used +=
            (size_t)snprintf(buf + used, cap - used, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (used < cap) snprintf(buf + used, cap - used, "]");
}

/* Sets err to "<path>: tensor "<name>": <message>", or without the path
 * part when path is NULL (the writer's header has no file yet). */
__attribute__((format(printf, 4, 5))) static void
lens_st_tensor_err(lens_err *err, const char *path, const char *name, const char *fmt, ...) {
    if (!err) return;
    char msg[LENS_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (path)
        lens_err_set(err, "%s: tensor \"%s\": %s", path, name, msg);
    else
        lens_err_set(err, "tensor \"%s\": %s", name, msg);
}

/* Elements and bytes of shape[ndim] of dtype. A shape with a 0 anywhere is
 * empty, whatever its other extents. Returns -1 if either count overflows. */
static int lens_st_count_bytes(const int64_t *shape, int ndim, lens_dtype dtype, int64_t *numel,
                               size_t *nbytes) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        if (shape[d] == 0) n = 0;
    for (int d = 0; d < ndim && n != 0; d++)
        if (__builtin_mul_overflow(n, shape[d], &n)) return -1;
    if (__builtin_mul_overflow((size_t)n, lens_dtype_size(dtype), nbytes)) return -1;
    *numel = n;
    return 0;
}

/* ---- reader ------------------------------------------------------------ */

static int lens_st_parse_dtype(const char *path, const char *name, json_t *entry, lens_dtype *out,
                               lens_err *err) {
    json_t *v = json_object_get(entry, "dtype");
    if (!v) {
        lens_st_tensor_err(err, path, name, "missing \"dtype\"");
        return -1;
    }
    if (!json_is_string(v)) {
        lens_st_tensor_err(err, path, name, "\"dtype\" is not a string");
        return -1;
    }
    const char *s = json_string_value(v);
    for (size_t i = 0; i < LENS_ST_NDTYPES; i++) {
        if (strcmp(s, lens_st_dtypes[i].name) == 0) {
            *out = (lens_dtype)i;
            return 0;
        }
    }
    lens_st_tensor_err(err, path, name, "unsupported dtype \"%s\"", s);
    return -1;
}

static int lens_st_parse_shape(const char *path, const char *name, json_t *entry, lens_st_tensor *t,
                               lens_err *err) {
    json_t *v = json_object_get(entry, "shape");
    if (!v) {
        lens_st_tensor_err(err, path, name, "missing \"shape\"");
        return -1;
    }
    if (!json_is_array(v)) {
        lens_st_tensor_err(err, path, name, "\"shape\" is not an array");
        return -1;
    }
    size_t ndim = json_array_size(v);
    if (ndim > LENS_MAX_DIMS) {
        lens_st_tensor_err(err, path, name, "shape has %zu dimensions, more than the %d supported",
                           ndim, LENS_MAX_DIMS);
        return -1;
    }
    for (size_t d = 0; d < ndim; d++) {
        json_t *x = json_array_get(v, d);
        if (!json_is_integer(x) || json_integer_value(x) < 0) {
            lens_st_tensor_err(err, path, name, "shape[%zu] is not a non-negative integer", d);
            return -1;
        }
        t->shape[d] = json_integer_value(x);
    }
    t->ndim = (int)ndim;
    return 0;
}

static int lens_st_parse_offsets(const char *path, const char *name, json_t *entry,
                                 uint64_t data_size, lens_st_span *span, lens_err *err) {
    json_t *v = json_object_get(entry, "data_offsets");
    if (!v) {
        lens_st_tensor_err(err, path, name, "missing \"data_offsets\"");
        return -1;
    }
    json_t *b = json_array_get(v, 0), *e = json_array_get(v, 1);
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(b) ||
        !json_is_integer(e) || json_integer_value(b) < 0 || json_integer_value(e) < 0) {
        lens_st_tensor_err(err, path, name,
                           "\"data_offsets\" is not [begin, end] of non-negative integers");
        return -1;
    }
    span->begin = (uint64_t)json_integer_value(b);
    span->end = (uint64_t)json_integer_value(e);
    if (span->begin > span->end) {
        lens_st_tensor_err(err, path, name, "data_offsets [%llu, %llu] begin after end",
                           (unsigned long long)span->begin, (unsigned long long)span->end);
        return -1;
    }
    if (span->end > data_size) {
        lens_st_tensor_err(err, path, name,
                           "data_offsets [%llu, %llu] end past the %llu bytes of data",
                           (unsigned long long)span->begin, (unsigned long long)span->end,
                           (unsigned long long)data_size);
        return -1;
    }
    return 0;
}

/* Fills t (and its span) from one header entry; data_size bytes of tensor
 * data start at data. */
static int lens_st_parse_tensor(const char *path, const char *name, json_t *entry,
                                const unsigned char *data, uint64_t data_size, lens_st_tensor *t,
                                lens_st_span *span, lens_err *err) {
    if (!json_is_object(entry)) {
        lens_st_tensor_err(err, path, name, "entry is not an object");
        return -1;
    }
    t->name = name;
    span->name = name;
    if (lens_st_parse_dtype(path, name, entry, &t->dtype, err) != 0 ||
        lens_st_parse_shape(path, name, entry, t, err) != 0 ||
        lens_st_parse_offsets(path, name, entry, data_size, span, err) != 0)
        return -1;
    char shape[256];
    lens_st_fmt_shape(shape, sizeof shape, t->shape, t->ndim);
    if (lens_st_count_bytes(t->shape, t->ndim, t->dtype, &t->numel, &t->nbytes) != 0) {
        lens_st_tensor_err(err, path, name, "shape %s of %s has more bytes than fit in 64 bits",
                           shape, lens_dtype_name(t->dtype));
        return -1;
    }
    if (t->nbytes != span->end - span->begin) {
        lens_st_tensor_err(err, path, name,
                           "data_offsets [%llu, %llu] but shape %s of %s needs %zu bytes",
                           (unsigned long long)span->begin, (unsigned long long)span->end, shape,
                           lens_dtype_name(t->dtype), t->nbytes);
        return -1;
    }
    t->data = data + span->begin;
    return 0;
}

static int lens_st_parse_metadata(const char *path, json_t *meta, lens_err *err) {
    if (!json_is_object(meta)) {
        lens_err_set(err, "%s: \"%s\" is not an object", path, LENS_ST_METADATA);
        return -1;
    }
    const char *key;
    json_t *v;
    json_object_foreach(meta, key, v) {
        if (!json_is_string(v)) {
            lens_err_set(err, "%s: \"%s\" entry \"%s\" is not a string", path, LENS_ST_METADATA,
                         key);
            return -1;
        }
    }
    return 0;
}

static int lens_st_span_cmp(const void *a, const void *b) {
    const lens_st_span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Sorts spans[n] and fails if two non-empty ones share a byte. Empty spans
 * (begin == end) hold no bytes and overlap nothing. */
static int lens_st_check_overlaps(const char *path, lens_st_span *spans, size_t n, lens_err *err) {
    qsort(spans, n, sizeof *spans, lens_st_span_cmp);
    const lens_st_span *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        if (spans[i].begin == spans[i].end) continue;
        if (prev && spans[i].begin < prev->end) {
            lens_err_set(err, "%s: tensors \"%s\" [%llu, %llu] and \"%s\" [%llu, %llu] overlap",
                         path, prev->name, (unsigned long long)prev->begin,
                         (unsigned long long)prev->end, spans[i].name,
                         (unsigned long long)spans[i].begin, (unsigned long long)spans[i].end);
            return -1;
        }
        prev = &spans[i];
    }
    return 0;
}

static int lens_st_name_cmp(const void *a, const void *b) {
    const lens_st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static int lens_st_find_cmp(const void *key, const void *elem) {
    const lens_st_tensor *const *t = elem;
    return strcmp(key, (*t)->name);
}

/* Parses and checks the header of the mapped file f, filling its tensors. */
static int lens_st_parse(lens_st_file *f, lens_err *err) {
    const unsigned char *base = f->map;
    uint64_t avail = f->map_size - 8;
    uint64_t hlen = lens_st_load_le64(base);
    if (hlen > LENS_ST_MAX_HEADER) {
        lens_err_set(err, "%s: header length %llu is over the limit of %llu bytes", f->path,
                     (unsigned long long)hlen, LENS_ST_MAX_HEADER);
        return -1;
    }
    if (hlen > avail) {
        lens_err_set(err, "%s: header length %llu runs past the end of the %zu-byte file", f->path,
                     (unsigned long long)hlen, f->map_size);
        return -1;
    }
    const unsigned char *data = base + 8 + hlen;
    uint64_t data_size = avail - hlen;

    json_error_t jerr;
    f->header = json_loadb((const char *)base + 8, hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->header) {
        lens_err_set(err, "%s: header is not valid JSON: %s (byte %d of the header)", f->path,
                     jerr.text, jerr.position);
        return -1;
    }
    if (!json_is_object(f->header)) {
        lens_err_set(err, "%s: header is not a JSON object", f->path);
        return -1;
    }

    size_t n = json_object_size(f->header);
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
    lens_st_span *spans = calloc(n ? n : 1, sizeof *spans);
    if (!f->tensors || !f->by_name || !spans) {
        lens_err_set(err, "%s: out of memory for %zu header entries", f->path, n);
        free(spans);
        return -1;
    }
    const char *key;
    json_t *v;
    json_object_foreach(f->header, key, v) {
        if (strcmp(key, LENS_ST_METADATA) == 0) {
            if (lens_st_parse_metadata(f->path, v, err) != 0) goto fail;
            f->metadata = v;
            continue;
        }
        if (lens_st_parse_tensor(f->path, key, v, data, data_size, &f->tensors[f->count],
                                 &spans[f->count], err) != 0)
            goto fail;
        f->by_name[f->count] = &f->tensors[f->count];
        f->count++;
    }
    if (lens_st_check_overlaps(f->path, spans, f->count, err) != 0) goto fail;
    free(spans);
    qsort(f->by_name, f->count, sizeof *f->by_name, lens_st_name_cmp);
    return 0;
fail:
    free(spans);
    return -1;
}

lens_st_file *lens_st_open(const char *path, lens_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        lens_err_set(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        lens_err_set(err, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        lens_err_set(err, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_size < 8) {
        lens_err_set(err, "%s: file is %lld bytes, too short for the 8-byte header length", path,
                     (long long)st.st_size);
        close(fd);
        return NULL;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        lens_err_set(err, "%s: cannot mmap: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    lens_st_file *f = calloc(1, sizeof *f);
    char *path_copy = strdup(path);
    if (!f || !path_copy) {
        lens_err_set(err, "%s: out of memory", path);
        free(f);
        free(path_copy);
        munmap(map, (size_t)st.st_size);
        close(fd);
        return NULL;
    }
    f->path = path_copy;
    f->fd = fd;
    f->map = map;
    f->map_size = (size_t)st.st_size;
    if (lens_st_parse(f, err) != 0) {
        lens_st_close(f);
        return NULL;
    }
    return f;
}

void lens_st_close(lens_st_file *file) {
    if (!file) return;
    munmap(file->map, file->map_size);
    close(file->fd);
    json_decref(file->header);
    free(file->tensors);
    free(file->by_name);
    free(file->path);
    free(file);
}

const char *lens_st_path(const lens_st_file *file) {
    return file->path;
}

size_t lens_st_count(const lens_st_file *file) {
    return file->count;
}

const lens_st_tensor *lens_st_at(const lens_st_file *file, size_t i) {
    return &file->tensors[i];
}

const lens_st_tensor *lens_st_find(const lens_st_file *file, const char *name) {
    const lens_st_tensor *const *hit =
        bsearch(name, file->by_name, file->count, sizeof *file->by_name, lens_st_find_cmp);
    return hit ? *hit : NULL;
}

const char *lens_st_metadata(const lens_st_file *file, const char *key) {
    return json_string_value(json_object_get(file->metadata, key));
}

/* IEEE binary16 to binary32, exactly. A half with exponent field e and
 * fraction m is (1 + m/2^10) * 2^(e-15) when 0 < e < 31, m * 2^-24 when
 * e == 0 (subnormal), and inf/nan (payload kept) when e == 31. */
static float lens_st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    uint32_t bits;
    if (e == 0x1f) {
        bits = sign | 0x7f800000u | m << 13;
    } else if (e != 0) {
        bits = sign | (e + 127 - 15) << 23 | m << 13;
    } else {
        /* m < 2^10 is exact in float and scaling by a power of two is exact. */
        float v = (float)m * 0x1p-24f;
        memcpy(&bits, &v, sizeof bits);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* bfloat16 is the top half of a binary32. */
static float lens_st_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static int lens_st_is_float(lens_dtype dtype) {
    return dtype == LENS_F64 || dtype == LENS_F32 || dtype == LENS_F16 || dtype == LENS_BF16;
}

static int lens_st_not_float(const lens_st_file *file, const lens_st_tensor *t, lens_err *err) {
    lens_st_tensor_err(err, file->path, t->name, "dtype %s is not a floating-point type",
                       lens_dtype_name(t->dtype));
    return -1;
}

/* Converts n elements of floating-point dtype at src to out[n]. Sources may
 * sit at any byte offset in the file: every load is a memcpy. */
static void lens_st_convert(lens_dtype dtype, const unsigned char *src, size_t n, float *out) {
    switch (dtype) {
    case LENS_F32:
        if (n) memcpy(out, src, n * sizeof *out);
        break;
    case LENS_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, src + 8 * i, sizeof d);
            out[i] = (float)d; /* round to nearest, ties to even */
        }
        break;
    default:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, sizeof h);
            out[i] = dtype == LENS_F16 ? lens_st_f16_to_f32(h) : lens_st_bf16_to_f32(h);
        }
        break;
    }
}

int lens_st_to_f32(const lens_st_file *file, const lens_st_tensor *t, float *out, lens_err *err) {
    if (!lens_st_is_float(t->dtype)) return lens_st_not_float(file, t, err);
    lens_st_convert(t->dtype, t->data, (size_t)t->numel, out);
    return 0;
}

/* Reads len bytes at offset of the file into buf, through short reads and
 * signals. */
static int lens_st_pread(const lens_st_file *file, const lens_st_tensor *t, void *buf, size_t len,
                         uint64_t offset, lens_err *err) {
    for (size_t done = 0; done < len;) {
        ssize_t got = pread(file->fd, (char *)buf + done, len - done, (off_t)(offset + done));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            lens_st_tensor_err(err, file->path, t->name, "reading %zu bytes at offset %llu: %s",
                               len, (unsigned long long)offset,
                               got < 0 ? strerror(errno)
                                       : "the file is shorter than its header says");
            return -1;
        }
        done += (size_t)got;
    }
    return 0;
}

int lens_st_read_f32(const lens_st_file *file, const lens_st_tensor *t, int64_t first, int64_t n,
                     float *out, lens_err *err) {
    if (!lens_st_is_float(t->dtype)) return lens_st_not_float(file, t, err);
    if (first < 0 || n < 0 || first > t->numel || n > t->numel - first) {
        lens_st_tensor_err(err, file->path, t->name,
                           "%lld elements from element %lld are outside its %lld elements",
                           (long long)n, (long long)first, (long long)t->numel);
        return -1;
    }
    const size_t size = lens_dtype_size(t->dtype);
    uint64_t offset =
        (uint64_t)((const unsigned char *)t->data - (const unsigned char *)file->map) +
        (uint64_t)first * size;
    if (t->dtype == LENS_F32) return lens_st_pread(file, t, out, (size_t)n * size, offset, err);
    /* other dtypes are read a piece at a time into a buffer and converted */
    enum { PIECE = 4096 };
    double piece[PIECE];
    for (int64_t done = 0; done < n;) {
        size_t count = n - done < PIECE ? (size_t)(n - done) : PIECE;
        if (lens_st_pread(file, t, piece, count * size, offset + (uint64_t)done * size, err))
            return -1;
        lens_st_convert(t->dtype, (const unsigned char *)piece, count, out + done);
        done += (int64_t)count;
    }
    return 0;
}

/* ---- writer ------------------------------------------------------------ */

/* Checks out and sets its size in bytes. */
static int lens_st_check_out(const lens_st_out *out, size_t i, size_t *nbytes, lens_err *err) {
    if (!out->name) {
        lens_err_set(err, "tensor %zu has no name", i);
        return -1;
    }
    if (out->name[0] == '\0') {
        lens_err_set(err, "tensor %zu has an empty name", i);
        return -1;
    }
    if (strcmp(out->name, LENS_ST_METADATA) == 0) {
        lens_st_tensor_err(err, NULL, out->name, "the name is reserved for metadata");
        return -1;
    }
    if (!lens_st_valid_dtype(out->dtype)) {
        lens_st_tensor_err(err, NULL, out->name, "invalid dtype %d", (int)out->dtype);
        return -1;
    }
    if (out->ndim < 0 || out->ndim > LENS_MAX_DIMS) {
        lens_st_tensor_err(err, NULL, out->name, "ndim %d is outside 0..%d", out->ndim,
                           LENS_MAX_DIMS);
        return -1;
    }
    for (int d = 0; d < out->ndim; d++) {
        if (out->shape[d] < 0) {
            lens_st_tensor_err(err, NULL, out->name, "shape[%d] is %lld, negative", d,
                               (long long)out->shape[d]);
            return -1;
        }
    }
    int64_t numel;
    if (lens_st_count_bytes(out->shape, out->ndim, out->dtype, &numel, nbytes) != 0) {
        char shape[256];
        lens_st_fmt_shape(shape, sizeof shape, out->shape, out->ndim);
        lens_st_tensor_err(err, NULL, out->name,
                           "shape %s of %s has more bytes than fit in 64 bits", shape,
                           lens_dtype_name(out->dtype));
        return -1;
    }
    return 0;
}

/* The header entry {"dtype", "shape", "data_offsets"} of out at offset
 * begin, or NULL if out of memory. */
static json_t *lens_st_entry(const lens_st_out *out, int64_t begin, int64_t end) {
    json_t *shape = json_array();
    for (int d = 0; shape && d < out->ndim; d++) {
        if (json_array_append_new(shape, json_integer(out->shape[d])) != 0) {
            json_decref(shape);
            return NULL;
        }
    }
    /* "o" steals shape even when packing fails. */
    return json_pack("{s:s, s:o, s:[I, I]}", "dtype", lens_dtype_name(out->dtype), "shape", shape,
                     "data_offsets", (json_int_t)begin, (json_int_t)end);
}

char *lens_st_encode_header(const lens_st_out *tensors, size_t n, const lens_st_meta *meta,
                            size_t n_meta, size_t *len, lens_err *err) {
    json_t *root = json_object();
    if (!root) {
        lens_err_set(err, "out of memory building the safetensors header");
        return NULL;
    }
    if (n_meta > 0) {
        json_t *metadata = json_object();
        if (!metadata || json_object_set_new(root, "__metadata__", metadata) != 0) {
            lens_err_set(err, "out of memory building the safetensors header");
            goto fail;
        }
        for (size_t i = 0; i < n_meta; i++) {
            json_t *value = meta[i].value ? json_string(meta[i].value) : NULL;
            if (!meta[i].key || !value || json_object_set_new(metadata, meta[i].key, value)) {
                lens_err_set(err, "metadata entry %zu is not a pair of UTF-8 strings", i);
                goto fail;
            }
        }
    }
    int64_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        size_t nbytes;
        if (lens_st_check_out(&tensors[i], i, &nbytes, err) != 0) goto fail;
        const char *name = tensors[i].name;
        if (json_object_get(root, name)) {
            lens_st_tensor_err(err, NULL, name, "the name appears twice");
            goto fail;
        }
        int64_t end;
        if (nbytes > INT64_MAX || __builtin_add_overflow(offset, (int64_t)nbytes, &end)) {
            lens_st_tensor_err(err, NULL, name, "the tensors add up to more than 2^63 bytes");
            goto fail;
        }
        json_t *entry = lens_st_entry(&tensors[i], offset, end);
        if (!entry) {
            lens_err_set(err, "out of memory building the safetensors header");
            goto fail;
        }
        if (json_object_set_new(root, name, entry) != 0) {
            lens_st_tensor_err(err, NULL, name, "the name is not valid UTF-8");
            goto fail;
        }
        offset = end;
    }
    char *json = json_dumps(root, JSON_PRESERVE_ORDER | JSON_COMPACT);
    json_decref(root);
    if (!json) {
        lens_err_set(err, "out of memory encoding the safetensors header");
        return NULL;
    }
    /* Pad so the data starts 8-byte aligned: 8 + padded is a multiple of 8. */
    size_t jlen = strlen(json);
    size_t padded = (jlen + 7) & ~(size_t)7;
    unsigned char *buf = malloc(8 + padded);
    if (!buf) {
        free(json);
        lens_err_set(err, "out of memory encoding the safetensors header");
        return NULL;
    }
    lens_st_store_le64(buf, padded);
    memcpy(buf + 8, json, jlen);
    memset(buf + 8 + jlen, ' ', padded - jlen);
    free(json);
    *len = 8 + padded;
    return (char *)buf;
fail:
    json_decref(root);
    return NULL;
}

/* Writes all of buf[len] to fd. Returns 0, or -1 with errno set. */
static int lens_st_write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Bytes of a tensor that lens_st_check_out accepted. */
static size_t lens_st_out_nbytes(const lens_st_out *out) {
    int64_t numel;
    size_t nbytes = 0;
    lens_st_count_bytes(out->shape, out->ndim, out->dtype, &numel, &nbytes);
    return nbytes;
}

int lens_st_write(const char *path, const lens_st_out *tensors, size_t n, const lens_st_meta *meta,
                  size_t n_meta, lens_err *err) {
    size_t hlen;
    char *header = lens_st_encode_header(tensors, n, meta, n_meta, &hlen, err);
    if (!header) {
        lens_err_prefix(err, "%s", path);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (!tensors[i].data && lens_st_out_nbytes(&tensors[i]) > 0) {
            lens_err_set(err, "%s: tensor \"%s\": data is NULL", path, tensors[i].name);
            free(header);
            return -1;
        }
    }
    char *tmp;
    if (asprintf(&tmp, "%s.tmp", path) < 0) {
        lens_err_set(err, "%s: out of memory", path);
        free(header);
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        lens_err_set(err, "%s: cannot create %s: %s", path, tmp, strerror(errno));
        free(tmp);
        free(header);
        return -1;
    }
    int rc = lens_st_write_all(fd, header, hlen);
    free(header);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = lens_st_write_all(fd, tensors[i].data, lens_st_out_nbytes(&tensors[i]));
    if (rc == 0) rc = fsync(fd);
    int write_errno = errno;
    if (close(fd) != 0 && rc == 0) {
        rc = -1;
        write_errno = errno;
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        rc = -1;
        write_errno = errno;
    }
    if (rc != 0) {
        lens_err_set(err, "%s: cannot write: %s", path, strerror(write_errno));
        unlink(tmp);
    }
    free(tmp);
    return rc;
}
