"""Argument checking shared by every public entry point.

Gradient *sets* arrive in many shapes (a list of per-parameter tensors with ``None``
holes, a single tensor, a tuple); everything below the public API sees one canonical
form: ``sets[k][p]`` is set ``k``'s tensor for parameter ``p`` or ``None`` (= zero).
Errors name the offending argument and index, so nothing is silently dropped or
misaligned (the released code's ``None`` handling does exactly that).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

TensorOrNone = Optional[torch.Tensor]
GradSet = Union[torch.Tensor, Sequence[TensorOrNone]]


def as_set(value: GradSet, name: str) -> List[TensorOrNone]:
    """One gradient set as a list of tensors/None (a single tensor is a one-item set)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        out = list(value)
        for p, t in enumerate(out):
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{p}] must be a torch.Tensor or None, got {type(t).__name__}")
        return out
    raise TypeError(f"{name} must be a tensor or a list/tuple of tensors, got {type(value).__name__}")


def check_sets(sets: Sequence[List[TensorOrNone]], names: Sequence[str]) -> torch.device:
    """Check that K sets align parameter by parameter; return their common device.

    Rules: same length; for every parameter index the non-None tensors share shape,
    dtype and device; dtypes are float32/bfloat16/float16; one device for everything;
    at least one tensor in all.
    """
    if len(sets) == 0:
        raise ValueError("grads must hold at least one gradient set, got an empty sequence")
    n = len(sets[0])
    for k, s in enumerate(sets):
        if len(s) != n:
            raise ValueError(
                f"{names[k]} has {len(s)} tensors but {names[0]} has {n}: gradient sets must "
                "list the same parameters in the same order (use None for a missing gradient)"
            )
    device = None
    first_name = None
    for p in range(n):
        ref = None
        ref_name = None
        for k, s in enumerate(sets):
            t = s[p]
            if t is None:
                continue
            where = f"{names[k]}[{p}]"
            if t.dtype not in SUPPORTED_DTYPES:
                raise TypeError(
                    f"{where} has dtype {t.dtype}; supported gradient dtypes are "
                    "float32, bfloat16 and float16"
                )
            if device is None:
                device, first_name = t.device, where
            elif t.device != device:
                raise ValueError(f"{where} is on {t.device} but {first_name} is on {device}: all gradients must share one device")
            if ref is None:
                ref, ref_name = t, where
                continue
            if t.shape != ref.shape:
                raise ValueError(f"{where} has shape {tuple(t.shape)} but {ref_name} has shape {tuple(ref.shape)}")
            if t.dtype != ref.dtype:
                raise TypeError(f"{where} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}: sets must match per parameter")
    if device is None:
        raise ValueError("grads contains no tensors (every entry is None or every set is empty)")
    return device


def check_out(out: Sequence[torch.Tensor], sets: Sequence[List[TensorOrNone]], name: str = "out") -> None:
    """``out[p]`` must exist, match the inputs' shape/device and be a floating tensor."""
    n = len(sets[0])
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} tensors but the gradient sets have {n}")
    for p, o in enumerate(out):
        if not isinstance(o, torch.Tensor):
            raise TypeError(f"{name}[{p}] must be a torch.Tensor, got {type(o).__name__}")
        if o.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name}[{p}] has dtype {o.dtype}; supported: float32, bfloat16, float16")
        for k, s in enumerate(sets):
            t = s[p]
            if t is None:
                continue
            if o.shape != t.shape:
                raise ValueError(f"{name}[{p}] has shape {tuple(o.shape)} but the gradients have {tuple(t.shape)}")
            if o.device != t.device:
                raise ValueError(f"{name}[{p}] is on {o.device} but the gradients are on {t.device}")
            break


def flatten_sets(sets: Sequence[List[TensorOrNone]]) -> List[TensorOrNone]:
    """Set-major flat list, the layout of the ops' ``tensors`` argument: ``[s0p0, s0p1, ..., s1p0, ...]``."""
    return [t for s in sets for t in s]
