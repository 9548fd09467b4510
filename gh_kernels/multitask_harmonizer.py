"""``MultiTaskHarmonizer``: the K-loss training step. ``backward(losses)`` replaces
``sum(losses).backward()``: K backward passes, one Gram pass over the shared parameters, the
method's weights on the device, and one combine per group of parameters into ``.grad``.

Steps of ``backward`` (the two-loss ``Harmonizer`` runs the same ones): check the call (nothing
touched yet), K backward passes (a failure restores every ``.grad``), fill/reduce across ranks,
check the gradients, Gram, weights, write back. No flat copies: the kernels read each gradient
where autograd left it and write the result into an existing ``.grad`` (accumulation) or into one
of the fresh gradients.
"""
from __future__ import annotations

from typing import Iterable, List, NamedTuple, Optional, Sequence

import torch

from . import _dispatch, _graph, distributed
from ._write import write_sets
from . import _step_checks as checks
from ._validate import check_sets
from .harmonizer import backward_pass
from .multitask import Method, resolve_method

MODES = ("reweight", "surgery")


class MultiTaskResult(NamedTuple):
    """What one ``MultiTaskHarmonizer.backward`` computed, as device tensors (log them without a sync)."""

    weights: torch.Tensor  #: (K,) the method's weights
    gram: torch.Tensor  #: (K, K) Gram matrix over the shared parameters


