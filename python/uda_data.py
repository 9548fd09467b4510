"""Offline domain-shift tasks for the UDA study, built from scikit-learn's handwritten digits.

The 1,797 8x8 digits ship with scikit-learn (no download). They are upsampled to 16x16, split with
a fixed seed into a source pool and a disjoint target pool (each then 70/30 into train and test),
and the target pool gets one of the shifts below. Every shift is deterministic: the same task
gives the same images on every run. Each task is standardized per domain (zero mean, unit
variance), as a real pipeline would normalize each domain's images.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import torch
from torch import nn


def _affine(x: torch.Tensor, angle_deg: float = 0.0, scale: float = 1.0, shift=(0.0, 0.0)) -> torch.Tensor:
    a = math.radians(angle_deg)
    theta = torch.tensor([[math.cos(a) / scale, -math.sin(a) / scale, shift[0]],
                          [math.sin(a) / scale, math.cos(a) / scale, shift[1]]], dtype=x.dtype)
    grid = nn.functional.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :]) / 16.0
    return nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), k[None, None])


def _noise(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return x + sigma * torch.randn(x.shape, generator=g)


#: name -> (target shift on images in [0, 1] of shape (n, 1, 16, 16), one-line description)
TASKS: Dict[str, tuple] = {
    "rot20": (lambda x: _affine(x, 20), "rotated by 20 degrees"),
    "rot40": (lambda x: _affine(x, 40), "rotated by 40 degrees"),
    "rot60": (lambda x: _affine(x, 60), "rotated by 60 degrees"),
    "blur_noise": (lambda x: _noise(_blur(_blur(x)), 0.15, seed=7), "blurred twice (3x3 binomial) plus Gaussian noise, sigma 0.15"),
    "scale_shift": (lambda x: _affine(x, 0, scale=0.7, shift=(0.25, -0.2)), "shrunk to 70% and moved off-centre"),
    "thick": (lambda x: nn.functional.max_pool2d(x, 3, stride=1, padding=1), "strokes thickened (3x3 max filter)"),
}


def load_task(task: str, split_seed: int = 0) -> Dict[str, torch.Tensor]:
    """Source and target train/test tensors of one task, plus the target training labels (for the oracle row)."""
    from sklearn.datasets import load_digits

    shift: Callable = TASKS[task][0]
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    src, tgt = perm[: len(x) // 2], perm[len(x) // 2:]
    xs, ys = x[src], y[src]
    xt, yt = shift(x[tgt]), y[tgt]
    xs, xt = (xs - xs.mean()) / xs.std(), (xt - xt.mean()) / xt.std()
    ns, nt = int(0.7 * len(xs)), int(0.7 * len(xt))
    return {"xs": xs[:ns], "ys": ys[:ns], "xs_test": xs[ns:], "ys_test": ys[ns:],
            "xt": xt[:nt], "yt": yt[:nt], "xt_test": xt[nt:], "yt_test": yt[nt:]}
