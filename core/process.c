/*
 * process.c: weight processing exactly as TransformerLens's
 * ProcessWeights.process_weights does it (weight_processing.py), on the
 * internal layout of model.h: reading matrices are [d_model, n_out], so
 * "centre over d_model" means subtracting each column's mean, and writing
 * matrices are [n_in, d_model], so it means subtracting each row's mean.
 * Sums accumulate in double; TL's float32 sums differ from them by rounding.
 * refactor_factored_attn_matrices needs SVDs: LAPACK's dgesdd, in double.
 */
#include "core/process.h"

#include <lapacke.h>
#include <math.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* b[n] += ln_b[r] @ W[r, n] over rows r < R (W is [R, N]): an LN bias moved
 * into the bias of the layer that reads the LN's output. Walks W row by row
 * (W_U is [d_model, d_vocab]: column walks would miss the cache); sum is
 * scratch of N doubles. */
static void fold_bias(float *b, const float *W, const float *ln_b, int R, int N, double *sum) {
    memset(sum, 0, (size_t)N * sizeof *sum);
    for (int r = 0; r < R; r++) {
        const float *row = W + (size_t)r * N;
        for (int n = 0; n < N; n++)
            sum[n] += (double)row[n] * ln_b[r];
    }
    for (int n = 0; n < N; n++)
        b[n] += (float)sum[n];
}

/* W[r, n] *= ln_w[r]: an LN weight moved into the reading matrix. */
static void scale_rows(float *W, const float *ln_w, int R, int N) {
    for (int r = 0; r < R; r++)
        for (int n = 0; n < N; n++)
            W[(size_t)r * N + n] *= ln_w[r];
}

/* Subtracts from each column of W[R, N] its mean over the R rows; sum is
 * scratch of N doubles. */
static void center_columns(float *W, int R, int N, double *sum) {
    memset(sum, 0, (size_t)N * sizeof *sum);
    for (int r = 0; r < R; r++) {
        const float *row = W + (size_t)r * N;
        for (int n = 0; n < N; n++)
            sum[n] += row[n];
    }
    for (int r = 0; r < R; r++) {
        float *row = W + (size_t)r * N;
        for (int n = 0; n < N; n++)
            row[n] -= (float)(sum[n] / R);
    }
}

/* Subtracts from each row of W[R, N] its mean over the N columns. */
static void center_rows(float *W, int R, int N) {
    for (int r = 0; r < R; r++) {
        float *row = W + (size_t)r * N;
        double sum = 0.0;
        for (int n = 0; n < N; n++)
            sum += row[n];
        float mean = (float)(sum / N);
        for (int n = 0; n < N; n++)
            row[n] -= mean;
    }
}

/* Folds the LN that precedes a reading matrix into it: bias, then weight,
 * then centring over the LN's width (the rows). */
static void fold_norm_into(float *W, float *b, const float *ln_w, const float *ln_b, int R, int N,
                           double *sums) {
    fold_bias(b, W, ln_b, R, N, sums);
    scale_rows(W, ln_w, R, N);
    center_columns(W, R, N, sums);
}

static void fold_layer_norm(lens_model *m, double *sums) {
    lens_config *c = &m->cfg;
    const int d = c->d_model, hd = c->n_heads * c->d_head, mlp = c->d_mlp;
    for (int l = 0; l < c->n_layers; l++) {
        lens_layer_weights *lw = &m->w.layers[l];
        fold_norm_into(lw->W_Q, lw->b_Q, lw->ln1_w, lw->ln1_b, d, hd, sums);
        fold_norm_into(lw->W_K, lw->b_K, lw->ln1_w, lw->ln1_b, d, hd, sums);
        fold_norm_into(lw->W_V, lw->b_V, lw->ln1_w, lw->ln1_b, d, hd, sums);
        lw->ln1_w = lw->ln1_b = NULL;
        if (c->attn_only) continue;
        fold_norm_into(lw->W_in, lw->b_in, lw->ln2_w, lw->ln2_b, d, mlp, sums);
        lw->ln2_w = lw->ln2_b = NULL;
        if (lw->mlp_ln_w) {
            /* SoLU's LN over d_mlp is read by W_out [d_mlp, d_model]. */
            fold_norm_into(lw->W_out, lw->b_out, lw->mlp_ln_w, lw->mlp_ln_b, mlp, d, sums);
            lw->mlp_ln_w = lw->mlp_ln_b = NULL;
        }
    }
    fold_norm_into(m->w.W_U, m->w.b_U, m->w.ln_final_w, m->w.ln_final_b, d, c->d_vocab_out, sums);
    m->w.ln_final_w = m->w.ln_final_b = NULL;
    c->normalization = LENS_NORM_LNPRE;
}

