/*
 * test_config.c: `lensd serve`'s configuration: defaults, the JSON file,
 * flags over the file, sizes with units, paths relative to the file, and
 * every refusal with the field it names.
 *
 * Each test writes its files into a fresh temporary directory; expected
 * values come from the documented defaults and from the test's own input.
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/model.h"
#include "server/config.h"

static char dir[384];

static void make_dir(void) {
    snprintf(dir, sizeof dir, "/tmp/lensd-config-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* dir/name into buf. */
static const char *in_dir(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", dir, name);
    return buf;
}

static void write_text(const char *name, const char *text) {
    char path[1024];
    FILE *f = fopen(in_dir(path, sizeof path, name), "w");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

static void make_subdir(const char *name) {
    char path[1024];
    cr_assert_eq(mkdir(in_dir(path, sizeof path, name), 0755), 0, "%s", path);
}

/* Loads with argv = {"serve", args..., NULL}. */
static int load_args(srv_config *cfg, lens_err *err, ...) {
    char *argv[64] = {"serve"};
    int argc = 1;
    va_list ap;
    va_start(ap, err);
    for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 63;)
        argv[argc++] = a;
    va_end(ap);
    return srv_config_load(cfg, argc, argv, err);
}

/* Writes dir/lensd.json with text and loads it with no other flags. */
static int load_json(srv_config *cfg, lens_err *err, const char *text) {
    char path[1024];
    write_text("lensd.json", text);
    return load_args(cfg, err, "--config", in_dir(path, sizeof path, "lensd.json"), NULL);
}

/* Asserts that loading text fails with a message holding every string of
 * the NULL-terminated list, and that cfg is left empty. */
static void expect_json_error(const char *text, ...) {
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_json(&cfg, &err, text), -1, "accepted: %s", text);
    cr_assert_null(cfg.host);
    cr_assert_eq(cfg.n_models, 0);
    va_list ap;
    va_start(ap, text);
    for (const char *s; (s = va_arg(ap, const char *)) != NULL;)
        cr_assert(strstr(err.msg, s), "\"%s\" not in: %s (input: %s)", s, err.msg, text);
    va_end(ap);
}

static void expect_msg(const lens_err *err, const char *a, const char *b) {
    cr_assert(strstr(err->msg, a), "\"%s\" not in: %s", a, err->msg);
    if (b) cr_assert(strstr(err->msg, b), "\"%s\" not in: %s", b, err->msg);
}

TestSuite(config, .init = make_dir, .fini = remove_dir);

/* ---- defaults --------------------------------------------------------------- */

Test(config, defaults_without_flags) {
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_args(&cfg, &err, NULL), 0, "%s", err.msg);
    cr_assert_str_eq(cfg.host, "127.0.0.1");
    cr_assert_eq(cfg.port, 8080);
    char web[PATH_MAX];
    cr_assert_eq(srv_data_dir("web", web, sizeof web), 0, "%s", web);
    cr_assert_str_eq(cfg.web_dir, web);
    cr_assert_null(cfg.tokens_file);
    cr_assert_null(cfg.tls_cert);
    cr_assert_null(cfg.tls_key);
    cr_assert_not(cfg.insecure);
    cr_assert_eq(cfg.http_threads, 4);
    /* No model given: the bundled ones, in name order, on the CPU. */
    char models[PATH_MAX];
    cr_assert_eq(srv_data_dir("models", models, sizeof models), 0, "%s", models);
    cr_assert_eq(cfg.n_models, 2);
    const char *bundled[] = {"brackets", "induction-2l"};
    for (int i = 0; i < 2; i++) {
        char source[PATH_MAX + 32];
        snprintf(source, sizeof source, "%s/%s", models, bundled[i]);
        cr_assert_str_eq(cfg.models[i].name, bundled[i]);
        cr_assert_str_eq(cfg.models[i].source, source);
        cr_assert_str_eq(cfg.models[i].device, "cpu");
        cr_assert_eq(cfg.models[i].load.processing, -1);
    }
    cr_assert_eq(cfg.limits.max_body_bytes, (size_t)8 << 20);
    cr_assert_eq(cfg.limits.max_batch_tokens, 1048576);
    cr_assert_eq(cfg.limits.max_tokens, 0);
    cr_assert_eq(cfg.limits.max_response_bytes, (size_t)1 << 30);
    cr_assert_eq(cfg.limits.max_kept_cache_bytes, (size_t)2 << 30);
    cr_assert_eq(cfg.limits.kept_cache_ttl_s, 600.0);
    cr_assert_eq(cfg.limits.queue_length, 256);
    cr_assert_eq(cfg.limits.request_timeout_s, 300.0);
    cr_assert_eq(cfg.limits.shutdown_timeout_s, 30.0);
    cr_assert_eq(cfg.limits.requests_per_minute, 0);
    cr_assert_eq(cfg.limits.max_patch_tokens, 20000000);
    cr_assert_eq(cfg.limits.max_generate_tokens, 1000000);
    cr_assert_eq(cfg.limits.max_connections_per_client, 256);
    srv_config_free(&cfg);
    srv_config_free(&cfg); /* zeroed by the first call */
    srv_config_free(NULL);
}

Test(config, empty_file_keeps_defaults) {
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_json(&cfg, &err, "{}"), 0, "%s", err.msg);
    cr_assert_str_eq(cfg.host, "127.0.0.1");
    cr_assert_eq(cfg.port, 8080);
    cr_assert_eq(cfg.limits.queue_length, 256);
    srv_config_free(&cfg);
}

