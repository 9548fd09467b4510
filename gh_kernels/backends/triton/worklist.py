"""Work lists for the multi-tensor Triton kernels: one row per (tensor, chunk) work item.

Row layout (int64, ``ROW`` = ``ops.constants.WORK_ROW`` = MAX_SETS + 4 = 12 columns, read by
``common.work_item``): ``[off_0, ..., off_7, off_out, start, length, present_bits]``, where ``off_k`` is the tensor's address relative to the launch's ``base`` tensor,
in elements. Offsets from a typed base pointer (rather than raw addresses cast to pointers) let
Triton prove 16-byte alignment and emit 16-byte vector loads. A set that has no gradient for a
parameter gets another set's offset (valid memory of the same length) and a 0 bit: the kernels
replace its values by 0. Rows are
grouped by dtype (one launch per group) and split into launches of at most
``max_items_per_launch`` rows. Chunking depends only on the tensor sizes, so the same inputs
always give the same work split and, with fixed-slot partials, bitwise-identical results.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch

from ...ops.constants import MAX_SETS, WORK_ROW as ROW
from .flat import FlatParam


@dataclass
class Config:
    block: int = 1024                # elements per inner iteration of one program (4-byte dtypes)
    block_16bit: int = 4096          # ... for bfloat16/float16 (the same 16-byte vectors, more of them)
    min_chunk: int = 16384           # elements per work item, at least
    max_chunk: int = 1 << 20         # ... and at most
    programs_per_sm: int = 4         # target programs per multiprocessor for the largest lists
    max_items_per_launch: int = 1 << 20
    num_warps: int = 4


#: CPU tensors run under the Triton interpreter: tiny blocks exercise the chunk logic cheaply.
INTERPRETER_CONFIG = Config(block=64, block_16bit=64, min_chunk=256, max_chunk=256, programs_per_sm=1, max_items_per_launch=64)
#: Chosen by tools/triton_tune.py on an H200 (bench/results/NVIDIA-H200-2026-11-26/gpu_check-run3-*.log):
#: at N=1e9, float32 block 1024 / 4 warps gave 101% of copy bandwidth, bfloat16 block 4096 / 4 warps /
#: 4 programs per SM 87% (block 1024: 48-77%).
GPU_CONFIG = Config()


def block_for(cfg: Config, element_size: int) -> int:
    return cfg.block if element_size >= 4 else cfg.block_16bit


def config_for(device: torch.device) -> Config:
    return GPU_CONFIG if device.type == "cuda" else INTERPRETER_CONFIG


def chunk_size(total: int, device: torch.device, cfg: Config) -> int:
    if device.type != "cuda":
        return cfg.min_chunk
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    target = max(1, total // (sms * cfg.programs_per_sm))
    chunk = cfg.min_chunk
    while chunk < target and chunk < cfg.max_chunk:
        chunk *= 2
    return chunk


@dataclass
class Launch:
    dtype: torch.dtype
    base: torch.Tensor        # every pointer of the launch is base.data_ptr() + offset * element size
    table: torch.Tensor       # (items, ROW) int64 on the device
    items: int
    aligned: bool             # every pointer 16-byte aligned: the kernel may assume 16-byte vectors
    slot_base: int            # first partial-sum slot of this launch


def build(params: List[FlatParam], num_sets: int, device: torch.device, with_out: bool,
          width: int = MAX_SETS) -> (List[Launch], int, Config):
    """Rows for every non-empty parameter; returns the launches, the total rows, and the config. ``width``: the
    set offsets per row (MAX_SETS; the any-K kernels' W above it, anyk.py): rows have width + 4 columns."""
    cfg = config_for(device)
    total = sum(fp.numel for fp in params)
    chunk = chunk_size(total, device, cfg)
    # One metadata row per parameter (Python, O(P)); the chunk rows are then expanded with
    # tensor ops, so the host cost does not grow with the number of chunks.
    meta: Dict[torch.dtype, List[List[int]]] = {}
    bases: Dict[torch.dtype, torch.Tensor] = {}
    aligned: Dict[torch.dtype, bool] = {}
    for fp in params:
        if fp.numel == 0:
            continue
        present = [t for t in fp.ins if t is not None]
        if not present and not with_out:
            continue
        sub = present[0] if present else fp.out
        base = bases.setdefault(fp.dtype, sub)
        base_ptr, sub_ptr = base.data_ptr(), sub.data_ptr()
        elem = sub.element_size()
        ptrs = [(t.data_ptr() if t is not None else sub_ptr) for t in fp.ins] + [sub_ptr] * (width - num_sets)
        out_ptr = fp.out.data_ptr() if (with_out and fp.out is not None) else base_ptr
        bits = sum(1 << k for k, t in enumerate(fp.ins) if t is not None)
        bits = bits - (1 << 64) if bits >= 1 << 63 else bits  # as int64 (set 63's bit is the sign bit)
        ok = all(p % 16 == 0 for p in ptrs[:num_sets]) and out_ptr % 16 == 0 and base_ptr % 16 == 0
        aligned[fp.dtype] = aligned.get(fp.dtype, True) and ok and (chunk * elem) % 16 == 0
        meta.setdefault(fp.dtype, []).append([(p - base_ptr) // elem for p in ptrs] + [(out_ptr - base_ptr) // elem, fp.numel, bits])
    launches, slot = [], 0
    pin = device.type == "cuda"
    for dtype, rows in meta.items():
        m = torch.tensor(rows, dtype=torch.int64)                 # (P, width + 3): width + 1 offsets, numel, bits
        offsets, numel, bits = m[:, :width + 1], m[:, width + 1], m[:, width + 2:]
        counts = (numel + chunk - 1) // chunk                     # chunks per parameter
        first = torch.cumsum(counts, 0) - counts
        within = torch.arange(int(counts.sum()), dtype=torch.int64) - first.repeat_interleave(counts)
        start = within * chunk
        length = torch.minimum(numel.repeat_interleave(counts) - start, torch.full_like(start, chunk))
        table = torch.cat([offsets.repeat_interleave(counts, dim=0), start[:, None], length[:, None],
                           bits.repeat_interleave(counts, dim=0)], dim=1).contiguous()
        assert table.shape[1] == width + 4 and (width != MAX_SETS or width + 4 == ROW)
        for s in range(0, len(table), cfg.max_items_per_launch):
            part = table[s:s + cfg.max_items_per_launch]
            part = part.pin_memory().to(device, non_blocking=True) if pin else part.contiguous()  # async: no sync
            launches.append(Launch(dtype, bases[dtype], part, len(part), aligned[dtype], slot))
            slot += len(part)
    return launches, slot, cfg
