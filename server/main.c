/*
 * main.c: the lensd executable's entry point: picks the command.
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "server/cli.h"
#include "server/serve.h"
#include "server/startup.h"

static const char usage[] =
    "usage: lensd COMMAND [OPTIONS]\n"
    "\n"
    "commands:\n"
    "  info  --model M                 config, weight processing and every hook point (JSON)\n"
    "  run   --model M --prompt TEXT [--answer TEXT]... [--top-k K]\n"
    "                                  what TransformerLens's utils.test_prompt prints\n"
    "  cache --model M (--prompt TEXT | --tokens ID,ID,... | --prompts-file F.json)...\n"
    "        [--names GLOB]... [--positions P,P,...] [--logits-only | --last-logits]\n"
    "        --out FILE.safetensors    run_with_cache: tokens, logits and activations\n"
    "                                  (--positions: as TL's pos_slice; negative from the end)\n"
    "  serve [--config FILE] [--model NAME=PATH_OR_ID]... [--device D] [--host ADDR]\n"
    "        [--port N] [--web DIR] [--tokens-file FILE] [--tls-cert F --tls-key F]\n"
    "        [--insecure] [--threads N]\n"
    "                                  the HTTP daemon (docs/API.md, config/README.md)\n"
    "\n"
    "model options (info, run, cache):\n"
    "  --model M                a model directory, a TransformerLens-native tl_config.json,\n"
    "                           or a Hugging Face id in the local cache (gpt2, gpt2-small)\n"
    "  --processing SPEC        default | none | comma list of fold_ln,\n"
    "                           center_writing_weights, center_unembed, fold_value_biases\n"
    "  --no-processing          as from_pretrained_no_processing\n"
    "  --device D               cpu (default), cuda or cuda:N\n"
    "  --use-attn-result, --use-split-qkv-input, --use-hook-mlp-in, --use-attn-in\n"
    "prompt options: --no-bos, --padding-side left|right\n"
    "\n"
    "  lensd --version          print the version\n";

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("lensd %s\n", LENS_VERSION);
        return 0;
    }
    const char *command = argv[1];
    const bool serve = strcmp(command, "serve") == 0;
    if (!serve && strcmp(command, "info") && strcmp(command, "run") && strcmp(command, "cache")) {
        fprintf(stderr, "lensd: unknown command \"%s\"\n\n%s", command, usage);
        return 2;
    }
    srv_prepare_process(argv);
    return serve ? srv_serve_main(argc - 1, argv + 1) : srv_cli_main(command, argc - 1, argv + 1);
}
