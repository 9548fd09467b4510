"""Does harmonization help? A paired, many-seed study of GH / GH++ on offline domain-shift tasks.

    python python/uda.py                         # the default study (~20 min on 2 cores); writes python/scratch/uda/
    python python/uda.py --out python/results    # regenerate the committed results (same command, same numbers)
    python python/uda.py --tasks rot40 --families dann --seeds 2 --steps 100   # a quick look

Tasks (python/uda_data.py): scikit-learn's digits at 16x16, with the target domain rotated (20, 40,
60 degrees), blurred plus noise, shrunk and moved, or thickened. Families (python/uda_model.py):
the authors' DANN, CDAN and CDAN+E with their "inv" learning-rate schedule and gradient-reversal
warm-up. Methods: none (plain sum), gh, gh++, gh++released, each in mode "reweight" (the released
semantics) and, where it differs, "surgery". Every (task, family, method) cell runs the same seeds,
so differences are paired by seed; each task also gets a source-only row and a target-supervised
("oracle") row. A subset is also run with the authors' three-backward recipe to compare wall clock.

Reproducible: each run depends only on its seed; runs execute in worker processes with one
thread and deterministic algorithms, and results are written in a fixed order, so the same
command on the same machine type gives the same tables.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import gh_kernels  # noqa: E402
from gh_kernels.reference import released_recipe_backward  # noqa: E402
from uda_data import TASKS, load_task  # noqa: E402
from uda_model import FAMILIES, Net, grl_coeff, inv_lr  # noqa: E402

#: method names of the study: "none" is the plain sum, gh_kernels' method "sum"
METHODS = ("none", "gh", "gh++", "gh++released")
SURGERY_METHODS = ("gh", "gh++", "gh++released")  # surgery differs from reweight for these (the discriminator)


@dataclass
class Config:
    task: str = "rot40"
    family: str = "dann"              # source | oracle | dann | cdan | cdan+e
    method: str = "none"              # none | gh | gh++ | gh++released
    mode: str = "reweight"            # reweight | surgery
    recipe: str = "harmonizer"        # harmonizer | released (the authors' three backward passes)
    seed: int = 0
    steps: int = 200
    batch: int = 32
    lr: float = 0.03
    trade_off: float = 1.0
    kappa: float = 0.5
    eval_every: int = 25


@dataclass
class RunResult:
    config: dict
    target_acc: float = 0.0
    source_acc: float = 0.0
    seconds: float = 0.0
    curve_steps: List[int] = field(default_factory=list)
    curve_target_acc: List[float] = field(default_factory=list)
    cos: List[float] = field(default_factory=list)        # per step, between g_align and g_cls over shared
    w1: List[float] = field(default_factory=list)
    w2: List[float] = field(default_factory=list)


def train(cfg: Config, data: Optional[Dict[str, torch.Tensor]] = None) -> RunResult:
    data = data or load_task(cfg.task)
    torch.manual_seed(cfg.seed)
    model = Net(cfg.family)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    xs, ys = (data["xt"], data["yt"]) if cfg.family == "oracle" else (data["xs"], data["ys"])
    xt = data["xt"]
    method = "sum" if cfg.method == "none" else cfg.method
    harmonizer = gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters(), method=method,
                                       kappa=cfg.kappa, mode=cfg.mode)
    g = torch.Generator().manual_seed(1000 + cfg.seed)
    res = RunResult(asdict(cfg))
    logged = []  # HarmonizeResult tensors, read once at the end (no host sync per step)
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        si = torch.randint(0, len(xs), (cfg.batch,), generator=g)
        ti = torch.randint(0, len(xt), (cfg.batch,), generator=g)
        for group in opt.param_groups:
            group["lr"] = inv_lr(cfg.lr, step, cfg.steps)
        opt.zero_grad(set_to_none=True)
        dom, cls = model.losses(xs[si], ys[si], xt[ti], grl_coeff(step, cfg.steps))
        if dom is None:
            cls.backward()
        elif cfg.recipe == "released":
            w, cos = released_recipe_backward(model, model.shared_parameters(), dom, cls, method, cfg.kappa, cfg.trade_off)
            res.w1.append(w[0])
            res.w2.append(w[1])
            res.cos.append(cos)
        else:
            out = harmonizer.backward(dom, cls, scale1=cfg.trade_off)
            logged.append(torch.cat([out.weights, out.cos.view(1)]))
        opt.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            res.curve_steps.append(step + 1)
            res.curve_target_acc.append(model.accuracy(data["xt_test"], data["yt_test"]))
            model.train()
    res.seconds = time.perf_counter() - t0
    if logged:
        w1, w2, cos = torch.stack(logged).t().tolist()
        res.w1, res.w2, res.cos = w1, w2, cos
    model.eval()
    res.target_acc = model.accuracy(data["xt_test"], data["yt_test"])
    res.source_acc = model.accuracy(data["xs_test"], data["ys_test"])
    return res


def study_configs(args) -> List[Config]:
    base = dict(steps=args.steps, lr=args.lr, trade_off=args.trade_off, kappa=args.kappa)
    out = []
    for task in args.tasks:
        for seed in range(args.seeds):
            out += [Config(task=task, family=f, seed=seed, **base) for f in ("source", "oracle")]
            for family in args.families:
                out += [Config(task=task, family=family, method=m, seed=seed, **base) for m in METHODS]
                if not args.no_surgery:
                    out += [Config(task=task, family=family, method=m, mode="surgery", seed=seed, **base) for m in SURGERY_METHODS]
            for family in args.families[:1] if args.cost_seeds > seed else []:  # wall clock: released vs Harmonizer
                out.append(Config(task=task, family=family, method="gh++released", recipe="released", seed=seed, **base))
    return out


def _worker_init():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


_DATA: Dict[str, Dict[str, torch.Tensor]] = {}


def _run(cfg_dict: dict) -> dict:
    cfg = Config(**cfg_dict)
    if cfg.task not in _DATA:
        _DATA[cfg.task] = load_task(cfg.task)
    return asdict(train(cfg, _DATA[cfg.task]))


def run_all(configs: List[Config], workers: int, log=print) -> List[RunResult]:
    """Every run, in ``workers`` processes (one thread each); results in the order of ``configs``."""
    import multiprocessing as mp

    results: List[Optional[dict]] = [None] * len(configs)
    t0, done = time.time(), 0
    with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        for i, r in pool.imap_unordered(_indexed, list(enumerate(asdict(c) for c in configs))):
            results[i] = r
            done += 1
            if done % max(1, len(configs) // 20) == 0 or done == len(configs):
                log(f"  {done}/{len(configs)} runs, {time.time() - t0:.0f} s")
    return [RunResult(**r) for r in results]


def _indexed(item):
    i, cfg = item
    return i, _run(cfg)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=type(
        "Formatter", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {}))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="target shifts to run")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES), help="adversarial UDA families")
    ap.add_argument("--seeds", type=int, default=10, help="seeds per cell (paired across methods)")
    ap.add_argument("--steps", type=int, default=200, help="training steps per run")
    ap.add_argument("--lr", type=float, default=0.03, help="base learning rate of the inv schedule")
    ap.add_argument("--trade-off", type=float, default=1.0, help="weight of the alignment loss (scale1)")
    ap.add_argument("--kappa", type=float, default=0.5, help="GH++ split of the turn")
    ap.add_argument("--no-surgery", action="store_true", help="skip the mode='surgery' rows")
    ap.add_argument("--cost-seeds", type=int, default=2, help="seeds also run with the released three-backward recipe")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (one thread each)")
    ap.add_argument("--out", default=os.path.join(HERE, "scratch", "uda"),
                    help="output folder; the committed results are regenerated with --out python/results")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    import uda_report

    configs = study_configs(args)
    print(f"{len(configs)} runs: {len(args.tasks)} task(s) x {len(args.families)} family(ies) x {args.seeds} seed(s), "
          f"{args.steps} steps, {args.workers} worker(s)")
    t0 = time.time()
    results = run_all(configs, args.workers)
    os.makedirs(args.out, exist_ok=True)
    md = uda_report.write(results, args, args.out, wall_seconds=time.time() - t0)
    print(md)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
