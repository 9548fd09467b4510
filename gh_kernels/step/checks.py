"""Checks the step engine runs before it touches any ``.grad`` (errors name ``loss1``, ``losses[k]``, ``params[i]`` ...).

Everything that can be known before the backward passes is checked here, so that a bad call
raises with ``.grad`` untouched; what only the backward passes reveal (a sparse gradient, a graph
already freed) is caught by the engine's restore-on-failure.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence

import torch

from . import graph as _graph
from .. import distributed
from ..ops.validate import DTYPE_NAMES, SUPPORTED_DTYPES


def unique_tensors(params) -> List[torch.Tensor]:
    """``params`` as a list without duplicates (first occurrence kept); non-tensors name their index."""
    unique = {}
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}] must be a torch.Tensor (a parameter), got {type(p).__name__}")
        unique.setdefault(id(p), p)
    return list(unique.values())


def check_loss(loss, name: str) -> None:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{name} must be a tensor (a loss), got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"{name} must be a scalar loss (one element) to backpropagate from; got shape {tuple(loss.shape)}")
    if not loss.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point loss, got dtype {loss.dtype}")
    if not loss.requires_grad:
        raise ValueError(f"{name} does not require grad (computed under torch.no_grad(), detached, or from tensors "
                         "that do not require grad): it has no gradient to harmonize")


def check_params(params: Sequence[torch.Tensor]) -> None:
    """Dtypes the kernels support, dense parameters (a parameter's gradient has its dtype)."""
    for i, p in enumerate(params):
        if p.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"params[{i}] has dtype {p.dtype}; supported parameter dtypes are {DTYPE_NAMES}")
        if p.layout is not torch.strided:
            raise TypeError(f"params[{i}] has layout {p.layout}; parameters must be dense (torch.strided)")


def check_sync(sync: Optional[str]) -> None:
    if sync is not None:
        distributed.require_initialized()


def shared_index(params: Sequence[torch.Tensor], shared) -> Optional[List[int]]:
    """Positions in ``params`` of the ``shared`` parameters (first occurrence order, no duplicates), or
    None for ``shared=None``; a parameter outside ``params`` or an empty ``shared`` raises naming it."""
    if shared is None:
        return None
    position = {id(p): i for i, p in enumerate(params)}
    index: List[int] = []
    for j, p in enumerate(shared):
        if id(p) not in position:
            raise ValueError(f"shared[{j}] is not in params: shared must be a subset of params")
        if position[id(p)] not in index:
            index.append(position[id(p)])
    if not index:
        raise ValueError("shared is empty: pass the parameters the Gram matrix is computed over")
    return index


def outside_params(reached: Sequence[dict], params: Sequence[torch.Tensor]):
    """(k, leaf) for the first parameter that loss k reaches (``reached[k]``: ``_graph.reached_parameters``)
    and that is not in ``params``, or None."""
    position = {id(p) for p in params}
    for k, found in enumerate(reached):
        for key, leaf in found.items():
            if key not in position:
                return k, leaf
    return None


def check_graph(losses: Sequence[torch.Tensor], face, params: Sequence[torch.Tensor],
                shared_index: Optional[List[int]]) -> None:
    """Parameters the losses reach must be in ``params``; a compiled model needs ``shared=``; the two-loss
    face warns when ``shared`` holds parameters only loss 1 reaches."""
    two_loss = face.default_shared == "last"
    if shared_index is None and any(_graph.from_compiled_graph(loss) for loss in (losses[-1:] if two_loss else losses)):
        what = ("the parameters loss2 reaches) would take in the discriminator and turn harmonization off. Pass shared= "
                "explicitly (e.g. the feature extractor and classifier)" if two_loss else
                "the parameters at least two losses reach) would take in every task head. Pass shared= explicitly (the trunk)")
        raise ValueError(f"{face.loss_name(len(losses) - 1 if two_loss else 0)} comes from a torch.compile'd model: its backward "
                         "gives every parameter of the compiled region a gradient (zeros included), so the default shared ("
                         + what)
    reached = [_graph.reached_parameters(loss) for loss in losses]
    outside = outside_params(reached, params)
    if outside is not None:
        k, leaf = outside
        name = face.loss_name(k)
        raise ValueError(
            f"{name} reaches a parameter of shape {tuple(leaf.shape)} that is not in params: backward would "
            f"leave {name}'s raw gradient in its .grad (without the weights" + (f" or scale{k + 1}" if two_loss else "")
            + "). Pass every parameter the losses reach (e.g. model.parameters(), a domain discriminator included)")
    if two_loss and shared_index is not None:
        only1 = [i for i in shared_index if id(params[i]) in reached[0] and id(params[i]) not in reached[1]]
        if only1:
            warnings.warn(
                f"Harmonizer: {len(only1)} shared parameter(s) (params[{only1[0]}], ...) are reached by loss1 only "
                "(a domain discriminator?): their gradient enlarges |g1| alone and pushes the angle toward 90 degrees, "
                "which weakens harmonization. The released recipe computes the Gram matrix over the feature extractor "
                "and classifier only; leave shared=None to use the parameters loss2 reaches.", stacklevel=4)


