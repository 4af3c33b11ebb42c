/*
 * fuzz.h: what the harnesses of tests/fuzz/ share — handing an input to a
 * loader that wants a path, a scratch directory, the shared test data, and
 * failing loudly. Header-only (static functions), so that each harness stays
 * one translation unit that libFuzzer or replay.c links on its own.
 *
 * A harness fails by calling fuzz_fail, which prints and aborts: libFuzzer
 * then keeps the input as a crash, and replay.c's test dies with the message.
 */
#ifndef LENS_FUZZ_H
#define LENS_FUZZ_H

#include <ftw.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

/* Prints "fuzz: <message>" and aborts. */
__attribute__((format(printf, 1, 2), noreturn)) static inline void fuzz_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* A memfd holding the n byte ranges of iov one after another, with its
 * /proc/self/fd path written to path[cap]. Returns the fd (the caller closes
 * it), or -1 (out of memory or fds: the harness then skips the input). */
static inline int fuzz_memfd_iov(const struct iovec *iov, int n, char *path, size_t cap) {
    int fd = memfd_create("fuzz-input", MFD_CLOEXEC);
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

/* fuzz_memfd_iov of one range. */
static inline int fuzz_memfd(const void *data, size_t size, char *path, size_t cap) {
    const struct iovec iov = {(void *)data, size};
    return fuzz_memfd_iov(&iov, 1, path, cap);
}

static inline int fuzz_remove_entry(const char *path, const struct stat *st, int flag,
                                    struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* The path of the scratch directory ("" until it is made). */
static inline char *fuzz_scratch_path(void) {
    static char path[4096];
    return path;
}

static inline void fuzz_remove_scratch(void) {
    if (fuzz_scratch_path()[0])
        nftw(fuzz_scratch_path(), fuzz_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The process's own scratch directory under $TMPDIR (else /tmp), made on
 * the first call and removed with its contents at exit. */
static inline const char *fuzz_scratch_dir(void) {
    char *path = fuzz_scratch_path();
    if (path[0]) return path;
    const char *tmp = getenv("TMPDIR");
    snprintf(path, 4096, "%s/lensd-fuzz-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(path)) fuzz_fail("mkdtemp %s failed", path);
    atexit(fuzz_remove_scratch);
    return path;
}

/* Writes size bytes to dir/name (replacing it); the full path goes to
 * path[cap]. Fails the run when it cannot: the harness needs the file. */
static inline void fuzz_write_file(const char *dir, const char *name, const void *data, size_t size,
                                   char *path, size_t cap) {
    if ((size_t)snprintf(path, cap, "%s/%s", dir, name) >= cap) fuzz_fail("path too long");
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0)
        fuzz_fail("cannot write %s", path);
}

/* The shared test data folder: $LENSD_SHARED, else the ../shared beside the
 * checkout that meson compiled in (LENSD_FUZZ_SHARED). */
static inline const char *fuzz_shared_dir(void) {
    const char *env = getenv("LENSD_SHARED");
    return env && env[0] ? env : LENSD_FUZZ_SHARED;
}

/* Whether s[len] is UTF-8 as Rust's str accepts it: shortest forms only, no
 * surrogates, nothing above U+10FFFF. */
static inline int fuzz_valid_utf8(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t b = s[i];
        size_t n = b < 0x80                 ? 1
                   : b >= 0xC2 && b <= 0xDF ? 2
                   : b >= 0xE0 && b <= 0xEF ? 3
                   : b >= 0xF0 && b <= 0xF4 ? 4
                                            : 0;
        if (n == 0 || len - i < n) return 0;
        for (size_t k = 1; k < n; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        if ((b == 0xE0 && s[i + 1] < 0xA0) || (b == 0xED && s[i + 1] > 0x9F) ||
            (b == 0xF0 && s[i + 1] < 0x90) || (b == 0xF4 && s[i + 1] > 0x8F))
            return 0;
        i += n;
    }
    return 1;
}

#endif
