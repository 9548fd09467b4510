// The scheduler behind cuda_emu.h (NOTE: [Emulated execution model]): one fiber per thread of a
// block, a hand-written x86-64 context switch (a few nanoseconds; ucontext's swapcontext makes a
// system call per switch, which dominated a Gram launch), ucontext elsewhere. Blocks run in turn.
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "cuda_emu.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cuemu {

uint3 block_index{0, 0, 0};
dim3 block_dim, grid_dim;

namespace {

enum class State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

constexpr size_t kStackBytes = 256 * 1024;  // UBSan and -O0 builds use more stack than a GPU thread has

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  char* stack = nullptr;
  uint3 tid{0, 0, 0};
  int linear = 0;
  State state = State::kRunnable;
  const uint64_t* exchange_slots = nullptr;  // the round this fiber published into, read after release
#if !defined(__x86_64__)
  ucontext_t ctx;
#endif
};

struct Warp {
  int live = 0, waiting = 0;
  unsigned live_mask = 0;
  unsigned round = 0;
  uint64_t slots[2][32] = {};
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int live = 0, block_waiting = 0;
  Body body = nullptr;
  void* ctx = nullptr;
};

Block g_block;
Fiber* g_current = nullptr;
void* g_scheduler_sp = nullptr;
cudaError_t g_error = cudaSuccess;
#if !defined(__x86_64__)
ucontext_t g_scheduler_ctx;
#endif

}  // namespace
}  // namespace cuemu

#if defined(__x86_64__)
// void cuemu_switch(void** save_sp, void* load_sp): saves the callee-saved registers, MXCSR and the
// x87 control word on the current stack, stores the stack pointer, loads the other one and restores.
extern "C" void cuemu_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.globl cuemu_switch
.type cuemu_switch,@function
cuemu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw (%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size cuemu_switch,.-cuemu_switch
.section .note.GNU-stack,"",@progbits
.text
)");
#endif

namespace cuemu {
namespace {

void to_scheduler() {
#if defined(__x86_64__)
  cuemu_switch(&g_current->sp, g_scheduler_sp);
#else
  swapcontext(&g_current->ctx, &g_scheduler_ctx);
#endif
}

[[noreturn]] void fiber_main() {
  Fiber* me = g_current;
  g_block.body(g_block.ctx);
  // Returned: leave the block and warp barriers (NOTE: [Emulated execution model]).
  me->state = State::kDone;
  --g_block.live;
  Warp& w = g_block.warps[me->linear / 32];
  --w.live;
  w.live_mask &= ~(1u << (me->linear % 32));
  to_scheduler();
  std::abort();  // a finished fiber is never resumed
}

#if defined(__x86_64__)
extern "C" [[noreturn]] void cuemu_fiber_entry() { fiber_main(); }
#else
void fiber_entry_uc() { fiber_main(); }
#endif

void prepare(Fiber& f) {
#if defined(__x86_64__)
  // Initial frame as cuemu_switch leaves it: [x87 cw, mxcsr][r15 r14 r13 r12 rbx rbp][return address].
  uintptr_t top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                                      // keeps the entry's stack ABI-aligned
  *--sp = reinterpret_cast<uint64_t>(&cuemu_fiber_entry);        // `ret` goes here
  for (int r = 0; r < 6; ++r) *--sp = 0;                          // rbp rbx r12 r13 r14 r15
  sp -= 2;
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  std::memcpy(reinterpret_cast<char*>(sp) + 8, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp), &fpucw, 2);
  f.sp = sp;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_entry_uc, 0);
#endif
}

void resume(Fiber& f) {
  g_current = &f;
#if defined(__x86_64__)
  cuemu_switch(&g_scheduler_sp, f.sp);
#else
  swapcontext(&g_scheduler_ctx, &f.ctx);
#endif
  g_current = nullptr;
}

void block_yield(State s) {
  g_current->state = s;
  to_scheduler();
}

