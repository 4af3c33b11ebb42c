/*
 * weights.c: POST /v1/models/{model}/weights — the model's parameters under
 * TransformerLens's state_dict names and shapes (core/weights.h), as the
 * request's "processing" leaves them: every one, the "names" asked for, or
 * those matching "names_filter" globs; with "list", only their names,
 * shapes and dtypes.
 *
 * parse cannot see the request's processing (the router takes it out of the
 * body), so it checks names against every name some processing of the
 * checkpoint has (a folded LayerNorm's weights included) and sizes the
 * answer by them; run answers a name that the chosen processing folded
 * away with a 400 naming the processing.
 */
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

#include "core/weights.h"
#include "server/endpoint.h"
#include "server/request.h"
#include "server/tensors.h"

typedef struct weights_params {
    char (*names)[64]; /* the chosen parameters, n of them, in TL's order */
    bool *exact;       /* per name: asked for by "names" (must exist), not only by a glob */
    int n;
    bool list, half;
} weights_params;

static void free_params(void *params) {
    weights_params *p = params;
    if (!p) return;
    free(p->names);
    free(p->exact);
    free(p);
}

/* Marks chosen[i] for each "names" entry (exact[i] too) and each match of
 * a "names_filter" glob in all[n]; neither field: every parameter. */
static int choose(json_t *body, const lens_param *all, int n, uint8_t *chosen, bool *exact,
                  srv_response *resp) {
    json_t *names = json_object_get(body, "names"), *filter = json_object_get(body, "names_filter");
    if (!names && !filter) {
        memset(chosen, 1, (size_t)n);
        return 0;
    }
    if (names && !json_is_array(names)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "names", "names must be a list of parameter names");
        return -1;
    }
    char field[48];
    for (size_t i = 0; names && i < json_array_size(names); i++) {
        json_t *v = json_array_get(names, i);
        snprintf(field, sizeof field, "names[%zu]", i);
        if (!json_is_string(v)) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field, "%s must be a string", field);
            return -1;
        }
        int near[3], n_near = 0;
        const int at = lens_params_find(all, n, json_string_value(v), near, &n_near);
        if (at < 0) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                      "\"%.64s\" is not a parameter of this model; nearest: %s%s%s%s%s",
                      json_string_value(v), n_near > 0 ? all[near[0]].name : "",
                      n_near > 1 ? ", " : "", n_near > 1 ? all[near[1]].name : "",
                      n_near > 2 ? ", " : "", n_near > 2 ? all[near[2]].name : "");
            return -1;
        }
        chosen[at] = 1;
        exact[at] = true;
    }
    if (!filter) return 0;
    const bool one = json_is_string(filter);
    if (!one && !json_is_array(filter)) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "names_filter",
                  "names_filter must be a glob or a list of globs");
        return -1;
    }
    for (size_t i = 0; i < (one ? 1 : json_array_size(filter)); i++) {
        json_t *v = one ? filter : json_array_get(filter, i);
        snprintf(field, sizeof field, one ? "names_filter" : "names_filter[%zu]", i);
        int matched = 0;
        for (int k = 0; json_is_string(v) && k < n; k++)
            if (fnmatch(json_string_value(v), all[k].name, 0) == 0) chosen[k] = 1, matched++;
        if (!matched) {
            srv_error(resp, SRV_ERR_BAD_REQUEST, field,
                      json_is_string(v) ? "%s matches no parameter of this model"
                                        : "%s must be a string",
                      field);
            return -1;
        }
    }
    return 0;
}

static int parse(const srv_model *sm, json_t *body, void **params, srv_response *resp) {
    const lens_model *m = sm->model;
    const int n = lens_params_list(m, true, NULL, 0);
    weights_params *p = calloc(1, sizeof *p);
    lens_param *all = malloc((size_t)n * sizeof *all);
    uint8_t *chosen = calloc((size_t)n, 1);
    bool *exact = calloc((size_t)n, sizeof *exact);
    int rc = -1;
    *params = p;
    if (!p || !all || !chosen || !exact) {
        srv_out_of_memory(resp);
        goto done;
    }
    lens_params_list(m, true, all, n);
    json_t *dtype = json_object_get(body, "dtype");
    if (dtype && (!json_is_string(dtype) || (strcmp(json_string_value(dtype), "float32") &&
                                             strcmp(json_string_value(dtype), "float16")))) {
        srv_error(resp, SRV_ERR_BAD_REQUEST, "dtype", "dtype must be \"float32\" or \"float16\"");
        goto done;
    }
    p->half = dtype && strcmp(json_string_value(dtype), "float16") == 0;
    if (srv_optional_bool(body, "list", false, &p->list, resp) ||
        choose(body, all, n, chosen, exact, resp))
        goto done;
    double bytes = 0;
    for (int i = 0; i < n; i++)
        if (chosen[i]) p->n++, bytes += (double)lens_param_numel(&all[i]) * (p->half ? 2 : 4);
    if (!p->list && bytes > (double)srv_d.cfg.limits.max_response_bytes) {
        srv_error(resp, SRV_ERR_TOO_LARGE, NULL,
                  "these %d parameters are %.0f MB, over the %zu MB of "
                  "limits.max_response_bytes; ask for fewer names (names, names_filter) or "
                  "for \"dtype\": \"float16\"",
                  p->n, bytes / (1 << 20), srv_d.cfg.limits.max_response_bytes >> 20);
        goto done;
    }
    if (!(p->names = malloc(((size_t)p->n + 1) * sizeof *p->names)) ||
        !(p->exact = malloc(((size_t)p->n + 1) * sizeof *p->exact))) {
        srv_out_of_memory(resp);
        goto done;
    }
    for (int i = 0, k = 0; i < n; i++)
        if (chosen[i]) {
            memcpy(p->names[k], all[i].name, sizeof p->names[k]);
            p->exact[k++] = exact[i];
        }
    rc = 0;
done:
    free(all);
    free(chosen);
    free(exact);
    return rc;
}

