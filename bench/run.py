"""``python -m bench``: run the benchmark suite for the available device and write the results.

  python -m bench --quick            # small sizes, a table in under a minute (the README's main job)
  python -m bench                    # the full suite (CPU: ~45 min on 2 cores)
  python -m bench --device cuda      # on a GPU machine (bench/gpu_check.sh runs this)

Writes ``bench/results/<device>-<date>/`` (or ``--out``): micro.csv, e2e.csv, summary.md,
gbps_vs_n.png, e2e_step_time.png.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
from typing import List

import torch

import gh_kernels

from . import e2e, micro


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{os.cpu_count()}core"


def write_csv(path, rows: List[dict]):
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def fmt(x, spec=".2f"):
    return "" if x is None or x == "" else (format(x, spec) if isinstance(x, float) else str(x))


def micro_table(rows, copy_gbps) -> str:
    lines = ["| list | N | tensors | dtype | implementation | median ms | q20-q80 ms | GB/s (5N) | % copy BW | bytes moved | x released | x pcgrad | x torch | x compile | extra MB |",
             "|---|---:|---:|---|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['n']:,} | {r['tensors']} | {r['dtype']} | {r['impl']} | {r['median_ms']:.3f} | "
                     f"{r['q20_ms']:.3f}-{r['q80_ms']:.3f} | {r['gbps_5n']:.1f} | {100 * r['gbps_5n'] / copy_gbps:.0f}% | {r['bytes_model']} | "
                     f"{fmt(r.get('speedup_vs_released_recipe'))} | {fmt(r.get('speedup_vs_pcgrad_style'))} | "
                     f"{fmt(r.get('speedup_vs_torch_best_effort'))} | {fmt(r.get('speedup_vs_torch_compile'))} | {fmt(r.get('extra_mem_mb'), '.1f')} |")
    return "\n".join(lines)


def e2e_table(rows) -> str:
    lines = ["| backbone | step | median ms | min ms | x released | peak MB |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['step']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {fmt(r.get('speedup_vs_released'))} | {fmt(r.get('peak_mem_mb'), '.0f')} |")
    return "\n".join(lines)


def plots(outdir, micro_rows, e2e_rows):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # plots are optional output; the tables are the record
        print(f"(no plots: {e})")
        return
    sweep = [r for r in micro_rows if r["case"] == "sweep"]
    if sweep:
        dtypes = sorted({r["dtype"] for r in sweep})
        fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.5), squeeze=False)
        for ax, dt in zip(axes[0], dtypes):
            for impl in sorted({r["impl"] for r in sweep}):
                pts = sorted((r["n"], r["gbps_5n"]) for r in sweep if r["impl"] == impl and r["dtype"] == dt)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
            ax.set_xscale("log")
            ax.set_xlabel("N (elements per gradient set)")
            ax.set_ylabel("GB/s counted as 5N x bytes / time")
            ax.set_title(f"harmonize, {dt}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "gbps_vs_n.png"), dpi=110)
        plt.close(fig)
    if e2e_rows:
        configs = list(dict.fromkeys(r["config"] for r in e2e_rows))
        steps = list(dict.fromkeys(r["step"] for r in e2e_rows))
        fig, ax = plt.subplots(figsize=(8, 4.5))
        width = 0.8 / len(steps)
        for i, s in enumerate(steps):
            vals = [next((r["median_ms"] for r in e2e_rows if r["config"] == c and r["step"] == s), 0) for c in configs]
            ax.bar([j + i * width for j in range(len(configs))], vals, width, label=s)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(configs))], configs)
        ax.set_ylabel("ms per training step (median)")
        ax.set_title("one DANN training step")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "e2e_step_time.png"), dpi=110)
        plt.close(fig)


def targets(micro_rows, e2e_rows, copy_gbps, gpu) -> List[str]:
    """MET / MISSED lines for the issue's targets, from the measured rows."""
    out = []
    fast = [r for r in micro_rows if r["impl"].startswith("gh_kernels")]

    def best(rows):
        return max(rows, key=lambda r: r["gbps_5n"]) if rows else None

    def verdict(ok):
        return "MET" if ok else "MISSED"

    if gpu:
        for r in sorted({(r["case"], r["n"], r["dtype"]) for r in fast if r["n"] >= 100_000_000}):
            b = best([x for x in fast if (x["case"], x["n"], x["dtype"]) == r])
            pct = 100 * b["gbps_5n"] / copy_gbps
            rel, comp = b.get("speedup_vs_released_recipe"), b.get("speedup_vs_torch_compile")
            out.append(f"- {r[0]} N={r[1]:,} {r[2]}, {b['impl']}: {pct:.0f}% of copy bandwidth (target 85%: {verdict(pct >= 85)}), "
                       f"{fmt(rel)}x released (target 3x: {verdict(rel is not None and rel >= 3)})"
                       + (f", {comp:.2f}x torch.compile (target 1.5x: {verdict(comp >= 1.5)})" if comp else ""))
    else:
        for r in sorted({(r["case"], r["n"], r["dtype"]) for r in fast if r["dtype"] == "float32" and (r["case"] == "resnet50" or r["n"] >= 10_000_000)}):
            b = best([x for x in fast if (x["case"], x["n"], x["dtype"]) == r])
            pct = 100 * b["gbps_5n"] / copy_gbps
            rel, tor = b.get("speedup_vs_released_recipe"), b.get("speedup_vs_torch_best_effort")
            out.append(f"- {r[0]} N={r[1]:,} float32, {b['impl']}: {pct:.0f}% of copy bandwidth (target 60%: {verdict(pct >= 60)}), "
                       f"{fmt(rel)}x released-style (target 4x: {verdict(rel is not None and rel >= 4)}), "
                       f"{fmt(tor)}x pure torch (target 1.5x: {verdict(tor is not None and tor >= 1.5)})")
    for r in e2e_rows:
        if r["step"].startswith("harmonizer") and r.get("speedup_vs_released"):
            out.append(f"- end-to-end {r['config']} {r['step']}: {r['speedup_vs_released']:.2f}x the released recipe "
                       f"(target 1.25x: {verdict(r['speedup_vs_released'] >= 1.25)})")
    return out or ["- (no rows to evaluate)"]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smallest sizes: a table in under a minute")
    ap.add_argument("--smoke", action="store_true", help="one tiny case of everything (CI's smoke test)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--out", default=None, help="output folder (default bench/results/<device>-<date>)")
    ap.add_argument("--max-n", type=float, default=None, help="largest N in the sweep (default: 1e8 CPU, 1e9 GPU)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end training steps")
    ap.add_argument("--no-memory", action="store_true", help="skip the extra-memory measurements")
    ap.add_argument("--e2e-configs", default=None, help="comma-separated e2e configs (default: small on CPU, full on GPU)")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    date = datetime.date.today().isoformat()
    outdir = args.out or os.path.join(os.path.dirname(__file__), "results", f"{device_name(device)}-{date}" + ("-quick" if (args.quick or args.smoke) else ""))
    os.makedirs(outdir, exist_ok=True)

    if args.smoke:
        cases = [("sweep", 100_000)]
        dtypes, min_time, with_compile, memory = ["float32"], 0.05, False, False
        e2e_configs, e2e_steps = ["resnet50_small"], 1
    elif args.quick:
        cases = [("sweep", 100_000), ("sweep", 1_000_000), ("resnet50", 0)]
        dtypes, min_time, with_compile, memory = ["float32"], 0.2, False, False
        e2e_configs, e2e_steps = ["resnet50_small"], 2
    else:
        max_n = int(args.max_n or (1e9 if gpu else 1e8))
        sweep = [n for n in (100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000) if n <= max_n]
        cases = [("sweep", n) for n in sweep] + [("resnet50", 0), ("vit_b16", 0), ("llm", 0), ("many_tiny", 0)]
        dtypes, min_time, with_compile, memory = ["float32", "bfloat16"], (0.15 if gpu else 1.0), not args.no_compile, not args.no_memory
        e2e_configs = ["resnet50", "vit_b16"] if gpu else ["resnet50_small", "vit_small"]
        e2e_steps = 10 if gpu else 9
    if args.e2e_configs:
        e2e_configs = args.e2e_configs.split(",")

    print(f"gh_kernels {gh_kernels.__version__} | torch {torch.__version__} | device {device_name(device)} | "
          f"backends {gh_kernels.available_backends()} | threads {torch.get_num_threads()} | out {outdir}")
    copy_gbps = micro.copy_bandwidth(device, 1_000_000 if args.smoke else (10_000_000 if args.quick else 100_000_000), min_time)
    print(f"copy bandwidth (read + write): {copy_gbps:.1f} GB/s")
    micro_rows = micro.run_micro(device, cases, dtypes, min_time, with_compile, memory)
    for r in micro_rows:
        r["pct_copy_bw"] = 100 * r["gbps_5n"] / copy_gbps
    write_csv(os.path.join(outdir, "micro.csv"), micro_rows)

    e2e_rows, match = [], {}
    if not args.no_e2e:
        for cfg in e2e_configs:
            print(f"end-to-end: {cfg}")
            rows = e2e.time_steps(cfg, device, steps=e2e_steps, warmup=1 if (args.quick or args.smoke) else 2)
            if not gpu and not args.quick and memory:
                for r in rows:
                    r["peak_mem_mb"] = e2e.cpu_peak_rss(cfg, r["step"])
            e2e_rows += rows
            for method in ("gh", "gh++"):
                match[(cfg, method)] = e2e.grads_match(cfg, device, method)
        write_csv(os.path.join(outdir, "e2e.csv"), e2e_rows)

    summary = [f"# gh_kernels benchmark: {device_name(device)}, {date}", "",
               f"gh_kernels {gh_kernels.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
               f"threads {torch.get_num_threads()}, backends {gh_kernels.available_backends()}.", "",
               f"Copy bandwidth measured in this run (large `copy_`, bytes read + written): **{copy_gbps:.1f} GB/s**.", "",
               "## harmonize alone", "",
               "GB/s = 5N x bytes per element / median time for every row (the fused path's traffic); "
               "`bytes moved` is what each implementation really moves (bench/baselines.py). "
               "`x name` = that implementation's time / this row's time. Extra MB: "
               + ("torch.cuda.max_memory_allocated delta of one call." if gpu else
                  "peak-RSS delta of one call after a warm-up call, in a fresh process, outputs already written once "
                  "(measured for the model lists and N=1e7 in float32)."), "",
               micro_table(micro_rows, copy_gbps), ""]
    if e2e_rows:
        summary += ["## one training step (DANN head)", "", e2e_table(e2e_rows), "",
                    "Released recipe vs `Harmonizer(mode='reweight')`, max relative `.grad` difference: "
                    + ", ".join(f"{c} {m}: {v:.1e}" for (c, m), v in match.items()), ""]
    summary += ["## targets (from the benchmark issue), evaluated on this run", ""] + targets(micro_rows, e2e_rows, copy_gbps, gpu) + [""]
    with open(os.path.join(outdir, "summary.md"), "w") as f:
        f.write("\n".join(summary))
    plots(outdir, micro_rows, e2e_rows)
    print()
    print(micro_table(micro_rows, copy_gbps))
    if e2e_rows:
        print()
        print(e2e_table(e2e_rows))
    print(f"\nwrote {outdir}")
    return outdir
