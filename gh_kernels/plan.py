"""``gh_kernels.plan``: the one plan type. A :class:`Plan` is what a repeated call decides once -- the
backend and its ops, the checked method (a :class:`~gh_kernels.weighting.Weighting`), the work-list
cache -- and then runs Gram, weights and combine each step. The functional API builds one per
call; ``Harmonizer`` and ``MultiTaskHarmonizer`` keep one per number of losses; a loop keeps its own::

    plan = gh_kernels.plan(g1, g2, out=g2, method="gh++")    # validates, chooses the backend
    for step in ...:
        res = plan(g1, g2, out=g2)                            # HarmonizeOutput(out, weights, gram)

    plan = gh_kernels.plan(g1, g2, g3, method="upgrad")      # K sets, any multi-task method

NOTE: [Fused step]: :meth:`Plan.run` is the whole computation. For the two-task GH rules it is one
call of the fused ``harmonize_`` op (Gram, weights and combine in C++/CUDA/Triton/torch). For every
other method whose weights are a function of the Gram matrix it is two op calls around the
method's on-device solve: ``gram`` over the selected parameters, the weights, one ``combine_`` over
every parameter (a Python solve cannot run inside a C++ op; nothing is copied to the host).

NOTE: [Checks in the op]: with the C++ backends (``cpu``, ``cuda``) the ops check every tensor in
C++ (shapes, dtypes, devices, layouts, the ``out=`` memory rules) before writing anything and
rebuild their work split, so lists whose tensors moved, changed shape or dtype, or gained or lost
a gradient are handled correctly; when an op rejects an argument the Python checks run to name the
argument and index. The Python backends (``torch``, ``triton``) run the Python checks first, every
call. The CUDA kernel keeps its work list on the device and skips the upload when the tensors are
the previous call's (what a captured CUDA graph needs).
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence

import torch

from . import backends
from .ops import dispatch
from .ops.library import result_dtype
from .ops.validate import GradSet, TensorOrNone, as_set, check_grad_sets, check_out, check_sets_and_out
from .weighting import Method, Pending, Weighting, _generator_guard, resolve, weights_dtype

#: Backends whose ops check every argument in C++ before writing (NOTE: [Checks in the op]).
CHECKS_IN_OP = ("cpu", "cuda")
NO_CHANGE = Pending()  # the state change of a stateless method


def call_checked(run: Callable, name_refusal: Callable[[], None]):
    """NOTE: [Checks in the op]: ``run()`` relying on the op's own checks; when the op refuses an argument,
    ``name_refusal()`` (the Python checks) raises an error naming it, else the op's error is re-raised."""
    try:
        return run()
    except (RuntimeError, TypeError, IndexError):
        name_refusal()
        raise


def fake_kernel_ran(G: torch.Tensor, device: torch.device) -> bool:
    """A real meta tensor among the lists makes the dispatcher run the op's fake kernel: nothing was
    computed, and its result lives on the meta device."""
    return G is not None and G.device.type == "meta" and device.type != "meta"


class HarmonizeOutput(NamedTuple):
    """What :func:`gh_kernels.harmonize` or a :class:`Plan` computed, as device tensors (nothing is copied to the host)."""

    out: List[TensorOrNone]  #: sum_k w_k g_k per parameter (the ``out`` list, or new tensors)
    weights: torch.Tensor  #: (K,): NOTE: [Weights dtype]
    gram: torch.Tensor  #: (K, K) Gram matrix, float32 (float64 for float64 gradients)


