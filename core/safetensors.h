/*
 * safetensors.h: reading and writing the safetensors format
 * (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
 * length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets"},
 * "__metadata__": {str: str}}, then the tensor bytes.
 *
 * Files are memory-mapped and the whole header is validated when opened:
 * header length inside the file, JSON well formed, every dtype known, every
 * shape's byte count equal to its data_offsets span, every span inside the
 * data and no two spans overlapping. After a successful open, every tensor's
 * `data` pointer may be read for `nbytes` bytes without further checks.
 * This is not a general tensor library: it reads and writes bytes.
 */
#ifndef LENS_SAFETENSORS_H
#define LENS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/lens_error.h"

typedef enum lens_dtype {
    LENS_F64,
    LENS_F32,
    LENS_F16,
    LENS_BF16,
    LENS_I64,
    LENS_I32,
    LENS_I16,
    LENS_I8,
    LENS_U8,
    LENS_BOOL,
} lens_dtype;

#define LENS_MAX_DIMS 8

/* Bytes per element of dtype. Can't fail. */
size_t lens_dtype_size(lens_dtype dtype);

/* The safetensors name of dtype ("F32", "BF16", ...). Can't fail. */
const char *lens_dtype_name(lens_dtype dtype);

/* One tensor of an open file. `data` points into the mapping and stays valid
 * until the file is closed. */
typedef struct lens_st_tensor {
    const char *name;
    lens_dtype dtype;
    int ndim;
    int64_t shape[LENS_MAX_DIMS];
    int64_t numel;
    const void *data;
    size_t nbytes;
} lens_st_tensor;

typedef struct lens_st_file lens_st_file;

/* Opens and validates path. Returns NULL on error with a message naming the
 * file and, where one is involved, the tensor. */
lens_st_file *lens_st_open(const char *path, lens_err *err);

/* Unmaps and frees the file. Accepts NULL. */
void lens_st_close(lens_st_file *file);

/* The path the file was opened with. Can't fail. */
const char *lens_st_path(const lens_st_file *file);

/* Number of tensors, and the i-th tensor in header order (i < count). */
size_t lens_st_count(const lens_st_file *file);
const lens_st_tensor *lens_st_at(const lens_st_file *file, size_t i);

/* The tensor called name, or NULL if the file has none. */
const lens_st_tensor *lens_st_find(const lens_st_file *file, const char *name);

/* The value of a "__metadata__" entry, or NULL if absent. */
const char *lens_st_metadata(const lens_st_file *file, const char *key);

/* Converts a floating-point tensor (F64, F32, F16, BF16) to float32 into
 * out[numel], from the mapping. Returns -1 (naming file and tensor) for
 * other dtypes. */
int lens_st_to_f32(const lens_st_file *file, const lens_st_tensor *t, float *out, lens_err *err);

/* Converts elements [first, first + n) of a floating-point tensor to float32
 * into out[n], as lens_st_to_f32 does, but reads them from the file with
 * pread: F32 bytes go from the page cache straight into out, and the
 * mapping is not touched (its pages neither faulted in nor counted in the
 * process's resident memory). Safe to call from several threads at once on
 * one file. Returns -1 (naming file and tensor) for other dtypes, a range
 * outside the tensor, or a failed or short read (the file truncated since it
 * was opened). */
int lens_st_read_f32(const lens_st_file *file, const lens_st_tensor *t, int64_t first, int64_t n,
                     float *out, lens_err *err);

/* A tensor to write: `data` holds numel * lens_dtype_size(dtype) bytes in
 * row-major order. */
typedef struct lens_st_out {
    const char *name;
    lens_dtype dtype;
    int ndim;
    int64_t shape[LENS_MAX_DIMS];
    const void *data;
} lens_st_out;

/* The bytes of t's data: its elements times its dtype's size. */
size_t lens_st_out_bytes(const lens_st_out *t);

/* One "__metadata__" entry to write. */
typedef struct lens_st_meta {
    const char *key, *value;
} lens_st_meta;

/* Builds the bytes that precede the tensor data: the 8-byte length and the
 * JSON header (padded with spaces to a multiple of 8), for tensors laid out
 * one after the other in the given order, with n_meta "__metadata__"
 * entries (none when n_meta is 0). Returns a malloc'd buffer of *len bytes
 * (caller frees), or NULL on error (a duplicate or empty name, a bad shape).
 * This is what a streaming writer sends first. */
char *lens_st_encode_header(const lens_st_out *tensors, size_t n, const lens_st_meta *meta,
                            size_t n_meta, size_t *len, lens_err *err);

/* Writes the tensors (in order) and metadata to path, replacing it. Returns
 * 0, or -1 on error naming the path. */
int lens_st_write(const char *path, const lens_st_out *tensors, size_t n, const lens_st_meta *meta,
                  size_t n_meta, lens_err *err);

#endif
