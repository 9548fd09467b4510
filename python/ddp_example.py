"""Data-parallel training with exact gradient harmonization (``Harmonizer(sync="global")``).

Launch with torchrun, e.g.
    torchrun --nproc_per_node=2 python/ddp_example.py                 # CPU, gloo
    torchrun --nproc_per_node=8 python/ddp_example.py --device cuda   # one process per GPU, nccl

Each rank draws a batch holding BOTH domains (source with labels, target without): splitting the
domains across ranks breaks the alignment loss. The forward pass and both backward passes run
under ``model.no_sync()``; the Harmonizer then averages g1 and g2 over the ranks and harmonizes
the global gradients, so every rank applies the same update as single-process training on the
union of the batches. The script checks that the replicas stay identical.
"""
import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gh_kernels


GradReverse = gh_kernels.layers.GradReverse  # the gradient-reversal layer

class DANN(nn.Module):
    def __init__(self, dim=32, classes=5):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.classifier = nn.Linear(32, classes)
        self.discriminator = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, xs, ys, xt, coeff):
        f = self.features(torch.cat([xs, xt]))
        cls = nn.functional.cross_entropy(self.classifier(f[: len(xs)]), ys)
        d = self.discriminator(GradReverse.apply(f, coeff)).squeeze(1)
        labels = torch.cat([torch.ones(len(xs)), torch.zeros(len(xt))]).to(d.device)
        return nn.functional.binary_cross_entropy_with_logits(d, labels), cls


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--method", default="gh++", choices=list(gh_kernels.METHODS))
    ap.add_argument("--sync", default="global", choices=["global", "local"])
    args = ap.parse_args()

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        sys.exit("ddp_example.py runs one process per rank and reads RANK, WORLD_SIZE and MASTER_ADDR from the "
                 "environment: launch it with torchrun, e.g.\n  torchrun --nproc_per_node=2 python/ddp_example.py")
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # same initial weights on every rank
    model = DDP(DANN().to(device), device_ids=[device.index] if cuda else None)
    shared = [*model.module.features.parameters(), *model.module.classifier.parameters()]
    harmonizer = gh_kernels.Harmonizer(model.parameters(), shared=shared, method=args.method, sync=args.sync)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data, both domains
    for step in range(args.steps):
        xs = torch.randn(16, 32, generator=gen).to(device)
        ys = (xs[:, :5].argmax(1)).to(device)
        xt = (torch.randn(16, 32, generator=gen) * 1.5 + 0.5).to(device)
        coeff = 2.0 / (1.0 + torch.exp(torch.tensor(-10.0 * step / args.steps)).item()) - 1.0  # GRL warm-up
        opt.zero_grad(set_to_none=True)
        with model.no_sync():  # DDP must not reduce inside the two backward passes
            dom, cls = model(xs, ys, xt, coeff)
            result = harmonizer.backward(dom, cls, scale1=1.0)
        opt.step()
        if rank == 0 and (step % 5 == 0 or step == args.steps - 1):
            print(f"step {step:3d}  cls {cls.item():.3f}  dom {dom.item():.3f}  "
                  f"cos {result.cos.item():+.3f}  w {[round(x, 3) for x in result.weights.tolist()]}")
    # Replicas must be identical after global harmonization.
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        drift = max((g - gathered[0]).abs().max().item() for g in gathered)
        print(f"world size {world}, sync={args.sync}: max parameter difference between replicas {drift:.2e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
