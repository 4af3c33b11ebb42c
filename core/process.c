/*
 * process.c: weight processing exactly as TransformerLens's
 * ProcessWeights.process_weights does it (weight_processing.py), on the
 * internal layout of model.h: reading matrices are [d_model, n_out], so
 * "centre over d_model" means subtracting each column's mean, and writing
 * matrices are [n_in, d_model], so it means subtracting each row's mean.
 * Sums accumulate in double; TL's float32 sums differ from them by rounding.
 * refactor_factored_attn_matrices needs SVDs: LAPACK's dgesdd, in double.
 *
 * Each step is a list of pieces (a kernel over some rows or columns of one
 * matrix) that touch disjoint data, run in one parallel loop: a thread per
 * piece, not per matrix, since waking threads for each of a hundred small
 * loops costs more than the loops. Every sum still runs over its row or
 * column in index order in one double, so results do not depend on the
 * threads; the kernels only sum several rows side by side (independent
 * chains of additions, which one core overlaps) and fuse passes over a
 * matrix where TL makes several.
 */
#include "core/process.h"

#include <lapacke.h>
#include <math.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Columns per block of a column-wise pass over a wide matrix: a block of a
 * [768, n] matrix (384 KB) stays in the L2 cache from one pass over it to
 * the next. A matrix up to NARROW_COLS wide is one block: its passes then
 * stream whole rows, which outruns the strided reads of narrow blocks. */
#define COLS_AT_ONCE 128
#define NARROW_COLS 1024

/* Rows whose sums center_rows runs side by side. */
#define ROWS_AT_ONCE 8

/* About the floats of one piece of a step: big matrices (W_E, W_U) are cut
 * into pieces of this size, so that threads share them evenly. */
#define PIECE_FLOATS (1 << 20)

/* b[n] += ln_b[r] @ W[r, n] over rows r < R, for columns n0 <= n < n1 (W is
 * [R, N]): a bias moved into the bias of the layer that reads it. Walks W
 * row by row within each block of columns (W_U is [d_model, d_vocab]:
 * column walks would miss the cache). */
static void fold_bias(float *b, const float *W, const float *ln_b, int R, int N, int n0, int n1) {
    for (; n0 < n1; n0 += COLS_AT_ONCE) {
        const int nb = n1 - n0 < COLS_AT_ONCE ? n1 - n0 : COLS_AT_ONCE;
        double sum[COLS_AT_ONCE] = {0};
        for (int r = 0; r < R; r++) {
            const float *row = W + (size_t)r * N + n0;
            for (int j = 0; j < nb; j++)
                sum[j] += (double)row[j] * ln_b[r];
        }
        for (int j = 0; j < nb; j++)
            b[n0 + j] += (float)sum[j];
    }
}

/* Folds the LN that precedes a reading matrix W[R, N] (R the LN's width)
 * into columns n0 <= n < n1 of it, as TL's three steps do: b[n] += ln_b @
 * W[:, n]; W[r, n] *= ln_w[r]; then each column of W loses its mean over
 * the rows. Per block of columns (all of them up to NARROW_COLS), one pass
 * makes both column sums (the bias's from W as it was, the mean's from W
 * scaled) and a second pass subtracts the means. An RMSNorm (ln_b NULL,
 * center false) folds its weight only, as TL folds RMSNorm. */
static void fold_norm(float *W, float *b, const float *ln_w, const float *ln_b, bool center, int R,
                      int N, int n0, int n1) {
    if (!ln_b && !center) {
        for (int r = 0; r < R; r++) {
            float *row = W + (size_t)r * N;
            for (int n = n0; n < n1; n++)
                row[n] *= ln_w[r];
        }
        return;
    }
    const int block = n1 - n0 <= NARROW_COLS ? n1 - n0 : COLS_AT_ONCE;
    for (; n0 < n1; n0 += block) {
        const int nb = n1 - n0 < block ? n1 - n0 : block;
        double bias[NARROW_COLS] = {0}, sum[NARROW_COLS] = {0};
        float mean[NARROW_COLS];
        for (int r = 0; r < R; r++) {
            float *row = W + (size_t)r * N + n0;
            for (int j = 0; j < nb; j++) {
                bias[j] += (double)row[j] * ln_b[r];
                row[j] *= ln_w[r];
                sum[j] += row[j];
            }
        }
        for (int j = 0; j < nb; j++) {
            b[n0 + j] += (float)bias[j];
            mean[j] = (float)(sum[j] / R);
        }
        for (int r = 0; r < R; r++) {
            float *row = W + (size_t)r * N + n0;
            for (int j = 0; j < nb; j++)
                row[j] -= mean[j];
        }
    }
}

