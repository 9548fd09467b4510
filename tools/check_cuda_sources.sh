#!/usr/bin/env bash
# Compile-check every CUDA source with plain nvcc (no torch headers in .cu files, so this works on hosts
# whose torch is the CPU-only wheel) for sm_80 and sm_90, and check each kernel's registers and spills
# against tools/cuda_register_budget.json (tools/check_cuda_registers.py). Skipped, with a notice,
# without nvcc.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 tools/check_cuda_registers.py "$@"
