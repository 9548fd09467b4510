// The CUDA-on-CPU test driver: reads cases (tests/cuda_emulated/cases.py writes them), builds each
// case's work list with the glue's own host code (gh_worklist.h, gh_cuda_passes.h), runs the real
// csrc/cuda kernels through the same pass functions the glue calls, and, for comparison, a host
// emulation of each kernel written as a plain loop nest in the kernel's documented summation order
// (NOTE: [Kernel orders] below). Writes both results; the Python side compares them bit for bit and
// against a float64 reference.
//
// NOTE: [Kernel orders] The determinism contract of the Gram pass: thread t of an item visits the
// elements of the vector loop (kUnroll vectors of Vec<T>::N, kThreads apart) and then the scalar tail
// at t, t + kThreads, ..., accumulating fma(x_a, x_b, s) in the accumulation type; the 32 lanes of a
// warp reduce by shfl_down with offsets 16, 8, 4, 2, 1 (lane 0's tree); warp 0 reduces the 8 warp
// sums the same way; the item's row is stored as float64; the cleanup kernel's 128 threads sum rows
// t, t + 128, ... in float64 and reduce by halving strides. The combine: y = fma(w_k, x_k, y) for
// k = 0..K-1 in the accumulation type, from 0 or from out. Those orders are written out again here.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda_emu.h"
#include "gh_cuda_passes.h"
#include "gh_cuda_vec.cuh"
#include "gh_weights.h"

using namespace gh;
using namespace gh::cuda;

namespace {

enum Op : int64_t { kOpGram = 0, kOpCombine = 1, kOpCoordinate = 2, kOpHarmonize = 3, kOpWeights = 4, kOpConvert = 5 };
constexpr int kFinalizeThreadsEmulated = 128;  // gram.cu's kFinalizeThreads (NOTE: [Kernel orders])
constexpr int kSimulatedSMs = 132;             // an H100's SM count, for worklist_chunk when a case gives no chunk

FILE* g_in;
FILE* g_out;

int64_t read_i64() {
  int64_t v;
  if (std::fread(&v, 8, 1, g_in) != 1) std::exit(3);
  return v;
}
double read_f64() {
  double v;
  if (std::fread(&v, 8, 1, g_in) != 1) std::exit(3);
  return v;
}
void read_bytes(void* p, size_t n) {
  if (n && std::fread(p, 1, n, g_in) != n) std::exit(3);
}
void write_i64(int64_t v) { std::fwrite(&v, 8, 1, g_out); }
void write_f64(double v) { std::fwrite(&v, 8, 1, g_out); }
void write_bytes(const void* p, size_t n) {
  if (n) std::fwrite(p, 1, n, g_out);
}

int64_t item_size(int dtype) { return dtype == kFloat64 ? 8 : dtype == kFloat32 ? 4 : 2; }

// Element conversions, as the kernels' loads and stores convert (emulation side).
template <typename T>
struct Elem;
template <>
struct Elem<float> {
  using A = float;
  static A get(const void* p, int64_t i) { return static_cast<const float*>(p)[i]; }
  static void put(void* p, int64_t i, A v) { static_cast<float*>(p)[i] = v; }
};
template <>
struct Elem<double> {
  using A = double;
  static A get(const void* p, int64_t i) { return static_cast<const double*>(p)[i]; }
  static void put(void* p, int64_t i, A v) { static_cast<double*>(p)[i] = v; }
};
template <>
struct Elem<__half> {
  using A = float;
  static A get(const void* p, int64_t i) { return __half2float(static_cast<const __half*>(p)[i]); }
  static void put(void* p, int64_t i, A v) { static_cast<__half*>(p)[i] = __float2half_rn(v); }
};
template <>
struct Elem<__nv_bfloat16> {
  using A = float;
  static A get(const void* p, int64_t i) { return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]); }
  static void put(void* p, int64_t i, A v) { static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); }
};

