/*
 * safetensors.c: libFuzzer harness for the safetensors reader (lens_st_open,
 * core/safetensors.h), which reads model files and caches from anywhere.
 *
 * Input: a whole file, handed to the reader through a memfd; or, when it
 * starts with '{', a header and tensor data separated by the first NUL byte,
 * to which the harness adds the 8-byte length prefix (so that mutating the
 * JSON does not mostly produce files whose length prefix is wrong).
 *
 * Contract checked: a file that does not open is refused with a message that
 * starts with its path. A file that opens keeps the header's promise: every
 * tensor's nbytes readable at data, nbytes = numel x the dtype's size, every
 * name found again by lens_st_find, floating-point tensors convertible with
 * lens_st_to_f32 and with lens_st_read_f32 (the same floats). Where its
 * names allow it (the writer refuses empty names), the tensors are written
 * back with lens_st_encode_header and reopened, and must come back
 * identical. Anything else aborts.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/safetensors.h"
#include "tests/fuzz/fuzz.h"

/* Reads every byte of t, checks its sizes, and converts it both ways if it
 * is floating point. */
static void touch(const lens_st_file *f, const lens_st_tensor *t) {
    volatile unsigned char sink = 0;
    for (size_t i = 0; i < t->nbytes; i++)
        sink ^= ((const unsigned char *)t->data)[i];
    (void)sink;
    if (lens_st_find(f, t->name) == NULL || strcmp(lens_st_find(f, t->name)->name, t->name) != 0)
        fuzz_fail("tensor \"%s\" is not found by its name", t->name);
    if ((size_t)t->numel * lens_dtype_size(t->dtype) != t->nbytes)
        fuzz_fail("tensor \"%s\": %lld elements of %s in %zu bytes", t->name, (long long)t->numel,
                  lens_dtype_name(t->dtype), t->nbytes);
    if (t->dtype != LENS_F64 && t->dtype != LENS_F32 && t->dtype != LENS_F16 &&
        t->dtype != LENS_BF16)
        return;
    size_t n = (size_t)(t->numel ? t->numel : 1);
    float *mapped = malloc(n * sizeof *mapped), *read = malloc(n * sizeof *read);
    lens_err err;
    if (!mapped || !read) fuzz_fail("out of memory");
    if (lens_st_to_f32(f, t, mapped, &err) != 0) fuzz_fail("lens_st_to_f32: %s", err.msg);
    if (lens_st_read_f32(f, t, 0, t->numel, read, &err) != 0)
        fuzz_fail("lens_st_read_f32: %s", err.msg);
    for (int64_t i = 0; i < t->numel; i++)
        if (memcmp(&mapped[i], &read[i], sizeof(float)) != 0 &&
            !(isnan(mapped[i]) && isnan(read[i])))
            fuzz_fail("tensor \"%s\" element %lld: %g from the mapping, %g read", t->name,
                      (long long)i, mapped[i], read[i]);
    free(mapped);
    free(read);
}

/* Writes f's tensors back out and checks they reopen unchanged. */
static void roundtrip(const lens_st_file *f) {
    size_t n = lens_st_count(f);
    lens_st_out *outs = calloc(n ? n : 1, sizeof *outs);
    size_t total = 0;
    if (!outs) fuzz_fail("out of memory");
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
    if (!header) fuzz_fail("re-encoding an opened file failed: %s", err.msg);
    unsigned char *data = malloc(total ? total : 1);
    if (!data) fuzz_fail("out of memory");
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const lens_st_tensor *t = lens_st_at(f, i);
        if (t->nbytes) memcpy(data + at, t->data, t->nbytes);
        at += t->nbytes;
    }
    char path[64];
    const struct iovec iov[] = {{header, hlen}, {data, total}};
    int fd = fuzz_memfd_iov(iov, 2, path, sizeof path);
    free(header);
    free(data);
    if (fd < 0) {
        free(outs);
        return;
    }
    lens_st_file *g = lens_st_open(path, &err);
    if (!g) fuzz_fail("reopening a re-encoded file failed: %s", err.msg);
    if (lens_st_count(g) != n)
        fuzz_fail("%zu tensors re-encoded, %zu reopened", n, lens_st_count(g));
    for (size_t i = 0; i < n; i++) {
        const lens_st_tensor *a = lens_st_at(f, i), *b = lens_st_at(g, i);
        if (strcmp(a->name, b->name) != 0 || a->dtype != b->dtype || a->ndim != b->ndim ||
            memcmp(a->shape, b->shape, sizeof a->shape) != 0 || a->numel != b->numel ||
            a->nbytes != b->nbytes || (a->nbytes && memcmp(a->data, b->data, a->nbytes) != 0))
            fuzz_fail("tensor %zu (\"%s\") does not come back as it was written", i, a->name);
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
    int fd = fuzz_memfd_iov(iov, n, path, sizeof path);
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
        fuzz_fail("error does not start with the path: %s", err.msg);
    }
    close(fd);
    return 0;
}
