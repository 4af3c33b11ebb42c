/*
 * test_logits.c: core/logits.c against a plain reference. top-k against a
 * full sort of the row with the order logits.h states (value descending, NaN
 * first, ties by lower index), on rows with ties, NaN and infinities, every
 * k; rank against each id's place in that sort; log-softmax against the
 * definition in long double; and top-k of a whole GPT-2-sized vocabulary in
 * well under a second (the quadratic selection it replaced took hours).
 */
#define _POSIX_C_SOURCE 200809L

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "core/logits.h"

static const float *sort_row; /* the row qsort's comparator reads */

/* The reference order, written independently of logits.c's heap. */
static int reference_order(const void *pa, const void *pb) {
    const int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    const float x = sort_row[a], y = sort_row[b];
    if (isnan(x) != isnan(y)) return isnan(x) ? -1 : 1;
    if (!isnan(x) && x != y) return x > y ? -1 : 1;
    return (a > b) - (a < b);
}

static int32_t *sorted_ids(const float *x, int n) {
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    for (int v = 0; v < n; v++)
        ids[v] = v;
    sort_row = x;
    qsort(ids, (size_t)n, sizeof *ids, reference_order);
    return ids;
}

/* A row of n values drawn from only `distinct` levels (many ties), with a
 * NaN and infinities sprinkled in when `special`. */
static void fill_row(float *x, int n, int distinct, bool special, unsigned *seed) {
    for (int v = 0; v < n; v++)
        x[v] = (float)(rand_r(seed) % distinct) - distinct / 2.0f;
    if (special && n >= 4) {
        x[rand_r(seed) % n] = NAN;
        x[rand_r(seed) % n] = INFINITY;
        x[rand_r(seed) % n] = -INFINITY;
        x[rand_r(seed) % n] = NAN;
    }
}

static void check_every_k(const float *x, int n) {
    int32_t *want = sorted_ids(x, n);
    int32_t *got = malloc((size_t)n * sizeof *got);
    for (int k = 1; k <= n; k++) {
        lens_top_k(x, n, k, got);
        for (int i = 0; i < k; i++)
            cr_assert_eq(got[i], want[i], "n %d k %d: place %d is id %d, want %d", n, k, i, got[i],
                         want[i]);
    }
    for (int i = 0; i < n; i++)
        cr_assert_eq(lens_rank(x, n, want[i]), i, "n %d: rank of id %d", n, want[i]);
    free(got);
    free(want);
}

Test(logits, top_k_and_rank_match_a_full_sort) {
    unsigned seed = 7;
    float x[97];
    const int sizes[] = {1, 2, 3, 5, 8, 17, 64, 97};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
        for (int distinct = 1; distinct <= 50; distinct *= 7)
            for (int special = 0; special < 2; special++) {
                fill_row(x, sizes[s], distinct, special, &seed);
                check_every_k(x, sizes[s]);
            }
}

Test(logits, log_softmax_is_the_definition) {
    unsigned seed = 11;
    enum { N = 1000 };
    float x[N], out[N];
    for (int v = 0; v < N; v++)
        x[v] = (float)(rand_r(&seed) % 20001) / 100.0f - 100.0f; /* [-100, 100] */
    long double sum = 0.0L, maxval = -INFINITY;
    for (int v = 0; v < N; v++)
        maxval = x[v] > maxval ? x[v] : maxval;
    for (int v = 0; v < N; v++)
        sum += expl((long double)x[v] - maxval);
    const long double log_sum = maxval + logl(sum);
    cr_assert(fabsl(lens_log_sum_exp(x, N) - log_sum) < 1e-12L * fabsl(log_sum));
    lens_log_softmax(x, out, N);
    for (int v = 0; v < N; v++) {
        const float want = (float)((long double)x[v] - log_sum);
        /* one float rounding of a double difference: within one ulp */
        cr_assert(fabsf(out[v] - want) <= 2e-7f * fabsf(want) + 1e-30f, "v %d: %g vs %g", v, out[v],
                  want);
    }
    lens_log_softmax(x, x, N); /* in place */
    for (int v = 0; v < N; v++)
        cr_assert_eq(x[v], out[v]);
}

Test(logits, log_sum_exp_of_infinite_rows) {
    const float minus[] = {-INFINITY, -INFINITY}, plus[] = {1.0f, INFINITY};
    cr_assert(isinf(lens_log_sum_exp(minus, 2)) && lens_log_sum_exp(minus, 2) < 0);
    cr_assert(isinf(lens_log_sum_exp(plus, 2)) && lens_log_sum_exp(plus, 2) > 0);
}

Test(logits, whole_vocabulary_top_k_is_fast) {
    enum { V = 50257 };
    float *x = malloc(V * sizeof *x);
    int32_t *ids = malloc(V * sizeof *ids);
    unsigned seed = 3;
    for (int v = 0; v < V; v++)
        x[v] = (float)rand_r(&seed) / (float)RAND_MAX;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    lens_top_k(x, V, V, ids);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const double seconds =
        (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    for (int i = 1; i < V; i++)
        cr_assert(x[ids[i - 1]] > x[ids[i]] || (x[ids[i - 1]] == x[ids[i]] && ids[i - 1] < ids[i]));
    /* about 10 ms here; the selection this replaced needed K^2 V steps (hours) */
    cr_assert_lt(seconds, 1.0, "top_k of %d took %.2f s", V, seconds);
    free(ids);
    free(x);
}

Test(logits, greedy_is_the_first_argmax) {
    const float x[5] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
    const lens_sampling greedy = {.sample = false};
    uint64_t rng = 7;
    int32_t scratch[5];
    cr_assert_eq(lens_pick_token(x, 5, &greedy, &rng, scratch), 1);
    cr_assert_eq(rng, 7, "greedy draws no random number");
}

/* Samples follow softmax(x / T) among the top k: counted over many draws,
 * each token's share is its probability; none outside the top k. */
Test(logits, samples_follow_the_tempered_softmax_of_the_top_k) {
    const float x[4] = {1.0f, 0.0f, 2.0f, -3.0f};
    int32_t scratch[4];
    for (int k = 0; k <= 3; k++) {
        const lens_sampling s = {.sample = true, .temperature = 2.0f, .top_k = k};
        const int kept = k ? k : 4;
        double weight[4], total = 0.0;
        for (int v = 0; v < 4; v++) {
            const int rank = lens_rank(x, 4, v);
            weight[v] = rank < kept ? exp(x[v] / 2.0) : 0.0;
            total += weight[v];
        }
        int count[4] = {0};
        uint64_t rng = 12345;
        const int draws = 200000;
        for (int i = 0; i < draws; i++)
            count[lens_pick_token(x, 4, &s, &rng, scratch)]++;
        for (int v = 0; v < 4; v++) {
            const double p = weight[v] / total, share = (double)count[v] / draws;
            cr_expect(fabs(share - p) < 0.005, "top_k %d token %d: share %.4f, p %.4f", k, v, share,
                      p);
        }
    }
}

Test(logits, a_seed_gives_one_sequence) {
    float x[50];
    for (int v = 0; v < 50; v++)
        x[v] = (float)((v * 37) % 11) / 3.0f;
    const lens_sampling s = {.sample = true, .temperature = 1.0f};
    int32_t scratch[50];
    uint64_t a = 42, b = 42;
    for (int i = 0; i < 100; i++)
        cr_assert_eq(lens_pick_token(x, 50, &s, &a, scratch),
                     lens_pick_token(x, 50, &s, &b, scratch));
}
