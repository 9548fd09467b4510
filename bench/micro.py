"""Microbenchmark of ``harmonize`` alone: our backends against the baselines, with bandwidth and memory.

Each implementation leaves ``w1*g1 + w2*g2`` in per-parameter tensors. GB/s is counted as
5N x bytes-per-element / time for every row (the fused path's minimum traffic), so rows compare
directly; ``bytes_model`` says what each implementation really moves (``registry.py``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Callable, Dict, List, Optional

import torch


from . import registry, shapes, timing
from .memory import gpu_extra_mb

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def make_lists(shape_list, dtype, device, seed=0):
    """Random conflicting gradient lists (g2 = -0.3 g1 + noise, so the released branch is taken)."""
    g = torch.Generator(device=device).manual_seed(seed)
    g1, g2, out = [], [], []
    for s in shape_list:
        a = torch.randn(s, generator=g, dtype=dtype, device=device)
        b = torch.randn(s, generator=g, dtype=dtype, device=device).add_(a, alpha=-0.3)
        g1.append(a)
        g2.append(b)
        out.append(torch.empty(s, device=device, dtype=dtype))
    return g1, g2, out


# What to skip, and why (said in the summary):
PCGRAD_MAX_N = 300_000_000       # ~20 bytes/element of flat copies: 1e9 elements would need ~80 GB more


def compile_wanted(case: str, n: int, dtype: str, device: torch.device) -> bool:
    """torch.compile recompiles for every list shape (20-60 s each): a few representative cases."""
    if dtype != "float32":
        return False
    if device.type == "cuda":
        return case == "resnet50" or (case == "sweep" and n == 100_000_000)
    return case == "resnet50" or (case == "sweep" and n == 10_000_000)


def memory_wanted(case: str, n: int, dtype: str, device: torch.device) -> bool:
    """GPU: every case (cheap); CPU: a fresh process per measurement, so the model lists and N=1e7 in float32."""
    return device.type == "cuda" or (dtype == "float32" and (case in ("resnet50", "vit_b16") or (case == "sweep" and n == 10_000_000)))


def time_it(fn: Callable[[], object], device: torch.device, min_time: float) -> Dict[str, float]:
    """Median and 20/80% quantiles in ms, after warm-up."""
    if device.type == "cuda":
        from triton.testing import do_bench

        q20, med, q80 = do_bench(fn, warmup=max(25, int(min_time * 100)), rep=max(100, int(min_time * 1000)),
                                 quantiles=[0.2, 0.5, 0.8])
        return {"median_ms": med, "q20_ms": q20, "q80_ms": q80}
    import torch.utils.benchmark as tb

    fn()
    m = tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_time)
    times = sorted(m.times)
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1e3
    return {"median_ms": m.median * 1e3, "q20_ms": pick(0.2), "q80_ms": pick(0.8)}


def cache_bytes(device: torch.device) -> int:
    """The last-level cache a row's working set can live in: the GPU's L2, or the CPU's largest cache."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))
    return timing.last_level_cache_bytes()


