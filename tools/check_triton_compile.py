"""Compile every Triton kernel variant for sm_90 without a GPU (Triton ships ptxas) and check the
PTX: aligned variants must use 16-byte vector loads. Exit status 0 when all is well.

Run with TRITON_INTERPRET unset (the interpreter replaces the JIT). Used by tests/test_triton_compile.py.
"""
import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("check_triton_compile: unset TRITON_INTERPRET first")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from gh_kernels.backends.triton import combine as triton_combine, gram as triton_gram, weights as triton_weights  # noqa: E402
from gh_kernels.backends.triton import coordinate as triton_coordinate, wide as triton_wide  # noqa: E402
from gh_kernels.backends.triton import anyk as triton_anyk  # noqa: E402
from gh_kernels.ops.constants import MAX_SETS  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
PTR = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16", "float64": "*fp64"}
ELEM = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


def compile_kernel(fn, signature, constexprs, aligned_args=()):
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned_args}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": 4})


def count(k, what):
    """16-byte vector accesses: v4 of 32-bit words, or v2 of 64-bit ones (float64)."""
    kinds = [what] + ([what.replace(".v4", ".v2") + suffix for suffix in (".f64", ".b64", ".u64")] if ".v4" in what else [])
    return sum(1 for line in k.asm["ptx"].splitlines() if any(kind in line for kind in kinds))


