"""Tables, statistics and plots of the UDA study (python/uda.py).

Statistics: for every (task, family) cell, each harmonized variant is compared with the same
family without harmonization ("none") on the same seeds: the paired differences of target
accuracy get a mean and a 95% Student-t confidence interval; a variant is significantly better
(worse) on a cell when the whole interval lies above (below) zero.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import statistics
from typing import Dict, List, Tuple

import torch


def _variant(c: dict) -> str:
    if c["family"] in ("source", "oracle"):
        return c["family"]
    name = c["method"] + (" surgery" if c["mode"] == "surgery" else "")
    return name + (" (released recipe)" if c["recipe"] == "released" else "")


def _ci(diffs: List[float]) -> Tuple[float, float, float]:
    """Mean and 95% Student-t interval of paired differences."""
    from scipy.stats import t

    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return mean, float("nan"), float("nan")
    half = t.ppf(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def _fmt(mean, sd=None, scale=100.0):
    return f"{scale * mean:.1f}" + ("" if sd is None else f" ± {scale * sd:.1f}")


def write(results, args, outdir: str, wall_seconds: float) -> str:
    runs = [(r.config, r) for r in results]
    cells: Dict[tuple, Dict[str, Dict[int, object]]] = {}  # (task, family) -> variant -> seed -> result
    for c, r in runs:
        fam = c["family"] if c["family"] not in ("source", "oracle") else "-"
        cells.setdefault((c["task"], fam), {}).setdefault(_variant(c), {})[c["seed"]] = r
    _write_csv(runs, outdir)
    lines = [f"# UDA study: GH / GH++ on {len(args.tasks)} digit shift tasks, {args.seeds} seeds", "",
             f"Command: `python python/uda.py` with tasks {' '.join(args.tasks)}, families {' '.join(args.families)}, "
             f"{args.seeds} seeds, {args.steps} steps, lr {args.lr}, trade-off {args.trade_off}, kappa {args.kappa}"
             f"{', no surgery rows' if args.no_surgery else ''}. {len(results)} runs in {wall_seconds / 60:.1f} min on "
             f"{os.cpu_count()} CPUs ({args.workers} worker processes, 1 thread each), torch {torch.__version__}, "
             f"Python {platform.python_version()}.", "",
             "Target accuracy on the target test split, in %, mean ± standard deviation over seeds.", ""]
    lines += _baseline_table(cells, args)
    lines += _variant_tables(cells, args)
    lines += _significance(cells, args)
    lines += _cost(cells, args)
    lines += _conflicts(cells, args)
    md = "\n".join(lines) + "\n"
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write(md)
    _plots(cells, args, outdir)
    return md


def _write_csv(runs, outdir):
    with open(os.path.join(outdir, "runs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "family", "method", "mode", "recipe", "seed", "target_acc", "source_acc", "seconds",
                    "conflict_share", "w1_median", "w1_max", "w2_median"])
        for c, r in runs:
            share = sum(1 for x in r.cos if x < 0) / len(r.cos) if r.cos else ""
            w.writerow([c["task"], c["family"], c["method"], c["mode"], c["recipe"], c["seed"], f"{r.target_acc:.4f}",
                        f"{r.source_acc:.4f}", f"{r.seconds:.3f}", share if share == "" else f"{share:.4f}",
                        f"{statistics.median(r.w1):.4g}" if r.w1 else "", f"{max(r.w1):.4g}" if r.w1 else "",
                        f"{statistics.median(r.w2):.4g}" if r.w2 else ""])


def _accs(seeds: Dict[int, object]) -> List[float]:
    return [seeds[s].target_acc for s in sorted(seeds)]


def _baseline_table(cells, args):
    out = ["## Room for adaptation: source only and target-supervised (oracle)", "",
           "| task | shift | source only | oracle | source-domain test acc (source only) |", "|---|---|---:|---:|---:|"]
    from uda_data import TASKS

    for task in args.tasks:
        v = cells[(task, "-")]
        src, orc = _accs(v["source"]), _accs(v["oracle"])
        src_acc = [v["source"][s].source_acc for s in sorted(v["source"])]
        out.append(f"| {task} | {TASKS[task][1]} | {_fmt(statistics.fmean(src), statistics.pstdev(src))} | "
                   f"{_fmt(statistics.fmean(orc), statistics.pstdev(orc))} | {_fmt(statistics.fmean(src_acc))} |")
    return out + [""]


def _variants(args):
    from uda import METHODS, SURGERY_METHODS

    return list(METHODS) + ([] if args.no_surgery else [m + " surgery" for m in SURGERY_METHODS])


def _variant_tables(cells, args):
    variants = _variants(args)
    out = ["## Target accuracy per task and family", "", "| task | family | " + " | ".join(variants) + " |",
           "|---|---|" + "---:|" * len(variants)]
    for task in args.tasks:
        for fam in args.families:
            v = cells[(task, fam)]
            row = [_fmt(statistics.fmean(_accs(v[k])), statistics.pstdev(_accs(v[k]))) if k in v else "" for k in variants]
            out.append(f"| {task} | {fam} | " + " | ".join(row) + " |")
    return out + [""]


def _paired(cells, task, fam, variant):
    v = cells[(task, fam)]
    base, other = v["none"], v[variant]
    seeds = sorted(set(base) & set(other))
    return [other[s].target_acc - base[s].target_acc for s in seeds]


def _significance(cells, args):
    variants = [k for k in _variants(args) if k != "none"]
    out = ["## Paired difference against the same family without harmonization", "",
           "Mean difference of target accuracy (points) and its 95% confidence interval over the paired seeds; "
           "**+** / **−**: the interval lies above / below zero.", "",
           "| task | family | " + " | ".join(variants) + " |", "|---|---|" + "---:|" * len(variants)]
    counts = {k: [0, 0, 0] for k in variants}  # better, worse, cannot tell
    for task in args.tasks:
        for fam in args.families:
            row = []
            for k in variants:
                mean, lo, hi = _ci(_paired(cells, task, fam, k))
                mark = "**+**" if lo > 0 else ("**−**" if hi < 0 else "")
                counts[k][0 if lo > 0 else (1 if hi < 0 else 2)] += 1
                row.append(f"{100 * mean:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] {mark}")
            out.append(f"| {task} | {fam} | " + " | ".join(row) + " |")
    n = len(args.tasks) * len(args.families)
    out += ["", f"Over the {n} (task, family) cells:", "", "| variant | significantly better | significantly worse | cannot tell |",
            "|---|---:|---:|---:|"]
    out += [f"| {k} | {b} | {w} | {c} |" for k, (b, w, c) in counts.items()]
    return out + [""]


def _cost(cells, args):
    out = ["## Cost: Harmonizer against the released three-backward recipe (same runs)", "",
           "| task | family | seeds | ms/step, released recipe | ms/step, Harmonizer | ratio | max abs difference of final target accuracy |",
           "|---|---|---:|---:|---:|---:|---:|"]
    found = False
    for (task, fam), v in cells.items():
        rel = v.get("gh++released (released recipe)")
        if not rel:
            continue
        found = True
        har = v["gh++released"]
        seeds = sorted(set(rel) & set(har))
        t_rel = statistics.fmean(rel[s].seconds / args.steps * 1e3 for s in seeds)
        t_har = statistics.fmean(har[s].seconds / args.steps * 1e3 for s in seeds)
        diff = max(abs(rel[s].target_acc - har[s].target_acc) for s in seeds)
        out.append(f"| {task} | {fam} | {len(seeds)} | {t_rel:.2f} | {t_har:.2f} | {t_rel / t_har:.2f}x | {100 * diff:.1f} points |")
    return (out + [""]) if found else []


def _conflicts(cells, args):
    out = ["## How often the gradients conflict", "",
           "Share of training steps with cos(g_align, g_cls) < 0 over the shared parameters, without harmonization "
           "(mean over seeds), and the largest w1 any harmonized run used.", "",
           "| task | family | conflicting steps | max w1 (gh) | max w1 (gh++) | max w1 (gh++released) |", "|---|---|---:|---:|---:|---:|"]
    for task in args.tasks:
        for fam in args.families:
            v = cells[(task, fam)]
            shares = [sum(1 for x in r.cos if x < 0) / len(r.cos) for r in v["none"].values() if r.cos]
            mx = [f"{max(max(r.w1) for r in v[m].values()):.3g}" if m in v else "" for m in ("gh", "gh++", "gh++released")]
            out.append(f"| {task} | {fam} | {100 * statistics.fmean(shares):.0f}% | " + " | ".join(mx) + " |")
    return out + [""]


def _plots(cells, args, outdir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        print(f"(no plots: {e})")
        return
    variants = [k for k in _variants(args)]
    fig, axes = plt.subplots(len(args.tasks), len(args.families), figsize=(4.2 * len(args.families), 3 * len(args.tasks)),
                             squeeze=False, sharex=True)
    curves = {}
    for i, task in enumerate(args.tasks):
        for j, fam in enumerate(args.families):
            ax = axes[i][j]
            for k in variants:
                runs = list(cells[(task, fam)].get(k, {}).values())
                if not runs:
                    continue
                steps = runs[0].curve_steps
                mean = [statistics.fmean(r.curve_target_acc[t] for r in runs) for t in range(len(steps))]
                curves[f"{task}/{fam}/{k}"] = {"steps": steps, "target_acc": mean}
                ax.plot(steps, [100 * m for m in mean], label=k, linestyle="--" if "surgery" in k else "-")
            for base in ("source", "oracle"):
                accs = _accs(cells[(task, "-")][base])
                ax.axhline(100 * statistics.fmean(accs), color="gray", linestyle=":" if base == "source" else "-.", linewidth=1)
            ax.set_title(f"{task}, {fam}", fontsize=9)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for row in axes:
        row[0].set_ylabel("target acc % (mean over seeds)")
    fig.suptitle("target accuracy during training (gray: source only dotted, oracle dash-dot)", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "target_accuracy.png"), dpi=90)
    plt.close(fig)
    with open(os.path.join(outdir, "curves.json"), "w") as f:
        json.dump(curves, f)
    # share of conflicting steps
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(args.families)
    for j, fam in enumerate(args.families):
        vals = []
        for task in args.tasks:
            runs = cells[(task, fam)]["none"].values()
            vals.append(100 * statistics.fmean(sum(1 for x in r.cos if x < 0) / len(r.cos) for r in runs))
        ax.bar([i + j * width for i in range(len(args.tasks))], vals, width, label=fam)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(args.tasks))], args.tasks)
    ax.set_ylabel("% steps with cos < 0")
    ax.set_title("gradient conflict without harmonization")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "conflict_share.png"), dpi=100)
    plt.close(fig)
    # distribution of the weights
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for m in ("gh", "gh++", "gh++released"):
        w1, w2 = [], []
        for (task, fam), v in cells.items():
            for r in v.get(m, {}).values():
                w1 += r.w1
                w2 += r.w2
        if w1:
            axes[0].hist([math.log10(max(x, 1e-6)) for x in w1], bins=60, histtype="step", label=m)
            axes[1].hist(w2, bins=60, histtype="step", label=m)
    axes[0].set_xlabel("log10 w1 (alignment weight), every step of every run")
    axes[1].set_xlabel("w2 (classification weight)")
    for ax in axes:
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "weights.png"), dpi=100)
    plt.close(fig)
