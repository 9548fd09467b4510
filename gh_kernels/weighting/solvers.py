"""Exact small convex solves behind UPGrad, DualProj, MGDA, CAGrad and PCD; the Newton solve behind Nash-MTL
and FairGrad; the simplex projection of MoDo and SDMGrad.

Each problem is a strictly convex minimization over K variables with simple constraints. On the right
active set (support) its KKT conditions are a linear system. Two ways to find it, both with a fixed
amount of device work and no host sync:

* K <= ENUMERATION_MAX_K: the systems of *all* 2^K active sets in one batched ``solve_ex``; every
  candidate is moved onto the feasible set (a candidate from a wrong active set is feasible after that,
  never better than the optimum) and the one with the smallest objective is kept. No iteration count,
  no tolerance.
* Above: MGDA's min-norm point by Wolfe's algorithm (NOTE: [Wolfe's min-norm point]), CAGrad by following its
  path from that point (NOTE: [CAGrad's homotopy]), and the nonnegative QPs of UPGrad, DualProj and PCD by
  the primal active-set method from a FISTA start (NOTE: [Primal active set above 8 tasks]). Wolfe's and the
  active-set method keep a feasible point whose objective never rises, so neither can cycle; the path changes
  one variable per segment. Each runs a fixed number of steps (measured enough, with a factor 2 to spare) and
  stops moving by a mask once converged: the result is the exact optimum, the solution of the final active
  set's linear system.

A candidate that comes from a singular system is inf/nan and is never chosen; the callers pass a
positive definite (regularized) Gram matrix, so the right active set's system is never singular.
"""
from __future__ import annotations

import torch

from .linalg import argmin_candidates, constant, eye, solve_batch, subsets

#: Up to this K the solvers enumerate the 2^K active sets (256 systems); above it they iterate.
ENUMERATION_MAX_K = 8
#: The FISTA steps that give the first active set and point (see NOTE: [Primal active set above 8 tasks]); the
#: active-set steps are active_set_steps(K) (measured: tests/test_multitask_large_k.py's stress profile).
FISTA_ITERATIONS = 300


def active_set_steps(K: int) -> int:
    """Measured at most 0.92 K steps after the FISTA start (1.75 K from 0) over 350 matrices at K = 9..64, UPGrad's
    K rows and DualProj's, regularized and not; twice that, plus a margin for small K. A later study (300 matrices of
    the stress profile's kinds, UPGrad's, MGDA's and DualProj's rows, half of them unregularized with RIDGE) needed
    up to 1.1 K (0 in the hull, unregularized), with 300 FISTA steps and with 1,500 alike: a longer FISTA start
    shortens the regularized cases (0.33 K -> 0.13 K) but not the worst one, so the count stays (K + 8 < 1.1 K only
    above K = 80, so the stress test's half count still covers K <= 64)."""
    return 2 * K + 16


#: Relative ridge of UPGrad's and DualProj's active-set solves (times trace(G)): 1e-9 of the default reg_eps = 1e-4.
RIDGE = 1e-13



def _fista_momenta(n: int):
    """FISTA's momentum coefficients (t_k - 1) / t_{k+1}: a fixed sequence, computed on the host once."""
    def build():
        t, out = 1.0, []
        for _ in range(n):
            t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
            out.append((t - 1) / t_next)
            t = t_next
        return out
    return constant(("fista momenta", n), build)


