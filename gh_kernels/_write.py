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
    """Harmonizer's grouped write: :func:`write_sets` with the two sets, (w1 scale1, w2 scale2) for the
    harmonized parameters and (scale1, scale2) for surgery's plain ones."""
    wrap_prev, wrap1, wrap2 = wrapped
    harmonized = w if scale1 == 1.0 and scale2 == 1.0 else torch.stack((w[0] * scale1, w[1] * scale2))
    one = torch.ones((), dtype=torch.float32, device=device)
    plain = torch.stack((one * scale1, one * scale2))  # built on the device: no host copy
    shared = [g2[i] is not None for i in range(len(plan.params))] if plan.is_shared is None else plan.is_shared
    write_sets(plan.params, [g1, g2], [wrap1, wrap2], prev, wrap_prev, shared, plan.mode == "surgery", harmonized, plain,
               plan.sync, plan.process_group, plan.backend, device)


def write_sets(params, sets, wrapped, prev, wrap_prev, shared, surgery: bool, weights, plain_weights, sync,
               process_group, backend, device) -> None:
    """Combine K gradient sets into ``.grad``, grouped by (weights, accumulate) so each group is one fused
    call. ``weights`` for the harmonized parameters; ``plain_weights`` for the parameters outside
    ``shared`` in surgery mode. A parameter with an earlier ``.grad`` (``prev``) is added to it in place;
    one without is written in place into its last present fresh gradient. ``wrapped``/``wrap_prev``:
    what goes into ``.grad`` (DTensors stay DTensors). ``sync="local"``: the fresh results are averaged
    over the ranks before the earlier ``.grad`` is added."""
    K = len(sets)
    defer_previous = sync == "local"
    groups, results = {}, {}
    for i, p in enumerate(params):
        present = [k for k in range(K) if sets[k][i] is not None]
        if not present:
            p.grad = wrap_prev[i]
            continue
        use_plain = surgery and not shared[i]
        if prev[i] is not None and not defer_previous:
            out, acc, target = prev[i], True, wrap_prev[i]
        else:  # in place into a fresh gradient we own
            k = present[-1]
            out, acc, target = sets[k][i], False, wrapped[k][i]
        groups.setdefault((use_plain, acc), []).append((i, out))
        results[i] = (out, target)
    for (use_plain, acc), members in groups.items():
        idx = [i for i, _ in members]
        _dispatch.combine(plain_weights if use_plain else weights, [[s[i] for i in idx] for s in sets], device,
                          [o for _, o in members], acc, backend)
    if defer_previous:
        distributed.all_reduce_mean_([o for o, _ in results.values()], process_group)
    for i, (out, target) in results.items():
        if defer_previous and prev[i] is not None:
            prev[i].add_(out)
            target = wrap_prev[i]
        params[i].grad = target