/* Subtracts from each of the rows r0 <= r < r1 of W[R, N] its mean over the
 * N columns. A row's sum is one chain of dependent additions; ROWS_AT_ONCE
 * rows are summed together so that their chains overlap. */
static void center_rows(float *W, int N, int r0, int r1) {
    for (; r0 < r1; r0 += ROWS_AT_ONCE) {
        const int nr = r1 - r0 < ROWS_AT_ONCE ? r1 - r0 : ROWS_AT_ONCE;
        float *rows = W + (size_t)r0 * N;
        double sum[ROWS_AT_ONCE] = {0};
        if (nr == ROWS_AT_ONCE) {
            for (int n = 0; n < N; n++)
                for (int k = 0; k < ROWS_AT_ONCE; k++)
                    sum[k] += rows[(size_t)k * N + n];
        } else {
            for (int k = 0; k < nr; k++)
                for (int n = 0; n < N; n++)
                    sum[k] += rows[(size_t)k * N + n];
        }
        for (int k = 0; k < nr; k++) {
            const float mean = (float)(sum[k] / N);
            for (int n = 0; n < N; n++)
                rows[(size_t)k * N + n] -= mean;
        }
    }
}

/* b_O += sum over heads of b_V[h / group] @ W_O[h] (group query heads
 * share a value head); b_V = 0; b_O centred again when centring applies. Exact because every row of
 * an attention pattern sums to 1 (or the row is all zeros, where TL gives the same answer only up
 * to this bias; so does lensd). W_O is [hd, d]. */
static void fold_value_bias(float *b_O, const float *W_O, float *b_V, int hd, int d, int dh,
                            int group, bool recenter) {
    if (group == 1) {
        fold_bias(b_O, W_O, b_V, hd, d, 0, d);
    } else {
        for (int hi = 0; hi < hd / dh; hi++)
            fold_bias(b_O, W_O + (size_t)hi * dh * d, b_V + (size_t)(hi / group) * dh, dh, d, 0, d);
    }
    memset(b_V, 0, (size_t)(hd / group) * sizeof(float));
    if (recenter) center_rows(b_O, d, 0, 1);
}

/* ---- steps as lists of pieces ------------------------------------------- */

typedef enum piece_kind {
    PIECE_FOLD_NORM,       /* fold_norm of columns [from, to) */
    PIECE_CENTER_ROWS,     /* center_rows of rows [from, to) */
    PIECE_FOLD_VALUE_BIAS, /* fold_value_bias of one layer (W = W_O, b = b_O, v = b_V) */
} piece_kind;

typedef struct piece {
    piece_kind kind;
    float *W, *b, *v;
    const float *ln_w, *ln_b;
    int R, N, from, to;
    int d_head, group; /* PIECE_FOLD_VALUE_BIAS: heads and how many share a value head */
    bool center;       /* PIECE_FOLD_NORM: a LayerNorm (centres), not an RMSNorm */
    bool recenter;
} piece;

typedef struct step {
    piece *pieces;
    size_t n, cap;
    bool failed; /* out of memory: nothing of the step has run */
} step;

static void step_add(step *st, piece p) {
    if (st->failed) return;
    if (st->n == st->cap) {
        size_t cap = st->cap ? 2 * st->cap : 64;
        piece *grown = realloc(st->pieces, cap * sizeof *grown);
        if (!grown) {
            st->failed = true;
            return;
        }
        st->pieces = grown;
        st->cap = cap;
    }
    st->pieces[st->n++] = p;
}