template <typename F>
auto with_type(int dtype, F&& f) {
  switch (dtype) {
    case kFloat64: return f(double{});
    case kFloat16: return f(__half{});
    case kBFloat16: return f(__nv_bfloat16{});
    default: return f(float{});
  }
}

struct Param {
  int64_t numel = 0, in_offset = 0, out_offset = 0, present = 0, in_gram = 1, dtype = kFloat32;
  std::vector<char*> in;        // kernel inputs (aligned base + offset), nullptr when absent
  char* out = nullptr;          // kernel out
  std::vector<char> emul_out;   // the emulation's out
};

char* aligned_copy(const std::vector<char>& data, int64_t offset_bytes) {
  const size_t bytes = data.size() + static_cast<size_t>(offset_bytes) + 64;
  char* base = static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
  std::memset(base, 0x5a, bytes);  // guard pattern: a write outside [offset, offset + size) would show
  if (!data.empty()) std::memcpy(base + offset_bytes, data.data(), data.size());
  return base + offset_bytes;
}

// --- emulations (NOTE: [Kernel orders]) -----------------------------------------------------------

// One item's Gram row, in the kernel's thread, shuffle and warp order.
template <typename T>
void emulate_gram_item(const WorkItem& item, int K, double* row) {
  using A = typename Elem<T>::A;
  const int NP = K * (K + 1) / 2;
  for (int q = 0; q < kNumPairs; ++q) row[q] = 0.0;
  if (item.present & kNotInGram) return;
  constexpr int V = Vec<T>::N;
  std::vector<A> acc(static_cast<size_t>(kThreads) * NP, A(0));
  auto visit = [&](int t, int64_t i) {
    A x[kMaxSets];
    for (int k = 0; k < K; ++k)
      x[k] = (item.present >> k) & 1u ? Elem<T>::get(static_cast<const T*>(item.in[k]) + item.start, i) : A(0);
    A* s = &acc[static_cast<size_t>(t) * NP];
    int q = 0;
    for (int a = 0; a < K; ++a)
      for (int b = a; b < K; ++b, ++q) s[q] = std::fma(x[a], x[b], s[q]);
  };
  for (int t = 0; t < kThreads; ++t) {
    int64_t scalar_from = 0;
    if (item.aligned) {
      const int64_t nvec = item.len / V;
      int64_t v = t;
      for (; v + (kUnroll - 1) * kThreads < nvec; v += kUnroll * kThreads)
        for (int u = 0; u < kUnroll; ++u)
          for (int e = 0; e < V; ++e) visit(t, (v + u * kThreads) * V + e);
      for (; v < nvec; v += kThreads)
        for (int e = 0; e < V; ++e) visit(t, v * V + e);
      scalar_from = nvec * V;
    }
    for (int64_t i = scalar_from + t; i < item.len; i += kThreads) visit(t, i);
  }
  auto lane0_tree = [](A* s) {  // lane 0's value after shfl_down offsets 16..1
    for (int off = 16; off > 0; off >>= 1)
      for (int l = 0; l < off; ++l) s[l] = s[l] + s[l + off];
    return s[0];
  };
  for (int q = 0; q < NP; ++q) {
    A warp_sums[32] = {};
    for (int w = 0; w < kThreads / 32; ++w) {
      A s[32];
      for (int l = 0; l < 32; ++l) s[l] = acc[static_cast<size_t>(w * 32 + l) * NP + q];
      warp_sums[w] = lane0_tree(s);
    }
    const A total = lane0_tree(warp_sums);  // lanes >= kThreads / 32 hold 0
    int a = 0, rem = q;
    while (rem >= K - a) {
      rem -= K - a;
      ++a;
    }
    row[pair_column(a, a + rem)] = static_cast<double>(total);
  }
}

