"""The properties torchjd's aggregator tests check, written once (in the style of torchjd's
``_property_testers.py``) and applied by tests/test_method_properties.py to every method they hold for.

Each property takes ``update(J) -> d`` (the method's update ``w(J J^T) @ J`` for a K x N Jacobian) and a
Jacobian drawn by :func:`sample`; matrices are drawn like torchjd's samplers: full rank, rank-deficient,
and with 0 strictly inside the convex hull of the rows.
"""
import torch

KINDS = ("full_rank", "rank_deficient", "zero_in_hull")


def sample(kind: str, K: int, gen: torch.Generator, dtype=torch.float64, N: int = 16) -> torch.Tensor:
    if kind == "full_rank":
        J = torch.randn(K, max(N, K + 2), generator=gen, dtype=torch.float64)
    elif kind == "rank_deficient":
        rank = max(1, K // 2)
        J = torch.randn(K, rank, generator=gen, dtype=torch.float64) @ torch.randn(rank, N, generator=gen,
                                                                                    dtype=torch.float64)
    else:
        J0 = torch.randn(K - 1, N, generator=gen, dtype=torch.float64)
        lam = torch.rand(K, generator=gen, dtype=torch.float64) + 0.1
        J = torch.cat([J0, (-(lam[:-1, None] * J0).sum(0) / lam[-1])[None]])
    return J.to(dtype)


def _scale(J):
    return float(J.double().norm(dim=1).max())


def tol(J) -> float:
    """Absolute tolerance on an update, relative to the largest gradient: rounding of the Gram's dtype."""
    return (1e-3 if J.dtype == torch.float32 else 1e-7) * max(_scale(J), 1e-30)


def expected_structure(update, J):
    d = update(J)
    assert d.shape == (J.shape[1],) and torch.isfinite(d).all()


def non_conflicting(update, J, relative=None):
    """<g_i, d> >= 0 for every row: the update conflicts with no task (to ``tol(J)``, or ``relative`` of the largest
    |g|^2 where a method's own regularization moves the update further)."""
    d = update(J).double()
    slack = tol(J) * _scale(J) if relative is None else relative * _scale(J) ** 2
    assert float((J.double() @ d).min()) >= -slack, float((J.double() @ d).min())


def permutation_invariant(update, J, gen):
    perm = torch.randperm(J.shape[0], generator=gen)
    a, b = update(J).double(), update(J[perm]).double()
    assert float((a - b).norm()) <= tol(J), float((a - b).norm())


def linear_under_scaling(update, J):
    """A(t J) = t A(J) for t > 0."""
    for t in (0.1, 7.0):
        a, b = update(t * J).double(), t * update(J).double()
        assert float((a - b).norm()) <= t * tol(J), (t, float((a - b).norm()))


def strongly_stationary(update, J):
    """0 in the hull of the rows gives the update 0 (only on zero_in_hull samples)."""
    d = update(J).double()
    assert float(d.norm()) <= 10 * tol(J), float(d.norm())


def mgda_kkt(weights, J):
    """The KKT conditions of min_{w in simplex} |J^T w|^2: w >= 0, sum 1, (G w)_i >= w^T G w for all i, with
    equality where w_i > 0."""
    G = (J.double() @ J.double().T)
    G = G / G.trace()
    w = weights(J).double()
    assert float(w.min()) >= -1e-9 and abs(float(w.sum()) - 1) <= 1e-6
    Gw, value = G @ w, float(w @ G @ w)
    slack = 1e-3 if J.dtype == torch.float32 else 1e-7
    assert float(Gw.min()) >= value - slack
    active = (Gw[w > 1e-6] - value).abs()
    assert float(active.max()) <= slack if active.numel() else True
