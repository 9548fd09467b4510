"""Triton per-coordinate pass (the ``triton`` overload of ``gh_kernels::coordinate_``): TrimmedMean
and GradDrop over the combine's work list, one launch per dtype group; each program loads a
(SETS, BLOCK) tile of its work item as the wide kernels do (wide.py) and writes ``out``.

TrimmedMean without a sort: each value's rank among the K values of its coordinate (ties broken by
set index, as a stable sort does) comes from the (SETS, SETS, BLOCK) comparison tile, and the values
ranked ``trim .. K - trim - 1`` are summed and divided by ``K - 2 trim``. The sum's order differs from
a sort's (float rounding only). A non-finite value makes its coordinate NaN (``+ 0 * sum x``), so a
GradScaler still sees an overflow that trimming would have hidden. GradDrop: the draws are set K.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ...ops.constants import COORDINATE_RULES, MAX_SETS
from . import worklist as wl
from .combine import plan_combine
from .common import COL_OUT
from .flat import finish
from .wide import SETS, _row, _tile, wide_block

RULES = {name: code for code, name in enumerate(COORDINATE_RULES)}  # gh::CoordinateRule


@triton.jit
def coordinate_kernel(table, base, leak, trim, K: tl.constexpr, NUM_SETS: tl.constexpr, RULE: tl.constexpr,
                      BLOCK: tl.constexpr, ACCUMULATE: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row = table + pid * wl.ROW
    ks, start, length, has, offk = _row(row, NUM_SETS)
    po = base + tl.load(row + COL_OUT) + start
    lk = tl.load(leak + ks, mask=ks < K, other=0.0)
    valid = (ks < K)[:, None]
    r = tl.arange(0, BLOCK)
    for i in range(0, tl.cdiv(length, BLOCK)):  # every element read before it is written: out may be an input
        offs = i * BLOCK + r
        m = offs < length
        x = _tile(base, offk, has, offs, length, True)
        if RULE == 0:
            xk = x[:, None, :]
            xj = x[None, :, :]
            k = ks[:, None, None]
            j = ks[None, :, None]
            before = ((xj < xk) | ((xj == xk) & (j < k))) & (j < K)
            rank = tl.sum(before.to(tl.int32), axis=1)
            keep = (rank >= trim) & (rank < K - trim) & valid
            y = tl.sum(tl.where(keep, x, 0.0), axis=0) / (K - 2 * trim)
            y += 0.0 * tl.sum(tl.where(valid, x, 0.0), axis=0)
        else:
            g = tl.where(valid, x, 0.0)
            u = tl.sum(tl.where((ks == K)[:, None], x, 0.0), axis=0)
            abs_sum = tl.sum(tl.abs(g), axis=0)
            # all zeros: torchjd's purity is 0/0 = NaN and nothing is kept (0 / 1 here: no NaN warning)
            purity = 0.5 * (1.0 + tl.sum(g, axis=0) / tl.where(abs_sum > 0, abs_sum, 1.0))
            chosen = ((purity > u)[None, :] & (g > 0)) | ((purity < u)[None, :] & (g < 0))
            chosen = chosen & (abs_sum > 0)[None, :]
            coef = lk[:, None] + (1.0 - lk[:, None]) * chosen.to(g.dtype)
            y = tl.sum(coef * g, axis=0)
        if ACCUMULATE:
            y += tl.load(po + offs, mask=m, other=0.0).to(y.dtype)
        tl.store(po + offs, y.to(po.dtype.element_ty), mask=m)


def coordinate_(out: Sequence[torch.Tensor], tensors: Sequence[Optional[torch.Tensor]], num_sets: int, rule: str,
                trim: int, leak: Optional[torch.Tensor], accumulate: bool) -> None:
    if rule not in RULES:
        raise ValueError(f"gh_kernels: rule must be 'trimmed-mean' or 'graddrop'; got {rule!r}")
    if len(out) == 0:
        return
    if num_sets > MAX_SETS:
        raise ValueError(f"the Triton kernels handle 1 to {MAX_SETS} sets, got {num_sets}")
    work = plan_combine(out, tensors, num_sets)
    K = num_sets - 1 if rule == "graddrop" else num_sets
    if not accumulate and work.unreached:
        torch._foreach_zero_(work.unreached)
    for L in work.launches:
        acc = torch.float64 if L.dtype == torch.float64 else torch.float32
        lk = (torch.zeros(K, dtype=acc, device=work.device) if leak is None else leak.to(device=work.device, dtype=acc))
        coordinate_kernel[(L.items,)](L.table, L.base, lk.contiguous(), int(trim), K=K, NUM_SETS=num_sets,
                                      RULE=RULES[rule], BLOCK=wide_block(work.cfg, work.device),
                                      ACCUMULATE=bool(accumulate), num_warps=work.cfg.num_warps)
    finish(work.params)
