#!/usr/bin/env bash
# The GPU suite and the GPU benchmark, in one command, on a machine with a GPU.
#
#   tools/gpu_suite.sh [RESULTS_DIR]        (default bench/results)
#
# Runs, against lensd built with CUDA:
#   1. tests/gpu/test_gpu_kernels: every kernel, CUDA vs the CPU backend;
#   2. tests/gpu (pytest): every fixture case, every hook point, GPU vs CPU;
#   3. tests/parity on the GPU (LENSD_DEVICE): GPU vs TransformerLens's own
#      references;
#   4. bench/bench_gpu.py: lensd vs TransformerLens on the same GPU;
# and writes gpu-suite-DATE.md (the counts and the log tails) and
# gpu-bench-DATE.md into RESULTS_DIR. Exits non-zero if anything failed.
#
# Environment: LENSD_BUILD (default build-gpu; built here with meson
# -Dcuda=enabled when it holds no lensd), LENSD_PYTHON (default python3; it
# needs torch with CUDA, transformer_lens, pytest, numpy, safetensors),
# LENSD_SHARED (default ../shared), LENSD_FIXTURES (default
# $LENSD_BUILD/fixtures, made with TransformerLens when missing),
# LENSD_COMMIT (the commit the binaries were built from; default git's HEAD).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
results=$(mkdir -p "${1:-bench/results}" && cd "${1:-bench/results}" && pwd)
build=$(realpath -m "${LENSD_BUILD:-build-gpu}")
python=${LENSD_PYTHON:-python3}
export LENSD_SHARED=$(realpath -m "${LENSD_SHARED:-$repo/../shared}")
export LENSD_FIXTURES=$(realpath -m "${LENSD_FIXTURES:-$build/fixtures}")
export LENSD_BIN="$build/server/lensd"
export PYTHONUNBUFFERED=1
day=$(date +%Y-%m-%d)
logs=$(mktemp -d)

if [ ! -x "$LENSD_BIN" ]; then
  meson setup "$build" -Dcuda=enabled -Dwerror=true >/dev/null && ninja -C "$build" || exit 1
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)
echo "== GPU: $gpu"

status=0
step() { # step NAME LOG COMMAND...: runs a step, keeps its log, records failure
  local name=$1 log=$2
  shift 2
  echo "== $name"
  if "$@" >"$logs/$log" 2>&1; then echo "   passed"; else echo "   FAILED"; status=1; fi
  tail -n 5 "$logs/$log"
}
step "parity fixtures (TransformerLens references, made once)" fixtures.log \
  "$python" -c "import sys; sys.path.insert(0, 'tests/parity'); import conftest; conftest.load_manifest()"
parallel=$("$python" -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
step "kernels: CUDA vs CPU (Criterion)" kernels.log \
  "$build/tests/gpu/test_gpu_kernels" --verbose=0
step "whole models: GPU vs CPU, every hook point (pytest tests/gpu)" gpu_parity.log \
  "$python" -m pytest -q -p no:cacheprovider -rs $parallel tests/gpu
step "whole models: GPU vs TransformerLens (pytest tests/parity, LENSD_DEVICE=cuda:0)" tl_parity.log \
  env LENSD_DEVICE=cuda:0 LENSD_PARITY_TABLE="$logs/parity_table.md" \
  "$python" -m pytest -q -p no:cacheprovider tests/parity
step "benchmark: lensd vs TransformerLens (bench/bench_gpu.py)" bench.log \
  "$python" bench/bench_gpu.py --workdir "$build/bench-gpu" --out "$results/gpu-bench-$day.md"

{
  echo "# GPU suite, $day"
  echo
  echo "tools/gpu_suite.sh on: $gpu. lensd ${LENSD_COMMIT:-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '(no git)')}; result: $([ $status = 0 ] && echo passed || echo FAILED)."
  for log in fixtures kernels gpu_parity tl_parity bench; do
    echo
    echo "## $log"
    echo
    echo '```'
    grep -E "Synthesis|passed|failed|skipped|WRONG|FAIL|cases,|Results" "$logs/$log.log" | tail -n 8
    echo '```'
  done
  if [ -f "$logs/parity_table.md" ]; then
    echo
    echo "## parity table (GPU vs TransformerLens)"
    echo
    cat "$logs/parity_table.md"
  fi
} >"$results/gpu-suite-$day.md"
cp "$logs"/*.log "$results/" 2>/dev/null
echo "== results in $results (gpu-suite-$day.md, gpu-bench-$day.md, logs)"
exit $status
