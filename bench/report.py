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


def markdown(headers: List[str], rows: List[List[str]], right: List[bool]) -> str:
    """A markdown table without the columns no row fills (quick mode has no memory or compile rows)."""
    keep = [c for c in range(len(headers)) if any(r[c] != "" for r in rows)]
    lines = ["| " + " | ".join(headers[c] for c in keep) + " |",
             "|" + "|".join("---:" if right[c] else "---" for c in keep) + "|"]
    lines += ["| " + " | ".join(r[c] for c in keep) + " |" for r in rows]
    return "\n".join(lines)


def ratio_cell(row: dict, key: str) -> str:
    """A paired speed-up as "median [q20-q80]" of the per-round ratios (always a number; noise has its own column)."""
    x = row.get(key)
    if x is None or x == "":
        return ""
    q20, q80 = row.get(f"{key}_q20"), row.get(f"{key}_q80")
    return f"{x:.2f} [{q20:.2f}-{q80:.2f}]" if q20 is not None else f"{x:.2f}"


def noise_cell(row: dict, keys: List[str]) -> str:
    """What spread over NOISY_SPREAD of its median: the row's own samples and/or some of its ratios."""
    why = ["samples"] if row.get("noisy") else []
    why += [k.replace("speedup_vs_", "x ") for k in keys if row.get(f"{k}_noisy")]
    return "noisy: " + ", ".join(why) if why else ""


def micro_table(rows, copy: dict) -> str:
    """One row per (list, dtype, implementation); one "x <baseline>" column per registry baseline."""
    titles = list(BASELINE_COLUMNS.values())
    keys = [f"speedup_vs_{b}" for b in BASELINE_COLUMNS]
    headers = ["list", "N", "tensors", "dtype", "implementation", "median ms", "q20-q80 ms", "spread", "GB/s (5N)",
               "% copy BW", "bytes moved"] + titles + ["noise", "extra MB"]
    right = [False, True, True, False, False, True, False, True, True, True, False] + [True] * len(titles) + [False, True]
    cells = []
    for r in rows:
        pct = 100 * r["gbps_5n"] / copy["gbps"]
        in_cache = r.get("working_set_bytes", 0) <= copy.get("cache_bytes", 0)
        cells.append([r["case"], f"{r['n']:,}", str(r["tensors"]), r["dtype"], r["impl"], f"{r['median_ms']:.3f}",
                      f"{r['q20_ms']:.3f}-{r['q80_ms']:.3f}", f"{100 * r.get('spread', 0):.0f}%", f"{r['gbps_5n']:.1f}",
                      f"{pct:.0f}%" + ("*" if in_cache else ""), r["bytes_model"]]
                     + [ratio_cell(r, k) for k in keys] + [noise_cell(r, keys), fmt(r.get("extra_mem_mb"), ".1f")])
    return markdown(headers, cells, right)


def legend(copy: dict) -> str:
    """What the columns mean, printed with the tables and written into summary.md."""
    cache = copy.get("cache_bytes", 0)
    return "\n".join([
        "Legend:",
        "- median ms, q20-q80 ms: time per call, the median and 20%-80% quantiles over interleaved rounds; "
        "spread = (q80 - q20) / median.",
        "- x <baseline>: how many times faster than that baseline (> 1 = faster): the median of the per-round "
        "ratios baseline time / this time (paired samples, so load that slows both cancels), with their 20%-80% "
        "quantiles in brackets.",
        "- noise: the row's samples or one of its ratios spread over 25% of the median; the numbers are printed "
        "all the same: read them with their interval.",
        "- GB/s (5N): 5N x bytes per element / median time for every row (the fused path's traffic, one count for "
        "all rows so they compare); bytes moved: what the implementation really moves.",
        f"- % copy BW: GB/s (5N) over this run's copy bandwidth ({copy['gbps']:.1f} GB/s: a copy_ with the same "
        f"{copy['threads']} thread(s) over {copy['bytes'] / 2**20:.0f} MB buffers, beyond the "
        f"{cache / 2**20:.0f} MB last-level cache). `*`: the row's working set (g1, g2 and out) fits in that cache, "
        "so it may be served from cache and read above 100% (the stated reason for any row above ~105%).",
        "- extra MB: memory beyond the outputs for one call (only in runs that measure it).",
    ])


def e2e_table(rows) -> str:
    headers = ["backbone", "step", "median ms", "min ms", "spread", "x released [q20-q80]", "noise", "peak MB"]
    cells = []
    for r in rows:
        cells.append([r["config"], r["step"], f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}", f"{100 * r.get('spread', 0):.0f}%",
                      ratio_cell(r, "speedup_vs_released"), noise_cell(r, ["speedup_vs_released"]),
                      fmt(r.get("peak_mem_mb"), ".0f")])
    return markdown(headers, cells, [False, False, True, True, True, True, False, True])


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
