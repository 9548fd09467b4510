"""Weights of the multi-task methods from a K x K Gram matrix ``G = J J^T`` (rows of J: the task
gradients): the update is ``sum_k w_k g_k``. Everything runs on G's device in float64 (K <= 8: the
cost is launches), with a fixed amount of work and no host sync; results are returned in G's dtype.

Each method follows its paper; where a paper leaves a choice we follow torchjd 0.18 (named below)
and the tests compare with torchjd on the same matrices (tests/test_multitask_torchjd.py).

==================  ==========================================================================
``"mean"``          ``1/K`` each.
``"sum"``           ``1`` each.
``"pcgrad"``        Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Alg. 1:
                    each g_i is projected, in turn, off every g_j it conflicts with; the update is
                    the sum of the projected gradients. Order: j = 0, 1, ..., K-1 for every i
                    (deterministic, our default); ``generator=``: a random order per i, drawn as
                    torchjd draws it (``randperm(K)`` per i). For K = 2 it equals ``"gh"``.
``"mgda"``          Desideri 2012 / Sener and Koltun, NeurIPS 2018: the min-norm point of the convex
                    hull of the gradients, solved exactly (support enumeration) on ``G / trace(G) +
                    MIN_NORM_REG * I``. torchjd runs Frank-Wolfe (eps 1e-3, 100 iterations), so it
                    can stop short of the optimum; ours is the optimum.
``"cagrad"``        Liu et al., "Conflict-Averse Gradient Descent", NeurIPS 2021, Alg. 1 with option
                    ``c`` (default 0.4): ``w* = argmin_{w in simplex} w^T G_n 1/K + c ||g0|| ||J^T w||``
                    on the trace-normalized G_n, weights ``1/K + c ||g0|| / ||J^T w*|| w*`` (torchjd:
                    no ``1/(1+c)`` rescale; zero weights when ``||J^T w*|| < norm_eps``). One
                    departure: when trace(G) < norm_eps (all gradients tiny, not zero) torchjd
                    zeroes G and returns zero weights, which would stop training silently; we
                    return 1/K (the mean gradient: CAGrad with a vanishing ball).
``"imtl-g"``        Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (gradient part), in
                    torchjd's generalized form: ``v = pinv(G) sqrt(diag G)``, ``w = v / sum v`` (zeros
                    when ``|sum v| < 1e-12``).
``"aligned-mtl"``   Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR
                    2023, Alg. 1: ``w = sqrt(s) V S^-1/2 V^T p`` from the eigendecomposition of G
                    (eigenvalues above ``max * K * eps`` kept; ``scale_mode`` "min" (default),
                    "median" or "rmse" sets s), ``p`` = ``pref_vector`` (default 1/K).
``"upgrad"``        Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization", 2024: each
                    g_i projected onto the dual cone of the rows (``argmin_{v >= e_i} v^T G v``),
                    combined with ``pref_vector`` (default 1/K).
``"dualproj"``      Lopez-Paz and Ranzato, "Gradient Episodic Memory", NeurIPS 2017, eq. 11: the
                    ``pref_vector``-weighted mean (default 1/K) projected onto the dual cone.
``"config"``        Liu et al., "ConFIG: Towards Conflict-free Training of PINNs", ICLR 2025, eq. 2:
                    direction ``pinv(U) p`` for the unit gradients U (``p``: ``pref_vector``, default
                    ones), length ``sum_i <g_i, direction>``.
``"krum"``          Blanchard et al., NeurIPS 2017 (Multi-Krum with ``n_selected``): ``1/n_selected``
                    on the gradients whose distances to their K - n_byzantine - 2 nearest others sum
                    lowest (distances from G; torchjd's Euclidean distances).
``"random"``        Lin et al., TMLR 2022 (RLW): softmax of K normal draws, drawn as torchjd draws them.
``"fairgrad"``      Ban and Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, eq. 4 with
                    option ``alpha`` (> 0, default 1): the positive ``w`` with ``G w = w^(-1/alpha)``
                    (alpha-fairness; alpha = 1 is Nash-MTL's equation), solved by Newton on the trace-
                    normalized G and rescaled (torchjd: scipy least squares from 1/K on the raw G).
==================  ==========================================================================

Regularization (a singular or rank-deficient G): UPGrad and DualProj solve on
``normalize(G, norm_eps) + reg_eps * I`` (torchjd's defaults 1e-4, 1e-4: a trace below norm_eps
counts as zero); MGDA and CAGrad on the trace-normalized G plus ``MIN_NORM_REG * I``; IMTL-G,
Aligned-MTL and ConFIG use pseudo-inverses that drop eigenvalues below ``max * K * eps``. Non-finite
G: the method's neutral weights (``pref_vector``, or 1/K or 1) -- the non-finite gradients still
reach the update, so ``GradScaler`` skips the step.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from .linalg import constant, eye, normalize, pinv_sym, regularize, symeig
from .solvers import cagrad_simplex, dual_cone_weights, min_norm_simplex, positive_root

#: Added to the trace-normalized G for MGDA and CAGrad: keeps every support's system solvable for a
#: singular G; far below the smallest eigenvalue of a G with cond(G) <= 1e8.
MIN_NORM_REG = 1e-10
_TINY = torch.finfo(torch.float64).tiny


def _pref(pref_vector: Optional[torch.Tensor], G: torch.Tensor, default: float) -> torch.Tensor:
    if pref_vector is None:
        return torch.full((G.shape[0],), default, dtype=G.dtype, device=G.device)
    return pref_vector.to(device=G.device, dtype=G.dtype)


def mean(G, *, gram_dtype):
    K = G.shape[0]
    return torch.full((K,), 1.0 / K, dtype=G.dtype, device=G.device)


def sum_(G, *, gram_dtype):
    return torch.ones(G.shape[0], dtype=G.dtype, device=G.device)


def visiting_order(K: int, generator: Optional[torch.Generator], device: torch.device, others_only: bool) -> torch.Tensor:
    """(K, K) (or (K, K-1) with ``others_only``) order in which task i visits the tasks j."""
    if generator is None:  # NOTE: [Device constants]
        rows = [[j for j in range(K) if j != i] if others_only else list(range(K)) for i in range(K)]
        return constant(("order", K, str(device), others_only), lambda: torch.tensor(
            rows, dtype=torch.int64, device=device).reshape(K, K - 1 if others_only else K))
    rows = []
    for i in range(K):  # as torchjd draws them: randperm(K) for PCGrad, randperm(K - 1) over the others for GradVac
        if others_only:
            others = torch.tensor([j for j in range(K) if j != i], device=generator.device)
            rows.append(others[torch.randperm(K - 1, generator=generator, device=generator.device)])
        else:
            rows.append(torch.randperm(K, generator=generator, device=generator.device))
    return torch.stack(rows).to(device)


def pcgrad(G, *, gram_dtype, generator: Optional[torch.Generator] = None):
    """PCGrad: Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Alg. 1."""
    K = G.shape[0]
    order = visiting_order(K, generator, G.device, others_only=False)
    rows = torch.arange(K, device=G.device)
    C = eye(K, G.dtype, G.device)   # projected g_i = sum_k C[i, k] g_k
    diag = G.diagonal()
    for t in range(K):
        j = order[:, t]
        ip = (C @ G).gather(1, j[:, None])[:, 0]         # <projected g_i, g_j>
        gjj = diag[j]
        project = (ip < 0) & (j != rows) & (gjj > 0)
        step = torch.where(project, ip / torch.where(gjj > 0, gjj, torch.ones_like(gjj)), torch.zeros_like(ip))
        C = C.index_put((rows, j), C[rows, j] - step)
    return C.sum(0)


def mgda(G, *, gram_dtype):
    """MGDA: Desideri, C. R. Math. 2012; Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018."""
    return min_norm_simplex(regularize(normalize(G, _TINY), MIN_NORM_REG))  # all-zero G: 1/K


def cagrad(G, *, gram_dtype, c: float = 0.4, norm_eps: float = 1e-4):
    """CAGrad: Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021, Alg. 1 (torchjd's weights)."""
    K = G.shape[0]
    Gn = normalize(G, norm_eps)
    b = Gn.sum(1) / K                                    # J g0 with g0 the mean gradient
    radius = c * (Gn.sum() / (K * K)).clamp_min(0.0).sqrt()  # c ||g0||
    safe_radius = torch.where(radius > 0, radius, torch.ones_like(radius))
    noise = K * torch.finfo(gram_dtype).eps  # Gn has trace 1: its rounding as an absolute level
    w = cagrad_simplex(regularize(Gn, MIN_NORM_REG), b, safe_radius, noise)
    quad = (w @ Gn @ w).clamp_min(0.0)
    gw = quad.sqrt()
    base = torch.full((K,), 1.0 / K, dtype=G.dtype, device=G.device)
    lifted = base + radius / torch.where(gw > 0, gw, torch.ones_like(gw)) * w
    # ||J^T w|| below norm_eps, or within the Gram matrix's rounding (0 in the hull of the gradients,
    # up to float32 rounding): the optimum is the kink J^T w = 0, where torchjd's rule gives zero weights
    at_kink = (gw < norm_eps) | (quad <= noise)
    return torch.where(radius > 0, torch.where(at_kink, torch.zeros_like(base), lifted), base)


def imtl_g(G, *, gram_dtype):
    """IMTL-G: Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021; torchjd's pinv generalization."""
    v = pinv_sym(G, torch.finfo(gram_dtype).eps) @ G.diagonal().clamp_min(0.0).sqrt()
    s = v.sum()
    return torch.where(s.abs() < 1e-12, torch.zeros_like(v), v / torch.where(s.abs() < 1e-12, torch.ones_like(s), s))


def aligned_mtl(G, *, gram_dtype, pref_vector: Optional[torch.Tensor] = None, scale_mode: str = "min"):
    """Aligned-MTL: Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023, Alg. 1."""
    K = G.shape[0]
    evals, V = symeig(G)
    keep = evals > evals.max() * K * torch.finfo(gram_dtype).eps
    inv_sqrt = torch.where(keep, torch.where(keep, evals, torch.ones_like(evals)).rsqrt(), torch.zeros_like(evals))
    kept = torch.where(keep, evals, torch.full_like(evals, float("nan")))
    if scale_mode == "min":
        scale = torch.where(keep, evals, torch.full_like(evals, float("inf"))).min()
    elif scale_mode == "median":  # torch.median of the kept eigenvalues: the lower middle one, picked by a mask (no index read)
        count = keep.sum()
        ranked = torch.sort(torch.where(keep, evals, torch.full_like(evals, float("inf")))).values
        middle = ((count - 1) // 2).clamp_min(0)
        scale = torch.where(torch.arange(K, device=G.device) == middle, ranked, torch.zeros_like(ranked)).sum()
    else:  # rmse: torchjd uses the mean of the kept eigenvalues
        scale = torch.nansum(kept) / keep.sum().clamp_min(1)
    B = scale.clamp_min(0.0).sqrt() * (V * inv_sqrt) @ V.T
    p = _pref(pref_vector, G, 1.0 / K)
    return torch.where(keep.any(), B @ p, p)


def upgrad(G, *, gram_dtype, pref_vector: Optional[torch.Tensor] = None, norm_eps: float = 1e-4, reg_eps: float = 1e-4):
    """UPGrad: Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232 (2024)."""
    Gr = regularize(normalize(G, norm_eps), reg_eps)
    return dual_cone_weights(Gr, torch.diag(_pref(pref_vector, G, 1.0 / G.shape[0]))).sum(0)


def dualproj(G, *, gram_dtype, pref_vector: Optional[torch.Tensor] = None, norm_eps: float = 1e-4, reg_eps: float = 1e-4):
    """DualProj: Lopez-Paz and Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017, eq. 11."""
    Gr = regularize(normalize(G, norm_eps), reg_eps)
    return dual_cone_weights(Gr, _pref(pref_vector, G, 1.0 / G.shape[0])[None])[0]


def config(G, *, gram_dtype, pref_vector: Optional[torch.Tensor] = None):
    """ConFIG: Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks", ICLR 2025, eq. 2."""
    norms = G.diagonal().clamp_min(0.0).sqrt()
    inv_norm = torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, torch.ones_like(norms)), torch.zeros_like(norms))
    Gu = G * inv_norm[:, None] * inv_norm[None, :]      # Gram of the unit gradients U = D^-1 J
    eps = torch.finfo(gram_dtype).eps
    pinv = pinv_sym(Gu, eps)
    p = _pref(pref_vector, G, 1.0)
    a = pinv @ p                                        # pinv(U) p = U^T a
    direction_sq = (a @ Gu @ a).clamp_min(0.0)          # ||U^T a||^2
    # A direction at rounding level is 0 (p outside the unit gradients' span, e.g. two opposite gradients:
    # pinv(U) p is exactly 0): rescaling its noise to full length would give an arbitrary update. An
    # error of (K eps) ||p|| along a kept eigenvector of eigenvalue l moves ||U^T a||^2 by (K eps)^2 ||p||^2 / l,
    # at most (K eps)^2 ||p||^2 ||pinv||; a true direction has ||U^T a||^2 >= ||p_span||^2 / l_max.
    noise = (G.shape[0] * eps) ** 2 * (p @ p) * pinv.norm()
    nonzero = direction_sq > noise
    coeff = inv_norm * a                                # direction = J^T coeff
    length = (G @ coeff).sum()                          # sum_i <g_i, direction>
    safe = torch.where(nonzero, direction_sq, torch.ones_like(direction_sq))
    return torch.where(nonzero, length / safe * coeff, torch.zeros_like(coeff))