/* Adds fold_norm of all of W[R, N]: a narrow matrix in one piece, a wide
 * one in pieces of whole blocks of columns. */
static void add_fold_norm(step *st, float *W, float *b, const float *ln_w, const float *ln_b, int R,
                          int N) {
    const bool center = ln_b != NULL;
    int cols = PIECE_FLOATS / R / COLS_AT_ONCE * COLS_AT_ONCE;
    if (cols < COLS_AT_ONCE) cols = COLS_AT_ONCE;
    if (N <= NARROW_COLS) cols = N;
    for (int n0 = 0; n0 < N; n0 += cols)
        step_add(st, (piece){.kind = PIECE_FOLD_NORM,
                             .W = W,
                             .b = b,
                             .ln_w = ln_w,
                             .ln_b = ln_b,
                             .center = center,
                             .R = R,
                             .N = N,
                             .from = n0,
                             .to = N - n0 < cols ? N : n0 + cols});
}

/* Adds center_rows of all of W[R, N] (a vector: R = 1), in pieces of whole
 * groups of rows. */
static void add_center_rows(step *st, float *W, int R, int N) {
    int rows = PIECE_FLOATS / N / ROWS_AT_ONCE * ROWS_AT_ONCE;
    if (rows < ROWS_AT_ONCE) rows = ROWS_AT_ONCE;
    for (int r0 = 0; r0 < R; r0 += rows)
        step_add(st, (piece){.kind = PIECE_CENTER_ROWS,
                             .W = W,
                             .R = R,
                             .N = N,
                             .from = r0,
                             .to = R - r0 < rows ? R : r0 + rows});
}

/* Runs the pieces of st, spread over the threads, and empties it. Returns
 * -1 if building it ran out of memory (then none of it has run). */
static int step_run(step *st, lens_err *err) {
    if (st->failed) {
        free(st->pieces);
        *st = (step){0};
        lens_err_set(err, "out of memory processing weights");
        return -1;
    }
#pragma omp parallel for schedule(dynamic)
    for (size_t i = 0; i < st->n; i++) {
        const piece *p = &st->pieces[i];
        switch (p->kind) {
        case PIECE_FOLD_NORM:
            fold_norm(p->W, p->b, p->ln_w, p->ln_b, p->center, p->R, p->N, p->from, p->to);
            break;
        case PIECE_CENTER_ROWS:
            center_rows(p->W, p->N, p->from, p->to);
            break;
        case PIECE_FOLD_VALUE_BIAS:
            fold_value_bias(p->b, p->W, p->v, p->R, p->N, p->d_head, p->group, p->recenter);
            break;
        }
    }
    st->n = 0;
    return 0;
}

/* Folds every norm before a reading matrix into it: ln1 into W_Q, W_K,
 * W_V; ln2 (ln1 where the MLP shares it) into W_in and W_gate; ln_final
 * into W_U. Norms on outputs (ln1_post, ln2_post) have nothing after them
 * to fold into and stay. */
static void fold_layer_norm(lens_model *m, step *st) {
    lens_config *c = &m->cfg;
    const int d = c->d_model, hd = c->n_heads * c->d_head, mlp = c->d_mlp;
    const int kvd = c->n_kv_heads * c->d_head;
    for (int l = 0; l < c->n_layers; l++) {
        lens_layer_weights *lw = &m->w.layers[l];
        add_fold_norm(st, lw->W_Q, lw->b_Q, lw->ln1_w, lw->ln1_b, d, hd);
        add_fold_norm(st, lw->W_K, lw->b_K, lw->ln1_w, lw->ln1_b, d, kvd);
        add_fold_norm(st, lw->W_V, lw->b_V, lw->ln1_w, lw->ln1_b, d, kvd);
        if (c->attn_only) continue;
        const float *ln2_w = c->shared_ln ? lw->ln1_w : lw->ln2_w;
        const float *ln2_b = c->shared_ln ? lw->ln1_b : lw->ln2_b;
        add_fold_norm(st, lw->W_in, lw->b_in, ln2_w, ln2_b, d, mlp);
        /* TL's gated MLP adds b_in after the gate, so an RMSNorm (no bias) folds cleanly */
        if (lw->W_gate) add_fold_norm(st, lw->W_gate, NULL, ln2_w, NULL, d, mlp);
        /* SoLU's LN over d_mlp is read by W_out [d_mlp, d_model]. */
        if (lw->mlp_ln_w)
            add_fold_norm(st, lw->W_out, lw->b_out, lw->mlp_ln_w, lw->mlp_ln_b, mlp, d);
    }
    add_fold_norm(st, m->w.W_U, m->w.b_U, m->w.ln_final_w, m->w.ln_final_b, d, c->d_vocab_out);
}

