"""Timing robust to a loaded machine: every implementation of a row is timed interleaved
(A, B, C, A, B, C, ...), so a burst of load slows all of them alike, and speed-ups are medians of
per-round ratios (paired samples). A row whose samples spread widely is flagged instead of being
reported as if it could be trusted, and the machine's load is recorded for the summary.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from typing import Callable, Dict, List

import torch

#: A row is flagged "noisy" when (q80 - q20) / median of its samples exceeds this.
NOISY_SPREAD = 0.25


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: Dict[str, Callable[[], object]], device: torch.device, min_time: float,
                min_rounds: int = 5, sample_s: float = 0.005) -> Dict[str, List[float]]:
    """Seconds per call of every function, sampled in interleaved rounds for about ``min_time`` seconds each.

    Each sample runs a function ``calls`` times back to back (calibrated so a sample lasts about
    ``sample_s``), synchronizing the device before and after."""
    calls, per_round = {}, 0.0
    for name, fn in fns.items():  # warm-up and calibration
        fn()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        t_call = max(time.perf_counter() - t0, 1e-7)
        calls[name] = max(1, math.ceil(sample_s / t_call))
        per_round += calls[name] * t_call
    rounds = max(min_rounds, int(min_time * len(fns) / max(per_round, 1e-7)))
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) / calls[name])
    return samples


def stats(s: List[float]) -> Dict[str, float]:
    """Median and 20/80% quantiles in ms, the relative spread, and the noisy flag."""
    ordered = sorted(s)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3  # noqa: E731
    med = statistics.median(ordered) * 1e3
    spread = (pick(0.8) - pick(0.2)) / med if med > 0 else 0.0
    return {"median_ms": med, "q20_ms": pick(0.2), "q80_ms": pick(0.8), "spread": spread, "noisy": spread > NOISY_SPREAD}


def paired_speedup(base: List[float], other: List[float]) -> float:
    """Median over rounds of base time / other time: how many times faster ``other`` ran, round by round."""
    return statistics.median(b / o for b, o in zip(base, other))


def paired_ratio(base: List[float], other: List[float]) -> Dict[str, float]:
    """The paired speed-up with its interval: the median and the 20% / 80% quantiles of the per-round
    ratios base / other, and whether their spread exceeds NOISY_SPREAD of the median."""
    ratios = sorted(b / o for b, o in zip(base, other))
    pick = lambda q: ratios[min(len(ratios) - 1, int(q * len(ratios)))]  # noqa: E731
    med = statistics.median(ratios)
    return {"x": med, "q20": pick(0.2), "q80": pick(0.8), "noisy": (pick(0.8) - pick(0.2)) > NOISY_SPREAD * med}


def last_level_cache_bytes() -> int:
    """The largest CPU cache (Linux sysfs; 0 when unknown): a working set below it is served from cache."""
    best = 0
    for index in range(8):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        best = max(best, int(text.rstrip("KMG")) * scale)
    return best


def machine_load() -> Dict[str, float]:
    """1-minute load average and CPU count (load above about half the cores means other work is running)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {"load1": load, "cpus": os.cpu_count() or 1}


def load_note(before: Dict[str, float], after: Dict[str, float]) -> str:
    """One summary line on the machine's load around the run."""
    busy = before["load1"] > 0.5 * before["cpus"]
    return (f"Machine load: 1-minute load average {before['load1']:.2f} before the run, {after['load1']:.2f} after "
            f"({before['cpus']} CPUs). " + ("**The machine was loaded when the run started: treat ratios with care.**"
                                            if busy else "The machine was idle when the run started."))