def copy_bandwidth(device: torch.device, n: int, min_time: float) -> dict:
    """GB/s of a copy_ (bytes read + bytes written) measured in this run, timed as the rows are (same sampler,
    same threads: torch.utils.benchmark's Timer runs one thread and read half the bandwidth), and
    buffers of at least twice the last-level cache (a smaller copy is served partly from cache: 42 GB/s
    against 25 GB/s beyond it on the 2-core CPU machine), at most 1/8 of free memory."""
    cache = cache_bytes(device)
    n = max(n, 2 * cache // 4)
    if device.type == "cpu":
        try:
            import psutil
            n = min(n, psutil.virtual_memory().available // 8 // 4)
        except ImportError:
            pass
    src = torch.full((n,), 1.5, device=device)  # pages touched; the values do not matter to a copy
    dst = torch.zeros_like(src)
    # timing.interleaved, as the rows: torch.utils.benchmark.Timer would run it on one thread (its default)
    t = timing.stats(timing.interleaved({"copy": lambda: dst.copy_(src)}, device, min_time)["copy"])["median_ms"]
    del src, dst
    return {"gbps": 2 * n * 4 / (t * 1e-3) / 1e9, "bytes": n * 4, "cache_bytes": cache, "threads": torch.get_num_threads()}


def cpu_extra_memory(case: str, n: int, dtype: str, impl: str) -> Optional[float]:
    """Peak-RSS delta (MB) of one call after a warm-up call, in a fresh subprocess (``python -m bench.micro --memcase``)."""
    cmd = [sys.executable, "-m", "bench.micro", "--memcase", json.dumps([case, n, dtype, impl])]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        return float(res.stdout.strip().splitlines()[-1])
    except Exception:
        return None


def case_shapes(case: str, n: int):
    return shapes.MODEL_LISTS[case]() if case in shapes.MODEL_LISTS else shapes.flat_sweep(n)


def _memcase(arg: str) -> None:
    case, n, dtype, impl = json.loads(arg)
    device = torch.device("cpu")
    g1, g2, out = make_lists(case_shapes(case, n), DTYPES[dtype], device)
    fn = registry.implementations(device, with_compile=False)[impl].fn
    from .memory import peak_mb, reset_peak

    for o in out:  # fault the output pages in first: writing them is not extra memory
        o.zero_()
    fn(g1, g2, out)  # warm-up: thread pools and other one-time allocations
    base = reset_peak()
    fn(g1, g2, out)
    print(peak_mb() - base)


def run_micro(device: torch.device, cases: List[tuple], dtypes: List[str], min_time: float, with_compile: bool,
              memory: bool, log=print) -> List[dict]:
    impls = registry.implementations(device, with_compile)
    rows = []
    for case, n_req in cases:
        shp = case_shapes(case, n_req)
        n = shapes.numel(shp)
        for dname in dtypes:
            dtype = DTYPES[dname]
            g1, g2, out = make_lists(shp, dtype, device)
            elem = torch.finfo(dtype).bits // 8
            fns, kept = {}, {}
            for name, impl in impls.items():
                if name == "torch_compile" and not compile_wanted(case, n, dname, device):
                    continue
                if name == "pcgrad_style" and n > PCGRAD_MAX_N:
                    continue
                fns[name] = (lambda fn=impl.fn: fn(g1, g2, out))
                kept[name] = impl
            samples = {}
            for name in list(fns):  # one call first: an implementation that fails is reported, not timed
                try:
                    fns[name]()
                except Exception as e:  # report, do not hide
                    log(f"  {case} {dname} {name}: failed: {type(e).__name__}: {e}")
                    del fns[name]
            samples = timing.interleaved(fns, device, min_time)
            case_rows = []
            for name, s_ in samples.items():
                t = timing.stats(s_)
                row = {"case": case, "n": n, "tensors": len(shp), "dtype": dname, "impl": name, **t,
                       "gbps_5n": 5 * n * elem / (t["median_ms"] * 1e-3) / 1e9, "bytes_model": f"{kept[name].bytes_per_element}N",
                       "working_set_bytes": 3 * n * elem}
                for base in registry.BASELINE_COLUMNS:  # paired: round-by-round ratios, robust to load
                    if base in samples:
                        ratio = timing.paired_ratio(samples[base], s_)
                        key = f"speedup_vs_{base}"
                        row.update({key: ratio["x"], f"{key}_q20": ratio["q20"], f"{key}_q80": ratio["q80"],
                                    f"{key}_noisy": ratio["noisy"]})
                if memory and memory_wanted(case, n, dname, device):
                    if device.type == "cuda":
                        row["extra_mem_mb"] = gpu_extra_mb(fns[name], device)
                    elif name != "torch_compile":
                        row["extra_mem_mb"] = cpu_extra_memory(case, n_req, dname, name)
                case_rows.append(row)
                flag = "  (noisy)" if t["noisy"] else ""
                log(f"  {case:10s} N={n:>11,d} {dname:8s} {name:28s} {t['median_ms']:9.3f} ms  {row['gbps_5n']:7.1f} GB/s{flag}")
            rows += case_rows
            del g1, g2, out
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--memcase":
    _memcase(sys.argv[2])