def main():
    failures = []
    for dtype in PTR:
        for K in (1, 2, 3, 4):
            for aligned in (True, False):
                sig = {"table": "*i64", "base": PTR[dtype], "partials": "*fp64", "slot_base": "i64", "K": "constexpr",
                       "BLOCK": "constexpr", "ALIGNED": "constexpr", "VEC": "constexpr"}
                k = compile_kernel(triton_gram._gram_partials_kernel, sig,
                                   {"K": K, "BLOCK": 1024, "ALIGNED": aligned, "VEC": 16 // ELEM[dtype]}, (0, 1, 2))
                v = count(k, "ld.global.v4")
                print(f"gram_partials {dtype:8s} K={K} aligned={aligned!s:5s}: {v} 16-byte loads")
                if aligned and v < K:
                    failures.append(f"gram {dtype} K={K}: no 16-byte loads")
        for acc, flag in ((False, False), (True, False), (True, True)):  # FLAG: NOTE: [Non-finite flag of the combine]
            sig = {"table": "*i64", "base": PTR[dtype], "weights": "*fp64" if dtype == "float64" else "*fp32",
                   "nonfinite": "*i32", "K": "constexpr", "BLOCK": "constexpr",
                   "ALIGNED": "constexpr", "VEC": "constexpr", "ACCUMULATE": "constexpr", "FLAG": "constexpr"}
            k = compile_kernel(triton_combine._combine_kernel, sig,
                               {"K": 2, "BLOCK": 1024, "ALIGNED": True, "VEC": 16 // ELEM[dtype], "ACCUMULATE": acc,
                                "FLAG": flag}, (0, 1, 2))
            lv, sv = count(k, "ld.global.v4"), count(k, "st.global.v4")
            print(f"combine       {dtype:8s} K=2 accumulate={acc!s:5s} flag={flag!s:5s}: {lv} 16-byte loads, {sv} 16-byte stores")
            if lv < 2 or sv < 1:
                failures.append(f"combine {dtype} accumulate={acc} flag={flag}: no 16-byte vectors")
        for K in (5, 8):  # the wide kernels (K > 4): they must compile for the GPU; not tuned there
            wsig = {"table": "*i64", "base": PTR[dtype], "partials": "*fp64", "slot_base": "i64", "K": "constexpr", "BLOCK": "constexpr"}
            compile_kernel(triton_wide.gram_wide_kernel, wsig, {"K": K, "BLOCK": triton_wide.WIDE_BLOCK}, (0, 1, 2))
            csig = {"table": "*i64", "base": PTR[dtype], "weights": "*fp64" if dtype == "float64" else "*fp32",
                    "nonfinite": "*i32", "K": "constexpr", "W": "constexpr", "BLOCK": "constexpr", "ACCUMULATE": "constexpr",
                    "FLAG": "constexpr"}
            for flag in (False, True):  # K = 5..8 combine with anyk.py's kernel on rows of W = MAX_SETS
                compile_kernel(triton_anyk.combine_anyk_kernel, csig, {"K": K, "W": MAX_SETS, "BLOCK": triton_wide.WIDE_BLOCK,
                                                                       "ACCUMULATE": True, "FLAG": flag}, (0, 1, 2))
        print(f"gram_wide / combine_wide {dtype:8s} K=5, 8 compile")
        for K in (9, 40, 64):  # the any-K kernels (anyk.py): compile for the GPU; not timed there
            W = triton_anyk.width(K)
            asig = {"table": "*i64", "base": PTR[dtype], "partials": "*fp64", "slot_base": "i64", "K": "constexpr",
                    "W": "constexpr", "BLOCK": "constexpr"}
            compile_kernel(triton_anyk.gram_anyk_kernel, asig, {"K": K, "W": W, "BLOCK": triton_anyk.ANYK_BLOCK}, (0, 1, 2))
            csig = {"table": "*i64", "base": PTR[dtype], "weights": "*fp64" if dtype == "float64" else "*fp32",
                    "nonfinite": "*i32", "K": "constexpr", "W": "constexpr", "BLOCK": "constexpr", "ACCUMULATE": "constexpr",
                    "FLAG": "constexpr"}
            for flag in (False, True):
                compile_kernel(triton_anyk.combine_anyk_kernel, csig, {"K": K, "W": W, "BLOCK": triton_anyk.ANYK_BLOCK,
                                                                       "ACCUMULATE": True, "FLAG": flag}, (0, 1, 2))
        print(f"gram_anyk / combine_anyk {dtype:8s} K=9, 40, 64 compile")
        for rule, (K, sets) in ((0, (2, 2)), (0, (8, 8)), (1, (2, 3)), (1, (7, 8))):  # the per-coordinate kernel
            psig = {"table": "*i64", "base": PTR[dtype], "leak": "*fp64" if dtype == "float64" else "*fp32", "trim": "i32",
                    "K": "constexpr", "NUM_SETS": "constexpr", "RULE": "constexpr", "BLOCK": "constexpr", "ACCUMULATE": "constexpr"}
            compile_kernel(triton_coordinate.coordinate_kernel, psig, {"K": K, "NUM_SETS": sets, "RULE": rule,
                                                                      "BLOCK": triton_wide.WIDE_BLOCK, "ACCUMULATE": True}, (0, 1, 2))
        print(f"coordinate {dtype:8s} (trimmed-mean K = 2, 8; graddrop K = 2, 7) compile")
    for g in ("*fp32", "*fp64"):
        compile_kernel(triton_gram._gram_finalize_kernel, {"partials": "*fp64", "G": g, "items": "i64",
                                                           "K": "constexpr", "RBLOCK": "constexpr"}, {"K": 8, "RBLOCK": 64})
    for g in ("*fp32", "*fp64"):
        compile_kernel(triton_anyk._finalize, {"partials": "*fp64", "G": g, "pair_a": "*i64", "pair_b": "*i64", "items": "i64",
                                               "K": "constexpr", "RBLOCK": "constexpr", "CB": "constexpr"},
                       {"K": 40, "RBLOCK": 64, "CB": triton_anyk.FINALIZE_COLUMNS})
    for method in range(4):
        compile_kernel(triton_weights._weights_kernel, {"G": "*fp32", "W": "*fp32", "kappa": "fp32",
                                                        "METHOD": "constexpr", "MIN_SIN": "constexpr"},
                       {"METHOD": method, "MIN_SIN": 0.02})
    print("gram_finalize and weights (4 methods) compile")
    if failures:
        print("FAILED:", *failures, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
