#!/usr/bin/env bash
# Runs lensd's libFuzzer harnesses (tests/fuzz/, README.md there). Builds
# them with clang in $LENSD_FUZZ_BUILD (default build-fuzz/, set up once
# with -Dfuzz=true: each fuzzer is its harness and its parser's sources,
# built with libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer),
# then runs each for $LENSD_FUZZ_SECONDS (default 30) seconds on a scratch
# copy of its seed corpus, $LENSD_FUZZ_JOBS (default: the CPUs) at a time.
#
#   tools/fuzz.sh [--merge] [NAME...]     NAME: tokenizer_json, config, ...
#
# A crash (or leak, timeout, out-of-memory) is written to
# tests/fuzz/regressions/NAME/ and makes the exit status 1; once fixed, the
# file stays there and the fuzz_NAME unit test replays it. --merge adds the
# inputs that found new coverage to the committed tests/fuzz/corpus/NAME/
# (libFuzzer's -merge=1); without it that corpus is never written.
# Prints one line per fuzzer and ends with a Markdown table of runs,
# seconds, corpus files and coverage (libFuzzer's cov and ft).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
seconds=${LENSD_FUZZ_SECONDS:-30}
build=${LENSD_FUZZ_BUILD:-$repo/build-fuzz}
jobs=${LENSD_FUZZ_JOBS:-$(nproc)}
shared=${LENSD_SHARED:-$repo/../shared}
all=(tokenizer_json tokenizer_model tokenizer_text safetensors config auth requests)

merge=false
names=()
for arg in "$@"; do
  case "$arg" in
    --merge) merge=true ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz: unknown option $arg (see --help)" >&2; exit 2 ;;
    *)
      if [[ " ${all[*]} " != *" $arg "* ]]; then
        echo "fuzz: no fuzzer $arg (one of: ${all[*]})" >&2
        exit 2
      fi
      names+=("$arg") ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=("${all[@]}")
if [ ! -d "$shared/data" ]; then
  echo "fuzz: $shared/data not found (set LENSD_SHARED to the shared/ folder)" >&2
  exit 1
fi
export LENSD_SHARED=$shared
if ! command -v clang >/dev/null; then
  echo "fuzz: clang not found (tools/setup.sh installs it)" >&2
  exit 1
fi

if [ ! -f "$build/build.ninja" ]; then
  CC=clang meson setup "$build" -Dfuzz=true -Dcuda=disabled -Dparity=disabled \
    -Dbuildtype=debugoptimized >"$build.setup.log" 2>&1 || {
    cat "$build.setup.log" >&2
    echo "fuzz: meson setup of $build failed" >&2
    exit 1
  }
  rm -f "$build.setup.log"
fi
targets=()
for name in "${names[@]}"; do targets+=("tests/fuzz/fuzz_$name"); done
ninja -C "$build" "${targets[@]}" >"$build/fuzz-build.log" 2>&1 || {
  tail -n 40 "$build/fuzz-build.log" >&2
  echo "fuzz: building the fuzzers failed (log: $build/fuzz-build.log)" >&2
  exit 1
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
work="$build/fuzz-runs"
mkdir -p "$work"

# Runs fuzzer $1 and leaves its log and a summary line in $work.
run_one() {
  local name=$1 corpus="$work/$1.corpus" log="$work/$1.log" regressions="tests/fuzz/regressions/$1"
  rm -rf "$corpus"
  cp -r "tests/fuzz/corpus/$name" "$corpus"
  mkdir -p "$regressions"
  ls "$regressions" >"$work/$name.before"
  local start=$(date +%s%N) rc=0
  "$build/tests/fuzz/fuzz_$name" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$regressions/" "$corpus" "$regressions" >"$log" 2>&1 || rc=$?
  local end=$(date +%s%N)
  local runs cov ft files found
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$')
  files=$(find "$corpus" -type f | wc -l)
  found=$(ls "$regressions" | comm -13 "$work/$name.before" - | tr '\n' ' ')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "${runs:-0}" $(((end - start + 500000000) / 1000000000)) \
    "$(find "tests/fuzz/corpus/$name" -type f | wc -l)" "$files" "${cov:-?}" "${ft:-?}" \
    "$rc ${found:-}" >"$work/$name.summary"
  if $merge && [ "$rc" -eq 0 ]; then
    "$build/tests/fuzz/fuzz_$name" -merge=1 "tests/fuzz/corpus/$name" "$corpus" \
      >"$work/$name.merge.log" 2>&1 ||
      echo "fuzz: merging into tests/fuzz/corpus/$name failed (log: $work/$name.merge.log)" >&2
  fi
}

echo "fuzz: ${#names[@]} fuzzers, ${seconds} s each, $jobs at a time (logs: $work/NAME.log)"
running=0
for name in "${names[@]}"; do
  run_one "$name" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

status=0
table="| fuzzer | runs | seconds | corpus files (seeds → after) | cov | ft | result |
|---|---|---|---|---|---|---|"
for name in "${names[@]}"; do
  IFS=$'\t' read -r _ runs secs seeds files cov ft outcome <"$work/$name.summary"
  rc=${outcome%% *}
  found=${outcome#* }
  found=${found% }
  if [ -n "$found" ]; then
    result="CRASH: tests/fuzz/regressions/$name/${found// /, }"
    status=1
  elif [ "$rc" -ne 0 ]; then
    result="failed (exit $rc)"
    status=1
  else
    result="no crash"
  fi
  echo "fuzz_$name: $runs runs in $secs s, corpus $seeds → $files files, cov $cov ft $ft: $result"
  if [ "$result" != "no crash" ]; then
    grep -m 1 -A 12 -E '^==[0-9]+==ERROR|^fuzz: |runtime error|^SUMMARY' "$work/$name.log" |
      sed 's/^/    /'
    echo "    (whole log: $work/$name.log)"
  fi
  table+=$'\n'"| $name | $runs | $secs | $seeds → $files | $cov | $ft | $result |"
done
echo
echo "$table"
exit $status
