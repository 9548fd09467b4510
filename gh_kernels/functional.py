"""Public functional API: ``gram``, ``weights``, ``combine``, ``harmonize``, ``aggregate``.

Shapes and dtypes: a *gradient set* is a list/tuple with one tensor per parameter (``None``
means a zero gradient) or a single tensor. Gradients may be float32, bfloat16, float16 or float64
and must match set-to-set per parameter (shape, dtype); everything lives on one device. All
accumulation is float32 (float64 for float64 gradients); weights and Gram matrices are float32
device tensors (float64 when a gradient is float64). Nothing here synchronizes with the host.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch

from . import backends
from .ops import dispatch as _dispatch
from .ops.validate import GradSet, TensorOrNone, as_set, check_grad_sets, check_out, flatten_sets
from .plan import CHECKS_IN_OP, HarmonizeOutput, Plan, call_checked, fake_kernel_ran
from .weighting import _generator_guard, resolve
from .weighting.gh import check_method


def _checked_by_op(grads, out, backend: Optional[str]):
    """NOTE: [Checks in the op] for unplanned calls: ``(sets, device, out)`` in canonical form when the
    backend serving the call checks every argument in C++ -- the Python checks then run only to name
    an argument the op refused (:func:`_name_refusal`) -- else None (the Python checks run first)."""
    if not isinstance(grads, (list, tuple)) or not grads:
        return None
    sets = [[s] if isinstance(s, torch.Tensor) else list(s) if isinstance(s, (list, tuple)) else None for s in grads]
    if any(s is None or len(s) != len(sets[0]) for s in sets):
        return None
    first = next((t for s in sets for t in s if t is not None), None)
    if not isinstance(first, torch.Tensor) or first.device.type == "meta":
        return None
    if out is not None:
        out = [out] if isinstance(out, torch.Tensor) else list(out) if isinstance(out, (list, tuple)) else None
        if out is None or len(out) != len(sets[0]):
            return None
    try:
        name = backends.resolve(backend, first.device, len(sets))
    except Exception:
        return None  # the Python path raises the same error, with its checks first
    return (sets, first.device, out) if name in CHECKS_IN_OP else None


def _name_refusal(grads, out, set_names=None) -> None:
    """The op refused something (or a meta tensor made it run its fake kernel): the Python checks name it."""
    sets, _ = check_grad_sets(grads, set_names=set_names)
    if out is not None:
        check_out(list(as_set(out, "out")), sets, set_names=set_names)


def _op_call(grads, out, fn, set_names=None):
    """``fn()`` with the op's checks (:func:`gh_kernels.plan.call_checked`), the refusal named by the Python checks."""
    return call_checked(fn, lambda: _name_refusal(grads, out, set_names))


def gram(grads: Sequence[GradSet], *, backend: Optional[str] = None) -> torch.Tensor:
    """K x K Gram matrix ``G[i, j] = <grads[i], grads[j]>`` on the sets' device.

    One pass over the data; float32 accumulation and result (float64 when a gradient is float64).
    """
    quick = _checked_by_op(grads, None, backend)
    if quick is not None:
        sets, device, _ = quick
        G = _op_call(grads, None, lambda: _dispatch.gram(sets, device, backend))
        if fake_kernel_ran(G, device):
            _name_refusal(grads, None)
        return G
    sets, device = check_grad_sets(grads)
    return _dispatch.gram(sets, device, backend)


