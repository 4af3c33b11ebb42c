#!/usr/bin/env bash
# The lensd daemon from a fresh machine: sets up what is missing, builds,
# and serves the bundled demo models (models/induction-2l, models/brackets;
# their model cards say what to look at) with `lensd serve` on port
# $LENSD_PORT (default 8080), until Ctrl-C. Extra arguments go to
# `lensd serve` (for example --device cuda:0, or --model NAME=PATH to serve
# other models instead).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
"$repo/tools/setup.sh" --build-only
build=${LENSD_BUILD:-$repo/build}
[ -f "$build/build.ninja" ] || meson setup "$build" >/dev/null
ninja -C "$build" >/dev/null
port=${LENSD_PORT:-8080}
cat <<EOF
== lensd on http://127.0.0.1:$port (Ctrl-C stops it)
   dashboard: http://127.0.0.1:$port/
   API:       http://127.0.0.1:$port/v1/models   (docs/API.md)
   models:    induction-2l (models/induction-2l/README.md), brackets (models/brackets/README.md)
Try:
  curl -s localhost:$port/v1/models/induction-2l/attention -d '{"prompt": "The cat sat on the mat. The cat sat on the mat.", "layers": [1]}'
  curl -s localhost:$port/v1/models/induction-2l/test_prompt -d '{"prompt": "abcdefgh abcdefg", "answer": "h", "prepend_space_to_answer": false}'
  curl -s localhost:$port/v1/models/brackets/logits -d '{"prompts": ["(())", "(()"], "positions": [0]}'
EOF
exec "$build/server/lensd" serve --port "$port" "$@"
