/*
 * endpoint.c: the table of endpoints (endpoint.h).
 */
#include "server/endpoint.h"

#include <string.h>

const srv_endpoint *const srv_endpoints[] = {
    &srv_endpoint_tokenize,       &srv_endpoint_detokenize,     &srv_endpoint_logits,
    &srv_endpoint_run_with_cache, &srv_endpoint_attention,      &srv_endpoint_test_prompt,
    &srv_endpoint_logit_diff,     &srv_endpoint_run_with_hooks, &srv_endpoint_generate,
    &srv_endpoint_patch,          &srv_endpoint_weights,
};
const int srv_n_endpoints = (int)(sizeof srv_endpoints / sizeof srv_endpoints[0]);

const srv_endpoint *srv_endpoint_find(const char *name, size_t len) {
    for (int i = 0; i < srv_n_endpoints; i++)
        if (strlen(srv_endpoints[i]->name) == len && memcmp(srv_endpoints[i]->name, name, len) == 0)
            return srv_endpoints[i];
    return NULL;
}
