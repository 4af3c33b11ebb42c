#!/usr/bin/env bash
# Installs TransformerLens 4.3 (TransformerBridge) into its own folder, next to
# the venv's TransformerLens 3.9 (tools/requirements.txt): the two cannot share
# one environment, so 4.3 goes into a --target folder that only the family
# reference step puts first on PYTHONPATH (tools/make_family_fixtures.py).
# Everything 4.3 needs is taken from the venv when the venv's version satisfies
# 4.3's requirement (torch, transformers, ...); anything missing or too old is
# installed into the target folder as well (without its own dependencies).
#
#   tools/setup_tl4.sh [TARGET]      (default build/tl4, env LENSD_TL4)
#
# Idempotent: does nothing when TARGET already holds this pin and the check
# passes. Prints TARGET as its last line. Needs the venv (tools/setup.sh).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${LENSD_VENV:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/lensd/venv}
target=${1:-${LENSD_TL4:-$repo/build/tl4}}
pin="transformer-lens==4.3.0"
python="$venv/bin/python"
[ -x "$python" ] || { echo "setup_tl4: no venv at $venv (run tools/setup.sh first)" >&2; exit 1; }

stamp="$target/.lensd-tl4"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pin" ] && [ -d "$target/transformer_lens" ]; then
  echo "$target"
  exit 0
fi

echo "setup_tl4: installing $pin into $target" >&2
mkdir -p "$target"
"$venv/bin/pip" install -q --no-deps --upgrade --target "$target" "$pin" >&2

# 4.3's own requirements (extras left out), checked against the venv plus the target.
missing=$(PYTHONPATH="$target" "$python" - <<'EOF'
from importlib.metadata import distribution, PackageNotFoundError, version
from packaging.requirements import Requirement

missing = []
for line in distribution("transformer-lens").requires or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        have = version(req.name)
    except PackageNotFoundError:
        missing.append(str(req))
        continue
    if req.specifier and not req.specifier.contains(have, prereleases=True):
        missing.append(str(req))
print(" ".join(f"'{m}'" for m in missing))
EOF
)
if [ -n "$missing" ]; then
  echo "setup_tl4: also installing into $target: $missing" >&2
  eval "\"$venv/bin/pip\" install -q --no-deps --target \"$target\" $missing" >&2
fi

PYTHONPATH="$target" "$python" -c "
import transformer_lens, importlib.metadata as m
assert transformer_lens.__file__.startswith('$target'), transformer_lens.__file__
assert m.version('transformer-lens') == '4.3.0', m.version('transformer-lens')
from transformer_lens.model_bridge import TransformerBridge
" >&2
echo "$pin" > "$stamp"
echo "$target"
