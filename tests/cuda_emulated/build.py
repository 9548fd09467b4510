"""Builds csrc/cuda/*.cu for the CPU (NOTE: [Emulated execution model] in cuda_emu.h).

Each ``.cu`` is copied with its launches rewritten mechanically -- ``kernel<T, K><<<grid, block, shmem,
stream>>>(args)`` becomes ``::cuemu::launch(grid, block, shmem, stream, [&] { kernel<T, K>(args); })`` --
and compiled with the host C++ compiler against the stand-in CUDA headers in ``include/``; nothing in
``csrc/cuda`` changes. Every ``.cu`` in the directory is built, so a kernel added later is built too.

Objects and the linked driver are cached by a hash of what went into them (sources, headers, flags,
compiler), under ``$GH_CUDA_EMU_CACHE`` (default ``~/.cache/gh_kernels/cuda_emulated``): an unchanged
kernel is not rebuilt, and the mutation check (mutate.py) rebuilds only what a mutation touched.

    python tests/cuda_emulated/build.py [--variant o1|ubsan]   # prints the driver's path
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(ROOT, "csrc")

# -O1: the kernels' unrolled loops compile several times faster than at -O2 and run fast enough;
# -fno-strict-aliasing: the vector loads reinterpret uint4 as __half2 as CUDA allows.
_COMMON = ["-std=c++17", "-fno-strict-aliasing", "-fno-omit-frame-pointer", "-Wall", "-Wno-unused-function",
           "-Wno-unknown-pragmas"]
VARIANTS: Dict[str, List[str]] = {
    "o1": ["-O1"],
    # UBSan: misaligned vector loads (an item wrongly marked aligned), out-of-bounds indexing of the
    # kernels' fixed-size arrays, and the rest of -fsanitize=undefined; any report aborts the run.
    # -O0: the checks are the same, and it compiles in 7 s instead of 16.
    "ubsan": ["-O0", "-fsanitize=undefined,alignment,bounds", "-fno-sanitize-recover=all"],
}


def cache_dir() -> str:
    return os.environ.get("GH_CUDA_EMU_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gh_kernels",
                                                                "cuda_emulated")


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) found")
    return cxx


_LAUNCH_OPEN = "<<<"


def _kernel_start(text: str, end: int) -> int:
    """Start of the kernel expression that ends at ``end`` (just before ``<<<``): an identifier,
    possibly qualified, with an optional template argument list balanced on < >."""
    i = end
    if text[i - 1] == ">":
        depth = 0
        while i > 0:
            i -= 1
            c = text[i]
            if c == ">":
                depth += 1
            elif c == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
        i -= 1
    return i


def _matching_paren(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced parentheses after a launch")


def rewrite_launches(text: str) -> str:
    """Every ``K<<<cfg>>>(args)`` into ``::cuemu::launch("K", cfg..., [&] { K(args); })``; line count kept."""
    out, pos = [], 0
    while True:
        at = text.find(_LAUNCH_OPEN, pos)
        if at < 0:
            out.append(text[pos:])
            return "".join(out)
        start = _kernel_start(text, at)
        close = text.find(">>>", at)
        config = [c.strip() for c in text[at + 3:close].split(",")]
        config += ["0", "nullptr"][len(config) - 2:] if len(config) < 4 else []
        args_open = close + 3
        while text[args_open].isspace():
            args_open += 1
        if text[args_open] != "(":
            raise ValueError(f"launch without an argument list near: {text[start:args_open + 20]!r}")
        args_close = _matching_paren(text, args_open)
        kernel = text[start:at]
        if not re.fullmatch(r"[\w:]+(<.*>)?", kernel, flags=re.S):
            raise ValueError(f"cannot parse the kernel of a launch: {kernel!r}")
        out.append(text[pos:start])
        name = re.match(r"[\w:]+", kernel).group(0)
        out.append(f"::cuemu::launch(\"{name}\", dim3({config[0]}), dim3({config[1]}), {config[2]}, {config[3]}, [&] {{ "
                   f"{kernel}{text[args_open:args_close + 1]}; }})" + "\n" * text[at:args_open].count("\n"))
        pos = args_close + 1


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:20]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _headers(csrc: str) -> List[str]:
    return sorted(glob.glob(os.path.join(csrc, "cuda", "*.cuh")) + glob.glob(os.path.join(csrc, "cuda", "*.h")) +
                  glob.glob(os.path.join(csrc, "include", "*.h")) + glob.glob(os.path.join(HERE, "*.h")) +
                  glob.glob(os.path.join(HERE, "include", "*.h")))


def kernel_sources(csrc: str = CSRC) -> List[str]:
    return sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))


def kernel_names(csrc: str = CSRC) -> List[str]:
    """Every __global__ function defined in csrc/cuda/*.cu (the tests check that each one was launched)."""
    names = set()
    for cu in kernel_sources(csrc):
        text = re.sub(r"//[^\n]*", "", _read(cu).decode())
        for m in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(", text):
            names.add(m.group(1))
    return sorted(names)


def _compile(cxx: str, flags: List[str], src_text: bytes, name: str, includes: List[str], deps: bytes) -> str:
    key = _digest(cxx.encode(), " ".join(flags + includes).encode(), src_text, deps)
    obj = os.path.join(cache_dir(), "obj", f"{name}-{key}.o")
    if os.path.exists(obj):
        return obj
    os.makedirs(os.path.dirname(obj), exist_ok=True)
    src = os.path.join(cache_dir(), "src", f"{name}-{key}.cpp")
    os.makedirs(os.path.dirname(src), exist_ok=True)
    with open(src, "wb") as f:
        f.write(src_text)
    tmp = f"{obj}.{os.getpid()}.tmp"
    cmd = [cxx, *flags, *[f"-I{i}" for i in includes], "-c", src, "-o", tmp]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"emulated build of {name} failed:\n{' '.join(cmd)}\n{run.stderr[-6000:]}")
    os.replace(tmp, obj)
    return obj


def build(variant: str = "o1", csrc: str = CSRC, jobs: int = 0) -> str:
    """Builds (or finds in the cache) the driver for the kernels under ``csrc``; returns its path."""
    cxx = compiler()
    flags = _COMMON + VARIANTS[variant]
    includes = [os.path.join(HERE, "include"), HERE, os.path.join(csrc, "include"), os.path.join(csrc, "cuda")]
    deps = b"".join(_read(h) for h in _headers(csrc))
    units = []
    for cu in kernel_sources(csrc):
        name = os.path.splitext(os.path.basename(cu))[0]
        rel = os.path.relpath(cu, ROOT) if cu.startswith(ROOT) else cu
        text = f'#line 1 "{rel}"\n'.encode() + rewrite_launches(_read(cu).decode()).encode()
        units.append((text, name))
    for extra in ("runtime.cpp", "driver.cpp"):
        units.append((_read(os.path.join(HERE, extra)), os.path.splitext(extra)[0]))
    workers = jobs or max(1, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        objs = list(pool.map(lambda u: _compile(cxx, flags, u[0], u[1], includes, deps), units))
    key = _digest(cxx.encode(), " ".join(flags).encode(), *[o.encode() for o in objs])
    exe = os.path.join(cache_dir(), "bin", f"driver-{variant}-{key}")
    if not os.path.exists(exe):
        os.makedirs(os.path.dirname(exe), exist_ok=True)
        tmp = f"{exe}.{os.getpid()}.tmp"
        run = subprocess.run([cxx, *flags, *objs, "-o", tmp], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"emulated link failed:\n{run.stderr[-4000:]}")
        os.replace(tmp, exe)
    return exe


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="o1")
    ap.add_argument("--csrc", default=CSRC)
    args = ap.parse_args()
    print(build(args.variant, args.csrc))
    sys.exit(0)
