"""Which multi-task method helps? A paired, many-seed comparison of the gh_kernels multi-task methods
on an offline K = 4 task problem built from scikit-learn's digits.

    python python/multitask.py                                  # the default study (~3 min on 2 cores); python/scratch/multitask/
    python python/multitask.py --out python/results/multitask   # regenerate the committed results
    python python/multitask.py --methods sum upgrad --seeds 2   # a quick look

MoDo and SDMGrad take two independent batches per step (consecutive batches paired: half the steps of
the others per epoch, each on twice the data); the per-coordinate methods log no weights.

Tasks (one shared trunk, one head per task, ``MultiTaskHarmonizer`` over the trunk):
  0 ``digit``   10-way classification (cross-entropy; metric: test accuracy)
  1 ``parity``  even or odd (binary cross-entropy; accuracy)
  2 ``large``   digit >= 5 (binary cross-entropy; accuracy)
  3 ``recon``   the image at 4x4 (mean squared error on standardized pixels; metric: test MSE, lower is better)
The losses have different scales and partly conflicting gradients (parity and large split the
digits differently; reconstruction wants pixel detail the classifiers discard), which is what these
methods are for. Every method runs the same seeds (same initialization, split and batch order), so
differences are paired by seed. Reproducible: each run depends only on its seed and runs single-threaded.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import gh_kernels  # noqa: E402

TASKS = ("digit", "parity", "large", "recon")
METHODS = ("sum", "mean", "pcgrad", "mgda", "cagrad", "imtl-g", "aligned-mtl", "upgrad", "dualproj", "config", "gradvac", "nash-mtl",
           "fairgrad", "krum", "random", "trimmed-mean", "graddrop", "pcd", "cr-mogm", "modo", "sdmgrad", "excess-mtl")
#: Per-coordinate methods have no weights to log; cross-batch ones take two batches per step.
OPTIONS = {"trimmed-mean": {"trim_number": 1}, "krum": {"n_byzantine": 1, "n_selected": 2}}
CROSS_BATCH = ("modo", "sdmgrad")


def load_data(seed):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    img = x.view(-1, 1, 8, 8)
    recon = nn.functional.avg_pool2d(img, 2).flatten(1)
    recon = (recon - recon.mean(0)) / recon.std(0).clamp_min(1e-6)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    split = int(0.7 * len(x))
    targets = (y, (y % 2).float(), (y >= 5).float(), recon)
    pick = lambda idx: (x[idx], [t[idx] for t in targets])  # noqa: E731
    return pick(perm[:split]), pick(perm[split:])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(48, 10), nn.Linear(48, 1), nn.Linear(48, 1), nn.Linear(48, 16)])

    def forward(self, x):
        f = self.trunk(x)
        return [h(f) for h in self.heads]


def task_losses(outs, targets):
    return [nn.functional.cross_entropy(outs[0], targets[0]),
            nn.functional.binary_cross_entropy_with_logits(outs[1][:, 0], targets[1]),
            nn.functional.binary_cross_entropy_with_logits(outs[2][:, 0], targets[2]),
            nn.functional.mse_loss(outs[3], targets[3])]


@torch.no_grad()
def evaluate(net, data):
    x, targets = data
    outs = net(x)
    return [(outs[0].argmax(1) == targets[0]).float().mean().item(),
            ((outs[1][:, 0] > 0).float() == targets[1]).float().mean().item(),
            ((outs[2][:, 0] > 0).float() == targets[2]).float().mean().item(),
            nn.functional.mse_loss(outs[3], targets[3]).item()]


def make_method(name):
    objects = {"gradvac": gh_kernels.GradVac, "nash-mtl": gh_kernels.NashMTL, "pcd": gh_kernels.PCD,
               "cr-mogm": lambda: gh_kernels.CRMOGM("upgrad"), "modo": gh_kernels.MoDo, "sdmgrad": gh_kernels.SDMGrad,
               "excess-mtl": gh_kernels.ExcessMTL}
    return objects[name]() if name in objects else name


def run(method, seed, epochs, batch):
    torch.manual_seed(seed)
    train, test = load_data(seed)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    h = gh_kernels.MultiTaskHarmonizer(net.parameters(), shared=net.trunk.parameters(), method=make_method(method),
                                       **OPTIONS.get(method, {}))
    g = torch.Generator().manual_seed(seed + 1)
    x, targets = train
    weights_log, t0 = [], time.perf_counter()
    losses_of = lambda idx: task_losses(net(x[idx]), [t[idx] for t in targets])  # noqa: E731
    for epoch in range(epochs):
        batches = torch.randperm(len(x), generator=g).split(batch)
        if method in CROSS_BATCH:  # consecutive batches paired: half the steps, each on two independent batches
            batches = list(zip(batches[0::2], batches[1::2]))
        for idx in batches:
            opt.zero_grad(set_to_none=True)
            if method in CROSS_BATCH:
                res = h.backward(losses_of(idx[0]), second_losses=losses_of(idx[1]))
            else:
                res = h.backward(losses_of(idx))
            opt.step()
        if res.weights is not None:  # per-coordinate methods have none
            weights_log.append((res.weights / res.weights.abs().sum().clamp_min(1e-12)).tolist())
    return {"method": method, "seed": seed, "test": evaluate(net, test), "seconds": time.perf_counter() - t0,
            "weights": weights_log}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "scratch", "multitask"))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    runs = []
    for seed in range(args.seeds):
        for method in args.methods:
            r = run(method, seed, args.epochs, args.batch)
            runs.append(r)
            print(f"seed {seed} {method:12s} " + " ".join(f"{t}={v:.4f}" for t, v in zip(TASKS, r["test"]))
                  + f"  {r['seconds']:.1f}s", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "runs.json"), "w") as f:
        json.dump({"args": vars(args), "tasks": TASKS, "runs": runs}, f, indent=1)
    sys.path.insert(0, HERE)
    from multitask_report import write_report
    write_report(runs, args, args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
