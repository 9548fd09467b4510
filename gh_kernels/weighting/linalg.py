"""Small dense linear algebra on a K x K Gram matrix, on its device, with a fixed amount of work and
no host synchronization (no ``.item()``, no data-dependent Python branches, no ``torch.linalg``
call that checks its result on the host).

* :func:`normalize` / :func:`regularize`: torchjd's Gram preprocessing (trace normalization with an
  absolute threshold, then ``eps * I``).
* :func:`solve_batch`: many K x K systems at once with ``torch.linalg.solve_ex`` (no error check,
  so no sync; a singular system yields inf/nan, which the callers treat as "not a candidate").
* :func:`symeig`: symmetric eigendecomposition. CPU tensors use LAPACK (``torch.linalg.eigh``: a
  CPU result needs no host sync); other devices use :func:`jacobi_eigh`, a fixed number of sweeps of
  parallel (round-robin) Jacobi rotations, because ``torch.linalg.eigh`` on CUDA checks its error
  code with a host sync. Both are tested against each other.
* :func:`pinv_sym`: pseudo-inverse of a symmetric PSD matrix from :func:`symeig`, dropping
  eigenvalues at or below ``max_eigenvalue * K * eps(dtype)`` (``torch.linalg.pinv``'s default rule).

Everything runs in float64 (the callers convert): K <= 64 in the tests, so the cost is launches, not flops.
"""
from __future__ import annotations

import functools
from typing import Callable, List, Optional, Tuple

import torch

#: Jacobi sweeps for :func:`jacobi_eigh`: cyclic Jacobi converges quadratically; for K <= 8 in float64
#: 6 sweeps already reach rounding on the matrices of the tests; 10 leave a margin. Larger K needs more
#: (measured at cond 1e10-1e12: at K = 40 and 64, 10 sweeps leave 1e-7 and 1e-9 of the matrix, 15 leave
#: 1e-12, 16 reach rounding): 18 above 8.
JACOBI_SWEEPS = 10
JACOBI_SWEEPS_LARGE = 18


def normalize(G: torch.Tensor, eps: float) -> torch.Tensor:
    """G divided by its trace; zeros when the trace is below ``eps`` (torchjd's ``normalize``)."""
    trace = G.diagonal().sum()
    safe = torch.where(trace < eps, torch.ones_like(trace), trace)
    return torch.where(trace < eps, torch.zeros_like(G), G / safe)


# NOTE: [Device constants]: small index and identity tensors are built once per (what, device) and
# reused (``torch.eye`` alone costs ~10 us a call on CPU). Never while tracing or under a fake mode:
# a tensor made there is a FakeTensor of that one trace, and reusing it elsewhere fails ("Mixing fake
# modes") -- there they are built fresh, which a trace records once anyway.
_constants: dict = {}


def tracing() -> bool:
    """Whether tensors here are traced (torch.compile) or fake: no values to read, nothing to cache."""
    return torch.compiler.is_compiling() or torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None


def cached(cache: dict, key, build: Callable[[], object]):
    """``build()``, kept in ``cache`` under ``key``; built fresh while tracing (NOTE: [Device constants]).
    Also what keeps an option tensor's device copy (made once, not every step: a host-to-device copy
    waits for the GPU). Read-only: callers must not write into it."""
    if tracing():
        return build()
    if key not in cache:
        cache[key] = build()
    return cache[key]


def constant(key, build: Callable[[], object]):
    """``build()``, cached under ``key`` in the module's cache (NOTE: [Device constants])."""
    return cached(_constants, key, build)


