"""The backend registry: which backends exist, which devices each runs, and the one place that
chooses the backend serving a call.

Each backend is a package ``gh_kernels.backends.<package>`` with two functions:

* ``load(name) -> Optional[str]``: register the backend's kernels for its op overloads
  (``gh_kernels::gram.<name>``, ...; see :mod:`gh_kernels.ops.library`) and return ``None``, or return
  why it cannot run on this machine. Called once, by :func:`load_backends`.
* ``unavailable(name, device) -> Optional[str]``: why it cannot run tensors on ``device``, or None.

Choice, per call: the ``backend=`` argument, else ``GH_KERNELS_BACKEND`` (``auto`` by default).
``auto`` picks the highest-priority backend that loaded for the tensors' device (CPU: cpu >
torch; CUDA: cuda > triton > torch); one that failed to load is skipped (the reason is logged
once), and so is one whose kernel for the op takes fewer gradient sets than the call has (logged once per K). A backend named explicitly (argument or environment) that cannot serve the call raises
:class:`BackendUnavailable` with the reason. Every call then goes through the dispatcher, to the
chosen backend's overload (:func:`kernel`).
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from ..ops import library as _ops
from ..ops.constants import MAX_SETS, MAX_WIDE_SETS

logger = logging.getLogger("gh_kernels")
ENV_VAR = "GH_KERNELS_BACKEND"


class BackendUnavailable(RuntimeError):
    """A backend that was asked for explicitly cannot run here; the message says why."""


@dataclass(frozen=True)
class Backend:
    name: str                       # the backend= value and the op overload name
    package: str                    # gh_kernels.backends.<package> implements and registers it
    auto_priority: Dict[str, int] = field(default_factory=dict)  # device type -> rank for "auto" (higher first)
    max_sets: Optional[int] = MAX_SETS  # most gradient sets its Gram and combine kernels take (None: any number)
    max_coordinate_sets: Optional[int] = MAX_SETS  # most sets its per-coordinate kernel takes (None: any number)

    def limit(self, op: str = "gram/combine_") -> Optional[int]:
        """The most sets the backend's kernel of ``op`` takes (None: any number)."""
        return self.max_coordinate_sets if op == "coordinate_" else self.max_sets


BACKENDS: Dict[str, Backend] = {
    "torch": Backend("torch", "pytorch", {"cpu": 0, "cuda": 0}, max_sets=None, max_coordinate_sets=None),
    "cpu": Backend("cpu", "cpp", {"cpu": 2}, max_sets=None),  # NOTE: [Wide Gram tile] (csrc/cpu/gram.cpp)
    "cuda": Backend("cuda", "cpp", {"cuda": 2}, max_sets=MAX_WIDE_SETS),  # NOTE: [Wide work list] (gh_worklist.h)
    "triton": Backend("triton", "triton", {"cuda": 1}, max_sets=MAX_WIDE_SETS),  # above MAX_SETS: triton/anyk.py  # CPU tensors only under TRITON_INTERPRET=1, never automatically
}
assert tuple(BACKENDS) == _ops.OVERLOADS, "every backend needs its op overloads (gh_kernels/ops/library.py)"

_load_error: Dict[str, Optional[str]] = {}
_packages: Dict[str, object] = {}  # name -> its package module, imported once by load_backends (not while tracing)


def _package(name: str):
    if name not in _packages:
        _packages[name] = importlib.import_module(f"gh_kernels.backends.{BACKENDS[name].package}")
    return _packages[name]


def load_backends() -> None:
    """Load every backend once (registers its kernels); record why a backend cannot load."""
    for name in BACKENDS:
        if name in _load_error:
            continue
        try:
            _load_error[name] = _package(name).load(name)
        except Exception as e:  # a backend's own failure must not break the package
            _load_error[name] = f"loading it raised {type(e).__name__}: {e}"
        if _load_error[name] is not None:
            logger.info("gh_kernels: backend %r is unavailable: %s", name, _load_error[name])


def unavailable(name: str, device: Optional[torch.device]) -> Optional[str]:
    """Why backend ``name`` cannot run tensors on ``device`` (any device when None), or None."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(repr(b) for b in BACKENDS)} or None; got {name!r}")
    if _load_error.get(name) is not None:
        return _load_error[name]
    return _package(name).unavailable(name, device)


def available_backends() -> List[str]:
    """Backends that can run on a device this machine has (CPU, or a visible GPU)."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [name for name in BACKENDS if any(unavailable(name, d) is None for d in devices)]


def resolve(backend: Optional[str], device: torch.device, num_sets: int = 2, op: str = "gram/combine_") -> str:
    """The backend name that serves a call of ``op`` on ``device`` with ``num_sets`` sets (the Gram and
    combine ops share their limit; ``coordinate_`` has its own)."""
    requested = backend if backend is not None else os.environ.get(ENV_VAR, "auto") or "auto"
    where = "backend" if backend is not None else ENV_VAR
    if requested == "auto":
        ranked = sorted((b for b in BACKENDS.values() if device.type in b.auto_priority),
                        key=lambda b: -b.auto_priority[device.type])
        for b in ranked:
            if unavailable(b.name, device) is not None:
                continue
            limit = b.limit(op)
            if limit is not None and num_sets > limit:
                _log_once(f"gh_kernels: {num_sets} gradient sets on {device.type}: backend {b.name!r}'s {op} takes at "
                          f"most {limit}; falling back to the next backend")
                continue
            return b.name
        return "torch"
    if requested not in BACKENDS:
        raise ValueError(f"{where} must be one of 'auto', {', '.join(repr(b) for b in BACKENDS)}; got {requested!r}")
    reason = unavailable(requested, device)
    if reason is not None:
        raise BackendUnavailable(f"{where}={requested!r} cannot run this call: {reason}")
    limit = BACKENDS[requested].limit(op)
    if limit is not None and num_sets > limit:
        raise ValueError(f"{where}={requested!r} handles at most {limit} gradient sets in {op}; got {num_sets} "
                         f"(use 'torch')")
    return requested


_logged: set = set()


def _log_once(message: str) -> None:
    """Log a fallback reason at INFO, once per distinct message (a training loop would repeat it every step)."""
    if message not in _logged:
        _logged.add(message)
        logger.info(message)


def kernel(name: str, op: str) -> Callable:
    """The dispatcher overload that runs op ``op`` with backend ``name`` (from :func:`resolve`)."""
    return _ops.op(op, name)


def load_error(name: str) -> Optional[str]:
    """Why backend ``name`` failed to load on this machine, or None."""
    return _load_error.get(name)
