#!/usr/bin/env bash
# One call on the device machine (torch 2.11 + CUDA 13, Triton 3.6, no internet): build the
# CUDA extension, run the test suite (every (device, backend) pair, CUDA ones included, Triton
# compiled for the GPU), a DDP run, a Triton settings sweep and the GPU benchmark.
# Everything is logged to $OUT/gpu_check.log; benchmark outputs land in $OUT/bench/.
#   usage (device tool): bash bench/gpu_check.sh            [phases: build tests multitask ddp bench tune]
set -uo pipefail
OUT=${OUT:-/tmp/gh_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
BENCH_ARGS=${BENCH_ARGS:-}
PHASES=${*:-build tests multitask ddp bench tune}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts under python/ and tools/ import the in-tree package
exec > >(tee -a "$LOG") 2>&1
echo "== gpu_check $(date -u +%FT%TZ) phases: $PHASES"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"

has() { [[ " $PHASES " == *" $1 "* ]]; }
if has build; then
  echo "== build (CUDA extension, sm_90)"
  t0=$(date +%s)
  MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 GH_KERNELS_BUILD_EXT=1 timeout 400 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1
  rc=$?; echo "build rc=$rc in $(( $(date +%s) - t0 )) s"; tail -5 "$OUT/build.log"
  python3 -c "import gh_kernels as g; print('backends', g.available_backends(), g.extension_error())"
fi
if has tests; then
  echo "== tests: every (device, backend) pair; TRITON_INTERPRET=0 compiles Triton for the GPU (its CPU pairs skip)"
  TRITON_INTERPRET=0 timeout 300 python3 -m pytest -q -x -p no:cacheprovider 2>&1 | tail -25
fi
if has ddp; then
  echo "== DDP on the GPU (torchrun, nccl, world size 1), sync=global and local"
  timeout 120 torchrun --nproc_per_node=1 python/ddp_example.py --device cuda --steps 6 2>&1 | grep -v "^W" | tail -12
  timeout 120 torchrun --nproc_per_node=1 python/ddp_example.py --device cuda --steps 3 --sync local 2>&1 | grep -v "^W" | tail -2
fi
if has bench; then
  echo "== benchmark"
  timeout 420 python3 -m bench --device cuda --out "$OUT/bench" $BENCH_ARGS 2>&1 | grep -v "^  " | tail -80
fi
if has multitask; then
  echo "== multi-task engine: tests (the K <= 8 kernels, no host sync per method) and the benchmark if torchjd is installed"
  TRITON_INTERPRET=0 timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_multitask_kernels.py tests/test_multitask_methods.py 2>&1 | tail -8
  if python3 -c "import torchjd" 2>/dev/null; then timeout 300 python3 -m bench.multitask --quick --device cuda --out "$OUT/multitask"; else echo "torchjd not installed here: benchmark skipped"; fi
fi
if has tune; then
  echo "== Triton settings sweep"
  TRITON_INTERPRET=0 timeout 150 python3 tools/triton_tune.py 2>&1 | tail -30
fi
echo "== done $(date -u +%FT%TZ)"
