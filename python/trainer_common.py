"""What the trainer examples (lightning_example.py, hf_trainer_example.py, accelerate_example.py) share: a
small domain-adaptation model (feature extractor, classifier, domain discriminator behind gradient
reversal) and a synthetic shifted-domain data set, both of plain torch. Each example shows how its
trainer's loop calls ``gh_kernels.Harmonizer.backward`` instead of ``loss.backward()``."""
import torch
from torch import nn

import gh_kernels


class UDANet(nn.Module):
    def __init__(self, dim=16, classes=4):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.classifier = nn.Linear(32, classes)
        self.discriminator = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))

    def shared_parameters(self):
        """The Gram matrix's parameters: what both losses share (feature extractor and classifier)."""
        return [*self.features.parameters(), *self.classifier.parameters()]

    def forward(self, xs, ys, xt):
        """(alignment loss, classification loss) of a batch holding both domains."""
        f = self.features(torch.cat([xs, xt]))
        cls = nn.functional.cross_entropy(self.classifier(f[: len(xs)]), ys)
        d = self.discriminator(gh_kernels.grad_reverse(f)).squeeze(1)
        labels = torch.cat([torch.ones(len(xs)), torch.zeros(len(xt))]).to(d)
        return nn.functional.binary_cross_entropy_with_logits(d, labels), cls


class ShiftedDomains(torch.utils.data.Dataset):
    """Source samples with labels and target samples (a shifted copy of the input distribution)."""

    def __init__(self, size=64, dim=16, classes=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.xs = torch.randn(size, dim, generator=g)
        self.ys = torch.randint(0, classes, (size,), generator=g)
        self.xt = torch.randn(size, dim, generator=g) * 1.3 + 0.5

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        return {"xs": self.xs[i], "ys": self.ys[i], "xt": self.xt[i]}