Test(config, file_model_defaults) {
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_json(&cfg, &err, "{\"models\": [{\"name\": \"gpt2\", \"id\": \"gpt2\"}]}"), 0,
                 "%s", err.msg);
    cr_assert_eq(cfg.n_models, 1);
    cr_assert_str_eq(cfg.models[0].name, "gpt2");
    cr_assert_str_eq(cfg.models[0].source, "gpt2");
    cr_assert_str_eq(cfg.models[0].device, "cpu");
    cr_assert_eq(cfg.models[0].load.processing, -1);
    cr_assert_not(cfg.models[0].load.use_attn_result);
    cr_assert_not(cfg.models[0].load.use_split_qkv_input);
    cr_assert_not(cfg.models[0].load.use_hook_mlp_in);
    cr_assert_not(cfg.models[0].load.use_attn_in);
    srv_config_free(&cfg);
}

/* ---- the file ------------------------------------------------------------------ */

Test(config, file_sets_every_field) {
    make_subdir("web");
    make_subdir("ckpt");
    write_text("tokens.json", "[]");
    write_text("cert.pem", "x");
    write_text("key.pem", "x");
    srv_config cfg;
    lens_err err = {0};
    int rc =
        load_json(&cfg, &err,
                  "{\"host\": \"0.0.0.0\", \"port\": 0, \"web\": \"web\", "
                  "\"tokens_file\": \"tokens.json\", "
                  "\"tls\": {\"cert\": \"cert.pem\", \"key\": \"key.pem\"}, "
                  "\"insecure\": true, \"http_threads\": 16, "
                  "\"models\": ["
                  "  {\"name\": \"a\", \"id\": \"EleutherAI/pythia-70m\", \"device\": \"cuda\","
                  "   \"processing\": \"none\", \"use_attn_result\": true,"
                  "   \"use_split_qkv_input\": true, \"use_hook_mlp_in\": true,"
                  "   \"use_attn_in\": true},"
                  "  {\"name\": \"b.v2_x-1\", \"path\": \"ckpt\", \"device\": \"cuda:12\","
                  "   \"processing\": \"fold_ln,center_unembed\"}],"
                  "\"limits\": {\"max_body_bytes\": 1000, \"max_batch_tokens\": 3, "
                  "\"max_tokens\": 128, \"max_response_bytes\": \"2MiB\", "
                  "\"max_kept_cache_bytes\": 0, \"kept_cache_ttl_s\": 1.5, "
                  "\"queue_length\": 1, \"request_timeout_s\": 30, \"shutdown_timeout_s\": 4, "
                  "\"requests_per_minute\": 120, \"max_patch_tokens\": 5000}}");
    cr_assert_eq(rc, 0, "%s", err.msg);
    char path[1024];
    cr_assert_str_eq(cfg.host, "0.0.0.0");
    cr_assert_eq(cfg.port, 0);
    cr_assert_str_eq(cfg.web_dir, in_dir(path, sizeof path, "web"));
    cr_assert_str_eq(cfg.tokens_file, in_dir(path, sizeof path, "tokens.json"));
    cr_assert_str_eq(cfg.tls_cert, in_dir(path, sizeof path, "cert.pem"));
    cr_assert_str_eq(cfg.tls_key, in_dir(path, sizeof path, "key.pem"));
    cr_assert(cfg.insecure);
    cr_assert_eq(cfg.http_threads, 16);
    cr_assert_eq(cfg.n_models, 2);
    cr_assert_str_eq(cfg.models[0].name, "a");
    cr_assert_str_eq(cfg.models[0].source, "EleutherAI/pythia-70m");
    cr_assert_str_eq(cfg.models[0].device, "cuda");
    cr_assert_eq(cfg.models[0].load.processing, LENS_PROC_NONE);
    cr_assert(cfg.models[0].load.use_attn_result);
    cr_assert(cfg.models[0].load.use_split_qkv_input);
    cr_assert(cfg.models[0].load.use_hook_mlp_in);
    cr_assert(cfg.models[0].load.use_attn_in);
    cr_assert_str_eq(cfg.models[1].name, "b.v2_x-1");
    cr_assert_str_eq(cfg.models[1].source, in_dir(path, sizeof path, "ckpt"));
    cr_assert_str_eq(cfg.models[1].device, "cuda:12");
    cr_assert_eq(cfg.models[1].load.processing, LENS_PROC_FOLD_LN | LENS_PROC_CENTER_UNEMBED);
    cr_assert_not(cfg.models[1].load.use_attn_result);
    cr_assert_eq(cfg.limits.max_body_bytes, 1000);
    cr_assert_eq(cfg.limits.max_batch_tokens, 3);
    cr_assert_eq(cfg.limits.max_patch_tokens, 5000);
    cr_assert_eq(cfg.limits.max_tokens, 128);
    cr_assert_eq(cfg.limits.max_response_bytes, (size_t)2 << 20);
    cr_assert_eq(cfg.limits.max_kept_cache_bytes, 0);
    cr_assert_eq(cfg.limits.kept_cache_ttl_s, 1.5);
    cr_assert_eq(cfg.limits.queue_length, 1);
    cr_assert_eq(cfg.limits.request_timeout_s, 30.0);
    cr_assert_eq(cfg.limits.shutdown_timeout_s, 4.0);
    cr_assert_eq(cfg.limits.requests_per_minute, 120);
    srv_config_free(&cfg);
}

