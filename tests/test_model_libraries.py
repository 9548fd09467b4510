"""Real architectures from a real model library (Hugging Face ``transformers``, randomly initialised
from small configs, no download): a ViT, a ResNet (BatchNorm) and a GPT-2 (tied input/output
embeddings, dropout on) as the shared backbone of a two-loss UDA model and of a K-head model. The
training steps must equal an independent float64 computation: per-loss ``torch.autograd.grad`` on
the same graph (so the same dropout masks), flattened over the shared parameters, the Gram matrix in
float64, the weights from the float64 reference of docs/METHOD.md (GH++) or from torchjd (UPGrad),
and ``sum_k w_k g_k`` per parameter. BatchNorm statistics move once per forward, as in a plain step;
a tied weight listed once but reached twice accumulates both uses."""
import pytest
import torch
from torch import nn

import gh_kernels
from gh_kernels.reference import weights_reference

transformers = pytest.importorskip("transformers")
torchjd_aggregation = pytest.importorskip("torchjd.aggregation")
transformers.logging.set_verbosity_error()


def _backbone(kind):
    """(module, features(x) -> (B, D) pooled features, make_input(gen, batch), the LM loss or None)."""
    if kind == "vit":
        cfg = transformers.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.1,
                                     attention_probs_dropout_prob=0.1)
        net = transformers.ViTModel(cfg, add_pooling_layer=False)
        return net, lambda x: net(pixel_values=x).last_hidden_state[:, 0], \
            (lambda g, b: torch.randn(b, 3, 16, 16, generator=g)), 32
    if kind == "resnet":
        cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                        layer_type="basic")
        net = transformers.ResNetModel(cfg)
        return net, lambda x: net(pixel_values=x).pooler_output.flatten(1), \
            (lambda g, b: torch.randn(b, 3, 16, 16, generator=g)), 16
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.1,
                                  embd_pdrop=0.1, attn_pdrop=0.1, bos_token_id=0, eos_token_id=0)
    net = transformers.GPT2LMHeadModel(cfg)
    assert net.lm_head.weight is net.transformer.wte.weight  # tied: listed once, reached twice

    def features(ids):
        out = net(input_ids=ids, labels=ids, output_hidden_states=True)
        features.lm_loss = out.loss  # the language-modelling loss goes through the tied output embedding
        return out.hidden_states[-1].mean(1)
    return net, features, (lambda g, b: torch.randint(0, 50, (b, 12), generator=g)), 32


