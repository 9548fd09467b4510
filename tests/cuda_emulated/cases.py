"""Cases for the CUDA-on-CPU driver (driver.cpp): built from torch tensors, written in the driver's
binary format, run through the built driver, and read back as tensors.

A case is one call of a CUDA op's passes (Gram, combine, per-coordinate, the fused harmonize_, the
2x2 weights) over a list of parameters with per-parameter size, dtype, start offsets (unaligned
starts), which sets hold a gradient (absent sets), Gram membership, an optional in-place out (the
out shares a set's memory) and the chunk size of the work list (0: the glue's own choice for an
H100). ``standard_params`` builds the list every op is tested on.
"""
from __future__ import annotations

import os
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from . import build

OP_GRAM, OP_COMBINE, OP_COORDINATE, OP_HARMONIZE, OP_WEIGHTS, OP_CONVERT = range(6)
DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
METHOD_CODE = {"sum": 0, "gh": 1, "gh++": 2, "gh++released": 3}
RULE_CODE = {"trimmed-mean": 0, "graddrop": 1}
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass
class Param:
    numel: int
    dtype: torch.dtype
    sets: List[Optional[torch.Tensor]]   # one per set; None: no gradient for this parameter
    out: Optional[torch.Tensor] = None   # initial out (ops that write out)
    in_offset: int = 0                   # elements between a 16-byte boundary and each set's start
    out_offset: int = 0
    in_gram: bool = True                 # harmonize_'s gram mask

    @property
    def present(self) -> int:
        """The present bits as the driver's int64 (set 63's bit is the sign bit)."""
        bits = sum(1 << k for k, s in enumerate(self.sets) if s is not None)
        return bits - (1 << 64) if bits >= 1 << 63 else bits


@dataclass
class Case:
    op: int
    K: int
    params: List[Param] = field(default_factory=list)
    g_f64: bool = False
    accumulate: bool = False
    rule: str = "trimmed-mean"
    trim: int = 0
    chunk: int = 0
    method: str = "gh"
    out_alias: int = -1
    kappa: float = 0.5
    scale1: float = 1.0
    scale2: float = 1.0
    vec: List[float] = field(default_factory=list)
    values: Optional[torch.Tensor] = None  # OP_CONVERT: the float32 values to convert
    label: str = ""


@dataclass
class Result:
    status: int
    n_items: int = 0
    G: Optional[torch.Tensor] = None
    G_emul: Optional[torch.Tensor] = None
    w: Optional[torch.Tensor] = None           # (w1, w2, scaled1, scaled2) from the kernel
    w_emul: Optional[torch.Tensor] = None
    outs: List[torch.Tensor] = field(default_factory=list)
    outs_emul: List[torch.Tensor] = field(default_factory=list)
    guard_broken: int = 0
    nonfinite: int = 0                         # OP_COMBINE: the kernel's non-finite flag


