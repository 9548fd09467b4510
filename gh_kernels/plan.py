"""``gh_kernels.plan``: ``harmonize`` planned once, for loops that call it every step on the same lists.

``harmonize`` checks every argument in Python on every call (about 1 us per tensor) before its one
op call. A plan does the Python checks once, when it is built, and then makes the call of the
fused ``harmonize_`` op directly each step::

    plan = gh_kernels.plan(g1, g2, out=g2, method="gh++")   # validates, chooses the backend
    for step in ...:
        res = plan(g1, g2, out=g2)                           # HarmonizeOutput(out, weights, gram)

Per step, with the C++ backends (``cpu``, ``cuda``), the op itself checks every tensor in C++
(shapes, dtypes, devices, layouts and the ``out=`` memory rules) before writing anything, and
rebuilds its work split, so lists whose tensors moved, changed shape or dtype, or gained or lost
a gradient are handled correctly; when the op rejects an argument, the Python checks run to name
the argument and index. The CUDA kernel keeps its work list on the device and skips the upload
when the tensors are the ones of the previous call (what a captured CUDA graph needs). With the
Python backends (``torch``, ``triton``) the Python checks still run every call.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from . import _dispatch, backends
from ._validate import GradSet, as_set, check_grad_sets, check_out
from .functional import HarmonizeOutput
from .methods import check_method


class HarmonizePlan:
    """See :func:`plan`. Call it as ``plan(g1, g2, out=None)``; it returns a ``HarmonizeOutput``."""

    def __init__(self, g1: GradSet, g2: GradSet, *, out: Optional[Sequence[torch.Tensor]] = None, method: str = "gh",
                 kappa: float = 0.5, backend: Optional[str] = None):
        check_method(method, kappa)
        sets, device = check_grad_sets([g1, g2], set_names=("g1", "g2"))
        if out is not None:
            check_out(list(as_set(out, "out")), sets, set_names=("g1", "g2"))
        self.num_params, self.device, self.method, self.kappa = len(sets[0]), device, method, float(kappa)
        self.backend = backends.resolve(backend, device, 2)
        self._op = backends.kernel(self.backend, "harmonize_")
        self._checks_in_op = self.backend in ("cpu", "cuda")
        self._cache_host = torch.empty(0, dtype=torch.uint8)
        self._cache_device = torch.empty(0, dtype=torch.uint8, device=device) if device.type == "cuda" else None

    def _python_checks(self, g1, g2, out) -> None:
        sets, _ = check_grad_sets([g1, g2], set_names=("g1", "g2"))
        if out is not None:
            check_out(out, sets, set_names=("g1", "g2"))

    def __call__(self, g1: GradSet, g2: GradSet, out: Optional[Sequence[torch.Tensor]] = None) -> HarmonizeOutput:
        g1 = [g1] if isinstance(g1, torch.Tensor) else list(g1)
        g2 = [g2] if isinstance(g2, torch.Tensor) else list(g2)
        for name, s in (("g1", g1), ("g2", g2)):
            if len(s) != self.num_params:
                raise ValueError(f"{name} has {len(s)} tensors but the plan was built for {self.num_params} parameters: "
                                 "build a new plan for a different parameter list")
        if out is None:
            return self._call_new_out(g1, g2)
        out = [out] if isinstance(out, torch.Tensor) else list(out)
        if len(out) != self.num_params:
            raise ValueError(f"out has {len(out)} tensors but the plan was built for {self.num_params} parameters")
        if not self._checks_in_op:
            self._python_checks(g1, g2, out)
        try:
            G, w = self._op(out, g1 + g2, None, self.method, self.kappa, 1.0, 1.0, False, self._cache_host, self._cache_device)
        except (RuntimeError, TypeError):
            self._python_checks(g1, g2, out)  # raises an error naming the argument and index
            raise
        if G.device != self.device and G.device.type == "meta":  # a meta tensor in the lists: the dispatcher ran the fake kernel
            self._python_checks(g1, g2, out)
        return HarmonizeOutput(out, w, G)

    def _call_new_out(self, g1: List, g2: List) -> HarmonizeOutput:
        """out=None: new tensors like the inputs (None where neither set has the parameter)."""
        self._python_checks(g1, g2, None)
        out, G, w = _dispatch.run_harmonize(self._op, [g1, g2], None, self.method, self.kappa,
                                            self._cache_host, self._cache_device)
        return HarmonizeOutput(out, w, G)


def plan(g1: GradSet, g2: GradSet, *, out: Optional[Sequence[torch.Tensor]] = None, method: str = "gh",
         kappa: float = 0.5, backend: Optional[str] = None) -> HarmonizePlan:
    """Validate ``harmonize``'s arguments once and return a :class:`HarmonizePlan` that runs it in one
    op call per step (see the module docstring). Building a plan does not harmonize anything."""
    return HarmonizePlan(g1, g2, out=out, method=method, kappa=kappa, backend=backend)