def weights(G: torch.Tensor, method="upgrad", *, backend: Optional[str] = None, **options) -> torch.Tensor:
    """Weights from a K x K Gram matrix ``G``: (K,) on G's device, float32 (float64 for a float64 ``G``).
    The default method is ``"upgrad"``, as :func:`aggregate`'s and ``MultiTaskHarmonizer``'s (0.2 defaulted
    to ``"gh"`` here: pass ``method="gh"`` for the two-task rule).
    For :class:`MoDo` and :class:`SDMGrad`, ``G`` is the cross-batch matrix ``J_1 J_2^T`` of two batches.

    Two-task GH rules (K = 2; option ``kappa`` in [0, 1] splits the GH++ turn, default 0.5):
    ``"sum"``, ``"gh"``, ``"gh++"`` (geometric GH++), ``"gh++released"``; see
    :mod:`gh_kernels.weighting.gh` for their edge-case rules. ``backend`` chooses their kernel.

    Multi-task methods (any K from 1 to 12; one task's weight is torchjd's for one row, 1 for most methods): ``"mean"``, ``"sum"``, ``"pcgrad"``, ``"mgda"``,
    ``"cagrad"`` (option ``c``, default 0.4), ``"imtl-g"``, ``"aligned-mtl"``, ``"upgrad"``,
    ``"dualproj"``, ``"config"``, ``"krum"``, ``"random"``, ``"fairgrad"``, or a stateful object
    (:data:`gh_kernels.STATEFUL_METHODS`: GradVac, NashMTL, PCD, CRMOGM, MoDo, SDMGrad); their
    options, papers, regularization and tolerances are in :mod:`gh_kernels.weighting.rules` and each
    method's file. The per-coordinate methods and ExcessMTL have no weights from G (ValueError). Every solve runs on G's device with a fixed amount of work.

    No host synchronization. Unknown methods or options, options a method does not take, and
    K = 1 raise ValueError naming them.
    """
    if not isinstance(G, torch.Tensor) or G.dim() != 2 or G.shape[0] != G.shape[1]:
        shape = tuple(G.shape) if isinstance(G, torch.Tensor) else type(G).__name__
        raise ValueError(f"G must be a K x K Gram matrix (a square 2-D tensor); got {shape}")
    if not G.is_floating_point() or G.is_complex():
        raise TypeError(f"G must be a real floating-point tensor, got {G.dtype}")
    if G.shape[0] == 0:
        raise ValueError("G is 0 x 0: weights need at least one task (K >= 1)")
    if G.layout is not torch.strided:
        raise ValueError(f"G must be a dense (torch.strided) tensor; got layout {G.layout}")
    weighting = resolve(method, G.shape[0], options, backend=backend)
    if weighting.coordinate is not None:
        raise ValueError(f"method {method!r} works per coordinate: it has no weights from a Gram matrix "
                         "(use gh_kernels.aggregate or MultiTaskHarmonizer)")
    if weighting.gh_code is not None and backend is not None:
        backends.resolve(backend, G.device, 2)  # BackendUnavailable before anything runs
    return weighting(G)


class AggregateOutput(NamedTuple):
    """What :func:`aggregate` computed, as device tensors."""

    weights: Optional[torch.Tensor]  #: (K,) the method's weights, float32 (float64 for float64 gradients); None per coordinate
    out: List[TensorOrNone]  #: the update per parameter (the ``out`` list, or new tensors)
    gram: Optional[torch.Tensor]  #: (K, K) Gram matrix of the sets (with second_batch: the cross matrix J_1 J_2^T); None per coordinate


def aggregate(grads: Sequence[GradSet], method="upgrad", *, out: Optional[Sequence[torch.Tensor]] = None,
              backend: Optional[str] = None, second_batch: Optional[Sequence[GradSet]] = None,
              **options) -> AggregateOutput:
    """Gram matrix, weights and combine for K gradient sets in one call; returns the weights first.

    ``grads``: K sets (lists with one tensor or None per parameter). ``method``/``options``: as
    :func:`weights`. ``out``: the tensors to write (``out=grads[0]`` aggregates in place); default
    new tensors. Returns ``AggregateOutput(weights, out, gram)``. One fused Gram pass (K <= 8 on the
    C++ and Triton backends; more sets use the torch backend, logged once), the solve on the device,
    one fused combine pass: no host sync, no K x N copy. Everything is checked before anything is
    written.

    Per-coordinate methods (``"trimmed-mean"``, ``"graddrop"``): one fused pass over the K sets and
    no Gram matrix: ``weights`` and ``gram`` are None. Cross-batch methods (:class:`MoDo`,
    :class:`SDMGrad`): ``second_batch`` holds the K sets of a second, independent batch; one Gram pass
    over the 2K sets (in blocks above the kernels' 8), the weights from ``J_1 J_2^T`` and ``out = sum_k
    w_k (grads[k] + second_batch[k]) / 2`` (NOTE: [Cross-batch Gram]); ``gram`` is then that K x K cross matrix.
    """
    if second_batch is not None:
        if isinstance(second_batch, torch.Tensor) or not isinstance(second_batch, (list, tuple)):
            raise TypeError(f"second_batch must be a list/tuple of gradient sets, got {type(second_batch).__name__}")
        if not isinstance(grads, (list, tuple)) or len(second_batch) != len(grads):
            count = len(grads) if isinstance(grads, (list, tuple)) else "?"
            raise ValueError(f"second_batch has {len(second_batch)} gradient sets but grads has {count}: the cross-batch "
                             "matrix J_1 J_2^T needs one set per task in each batch")
    names = None if second_batch is None else ([f"grads[{k}]" for k in range(len(grads))] +
                                               [f"second_batch[{k}]" for k in range(len(second_batch))])
    every = grads if second_batch is None else list(grads) + list(second_batch)
    quick = _checked_by_op(every, out, backend)
    if quick is None:
        sets, device = check_grad_sets(every, set_names=names)
        if out is not None:
            out = list(as_set(out, "out"))
            check_out(out, sets, set_names=names)
    else:
        sets, device, out = quick
    K = len(sets) if second_batch is None else len(sets) // 2
    weighting = resolve(method, K, options, backend=backend, cross_batch=second_batch is not None)
    if weighting.coordinate is not None:
        rollback = _generator_guard(weighting.coordinate.generator)
        try:
            out = _op_call(every, out, lambda: _dispatch.coordinate(weighting.coordinate, sets, device, out, backend), names)
        except BaseException:
            rollback()
            raise
        return AggregateOutput(None, out, None)
    if weighting.cross_batch:  # NOTE: [Cross-batch Gram]: A = J_1 J_2^T, in blocks the kernels take
        G = _op_call(every, out, lambda: _dispatch.cross_gram(sets, device, backend), names)
    else:
        G = _op_call(every, out, lambda: _dispatch.gram(sets, device, backend), names)
    w, pending = weighting.solve(G, flatten_sets(sets))
    try:
        applied = weighting.combine_weights(w)
        combine_op = _dispatch.combine_sets if weighting.cross_batch else _dispatch.combine  # 2K sets: in blocks
        out = _op_call(every, out, lambda: combine_op(applied, sets, device, out, False, backend, pending.nonfinite), names)
        if fake_kernel_ran(G, device):
            _name_refusal(every, out, names)
    except BaseException:
        pending.rollback()
        raise
    pending.commit()  # NOTE: [State changes after success]
    return AggregateOutput(w, out, G)


