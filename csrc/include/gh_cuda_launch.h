// Launchers of the CUDA kernels (csrc/cuda/*.cu). Plain C++ and CUDA runtime types only, no
// torch headers: the .cu files compile with plain nvcc, and the torch glue (ops_cuda.cpp)
// builds the work list and calls these.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "gh_constants.h"
#include "gh_worklist.h"

namespace gh {
namespace cuda {

// WorkItem, DType and kNotInGram: gh_worklist.h (the host side, tested with g++ on CPU).

// Per-item partial sums (float64): partials[item * kNumPairs + pair_column(a, b)], one block per item.
cudaError_t launch_gram_partials(const WorkItem* items, int64_t num_items, int num_sets, int dtype,
                                 double* partials, cudaStream_t stream);
// Fixed-order float64 sum of the partial rows into the symmetric num_sets x num_sets matrix G
// (float, or double when G_is_f64).
cudaError_t launch_gram_finalize(const double* partials, int64_t num_items, int num_sets, void* G, bool G_is_f64,
                                 cudaStream_t stream);
// out = sum_k w[k] * in_k (+ out), float64 weights read from device memory (used in the
// accumulation dtype: float32, float64 for float64 gradients). *nonfinite (device memory; may be null)
// becomes 1 when a written value is non-finite (NOTE: [Non-finite flag of the combine]).
cudaError_t launch_combine(const WorkItem* items, int64_t num_items, int num_sets, int dtype, const double* weights,
                           bool accumulate, int* nonfinite, cudaStream_t stream);
// The per-coordinate pass (gh::CoordinateRule rule): TrimmedMean of the num_sets sets (trim values cut
// at each end), or GradDrop with the draws as the last set and num_sets - 1 float64 leak values read
// from device memory; out (+)= the result.
cudaError_t launch_coordinate(const WorkItem* items, int64_t num_items, int num_sets, int dtype, int rule, int trim,
                              const double* leak, bool accumulate, cudaStream_t stream);
// The wide path above kMaxSets sets (NOTE: [Wide work list]): `table` holds each parameter's K + 1 pointers.
// Partial rows of wide_pairs(num_sets) float64 columns per item (NOTE: [Wide Gram block]), their fixed-order sum
// into G, and the combine (as launch_combine). num_sets in [1, kMaxWideSets], else cudaErrorInvalidValue.
cudaError_t launch_wide_gram_partials(const WideItem* items, const void* const* table, int64_t num_items, int num_sets,
                                      int dtype, double* partials, cudaStream_t stream);
cudaError_t launch_wide_gram_finalize(const double* partials, int64_t num_items, int num_sets, void* G, bool G_is_f64,
                                      cudaStream_t stream);
cudaError_t launch_wide_combine(const WideItem* items, const void* const* table, int64_t num_items, int num_sets,
                                int dtype, const double* weights, bool accumulate, int* nonfinite, cudaStream_t stream);
// (w1, w2) from the 2x2 Gram matrix G (gh_weights.h), one thread: G and w are float, or double
// when is_f64. scaled (may be null) gets (w1 * scale1, w2 * scale2) as float64, for launch_combine.
cudaError_t launch_weights(const void* G, void* w, bool is_f64, double* scaled, int method, double kappa, double scale1,
                           double scale2, cudaStream_t stream);

}  // namespace cuda
}  // namespace gh
