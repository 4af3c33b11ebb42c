#!/usr/bin/env bash
# Packs into .gpu/ what tools/gpu_suite.sh needs on a GPU machine that has
# the CUDA driver and toolkit, torch and pytest, but none of lensd's build
# dependencies and no network (the lent device machine): lensd and the GPU
# kernel tests built here with CUDA, the shared libraries they need that
# such a machine lacks, the test data from ../shared, and TransformerLens's
# wheels. There, `bash .gpu/run.sh RESULTS_DIR` runs the suite.
#
#   tools/gpu_bundle.sh            (needs tools/setup.sh's packages and nvcc)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=${LENSD_SHARED:-$repo/../shared}
build=$repo/build-gpu
out=$repo/.gpu
cd "$repo"

[ -f "$build/build.ninja" ] || meson setup "$build" -Dcuda=enabled -Dwerror=true >/dev/null
ninja -C "$build" server/lensd tests/gpu/test_gpu_kernels kernels/liblenskernels_cuda.so >/dev/null
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/build/server" "$out/build/tests/gpu" "$out/shared/data" "$out/whl"
bins="$build/server/lensd $build/tests/gpu/test_gpu_kernels"
cp $bins "$out/bin/"
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench/results' || echo '+changes')" \
  >"$out/COMMIT"

# The CUDA backend, a module that lensd loads by name (found there through
# LD_LIBRARY_PATH), and everything the binaries and it link but glibc, the
# C++ runtime and cuBLAS, which the machine has in newer or matching versions
# (cuBLAS is far too large to carry).
module=$build/kernels/liblenskernels_cuda.so
cp "$module" "$out/lib/"
ldd $bins "$module" | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -v -E '/lib(c|m|dl|pthread|rt|stdc\+\+|gcc_s|cublas|cublasLt|cuda)\.so' |
  while read -r lib; do cp -L "$lib" "$out/lib/"; done

for target in server/lensd tests/gpu/test_gpu_kernels; do
  up=$(echo "$target" | sed 's|[^/]*|..|g') # from .gpu/build/DIR.. back to .gpu
  cat >"$out/build/$target" <<WRAP
#!/bin/sh
# Runs the bundled $(basename "$target") with the bundled libraries.
bundle=\$(cd "\$(dirname "\$0")/$up" && pwd)
LD_LIBRARY_PATH="\$bundle/lib:\${LENSD_CUDA_LIBS:-}:\${LD_LIBRARY_PATH:-}" exec "\$bundle/bin/$(basename "$target")" "\$@"
WRAP
  chmod +x "$out/build/$target"
done

# Packed: unpacked, they are more than the 64 MiB a device call carries.
tar -cJf "$out/lib.tar.xz" -C "$out/lib" . && rm -rf "$out/lib"

cp -r "$shared/data/gpt2-tokenizer" "$shared/data/arena-brackets" "$out/shared/data/"

# TransformerLens and what it imports that the machine's Python 3.12 lacks, and
# requests for the Python client (bench_gpu.py's runs through the daemon).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$out/whl" \
  transformer-lens==3.9.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  better-abc==0.0.3 beartype==0.23.1 typeguard==4.6.0 fancy-einsum==0.0.3 \
  requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.18 charset-normalizer==3.5.2

cat >"$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# On the GPU machine, from the repository root: bash .gpu/run.sh RESULTS_DIR
set -euo pipefail
[ -d .gpu/lib ] || { mkdir .gpu/lib && tar -xJf .gpu/lib.tar.xz -C .gpu/lib; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/lensd-site .gpu/whl/*.whl
export PYTHONPATH=/tmp/lensd-site
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
LENSD_CUDA_LIBS=$(ls -d /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  "$site"/nvidia/*/lib "$site"/nvidia/cu13/lib 2>/dev/null | tr '\n' ':')
export LENSD_CUDA_LIBS
LENSD_COMMIT=$(cat .gpu/COMMIT) LENSD_BUILD=.gpu/build LENSD_SHARED=.gpu/shared \
  exec tools/gpu_suite.sh "$@"
RUN
du -sh "$out"