def combine(
    w,
    grads: Sequence[GradSet],
    *,
    out: Optional[Sequence[torch.Tensor]] = None,
    accumulate: bool = False,
    backend: Optional[str] = None,
) -> List[Optional[torch.Tensor]]:
    """``out[p] = sum_k w[k] * grads[k][p]`` (``+ out[p]`` when ``accumulate``), one fused pass.

    ``w``: K weights, a float tensor on the gradients' device (read there, no sync).
    ``out``: per-parameter tensors to write (may be one of the input sets: in place);
    default: new tensors like the inputs (``None`` where every set has ``None``).
    ``out[p]`` may be exactly an input tensor of parameter ``p``; any other memory overlap, an
    ``out`` that requires grad, or a sparse/meta tensor raises before anything is written
    (:mod:`gh_kernels.ops.memory`). Written tensors get their autograd version counter bumped.
    Returns ``out`` (a list).
    """
    quick = _checked_by_op(grads, out, backend)
    sets, device = (quick[0], quick[1]) if quick is not None else check_grad_sets(grads)
    K = len(sets)
    if not isinstance(w, torch.Tensor):
        w = torch.as_tensor(w, dtype=torch.float32, device=device)
    if w.shape != (K,):
        raise ValueError(f"w must have shape ({K},) for {K} gradient sets; got {tuple(w.shape)}")
    if w.device != device:
        raise ValueError(f"w is on {w.device} but the gradients are on {device}")
    if not w.is_floating_point():
        raise TypeError(f"w must be a floating-point tensor, got {w.dtype}")
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs out= (the tensors to add to)")
    elif quick is not None:
        out = quick[2]
    else:
        out = list(as_set(out, "out"))
        check_out(out, sets)
    w = w if w.dtype == torch.float64 else w.to(torch.float32)
    if quick is not None:
        return _op_call(grads, out, lambda: _dispatch.combine(w, sets, device, out, accumulate, backend))
    return _dispatch.combine(w, sets, device, out, accumulate, backend)


def harmonize(
    g1: GradSet,
    g2: GradSet,
    *,
    method: str = "gh",
    kappa: float = 0.5,
    out: Optional[Sequence[torch.Tensor]] = None,
    backend: Optional[str] = None,
) -> HarmonizeOutput:
    """Gram matrix, weights and combine: ``w1*g1 + w2*g2`` per parameter, and what it was computed from.

    ``out``: the tensors to write (``out=g2``, or g1, harmonizes in place); default new tensors.
    Returns ``HarmonizeOutput(out, weights, gram)``. One call of the fused op (Gram pass, weights,
    combine pass), no host sync, no flat copies. With the C++ backends the op checks the arguments
    (NOTE: [Checks in the op]); :func:`gh_kernels.plan` also skips the per-call method and backend choice.
    """
    check_method(method, kappa)
    names = ("g1", "g2")
    weighting = resolve(method, 2, {"kappa": kappa}, backend=backend)
    quick = _checked_by_op([g1, g2], out, backend)
    if quick is None:
        sets, device = check_grad_sets([g1, g2], set_names=names)
        if out is not None:
            out = list(as_set(out, "out"))
            check_out(out, sets, set_names=names)
    else:
        sets, device, out = quick
    plan = Plan(weighting, device, backend, num_params=len(sets[0]))
    if out is None:
        result = _op_call([g1, g2], None, lambda: plan._run_new_out(sets), names)
    else:
        G, w, _ = _op_call([g1, g2], out, lambda: plan.run(out, sets[0] + sets[1], None, None, False), names)
        result = HarmonizeOutput(out, w, G)
    if quick is not None and fake_kernel_ran(result.gram, device):
        _name_refusal([g1, g2], out, names)
    return result
