"""The ``"cpu"`` and ``"cuda"`` backends: the C++/CUDA extension ``gh_kernels._C`` (``csrc/``).

Importing ``gh_kernels._C`` runs its registrations (``csrc/cpu/register_cpu.cpp`` for the
``cpu`` overloads, ``csrc/cuda/register_cuda.cpp`` for the ``cuda`` overloads when it was built
with CUDA). Nothing is registered from Python.
"""
from __future__ import annotations

import importlib
from typing import Optional

from ...ops import library as _ops

_import_error: Optional[str] = None
_loaded = False


def _import_extension() -> Optional[str]:
    global _import_error, _loaded
    if not _loaded:
        _loaded = True
        try:
            importlib.import_module("gh_kernels._C")
        except Exception as e:  # ImportError, or an ABI mismatch surfacing as OSError
            _import_error = f"the C++ extension gh_kernels._C could not be imported ({type(e).__name__}: {e})"
    return _import_error


def load(name: str) -> Optional[str]:
    reason = _import_extension()
    if reason is not None:
        return reason
    key = {"cpu": "CPU", "cuda": "CUDA"}[name]
    if not _ops.has_kernel("gram", name, key):
        if name == "cuda":
            return "the C++ extension was built without CUDA kernels (CPU-only torch or no CUDA toolkit at build time)"
        return "the C++ extension gh_kernels._C loaded but registered no CPU kernels"
    return None


def unavailable(name: str, device) -> Optional[str]:
    if device is not None and device.type != name:
        return f"backend {name!r} runs {name.upper()} tensors only, got tensors on {device}"
    return None


def extension_error() -> Optional[str]:
    """Why the C++ extension is not serving, or None when it is (the "cpu" backend's load check)."""
    return load("cpu")
