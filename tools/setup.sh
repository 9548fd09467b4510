#!/usr/bin/env bash
# Idempotent set-up for a fresh machine (the README's two commands start with it):
#  - torch: reuse the installed one; if there is none, the pinned CPU wheel torch==2.13.0
#    (an unpinned "torch" would download a multi-GB CUDA build);
#  - test/benchmark/demo dependencies (Triton runs on CPU tensors via TRITON_INTERPRET=1; torchjd and its
#    solvers are the multi-task tests' and benchmarks' reference; transformers, accelerate and lightning are
#    the integration tests' and python/ examples' -- the package itself never imports them), installed
#    with a constraint that keeps the torch already there;
#  - this package, built against that torch (--no-build-isolation) with its C++ extension.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet torch==2.13.0
fi
missing=()
for mod in pytest hypothesis numpy matplotlib tqdm psutil sklearn ninja triton torchjd qpsolvers quadprog cvxpy clarabel ecos \
           transformers accelerate lightning; do
  "$PY" -c "import $mod" 2>/dev/null || missing+=("$mod")
done
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=()
  for mod in "${missing[@]}"; do
    case "$mod" in
      sklearn) pkgs+=(scikit-learn) ;;
      triton) pkgs+=(triton==3.9.0) ;;
      torchjd) pkgs+=(torchjd==0.18.0) ;;  # the multi-task tests' reference; torch is already installed, so no torch download
      *) pkgs+=("$mod") ;;
    esac
  done
  # A constraint pins the torch already installed: a package that asks for a newer torch (transformers,
  # lightning, accelerate may) must not replace it with a multi-GB CUDA build that breaks the extension's ABI.
  constraint=$(mktemp)
  "$PY" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$constraint"
  "$PY" -m pip install --quiet -c "$constraint" "${pkgs[@]}"
  rm -f "$constraint"
fi
# The editable install: skipped when this checkout is already the installed gh_kernels (a re-run
# then costs seconds, not the ~35 s of pip resolving and rebuilding the package metadata).
installed=$(cd /tmp && "$PY" -c "import os, gh_kernels; print(os.path.dirname(os.path.dirname(os.path.abspath(gh_kernels.__file__))))" 2>/dev/null || true)
if [ "$installed" != "$(pwd -P)" ]; then
  "$PY" -m pip install --quiet setuptools wheel
  MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install --quiet --no-build-isolation -e .
fi
# Editable installs do not always compile extensions (it depends on the setuptools version), so
# build gh_kernels/_C in place explicitly (ninja: incremental, seconds when nothing changed).
if [ "${GH_KERNELS_BUILD_EXT:-auto}" != "0" ]; then
  MAX_JOBS=${MAX_JOBS:-2} "$PY" setup.py --quiet build_ext --inplace 2>&1 | grep -E "gh_kernels:|error" || true
fi
"$PY" -c "import gh_kernels as g; print('gh_kernels', g.__version__, 'backends:', g.available_backends(), '' if g.extension_error() is None else '(' + g.extension_error() + ')')"