/* After fold_layer_norm's pieces have run: the LNs are gone. */
static void drop_layer_norms(lens_model *m) {
    for (int l = 0; l < m->cfg.n_layers; l++) {
        lens_layer_weights *lw = &m->w.layers[l];
        lw->ln1_w = lw->ln1_b = lw->ln2_w = lw->ln2_b = lw->mlp_ln_w = lw->mlp_ln_b = NULL;
    }
    m->w.ln_final_w = m->w.ln_final_b = NULL;
    m->cfg.normalization =
        m->cfg.normalization == LENS_NORM_RMS ? LENS_NORM_RMSPRE : LENS_NORM_LNPRE;
}

static void center_writing_weights(lens_model *m, step *st) {
    lens_config *c = &m->cfg;
    const int d = c->d_model, hd = c->n_heads * c->d_head;
    add_center_rows(st, m->w.W_E, c->d_vocab, d);
    if (m->w.W_pos) add_center_rows(st, m->w.W_pos, c->n_ctx, d);
    for (int l = 0; l < c->n_layers; l++) {
        lens_layer_weights *lw = &m->w.layers[l];
        add_center_rows(st, lw->W_O, hd, d);
        add_center_rows(st, lw->b_O, 1, d);
        if (c->attn_only) continue;
        add_center_rows(st, lw->W_out, c->d_mlp, d);
        add_center_rows(st, lw->b_out, 1, d);
    }
}

static void center_unembed(lens_model *m, step *st) {
    add_center_rows(st, m->w.W_U, m->cfg.d_model, m->cfg.d_vocab_out);
    add_center_rows(st, m->w.b_U, 1, m->cfg.d_vocab_out);
}

static void fold_value_biases(lens_model *m, bool recenter, step *st) {
    lens_config *c = &m->cfg;
    for (int l = 0; l < c->n_layers; l++) {
        lens_layer_weights *lw = &m->w.layers[l];
        step_add(st, (piece){.kind = PIECE_FOLD_VALUE_BIAS,
                             .W = lw->W_O,
                             .b = lw->b_O,
                             .v = lw->b_V,
                             .R = c->n_heads * c->d_head,
                             .N = c->d_model,
                             .d_head = c->d_head,
                             .group = c->n_heads / c->n_kv_heads,
                             .recenter = recenter});
    }
}

/* Thin SVD of a[rows, cols] (row-major, destroyed): u [rows, k], s [k],
 * vt [k, cols] with k = min(rows, cols). Returns LAPACK's info (0 = ok). */
static int thin_svd(double *a, int rows, int cols, double *u, double *s, double *vt) {
    return LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', rows, cols, a, cols, s, u,
                          rows < cols ? rows : cols, vt, cols);
}

/* out[m, n] = a[m, k] @ b[k, n], in double. */
static void matmul_d(double *out, const double *a, const double *b, int m, int k, int n) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double sum = 0.0;
            for (int t = 0; t < k; t++)
                sum += a[(size_t)i * k + t] * b[(size_t)t * n + j];
            out[(size_t)i * n + j] = sum;
        }
}