Test(config, processing_specs) {
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_json(&cfg, &err,
                           "{\"models\": [{\"name\": \"a\", \"id\": \"x\", \"processing\": "
                           "\"default\"}, {\"name\": \"b\", \"id\": \"x\", \"processing\": "
                           "\"center_writing_weights,fold_value_biases\"}]}"),
                 0, "%s", err.msg);
    cr_assert_eq(cfg.models[0].load.processing, -1, "\"default\" is the model's own default");
    cr_assert_eq(cfg.models[1].load.processing,
                 LENS_PROC_CENTER_WRITING_WEIGHTS | LENS_PROC_FOLD_VALUE_BIASES);
    srv_config_free(&cfg);
}

Test(config, null_paths_mean_none) {
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_json(&cfg, &err, "{\"web\": null, \"tokens_file\": null, \"tls\": null}"), 0,
                 "%s", err.msg);
    cr_assert_null(cfg.web_dir);
    cr_assert_null(cfg.tokens_file);
    cr_assert_null(cfg.tls_cert);
    srv_config_free(&cfg);
}

Test(config, relative_paths_follow_the_file) {
    make_subdir("conf");
    make_subdir("conf/web");
    make_subdir("conf/models");
    make_subdir("conf/models/m");
    make_subdir("static");
    write_text("conf/tokens.json", "[]");
    write_text("conf/lensd.json", "{\"web\": \"../static\", \"tokens_file\": \"tokens.json\", "
                                  "\"models\": [{\"name\": \"m\", \"path\": \"models/m\"}]}");
    /* An absolute --config: paths become dir/conf/... */
    srv_config cfg;
    lens_err err = {0};
    char path[1024], want[1024];
    cr_assert_eq(
        load_args(&cfg, &err, "--config", in_dir(path, sizeof path, "conf/lensd.json"), NULL), 0,
        "%s", err.msg);
    cr_assert_str_eq(cfg.web_dir, in_dir(want, sizeof want, "conf/../static"));
    cr_assert_str_eq(cfg.tokens_file, in_dir(want, sizeof want, "conf/tokens.json"));
    cr_assert_str_eq(cfg.models[0].source, in_dir(want, sizeof want, "conf/models/m"));
    srv_config_free(&cfg);

    /* A relative --config: paths stay relative to the working directory. */
    cr_assert_eq(chdir(dir), 0);
    cr_assert_eq(load_args(&cfg, &err, "--config", "conf/lensd.json", NULL), 0, "%s", err.msg);
    cr_assert_str_eq(cfg.web_dir, "conf/../static");
    cr_assert_str_eq(cfg.tokens_file, "conf/tokens.json");
    cr_assert_str_eq(cfg.models[0].source, "conf/models/m");
    srv_config_free(&cfg);

    /* A config in the working directory: "./". */
    cr_assert_eq(chdir("conf"), 0);
    cr_assert_eq(load_args(&cfg, &err, "--config", "lensd.json", NULL), 0, "%s", err.msg);
    cr_assert_str_eq(cfg.tokens_file, "./tokens.json");
    srv_config_free(&cfg);
}

Test(config, absolute_paths_are_kept) {
    make_subdir("web");
    char path[1024], json[2048];
    snprintf(json, sizeof json, "{\"web\": \"%s\"}", in_dir(path, sizeof path, "web"));
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_json(&cfg, &err, json), 0, "%s", err.msg);
    cr_assert_str_eq(cfg.web_dir, path);
    srv_config_free(&cfg);
}

/* ---- sizes -------------------------------------------------------------------- */

/* The bytes that a max_response_bytes value of json loads to. */
static size_t size_of(const char *json) {
    char text[256];
    snprintf(text, sizeof text, "{\"limits\": {\"max_response_bytes\": %s}}", json);
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_json(&cfg, &err, text), 0, "%s: %s", json, err.msg);
    size_t n = cfg.limits.max_response_bytes;
    srv_config_free(&cfg);
    return n;
}

Test(config, size_units) {
    cr_assert_eq(size_of("12345"), 12345);
    cr_assert_eq(size_of("\"7\""), 7);
    cr_assert_eq(size_of("\"100B\""), 100);
    cr_assert_eq(size_of("\"8MiB\""), (size_t)8 << 20);
    cr_assert_eq(size_of("\"1GiB\""), (size_t)1 << 30);
    cr_assert_eq(size_of("\"1.5GiB\""), (size_t)3 << 29);
    cr_assert_eq(size_of("\"512 KiB\""), (size_t)512 << 10);
    cr_assert_eq(size_of("\"2TiB\""), (size_t)2 << 40);
    cr_assert_eq(size_of("\"3kB\""), 3000);
    cr_assert_eq(size_of("\"2mb\""), 2000000, "units are case-insensitive");
    cr_assert_eq(size_of("\"4GB\""), (size_t)4000000000);
    cr_assert_eq(size_of("\"1TB\""), (size_t)1000000000000);
    cr_assert_eq(size_of("\"8mib\""), (size_t)8 << 20);
}

