"""gh_kernels: fused Gradient Harmonization (GH, GH++) for PyTorch.

Public API: :func:`gram`, :func:`weights`, :func:`combine`, :func:`harmonize`,
:class:`Harmonizer`, :func:`available_backends`. The math is specified in METHOD.md
(Huang, Song and Zhang, TPAMI 2024); :mod:`gh_kernels.reference` holds the float64 reference.
"""
from . import _ops  # noqa: F401  (defines the ops before any backend registers kernels)
from .backends import BACKENDS, BackendUnavailable, available_backends, extension_error
from .functional import combine, gram, harmonize, weights
from .harmonizer import HarmonizeResult, Harmonizer
from .layers import GradReverse, grad_reverse
from .methods import GHPP_MIN_SIN, METHODS

__version__ = "0.1.0"

__all__ = [
    "gram", "weights", "combine", "harmonize", "Harmonizer", "HarmonizeResult",
    "available_backends", "extension_error", "BackendUnavailable", "BACKENDS", "METHODS", "GHPP_MIN_SIN",
    "GradReverse", "grad_reverse",
]
