"""``Harmonizer``: a training-step API with two backward passes and an in-place combine."""
from __future__ import annotations

from typing import Iterable, List, NamedTuple, Optional

import torch

from . import distributed, functional
from ._validate import check_sets
from .methods import check_method

MODES = ("reweight", "surgery")


class HarmonizeResult(NamedTuple):
    """What one ``Harmonizer.backward`` computed, as device tensors (log them without a sync)."""

    weights: torch.Tensor  #: (2,) float32: (w1, w2) before ``scale1``/``scale2``
    cos: torch.Tensor  #: 0-dim float32: cos(theta) between g1 and g2 over the shared parameters (0 if a norm is 0)
    gram: torch.Tensor  #: (2, 2) float32 Gram matrix over the shared parameters


class Harmonizer:
    """Gradient harmonization for a training step: ``backward(loss1, loss2)`` replaces ``loss.backward()``.

    Args:
        params: every parameter either loss reaches (e.g. ``model.parameters()``, domain
            discriminator included). Duplicates are ignored.
        shared: the parameters the Gram matrix is computed over (default: all of ``params``);
            each must be in ``params``.
        method: ``"sum"``, ``"gh"``, ``"gh++"`` or ``"gh++released"`` (see ``gh_kernels.methods``).
        kappa: GH++ split in [0, 1].
        mode: ``"reweight"``: every parameter gets ``scale1*w1*g1 + scale2*w2*g2``, exactly the
            released code's third backward of ``scale1*w1*L1 + scale2*w2*L2``. ``"surgery"``:
            only ``shared`` parameters are harmonized, the others get ``scale1*g1 + scale2*g2``.
        backend: kernel backend for the Gram and combine passes (default: automatic).
        sync: data-parallel mode (see :mod:`gh_kernels.distributed`): ``None`` (no communication),
            ``"global"`` (DDP under ``no_sync()``: harmonize the all-rank averaged gradients, exact),
            ``"local"`` (harmonize per rank, then average the updates) or ``"sharded"`` (FSDP2 /
            DTensor shards: all-reduce only the 2x2 Gram partials).
        process_group: the group to communicate over (default: the world).

    Slot 1 is the alignment (transfer) loss, slot 2 the classification loss.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        *,
        shared: Optional[Iterable[torch.Tensor]] = None,
        method: str = "gh",
        kappa: float = 0.5,
        mode: str = "reweight",
        backend: Optional[str] = None,
        sync: Optional[str] = None,
        process_group=None,
    ):
        check_method(method, kappa)
        if sync not in distributed.SYNC_MODES:
            raise ValueError(f"sync must be one of None, 'global', 'local', 'sharded'; got {sync!r}")
        self.sync, self.process_group = sync, process_group
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}; got {mode!r}")
        self.params: List[torch.Tensor] = []
        seen = set()
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"params[{i}] must be a torch.Tensor (a parameter), got {type(p).__name__}")
            if id(p) not in seen:
                seen.add(id(p))
                self.params.append(p)
        if not self.params:
            raise ValueError("params is empty: pass every parameter either loss reaches")
        if shared is None:
            self.shared_index = list(range(len(self.params)))
        else:
            position = {id(p): i for i, p in enumerate(self.params)}
            self.shared_index = []
            for j, p in enumerate(shared):
                if id(p) not in position:
                    raise ValueError(f"shared[{j}] is not in params: shared must be a subset of params")
                if position[id(p)] not in self.shared_index:
                    self.shared_index.append(position[id(p)])
            if not self.shared_index:
                raise ValueError("shared is empty: pass the parameters the Gram matrix is computed over")
        self.method, self.kappa, self.mode, self.backend = method, float(kappa), mode, backend
        self._is_shared = [False] * len(self.params)
        for i in self.shared_index:
            self._is_shared[i] = True

    def _take_grads(self) -> List[Optional[torch.Tensor]]:
        grads = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        return grads

    def backward(self, loss1: torch.Tensor, loss2: torch.Tensor, *, scale1: float = 1.0, scale2: float = 1.0,
                 retain_graph: bool = False) -> HarmonizeResult:
        """Two backward passes, weights over ``shared``, harmonized gradients added into ``.grad``.

        Existing ``.grad`` contents are added to (gradient accumulation works). ``scale1`` is
        the released code's ``trade_off``; the weights are computed from the unscaled losses'
        gradients. Returns a :class:`HarmonizeResult` of device tensors.
        """
        previous = self._take_grads()
        if loss1.requires_grad:
            loss1.backward(retain_graph=True)
        g1 = self._take_grads()
        if loss2.requires_grad:
            loss2.backward(retain_graph=retain_graph)
        g2 = self._take_grads()
        # What we write back into .grad (DTensor gradients stay DTensors; kernels see their shards).
        wrap1, wrap2, wrap_prev = list(g1), list(g2), list(previous)
        g1 = [distributed.local(t) for t in g1]
        g2 = [distributed.local(t) for t in g2]
        previous = [distributed.local(t) for t in previous]

        device = self.params[0].device
        if self.sync in ("global", "local"):
            # A parameter may have a gradient on some ranks only: give it zeros where it has none.
            anywhere = distributed.present_anywhere(g1, g2, device, self.process_group)
            for i, (has1, has2) in enumerate(anywhere):
                if has1 and g1[i] is None:
                    g1[i] = wrap1[i] = torch.zeros_like(distributed.local(self.params[i]))
                if has2 and g2[i] is None:
                    g2[i] = wrap2[i] = torch.zeros_like(distributed.local(self.params[i]))
            if self.sync == "global":
                distributed.all_reduce_mean_([t for t in g1 + g2 if t is not None], self.process_group)
        if any(t is not None for t in g1) or any(t is not None for t in g2):
            # One validation per step (dtypes, devices); autograd guarantees matching shapes.
            device = check_sets([g1, g2], ["loss1 gradients", "loss2 gradients"])
        s1 = [g1[i] for i in self.shared_index]
        s2 = [g2[i] for i in self.shared_index]
        if any(t is not None and t.numel() > 0 for t in s1 + s2):
            G = functional._gram_checked([s1, s2], device, self.backend)
        else:
            G = torch.zeros(2, 2, dtype=torch.float32, device=device)
        if self.sync == "sharded":
            G = distributed.all_reduce_sum_(G.contiguous(), self.process_group)  # every rank, even with an empty shard
        w = functional.weights(G, self.method, kappa=self.kappa, backend=self.backend)
        norm_prod = (G[0, 0] * G[1, 1]).sqrt()
        cos = torch.where(norm_prod > 0, G[0, 1] / norm_prod.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(norm_prod))

        harmonized = w if scale1 == 1.0 and scale2 == 1.0 else torch.stack((w[0] * scale1, w[1] * scale2))
        plain = None  # (scale1, scale2), built on the device only when surgery mode needs it
        # "local": combine into the fresh gradients first, average, then add to what .grad held.
        defer_previous = self.sync == "local"

        # Group parameters by (weights, accumulate) so each group is one fused combine call.
        groups = {}
        results = {}
        for i, p in enumerate(self.params):
            a, b, prev = g1[i], g2[i], previous[i]
            if a is None and b is None:
                p.grad = wrap_prev[i]
                continue
            use_plain = self.mode == "surgery" and not self._is_shared[i]
            if prev is not None and not defer_previous:
                out, acc, wrapped = prev, True, wrap_prev[i]
            else:  # in place into a gradient we own
                out, acc, wrapped = (b, False, wrap2[i]) if b is not None else (a, False, wrap1[i])
            groups.setdefault((use_plain, acc), []).append((i, out))
            results[i] = (out, wrapped)
        for (use_plain, acc), members in groups.items():
            if use_plain and plain is None:
                one = torch.ones((), dtype=torch.float32, device=device)
                plain = torch.stack((one * scale1, one * scale2))
            idx = [i for i, _ in members]
            outs = [o for _, o in members]
            functional._combine_checked(plain if use_plain else harmonized, [[g1[i] for i in idx], [g2[i] for i in idx]],
                                        device, outs, acc, self.backend)
        if defer_previous:
            distributed.all_reduce_mean_([o for o, _ in results.values()], self.process_group)
        for i, (out, wrapped) in results.items():
            if defer_previous and previous[i] is not None:
                previous[i].add_(out)
                wrapped = wrap_prev[i]
            self.params[i].grad = wrapped
        return HarmonizeResult(w, cos, G)
