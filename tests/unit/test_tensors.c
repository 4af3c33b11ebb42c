/*
 * test_tensors.c: JSON answers when memory runs out. jansson's allocator is
 * replaced by one that fails one allocation, the n-th (as a large one fails
 * while small ones still succeed), for every n in turn: the tensor comes
 * back whole or not at all, and an answer is then a 507, never a 200 with an
 * empty body, a shorter list or without one of its tensors.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "server/daemon.h"
#include "server/tensors.h"

static long until_failure; /* allocations before the one that fails; < 0: none fails */

static void *failing_malloc(size_t n) {
    return until_failure-- == 0 ? NULL : malloc(n);
}

static void fail_after(long n) {
    until_failure = n;
    json_set_alloc_funcs(failing_malloc, free);
}

static const float values[2][3] = {{1.5f, -2.0f, 0.25f}, {4.0f, 5.5f, -6.0f}};
static const int64_t shape[2] = {2, 3};

static void check_whole(json_t *t) {
    json_t *data = json_object_get(t, "data");
    cr_assert_eq(json_array_size(data), 2);
    for (size_t i = 0; i < 2; i++) {
        cr_assert_eq(json_array_size(json_array_get(data, i)), 3);
        for (size_t j = 0; j < 3; j++)
            cr_assert_float_eq(json_real_value(json_array_get(json_array_get(data, i), j)),
                               values[i][j], 0);
    }
}

Test(tensors, a_tensor_is_whole_or_null) {
    int whole = 0;
    for (long n = 0; n < 64; n++) {
        fail_after(n);
        json_t *t = srv_tensor_json(LENS_F32, 2, shape, values);
        fail_after(-1);
        if (t) {
            check_whole(t);
            whole++;
        }
        json_decref(t);
    }
    cr_assert_gt(whole, 0, "never encoded, even with the 64th allocation failing");
}

Test(tensors, an_answer_is_complete_or_507) {
    srv_d.cfg.limits.max_response_bytes = (size_t)1 << 30;
    const lens_config cfg = {.n_layers = 1,
                             .n_heads = 1,
                             .d_model = 4,
                             .d_head = 4,
                             .d_mlp = 4,
                             .n_ctx = 4,
                             .d_vocab = 8,
                             .d_vocab_out = 8};
    int complete = 0;
    for (long n = 0; n < 96; n++) {
        srv_answer *a = srv_answer_new(&cfg);
        cr_assert_not_null(a);
        srv_answer_add(a, "first", LENS_F32, 2, shape, values);
        srv_answer_add(a, "second", LENS_F32, 2, shape, values);
        srv_response resp = {0};
        fail_after(n);
        srv_answer_send("application/json", &resp, a, json_object());
        fail_after(-1);
        cr_assert(resp.status == 200 || resp.status == 507, "status %u", resp.status);
        cr_assert_not_null(resp.body, "an empty body (status %u)", resp.status);
        json_t *doc = json_loadb(resp.body, resp.body_len, 0, NULL);
        cr_assert_not_null(doc, "not JSON: %.*s", (int)resp.body_len, resp.body);
        if (resp.status == 200) {
            check_whole(json_object_get(doc, "first"));
            check_whole(json_object_get(doc, "second"));
            complete++;
        } else {
            cr_assert_str_eq(
                json_string_value(json_object_get(json_object_get(doc, "error"), "code")),
                "insufficient_storage");
        }
        json_decref(doc);
        free(resp.body);
    }
    cr_assert_gt(complete, 0, "never answered, even with the 96th allocation failing");
}
