"""``Harmonizer``: a training-step API with two backward passes and an in-place combine. ``backward``
runs named steps: check the call (nothing touched yet), two backward passes (a failure restores every
``.grad``), fill/reduce across ranks, check the gradients, Gram over ``shared``, weights, write back."""
from __future__ import annotations

from typing import Iterable, List, NamedTuple, Optional

import torch

from . import _step_checks as checks
from . import _dispatch, _write, distributed
from .methods import check_method

MODES = ("reweight", "surgery")


def backward_pass(params: List[torch.Tensor], loss: torch.Tensor, retain_graph: bool) -> List[Optional[torch.Tensor]]:
    """One loss's gradients: ``.grad`` cleared, ``loss.backward()``, the new ``.grad`` of every parameter
    (the caller restores ``.grad`` if a later step fails). A DDP reducer error gets an explanation."""
    for p in params:
        p.grad = None
    try:
        loss.backward(retain_graph=retain_graph)
    except RuntimeError as e:
        checks.explain_ddp_reducer_error(e)
        raise
    return [p.grad for p in params]


class HarmonizeResult(NamedTuple):
    """What one ``Harmonizer.backward`` computed, as device tensors (log them without a sync)."""

    weights: torch.Tensor  #: (2,) float32: (w1, w2) before ``scale1``/``scale2``
    cos: torch.Tensor  #: 0-dim float32: cos(theta) between g1 and g2 over the shared parameters (0 if a norm is 0)
    gram: torch.Tensor  #: (2, 2) float32 Gram matrix over the shared parameters


