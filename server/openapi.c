/*
 * openapi.c: the OpenAPI document (openapi.h). Each model endpoint's path,
 * summary and request schema come from its row of the endpoint table; every
 * error answer is the one Error schema, whose codes are SRV_ERRORS.
 */
#include "server/openapi.h"

#include <stdio.h>

#include "server/endpoint.h"
#include "server/reply.h"

/* {"$ref": "#/components/..."} */
static json_t *ref(const char *path) {
    return json_pack("{s:s}", "$ref", path);
}

/* A response of JSON body schema. */
static json_t *json_response(const char *description, json_t *schema) {
    return json_pack("{s:s, s:{s:{s:o}}}", "description", description, "content",
                     "application/json", "schema", schema);
}

/* The error answers an operation may give, by status. */
static json_t *error_responses(json_t *responses) {
    for (int k = 0; k < SRV_N_ERRORS; k++) {
        char status[8];
        snprintf(status, sizeof status, "%u", srv_error_status((srv_error_kind)k));
        if (!json_object_get(responses, status))
            json_object_set_new(responses, status,
                                json_response("an error", ref("#/components/schemas/Error")));
    }
    return responses;
}

/* A GET that answers a JSON object. */
static json_t *plain_get(const char *summary) {
    return json_pack(
        "{s:{s:s, s:o}}", "get", "summary", summary, "responses",
        error_responses(json_pack("{s:o}", "200", json_response("the answer", json_object()))));
}

/* The POST of one endpoint. */
static json_t *endpoint_post(const srv_endpoint *e, json_t *model_names) {
    json_t *schema = json_loads(e->request_schema, 0, NULL);
    json_t *ok = json_pack("{s:s, s:{s:{s:{}}, s:{s:{s:s, s:s}}, s:{s:{s:s, s:s}}}}", "description",
                           "the answer: JSON, or the tensors as safetensors or npy (Accept)",
                           "content", "application/json", "schema", "application/octet-stream",
                           "schema", "type", "string", "format", "binary", "application/x-npy",
                           "schema", "type", "string", "format", "binary");
    return json_pack("{s:{s:s, s:s, s:[{s:s, s:s, s:b, s:{s:s, s:o}}], s:{s:b, s:{s:{s:o}}}, s:o}}",
                     "post", "operationId", e->name, "summary", e->summary, "parameters", "name",
                     "model", "in", "path", "required", 1, "schema", "type", "string", "enum",
                     json_incref(model_names), "requestBody", "required", 1, "content",
                     "application/json", "schema", schema ? schema : json_object(), "responses",
                     error_responses(json_pack("{s:o}", "200", ok)));
}

json_t *srv_openapi_json(json_t *model_names) {
    json_t *paths = json_pack(
        "{s:o, s:o, s:o, s:o, s:o}", "/healthz", plain_get("Liveness: the process answers."),
        "/readyz", plain_get("Readiness: the models are loaded and the daemon is not draining."),
        "/v1/models", plain_get("The loaded models."), "/v1/capabilities",
        plain_get("Models, devices, dtypes, queue depth and free memory, for routers."),
        "/openapi.json", plain_get("This document."));
    for (int i = 0; paths && i < srv_n_endpoints; i++) {
        char path[96];
        snprintf(path, sizeof path, "/v1/models/{model}/%s", srv_endpoints[i]->name);
        json_object_set_new(paths, path, endpoint_post(srv_endpoints[i], model_names));
    }
    json_decref(model_names);
    json_t *codes = json_array();
    for (int k = 0; k < SRV_N_ERRORS; k++)
        json_array_append_new(codes, json_string(srv_error_code((srv_error_kind)k)));
    json_t *error =
        json_pack("{s:s, s:[s], s:{s:{s:s, s:[s, s], s:{s:{s:s, s:o}, s:{s:s}, s:{s:s}}}}}", "type",
                  "object", "required", "error", "properties", "error", "type", "object",
                  "required", "code", "message", "properties", "code", "type", "string", "enum",
                  codes, "message", "type", "string", "field", "type", "string");
    return json_pack("{s:s, s:{s:s, s:s}, s:o, s:{s:{s:o}, s:{s:{s:s, s:s}}}, s:[{s:[]}, {}]}",
                     "openapi", "3.1.0", "info", "title", "lensd", "version", LENS_VERSION, "paths",
                     paths, "components", "schemas", "Error", error, "securitySchemes", "bearer",
                     "type", "http", "scheme", "bearer", "security", "bearer");
}
