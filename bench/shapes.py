"""Gradient lists shaped like real models (parameter shapes only; no model is built)."""
from __future__ import annotations

from typing import Dict, List, Tuple

Shape = Tuple[int, ...]


def resnet50_like() -> List[Shape]:
    """ResNet-50's 161 parameter tensors (conv weights, BN weight/bias, fc): 25.6M elements."""
    shapes: List[Shape] = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            out_ch = width * 4
            shapes += [(width, in_ch, 1, 1), (width,), (width,), (width, width, 3, 3), (width,), (width,),
                       (out_ch, width, 1, 1), (out_ch,), (out_ch,)]
            if b == 0:
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]
            in_ch = out_ch
    shapes += [(1000, 2048), (1000,)]
    return shapes


def resnet18_like() -> List[Shape]:
    """ResNet-18's trunk (62 parameter tensors, 11.2M elements) and a 40-way linear head (CelebA's 40 attributes):
    the shared parameters of LibMTL's CelebA benchmark."""
    shapes: List[Shape] = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for width in (64, 128, 256, 512):
        for b in range(2):
            shapes += [(width, in_ch, 3, 3), (width,), (width,), (width, width, 3, 3), (width,), (width,)]
            if b == 0 and in_ch != width:
                shapes += [(width, in_ch, 1, 1), (width,), (width,)]
            in_ch = width
    return shapes


def vit_b16_like() -> List[Shape]:
    """ViT-B/16's 152 parameter tensors: 86M elements."""
    d, mlp = 768, 3072
    shapes: List[Shape] = [(d, 3, 16, 16), (d,), (1, 1, d), (1, 197, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (mlp, d), (mlp,), (d, mlp), (d,)]
    shapes += [(d,), (d,), (1000, d), (1000,)]
    return shapes


def llm_like(total: int = 100_000_000) -> List[Shape]:
    """A few huge tensors (embedding, a couple of big projections) plus norms: ~total elements."""
    d = 4096
    vocab = max(1, int(total * 0.4) // d)
    proj = max(1, int(total * 0.3) // d)
    return [(vocab, d), (proj, d), (d, proj), (d,), (d,), (vocab, d // 64)]


def many_tiny(count: int = 2000) -> List[Shape]:
    """2,000 small tensors (sizes 1..2,000 of varied shapes): the launch-overhead case."""
    return [(1 + (i * 7919) % 2000,) if i % 3 else (1 + i % 17, 1 + (i * 31) % 13) for i in range(count)]


def flat_sweep(n: int, tensors: int = 160) -> List[Shape]:
    """n elements spread over ``tensors`` tensors of unequal sizes (for the N sweep)."""
    weights = [1 + (i * 37) % 10 for i in range(tensors)]
    total_w = sum(weights)
    sizes = [max(1, n * w // total_w) for w in weights]
    sizes[0] += n - sum(sizes)
    return [(s,) for s in sizes]


def numel(shapes: List[Shape]) -> int:
    total = 0
    for s in shapes:
        k = 1
        for d in s:
            k *= d
        total += k
    return total


MODEL_LISTS: Dict[str, callable] = {
    "resnet50": resnet50_like,
    "vit_b16": vit_b16_like,
    "llm": llm_like,
    "many_tiny": many_tiny,
}
