"""The toy models the tests use (one definition each): ``ToyDANN``, the domain-adaptation model --
backbone, bottleneck and classifier, reached by the classification loss (slot 2), and a domain
discriminator behind a gradient-reversal layer, reached by the alignment loss only (slot 1), as in
DANN -- and ``KHeadNet``, a shared trunk with K regression heads for the multi-task steps."""
import torch
from torch import nn

import gh_kernels


class ToyDANN(nn.Module):
    """``image=True``: a 1x8x8 input and a conv backbone; else ``in_features`` inputs and a linear one.

    ``classifier_in_alignment``: weight of a term that also puts the classifier into the alignment
    loss (as in CDAN), pulling source predictions toward other labels so that the losses conflict
    on some batches; 0 leaves the classifier to the classification loss alone (plain DANN).
    ``bottleneck=None``: no bottleneck layer.
    """

    def __init__(self, image=False, in_features=6, features=8, bottleneck=5, classes=3, disc_hidden=4,
                 classifier_in_alignment=0.3):
        super().__init__()
        if image:
            self.backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, features), nn.ReLU())
        else:
            self.backbone = nn.Sequential(nn.Linear(in_features, features), nn.ReLU())
        self.bottleneck = nn.Linear(features, bottleneck) if bottleneck else nn.Identity()
        width = bottleneck or features
        self.classifier = nn.Linear(width, classes)
        self.discriminator = nn.Sequential(nn.Linear(width, disc_hidden), nn.ReLU(), nn.Linear(disc_hidden, 1))
        self.classes, self.image, self.in_features = classes, image, in_features
        self.classifier_in_alignment = classifier_in_alignment

    def shared_parameters(self):
        """What both losses share in the released recipe: everything but the discriminator."""
        return [*self.backbone.parameters(), *self.bottleneck.parameters(), *self.classifier.parameters()]

    def losses(self, xs, ys, xt, coeff=1.0):
        """(alignment loss, classification loss) for a source batch (xs, ys) and a target batch xt."""
        fs, ft = self.bottleneck(self.backbone(xs)), self.bottleneck(self.backbone(xt))
        cls = nn.functional.cross_entropy(self.classifier(fs), ys)
        d = self.discriminator(gh_kernels.grad_reverse(torch.cat([fs, ft]), coeff)).squeeze(1)
        dom = nn.functional.binary_cross_entropy_with_logits(d, torch.cat([torch.ones(len(xs)), torch.zeros(len(xt))]))
        if self.classifier_in_alignment:
            dom = dom + self.classifier_in_alignment * nn.functional.cross_entropy(self.classifier(fs), (ys + 1) % self.classes)
        return dom, cls

    forward = losses

    def batch(self, seed, size=8, shift=0.7):
        """A deterministic (xs, ys, xt) batch; the target inputs are shifted by ``shift``."""
        g = torch.Generator().manual_seed(seed)
        shape = (size, 1, 8, 8) if self.image else (size, self.in_features)
        xs = torch.randn(shape, generator=g)
        ys = torch.randint(0, self.classes, (size,), generator=g)
        return xs, ys, torch.randn(shape, generator=g) + shift


class KHeadNet(nn.Module):
    """A trunk (6 -> hidden -> 8) and K heads, one loss each; ``unused_head``: one more head no loss reaches."""

    def __init__(self, K, unused_head=False, hidden=16):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 8))
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(K))
        self.spare = nn.Linear(8, 1) if unused_head else None

    def losses(self, x, y):
        f = self.trunk(x)
        return [((h(f)[:, 0] - y[:, k]) ** 2).mean() for k, h in enumerate(self.heads)]

    forward = losses
