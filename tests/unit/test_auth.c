/*
 * test_auth.c: the tokens file (hashed and plain entries, every refusal with
 * its entry and field), Bearer header parsing, and the per-token rate
 * buckets driven by a fake clock.
 *
 * Digests are published SHA-256 test values (FIPS 180-2's "abc", and
 * "hello"), not values computed by the code under test.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/auth.h"

#define SHA256_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define SHA256_HELLO_UPPER "2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"
#define PLAIN_TOKEN "s3cret-Token_1.~+/=="

static char dir[384];
static char tokens_path[512];

static void make_dir(void) {
    snprintf(dir, sizeof dir, "/tmp/lensd-auth-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(tokens_path, sizeof tokens_path, "%s/tokens.json", dir);
}

static void remove_dir(void) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* Writes text as the tokens file and loads it. */
static srv_auth *load_text(const char *text, lens_err *err) {
    FILE *f = fopen(tokens_path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return srv_auth_load(tokens_path, err);
}

/* Three entries: alice (hashed, read), ops (plain, admin), bob (hashed in
 * upper-case hex, read). */
static srv_auth *load_three(void) {
    lens_err err = {0};
    srv_auth *a =
        load_text("[{\"name\": \"alice\", \"role\": \"read\", \"sha256\": \"" SHA256_ABC "\"},"
                  " {\"name\": \"ops\", \"role\": \"admin\", \"token\": \"" PLAIN_TOKEN "\"},"
                  " {\"name\": \"bob\", \"role\": \"read\", \"sha256\": "
                  "\"" SHA256_HELLO_UPPER "\"}]",
                  &err);
    cr_assert_not_null(a, "%s", err.msg);
    return a;
}

/* Asserts that text is refused with a message holding the file name, a and
 * b (if not NULL). */
static void expect_load_error(const char *text, const char *a, const char *b) {
    lens_err err = {0};
    srv_auth *auth = load_text(text, &err);
    cr_assert_null(auth, "accepted: %s", text);
    cr_assert(strstr(err.msg, "tokens.json"), "no file name in: %s", err.msg);
    cr_assert(strstr(err.msg, a), "\"%s\" not in: %s (input: %s)", a, err.msg, text);
    if (b) cr_assert(strstr(err.msg, b), "\"%s\" not in: %s (input: %s)", b, err.msg, text);
}

TestSuite(auth, .init = make_dir, .fini = remove_dir);

/* ---- loading and checking ------------------------------------------------------ */

Test(auth, hashed_and_plain_entries) {
    srv_auth *a = load_three();
    cr_assert_eq(srv_auth_count(a), 3);
    const srv_token *t = srv_auth_check(a, "Bearer abc");
    cr_assert_not_null(t);
    cr_assert_str_eq(t->name, "alice");
    cr_assert_not(t->admin);
    t = srv_auth_check(a, "Bearer " PLAIN_TOKEN);
    cr_assert_not_null(t);
    cr_assert_str_eq(t->name, "ops");
    cr_assert(t->admin);
    t = srv_auth_check(a, "Bearer hello");
    cr_assert_not_null(t, "upper-case hex digests are accepted");
    cr_assert_str_eq(t->name, "bob");
    cr_assert_eq(srv_auth_check(a, "bearer abc"), srv_auth_check(a, "Bearer abc"),
                 "the scheme is case-insensitive");
    cr_assert_eq(srv_auth_check(a, "BEARER abc"), srv_auth_check(a, "Bearer abc"));
    srv_auth_free(a);
    srv_auth_free(NULL);
}

Test(auth, wrong_tokens_are_refused) {
    srv_auth *a = load_three();
    const char *wrong[] = {"Bearer abd",
                           "Bearer ab",
                           "Bearer abcd",
                           "Bearer ABC",
                           "Bearer " SHA256_ABC, /* the digest is not the token */
                           "Bearer s3cret-Token_1.~+/=",
                           "Bearer hello="};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++)
        cr_assert_null(srv_auth_check(a, wrong[i]), "%s", wrong[i]);
    srv_auth_free(a);
}

