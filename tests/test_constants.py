"""One source for every constant shared across languages: compile a program against
csrc/include/gh_constants.h (the C++/CUDA copy) and compare each value with gh_kernels/ops/constants.py
(the Python/Triton copy); check that the kernels use the named constants, not literals."""
import os
import re
import shutil
import subprocess

import pytest

from gh_kernels.ops import constants as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = r"""
#include <cstdio>
#include "gh_constants.h"
int main() {
  std::printf("MAX_SETS %d\nNUM_PAIRS %d\nGHPP_MIN_SIN %.9g\nNUM_METHODS %d\nMAX_WIDE_SETS %d\n", gh::kMaxSets,
              gh::kNumPairs, static_cast<double>(gh::kGhppMinSin), gh::kNumMethods, gh::kMaxWideSets);
  for (int m = 0; m < gh::kNumMethods; ++m) std::printf("METHOD %d %s\n", m, gh::kMethodNames[m]);
  for (int r = 0; r < gh::kNumCoordinateRules; ++r) std::printf("RULE %d %s\n", r, gh::kCoordinateRuleNames[r]);
  std::printf("RULECODES %d %d\n", gh::kCoordinateTrimmedMean, gh::kCoordinateGradDrop);
  std::printf("CODES %d %d %d %d\n", gh::kSum, gh::kGH, gh::kGHPP, gh::kGHPPReleased);
  for (int a = 0; a < gh::kMaxSets; ++a)
    for (int b = a; b < gh::kMaxSets; ++b) std::printf("PAIR %d %d %d\n", a, b, gh::pair_column(a, b));
}
"""


@pytest.fixture(scope="module")
def header_values(tmp_path_factory):
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("constants")
    (d / "main.cpp").write_text(PROGRAM)
    subprocess.run([cxx, "-std=c++17", "-I", os.path.join(ROOT, "csrc", "include"), str(d / "main.cpp"), "-o", str(d / "main")],
                   check=True, capture_output=True)
    return subprocess.run([str(d / "main")], check=True, capture_output=True, text=True).stdout.splitlines()


def test_header_matches_python(header_values):
    lines = header_values
    scalars = dict(line.split()[:2] for line in lines
                   if line.split()[0] in ("MAX_SETS", "NUM_PAIRS", "GHPP_MIN_SIN", "NUM_METHODS", "MAX_WIDE_SETS"))
    assert int(scalars["MAX_SETS"]) == C.MAX_SETS
    assert int(scalars["MAX_WIDE_SETS"]) == C.MAX_WIDE_SETS
    assert int(scalars["NUM_PAIRS"]) == C.NUM_PAIRS
    assert float(scalars["GHPP_MIN_SIN"]) == pytest.approx(C.GHPP_MIN_SIN, rel=1e-7)
    assert int(scalars["NUM_METHODS"]) == len(C.METHODS)
    names = [line.split()[2] for line in lines if line.startswith("METHOD ")]
    assert tuple(names) == C.METHODS
    codes = [int(x) for x in next(line for line in lines if line.startswith("CODES")).split()[1:]]
    assert codes == [C.METHODS.index(m) for m in ("sum", "gh", "gh++", "gh++released")]
    rules = [line.split()[2] for line in lines if line.startswith("RULE ")]
    assert tuple(rules) == C.COORDINATE_RULES
    rule_codes = [int(x) for x in next(line for line in lines if line.startswith("RULECODES")).split()[1:]]
    assert rule_codes == [C.COORDINATE_RULES.index(r) for r in ("trimmed-mean", "graddrop")]
    pairs = {(int(a), int(b)): int(col) for _, a, b, col in (line.split() for line in lines if line.startswith("PAIR"))}
    assert pairs == {(a, b): C.pair_column(a, b) for a in range(C.MAX_SETS) for b in range(a, C.MAX_SETS)}
    assert sorted(pairs.values()) == list(range(C.NUM_PAIRS))  # a dense, one-to-one layout


def test_weights_kernels_use_the_method_table():
    """The C++ name -> code mapping reads kMethodNames (no hand-written list of names)."""
    with open(os.path.join(ROOT, "csrc", "include", "gh_tensor_utils.h")) as f:
        src = f.read()
    assert "kMethodNames[code]" in src


def test_no_copied_literals_in_kernels():
    """The copies the architecture issue found (sets, pair count, row width) are gone from the kernels."""
    checks = {
        "csrc/include/gh_cuda_launch.h": [r"kMaxSets\s*=", r"kNumPairs\s*="],
        "csrc/include/gh_tensor_utils.h": [r"kMaxSets\s*="],
        "csrc/cuda/gram.cu": [r"a \* 4 -"],
        "gh_kernels/backends/triton/gram.py": [r"pid \* 8", r"\* 10\b", r"NUM_PAIRS = 10", r"< 10\)"],
        "gh_kernels/backends/triton/combine.py": [r"pid \* 8", r"row \+ [4-7]\b"],
        "gh_kernels/backends/triton/weights.py": [r"MIN_SIN=0\.02"],
        "gh_kernels/backends/registry.py": [r"MAX_FAST_SETS\s*=\s*4"],
    }
    for path, patterns in checks.items():
        with open(os.path.join(ROOT, path)) as f:
            src = f.read()
        for pattern in patterns:
            assert re.search(pattern, src) is None, f"{path} still holds the literal {pattern!r}"