class Harmonizer:
    """Gradient harmonization for a training step: ``backward(loss1, loss2)`` replaces ``loss.backward()``.

    Args:
        params: every parameter either loss reaches (e.g. ``model.parameters()``, domain
            discriminator included). Duplicates are ignored. The first ``backward`` checks that
            no parameter outside ``params`` is reached (its ``.grad`` would get a raw gradient).
        shared: the parameters the Gram matrix is computed over; each must be in ``params``.
            Default (``None``): at every step, the parameters that loss 2 (the classification
            loss) reaches. In domain adaptation that is the feature extractor and the classifier,
            without the discriminator that only loss 1 reaches: what the released code computes
            its Gram matrix over. A ``shared`` that holds loss-1-only parameters gets a warning.
        method: ``"sum"``, ``"gh"``, ``"gh++"`` or ``"gh++released"`` (see ``gh_kernels.methods``).
        kappa: GH++ split in [0, 1].
        mode: ``"reweight"``: every parameter gets ``scale1*w1*g1 + scale2*w2*g2``, exactly the
            released code's third backward of ``scale1*w1*L1 + scale2*w2*L2``. ``"surgery"``:
            only ``shared`` parameters are harmonized, the others get ``scale1*g1 + scale2*g2``.
        backend: kernel backend for the Gram and combine passes (default: automatic); checked here.
        sync: data-parallel mode, ``None``, ``"global"`` (DDP, exact), ``"local"`` or ``"sharded"``
            (FSDP2); see :mod:`gh_kernels.distributed`. Needs an initialized process group.
        process_group: the group to communicate over (default: the world).

    Slot 1 is the alignment (transfer) loss, slot 2 the classification loss.
    """

    def __init__(self, params: Iterable[torch.Tensor], *, shared: Optional[Iterable[torch.Tensor]] = None,
                 method: str = "gh", kappa: float = 0.5, mode: str = "reweight", backend: Optional[str] = None,
                 sync: Optional[str] = None, process_group=None):
        check_method(method, kappa)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}; got {mode!r}")
        if sync not in distributed.SYNC_MODES:
            raise ValueError(f"sync must be one of None, 'global', 'local', 'sharded'; got {sync!r}")
        self.params: List[torch.Tensor] = checks.unique_tensors(params)
        if not self.params:
            raise ValueError("params is empty: pass every parameter either loss reaches")
        checks.check_params(self.params)
        self.shared_index: Optional[List[int]] = checks.shared_index(self.params, shared)
        self.device = distributed.local(self.params[0]).device
        checks.check_sync(sync)
        self.method, self.kappa, self.mode, self.backend = method, float(kappa), mode, backend
        self.sync, self.process_group = sync, process_group
        self._is_shared = None if self.shared_index is None else [False] * len(self.params)
        for i in self.shared_index or []:
            self._is_shared[i] = True
        self._graph_checked = sync == "sharded"  # FSDP2's graph reaches its unsharded parameters, not ours
        # Decided once (an unknown or unusable backend fails here, not mid-step): one fused op call
        # (Gram, weights, combine) per step when every gradient gets the same weights; surgery's plain
        # group, per-rank weights and sharded Gram sums need separate steps.
        self._step = _write.StepPlan(self.params, self._is_shared, self.device, method, self.kappa, mode, backend,
                                     sync, process_group)

    def backward(self, loss1: torch.Tensor, loss2: torch.Tensor, *, scale1: float = 1.0, scale2: float = 1.0,
                 retain_graph: bool = False) -> HarmonizeResult:
        """Two backward passes, weights over ``shared``, harmonized gradients added into ``.grad``.

        Existing ``.grad`` contents are added to (gradient accumulation works). ``scale1`` is
        the released code's ``trade_off``; the weights are computed from the unscaled losses'
        gradients. All or nothing: if anything raises (a bad argument, an autograd error), every
        ``.grad`` is left as it was. Loss 2's backward runs first (keeping its graph), then loss 1's
        frees the graph unless ``retain_graph``: only what loss 2 alone reaches (in domain
        adaptation, the classifier head) stays saved while you hold ``loss2``.
        """
        self._check_call(loss1, loss2)
        previous = [p.grad for p in self.params]
        try:
            g2 = self._backward_pass(loss2, retain_graph=True)
            g1 = self._backward_pass(loss1, retain_graph=retain_graph)
            wrapped = (previous, g1, g2)  # what goes back into .grad (DTensor gradients stay DTensors)
            prev, g1, g2 = ([distributed.local(t) for t in s] for s in wrapped)
            if self.sync in ("global", "local"):
                distributed.fill_and_reduce([g1, g2], wrapped[1:], self.params, self.device, self.sync, self.process_group)
            done = self._step.fusable and _write.fused_step(self._step, g1, g2, prev, wrapped, scale1, scale2)
            if not done:
                device = _write.check_grads(g1, g2, self.device)
                G = self._gram(g1, g2, device)
                w = _dispatch.weights(G, self.method, self.kappa, self.backend)
        except BaseException:
            for p, g in zip(self.params, previous):
                p.grad = g
            raise
        if done:
            G, w = done
        else:
            _write.grouped_write(self._step, g1, g2, prev, wrapped, w, scale1, scale2, device)
        norm_prod = (G[0, 0] * G[1, 1]).sqrt()
        cos = torch.where(norm_prod > 0, G[0, 1] / norm_prod.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(norm_prod))
        return HarmonizeResult(w, cos, G)

    def _check_call(self, loss1, loss2) -> None:
        checks.check_loss(loss1, "loss1")
        checks.check_loss(loss2, "loss2")
        checks.check_sync(self.sync)  # parameter dtypes: checked by the constructor, and with the gradients
        if not self._graph_checked:
            checks.check_graph(loss1, loss2, self.params, self.shared_index)
            self._graph_checked = True

    def _backward_pass(self, loss, retain_graph) -> List[Optional[torch.Tensor]]:
        return backward_pass(self.params, loss, retain_graph)

    def _gram(self, g1, g2, device) -> torch.Tensor:
        index = self.shared_index if self.shared_index is not None else [i for i, t in enumerate(g2) if t is not None]
        s1, s2 = [g1[i] for i in index], [g2[i] for i in index]
        if any(t is not None and t.numel() > 0 for t in s1 + s2):
            G = _dispatch.gram([s1, s2], device, self.backend)
        else:
            G = torch.zeros(2, 2, dtype=torch.float32, device=device)
        if self.sync == "sharded":
            G = distributed.all_reduce_sum_(G.contiguous(), self.process_group)  # every rank, even with an empty shard
        return G
