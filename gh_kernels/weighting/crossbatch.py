"""The cross-batch methods: MoDo and SDMGrad weigh the tasks from ``A = J_1 J_2^T``, the K x K
inner products of the task gradients of two independent mini-batches (not a Gram matrix: not
symmetric, not PSD). As torchjd 0.18; both keep their weights across steps.

Where A comes from: :func:`gh_kernels.weights` takes it as it is (``weights(A, method=MoDo())``);
:func:`gh_kernels.aggregate` (``second_batch=``) and :class:`gh_kernels.MultiTaskHarmonizer`
(``backward(losses, second_losses=)``) compute one Gram matrix over the 2K gradient sets of both
batches in one fused pass and take its off-diagonal block -- NOTE: [Cross-batch Gram] in
``weighting/__init__.py``. The update is then ``sum_k w_k (g1_k + g2_k) / 2``, the gradient of the
mean of both batches' weighted losses (MoDo's eq. 2.9b).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .solvers import project_simplex
from .stateful import State, StatefulMethod, _finite_or_identity, check_number


class CrossBatchMethod(StatefulMethod):
    """A stateful method whose input is the cross-batch matrix ``J_1 J_2^T``; state: ``lam`` ((K,) float64)."""

    SCHEMA = {"lam": (("K",), torch.float64)}
    cross_batch = True

    def _start(self, K: int, device) -> torch.Tensor:
        old = self._current("lam", device)
        return torch.full((K,), 1.0 / K, dtype=torch.float64, device=device) if old is None else old


class MoDo(CrossBatchMethod):
    """MoDo (Chen, Fernando, Ying and Chen, "Three-Way Trade-Off in Multi-Objective Learning:
    Optimization, Generalization and Conflict-Avoidance", JMLR 2024), torchjd 0.18's ``MoDoWeighting``:
    one projected gradient step per call, ``w <- project_simplex(w - gamma (A w + rho w))`` from 1/K.

    Args:
        gamma: step size of the weight update (> 0).
        rho: l2 regularization (>= 0).
    """

    name = "modo"

    def __init__(self, gamma: float = 0.1, rho: float = 0.1):
        self.gamma = float(check_number("gamma", gamma, 0.0))
        if self.gamma <= 0:
            raise ValueError(f"gamma must be a finite number > 0; got {gamma!r}")
        self.rho = float(check_number("rho", rho, 0.0))
        super().__init__(None)

    def _config(self) -> dict:
        return {"gamma": self.gamma, "rho": self.rho}

    @torch.no_grad()
    def propose(self, A: torch.Tensor) -> Tuple[torch.Tensor, State]:
        K = A.shape[0]
        A64, finite = _finite_or_identity(A)
        old = self._start(K, A.device)
        new = project_simplex(old - self.gamma * (A64 @ old + self.rho * old))
        neutral = torch.full_like(old, 1.0 / K)
        return torch.where(finite, new, neutral), {"lam": torch.where(finite, new, old), "kept": {"lam": old}}


class SDMGrad(CrossBatchMethod):
    """SDMGrad (Xiao, Ban and Ji, "Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms", NeurIPS 2023), torchjd 0.18's ``SDMGradWeighting``: A scaled by the mean
    of ``sqrt(diag A)`` squared, then ``n_iter`` steps of projected SGD with momentum on
    ``w -> A (w + lambda_ p)`` from the previous call's w; the weights are ``(w + lambda_ p) / (1 + lambda_)``.

    Args:
        lr: inner step size (> 0). momentum: in [0, 1). n_iter: inner steps (>= 1).
        lambda_: pull toward the preference direction (>= 0).
        pref_vector: the preference ``p`` (K values; default 1/K).
    """

    name = "sdmgrad"

    def __init__(self, lr: float = 10.0, momentum: float = 0.5, n_iter: int = 20, lambda_: float = 0.3,
                 pref_vector: Optional[torch.Tensor] = None):
        self.lr = float(check_number("lr", lr, 0.0))
        if self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0; got {lr!r}")
        self.momentum = float(check_number("momentum", momentum, 0.0, 1.0))
        if self.momentum >= 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {momentum!r}")
        self.n_iter = int(check_number("n_iter", n_iter, 1, 10_000, integer=True))
        self.lambda_ = float(check_number("lambda_", lambda_, 0.0))
        if pref_vector is not None:
            from . import _check_pref
            if isinstance(pref_vector, torch.Tensor) and pref_vector.dim() != 1:
                raise ValueError(f"pref_vector of sdmgrad must be a 1-D tensor of K values; got shape {tuple(pref_vector.shape)}")
            pref_vector = _check_pref("sdmgrad", pref_vector, len(pref_vector) if hasattr(pref_vector, "__len__") else -1)
        self.pref_vector = pref_vector
        super().__init__(None)

    def _config(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "n_iter": self.n_iter, "lambda_": self.lambda_,
                "pref_vector": None if self.pref_vector is None else self.pref_vector.tolist()}

    def check_tasks(self, K: int, where: str = "method") -> None:
        super().check_tasks(K, where)
        if self.pref_vector is not None and self.pref_vector.shape[0] != K:
            raise ValueError(f"{where}: pref_vector of this SDMGrad has {self.pref_vector.shape[0]} values; K = {K} tasks")

    @torch.no_grad()
    def propose(self, A: torch.Tensor) -> Tuple[torch.Tensor, State]:
        K = A.shape[0]
        A64, finite = _finite_or_identity(A)
        old = self._start(K, A.device)
        pref = (torch.full((K,), 1.0 / K, dtype=torch.float64, device=A.device) if self.pref_vector is None
                else self._option_on("pref_vector", self.pref_vector, A.device))
        scale = A64.diagonal().clamp_min(0.0).sqrt().mean()
        a = A64 / (scale * scale + 1e-8)
        w, velocity = old, None
        for _ in range(self.n_iter):
            grad = a @ (w + self.lambda_ * pref)
            velocity = grad if velocity is None else self.momentum * velocity + grad
            w = project_simplex(w - self.lr * velocity)
        weights = (w + self.lambda_ * pref) / (1.0 + self.lambda_)
        neutral = torch.full_like(old, 1.0 / K)
        return torch.where(finite, weights, neutral), {"lam": torch.where(finite, w, old), "kept": {"lam": old}}
