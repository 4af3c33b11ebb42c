/*
 * request.h: reading the fields that several endpoints share, on the HTTP
 * thread. Each reader checks a field of a JSON request body and returns 0,
 * or fills resp with an error naming the field (its path, as "hooks[2].name")
 * and returns -1; what it allocates is the caller's.
 */
#ifndef SRV_REQUEST_H
#define SRV_REQUEST_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/capture.h"
#include "core/intervene.h"
#include "core/prompt.h"
#include "server/daemon.h"
#include "server/progress.h"

/* The JSON Schema of a request that srv_read_prompts reads, with more
 * properties (text that starts with a comma, or ""): the endpoints'
 * request_schema. */
#define SRV_PROMPTS_SCHEMA(more_properties)                                                        \
    "{\"type\": \"object\", \"properties\": {\"prompt\": {\"type\": \"string\"}, "                 \
    "\"prompts\": {\"type\": \"array\", \"items\": {\"type\": \"string\"}, \"minItems\": 1}, "     \
    "\"tokens\": {\"type\": \"array\", \"minItems\": 1, \"items\": {\"type\": \"array\", "         \
    "\"minItems\": 1, \"items\": {\"type\": \"integer\", \"minimum\": 0}}}, "                      \
    "\"prepend_bos\": {\"type\": \"boolean\"}, \"padding_side\": {\"enum\": [\"left\", "           \
    "\"right\"]}" more_properties "}}"

/* An optional boolean field (fallback when absent). */
int srv_optional_bool(json_t *body, const char *key, bool fallback, bool *out, srv_response *resp);

/* An optional integer field in [min, max] (fallback when absent): 422 out of
 * range, 400 not an integer. */
int srv_optional_int(json_t *body, const char *key, long fallback, long min, long max, long *out,
                     srv_response *resp);

/* The request's prompts as TL's to_tokens makes them: exactly one of
 * "prompt", "prompts" or "tokens", with "prepend_bos" and "padding_side",
 * within limits.max_batch_tokens (prompts x padded length), limits.max_tokens
 * and the model's context (a
 * prompt is tokenized no further than that). */
int srv_read_prompts(const lens_model *m, json_t *body, lens_token_batch *batch,
                     srv_response *resp);

/* Sets fields' "processing" to the job's weights' processing (the comma
 * list of applied steps, "none" for none): every model endpoint's answer
 * says which weights computed it. */
void srv_add_processing(const srv_job *job, json_t *fields);

/* "positions": a non-empty list of positions (negative from the end)
 * resolved against T into *out[*n] (NULL, 0 when absent). */
int srv_read_positions(json_t *body, int T, int32_t **out, int *n, srv_response *resp);

/* The hook points of "names" (exact) and "names_filter" (globs) set in
 * enabled[lens_hook_slots(c)]; neither: every hook point. */
int srv_read_names(const lens_config *c, json_t *body, uint8_t *enabled, srv_response *resp);

/* The optional list of indices body[key], each below limit (negatives count
 * from the end), into *out[*n]; absent: 0 .. limit - 1. */
int srv_read_indices(json_t *body, const char *key, int limit, int **out, int *n,
                     srv_response *resp);

/* One answer token: a string that is one token without BOS, or an id. */
int srv_read_answer(const lens_model *m, json_t *v, const char *field, int32_t *id,
                    srv_response *resp);

/* body's "answers": one [answer, wrong] pair for all B prompts, or a list of
 * one pair per prompt, into answer[B] and wrong[B]. */
int srv_read_answer_pairs(const lens_model *m, json_t *body, int B, int32_t *answer, int32_t *wrong,
                          srv_response *resp);

/* body's optional "progress_id" (a string) copied into *out (NULL when
 * absent). */
int srv_read_progress_id(json_t *body, char **out, srv_response *resp);

/* Puts prefix before the field of the error in resp (or names fallback when
 * it has none): errors of a nested object name their full path. */
void srv_prefix_error_field(srv_response *resp, const char *prefix, const char *fallback);

/* A request's interventions ("hooks") and what they own. */
typedef struct srv_hooks {
    lens_intervention *items;
    int n;
    float **values;       /* per item */
    int32_t **positions;  /* per item */
    int32_t **heads;      /* per item */
    lens_captured *means; /* per item: the batch mean of a clean run (mean ablation) */
    bool *is_mean;        /* per item: op mean (copies means[i]); patch copies from source */
    lens_token_batch source_batch;
    lens_cache source; /* the patch_from run */
} srv_hooks;

/* "hooks" into h: a non-empty list of {name, op, value | factor, positions,
 * heads} with ops zero, mean, set, add, scale, patch, positions resolved
 * against T. The sources of mean and patch are set when they run. */
int srv_read_hooks(const lens_config *c, json_t *body, int T, srv_hooks *h, srv_response *resp);

/* Frees what h holds. */
void srv_hooks_free(srv_hooks *h);

/* The batch's str_tokens as a JSON list of lists (a new reference). */
json_t *srv_str_tokens_json(const lens_model *m, const lens_token_batch *b);

/* The batch's token ids as a JSON list of lists (a new reference). */
json_t *srv_tokens_json(const lens_token_batch *b);

/* Answers a long job that progress said to stop: cancelled (by DELETE
 * /v1/progress/{id}) or client_closed (its client closed the connection).
 * what: how far it got. Returns false, answering nothing, when the job was
 * not stopped. */
bool srv_answer_if_stopped(srv_job *job, const srv_progress *progress, const char *progress_id,
                           const char *what);

#endif
