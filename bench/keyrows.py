"""The key benchmark rows of the GPU quick profile (``bench/gpu_check.sh``), in order of value, each
printed as soon as it is measured, with its target (issue #21):

* N = 1e8 over 160 tensors, float32 and bfloat16: >= 90% of copy bandwidth (5N bytes model);
* N = 1e7 over 160 tensors, float32: >= 70% of copy bandwidth;
* the ResNet-50 list (25.6M elements, 161 tensors), float32: <= 0.2 ms;
* 2,000 tiny tensors: <= 0.1 ms;
* the host time of one replay of a captured CUDA graph of the planned call: <= 30 us.

Planned calls (``gh_kernels.plan``), for every backend given; GPU time from ``triton.testing.do_bench``
(on CPU: ``torch.utils.benchmark``, a smoke run of the same code). Rows go to stdout and, with
``--json``, to a file rewritten after every row (a timeout keeps what ran).

  python -m bench.keyrows --device cuda --backends cuda triton --json $OUT/keyrows.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import List

import torch

import gh_kernels

from . import shapes
from .micro import copy_bandwidth, make_lists, time_it

ROWS = [  # (name, shape list, dtype, target kind, target value)
    ("N=1e8 float32", lambda: shapes.flat_sweep(100_000_000), torch.float32, "pct_copy", 90.0),
    ("N=1e8 bfloat16", lambda: shapes.flat_sweep(100_000_000), torch.bfloat16, "pct_copy", 90.0),
    ("N=1e7 x160 float32", lambda: shapes.flat_sweep(10_000_000), torch.float32, "pct_copy", 70.0),
    ("ResNet-50 list float32", shapes.resnet50_like, torch.float32, "max_ms", 0.2),
    ("2,000 tiny tensors float32", shapes.many_tiny, torch.float32, "max_ms", 0.1),
]


def replay_host_us(g1, g2, out, backend: str, rounds: int = 200) -> float:
    """Median host time of ``graph.replay()`` for a captured planned call (no synchronization timed)."""
    plan = gh_kernels.plan(g1, g2, out=out, method="gh++", backend=backend)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        plan(g1, g2, out)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plan(g1, g2, out)
    samples = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        graph.replay()
        samples.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(samples)


def measure(device: torch.device, backends: List[str], min_time: float, json_path=None, max_n=None) -> List[dict]:
    rows: List[dict] = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        if json_path:
            with open(json_path, "w") as f:
                json.dump(rows, f, indent=1)

    copy = copy_bandwidth(device, min(max_n or 10**8, 10**8), min_time)["gbps"]
    emit({"row": "copy bandwidth", "gbps": copy})
    for name, build, dtype, kind, target in ROWS:
        shape_list = build()
        n = shapes.numel(shape_list)
        if max_n is not None and n > max_n:
            continue
        g1, g2, out = make_lists(shape_list, dtype, device)
        for backend in backends:
            try:
                plan = gh_kernels.plan(g1, g2, out=out, method="gh++", backend=backend)
                ms = time_it(lambda: plan(g1, g2, out), device, min_time)["median_ms"]
            except Exception as e:  # a backend that cannot serve: said, not fatal
                emit({"row": name, "backend": backend, "error": f"{type(e).__name__}: {e}"[:300]})
                continue
            gbps = 5 * n * torch.finfo(dtype).bits / 8 / (ms * 1e-3) / 1e9
            row = {"row": name, "backend": backend, "ms": ms, "gbps_5n": gbps, "pct_copy": 100 * gbps / copy}
            value = row["pct_copy"] if kind == "pct_copy" else ms
            row["target"] = f"{'>=' if kind == 'pct_copy' else '<='} {target:g}{'%' if kind == 'pct_copy' else ' ms'}"
            row["met"] = value >= target if kind == "pct_copy" else value <= target
            emit(row)
        del g1, g2, out
    if device.type == "cuda":
        g1, g2, out = make_lists(shapes.resnet50_like(), torch.float32, device)
        for backend in backends:
            try:
                us = replay_host_us(g1, g2, out, backend)
                emit({"row": "captured replay, host time (ResNet-50 list)", "backend": backend, "host_us": us,
                      "target": "<= 30 us", "met": us <= 30.0})
            except Exception as e:
                emit({"row": "captured replay", "backend": backend, "error": f"{type(e).__name__}: {e}"[:300]})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.keyrows", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backends", nargs="+", default=None)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--max-n", type=float, default=None, help="skip rows with more elements (a CPU smoke run)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    backends = args.backends or (["cuda", "triton"] if device.type == "cuda" else ["cpu"])
    measure(device, backends, args.min_time, args.json, None if args.max_n is None else int(args.max_n))


if __name__ == "__main__":
    main()
