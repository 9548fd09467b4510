"""Backend discovery and choice. One place decides which kernel serves a call.

Backends:

* ``"torch"``: pure-torch kernels (``torch_backend.py``); every device; always available.
* ``"cpu"``: the C++ CPU kernels of the extension ``gh_kernels._C`` (``csrc/cpu``).
* ``"cuda"``: the C++/CUDA kernels of the same extension, when it was built with CUDA (``csrc/cuda``).
* ``"triton"``: the Triton kernels (``triton_*.py``); CUDA tensors, or CPU tensors under
  ``TRITON_INTERPRET=1`` set before Triton is imported (how CI tests them).

Choice, per call: the ``backend=`` argument, else ``GH_KERNELS_BACKEND`` (``auto`` by default).
``auto`` picks the fastest backend that loaded for the tensors' device (CPU: cpu > torch;
CUDA: cuda > triton > torch); a fast backend that failed to load is skipped quietly (the reason
is logged once). A backend named explicitly (argument or environment) that cannot serve the
call raises with the reason.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from typing import Callable, Dict, List, Optional

import torch

from . import _ops, torch_backend

logger = logging.getLogger("gh_kernels")

BACKENDS = ("torch", "cpu", "cuda", "triton")
#: The fused kernels are specialised for up to this many gradient sets; more use "torch".
MAX_FAST_SETS = 4
ENV_VAR = "GH_KERNELS_BACKEND"


class BackendUnavailable(RuntimeError):
    """A backend that was asked for explicitly cannot run here; the message says why."""


_ext_error: Optional[str] = None
_triton_error: Optional[str] = None
_triton_module = None
_triton_owns_cuda_key = False


def _load_extension() -> None:
    global _ext_error
    try:
        importlib.import_module("gh_kernels._C")  # importing runs the TORCH_LIBRARY_IMPL registrations
    except Exception as e:  # ImportError, or an ABI mismatch surfacing as OSError
        _ext_error = f"the C++ extension gh_kernels._C could not be imported ({type(e).__name__}: {e})"
        logger.info("gh_kernels: %s; the pure-torch kernels serve CPU tensors", _ext_error)
        return
    if not _ops.has_kernel("gram", "CPU"):
        _ext_error = "the C++ extension gh_kernels._C loaded but registered no CPU kernels"
        logger.warning("gh_kernels: %s", _ext_error)


def _triton_available() -> Optional[str]:
    """None when Triton can be imported, else the reason (checked without importing it)."""
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed"
    return None


def _triton():
    """Import the Triton kernels on first use (importing triton costs about a second)."""
    global _triton_module, _triton_error
    if _triton_module is None:
        try:
            _triton_module = importlib.import_module("gh_kernels.triton_kernels")
        except Exception as e:
            _triton_error = f"the Triton kernels could not be imported ({type(e).__name__}: {e})"
            raise BackendUnavailable(_triton_error) from e
    return _triton_module


def _register_triton_for_cuda() -> None:
    """Make the Triton kernels the dispatcher's CUDA kernels when the extension has none."""
    global _triton_owns_cuda_key, _triton_error
    _triton_error = _triton_available()
    if _triton_error is not None or _ops.has_kernel("gram", "CUDA"):
        return
    _ops.register_python_kernel("gram", "CUDA", lambda tensors, k: _triton().gram(tensors, k))
    _ops.register_python_kernel("weights", "CUDA", lambda G, m, kappa: _triton().weights(G, m, kappa))
    _ops.register_python_kernel(
        "combine_", "CUDA", lambda out, tensors, k, w, acc: _triton().combine_(out, tensors, k, w, acc)
    )
    _triton_owns_cuda_key = True


_load_extension()
_register_triton_for_cuda()


def extension_error() -> Optional[str]:
    """Why the C++ extension is not serving, or None when it is."""
    return _ext_error


def _reason_unavailable(name: str, device: Optional[torch.device]) -> Optional[str]:
    if name == "torch":
        return None
    if name == "cpu":
        if _ext_error is not None:
            return _ext_error
        if device is not None and device.type != "cpu":
            return f"backend 'cpu' runs CPU tensors only, got tensors on {device}"
        return None
    if name == "cuda":
        if _ext_error is not None:
            return _ext_error
        if not _ops.has_kernel("gram", "CUDA") or _triton_owns_cuda_key:
            return "the C++ extension was built without CUDA kernels (CPU-only torch or no CUDA toolkit at build time)"
        if device is not None and device.type != "cuda":
            return f"backend 'cuda' runs CUDA tensors only, got tensors on {device}"
        return None
    if name == "triton":
        if _triton_error is not None:
            return _triton_error
        if device is not None and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "backend 'triton' runs CPU tensors only under TRITON_INTERPRET=1 (set before triton is imported)"
        if device is not None and device.type not in ("cpu", "cuda"):
            return f"backend 'triton' runs CUDA tensors, got tensors on {device}"
        return None
    raise ValueError(f"backend must be one of {', '.join(repr(b) for b in BACKENDS)} or None; got {name!r}")


def available_backends() -> List[str]:
    """Backends that loaded on this machine (each may still be limited to some devices)."""
    names = ["torch"]
    if _ext_error is None:
        names.append("cpu")
        if _ops.has_kernel("gram", "CUDA") and not _triton_owns_cuda_key:
            names.append("cuda")
    if _triton_error is None:
        names.append("triton")
    return names


_AUTO_ORDER: Dict[str, tuple] = {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")}


def resolve(backend: Optional[str], device: torch.device, num_sets: int = 2) -> str:
    """The backend name that serves a call on ``device`` with ``num_sets`` sets."""
    requested = backend if backend is not None else os.environ.get(ENV_VAR, "auto") or "auto"
    where = "backend" if backend is not None else ENV_VAR
    if requested == "auto":
        if num_sets > MAX_FAST_SETS:
            return "torch"
        for name in _AUTO_ORDER.get(device.type, ("torch",)):
            if _reason_unavailable(name, device) is None:
                return name
        return "torch"
    if requested not in BACKENDS:
        raise ValueError(f"{where} must be one of 'auto', {', '.join(repr(b) for b in BACKENDS)}; got {requested!r}")
    reason = _reason_unavailable(requested, device)
    if reason is not None:
        raise BackendUnavailable(f"{where}={requested!r} cannot run this call: {reason}")
    if requested != "torch" and num_sets > MAX_FAST_SETS:
        raise ValueError(f"{where}={requested!r} handles at most {MAX_FAST_SETS} gradient sets; got {num_sets} (use 'torch')")
    return requested


def kernel(name: str, op: str, device: torch.device) -> Callable:
    """The callable that runs ``op`` for backend ``name`` (from :func:`resolve`) on ``device``.

    Registered kernels are called through the dispatcher (``torch.ops.gh_kernels.*``), which
    ``torch.compile`` treats as one opaque op; the others are called directly.
    """
    if name == "torch":
        return getattr(torch_backend, op)
    if name == "triton" and not (device.type == "cuda" and _triton_owns_cuda_key):
        # CPU tensors under the interpreter, or the extension owns CUDA: called directly
        return _ops.with_version_bump(_triton().combine_) if op == "combine_" else getattr(_triton(), op)
    return getattr(torch.ops.gh_kernels, op)
