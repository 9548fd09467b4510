"""What a loss reaches: the parameters at the leaves of its autograd graph.

``Harmonizer`` inspects the two losses' graphs once, on its first ``backward``, to catch two
silent misconfigurations before any gradient is written:

* a parameter a loss reaches that is not in ``params``: ``backward`` would leave that loss's raw
  gradient in its ``.grad`` (no weights, no ``scale1``), e.g. a domain discriminator left out;
* a ``shared`` parameter that only loss 1 reaches (the discriminator in the Gram matrix): its
  gradient inflates ``|g1|`` and pushes the angle to 90 degrees, which turns harmonization off.

The walk follows ``grad_fn.next_functions`` to the ``AccumulateGrad`` nodes; only
``nn.Parameter`` leaves count (an input that requires grad, as in adversarial training, is
not a parameter). Parameters hidden inside a reentrant checkpoint are not visible to the walk.
"""
from __future__ import annotations

from typing import Dict

import torch


def reached_parameters(loss: torch.Tensor) -> Dict[int, torch.nn.Parameter]:
    """``{id(p): p}`` for every ``nn.Parameter`` the backward pass of ``loss`` accumulates into."""
    found: Dict[int, torch.nn.Parameter] = {}
    seen = set()
    stack = [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        leaf = getattr(fn, "variable", None)
        if isinstance(leaf, torch.nn.Parameter):
            found[id(leaf)] = leaf
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


def from_compiled_graph(loss: torch.Tensor) -> bool:
    """Whether ``loss``'s graph holds a ``torch.compile``d (AOTAutograd) region. Its backward gives every
    parameter of the region a gradient, zeros included, so "the parameters this loss reaches" can no
    longer be read from which gradients are ``None``."""
    seen, stack = set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if "CompiledFunction" in type(fn).__name__:
            return True
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return False
