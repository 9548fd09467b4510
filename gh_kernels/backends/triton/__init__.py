"""The ``"triton"`` backend: Gram (``gram.py``), combine (``combine.py``), weights (``weights.py``) and
per-coordinate (``coordinate.py``) kernels over a work list (``worklist.py``) of flat parameter views (``flat.py``),
with the JIT helpers both multi-tensor kernels share (``common.py``).

Registered for the ``CUDA`` key, and for ``CPU`` (the Triton interpreter, ``TRITON_INTERPRET=1``
set before Triton is imported: how CI tests it). Importing Triton costs about a second, so the
registered kernels import the kernel modules on their first call.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Optional

from ...ops import library as _ops


class _Lazy:
    """A kernel that imports ``gh_kernels.backends.triton.<module>`` on its first call."""

    def __init__(self, module: str, attr: str):
        self.module, self.attr, self.fn = module, attr, None

    def __call__(self, *args):
        if self.fn is None:
            from ..registry import BackendUnavailable

            try:
                self.fn = getattr(importlib.import_module(f"{__name__}.{self.module}"), self.attr)
            except Exception as e:
                raise BackendUnavailable(f"the Triton kernels could not be imported ({type(e).__name__}: {e})") from e
        return self.fn(*args)


def load(name: str) -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed"
    for key in ("CPU", "CUDA"):
        _ops.register_kernels(name, key, _Lazy("gram", "gram"), _Lazy("weights", "weights"), _Lazy("combine", "combine_"),
                              _Lazy("fused", "harmonize_"), _Lazy("coordinate", "coordinate_"))
    return None


def unavailable(name: str, device) -> Optional[str]:
    import torch

    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "backend 'triton' runs CPU tensors only under TRITON_INTERPRET=1 (set before triton is imported)"
    if device.type not in ("cpu", "cuda"):
        return f"backend 'triton' runs CUDA tensors, got tensors on {device}"
    return None
