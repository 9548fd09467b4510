"""CR-MOGM (Zhou et al., "On the Convergence of Stochastic Multi-Objective Gradient Manipulation and
Beyond", NeurIPS 2022): an exponential moving average of any method's weights across steps,
``lambda_k = alpha lambda_{k-1} + (1 - alpha) lambda_hat_k``, as torchjd 0.18's ``CRMOGMWeighting``:
``lambda_0`` is ``initial_weights`` when given, else the first step's weights (so the first output is
the wrapped method's). A non-finite step leaves the average (and a stateful inner method) unchanged.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .linalg import tracing
from .stateful import State, StatefulMethod, _finite_or_identity, check_number, comparable, keep_if_nonfinite


class CRMOGM(StatefulMethod):
    """Smooth the weights of ``method`` (a name of ``MULTITASK_METHODS`` with its ``**options``, or a
    stateful method object) with an EMA of coefficient ``alpha`` in [0, 1] (0: no smoothing; 1: frozen at
    ``lambda_0``). ``initial_weights``: optional (K,) tensor for ``lambda_0``. ``alpha`` may be changed
    between steps (the paper's schedule ``alpha_k -> 1`` as the learning rate decays).
    State: ``lam`` ((K,) float64, the last smoothed weights) and the wrapped method's state."""

    name = "cr-mogm"
    SCHEMA = {"lam": (("K",), torch.float64)}

    def __init__(self, method="upgrad", alpha: float = 0.9, initial_weights: Optional[torch.Tensor] = None, **options):
        from . import COORDINATE_METHODS, resolve
        # Only methods whose weights are a function of one Gram matrix can be averaged: not the per-coordinate
        # ones (no weights), ExcessMTL (reads the gradients), MoDo/SDMGrad (two batches) or another CRMOGM.
        if getattr(method, "cross_batch", False) or getattr(method, "reads_gradients", False) \
                or isinstance(method, CRMOGM) or (isinstance(method, str) and method in COORDINATE_METHODS):
            name = method if isinstance(method, str) else type(method).__name__
            raise ValueError(f"method of CRMOGM must have weights from one Gram matrix (not per-coordinate, not "
                             f"reading the gradients, not two batches); got {name!r}")
        resolve(method, None, options)  # unknown methods and options fail here
        self.method, self.options = method, dict(options)
        self.alpha = float(check_number("alpha", alpha, 0.0, 1.0))
        if initial_weights is not None:
            if not isinstance(initial_weights, torch.Tensor) or initial_weights.dim() != 1 or not initial_weights.is_floating_point() \
                    or initial_weights.device.type == "meta":
                raise ValueError("initial_weights must be a 1-D float tensor of K values with data (not meta), or None")
            if not tracing() and not bool(torch.isfinite(initial_weights).all()):  # read once, at construction
                raise ValueError(f"initial_weights must be finite; got {initial_weights.tolist()}")
            initial_weights = initial_weights.detach().to(torch.float64, copy=True)
        self.initial_weights = initial_weights
        self._inner = {}
        super().__init__(getattr(method, "generator", None) or options.get("generator"))

    def _config(self) -> dict:
        """The wrapped method's options and the initial weights are part of it: a state saved with other
        ones is refused at load time (NOTE: [State schema])."""
        return {"method": getattr(self.method, "name", self.method), "alpha": self.alpha,
                "options": {k: comparable(v) for k, v in sorted(self.options.items())},
                "initial_weights": comparable(self.initial_weights)}

    def reset(self) -> None:
        super().reset()
        if isinstance(getattr(self, "method", None), StatefulMethod):
            self.method.reset()

    def check_tasks(self, K: int, where: str = "method") -> None:
        super().check_tasks(K, where)
        if self.initial_weights is not None and self.initial_weights.shape[0] != K:
            raise ValueError(f"{where}: initial_weights of this CRMOGM has {self.initial_weights.shape[0]} values; K = {K} tasks")
        if isinstance(self.method, StatefulMethod):
            self.method.check_tasks(K, where)

    def _weighting(self, K: int):
        if K not in self._inner:
            from . import resolve
            self._inner[K] = resolve(self.method, K, self.options)
        return self._inner[K]

    @torch.no_grad()
    def propose(self, G: torch.Tensor) -> Tuple[torch.Tensor, State]:
        K = G.shape[0]
        _, finite = _finite_or_identity(G)
        inner, pending = self._weighting(K).solve(G)
        inner = inner.to(torch.float64)
        old = kept = self._current("lam", G.device)
        if old is None:
            old = inner if self.initial_weights is None else self._option_on("initial_weights", self.initial_weights, G.device)
            # a first step that wrote a non-finite value keeps what a first step with a non-finite G keeps
            kept = self._weighting(K).neutral_weights(G) if self.initial_weights is None else old
        smoothed = self.alpha * old + (1.0 - self.alpha) * inner
        return torch.where(finite, smoothed, inner), {"lam": torch.where(finite, smoothed, old), "inner": pending,
                                                      "kept": {"lam": kept}}

    def commit(self, state: State, nonfinite: Optional[torch.Tensor] = None) -> None:
        self.lam = keep_if_nonfinite(state, nonfinite)["lam"]
        state["inner"].store(nonfinite)  # the wrapped method's state under the same flag

    def state_dict(self) -> dict:
        out = super().state_dict()
        if isinstance(self.method, StatefulMethod):
            out["inner"] = self.method.state_dict()
        return out

    def check_state_dict(self, state_dict: dict) -> None:
        inner = isinstance(self.method, StatefulMethod)
        if isinstance(state_dict, dict) and ("inner" in state_dict) != inner:
            raise ValueError("state_dict and this CRMOGM differ in wrapping a stateful method")
        super().check_state_dict(state_dict)
        if inner:
            self.method.check_state_dict(state_dict["inner"])

    def load_state_dict(self, state_dict: dict) -> None:
        self.check_state_dict(state_dict)  # the wrapped method's part too, before anything is set
        super().load_state_dict(state_dict)
        if isinstance(self.method, StatefulMethod):
            self.method.load_state_dict(state_dict["inner"])