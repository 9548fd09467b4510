"""Kernel backends, one package each, and the registry that chooses among them.

* ``pytorch/``: the ``"torch"`` backend, pure-torch kernels for every device;
* ``cpp/``: the ``"cpu"`` and ``"cuda"`` backends, the C++/CUDA extension ``gh_kernels._C``
  built from ``csrc/``;
* ``triton/``: the ``"triton"`` backend (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``).

:mod:`.registry` lists them and chooses one per call; ``README.md`` here says how to add one.
"""
from .registry import BACKENDS, BackendUnavailable, available_backends, kernel, load_backends, resolve, unavailable

__all__ = ["BACKENDS", "BackendUnavailable", "available_backends", "kernel", "load_backends", "resolve", "unavailable"]