def krum(G, *, gram_dtype, n_byzantine: int = 0, n_selected: int = 1):
    """Krum / Multi-Krum: Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent", NeurIPS 2017. Each gradient's score is the sum of its distances to its K - n_byzantine - 2
    nearest others (distances from G: ``|g_i|^2 + |g_j|^2 - 2 <g_i, g_j>``); the ``n_selected`` lowest
    scores get ``1 / n_selected`` each. As torchjd 0.18: Euclidean (not squared) distances, ties broken by
    ``topk``, the nearest "other" found by dropping each row's smallest distance (its own, 0)."""
    K = G.shape[0]
    norms = G.diagonal()
    distances = (norms[None, :] + norms[:, None] - 2 * G).clamp_min(0.0).sqrt()
    nearest = torch.topk(distances, k=K - n_byzantine - 1, largest=False).values[:, 1:]
    chosen = torch.topk(nearest.sum(1), k=n_selected, largest=False).indices
    weights = torch.zeros(K, dtype=G.dtype, device=G.device).index_put((chosen,), torch.ones_like(chosen, dtype=G.dtype))
    return weights / n_selected


def random(G, *, gram_dtype, generator: Optional[torch.Generator] = None):
    """Random loss weighting (RLW): Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test
    for Multi-Task Learning", TMLR 2022: softmax of K standard normal draws, new every step. Drawn as
    torchjd 0.18 draws them (``randn(K)`` in the Gram matrix's dtype, from the global generator unless
    ``generator=`` is given), so the same seed gives the same weights."""
    K = G.shape[0]
    device = G.device if generator is None else generator.device
    draws = torch.randn(K, dtype=gram_dtype if gram_dtype.is_floating_point else torch.float32, device=device,
                        generator=generator)
    return torch.softmax(draws, dim=-1).to(device=G.device, dtype=G.dtype)


