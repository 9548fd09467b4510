"""Host cost per call: microseconds per ``harmonize`` call against the number of tensors, for each
backend, unplanned and planned (``gh_kernels.plan``), beside two per-tensor floors on the same
list: one ``torch._foreach_add_`` (one C++ call over the list) and one ``torch.optim.AdamW`` step
(``fused=True`` where the device has it, else ``foreach=True``). Tensors of 8 elements, so the time
is host work, not arithmetic. Timed interleaved (A, B, C, A, B, C, ...), so a loaded machine slows
every row alike; ratios are medians of per-round ratios. Plan building is timed separately.

  python -m bench.hostcost [--device cpu|cuda] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch

import gh_kernels

COUNTS = (16, 160, 2000)
ELEMENTS = 8


def _backends(device: torch.device) -> List[str]:
    names = []
    for b in ("cpu", "cuda", "triton", "torch"):
        if b == "triton" and device.type == "cpu":
            continue  # the interpreter is a correctness tool
        try:
            gh_kernels.backends.resolve(b, device)
            names.append(b)
        except (gh_kernels.BackendUnavailable, ValueError):
            pass
    return names


def _interleaved(fns: Dict[str, Callable], rounds: int, sync: Callable) -> Dict[str, List[float]]:
    samples = {k: [] for k in fns}
    for fn in fns.values():  # warm-up (compilation, caches, first allocations)
        fn()
        fn()
    sync()
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e6)
            sync()
    return samples


def measure(device: torch.device, rounds: int = 0) -> List[dict]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for count in COUNTS:
        n = rounds or (200 if count < 2000 else 40)
        g = torch.Generator(device=device).manual_seed(count)
        g1 = [torch.randn(ELEMENTS, generator=g, device=device) for _ in range(count)]
        g2 = [torch.randn(ELEMENTS, generator=g, device=device) - 0.3 * a for a in g1]
        out = [torch.empty(ELEMENTS, device=device) for _ in range(count)]
        params = [torch.nn.Parameter(torch.randn(ELEMENTS, device=device)) for _ in range(count)]
        for p, a in zip(params, g1):
            p.grad = a.clone()
        fused_ok = device.type in ("cuda", "cpu")
        opt = torch.optim.AdamW(params, lr=1e-3, **({"fused": True} if fused_ok else {"foreach": True}))
        fns: Dict[str, Callable] = {"torch._foreach_add_": lambda: torch._foreach_add_(out, g1),
                                    f"AdamW({'fused' if fused_ok else 'foreach'}) step": opt.step}
        build = {}
        for b in _backends(device):
            plan = gh_kernels.plan(g1, g2, out=out, backend=b)
            fns[f"harmonize[{b}]"] = (lambda b=b: gh_kernels.harmonize(g1, g2, out=out, backend=b))
            fns[f"plan[{b}]"] = (lambda plan=plan: plan(g1, g2, out))
            builds = []
            for _ in range(5):
                t0 = time.perf_counter()
                gh_kernels.plan(g1, g2, out=out, backend=b)
                builds.append((time.perf_counter() - t0) * 1e6)
            build[b] = statistics.median(builds)
        samples = _interleaved(fns, n, sync)
        floor = samples["torch._foreach_add_"]
        for name, s in samples.items():
            ratios = [a / f for a, f in zip(s, floor)]
            qs = statistics.quantiles(s, n=10)
            b = name[name.find("[") + 1:-1] if name.startswith("plan[") else None
            rows.append({"tensors": count, "call": name, "median_us": statistics.median(s), "q10_us": qs[0], "q90_us": qs[-1],
                         "x_foreach_add": statistics.median(ratios), "plan_build_us": build.get(b, "")})
    return rows


def table(rows: List[dict]) -> str:
    lines = ["| tensors | call | median us | q10-q90 us | x foreach_add (paired) | plan build us |",
             "|---:|---|---:|---|---:|---:|"]
    for r in rows:
        build = f"{r['plan_build_us']:.0f}" if r["plan_build_us"] != "" else ""
        lines.append(f"| {r['tensors']} | {r['call']} | {r['median_us']:.1f} | {r['q10_us']:.1f}-{r['q90_us']:.1f} | "
                     f"{r['x_foreach_add']:.2f} | {build} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.hostcost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the issue's target: 1)")
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 200; 40 for 2,000 tensors)")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(args.threads)
    print(f"host cost per call, {device}, {torch.get_num_threads()} thread(s), tensors of {ELEMENTS} elements")
    print(table(measure(device, args.rounds)))


if __name__ == "__main__":
    main()