Test(config, bad_sizes_are_named) {
    const char *bad[] = {"\"8XB\"",  "\"MiB\"", "\"8.MiB\"",  "\"-1MiB\"", "\"8 \"",  "\"\"",
                         "\"2PiB\"", "\"1e3\"", "\"8  MiB\"", "\" 8MiB\"", "\"0x10\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, "{\"limits\": {\"max_body_bytes\": %s}}", bad[i]);
        expect_json_error(text, "limits.max_body_bytes", "not a size", NULL);
    }
    expect_json_error("{\"limits\": {\"max_body_bytes\": 1.5}}", "limits.max_body_bytes",
                      "not a number", NULL);
    expect_json_error("{\"limits\": {\"max_kept_cache_bytes\": true}}",
                      "limits.max_kept_cache_bytes", "not a boolean", NULL);
    expect_json_error("{\"limits\": {\"max_body_bytes\": \"2000TiB\"}}", "limits.max_body_bytes",
                      "out of range", NULL);
    expect_json_error("{\"limits\": {\"max_body_bytes\": 0}}", "limits.max_body_bytes",
                      "out of range", NULL);
    expect_json_error("{\"limits\": {\"max_response_bytes\": \"0MiB\"}}",
                      "limits.max_response_bytes", "out of range", NULL);
    expect_json_error("{\"limits\": {\"max_kept_cache_bytes\": -1}}", "limits.max_kept_cache_bytes",
                      "out of range", NULL);
    expect_json_error("{\"limits\": {\"max_kept_cache_bytes\": 9223372036854775807}}",
                      "limits.max_kept_cache_bytes", "out of range", NULL);
}

/* ---- refusals in the file ------------------------------------------------------- */

Test(config, unknown_keys_are_named) {
    expect_json_error("{\"hots\": \"x\"}", "lensd.json", "hots: unknown key", "host", NULL);
    expect_json_error("{\"tls\": {\"crt\": \"a\"}}", "tls.crt: unknown key", NULL);
    expect_json_error("{\"limits\": {\"max_prompt\": 3}}", "limits.max_prompt: unknown key",
                      "max_batch_tokens", NULL);
    expect_json_error("{\"models\": [{\"name\": \"a\", \"id\": \"x\"}, "
                      "{\"name\": \"b\", \"id\": \"x\", \"devcie\": \"cpu\"}]}",
                      "models[1].devcie: unknown key", NULL);
}

Test(config, wrong_types_are_named) {
    expect_json_error("[]", "must be a JSON object", NULL);
    expect_json_error("{\"host\": 5}", "host: must be a string", NULL);
    expect_json_error("{\"host\": \"\"}", "host: must be a non-empty string", NULL);
    expect_json_error("{\"port\": \"8080\"}", "port: must be an integer", NULL);
    expect_json_error("{\"port\": 80.5}", "port: must be an integer", NULL);
    expect_json_error("{\"web\": 1}", "web: must be a string", NULL);
    expect_json_error("{\"tokens_file\": []}", "tokens_file: must be a string", NULL);
    expect_json_error("{\"tls\": \"cert.pem\"}", "tls: must be an object", NULL);
    expect_json_error("{\"tls\": {\"cert\": 3}}", "tls.cert: must be a string", NULL);
    expect_json_error("{\"insecure\": \"yes\"}", "insecure: must be true or false", NULL);
    expect_json_error("{\"http_threads\": null}", "http_threads: must be an integer", NULL);
    expect_json_error("{\"models\": {}}", "models: must be a list", NULL);
    expect_json_error("{\"models\": [\"gpt2\"]}", "models[0]: must be an object", NULL);
    expect_json_error("{\"models\": [{\"name\": 2, \"id\": \"x\"}]}",
                      "models[0].name: must be a string", NULL);
    expect_json_error("{\"models\": [{\"name\": \"a\", \"id\": 7}]}",
                      "models[0].id: must be a string", NULL);
    expect_json_error("{\"models\": [{\"name\": \"a\", \"path\": \"\"}]}",
                      "models[0].path: must be a non-empty string", NULL);
    expect_json_error("{\"models\": [{\"name\": \"a\", \"id\": \"x\", \"device\": 0}]}",
                      "models[0].device: must be a string", NULL);
    expect_json_error("{\"models\": [{\"name\": \"a\", \"id\": \"x\", \"processing\": false}]}",
                      "models[0].processing: must be a string", NULL);
    expect_json_error("{\"models\": [{\"name\": \"a\", \"id\": \"x\", \"dtype\": \"float16\"}]}",
                      "models[0].dtype: \"float16\"", "float32 only", NULL);
    expect_json_error("{\"models\": [{\"name\": \"a\", \"id\": \"x\", \"use_attn_in\": 1}]}",
                      "models[0].use_attn_in: must be true or false", NULL);
    expect_json_error("{\"limits\": []}", "limits: must be an object", NULL);
    expect_json_error("{\"limits\": {\"max_batch_tokens\": 1.5}}",
                      "limits.max_batch_tokens: must be an "
                      "integer",
                      NULL);
    expect_json_error("{\"limits\": {\"kept_cache_ttl_s\": \"600\"}}",
                      "limits.kept_cache_ttl_s: must be a number", NULL);
    expect_json_error("{\"limits\": {\"requests_per_minute\": \"10\"}}",
                      "limits.requests_per_minute: must be an integer", NULL);
}