Test(auth, malformed_headers_are_refused) {
    srv_auth *a = load_three();
    const char *bad[] = {"Basic abc",
                         "Basic YWxpY2U6YWJj",
                         "Bearer",
                         "Bearer ",
                         "Bearer  abc",
                         " Bearer abc",
                         "Bearer abc ",
                         "Bearer abc abc",
                         "Bearerabc",
                         "Bearer\tabc",
                         "Bearer\nabc",
                         "Bearer a\"bc",
                         "Bearer =abc",
                         "Bearer ab=c",
                         "",
                         "Token abc",
                         "abc",
                         "Bearer: abc",
                         "Bearer abc\r\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_null(srv_auth_check(a, bad[i]), "accepted \"%s\"", bad[i]);
    cr_assert_null(srv_auth_check(a, NULL));
    cr_assert_null(srv_auth_check(NULL, "Bearer abc"));
    srv_auth_free(a);
}

Test(auth, load_refusals_name_entry_and_field) {
    expect_load_error("{\"name\": \"alice\"}", "non-empty list", NULL);
    expect_load_error("[]", "non-empty list", NULL);
    expect_load_error("[\"abc\"]", "[0]: must be an object", NULL);
    expect_load_error("[{\"name\": \"a\", \"role\": \"read\", \"token\": \"x\", \"password\": 1}]",
                      "[0].password: unknown key", NULL);
    expect_load_error("[{\"role\": \"read\", \"token\": \"x\"}]", "[0].name: is required", NULL);
    expect_load_error("[{\"name\": \"\", \"role\": \"read\", \"token\": \"x\"}]", "[0].name",
                      "non-empty");
    expect_load_error("[{\"name\": 3, \"role\": \"read\", \"token\": \"x\"}]", "[0].name",
                      "must be a string");
    expect_load_error("[{\"name\": \"a\", \"token\": \"x\"}]", "[0].role: is required", NULL);
    expect_load_error("[{\"name\": \"a\", \"role\": \"write\", \"token\": \"x\"}]", "[0].role",
                      "\"write\"");
    expect_load_error("[{\"name\": \"a\", \"role\": \"read\", \"token\": \"x\"},"
                      " {\"name\": \"b\", \"role\": \"read\"}]",
                      "[1] (\"b\")", "exactly one of \"sha256\"");
    expect_load_error("[{\"name\": \"a\", \"role\": \"read\", \"token\": \"x\", "
                      "\"sha256\": \"" SHA256_ABC "\"}]",
                      "[0] (\"a\")", "exactly one of \"sha256\"");
    expect_load_error("[{\"name\": \"a\", \"role\": \"read\", \"sha256\": \"abcd\"}]", "[0].sha256",
                      "64 hexadecimal digits");
    expect_load_error("[{\"name\": \"a\", \"role\": \"read\", \"sha256\": "
                      "\"zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"}]",
                      "[0].sha256", "64 hexadecimal digits");
    expect_load_error("[{\"name\": \"a\", \"role\": \"read\", \"sha256\": \"" SHA256_ABC "0\"}]",
                      "[0].sha256", "64 hexadecimal digits");
    expect_load_error("[{\"name\": \"a\", \"role\": \"read\", \"sha256\": 5}]", "[0].sha256",
                      "must be a string");
    expect_load_error("[{\"name\": \"a\", \"role\": \"read\", \"token\": \"has space\"}]",
                      "[0].token", "Bearer header cannot carry");
    expect_load_error("[{\"name\": \"a\", \"role\": \"read\", \"token\": \"\"}]", "[0].token",
                      "non-empty");
    expect_load_error("[{\"name\": \"a\", \"role\": \"read\", \"token\": \"x\"}, "
                      "{\"name\": \"a\", \"role\": \"admin\", \"token\": \"y\"}]",
                      "[1].name", "duplicate name \"a\"");
    expect_load_error("[{\"name\": \"a\", \"role\": \"read\", \"token\": \"abc\"}, "
                      "{\"name\": \"b\", \"role\": \"admin\", \"sha256\": \"" SHA256_ABC "\"}]",
                      "[1] (\"b\")", "same token as entry 0");
    expect_load_error("[{\"name\": \"a\", \"role\": \"read\", \"token\": \"x\",}]", "line 1", NULL);
    expect_load_error("[{\"name\": \"a\", \"name\": \"b\", \"role\": \"read\", \"token\": \"x\"}]",
                      "duplicate", NULL);
}