class Plan:
    """Gram, weights and combine for K gradient sets, decided once: see the module docstring.

    Built by :func:`plan` (public: validates the lists it is given) or by the training-step engine.
    Call it as ``plan(g_1, ..., g_K, out=None)`` (``plan(g1, g2, out)`` also works)."""

    def __init__(self, weighting: Weighting, device: torch.device, backend: Optional[str] = None,
                 num_params: Optional[int] = None):
        self.weighting, self.device, self.num_params = weighting, device, num_params
        self.num_sets = weighting.num_sets  # the sets a call passes (2K for a cross-batch plan)
        extra = weighting.coordinate.extra_sets if weighting.coordinate is not None else 0
        # a cross-batch plan runs its 2K sets in blocks the kernels take (NOTE: [Cross-batch Gram])
        op = "coordinate_" if weighting.coordinate is not None else "gram/combine_"  # their kernels' limits differ
        self.backend = backends.resolve(backend, device, weighting.num_tasks if weighting.cross_batch else self.num_sets + extra,
                                        op=op)
        self.checks_in_op = self.backend in CHECKS_IN_OP
        self.fused_op = backends.kernel(self.backend, "harmonize_") if weighting.gh_code is not None else None
        self.gram_op = backends.kernel(self.backend, "gram")
        self.combine_op = backends.kernel(self.backend, "combine_")
        self.cache_host = torch.empty(0, dtype=torch.uint8)
        self.cache_device = torch.empty(0, dtype=torch.uint8, device=device) if device.type == "cuda" else None
        self._mask = None

    # -- the computation ---------------------------------------------------------------------------
    def run(self, out: List[torch.Tensor], flat: List[TensorOrNone], gram_mask: Optional[List[bool]],
            scales: Optional[torch.Tensor], accumulate: bool):
        """NOTE: [Fused step] on validated (or op-checked) arguments: ``out[p] (+)= sum_k scales_k w_k
        flat[k*P + p]`` with the Gram matrix over the parameters ``gram_mask`` selects (all when None).
        Returns ``(G, w, pending)``; ``pending`` is the method's state change, not yet committed."""
        P = len(out)
        if self.fused_op is not None:
            mask = None if gram_mask is None else self._mask_tensor(gram_mask)
            s1, s2 = (1.0, 1.0) if scales is None else scales
            G, w = self.fused_op(out, flat, mask, self.weighting.name, self.weighting.kappa, float(s1), float(s2),
                                 accumulate, self.cache_host, self.cache_device)
            return G, w, NO_CHANGE
        if self.weighting.coordinate is not None:  # one per-coordinate pass: no Gram matrix, no weights
            rollback = _generator_guard(self.weighting.coordinate.generator)
            try:
                self.weighting.coordinate.run(out, flat, accumulate, self.backend, self.device)
            except BaseException:
                rollback()
                raise
            return None, None, Pending(rollback=rollback)
        selected = flat if gram_mask is None else [t if gram_mask[i % P] else None for i, t in enumerate(flat)]
        cross = self.weighting.cross_batch
        size = self.weighting.num_tasks if cross else self.num_sets
        if not any(t is not None and t.numel() for t in selected):
            G = torch.zeros((size, size), dtype=result_dtype(flat), device=self.device)
        elif cross:  # NOTE: [Cross-batch Gram]
            G = dispatch.cross_gram([selected[k * P:(k + 1) * P] for k in range(self.num_sets)], self.device, self.backend)
        else:
            G = self.gram_op(selected, self.num_sets)
        w, pending = self.weighting.solve(G, selected)
        try:
            applied = self.weighting.combine_weights(scaled(w, scales))
            if cross:
                dispatch.combine_sets(applied, [flat[k * P:(k + 1) * P] for k in range(self.num_sets)], self.device, out,
                                      accumulate, self.backend, pending.nonfinite)
            else:
                self.combine_op(out, flat, self.num_sets, applied, accumulate, pending.nonfinite)
        except BaseException:
            pending.rollback()
            raise
        return G, w, pending

    def _mask_tensor(self, gram_mask: List[bool]) -> torch.Tensor:
        """The op's CPU bool mask; built once for a list the caller passes again (the engine's planned mask)."""
        if self._mask is None or self._mask[0] is not gram_mask:
            self._mask = (gram_mask, torch.tensor(gram_mask, dtype=torch.bool))
        return self._mask[1]

    # -- the public call ---------------------------------------------------------------------------
    def __call__(self, *sets: GradSet, out: Optional[Sequence[torch.Tensor]] = None) -> HarmonizeOutput:
        K, n = self.num_sets, self.num_params
        if len(sets) == K + 1 and out is None:
            out, sets = sets[K], sets[:K]  # plan(g1, g2, out)
        if len(sets) != K:
            raise ValueError(f"this plan takes {K} gradient sets; got {len(sets)}")
        sets = [s if type(s) is list else [s] if isinstance(s, torch.Tensor) else list(s) for s in sets]
        names = _set_names(K)
        for name, s in zip(names, sets):
            if len(s) != n:
                raise ValueError(f"{name} has {len(s)} tensors but the plan was built for {n} parameters: "
                                 "build a new plan for a different parameter list")
        if out is None:
            check_grad_sets(sets, set_names=names)
            return self._run_new_out(sets)
        out = out if type(out) is list else [out] if isinstance(out, torch.Tensor) else list(out)
        if len(out) != n:
            raise ValueError(f"out has {len(out)} tensors but the plan was built for {n} parameters")
        if not self.checks_in_op:
            self.python_checks(sets, out, names)
        flat = sets[0] + sets[1] if K == 2 else [t for s in sets for t in s]
        name_refusal = lambda: self.python_checks(sets, out, names)  # noqa: E731
        G, w, pending = call_checked(lambda: self.run(out, flat, None, None, False), name_refusal)
        if fake_kernel_ran(G, self.device):
            pending.rollback()
            name_refusal()
        pending.commit()
        return HarmonizeOutput(out, w, G)

    @staticmethod
    def python_checks(sets, out, names) -> None:
        if out is not None:
            check_sets_and_out(sets, out, names)
        else:
            check_grad_sets(sets, set_names=names)

    def _run_new_out(self, sets) -> HarmonizeOutput:
        """out=None: new tensors like the inputs; parameters no set has stay None and are left out of the call."""
        out = dispatch.new_outs(sets)
        idx = [p for p, o in enumerate(out) if o is not None]
        flat = [s[p] for s in sets for p in idx]
        G, w, pending = self.run([out[p] for p in idx], flat, None, None, False)
        pending.commit()
        return HarmonizeOutput(out, w, G)