Test(config, out_of_range_numbers_are_named) {
    expect_json_error("{\"port\": 65536}", "port: 65536 is out of range", NULL);
    expect_json_error("{\"port\": -1}", "port: -1 is out of range", NULL);
    expect_json_error("{\"http_threads\": 0}", "http_threads: 0 is out of range", NULL);
    expect_json_error("{\"http_threads\": 100000}", "http_threads", "out of range", NULL);
    expect_json_error("{\"limits\": {\"max_batch_tokens\": 0}}", "limits.max_batch_tokens",
                      "out of range", NULL);
    expect_json_error("{\"limits\": {\"max_tokens\": -1}}", "limits.max_tokens", "out of range",
                      NULL);
    expect_json_error("{\"limits\": {\"queue_length\": 0}}", "limits.queue_length", "out of range",
                      NULL);
    expect_json_error("{\"limits\": {\"kept_cache_ttl_s\": 0}}", "limits.kept_cache_ttl_s",
                      "out of range", NULL);
    expect_json_error("{\"limits\": {\"shutdown_timeout_s\": 0}}", "limits.shutdown_timeout_s",
                      "out of range", NULL);
    expect_json_error("{\"limits\": {\"max_connections_per_client\": 1025}}",
                      "limits.max_connections_per_client", "out of range", NULL);
    expect_json_error("{\"limits\": {\"request_timeout_s\": -5}}", "limits.request_timeout_s",
                      "out of range", NULL);
    expect_json_error("{\"limits\": {\"request_timeout_s\": 1e300}}", "limits.request_timeout_s",
                      "out of range", NULL);
    expect_json_error("{\"limits\": {\"requests_per_minute\": -1}}", "limits.requests_per_minute",
                      "out of range", NULL);
    expect_json_error("{\"limits\": {\"max_batch_tokens\": 4294967297}}", "limits.max_batch_tokens",
                      "out of range", NULL);
}

Test(config, model_refusals_are_named) {
    expect_json_error("{\"models\": [{\"name\": \"gpt2\", \"id\": \"gpt2\"}, "
                      "{\"name\": \"other\", \"id\": \"x\"}, "
                      "{\"name\": \"gpt2\", \"id\": \"gpt2-small\"}]}",
                      "models[2].name", "duplicate model name \"gpt2\"", NULL);
    expect_json_error("{\"models\": [{\"name\": \"a\", \"id\": \"x\"}, "
                      "{\"name\": \"b\", \"id\": \"x\", \"device\": \"gpu\"}]}",
                      "models[1].device", "\"gpu\" is not a device", NULL);
    const char *bad_devices[] = {"cuda:", "cuda:x", "cuda:-1", "cuda:12345",
                                 "CPU",   "cuda0",  "cpu:0"};
    for (size_t i = 0; i < sizeof bad_devices / sizeof bad_devices[0]; i++) {
        char text[256];
        snprintf(text, sizeof text,
                 "{\"models\": [{\"name\": \"a\", \"id\": \"x\", \"device\": \"%s\"}]}",
                 bad_devices[i]);
        expect_json_error(text, "models[0].device", "is not a device", NULL);
    }
    expect_json_error("{\"models\": [{\"name\": \"a\", \"id\": \"x\", "
                      "\"processing\": \"fold_ln,bogus\"}]}",
                      "models[0].processing", "\"bogus\"", NULL);
    expect_json_error("{\"models\": [{\"id\": \"x\"}]}", "models[0].name: is required", NULL);
    expect_json_error("{\"models\": [{\"name\": \"a\"}]}", "models[0]", "exactly one of \"path\"",
                      NULL);
    expect_json_error("{\"models\": [{\"name\": \"a\", \"id\": \"x\", \"path\": \"y\"}]}",
                      "models[0]", "exactly one of \"path\"", NULL);
    const char *bad_names[] = {"a/b", "..", ".hidden", "-x", "a b", "caf\\u00e9", "a?b"};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, "{\"models\": [{\"name\": \"%s\", \"id\": \"x\"}]}",
                 bad_names[i]);
        expect_json_error(text, "models[0].name", "is not a model name", NULL);
    }
    expect_json_error("{\"models\": [{\"name\": \"a\", \"path\": \"no-such-dir\"}]}",
                      "models[0].path", "no-such-dir", NULL);
}

Test(config, tls_needs_both_files) {
    write_text("cert.pem", "x");
    write_text("key.pem", "x");
    expect_json_error("{\"tls\": {\"cert\": \"cert.pem\"}}",
                      "lensd.json: tls.cert is given "
                      "without a TLS key",
                      "tls.key", NULL);
    expect_json_error("{\"tls\": {\"key\": \"key.pem\"}}",
                      "tls.key is given without a TLS "
                      "certificate",
                      "tls.cert", NULL);
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_json(&cfg, &err, "{\"tls\": {\"cert\": \"cert.pem\", \"key\": \"key.pem\"}}"),
                 0, "%s", err.msg);
    srv_config_free(&cfg);
}

Test(config, missing_files_are_named) {
    expect_json_error("{\"tokens_file\": \"nope.json\"}", "lensd.json: tokens_file", "nope.json",
                      "No such file", NULL);
    expect_json_error("{\"web\": \"nowhere\"}", "web", "nowhere", NULL);
    write_text("cert.pem", "x");
    expect_json_error("{\"tls\": {\"cert\": \"cert.pem\", \"key\": \"nokey.pem\"}}", "tls.key",
                      "nokey.pem", NULL);
    write_text("afile", "x");
    expect_json_error("{\"web\": \"afile\"}", "web", "is not a directory", NULL);
    make_subdir("adir");
    expect_json_error("{\"tokens_file\": \"adir\"}", "tokens_file", "is not a regular file", NULL);
}

Test(config, bad_config_files) {
    srv_config cfg;
    lens_err err = {0};
    char path[1024];
    cr_assert_eq(load_args(&cfg, &err, "--config", in_dir(path, sizeof path, "none.json"), NULL),
                 -1);
    expect_msg(&err, "--config", "none.json");
    expect_json_error("{\"port\": 80,}", "--config", "lensd.json: line 1", NULL);
    expect_json_error("{\"port\": 80, \"port\": 81}", "--config", "duplicate", NULL);
    expect_json_error("", "--config", NULL);
}

/* ---- flags ------------------------------------------------------------------------ */

