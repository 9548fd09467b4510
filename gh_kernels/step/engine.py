"""The one K-loss training step behind ``Harmonizer`` (K = 2, GH rules, ``scale1``/``scale2``) and
``MultiTaskHarmonizer`` (any K and method). :meth:`Engine.step` replaces ``sum(losses).backward()``:

1. check the call: losses, scales, the method for this K (options, backend, a stateful method's K)
   and, once, the graph (every parameter a loss reaches is in ``params``) -- nothing touched yet;
2. K backward passes, the last loss first (each keeps the graph for the next);
3. fill and reduce across ranks (``sync="global"``/``"local"``);
4. the Gram matrix over ``shared``, the weights, and the write into ``.grad``: one
   :meth:`Plan.run <gh_kernels.plan.Plan.run>` over every parameter in the common case (NOTE:
   [Fused step]), else a Gram pass, the solve and one combine per group (``write.py``);
5. a stateful method's new state is committed last (NOTE: [State changes after success]).

All or nothing: when anything in 1-4 raises, every ``.grad`` is put back, the method's state and a
``generator``'s draws are rolled back, and nothing was written: every write target is checked
before the first write (NOTE: [Checked before written]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .. import backends, distributed
from ..ops import dispatch
from ..ops.library import result_dtype
from ..ops.validate import check_sets, flatten_sets
from ..plan import Plan, call_checked, fake_kernel_ran, scaled
from ..weighting import Pending, _generator_guard, check_backend_name, resolve
from . import checks, write

MODES = ("reweight", "surgery")


@dataclass(frozen=True)
class Face:
    """What differs between the two public faces: how losses are named in errors and what ``shared=None`` means."""

    loss_name: Callable[[int], str]   # k -> "loss1" / "losses[k]"
    default_shared: str               # "last": what the last loss reaches; "two": what at least two losses reach


@dataclass
class StepState:
    """One call's ``.grad`` before the step: as stored (DTensors stay DTensors) and their local tensors."""

    previous: List[Optional[torch.Tensor]]
    previous_local: List[Optional[torch.Tensor]]