def scaled(w: torch.Tensor, scales: Optional[Sequence[float]]) -> torch.Tensor:
    """(w_k scales_k) on w's device, built without a host copy; ``w`` itself for no scales or all ones."""
    if scales is None or all(s == 1.0 for s in scales):
        return w
    return torch.stack([w[k] * s for k, s in enumerate(scales)])


_NAMES = {}


def _set_names(K: int) -> List[str]:
    if K not in _NAMES:
        _NAMES[K] = [f"g{k + 1}" for k in range(K)]
    return _NAMES[K]


def plan(*grads: GradSet, out: Optional[Sequence[torch.Tensor]] = None, method: Method = "gh",
         backend: Optional[str] = None, **options) -> Plan:
    """Validate the gradient sets (and ``out``) once and return a :class:`Plan` that runs Gram, weights
    and combine per call (see the module docstring). ``method``/``options``: as
    :func:`gh_kernels.weights` (``kappa`` for GH++). Building a plan computes nothing."""
    names = _set_names(len(grads))
    sets, device = check_grad_sets(list(grads), set_names=names)
    # one batch: MoDo and SDMGrad (two batches) are refused here, as aggregate and backward refuse them
    weighting = resolve(method, len(sets), options, backend=backend, cross_batch=False)
    if out is not None:
        check_out(list(as_set(out, "out")), sets, set_names=names)
    return Plan(weighting, device, backend, num_params=len(sets[0]))


class HarmonizePlan(Plan):
    """Deprecated (0.1's two-set plan class): ``HarmonizePlan(g1, g2, out=, method=, kappa=, backend=)``
    builds what :func:`plan` returns; use :func:`plan`."""

    def __init__(self, g1: GradSet, g2: GradSet, *, out: Optional[Sequence[torch.Tensor]] = None, method: str = "gh",
                 kappa: float = 0.5, backend: Optional[str] = None):
        self.__dict__.update(plan(g1, g2, out=out, method=method, backend=backend, kappa=kappa).__dict__)


__all__ = ["Plan", "plan", "HarmonizeOutput", "weights_dtype"]
