#!/usr/bin/env bash
# Compile-check every CUDA source with plain nvcc (no torch headers in .cu files, so this
# works on hosts whose torch is the CPU-only wheel). Skipped, with a notice, without nvcc.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_cuda_sources: nvcc not found, CUDA sources not compile-checked"
  exit 0
fi
shopt -s nullglob
files=(csrc/cuda/*.cu)
[ ${#files[@]} -gt 0 ] || { echo "check_cuda_sources: no .cu files"; exit 0; }
tmp=$(mktemp -d)
for f in "${files[@]}"; do
  "$NVCC" -arch=sm_90 -std=c++17 -O3 -Icsrc/include -Xptxas -v -c "$f" -o "$tmp/$(basename "$f").o" 2> "$tmp/log" || { cat "$tmp/log"; exit 1; }
  grep -E "spill|Used" "$tmp/log" | sed "s|^|  $(basename "$f"): |" | head -20 || true
  echo "check_cuda_sources: $f compiles for sm_90"
done
rm -rf "$tmp"
