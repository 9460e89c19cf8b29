#!/usr/bin/env bash
# Build llama-cpp-python's wheel (llama.cpp from its sdist) once per version and build flags; print its folder.
#
#   bash scripts/llama-wheel.sh .venv/bin ~/.cache/sluice/llama-wheels
#
# Why not plain `pip install`: llama.cpp builds for the build machine's CPU (-march=native), and on a
# CPU with AMX (Intel Sapphire Rapids and later) its AMX matrix kernels segfault on the first token of the
# packaged models (ggml_backend_amx_mul_mat, seen under llama-cpp-python 0.3.36 in a VM). The build here
# turns AMX off on x86_64 (GCC honours -mno-* over -march=native); AVX-512, VNNI and BF16 stay on. pip's own
# wheel cache is keyed by the sdist, not the flags, so it could hand back a wheel built without them:
# this keeps the wheel in a folder named by the version and flags, and pip installs from there.
set -euo pipefail
BIN=$1
OUT=$2
cd "$(dirname "$0")/.."
VERSION=$(grep -i '^llama[-_]cpp[-_]python==' constraints.txt | cut -d= -f3)
# LLAVA_BUILD=OFF: no multimodal library (140 objects instead of 178).
ARGS="-DLLAVA_BUILD=OFF"
if [ "$(uname -m)" = x86_64 ]; then
  NOAMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  ARGS="$ARGS -DCMAKE_C_FLAGS='$NOAMX' -DCMAKE_CXX_FLAGS='$NOAMX'"
fi
ARGS="$ARGS ${CMAKE_ARGS:-}"
KEY=$(printf '%s %s' "$VERSION" "$ARGS" | sha256sum | cut -c1-16)
DIR="$OUT/$VERSION-$KEY"
if ! ls "$DIR"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  rm -rf "$DIR.tmp" && mkdir -p "$DIR.tmp"
  echo "building llama-cpp-python $VERSION ($ARGS): ~5 min on 2 cores, once" >&2
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CMAKE_ARGS="$ARGS" "$BIN/pip" wheel -q --no-deps --no-cache-dir \
    --no-binary llama-cpp-python -w "$DIR.tmp" "llama-cpp-python==$VERSION" >&2
  mv "$DIR.tmp" "$DIR"
fi
echo "$DIR"
