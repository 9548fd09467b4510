"""The Triton backend: Gram, weights and combine kernels (one file per kernel family).

Imported lazily by ``backends.py``. On CUDA the kernels serve as the dispatcher's CUDA
kernels of the ``gh_kernels`` ops when the C++ extension has none; on CPU tensors they run
under the Triton interpreter (``TRITON_INTERPRET=1`` set before Triton is imported).
"""
from .triton_combine import combine_
from .triton_gram import gram
from .triton_weights import weights

__all__ = ["gram", "weights", "combine_"]