static void center_vector(float *v, int n) {
    center_rows(v, 1, n);
}

static void center_writing_weights(lens_model *m) {
    lens_config *c = &m->cfg;
    const int d = c->d_model, hd = c->n_heads * c->d_head;
    center_rows(m->w.W_E, c->d_vocab, d);
    center_rows(m->w.W_pos, c->n_ctx, d);
    for (int l = 0; l < c->n_layers; l++) {
        lens_layer_weights *lw = &m->w.layers[l];
        center_rows(lw->W_O, hd, d);
        center_vector(lw->b_O, d);
        if (c->attn_only) continue;
        center_rows(lw->W_out, c->d_mlp, d);
        center_vector(lw->b_out, d);
    }
}

static void center_unembed(lens_model *m) {
    center_rows(m->w.W_U, m->cfg.d_model, m->cfg.d_vocab_out);
    center_vector(m->w.b_U, m->cfg.d_vocab_out);
}

/* b_O += sum over heads of b_V[h] @ W_O[h]; b_V = 0. Exact because every
 * row of an attention pattern sums to 1 (or the row is all zeros, where TL
 * gives the same answer only up to this bias; so does lensd). */
static void fold_value_biases(lens_model *m, bool recenter, double *sums) {
    lens_config *c = &m->cfg;
    const int d = c->d_model, hd = c->n_heads * c->d_head;
    for (int l = 0; l < c->n_layers; l++) {
        lens_layer_weights *lw = &m->w.layers[l];
        fold_bias(lw->b_O, lw->W_O, lw->b_V, hd, d, sums);
        memset(lw->b_V, 0, (size_t)hd * sizeof(float));
        if (recenter) center_vector(lw->b_O, d);
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

static int refactor_factored_attn_matrices(lens_model *m, double *sums, lens_err *err) {
    const lens_config *c = &m->cfg;
    for (int l = 0; l < c->n_layers; l++) {
        lens_layer_weights *lw = &m->w.layers[l];
        /* b_V @ W_O moves into b_O before W_V and W_O are replaced */
        fold_bias(lw->b_O, lw->W_O, lw->b_V, c->n_heads * c->d_head, c->d_model, sums);
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

int lens_process_weights(lens_model *m, unsigned flags, lens_err *err) {
    lens_config *c = &m->cfg;
    unsigned applied = 0;
    /* scratch for column sums: as wide as the widest matrix */
    int widest = c->d_vocab_out;
    const int widths[] = {c->d_model, c->n_heads * c->d_head, c->d_mlp};
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++)
        if (widths[i] > widest) widest = widths[i];
    double *sums = malloc((size_t)widest * sizeof *sums);
    if (!sums) {
        lens_err_set(err, "out of memory processing weights");
        return -1;
    }
    if ((flags & LENS_PROC_FOLD_LN) && c->normalization == LENS_NORM_LN) {
        fold_layer_norm(m, sums);
        applied |= LENS_PROC_FOLD_LN;
    }
    bool ln_like = c->normalization == LENS_NORM_LN || c->normalization == LENS_NORM_LNPRE;
    if ((flags & LENS_PROC_CENTER_WRITING_WEIGHTS) && ln_like) {
        center_writing_weights(m);
        applied |= LENS_PROC_CENTER_WRITING_WEIGHTS;
    }
    if (flags & LENS_PROC_CENTER_UNEMBED) {
        center_unembed(m);
        applied |= LENS_PROC_CENTER_UNEMBED;
    }
    if (flags & LENS_PROC_FOLD_VALUE_BIASES) {
        fold_value_biases(m, (flags & LENS_PROC_CENTER_WRITING_WEIGHTS) && ln_like, sums);
        applied |= LENS_PROC_FOLD_VALUE_BIASES;
    }
    int rc = 0;
    if (flags & LENS_PROC_REFACTOR_FACTORED_ATTN_MATRICES) {
        rc = refactor_factored_attn_matrices(m, sums, err);
        applied |= LENS_PROC_REFACTOR_FACTORED_ATTN_MATRICES;
    }
    free(sums);
    m->processing = applied;
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