void emulate_gram(const HostWorkList& wl, int K, bool G_is_f64, double* G) {
  const int64_t n = static_cast<int64_t>(wl.items.size());
  std::vector<double> rows(static_cast<size_t>(n) * kNumPairs);
  int64_t offset = 0;
  for (const auto& g : wl.groups) {
    for (int64_t i = offset; i < offset + g.second; ++i)
      with_type(g.first, [&](auto t) {
        emulate_gram_item<decltype(t)>(wl.items[i], K, &rows[i * kNumPairs]);
        return 0;
      });
    offset += g.second;
  }
  std::vector<double> sums(static_cast<size_t>(kFinalizeThreadsEmulated) * kNumPairs, 0.0);
  for (int t = 0; t < kFinalizeThreadsEmulated; ++t)
    for (int64_t r = t; r < n; r += kFinalizeThreadsEmulated)
      for (int q = 0; q < kNumPairs; ++q) sums[t * kNumPairs + q] += rows[r * kNumPairs + q];
  for (int stride = kFinalizeThreadsEmulated / 2; stride > 0; stride >>= 1)
    for (int t = 0; t < stride; ++t)
      for (int q = 0; q < kNumPairs; ++q) sums[t * kNumPairs + q] += sums[(t + stride) * kNumPairs + q];
  for (int a = 0; a < K; ++a)
    for (int b = 0; b < K; ++b) {
      const double v = sums[pair_column(a < b ? a : b, a < b ? b : a)];
      G[a * K + b] = n == 0 ? 0.0 : G_is_f64 ? v : static_cast<double>(static_cast<float>(v));
    }
}

// NOTE: [Wide Gram block] (gram.cu): one wide item's row. Thread (task, lane) accumulates fma(x_a, x_b, s) from 0
// over the elements lane, lane + lanes, ... of each kWideGramTile tile (elements past the item read as 0), for the
// 4 x 4 block of pairs of its task, and adds each tile's sum into a float64 total; lane 0 sums the lanes' totals in
// order from 0 (float64) into the row.
template <typename T>
void emulate_wide_gram_item(const WideItem& item, const std::vector<const void*>& table, int K, double* row) {
  using A = typename Elem<T>::A;
  const int NP = wide_pairs(K);
  for (int q = 0; q < NP; ++q) row[q] = 0.0;
  if (item.flags & kNotInGram) return;
  const void* const* ptrs = table.data() + item.row * (K + 1);
  const int nb = (K + 3) / 4, tasks = nb * (nb + 1) / 2, lanes = kThreads / tasks;
  auto value = [&](int k, int64_t e) -> A {
    return k < K && ptrs[k] != nullptr && e < item.len ? Elem<T>::get(static_cast<const T*>(ptrs[k]) + item.start, e) : A(0);
  };
  int task = 0;
  for (int bi = 0; bi < nb; ++bi)
    for (int bj = bi; bj < nb; ++bj, ++task) {
      std::vector<double> total(static_cast<size_t>(lanes) * 16, 0.0);
      for (int lane = 0; lane < lanes; ++lane)
        for (int64_t t0 = 0; t0 < item.len; t0 += kWideGramTile) {
          A acc[16] = {};
          for (int e = lane; e < kWideGramTile; e += lanes)
            for (int j = 0; j < 4; ++j)
              for (int i = 0; i < 4; ++i)
                acc[i * 4 + j] = std::fma(value(bi * 4 + i, t0 + e), value(bj * 4 + j, t0 + e), acc[i * 4 + j]);
          for (int q = 0; q < 16; ++q) total[lane * 16 + q] += static_cast<double>(acc[q]);
        }
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          const int a = bi * 4 + i, b = bj * 4 + j;
          if (a >= K || b >= K || b < a) continue;
          double s = 0.0;
          for (int l = 0; l < lanes; ++l) s += total[l * 16 + i * 4 + j];
          row[wide_pair_column(a, b, K)] = s;
        }
    }
}

