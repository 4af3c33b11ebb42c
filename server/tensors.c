/*
 * tensors.c: answers made of tensors, encoded as the request's Accept asks:
 * JSON (nested lists, non-finite values as strings), safetensors streamed
 * from the tensors' own memory (other fields as JSON metadata), or one npy.
 */
#include "server/tensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One value of a float tensor: a number, or "-inf" / "inf" / "nan". */
json_t *srv_json_float(float v) {
    if (isnan(v)) return json_string("nan");
    if (isinf(v)) return json_string(v < 0 ? "-inf" : "inf");
    return json_real(v);
}

/* The nested lists of a tensor from data[*at]; NULL, not a shorter list,
 * when memory runs out. */
static json_t *nested(lens_dtype dtype, int ndim, const int64_t *shape, const void *data,
                      size_t *at) {
    json_t *list = json_array();
    for (int64_t i = 0; list && i < shape[0]; i++) {
        json_t *item = ndim > 1            ? nested(dtype, ndim - 1, shape + 1, data, at)
                       : dtype == LENS_I64 ? json_integer(((const int64_t *)data)[(*at)++])
                       : dtype == LENS_I32 ? json_integer(((const int32_t *)data)[(*at)++])
                                           : srv_json_float(((const float *)data)[(*at)++]);
        if (json_array_append_new(list, item)) { /* item NULL, or no room: item is freed */
            json_decref(list);
            list = NULL;
        }
    }
    return list;
}

/* {"shape", "dtype", "data"} for a float32, int32 or int64 tensor. */
json_t *srv_tensor_json(lens_dtype dtype, int ndim, const int64_t *shape, const void *data) {
    json_t *dims = json_array();
    for (int i = 0; i < ndim; i++)
        json_array_append_new(dims, json_integer(shape[i]));
    size_t at = 0;
    json_t *values = ndim ? nested(dtype, ndim, shape, data, &at)
                          : (dtype == LENS_F32 ? srv_json_float(*(const float *)data)
                                               : json_integer(*(const int64_t *)data));
    return json_pack("{s:o, s:s, s:o}", "shape", dims, "dtype",
                     dtype == LENS_F32   ? "float32"
                     : dtype == LENS_I32 ? "int32"
                                         : "int64",
                     "data", values);
}

/* IEEE half from float, rounding to nearest even. */
/* ---- JSON answers, written as text ---------------------------------------
 * A tensor's values go straight into the answer's text, never into a tree of
 * JSON values (about 60 bytes of memory a value more), and the text is
 * counted before it is made: at most JSON_VALUE_BYTES a value. */

/* The most text one value takes with its comma: "-1.17549435e-38," */
#define JSON_VALUE_BYTES 16

/* Text of the bounded size it was made for. */
typedef struct json_text {
    char *data;
    size_t len, cap;
} json_text;

static void put(json_text *t, const char *s, size_t n) {
    if (t->len + n <= t->cap) memcpy(t->data + t->len, s, n);
    t->len += n;
}

static void put_value(json_text *t, lens_dtype dtype, const void *data, size_t at) {
    char v[32];
    int n;
    if (dtype == LENS_I64) {
        n = snprintf(v, sizeof v, "%lld", (long long)((const int64_t *)data)[at]);
    } else if (dtype == LENS_I32) {
        n = snprintf(v, sizeof v, "%d", ((const int32_t *)data)[at]);
    } else {
        const float f = ((const float *)data)[at];
        /* 9 significant digits read back as the same float32 */
        n = isnan(f)   ? snprintf(v, sizeof v, "\"nan\"")
            : isinf(f) ? snprintf(v, sizeof v, f < 0 ? "\"-inf\"" : "\"inf\"")
                       : snprintf(v, sizeof v, "%.9g", (double)f);
        if (!strpbrk(v, ".e\"")) n += snprintf(v + n, sizeof v - (size_t)n, ".0"); /* a real */
    }
    put(t, v, (size_t)n);
}

