"""End-to-end training step: plain DANN, the released GH recipe (three backward passes and flat
copies) and ``Harmonizer`` (two backward passes, fused), on a ResNet-50-shaped CNN, a ViT-B/16-shaped
transformer (both plain torch, no torchvision) and a GPT-2 from Hugging Face transformers (tied
embeddings; when transformers is installed), each with a DANN head."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import List

import torch
from torch import nn

import gh_kernels
from gh_kernels.reference import released_recipe_backward

from . import timing


GradReverse = gh_kernels.layers.GradReverse  # the gradient-reversal layer

class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class ResNet50Like(nn.Module):
    """ResNet-50's layout ([3, 4, 6, 3] bottlenecks); ``base`` 64 is the real width."""

    def __init__(self, base=64):
        super().__init__()
        layers = [nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        cin = base
        for i, (mult, blocks) in enumerate(((1, 3), (2, 4), (4, 6), (8, 3))):
            for b in range(blocks):
                layers.append(Bottleneck(cin, base * mult, 2 if (b == 0 and i > 0) else 1))
                cin = base * mult * 4
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = cin

    def forward(self, x):
        return self.features(x)


class ViTLike(nn.Module):
    """ViT-B/16's layout; (dim 768, depth 12, heads 12, mlp 3072) is the real size."""

    def __init__(self, img=224, patch=16, dim=768, depth=12, heads=12, mlp=3072):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        return self.norm(self.blocks(x))[:, 0]


class GPT2Like(nn.Module):
    """A GPT-2 from Hugging Face transformers (random init from a config, no download; a benchmark-only
    dependency), tied input/output embeddings: features are the mean last hidden state of token ids."""

    def __init__(self, layers=12, dim=768, heads=12, vocab=50257, context=128):
        super().__init__()
        import transformers
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=context, n_embd=dim, n_layer=layers, n_head=heads,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        self.net = transformers.GPT2Model(cfg)
        self.out_dim, self.vocab, self.context = dim, vocab, context

    def forward(self, ids):
        return self.net(input_ids=ids).last_hidden_state.mean(1)


class DANN(nn.Module):
    def __init__(self, backbone, classes=31, bottleneck=256):
        super().__init__()
        self.backbone = backbone
        self.bottleneck = nn.Sequential(nn.Linear(backbone.out_dim, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU())
        self.classifier = nn.Linear(bottleneck, classes)
        self.discriminator = nn.Sequential(nn.Linear(bottleneck, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1))

    def shared_parameters(self):
        return [*self.backbone.parameters(), *self.bottleneck.parameters(), *self.classifier.parameters()]

    def losses(self, xs, ys, xt, coeff=1.0):
        f = self.bottleneck(self.backbone(torch.cat([xs, xt])))
        cls = nn.functional.cross_entropy(self.classifier(f[: len(xs)]), ys)
        d = self.discriminator(GradReverse.apply(f, coeff)).squeeze(1)
        labels = torch.cat([torch.ones(len(xs), device=f.device), torch.zeros(len(xt), device=f.device)])
        return nn.functional.binary_cross_entropy_with_logits(d, labels), cls


CONFIGS = {
    # name: (builder, image size, batch per domain)
    "resnet50": (lambda: ResNet50Like(64), 224, 32),
    "vit_b16": (lambda: ViTLike(), 224, 32),
    "resnet50_small": (lambda: ResNet50Like(16), 64, 8),
    "vit_small": (lambda: ViTLike(img=64, dim=192, depth=4, heads=3, mlp=768), 64, 8),
    # token models: (builder, sequence length, batch per domain)
    "gpt2": (lambda: GPT2Like(), 128, 16),
    "gpt2_small": (lambda: GPT2Like(layers=4, dim=256, heads=4, vocab=8192, context=64), 64, 8),
}
TRADE_OFF = 1.0


def make(config: str, device, seed=0):
    torch.manual_seed(seed)
    build, img, batch = CONFIGS[config]
    model = DANN(build()).to(device)
    g = torch.Generator().manual_seed(seed)
    if isinstance(model.backbone, GPT2Like):  # token ids; the target domain draws from the upper half of the vocabulary
        vocab = model.backbone.vocab
        xs = torch.randint(0, vocab, (batch, img), generator=g).to(device)
        xt = torch.randint(vocab // 2, vocab, (batch, img), generator=g).to(device)
    else:
        xs = torch.randn(batch, 3, img, img, generator=g).to(device)
        xt = (torch.randn(batch, 3, img, img, generator=g) * 1.2 + 0.3).to(device)
    ys = torch.randint(0, 31, (batch,), generator=g).to(device)
    return model, (xs, ys, xt)


def step_plain(model, batch, **_):
    model.zero_grad(set_to_none=True)
    dom, cls = model.losses(*batch)
    (cls + TRADE_OFF * dom).backward()


def step_released(model, batch, method="gh", kappa=0.5, **_):
    """The released recipe: flatten after each backward, host branch, a third backward."""
    model.zero_grad(set_to_none=True)
    dom, cls = model.losses(*batch)
    released_recipe_backward(model, model.shared_parameters(), dom, cls, method, kappa, TRADE_OFF)


def step_harmonizer(model, batch, harmonizer=None, **_):
    model.zero_grad(set_to_none=True)
    dom, cls = model.losses(*batch)
    harmonizer.backward(dom, cls, scale1=TRADE_OFF)


STEPS = {"plain_dann": (step_plain, None), "released_gh": (step_released, "gh"), "harmonizer_gh": (step_harmonizer, "gh"),
         "released_gh++": (step_released, "gh++"), "harmonizer_gh++": (step_harmonizer, "gh++")}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(config, device, steps=5, warmup=2) -> List[dict]:
    """Every step variant on one model, timed interleaved (plain, released, Harmonizer, ... per round), so a
    loaded machine slows them alike; speed-ups are medians of per-round ratios."""
    model, batch = make(config, device)
    calls = {}
    for name, (fn, method) in STEPS.items():
        kwargs = {"method": method or "gh"}
        if fn is step_harmonizer:
            kwargs["harmonizer"] = gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters(), method=method)
        calls[name] = (lambda fn=fn, kwargs=kwargs: fn(model, batch, **kwargs))
    for _ in range(warmup):
        for call in calls.values():
            call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    samples = {name: [] for name in calls}
    for _ in range(steps):
        for name, call in calls.items():
            _sync(device)
            t0 = time.perf_counter()
            call()
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
    rows = []
    for name, s in samples.items():
        t = timing.stats(s)
        row = {"config": config, "step": name, "median_ms": t["median_ms"], "min_ms": min(s) * 1e3, "spread": t["spread"],
               "noisy": t["noisy"], "params": sum(p.numel() for p in model.parameters()),
               "shared": sum(p.numel() for p in model.shared_parameters())}
        if name != "plain_dann":
            ref = "released_gh++" if name.endswith("gh++") else "released_gh"
            ratio = timing.paired_ratio(samples[ref], s)
            row.update({"speedup_vs_released": ratio["x"], "speedup_vs_released_q20": ratio["q20"],
                        "speedup_vs_released_q80": ratio["q80"], "speedup_vs_released_noisy": ratio["noisy"]})
        if device.type == "cuda":
            row["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        rows.append(row)
    return rows


def grads_match(config, device, method="gh") -> float:
    """Max relative .grad difference between the released recipe and Harmonizer(mode='reweight')."""
    model, batch = make(config, device)
    model.eval()  # BatchNorm in eval so that both recipes see identical forward passes
    step_released(model, batch, method=method)
    ref = [p.grad.clone() for p in model.parameters()]
    h = gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters(), method=method)
    step_harmonizer(model, batch, harmonizer=h)
    worst = 0.0
    for p, r in zip(model.parameters(), ref):
        worst = max(worst, float((p.grad - r).abs().max() / r.abs().max().clamp_min(1e-30)))
    return worst


def cpu_peak_rss(config: str, step: str) -> float:
    """Peak RSS (MB) of a fresh process (after imports) that builds the model and runs 2 steps of one kind."""
    res = subprocess.run([sys.executable, "-m", "bench.e2e", "--rss", json.dumps([config, step])],
                         capture_output=True, text=True, timeout=900)
    try:
        return float(res.stdout.strip().splitlines()[-1])
    except Exception:
        return float("nan")


def _rss_main(arg):
    from .memory import peak_mb, reset_peak

    reset_peak()  # the peak inherited from the parent process does not count
    config, step = json.loads(arg)
    device = torch.device("cpu")
    model, batch = make(config, device)
    fn, method = STEPS[step]
    kwargs = {"method": method or "gh"}
    if fn is step_harmonizer:
        kwargs["harmonizer"] = gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters(), method=method)
    for _ in range(2):
        fn(model, batch, **kwargs)
    print(peak_mb())


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--rss":
    _rss_main(sys.argv[2])
