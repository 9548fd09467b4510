"""The CUDA backend's host logic, tested on CPU: csrc/include/gh_worklist.h (torch-free, CUDA-free)
is compiled with g++ into a small program that builds work lists and checks them -- chunk boundaries,
empty parameters and parameters no set has, sets without a gradient, K = 2..8, dtype groups, the
Gram mask, alignment flags, when a plan's cached device copy is reused, and the wide list (K = 40)."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = r"""
#include <cstdio>
#include <cstdlib>
#include "gh_worklist.h"
using namespace gh::cuda;
static int failures = 0;
#define CHECK(cond) do { if (!(cond)) { std::printf("FAILED line %d: %s\n", __LINE__, #cond); ++failures; } } while (0)

alignas(16) static float buf[8][1 << 16];
alignas(16) static float outbuf[1 << 16];

int main() {
  // chunk size: at least 16K elements, a power of two, at most 1M; about 16 items per multiprocessor
  CHECK(chunk_elements(1000, 132) == (1 << 14));
  CHECK(chunk_elements(int64_t(132) * 16 * 100000, 132) == (1 << 17));
  CHECK(chunk_elements(int64_t(1) << 40, 132) == (1 << 20));

  for (int K = 2; K <= gh::kMaxSets; ++K) {
    const int64_t chunk = 1 << 14;
    std::vector<ParamView> params(5);
    // p0: 3 chunks and a tail (chunk boundaries), every set present
    params[0].numel = 3 * chunk + 5;
    for (int k = 0; k < K; ++k) params[0].in[k] = buf[k];
    params[0].out = outbuf;
    // p1: empty tensor -> no item
    params[1].numel = 0;
    params[1].in[0] = buf[0];
    // p2: no set has it -> no item
    params[2].numel = 100;
    // p3: only the last set has it (the others read its memory with their bit cleared); misaligned
    params[3].numel = 7;
    params[3].in[K - 1] = buf[K - 1] + 1;
    params[3].out = outbuf + 1;
    // p4: exactly one chunk, bfloat16 (its own dtype group)
    params[4].numel = chunk;
    params[4].elem_size = 2;
    params[4].dtype = kBFloat16;
    for (int k = 0; k < K; ++k) params[4].in[k] = buf[k];
    params[4].out = outbuf;
    const uint8_t mask[5] = {1, 1, 1, 0, 1};
    HostWorkList wl = build_items(params, K, /*with_out=*/true, mask, chunk);
    CHECK(wl.items.size() == 4 + 1 + 1);
    CHECK(wl.groups.size() == 2);
    CHECK(wl.groups[0].first == kFloat32 && wl.groups[0].second == 5);
    CHECK(wl.groups[1].first == kBFloat16 && wl.groups[1].second == 1);
    int64_t covered = 0;
    for (int i = 0; i < 4; ++i) {
      const WorkItem& it = wl.items[i];
      CHECK(it.start == i * chunk);
      CHECK(it.len == (i < 3 ? chunk : 5));
      CHECK((it.present & 0xff) == (1u << K) - 1);
      CHECK(it.aligned == 1);
      covered += it.len;
    }
    CHECK(covered == params[0].numel);
    const WorkItem& lone = wl.items[4];
    CHECK((lone.present & 0xff) == (1u << (K - 1)));
    CHECK((lone.present & kNotInGram) != 0);
    CHECK(lone.aligned == 0);
    for (int k = 0; k < K; ++k) CHECK(lone.in[k] == params[3].in[K - 1]);  // absent sets point at valid memory
    CHECK(wl.items[5].len == chunk && wl.items[5].start == 0);

    // the cache: a hit only for the same items (same addresses), with room on the device
    std::vector<uint8_t> cached(wl.bytes());
    std::memcpy(cached.data(), wl.items.data(), wl.bytes());
    HostWorkList again = build_items(params, K, true, mask, chunk);
    CHECK(cache_hit(cached.data(), wl.bytes(), wl.bytes(), again));
    CHECK(!cache_hit(cached.data(), wl.bytes(), wl.bytes() - 1, again));   // device copy too small
    CHECK(!cache_hit(nullptr, 0, 0, again));                                 // nothing cached yet
    params[0].in[0] = buf[0] + 4;                                            // a tensor moved
    HostWorkList moved = build_items(params, K, true, mask, chunk);
    CHECK(!cache_hit(cached.data(), wl.bytes(), wl.bytes(), moved));
    const uint8_t all[5] = {1, 1, 1, 1, 1};                                  // another Gram mask
    CHECK(!cache_hit(cached.data(), wl.bytes(), wl.bytes(), build_items(params, K, true, all, chunk)));
    // without out (the Gram pass): out pointers are null
    HostWorkList gram = build_items(params, K, /*with_out=*/false, nullptr, chunk);
    for (const auto& it : gram.items) CHECK(it.out == nullptr && (it.present & kNotInGram) == 0);
  }
  // NOTE: [Wide work list]: K = 40 sets, a table row of K + 1 pointers per parameter with items, nullptr for
  // absent sets, items pointing at their row, parameters of zero elements or no set skipped, the Gram mask.
  {
    const int K = 40;
    const int64_t chunk = 1 << 14;
    std::vector<ParamView> params(4);
    for (auto& pv : params) pv.in.assign(K, nullptr);
    params[0].numel = 3 * chunk + 5;
    for (int k = 0; k < K; ++k) params[0].in[k] = buf[k % 8];
    params[0].out = outbuf;
    params[1].numel = 0;                                   // empty: no item
    params[1].in[0] = buf[0];
    params[2].numel = 7;                                   // no set has it: no item
    params[3].numel = 100;                                 // only set 39 has it
    params[3].in[K - 1] = buf[1] + 1;
    params[3].out = outbuf + 1;
    params[3].dtype = kBFloat16;
    params[3].elem_size = 2;
    const uint8_t mask[4] = {1, 1, 1, 0};
    HostWideList wl = build_wide_items(params, K, true, mask, chunk);
    CHECK(wl.table.size() == 2 * (K + 1));
    CHECK(wl.items.size() == 5);
    CHECK(wl.groups.size() == 2 && wl.groups[0].second == 4 && wl.groups[1].second == 1);  // float32, then bfloat16
    for (int i = 0; i < 4; ++i) {
      CHECK(wl.items[i].row == 0 && wl.items[i].start == i * chunk && wl.items[i].flags == 0 && wl.items[i].aligned == 1);
      CHECK(wl.items[i].len == (i < 3 ? chunk : 5));
    }
    CHECK(wl.items[4].row == 1 && wl.items[4].len == 100 && wl.items[4].flags == kNotInGram && wl.items[4].aligned == 0);
    CHECK(wl.table[K] == outbuf && wl.table[(K + 1) + K - 1] == buf[1] + 1 && wl.table[2 * (K + 1) - 1] == outbuf + 1);
    for (int k = 0; k < K - 1; ++k) CHECK(wl.table[(K + 1) + k] == nullptr);
    const std::vector<unsigned char> bytes = wl.serialize();
    CHECK(static_cast<int64_t>(bytes.size()) == wl.bytes() && wl.item_bytes() % 16 == 0);
    CHECK(std::memcmp(bytes.data() + wl.item_bytes(), wl.table.data(), wl.table.size() * sizeof(void*)) == 0);
    CHECK(build_wide_items(params, K, false, nullptr, chunk).table[K] == nullptr);  // the Gram pass: no out
  }
  std::printf(failures ? "%d failures\n" : "ok\n", failures);
  return failures ? 1 : 0;
}
"""


def test_worklist_host_logic_with_gpp(tmp_path):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    (tmp_path / "main.cpp").write_text(PROGRAM)
    build = subprocess.run([cxx, "-std=c++17", "-Wall", "-Werror", "-I", os.path.join(ROOT, "csrc", "include"),
                            str(tmp_path / "main.cpp"), "-o", str(tmp_path / "main")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout
