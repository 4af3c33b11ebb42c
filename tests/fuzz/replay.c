/*
 * replay.c: runs a libFuzzer harness over saved inputs, without libFuzzer.
 *
 * Linked with one harness (tests/fuzz/<name>.c) in the ordinary build, gcc or
 * clang, with or without sanitizers, as the fuzz_<name>_replay meson tests:
 * every argument is a file or a directory whose files (not recursively, in
 * name order; names starting with '.' or "README" skipped: they are notes,
 * not inputs) are each read into a buffer of exactly their size, as libFuzzer
 * hands them over, and passed to LLVMFuzzerTestOneInput once. A harness
 * signals a failure by crashing (abort, a sanitizer report), so this passes
 * when it returns. Prints one line per argument: how many inputs it ran.
 *
 * Exits 0 when every input ran, 1 for an argument or file it could not read
 * (a missing corpus directory is a failure, not an empty one).
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads path into a malloc'd buffer of *size bytes (a 1-byte buffer for an
 * empty file, so that the harness gets a valid pointer). Returns NULL with a
 * message printed. */
static uint8_t *read_whole(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size < 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        fclose(f);
        return NULL;
    }
    *size = (size_t)st.st_size;
    uint8_t *buf = malloc(*size ? *size : 1);
    if (!buf || fread(buf, 1, *size, f) != *size) {
        fprintf(stderr, "replay: %s: cannot read %zu bytes\n", path, *size);
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

static int run_file(const char *path) {
    size_t size;
    uint8_t *buf = read_whole(path, &size);
    if (!buf) return -1;
    LLVMFuzzerTestOneInput(buf, size);
    free(buf);
    return 0;
}

static int is_note(const char *name) {
    return name[0] == '.' || strncmp(name, "README", 6) == 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) {
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* Runs every input file of dir; returns how many, or -1. */
static long run_dir(const char *dir) {
    struct dirent **names;
    int n = scandir(dir, &names, NULL, by_name);
    if (n < 0) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    long ran = 0;
    for (int i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        if (ran >= 0 && !is_note(names[i]->d_name) &&
            snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name) < (int)sizeof path &&
            stat(path, &st) == 0 && S_ISREG(st.st_mode))
            ran = run_file(path) == 0 ? ran + 1 : -1;
        free(names[i]);
    }
    free(names);
    return ran;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
        return 1;
    }
    int status = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        long ran;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            ran = -1;
        } else if (S_ISDIR(st.st_mode)) {
            ran = run_dir(argv[i]);
        } else {
            ran = run_file(argv[i]) == 0 ? 1 : -1;
        }
        if (ran < 0)
            status = 1;
        else
            printf("replay: %s: %ld input%s\n", argv[i], ran, ran == 1 ? "" : "s");
    }
    return status;
}
