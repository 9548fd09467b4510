"""Triton Gram pass (the ``triton`` overload of ``gh_kernels::gram``): one launch per dtype group
over a work list of (tensor, chunk) items.

Each program reads its chunk of every set once, accumulates all K(K+1)/2 products in float32
(float64 for float64 gradients)
(``BLOCK``-wide accumulators, 16-byte vector loads when every pointer is 16-byte aligned) and
writes them into its own row of ``partials`` (fixed slots). ``_gram_finalize`` then sums the
rows in a fixed order in float64: deterministic, no atomics. Partial columns follow
``ops.constants.pair_column`` for MAX_SETS sets; pairs beyond K stay zero. Above MAX_SETS sets: anyk.py.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import triton
import triton.language as tl

from ...ops.constants import MAX_SETS, MAX_WIDE_SETS, NUM_PAIRS as _NUM_PAIRS, pair_column
from . import anyk, worklist as wl
from .wide import NARROW_SETS, wide_block, gram_wide_kernel
from .common import ROW, acc_zeros, val, work_item
from .flat import flat_params
from ...ops.library import result_dtype

NUM_PAIRS = tl.constexpr(_NUM_PAIRS)
SETS = tl.constexpr(MAX_SETS)
# Partial-sum columns of the narrow kernel's ten pairs (ops.constants.pair_column).
C00 = tl.constexpr(pair_column(0, 0))
C01 = tl.constexpr(pair_column(0, 1))
C02 = tl.constexpr(pair_column(0, 2))
C03 = tl.constexpr(pair_column(0, 3))
C11 = tl.constexpr(pair_column(1, 1))
C12 = tl.constexpr(pair_column(1, 2))
C13 = tl.constexpr(pair_column(1, 3))
C22 = tl.constexpr(pair_column(2, 2))
C23 = tl.constexpr(pair_column(2, 3))
C33 = tl.constexpr(pair_column(3, 3))
PAIRS_PADDED = tl.constexpr(triton.next_power_of_2(_NUM_PAIRS))


@triton.jit
def _gram_tile(p0, p1, p2, p3, h0, h1, h2, h3, offs, mask,
               a00, a01, a02, a03, a11, a12, a13, a22, a23, a33, K: tl.constexpr, MASKED: tl.constexpr):
    x0 = val(p0, offs, mask, h0, MASKED)
    x1 = x0
    x2 = x0
    a00 += x0 * x0
    if K >= 2:
        x1 = val(p1, offs, mask, h1, MASKED)
        a01 += x0 * x1
        a11 += x1 * x1
    if K >= 3:
        x2 = val(p2, offs, mask, h2, MASKED)
        a02 += x0 * x2
        a12 += x1 * x2
        a22 += x2 * x2
    if K >= 4:
        x3 = val(p3, offs, mask, h3, MASKED)
        a03 += x0 * x3
        a13 += x1 * x3
        a23 += x2 * x3
        a33 += x3 * x3
    return a00, a01, a02, a03, a11, a12, a13, a22, a23, a33


@triton.jit
def _gram_partials_kernel(table, base, partials, slot_base, K: tl.constexpr,
                          BLOCK: tl.constexpr, ALIGNED: tl.constexpr, VEC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row = table + pid * ROW
    length, p0, p1, p2, p3, h0, h1, h2, h3 = work_item(row, base, K, ALIGNED, VEC)
    z = acc_zeros(base, BLOCK)
    a00, a01, a02, a03, a11, a12, a13, a22, a23, a33 = z, z, z, z, z, z, z, z, z, z
    r = tl.arange(0, BLOCK)
    n_full = length // BLOCK
    for i in range(0, n_full):  # full tiles: unmasked, vectorizable loads
        a00, a01, a02, a03, a11, a12, a13, a22, a23, a33 = _gram_tile(
            p0, p1, p2, p3, h0, h1, h2, h3, i * BLOCK + r, None,
            a00, a01, a02, a03, a11, a12, a13, a22, a23, a33, K, False)
    offs = n_full * BLOCK + r
    a00, a01, a02, a03, a11, a12, a13, a22, a23, a33 = _gram_tile(
        p0, p1, p2, p3, h0, h1, h2, h3, offs, offs < length,
        a00, a01, a02, a03, a11, a12, a13, a22, a23, a33, K, True)
    out = partials + (slot_base + pid) * NUM_PAIRS  # columns in pair_column order: (0,0),(0,1),...,(0,SETS-1),(1,1),...
    tl.store(out + C00, tl.sum(a00, axis=0).to(tl.float64))
    tl.store(out + C01, tl.sum(a01, axis=0).to(tl.float64))
    tl.store(out + C02, tl.sum(a02, axis=0).to(tl.float64))
    tl.store(out + C03, tl.sum(a03, axis=0).to(tl.float64))
    tl.store(out + C11, tl.sum(a11, axis=0).to(tl.float64))
    tl.store(out + C12, tl.sum(a12, axis=0).to(tl.float64))
    tl.store(out + C13, tl.sum(a13, axis=0).to(tl.float64))
    tl.store(out + C22, tl.sum(a22, axis=0).to(tl.float64))
    tl.store(out + C23, tl.sum(a23, axis=0).to(tl.float64))
    tl.store(out + C33, tl.sum(a33, axis=0).to(tl.float64))


@triton.jit
def _gram_finalize_kernel(partials, G, items, K: tl.constexpr, RBLOCK: tl.constexpr):
    """Sums the partial rows in a fixed order (float64) and writes the symmetric K x K matrix."""
    cols = tl.arange(0, PAIRS_PADDED)
    acc = tl.zeros([RBLOCK, PAIRS_PADDED], dtype=tl.float64)
    rows = tl.arange(0, RBLOCK)
    for base in range(0, items, RBLOCK):
        r = base + rows
        m = (r[:, None] < items) & (cols[None, :] < NUM_PAIRS)
        acc += tl.load(partials + r[:, None] * NUM_PAIRS + cols[None, :], mask=m, other=0.0).to(tl.float64)
    v = tl.sum(acc, axis=0)  # float64; rounded once, to G's dtype, by the stores
    for a in tl.static_range(K):
        for b in tl.static_range(a, K):
            column = a * SETS - a * (a - 1) // 2 + (b - a)  # ops.constants.pair_column(a, b)
            entry = tl.sum(tl.where(cols == column, v, 0.0), axis=0)
            entry = entry.to(G.dtype.element_ty)
            tl.store(G + a * K + b, entry)
            tl.store(G + b * K + a, entry)


class GramWork(NamedTuple):
    """Everything the Gram launches need, built by Python work over the tensors (see fused.py's cache)."""
    params: list          # flat views (keeps contiguous copies alive until the launches are queued)
    launches: list
    items: int
    cfg: wl.Config
    device: torch.device
    dtype: torch.dtype    # of the Gram matrix


def plan_gram(tensors: Sequence[Optional[torch.Tensor]], num_sets: int) -> GramWork:
    if not 1 <= num_sets <= MAX_WIDE_SETS:
        raise ValueError(f"the Triton kernels handle 1 to {MAX_WIDE_SETS} gradient sets, got {num_sets}")
    device = next(t.device for t in tensors if t is not None)
    params = flat_params(tensors, num_sets)
    width = anyk.width(num_sets) if num_sets > MAX_SETS else MAX_SETS
    launches, items, cfg = wl.build(params, num_sets, device, with_out=False, width=width)
    return GramWork(params, launches, items, cfg, device, result_dtype(tensors))


def run_gram(work: GramWork, num_sets: int) -> torch.Tensor:
    if num_sets > MAX_SETS:
        return anyk.run_gram(work.launches, work.items, work.cfg, work.device, work.dtype, num_sets)
    partials = torch.empty((max(work.items, 1), NUM_PAIRS), dtype=torch.float64, device=work.device)
    G = torch.zeros((num_sets, num_sets), dtype=work.dtype, device=work.device)
    cfg = work.cfg
    for L in work.launches:
        if num_sets > NARROW_SETS:
            gram_wide_kernel[(L.items,)](L.table, L.base, partials, L.slot_base, K=num_sets, BLOCK=wide_block(cfg, work.device), num_warps=cfg.num_warps)
            continue
        _gram_partials_kernel[(L.items,)](L.table, L.base, partials, L.slot_base, K=num_sets, BLOCK=wl.block_for(cfg, L.base.element_size()),
                                          ALIGNED=L.aligned, VEC=16 // L.base.element_size(), num_warps=cfg.num_warps)
    if work.items:
        _gram_finalize_kernel[(1,)](partials, G, work.items, K=num_sets, RBLOCK=64 if work.device.type == "cuda" else 16, num_warps=4)
    return G


def gram(tensors: Sequence[Optional[torch.Tensor]], num_sets: int) -> torch.Tensor:
    """K x K Gram matrix (float32; float64 when a gradient is float64) with the Triton kernels."""
    return run_gram(plan_gram(tensors, num_sets), num_sets)