Test(auth, missing_file_is_named) {
    lens_err err = {0};
    cr_assert_null(srv_auth_load("/nonexistent/lensd-tokens.json", &err));
    cr_assert(strstr(err.msg, "/nonexistent/lensd-tokens.json"), "%s", err.msg);
}

/* ---- rate buckets -------------------------------------------------------------- */

Test(auth, rate_bucket_exhausts_and_refills) {
    srv_auth *a = load_three();
    const srv_token *alice = srv_auth_check(a, "Bearer abc");
    double retry = -1;
    /* 60 per minute: the bucket starts with 60 and refills one a second
     * (times below are exact in binary, so the arithmetic is too). */
    for (int i = 0; i < 60; i++) {
        cr_assert(srv_rate_allow(a, alice, 60, 100.0, &retry), "request %d", i);
        cr_assert_eq(retry, 0.0);
    }
    cr_assert_not(srv_rate_allow(a, alice, 60, 100.0, &retry));
    cr_assert_float_eq(retry, 1.0, 1e-12);
    cr_assert_not(srv_rate_allow(a, alice, 60, 100.5, &retry));
    cr_assert_float_eq(retry, 0.5, 1e-12);
    cr_assert_not(srv_rate_allow(a, alice, 60, 100.75, &retry));
    cr_assert_float_eq(retry, 0.25, 1e-12);
    cr_assert(srv_rate_allow(a, alice, 60, 101.0, &retry));
    cr_assert_eq(retry, 0.0);
    cr_assert_not(srv_rate_allow(a, alice, 60, 101.0, &retry));
    cr_assert_float_eq(retry, 1.0, 1e-12);

    /* A long idle time refills to the capacity, not beyond. */
    for (int i = 0; i < 60; i++)
        cr_assert(srv_rate_allow(a, alice, 60, 10000.0, NULL));
    cr_assert_not(srv_rate_allow(a, alice, 60, 10000.0, NULL));

    /* A clock step backwards refills nothing. */
    cr_assert_not(srv_rate_allow(a, alice, 60, 50.0, &retry));
    cr_assert_float_eq(retry, 1.0, 1e-12);
    cr_assert_not(srv_rate_allow(a, alice, 60, 10000.5, &retry));
    cr_assert(srv_rate_allow(a, alice, 60, 10001.0, &retry));
    srv_auth_free(a);
}

/* ---- wrong-token throttling per address ------------------------------------------ */

Test(auth, wrong_tokens_are_throttled_per_address) {
    srv_auth *a = load_three();
    double retry = -1;
    /* 10 wrong tokens a minute: a bucket of 10 refilling one every 6 s */
    for (int i = 0; i < 10; i++) {
        cr_assert(srv_auth_may_guess(a, "10.0.0.1", 100.0, &retry), "guess %d", i);
        cr_assert_eq(retry, 0.0);
        srv_auth_guessed_wrong(a, "10.0.0.1", 100.0);
    }
    cr_assert_not(srv_auth_may_guess(a, "10.0.0.1", 100.0, &retry));
    cr_assert_float_eq(retry, 6.0, 1e-9);
    cr_assert_not(srv_auth_may_guess(a, "10.0.0.1", 103.0, &retry));
    cr_assert_float_eq(retry, 3.0, 1e-9);
    cr_assert(srv_auth_may_guess(a, "10.0.0.2", 100.0, &retry), "another address is not");
    cr_assert(srv_auth_may_guess(a, "::1", 100.0, &retry));
    cr_assert(srv_auth_may_guess(a, "10.0.0.1", 106.0, &retry), "one refilled after 6 s");
    srv_auth_guessed_wrong(a, "10.0.0.1", 106.0);
    cr_assert_not(srv_auth_may_guess(a, "10.0.0.1", 106.0, &retry));
    /* a long quiet spell refills to 10, not beyond */
    for (int i = 0; i < 10; i++)
        srv_auth_guessed_wrong(a, "10.0.0.1", 10000.0);
    cr_assert_not(srv_auth_may_guess(a, "10.0.0.1", 10000.0, &retry));
    srv_auth_free(a);
}

