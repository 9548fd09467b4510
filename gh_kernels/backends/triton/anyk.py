"""Triton Gram and combine for MAX_SETS + 1 to MAX_WIDE_SETS gradient sets ("any-K" kernels).

Above MAX_SETS the work list's rows get wider (worklist.build with ``width``): ``W`` = the next power of two
of K offsets (sets beyond K repeat another set's offset with a 0 present bit), then out, start, length and the
present bits, so every set's address is read from the row, as the CUDA kernels read it from their table
(NOTE: [Wide work list] in csrc/include/gh_worklist.h). Each program loads a (W, BLOCK) tile of its item once
(absent sets and sets beyond K are masked out of the load and read as 0) and:

* Gram: adds the tile's (W, W) products ``X X^T`` with one ``tl.dot`` (IEEE float32: no TF32; float64 for
  float64 gradients) into float64 after each tile, so a float32 sum runs over one tile, and writes the pairs
  a <= b < K into its own row of ``partials`` (column ``a K - a(a - 1)/2 + b - a``, K(K+1)/2 columns, as the
  CUDA wide rows). ``_finalize`` sums the rows per column in a fixed order (float64) and writes G.
* combine: ``y = sum_k w_k x_k`` over the tile's rows (+ out), stored once; every element is read before it
  is written, so out may be an input; the non-finite flag as the other combines. The same kernel combines 5..8
  sets on the MAX_SETS-wide rows (W = MAX_SETS: the row layout is the same).

Deterministic: fixed work split and partial slots, no atomics. Checked under the interpreter
(tests/test_triton.py) and compiled for sm_90 (tools/check_triton_compile.py); not timed on a GPU.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import triton
import triton.language as tl

from ...ops.constants import MAX_SETS, MAX_WIDE_SETS
from .common import load_acc, report_nonfinite, store_combined

#: Elements per set per tile on a GPU (the interpreter uses the work list's small block).
ANYK_BLOCK = 64
#: Partial-sum columns each cleanup program sums.
FINALIZE_COLUMNS = 64


def width(num_sets: int) -> int:
    """Row width W of the work list for ``num_sets`` sets: a power of two (tl.arange), at least 16 (tl.dot)."""
    if not MAX_SETS < num_sets <= MAX_WIDE_SETS:
        raise ValueError(f"the Triton any-K kernels handle {MAX_SETS + 1} to {MAX_WIDE_SETS} gradient sets, got {num_sets}")
    return max(16, triton.next_power_of_2(num_sets))


def block(device: torch.device, cfg) -> int:
    return ANYK_BLOCK if device.type == "cuda" else max(16, cfg.block)


@triton.jit
def _row(row, K: tl.constexpr, W: tl.constexpr):
    """Row (offsets of W sets, out, start, length, present bits): the set indices, the start, the length,
    which of the W rows to read, and their offsets at the item's start."""
    ks = tl.arange(0, W)
    start = tl.load(row + W + 1)
    length = tl.load(row + W + 2)
    bits = tl.load(row + W + 3)
    has = (((bits >> ks) & 1) != 0) & (ks < K)  # an arithmetic shift keeps bit 63 right
    offk = tl.load(row + ks) + start
    return start, length, has, offk


@triton.jit
def _tile(base, offk, has, offs, limit):
    """(W, BLOCK) elements in the accumulation dtype (float64 for float64, else float32); 0 where not read."""
    return load_acc(base + offk[:, None], offs[None, :], has[:, None] & (offs[None, :] < limit), True)


