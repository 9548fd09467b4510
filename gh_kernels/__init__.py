"""gh_kernels: fused Gradient Harmonization (GH, GH++) and multi-task gradient aggregation for PyTorch.

Public API (documented in docs/API.md):

* functions: :func:`gram`, :func:`weights`, :func:`combine`, :func:`harmonize` (a
  :class:`HarmonizeOutput`), :func:`aggregate` (an :class:`AggregateOutput`) and :func:`plan` (a
  :class:`Plan`: Gram, weights and combine decided once, run per call);
* the training steps, two faces of one engine: :class:`Harmonizer` (two losses, GH rules;
  ``backward`` returns a :class:`HarmonizeResult`) and :class:`MultiTaskHarmonizer` (K losses, every
  method; a :class:`MultiTaskResult`);
* methods: :data:`METHODS` (the two-task GH rules), :data:`MULTITASK_METHODS` (names), and the stateful
  ones' classes (:data:`STATEFUL_METHODS`):
  :class:`GradVac`, :class:`NashMTL`, :class:`PCD`, :class:`CRMOGM`, :class:`MoDo`, :class:`SDMGrad` and
  :class:`ExcessMTL` (``state_dict``/``load_state_dict``);
* backends: :func:`available_backends`, :func:`extension_error`, :class:`BackendUnavailable`;
* :class:`GradReverse` / :func:`grad_reverse`, the gradient-reversal layer of DANN-style training.

Layout: the public modules at the top; the layers below them in ``ops/`` (op schemas, argument
checks, dispatch), ``weighting/`` (every method, one registry), ``step/`` (the training-step engine)
and ``backends/`` (one package per kernel implementation). docs/ARCHITECTURE.md walks through a call.
"""
import sys as _sys
import warnings as _warnings

from .ops import library as _library  # noqa: F401  (defines the ops before any backend registers kernels)
from .backends import BackendUnavailable, available_backends, load_backends
from .backends.cpp import extension_error
from .functional import AggregateOutput, HarmonizeOutput, aggregate, combine, gram, harmonize, weights
from .harmonizer import HarmonizeResult, Harmonizer, MultiTaskHarmonizer, MultiTaskResult
from .layers import GradReverse, grad_reverse
from .ops.constants import METHODS
from .plan import Plan, plan
from .weighting import CRMOGM, MULTITASK_METHODS, PCD, STATEFUL_METHODS, SDMGrad, ExcessMTL, GradVac, MoDo, NashMTL
from . import harmonizer as _harmonizer, weighting as _weighting

load_backends()

from ._version import __version__  # noqa: E402  (the one source: setup.py reads it too)

# Names of the 0.1 layout, kept importable with a DeprecationWarning on attribute access
# (``import gh_kernels.methods`` style imports resolve through sys.modules, without the warning).
_MOVED = {"HarmonizePlan": ("gh_kernels.plan(g1, g2, ...), which returns a gh_kernels.Plan", lambda: _sys.modules["gh_kernels.plan"].HarmonizePlan),
          "methods": ("gh_kernels.weighting.gh", lambda: _weighting.gh),
          "multitask": ("gh_kernels.weighting", lambda: _weighting),
          "multitask_harmonizer": ("gh_kernels.harmonizer", lambda: _harmonizer)}
for _old, _new in (("methods", "gh"), ("multitask", None)):
    _sys.modules.setdefault(f"gh_kernels.{_old}", _weighting if _new is None else getattr(_weighting, _new))
# 0.1's submodule paths (gh_kernels.multitask.stateful, ...) are the same module objects as the new ones: importing
# them by the old path must not load a second copy (its GradVac would be another class, refused by the step).
for _name, _module in list(_sys.modules.items()):
    if _name.startswith("gh_kernels.weighting."):
        _sys.modules.setdefault("gh_kernels.multitask." + _name[len("gh_kernels.weighting."):], _module)
_sys.modules.setdefault("gh_kernels.multitask_harmonizer", _harmonizer)


def __getattr__(name):
    if name in _MOVED:
        new, value = _MOVED[name]
        _warnings.warn(f"gh_kernels.{name} is deprecated and will be removed; use {new}", DeprecationWarning, stacklevel=2)
        return value()
    raise AttributeError(f"module 'gh_kernels' has no attribute {name!r}")

__all__ = [
    "gram", "weights", "combine", "harmonize", "HarmonizeOutput", "aggregate", "AggregateOutput", "plan", "Plan",
    "Harmonizer", "HarmonizeResult", "MultiTaskHarmonizer", "MultiTaskResult", "METHODS", "MULTITASK_METHODS",
    "STATEFUL_METHODS",
    "GradVac", "NashMTL", "PCD", "CRMOGM", "MoDo", "SDMGrad", "ExcessMTL", "available_backends", "extension_error", "BackendUnavailable", "GradReverse", "grad_reverse",
]
