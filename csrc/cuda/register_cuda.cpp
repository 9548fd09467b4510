// Registration of the CUDA kernels: the "cuda" overloads of the ops defined in gh_kernels/ops/library.py
// (gh_kernels::gram.cuda, ...), for the CUDA dispatch key. The one place the CUDA backend registers.
#include <torch/library.h>

#include "ops_cuda.h"

TORCH_LIBRARY_IMPL(gh_kernels, CUDA, m) {
  m.impl("gram.cuda", &gh::cuda::gram_cuda);
  m.impl("weights.cuda", &gh::cuda::weights_cuda);
  m.impl("combine_.cuda", &gh::cuda::combine_cuda);
  m.impl("harmonize_.cuda", &gh::cuda::harmonize_cuda);
  m.impl("coordinate_.cuda", &gh::cuda::coordinate_cuda);
}
