#!/usr/bin/env bash
# Syntax-check the torch glue of the CUDA backend (csrc/cuda/*.cpp) with g++ on a host whose torch
# is the CPU-only wheel: its headers include the CUDA math libraries' headers, which the toolkit
# here may lack, so tiny stand-ins for those declare only the handle and status types. Catches
# glue errors before a GPU machine is lent. Skipped, with a notice, without a CUDA toolkit.
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_INC=${CUDA_HOME:-/usr/local/cuda}/include
if [ ! -f "$CUDA_INC/cuda_runtime.h" ]; then
  echo "check_cuda_glue: no CUDA toolkit headers, glue not checked"
  exit 0
fi
TORCH_INC=$(python3 -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))")
PY_INC=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
stubs=$(mktemp -d)
mkdir -p "$stubs/c10/cuda/impl"
echo "#pragma once" > "$stubs/c10/cuda/impl/cuda_cmake_macros.h"
for h in cusparse.h cublas_v2.h cublasLt.h cusolverDn.h cusolverSp.h cusolver_common.h; do
  [ -f "$CUDA_INC/$h" ] && continue
  echo "#pragma once" > "$stubs/$h"
done
cat >> "$stubs/cusparse.h" <<'H'
typedef struct cusparseContext* cusparseHandle_t;
typedef int cusparseStatus_t;
inline const char* cusparseGetErrorString(cusparseStatus_t) { return ""; }
H
printf 'typedef struct cublasContext* cublasHandle_t;\ntypedef int cublasStatus_t;\n' >> "$stubs/cublas_v2.h"
printf 'typedef struct cublasLtContext* cublasLtHandle_t;\n' >> "$stubs/cublasLt.h"
printf 'typedef struct cusolverDnContext* cusolverDnHandle_t;\n' >> "$stubs/cusolverDn.h"
printf 'typedef int cusolverStatus_t;\n' >> "$stubs/cusolver_common.h"
for f in csrc/cuda/*.cpp; do
  # shellcheck disable=SC2086
  g++ -std=c++17 -fsyntax-only -w -I"$stubs" $TORCH_INC -I"$CUDA_INC" -I"$PY_INC" -Icsrc/include "$f"
  echo "check_cuda_glue: $f passes a syntax check"
done
rm -rf "$stubs"