def _raw(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().reshape(-1)
    return t.view(_INT_VIEW[t.element_size()]).numpy().tobytes()


def _i64(*vs) -> bytes:
    return struct.pack(f"<{len(vs)}q", *[int(v) for v in vs])


def _f64(*vs) -> bytes:
    return struct.pack(f"<{len(vs)}d", *[float(v) for v in vs])


def encode(case: Case) -> bytes:
    if case.op == OP_CONVERT:
        values = case.values
        return _i64(OP_CONVERT, values.numel()) + _raw(values.float())
    head = _i64(case.op, case.K, case.g_f64, case.accumulate, RULE_CODE[case.rule], case.trim, case.chunk,
                len(case.params), METHOD_CODE[case.method], case.out_alias)
    head += _f64(case.kappa, case.scale1, case.scale2) + _i64(len(case.vec)) + _f64(*case.vec)
    for p in case.params:
        head += _i64(p.numel, p.in_offset, p.out_offset, p.present, p.in_gram, DTYPE_CODE[p.dtype])
    body = []
    for p in case.params:
        for s in p.sets:
            if s is not None:
                body.append(_raw(s.to(p.dtype)))
        if case.op not in (OP_GRAM, OP_WEIGHTS):
            body.append(_raw(p.out if p.out is not None else torch.zeros(p.numel, dtype=p.dtype)))
    return head + b"".join(body)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        b = self.data[self.pos:self.pos + n]
        if len(b) != n:
            raise EOFError("the driver's output ended early")
        self.pos += n
        return b

    def i64(self) -> int:
        return struct.unpack("<q", self.take(8))[0]

    def f64s(self, n: int) -> torch.Tensor:
        return torch.tensor(struct.unpack(f"<{n}d", self.take(8 * n)), dtype=torch.float64)

    def tensor(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        size = torch.empty((), dtype=dtype).element_size()
        raw = bytearray(self.take(n * size))
        return torch.frombuffer(raw, dtype=dtype).clone() if n else torch.empty(0, dtype=dtype)


def decode(case: Case, r: _Reader) -> Result:
    if case.op == OP_CONVERT:
        n = case.values.numel()
        pairs = r.tensor(2 * n, torch.int16).view(n, 2)
        table = r.tensor(2 * 65536, torch.float32).view(65536, 2)
        return Result(0, outs=[pairs[:, 0], pairs[:, 1], table[:, 0], table[:, 1]])
    res = Result(r.i64(), r.i64())
    if case.op == OP_WEIGHTS:
        res.w, res.w_emul = r.f64s(4), r.f64s(4)
        return res
    if case.op in (OP_GRAM, OP_HARMONIZE):
        res.G, res.G_emul = r.f64s(case.K ** 2).view(case.K, case.K), r.f64s(case.K ** 2).view(case.K, case.K)
    if case.op == OP_HARMONIZE:
        res.w, res.w_emul = r.f64s(4), r.f64s(4)
    if case.op != OP_GRAM:
        res.outs = [r.tensor(p.numel, p.dtype) for p in case.params]
        res.outs_emul = [r.tensor(p.numel, p.dtype) for p in case.params]
        res.guard_broken = r.i64()
    if case.op == OP_COMBINE:
        res.nonfinite = r.i64()
    return res


def run(cases: List[Case], variant: str = "o1", driver: Optional[str] = None) -> List[Result]:
    """Runs the cases in one driver process; raises with the driver's stderr if it fails."""
    exe = driver or build.build(variant)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "cases.bin"), os.path.join(tmp, "results.bin")
        with open(src, "wb") as f:
            f.write(_i64(len(cases)))
            for c in cases:
                f.write(encode(c))
        proc = subprocess.run([exe, src, dst], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"the emulated-CUDA driver failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(dst, "rb") as f:
            reader = _Reader(f.read())
    results = [decode(c, reader) for c in cases]
    if reader.pos != len(reader.data):
        raise RuntimeError("the driver wrote more than the cases asked for")
    return results


# ---- the parameter lists the tests use ---------------------------------------------------------------

def _values(n: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, generator=gen, dtype=torch.float64) * scale


def standard_params(K: int, dtype: torch.dtype, gen: torch.Generator, *, chunk: int, with_out: bool,
                    absent: bool = True, big: Optional[int] = None) -> List[Param]:
    """The list every op runs on: a parameter over several chunks with a tail (vector path, unrolled
    groups, remainder vectors, scalar tail), size 1, an unaligned start (scalar path), a parameter
    some sets lack (absent sets read as 0), size 0, a parameter no set has, and an unaligned out."""
    big = big if big is not None else 2 * chunk + 37
    shapes = [  # (numel, in_offset, out_offset, which sets have it)
        (big, 0, 0, "all"),
        (1, 0, 0, "all"),
        (4099, 1, 1, "all"),
        (777, 0, 0, "some" if absent else "all"),
        (0, 0, 0, "all"),
        (50, 0, 0, "none"),
        (300, 0, 3, "all"),
    ]
    params = []
    for i, (numel, in_off, out_off, which) in enumerate(shapes):
        if which == "none":
            sets = [None] * K
        elif which == "some" and K > 1:
            sets = [None if (k + i) % 3 == 0 else _values(numel, gen) for k in range(K)]
            if all(s is None for s in sets):
                sets[K - 1] = _values(numel, gen)
        else:
            sets = [_values(numel, gen) for _ in range(K)]
        sets = [s.to(dtype) if s is not None else None for s in sets]
        out = _values(numel, gen).to(dtype) if with_out else None
        params.append(Param(numel, dtype, sets, out, in_off, out_off))
    return params
