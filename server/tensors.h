/*
 * tensors.h: answers made of named tensors (tokens, logits, activations) and
 * their encodings: JSON, safetensors (streamed) or npy, chosen by Accept.
 */
#ifndef SRV_TENSORS_H
#define SRV_TENSORS_H

#include <jansson.h>

#include "core/capture.h"
#include "core/prompt.h"
#include "core/safetensors.h"
#include "server/daemon.h"

/* The tensors of one answer and the memory they live in, freed with it. */
typedef struct srv_answer {
    lens_token_batch batch;
    lens_cache cache;
    lens_st_out *outs; /* the tensors answered: n of room for cap */
    int n, cap;
    void **owned; /* buffers they point into besides the cache: n_owned of cap_owned */
    int n_owned, cap_owned;
    bool overflowed; /* a tensor was added past cap: answered as an internal error */
} srv_answer;

/* A new answer with room for n_tensors tensors, or NULL when out of memory. */
srv_answer *srv_answer_with_room(int n_tensors);

/* A new answer with room for the model's hook points and 8 more tensors, or
 * NULL when out of memory. */
srv_answer *srv_answer_new(const lens_config *c);

/* bytes of memory that the answer owns (freed with it), or NULL when out of
 * memory. */
void *srv_answer_alloc(srv_answer *a, size_t bytes);

/* Makes buffer (malloc'd) the answer's, freed with it. Returns -1, freeing
 * buffer, when out of memory. */
int srv_answer_own(srv_answer *a, void *buffer);

/* Frees an answer and everything it holds (void * for stream callbacks).
 * Accepts NULL. */
void srv_answer_free(void *answer);

/* Appends a tensor (not copied: data must live as long as the answer). Past
 * the answer's room it is dropped and the answer marked overflowed. */
void srv_answer_add(srv_answer *a, const char *name, lens_dtype dtype, int ndim,
                    const int64_t *shape, const void *data);

/* Appends the answer's batch tokens as int64 (TL's dtype). Returns -1 when
 * out of memory. */
int srv_answer_add_tokens(srv_answer *a);

/* Keeps only the rows (axis 0: prompts) of every tensor, in that order, in
 * copies of their own, and frees the buffers they pointed into (the cache's
 * data and every buffer it owned). Returns -1 when out of memory. */
int srv_answer_select_rows(srv_answer *a, const int64_t *rows, int n_rows);

/* Turns every float32 tensor into float16 in place (round to nearest even). */
void srv_answer_to_half(srv_answer *a);

/* Encodes the tensors and the other fields (a JSON object, taken) as accept
 * asks into resp, and frees the answer, now or once the stream is sent.
 * Refuses answers over the response-size limit (413) and npy with other than
 * one tensor besides the tokens (406). */
void srv_answer_send(const char *accept, srv_response *resp, srv_answer *a, json_t *fields);

/* {name: shape} of the answer's tensors (a new reference). */
json_t *srv_answer_shapes(const srv_answer *a);

/* One float as JSON: a number, or "-inf" / "inf" / "nan". */
json_t *srv_json_float(float v);

/* {"shape", "dtype", "data"} of a float32, int32 or int64 tensor, or NULL
 * when memory runs out (never a part of it). */
json_t *srv_tensor_json(lens_dtype dtype, int ndim, const int64_t *shape, const void *data);

#endif