/* The nested lists of values data[*at ..] of shape[0 .. ndim - 1]. */
static void put_nested(json_text *t, lens_dtype dtype, int ndim, const int64_t *shape,
                       const void *data, size_t *at) {
    put(t, "[", 1);
    for (int64_t i = 0; i < shape[0]; i++) {
        if (i) put(t, ",", 1);
        if (ndim > 1)
            put_nested(t, dtype, ndim - 1, shape + 1, data, at);
        else
            put_value(t, dtype, data, (*at)++);
    }
    put(t, "]", 1);
}

/* The most text tensor o takes as "name":{"shape":..,"dtype":..,"data":..}. */
static size_t tensor_text_bound(const lens_st_out *o) {
    size_t values = 1, lists = 1;
    for (int d = 0; d < o->ndim; d++) {
        values *= (size_t)o->shape[d];
        lists = lists * (size_t)o->shape[d] + 1;
    }
    return values * JSON_VALUE_BYTES + lists * 2 + 2 * strlen(o->name) + 64 + 24 * LENS_MAX_DIMS;
}

/* Appends ,"name":{"shape", "dtype", "data"} (name escaped by jansson). */
static void put_tensor(json_text *t, const lens_st_out *o, bool first) {
    json_t *name = json_string(o->name);
    size_t n = 0;
    char *quoted = name ? json_dumps(name, JSON_ENCODE_ANY) : NULL;
    json_decref(name);
    if (!quoted) { /* no memory: made too long to be sent */
        t->len = t->cap + 1;
        return;
    }
    if (!first) put(t, ",", 1);
    put(t, quoted, strlen(quoted));
    free(quoted);
    char head[64 + 24 * LENS_MAX_DIMS];
    n = (size_t)snprintf(head, sizeof head, ":{\"shape\":[");
    for (int d = 0; d < o->ndim; d++)
        n += (size_t)snprintf(head + n, sizeof head - n, "%s%lld", d ? "," : "",
                              (long long)o->shape[d]);
    n += (size_t)snprintf(head + n, sizeof head - n, "],\"dtype\":\"%s\",\"data\":",
                          o->dtype == LENS_F32   ? "float32"
                          : o->dtype == LENS_I32 ? "int32"
                                                 : "int64");
    put(t, head, n);
    size_t at = 0;
    if (o->ndim)
        put_nested(t, o->dtype, o->ndim, o->shape, o->data, &at);
    else
        put_value(t, o->dtype, o->data, 0);
    put(t, "}", 1);
}

/* fields and the answer's tensors as one JSON object into resp: 413 when it
 * would be over the response limit, 507 when memory runs out, never a 200
 * that lacks any of it. Takes fields. */
static void json_response(srv_response *resp, const srv_answer *a, json_t *fields) {
    size_t fields_len = 0;
    char *head = srv_json_text(fields, &fields_len); /* "{...}" */
    json_decref(fields);
    size_t bound = fields_len;
    for (int i = 0; i < a->n; i++)
        bound += tensor_text_bound(&a->outs[i]);
    if (head && bound > srv_d.cfg.limits.max_response_bytes) {
        free(head);
        srv_error(resp, SRV_ERR_TOO_LARGE, NULL,
                  "as JSON this answer is up to %zu MB of text, over the limit of %zu MB; ask "
                  "for application/vnd.safetensors (4 bytes a value), or for fewer names, "
                  "positions or prompts",
                  bound >> 20, srv_d.cfg.limits.max_response_bytes >> 20);
        return;
    }
    json_text t = {.data = head ? malloc(bound + 1) : NULL, .cap = bound};
    if (!t.data) {
        free(head);
        srv_error(resp, SRV_ERR_INSUFFICIENT_STORAGE, NULL,
                  "out of memory encoding the answer as JSON (up to %zu MB); ask for "
                  "application/vnd.safetensors (4 bytes a value)",
                  bound >> 20);
        return;
    }
    put(&t, head, fields_len - 1); /* without its closing brace */
    free(head);
    for (int i = 0; i < a->n; i++)
        put_tensor(&t, &a->outs[i], fields_len == 2 && i == 0);
    put(&t, "}", 1);
    if (t.len > t.cap) { /* a name could not be encoded */
        free(t.data);
        srv_out_of_memory(resp);
        return;
    }
    t.data[t.len] = '\0';
    resp->status = 200;
    resp->content_type = "application/json";
    resp->body = t.data;
    resp->body_len = t.len;
}

