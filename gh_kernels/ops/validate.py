"""Argument checking shared by every public entry point.

Gradient *sets* arrive in many shapes (a list of per-parameter tensors with ``None``
holes, a single tensor, a tuple); everything below the public API sees one canonical
form: ``sets[k][p]`` is set ``k``'s tensor for parameter ``p`` or ``None`` (= zero).
Errors name the offending argument and index, so nothing is silently dropped or
misaligned (the released code's ``None`` handling does exactly that).
"""
from __future__ import annotations

import itertools
import operator
from typing import List, Optional, Sequence, Union

import torch

from .memory import check_out_aliasing

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# NOTE: [Checks by map]: the every-step checks read each tensor's attributes through map() with
# operator.attrgetter (C-level loops, tens of nanoseconds per tensor) and compare whole lists; the
# loops that name a refused argument run only when a fast pass fails. A planned call of the pure-torch
# backend over 2,000 small tensors checked them one by one in 5x the time of one _foreach_add_.
_DTYPE, _DEVICE, _LAYOUT, _SHAPE = (operator.attrgetter(a) for a in ("dtype", "device", "layout", "shape"))
_REQUIRES_GRAD = operator.attrgetter("requires_grad")


def has_none(ts: Sequence) -> bool:
    """Whether a list holds None, by identity (``None in ts`` would call Tensor.__eq__ on every tensor)."""
    if torch.compiler.is_compiling():  # dynamo traces generator expressions, not map over operator functions
        return any(t is None for t in ts)
    return any(map(operator.is_, ts, itertools.repeat(None)))
DTYPE_NAMES = "float32, bfloat16, float16 and float64"

TensorOrNone = Optional[torch.Tensor]
GradSet = Union[torch.Tensor, Sequence[TensorOrNone]]


