"""Multi-task gradient methods from a K x K Gram matrix: the weight rules (methods.py), their exact
small solvers (solvers.py, linalg.py) and the stateful methods (stateful.py). The public entry
points are :func:`gh_kernels.weights`, :func:`gh_kernels.aggregate` and
:class:`gh_kernels.MultiTaskHarmonizer`; :func:`resolve_method` below is the one place that checks a
``method``/options pair for them.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from ..methods import METHOD_CODES, check_method
from . import methods as _methods
from .methods import STATEFUL, check_options, solve
from .stateful import GradVac, NashMTL, StatefulMethod

#: Largest K the enumerating solvers (UPGrad, DualProj, MGDA, CAGrad: 2^K small systems) accept;
#: the other methods also stop here (a Gram matrix larger than this is not what these methods are for).
MAX_TASKS = 12

Method = Union[str, StatefulMethod]

#: The multi-task methods' names (``gh_kernels.weights`` / ``aggregate`` / ``MultiTaskHarmonizer``);
#: GradVac and NashMTL are objects (state across steps).
MULTITASK_METHODS = tuple(_methods.MULTITASK_METHODS)


def resolve_method(method: Method, K: int, options: dict, *, where: str = "method",
                   backend: Optional[str] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Check ``method``/``options`` for K tasks and return ``G -> weights`` (raises ValueError/TypeError).
    The two-set GH rules (``"sum"`` too when K = 2, with its ``kappa``) run on ``backend``'s weights kernel."""
    if K < 2:
        raise ValueError(f"{where}: K = {K} gradient set{'s' if K != 1 else ''}; the multi-task methods need at least 2 "
                         f"(with one task there is nothing to weigh: use its gradient)")
    if K > MAX_TASKS:
        raise ValueError(f"{where}: K = {K} tasks is above the {MAX_TASKS} the multi-task solvers take")
    if isinstance(method, StatefulMethod):
        if options:
            raise ValueError(f"{where}: a {type(method).__name__} object takes its options in its constructor; got "
                             f"{', '.join(options)}")
        return method.weights
    if not isinstance(method, str):
        raise TypeError(f"{where} must be a method name or a gh_kernels.GradVac / NashMTL object; got {type(method).__name__}")
    if method in METHOD_CODES and (method != "sum" or K == 2):  # the two-set GH rules
        if K != 2:
            raise ValueError(f"{where}={method!r} is a two-task rule (K = 2); got K = {K}")
        kappa = options.pop("kappa", 0.5)
        if options:
            raise ValueError(f"method {method!r} takes the option kappa only; got {', '.join(options)}")
        check_method(method, kappa)
        from .. import _dispatch
        return lambda G: _dispatch.weights(G, method, kappa, backend)
    options = dict(options)
    check_options(method, options, K)
    return lambda G: solve(G, method, options)


__all__ = ["GradVac", "NashMTL", "StatefulMethod", "MULTITASK_METHODS", "STATEFUL", "MAX_TASKS", "resolve_method", "solve"]
