/*
 * auth.c: libFuzzer harness for the access-tokens file (srv_auth_load,
 * server/auth.h) and for the Authorization header it is checked against
 * (srv_auth_check), whose bytes come from the network.
 *
 * Input: the tokens file, up to the first NUL byte (handed over through a
 * memfd); after it, an Authorization header value, up to the next NUL
 * ("Bearer " alone when the input has no NUL).
 *
 * Contract checked: a file that is refused has a message that names the
 * file. A table that loads has one entry per element of the file's list;
 * "Bearer <token>" finds the entry of every plain "token" of the file (its
 * name), in any case of "Bearer", and with an extra space finds nothing; the
 * fuzzed header finds nothing or a named entry, which the token bucket and
 * the guess throttle then take without complaint. Anything else aborts.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/auth.h"
#include "tests/fuzz/fuzz.h"

/* "<scheme><token>" checked against a; returns the entry found or NULL. */
static const srv_token *check(const srv_auth *a, const char *scheme, const char *token) {
    size_t n = strlen(scheme) + strlen(token) + 1;
    char *header = malloc(n);
    if (!header) fuzz_fail("out of memory");
    snprintf(header, n, "%s%s", scheme, token);
    const srv_token *t = srv_auth_check(a, header);
    free(header);
    return t;
}

/* Every plain token of the file finds its own entry. */
static void check_plain_tokens(const srv_auth *a, const uint8_t *file, size_t size) {
    json_t *root = json_loadb((const char *)file, size, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_array(root) || (int)json_array_size(root) != srv_auth_count(a))
        fuzz_fail("%d entries loaded from a list of %zu", srv_auth_count(a), json_array_size(root));
    size_t i;
    json_t *entry;
    json_array_foreach(root, i, entry) {
        const char *token = json_string_value(json_object_get(entry, "token"));
        const char *name = json_string_value(json_object_get(entry, "name"));
        if (!token) continue;
        const srv_token *t = check(a, "Bearer ", token);
        if (!t || strcmp(t->name, name) != 0)
            fuzz_fail("entry %zu (\"%s\"): its token finds %s", i, name, t ? t->name : "nothing");
        if (check(a, "bEARER ", token) != t) fuzz_fail("entry %zu: the scheme's case matters", i);
        if (check(a, "Bearer  ", token)) fuzz_fail("entry %zu: an extra space is accepted", i);
    }
    json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t file_size = nul ? (size_t)(nul - data) : size;
    char path[64];
    int fd = fuzz_memfd(data, file_size, path, sizeof path);
    if (fd < 0) return 0;
    lens_err err = {0};
    srv_auth *a = srv_auth_load(path, &err);
    close(fd);
    if (!a) {
        if (!strstr(err.msg, path)) fuzz_fail("the message does not name the file: %s", err.msg);
        return 0;
    }
    check_plain_tokens(a, data, file_size);
    char *header;
    if (nul) {
        const uint8_t *end = memchr(nul + 1, 0, size - file_size - 1);
        header =
            strndup((const char *)nul + 1, end ? (size_t)(end - nul - 1) : size - file_size - 1);
    } else {
        header = strdup("Bearer ");
    }
    if (!header) fuzz_fail("out of memory");
    const srv_token *t = srv_auth_check(a, header);
    if (t && (!t->name || !t->name[0])) fuzz_fail("the header finds an entry without a name");
    double retry;
    if (t && !srv_rate_allow(a, t, 1 + (int)(size % 7), 1.0, &retry))
        fuzz_fail("a token's first request is refused");
    char address[64];
    snprintf(address, sizeof address, "%s", header);
    if (!t) srv_auth_guessed_wrong(a, address, 1.0);
    srv_auth_may_guess(a, address, 2.0, &retry);
    free(header);
    srv_auth_free(a);
    return 0;
}
