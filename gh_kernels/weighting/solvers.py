"""Exact small convex solves behind UPGrad, DualProj, MGDA, CAGrad and PCD, by enumerating supports;
the Newton solve behind Nash-MTL and FairGrad; the simplex projection of MoDo and SDMGrad.

Each problem is a strictly convex minimization over K <= 8 variables with simple constraints. On
the right active set (support) its KKT conditions are a linear system; we solve the systems of
*all* 2^K active sets in one batched ``solve_ex``, move every candidate onto the feasible set (a
candidate from a wrong active set is feasible after that, never better than the optimum), and keep
the one with the smallest objective. The right active set's candidate is the exact optimum, so the
result is exact up to float64 rounding: no iteration count, no tolerance, no host sync, and a
fixed amount of device work (2^K systems of size K or K + 1).

A candidate that comes from a singular system is inf/nan and is never chosen; the callers pass a
positive definite (regularized) Gram matrix, so the right active set's system is never singular.
"""
from __future__ import annotations

import torch

from .linalg import argmin_candidates, eye, solve_batch, subsets


def dual_cone_weights(G: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """For each row u of ``U`` (B, K): ``argmin_v v^T G v`` subject to ``v >= u`` (elementwise).

    This is the projection of ``J^T u`` onto the dual cone of the rows of J (``G = J J^T``) in
    weight space (Senushkin et al. / Quinton and Rey, "Jacobian Descent", Prop. 1). KKT on the free
    set F: ``(G v)_F = 0``, ``v_A = u_A`` on the active set A.
    """
    K = G.shape[-1]
    free = subsets(K, G.device)                                 # (S, K): True = free
    M = torch.where(free[:, :, None], G[None], eye(K, G.dtype, G.device)[None])        # rows: G_i for free i, e_i for active i
    rhs = torch.where(free[:, None, :], torch.zeros((), dtype=G.dtype, device=G.device), U[None])  # (S, B, K)
    V = solve_batch(M, rhs.transpose(1, 2)).transpose(1, 2)      # (S, B, K)
    V = torch.maximum(V, U[None])                                # feasible: v >= u
    objective = torch.einsum("sbi,ij,sbj->sb", V, G, V)
    return argmin_candidates(V.transpose(0, 1), objective.T)    # (B, K)


def min_norm_simplex(G: torch.Tensor) -> torch.Tensor:
    """``argmin_w w^T G w`` over the simplex (``w >= 0``, ``sum w = 1``): MGDA's min-norm point.

    KKT on a support S: ``(G w)_S = lambda 1``, ``w_i = 0`` off S, ``sum w = 1`` -- one (K+1) x (K+1)
    system per nonempty S.
    """
    K = G.shape[-1]
    dt, dev = G.dtype, G.device
    support = subsets(K, dev)[1:]                                # (S, K), nonempty
    S = support.shape[0]
    M = torch.zeros((S, K + 1, K + 1), dtype=dt, device=dev)
    M[:, :K, :K] = torch.where(support[:, :, None], G[None], eye(K, dt, dev)[None])
    M[:, :K, K] = torch.where(support, -1.0, 0.0).to(dt)          # - lambda on support rows
    M[:, K, :K] = 1.0
    rhs = torch.zeros((S, K + 1, 1), dtype=dt, device=dev)
    rhs[:, K, 0] = 1.0
    W = solve_batch(M, rhs)[:, :K, 0].clamp_min(0.0)             # (S, K), w >= 0
    total = W.sum(-1, keepdim=True)
    W = W / torch.where(total > 0, total, torch.full_like(total, float("nan")))  # sum w = 1
    objective = torch.einsum("si,ij,sj->s", W, G, W)
    return argmin_candidates(W, objective)


def cagrad_simplex(G: torch.Tensor, b: torch.Tensor, radius: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
    """``argmin_w b^T w + radius * sqrt(w^T G w)`` over the simplex (CAGrad's dual problem).

    On a support S, with ``a = G_SS^-1 1`` and ``d = G_SS^-1 b_S``, stationarity gives
    ``w_S = (lambda a - d) / sqrt(D)``, ``lambda = (B + sqrt(D)) / A`` where ``A = 1^T a``,
    ``B = 1^T d``, ``C = b_S^T d`` and ``D = B^2 - A (C - radius^2)`` (D <= 0: no stationary point
    on S). ``radius > 0`` is required (the caller handles c = 0).
    """
    K = G.shape[-1]
    dt, dev = G.dtype, G.device
    support = subsets(K, dev)[1:]
    M = torch.where(support[:, :, None], G[None], eye(K, dt, dev)[None])
    ones = torch.ones(K, dtype=dt, device=dev)
    zero = torch.zeros((), dtype=dt, device=dev)
    rhs = torch.stack((torch.where(support, ones, zero), torch.where(support, b, zero)), dim=-1)  # (S, K, 2)
    X = solve_batch(M, rhs)
    a, d = X[..., 0], X[..., 1]
    A, B, C = a.sum(-1), d.sum(-1), (b * d).sum(-1)
    D = B * B - A * (C - radius * radius)
    root = torch.where(D > 0, D, torch.full_like(D, float("nan"))).sqrt()
    lam = (B + root) / A
    W = ((lam[:, None] * a - d) / root[:, None]).clamp_min(0.0)
    total = W.sum(-1, keepdim=True)
    W = W / torch.where(total > 0, total, torch.full_like(total, float("nan")))
    # The objective is not smooth where J^T w = 0 (0 in the hull of the gradients): that optimum is no
    # stationary point of any support, so the min-norm point of the simplex joins the candidates; where
    # its norm is 0 its objective is b^T w = 0, the optimum, and elsewhere it loses to a smooth candidate.
    # ``noise``: the rounding level of w^T G w (the Gram matrix's own dtype). When the min-norm point's
    # w^T G w is within it (a kink, up to rounding), every candidate near the kink has an objective known
    # only to radius * sqrt(noise), and such a candidate's J^T w is rounding debris that the weights
    # would amplify to full length: the kink wins every tie within that. (Subtracting the noise from every
    # candidate's w^T G w instead undercounted the penalty of candidates just above it, which then won on
    # rank-deficient float32 Grams, with conflicting updates.)
    W = torch.cat((min_norm_simplex(G)[None], W))
    quad = torch.einsum("si,ij,sj->s", W, G, W).clamp_min(0.0)
    objective = W @ b + radius * quad.sqrt()
    best = torch.where(torch.isnan(objective), torch.full_like(objective, float("inf")), objective).min()
    first = torch.arange(W.shape[0], device=W.device) == 0
    kink = (quad[0] <= noise) & (objective[0] <= best + radius * noise ** 0.5)
    objective = torch.where(first & kink, torch.full_like(objective, -float("inf")), objective)
    return argmin_candidates(W, objective)


def nonneg_qp(Q: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``argmin_{mu >= 0} mu^T Q mu / 2 - b^T mu`` for a positive definite Q (PCD's dual problem).

    KKT on the free set F: ``(Q mu)_F = b_F``, ``mu = 0`` off F; candidates clamped to ``mu >= 0``.
    """
    K = Q.shape[-1]
    free = subsets(K, Q.device)
    M = torch.where(free[:, :, None], Q[None], eye(K, Q.dtype, Q.device)[None])
    rhs = torch.where(free, b[None], torch.zeros((), dtype=Q.dtype, device=Q.device))[:, :, None]
    mu = solve_batch(M, rhs)[:, :, 0].clamp_min(0.0)
    objective = 0.5 * torch.einsum("si,ij,sj->s", mu, Q, mu) - mu @ b
    return argmin_candidates(mu, objective)


def project_simplex(y: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``y`` onto the probability simplex, as torchjd 0.18 computes it (the first
    i with ``(sum of the i+1 largest - 1) / (i+1) > the (i+2)-th largest`` sets the shift), with the
    loop's early exit picked by a mask: no host read."""
    m = y.shape[0]
    ranked = torch.sort(y, descending=True).values
    shifts = (ranked.cumsum(0)[:-1] - 1.0) / torch.arange(1, m, dtype=y.dtype, device=y.device)
    found = shifts > ranked[1:]
    first = found & (found.cumsum(0) == 1)
    shift = torch.where(found.any(), (shifts * first).sum(), (y.sum() - 1.0) / m)
    return (y - shift).clamp_min(0.0)


def positive_root(G: torch.Tensor, power: float, start: torch.Tensor, iters: int) -> torch.Tensor:
    """The positive solution of ``G a = a^(-power)`` (``power > 0``; Nash-MTL: 1, FairGrad: 1/alpha), the
    minimizer of the convex ``f(a) = a^T G a / 2 - sum phi(a)`` with ``phi' = a^(-power)`` (``phi = log``
    for power 1). ``iters`` Newton steps from the best multiple of ``start``, each with a line search
    over the fixed grid ``1, 1/2, ..., 2^-15, 0`` (all evaluated at once; the best positive point wins,
    so f never increases): a fixed amount of work, no host sync."""
    def phi(a):
        return a.log() if power == 1.0 else a.pow(1.0 - power) / (1.0 - power)

    # The best multiple t of the start: t^(1 + power) = sum(start^(1 - power)) / start^T G start.
    quad = (start @ G @ start).clamp_min(1e-300)
    a = start * (start.pow(1.0 - power).sum() / quad).pow(1.0 / (1.0 + power))
    steps = torch.pow(2.0, -torch.arange(0, 16, dtype=G.dtype, device=G.device))
    steps = torch.cat((steps, steps.new_zeros(1)))
    for _ in range(iters):
        grad = G @ a - a.pow(-power)
        H = G + torch.diag(power * a.pow(-power - 1.0))
        step = torch.linalg.solve_ex(H, grad[:, None], check_errors=False)[0][:, 0]
        trial = a[None, :] - steps[:, None] * step[None, :]          # (T, K)
        positive = (trial > 0).all(1)
        safe = torch.where(positive[:, None], trial, torch.ones_like(trial))
        f = 0.5 * torch.einsum("ti,ij,tj->t", safe, G, safe) - phi(safe).sum(1)
        f = torch.where(positive & torch.isfinite(f), f, torch.full_like(f, float("inf")))
        best = f == f.min()  # the best point on the grid (step 0 keeps a), picked by a mask
        first = best & (best.cumsum(0) == 1)
        a = (trial * first[:, None]).sum(0)
    return a
