"""The benchmark's report: CSV files, the markdown tables and the plots."""
from __future__ import annotations

import csv
import os
from typing import List

from .registry import BASELINE_COLUMNS


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


def _speedup(r, rows_by_impl, base):
    """The paired speed-up, or "noisy" when this row's or the baseline's samples spread too widely to trust it."""
    value = r.get(f"speedup_vs_{base}")
    if value is None or value == "":
        return ""
    other = rows_by_impl.get(base)
    return "noisy" if r.get("noisy") or (other is not None and other.get("noisy")) else fmt(value)


def micro_table(rows, copy_gbps) -> str:
    """One row per (list, dtype, implementation); one "x <baseline>" column per registry baseline (paired
    per-round ratios; "noisy" where the samples spread more than bench/timing.py's NOISY_SPREAD)."""
    titles = list(BASELINE_COLUMNS.values())
    lines = ["| list | N | tensors | dtype | implementation | median ms | q20-q80 ms | spread | GB/s (5N) | % copy BW | bytes moved | "
             + " | ".join(titles) + " | extra MB |",
             "|---|---:|---:|---|---|---:|---|---:|---:|---:|---|" + "---:|" * len(titles) + "---:|"]
    groups = {}
    for r in rows:
        groups.setdefault((r["case"], r["n"], r["dtype"]), {})[r["impl"]] = r
    for r in rows:
        by_impl = groups[(r["case"], r["n"], r["dtype"])]
        speedups = " | ".join(_speedup(r, by_impl, name) for name in BASELINE_COLUMNS)
        lines.append(f"| {r['case']} | {r['n']:,} | {r['tensors']} | {r['dtype']} | {r['impl']} | {r['median_ms']:.3f} | "
                     f"{r['q20_ms']:.3f}-{r['q80_ms']:.3f} | {100 * r.get('spread', 0):.0f}% | {r['gbps_5n']:.1f} | {100 * r['gbps_5n'] / copy_gbps:.0f}% | {r['bytes_model']} | "
                     f"{speedups} | {fmt(r.get('extra_mem_mb'), '.1f')} |")
    return "\n".join(lines)


def e2e_table(rows) -> str:
    lines = ["| backbone | step | median ms | min ms | spread | x released (paired) | peak MB |", "|---|---|---:|---:|---:|---:|---:|"]
    by = {(r["config"], r["step"]): r for r in rows}
    for r in rows:
        ref = by.get((r["config"], "released_gh++" if r["step"].endswith("gh++") else "released_gh"), {})
        x = r.get("speedup_vs_released")
        x = "" if x is None else ("noisy" if r.get("noisy") or ref.get("noisy") else fmt(x))
        lines.append(f"| {r['config']} | {r['step']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {100 * r.get('spread', 0):.0f}% | "
                     f"{x} | {fmt(r.get('peak_mem_mb'), '.0f')} |")
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
