"""``python -m bench.large_k``: the rows of issue #28 (every number of tasks), each against torchjd measured in the
same run, interleaved, with paired ratios (bench/timing.py).

* **aggregate, CelebA-shaped**: K = 40 gradient lists shaped like ResNet-18's trunk (60 tensors, 11.2M elements),
  lists in, combined gradient out: ``gh_kernels.aggregate(grads, method, out=out)`` against torchjd's aggregator
  on the stacked K x N Jacobian (its own input format), the result copied into ``out``. Also the Gram pass alone
  against the time to read the K sets once (``sum`` of each set: the bytes over the measured read bandwidth).
* **training step, CelebA-shaped**: 40 task losses (one linear head each) on a 12M-parameter MLP trunk (ResNet-18's
  size; convolutions would only change the backward passes, which both sides run):
  ``MultiTaskHarmonizer.backward`` (40 backward passes, Gram, solve, combine) against torchjd's ``mtl_backward``
  and its autogram ``Engine`` (the Gramian of the losses by one extra backward, then one weighted backward).
* **training step, instance-wise**: one loss per sample (K = 32, 64) of a small CNN: ours against torchjd's
  autogram ``Engine`` (its path for per-sample losses).
* **solve**: weights from a K x K Gram, K = 13..64, against torchjd's weightings.

  python -m bench.large_k [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import warnings

import torch

import gh_kernels

from . import shapes, timing


def _ratio_text(samples_base, samples_ours):
    r = timing.paired_ratio(samples_base, samples_ours)
    return f"{r['x']:.2f}x [{r['q20']:.2f}-{r['q80']:.2f}]"


def aggregate_rows(K, methods, min_time, device):
    import torchjd.aggregation as A
    g = torch.Generator().manual_seed(0)
    shp = shapes.resnet18_like()
    sets = [[torch.randn(s, generator=g).to(device) for s in shp] for _ in range(K)]
    out = [torch.zeros_like(t) for t in sets[0]]
    sizes = [t.numel() for t in out]
    N = sum(sizes)
    theirs = {"upgrad": A.UPGrad(), "mean": A.Mean(), "mgda": A.MGDA(), "dualproj": A.DualProj()}
    rows = []
    for method in methods:
        def ours():
            gh_kernels.aggregate(sets, method, out=out)

        def torchjd():
            J = torch.stack([torch.cat([t.reshape(-1) for t in s]) for s in sets])
            torch._foreach_copy_(out, [v.view_as(o) for v, o in zip(theirs[method](J).split(sizes), out)])
        samples = timing.interleaved({"gh_kernels": ours, "torchjd": torchjd}, device, min_time, min_rounds=3, sample_s=0.0)
        st = {k: timing.stats(v) for k, v in samples.items()}
        rows.append({"row": "aggregate", "list": "resnet18", "K": K, "N": N, "method": method,
                     "gh_ms": st["gh_kernels"]["median_ms"], "torchjd_ms": st["torchjd"]["median_ms"],
                     "gh_vs_torchjd": _ratio_text(samples["torchjd"], samples["gh_kernels"])})
        print(rows[-1], flush=True)
    # the Gram pass alone against reading the K sets once
    def gram():
        gh_kernels.gram(sets)

    def read_once():
        for s in sets:
            torch._foreach_norm(s)
    samples = timing.interleaved({"gram": gram, "read": read_once}, device, min_time, min_rounds=3, sample_s=0.0)
    st = {k: timing.stats(v) for k, v in samples.items()}
    nbytes = K * N * 4
    rows.append({"row": "gram pass", "list": "resnet18", "K": K, "N": N, "method": "-",
                 "gh_ms": st["gram"]["median_ms"], "read_ms": st["read"]["median_ms"],
                 "gram_over_read": _ratio_text(samples["gram"], samples["read"]),
                 "read_gbps": nbytes / (st["read"]["median_ms"] * 1e-3) / 1e9})
    print(rows[-1], flush=True)
    return rows


class _Trunk(torch.nn.Module):
    def __init__(self, d_in, width, depth):
        super().__init__()
        layers = [torch.nn.Linear(d_in, width), torch.nn.ReLU()]
        for _ in range(depth - 1):
            layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
        self.body = torch.nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


def celeba_step_rows(K, min_time, device, quick):
    import torchjd.aggregation as A
    from torchjd.autogram import Engine
    from torchjd.autojac import jac_to_grad, mtl_backward
    width, depth = (256, 2) if quick else (1920, 4)  # 512 x 1920 + 3 x 1920^2: 12.0M trunk parameters (ResNet-18: 11.2M)
    torch.manual_seed(0)
    trunk = _Trunk(512, width, depth).to(device)
    heads = torch.nn.ModuleList([torch.nn.Linear(width, 1) for _ in range(K)]).to(device)  # one head per task
    x = torch.randn(32, 512, device=device)
    y = torch.randn(32, K, device=device)
    params = list(trunk.parameters()) + list(heads.parameters())
    n_trunk = sum(p.numel() for p in trunk.parameters())
    h = gh_kernels.MultiTaskHarmonizer(params, method="upgrad", shared=list(trunk.parameters()))
    # the autogram engine hooks its modules' forward passes: it gets copies of its own (the same weights)
    import copy
    trunk_ag, heads_ag = copy.deepcopy(trunk), copy.deepcopy(heads)
    params_ag = list(trunk_ag.parameters()) + list(heads_ag.parameters())
    engine = Engine(trunk_ag, heads_ag, batch_dim=None)
    weighting = A.UPGradWeighting()

    def losses(trunk=trunk, heads=heads):
        f = trunk(x)
        return [((head(f)[:, 0] - y[:, k]) ** 2).mean() for k, head in enumerate(heads)], f

    def ours():
        for p in params:
            p.grad = None
        h.backward(losses()[0])

    def torchjd_mtl():
        for p in params:
            p.grad = None
        ls, f = losses()
        mtl_backward(ls, features=f)  # .jac of the trunk's parameters, .grad of the heads'
        jac_to_grad(list(trunk.parameters()), A.UPGrad())

    def torchjd_autogram():
        for p in params_ag:
            p.grad = None
        ls = torch.stack(losses(trunk_ag, heads_ag)[0])
        G = engine.compute_gramian(ls)
        ls.backward(weighting(G))
    fns = {"gh_kernels": ours, "torchjd mtl_backward": torchjd_mtl, "torchjd autogram": torchjd_autogram}
    samples = timing.interleaved(fns, device, min_time, min_rounds=3, sample_s=0.0)
    st = {k: timing.stats(v) for k, v in samples.items()}
    fastest = min((k for k in fns if k != "gh_kernels"), key=lambda k: st[k]["median_ms"])
    row = {"row": "training step, CelebA-shaped", "K": K, "trunk_params": n_trunk, "method": "upgrad",
           "gh_ms": st["gh_kernels"]["median_ms"], **{f"{k}_ms": st[k]["median_ms"] for k in fns if k != "gh_kernels"},
           "torchjd_fastest": fastest, "gh_vs_fastest": _ratio_text(samples[fastest], samples["gh_kernels"])}
    print(row, flush=True)
    return [row]


def instance_rows(Ks, min_time, device):
    import torchjd.aggregation as A
    from torchjd.autogram import Engine
    rows = []
    for K in Ks:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10)).to(device)
        x = torch.randn(K, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (K,), device=device)
        crit = torch.nn.CrossEntropyLoss(reduction="none")
        params = list(model.parameters())
        h = gh_kernels.MultiTaskHarmonizer(params, method="upgrad")
        import copy
        model_ag = copy.deepcopy(model)  # the engine hooks its module's forward passes
        params_ag = list(model_ag.parameters())
        engine = Engine(model_ag, batch_dim=0)
        weighting = A.UPGradWeighting()

        def ours():
            for p in params:
                p.grad = None
            h.backward(list(crit(model(x), y)))

        def autogram():
            for p in params_ag:
                p.grad = None
            ls = crit(model_ag(x), y)
            ls.backward(weighting(engine.compute_gramian(ls)))
        samples = timing.interleaved({"gh_kernels": ours, "torchjd autogram": autogram}, device, min_time, min_rounds=5,
                                     sample_s=0.0)
        st = {k: timing.stats(v) for k, v in samples.items()}
        rows.append({"row": "training step, instance-wise", "K": K, "params": sum(p.numel() for p in params),
                     "method": "upgrad", "gh_ms": st["gh_kernels"]["median_ms"],
                     "torchjd_autogram_ms": st["torchjd autogram"]["median_ms"],
                     "gh_vs_autogram": _ratio_text(samples["torchjd autogram"], samples["gh_kernels"])})
        print(rows[-1], flush=True)
    return rows


def solve_rows(Ks, device):
    import time

    import torchjd.aggregation as A
    theirs = {"upgrad": A.UPGradWeighting(), "dualproj": A.DualProjWeighting(), "mgda": A.MGDAWeighting(),
              "cagrad": A.CAGradWeighting(c=0.4)}
    rows = []
    g = torch.Generator().manual_seed(1)
    for K in Ks:
        J = torch.randn(K, 2 * K + 8, generator=g, dtype=torch.float64)
        G = (J @ J.T).to(device)
        for method, w in theirs.items():
            times = {}
            for name, fn in (("gh", lambda: gh_kernels.weights(G, method)), ("torchjd", lambda: w(G))):
                fn()
                best = float("inf")
                for _ in range(3):
                    t0 = time.perf_counter()
                    fn()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    best = min(best, time.perf_counter() - t0)
                times[name] = best * 1e3
            rows.append({"row": "solve", "K": K, "method": method, "gh_ms": times["gh"], "torchjd_ms": times["torchjd"]})
            print(rows[-1], flush=True)
    return rows


def summary(rows, note):
    lines = ["# Every number of tasks (issue #28): large-K rows against torchjd 0.18", "", note, "",
             "Ratios are `torchjd / gh_kernels` medians of paired per-round ratios with [q20-q80] (> 1: gh_kernels faster);",
             "`gram / read` is the Gram pass over the time to read the K sets once (1.0: at read speed).", ""]
    for kind in ("aggregate", "gram pass", "training step, CelebA-shaped", "training step, instance-wise", "solve"):
        sel = [r for r in rows if r["row"] == kind]
        if not sel:
            continue
        keys = [k for k in sel[0] if k != "row"]
        lines += [f"## {kind}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in sel:
            lines.append("| " + " | ".join(f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    min_time = 1.0 if args.quick else 6.0
    before = timing.machine_load()
    rows = []
    rows += aggregate_rows(8 if args.quick else 40, ("upgrad", "mean"), min_time, device)
    rows += celeba_step_rows(8 if args.quick else 40, min_time, device, args.quick)
    rows += instance_rows((8,) if args.quick else (32, 64), min_time, device)
    rows += solve_rows((13,) if args.quick else (13, 20, 32, 40, 50, 64), device)
    note = (f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, float32 gradients; "
            + timing.load_note(before, timing.machine_load()))
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"large-k-{device.type}-{datetime.date.today().isoformat()}")
    if os.path.exists(out) and os.listdir(out):
        raise SystemExit(f"{out} exists: pass another --out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "large_k.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary(rows, note))
    print("wrote", out)


if __name__ == "__main__":
    main()
