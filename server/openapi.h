/*
 * openapi.h: the OpenAPI 3.1 document of the HTTP API, served at
 * /openapi.json, made from the endpoint table and the error table.
 */
#ifndef SRV_OPENAPI_H
#define SRV_OPENAPI_H

#include <jansson.h>

/* The document (a new reference; NULL when out of memory), its {model}
 * path parameter one of model_names (a JSON list of strings, taken). */
json_t *srv_openapi_json(json_t *model_names);

#endif
