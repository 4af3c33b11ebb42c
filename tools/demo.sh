#!/usr/bin/env bash
# The lensd daemon on real models, from a fresh machine: sets up what is
# missing, builds, converts the trained ARENA balanced-bracket classifier
# (from ../shared, with tools/convert_tl_checkpoint.py), shows the command
# line on it, and then serves it with `lensd serve` on port $LENSD_PORT
# (default 8080), with GPT-2 too when one is in the local Hugging Face
# cache, until Ctrl-C. (The bundled demo models arrive with the next issue;
# then this command serves them.)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
venv=$("$repo/tools/setup.sh" | tail -n 1)
build=${LENSD_BUILD:-$repo/build}
shared=${LENSD_SHARED:-$repo/../shared}
[ -f "$build/build.ninja" ] || meson setup "$build" >/dev/null
ninja -C "$build" >/dev/null
lensd="$build/server/lensd"
demo="$build/demo"
mkdir -p "$demo"

echo "== lensd $("$lensd" --version | cut -d' ' -f2): the ARENA bracket classifier"
"$venv/bin/python" - "$demo" <<'PY'
import json, sys
d = sys.argv[1]
json.dump({"n_layers": 3, "d_model": 56, "n_heads": 2, "d_head": 28, "d_mlp": 56, "n_ctx": 42,
           "d_vocab": 5, "d_vocab_out": 2, "attention_dir": "bidirectional", "act_fn": "relu",
           "normalization_type": "LN", "eps": 1e-5, "use_attn_result": True,
           "use_hook_tokens": True}, open(f"{d}/brackets-config.json", "w"))
json.dump({"tokenizer": {"type": "list", "tokens": ["[start]", "[pad]", "[end]", "(", ")"],
                         "split": "chars"},
           "bos_token": "[start]", "eos_token": "[end]", "pad_token": "[pad]",
           "append_eos": True, "mask_pad_keys": True}, open(f"{d}/brackets-tokens.json", "w"))
PY
"$venv/bin/python" tools/convert_tl_checkpoint.py \
  "$shared/data/arena-brackets/brackets_model_state_dict.pt" "$demo/brackets-config.json" \
  "$demo/brackets" --name arena-brackets --tokenizer-json "$demo/brackets-tokens.json" >/dev/null

"$lensd" info --model "$demo/brackets" > "$demo/brackets-info.json"
"$venv/bin/python" - "$demo/brackets-info.json" <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
c = info["config"]
print(f"{info['name']}: {c['n_layers']} layers, d_model {c['d_model']}, {c['n_heads']} heads, "
      f"{c['attention_dir']}, {len(info['hook_points'])} hook points, processing: {info['processing']}")
PY

strings=("()()" "(())" "((()" ")(" "(()())")
args=()
for s in "${strings[@]}"; do args+=(--prompt "$s"); done
"$lensd" cache --model "$demo/brackets" "${args[@]}" --names 'blocks.*.attn.hook_pattern' \
  --out "$demo/brackets-cache.safetensors"
"$venv/bin/python" - "$demo/brackets-cache.safetensors" "${strings[@]}" <<'PY'
import sys
from safetensors.numpy import load_file
cache = load_file(sys.argv[1])
probs = cache["logits"][:, 0]
for s, (unbalanced, balanced) in zip(sys.argv[2:], probs):
    print(f"  {s:10s} -> {'balanced' if balanced > unbalanced else 'unbalanced'}")
print("cached:", {k: v.shape for k, v in cache.items()})
PY

models=(--model "brackets=$demo/brackets")
if "$lensd" info --model gpt2 >/dev/null 2>&1; then
  echo "== GPT-2 from the local Hugging Face cache"
  "$lensd" run --model gpt2 --prompt "Why did the elephant cross the" --answer road --top-k 5
  models+=(--model gpt2=gpt2)
fi
port=${LENSD_PORT:-8080}
web=()
[ -d "$repo/web" ] && web=(--web "$repo/web")
cat <<EOF
== lensd serve on http://127.0.0.1:$port (Ctrl-C stops it). Try:
  curl -s localhost:$port/v1/models
  curl -s localhost:$port/v1/models/brackets/logits -d '{"prompts": ["(())", "(()"]}'
  curl -s localhost:$port/v1/models/brackets/attention -d '{"prompt": "(()())", "layers": [0]}'
  curl -s localhost:$port/v1/models/brackets/run_with_cache -H 'Accept: application/vnd.safetensors' \\
       -d '{"prompt": "(())", "names_filter": "blocks.*.hook_resid_post"}' > cache.safetensors
EOF
exec "$lensd" serve "${models[@]}" "${web[@]}" --port "$port"