class Engine:
    """See the module docstring. ``method``/``options`` are resolved per K (first use of each K)."""

    def __init__(self, params, *, face: Face, shared=None, method="upgrad", options: Optional[dict] = None,
                 mode: str = "reweight", backend: Optional[str] = None, sync: Optional[str] = None, process_group=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}; got {mode!r}")
        if sync not in distributed.SYNC_MODES:
            raise ValueError(f"sync must be one of None, 'global', 'local', 'sharded'; got {sync!r}")
        check_backend_name(backend)
        self.face, self.method, self.options = face, method, dict(options or {})
        self.params: List[torch.Tensor] = checks.unique_tensors(params)
        if not self.params:
            raise ValueError("params is empty: pass every parameter the losses reach")
        checks.check_params(self.params)
        self.shared_index: Optional[List[int]] = checks.shared_index(self.params, shared)
        chosen = set(self.shared_index or ())
        self.is_shared = None if shared is None else [i in chosen for i in range(len(self.params))]
        # DTensor parameters (FSDP2): the kernels see their local shards; plain tensors skip the per-tensor unwrap.
        self.local = distributed.local if any(type(p).__name__ == "DTensor" for p in self.params) else None
        self.device = distributed.local(self.params[0]).device
        checks.check_sync(sync)
        if sync == "sharded" and getattr(method, "reads_gradients", False):
            raise ValueError(f"sync='sharded' cannot run {type(method).__name__}: its proxies are sums over every gradient "
                             "element, which sharded ranks hold in parts (use sync='global' or 'local')")
        backends.resolve(backend, self.device, 2)  # an unusable backend fails here
        self.mode, self.backend, self.sync, self.process_group = mode, backend, sync, process_group
        checks.allow_repeated_backward()  # NOTE: [Donated buffers]
        self.graph_checked = sync == "sharded"  # FSDP2's graph reaches its unsharded parameters, not ours
        self._plans: Dict[int, Plan] = {}
        self.fused = True  # False forces the grouped path (the tests compare the two)
        self._all_shared = self.is_shared is not None and all(self.is_shared)  # the fused call then needs no mask
        self._cross = False  # the current call has two batches (NOTE: [Cross-batch Gram])

    # -- 1. checks -----------------------------------------------------------------------------------
    def plan_for(self, K: int, cross_batch: bool = False) -> Plan:
        """The plan for K losses (built once per K; a stateful method's K is checked every call). ``cross_batch``:
        K losses of two batches each (NOTE: [Cross-batch Gram])."""
        key = (K, cross_batch)
        if key not in self._plans:
            self._plans[key] = Plan(resolve(self.method, K, self.options, backend=self.backend, cross_batch=cross_batch),
                                    self.device, self.backend)
        plan = self._plans[key]
        if plan.weighting.stateful is not None:
            plan.weighting.stateful.check_tasks(K)
        return plan

    def _check_call(self, losses, scales, cross_batch: bool) -> Plan:
        for k, loss in enumerate(losses):
            checks.check_loss(loss, self._loss_name(k, len(losses), cross_batch))
        if scales is not None:
            for k, s in enumerate(scales):
                if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                    raise ValueError(f"scale{k + 1} must be a finite number; got {s!r}")
        checks.check_sync(self.sync)
        plan = self.plan_for(len(losses) // 2 if cross_batch else len(losses), cross_batch)
        if not self.graph_checked:
            checks.check_graph(losses, self.face, self.params, self.shared_index)
            self.graph_checked = True
        return plan

    # -- the step ------------------------------------------------------------------------------------
    def step(self, losses: Sequence[torch.Tensor], scales: Optional[Sequence[float]] = None, retain_graph: bool = False,
             second_losses: Optional[Sequence[torch.Tensor]] = None):
        """Steps 1-5 of the module docstring; returns ``(G, w)`` (w before ``scales``; both None for a
        per-coordinate method). ``second_losses``: the same K losses on a second, independent batch, for a
        cross-batch method (NOTE: [Cross-batch Gram]): 2K backward passes, G is the K x K cross matrix."""
        cross_batch = second_losses is not None
        if cross_batch:
            losses = list(losses) + list(second_losses)
        plan = self._check_call(losses, scales, cross_batch)
        self._cross = cross_batch
        K = len(losses)
        previous = [p.grad for p in self.params]
        state = StepState(previous, previous if self.local is None else [self.local(g) for g in previous])
        pending = Pending()
        try:
            wrapped: List[List[Optional[torch.Tensor]]] = [None] * K
            for k in reversed(range(K)):  # the last loss first; the first one frees the graph
                wrapped[k] = checks.backward_pass(self.params, losses[k], retain_graph or k > 0)
            current = list(wrapped[0])  # what .grad holds now
            sets = wrapped if self.local is None else [[self.local(t) for t in s] for s in wrapped]
            if self.sync in ("global", "local"):
                distributed.fill_and_reduce(sets, wrapped, self.params, self.device, self.sync, self.process_group)
            result = self._fused(plan, state, sets, wrapped, scales)
            if result is None:
                result = self._grouped(plan, state, sets, wrapped, scales)
            G, w, pending, found = result
        except BaseException:
            pending.rollback()
            for p, g in zip(self.params, previous):
                p.grad = g
            raise
        write.assign(self.params, found, previous, current)
        pending.commit()
        return G, w

    def _loss_name(self, k: int, count: int, cross_batch: bool) -> str:
        if cross_batch and k >= count // 2:
            return f"second_losses[{k - count // 2}]"
        return self.face.loss_name(k)

    def _names(self, K: int) -> List[str]:
        return [f"the {self._loss_name(k, K, self._cross)} gradient of params" for k in range(K)]

    def _gram_mask(self, sets, index: List[int]) -> List[bool]:
        if self._cross:  # shared: what two tasks of the first batch reach (a head is reached in both batches)
            sets = sets[:len(sets) // 2]
        if self.is_shared is not None:
            return [self.is_shared[i] for i in index]
        if self.face.default_shared == "last":
            return [sets[-1][i] is not None for i in index]
        need = min(2, len(sets))  # "reached by at least two losses"; with one loss, what it reaches
        return [sum(s[i] is not None for s in sets) >= need for i in index]

    def _fused(self, plan: Plan, state: StepState, sets, wrapped, scales):
        """NOTE: [Fused step] over every parameter with a gradient, or None when the step needs the grouped path."""
        if not self.fused or self.mode != "reweight" or self.sync not in (None, "global"):
            return None
        found = write.targets(state, sets, wrapped, None, defer_previous=False)
        if not len(found) or len(set(found.accumulate)) != 1:
            return None
        index = found.index
        full = len(index) == len(self.params)
        if not full and getattr(plan.weighting.stateful, "reads_gradients", False):
            return None  # ExcessMTL keeps state per parameter position: the grouped path passes every parameter
        flat = [t for s in sets for t in s] if full else [s[i] for s in sets for i in index]
        if full and self.is_shared is not None:  # planned once: the same list object every step
            mask = None if self._all_shared else self.is_shared
        else:
            mask = self._gram_mask(sets, index)
            mask = None if all(mask) else mask
        names = self._names(len(sets))
        name_refusal = lambda: self._python_checks(sets, found, names)  # noqa: E731
        if not plan.checks_in_op:
            name_refusal()
        G, w, pending = call_checked(lambda: plan.run(found.out, flat, mask, scales, found.accumulate[0]), name_refusal)
        if fake_kernel_ran(G, self.device):
            pending.rollback()
            name_refusal()
        return G, w, pending, found

    def _python_checks(self, sets, found, names) -> None:
        check_sets(sets, names)
        write.check_targets(found, sets, names)

    def _grouped(self, plan: Plan, state: StepState, sets, wrapped, scales):
        K = len(sets)
        names = self._names(K)
        device = self.device if all(t is None for s in sets for t in s) else check_sets(sets, names)
        weighting, coordinate = plan.weighting, plan.weighting.coordinate
        shared = self._gram_mask(sets, list(range(len(self.params))))
        if coordinate is None:
            G = self._gram(sets, shared, device)
            w, pending = weighting.solve(G, flatten_sets([[t if m else None for t, m in zip(s, shared)] for s in sets]))
            applied = weighting.combine_weights(scaled(w, scales))
            weighted = lambda sub, outs, acc: dispatch.combine_sets(applied, sub, device, outs, acc, self.backend,  # noqa: E731
                                                                    pending.nonfinite)
        else:  # one per-coordinate pass per group: no Gram matrix, no weights
            G = w = None
            pending = Pending(rollback=_generator_guard(coordinate.generator))
            weighted = lambda sub, outs, acc: coordinate.run(outs, flatten_sets(sub), acc, self.backend, device)  # noqa: E731
        found = write.targets(state, sets, wrapped, [not s for s in shared] if self.mode == "surgery" else None,
                              defer_previous=self.sync == "local")
        try:
            if found:
                write.check_targets(found, sets, names)
            if coordinate is not None and coordinate.extra_sets and found:
                # GradDrop: one draw over the written parameters in order (torchjd's draws over the stacked
                # Jacobian), not one per write group: groups (.grad held or not) would reorder the draws
                drawn = [o for o, plain in zip(found.out, found.plain or [False] * len(found)) if not plain]
                by_target = dict(zip(map(id, drawn), coordinate.draws(drawn, device)))
                weighted = lambda sub, outs, acc: coordinate.run(outs, flatten_sets(sub), acc, self.backend, device,  # noqa: E731
                                                                 draws=[by_target[id(o)] for o in outs])
            # surgery's plain parameters: sum_k g_k, each task's gradient the mean of its two batches when there
            # are two (the weighting's own combine_weights, as for the shared ones)
            ones = torch.ones(K // 2 if self._cross else K, dtype=torch.float32 if w is None else w.dtype, device=device)
            write.write_groups(found, sets, weighted, weighting.combine_weights(scaled(ones, scales)), self.backend, device,
                               pending.nonfinite)
            if self.sync == "local":
                write.finish_local(found, state, self.process_group)
            if pending.nonfinite is not None and self.sync in ("local", "sharded"):
                # every rank keeps or advances its state alike: a non-finite value written on one rank reaches
                # every rank's .grad through the all-reduce (local) or GradScaler's check (sharded)
                distributed.all_reduce_max_(pending.nonfinite, self.process_group)
        except BaseException:
            pending.rollback()
            raise
        return G, w, pending, found

    def _gram(self, sets, shared: List[bool], device) -> torch.Tensor:
        index = [i for i, s in enumerate(shared) if s]
        sub = [[s[i] for i in index] for s in sets]
        size = len(sets) // 2 if self._cross else len(sets)
        if not any(t is not None and t.numel() > 0 for s in sub for t in s):
            G = torch.zeros(size, size, dtype=result_dtype([t for s in sets for t in s]), device=device)
        elif self._cross:  # NOTE: [Cross-batch Gram]
            G = dispatch.cross_gram(sub, device, self.backend)
        else:
            G = dispatch.gram(sub, device, self.backend)
        if self.sync == "sharded":
            G = distributed.all_reduce_sum_(G.contiguous(), self.process_group)  # every rank, even with an empty shard
        return G

    # -- checkpointing -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"method": the stateful method's state_dict() or None, "generator_state": a generator option's
        state or None}`` (torch.optim's convention: load it into an engine built with the same arguments)."""
        stateful = self.method if hasattr(self.method, "state_dict") else None
        generator = self.options.get("generator")
        return {"method": None if stateful is None else stateful.state_dict(),
                "generator_state": None if generator is None else generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or set(state_dict) != {"method", "generator_state"}:
            raise ValueError("state_dict must be what state_dict() returned (keys 'method', 'generator_state')")
        stateful = self.method if hasattr(self.method, "load_state_dict") else None
        generator = self.options.get("generator")
        if (state_dict["method"] is None) != (stateful is None):
            raise ValueError("state_dict was saved with a different kind of method (stateful or not)")
        if (state_dict["generator_state"] is None) != (generator is None):
            raise ValueError("state_dict and this step differ in having a generator= option")
        if stateful is not None:
            stateful.load_state_dict(state_dict["method"])
        if generator is not None:
            generator.set_state(state_dict["generator_state"])
