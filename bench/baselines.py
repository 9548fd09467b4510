"""The baselines users compare us with, written from their descriptions (our own code).

Each function harmonizes two gradient lists and leaves the result in per-parameter tensors,
like our fused path, so the timings compare the same job. Bytes moved (N = total elements,
counted in elements of the gradient dtype; ours is 5N: read g1, g2 for the Gram pass, read
them again and write the result):

* ``released_recipe``: cat g1 (2N), cat g2 (2N), three dots (4N), host sync on ``c < 0``,
  ``w1*f1`` (2N), ``w2*f2`` (2N), add (3N), copy back into the parameters' tensors (2N): 17N,
  plus three flat buffers of N allocated.
* ``pcgrad_style``: per task clone every grad (2N) and a same-size float mask (N write),
  flatten both with cat (4N), deep-copy the list (4N), project with a host branch per pair
  (dots 4N, update 6N), boolean-mask indexing and merge (~8N), unflatten and copy back (2N):
  about 31N, and about 8 flat buffers of N.
* ``torch_best_effort``: our pure-torch backend (per-parameter dots, foreach combine): 5N
  (+ a per-parameter upcast for half types).
"""
from __future__ import annotations

import copy
import random
from typing import List

import torch

import gh_kernels
from gh_kernels.reference import weights_reference


def _released_weights(c: float, n1sq: float, n2sq: float, method: str, kappa: float):
    G = torch.tensor([[n1sq, c], [c, n2sq]], dtype=torch.float64)
    return [float(x) for x in weights_reference(G, method, kappa)]


def released_recipe(g1: List[torch.Tensor], g2: List[torch.Tensor], out: List[torch.Tensor], method="gh", kappa=0.5):
    """Flatten with cat, three dots, a host branch, a flat combine, copy back into ``out``."""
    f1 = torch.cat([g.reshape(-1) for g in g1])
    f2 = torch.cat([g.reshape(-1) for g in g2])
    c = torch.dot(f1, f2)
    n1sq, n2sq = torch.dot(f1, f1), torch.dot(f2, f2)
    if c.item() < 0:  # the released code's host synchronization
        w1, w2 = _released_weights(c.item(), n1sq.item(), n2sq.item(), method, kappa)
    else:
        w1 = w2 = 1.0
    flat = w1 * f1 + w2 * f2
    offset = 0
    for o in out:
        n = o.numel()
        o.copy_(flat[offset:offset + n].view_as(o))
        offset += n
    return w1, w2


def pcgrad_style(g1: List[torch.Tensor], g2: List[torch.Tensor], out: List[torch.Tensor], seed: int = 0):
    """The most copied PyTorch PCGrad, for two tasks (= GH), as its README describes it."""
    grads, shapes, has_grads = [], [], []
    for task in (g1, g2):
        gs = [g.clone() for g in task]
        hs = [torch.ones_like(g) for g in task]  # float mask per parameter
        shapes.append([g.shape for g in task])
        grads.append(torch.cat([g.flatten() for g in gs]))
        has_grads.append(torch.cat([h.flatten() for h in hs]))
    pc_grad = copy.deepcopy(grads)
    rng = random.Random(seed)
    for g_i in pc_grad:
        order = list(grads)
        rng.shuffle(order)
        for g_j in order:
            g_i_g_j = torch.dot(g_i, g_j)
            if g_i_g_j < 0:  # host branch
                g_i -= g_i_g_j * g_j / (g_j.norm() ** 2)
    shared = torch.stack(has_grads).prod(0).bool()
    merged = torch.zeros_like(grads[0])
    merged[shared] = torch.stack([g[shared] for g in pc_grad]).sum(dim=0)
    merged[~shared] = torch.stack([g[~shared] for g in pc_grad]).sum(dim=0)
    offset = 0
    for o in out:
        n = o.numel()
        o.copy_(merged[offset:offset + n].view(o.shape))
        offset += n


def torch_best_effort(g1, g2, out, method="gh", kappa=0.5):
    return gh_kernels.harmonize(g1, g2, method=method, kappa=kappa, out=out, backend="torch").weights

