"""The torch backend's per-coordinate kernel (op ``gh_kernels::coordinate_``): TrimmedMean and GradDrop
with torch ops, on chunks of at most ``kernels.CHUNK`` elements per parameter so the stacked
(num_sets, chunk) temporaries stay bounded. The ops and their order are torchjd 0.18's (sort, narrow,
mean; GradDrop's purity, masks and the sum over the rows in order), so finite float32 and float64
results equal torchjd's on the stacked Jacobian bit for bit; 16-bit gradients are computed in float32.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .kernels import _acc, _chunks


def _rows(ins, like: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """The chunk's values of every set as a (num_sets, n) matrix (a set without a gradient: zeros)."""
    return torch.stack([torch.zeros(like.shape, dtype=acc, device=like.device) if t is None else t.to(acc) for t in ins])


def trimmed_mean(rows: torch.Tensor, trim: int) -> torch.Tensor:
    kept = rows.shape[0] - 2 * trim
    # + 0 * sum: a non-finite value makes its coordinate NaN (NOTE: [Trimmed non-finite] in weighting/coordinate.py)
    return torch.sort(rows, dim=0).values.narrow(0, trim, kept).mean(dim=0) + 0.0 * rows.sum(dim=0)


def graddrop(rows: torch.Tensor, draws: torch.Tensor, leak: torch.Tensor) -> torch.Tensor:
    purity = 0.5 * (torch.ones_like(rows[0]) + rows.sum(dim=0) / rows.abs().sum(dim=0))
    vector = torch.zeros_like(rows[0])
    for i in range(rows.shape[0]):
        keep = (purity > draws) * (rows[i] > 0) + (purity < draws) * (rows[i] < 0)
        vector += (leak[i] + (1 - leak[i]) * keep) * rows[i]
    return vector


def coordinate_(out: Sequence[torch.Tensor], tensors: Sequence[Optional[torch.Tensor]], num_sets: int, rule: str,
                trim: int, leak: Optional[torch.Tensor], accumulate: bool) -> None:
    if rule not in ("trimmed-mean", "graddrop"):
        raise ValueError(f"gh_kernels: rule must be 'trimmed-mean' or 'graddrop'; got {rule!r}")
    results = []  # every chunk computed before any out is written: out may be an input
    for o, ins in _chunks(out, tensors, num_sets):
        acc = _acc(o.dtype)
        if rule == "trimmed-mean":
            y = trimmed_mean(_rows(ins, o, acc), trim)
        else:
            if ins[-1] is None:
                raise ValueError("gh_kernels: graddrop needs the draws as its last set")
            y = graddrop(_rows(ins[:-1], o, acc), ins[-1].to(acc), leak.to(acc))
        results.append((o, y.to(acc) + o.to(acc) if accumulate else y))
    for o, y in results:
        o.copy_(y)
