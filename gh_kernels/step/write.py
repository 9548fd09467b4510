"""The engine's write into ``.grad``: where each parameter's combined gradient goes, and the two ways
to get it there.

A parameter with an earlier ``.grad`` (gradient accumulation) gets the combined gradient added to it
in place; one without gets it written in place into its first present fresh gradient, which then
becomes its ``.grad`` (no new memory). :class:`Targets` records that choice per parameter.

* the common case (reweight mode, every present parameter accumulating or
  none): one :meth:`Plan.run <gh_kernels.plan.Plan.run>` over all of them (NOTE: [Fused step]).
* :func:`write_groups`: everything else (surgery's plain parameters, ``sync="local"``, a mix of
  accumulating and fresh parameters): one combine per group sharing (weights, accumulate).

NOTE: [Checked before written]: a write can fail its checks -- two parameters sharing one earlier
``.grad`` tensor, an earlier ``.grad`` that requires grad (after ``backward(create_graph=True)``).
Every target is checked against every gradient before the first byte is written
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
class Targets:
    """Where each parameter's combined gradient is written (one entry per parameter that has a gradient in
    some set; a record of lists, built with list comprehensions: this runs every step over every parameter).

    ``index[j]``: the parameter; ``out[j]``: the local tensor written (added to when ``accumulate[j]``);
    ``grad[j]``: what its ``.grad`` becomes (``out[j]`` or the DTensor around it); ``plain[j]``: surgery
    mode outside ``shared`` (the plain scaled sum, not the method's weights)."""

    index: List[int]
    out: List[torch.Tensor]
    grad: List[torch.Tensor]
    accumulate: List[bool]
    plain: Optional[List[bool]] = None

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, keep: List[int]) -> "Targets":
        pick = lambda values: [values[j] for j in keep]  # noqa: E731
        return Targets(pick(self.index), pick(self.out), pick(self.grad), pick(self.accumulate),
                       None if self.plain is None else pick(self.plain))


def first_present(sets):
    """Per parameter, the first set's tensor that is not None (None when no set has one)."""
    chosen = list(sets[0])
    for s in sets[1:]:
        chosen = [c if c is not None else t for c, t in zip(chosen, s)]
    return chosen


def targets(step, sets, wrapped, plain_mask: Optional[List[bool]], defer_previous: bool) -> Targets:
    """The :class:`Targets` of a step (``step``: the engine's ``StepState``). A parameter with an earlier
    ``.grad`` is added to it; one without is written in place into its first present fresh gradient (the
    first loss's backward ran last, so that is usually already its ``.grad``). ``defer_previous``
    (sync="local"): fresh results first, the earlier ``.grad`` added after the all-reduce."""
    fresh = first_present(sets)
    fresh_wrapped = fresh if wrapped is sets else first_present(wrapped)
    index = [i for i, t in enumerate(fresh) if t is not None]
    previous, previous_local = step.previous, step.previous_local
    if defer_previous:
        accumulate = [False] * len(index)
    else:
        accumulate = [previous_local[i] is not None for i in index]
    out = [previous_local[i] if acc else fresh[i] for i, acc in zip(index, accumulate)]
    grad = [previous[i] if acc else fresh_wrapped[i] for i, acc in zip(index, accumulate)]
    plain = None if plain_mask is None else [plain_mask[i] for i in index]
    return Targets(index, out, grad, accumulate, plain)


def check_targets(found: Targets, sets, names) -> None:
    """NOTE: [Checked before written]: every target against every gradient, in one ``check_out``."""
    check_out(found.out, [[s[i] for i in found.index] for s in sets], name="the .grad of params", set_names=names)


def write_groups(found: Targets, sets, write_weighted, plain_weights: torch.Tensor, backend, device,
                 nonfinite: Optional[torch.Tensor] = None) -> None:
    """One write per (plain, accumulate) group; the targets were checked (NOTE: [Checked before written]).
    ``write_weighted(sub_sets, outs, accumulate)`` writes the method's update of a group (a combine with
    the weights, or a per-coordinate pass); plain parameters (surgery mode) get ``plain_weights``. ``nonfinite``:
    the combine's flag (NOTE: [Non-finite flag of the combine]), set by the plain writes too."""
    groups = {}
    plain = found.plain or [False] * len(found)
    for j, key in enumerate(zip(plain, found.accumulate)):
        groups.setdefault(key, []).append(j)
    for (use_plain, accumulate), members in groups.items():
        idx = [found.index[j] for j in members]
        sub_sets, outs = [[s[i] for i in idx] for s in sets], [found.out[j] for j in members]
        if use_plain:
            dispatch.combine_sets(plain_weights, sub_sets, device, outs, accumulate, backend, nonfinite)  # any number of sets
        else:
            write_weighted(sub_sets, outs, accumulate)


def finish_local(found: Targets, step, process_group) -> None:
    """sync="local": average the fresh results over the ranks, then add the earlier ``.grad``."""
    distributed.all_reduce_mean_(found.out, process_group)
    for j, i in enumerate(found.index):
        if step.previous_local[i] is not None:
            step.previous_local[i].add_(found.out[j])
            found.grad[j] = step.previous[i]


def assign(params, found: Targets, previous, current) -> None:
    """Every ``.grad``: its target's tensor, or ``previous`` (no gradient this step). ``current``: what
    ``.grad`` holds now (after the last backward pass); only changes are assigned."""
    grads = list(previous)
    for i, g in zip(found.index, found.grad):
        grads[i] = g
    for p, now, g in zip(params, current, grads):
        if now is not g:
            p.grad = g
