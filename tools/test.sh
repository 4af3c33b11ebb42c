#!/usr/bin/env bash
# lensd's whole test suite, from a fresh machine: installs what is missing
# (tools/setup.sh), checks that every C and CUDA file is as clang-format
# (.clang-format) writes it, builds with warnings as errors, runs the
# Criterion unit tests and the Python suites (tokenizer parity with Hugging
# Face, hook-point parity with TransformerLens), and ends with one line of
# counts.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
venv=$("$repo/tools/setup.sh" | tail -n 1) || { echo "setup failed" >&2; exit 1; }
build=${LENSD_BUILD:-$repo/build}
shared=${LENSD_SHARED:-$repo/../shared}
if [ ! -d "$shared/data" ]; then
  echo "test: $shared/data not found (set LENSD_SHARED to the shared/ folder)" >&2
  exit 1
fi

if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" -Dwerror=true || exit 1
fi
ninja -C "$build" || exit 1

status=0
echo "== formatting: clang-format --dry-run on every C and CUDA file"
unformatted=$(find bench clients core kernels server tests tools \( -name '*.c' -o -name '*.h' \
  -o -name '*.cu' -o -name '*.cuh' \) -print0 | sort -z |
  xargs -0 clang-format --dry-run --Werror 2>&1 | grep -o '^[^:]*:[0-9]*:[0-9]*: error' |
  cut -d: -f1 | sort -u)
if [ -n "$unformatted" ]; then
  echo "    not as clang-format writes them (clang-format -i FILE):"
  echo "$unformatted" | sed 's/^/    /'
  status=1
fi

echo "== server modules: no include cycle, each header its own source's (tools/check_includes.py)"
"$venv/bin/python" tools/check_includes.py | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== unit tests and GPU kernel tests (Criterion; the GPU ones skip without a GPU)"
meson test -C "$build" --suite unit --suite gpu --print-errorlogs || status=1
grep -ho "skipped: no GPU[^\"]*" "$build/meson-logs/testlog.json" | sort -u | sed 's/^/    /'

echo "== unit tests again under AddressSanitizer and UndefinedBehaviorSanitizer"
asan="$build-sanitize"
if [ ! -f "$asan/build.ninja" ]; then
  meson setup "$asan" -Dbuildtype=debug -Db_sanitize=address,undefined -Dwerror=true \
    -Dcuda=disabled >/dev/null || exit 1
fi
ninja -C "$asan" >/dev/null || exit 1
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C "$asan" --suite unit --print-errorlogs || status=1

fuzz_seconds=${LENSD_FUZZ_SECONDS:-20}
echo "== fuzzing: each parser for $fuzz_seconds s (tools/fuzz.sh)"
LENSD_FUZZ_SECONDS=$fuzz_seconds LENSD_FUZZ_BUILD="$build-fuzz" LENSD_SHARED="$shared" \
  tools/fuzz.sh 2>&1 | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== Python suites (pytest)"
export LENSD_BIN="$build/server/lensd"
export LENSD_TOK_DRIVER="$build/tests/tokenizer/tok_driver"
export LENSD_FIXTURES="${LENSD_FIXTURES:-$build/fixtures}"
export LENSD_SHARED="$shared"
export LENSD_BUILD="$build"
export LENSD_TEST_MODEL="$LENSD_FIXTURES/models/gpt2-a"
PYTHONPATH="$repo/clients/python" "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider \
  --junitxml="$build/pytest.xml" tests/tokenizer tests/parity tests/gpu tests/integration tests/browser \
  clients/python/tests || status=1

"$venv/bin/python" tools/test_summary.py "$build/meson-logs/testlog.json" \
  "$asan/meson-logs/testlog.json" "$build/pytest.xml" || status=1
exit $status