def backward_pass(params: List[torch.Tensor], loss: torch.Tensor, retain_graph: bool) -> List[Optional[torch.Tensor]]:
    """One loss's gradients: ``.grad`` cleared, ``loss.backward()``, the new ``.grad`` of every parameter
    (the engine restores ``.grad`` if a later step fails). A DDP reducer error gets an explanation."""
    for p in params:
        p.grad = None
    try:
        loss.backward(retain_graph=retain_graph)
    except RuntimeError as e:
        explain_ddp_reducer_error(e)
        explain_donated_buffers(e)
        raise
    return [p.grad for p in params]


def allow_repeated_backward() -> None:
    """NOTE: [Donated buffers]: since PyTorch 2.x a torch.compile'd backward may free ("donate") the
    buffers it saved, which breaks a second backward pass through the same graph (``retain_graph=True``),
    and the engine runs K of them. Creating a training step turns donation off
    (``torch._functorch.config.donated_buffer = False``) for every graph compiled from then on: a
    model compiled before but first run after works, with plain backward passes before or between
    harmonized steps. Graphs already compiled keep donation: :func:`explain_donated_buffers` says so.
    Cost: a compiled backward keeps its saved buffers until it returns instead of reusing them in
    place, the memory an eager backward also holds."""
    try:
        import torch._functorch.config as functorch_config
    except ImportError:  # an older torch without donation
        return
    if getattr(functorch_config, "donated_buffer", False):
        functorch_config.donated_buffer = False


def explain_donated_buffers(error: RuntimeError) -> None:
    if "donated buffers" in str(error):
        raise RuntimeError(
            "gh_kernels: this loss comes from a torch.compile'd graph that was compiled before the Harmonizer / "
            "MultiTaskHarmonizer existed, with donated buffers: its backward can run only once, and the step runs one "
            "backward pass per loss through it. Fix: create the Harmonizer before the compiled model first runs (it "
            "turns donation off for what is compiled afterwards), or set torch._functorch.config.donated_buffer = False "
            "before the first compiled run, or call torch._dynamo.reset() after creating the Harmonizer so the model "
            "recompiles. Every .grad is as it was before this call") from error


_DDP_REDUCER_ERRORS = ("mark a variable ready only once", "expect_autograd_hooks_", "reducer.cpp")


def explain_ddp_reducer_error(error: RuntimeError) -> None:
    """DistributedDataParallel's reducer expects one backward pass per forward; the Harmonizer runs two.
    Raise an error that says what to do instead of the reducer's own (which blames shared parameters)."""
    if any(pattern in str(error) for pattern in _DDP_REDUCER_ERRORS):
        raise RuntimeError(
            "Harmonizer.backward runs two backward passes, and DistributedDataParallel's reducer allows one per "
            "forward (it all-reduces inside backward). Run the forward and Harmonizer.backward inside "
            "model.no_sync() with Harmonizer(..., sync='global'), which all-reduces both gradients itself. "
            "DDP(static_graph=True) cannot be combined with the Harmonizer: its reducer requires its hooks in "
            "every backward pass, also under no_sync()") from error
