/*
 * json_fields.c: typed fields of configuration JSON (json_fields.h).
 */
#include "core/json_fields.h"

#include <limits.h>

static bool absent(json_t *v) {
    return !v || json_is_null(v);
}

int lens_json_int(json_t *obj, const char *key, int fallback, bool required, int *out,
                  const char *file, lens_err *err) {
    json_t *v = json_object_get(obj, key);
    if (absent(v)) {
        if (required) {
            lens_err_set(err, "%s: missing field \"%s\"", file, key);
            return -1;
        }
        *out = fallback;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT_MAX) {
        lens_err_set(err, "%s: field \"%s\" must be a non-negative integer", file, key);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

int lens_json_bool(json_t *obj, const char *key, bool fallback, bool *out, const char *file,
                   lens_err *err) {
    json_t *v = json_object_get(obj, key);
    if (absent(v)) {
        *out = fallback;
        return 0;
    }
    if (!json_is_boolean(v)) {
        lens_err_set(err, "%s: field \"%s\" must be true or false", file, key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

int lens_json_double(json_t *obj, const char *key, double fallback, double *out, const char *file,
                     lens_err *err) {
    json_t *v = json_object_get(obj, key);
    if (absent(v)) {
        *out = fallback;
        return 0;
    }
    if (!json_is_number(v)) {
        lens_err_set(err, "%s: field \"%s\" must be a number", file, key);
        return -1;
    }
    *out = json_number_value(v);
    return 0;
}

int lens_json_float(json_t *obj, const char *key, float fallback, float *out, const char *file,
                    lens_err *err) {
    double value;
    if (lens_json_double(obj, key, fallback, &value, file, err)) return -1;
    *out = (float)value;
    return 0;
}

const char *lens_json_str(json_t *obj, const char *key, const char *fallback) {
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : fallback;
}
