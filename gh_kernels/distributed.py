"""Harmonization across processes (DistributedDataParallel, FSDP2), on ``torch.distributed``.

Three ways to combine harmonization with data parallelism, chosen by ``Harmonizer(sync=...)``:

``"global"`` (exact, replicated parameters as under DDP)
    Run the forward and both backward passes under ``ddp_model.no_sync()``; the Harmonizer then
    averages g1 and g2 over the ranks (bucketed all-reduces, ~25 MB buckets) and harmonizes the
    *global* gradients, identically on every rank. The update equals single-process
    harmonization of the globally averaged gradients. Communication: two gradient sets instead
    of DDP's one (2x DDP's all-reduce volume), plus one all-reduce of one byte per parameter
    (which parameters have gradients anywhere), and no overlap with the backward pass.
``"local"`` (cheaper, a different algorithm)
    Each rank harmonizes its own g1, g2; the harmonized updates are then averaged (DDP's volume).
    The average of per-rank harmonized updates is not the harmonization of the average.
``"sharded"`` (FSDP2 ``fully_shard``, gradients as ``DTensor`` shards, or any disjoint sharding)
    Each rank computes the Gram matrix of its shards, one all-reduce of the 2x2 partial sums
    (16 bytes), and combines its shards locally. FSDP2 reduce-scatters each backward pass's
    gradients itself; the result equals unsharded harmonization.

Each rank must see both domains in its batch: splitting source and target across ranks
breaks the alignment loss, whatever the mode.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

SYNC_MODES = (None, "global", "local", "sharded")
BUCKET_BYTES = 25 * 2**20


def _dist():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("Harmonizer(sync=...) needs torch.distributed initialized: call "
                           "torch.distributed.init_process_group() before creating the Harmonizer")
    return dist


def require_initialized() -> None:
    """Raise a RuntimeError saying what to do when torch.distributed is not initialized."""
    _dist()


def local(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The local shard of a DTensor gradient (a view: in-place updates reach the DTensor), else ``t``."""
    if t is None:
        return None
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None and type(t).__name__ == "DTensor" else t


def all_reduce_mean_(tensors: Sequence[torch.Tensor], group=None, bucket_bytes: int = BUCKET_BYTES) -> None:
    """Average ``tensors`` in place over the ranks of ``group``, in buckets of about ``bucket_bytes``.

    Tensors of one dtype and device go into a bucket (a transient flat buffer of at most one
    bucket, as DDP does); a tensor larger than a bucket is reduced on its own, in place.
    """
    dist = _dist()
    world = dist.get_world_size(group)
    if world == 1 or not tensors:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    def flush(bucket):
        if not bucket:
            return
        if len(bucket) == 1 and bucket[0].is_contiguous():
            dist.all_reduce(bucket[0], group=group)
            bucket[0].div_(world)
            return
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat, group=group)
        flat.div_(world)
        for t, v in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            t.copy_(v)

    buckets = {}
    for t in tensors:
        key = (t.dtype, t.device)
        b, size = buckets.get(key, ([], 0))
        b.append(t)
        size += t.numel() * t.element_size()
        if size >= bucket_bytes:
            flush(b)
            b, size = [], 0
        buckets[key] = (b, size)
    for b, _ in buckets.values():
        flush(b)


def present_anywhere(sets: Sequence[Sequence[Optional[torch.Tensor]]], device, group=None) -> List[List[bool]]:
    """For every parameter and set: does any rank have a gradient? (one small all-reduce).

    The answer decides on the host which missing gradients become zeros, so with NCCL this is
    one device-to-host synchronization per step (P bytes) in the "global" and "local" modes.
    """
    dist = _dist()
    flags = torch.tensor([[t is not None for t in row] for row in zip(*sets)], dtype=torch.uint8).reshape(-1, len(sets))
    if dist.get_backend(group) == "nccl":
        flags = flags.to(device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
    return flags.cpu().bool().tolist()


def fill_and_reduce(sets: List[List[Optional[torch.Tensor]]], wrapped, params, device, sync: str, group=None) -> None:
    """"global"/"local": a parameter with a gradient on some ranks only gets zeros on the others
    (in ``sets`` and in ``wrapped``, the lists written back into ``.grad``); "global" then
    averages every set over the ranks."""
    anywhere = present_anywhere(sets, device, group)
    for i, has in enumerate(anywhere):
        for k, g in enumerate(sets):
            if has[k] and g[i] is None:
                g[i] = wrapped[k][i] = torch.zeros_like(local(params[i]))
    if sync == "global":
        all_reduce_mean_([t for g in sets for t in g if t is not None], group)


def all_reduce_max_(t: torch.Tensor, group=None) -> torch.Tensor:
    """The largest value over the ranks of a small tensor (the combine's non-finite flag), in place."""
    dist = _dist()
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t


def all_reduce_sum_(t: torch.Tensor, group=None) -> torch.Tensor:
    """Sum a small tensor (the Gram partials) over the ranks, in place."""
    _dist().all_reduce(t, group=group)
    return t
