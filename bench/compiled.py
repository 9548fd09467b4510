"""A torch.compile'd model's harmonized step against its eager harmonized step and its compiled plain
step (issue #22): a DANN with an MLP backbone (6 x Linear(512, 512) + GELU, batch 64 per domain), one
process. Every variant runs zero_grad, the forward and its backward work; timed interleaved, ratios
are medians of per-round ratios. Compilation happens in the warm-up and is not timed.

  python -m bench.compiled [--rounds 40] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import gh_kernels

from . import timing


class MLPDANN(nn.Module):
    def __init__(self, width=512, depth=6, classes=10):
        super().__init__()
        layers = [nn.Linear(64, width), nn.GELU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.GELU()]
        self.backbone = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, classes)
        self.discriminator = nn.Sequential(nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, 1))

    def shared_parameters(self):
        return [*self.backbone.parameters(), *self.classifier.parameters()]

    def forward(self, xs, ys, xt):
        f = self.backbone(torch.cat([xs, xt]))
        cls = nn.functional.cross_entropy(self.classifier(f[: len(xs)]), ys)
        d = self.discriminator(gh_kernels.grad_reverse(f)).squeeze(1)
        labels = torch.cat([torch.ones(len(xs)), torch.zeros(len(xt))])
        return nn.functional.binary_cross_entropy_with_logits(d, labels), cls


def measure(rounds: int = 40):
    torch.manual_seed(0)
    model = MLPDANN()
    compiled = torch.compile(model)
    harmonizer = gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters(), method="gh++")
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g), torch.randn(64, 64, generator=g))

    def plain(forward):
        model.zero_grad(set_to_none=True)
        dom, cls = forward(*batch)
        (dom + cls).backward()

    def harmonized(forward):
        model.zero_grad(set_to_none=True)
        harmonizer.backward(*forward(*batch))

    fns = {"eager plain": lambda: plain(model), "eager harmonized": lambda: harmonized(model),
           "compiled plain": lambda: plain(compiled), "compiled harmonized": lambda: harmonized(compiled)}
    for fn in fns.values():  # warm-up: compiles
        for _ in range(3):
            fn()
    samples = timing.interleaved(fns, torch.device("cpu"), min_time=0.0, min_rounds=rounds)
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(samples[a], samples[b]))  # noqa: E731
    return {"median_ms": {k: statistics.median(v) * 1e3 for k, v in samples.items()},
            "compiled harmonized / eager harmonized": ratio("compiled harmonized", "eager harmonized"),
            "compiled harmonized / compiled plain": ratio("compiled harmonized", "compiled plain"),
            "eager harmonized / eager plain": ratio("eager harmonized", "eager plain")}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.compiled", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.rounds)
    for name, ms in result["median_ms"].items():
        print(f"{name:22s} {ms:8.2f} ms")
    for key, value in result.items():
        if key != "median_ms":
            print(f"{key}: {value:.3f}")


if __name__ == "__main__":
    main()
