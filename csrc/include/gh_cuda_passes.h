// The passes of the CUDA ops as launched, in plain C++ (no torch headers): the chunk size of a work
// list, one launch per dtype group of the work list (gh_worklist.h), the size of the Gram pass's
// partial buffer, and the fused harmonize_'s order (Gram, weights, combine). The torch glue
// (csrc/cuda/ops_cuda.cpp) allocates and calls these; the CUDA-on-CPU tests
// (tests/cuda_emulated/driver.cpp) call the same functions, so the two cannot launch differently.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "gh_cuda_launch.h"

namespace gh {
namespace cuda {

using DtypeGroups = std::vector<std::pair<int, int64_t>>;  // HostWorkList::groups: (dtype code, item count)

// Elements per work item for a list of `total_elements` on a device with `multiprocessors` SMs.
inline int64_t worklist_chunk(int64_t total_elements, int multiprocessors) {
  return chunk_elements(total_elements, multiprocessors);
}

// float64 values of the Gram pass's partial buffer: one row of kNumPairs per work item.
inline int64_t gram_partials_count(int64_t num_items) { return num_items * kNumPairs; }

// The Gram pass: per-item partial rows (one launch per dtype group), then the fixed-order sum into G
// (num_sets x num_sets, float or double). Without items G is left as the caller initialized it.
inline cudaError_t run_gram_pass(const WorkItem* items, const DtypeGroups& groups, int num_sets, double* partials,
                                 void* G, bool G_is_f64, cudaStream_t stream) {
  int64_t offset = 0;
  for (const auto& g : groups) {
    const cudaError_t err = launch_gram_partials(items + offset, g.second, num_sets, g.first, partials + offset * kNumPairs,
                                                 stream);
    if (err != cudaSuccess) return err;
    offset += g.second;
  }
  if (offset == 0) return cudaSuccess;
  return launch_gram_finalize(partials, offset, num_sets, G, G_is_f64, stream);
}

// out = sum_k weights[k] * in_k (+ out): one launch per dtype group; *nonfinite (may be null): see launch_combine.
inline cudaError_t run_combine_pass(const WorkItem* items, const DtypeGroups& groups, int num_sets, const double* weights,
                                    bool accumulate, int* nonfinite, cudaStream_t stream) {
  int64_t offset = 0;
  for (const auto& g : groups) {
    const cudaError_t err = launch_combine(items + offset, g.second, num_sets, g.first, weights, accumulate, nonfinite,
                                           stream);
    if (err != cudaSuccess) return err;
    offset += g.second;
  }
  return cudaSuccess;
}

// The wide passes (NOTE: [Wide work list]): a wide list's items and pointer table, as the two above.
inline int64_t wide_gram_partials_count(int64_t num_items, int num_sets) { return num_items * wide_pairs(num_sets); }

inline cudaError_t run_wide_gram_pass(const WideItem* items, const void* const* table, const DtypeGroups& groups,
                                      int num_sets, double* partials, void* G, bool G_is_f64, cudaStream_t stream) {
  int64_t offset = 0;
  for (const auto& g : groups) {
    const cudaError_t err = launch_wide_gram_partials(items + offset, table, g.second, num_sets, g.first,
                                                      partials + offset * wide_pairs(num_sets), stream);
    if (err != cudaSuccess) return err;
    offset += g.second;
  }
  if (offset == 0) return cudaSuccess;
  return launch_wide_gram_finalize(partials, offset, num_sets, G, G_is_f64, stream);
}

inline cudaError_t run_wide_combine_pass(const WideItem* items, const void* const* table, const DtypeGroups& groups,
                                         int num_sets, const double* weights, bool accumulate, int* nonfinite,
                                         cudaStream_t stream) {
  int64_t offset = 0;
  for (const auto& g : groups) {
    const cudaError_t err = launch_wide_combine(items + offset, table, g.second, num_sets, g.first, weights, accumulate,
                                                nonfinite, stream);
    if (err != cudaSuccess) return err;
    offset += g.second;
  }
  return cudaSuccess;
}

// The per-coordinate pass (gh::CoordinateRule): one launch per dtype group.
inline cudaError_t run_coordinate_pass(const WorkItem* items, const DtypeGroups& groups, int num_sets, int rule, int trim,
                                       const double* leak, bool accumulate, cudaStream_t stream) {
  int64_t offset = 0;
  for (const auto& g : groups) {
    const cudaError_t err = launch_coordinate(items + offset, g.second, num_sets, g.first, rule, trim, leak, accumulate,
                                              stream);
    if (err != cudaSuccess) return err;
    offset += g.second;
  }
  return cudaSuccess;
}

// The fused harmonize_ over one work list of two sets: G (2 x 2, zero-initialized by the caller), the
// weights w (2) and their scaled float64 copy `scaled` (2) for the combine, then out (+)= the update.
inline cudaError_t run_harmonize_passes(const WorkItem* items, const DtypeGroups& groups, double* partials, void* G, void* w,
                                        bool is_f64, double* scaled, int method, double kappa, double scale1,
                                        double scale2, bool accumulate, cudaStream_t stream) {
  cudaError_t err = run_gram_pass(items, groups, 2, partials, G, is_f64, stream);
  if (err == cudaSuccess) err = launch_weights(G, w, is_f64, scaled, method, kappa, scale1, scale2, stream);
  if (err == cudaSuccess) err = run_combine_pass(items, groups, 2, scaled, accumulate, nullptr, stream);
  return err;
}

}  // namespace cuda
}  // namespace gh
