"""The two multi-task methods that keep state across steps: :class:`GradVac` and :class:`NashMTL`.

Create one object per training run and pass it as ``method=`` to :func:`gh_kernels.weights`,
:func:`gh_kernels.aggregate` or :class:`gh_kernels.MultiTaskHarmonizer`; each call is one step. The
state lives on the Gram matrix's device; nothing synchronizes with the host. ``reset()`` forgets it
(call it when the number of tasks changes; a different K or device also resets it).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .linalg import eye
from .methods import visiting_order


def _check_number(name: str, value, low: float, high: float = math.inf, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not (low <= value <= high):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} in [{low}, {high}]; got {value!r}")


def _finite_or_identity(G: torch.Tensor):
    """(G in float64, or the identity when G has a non-finite entry; whether G was finite) -- on the device.
    A non-finite step (AMP overflow) returns neutral weights and leaves the state as it was; the
    non-finite gradients still reach the update, so GradScaler skips the step."""
    G64 = G.to(torch.float64)
    finite = torch.isfinite(G64).all()
    return torch.where(finite, G64, eye(G.shape[0], torch.float64, G.device)), finite


class StatefulMethod:
    """Base of the stateful methods: ``weights(G)`` for one step's K x K Gram matrix."""

    name = ""

    def weights(self, G: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class GradVac(StatefulMethod):
    """Gradient Vaccine (Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021), whole-model variant, as torchjd 0.18.

    For each task i and each other task j in turn, when the cosine ``phi`` between the (already
    corrected) g_i and g_j is below the EMA target ``phi_hat[i, j]``, g_i gets the closed-form
    multiple of g_j that lifts the cosine to the target; then ``phi_hat[i, j] <- (1 - beta)
    phi_hat + beta phi``. The update is the sum of the corrected gradients; ``phi_hat`` starts at 0.
    Order: j ascending for every i (deterministic default), or with ``generator=`` a random order
    per i drawn as torchjd draws it (``randperm(K - 1)`` over the other tasks).
    """

    name = "gradvac"

    def __init__(self, beta: float = 0.5, eps: float = 1e-8, generator: Optional[torch.Generator] = None):
        _check_number("beta", beta, 0.0, 1.0)
        _check_number("eps", eps, 0.0)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
        self.beta, self.eps, self.generator = float(beta), float(eps), generator
        self.phi_hat: Optional[torch.Tensor] = None

    def reset(self) -> None:
        self.phi_hat = None

    @torch.no_grad()
    def weights(self, G: torch.Tensor) -> torch.Tensor:
        K = G.shape[0]
        G64, finite = _finite_or_identity(G)
        if self.phi_hat is None or self.phi_hat.shape != (K, K) or self.phi_hat.device != G.device:
            self.phi_hat = torch.zeros((K, K), dtype=torch.float64, device=G.device)
        order = visiting_order(K, self.generator, G.device, others_only=True)
        rows = torch.arange(K, device=G.device)
        C = eye(K, torch.float64, G.device)
        phi_hat = self.phi_hat
        norm_j_all = G64.diagonal().clamp_min(0.0).sqrt()
        beta, eps = self.beta, self.eps
        for t in range(K - 1):
            j = order[:, t]
            CG = C @ G64
            dot = CG.gather(1, j[:, None])[:, 0]
            norm_i = (CG * C).sum(1).clamp_min(0.0).sqrt()
            norm_j = norm_j_all[j]
            phi = dot / (norm_i * norm_j + eps)
            hat = phi_hat[rows, j]
            s_phi = (1.0 - phi * phi).clamp_min(0.0).sqrt()
            s_hat = (1.0 - hat * hat).clamp_min(0.0).sqrt()
            w = norm_i * (hat * s_phi - phi * s_hat) / (norm_j * s_hat + eps)
            C = C.index_put((rows, j), C[rows, j] + torch.where(phi < hat, w, torch.zeros_like(w)))
            phi_hat = phi_hat.index_put((rows, j), (1.0 - beta) * hat + beta * phi)
        self.phi_hat = torch.where(finite, phi_hat, self.phi_hat)  # a non-finite step leaves the state alone
        return torch.where(finite, C.sum(0), torch.ones_like(C[0])).to(G.dtype)


class NashMTL(StatefulMethod):
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022), Alg. 1, with
    torchjd 0.18's conventions: G is divided by its Frobenius norm, ``alpha`` solves
    ``G alpha = 1 / alpha`` (alpha > 0), the update is ``sum alpha_k g_k`` scaled down to norm
    ``max_norm`` when longer (``max_norm=0``: no clipping), and weights are recomputed every
    ``update_weights_every`` steps (reused in between).

    Solver: the solution is the minimizer of the self-concordant ``f(a) = a^T G a / 2 - sum log a``;
    we run ``newton_iters`` Newton steps, each with a line search over the fixed grid of step sizes
    ``1, 1/2, ..., 2^-15, 0`` (all evaluated at once; the best positive point wins, so f never
    increases) from the best multiple of the previous step's alpha (the first step: of
    ``1 / sqrt(diag G)``): a fixed amount of work with no host sync. The paper's and torchjd's solver (a sequence of convex programs with
    cvxpy, at most 20, stopping at residual 1e-3) reaches the same point within its tolerance.
    ``G`` gets ``reg_eps * I`` (default 1e-8) after the normalization, so a singular G (where no
    solution exists) still gives finite weights.
    """

    name = "nash-mtl"

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1, newton_iters: int = 20, reg_eps: float = 1e-8):
        _check_number("max_norm", max_norm, 0.0)
        _check_number("update_weights_every", update_weights_every, 1, integer=True)
        _check_number("newton_iters", newton_iters, 1, 1000, integer=True)
        _check_number("reg_eps", reg_eps, 0.0)
        self.max_norm, self.update_weights_every = float(max_norm), int(update_weights_every)
        self.newton_iters, self.reg_eps = int(newton_iters), float(reg_eps)
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.alpha: Optional[torch.Tensor] = None

    def _solve(self, Gn: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        # The best multiple of the start (minimizes f along it): f's minimizer has a^T G a = K, so
        # this removes the scale error, which is what makes a warm start from another step far off.
        alpha = alpha * (alpha.shape[0] / (alpha @ Gn @ alpha).clamp_min(1e-300)).sqrt()
        steps = torch.pow(2.0, -torch.arange(0, 16, dtype=Gn.dtype, device=Gn.device))  # line-search grid, and 0
        steps = torch.cat((steps, steps.new_zeros(1)))
        for _ in range(self.newton_iters):
            grad = Gn @ alpha - 1.0 / alpha
            H = Gn + torch.diag(1.0 / (alpha * alpha))
            step = torch.linalg.solve_ex(H, grad[:, None], check_errors=False)[0][:, 0]
            trial = alpha[None, :] - steps[:, None] * step[None, :]          # (T, K)
            positive = (trial > 0).all(1)
            safe = torch.where(positive[:, None], trial, torch.ones_like(trial))
            f = 0.5 * torch.einsum("ti,ij,tj->t", safe, Gn, safe) - safe.log().sum(1)
            f = torch.where(positive & torch.isfinite(f), f, torch.full_like(f, float("inf")))
            alpha = trial[f.argmin()]  # the best point on the grid (step 0 keeps alpha): f never increases
        return alpha

    @torch.no_grad()
    def weights(self, G: torch.Tensor) -> torch.Tensor:
        K = G.shape[0]
        G64, finite = _finite_or_identity(G)
        if self.alpha is not None and (self.alpha.shape != (K,) or self.alpha.device != G.device):
            self.reset()
        if self.step % self.update_weights_every == 0:
            fro = G64.norm()
            Gn = G64 / torch.where(fro > 0, fro, torch.ones_like(fro)) + self.reg_eps * eye(K, torch.float64, G.device)
            start = self.alpha if self.alpha is not None else Gn.diagonal().clamp_min(1e-12).rsqrt()
            alpha = self._solve(Gn, start)
            ok = torch.isfinite(alpha).all() & (alpha > 0).all()
            alpha = torch.where(ok, alpha, Gn.diagonal().clamp_min(1e-12).rsqrt())
            self.alpha = alpha if self.alpha is None else torch.where(finite, alpha, self.alpha)  # non-finite step: keep the state
        self.step += 1
        alpha = self.alpha
        if self.max_norm > 0:
            norm = (alpha @ G64 @ alpha).clamp_min(0.0).sqrt()
            alpha = torch.where(norm > self.max_norm, alpha / norm * self.max_norm, alpha)
        return torch.where(finite, alpha, torch.ones_like(alpha)).to(G.dtype)
