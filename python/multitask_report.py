"""Tables and plots of python/multitask.py: per-task test metrics (mean and paired 95% CI of the
difference to the plain sum, over seeds), mean rank across tasks, wall clock, and the weights."""
from __future__ import annotations

import math
import os
import statistics

TASKS = ("digit", "parity", "large", "recon")
HIGHER_IS_BETTER = (True, True, True, False)
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 15: 2.13, 20: 2.09}


def t95(df):
    return T95.get(df, 1.96 if df > 20 else T95[min(T95, key=lambda d: abs(d - df))])


def paired_ci(diffs):
    m = statistics.mean(diffs)
    if len(diffs) < 2:
        return m, float("nan")
    return m, t95(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))


def write_report(runs, args, out):
    methods = list(dict.fromkeys(r["method"] for r in runs))
    by = {(r["method"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    base = "sum" if "sum" in methods else methods[0]
    lines = ["# Multi-task methods on digits (K = 4 tasks)", "",
             f"{len(seeds)} seeds x {len(methods)} methods, {args.epochs} epochs, batch {args.batch}, Adam 2e-3, "
             "`MultiTaskHarmonizer(shared=trunk)`. Test metrics: accuracy for digit/parity/large (higher is better), "
             "MSE for recon (lower is better). Columns: mean over seeds; in brackets the paired mean difference to "
             f"`{base}` with its 95% CI (t, over seeds); **bold**: the CI excludes 0.", "",
             "| method | " + " | ".join(TASKS) + " | mean rank | s/run |", "|---|" + "---|" * (len(TASKS) + 2)]
    ranks = {m: [] for m in methods}
    for s in seeds:
        for t, hib in enumerate(HIGHER_IS_BETTER):
            ordered = sorted(methods, key=lambda m: -by[(m, s)]["test"][t] if hib else by[(m, s)]["test"][t])
            for i, m in enumerate(ordered):
                ranks[m].append(i + 1)
    for m in methods:
        cells = []
        for t in range(len(TASKS)):
            vals = [by[(m, s)]["test"][t] for s in seeds]
            cell = f"{statistics.mean(vals):.4f}"
            if m != base:
                d, ci = paired_ci([by[(m, s)]["test"][t] - by[(base, s)]["test"][t] for s in seeds])
                txt = f"{d:+.4f} ± {ci:.4f}"
                cell += f" ({'**' + txt + '**' if abs(d) > ci else txt})"
            cells.append(cell)
        secs = statistics.mean(by[(m, s)]["seconds"] for s in seeds)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {statistics.mean(ranks[m]):.2f} | {secs:.1f} |")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(TASKS), figsize=(4 * len(TASKS), 4.2))
    for t, ax in enumerate(axes):
        means = [statistics.mean(by[(m, s)]["test"][t] for s in seeds) for m in methods]
        errs = [paired_ci([by[(m, s)]["test"][t] for s in seeds])[1] for m in methods]
        ax.barh(range(len(methods)), means, xerr=errs, color=["#888" if m == base else "#3a7" for m in methods])
        ax.set_yticks(range(len(methods)))
        ax.set_yticklabels(methods if t == 0 else [])
        spread = max((e for e in errs if e == e), default=0.0)  # one seed: no interval
        lo = min(means) - 2 * spread
        ax.set_xlim(max(0.0, lo), max(means) + 2 * spread + 1e-9)
        ax.set_title(f"{TASKS[t]} ({'accuracy' if HIGHER_IS_BETTER[t] else 'MSE'}, test)")
    fig.suptitle("Multi-task methods on digits: mean over seeds, 95% CI")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "test_metrics.png"), dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in methods:
        w = [r["weights"][-1] for r in runs if r["method"] == m and r["weights"]]
        if not w:  # per-coordinate methods: no weights
            continue
        mean_w = [statistics.mean(x[t] for x in w) for t in range(len(TASKS))]
        ax.plot(range(len(TASKS)), mean_w, marker="o", label=m)
    ax.set_xticks(range(len(TASKS)))
    ax.set_xticklabels(TASKS)
    ax.set_ylabel("weight / sum |weights| (last step, mean over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "weights.png"), dpi=110)
    plt.close(fig)