Test(config, flags_set_every_field) {
    make_subdir("web");
    write_text("tokens.json", "[]");
    write_text("cert.pem", "x");
    write_text("key.pem", "x");
    char web[1024], tok[1024], cert[1024], key[1024];
    srv_config cfg;
    lens_err err = {0};
    int rc = load_args(&cfg, &err, "--host", "::", "--port", "0", "--threads", "2", "--insecure",
                       "--web", in_dir(web, sizeof web, "web"), "--tokens-file",
                       in_dir(tok, sizeof tok, "tokens.json"), "--tls-cert",
                       in_dir(cert, sizeof cert, "cert.pem"), "--tls-key",
                       in_dir(key, sizeof key, "key.pem"), "--model", "small=gpt2-small", "--model",
                       "local=../models/x=y", "--device", "cuda:1", NULL);
    cr_assert_eq(rc, 0, "%s", err.msg);
    cr_assert_str_eq(cfg.host, "::");
    cr_assert_eq(cfg.port, 0);
    cr_assert_eq(cfg.http_threads, 2);
    cr_assert(cfg.insecure);
    cr_assert_str_eq(cfg.web_dir, web);
    cr_assert_str_eq(cfg.tokens_file, tok);
    cr_assert_str_eq(cfg.tls_cert, cert);
    cr_assert_str_eq(cfg.tls_key, key);
    cr_assert_eq(cfg.n_models, 2);
    cr_assert_str_eq(cfg.models[0].name, "small");
    cr_assert_str_eq(cfg.models[0].source, "gpt2-small");
    cr_assert_str_eq(cfg.models[0].device, "cuda:1", "--device after --model still applies");
    cr_assert_eq(cfg.models[0].load.processing, -1);
    cr_assert_str_eq(cfg.models[1].name, "local");
    cr_assert_str_eq(cfg.models[1].source, "../models/x=y", "flag paths are kept as given");
    cr_assert_str_eq(cfg.models[1].device, "cuda:1");
    srv_config_free(&cfg);
}

Test(config, flag_models_default_to_cpu) {
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_args(&cfg, &err, "--model", "m=gpt2", NULL), 0, "%s", err.msg);
    cr_assert_str_eq(cfg.models[0].device, "cpu");
    srv_config_free(&cfg);
}

Test(config, flags_override_the_file) {
    make_subdir("web_file");
    make_subdir("web_flag");
    char path[1024], web_flag[1024], want[1024];
    write_text("lensd.json", "{\"host\": \"10.0.0.1\", \"port\": 9000, \"http_threads\": 8, "
                             "\"web\": \"web_file\", \"tokens_file\": \"missing.json\", "
                             "\"models\": [{\"name\": \"filemodel\", \"id\": \"gpt2\", "
                             "\"device\": \"cuda\"}], "
                             "\"limits\": {\"max_batch_tokens\": 5}}");
    write_text("tokens.json", "[]");
    srv_config cfg;
    lens_err err = {0};
    /* The file's tokens_file does not exist; the flag's replaces it before
     * files are checked. */
    int rc =
        load_args(&cfg, &err, "--port", "9001", "--config", in_dir(path, sizeof path, "lensd.json"),
                  "--web", in_dir(web_flag, sizeof web_flag, "web_flag"), "--tokens-file",
                  in_dir(want, sizeof want, "tokens.json"), "--model", "flagmodel=gpt2", NULL);
    cr_assert_eq(rc, 0, "%s", err.msg);
    cr_assert_str_eq(cfg.host, "10.0.0.1", "not given as a flag: the file's");
    cr_assert_eq(cfg.port, 9001);
    cr_assert_eq(cfg.http_threads, 8);
    cr_assert_str_eq(cfg.web_dir, web_flag);
    cr_assert_str_eq(cfg.tokens_file, want);
    cr_assert_eq(cfg.limits.max_batch_tokens, 5);
    cr_assert_eq(cfg.n_models, 2, "--model adds to the file's models");
    cr_assert_str_eq(cfg.models[0].name, "filemodel");
    cr_assert_str_eq(cfg.models[0].device, "cuda", "--device does not touch file models");
    cr_assert_str_eq(cfg.models[1].name, "flagmodel");
    cr_assert_str_eq(cfg.models[1].device, "cpu");
    srv_config_free(&cfg);
}

Test(config, tls_pair_across_file_and_flags) {
    write_text("cert.pem", "x");
    write_text("key.pem", "x");
    write_text("lensd.json", "{\"tls\": {\"cert\": \"cert.pem\"}}");
    char path[1024], key[1024];
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_args(&cfg, &err, "--config", in_dir(path, sizeof path, "lensd.json"),
                           "--tls-key", in_dir(key, sizeof key, "key.pem"), NULL),
                 0, "%s", err.msg);
    cr_assert_str_eq(cfg.tls_key, key);
    srv_config_free(&cfg);

    cr_assert_eq(load_args(&cfg, &err, "--tls-cert", in_dir(path, sizeof path, "cert.pem"), NULL),
                 -1);
    expect_msg(&err, "--tls-cert is given without a TLS key", "--tls-key");
    cr_assert_eq(load_args(&cfg, &err, "--tls-key", key, NULL), -1);
    expect_msg(&err, "--tls-key is given without a TLS certificate", "--tls-cert");
}

/* Asserts that the flags fail with a message holding want (and want2). */
static void expect_flag_error(const char *want, const char *want2, char *a0, char *a1, char *a2) {
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_args(&cfg, &err, a0, a1, a2, NULL), -1, "accepted %s %s", a0, a1 ? a1 : "");
    cr_assert_null(cfg.host);
    expect_msg(&err, want, want2);
}

