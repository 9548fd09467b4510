"""Constants shared by the Python, C++, CUDA and Triton code: their one Python source.

``csrc/include/gh_constants.h`` holds the same values for C++ and CUDA;
``tests/test_constants.py`` compiles a small program against that header and compares every
value with this module, so a change on one side and not the other fails the tests. Triton
kernels read them from here (as ``tl.constexpr`` globals).
"""
from __future__ import annotations

#: The fused kernels handle up to this many gradient sets; more sets use the "torch" backend.
MAX_SETS = 8

#: The CUDA kernels take up to this many sets (their wide path above MAX_SETS); the C++ CPU kernels any number.
MAX_WIDE_SETS = 64

#: Partial sums of the Gram pass: one column per pair (a, b), a <= b, of the MAX_SETS sets.
NUM_PAIRS = MAX_SETS * (MAX_SETS + 1) // 2


def pair_column(a: int, b: int) -> int:
    """Column of pair (a, b), a <= b: row-major upper triangle, (0,0),(0,1),...,(0,7),(1,1),...,(7,7)."""
    return a * MAX_SETS - a * (a - 1) // 2 + (b - a)


#: Weight rules by name; a method's integer code (passed to the C++/CUDA/Triton kernels) is its index.
METHODS = ("sum", "gh", "gh++", "gh++released")
#: The per-coordinate op's rules; a rule's code is its index (gh::CoordinateRule).
COORDINATE_RULES = ("trimmed-mean", "graddrop")

#: Below this sin(theta) (theta > ~178.85 degrees) GH++ uses the GH weights (docs/METHOD.md, rule R4).
GHPP_MIN_SIN = 0.02

#: Width, in int64 columns, of one row of the Triton work list (backends/triton/worklist.py): one
#: offset per set, the out offset, start, length and the present bits.
WORK_ROW = MAX_SETS + 4
