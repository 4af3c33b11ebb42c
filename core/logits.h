/*
 * logits.h: the numerics every answer built from a row of logits shares
 * (POST /logits's log_probs, top_k and loss, test_prompt, generate's
 * sampling): log-sum-exp, log-softmax, top-k by partial selection, rank,
 * and picking the next token.
 *
 * Order: a row's entries are ranked by value, larger first, NaN above every
 * number (as torch.topk and torch.sort order them), and equal values (two
 * NaNs included) by index, lower first. lens_top_k and lens_rank agree on
 * it: lens_rank(x, n, ids[i]) == i for every i < k.
 */
#ifndef LENS_LOGITS_H
#define LENS_LOGITS_H

#include <stdbool.h>
#include <stdint.h>

/* log(sum(exp(x[0..n-1]))), in double, shifted by the maximum (n >= 1):
 * the normaliser of softmax, so that p[v] = exp(x[v] - result). */
double lens_log_sum_exp(const float *x, int n);

/* out[v] = x[v] - lens_log_sum_exp(x, n) for the row x[n]; out may be x. */
void lens_log_softmax(const float *x, float *out, int n);

/* ids[0..k-1]: the indices of the k first entries of x[n] in the order
 * above (1 <= k <= n). O(n log k) time, no allocation: a k-entry heap kept in
 * ids itself, sorted at the end. */
void lens_top_k(const float *x, int n, int k, int32_t *ids);

/* The place of x[i] in the row's order above: 0 for the first. O(n). */
int lens_rank(const float *x, int n, int i);

/* How generate picks the next token. */
typedef struct lens_sampling {
    bool sample;       /* false: the argmax (greedy) */
    float temperature; /* > 0: sample from softmax(logits / temperature) */
    int top_k;         /* sample among the top_k largest only; 0: all */
} lens_sampling;

/* The next token from one row of logits[V]: the argmax (the first of equal
 * maxima), or a sample as s says drawn with *rng, a splitmix64 state that
 * it advances (so a seed gives one sequence). top_ids is scratch for
 * s->top_k ids. */
int32_t lens_pick_token(const float *logits, int V, const lens_sampling *s, uint64_t *rng,
                        int32_t *top_ids);

#endif