Test(config, flag_refusals_are_named) {
    expect_flag_error("--port", "\"abc\"", "--port", "abc", NULL);
    expect_flag_error("--port", "0 to 65535", "--port", "70000", NULL);
    expect_flag_error("--port", "-1", "--port", "-1", NULL);
    expect_flag_error("--port", "\"80x\"", "--port=80x", NULL, NULL);
    expect_flag_error("--port", "\"\"", "--port", "", NULL);
    expect_flag_error("--threads", "1 to 1024", "--threads", "0", NULL);
    expect_flag_error("--threads", "99999999999", "--threads", "99999999999", NULL);
    expect_flag_error("--device", "\"gpu\" is not a device", "--device", "gpu", NULL);
    expect_flag_error("--model", "NAME=PATH_OR_ID", "--model", "gpt2", NULL);
    expect_flag_error("--model", "NAME=PATH_OR_ID", "--model", "=gpt2", NULL);
    expect_flag_error("--model", "NAME=PATH_OR_ID", "--model", "gpt2=", NULL);
    expect_flag_error("--model", "is not a model name", "--model", "a/b=gpt2", NULL);
    expect_flag_error("--model", "duplicate model name \"m\"", "--model", "m=a", "--model=m=b");
    expect_flag_error("--host", "empty", "--host", "", NULL);
    expect_flag_error("--tokens-file", "/nonexistent/tokens.json", "--tokens-file",
                      "/nonexistent/tokens.json", NULL);
    expect_flag_error("--web", "/nonexistent/web", "--web", "/nonexistent/web", NULL);
    expect_flag_error("--tls-cert", "/nonexistent/c.pem", "--tls-cert", "/nonexistent/c.pem",
                      "--tls-key=/nonexistent/k.pem");
    expect_flag_error("unknown option \"--bogus\"", NULL, "--bogus", NULL, NULL);
    expect_flag_error("unknown option \"-x\"", NULL, "-x", NULL, NULL);
    expect_flag_error("--port: needs a value", NULL, "--port", NULL, NULL);
    expect_flag_error("--insecure=yes", "takes no value", "--insecure=yes", NULL, NULL);
    expect_flag_error("unexpected argument \"extra\"", NULL, "--insecure", "extra", NULL);
}

Test(config, flag_model_clashes_with_file_model) {
    write_text("lensd.json", "{\"models\": [{\"name\": \"gpt2\", \"id\": \"gpt2\"}]}");
    char path[1024];
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_args(&cfg, &err, "--config", in_dir(path, sizeof path, "lensd.json"),
                           "--model", "gpt2=gpt2-small", NULL),
                 -1);
    expect_msg(&err, "--model", "duplicate model name \"gpt2\"");
}

Test(config, repeated_loads_reset_getopt) {
    srv_config cfg;
    lens_err err = {0};
    /* A failure in the middle of a scan must not leak into the next one. */
    cr_assert_eq(load_args(&cfg, &err, "--port", "1", "--bogus", "--threads", "3", NULL), -1);
    cr_assert_eq(load_args(&cfg, &err, "--threads", "3", "--port", "2", NULL), 0, "%s", err.msg);
    cr_assert_eq(cfg.port, 2);
    cr_assert_eq(cfg.http_threads, 3);
    srv_config_free(&cfg);
    cr_assert_eq(load_args(&cfg, &err, NULL), 0, "%s", err.msg);
    cr_assert_eq(cfg.port, 8080);
    srv_config_free(&cfg);
}

/* ---- the documented example ----------------------------------------------------- */

/* config/lensd.example.json, copied next to the files it names, loads to
 * what config/README.md says. */
Test(config, example_file_loads) {
    const char *data = getenv("LENSD_TEST_DATA");
    cr_assert_not_null(data, "LENSD_TEST_DATA is not set");
    char src[1024], cmd[2600];
    snprintf(src, sizeof src, "%s/../../../config/lensd.example.json", data);
    make_subdir("config");
    make_subdir("config/tls");
    make_subdir("web");
    make_subdir("models");
    make_subdir("models/my-model");
    write_text("config/tokens.json", "[]");
    write_text("config/tls/cert.pem", "x");
    write_text("config/tls/key.pem", "x");
    snprintf(cmd, sizeof cmd, "cp '%s' '%s/config/lensd.json'", src, dir);
    cr_assert_eq(system(cmd), 0, "%s", cmd);

    char path[1024], want[1024];
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(
        load_args(&cfg, &err, "--config", in_dir(path, sizeof path, "config/lensd.json"), NULL), 0,
        "%s", err.msg);
    cr_assert_str_eq(cfg.host, "127.0.0.1");
    cr_assert_eq(cfg.port, 8080);
    cr_assert_str_eq(cfg.web_dir, in_dir(want, sizeof want, "config/../web"));
    cr_assert_str_eq(cfg.tokens_file, in_dir(want, sizeof want, "config/tokens.json"));
    cr_assert_str_eq(cfg.tls_cert, in_dir(want, sizeof want, "config/tls/cert.pem"));
    cr_assert_str_eq(cfg.tls_key, in_dir(want, sizeof want, "config/tls/key.pem"));
    cr_assert_not(cfg.insecure);
    cr_assert_eq(cfg.http_threads, 4);
    cr_assert_eq(cfg.n_models, 2);
    cr_assert_str_eq(cfg.models[0].name, "gpt2");
    cr_assert_str_eq(cfg.models[0].source, "gpt2-small");
    cr_assert_eq(cfg.models[0].load.processing, -1);
    cr_assert_str_eq(cfg.models[1].name, "my-model");
    cr_assert_str_eq(cfg.models[1].source, in_dir(want, sizeof want, "config/../models/my-model"));
    cr_assert_str_eq(cfg.models[1].device, "cuda:0");
    cr_assert_eq(cfg.models[1].load.processing,
                 LENS_PROC_FOLD_LN | LENS_PROC_CENTER_WRITING_WEIGHTS);
    cr_assert(cfg.models[1].load.use_attn_result);
    cr_assert(cfg.models[1].load.use_hook_mlp_in);
    /* The example's limits are the defaults. */
    srv_config defaults;
    cr_assert_eq(load_args(&defaults, &err, NULL), 0, "%s", err.msg);
    const srv_limits *a = &cfg.limits, *b = &defaults.limits;
    cr_assert_eq(a->max_body_bytes, b->max_body_bytes);
    cr_assert_eq(a->max_batch_tokens, b->max_batch_tokens);
    cr_assert_eq(a->max_weight_variants, b->max_weight_variants);
    cr_assert_eq(a->max_tokens, b->max_tokens);
    cr_assert_eq(a->max_response_bytes, b->max_response_bytes);
    cr_assert_eq(a->max_kept_cache_bytes, b->max_kept_cache_bytes);
    cr_assert_eq(a->kept_cache_ttl_s, b->kept_cache_ttl_s);
    cr_assert_eq(a->queue_length, b->queue_length);
    cr_assert_eq(a->request_timeout_s, b->request_timeout_s);
    cr_assert_eq(a->shutdown_timeout_s, b->shutdown_timeout_s);
    cr_assert_eq(a->requests_per_minute, b->requests_per_minute);
    cr_assert_eq(a->max_generate_tokens, b->max_generate_tokens);
    cr_assert_eq(a->max_connections_per_client, b->max_connections_per_client);
    srv_config_free(&defaults);
    srv_config_free(&cfg);
}