def as_set(value: GradSet, name: str) -> List[TensorOrNone]:
    """One gradient set as a list of tensors/None (a single tensor is a one-item set)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        out = list(value)
        for p, t in enumerate(out):
            if t is not None and type(t) is not torch.Tensor and not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{p}] must be a torch.Tensor or None, got {type(t).__name__}")
        return out
    raise TypeError(f"{name} must be a tensor or a list/tuple of tensors, got {type(value).__name__}")


def check_grad_sets(grads, name: str = "grads", set_names: Optional[Sequence[str]] = None):
    """The ``grads`` argument (a list/tuple of gradient sets) as canonical sets, and their device."""
    if isinstance(grads, torch.Tensor) or not isinstance(grads, (list, tuple)):
        raise TypeError(f"{name} must be a list/tuple of gradient sets, got {type(grads).__name__}")
    names = list(set_names) if set_names is not None else [f"{name}[{k}]" for k in range(len(grads))]
    sets = [as_set(s, names[k]) for k, s in enumerate(grads)]
    return sets, check_sets(sets, names)


def check_sets(sets: Sequence[List[TensorOrNone]], names: Sequence[str]) -> torch.device:
    """Check that K sets align parameter by parameter; return their common device.

    Rules: same length; for every parameter index the non-None tensors share shape and
    dtype; dtypes are float32/bfloat16/float16/float64; dense (strided) tensors with data (not sparse,
    not meta); one device for everything; at least one tensor in all. Written as a fast pass (this runs on every step, before kernels of a few
    microseconds) that falls back to :func:`_explain` to name the offending argument.
    """
    if len(sets) == 0:
        raise ValueError("grads must hold at least one gradient set, got an empty sequence")
    n = len(sets[0])
    if any(len(s) != n for s in sets):
        _explain(sets, names)
    if not torch.compiler.is_compiling() and not any(map(has_none, sets)):  # NOTE: [Checks by map]
        shapes, dts = list(map(_SHAPE, sets[0])), list(map(_DTYPE, sets[0]))
        for s in sets[1:]:
            if list(map(_SHAPE, s)) != shapes or list(map(_DTYPE, s)) != dts:
                _explain(sets, names)
        devices = set().union(*(map(_DEVICE, s) for s in sets))
        layouts = set().union(*(map(_LAYOUT, s) for s in sets))
        if n == 0 or len(devices) != 1 or not set(dts).issubset(SUPPORTED_DTYPES) or layouts != {torch.strided} \
                or next(iter(devices)).type == "meta":
            _explain(sets, names)
        return devices.pop()
    dtypes, devices, layouts = set(), set(), set()
    if len(sets) == 2:  # the common case, without the inner loop
        for a, b in zip(sets[0], sets[1]):
            if a is not None:
                dtypes.add(a.dtype)
                devices.add(a.device)
                layouts.add(a.layout)
                if b is not None and (b.dtype is not a.dtype or b.shape != a.shape):
                    _explain(sets, names)
            if b is not None:
                dtypes.add(b.dtype)
                devices.add(b.device)
                layouts.add(b.layout)
    else:
        for p in range(n):
            ref = None
            for s in sets:
                t = s[p]
                if t is None:
                    continue
                dtypes.add(t.dtype)
                devices.add(t.device)
                layouts.add(t.layout)
                if ref is None:
                    ref = t
                elif t.dtype is not ref.dtype or t.shape != ref.shape:
                    _explain(sets, names)
    if len(devices) != 1 or not dtypes.issubset(SUPPORTED_DTYPES) or layouts != {torch.strided} \
            or next(iter(devices)).type == "meta":
        _explain(sets, names)
    return devices.pop()


def _explain(sets: Sequence[List[TensorOrNone]], names: Sequence[str]) -> None:
    """Slow path: find the first rule a set breaks and raise an error naming argument and index."""
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
                    + DTYPE_NAMES
                )
            if device is None:
                device, first_name = t.device, where
            elif t.device != device:
                raise ValueError(f"{where} is on {t.device} but {first_name} is on {device}: all gradients must share one device")
            _check_storage(t, where)
            if ref is None:
                ref, ref_name = t, where
                continue
            if t.shape != ref.shape:
                raise ValueError(f"{where} has shape {tuple(t.shape)} but {ref_name} has shape {tuple(ref.shape)}")
            if t.dtype != ref.dtype:
                raise TypeError(f"{where} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}: sets must match per parameter")
    raise ValueError("grads contains no tensors (every entry is None or every set is empty)")


def _check_storage(t: torch.Tensor, where: str) -> None:
    """Dense tensors with data: sparse layouts and meta tensors get an error naming the argument."""
    if t.layout is not torch.strided:
        raise TypeError(f"{where} has layout {t.layout}; gradients must be dense (torch.strided) tensors")
    if t.device.type == "meta":
        raise ValueError(f"{where} is a meta tensor (it has no data to read or write)")


def check_out(out: Sequence[torch.Tensor], sets: Sequence[List[TensorOrNone]], name: str = "out",
              set_names: Optional[Sequence[str]] = None) -> None:
    """``out[p]`` must exist, match the inputs' shape, dtype and device, not be tracked by autograd,
    and share memory only as ``memory.check_out_aliasing`` allows. Raises before anything is written."""
    n = len(sets[0])
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} tensors but the gradient sets have {n}")
    refs = list(sets[0])
    for s in sets[1:]:
        if has_none(refs):
            refs = [r if r is not None else t for r, t in zip(refs, s)]
    device = next(r.device for r in refs if r is not None)
    tracing = torch.compiler.is_compiling()  # traced tensors have no inference flag (nor addresses: memory.py)
    # an inference tensor can be written in place inside inference mode (as torch's own in-place ops allow)
    inference_ok = tracing or torch.is_inference_mode_enabled()
    if not tracing and not has_none(refs) and all(map(isinstance, out, itertools.repeat(torch.Tensor))):  # [Checks by map]
        if (not any(map(_REQUIRES_GRAD, out)) and set(map(_LAYOUT, out)) == {torch.strided}
                and list(map(_DTYPE, out)) == list(map(_DTYPE, refs)) and list(map(_SHAPE, out)) == list(map(_SHAPE, refs))
                and set(map(_DEVICE, out)) == {device} and (inference_ok or not any(map(torch.Tensor.is_inference, out)))):
            check_out_aliasing(out, sets, name, set_names)
            return
    for p, (o, ref) in enumerate(zip(out, refs)):  # one comparison chain per parameter, naming the first refused
        if isinstance(o, torch.Tensor) and not o.requires_grad and o.layout is torch.strided and (inference_ok or not o.is_inference()) and (
                o.dtype in SUPPORTED_DTYPES if ref is None else (o.dtype is ref.dtype and o.shape == ref.shape)) \
                and o.device == device:
            continue
        _explain_out(p, o, ref, name)
    check_out_aliasing(out, sets, name, set_names)


def check_sets_and_out(sets: Sequence[List[TensorOrNone]], out: Sequence[torch.Tensor], names: Sequence[str]) -> None:
    """``check_sets`` then ``check_out`` in one pass over the attributes (NOTE: [Checks by map]): a planned call of
    a Python backend runs both every step, and the outs are compared with set 0's shapes and dtypes read once.
    Anything unusual (None, another length, a refused tensor) takes the two checks, which name it."""
    n = len(sets[0]) if sets else 0
    if not torch.compiler.is_compiling() and n and len(out) == n and all(len(s) == n for s in sets) \
            and not any(map(has_none, sets)) and all(map(isinstance, out, itertools.repeat(torch.Tensor))):
        shapes, dts = list(map(_SHAPE, sets[0])), list(map(_DTYPE, sets[0]))
        in_place = any(all(map(operator.is_, s, out)) for s in sets)  # out is a set (out=g2): read it once
        lists = list(sets) if in_place else list(sets) + [out]
        if all(list(map(_SHAPE, s)) == shapes and list(map(_DTYPE, s)) == dts for s in lists[1:]) \
                and len(devices := set().union(*(map(_DEVICE, s) for s in lists))) == 1 \
                and set().union(*(map(_LAYOUT, s) for s in lists)) == {torch.strided} \
                and set(dts).issubset(SUPPORTED_DTYPES) and next(iter(devices)).type != "meta" \
                and not any(map(_REQUIRES_GRAD, out)) \
                and (torch.is_inference_mode_enabled() or not any(map(torch.Tensor.is_inference, out))):
            check_out_aliasing(out, sets, "out", names)
            return
    sets, _ = check_grad_sets(list(sets), set_names=names)
    check_out(out, sets, set_names=names)


def _explain_out(p: int, o, ref: TensorOrNone, name: str) -> None:
    if not isinstance(o, torch.Tensor):
        raise TypeError(f"{name}[{p}] must be a torch.Tensor, got {type(o).__name__}")
    if o.requires_grad:
        raise ValueError(f"{name}[{p}] requires grad: autograd tracks it, and an in-place write would corrupt "
                         "the gradients computed through it; write into gradient buffers (detached tensors)")
    _check_storage(o, f"{name}[{p}]")
    if not torch.compiler.is_compiling() and o.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError(f"{name}[{p}] is an inference tensor (made under torch.inference_mode()): it cannot be written "
                         "in place outside inference mode (torch's own in-place ops refuse it too)")
    if o.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}[{p}] has dtype {o.dtype}; supported: {DTYPE_NAMES}")
    if ref is None:
        raise ValueError(f"{name}[{p}] is on {o.device} but the gradients are on another device")
    if o.shape != ref.shape:
        raise ValueError(f"{name}[{p}] has shape {tuple(o.shape)} but the gradients have {tuple(ref.shape)}")
    if o.device != ref.device:
        raise ValueError(f"{name}[{p}] is on {o.device} but the gradients are on {ref.device}")
    raise TypeError(f"{name}[{p}] has dtype {o.dtype} but the gradients have {ref.dtype}")


def flatten_sets(sets: Sequence[List[TensorOrNone]]) -> List[TensorOrNone]:
    """Set-major flat list, the layout of the ops' ``tensors`` argument: ``[s0p0, s0p1, ..., s1p0, ...]``."""
    return [t for s in sets for t in s]


def check_nonfinite_flag(flag: torch.Tensor, device: torch.device) -> None:
    """combine_'s ``nonfinite`` (NOTE: [Non-finite flag of the combine]): one contiguous int32 on ``device``."""
    if not (isinstance(flag, torch.Tensor) and flag.dtype == torch.int32 and flag.numel() == 1 and flag.is_contiguous()
            and flag.device == device):
        raise ValueError(f"nonfinite must be one contiguous int32 on {device}; got "
                         f"{flag.dtype if isinstance(flag, torch.Tensor) else type(flag).__name__}")
