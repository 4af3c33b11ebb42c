/*
 * main.c: the lensd executable's entry point: picks the command.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/lk.h"
#include "server/cli.h"
#include "server/serve.h"

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

/* OpenMP workers that spin while waiting take the cores that BLAS and other
 * processes need: on a shared 2-core machine a forward pass ran 5x slower
 * with libgomp's default spinning than with OMP_WAIT_POLICY=PASSIVE. libgomp
 * reads the variable before main() runs, so lensd sets it and restarts
 * itself once; a value the user set is kept. */
static void prefer_passive_openmp(char **argv) {
    if (getenv("OMP_WAIT_POLICY")) return;
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv); /* on failure, run on with the default policy */
}

int main(int argc, char **argv) {
    prefer_passive_openmp(argv);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("lensd %s\n", LENS_VERSION);
        return 0;
    }
    const char *command = argv[1];
    if (strcmp(command, "serve") == 0) {
        lk_set_threads(0);
        return srv_serve_main(argc - 1, argv + 1);
    }
    if (strcmp(command, "info") && strcmp(command, "run") && strcmp(command, "cache")) {
        fprintf(stderr, "lensd: unknown command \"%s\"\n\n%s", command, usage);
        return 2;
    }
    lk_set_threads(0);
    return srv_cli_main(command, argc - 1, argv + 1);
}