@triton.jit
def gram_anyk_kernel(table, base, partials, slot_base, K: tl.constexpr, W: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row = table + pid * (W + 4)
    start, length, has, offk = _row(row, K, W)
    total = tl.zeros([W, W], dtype=tl.float64)
    r = tl.arange(0, BLOCK)
    for i in range(0, tl.cdiv(length, BLOCK)):
        x = _tile(base, offk, has, i * BLOCK + r, length)
        if base.dtype.element_ty == tl.float64:
            total += tl.dot(x, tl.trans(x))
        else:
            total += tl.dot(x, tl.trans(x), input_precision="ieee").to(tl.float64)
    ks = tl.arange(0, W)
    a = ks[:, None]
    b = ks[None, :]
    column = a * K - a * (a - 1) // 2 + (b - a)
    out = partials + (slot_base + pid) * (K * (K + 1) // 2)
    tl.store(out + column, total, mask=(a <= b) & (b < K))


@triton.jit
def _finalize(partials, G, pair_a, pair_b, items, K: tl.constexpr, RBLOCK: tl.constexpr, CB: tl.constexpr):
    """Columns pid * CB ..: the item rows summed in a fixed order (float64), then G[a, b] = G[b, a]."""
    NP: tl.constexpr = K * (K + 1) // 2
    cols = tl.program_id(0) * CB + tl.arange(0, CB)
    acc = tl.zeros([RBLOCK, CB], dtype=tl.float64)
    rows = tl.arange(0, RBLOCK)
    for first in range(0, items, RBLOCK):
        r = first + rows
        m = (r[:, None] < items) & (cols[None, :] < NP)
        acc += tl.load(partials + r[:, None] * NP + cols[None, :], mask=m, other=0.0)
    v = tl.sum(acc, axis=0).to(G.dtype.element_ty)
    ok = cols < NP
    a = tl.load(pair_a + cols, mask=ok, other=0)
    b = tl.load(pair_b + cols, mask=ok, other=0)
    tl.store(G + a * K + b, v, mask=ok)
    tl.store(G + b * K + a, v, mask=ok)


@triton.jit
def combine_anyk_kernel(table, base, weights, nonfinite, K: tl.constexpr, W: tl.constexpr, BLOCK: tl.constexpr,
                        ACCUMULATE: tl.constexpr, FLAG: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row = table + pid * (W + 4)
    start, length, has, offk = _row(row, K, W)
    po = base + tl.load(row + W) + start
    ks = tl.arange(0, W)
    w = tl.load(weights + ks, mask=ks < K, other=0.0)
    r = tl.arange(0, BLOCK)
    bad = tl.zeros([], dtype=tl.int32)
    for i in range(0, tl.cdiv(length, BLOCK)):  # every element read before it is written: out may be an input
        offs = i * BLOCK + r
        m = offs < length
        bad += store_combined(po, offs, m, tl.sum(w[:, None] * _tile(base, offk, has, offs, length), axis=0), ACCUMULATE, FLAG)
    if FLAG:
        report_nonfinite(nonfinite, bad)


def _pairs(K: int, device: torch.device):
    a, b = torch.triu_indices(K, K)  # row-major upper triangle: the columns' order
    return a.to(device), b.to(device)


def run_gram(launches: List, items: int, cfg, device: torch.device, dtype: torch.dtype, num_sets: int) -> torch.Tensor:
    K, W = num_sets, width(num_sets)
    G = torch.zeros((K, K), dtype=dtype, device=device)
    if not items:
        return G
    NP = K * (K + 1) // 2
    partials = torch.empty((items, NP), dtype=torch.float64, device=device)
    for L in launches:
        gram_anyk_kernel[(L.items,)](L.table, L.base, partials, L.slot_base, K=K, W=W, BLOCK=block(device, cfg),
                                     num_warps=cfg.num_warps)
    pair_a, pair_b = _pairs(K, device)
    _finalize[(triton.cdiv(NP, FINALIZE_COLUMNS),)](partials, G, pair_a, pair_b, items, K=K,
                                                     RBLOCK=64 if device.type == "cuda" else 16, CB=FINALIZE_COLUMNS,
                                                     num_warps=4)
    return G


def run_combine(launches: List, cfg, device: torch.device, weights_for, num_sets: int, accumulate: bool,
                nonfinite: Optional[torch.Tensor]) -> None:
    for L in launches:
        w_l = weights_for(L.dtype)
        flag = (w_l, False) if nonfinite is None else (nonfinite, True)  # without a flag: any pointer, never written
        combine_anyk_kernel[(L.items,)](L.table, L.base, w_l, flag[0], K=num_sets, W=width(num_sets),
                                        BLOCK=block(device, cfg), ACCUMULATE=bool(accumulate), FLAG=flag[1],
                                        num_warps=cfg.num_warps)


__all__: Sequence[str] = ("width", "run_gram", "run_combine", "gram_anyk_kernel", "combine_anyk_kernel")
