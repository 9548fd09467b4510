"""Small building blocks for domain-adaptation models."""
from __future__ import annotations

import torch


class GradReverse(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``-coeff`` (DANN's GRL)."""

    @staticmethod
    def forward(ctx, x, coeff: float = 1.0):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Gradient reversal: ``x`` forward, ``-coeff * grad`` backward."""
    return GradReverse.apply(x, coeff)