static uint16_t half_of(float f) {
    union {
        float f;
        uint32_t u;
    } v = {f};
    uint32_t sign = (v.u >> 16) & 0x8000u, exp = (v.u >> 23) & 0xffu, mant = v.u & 0x7fffffu;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        mant |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e), half = mant >> shift,
                 rest = mant & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rest > halfway || (rest == halfway && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)e << 10) | (mant >> 13), rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1))) half++;
    return (uint16_t)half;
}

/* The bytes of a response made of parts sent one after the other, and what
 * to free when it is sent. */
typedef struct stream {
    struct {
        const char *data;
        size_t len;
    } * parts; /* the header, then each tensor */
    int n_parts;
    size_t total;
    void (*release)(void *);
    void *owner;
    char *header;
} stream;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    stream *s = cls;
    size_t at = 0, written = 0;
    for (int i = 0; i < s->n_parts && written < max; i++) {
        size_t len = s->parts[i].len;
        if (pos < at + len) {
            size_t from = (size_t)(pos - at), n = len - from;
            if (n > max - written) n = max - written;
            memcpy(buf + written, s->parts[i].data + from, n);
            written += n;
            pos += n;
        }
        at += len;
    }
    return written ? (ssize_t)written : MHD_CONTENT_READER_END_OF_STREAM;
}

static void stream_free(void *cls) {
    stream *s = cls;
    if (s->release) s->release(s->owner);
    free(s->header);
    free(s->parts);
    free(s);
}

/* The tensors as a safetensors body streamed from their own memory, with the
 * other fields of the answer as JSON in __metadata__["lensd"]. owner is
 * released (release(owner)) once the body is sent, or on failure here. */
static void safetensors_response(srv_response *resp, const lens_st_out *tensors, int n,
                                 json_t *fields, void (*release)(void *), void *owner) {
    size_t meta_len = 0;
    char *meta_json = srv_json_text(fields, &meta_len);
    json_decref(fields);
    if (!meta_json) { /* the answer's other fields would be lost: refuse it whole */
        release(owner);
        srv_error(resp, SRV_ERR_INSUFFICIENT_STORAGE, NULL, "out of memory encoding the answer");
        return;
    }
    const lens_st_meta meta[] = {{"lensd", meta_json}};
    stream *s = calloc(1, sizeof *s);
    lens_err err = {0};
    size_t header_len = 0;
    if (!s || !(s->parts = calloc((size_t)n + 1, sizeof *s->parts)) ||
        !(s->header = lens_st_encode_header(tensors, (size_t)n, meta, 1, &header_len, &err))) {
        free(meta_json);
        if (s) {
            free(s->header);
            free(s->parts);
        }
        free(s);
        release(owner);
        srv_error(resp, SRV_ERR_INTERNAL, NULL, "%s", err.msg[0] ? err.msg : "out of memory");
        return;
    }
    free(meta_json);
    s->parts[s->n_parts].data = s->header;
    s->parts[s->n_parts++].len = header_len;
    s->total = header_len;
    for (int i = 0; i < n; i++) {
        const size_t bytes = lens_st_out_bytes(&tensors[i]);
        s->parts[s->n_parts].data = tensors[i].data;
        s->parts[s->n_parts++].len = bytes;
        s->total += bytes;
    }
    s->release = release;
    s->owner = owner;
    resp->stream =
        MHD_create_response_from_callback(s->total, 1 << 20, stream_read, s, stream_free);
    if (!resp->stream) {
        stream_free(s);
        srv_error(resp, SRV_ERR_INTERNAL, NULL, "out of memory");
        return;
    }
    resp->status = MHD_HTTP_OK;
    resp->content_type = "application/vnd.safetensors";
    resp->body_len = s->total;
}