/* ---- loopback -------------------------------------------------------------------- */

Test(config, loopback_addresses) {
    const char *yes[] = {"127.0.0.1",      "127.1.2.3", "127.255.255.255", "::1",
                         "[::1]",          "localhost", "LocalHost",       "::ffff:127.0.0.1",
                         "0:0:0:0:0:0:0:1"};
    const char *no[] = {"0.0.0.0",
                        "::",
                        "192.168.1.10",
                        "128.0.0.1",
                        "10.0.0.1",
                        "example.com",
                        "",
                        "127.0.0.1.nip.io",
                        "[::1",
                        "::2",
                        "::ffff:10.0.0.1",
                        "localhost.example",
                        "fe80::1"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        cr_assert(srv_config_loopback(yes[i]), "%s", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        cr_assert_not(srv_config_loopback(no[i]), "%s", no[i]);
    cr_assert_not(srv_config_loopback(NULL));
}

/* ---- model roots ------------------------------------------------------------------ */

Test(config, model_roots_default_to_the_models_directories) {
    make_subdir("models");
    make_subdir("models/m1");
    make_subdir("other");
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_json(&cfg, &err,
                           "{\"models\": [{\"name\": \"a\", \"path\": \"models/m1\"},"
                           "             {\"name\": \"b\", \"id\": \"EleutherAI/pythia-70m\"}]}"),
                 0, "%s", err.msg);
    char root[1024], real[PATH_MAX];
    cr_assert_not_null(realpath(in_dir(root, sizeof root, "models"), real));
    cr_assert_eq(cfg.n_model_roots, 1, "a Hugging Face id adds no root");
    cr_assert_str_eq(cfg.model_roots[0], real);
    char path[1024];
    cr_assert(srv_config_in_model_root(&cfg, in_dir(path, sizeof path, "models/m1")));
    cr_assert(srv_config_in_model_root(&cfg, in_dir(path, sizeof path, "models")));
    cr_assert_not(srv_config_in_model_root(&cfg, in_dir(path, sizeof path, "other")));
    cr_assert_not(srv_config_in_model_root(&cfg, in_dir(path, sizeof path, "models/../other")));
    cr_assert_not(srv_config_in_model_root(&cfg, in_dir(path, sizeof path, "models/missing")));
    cr_assert_not(srv_config_in_model_root(&cfg, "/etc/shadow"));
    /* a link inside that points outside is outside */
    char link[1024], target[1024];
    cr_assert_eq(
        symlink(in_dir(target, sizeof target, "other"), in_dir(link, sizeof link, "models/escape")),
        0);
    cr_assert_not(srv_config_in_model_root(&cfg, link));
    /* a sibling whose name starts like the root is not inside it */
    make_subdir("models-evil");
    cr_assert_not(srv_config_in_model_root(&cfg, in_dir(path, sizeof path, "models-evil")));
    srv_config_free(&cfg);
}

Test(config, model_roots_from_the_file) {
    make_subdir("ckpts");
    srv_config cfg;
    lens_err err = {0};
    cr_assert_eq(load_json(&cfg, &err, "{\"model_roots\": [\"ckpts\", \"/tmp\"]}"), 0, "%s",
                 err.msg);
    cr_assert_eq(cfg.n_model_roots, 2);
    char path[1024];
    cr_assert(srv_config_in_model_root(&cfg, in_dir(path, sizeof path, "ckpts")));
    srv_config_free(&cfg);
    expect_json_error("{\"model_roots\": [\"no-such-dir\"]}", "model_roots[0]",
                      "is not a directory", NULL);
    expect_json_error("{\"model_roots\": \"ckpts\"}", "model_roots", "must be a list", NULL);
}