/* {name: {"shape", "dtype"}} of the chosen parameters (a new reference). */
static json_t *list_json(const lens_param *const *chosen, int n, bool half) {
    json_t *out = json_object();
    for (int i = 0; i < n; i++) {
        json_t *shape = json_array();
        for (int d = 0; d < chosen[i]->ndim; d++)
            json_array_append_new(shape, json_integer(chosen[i]->shape[d]));
        json_object_set_new(
            out, chosen[i]->name,
            json_pack("{s:o, s:s}", "shape", shape, "dtype", half ? "float16" : "float32"));
    }
    return out;
}

static void run(srv_job *job) {
    weights_params *p = job->params;
    srv_response *resp = &job->response;
    const lens_model *m = job->lm; /* host weights (model->w), wherever the model runs */
    const int n = lens_params_list(m, false, NULL, 0);
    lens_param *all = malloc((size_t)n * sizeof *all);
    const lens_param **chosen = malloc(((size_t)p->n + 1) * sizeof *chosen);
    srv_answer *a = NULL;
    if (!all || !chosen) {
        srv_out_of_memory(resp);
        goto done;
    }
    lens_params_list(m, false, all, n);
    int k = 0;
    for (int i = 0; i < p->n; i++) {
        const lens_param *found = NULL;
        for (int j = 0; j < n && !found; j++)
            if (strcmp(all[j].name, p->names[i]) == 0) found = &all[j];
        if (found) {
            chosen[k++] = found;
        } else if (p->exact[i]) {
            char names[128];
            lens_processing_names(m->processing, names, sizeof names);
            srv_error(resp, SRV_ERR_BAD_REQUEST, "names",
                      "%s is not a parameter of this model processed %s (fold_ln folds the "
                      "LayerNorm weights into the weights that read them); ask with "
                      "\"processing\": \"none\"",
                      p->names[i], names);
            goto done;
        }
    }
    json_t *fields = json_pack("{s:s}", "model", job->model->name);
    srv_add_processing(job, fields);
    if (p->list) {
        json_object_set_new(fields, "weights", list_json(chosen, k, p->half));
        srv_json(resp, 200, fields);
        goto done;
    }
    if (!(a = srv_answer_with_room(k + 1))) {
        json_decref(fields);
        srv_out_of_memory(resp);
        goto done;
    }
    for (int i = 0; i < k; i++) {
        const lens_param *w = chosen[i];
        char *name = srv_answer_alloc(a, sizeof w->name); /* the answer may outlive params */
        float *data = name ? srv_answer_alloc(a, lens_param_numel(w) * sizeof *data) : NULL;
        if (!data) {
            json_decref(fields);
            srv_out_of_memory(resp);
            goto done;
        }
        memcpy(name, w->name, sizeof w->name);
        lens_param_read(w, data);
        srv_answer_add(a, name, LENS_F32, w->ndim, w->shape, data);
    }
    if (p->half) srv_answer_to_half(a);
    srv_answer_send(job->accept, resp, a, fields);
    a = NULL; /* the answer's own now, freed once sent */
done:
    srv_answer_free(a);
    free(all);
    free(chosen);
}

const srv_endpoint srv_endpoint_weights = {
    .name = "weights",
    .summary = "The model's parameters under TransformerLens's state_dict names and shapes "
               "(names, names_filter; all by default), as its processing leaves them; list: "
               "names, shapes and dtypes only.",
    .request_schema =
        "{\"type\": \"object\", \"properties\": {\"names\": {\"type\": \"array\", \"items\": "
        "{\"type\": \"string\"}}, \"names_filter\": {\"oneOf\": [{\"type\": \"string\"}, "
        "{\"type\": \"array\", \"items\": {\"type\": \"string\"}}]}, \"list\": {\"type\": "
        "\"boolean\"}, \"dtype\": {\"enum\": [\"float32\", \"float16\"]}, \"processing\": "
        "{\"type\": \"string\"}}}",
    .parse = parse,
    .run = run,
    .free_params = free_params,
};
