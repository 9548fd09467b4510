"""JIT helpers shared by the multi-tensor Triton kernels (gram.py, combine.py): reading one row of
the work list (worklist.py) and loading elements in float32 (float64 for float64 gradients) with
absent sets read as zero."""
from __future__ import annotations

import triton
import triton.language as tl

from ...ops.constants import MAX_SETS, WORK_ROW

#: Work-list row columns (worklist.py): offsets of the MAX_SETS sets, of out, then start, length, present bits.
ROW = tl.constexpr(WORK_ROW)
COL_OUT = tl.constexpr(MAX_SETS)
COL_START = tl.constexpr(MAX_SETS + 1)
COL_LENGTH = tl.constexpr(MAX_SETS + 2)
COL_PRESENT = tl.constexpr(MAX_SETS + 3)


@triton.jit
def ptr(row, col: tl.constexpr, start, base, ALIGNED: tl.constexpr, VEC: tl.constexpr):
    off = tl.load(row + col) + start
    if ALIGNED:
        off = tl.multiple_of(off, VEC)  # 16 bytes: lets Triton emit 16-byte vector loads
    return base + off


@triton.jit
def work_item(row, base, K: tl.constexpr, ALIGNED: tl.constexpr, VEC: tl.constexpr):
    """One work-list row: its length, the K input pointers at its start and their present bits
    (unused sets repeat set 0's pointer)."""
    start = tl.load(row + COL_START)
    length = tl.load(row + COL_LENGTH)
    bits = tl.load(row + COL_PRESENT)
    p0 = ptr(row, 0, start, base, ALIGNED, VEC)
    p1 = p0
    p2 = p0
    p3 = p0
    if K >= 2:
        p1 = ptr(row, 1, start, base, ALIGNED, VEC)
    if K >= 3:
        p2 = ptr(row, 2, start, base, ALIGNED, VEC)
    if K >= 4:
        p3 = ptr(row, 3, start, base, ALIGNED, VEC)
    return length, p0, p1, p2, p3, (bits & 1) != 0, (bits & 2) != 0, (bits & 4) != 0, (bits & 8) != 0


@triton.jit
def acc_zeros(base, BLOCK: tl.constexpr):
    """BLOCK accumulators in the accumulation dtype of base's elements: float64 for float64, else float32."""
    if base.dtype.element_ty == tl.float64:
        z = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        z = tl.zeros([BLOCK], dtype=tl.float32)
    return z


@triton.jit
def load_acc(ptr, offs, mask, MASKED: tl.constexpr):
    """Elements in their accumulation dtype (float64 for float64, else float32)."""
    if MASKED:
        x = tl.load(ptr + offs, mask=mask, other=0.0)
    else:
        x = tl.load(ptr + offs)
    if ptr.dtype.element_ty == tl.float64:
        y = x.to(tl.float64)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def val(ptr, offs, mask, has, MASKED: tl.constexpr):
    # A set without this gradient points at another set's memory; its values count as 0.
    return tl.where(has, load_acc(ptr, offs, mask, MASKED), 0.0)


@triton.jit
def nonfinite_count(stored, mask, MASKED: tl.constexpr):
    """How many of the ``stored`` values (as written, in the out's dtype) are non-finite: x - x is NaN exactly for
    inf and NaN (NOTE: [Non-finite flag of the combine] in csrc/include/gh_tensor_utils.h)."""
    x = stored.to(tl.float32) if stored.dtype != tl.float64 else stored
    bad = (x - x) != 0.0
    if MASKED:
        bad = bad & mask
    return tl.sum(bad.to(tl.int32), axis=0)


@triton.jit
def report_nonfinite(nonfinite, count):
    """Store 1 into the flag when ``count > 0``: every writer stores the same value."""
    tl.store(nonfinite, tl.full([], 1, tl.int32), mask=count > 0)


@triton.jit
def store_combined(po, offs, m, y, ACCUMULATE: tl.constexpr, FLAG: tl.constexpr):
    """The wide combines' store of one tile: ``out (+)= y`` where ``m``, in out's dtype; returns how many written
    values are non-finite when FLAG (else 0). Every element of the tile was read before: out may be an input."""
    if ACCUMULATE:
        y += tl.load(po + offs, mask=m, other=0.0).to(y.dtype)
    stored = y.to(po.dtype.element_ty)
    tl.store(po + offs, stored, mask=m)
    bad = tl.zeros([], dtype=tl.int32)
    if FLAG:
        bad = nonfinite_count(stored, m, True)
    return bad
