"""The weight rules of docs/METHOD.md: names, checks, and the on-device float32 solver.

Every method maps the 2x2 Gram matrix ``G = [[n1^2, c], [c, n2^2]]`` of the two gradient
sets to weights ``(w1, w2)`` for the update ``w1*g1 + w2*g2``:

=================  ================================================================
``"sum"``          ``(1, 1)``: plain summation, no harmonization.
``"gh"``           GH, obtuse to acute: ``w1 = 1 - c/n1^2``, ``w2 = 1 - c/n2^2`` (PCGrad for two tasks).
``"gh++"``         GH++, obtuse to 90 degrees, geometric form:
                   ``w1 = (cos g + (n2/n1) sin g) / sin t``, ``w2 = (cos b + (n1/n2) sin b) / sin t``
                   with ``b = kappa (t - 90deg)``, ``g = t - 90deg - b``.
``"gh++released"`` The authors' released weights: ``w1 = 1 + 2 sin(b/2)``,
                   ``w2 = 1 + 2 sin((b + 90deg - t)/2)``. For reproducing the paper only.
=================  ================================================================

Rules shared by all methods (docs/METHOD.md R2, R5, R8-R10; each one tested):

* ``c >= 0`` (no conflict), a zero gradient, or any non-finite entry of ``G``: ``(1, 1)``.
  Non-finite gradients then stay non-finite in the update, so ``GradScaler`` skips the step.
* The cosine is clamped to ``[-1, 1]`` before ``acos``.
* GH++ near 180 degrees: when ``sin t < GHPP_MIN_SIN`` the plane of the two gradients is set
  by rounding noise in a float32 Gram matrix and ``1/sin t`` blows up; there GH++ uses the GH
  weights (which give an update of ~0 for exactly antiparallel gradients). Weights stay finite.
"""
from __future__ import annotations

import math

import torch

from ..ops.constants import GHPP_MIN_SIN, METHODS

METHOD_CODES = {name: i for i, name in enumerate(METHODS)}
# GHPP_MIN_SIN: a float32 Gram matrix over many elements carries a relative error near 1e-6, so
# sin^2(theta) must stay well above that for the GH++ weights (which scale like 1/sin) to mean anything.


def check_method(method: str, kappa: float) -> int:
    """Validate ``method``/``kappa`` and return the method's integer code."""
    if method not in METHOD_CODES:
        raise ValueError(f"method must be one of {', '.join(repr(m) for m in METHODS)}; got {method!r}")
    if not isinstance(kappa, (int, float)) or isinstance(kappa, bool) or not (0.0 <= float(kappa) <= 1.0):
        raise ValueError(f"kappa must be a number in [0, 1]; got {kappa!r}")
    return METHOD_CODES[method]


def solve_weights_torch(G: torch.Tensor, method: str, kappa: float) -> torch.Tensor:
    """Weights ``(w1, w2)`` as a tensor on ``G``'s device; no host synchronization.

    Pure tensor code (``torch.where``/``clamp``, no ``.item()``), so it also traces under
    ``torch.compile``. ``G`` is the 2x2 Gram matrix; computed in float64 when ``G`` is float64
    (float64 gradients), else in float32.
    """
    dtype = torch.float64 if G.dtype == torch.float64 else torch.float32
    G = G.to(dtype)
    if method == "sum":
        return torch.ones(2, dtype=dtype, device=G.device)
    # As few small ops as the rule allows (each costs a few microseconds of host time on every step).
    c = G[0, 1]
    conflict = (c < 0) & torch.isfinite(G).all()
    # Guards only matter for entries that torch.where discards; they keep NaN out of both branches.
    norms_sq = torch.where(G.diagonal() > 0, G.diagonal(), 1.0)  # (n1^2, n2^2)
    gh = 1 - c / norms_sq
    if method == "gh":
        w = gh
    else:
        n1, n2 = norms_sq.sqrt().unbind()
        cos = (c / (n1 * n2)).clamp(-1.0, 1.0)
        excess = torch.acos(cos) - math.pi / 2  # theta - 90deg, > 0 on conflict
        beta = kappa * excess
        if method == "gh++":
            gamma = excess - beta
            sin = (1 - cos * cos).clamp_min(0.0).sqrt()
            stable = sin >= GHPP_MIN_SIN
            sin_safe = torch.where(stable, sin, 1.0)
            ghpp = torch.stack(
                (
                    (torch.cos(gamma) + (n2 / n1) * torch.sin(gamma)) / sin_safe,
                    (torch.cos(beta) + (n1 / n2) * torch.sin(beta)) / sin_safe,
                )
            )
            w = torch.where(stable, ghpp, gh)
        else:  # gh++released
            w = torch.stack((1 + 2 * torch.sin(beta / 2), 1 + 2 * torch.sin((beta - excess) / 2)))
    return torch.where(conflict, w, 1.0)
