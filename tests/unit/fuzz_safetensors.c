/*
 * fuzz_safetensors.c: libFuzzer harness for lens_st_open.
 *
 * An input is a whole file, handed to the reader through a memfd; or, when
 * it starts with '{', a header and data separated by the first NUL byte, to
 * which the harness adds the length prefix (so that mutating the JSON does
 * not mostly produce files whose length prefix is wrong). A file
 * that opens must keep the header's promise: every tensor's bytes readable,
 * names findable, floating-point tensors convertible. Where its names allow
 * it (the writer refuses empty names), the tensors are written back with
 * lens_st_encode_header and reopened, and must come back identical.
 *
 * Build (clang only): clang -std=c11 -D_GNU_SOURCE -I. -g -O1
 *   -fsanitize=fuzzer,address,undefined core/lens_error.c core/safetensors.c
 *   tests/unit/fuzz_safetensors.c -ljansson
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/safetensors.h"

/* A memfd holding the n byte ranges of iov, one after another; its path
 * is written to path. Returns the fd, or -1. */
static int memfd_with(const struct iovec *iov, int n, char *path, size_t cap) {
    int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
    if (fd < 0) return -1;
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    if (writev(fd, iov, n) != (ssize_t)total) {
        close(fd);
        return -1;
    }
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}

/* Reads every byte of t and converts it if it is floating point. */
static void touch(const lens_st_file *f, const lens_st_tensor *t) {
    volatile unsigned char sink = 0;
    for (size_t i = 0; i < t->nbytes; i++)
        sink ^= ((const unsigned char *)t->data)[i];
    (void)sink;
    if (lens_st_find(f, t->name) != t) abort();
    if (t->dtype != LENS_F64 && t->dtype != LENS_F32 && t->dtype != LENS_F16 &&
        t->dtype != LENS_BF16)
        return;
    float *out = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *out);
    lens_err err;
    if (!out || lens_st_to_f32(f, t, out, &err) != 0) abort();
    free(out);
}

/* Writes f's tensors back out and checks they reopen unchanged. */
static void roundtrip(const lens_st_file *f) {
    size_t n = lens_st_count(f);
    lens_st_out *outs = calloc(n ? n : 1, sizeof *outs);
    size_t total = 0;
    if (!outs) abort();
    for (size_t i = 0; i < n; i++) {
        const lens_st_tensor *t = lens_st_at(f, i);
        if (t->name[0] == '\0') {
            free(outs);
            return;
        }
        outs[i] = (lens_st_out){t->name, t->dtype, t->ndim, {0}, t->data};
        memcpy(outs[i].shape, t->shape, sizeof t->shape);
        total += t->nbytes;
    }
    lens_err err;
    size_t hlen;
    char *header = lens_st_encode_header(outs, n, NULL, 0, &hlen, &err);
    if (!header) {
        fprintf(stderr, "re-encoding an opened file failed: %s\n", err.msg);
        abort();
    }
    unsigned char *data = malloc(total ? total : 1);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const lens_st_tensor *t = lens_st_at(f, i);
        if (t->nbytes) memcpy(data + at, t->data, t->nbytes);
        at += t->nbytes;
    }
    char path[64];
    const struct iovec iov[] = {{header, hlen}, {data, total}};
    int fd = memfd_with(iov, 2, path, sizeof path);
    free(header);
    free(data);
    if (fd < 0) {
        free(outs);
        return;
    }
    lens_st_file *g = lens_st_open(path, &err);
    if (!g) {
        fprintf(stderr, "reopening a re-encoded file failed: %s\n", err.msg);
        abort();
    }
    if (lens_st_count(g) != n) abort();
    for (size_t i = 0; i < n; i++) {
        const lens_st_tensor *a = lens_st_at(f, i), *b = lens_st_at(g, i);
        if (strcmp(a->name, b->name) != 0 || a->dtype != b->dtype || a->ndim != b->ndim ||
            memcmp(a->shape, b->shape, sizeof a->shape) != 0 || a->numel != b->numel ||
            a->nbytes != b->nbytes || (a->nbytes && memcmp(a->data, b->data, a->nbytes) != 0))
            abort();
    }
    lens_st_close(g);
    close(fd);
    free(outs);
}

int LLVMFuzzerTestOneInput(const uint8_t *bytes, size_t len) {
    unsigned char prefix[8];
    struct iovec iov[3] = {{(void *)bytes, len}};
    int n = 1;
    if (len > 0 && bytes[0] == '{') {
        const uint8_t *nul = memchr(bytes, 0, len);
        size_t hlen = nul ? (size_t)(nul - bytes) : len;
        for (int i = 0; i < 8; i++)
            prefix[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
        iov[0] = (struct iovec){prefix, 8};
        iov[1] = (struct iovec){(void *)bytes, hlen};
        iov[2] = (struct iovec){(void *)(nul ? nul + 1 : bytes + len), nul ? len - hlen - 1 : 0};
        n = 3;
    }
    char path[64];
    int fd = memfd_with(iov, n, path, sizeof path);
    if (fd < 0) return 0;
    lens_err err;
    lens_st_file *f = lens_st_open(path, &err);
    if (f) {
        for (size_t i = 0; i < lens_st_count(f); i++)
            touch(f, lens_st_at(f, i));
        lens_st_metadata(f, "format");
        roundtrip(f);
        lens_st_close(f);
    } else if (strncmp(err.msg, path, strlen(path)) != 0) {
        fprintf(stderr, "error does not start with the path: %s\n", err.msg);
        abort();
    }
    close(fd);
    return 0;
}
