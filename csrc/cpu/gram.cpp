// CPU Gram kernel: one pass over K gradient sets, all K(K+1)/2 products at once.
//
// Each work item (<= 64K elements of one parameter) accumulates in float32 over tiles of
// kTile elements with kLanes independent accumulators per product (auto-vectorized), adds
// each tile's sums into double, and writes its partials into its own slot. The final sum runs
// over the slots in a fixed order: deterministic for any thread count, no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "gh_cpu_common.h"
#include "ops_cpu.h"

namespace gh {
namespace cpu {
namespace {

constexpr int kLanes = 16;
constexpr int64_t kTile = 1024;

// M present sets (1..4) -> M(M+1)/2 sums, pair order (0,0),(0,1),...,(0,M-1),(1,1),...
template <typename T, int M>
void gram_segment(const T* const* x, int64_t n, double* sums) {
  constexpr int NP = M * (M + 1) / 2;
  const T* __restrict__ p[M];
  for (int k = 0; k < M; ++k) p[k] = x[k];
  double total[NP] = {};
  for (int64_t t0 = 0; t0 < n; t0 += kTile) {
    const int64_t t1 = std::min(n, t0 + kTile);
    float acc[NP][kLanes] = {};
    int64_t i = t0;
    for (; i + kLanes <= t1; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) {  // kLanes independent accumulators per product: SIMD across j
        float v[M];
        for (int k = 0; k < M; ++k) v[k] = to_f32(p[k][i + j]);
        int q = 0;
        for (int a = 0; a < M; ++a)
          for (int b = a; b < M; ++b, ++q) acc[q][j] += v[a] * v[b];
      }
    }
    for (; i < t1; ++i) {
      int q = 0;
      for (int a = 0; a < M; ++a)
        for (int b = a; b < M; ++b, ++q) acc[q][0] += to_f32(p[a][i]) * to_f32(p[b][i]);
    }
    for (int q = 0; q < NP; ++q) {
      float s = 0.0f;
      for (int j = 0; j < kLanes; ++j) s += acc[q][j];
      total[q] += s;
    }
  }
  for (int q = 0; q < NP; ++q) sums[q] = total[q];
}

template <typename T>
void gram_item(const FlatParam& fp, const Segment& s, int64_t K, double* slot /* K*K */) {
  const T* x[kMaxSets];
  int idx[kMaxSets];
  int m = 0;
  for (int k = 0; k < K; ++k)
    if (fp.in[k] != nullptr) {
      x[m] = static_cast<const T*>(fp.in[k]) + s.start;
      idx[m++] = k;
    }
  double sums[kNumPairs];
  switch (m) {
    case 0: return;
    case 1: gram_segment<T, 1>(x, s.len, sums); break;
    case 2: gram_segment<T, 2>(x, s.len, sums); break;
    case 3: gram_segment<T, 3>(x, s.len, sums); break;
    default: gram_segment<T, 4>(x, s.len, sums); break;
  }
  int q = 0;
  for (int a = 0; a < m; ++a)
    for (int b = a; b < m; ++b, ++q) slot[idx[a] * K + idx[b]] = sums[q];
}

}  // namespace

at::Tensor gram_cpu(const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets) {
  auto params = prepare_params(tensors, num_sets, {}, /*with_out=*/false, c10::DeviceType::CPU);
  const int64_t K = num_sets;
  auto segs = make_segments(params);
  std::vector<double> slots(segs.size() * K * K, 0.0);
  at::parallel_for(0, static_cast<int64_t>(segs.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const FlatParam& fp = params[segs[i].param];
      double* slot = slots.data() + i * K * K;
      switch (fp.dtype) {
        case at::kFloat: gram_item<float>(fp, segs[i], K, slot); break;
        case at::kBFloat16: gram_item<c10::BFloat16>(fp, segs[i], K, slot); break;
        default: gram_item<c10::Half>(fp, segs[i], K, slot); break;
      }
    }
  });
  std::vector<double> G(K * K, 0.0);
  for (size_t i = 0; i < segs.size(); ++i)
    for (int64_t e = 0; e < K * K; ++e) G[e] += slots[i * K * K + e];
  at::Tensor out = at::empty({K, K}, at::TensorOptions().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  for (int64_t a = 0; a < K; ++a)
    for (int64_t b = a; b < K; ++b) o[a * K + b] = o[b * K + a] = static_cast<float>(G[a * K + b]);
  return out;
}

}  // namespace cpu
}  // namespace gh

