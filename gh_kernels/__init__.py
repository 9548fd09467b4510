"""gh_kernels: fused Gradient Harmonization (GH, GH++) for PyTorch.

Public API (each documented in the README):

* functions: :func:`gram`, :func:`weights`, :func:`combine`, :func:`harmonize` (returns a
  :class:`HarmonizeOutput`), and :func:`plan` (a :class:`HarmonizePlan`: ``harmonize`` validated
  once, one op call per step);
* the training-step class :class:`Harmonizer` (``backward`` returns a :class:`HarmonizeResult`);
* backends: :func:`available_backends`, :func:`extension_error`, :class:`BackendUnavailable`;
* :data:`METHODS`, the weight rules' names;
* multi-task (K sets): :func:`aggregate` (an :class:`AggregateOutput`), :func:`weights` with the
  :data:`MULTITASK_METHODS`, the stateful :class:`GradVac` and :class:`NashMTL`, and the K-loss
  training step :class:`MultiTaskHarmonizer`;
* :class:`GradReverse` / :func:`grad_reverse`, the gradient-reversal layer of DANN-style training.

The math is specified in ``docs/METHOD.md`` (Huang, Song and Zhang, TPAMI 2024);
:mod:`gh_kernels.reference` holds the float64 reference.
"""
from . import _ops  # noqa: F401  (defines the ops before any backend registers kernels)
from .backends import BackendUnavailable, available_backends, load_backends
from .backends.cpp import extension_error
from .functional import AggregateOutput, HarmonizeOutput, aggregate, combine, gram, harmonize, weights
from .harmonizer import HarmonizeResult, Harmonizer
from .layers import GradReverse, grad_reverse
from .methods import METHODS
from .multitask import MULTITASK_METHODS, GradVac, NashMTL
from .multitask_harmonizer import MultiTaskHarmonizer, MultiTaskResult
from .plan import HarmonizePlan, plan

load_backends()

__version__ = "0.1.0"

__all__ = [
    "gram", "weights", "combine", "harmonize", "HarmonizeOutput", "plan", "HarmonizePlan", "Harmonizer", "HarmonizeResult",
    "available_backends", "extension_error", "BackendUnavailable", "METHODS", "GradReverse", "grad_reverse",
    "aggregate", "AggregateOutput", "GradVac", "NashMTL", "MultiTaskHarmonizer", "MultiTaskResult", "MULTITASK_METHODS",
]
