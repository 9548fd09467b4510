#!/usr/bin/env bash
# The GPU check, for the device machine (torch 2.11 + CUDA 13, Triton 3.6, no internet).
#
#   bash bench/gpu_check.sh              the quick profile: fits in 8 minutes from a bare checkout
#   bash bench/gpu_check.sh full         every phase (about 25 minutes: more than one device call)
#   bash bench/gpu_check.sh PHASE ...    named phases
#
# Quick profile, in order of value (each phase's output lands in $OUT as soon as it finishes, so a
# timeout keeps what ran; at most 8 files come back from $OUT):
#   build     the CUDA extension for sm_90 only (about 30 s on 16 cores; the .cu files alone take
#             19 s of nvcc on the 2-core CPU machine)                          -> $OUT/01_build.txt
#   tests     every CUDA/Triton test: the K <= 8 kernels, float64, opcheck/compile, CUDA-graph
#             capture, the host-sync checks (pytest -k cuda)                  -> $OUT/02_tests.txt
#   keyrows   N = 1e8 fp32/bf16, N = 1e7 over 160 tensors, the ResNet-50 list, 2,000 tiny tensors,
#             a captured replay's host time, against their targets (bench/keyrows.py)
#                                                                              -> $OUT/03_keyrows.txt, keyrows.json
# Full profile adds: alltests (the whole suite), multitask, ddp, bench (the full benchmark), tune.
set -uo pipefail
OUT=${OUT:-/tmp/gh_out}
mkdir -p "$OUT"
QUICK="build tests keyrows"
FULL="build tests keyrows alltests multitask ddp bench tune"
case "${1:-quick}" in
  quick) PHASES=$QUICK ;;
  full) PHASES=$FULL ;;
  *) PHASES="$*" ;;
esac
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts under python/ and tools/ import the in-tree package
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
echo "== gpu_check $(date -u +%FT%TZ) phases: $PHASES"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"

has() { [[ " $PHASES " == *" $1 "* ]]; }
phase() {  # phase NAME FILE TIMEOUT COMMAND...: run, time, keep the output in $OUT/FILE
  local name=$1 file=$2 limit=$3; shift 3
  echo "== $name (timeout ${limit} s)"
  local t0; t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$file" 2>&1
  local rc=$?
  echo "$name rc=$rc in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/$file"
  tail -25 "$OUT/$file"
}

if has build; then
  phase build 01_build.txt 180 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 GH_KERNELS_BUILD_EXT=1 python3 setup.py build_ext --inplace
  python3 -c "import gh_kernels as g; print('backends', g.available_backends(), g.extension_error())" | tee -a "$OUT/01_build.txt"
fi
if has tests; then
  phase tests 02_tests.txt 150 env TRITON_INTERPRET=0 python3 -m pytest -q -p no:cacheprovider -k cuda \
    tests/test_gram.py tests/test_combine.py tests/test_weights.py tests/test_ops.py tests/test_plan.py \
    tests/test_float64.py tests/test_multitask_kernels.py tests/test_multitask_methods.py tests/test_conformance.py
fi
if has keyrows; then
  phase keyrows 03_keyrows.txt 120 python3 -m bench.keyrows --device cuda --backends cuda triton --json "$OUT/keyrows.json"
fi
if has alltests; then
  phase alltests 04_alltests.txt 400 env TRITON_INTERPRET=0 python3 -m pytest -q -x -p no:cacheprovider
fi
if has multitask; then
  phase multitask 05_multitask.txt 300 bash -c 'python3 -c "import torchjd" 2>/dev/null || { echo "torchjd not installed: skipped"; exit 0; }
    python3 -m bench.multitask --quick --device cuda --out "$OUT/multitask"'
fi
if has ddp; then
  phase ddp 06_ddp.txt 200 bash -c "torchrun --nproc_per_node=1 python/ddp_example.py --device cuda --steps 6 && \
    torchrun --nproc_per_node=1 python/ddp_example.py --device cuda --steps 3 --sync local"
fi
if has bench; then
  phase bench 07_bench.txt 420 python3 -m bench --device cuda --out "$OUT/bench"
fi
if has tune; then
  phase tune 08_tune.txt 150 env TRITON_INTERPRET=0 python3 tools/triton_tune.py
fi
echo "== done $(date -u +%FT%TZ)"
