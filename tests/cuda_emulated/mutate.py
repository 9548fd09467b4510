"""The mutation check: the emulated-CUDA tests must be able to fail. Each mutation is applied to a copy
of csrc/ (the sources stay as they are), the driver is rebuilt from the copy (only the objects the
mutation touched: build.py caches by content), and the suites that exercise the mutated code must
report a failure.

    python tests/cuda_emulated/mutate.py       # prints each mutation and whether it was caught; exit 1 if not
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import List

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "cuda_emulated"

from . import build, suites  # noqa: E402


@dataclass
class Mutation:
    name: str
    path: str      # relative to csrc/
    old: str       # must occur exactly once in the file
    new: str
    suites: tuple  # the suites expected to catch it
    variant: str = "o1"  # the build that must catch it (ubsan: what only the sanitizer can see)


MUTATIONS: List[Mutation] = [
    Mutation("removed __syncthreads in the Gram block reduction", "cuda/gram.cu",
             "    if (lane == 0) warp_sums[warp][q] = s;\n  }\n  __syncthreads();",
             "    if (lane == 0) warp_sums[warp][q] = s;\n  }\n", ("gram",)),
    Mutation("off-by-one in the scalar tail", "cuda/multi_tensor_apply.cuh",
             "for (int64_t i = scalar_from + threadIdx.x; i < item.len; i += kThreads)",
             "for (int64_t i = scalar_from + threadIdx.x; i < item.len - 1; i += kThreads)", ("combine", "gram")),
    Mutation("wrong lane count in the warp reduction", "cuda/gram.cu",
             "    A s = acc.s[q];\n#pragma unroll\n    for (int off = 16; off > 0; off >>= 1)",
             "    A s = acc.s[q];\n#pragma unroll\n    for (int off = 8; off > 0; off >>= 1)", ("gram",)),
    Mutation("a set skipped in combine", "cuda/combine.cu",
             "for (int k = 0; k < K; ++k) y = fma(w[k], x[k], y);",
             "for (int k = 1; k < K; ++k) y = fma(w[k], x[k], y);", ("combine",)),
    Mutation("removed __syncthreads after the wide Gram tile load", "cuda/gram.cu",
             "      tile[idx] = p != nullptr && t0 + e < item.len ? Vec<T>::to_f(static_cast<const T*>(p)[item.start + t0 + e]) : A(0);\n    }\n    __syncthreads();",
             "      tile[idx] = p != nullptr && t0 + e < item.len ? Vec<T>::to_f(static_cast<const T*>(p)[item.start + t0 + e]) : A(0);\n    }\n",
             ("gram_wide",)),
    Mutation("a lane left out of the wide Gram's lane sum", "cuda/gram.cu",
             "for (int l = 0; l < lanes; ++l) s += smem[", "for (int l = 1; l < lanes; ++l) s += smem[", ("gram_wide",)),
    Mutation("the wide table row of the next parameter", "cuda/combine.cu",
             "const void* const* ptrs = table + item.row * (K + 1);", "const void* const* ptrs = table + item.row * K;",
             ("combine_wide",)),
    Mutation("a set skipped in the wide combine", "cuda/combine.cu",
             "for (int k = 0; k < K; ++k) y = fma(w[k], x[k] != nullptr", "for (int k = 1; k < K; ++k) y = fma(w[k], x[k] != nullptr",
             ("combine_wide",)),
    # x86 accepts a misaligned 16-byte access, so only the UBSan build can catch an item wrongly marked aligned.
    Mutation("an unaligned out marked aligned (UBSan)", "include/gh_worklist.h",
             "if (with_out) aligned = aligned && reinterpret_cast<uintptr_t>(pv.out) % 16 == 0;", "", ("combine",),
             "ubsan"),
]


def caught(m: Mutation, dtype: torch.dtype = torch.float32) -> List[str]:
    """The failures the mutated kernels produce (empty: the mutation escaped)."""
    with tempfile.TemporaryDirectory() as tmp:
        csrc = os.path.join(tmp, "csrc")
        shutil.copytree(build.CSRC, csrc)
        path = os.path.join(csrc, m.path)
        with open(path) as f:
            text = f.read()
        if text.count(m.old) != 1:
            raise RuntimeError(f"mutation {m.name!r}: the text to replace occurs {text.count(m.old)} times in {m.path}")
        with open(path, "w") as f:
            f.write(text.replace(m.old, m.new))
        driver = build.build(m.variant, csrc)
        fails: List[str] = []
        for name in m.suites:
            try:
                fails += suites.SUITES[name](dtype, 0, driver)
            except RuntimeError as e:  # a crash or a reported deadlock is a failure too
                fails.append(str(e).splitlines()[0])
        return fails


def run_all(verbose: bool = False) -> List[str]:
    escaped = []
    for m in MUTATIONS:
        fails = caught(m)
        if verbose:
            print(f"{'caught ' if fails else 'ESCAPED'}  {m.name}: {len(fails)} failures"
                  + (f" (first: {fails[0][:110]})" if fails else ""))
        if not fails:
            escaped.append(m.name)
    return escaped


if __name__ == "__main__":
    sys.exit(1 if run_all(verbose=True) else 0)
