"""The ``"torch"`` backend: pure-torch kernels (``kernels.py``) registered for every device
(``CompositeExplicitAutograd``). Always available; the fallback for any number of sets."""
from typing import Optional

from ...ops import library as _ops
from . import coordinate, kernels


def load(name: str) -> Optional[str]:
    _ops.register_kernels(name, "CompositeExplicitAutograd", kernels.gram, kernels.weights, kernels.combine_,
                          kernels.harmonize_, coordinate.coordinate_)
    return None


def unavailable(name: str, device) -> Optional[str]:
    return None
