"""The engine's write into ``.grad``: where each parameter's combined gradient goes, and the two ways
to get it there.

A parameter with an earlier ``.grad`` (gradient accumulation) gets the combined gradient added to it
in place; one without gets it written in place into its last present fresh gradient, which then
becomes its ``.grad`` (no new memory). A :class:`Target` records that choice per parameter.

* :func:`fused_targets`: the common case (reweight mode, every present parameter accumulating or
  none): one :meth:`Plan.run <gh_kernels.plan.Plan.run>` over all of them (NOTE: [Fused step]).
* :func:`grouped_write`: everything else (surgery's plain parameters, ``sync="local"``, a mix of
  accumulating and fresh parameters): one combine per group sharing (weights, accumulate).

NOTE: [Checked before written]: a write can fail its checks -- two parameters sharing one earlier
``.grad`` tensor, an earlier ``.grad`` that requires grad (after ``backward(create_graph=True)``), an
inference tensor. Every target is checked against every gradient before the first byte is written
(by the C++ op for a single fused call on the C++ backends, else by :func:`check_targets` over all
groups at once), so a refused write leaves every ``.grad`` as it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from .. import distributed
from ..ops import dispatch
from ..ops.validate import check_out


@dataclass
class Target:
    """Where parameter ``index``'s combined gradient is written: ``out`` (the local tensor, added to when
    ``accumulate``) and ``grad`` (what its ``.grad`` becomes: ``out`` or the DTensor around it)."""

    index: int
    out: torch.Tensor
    grad: torch.Tensor
    accumulate: bool
    plain: bool = False  # surgery mode, outside shared: the plain (scaled) sum, not the method's weights


def targets(step, sets, wrapped, plain_mask: Optional[List[bool]], defer_previous: bool) -> List[Target]:
    """One :class:`Target` per parameter that has a gradient in some set (``step``: the engine's
    ``StepState``). ``defer_previous`` (sync="local"): fresh results first, the earlier ``.grad`` added
    after the all-reduce."""
    found = []
    K = len(sets)
    for i in range(len(step.previous)):
        present = [k for k in range(K) if sets[k][i] is not None]
        if not present:
            continue
        plain = plain_mask is not None and plain_mask[i]
        if step.previous_local[i] is not None and not defer_previous:
            found.append(Target(i, step.previous_local[i], step.previous[i], True, plain))
        else:
            k = present[-1]
            found.append(Target(i, sets[k][i], wrapped[k][i], False, plain))
    return found


def check_targets(found: List[Target], sets, names) -> None:
    """NOTE: [Checked before written]: every target against every gradient, in one ``check_out``."""
    idx = [t.index for t in found]
    check_out([t.out for t in found], [[s[i] for i in idx] for s in sets], name="the .grad of params",
              set_names=names)


def write_groups(found: List[Target], sets, weights: torch.Tensor, plain_weights: torch.Tensor, backend, device) -> None:
    """One combine per (plain, accumulate) group; the targets were checked (NOTE: [Checked before written])."""
    groups = {}
    for t in found:
        groups.setdefault((t.plain, t.accumulate), []).append(t)
    for (plain, accumulate), members in groups.items():
        idx = [t.index for t in members]
        dispatch.combine(plain_weights if plain else weights, [[s[i] for i in idx] for s in sets], device,
                         [t.out for t in members], accumulate, backend)


def finish_local(found: List[Target], step, process_group) -> None:
    """sync="local": average the fresh results over the ranks, then add the earlier ``.grad``."""
    distributed.all_reduce_mean_([t.out for t in found], process_group)
    for t in found:
        if step.previous_local[t.index] is not None:
            step.previous_local[t.index].add_(t.out)
            t.grad = step.previous[t.index]


def assign(params, found: List[Target], previous) -> None:
    """Every ``.grad``: its target's tensor, or what it was before the step (no gradient this step)."""
    grads = list(previous)
    for t in found:
        grads[t.index] = t.grad
    for p, g in zip(params, grads):
        p.grad = g
