"""Gradient harmonization with Hugging Face Accelerate.

Replaces, in an Accelerate loop: ``accelerator.backward(loss)`` with ``Harmonizer.backward(loss_align,
loss_cls)``, run under ``accelerator.no_sync(model)`` (the wrapped model's reducer must not all-reduce
inside these backward passes; with several processes pass ``sync="global"`` and the Harmonizer averages both
gradients itself) and under ``accelerator.autocast()`` for the forward. ``mixed_precision="bf16"`` works on
CPU: the forward runs in bfloat16, the gradients and the Harmonizer's Gram matrix stay float32.

    python python/accelerate_example.py [--mixed-precision bf16|no] [--steps 4]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accelerate import Accelerator  # noqa: E402

import gh_kernels  # noqa: E402
from trainer_common import ShiftedDomains, UDANet  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixed-precision", default="bf16", choices=["bf16", "no"])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--samples", type=int, default=64, help="size of the synthetic data set")
    args = ap.parse_args(argv)
    accelerator = Accelerator(cpu=True, mixed_precision=args.mixed_precision)
    torch.manual_seed(0)
    model = UDANet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = torch.utils.data.DataLoader(ShiftedDomains(size=args.samples), batch_size=8)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    net = accelerator.unwrap_model(model)
    harmonizer = gh_kernels.Harmonizer(net.parameters(), shared=net.shared_parameters(), method="gh++",
                                       sync="global" if accelerator.num_processes > 1 else None)
    steps = 0
    while steps < args.steps:
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            with accelerator.no_sync(model), accelerator.autocast():
                loss_align, loss_cls = model(batch["xs"], batch["ys"], batch["xt"])
            with accelerator.no_sync(model):
                result = harmonizer.backward(loss_align, loss_cls)   # instead of accelerator.backward(loss)
            optimizer.step()
            steps += 1
            if steps == args.steps:
                break
    checksum = sum(float(p.detach().double().sum()) for p in net.parameters())
    accelerator.print(f"accelerate_example: {steps} harmonized steps ({args.mixed_precision}), loss dtype "
                      f"{loss_cls.dtype}, weights {[round(w, 4) for w in result.weights.tolist()]}; checksum {checksum:.10f}")
    return net, loss_cls


if __name__ == "__main__":
    main()