// Releases every barrier whose live participants have all arrived; returns whether any was released.
bool release_barriers() {
  bool released = false;
  for (size_t w = 0; w < g_block.warps.size(); ++w) {
    Warp& warp = g_block.warps[w];
    if (warp.waiting > 0 && warp.waiting == warp.live) {
      for (int l = 0; l < 32; ++l) {
        const size_t t = w * 32 + l;
        if (t < g_block.fibers.size() && g_block.fibers[t].state == State::kAtWarpBarrier)
          g_block.fibers[t].state = State::kRunnable;
      }
      warp.waiting = 0;
      ++warp.round;
      released = true;
    }
  }
  if (g_block.block_waiting > 0 && g_block.block_waiting == g_block.live) {
    for (Fiber& f : g_block.fibers)
      if (f.state == State::kAtBlockBarrier) f.state = State::kRunnable;
    g_block.block_waiting = 0;
    released = true;
  }
  return released;
}

// One block: all threads run to completion, or the barriers deadlock (reported, sticky error).
bool run_block(int nthreads) {
  static std::vector<char*> stacks;
  while (static_cast<int>(stacks.size()) < nthreads) stacks.push_back(static_cast<char*>(std::malloc(kStackBytes)));
  g_block.fibers.assign(nthreads, Fiber{});
  g_block.warps.assign((nthreads + 31) / 32, Warp{});
  g_block.live = nthreads;
  g_block.block_waiting = 0;
  for (int t = 0; t < nthreads; ++t) {
    Fiber& f = g_block.fibers[t];
    f.stack = stacks[t];
    f.linear = t;
    f.tid = uint3{static_cast<unsigned>(t % block_dim.x), static_cast<unsigned>((t / block_dim.x) % block_dim.y),
                  static_cast<unsigned>(t / (block_dim.x * block_dim.y))};
    Warp& w = g_block.warps[t / 32];
    ++w.live;
    w.live_mask |= 1u << (t % 32);
    prepare(f);
  }
  while (g_block.live > 0) {
    bool ran = false;
    for (Fiber& f : g_block.fibers)
      if (f.state == State::kRunnable) {
        resume(f);
        ran = true;
      }
    if (!release_barriers() && !ran) {
      int at_block = 0, at_warp = 0;
      for (const Fiber& f : g_block.fibers) {
        at_block += f.state == State::kAtBlockBarrier;
        at_warp += f.state == State::kAtWarpBarrier;
      }
      std::fprintf(stderr,
                   "cuemu: deadlock in block (%u, %u, %u): %d live threads, %d at __syncthreads, %d at warp barriers\n",
                   block_index.x, block_index.y, block_index.z, g_block.live, at_block, at_warp);
      return false;
    }
  }
  return true;
}

// The kernels launched, appended to $CUEMU_KERNEL_LOG at exit.
struct LaunchLog {
  std::set<std::string> names;
  ~LaunchLog() {
    const char* path = std::getenv("CUEMU_KERNEL_LOG");
    if (path == nullptr || names.empty()) return;
    if (FILE* f = std::fopen(path, "a")) {
      for (const auto& n : names) std::fprintf(f, "%s\n", n.c_str());
      std::fclose(f);
    }
  }
};
LaunchLog g_launched;

}  // namespace

void launch_raw(const char* kernel, dim3 grid, dim3 block, Body body, void* ctx) {
  g_launched.names.insert(kernel);
  const long nthreads = static_cast<long>(block.x) * block.y * block.z;
  if (nthreads <= 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    g_error = cudaErrorInvalidValue;  // as CUDA: an invalid configuration fails the launch
    return;
  }
  grid_dim = grid;
  block_dim = block;
  g_block.body = body;
  g_block.ctx = ctx;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        block_index = uint3{x, y, z};
        if (!run_block(static_cast<int>(nthreads))) {
          g_error = cudaErrorLaunchFailure;
          return;
        }
      }
}

cudaError_t take_error() {
  const cudaError_t e = g_error;
  g_error = cudaSuccess;
  return e;
}

const uint3& thread_index() { return g_current->tid; }

int lane_id() { return g_current->linear % 32; }

unsigned live_lanes() { return g_block.warps[g_current->linear / 32].live_mask; }

void sync_block() {
  ++g_block.block_waiting;
  block_yield(State::kAtBlockBarrier);
}

const uint64_t* warp_exchange(uint64_t bits) {
  Warp& w = g_block.warps[g_current->linear / 32];
  uint64_t* slots = w.slots[w.round & 1u];  // double-buffered: the next round writes the other half
  slots[g_current->linear % 32] = bits;
  ++w.waiting;
  block_yield(State::kAtWarpBarrier);
  return slots;
}

}  // namespace cuemu
