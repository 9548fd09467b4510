"""The network and losses of the UDA study: the authors' DANN, CDAN and CDAN+E (their
`cdan/train_image.py` and `loss.py`), at digit scale.

* backbone (small CNN) + bottleneck + classifier: reached by the classification loss (slot 2);
* a domain discriminator behind a gradient-reversal layer: reached by the alignment loss only
  (slot 1). DANN feeds it the features; CDAN the outer product of the features and the *detached*
  class probabilities, so in plain DANN and CDAN the classifier layer gets no alignment gradient.
  CDAN+E weights each sample's domain loss by 1 + exp(-entropy) (normalized per domain) and lets
  the entropy carry a reversed gradient into the classifier, as the authors' code does;
* the authors' schedules: learning rate lr (1 + gamma i)^-power ("inv", gamma 0.001, power 0.75
  over 10,000 iterations) and reversal coefficient 2/(1 + exp(-10 i/max_iter)) - 1 with
  max_iter 10,000, both rescaled to the study's number of steps (gamma = 10/steps, max_iter = steps).
"""
from __future__ import annotations

import math

import torch
from torch import nn

import gh_kernels

FAMILIES = ("dann", "cdan", "cdan+e")


def grl_coeff(step: int, total: int) -> float:
    """The authors' calc_coeff: 0 at step 0, to 1 at the end (their max_iter rescaled to the run)."""
    return 2.0 / (1.0 + math.exp(-10.0 * step / max(1, total))) - 1.0


def inv_lr(lr: float, step: int, total: int) -> float:
    """The authors' "inv" schedule lr (1 + gamma step)^-0.75, with gamma 0.001 x 10,000 / total."""
    return lr * (1.0 + 10.0 * step / max(1, total)) ** -0.75


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p + 1e-5)).sum(1)


class Net(nn.Module):
    def __init__(self, family: str, classes: int = 10, feat: int = 64):
        super().__init__()
        self.family = family
        self.backbone = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        self.bottleneck = nn.Sequential(nn.Linear(32 * 4 * 4, feat), nn.ReLU())
        self.classifier = nn.Linear(feat, classes)
        d_in = feat * classes if family.startswith("cdan") else feat
        self.discriminator = nn.Sequential(nn.Linear(d_in, 64), nn.ReLU(), nn.Linear(64, 1))

    def shared_parameters(self):
        """The module the authors' getgrad flattens: backbone + bottleneck + classifier."""
        return [*self.backbone.parameters(), *self.bottleneck.parameters(), *self.classifier.parameters()]

    def features(self, x):
        return self.bottleneck(self.backbone(x))

    def losses(self, xs, ys, xt, coeff):
        """(alignment loss or None, classification loss) for one step."""
        f = self.features(torch.cat([xs, xt]))
        logits = self.classifier(f)
        cls = nn.functional.cross_entropy(logits[: len(xs)], ys)
        if self.family in ("source", "oracle"):
            return None, cls
        labels = torch.cat([torch.ones(len(xs)), torch.zeros(len(xt))])
        if self.family == "dann":
            d = self.discriminator(gh_kernels.grad_reverse(f, coeff)).squeeze(1)
            return nn.functional.binary_cross_entropy_with_logits(d, labels), cls
        p = logits.softmax(1)
        op = torch.bmm(p.detach().unsqueeze(2), f.unsqueeze(1)).flatten(1)
        d = self.discriminator(gh_kernels.grad_reverse(op, coeff)).squeeze(1)
        if self.family == "cdan":
            return nn.functional.binary_cross_entropy_with_logits(d, labels), cls
        # CDAN+E: entropy conditioning; the entropy carries a reversed gradient into the classifier
        ent = gh_kernels.grad_reverse(entropy(p), coeff)
        w = 1.0 + torch.exp(-ent)
        n = len(xs)
        w = torch.cat([w[:n] / w[:n].sum().detach(), w[n:] / w[n:].sum().detach()])
        per_sample = nn.functional.binary_cross_entropy_with_logits(d, labels, reduction="none")
        return (w * per_sample).sum() / w.sum().detach(), cls

    @torch.no_grad()
    def accuracy(self, x, y, batch=1024):
        correct = 0
        for i in range(0, len(x), batch):
            correct += (self.classifier(self.features(x[i:i + batch])).argmax(1) == y[i:i + batch]).sum().item()
        return correct / len(x)
