#!/usr/bin/env bash
# Idempotent set-up for a fresh machine (the README's two commands start with it). What is left to do
# is decided in one Python process (tools/setup_state.py); a re-run with nothing to do is that process
# alone. The actions:
#  - torch: reuse the installed one; if there is none, the pinned CPU wheel torch==2.13.0
#    (an unpinned "torch" would download a multi-GB CUDA build);
#  - test/benchmark/demo dependencies (Triton runs on CPU tensors via TRITON_INTERPRET=1; torchjd and its
#    solvers are the multi-task tests' and benchmarks' reference; transformers, accelerate and lightning are
#    the integration tests' and python/ examples' -- the package itself never imports them), installed
#    with a constraint that keeps the torch already there;
#  - this package, built against that torch (--no-build-isolation) with its C++ extension, when this
#    checkout is not the installed one or its version changed; the extension rebuilt in place when a
#    source under csrc/ is newer than it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
state=$("$PY" tools/setup_state.py) && { echo "$state"; exit 0; } || [ $? -eq 10 ] || { echo "$state"; exit 1; }
if grep -qx TORCH <<<"$state"; then
  "$PY" -m pip install --quiet torch==2.13.0
  state=$("$PY" tools/setup_state.py) && { echo "$state"; exit 0; } || true
fi
missing=$(sed -n 's/^MISSING //p' <<<"$state")
if [ -n "$missing" ]; then
  # A constraint pins the torch already installed: a package that asks for a newer torch (transformers,
  # lightning, accelerate may) must not replace it with a multi-GB CUDA build that breaks the extension's ABI.
  constraint=$(mktemp)
  "$PY" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$constraint"
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet -c "$constraint" $missing
  rm -f "$constraint"
fi
if grep -qx INSTALL <<<"$state"; then
  "$PY" -m pip install --quiet setuptools wheel
  MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install --quiet --no-build-isolation -e .
fi
# Editable installs do not always compile extensions (it depends on the setuptools version), so build
# gh_kernels/_C in place explicitly (ninja: incremental).
if grep -qx BUILD <<<"$state" || grep -qx INSTALL <<<"$state"; then
  if [ "${GH_KERNELS_BUILD_EXT:-auto}" != "0" ]; then
    MAX_JOBS=${MAX_JOBS:-2} "$PY" setup.py --quiet build_ext --inplace 2>&1 | grep -E "gh_kernels:|error" || true
    touch gh_kernels/_C*.so 2>/dev/null || true  # up to date now, even where ninja had nothing to rebuild
  fi
fi
"$PY" tools/setup_state.py || true