def nonneg_qp_rows(Q: torch.Tensor, C: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """``argmin_{z >= 0} z^T Q z / 2 + c^T z`` for every row c of ``C`` (B, K); Q symmetric positive semidefinite.

    NOTE: [Primal active set above 8 tasks]: the primal active-set method (Lawson and Hanson's NNLS steps; the same
    scheme as NOTE: [Wolfe's min-norm point]), every row of the batch at once with its own free set F. z stays
    feasible and the objective falls at every step, so it cannot cycle whatever the conditioning. A step solves
    ``(Q x)_F = -c_F`` (``x = 0`` off F): when x > 0 on F it is taken and the variable with the most negative
    gradient ``(Q z + c)_i`` joins F (beyond rounding), else z moves toward x until a variable reaches 0 and
    leaves. F and z start from ``FISTA_ITERATIONS`` accelerated projected-gradient steps (feasible), so
    the steps only correct their active set. Converged rows stop moving (a mask): a fixed amount of work, no host
    sync. Measured steps (tests/test_multitask_large_k.py's stress profile, which passes with half of them): see
    active_set_steps. ``ridge``: a singular Q (UPGrad with ``reg_eps=0`` on a rank-deficient Gram) gets
    ``ridge * trace(Q)`` on its diagonal, which makes every system nonsingular (PCD passes its own regularization,
    whose effect it measures: no ridge there). Block principal pivoting (Judice and Pires; Kim and Park) needed fewer
    steps where it converged, but did not converge within 32 steps on rank-deficient Grams at K = 40 (UPGrad
    off by 5e-3), and cycled on MGDA's."""
    B, K = C.shape
    dt, dev = Q.dtype, Q.device
    identity = eye(K, dt, dev)
    index = constant(("arange", K, str(dev)), lambda: torch.arange(K, device=dev))
    if ridge:
        Q = Q + (ridge * Q.diagonal().sum()) * identity
    z = torch.zeros_like(C)
    step = 1.0 / Q.diagonal().sum().clamp_min(torch.finfo(dt).tiny)  # FISTA: 1 / trace >= 1 / largest eigenvalue
    y = z
    for momentum in _fista_momenta(FISTA_ITERATIONS):
        z_next = (y - (y @ Q + C) * step).clamp_min(0.0)
        y = z_next + momentum * (z_next - z)
        z = z_next
    free = z > 0
    done = torch.zeros((B,), dtype=torch.bool, device=dev)
    inf = torch.full((B, K), float("inf"), dtype=dt, device=dev)
    level = 64 * torch.finfo(dt).eps
    Q_abs, C_scale = Q.abs(), C.abs().amax(1)  # the join test's scale: loop invariants
    for _ in range(active_set_steps(K)):
        M = torch.where(free[:, :, None] & free[:, None, :], Q[None], identity[None])
        x = solve_batch(M, torch.where(free, -C, 0.0)[:, :, None])[:, :, 0]
        major = ~(free & (x <= 0)).any(1) & torch.isfinite(x).all(1)
        grad = x @ Q + C
        outside = torch.where(free, inf, grad)
        smallest = outside.min(1)
        joins = smallest.values < -level * (C_scale + (x.abs() @ Q_abs).amax(1))
        free_major = free | (joins[:, None] & (index[None] == smallest.indices[:, None]))
        shrinking = free & (x <= 0)
        ratio = torch.where(shrinking, z / torch.where(shrinking, z - x, 1.0), inf)
        first = ratio.min(1)
        leaves = index[None] == first.indices[:, None]
        z_minor = torch.where(leaves, 0.0, z + first.values[:, None] * (x - z)).clamp_min(0.0)
        free_minor = free & ~leaves & (z_minor > 0)
        keep = done[:, None]
        z = torch.where(keep, z, torch.where(major[:, None], x, z_minor))
        free = torch.where(keep, free, torch.where(major[:, None], free_major, free_minor))
        done = done | (major & ~joins)
    return z


def dual_cone_weights(G: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """For each row u of ``U`` (B, K): ``argmin_v v^T G v`` subject to ``v >= u`` (elementwise).

    This is the projection of ``J^T u`` onto the dual cone of the rows of J (``G = J J^T``) in
    weight space (Senushkin et al. / Quinton and Rey, "Jacobian Descent", Prop. 1). KKT on the free
    set F: ``(G v)_F = 0``, ``v_A = u_A`` on the active set A.
    """
    K = G.shape[-1]
    if K > ENUMERATION_MAX_K:  # v = u + z, z >= 0: v^T G v = z^T G z + 2 (G u)^T z + const
        return U + nonneg_qp_rows(G, U @ G, ridge=RIDGE)
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
    if K > ENUMERATION_MAX_K:
        return _min_norm_wolfe(G)
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


def _min_norm_wolfe(G: torch.Tensor) -> torch.Tensor:
    """NOTE: [Wolfe's min-norm point]: MGDA's min-norm point for K > ENUMERATION_MAX_K by Wolfe's algorithm
    (Math. Programming 11, 1976), the nearest point to 0 in the hull of the gradients, with masks. It keeps a
    "corral" S and a point x in its hull. A step solves the affine problem on S (``(G a)_S = lambda``, ``a = 0``
    off S, ``sum a = 1``: one (K+1) x (K+1) system). When ``a >= 0`` (a major step) x = a, and the gradient i
    with the smallest ``<g_i, J^T x> = (G x)_i`` joins S if it is below ``x^T G x`` (beyond the Gram matrix's
    rounding), else x is the optimum. Otherwise (a minor step) x moves toward a until a weight reaches 0, and
    that gradient leaves S. Each step lowers the distance or shrinks S, so it ends: measured at most 1.4 K
    steps (480 matrices at K = 9..64, the degenerate kinds included); ``2 K + 16`` are run, a fixed amount of
    work. Block pivoting on the simplex's KKT conditions cycled
    here on nearly singular Grams (0 nearly in the hull of a rank-deficient set, where the min-norm value is the
    regularization): Wolfe's corral stays affinely independent, so every system it solves has a solution."""
    K = G.shape[-1]
    dt, dev = G.dtype, G.device
    identity = eye(K, dt, dev)
    index = constant(("arange", K, str(dev)), lambda: torch.arange(K, device=dev))
    inf = torch.full((K,), float("inf"), dtype=dt, device=dev)
    tolerance = 64 * torch.finfo(dt).eps * G.diagonal().max()
    corral = index == G.diagonal().argmin()  # the nearest vertex
    x = corral.to(dt)
    done = torch.zeros((), dtype=torch.bool, device=dev)
    rhs = torch.cat((torch.zeros(K, dtype=dt, device=dev), torch.ones(1, dtype=dt, device=dev)))[:, None]
    for _ in range(2 * K + 16):
        M = torch.zeros((K + 1, K + 1), dtype=dt, device=dev)
        M[:K, :K] = torch.where(corral[:, None] & corral[None, :], G, identity)
        M[:K, K] = torch.where(corral, -1.0, 0.0).to(dt)
        M[K, :K] = corral.to(dt)
        a = solve_batch(M, rhs)[:K, 0]
        major = ~(corral & (a < 0)).any() & torch.isfinite(a).all()
        # major step: x = a; the most violated gradient joins, or x is optimal
        Ga = G @ a
        outside = torch.where(corral, inf, Ga)
        joins = outside.min() < a @ Ga - tolerance
        optimal = major & ~joins
        corral_major = corral | (joins & (index == outside.argmin()))
        # minor step: toward a until the first weight (of those a takes below 0) reaches 0
        shrinking = corral & (a < 0)
        ratio = torch.where(shrinking, x / torch.where(shrinking, x - a, 1.0), inf)
        theta = ratio.min()
        leaves = index == ratio.argmin()
        x_minor = torch.where(leaves, 0.0, x + theta * (a - x)).clamp_min(0.0)
        corral_minor = corral & ~leaves & (x_minor > 0)
        x = torch.where(done, x, torch.where(major, a, x_minor))
        corral = torch.where(done, corral, torch.where(major, corral_major, corral_minor))
        done = done | optimal
    return x / x.sum()


def cagrad_simplex(G: torch.Tensor, b: torch.Tensor, radius: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
    """``argmin_w b^T w + radius * sqrt(w^T G w)`` over the simplex (CAGrad's dual problem).

    On a support S, with ``a = G_SS^-1 1`` and ``d = G_SS^-1 b_S``, stationarity gives
    ``w_S = (lambda a - d) / sqrt(D)``, ``lambda = (B + sqrt(D)) / A`` where ``A = 1^T a``,
    ``B = 1^T d``, ``C = b_S^T d`` and ``D = B^2 - A (C - radius^2)`` (D <= 0: no stationary point
    on S). ``radius > 0`` is required (the caller handles c = 0).
    """
    K = G.shape[-1]
    dt, dev = G.dtype, G.device
    if K > ENUMERATION_MAX_K:
        # the path on G + noise I / 10: rounding leaves a rank-deficient float32 G indefinite (eigenvalues to -2e-9
        # of the trace at K = 11, noise 1.3e-6), and the path's solves on such a G stalled at the kink; the candidates
        # are weighed on G itself. (noise I itself moved c = 1 updates by 1e-3 of |g|^2 at K = 12..20; noise / 10 and
        # noise / 100 by nothing measurable)
        path_G = G + 0.1 * noise * eye(K, dt, dev)
        w_m = min_norm_simplex(path_G)
        return _choose_cagrad(G, b, radius, noise, _cagrad_homotopy(path_G, b, radius, w_m, noise)[None], w_m)
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
    # w^T G w is within it (a kink, up to rounding), it wins the ties _choose_cagrad defines. (Subtracting the
    # noise from every candidate's w^T G w instead undercounted the penalty of candidates just above it,
    # which then won on rank-deficient float32 Grams, with conflicting updates.)
    return _choose_cagrad(G, b, radius, noise, W)


def _cagrad_homotopy(G: torch.Tensor, b: torch.Tensor, radius: torch.Tensor, w_m: torch.Tensor, noise: float) -> torch.Tensor:
    """NOTE: [CAGrad's homotopy]: CAGrad's simplex problem for K > ENUMERATION_MAX_K, exactly, by following a path.

    The optimum w* is also the solution of the simplex QP ``min b^T w + w^T G w / (2 mu)`` at ``mu* = s(w*) / radius``
    (s(w) = sqrt(w^T G w): both problems have the same KKT conditions then). On a fixed support S the QP's
    solution is affine in mu, ``w(mu) = w0 + mu delta`` (w0 = a / A, delta = (B / A) a - d with a = G_SS^-1 1,
    d = G_SS^-1 b_S, A = 1^T a, B = 1^T d), and so are the scaled multipliers off S, ``h(mu) = mu b + G w(mu) -
    (1 + mu B) / A`` (>= 0 off S). From mu = 0 (the min-norm point, MGDA's support) the path is followed
    segment by segment: a segment ends where a weight on S reaches 0 (it leaves) or a multiplier off S reaches
    0 (it enters); on each segment ``s(w(mu))^2 = radius^2 mu^2`` is a quadratic in mu, and its first root on
    the segment is the optimum. ``2 K + 8`` segments, each one solve of G_SS; a fixed amount of work, the
    stop a mask. s(w(0)) > 0 (G positive definite) and s stays bounded while radius * mu grows, so the
    root exists."""
    K = G.shape[-1]
    dt, dev = G.dtype, G.device
    index = constant(("arange", K, str(dev)), lambda: torch.arange(K, device=dev))
    identity = eye(K, dt, dev)
    inf = torch.full((K,), float("inf"), dtype=dt, device=dev)
    support = w_m > 0  # w_m: the min-norm point (mu = 0)
    mu = torch.zeros((), dtype=dt, device=dev)
    result, done = w_m, torch.zeros((), dtype=torch.bool, device=dev)
    last = torch.full((), -1, device=dev)  # the variable that changed at this mu: not a breakpoint again here
    rhs_ones = torch.ones(K, dtype=dt, device=dev)
    for _ in range(2 * K + 8):
        M = torch.where(support[:, None] & support[None, :], G, identity)
        X = solve_batch(M, torch.stack((torch.where(support, rhs_ones, 0.0), torch.where(support, b, 0.0)), dim=-1))
        a, d = X[:, 0], X[:, 1]
        A, B = a.sum(), d.sum()
        w0, delta = a / A, (B / A) * a - d
        Gw0, Gdelta = G @ w0, G @ delta
        h0, h1 = Gw0 - 1.0 / A, b + Gdelta - B / A
        q0, q1, q2 = w0 @ Gw0, w0 @ Gdelta, delta @ Gdelta - radius * radius
        # first root of q0 + 2 q1 m + q2 m^2 at or after mu (the quadratic is > 0 before the crossing)
        disc_sq = q1 * q1 - q0 * q2
        disc = disc_sq.clamp_min(0.0).sqrt()
        roots = torch.stack(((-q1 - disc) / q2, (-q1 + disc) / q2))
        # a root where s = radius * m is within the rounding of w^T G w is no crossing: 0 in the hull (up to
        # rounding) makes s(w(0)) ~ 0 and the rounding a spurious root next to the kink, which _choose_cagrad
        # weighs as its own candidate (w_m); the optimum away from it is a later root
        real = torch.isfinite(roots) & (roots >= mu) & (disc_sq >= 0) & ((radius * roots) ** 2 > noise)
        roots = torch.where(real, roots, torch.full_like(roots, float("inf")))
        linear_root = -q0 / (2 * q1)  # q2 == 0
        linear_root = torch.where((q1 < 0) & ((radius * linear_root) ** 2 > noise), linear_root, torch.full_like(q1, float("inf")))
        root = torch.where(q2 == 0, linear_root, roots.min())
        leave = torch.where(support & (delta < 0), -w0 / torch.where(delta < 0, delta, -1.0), inf)
        enter = torch.where(~support & (h1 < 0), -h0 / torch.where(h1 < 0, h1, -1.0), inf)
        # a breakpoint behind mu is a weight already below 0 or a multiplier below 0 (a twin of the variable that
        # just changed, by rounding): it changes now; the variable that just changed does not change back here
        breaks = torch.where(index == last, inf, torch.minimum(leave, enter).clamp_min(mu))
        step_end = breaks.min()
        found = ~done & (root <= step_end)
        result = torch.where(found, w0 + root * delta, result)
        done = done | found
        which = breaks.argmin()
        move = ~done & torch.isfinite(step_end)
        support = torch.where(move & (index == which), ~support, support)
        last = torch.where(move, which, last)
        mu = torch.where(move, step_end, mu)
    return result.clamp_min(0.0) / result.clamp_min(0.0).sum()


def _choose_cagrad(G, b, radius, noise, W, w_m=None):
    """The candidate with the smallest CAGrad objective, with the min-norm point ``w_m`` (the kink) first among them."""
    W = torch.cat(((min_norm_simplex(G) if w_m is None else w_m)[None], W))
    quad = torch.einsum("si,ij,sj->s", W, G, W).clamp_min(0.0)
    objective = W @ b + radius * quad.sqrt()
    # A candidate's objective is known to about radius * |sqrt(quad +- noise) - sqrt(quad)| <= radius * noise /
    # sqrt(max(quad, noise)); the kink wins a tie within that: wide for a candidate near the kink (its J^T w is
    # rounding debris that the weights would lift to full length), narrow for one far above the noise. (A fixed
    # window radius * sqrt(noise) let the kink win against optima over 100 times the noise: with 0 in the hull
    # of float32 gradients, a zero update where the exact one has length >= (1 - c) |g0|; class 14 of issue #29.)
    margin = radius * noise / quad.clamp_min(noise).sqrt()
    best = torch.where(torch.isnan(objective), torch.full_like(objective, float("inf")), objective + margin).min()
    first = torch.arange(W.shape[0], device=W.device) == 0
    kink = (quad[0] <= noise) & (objective[0] <= best)
    objective = torch.where(first & kink, torch.full_like(objective, -float("inf")), objective)
    return argmin_candidates(W, objective)


def nonneg_qp(Q: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``argmin_{mu >= 0} mu^T Q mu / 2 - b^T mu`` for a positive definite Q (PCD's dual problem).

    KKT on the free set F: ``(Q mu)_F = b_F``, ``mu = 0`` off F; candidates clamped to ``mu >= 0``.
    """
    K = Q.shape[-1]
    if K > ENUMERATION_MAX_K:
        return nonneg_qp_rows(Q, -b[None])[0]
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