class MultiTaskHarmonizer:
    """Multi-task gradient aggregation for a training step: ``backward([loss_1, ..., loss_K])``.

    Args:
        params: every parameter any loss reaches (e.g. ``model.parameters()``); duplicates ignored.
            The first ``backward`` checks that no other parameter is reached.
        shared: the parameters the Gram matrix is computed over (each must be in ``params``).
            Default (``None``): at every step, the parameters that at least two losses reach (the
            shared trunk; a task head, reached by its own loss only, is left out).
        method: a name of :data:`gh_kernels.MULTITASK_METHODS` (default ``"upgrad"``), a two-task GH
            rule when K = 2, or a :class:`gh_kernels.GradVac` / :class:`gh_kernels.NashMTL` object.
        mode: ``"reweight"`` (default): every parameter gets ``sum_k w_k g_k``, the gradient of
            ``sum_k w_k L_k`` (LibMTL's convention). ``"surgery"``: only ``shared`` parameters get
            the weights; the others get ``sum_k g_k`` (torchjd's ``mtl_backward`` convention).
        backend: kernel backend (default automatic; K above a backend's limit falls back, logged).
        sync: ``None``, ``"global"`` (DDP under ``no_sync()``: every set averaged over the ranks,
            then aggregated identically everywhere), ``"local"`` (each rank aggregates its own
            gradients, the results are averaged) or ``"sharded"`` (FSDP2: one all-reduce of the
            K x K Gram partial sums); see :mod:`gh_kernels.distributed`.
        process_group: the group to communicate over (default: the world).
        **options: the method's options (e.g. ``c=0.4`` for ``"cagrad"``), checked here.
    """

    def __init__(self, params: Iterable[torch.Tensor], *, shared: Optional[Iterable[torch.Tensor]] = None,
                 method: Method = "upgrad", mode: str = "reweight", backend: Optional[str] = None,
                 sync: Optional[str] = None, process_group=None, **options):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}; got {mode!r}")
        if sync not in distributed.SYNC_MODES:
            raise ValueError(f"sync must be one of None, 'global', 'local', 'sharded'; got {sync!r}")
        resolve_method(method, 2, dict(options))  # unknown methods/options fail here, not mid-step (K checked per new K)
        self.params: List[torch.Tensor] = checks.unique_tensors(params)
        if not self.params:
            raise ValueError("params is empty: pass every parameter the losses reach")
        checks.check_params(self.params)
        index = checks.shared_index(self.params, shared)
        chosen = set(index or ())
        self.is_shared: Optional[List[bool]] = None if index is None else [i in chosen for i in range(len(self.params))]
        self.device = distributed.local(self.params[0]).device
        checks.check_sync(sync)
        if backend is not None:
            from . import backends
            backends.resolve(backend, self.device, 2)  # an unknown or unusable backend fails here
        self.method, self.options, self.mode, self.backend = method, dict(options), mode, backend
        self.sync, self.process_group = sync, process_group
        self._graph_checked = sync == "sharded"  # FSDP2's graph reaches its unsharded parameters, not ours
        self._compute = {}  # K -> the checked method (G -> weights), built on the first step with K losses

    def backward(self, losses: Sequence[torch.Tensor], *, retain_graph: bool = False) -> MultiTaskResult:
        """K backward passes, weights over ``shared``, the aggregated gradient added into ``.grad``.

        Existing ``.grad`` contents are added to (gradient accumulation). All or nothing: if
        anything raises, every ``.grad`` is left as it was.
        """
        losses = self._check_call(losses)
        K = len(losses)
        if K not in self._compute:
            self._compute[K] = resolve_method(self.method, K, dict(self.options), backend=self.backend)
        compute = self._compute[K]
        previous = [p.grad for p in self.params]
        try:
            wrapped = [backward_pass(self.params, loss, retain_graph or k < len(losses) - 1)
                       for k, loss in enumerate(losses)]
            sets = [[distributed.local(t) for t in s] for s in wrapped]
            prev = [distributed.local(t) for t in previous]
            if self.sync in ("global", "local"):
                distributed.fill_and_reduce(sets, wrapped, self.params, self.device, self.sync, self.process_group)
            device = self._check_grads(sets)
            shared = self._shared(sets)
            G = self._gram(sets, shared, device)
            w = compute(G)
        except BaseException:
            for p, g in zip(self.params, previous):
                p.grad = g
            raise
        self._write(sets, wrapped, prev, previous, shared, w, device)
        return MultiTaskResult(w, G)

    def _check_call(self, losses) -> List[torch.Tensor]:
        if isinstance(losses, torch.Tensor) or not isinstance(losses, (list, tuple)):
            raise TypeError(f"losses must be a list/tuple of scalar losses, got {type(losses).__name__}")
        for k, loss in enumerate(losses):
            checks.check_loss(loss, f"losses[{k}]")
        checks.check_sync(self.sync)
        if len(losses) < 2:
            raise ValueError(f"losses holds {len(losses)} loss(es); a multi-task step needs at least 2 "
                             "(with one loss, call loss.backward())")
        if not self._graph_checked:
            if self.is_shared is None and any(_graph.from_compiled_graph(loss) for loss in losses):
                raise ValueError("the losses come from a torch.compile'd model: its backward gives every parameter of the "
                                 "compiled region a gradient (zeros included), so the default shared (the parameters at "
                                 "least two losses reach) would take in every task head. Pass shared= explicitly (the trunk)")
            outside = checks.outside_params([_graph.reached_parameters(loss) for loss in losses], self.params)
            if outside is not None:
                k, leaf = outside
                raise ValueError(f"losses[{k}] reaches a parameter of shape {tuple(leaf.shape)} that is not in params: "
                                 "backward would leave its raw gradient in .grad. Pass every parameter the losses reach")
            self._graph_checked = True
        return list(losses)

    def _check_grads(self, sets) -> torch.device:
        if all(t is None for s in sets for t in s):
            return self.device
        return check_sets(sets, [f"the losses[{k}] gradient of params" for k in range(len(sets))])

    def _shared(self, sets) -> List[bool]:
        if self.is_shared is not None:
            return self.is_shared
        return [sum(s[i] is not None for s in sets) >= 2 for i in range(len(self.params))]

    def _gram(self, sets, shared, device) -> torch.Tensor:
        index = [i for i, s in enumerate(shared) if s]
        sub = [[s[i] for i in index] for s in sets]
        K = len(sets)
        if any(t is not None and t.numel() > 0 for s in sub for t in s):
            G = _dispatch.gram(sub, device, self.backend)
        else:
            dtype = torch.float64 if any(t is not None and t.dtype == torch.float64 for s in sets for t in s) else torch.float32
            G = torch.zeros(K, K, dtype=dtype, device=device)
        if self.sync == "sharded":
            G = distributed.all_reduce_sum_(G.contiguous(), self.process_group)
        return G

    def _write(self, sets, wrapped, prev, previous, shared, w, device) -> None:
        """One combine per group of parameters (weights or plain sum, accumulate or not) into ``.grad``."""
        w = w if w.dtype == torch.float64 else w.to(torch.float32)
        write_sets(self.params, sets, wrapped, prev, previous, shared, self.mode == "surgery", w,
                   torch.ones_like(w), self.sync, self.process_group, self.backend, device)
