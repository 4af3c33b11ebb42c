/*
 * cli.h: the `lensd info`, `lensd run` and `lensd cache` commands.
 */
#ifndef SRV_CLI_H
#define SRV_CLI_H

#include <jansson.h>

#include "core/model.h"

/* Runs command ("info", "run" or "cache") with its own argv (argv[0] is the
 * command). Prints results to stdout and errors to stderr. Returns the
 * process exit status. */
int srv_cli_main(const char *command, int argc, char **argv);

/* A model's name, source, config, processing and hook points as JSON (a new
 * reference). */
json_t *srv_model_info_json(const lens_model *m);

#endif
