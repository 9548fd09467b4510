"""The one benchmark registry: every implementation timed by ``harmonize``'s microbenchmark, with
the bytes it moves and whether it is a baseline. It drives the timing loop, the ``x <baseline>``
speed-up columns and the report; adding a baseline is one entry here.

Each callable takes ``(g1, g2, out)`` and leaves ``w1*g1 + w2*g2`` in ``out``. Bytes moved are
counted in elements of the gradient dtype per element of one set (N): ours is 5N (read g1 and g2
for the Gram pass, read them again and write the result); the baselines' counts are derived in
``baselines.py``.
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple

import torch

import gh_kernels

from . import baselines


class Impl(NamedTuple):
    fn: Callable            # (g1, g2, out) -> anything
    bytes_per_element: int  # elements moved per element of one set, in the gradient dtype
    baseline: bool          # gets a "x <name>" speed-up column


#: Baselines, in the order of the report's speed-up columns (their column titles).
BASELINE_COLUMNS = {"released_recipe": "x released", "pcgrad_style": "x pcgrad", "torch_best_effort": "x torch",
                    "torch_compile": "x compile"}


def _ours(backend):
    return lambda g1, g2, out: gh_kernels.harmonize(g1, g2, out=out, backend=backend)


def _planned(backend):
    """gh_kernels.plan, built on the first call for a list (the build is timed by bench/hostcost.py)."""
    plans = {}

    def run(g1, g2, out):
        key = (id(g1), id(g2), id(out))
        if key not in plans:
            plans.clear()
            plans[key] = gh_kernels.plan(g1, g2, out=out, backend=backend)
        return plans[key](g1, g2, out)
    return run


def implementations(device: torch.device, with_compile: bool) -> Dict[str, Impl]:
    """Our fast backends that run on ``device`` (not the Triton interpreter: a correctness tool), then the baselines."""
    impls: Dict[str, Impl] = {}
    for b in gh_kernels.available_backends():
        if b == "torch" or (b == "triton" and device.type == "cpu"):
            continue
        try:
            gh_kernels.backends.resolve(b, device)
        except (gh_kernels.BackendUnavailable, ValueError):
            continue
        impls[f"gh_kernels[{b}]"] = Impl(_ours(b), 5, False)
        impls[f"gh_kernels[{b}] planned"] = Impl(_planned(b), 5, False)
    impls["torch_best_effort"] = Impl(baselines.torch_best_effort, 5, True)
    if with_compile:
        impls["torch_compile"] = Impl(torch.compile(_ours("torch")), 5, True)
    impls["released_recipe"] = Impl(baselines.released_recipe, 17, True)
    impls["pcgrad_style"] = Impl(baselines.pcgrad_style, 31, True)
    assert all(name in BASELINE_COLUMNS for name, i in impls.items() if i.baseline)
    return impls
