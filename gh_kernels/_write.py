"""The write-back step of ``Harmonizer.backward``: the combined gradients into ``.grad``.

* :func:`fused_step`: the common case, one call of the fused ``harmonize_`` op (Gram over
  ``shared``, weights, combine with the weights times (scale1, scale2)) for every parameter, in
  place into the fresh gradients, or added to what ``.grad`` held (gradient accumulation). The
  C++ kernels validate every argument before writing anything; on an error the Python checks run
  to name the parameter, and ``backward`` restores every ``.grad``.
* :func:`grouped_write`: everything else (surgery mode, per-rank weights, sharded Gram sums, a mix
  of parameters with and without an earlier ``.grad``): the Gram matrix and weights are computed
  first, then one combine per group of parameters sharing (weights, accumulate).
"""
from __future__ import annotations

import torch

from . import _dispatch, backends, distributed
from ._validate import check_sets


def check_grads(g1, g2, device: torch.device) -> torch.device:
    """Dtypes, layouts and devices of what the backward passes produced (named by parameter index)."""
    if all(t is None for t in g1) and all(t is None for t in g2):
        return device
    return check_sets([g1, g2], ["the loss1 gradient of params", "the loss2 gradient of params"])


class StepPlan:
    """What a Harmonizer decides once for its steps: the parameters, the shared mask, the mode, the
    backend and its fused op, and the CUDA work-list cache."""

    def __init__(self, params, is_shared, device, method, kappa, mode, backend, sync, process_group):
        self.params, self.is_shared, self.device = params, is_shared, device
        self.method, self.kappa, self.mode, self.backend = method, kappa, mode, backend
        self.sync, self.process_group = sync, process_group
        name = backends.resolve(backend, device, 2)
        self.fusable = mode == "reweight" and sync in (None, "global")
        self.op = backends.kernel(name, "harmonize_")
        self.validates = name in ("cpu", "cuda")  # the C++ kernels check every argument themselves
        self.shared_mask = None if is_shared is None else torch.tensor(is_shared, dtype=torch.bool)
        self.cache_host = torch.empty(0, dtype=torch.uint8)
        self.cache_device = torch.empty(0, dtype=torch.uint8, device=device) if device.type == "cuda" else None


def fused_step(plan: StepPlan, g1, g2, prev, wrapped, scale1, scale2):
    """(G, w) after one fused op call that wrote every parameter's gradient, or None when the step
    needs :func:`grouped_write` (some parameters with an earlier ``.grad`` and some without, or none
    with a gradient at all)."""
    n = len(plan.params)
    has = [a is not None or b is not None for a, b in zip(g1, g2)]
    earlier = [q is not None for q, x in zip(prev, has) if x]
    if not earlier or (any(earlier) and not all(earlier)):
        return None
    accumulate = earlier[0]
    idx = range(n) if len(earlier) == n else [i for i in range(n) if has[i]]
    if accumulate:
        out = [prev[i] for i in idx]
    else:
        out = [g2[i] if g2[i] is not None else g1[i] for i in idx]
    tensors = [g1[i] for i in idx] + [g2[i] for i in idx]
    if plan.shared_mask is None:
        mask = torch.tensor([g2[i] is not None for i in idx], dtype=torch.bool)
    else:
        mask = plan.shared_mask if len(idx) == n else plan.shared_mask[list(idx)]
    if not plan.validates:
        check_grads(g1, g2, plan.device)
    try:
        G, w = plan.op(out, tensors, mask, plan.method, plan.kappa, float(scale1), float(scale2), accumulate,
                       plan.cache_host, plan.cache_device)
    except RuntimeError:
        check_grads(g1, g2, plan.device)  # names the parameter when the Python rules see the problem
        raise
    if G.device.type == "meta" and plan.device.type != "meta":  # a meta tensor reached the op: its fake kernel ran
        check_grads(g1, g2, plan.device)
    wrap_prev, wrap1, wrap2 = wrapped
    for i in range(n):
        if not has[i] or accumulate:
            plan.params[i].grad = wrap_prev[i]
        else:
            plan.params[i].grad = wrap2[i] if g2[i] is not None else wrap1[i]
    return G, w


def grouped_write(plan: StepPlan, g1, g2, prev, wrapped, w, scale1, scale2, device) -> None:
    """Combine, grouped by (weights, accumulate) so each group is one fused call; write into .grad."""
    wrap_prev, wrap1, wrap2 = wrapped
    harmonized = w if scale1 == 1.0 and scale2 == 1.0 else torch.stack((w[0] * scale1, w[1] * scale2))
    defer_previous = plan.sync == "local"  # combine fresh gradients, average, then add to what .grad held
    groups, results = {}, {}
    for i, p in enumerate(plan.params):
        if g1[i] is None and g2[i] is None:
            p.grad = wrap_prev[i]
            continue
        shared = g2[i] is not None if plan.is_shared is None else plan.is_shared[i]
        use_plain = plan.mode == "surgery" and not shared
        if prev[i] is not None and not defer_previous:
            out, acc, target = prev[i], True, wrap_prev[i]
        else:  # in place into a gradient we own
            out, acc, target = (g2[i], False, wrap2[i]) if g2[i] is not None else (g1[i], False, wrap1[i])
        groups.setdefault((use_plain, acc), []).append((i, out))
        results[i] = (out, target)
    for (use_plain, acc), members in groups.items():
        weights = harmonized
        if use_plain:  # (scale1, scale2) built on the device: no host copy
            one = torch.ones((), dtype=torch.float32, device=device)
            weights = torch.stack((one * scale1, one * scale2))
        idx = [i for i, _ in members]
        _dispatch.combine(weights, [[g1[i] for i in idx], [g2[i] for i in idx]], device,
                                    [o for _, o in members], acc, plan.backend)
    if defer_previous:
        distributed.all_reduce_mean_([o for o, _ in results.values()], plan.process_group)
    for i, (out, target) in results.items():
        if defer_previous and prev[i] is not None:
            prev[i].add_(out)
            target = wrap_prev[i]
        plan.params[i].grad = target