Test(auth, wrong_token_table_forgets_the_oldest) {
    srv_auth *a = load_three();
    double retry;
    for (int i = 0; i < 10; i++)
        srv_auth_guessed_wrong(a, "10.9.9.9", 1.0);
    cr_assert_not(srv_auth_may_guess(a, "10.9.9.9", 1.0, &retry));
    char address[32];
    for (int i = 0; i < 1024; i++) { /* 1,024 newer addresses push it out */
        snprintf(address, sizeof address, "10.1.%d.%d", i / 256, i % 256);
        srv_auth_guessed_wrong(a, address, 2.0 + i * 1e-3);
    }
    cr_assert(srv_auth_may_guess(a, "10.9.9.9", 3.0, &retry));
    cr_assert(srv_auth_may_guess(a, "10.1.3.255", 3.0, &retry), "9 of 10 left");
    srv_auth_free(a);
}

Test(auth, rate_buckets_are_per_token) {
    srv_auth *a = load_three();
    const srv_token *alice = srv_auth_check(a, "Bearer abc");
    const srv_token *bob = srv_auth_check(a, "Bearer hello");
    cr_assert(srv_rate_allow(a, alice, 1, 0.0, NULL));
    cr_assert_not(srv_rate_allow(a, alice, 1, 0.0, NULL));
    cr_assert(srv_rate_allow(a, bob, 1, 0.0, NULL), "bob's bucket is his own");
    cr_assert_not(srv_rate_allow(a, bob, 1, 1.0, NULL));
    cr_assert(srv_rate_allow(a, alice, 1, 61.0, NULL));
    srv_auth_free(a);
}

Test(auth, rate_zero_is_unlimited) {
    srv_auth *a = load_three();
    const srv_token *alice = srv_auth_check(a, "Bearer abc");
    double retry = -1;
    for (int i = 0; i < 10000; i++)
        cr_assert(srv_rate_allow(a, alice, 0, 0.0, &retry));
    cr_assert_eq(retry, 0.0);
    srv_auth_free(a);
}

Test(auth, rate_refuses_foreign_tokens) {
    srv_auth *a = load_three();
    srv_auth *b = load_three();
    const srv_token *from_b = srv_auth_check(b, "Bearer abc");
    srv_token fake = {.name = "alice", .admin = true};
    cr_assert_not(srv_rate_allow(a, from_b, 10, 0.0, NULL));
    cr_assert_not(srv_rate_allow(a, &fake, 10, 0.0, NULL));
    cr_assert_not(srv_rate_allow(a, NULL, 10, 0.0, NULL));
    srv_auth_free(b);
    srv_auth_free(a);
}

Test(auth, rate_smaller_capacity_applies_at_once) {
    srv_auth *a = load_three();
    const srv_token *alice = srv_auth_check(a, "Bearer abc");
    cr_assert(srv_rate_allow(a, alice, 100, 0.0, NULL)); /* 99 left */
    cr_assert(srv_rate_allow(a, alice, 2, 0.0, NULL));   /* capped to 2, takes 1 */
    cr_assert(srv_rate_allow(a, alice, 2, 0.0, NULL));
    cr_assert_not(srv_rate_allow(a, alice, 2, 0.0, NULL));
    srv_auth_free(a);
}

typedef struct hammer {
    srv_auth *a;
    const srv_token *t;
    int allowed;
} hammer;

static void *hammer_bucket(void *arg) {
    hammer *h = arg;
    for (int i = 0; i < 2000; i++)
        h->allowed += srv_rate_allow(h->a, h->t, 500, 0.0, NULL);
    return NULL;
}

Test(auth, rate_is_thread_safe) {
    srv_auth *a = load_three();
    const srv_token *alice = srv_auth_check(a, "Bearer abc");
    enum { N_THREADS = 8 };
    pthread_t th[N_THREADS];
    hammer h[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        h[i] = (hammer){.a = a, .t = alice};
        cr_assert_eq(pthread_create(&th[i], NULL, hammer_bucket, &h[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        total += h[i].allowed;
    }
    cr_assert_eq(total, 500, "a full bucket of 500 at a frozen clock gives exactly 500");
    srv_auth_free(a);
}