/* The SVD of the low-rank product A @ B (A [m, r], B [r, n], r <= m, n)
 * computed from its factors as TL's FactoredMatrix.svd does: svd(A) =
 * Ua Sa Va^T, svd(B) = Ub Sb Vb^T, then svd(Sa Va^T Ub Sb) = Um S Vm^T and
 * A @ B = (Ua Um) S (Vb Vm)^T. Fills u [m, r], s [r], v [n, r]. A and B are
 * destroyed. Returns -1 if LAPACK fails. */
static int factored_svd(double *A, double *B, int m, int r, int n, double *u, double *s,
                        double *v) {
    size_t rr = (size_t)r * r;
    double *ua = malloc((size_t)m * r * sizeof *ua), *sa = malloc(r * sizeof *sa);
    double *vat = malloc(rr * sizeof *vat), *ub = malloc(rr * sizeof *ub);
    double *sb = malloc(r * sizeof *sb), *vbt = malloc((size_t)r * n * sizeof *vbt);
    double *mid = malloc(rr * sizeof *mid), *tmp = malloc(rr * sizeof *tmp);
    double *um = malloc(rr * sizeof *um), *vmt = malloc(rr * sizeof *vmt);
    int rc = -1;
    if (!ua || !sa || !vat || !ub || !sb || !vbt || !mid || !tmp || !um || !vmt) goto out;
    if (thin_svd(A, m, r, ua, sa, vat) || thin_svd(B, r, n, ub, sb, vbt)) goto out;
    matmul_d(tmp, vat, ub, r, r, r);
    for (int i = 0; i < r; i++)
        for (int j = 0; j < r; j++)
            mid[(size_t)i * r + j] = sa[i] * tmp[(size_t)i * r + j] * sb[j];
    if (thin_svd(mid, r, r, um, s, vmt)) goto out;
    matmul_d(u, ua, um, m, r, r);
    /* v = Vb @ Vm = vbt^T @ vmt^T */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < r; j++) {
            double sum = 0.0;
            for (int t = 0; t < r; t++)
                sum += vbt[(size_t)t * n + i] * vmt[(size_t)j * r + t];
            v[(size_t)i * r + j] = sum;
        }
    rc = 0;
out:
    free(ua), free(sa), free(vat), free(ub), free(sb), free(vbt);
    free(mid), free(tmp), free(um), free(vmt);
    return rc;
}

/* TL's refactor_factored_attn_matrices for one head: W_QK (with the biases
 * as an extra input row) = U S V^T becomes W_Q = U sqrt(S), W_K = V sqrt(S);
 * W_OV = U S V^T becomes W_V = U S, W_O = V^T, with b_V folded into b_O.
 * Each singular vector's sign is LAPACK's choice, so q, k, v and z are
 * defined up to the sign of each d_head component (TL's are MKL's). */
static int refactor_head(lens_model *m, lens_layer_weights *lw, int hi) {
    const int d = m->cfg.d_model, dh = m->cfg.d_head, hd = m->cfg.n_heads * dh;
    const int d1 = d + 1;
    double *A = malloc((size_t)d1 * dh * sizeof *A), *B = malloc((size_t)dh * d1 * sizeof *B);
    double *u = malloc((size_t)d1 * dh * sizeof *u), *s = malloc((size_t)dh * sizeof *s);
    double *v = malloc((size_t)d1 * dh * sizeof *v);
    int rc = -1;
    if (!A || !B || !u || !s || !v) goto out;
    /* QK: A = [W_Q; b_Q] [d+1, dh], B = [W_K; b_K]^T [dh, d+1] */
    for (int r = 0; r < d1; r++)
        for (int e = 0; e < dh; e++) {
            size_t col = (size_t)hi * dh + e;
            A[(size_t)r * dh + e] = r < d ? lw->W_Q[(size_t)r * hd + col] : lw->b_Q[col];
            B[(size_t)e * d1 + r] = r < d ? lw->W_K[(size_t)r * hd + col] : lw->b_K[col];
        }
    if (factored_svd(A, B, d1, dh, d1, u, s, v)) goto out;
    for (int r = 0; r < d1; r++)
        for (int e = 0; e < dh; e++) {
            size_t col = (size_t)hi * dh + e;
            float q = (float)(u[(size_t)r * dh + e] * sqrt(s[e]));
            float k = (float)(v[(size_t)r * dh + e] * sqrt(s[e]));
            if (r < d) {
                lw->W_Q[(size_t)r * hd + col] = q;
                lw->W_K[(size_t)r * hd + col] = k;
            } else {
                lw->b_Q[col] = q;
                lw->b_K[col] = k;
            }
        }
    /* OV: A = W_V[h] [d, dh], B = W_O[h] [dh, d] */
    for (int r = 0; r < d; r++)
        for (int e = 0; e < dh; e++)
            A[(size_t)r * dh + e] = lw->W_V[(size_t)r * hd + (size_t)hi * dh + e];
    for (int e = 0; e < dh; e++)
        for (int c = 0; c < d; c++)
            B[(size_t)e * d + c] = lw->W_O[((size_t)hi * dh + e) * d + c];
    if (factored_svd(A, B, d, dh, d, u, s, v)) goto out;
    for (int r = 0; r < d; r++)
        for (int e = 0; e < dh; e++)
            lw->W_V[(size_t)r * hd + (size_t)hi * dh + e] = (float)(u[(size_t)r * dh + e] * s[e]);
    for (int e = 0; e < dh; e++)
        for (int c = 0; c < d; c++)
            lw->W_O[((size_t)hi * dh + e) * d + c] = (float)v[(size_t)c * dh + e];
    rc = 0;
out:
    free(A), free(B), free(u), free(s), free(v);
    return rc;
}