def eye(K: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The K x K identity (NOTE: [Device constants])."""
    return constant(("eye", K, dtype, str(device)), lambda: torch.eye(K, dtype=dtype, device=device))


def regularize(G: torch.Tensor, eps: float) -> torch.Tensor:
    """``G + eps * I``: positive definite for a PSD ``G`` (torchjd's ``regularize``)."""
    return G + eps * eye(G.shape[-1], G.dtype, G.device)


def solve_batch(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A^-1 B`` for a batch of systems; no host sync (singular systems give inf/nan)."""
    return torch.linalg.solve_ex(A, B, check_errors=False)[0]


def subsets(K: int, device: torch.device) -> torch.Tensor:
    """All 2^K subsets of range(K) as a (2^K, K) bool mask on ``device``; row s has bit k set when k is in s."""
    def build():
        bits = torch.arange(1 << K)[:, None]
        return ((bits >> torch.arange(K)[None, :]) & 1).bool().to(device)
    return constant(("subsets", K, str(device)), build)


@functools.lru_cache(maxsize=None)
def _round_robin(n: int) -> List[Tuple[List[int], List[int]]]:
    """n - 1 rounds of n/2 disjoint pairs (p, q), p < q, covering every pair once (circle method)."""
    order = list(range(n))
    rounds = []
    for _ in range(n - 1):
        pairs = [tuple(sorted((order[k], order[n - 1 - k]))) for k in range(n // 2)]
        rounds.append(([p for p, _ in pairs], [q for _, q in pairs]))
        order = [order[0], order[-1]] + order[1:-1]
    return rounds


def _rounds_on(n: int, device: torch.device):
    """:func:`_round_robin`'s index lists as tensors on ``device`` (NOTE: [Device constants])."""
    return constant(("rounds", n, str(device)), lambda: [(torch.tensor(p, device=device), torch.tensor(q, device=device))
                                                         for p, q in _round_robin(n)] if n > 1 else [])


def jacobi_eigh(A: torch.Tensor, sweeps: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors (columns) of a symmetric K x K matrix.

    Parallel cyclic Jacobi: each round rotates K/2 disjoint (p, q) planes at once (one K x K
    orthogonal matrix, two matmuls), ``K - 1`` rounds per sweep, ``sweeps`` sweeps: a fixed amount of
    device work, no host sync. Odd K is padded with a decoupled zero row and column.
    """
    K = A.shape[-1]
    if sweeps is None:
        sweeps = JACOBI_SWEEPS if K <= 8 else JACOBI_SWEEPS_LARGE
    n = K + (K % 2)
    if n != K:
        A = torch.nn.functional.pad(A, (0, 1, 0, 1))
    identity = eye(n, A.dtype, A.device)
    V = identity
    rounds = _rounds_on(n, A.device)
    for _ in range(sweeps):
        for p, q in rounds:
            app, aqq, apq = A[p, p], A[q, q], A[p, q]
            d = aqq - app
            sign = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
            # tan(2 theta) = 2 apq / d zeroes A[p, q]; the smallest such angle (|theta| <= pi/4) keeps
            # converged planes (apq = 0) still, whatever the order of app and aqq.
            theta = 0.5 * torch.atan2(2 * apq * sign, d.abs())
            c, s = torch.cos(theta), torch.sin(theta)
            J = identity.clone()
            J[p, p] = c
            J[q, q] = c
            J[p, q] = s
            J[q, p] = -s
            A = J.T @ A @ J
            V = V @ J
    evals = A.diagonal()[:K]
    V = V[:K, :K]
    order = torch.argsort(evals)
    return evals[order], V[:, order]


def symeig(A: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric matrix, with no host sync on any device."""
    A = 0.5 * (A + A.T)
    if A.device.type == "cpu":
        return torch.linalg.eigh(A)
    return jacobi_eigh(A)


def pinv_sym(A: torch.Tensor, eps: float) -> torch.Tensor:
    """Pseudo-inverse of a symmetric PSD matrix: eigenvalues ``<= max * K * eps`` count as zero."""
    evals, V = symeig(A)
    keep = evals > evals.max() * A.shape[-1] * eps
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    return (V * inv) @ V.T


def argmin_candidates(candidates: torch.Tensor, objective: torch.Tensor) -> torch.Tensor:
    """The candidate with the smallest objective along dim -2 (``candidates``: (..., S, K); ``objective``:
    (..., S)); nan objectives never win."""
    objective = torch.where(torch.isnan(objective), torch.full_like(objective, float("inf")), objective)
    idx = objective.argmin(dim=-1, keepdim=True)[..., None].expand(*candidates.shape[:-2], 1, candidates.shape[-1])
    return candidates.gather(-2, idx).squeeze(-2)


__all__ = ["eye", "normalize", "regularize", "solve_batch", "subsets", "jacobi_eigh", "symeig", "pinv_sym",
           "argmin_candidates"]
