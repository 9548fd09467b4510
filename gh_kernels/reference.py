"""Float64 reference implementations: plain, obviously-correct code for tests and benchmarks.

These flatten and upcast on purpose (clarity over speed). They are the yardstick every
backend is measured against; nothing on a hot path calls them.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from .weighting.gh import GHPP_MIN_SIN, check_method


def _flat64(s: Sequence[Optional[torch.Tensor]], like: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    parts = []
    for t, ref in zip(s, like):
        if t is not None:
            parts.append(t.detach().reshape(-1).to(torch.float64).cpu())
        elif ref is not None:
            parts.append(torch.zeros(ref.numel(), dtype=torch.float64))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def _like(sets):
    """For each parameter, any non-None tensor (gives the size of a None entry)."""
    return [next((s[p] for s in sets if s[p] is not None), None) for p in range(len(sets[0]))]


def gram_reference(sets: Sequence[Sequence[Optional[torch.Tensor]]]) -> torch.Tensor:
    """``G[i, j] = <set_i, set_j>`` in float64 on the CPU."""
    like = _like(sets)
    flats = [_flat64(s, like) for s in sets]
    K = len(flats)
    G = torch.zeros(K, K, dtype=torch.float64)
    for i in range(K):
        for j in range(K):
            G[i, j] = torch.dot(flats[i], flats[j])
    return G


def weights_reference(G, method: str = "gh", kappa: float = 0.5) -> torch.Tensor:
    """docs/METHOD.md's closed forms, evaluated with Python floats (float64). Returns float64 (2,)."""
    check_method(method, kappa)
    G = torch.as_tensor(G, dtype=torch.float64).cpu()
    n1sq, c, n2sq = float(G[0, 0]), float(G[0, 1]), float(G[1, 1])
    if method == "sum" or not all(math.isfinite(v) for v in G.flatten().tolist()) or not c < 0:
        return torch.ones(2, dtype=torch.float64)
    gh = (1 - c / n1sq, 1 - c / n2sq)
    if method == "gh":
        return torch.tensor(gh, dtype=torch.float64)
    n1, n2 = math.sqrt(n1sq), math.sqrt(n2sq)
    cos = max(-1.0, min(1.0, c / (n1 * n2)))
    theta = math.acos(cos)
    beta = kappa * (theta - math.pi / 2)
    if method == "gh++released":
        theta_deg, beta_deg = math.degrees(theta), kappa * (math.degrees(theta) - 90.0)
        w1 = 1 + 2 * math.sin(math.radians(beta_deg) / 2)
        w2 = 1 + 2 * math.sin(math.radians(beta_deg + 90.0 - theta_deg) / 2)
        return torch.tensor((w1, w2), dtype=torch.float64)
    gamma = theta - math.pi / 2 - beta
    sin = math.sin(theta)
    if sin < GHPP_MIN_SIN:
        return torch.tensor(gh, dtype=torch.float64)
    w1 = (math.cos(gamma) + (n2 / n1) * math.sin(gamma)) / sin
    w2 = (math.cos(beta) + (n1 / n2) * math.sin(beta)) / sin
    return torch.tensor((w1, w2), dtype=torch.float64)


def combine_reference(w, sets, out_init=None) -> List[Optional[torch.Tensor]]:
    """``sum_k w[k] * set_k[p]`` (+ ``out_init[p]``) per parameter, float64 on the CPU."""
    w = [float(x) for x in torch.as_tensor(w, dtype=torch.float64).flatten()]
    like = _like(sets)
    result = []
    for p, ref in enumerate(like):
        if ref is None:
            result.append(None if out_init is None else out_init[p].detach().double().cpu())
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        if out_init is not None:
            acc += out_init[p].detach().double().cpu()
        for k, s in enumerate(sets):
            if s[p] is not None:
                acc += w[k] * s[p].detach().double().cpu()
        result.append(acc)
    return result


def released_recipe_backward(model: torch.nn.Module, chosen, loss1: torch.Tensor, loss2: torch.Tensor,
                             method: str = "gh", kappa: float = 0.5, trade_off: float = 1.0):
    """The authors' released step written out, as the reference and baseline for ``Harmonizer``.

    ``loss1.backward``, flatten the ``chosen`` parameters' gradients with ``cat``, zero, the same
    for ``loss2``, the Gram matrix on the host (a sync), the weights, zero, and a third backward
    of ``trade_off*w1*loss1 + w2*loss2`` into every parameter of ``model``. The released code drops
    parameters whose ``.grad`` is None, which misaligns the two flat vectors when one loss does not
    reach a parameter; zeros keep them aligned at the same cost. Returns ``([w1, w2], cos)``.
    """
    chosen = list(chosen)

    def flat():
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in chosen])

    loss1.backward(retain_graph=True)
    f1 = flat()
    model.zero_grad(set_to_none=True)
    loss2.backward(retain_graph=True)
    f2 = flat()
    model.zero_grad(set_to_none=True)
    G = torch.tensor([[f1 @ f1, f1 @ f2], [f1 @ f2, f2 @ f2]], dtype=torch.float64)  # host sync
    w1, w2 = [float(v) for v in weights_reference(G, method, kappa)]
    (trade_off * w1 * loss1 + w2 * loss2).backward()
    norm = float(G[0, 0] * G[1, 1])
    return [w1, w2], (float(G[0, 1]) / math.sqrt(norm) if norm > 0 else 0.0)
