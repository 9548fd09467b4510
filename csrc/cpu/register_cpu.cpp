// Registration of the CPU kernels: the "cpu" overloads of the ops defined in gh_kernels/ops/library.py
// (gh_kernels::gram.cpu, ...), for the CPU dispatch key. The one place the CPU backend registers.
#include <torch/library.h>

#include "ops_cpu.h"

TORCH_LIBRARY_IMPL(gh_kernels, CPU, m) {
  m.impl("gram.cpu", &gh::cpu::gram_cpu);
  m.impl("weights.cpu", &gh::cpu::weights_cpu);
  m.impl("combine_.cpu", &gh::cpu::combine_cpu);
  m.impl("harmonize_.cpu", &gh::cpu::harmonize_cpu);
  m.impl("coordinate_.cpu", &gh::cpu::coordinate_cpu);
}
