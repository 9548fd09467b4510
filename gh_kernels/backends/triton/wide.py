"""Triton Gram kernel for 5 to MAX_SETS gradient sets ("wide" kernels); their combine is anyk.py's kernel on
the same rows (W = MAX_SETS), and the per-coordinate kernel (coordinate.py) uses this file's row and tile.

The narrow kernels (gram.py, combine.py) keep one named accumulator per pair, which is what made
them reach copy bandwidth for K <= NARROW_SETS; writing 36 named accumulators for K = 8 would be
unreadable. These kernels instead load a (SETS, BLOCK) tile -- one row per set, all rows offsets
from the launch's base pointer, so one 2-D load -- and accumulate the (SETS, SETS) products per
tile (``sum over the tile of x_a * x_b``, float32; float64 for float64 gradients). Sets beyond K
and sets without a gradient for the parameter are masked out of the load (no memory traffic)
and read as zero. They use the same work list, fixed partial slots and cleanup kernel as the
narrow ones, so results are deterministic. Not tuned on a GPU: WIDE_BLOCK bounds the
(SETS, SETS, BLOCK) product tile each program holds.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...ops.constants import MAX_SETS, NUM_PAIRS as _NUM_PAIRS
from .common import COL_LENGTH, COL_PRESENT, COL_START, ROW, load_acc

#: The narrow kernels serve up to this many sets; the wide kernels the rest (to MAX_SETS).
NARROW_SETS = 4
#: Elements per set per tile on a GPU (the interpreter uses the work list's small block).
WIDE_BLOCK = 128
SETS = tl.constexpr(MAX_SETS)


def wide_block(cfg, device) -> int:
    """BLOCK of the wide kernels: WIDE_BLOCK on a GPU; the interpreter's small block on CPU tensors."""
    return WIDE_BLOCK if device.type == "cuda" else cfg.block
NUM_PAIRS = tl.constexpr(_NUM_PAIRS)


@triton.jit
def _tile(base, offk, has, offs, limit, MASKED: tl.constexpr):
    """(SETS, BLOCK) elements in the accumulation dtype; absent sets and (if MASKED) offs >= limit read 0."""
    m = has[:, None]
    if MASKED:
        m = m & (offs[None, :] < limit)
    return load_acc(base + offk[:, None], offs[None, :], m, True)  # always masked: absent sets are not read


@triton.jit
def _row(row, K: tl.constexpr):
    ks = tl.arange(0, SETS)
    start = tl.load(row + COL_START)
    length = tl.load(row + COL_LENGTH)
    bits = tl.load(row + COL_PRESENT)
    has = (((bits >> ks) & 1) != 0) & (ks < K)
    offk = tl.load(row + ks) + start
    return ks, start, length, has, offk


@triton.jit
def gram_wide_kernel(table, base, partials, slot_base, K: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row = table + pid * ROW
    ks, start, length, has, offk = _row(row, K)
    if base.dtype.element_ty == tl.float64:
        acc = tl.zeros([SETS, SETS], dtype=tl.float64)
    else:
        acc = tl.zeros([SETS, SETS], dtype=tl.float32)
    r = tl.arange(0, BLOCK)
    n_full = length // BLOCK
    for i in range(0, n_full):
        x = _tile(base, offk, has, i * BLOCK + r, length, False)
        acc += tl.sum(x[:, None, :] * x[None, :, :], axis=2)
    x = _tile(base, offk, has, n_full * BLOCK + r, length, True)
    acc += tl.sum(x[:, None, :] * x[None, :, :], axis=2)
    a = ks[:, None]
    b = ks[None, :]
    column = a * SETS - a * (a - 1) // 2 + (b - a)  # ops.constants.pair_column(a, b)
    out = partials + (slot_base + pid) * NUM_PAIRS
    tl.store(out + column, acc.to(tl.float64), mask=(a <= b) & (b < K))