static int refactor_factored_attn_matrices(lens_model *m, lens_err *err) {
    const lens_config *c = &m->cfg;
    for (int l = 0; l < c->n_layers; l++) {
        lens_layer_weights *lw = &m->w.layers[l];
        /* b_V @ W_O moves into b_O before W_V and W_O are replaced */
        fold_bias(lw->b_O, lw->W_O, lw->b_V, c->n_heads * c->d_head, c->d_model, 0, c->d_model);
        memset(lw->b_V, 0, (size_t)c->n_heads * c->d_head * sizeof(float));
        for (int hi = 0; hi < c->n_heads; hi++) {
            if (refactor_head(m, lw, hi)) {
                lens_err_set(err,
                             "refactor_factored_attn_matrices: the SVD of layer %d head %d "
                             "failed",
                             l, hi);
                return -1;
            }
        }
    }
    return 0;
}

/* The steps of flags that a checkpoint whose blocks have normalisation
 * `norm` (before any folding) takes: TL folds LayerNorm and RMSNorm, but not
 * the norms of post-norm models (OLMo 2); it centres writing weights of
 * LayerNorm models only; soft-capped logits do not shift with W_U's mean, so
 * TL leaves W_U alone there (Gemma 2). */
static unsigned applicable_steps(lens_norm norm, const lens_config *c, unsigned flags) {
    unsigned steps = flags & (LENS_PROC_CENTER_UNEMBED | LENS_PROC_FOLD_VALUE_BIASES |
                              LENS_PROC_REFACTOR_FACTORED_ATTN_MATRICES);
    if ((norm == LENS_NORM_LN || norm == LENS_NORM_RMS) && c->norm_placement != LENS_NORM_AFTER)
        steps |= flags & LENS_PROC_FOLD_LN;
    if (norm == LENS_NORM_LN || norm == LENS_NORM_LNPRE)
        steps |= flags & LENS_PROC_CENTER_WRITING_WEIGHTS;
    if (c->logit_softcap > 0) steps &= ~(unsigned)LENS_PROC_CENTER_UNEMBED;
    return steps;
}

unsigned lens_processing_applied(const lens_model *m, unsigned flags) {
    lens_norm norm = m->cfg.normalization;
    if (m->processing & LENS_PROC_FOLD_LN)
        norm = norm == LENS_NORM_LNPRE ? LENS_NORM_LN : LENS_NORM_RMS;
    return applicable_steps(norm, &m->cfg, flags);
}

