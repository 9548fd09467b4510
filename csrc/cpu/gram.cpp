// CPU Gram kernel: one pass over K gradient sets (any K), all K(K+1)/2 products at once.
//
// Each work item (<= 64K elements of one parameter) accumulates in float32 (float64 for float64
// gradients) over tiles of kTile elements with kLanes independent accumulators per product
// (auto-vectorized; for 3+ sets, pair by pair over an L1-resident copy of the tile), adds
// each tile's sums into double, and adds its partials into its group's slot (fixed groups of consecutive
// items, summed in item order). The final sum runs over the slots in a fixed order: deterministic for any
// thread count, no atomics.
// Above kMaxSets present sets the item runs the wide path (NOTE: [Wide Gram tile]).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "gh_cpu_common.h"
#include "ops_cpu.h"

namespace gh {
namespace cpu {
namespace {

constexpr int kLanes = 16;
constexpr int64_t kTile = 1024;

// M present sets (1..kMaxSets) -> M(M+1)/2 sums, pair order (0,0),(0,1),...,(0,M-1),(1,1),...
// M <= 2: every product of an element at once, kLanes accumulators each (3 x 16 fit the registers).
template <typename T, int M>
void gram_segment_fused(const T* const* x, int64_t n, double* sums) {
  using A = acc_t<T>;
  constexpr int NP = M * (M + 1) / 2;
  const T* __restrict__ p[M];
  for (int k = 0; k < M; ++k) p[k] = x[k];
  double total[NP] = {};
  for (int64_t t0 = 0; t0 < n; t0 += kTile) {
    const int64_t t1 = std::min(n, t0 + kTile);
    A acc[NP][kLanes] = {};
    int64_t i = t0;
    for (; i + kLanes <= t1; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) {  // kLanes independent accumulators per product: SIMD across j
        A v[M];
        for (int k = 0; k < M; ++k) v[k] = to_acc(p[k][i + j]);
        int q = 0;
        for (int a = 0; a < M; ++a)
          for (int b = a; b < M; ++b, ++q) acc[q][j] += v[a] * v[b];
      }
    }
    for (; i < t1; ++i) {
      int q = 0;
      for (int a = 0; a < M; ++a)
        for (int b = a; b < M; ++b, ++q) acc[q][0] += to_acc(p[a][i]) * to_acc(p[b][i]);
    }
    for (int q = 0; q < NP; ++q) {
      A s = 0;
      for (int j = 0; j < kLanes; ++j) s += acc[q][j];
      total[q] += s;
    }
  }
  for (int q = 0; q < NP; ++q) sums[q] = total[q];
}

// A dot product of two L1-resident rows with kLanes accumulators (vectorizes like a BLAS dot).
template <typename A>
A tile_dot(const A* __restrict__ a, const A* __restrict__ b, int64_t len) {
  A acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  for (; i < len; ++i) acc[0] += a[i] * b[i];
  A s = 0;
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

// Four dots sharing row a: a is loaded once per four products (a plain dot loads two rows per
// product, which makes it load-bound on the L1 rows).
template <typename A>
void tile_dot4(const A* __restrict__ a, const A* const* b, int64_t len, double* out) {
  const A* __restrict__ b0 = b[0];
  const A* __restrict__ b1 = b[1];
  const A* __restrict__ b2 = b[2];
  const A* __restrict__ b3 = b[3];
  A s0[kLanes] = {}, s1[kLanes] = {}, s2[kLanes] = {}, s3[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const A x = a[i + j];
      s0[j] += x * b0[i + j];
      s1[j] += x * b1[i + j];
      s2[j] += x * b2[i + j];
      s3[j] += x * b3[i + j];
    }
  for (; i < len; ++i) {
    s0[0] += a[i] * b0[i];
    s1[0] += a[i] * b1[i];
    s2[0] += a[i] * b2[i];
    s3[0] += a[i] * b3[i];
  }
  A t0 = 0, t1 = 0, t2 = 0, t3 = 0;
  for (int j = 0; j < kLanes; ++j) {
    t0 += s0[j];
    t1 += s1[j];
    t2 += s2[j];
    t3 += s3[j];
  }
  out[0] += t0;
  out[1] += t1;
  out[2] += t2;
  out[3] += t3;
}

// M >= 3: the M(M+1)/2 accumulator sets no longer fit the registers (36 x 16 for M = 8, and the
// fused loop ran at 1.6 GB/s). Per tile, the M rows are converted once into an L1-resident buffer
// of the accumulation type (8 x 1024 float32 = 32 KB), then each pair is one vectorized dot over
// it: memory is still read once, the products run at L1 speed.
template <typename T, int M>
void gram_segment_tiled(const T* const* x, int64_t n, double* sums) {
  using A = acc_t<T>;
  constexpr int NP = M * (M + 1) / 2;
  alignas(64) A buf[M][kTile];
  double total[NP] = {};
  for (int64_t t0 = 0; t0 < n; t0 += kTile) {
    const int64_t len = std::min(kTile, n - t0);
    const A* rows[M];
    for (int k = 0; k < M; ++k) {
      if constexpr (std::is_same<T, A>::value) {
        rows[k] = x[k] + t0;  // already the accumulation type: read in place
      } else {
        const T* __restrict__ src = x[k] + t0;
        for (int64_t i = 0; i < len; ++i) buf[k][i] = to_acc(src[i]);
        rows[k] = buf[k];
      }
    }
    int q = 0;  // pair (a, b) is column q, b running fastest: four b's at a time share row a's loads
    for (int a = 0; a < M; ++a) {
      int b = a;
      for (; b + 4 <= M; b += 4, q += 4) tile_dot4<A>(rows[a], rows + b, len, total + q);
      for (; b < M; ++b, ++q) total[q] += tile_dot<A>(rows[a], rows[b], len);
    }
  }
  for (int q = 0; q < NP; ++q) sums[q] = total[q];
}

template <typename T, int M>
void gram_segment(const T* const* x, int64_t n, double* sums) {
  if constexpr (M <= 2)
    gram_segment_fused<T, M>(x, n, sums);
  else
    gram_segment_tiled<T, M>(x, n, sums);
}

// NOTE: [Wide Gram tile]: above kMaxSets present sets the M(M+1)/2 products are a symmetric rank-k update per
// tile. The M rows of kWideTile elements are converted once into a per-thread buffer of the accumulation type
// (one read of each gradient element; 40 rows are 160 KB, L2-resident), then every block of kBlockRows x
// kBlockCols pairs of the upper triangle runs over it with one vector accumulator per pair, so each loaded vector
// feeds 3-4 multiply-adds: 4 x 4 blocks of 16-lane vectors with AVX-512F (16 accumulators + 4 rows of its 32
// registers), 3 x 4 of 8 lanes with AVX2 (12 + 3 of 16). Per tile the vector accumulators are added lane by lane
// into float64 (so a float32 sum runs over kWideTile / lanes <= 128 products), and the lanes are summed in a fixed
// order at the end: deterministic. Measured, K = 40, one thread: 21-28 GFMA/s with AVX-512F, 15 with AVX2
// (bench/results/large-k-cpu-2core-2026-12-06b/NOTES.md).
template <typename A>
struct WideVec;  // GCC vector extensions: AVX2 registers with -mavx2, pairs of SSE registers without it
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;  // 32 registers: 4 x 4 accumulators + 4 rows
constexpr int kBlockRows = 4;
#else
constexpr int kVecBytes = 32;  // 16 registers: 3 x 4 accumulators + 3 rows
constexpr int kBlockRows = 3;
#endif
constexpr int kBlockCols = 4;
template <>
struct WideVec<float> {
  typedef float type __attribute__((vector_size(kVecBytes)));
  typedef double wide __attribute__((vector_size(2 * kVecBytes)));  // the same lanes in float64
};
template <>
struct WideVec<double> {
  typedef double type __attribute__((vector_size(kVecBytes)));
  typedef double wide __attribute__((vector_size(kVecBytes)));
};
constexpr int64_t kWideTile = 1024;

template <typename A>
struct WideGram {
  using V = typename WideVec<A>::type;
  using W = typename WideVec<A>::wide;
  static constexpr int L = sizeof(V) / sizeof(A);
  const int M, rows_padded;
  A* buf;  // rows_padded rows of kWideTile (this thread's scratch); rows >= M are zeroed per tile
  W* lanes;  // float64 lane sums of the block pairs, kBlockRows x kBlockCols per block, in block order

  // Scratch reused by every item a thread runs (no allocation or zeroing per item: a list of many small
  // parameters would pay it per parameter).
  static std::vector<A>& buf_storage() {
    thread_local std::vector<A> v;
    return v;
  }
  static std::vector<W>& lane_storage() {
    thread_local std::vector<W> v;
    return v;
  }

  explicit WideGram(int m) : M(m), rows_padded((m + kBlockCols - 1) / kBlockCols * kBlockCols + kBlockRows) {
    auto& b = buf_storage();
    auto& l = lane_storage();
    if (b.size() < static_cast<size_t>(rows_padded) * kWideTile) b.resize(static_cast<size_t>(rows_padded) * kWideTile);
    if (l.size() < static_cast<size_t>(num_blocks()) * kBlockRows * kBlockCols) l.resize(static_cast<size_t>(num_blocks()) * kBlockRows * kBlockCols);
    buf = b.data();
    lanes = l.data();
  }

  int num_blocks() const {  // blocks (a0, b0): a0 = kBlockRows r, b0 from the column block holding a0 to the end
    int n = 0;
    for (int a0 = 0; a0 < M; a0 += kBlockRows) n += (M - a0 / kBlockCols * kBlockCols + kBlockCols - 1) / kBlockCols;
    return n;
  }

  // by reference: a 32-byte vector returned by value warns (-Wpsabi) in the portable build without AVX
  static void load(const A* p, V& v) { std::memcpy(&v, p, sizeof v); }

  // One block over `len` elements (a multiple of L): rows a.. and b.. of buf; the first tile writes `out`.
  static void block(const A* a, const A* b, int64_t len, W* out, bool first) {
    V acc[kBlockRows][kBlockCols] = {};
    for (int64_t i = 0; i < len; i += L) {
      V vb[kBlockCols];
      for (int c = 0; c < kBlockCols; ++c) load(b + c * kWideTile + i, vb[c]);
      for (int r = 0; r < kBlockRows; ++r) {
        V va;
        load(a + r * kWideTile + i, va);
        for (int c = 0; c < kBlockCols; ++c) acc[r][c] += va * vb[c];
      }
    }
    for (int r = 0; r < kBlockRows; ++r)
      for (int c = 0; c < kBlockCols; ++c) {
        const W v = __builtin_convertvector(acc[r][c], W);
        out[r * kBlockCols + c] = first ? v : out[r * kBlockCols + c] + v;
      }
  }

  template <typename T>
  void run(const T* const* x, int64_t n) {
    for (int64_t t0 = 0; t0 < n; t0 += kWideTile) {
      const int64_t len = std::min(kWideTile, n - t0);
      const int64_t padded = (len + L - 1) / L * L;
      for (int k = 0; k < rows_padded; ++k) {
        A* __restrict__ dst = buf + static_cast<size_t>(k) * kWideTile;
        int64_t i = 0;
        if (k < M) {
          const T* __restrict__ src = x[k] + t0;
          for (; i < len; ++i) dst[i] = to_acc(src[i]);
        }
        for (; i < padded; ++i) dst[i] = A(0);
      }
      W* out = lanes;
      for (int a0 = 0; a0 < M; a0 += kBlockRows)
        for (int b0 = a0 / kBlockCols * kBlockCols; b0 < M; b0 += kBlockCols, out += kBlockRows * kBlockCols)
          block(buf + static_cast<size_t>(a0) * kWideTile, buf + static_cast<size_t>(b0) * kWideTile, padded, out, t0 == 0);
    }
  }

  // The sums added into slot[idx[a] * K + idx[b]], a <= b, lanes in a fixed order.
  void write(const int* idx, int64_t K, double* slot) const {
    const W* out = lanes;
    for (int a0 = 0; a0 < M; a0 += kBlockRows)
      for (int b0 = a0 / kBlockCols * kBlockCols; b0 < M; b0 += kBlockCols, out += kBlockRows * kBlockCols)
        for (int r = 0; r < kBlockRows; ++r)
          for (int c = 0; c < kBlockCols; ++c) {
            const int a = a0 + r, b = b0 + c;
            if (a >= M || b >= M || b < a) continue;  // padding rows, and pairs below the diagonal
            double total = 0;
            for (int j = 0; j < L; ++j) total += out[r * kBlockCols + c][j];
            slot[idx[a] * K + idx[b]] += total;
          }
  }
};

// Adds one work item's products into its group's slot (K x K, upper triangle).
template <typename T>
void gram_item(const FlatParam& fp, const Segment& s, int64_t K, double* slot /* K*K */) {
  c10::SmallVector<const T*, kMaxSets> x;  // inline up to kMaxSets: no allocation per item on the common path
  c10::SmallVector<int, kMaxSets> idx;
  for (int k = 0; k < K; ++k)
    if (fp.in[k] != nullptr) {
      x.push_back(static_cast<const T*>(fp.in[k]) + s.start);
      idx.push_back(k);
    }
  const int m = static_cast<int>(x.size());
  if (m > kMaxSets) {
    WideGram<acc_t<T>> wide(m);
    wide.run(x.data(), s.len);
    wide.write(idx.data(), K, slot);
    return;
  }
  double sums[kNumPairs];
  switch (m) {
    case 0: return;
    case 1: gram_segment<T, 1>(x.data(), s.len, sums); break;
    case 2: gram_segment<T, 2>(x.data(), s.len, sums); break;
    case 3: gram_segment<T, 3>(x.data(), s.len, sums); break;
    case 4: gram_segment<T, 4>(x.data(), s.len, sums); break;
    case 5: gram_segment<T, 5>(x.data(), s.len, sums); break;
    case 6: gram_segment<T, 6>(x.data(), s.len, sums); break;
    case 7: gram_segment<T, 7>(x.data(), s.len, sums); break;
    default: gram_segment<T, 8>(x.data(), s.len, sums); break;
  }
  int q = 0;
  for (int a = 0; a < m; ++a)
    for (int b = a; b < m; ++b, ++q) slot[idx[a] * K + idx[b]] += sums[q];
}
static_assert(kMaxSets == 8, "gram_item lists one case per number of present sets up to kMaxSets");

}  // namespace

// Fixed groups of consecutive work items, each summed into its own K x K slot: the partial sums take
// kGramGroups K^2 float64 (2 MB at K = 64) whatever the list's size, where a slot per item took one per 64K
// elements (62 MB for a 110M-parameter list at K = 64). The groups depend only on the item count.
constexpr int64_t kGramGroups = 64;

std::vector<double> gram_params(const std::vector<FlatParam>& params, int64_t K, const uint8_t* mask) {
  auto segs = make_segments(params, mask);
  const int64_t n = static_cast<int64_t>(segs.size()), groups = std::min(n, kGramGroups);
  std::vector<double> slots(groups * K * K, 0.0);
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g)
      for (int64_t i = g * n / groups; i < (g + 1) * n / groups; ++i) {  // items in order into the group's slot
        const FlatParam& fp = params[segs[i].param];
        double* slot = slots.data() + g * K * K;
        dispatch_dtype(fp.dtype, [&](auto tag) { gram_item<decltype(tag)>(fp, segs[i], K, slot); });
      }
  });
  std::vector<double> G(K * K, 0.0);
  for (int64_t g = 0; g < groups; ++g)  // fixed order: the result does not depend on the thread count
    for (int64_t e = 0; e < K * K; ++e) G[e] += slots[g * K * K + e];
  for (int64_t a = 0; a < K; ++a)
    for (int64_t b = 0; b < a; ++b) G[a * K + b] = G[b * K + a];
  return G;
}

at::Tensor gram_tensor(const std::vector<double>& G, int64_t K, at::ScalarType dtype) {
  at::Tensor out = at::empty({K, K}, at::TensorOptions().dtype(at::kDouble));
  std::copy(G.begin(), G.end(), out.data_ptr<double>());
  return dtype == at::kDouble ? out : out.to(dtype);
}

at::Tensor gram_cpu(const c10::List<std::optional<at::Tensor>>& tensors, int64_t num_sets) {
  auto params = prepare_params(tensors, num_sets, {}, /*with_out=*/false, c10::DeviceType::CPU, /*max_sets=*/kAnySets);
  return gram_tensor(gram_params(params, num_sets, nullptr), num_sets, result_dtype(params));
}

}  // namespace cpu
}  // namespace gh
