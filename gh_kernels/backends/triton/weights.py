"""Triton weights kernel (the ``triton`` overload of ``gh_kernels::weights``): docs/METHOD.md's rules from the 2x2 Gram matrix in one tiny launch.

Mirrors ``methods.solve_weights_torch`` and ``csrc/include/gh_weights.h``; tests compare all
three with the float64 reference. ``acos`` is computed from a float32 arcsine polynomial
(Cephes ``asinf``), since Triton's core language has no arc-cosine.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ...ops.constants import GHPP_MIN_SIN
from ...weighting.gh import check_method, solve_weights_torch

_PI = math.pi


@triton.jit
def _asin_small(z):
    """asin(z) for |z| <= 0.5 (Cephes asinf polynomial, ~1 ulp)."""
    z2 = z * z
    p = ((((4.2163199048e-2 * z2 + 2.4181311049e-2) * z2 + 4.5470025998e-2) * z2 + 7.4953002686e-2) * z2
         + 1.6666752422e-1) * z2 * z
    return z + p


@triton.jit
def _acos(x):
    a = tl.abs(x)
    big = a > 0.5
    t = tl.where(big, tl.sqrt(tl.maximum((1.0 - a) * 0.5, 0.0)), a)
    s = _asin_small(t)
    r = tl.where(big, 2.0 * s, 1.5707963267948966 - s)  # acos(|x|)
    return tl.where(x < 0, 3.141592653589793 - r, r)


@triton.jit
def _weights_kernel(G, W, kappa, METHOD: tl.constexpr, MIN_SIN: tl.constexpr):
    n1sq = tl.load(G)
    c = tl.load(G + 1)
    n2sq = tl.load(G + 3)
    big = 3.4028234663852886e38  # float32 max: |x| <= big is false for inf and NaN
    finite = (tl.abs(n1sq) <= big) & (tl.abs(c) <= big) & (tl.abs(n2sq) <= big)
    conflict = finite & (c < 0.0)
    n1s = tl.where(n1sq > 0.0, n1sq, 1.0)
    n2s = tl.where(n2sq > 0.0, n2sq, 1.0)
    w1 = 1.0 - c / n1s
    w2 = 1.0 - c / n2s
    if METHOD == 0:
        w1 = 1.0 + 0.0 * n1sq
        w2 = 1.0 + 0.0 * n1sq
    if METHOD >= 2:
        n1 = tl.sqrt(n1s)
        n2 = tl.sqrt(n2s)
        cs = tl.minimum(tl.maximum(c / (n1 * n2), -1.0), 1.0)
        theta = _acos(cs)
        excess = theta - 1.5707963267948966
        beta = kappa * excess
        if METHOD == 2:
            gamma = excess - beta
            s = tl.sqrt(tl.maximum(1.0 - cs * cs, 0.0))
            stable = s >= MIN_SIN
            s_safe = tl.where(stable, s, 1.0)
            w1 = tl.where(stable, (tl.cos(gamma) + (n2 / n1) * tl.sin(gamma)) / s_safe, w1)
            w2 = tl.where(stable, (tl.cos(beta) + (n1 / n2) * tl.sin(beta)) / s_safe, w2)
        else:
            w1 = 1.0 + 2.0 * tl.sin(beta * 0.5)
            w2 = 1.0 + 2.0 * tl.sin((beta - excess) * 0.5)
    tl.store(W, tl.where(conflict, w1, 1.0))
    tl.store(W + 1, tl.where(conflict, w2, 1.0))


def weights(G: torch.Tensor, method: str, kappa: float) -> torch.Tensor:
    """(2,) float32 weights (op ``gh_kernels::weights``) with one Triton program.

    A float64 Gram matrix (float64 gradients) gets float64 weights from the on-device torch solver
    (``methods.solve_weights_torch``): the arc-cosine here is a float32 polynomial."""
    if G.dtype == torch.float64:
        return solve_weights_torch(G, method, kappa)
    code = check_method(method, kappa)
    G = G.to(torch.float32).contiguous()
    W = torch.empty(2, dtype=torch.float32, device=G.device)
    _weights_kernel[(1,)](G, W, float(kappa), METHOD=code, MIN_SIN=GHPP_MIN_SIN, num_warps=1)
    return W