int lens_process_weights(lens_model *m, unsigned flags, lens_err *err) {
    lens_config *c = &m->cfg;
    const unsigned steps = applicable_steps(c->normalization, c, flags);
    const bool ln_like = c->normalization == LENS_NORM_LN || c->normalization == LENS_NORM_LNPRE;
    step st = {0};
    int rc = 0;
    m->processing = 0;
    if ((steps & LENS_PROC_REFACTOR_FACTORED_ATTN_MATRICES) &&
        (c->positions == LENS_POS_ROTARY || c->n_kv_heads != c->n_heads)) {
        lens_err_set(err, "refactor_factored_attn_matrices needs learned positions and as many "
                          "key/value heads as query heads");
        return -1;
    }
    if (steps & LENS_PROC_FOLD_LN) {
        fold_layer_norm(m, &st);
        if ((rc = step_run(&st, err))) goto out;
        drop_layer_norms(m);
        m->processing |= LENS_PROC_FOLD_LN;
    }
    if (steps & LENS_PROC_CENTER_WRITING_WEIGHTS) {
        center_writing_weights(m, &st);
        if ((rc = step_run(&st, err))) goto out;
        m->processing |= LENS_PROC_CENTER_WRITING_WEIGHTS;
    }
    if (steps & LENS_PROC_CENTER_UNEMBED) {
        center_unembed(m, &st);
        if ((rc = step_run(&st, err))) goto out;
        m->processing |= LENS_PROC_CENTER_UNEMBED;
    }
    if (steps & LENS_PROC_FOLD_VALUE_BIASES) {
        fold_value_biases(m, (steps & LENS_PROC_CENTER_WRITING_WEIGHTS) && ln_like, &st);
        if ((rc = step_run(&st, err))) goto out;
        m->processing |= LENS_PROC_FOLD_VALUE_BIASES;
    }
    if (steps & LENS_PROC_REFACTOR_FACTORED_ATTN_MATRICES) {
        rc = refactor_factored_attn_matrices(m, err);
        m->processing |= LENS_PROC_REFACTOR_FACTORED_ATTN_MATRICES;
    }
out:
    free(st.pieces);
    return rc;
}

static const struct {
    const char *name;
    unsigned flag;
} proc_names[] = {
    {"fold_ln", LENS_PROC_FOLD_LN},
    {"center_writing_weights", LENS_PROC_CENTER_WRITING_WEIGHTS},
    {"center_unembed", LENS_PROC_CENTER_UNEMBED},
    {"fold_value_biases", LENS_PROC_FOLD_VALUE_BIASES},
    {"refactor_factored_attn_matrices", LENS_PROC_REFACTOR_FACTORED_ATTN_MATRICES},
};

void lens_processing_names(unsigned flags, char *buf, size_t buflen) {
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof proc_names / sizeof proc_names[0]; i++) {
        if (!(flags & proc_names[i].flag) || used >= buflen) continue;
        used += (size_t)snprintf(buf + used, buflen - used, "%s%s", used ? "," : "",
                                 proc_names[i].name);
    }
    if (!flags) snprintf(buf, buflen, "none");
}

int lens_processing_parse(const char *spec, unsigned *flags, lens_err *err) {
    if (strcmp(spec, "default") == 0) {
        *flags = LENS_PROC_DEFAULT;
        return 0;
    }
    *flags = 0;
    if (strcmp(spec, "none") == 0 || spec[0] == '\0') return 0;
    const char *p = spec;
    while (*p) {
        size_t len = strcspn(p, ",");
        bool found = false;
        for (size_t i = 0; i < sizeof proc_names / sizeof proc_names[0]; i++) {
            if (strlen(proc_names[i].name) == len && strncmp(proc_names[i].name, p, len) == 0) {
                *flags |= proc_names[i].flag;
                found = true;
            }
        }
        if (!found) {
            lens_err_set(err,
                         "unknown weight processing step \"%.*s\" (fold_ln, "
                         "center_writing_weights, center_unembed, fold_value_biases, "
                         "refactor_factored_attn_matrices, default, none)",
                         (int)len, p);
            return -1;
        }
        p += len;
        if (*p == ',') p++;
    }
    return 0;
}
