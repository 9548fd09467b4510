"""Gradient harmonization in PyTorch Lightning.

Replaces, in a LightningModule: automatic optimization (``training_step`` returns
``loss_cls + trade_off * loss_align`` and Lightning calls ``loss.backward()``) with manual optimization
(``self.automatic_optimization = False``) whose ``training_step`` calls ``Harmonizer.backward(loss_align,
loss_cls)`` between ``opt.zero_grad()`` and ``opt.step()``. With automatic optimization Lightning would
call ``backward`` itself and the gradients would be added twice: ``configure_optimizers`` below refuses it.
Under the DDP strategy the two backward passes run under ``no_sync()`` and the Harmonizer averages both
gradients itself (``sync="global"``: exact, every replica applies the same update).

    python python/lightning_example.py                                   # one CPU process
    python python/lightning_example.py --devices 2 --strategy ddp        # DDP, 2 CPU processes (gloo)
"""
import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lightning as L  # noqa: E402

import gh_kernels  # noqa: E402
from trainer_common import ShiftedDomains, UDANet  # noqa: E402


class HarmonizedUDA(L.LightningModule):
    def __init__(self, method="gh++", trade_off=1.0, distributed=False):
        super().__init__()
        self.automatic_optimization = False  # the Harmonizer runs the backward passes
        self.net = UDANet()
        self.method, self.trade_off, self.distributed = method, trade_off, distributed
        self.harmonizer = None

    def configure_optimizers(self):
        if self.automatic_optimization:
            raise RuntimeError("HarmonizedUDA needs automatic_optimization = False: with automatic optimization "
                               "Lightning calls loss.backward() itself and the gradients would be added twice")
        return torch.optim.SGD(self.net.parameters(), lr=0.05)

    def on_train_start(self):
        # Built once the strategy has set up the process group (sync="global" needs it).
        self.harmonizer = gh_kernels.Harmonizer(self.net.parameters(), shared=self.net.shared_parameters(),
                                                method=self.method, sync="global" if self.distributed else None)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        ddp = self.trainer.strategy.model
        no_sync = ddp.no_sync() if self.distributed and hasattr(ddp, "no_sync") else contextlib.nullcontext()
        with no_sync:  # the forward too: DDP's reducer must not see these backward passes
            loss_align, loss_cls = self.net(batch["xs"], batch["ys"], batch["xt"])
            result = self.harmonizer.backward(loss_align, loss_cls, scale1=self.trade_off)
        opt.step()
        self.log_dict({"loss_cls": loss_cls.detach(), "cos": result.cos}, prog_bar=False)
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--samples", type=int, default=64, help="size of the synthetic data set")
    ap.add_argument("--batch-size", type=int, default=8, help="per process")
    ap.add_argument("--out", default=None, help="write each rank's final parameter checksum to OUT.<rank>")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    distributed = args.strategy.startswith("ddp")
    module = HarmonizedUDA(distributed=distributed)
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy=args.strategy, max_steps=args.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    loader = torch.utils.data.DataLoader(ShiftedDomains(size=args.samples), batch_size=args.batch_size)
    trainer.fit(module, loader)
    checksum = sum(float(p.detach().double().sum()) for p in module.net.parameters())
    if args.out:
        with open(f"{args.out}.{trainer.global_rank}", "w") as f:
            f.write(f"{checksum:.12f}\n")
    if trainer.global_rank == 0:
        print(f"lightning_example: {args.steps} harmonized steps on {args.devices} process(es); checksum {checksum:.10f}")
    return module.net


if __name__ == "__main__":
    main()