/* One tensor as a .npy body (format 1.0). */
static void npy_response(srv_response *resp, const lens_st_out *t) {
    const char *descr = t->dtype == LENS_F32 ? "<f4" : t->dtype == LENS_F16 ? "<f2" : "<i8";
    char dict[256];
    int len =
        snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int i = 0; i < t->ndim; i++)
        len += snprintf(dict + len, sizeof dict - (size_t)len, "%lld,%s", (long long)t->shape[i],
                        i + 1 < t->ndim ? " " : "");
    len += snprintf(dict + len, sizeof dict - (size_t)len, "), }");
    size_t header = 10 + (size_t)len + 1, padded = (header + 63) & ~(size_t)63;
    const size_t bytes = lens_st_out_bytes(t);
    char *body = malloc(padded + bytes);
    if (!body) {
        srv_error(resp, SRV_ERR_INSUFFICIENT_STORAGE, NULL, "out of memory for the response");
        return;
    }
    memcpy(body, "\x93NUMPY\x01\x00", 8);
    body[8] = (char)((padded - 10) & 0xff);
    body[9] = (char)((padded - 10) >> 8);
    memcpy(body + 10, dict, (size_t)len);
    memset(body + 10 + len, ' ', padded - 10 - (size_t)len - 1);
    body[padded - 1] = '\n';
    memcpy(body + padded, t->data, bytes);
    resp->status = MHD_HTTP_OK;
    resp->content_type = "application/x-npy";
    resp->body = body;
    resp->body_len = padded + bytes;
}

/* A new answer with room for the model's hook points and 8 more tensors. */
srv_answer *srv_answer_with_room(int n_tensors) {
    srv_answer *a = calloc(1, sizeof *a);
    if (a && !(a->outs = calloc((size_t)n_tensors, sizeof *a->outs))) {
        free(a);
        return NULL;
    }
    if (a) a->cap = n_tensors;
    return a;
}

srv_answer *srv_answer_new(const lens_config *c) {
    return srv_answer_with_room((int)lens_hook_slots(c) + 8);
}

int srv_answer_own(srv_answer *a, void *buffer) {
    if (a->n_owned == a->cap_owned) {
        const int cap = a->cap_owned ? 2 * a->cap_owned : 8;
        void **grown = realloc(a->owned, (size_t)cap * sizeof *grown);
        if (!grown) {
            free(buffer);
            return -1;
        }
        a->owned = grown;
        a->cap_owned = cap;
    }
    a->owned[a->n_owned++] = buffer;
    return 0;
}

void *srv_answer_alloc(srv_answer *a, size_t bytes) {
    void *buffer = malloc(bytes ? bytes : 1);
    return buffer && srv_answer_own(a, buffer) == 0 ? buffer : NULL;
}

/* Frees the answer's buffers (not its tensors' names, which are the cache's). */
static void free_buffers(srv_answer *a) {
    for (int i = 0; i < a->cache.n; i++) {
        free(a->cache.tensors[i].data);
        a->cache.tensors[i].data = NULL;
    }
    free(a->cache.logits);
    a->cache.logits = NULL;
    for (int i = 0; i < a->n_owned; i++)
        free(a->owned[i]);
    a->n_owned = 0;
}

void srv_answer_free(void *p) {
    srv_answer *a = p;
    if (!a) return;
    free_buffers(a);
    lens_token_batch_free(&a->batch);
    lens_cache_free(&a->cache);
    free(a->owned);
    free(a->outs);
    free(a);
}

void srv_answer_add(srv_answer *a, const char *name, lens_dtype dtype, int ndim,
                    const int64_t *shape, const void *data) {
    if (a->n == a->cap) {
        a->overflowed = true;
        return;
    }
    lens_st_out *o = &a->outs[a->n++];
    *o = (lens_st_out){name, dtype, ndim, {0}, data};
    memcpy(o->shape, shape, (size_t)ndim * sizeof *shape);
}

