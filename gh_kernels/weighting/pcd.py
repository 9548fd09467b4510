"""PCD: Priority-Constrained Descent (Varam et al., "Not All Objectives Are Born Equal: Priority-
Constrained Descent for Hierarchical Multi-Objective Optimization", TMLR 2026), as torchjd 0.18.

Task 0 is the primary objective. With ``g~_i = s_i g_i`` the gradients normalized by the bias-corrected
EMA of their squared norms (``s_i = 1 / sqrt(v_i + eps)``), the direction is

    d~ = argmin_d ||d - g~_0||^2 / 2   s.t.   <g~_j, d> >= tau_j ||g~_j||^2   (j = 1..K-1),

rescaled to the norm of g_0. Its dual is ``argmin_{mu >= 0} mu^T Q mu / 2 - b^T mu`` with ``Q`` the
normalized Gram of the secondary tasks and ``b_j = tau_j Q_jj - <g~_j, g~_0>``; ``d~ = g~_0 + sum_j mu_j
g~_j``. We solve it exactly by support enumeration (:func:`~.solvers.nonneg_qp`, the regularized Q so
every support's system is solvable); torchjd runs Goldfarb-Idnani's active-set method, which reaches
the same minimizer. Cases (torchjd's): g_0 = 0 gives 0; infeasible constraints (two anti-parallel
secondary gradients with tau > 0) give g_0; a direction within the Gram matrix's rounding gives 0.
Infeasibility is seen on the device without a host read: the dual then has no minimizer, and the
regularized solution grows as 1/reg (solved at two regularizations, it grows by their ratio), while a
feasible dual's solution does not move.

State: ``sq_norm_ema`` ((K,) float64) and ``n_steps`` (0-dim int64), on the Gram matrix's device.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .linalg import eye, tracing
from .solvers import nonneg_qp
from .stateful import State, StatefulMethod, _finite_or_identity, check_number

#: Relative regularization of the dual (times the largest diagonal entry): it moves a well-posed answer
#: by about DUAL_REG * cond(Q) (1e-7 at cond 1e5); an infeasible one grows as 1/reg.
DUAL_REG = 1e-12
#: The second solve's regularization is this much smaller; an infeasible dual's solution grows by it.
REG_RATIO = 16.0


class PCD(StatefulMethod):
    """Priority-Constrained Descent (see the module docstring). Task 0 (the first loss) is the primary one.

    Args:
        tau: the fraction in [0, 1] of normalized first-order progress guaranteed to each secondary task;
            a number, or a vector of K - 1 values.
        beta: EMA decay of the squared gradient norms, in [0, 1).
        eps: added to the EMA before the inverse square root (>= 0).
    """

    name = "pcd"
    SCHEMA = {"sq_norm_ema": (("K",), torch.float64), "n_steps": ((), torch.int64)}

    def __init__(self, tau: Union[float, torch.Tensor] = 0.02, beta: float = 0.999, eps: float = 1e-8):
        if isinstance(tau, torch.Tensor):
            if tau.dim() != 1 or not tau.is_floating_point() or tau.device.type == "meta":
                raise ValueError(f"tau must be a number or a 1-D float tensor of K - 1 values; got {tau.dtype} of shape "
                                 f"{tuple(tau.shape)} on {tau.device}")
            tau = tau.detach().to(torch.float64, copy=True)
            if not tracing() and not bool(((tau >= 0) & (tau <= 1)).all()):  # read once, at construction
                raise ValueError(f"tau must be in [0, 1]; got {tau.tolist()}")
        else:
            tau = float(check_number("tau", tau, 0.0, 1.0))
        self.tau = tau
        self.beta = float(check_number("beta", beta, 0.0, 1.0))
        if self.beta >= 1.0:
            raise ValueError(f"beta must be in [0, 1); got {beta!r}")
        self.eps = float(check_number("eps", eps, 0.0))
        super().__init__(None)

    def _config(self) -> dict:
        tau = self.tau.tolist() if isinstance(self.tau, torch.Tensor) else self.tau
        return {"tau": tau, "beta": self.beta, "eps": self.eps}

    def check_tasks(self, K: int, where: str = "method") -> None:
        super().check_tasks(K, where)
        if isinstance(self.tau, torch.Tensor) and self.tau.shape[0] != K - 1:
            raise ValueError(f"{where}: tau of this PCD has {self.tau.shape[0]} values, one per secondary task; "
                             f"K = {K} tasks need {K - 1}")

    @property
    def num_tasks(self) -> Optional[int]:
        return None if self.sq_norm_ema is None else self.sq_norm_ema.shape[0]

    @torch.no_grad()
    def propose(self, G: torch.Tensor) -> Tuple[torch.Tensor, State]:
        K, device = G.shape[0], G.device
        G64, finite = _finite_or_identity(G)
        old_ema, old_steps = self._current("sq_norm_ema", device), self._current("n_steps", device)
        if old_ema is None:
            old_ema = torch.zeros(K, dtype=torch.float64, device=device)
            old_steps = torch.zeros((), dtype=torch.int64, device=device)
        taus = (self._option_on("tau", self.tau, device) if isinstance(self.tau, torch.Tensor)
                else torch.full((K - 1,), self.tau, dtype=torch.float64, device=device))
        sq_norms = G64.diagonal()
        ema = self.beta * old_ema + (1.0 - self.beta) * sq_norms
        steps = old_steps + 1
        debiased = ema / (1.0 - torch.pow(self.beta, steps.double()))  # no host tensor: nothing copied per step
        denominators = (debiased + self.eps).sqrt()
        scales = torch.where(denominators > 0, 1.0 / torch.where(denominators > 0, denominators, torch.ones_like(denominators)),
                             torch.zeros_like(denominators))
        Gn = G64 * scales[:, None] * scales[None, :]
        Q, b = Gn[1:, 1:], taus * Gn[1:, 1:].diagonal() - Gn[1:, 0]
        if K > 1:
            level = Q.diagonal().max().clamp_min(torch.finfo(torch.float64).tiny)
            I = eye(K - 1, torch.float64, device)
            mu = nonneg_qp(Q + DUAL_REG * level * I, b)
            mu_tighter = nonneg_qp(Q + (DUAL_REG / REG_RATIO) * level * I, b)
            infeasible = mu_tighter.sum() > 0.5 * REG_RATIO ** 0.5 * mu.sum().clamp_min(1.0)
        else:  # one task: no other task to guarantee progress to, the direction is g_0
            mu, infeasible = b, torch.zeros((), dtype=torch.bool, device=device)
        w = torch.cat((torch.ones(1, dtype=torch.float64, device=device), torch.where(infeasible, torch.zeros_like(mu), mu)))
        precision = 10.0 * torch.finfo(G.dtype if G.dtype.is_floating_point else torch.float32).eps
        direction_sq = w @ Gn @ w
        magnitude = (w.abs() @ Gn.diagonal().clamp_min(0.0).sqrt()) ** 2
        keep = (sq_norms[0] > 0) & (direction_sq > precision * magnitude)
        safe = torch.where(keep, direction_sq, torch.ones_like(direction_sq))
        weights = torch.where(keep, w * scales * (sq_norms[0] / safe).sqrt(), torch.zeros_like(w))
        state = {"sq_norm_ema": torch.where(finite, ema, old_ema), "n_steps": torch.where(finite, steps, old_steps),
                 "kept": {"sq_norm_ema": old_ema, "n_steps": old_steps}}
        return torch.where(finite, weights, torch.ones_like(weights)), state