// The wide cleanup: per pair, the rows summed in item order in float64.
void emulate_wide_gram(const HostWideList& wl, int K, bool G_is_f64, double* G) {
  const int64_t n = static_cast<int64_t>(wl.items.size());
  const int NP = wide_pairs(K);
  std::vector<double> rows(static_cast<size_t>(n) * NP);
  int64_t offset = 0;
  for (const auto& g : wl.groups) {
    for (int64_t i = offset; i < offset + g.second; ++i)
      with_type(g.first, [&](auto t) {
        emulate_wide_gram_item<decltype(t)>(wl.items[i], wl.table, K, &rows[i * NP]);
        return 0;
      });
    offset += g.second;
  }
  for (int a = 0; a < K; ++a)
    for (int b = a; b < K; ++b) {
      double s = 0.0;
      for (int64_t r = 0; r < n; ++r) s += rows[r * NP + wide_pair_column(a, b, K)];
      const double v = n == 0 ? 0.0 : G_is_f64 ? s : static_cast<double>(static_cast<float>(s));
      G[a * K + b] = v;
      G[b * K + a] = v;
    }
}

// Elementwise ops over one parameter: f(x[K], y) with x read from the pristine inputs.
template <typename T, typename F>
void emulate_elementwise(Param& p, const std::vector<std::vector<char>>& in_data, int K, bool accumulate, F&& f) {
  using A = typename Elem<T>::A;
  std::vector<A> x(static_cast<size_t>(K));
  for (int64_t i = 0; i < p.numel; ++i) {
    for (int k = 0; k < K; ++k) x[k] = (p.present >> k) & 1 ? Elem<T>::get(in_data[k].data(), i) : A(0);
    A y = accumulate ? Elem<T>::get(p.emul_out.data(), i) : A(0);
    f(x.data(), y);
    Elem<T>::put(p.emul_out.data(), i, y);
  }
}

// The 2x2 rule on the host, in the kernel's precision (float for a float32 G), with the scaled copy the
// combine uses, computed as weights_kernel computes it.
void host_weights(bool is_f64, double n1sq, double c, double n2sq, int method, double kappa, double scale1, double scale2,
                  double* w, double* scaled) {
  if (is_f64) {
    solve_weights<double>(n1sq, c, n2sq, method, kappa, &w[0], &w[1]);
    scaled[0] = w[0] * scale1;
    scaled[1] = w[1] * scale2;
    return;
  }
  float a, b;
  solve_weights<float>(static_cast<float>(n1sq), static_cast<float>(c), static_cast<float>(n2sq), method,
                       static_cast<float>(kappa), &a, &b);
  w[0] = a;
  w[1] = b;
  scaled[0] = static_cast<double>(a * static_cast<float>(scale1));
  scaled[1] = static_cast<double>(b * static_cast<float>(scale2));
}

// --- one case ----------------------------------------------------------------------------------

void run_convert() {
  const int64_t n = read_i64();
  std::vector<float> values(n);
  read_bytes(values.data(), n * 4);
  for (float v : values) {
    const uint16_t h = __float2half_rn(v).bits, b = __float2bfloat16_rn(v).bits;
    write_bytes(&h, 2);
    write_bytes(&b, 2);
  }
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const float h = __half2float(__half{static_cast<uint16_t>(bits)});
    const float b = __bfloat162float(__nv_bfloat16{static_cast<uint16_t>(bits)});
    write_bytes(&h, 4);
    write_bytes(&b, 4);
  }
}