void srv_answer_send(const char *accept, srv_response *resp, srv_answer *a, json_t *fields) {
    if (a->overflowed) {
        srv_error(resp, SRV_ERR_INTERNAL, NULL, "the answer had no room for all its tensors");
        json_decref(fields);
        srv_answer_free(a);
        return;
    }
    size_t bytes = 0;
    for (int i = 0; i < a->n; i++)
        bytes += lens_st_out_bytes(&a->outs[i]);
    if (bytes > srv_d.cfg.limits.max_response_bytes) {
        srv_error(resp, SRV_ERR_TOO_LARGE, NULL,
                  "the answer is %zu MB of tensors, over the limit of %zu MB; ask for fewer "
                  "names, positions or prompts",
                  bytes >> 20, srv_d.cfg.limits.max_response_bytes >> 20);
        json_decref(fields);
        srv_answer_free(a);
        return;
    }
    if (strcmp(accept, "application/vnd.safetensors") == 0) {
        safetensors_response(resp, a->outs, a->n, fields, srv_answer_free, a);
        return;
    }
    if (strcmp(accept, "application/x-npy") == 0) {
        /* one tensor besides the tokens */
        const lens_st_out *only = NULL;
        int others = 0;
        for (int i = 0; i < a->n; i++)
            if (strcmp(a->outs[i].name, "tokens") != 0) only = &a->outs[i], others++;
        if (others == 1)
            npy_response(resp, only);
        else
            srv_error(resp, SRV_ERR_NOT_ACCEPTABLE, NULL,
                      "application/x-npy holds one tensor and this answer has %d besides the "
                      "tokens; ask for one, or use application/vnd.safetensors",
                      others);
        json_decref(fields);
        srv_answer_free(a);
        return;
    }
    for (int i = 0; i < a->n; i++) {
        if (a->outs[i].dtype == LENS_F16) {
            srv_error(resp, SRV_ERR_NOT_ACCEPTABLE, "dtype",
                      "float16 tensors come as application/vnd.safetensors or application/x-npy");
            json_decref(fields);
            srv_answer_free(a);
            return;
        }
    }
    json_response(resp, a, fields);
    srv_answer_free(a);
}

int srv_answer_add_tokens(srv_answer *a) {
    const lens_token_batch *b = &a->batch;
    int64_t *tokens = srv_answer_alloc(a, (size_t)b->B * b->T * sizeof *tokens);
    if (!tokens) return -1;
    for (size_t i = 0; i < (size_t)b->B * b->T; i++)
        tokens[i] = b->tokens[i];
    srv_answer_add(a, "tokens", LENS_I64, 2, (int64_t[]){b->B, b->T}, tokens);
    return 0;
}

void srv_answer_to_half(srv_answer *a) {
    for (int i = 0; i < a->n; i++) {
        lens_st_out *o = &a->outs[i];
        if (o->dtype != LENS_F32) continue;
        size_t numel = 1;
        for (int d = 0; d < o->ndim; d++)
            numel *= (size_t)o->shape[d];
        const float *src = o->data;
        uint16_t *dst =
            (uint16_t *)(void *)src; /* in place: each half is written after its float is read */
        for (size_t k = 0; k < numel; k++)
            dst[k] = half_of(src[k]);
        o->dtype = LENS_F16;
    }
}

json_t *srv_answer_shapes(const srv_answer *a) {
    json_t *tensors = json_object();
    for (int i = 0; i < a->n; i++) {
        json_t *shape = json_array();
        for (int d = 0; d < a->outs[i].ndim; d++)
            json_array_append_new(shape, json_integer(a->outs[i].shape[d]));
        json_object_set_new(tensors, a->outs[i].name, shape);
    }
    return tensors;
}

int srv_answer_select_rows(srv_answer *a, const int64_t *rows, int n_rows) {
    void **kept = calloc((size_t)a->n + 1, sizeof *kept); /* [i]: tensor i's rows */
    for (int i = 0; kept && i < a->n; i++) {
        const lens_st_out *t = &a->outs[i];
        size_t row_bytes = lens_dtype_size(t->dtype);
        for (int d = 1; d < t->ndim; d++)
            row_bytes *= (size_t)t->shape[d];
        if (!(kept[i] = malloc((size_t)n_rows * row_bytes + 1))) {
            for (int k = 0; k < i; k++)
                free(kept[k]);
            free(kept);
            return -1;
        }
        for (int r = 0; r < n_rows; r++)
            memcpy((char *)kept[i] + (size_t)r * row_bytes,
                   (const char *)t->data + (size_t)rows[r] * row_bytes, row_bytes);
    }
    if (!kept) return -1;
    /* the whole batch's buffers go, so that a kept cache holds (and is
     * counted as) the rows it answers */
    free_buffers(a);
    free(a->owned);
    a->owned = kept;
    a->n_owned = a->cap_owned = a->n;
    for (int i = 0; i < a->n; i++) {
        a->outs[i].data = kept[i];
        a->outs[i].shape[0] = n_rows;
    }
    return 0;
}
