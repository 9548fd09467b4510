"""gh_kernels: fused Gradient Harmonization (GH, GH++) and multi-task gradient aggregation for PyTorch.

Public API (documented in docs/API.md):

* functions: :func:`gram`, :func:`weights`, :func:`combine`, :func:`harmonize` (a
  :class:`HarmonizeOutput`), :func:`aggregate` (an :class:`AggregateOutput`) and :func:`plan` (a
  :class:`Plan`: Gram, weights and combine decided once, run per call);
* the training steps, two faces of one engine: :class:`Harmonizer` (two losses, GH rules;
  ``backward`` returns a :class:`HarmonizeResult`) and :class:`MultiTaskHarmonizer` (K losses, every
  method; a :class:`MultiTaskResult`);
* methods: :data:`METHODS` (the two-task GH rules), :data:`MULTITASK_METHODS`, and the stateful
  :class:`GradVac` and :class:`NashMTL` (``state_dict``/``load_state_dict``);
* backends: :func:`available_backends`, :func:`extension_error`, :class:`BackendUnavailable`;
* :class:`GradReverse` / :func:`grad_reverse`, the gradient-reversal layer of DANN-style training.

Layout: the public modules at the top; the layers below them in ``ops/`` (op schemas, argument
checks, dispatch), ``weighting/`` (every method, one registry), ``step/`` (the training-step engine)
and ``backends/`` (one package per kernel implementation). docs/ARCHITECTURE.md walks through a call.
"""
from .ops import library as _library  # noqa: F401  (defines the ops before any backend registers kernels)
from .backends import BackendUnavailable, available_backends, load_backends
from .backends.cpp import extension_error
from .functional import AggregateOutput, HarmonizeOutput, aggregate, combine, gram, harmonize, weights
from .harmonizer import HarmonizeResult, Harmonizer, MultiTaskHarmonizer, MultiTaskResult
from .layers import GradReverse, grad_reverse
from .ops.constants import METHODS
from .plan import Plan, plan
from .weighting import MULTITASK_METHODS, GradVac, NashMTL

load_backends()

__version__ = "0.2.0"

#: Deprecated alias of :class:`Plan` (the two-set plan is now the K-set plan).
HarmonizePlan = Plan

__all__ = [
    "gram", "weights", "combine", "harmonize", "HarmonizeOutput", "aggregate", "AggregateOutput", "plan", "Plan",
    "Harmonizer", "HarmonizeResult", "MultiTaskHarmonizer", "MultiTaskResult", "METHODS", "MULTITASK_METHODS",
    "GradVac", "NashMTL", "available_backends", "extension_error", "BackendUnavailable", "GradReverse", "grad_reverse",
]
