/*
 * json_fields.h: reading typed fields of a configuration file's JSON object,
 * with a default when the field is absent or null and a message naming the
 * file and field when it has the wrong type.
 */
#ifndef LENS_JSON_FIELDS_H
#define LENS_JSON_FIELDS_H

#include <jansson.h>
#include <stdbool.h>

#include "core/lens_error.h"

/* *out = obj[key], a non-negative int; fallback when absent (an error when
 * required). Returns 0 or -1. */
int lens_json_int(json_t *obj, const char *key, int fallback, bool required, int *out,
                  const char *file, lens_err *err);

/* *out = obj[key] (true/false), or fallback when absent. Returns 0 or -1. */
int lens_json_bool(json_t *obj, const char *key, bool fallback, bool *out, const char *file,
                   lens_err *err);

/* *out = obj[key] (any number), or fallback when absent. Returns 0 or -1. */
int lens_json_float(json_t *obj, const char *key, float fallback, float *out, const char *file,
                    lens_err *err);

/* The same in double precision (rotary bases and scaling factors). */
int lens_json_double(json_t *obj, const char *key, double fallback, double *out, const char *file,
                     lens_err *err);

/* obj[key] when it is a string, else fallback. */
const char *lens_json_str(json_t *obj, const char *key, const char *fallback);

#endif