#: Newton steps of FairGrad's solve (quadratic convergence from the scaled start: 20 reach float64
#: rounding on every test matrix; the rest guard badly conditioned G).
FAIRGRAD_ITERS = 30


def fairgrad(G, *, gram_dtype, alpha: float = 1.0):
    """FairGrad: Ban and Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, eq. 4: the
    positive solution of ``G w = w^(-1/alpha)``. With ``c = trace(G) / K`` it is ``c^(-alpha/(1+alpha))``
    times the solution for ``G / c``, which is what we solve (Newton, :func:`positive_root`), from 1/K
    as torchjd starts. A G with a zero trace gives 1/K (nothing to weigh)."""
    K = G.shape[0]
    power = 1.0 / alpha
    c = G.diagonal().sum() / K
    positive = c > 0
    safe_c = torch.where(positive, c, torch.ones_like(c))
    start = torch.full((K,), 1.0 / K, dtype=G.dtype, device=G.device)
    w = positive_root(G / safe_c, power, start, FAIRGRAD_ITERS) * safe_c.pow(-1.0 / (1.0 + power))
    return torch.where(positive & torch.isfinite(w).all(), w, start)


#: name -> rule. A rule is ``rule(G, *, gram_dtype, **options)`` on a float64 K x K Gram matrix; its keyword
#: parameters (other than ``gram_dtype``, the Gram matrix's own dtype, for its rounding unit) are the options
#: it takes, with their defaults. The registry (``weighting/__init__.py``) reads them from the signature.
RULES: Dict[str, Callable] = {
    "mean": mean, "sum": sum_, "pcgrad": pcgrad, "mgda": mgda, "cagrad": cagrad, "imtl-g": imtl_g,
    "aligned-mtl": aligned_mtl, "upgrad": upgrad, "dualproj": dualproj, "config": config, "krum": krum,
    "random": random, "fairgrad": fairgrad,
}
#: Neutral weights (returned for a non-finite G) are ``pref_vector`` when given, else 1 for these, 1/K for the rest.
SUM_TYPE = {"sum", "pcgrad", "config"}


@torch.no_grad()  # the weights are not differentiated (as in torchjd); no graph is recorded
def solve(G: torch.Tensor, rule: Callable, neutral: float, options: dict) -> torch.Tensor:
    """Weights of a checked rule for a validated K x K Gram ``G`` (K >= 2), in float64 (the registry
    converts to the weights dtype). A non-finite G gives ``pref_vector`` or ``neutral`` per task."""
    K = G.shape[0]
    G64 = G.to(torch.float64)
    finite = torch.isfinite(G64).all()
    G64 = torch.where(finite, 0.5 * (G64 + G64.T), eye(K, torch.float64, G.device))
    w = rule(G64, gram_dtype=G.dtype, **options)
    return torch.where(finite, w, _pref(options.get("pref_vector"), G64, neutral))
