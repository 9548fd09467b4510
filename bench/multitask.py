"""``python -m bench.multitask``: the multi-task engine from per-parameter gradient lists to the combined
gradients (what a training step needs), against torchjd and a LibMTL-style path, for K = 2, 4, 8 on
ResNet-50- and ViT-B-shaped lists.

Providers (every one ends with the combined gradient in per-parameter ``out`` tensors):

* ``gh_kernels``: ``aggregate(grads, method, out=out)``: one fused Gram pass, the solve on the device,
  one fused combine pass. Extra memory: the K x K Gram and the solver's K-sized temporaries.
* ``torchjd``: what torchjd's backward does with per-parameter gradients: the K x N Jacobian matrix
  (``torch.stack`` of the flattened sets), its aggregator (``UPGrad()``, ``MGDA()``, ...) on it, and
  the result copied into ``out``.
* ``libmtl``: LibMTL's pattern: fill a K x N buffer from the gradients, its Gram matrix, the solve on
  the host (torchjd's weighting on a CPU copy of G), ``w @ buffer``, copied back into ``out``.

Timing is interleaved (A, B, C, A, ...) with paired ratios (bench/timing.py). ``extra MB`` is the
peak resident memory of one call above what the inputs and outputs already hold (CPU runs; on a GPU,
``torch.cuda.max_memory_allocated``). ``GB/s`` counts the bytes the fused path must move:
(2K + 1) N x element size (K reads for the Gram, K reads and one write for the combine).

  python -m bench.multitask                       # CPU: both lists, K = 2, 4, 8, upgrad and mgda
  python -m bench.multitask --quick               # small lists (seconds)
  python -m bench.multitask --methods new         # issue #23's methods (no LibMTL column)
  python -m bench.multitask --methods trimmed-mean,graddrop --lists resnet50 --ks 4
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import warnings

import torch

import gh_kernels

from . import memory, shapes, timing


def make_lists(kind: str, K: int, scale: float, device):
    shp = {"resnet50": shapes.resnet50_like, "resnet18": shapes.resnet18_like, "vit_b16": shapes.vit_b16_like}[kind]()
    if scale != 1.0:
        shp = [tuple(max(1, int(round(d * scale))) if i == 0 else d for i, d in enumerate(s)) for s in shp]
    g = torch.Generator(device="cpu").manual_seed(0)
    sets = [[torch.randn(s, generator=g).to(device) for s in shp] for _ in range(K)]
    out = [torch.zeros_like(t) for t in sets[0]]  # written once: its pages are resident before memory is measured
    return sets, out


#: The methods of issue #23 (time and memory against torchjd's aggregators; LibMTL has no counterpart row).
NEW_METHODS = ("fairgrad", "krum", "random", "trimmed-mean", "graddrop", "pcd", "cr-mogm", "modo", "sdmgrad", "excess-mtl")
CROSS_BATCH = ("modo", "sdmgrad")


def ours_and_theirs(method: str, K: int):
    """(our method= and options, torchjd's aggregator or weighting) for a method name."""
    import torchjd.aggregation as A
    table = {
        "upgrad": (("upgrad", {}), A.UPGrad()), "mgda": (("mgda", {}), A.MGDA()), "mean": (("mean", {}), A.Mean()),
        "cagrad": (("cagrad", {"c": 0.4}), A.CAGrad(c=0.4)), "dualproj": (("dualproj", {}), A.DualProj()),
        "imtl-g": (("imtl-g", {}), A.IMTLG()),
        "fairgrad": (("fairgrad", {"alpha": 1.0}), A.FairGrad(alpha=1.0)),
        "krum": (("krum", {"n_byzantine": max(0, K - 3) // 2}), A.Krum(n_byzantine=max(0, K - 3) // 2)),
        "random": (("random", {}), A.Random()),
        "trimmed-mean": (("trimmed-mean", {"trim_number": (K - 1) // 2}), A.TrimmedMean((K - 1) // 2)),
        "graddrop": (("graddrop", {}), A.GradDrop()),
        "pcd": ((gh_kernels.PCD(), {}), A.PCD()),
        "cr-mogm": ((gh_kernels.CRMOGM("upgrad"), {}), A.GramianWeightedAggregator(A.CRMOGMWeighting(A.UPGradWeighting()))),
        "modo": ((gh_kernels.MoDo(), {}), A.MoDoWeighting()),
        "sdmgrad": ((gh_kernels.SDMGrad(), {}), A.SDMGradWeighting()),
        "excess-mtl": ((gh_kernels.ExcessMTL(), {}), A.ExcessMTL()),
    }
    return table[method]


def providers(method: str, sets, out, second=None):
    """``second``: a second batch's lists (the cross-batch methods)."""
    import torchjd.aggregation as A
    (ours_method, options), aggregator = ours_and_theirs(method, len(sets))
    weighting = aggregator.gramian_weighting if hasattr(aggregator, "gramian_weighting") else None
    sizes = [t.numel() for t in out]

    def stack(lists):
        return torch.stack([torch.cat([t.reshape(-1) for t in s]) for s in lists])

    def write_back(vector):
        torch._foreach_copy_(out, [v.view_as(o) for v, o in zip(vector.split(sizes), out)])

    if method in CROSS_BATCH:  # torchjd: the two Jacobians, the weighting on J1 J2^T, the mean of both updates
        def ours():
            return gh_kernels.aggregate(sets, ours_method, out=out, second_batch=second, **options)

        def torchjd():
            J1, J2 = stack(sets), stack(second)
            w = aggregator(J1 @ J2.T)
            write_back((w @ J1 + w @ J2) / 2)
        return {"gh_kernels": ours, "torchjd": torchjd}

    def ours():
        return gh_kernels.aggregate(sets, ours_method, out=out, **options)

    def torchjd():
        write_back(aggregator(stack(sets)))

    if method in NEW_METHODS:
        return {"gh_kernels": ours, "torchjd": torchjd}

    def libmtl():
        buf = torch.zeros(len(sets), sum(sizes), dtype=out[0].dtype, device=out[0].device)
        for k, s in enumerate(sets):
            start = 0
            for t in s:
                buf[k, start:start + t.numel()].copy_(t.reshape(-1))
                start += t.numel()
        G = (buf @ buf.T).cpu()  # LibMTL solves on the host
        w = weighting(G) if weighting is not None else torch.full((len(sets),), 1.0 / len(sets))
        write_back(w.to(buf.device, buf.dtype) @ buf)

    return {"gh_kernels": ours, "torchjd": torchjd, "libmtl": libmtl}


def extra_memory_mb(fn, device) -> float:
    """Peak memory of one call above what is held before it (after a warm-up call: first-use
    allocations -- thread pools, caches -- are not the call's working memory)."""
    fn()
    if device.type == "cuda":
        return memory.gpu_extra_mb(fn, device)
    base = memory.reset_peak()
    fn()
    return memory.peak_mb() - base


def too_large(method: str, K: int, N: int, element_size: int) -> bool:
    """torchjd's ExcessMTL holds a K x N state and about five K x N temporaries, ours two K x N buffers: at ViT-B
    K = 8 that is more than this 24 GB machine has next to the lists (the run was killed)."""
    if method != "excess-mtl" or not hasattr(os, "sysconf"):
        return False
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 9 * K * N * element_size > 0.7 * total


def run(lists, Ks, methods, scale, min_time, device, on_row=None):
    rows = []
    for kind in lists:
        for K in Ks:
            sets, out = make_lists(kind, K, scale, device)
            N = sum(t.numel() for t in out)
            for method in methods:
                if method == "krum" and K < 3:  # Krum needs K >= n_byzantine + 3
                    continue
                if too_large(method, K, N, out[0].element_size()):
                    print(f"{kind:9s} K={K} {method}: skipped (about {9 * K * N * out[0].element_size() / 1e9:.0f} GB; see too_large)")
                    continue
                second = [[t.flip(0) for t in s] for s in sets] if method in CROSS_BATCH else None
                fns = providers(method, sets, out, second)
                mem = {name: extra_memory_mb(fn, device) for name, fn in fns.items()}
                samples = timing.interleaved(fns, device, min_time, min_rounds=3, sample_s=0.0)
                st = {name: timing.stats(s) for name, s in samples.items()}
                for name in fns:
                    row = {"list": kind, "K": K, "N": N, "method": method, "provider": name,
                           "median_ms": st[name]["median_ms"], "noisy": st[name]["noisy"], "extra_mb": mem[name],
                           "gbps": (2 * K + 1) * N * out[0].element_size() / (st[name]["median_ms"] * 1e-3) / 1e9}
                    if name != "gh_kernels":
                        row["gh_speedup"] = timing.paired_speedup(samples[name], samples["gh_kernels"])
                    rows.append(row)
                    print(f"{kind:9s} K={K} {method:7s} {name:10s} {row['median_ms']:9.1f} ms  extra {mem[name]:8.1f} MB"
                          + (f"  gh_kernels {row['gh_speedup']:.2f}x faster" if "gh_speedup" in row else ""), flush=True)
                del fns, second
                if on_row is not None:
                    on_row(rows)  # results on disk as they come: a killed run keeps what it measured
            del sets, out
    return rows


def solver_rows(Ks, device, rounds=200):
    """Weights alone from a K x K Gram: our on-device solvers vs torchjd's weightings (host cost per call)."""
    import time

    import torchjd.aggregation as A
    theirs = {"upgrad": A.UPGradWeighting(), "dualproj": A.DualProjWeighting(), "mgda": A.MGDAWeighting(),
              "cagrad": A.CAGradWeighting(c=0.4), "imtl-g": A.IMTLGWeighting(), "aligned-mtl": A.AlignedMTLWeighting(),
              "pcgrad": A.PCGradWeighting()}
    rows = []
    g = torch.Generator().manual_seed(1)
    for K in Ks:
        J = torch.randn(K, 64, generator=g)
        G = (J @ J.T).to(device)
        for method, w in theirs.items():
            times = {}
            for name, fn in (("gh_kernels", lambda: gh_kernels.weights(G, method)), ("torchjd", lambda: w(G))):
                fn()
                t0 = time.perf_counter()
                for _ in range(rounds):
                    fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name] = (time.perf_counter() - t0) / rounds * 1e6
            rows.append({"K": K, "method": method, "gh_us": times["gh_kernels"], "torchjd_us": times["torchjd"]})
            print(f"solve K={K} {method:12s} gh_kernels {times['gh_kernels']:8.0f} us  torchjd {times['torchjd']:8.0f} us")
    return rows


def summary(rows, solves, device, note) -> str:
    lines = [f"# Multi-task engine: lists to combined gradients ({device})", "", note, "",
             "| list | N | K | method | gh_kernels ms | torchjd ms | libmtl ms | gh vs torchjd | gh vs libmtl | extra MB gh / torchjd / libmtl | gh GB/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    key = lambda r: (r["list"], r["K"], r["method"])  # noqa: E731
    groups = {}
    for r in rows:
        groups.setdefault(key(r), {})[r["provider"]] = r
    for (kind, K, method), g in groups.items():
        o, t, lm = g["gh_kernels"], g["torchjd"], g.get("libmtl")
        flag = lambda r: "*" if r["noisy"] else ""  # noqa: E731
        lm_ms, lm_x, lm_mb = ((f"{lm['median_ms']:.1f}{flag(lm)}", f"{lm['gh_speedup']:.2f}x", f"{lm['extra_mb']:.0f}")
                              if lm else ("-", "-", "-"))
        lines.append(f"| {kind} | {o['N'] / 1e6:.1f}M | {K} | {method} | {o['median_ms']:.1f}{flag(o)} | {t['median_ms']:.1f}{flag(t)} | "
                     f"{lm_ms} | {t['gh_speedup']:.2f}x | {lm_x} | "
                     f"{o['extra_mb']:.1f} / {t['extra_mb']:.0f} / {lm_mb} | {o['gbps']:.1f} |")
    lines += ["", "`*`: noisy row (interquantile spread above 25% of the median). Speed-ups are medians of paired per-round ratios.",
              "", "## Weights alone from a K x K Gram (us per call, host included)", "",
              "| K | method | gh_kernels us | torchjd us |", "|---|---|---|---|"]
    lines += [f"| {s['K']} | {s['method']} | {s['gh_us']:.0f} | {s['torchjd_us']:.0f} |" for s in solves]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small lists, short timing (seconds)")
    ap.add_argument("--smoke", action="store_true", help="tiny lists, one round (the test suite's check that it runs)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default=None, help="comma-separated methods (default: upgrad,mgda; 'new': issue #23's)")
    ap.add_argument("--lists", default="resnet50,vit_b16")
    ap.add_argument("--ks", default=None, help="comma-separated K (default 2,4,8; --quick 2,4)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds of interleaved timing per row")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(args.device)
    scale, min_time, Ks = (0.02, 0.05, (2, 4)) if args.quick else (1.0, 2.0, (2, 4, 8))
    if args.smoke:
        scale, min_time, Ks = 0.002, 0.0, (3,)
    methods = ("upgrad",) if args.quick or args.smoke else ("upgrad", "mgda")
    if args.methods:
        methods = NEW_METHODS if args.methods == "new" else tuple(args.methods.split(","))
    Ks = tuple(int(k) for k in args.ks.split(",")) if args.ks else Ks
    min_time = args.min_time if args.min_time is not None else min_time
    before = timing.machine_load()
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"multitask-{device.type}-{datetime.date.today().isoformat()}")
    os.makedirs(out, exist_ok=True)

    def write(rows, solves=(), partial=True):
        note = (f"{torch.__version__}, {os.cpu_count()} CPU threads, float32 gradients; "
                + timing.load_note(before, timing.machine_load()) + ("; PARTIAL: the run is still going" if partial else ""))
        with open(os.path.join(out, "multitask.json"), "w") as f:
            json.dump({"rows": rows, "solves": list(solves)}, f, indent=1)
        with open(os.path.join(out, "summary.md"), "w") as f:
            f.write(summary(rows, list(solves), device.type, note))

    rows = run(tuple(args.lists.split(",")), Ks, methods, scale, min_time, device, on_row=write)
    solves = solver_rows((3,) if args.smoke else (2, 8) if args.quick else (2, 4, 8), device,
                         rounds=1 if args.smoke else 5 if args.quick else 200)
    write(rows, solves, partial=False)
    print("wrote", out)
    return out


if __name__ == "__main__":
    main()
