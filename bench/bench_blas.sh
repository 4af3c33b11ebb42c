#!/bin/bash
# bench_blas.sh: which CPU BLAS library and kernel suits lensd. Builds
# bench/bench_blas.c into build/bench/ against Debian's OpenBLAS and BLIS
# (both their OpenMP builds, as lensd links OpenBLAS), runs OpenBLAS with the
# kernel it picks and with each x86-64 kernel forced, and BLIS as it picks,
# and prints one Markdown table: GFLOP/s per product and library/kernel, the
# forward totals, and the CPU and library versions (also written to
# build/bench/blas.md).
#
# Not here: installing (apt-get install libopenblas-openmp-dev
# libblis-openmp-dev), lensd's build, kernels this CPU cannot run.
#
# Usage: bench/bench_blas.sh [COLUMN...]   (from the repository root)
#   COLUMN: openblas (OPENBLAS_CORETYPE unset), openblas-Haswell, openblas-Zen,
#   openblas-SkylakeX, openblas-Cooperlake, blis. With none, every column runs
#   and earlier outputs are dropped; naming columns runs those again and
#   keeps what is there. Each run's output is build/bench/blas/COLUMN.N.txt;
#   a cell of the table is the best over a column's runs, and a forward
#   total its best and slowest run.
#   BENCH_BLAS_RUNS: runs of each column, in turn (default 1).
#   BENCH_BLAS_ARGS: options for bench_blas (default: --wait-idle 30 --attempts 3).
#   OMP_WAIT_POLICY defaults to PASSIVE, as lensd sets it.
set -euo pipefail

out=build/bench
runs_dir=$out/blas
multiarch=$(gcc -print-multiarch)
all=(openblas openblas-Haswell openblas-Zen openblas-SkylakeX openblas-Cooperlake blis)
args=${BENCH_BLAS_ARGS:---wait-idle 30 --attempts 3}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
(($# > 0)) || rm -rf "$runs_dir"
mkdir -p "$runs_dir"

# build LIB (openblas or blis): its include and library folders, its macro
build() {
    local dir=/usr/lib/$multiarch/$1-openmp
    gcc -std=c11 -O2 -Wall -Wextra -Werror -fopenmp "-DBENCH_${1^^}" \
        -isystem "/usr/include/$multiarch/$1-openmp" bench/bench_blas.c -o "$out/bench_blas_$1" \
        -L"$dir" "-l$1" -lm -Wl,-rpath,"$dir"
}
build openblas
build blis

for ((run = 0; run < ${BENCH_BLAS_RUNS:-1}; run++)); do
    for column in "${@:-${all[@]}}"; do
        case $column in
        openblas) cmd=(env -u OPENBLAS_CORETYPE "$out/bench_blas_openblas") ;;
        openblas-*) cmd=(env "OPENBLAS_CORETYPE=${column#openblas-}" "$out/bench_blas_openblas") ;;
        blis) cmd=("$out/bench_blas_blis") ;;
        *) echo "bench_blas.sh: unknown column $column (one of: ${all[*]})" >&2; exit 2 ;;
        esac
        n=1
        while [[ -e $runs_dir/$column.$n.txt ]]; do n=$((n + 1)); done
        echo "bench_blas.sh: running $column ($runs_dir/$column.$n.txt)" >&2
        # shellcheck disable=SC2086 # args is a list of options
        "${cmd[@]}" $args >"$runs_dir/$column.$n.txt" ||
            echo "bench_blas.sh: $column exited with status $? (1: a wrong result)" >&2
    done
done

# The table, from bench_blas's " | "-separated lines: a row per product
# (GFLOP/s, the best run) and per forward (ms, best and slowest run), a
# column per COLUMN.
files=()
for column in "${all[@]}"; do
    for f in "$runs_dir/$column".*.txt; do [[ -s $f ]] && files+=("$f"); done
done
cpu() { grep -m1 "^$1[[:space:]]*:" /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'; }
{
    echo "CPU: $(cpu 'model name'), family $(cpu 'cpu family') model $(cpu model)," \
        "$(nproc) CPUs, $(cpu flags | grep -o 'avx2\|avx512[a-z0-9_]*' | tr '\n' ' ')"
    packages=$(dpkg-query -W -f '${Package} ${Version}, ' libopenblas0-openmp libblis4-openmp)
    echo "Packages: ${packages%, }; run with OMP_WAIT_POLICY=$OMP_WAIT_POLICY, bench_blas $args"
    echo
    awk -F' [|] ' '
        FNR == 1 {
            name = FILENAME; sub(/.*\//, "", name); sub(/\.[0-9]+\.txt$/, "", name)
            if (!(name in col)) { col[name] = ++cols; names[cols] = name }
            c = col[name]; runs[c]++
        }
        $1 == "info" { info[c, $2] = $3 }
        $1 == "product" || $1 == "forward" {
            key = $1 "|" $2
            if (!(key in seen)) { seen[key] = 1; order[++rows] = key; shape[key] = $3 }
            v = $4 + 0
            if (!((c, key) in best) || ($1 == "forward" ? v < best[c, key] : v > best[c, key]))
                best[c, key] = v
            if ($1 == "forward" && v > slowest[c, key]) slowest[c, key] = v
            split($6, err, " ")
            if (err[2] == "FAIL") wrong[c, key] = 1
            if (err[1] + 0 > worst[c]) worst[c] = err[1] + 0
        }
        END {
            for (c = 1; c <= cols; c++) {
                kernel = info[c, "kernel"]
                if (names[c] == "openblas") head = head " | OpenBLAS, its pick: " kernel
                else if (names[c] ~ /^openblas-/)
                    head = head " | OpenBLAS " kernel (names[c] == "openblas-" kernel ? "" : " (asked " substr(names[c], 10) ")")
                else head = head " | BLIS " kernel
                rule = rule "|---:"
            }
            print "| product | shape" head " |"
            print "|---|---" rule "|"
            for (r = 1; r <= rows; r++) {
                key = order[r]; split(key, k, "|")
                line = "| " (k[1] == "forward" ? "**forward GEMM ms, " k[2] "**" : k[2]) " | " shape[key]
                for (c = 1; c <= cols; c++)
                    line = line " | " (k[1] == "forward" ? sprintf("**%.0f** (%.0f)", best[c, key], slowest[c, key]) \
                                                         : sprintf("%.1f", best[c, key])) (wrong[c, key] ? " **wrong**" : "")
                print line " |"
            }
            line = "| max relative error | "
            for (c = 1; c <= cols; c++) line = line " | " sprintf("%.1e", worst[c])
            print line " |"
            line = "| runs | "
            for (c = 1; c <= cols; c++) line = line " | " runs[c]
            print line " |"
            print ""
            for (c = 1; c <= cols; c++) {
                lib = info[c, "library"]
                sub(" " info[c, "kernel"] " ", " ", lib)
                if (!(lib in said)) { said[lib] = 1; print "- " lib }
            }
        }' "${files[@]}"
} | tee "$out/blas.md"
