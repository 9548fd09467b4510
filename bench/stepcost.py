"""What a training step costs over plain backward passes, on a model of many small tensors (where the
host work of the step shows): a trunk of 299 ``Linear(16, 16)`` layers and one ``Linear(16, 1)``
head per loss -- 602 parameter tensors for two losses. Each variant runs zero_grad, the forward and
its backward work:

* ``plain``: the K losses' backward passes, one after the other (what K backward passes cost);
* ``harmonizer``: ``Harmonizer.backward`` (K = 2, ``gh``);
* ``multitask-<method>``: ``MultiTaskHarmonizer.backward`` with that method.

Timed interleaved; overheads are medians of per-round ratios to ``plain``, minus 1.

  python -m bench.stepcost [--threads 1] [--rounds 60] [--K 2 4]
"""
from __future__ import annotations

import argparse
import json
import statistics
from typing import Callable, Dict, List

import torch
from torch import nn

import gh_kernels

from . import timing

LAYERS, WIDTH, BATCH = 299, 16, 32


class SmallTensorNet(nn.Module):
    def __init__(self, K: int):
        super().__init__()
        self.trunk = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS))
        self.heads = nn.ModuleList(nn.Linear(WIDTH, 1) for _ in range(K))

    def losses(self, x, y):
        for layer in self.trunk:
            x = torch.tanh(layer(x))
        return [((h(x)[:, 0] - y[:, k]) ** 2).mean() for k, h in enumerate(self.heads)]


def variants(K: int, methods: List[str]) -> Dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    model = SmallTensorNet(K)
    x, y = torch.randn(BATCH, WIDTH), torch.randn(BATCH, K)
    trunk = list(model.trunk.parameters())

    def plain():
        model.zero_grad(set_to_none=True)
        losses = model.losses(x, y)
        for k, loss in enumerate(losses):
            loss.backward(retain_graph=k < K - 1)

    fns = {"plain": plain}
    if K == 2:
        h2 = gh_kernels.Harmonizer(model.parameters(), shared=trunk, method="gh")

        def harmonizer():
            model.zero_grad(set_to_none=True)
            h2.backward(*model.losses(x, y))
        fns["harmonizer"] = harmonizer
    for method in methods:
        hk = gh_kernels.MultiTaskHarmonizer(model.parameters(), shared=trunk, method=method)

        def multitask(hk=hk):
            model.zero_grad(set_to_none=True)
            hk.backward(model.losses(x, y))
        fns[f"multitask-{method}"] = multitask
    return fns


def measure(Ks=(2, 4), methods=("mean", "upgrad"), rounds: int = 60) -> List[dict]:
    rows = []
    for K in Ks:
        fns = variants(K, list(methods) + (["gh"] if K == 2 else []))
        for fn in fns.values():  # warm-up (interleaved() then calibrates with one more call)
            fn()
        samples = timing.interleaved(fns, torch.device("cpu"), min_time=0.0, min_rounds=rounds)
        tensors = sum(1 for _ in SmallTensorNet(K).parameters())
        for name, s in samples.items():
            ratio = statistics.median(o / b for o, b in zip(s, samples["plain"]))
            rows.append({"K": K, "tensors": tensors, "step": name, "median_ms": statistics.median(s) * 1e3,
                         "overhead_vs_plain": ratio - 1.0, "noisy": timing.stats(s)["noisy"]})
    return rows


def table(rows: List[dict]) -> str:
    lines = ["| K | tensors | step | median ms | over K plain backward passes |", "|---|---|---|---|---|"]
    for r in rows:
        flag = " (noisy)" if r["noisy"] else ""
        lines.append(f"| {r['K']} | {r['tensors']} | {r['step']} | {r['median_ms']:.2f} | "
                     f"{100 * r['overhead_vs_plain']:+.1f}%{flag} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.stepcost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--K", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = timing.machine_load()
    rows = measure(args.K, rounds=args.rounds)
    print(table(rows))
    print(f"\n(1-minute load average before the run: {load['load1']:.2f} on {load['cpus']} CPUs; {args.threads} thread(s))")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
