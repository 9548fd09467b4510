"""The training-step classes, two thin faces of the one engine (``gh_kernels/step/engine.py``):

* :class:`Harmonizer`: two losses, ``backward(loss1, loss2, scale1=, scale2=)``; the GH rules by
  default, any method of the one registry (the same step as :class:`MultiTaskHarmonizer` at K = 2);
* :class:`MultiTaskHarmonizer`: K losses, every method, ``backward([loss_1, ..., loss_K])``.

Both replace ``loss.backward()`` in a training loop: K backward passes, the Gram matrix over the
shared parameters, the method's weights on the device, the combined gradient into ``.grad``; all or
nothing. Both checkpoint with ``state_dict()``/``load_state_dict()`` (a stateful method's state).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional, Sequence

import torch

from .step.engine import Engine, Face
from .weighting import Method, resolve
from .weighting.gh import METHOD_CODES


class HarmonizeResult(NamedTuple):
    """What one ``Harmonizer.backward`` computed, as device tensors (log them without a sync)."""

    weights: torch.Tensor  #: (2,) float32: (w1, w2) before ``scale1``/``scale2`` (None for a per-coordinate method)
    cos: torch.Tensor  #: 0-dim float32: cos(theta) between g1 and g2 over the shared parameters (0 if a norm is 0)
    gram: torch.Tensor  #: (2, 2) float32 Gram matrix over the shared parameters (None for a per-coordinate method)


class MultiTaskResult(NamedTuple):
    """What one ``MultiTaskHarmonizer.backward`` computed, as device tensors (log them without a sync)."""

    weights: torch.Tensor  #: (K,) the method's weights (NOTE: [Weights dtype])
    gram: torch.Tensor  #: (K, K) Gram matrix over the shared parameters


class _Face:
    """What both faces share: the engine and its checkpointing."""

    _engine: Engine

    @property
    def params(self):
        return self._engine.params

    @property
    def shared_index(self):
        return self._engine.shared_index

    def state_dict(self) -> dict:
        """The step's state (a stateful method's, a ``generator`` option's), as ``torch.optim`` does."""
        return self._engine.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict` into a step built with the same arguments; the run continues bitwise."""
        self._engine.load_state_dict(state_dict)


class Harmonizer(_Face):
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
        method: ``"sum"``, ``"gh"`` (default), ``"gh++"`` or ``"gh++released"`` (see
            ``gh_kernels.weighting.gh``), or any other method of the registry for two tasks
            (:data:`gh_kernels.MULTITASK_METHODS`, or a stateful object such as ``gh_kernels.NashMTL()``):
            the same step as ``MultiTaskHarmonizer(method=...)`` with two losses, plus ``scale1``/``scale2``.
            MoDo and SDMGrad need two batches: use :class:`MultiTaskHarmonizer` (``second_losses=``).
        kappa: GH++ split in [0, 1] (the GH rules only).
        mode: ``"reweight"``: every parameter gets ``scale1*w1*g1 + scale2*w2*g2``, exactly the
            released code's third backward of ``scale1*w1*L1 + scale2*w2*L2``. ``"surgery"``:
            only ``shared`` parameters are harmonized, the others get ``scale1*g1 + scale2*g2``.
        backend: kernel backend for the Gram and combine passes (default: automatic); checked here.
        sync: data-parallel mode, ``None``, ``"global"`` (DDP, exact), ``"local"`` or ``"sharded"``
            (FSDP2); see :mod:`gh_kernels.distributed`. Needs an initialized process group.
        process_group: the group to communicate over (default: the world).
        **options: the options of a registry method (e.g. ``c=0.4`` for ``"cagrad"``), checked here.

    Slot 1 is the alignment (transfer) loss, slot 2 the classification loss. For K losses use
    :class:`MultiTaskHarmonizer` (the same engine).
    """

    def __init__(self, params: Iterable[torch.Tensor], *, shared: Optional[Iterable[torch.Tensor]] = None,
                 method: Method = "gh", kappa: Optional[float] = None, mode: str = "reweight",
                 backend: Optional[str] = None, sync: Optional[str] = None, process_group=None, **options):
        gh_rule = isinstance(method, str) and method in METHOD_CODES
        if kappa is not None and not gh_rule:
            raise ValueError(f"kappa is an option of the GH rules ({', '.join(repr(m) for m in METHOD_CODES)}); "
                             f"method {method!r} does not take it")
        if gh_rule:
            options["kappa"] = 0.5 if kappa is None else kappa
        resolve(method, 2, options, backend=backend, cross_batch=False)  # ValueError naming what is wrong, now
        self.method, self.kappa, self.options = method, options.get("kappa"), dict(options)
        self._engine = Engine(params, face=Face(lambda k: f"loss{k + 1}", "last"), shared=shared, method=method,
                              options=options, mode=mode, backend=backend, sync=sync, process_group=process_group)
        self._engine.plan_for(2)  # the backend's ops and the method decided here, not mid-step

    def backward(self, loss1: torch.Tensor, loss2: torch.Tensor, *, scale1: float = 1.0, scale2: float = 1.0,
                 retain_graph: bool = False) -> HarmonizeResult:
        """Two backward passes, weights over ``shared``, harmonized gradients added into ``.grad``.

        Existing ``.grad`` contents are added to (gradient accumulation works). ``scale1`` is
        the released code's ``trade_off``; the weights are computed from the unscaled losses'
        gradients. All or nothing: if anything raises (a bad argument, an autograd error, a write
        target that breaks the ``out=`` rules), every ``.grad`` is left as it was. Loss 2's backward
        runs first (keeping its graph), then loss 1's frees the graph unless ``retain_graph``.
        """
        G, w = self._engine.step([loss1, loss2], (scale1, scale2), retain_graph)
        if G is None:  # a per-coordinate method: no Gram matrix
            return HarmonizeResult(None, None, None)
        norm_prod = (G[0, 0] * G[1, 1]).sqrt()
        cos = torch.where(norm_prod > 0, G[0, 1] / norm_prod.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(norm_prod))
        return HarmonizeResult(w, cos, G)


class MultiTaskHarmonizer(_Face):
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
        resolve(method, None, options, backend=backend)  # unknown methods/options fail here, not mid-step (K checked per K)
        self.method, self.options = method, dict(options)
        self._engine = Engine(params, face=Face(lambda k: f"losses[{k}]", "two"), shared=shared, method=method,
                              options=options, mode=mode, backend=backend, sync=sync, process_group=process_group)

    @property
    def is_shared(self):
        return self._engine.is_shared

    def backward(self, losses: Sequence[torch.Tensor], *, retain_graph: bool = False,
                 second_losses: Optional[Sequence[torch.Tensor]] = None) -> MultiTaskResult:
        """K backward passes, weights over ``shared``, the aggregated gradient added into ``.grad``.

        Existing ``.grad`` contents are added to (gradient accumulation). All or nothing: if
        anything raises, every ``.grad`` and the method's state are left as they were.

        ``second_losses``: for :class:`gh_kernels.MoDo` and :class:`gh_kernels.SDMGrad` (required there,
        refused elsewhere), the same K losses on a second, independent batch: 2K backward passes, one
        Gram pass over the 2K gradient sets, the weights from its cross-batch block and ``.grad`` gets
        ``sum_k w_k (g_k + g'_k) / 2`` (``gram`` in the result is the K x K cross matrix). Per-coordinate methods
        (``"trimmed-mean"``, ``"graddrop"``) return ``weights`` and ``gram`` None.
        """
        if second_losses is not None:
            if isinstance(second_losses, torch.Tensor) or not isinstance(second_losses, (list, tuple)):
                raise TypeError(f"second_losses must be a list/tuple of scalar losses, got {type(second_losses).__name__}")
            if isinstance(losses, (list, tuple)) and len(second_losses) != len(losses):
                raise ValueError(f"second_losses holds {len(second_losses)} losses but losses holds {len(losses)}: the "
                                 "cross-batch matrix needs the same K losses on each batch")
        if isinstance(losses, torch.Tensor) or not isinstance(losses, (list, tuple)):
            raise TypeError(f"losses must be a list/tuple of scalar losses, got {type(losses).__name__}")
        if len(losses) < 1:
            raise ValueError("losses holds no loss; a step needs at least one")
        G, w = self._engine.step(list(losses), None, retain_graph,
                                 None if second_losses is None else list(second_losses))
        return MultiTaskResult(w, G)
