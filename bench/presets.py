"""Benchmark presets (which cases, dtypes, timing budget and end-to-end configs each run mode
uses) and the targets the summary evaluates, kept out of ``run.main``."""
from __future__ import annotations

import importlib.util
from typing import List, NamedTuple, Optional, Tuple

#: The GPT-2 end-to-end row needs Hugging Face transformers (a benchmark dependency, never the package's).
GPT2 = ["gpt2"] if importlib.util.find_spec("transformers") is not None else []


class Preset(NamedTuple):
    cases: List[Tuple[str, int]]  # (list name, N): "sweep" with N elements, or a model list (N ignored)
    dtypes: List[str]
    min_time: float               # seconds of timing per row
    with_compile: bool            # time the torch.compile baseline
    memory: bool                  # measure extra memory
    e2e_configs: List[str]
    e2e_steps: int
    e2e_warmup: int
    copy_n: int                   # elements of the copy_ that sets the bandwidth ceiling
    hostcost_rounds: int          # interleaved rounds of the host-cost table (0: its default, 200 / 40)


def preset(name: str, gpu: bool, max_n: Optional[float] = None, compile_ok: bool = True, memory_ok: bool = True) -> Preset:
    """``name``: "smoke" (one tiny case of everything), "quick" (a table in under a minute) or "full"."""
    if name == "smoke":
        return Preset([("sweep", 100_000)], ["float32"], 0.05, False, False, ["resnet50_small"], 1, 1, 1_000_000, 5)
    if name == "quick":
        return Preset([("sweep", 100_000), ("sweep", 1_000_000), ("resnet50", 0)], ["float32"], 0.2, False, False,
                      ["resnet50_small"], 5, 1, 10_000_000, 30)
    limit = int(max_n or (1e9 if gpu else 1e8))
    sweep = [n for n in (100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000) if n <= limit]
    cases = [("sweep", n) for n in sweep] + [("resnet50", 0), ("vit_b16", 0), ("llm", 0), ("many_tiny", 0)]
    return Preset(cases, ["float32", "bfloat16"], 0.15 if gpu else 1.0, compile_ok, memory_ok,
                  ["resnet50", "vit_b16"] + GPT2 if gpu else ["resnet50_small", "vit_small"] + [c + "_small" for c in GPT2], 10 if gpu else 9, 2, 100_000_000, 0)


#: Targets of the benchmark issue: (share of copy bandwidth, x released recipe, x other baseline, which baseline).
GPU_TARGET = dict(min_n=100_000_000, pct_copy=85, vs_released=3.0, vs_other=1.5, other="torch_compile")
CPU_TARGET = dict(min_n=10_000_000, pct_copy=60, vs_released=4.0, vs_other=1.5, other="torch_best_effort")
E2E_TARGET = 1.25  # Harmonizer step vs the released three-backward step


def _fmt(x):
    return "" if x is None else f"{x:.2f}"


#: Host cost: the planned call over 160 and 2,000 tensors at most this many times one _foreach_add_ (CPU, 1 thread).
HOSTCOST_TARGET = 2.0


def targets(micro_rows, e2e_rows, copy_gbps, gpu, host_rows=()) -> List[str]:
    """MET / MISSED lines for the targets, from the measured rows."""
    t = GPU_TARGET if gpu else CPU_TARGET
    verdict = lambda ok: "MET" if ok else "MISSED"  # noqa: E731
    fast = [r for r in micro_rows if r["impl"].startswith("gh_kernels")]
    wanted = sorted({(r["case"], r["n"], r["dtype"]) for r in fast
                     if r["n"] >= t["min_n"] and (gpu or r["dtype"] == "float32") or (not gpu and r["case"] == "resnet50" and r["dtype"] == "float32")})
    out = []
    for key in wanted:
        b = max((x for x in fast if (x["case"], x["n"], x["dtype"]) == key), key=lambda r: r["gbps_5n"])
        pct = 100 * b["gbps_5n"] / copy_gbps
        rel, other = b.get("speedup_vs_released_recipe"), b.get(f"speedup_vs_{t['other']}")
        line = (f"- {key[0]} N={key[1]:,} {key[2]}, {b['impl']}: {pct:.0f}% of copy bandwidth (target {t['pct_copy']}%: "
                f"{verdict(pct >= t['pct_copy'])}), {_fmt(rel)}x released (target {t['vs_released']:g}x: "
                f"{verdict(rel is not None and rel >= t['vs_released'])})")
        if other is not None:
            line += f", {other:.2f}x {t['other']} (target {t['vs_other']:g}x: {verdict(other >= t['vs_other'])})"
        out.append(line)
    for r in host_rows:
        if r["call"].startswith("plan[") and r["tensors"] in (160, 2000) and r["call"] in ("plan[cpu]", "plan[cuda]"):
            out.append(f"- host cost, {r['call']} over {r['tensors']} tensors: {r['x_foreach_add']:.2f}x one _foreach_add_ "
                       f"(target {HOSTCOST_TARGET:g}x: {verdict(r['x_foreach_add'] <= HOSTCOST_TARGET)})")
    for r in e2e_rows:
        if r["step"].startswith("harmonizer") and r.get("speedup_vs_released"):
            out.append(f"- end-to-end {r['config']} {r['step']}: {r['speedup_vs_released']:.2f}x the released recipe "
                       f"(target {E2E_TARGET:g}x: {verdict(r['speedup_vs_released'] >= E2E_TARGET)})")
    return out or ["- (no rows to evaluate)"]
