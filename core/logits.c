/*
 * logits.c: log-sum-exp, log-softmax, top-k and rank over one row of logits
 * (logits.h has the order they share).
 */
#include "core/logits.h"

#include <math.h>
#include <stdbool.h>

double lens_log_sum_exp(const float *x, int n) {
    float maxval = -INFINITY;
    for (int v = 0; v < n; v++)
        maxval = x[v] > maxval ? x[v] : maxval;
    if (isinf(maxval)) return maxval; /* all -inf, or +inf present */
    double sum = 0.0;
    for (int v = 0; v < n; v++)
        sum += exp((double)x[v] - maxval);
    return maxval + log(sum);
}

void lens_log_softmax(const float *x, float *out, int n) {
    const double log_sum = lens_log_sum_exp(x, n);
    for (int v = 0; v < n; v++)
        out[v] = (float)((double)x[v] - log_sum);
}

/* Whether entry a of x comes before entry b in logits.h's order. */
static bool comes_before(const float *x, int32_t a, int32_t b) {
    const bool nan_a = isnan(x[a]), nan_b = isnan(x[b]);
    if (nan_a || nan_b) return nan_a && (!nan_b || a < b);
    return x[a] > x[b] || (x[a] == x[b] && a < b);
}

/* Restores the heap below root in heap[0..size-1], a heap whose root is the
 * entry that comes last (the first to leave when a better one arrives). */
static void sift_down(const float *x, int32_t *heap, int size, int root) {
    for (;;) {
        int last = root, left = 2 * root + 1, right = left + 1;
        if (left < size && comes_before(x, heap[last], heap[left])) last = left;
        if (right < size && comes_before(x, heap[last], heap[right])) last = right;
        if (last == root) return;
        int32_t tmp = heap[root];
        heap[root] = heap[last];
        heap[last] = tmp;
        root = last;
    }
}

void lens_top_k(const float *x, int n, int k, int32_t *ids) {
    for (int v = 0; v < k; v++)
        ids[v] = v;
    for (int i = k / 2 - 1; i >= 0; i--)
        sift_down(x, ids, k, i);
    for (int v = k; v < n; v++) {
        if (!comes_before(x, v, ids[0])) continue;
        ids[0] = v;
        sift_down(x, ids, k, 0);
    }
    /* heap sort: the root (the last of the k) goes to the end, one by one */
    for (int size = k - 1; size > 0; size--) {
        int32_t tmp = ids[0];
        ids[0] = ids[size];
        ids[size] = tmp;
        sift_down(x, ids, size, 0);
    }
}

int lens_rank(const float *x, int n, int i) {
    int rank = 0;
    for (int v = 0; v < n; v++)
        rank += comes_before(x, v, i);
    return rank;
}

/* splitmix64: the sampler's random numbers, reproducible from the seed. */
static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int32_t lens_pick_token(const float *logits, int V, const lens_sampling *s, uint64_t *rng,
                        int32_t *top_ids) {
    int best = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = v;
    if (!s->sample) return best;
    float cutoff = -INFINITY;
    if (s->top_k > 0 && s->top_k < V) { /* the k-th largest logit */
        lens_top_k(logits, V, s->top_k, top_ids);
        cutoff = logits[top_ids[s->top_k - 1]];
    }
    const double t = s->temperature;
    double total = 0.0;
    for (int v = 0; v < V; v++)
        total += logits[v] >= cutoff ? exp(((double)logits[v] - logits[best]) / t) : 0.0;
    double u = (double)(next_random(rng) >> 11) / 9007199254740992.0 * total, acc = 0.0;
    for (int v = 0; v < V; v++) {
        if (logits[v] < cutoff) continue;
        acc += exp(((double)logits[v] - logits[best]) / t);
        if (acc >= u) return v;
    }
    return best;
}