void run_case() {
  const int64_t op = read_i64();
  if (op == kOpConvert) return run_convert();
  const int K = static_cast<int>(read_i64());
  const bool G_is_f64 = read_i64() != 0;
  const bool accumulate = read_i64() != 0;
  const int rule = static_cast<int>(read_i64());
  const int trim = static_cast<int>(read_i64());
  int64_t chunk = read_i64();
  const int64_t n_params = read_i64();
  const int method = static_cast<int>(read_i64());
  const int64_t out_alias = read_i64();  // -1, or the set whose memory out shares (in-place update)
  const double kappa = read_f64(), scale1 = read_f64(), scale2 = read_f64();
  const int64_t n_vec = read_i64();
  std::vector<double> vec(n_vec);
  for (auto& v : vec) v = read_f64();

  if (op == kOpWeights) {  // vec = G (2 x 2, row-major)
    alignas(16) double G64[4], w64[2], scaled[2];
    alignas(16) float G32[4], w32[2];
    for (int i = 0; i < 4; ++i) G32[i] = static_cast<float>(G64[i] = vec[i]);
    const cudaError_t err = launch_weights(G_is_f64 ? static_cast<void*>(G64) : G32, G_is_f64 ? static_cast<void*>(w64) : w32,
                                           G_is_f64, scaled, method, kappa, scale1, scale2, nullptr);
    write_i64(err);
    write_i64(0);
    double ew[2], es[2];
    host_weights(G_is_f64, G64[0], G64[1], G64[3], method, kappa, scale1, scale2, ew, es);
    write_f64(G_is_f64 ? w64[0] : w32[0]);
    write_f64(G_is_f64 ? w64[1] : w32[1]);
    write_f64(scaled[0]);
    write_f64(scaled[1]);
    for (double v : {ew[0], ew[1], es[0], es[1]}) write_f64(v);
    return;
  }

  std::vector<Param> params(n_params);
  std::vector<std::vector<std::vector<char>>> in_data(n_params);
  std::vector<std::vector<char>> out_init(n_params);
  std::vector<char*> to_free;
  int64_t total = 0;
  for (auto& p : params) {
    p.numel = read_i64();
    p.in_offset = read_i64();
    p.out_offset = read_i64();
    p.present = read_i64();
    p.in_gram = read_i64();
    p.dtype = read_i64();
    total += p.numel;
  }
  const bool writes_out = op != kOpGram;
  for (int64_t pi = 0; pi < n_params; ++pi) {
    Param& p = params[pi];
    const int64_t bytes = p.numel * item_size(static_cast<int>(p.dtype));
    in_data[pi].assign(K, {});
    p.in.assign(std::max(K, kMaxSets), nullptr);
    for (int k = 0; k < K; ++k)
      if ((p.present >> k) & 1) {
        in_data[pi][k].resize(bytes);
        read_bytes(in_data[pi][k].data(), bytes);
        p.in[k] = aligned_copy(in_data[pi][k], p.in_offset * item_size(static_cast<int>(p.dtype)));
        to_free.push_back(p.in[k] - p.in_offset * item_size(static_cast<int>(p.dtype)));
      }
    if (writes_out) {
      out_init[pi].resize(bytes);
      read_bytes(out_init[pi].data(), bytes);
      if (out_alias >= 0) {
        p.out = p.in[out_alias];  // out is set out_alias's memory: its initial value is that set's gradient
        p.emul_out = in_data[pi][out_alias];
      } else {
        p.out = aligned_copy(out_init[pi], p.out_offset * item_size(static_cast<int>(p.dtype)));
        to_free.push_back(p.out - p.out_offset * item_size(static_cast<int>(p.dtype)));
        p.emul_out = out_init[pi];
      }
    }
  }

  // The work list, exactly as the glue builds it.
  std::vector<ParamView> views(n_params);
  std::vector<uint8_t> mask(n_params);
  for (int64_t pi = 0; pi < n_params; ++pi) {
    views[pi].in.assign(params[pi].in.begin(), params[pi].in.end());
    views[pi].out = params[pi].out;
    views[pi].numel = params[pi].numel;
    views[pi].elem_size = item_size(static_cast<int>(params[pi].dtype));
    views[pi].dtype = static_cast<int>(params[pi].dtype);
    mask[pi] = static_cast<uint8_t>(params[pi].in_gram);
  }
  if (chunk <= 0) chunk = worklist_chunk(total, kSimulatedSMs);
  // Above kMaxSets sets the Gram and combine run on the wide list (NOTE: [Wide work list]).
  const bool wide = K > kMaxSets;
  if (wide && op != kOpGram && op != kOpCombine) std::exit(4);
  const HostWorkList wl = wide ? HostWorkList{} : build_items(views, K, writes_out, op == kOpHarmonize ? mask.data() : nullptr, chunk);
  const HostWideList wide_list = wide ? build_wide_items(views, K, writes_out, nullptr, chunk) : HostWideList{};
  const int64_t n_items = static_cast<int64_t>(wide ? wide_list.items.size() : wl.items.size());

  // Emulation first: it reads the pristine inputs (out may alias one).
  std::vector<double> G_emul(K * K, 0.0);
  double w_emul[2] = {1, 1}, scaled_emul[2] = {1, 1};
  if (op == kOpGram && wide) emulate_wide_gram(wide_list, K, G_is_f64, G_emul.data());
  else if (op == kOpGram || op == kOpHarmonize) emulate_gram(wl, K, G_is_f64, G_emul.data());
  if (op == kOpHarmonize)
    host_weights(G_is_f64, G_emul[0], G_emul[1], G_emul[3], method, kappa, scale1, scale2, w_emul, scaled_emul);
  for (int64_t pi = 0; pi < n_params && writes_out; ++pi) {
    Param& p = params[pi];
    if (p.present == 0 && !accumulate) std::fill(p.emul_out.begin(), p.emul_out.end(), 0);  // the glue zeroes these
    if (p.present == 0) continue;
    with_type(static_cast<int>(p.dtype), [&](auto tag) {
      using T = decltype(tag);
      using A = typename Elem<T>::A;
      if (op == kOpCombine || op == kOpHarmonize) {
        const double* w = op == kOpCombine ? vec.data() : scaled_emul;
        emulate_elementwise<T>(p, in_data[pi], K, accumulate, [&](const A* x, A& y) {
          for (int k = 0; k < K; ++k) y = std::fma(static_cast<A>(w[k]), x[k], y);
        });
      } else if (rule == kCoordinateTrimmedMean) {
        emulate_elementwise<T>(p, in_data[pi], K, accumulate, [&](const A* x, A& y) {
          std::vector<A> v(x, x + K), all(x, x + K);
          std::stable_sort(v.begin(), v.end());
          A kept = A(0), sum = A(0);
          for (int k = trim; k < K - trim; ++k) kept += v[k];
          for (int k = 0; k < K; ++k) sum += all[k];
          y += kept / static_cast<A>(K - 2 * trim) + A(0) * sum;
        });
      } else {  // GradDrop: sets 0..K-2 the gradients, K-1 the draws; leak = vec
        emulate_elementwise<T>(p, in_data[pi], K, accumulate, [&](const A* x, A& y) {
          const int G = K - 1;
          A sum = A(0), abs_sum = A(0), r = A(0);
          for (int k = 0; k < G; ++k) sum += x[k];
          for (int k = 0; k < G; ++k) abs_sum += std::fabs(x[k]);
          const A purity = A(0.5) * (A(1) + sum / abs_sum), u = x[G];
          for (int k = 0; k < G; ++k) {
            const bool kept = (purity > u && x[k] > A(0)) || (purity < u && x[k] < A(0));
            const A leak = static_cast<A>(vec[k]);
            r += (leak + (A(1) - leak) * (kept ? A(1) : A(0))) * x[k];
          }
          y += r;
        });
      }
      return 0;
    });
  }

  // The kernels, through the glue's pass functions.
  const WorkItem* items = wl.items.data();
  std::vector<double> partials(wide ? wide_gram_partials_count(n_items, K) : gram_partials_count(n_items), -1.0);  // garbage: the launcher must clear it
  std::vector<double> G64(static_cast<size_t>(K) * K, 0.0);
  std::vector<float> G32(static_cast<size_t>(K) * K, 0.0f);
  alignas(16) double w64[2] = {}, scaled[2] = {};
  alignas(16) float w32[2] = {};
  void* G = G_is_f64 ? static_cast<void*>(G64.data()) : static_cast<void*>(G32.data());
  // The glue zeroes the outs of parameters no set has (zero_unreached) before the passes.
  for (auto& p : params)
    if (writes_out && p.present == 0 && !accumulate) std::memset(p.out, 0, p.numel * item_size(static_cast<int>(p.dtype)));
  int nonfinite = 0;  // the combine's flag (NOTE: [Non-finite flag of the combine])
  cudaError_t err = cudaSuccess;
  // the wide list as uploaded: items, then the table (NOTE: [Wide work list])
  std::vector<unsigned char> wide_bytes = wide_list.serialize();
  const WideItem* wide_items = reinterpret_cast<const WideItem*>(wide_bytes.data());
  const void* const* wide_table = reinterpret_cast<const void* const*>(wide_bytes.data() + wide_list.item_bytes());
  switch (wide ? -op - 1 : op) {
    case kOpGram: err = run_gram_pass(items, wl.groups, K, partials.data(), G, G_is_f64, nullptr); break;
    case kOpCombine: err = run_combine_pass(items, wl.groups, K, vec.data(), accumulate, &nonfinite, nullptr); break;
    case -kOpGram - 1:
      err = run_wide_gram_pass(wide_items, wide_table, wide_list.groups, K, partials.data(), G, G_is_f64, nullptr);
      break;
    case -kOpCombine - 1:
      err = run_wide_combine_pass(wide_items, wide_table, wide_list.groups, K, vec.data(), accumulate, &nonfinite, nullptr);
      break;
    case kOpCoordinate:
      err = run_coordinate_pass(items, wl.groups, K, rule, trim, vec.empty() ? nullptr : vec.data(), accumulate, nullptr);
      break;
    case kOpHarmonize:
      err = run_harmonize_passes(items, wl.groups, partials.data(), G, G_is_f64 ? static_cast<void*>(w64) : w32, G_is_f64,
                                 scaled, method, kappa, scale1, scale2, accumulate, nullptr);
      break;
    default: err = cudaErrorInvalidValue;
  }
  write_i64(err);
  write_i64(n_items);
  if (op == kOpGram || op == kOpHarmonize) {
    for (int i = 0; i < K * K; ++i) {
      const int a = i / K, b = i % K;  // the kernel writes G[a * K + b] in a K x K layout
      write_f64(G_is_f64 ? G64[a * K + b] : static_cast<double>(G32[a * K + b]));
    }
    for (double v : G_emul) write_f64(v);
  }
  if (op == kOpHarmonize) {
    write_f64(G_is_f64 ? w64[0] : w32[0]);
    write_f64(G_is_f64 ? w64[1] : w32[1]);
    write_f64(scaled[0]);
    write_f64(scaled[1]);
    for (double v : {w_emul[0], w_emul[1], scaled_emul[0], scaled_emul[1]}) write_f64(v);
  }
  if (writes_out) {
    for (auto& p : params) write_bytes(p.out, p.numel * item_size(static_cast<int>(p.dtype)));
    for (auto& p : params) write_bytes(p.emul_out.data(), p.emul_out.size());
    // Guard bytes around each out: a write outside the parameter's range is a failure.
    int64_t guard_broken = 0;
    for (int64_t pi = 0; pi < n_params; ++pi) {
      const Param& p = params[pi];
      if (out_alias >= 0 || p.numel == 0) continue;
      const int64_t isz = item_size(static_cast<int>(p.dtype));
      const unsigned char* base = reinterpret_cast<const unsigned char*>(p.out);
      for (int64_t b = 1; b <= p.out_offset * isz; ++b) guard_broken += base[-b] != 0x5a;
      for (int64_t b = 0; b < 16; ++b) guard_broken += base[p.numel * isz + b] != 0x5a;
    }
    write_i64(guard_broken);
  }
  if (op == kOpCombine) write_i64(nonfinite);
  for (char* p : to_free) std::free(p);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CASES_IN RESULTS_OUT\n", argv[0]);
    return 2;
  }
  g_in = std::fopen(argv[1], "rb");
  g_out = std::fopen(argv[2], "wb");
  if (!g_in || !g_out) return 2;
  const int64_t n = read_i64();
  for (int64_t c = 0; c < n; ++c) run_case();
  std::fclose(g_out);
  return 0;
}