class UDAModel(nn.Module):
    """Two losses on a library backbone: (domain alignment via gradient reversal, classification
    [+ the LM loss for GPT-2, which uses the tied embedding twice])."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.backbone, self.features, self.make_input, dim = _backbone(kind)
        self.classifier = nn.Linear(dim, 3)
        self.discriminator = nn.Sequential(nn.Linear(dim, 8), nn.ReLU(), nn.Linear(8, 1))

    def shared_parameters(self):
        return [*self.backbone.parameters(), *self.classifier.parameters()]

    def losses(self, xs, ys, xt):
        f = self.features(torch.cat([xs, xt]))
        cls = nn.functional.cross_entropy(self.classifier(f[: len(xs)]), ys)
        if self.kind == "gpt2":
            cls = cls + self.features.lm_loss
        d = self.discriminator(gh_kernels.grad_reverse(f)).squeeze(1)
        labels = torch.cat([torch.ones(len(xs)), torch.zeros(len(xt))])
        dom = nn.functional.binary_cross_entropy_with_logits(d, labels)
        # as in CDAN, the classifier takes part in the alignment loss: the two losses conflict (GH++ acts)
        dom = dom + nn.functional.cross_entropy(self.classifier(f[: len(xs)]), (ys + 1) % 3)
        return [dom, cls]


class KHeadModel(nn.Module):
    def __init__(self, kind, K=3):
        super().__init__()
        self.kind = kind
        self.backbone, self.features, self.make_input, dim = _backbone(kind)
        self.heads = nn.ModuleList(nn.Linear(dim, 1) for _ in range(K))

    def shared_parameters(self):
        return list(self.backbone.parameters())

    def losses(self, x, y):
        f = self.features(x)
        losses = [((h(f)[:, 0] - y[:, k]) ** 2).mean() for k, h in enumerate(self.heads)]
        if self.kind == "gpt2":
            losses[0] = losses[0] + self.features.lm_loss
        return losses


def _reference(model, losses, weights_of_gram):
    """Independent float64 update: per-loss autograd.grad on one graph, Gram over the shared parameters."""
    params = list(model.parameters())
    grads = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) for loss in losses]
    shared = {id(p) for p in model.shared_parameters()}
    flat = [torch.cat([(g if g is not None else torch.zeros_like(p)).double().flatten()  # unreached: zero
                       for g, p in zip(gk, params) if id(p) in shared]) for gk in grads]
    J = torch.stack(flat)
    w = weights_of_gram(J @ J.T)
    update = []
    for i in range(len(params)):
        present = [k for k in range(len(losses)) if grads[k][i] is not None]
        update.append(None if not present else sum(w[k] * grads[k][i].double() for k in present))
    return w, update


@pytest.mark.parametrize("kind", ["vit", "resnet", "gpt2"])
@pytest.mark.parametrize("face", ["two", "multi"])
def test_library_backbones_equal_the_float64_computation(kind, face):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if face == "two":
        model = UDAModel(kind)
        batch = (model.make_input(gen, 4), torch.randint(0, 3, (4,), generator=gen), model.make_input(gen, 4))
        step = gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters(), method="gh++")
        run = lambda losses: step.backward(*losses)  # noqa: E731
        rule = lambda G: weights_reference(G, "gh++", 0.5)  # noqa: E731
    else:
        model = KHeadModel(kind)
        batch = (model.make_input(gen, 8), torch.randn(8, 3, generator=gen))
        step = gh_kernels.MultiTaskHarmonizer(model.parameters(), shared=model.shared_parameters(), method="upgrad")
        run = lambda losses: step.backward(list(losses))  # noqa: E731
        rule = lambda G: torchjd_aggregation.UPGradWeighting()(G)  # noqa: E731
    model.train()  # dropout on; BatchNorm in training mode
    torch.manual_seed(5)  # the same dropout masks below: one forward, shared by both computations
    losses = model.losses(*batch)
    w_ref, ref = _reference(model, losses, rule)
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    tracked = [int(m.num_batches_tracked) for m in bn]
    result = run(losses)
    assert [int(m.num_batches_tracked) for m in bn] == tracked, "the step must not run the forward again"
    torch.testing.assert_close(result.weights.double(), w_ref, rtol=2e-4, atol=1e-6)
    assert not torch.allclose(w_ref, torch.ones_like(w_ref)) and not torch.allclose(w_ref, w_ref.mean()), \
        "the weights should not be trivial here (conflicting losses)"
    for p, r in zip(model.parameters(), ref):
        assert (p.grad is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(p.grad.double(), r, rtol=2e-4, atol=2e-6)


def test_batchnorm_statistics_move_once_per_forward():
    """One harmonized step moves the running statistics exactly as one plain step does."""
    stats = []
    for harmonized in (False, True):
        torch.manual_seed(0)
        model = UDAModel("resnet")
        gen = torch.Generator().manual_seed(2)
        batch = (model.make_input(gen, 4), torch.randint(0, 3, (4,), generator=gen), model.make_input(gen, 4))
        losses = model.losses(*batch)
        if harmonized:
            gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters()).backward(*losses)
        else:
            sum(losses).backward()
        stats.append([b.clone() for b in model.buffers()])
    for a, b in zip(*stats):
        assert torch.equal(a, b)


def test_tied_embedding_accumulates_both_uses():
    """GPT-2's wte is listed once in params and reached twice (input embedding, output head)."""
    torch.manual_seed(0)
    model = KHeadModel("gpt2", K=2)
    model.eval()
    params = list(model.parameters())
    wte = model.backbone.transformer.wte.weight
    assert sum(p is wte for p in params) == 1
    gen = torch.Generator().manual_seed(3)
    x, y = model.make_input(gen, 4), torch.randn(4, 2, generator=gen)
    losses = model.losses(x, y)
    expected = sum(torch.autograd.grad(loss, wte, retain_graph=True)[0] for loss in losses)
    gh_kernels.MultiTaskHarmonizer(params, method="sum").backward(losses)
    torch.testing.assert_close(wte.grad, expected, rtol=1e-5, atol=1e-7)
