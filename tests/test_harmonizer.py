"""Harmonizer: equality with the released three-backward recipe, modes, accumulation, AMP, edge cases."""

import pytest
import torch
from torch import nn

import gh_kernels
from gh_kernels.reference import weights_reference

from models import ToyDANN


def TinyDANN():
    return ToyDANN(image=True, features=16, bottleneck=8, disc_hidden=6)


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g), torch.randn(6, 1, 8, 8, generator=g) + 0.5


def released_recipe_grads(model, batch, method, kappa, trade_off):
    """The authors' step written out: flatten after each backward, host branch, third backward."""
    xs, ys, xt = batch
    chosen = model.shared_parameters()
    model.zero_grad(set_to_none=True)
    dom, cls = model.losses(xs, ys, xt)
    dom.backward(retain_graph=True)
    flat1 = torch.cat([p.grad.reshape(-1) for p in chosen if p.grad is not None])
    model.zero_grad(set_to_none=True)
    cls.backward(retain_graph=True)
    flat2 = torch.cat([p.grad.reshape(-1) for p in chosen if p.grad is not None])
    model.zero_grad(set_to_none=True)
    G = torch.tensor([[flat1 @ flat1, flat1 @ flat2], [flat1 @ flat2, flat2 @ flat2]], dtype=torch.float64)
    if float(G[0, 1]) < 0:  # host branch, as released
        w1, w2 = [float(x) for x in weights_reference(G, method, kappa)]
    else:
        w1 = w2 = 1.0
    (trade_off * w1 * dom + w2 * cls).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, (w1, w2)


@pytest.mark.parametrize("method", ["gh", "gh++", "gh++released"])
def test_reweight_equals_released_recipe(method, backend):
    torch.manual_seed(0)
    model = TinyDANN()
    for seed in range(4):
        batch = _batch(seed)
        ref, (w1, w2) = released_recipe_grads(model, batch, method, 0.5, trade_off=0.7)
        model.zero_grad(set_to_none=True)
        h = gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters(), method=method, backend=backend)
        dom, cls = model.losses(*batch)
        res = h.backward(dom, cls, scale1=0.7)
        torch.testing.assert_close(res.weights.double(), torch.tensor([w1, w2], dtype=torch.float64), rtol=1e-4, atol=1e-5)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")


def test_some_step_conflicts():
    """The equality test above is only meaningful if the recipe's branch is taken on some batch."""
    torch.manual_seed(0)
    model = TinyDANN()
    h = gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters())
    cosines = []
    for seed in range(4):
        model.zero_grad(set_to_none=True)
        cosines.append(float(h.backward(*model.losses(*_batch(seed))).cos))
    assert any(c < 0 for c in cosines) and all(-1 <= c <= 1 for c in cosines)


def test_surgery_mode_harmonizes_shared_only(backend):
    torch.manual_seed(1)
    model = TinyDANN()
    batch = _batch(7)
    dom, cls = model.losses(*batch)
    g_dom = torch.autograd.grad(dom, list(model.parameters()), retain_graph=True, allow_unused=True)
    g_cls = torch.autograd.grad(cls, list(model.parameters()), retain_graph=True, allow_unused=True)
    h = gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters(), method="gh", mode="surgery", backend=backend)
    res = h.backward(dom, cls, scale1=2.0, scale2=0.5)
    w = res.weights
    shared_ids = {id(p) for p in model.shared_parameters()}
    for p, a, b in zip(model.parameters(), g_dom, g_cls):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        expect = (2.0 * w[0] * a + 0.5 * w[1] * b) if id(p) in shared_ids else (2.0 * a + 0.5 * b)
        torch.testing.assert_close(p.grad, expect, rtol=1e-5, atol=1e-6)


def test_parameter_reached_by_one_loss_is_never_dropped(backend):
    shared_a = nn.Parameter(torch.randn(5))
    only_l1 = nn.Parameter(torch.randn(3))
    only_l2 = nn.Parameter(torch.randn(4))
    unused = nn.Parameter(torch.randn(2))
    l1 = (shared_a * torch.arange(5.0)).sum() + (only_l1 ** 2).sum()
    l2 = -(shared_a * torch.arange(5.0)).sum() * 0.5 + only_l2.sum()
    params = [shared_a, only_l1, only_l2, unused]
    h = gh_kernels.Harmonizer(params, shared=params, method="gh", backend=backend)
    with pytest.warns(UserWarning, match="reached by loss1 only"):  # only_l1 is in shared on purpose here
        res = h.backward(l1, l2)
    # Over all parameters: g1 = (arange, 2*only_l1, 0), g2 = (-0.5*arange, 0, ones).
    g1 = torch.cat([torch.arange(5.0), 2 * only_l1.detach(), torch.zeros(4)])
    g2 = torch.cat([-0.5 * torch.arange(5.0), torch.zeros(3), torch.ones(4)])
    w = weights_reference(torch.tensor([[g1 @ g1, g1 @ g2], [g1 @ g2, g2 @ g2]], dtype=torch.float64), "gh")
    torch.testing.assert_close(res.weights.double(), w, rtol=1e-5, atol=1e-6)
    expect = (w[0] * g1 + w[1] * g2).float()
    got = torch.cat([shared_a.grad, only_l1.grad, only_l2.grad])
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    assert unused.grad is None


def test_gradient_accumulation_adds(backend):
    torch.manual_seed(2)
    model = TinyDANN()
    h = gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters(), method="gh++", backend=backend)
    per_step = []
    for seed in (3, 4):
        model.zero_grad(set_to_none=True)
        h.backward(*model.losses(*_batch(seed)))
        per_step.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    for seed in (3, 4):
        h.backward(*model.losses(*_batch(seed)))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, per_step[0][n] + per_step[1][n], rtol=1e-5, atol=1e-6)


def test_zero_alignment_gradient_at_step_zero(backend):
    """GRL coefficient 0 at step 0: g1 is exactly zero on the shared parameters; no NaN, weights (1, 1)."""
    torch.manual_seed(3)
    model = TinyDANN()
    xs, ys, xt = _batch(1)
    fs, ft = model.bottleneck(model.backbone(xs)), model.bottleneck(model.backbone(xt))
    cls = nn.functional.cross_entropy(model.classifier(fs), ys)
    d = model.discriminator(gh_kernels.GradReverse.apply(torch.cat([fs, ft]), 0.0)).squeeze(1)
    dom = nn.functional.binary_cross_entropy_with_logits(d, torch.cat([torch.ones(6), torch.zeros(6)]))
    for method in ("gh", "gh++", "gh++released"):
        model.zero_grad(set_to_none=True)
        h = gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters(), method=method, backend=backend)
        res = h.backward(dom, cls, retain_graph=True)
        assert torch.equal(res.weights, torch.ones(2)) and float(res.cos) == 0.0
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_non_finite_gradients_reach_grad_scaler(backend):
    p = nn.Parameter(torch.ones(4))
    l1 = (p * torch.tensor([1.0, float("inf"), 0.0, 0.0])).sum()
    l2 = -p.sum()
    scaler = torch.amp.GradScaler("cpu")
    res = gh_kernels.Harmonizer([p], method="gh++", backend=backend).backward(scaler.scale(l1), scaler.scale(l2))
    assert torch.equal(res.weights, torch.ones(2))
    assert not torch.isfinite(p.grad).all()
    # GradScaler (CPU) sees the overflow and skips the step.
    opt = torch.optim.SGD([p], lr=0.1)
    before = p.detach().clone()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(p.detach(), before)


def test_grad_scaler_scaled_losses_give_same_weights(backend):
    torch.manual_seed(4)
    model = TinyDANN()
    h = gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters(), method="gh++", backend=backend)
    dom, cls = model.losses(*_batch(5))
    res = h.backward(dom, cls, retain_graph=True)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    res_s = h.backward(scaler.scale(dom), scaler.scale(cls))
    torch.testing.assert_close(res_s.weights, res.weights, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad / 1024.0, grads[n], rtol=1e-5, atol=1e-7)


def test_loss_without_grad_is_an_error_and_grad_stays(backend):
    p = nn.Parameter(torch.randn(3))
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="loss1 does not require grad"):
        gh_kernels.Harmonizer([p], backend=backend).backward(torch.tensor(0.0), (p ** 2).sum())
    assert torch.equal(p.grad, torch.ones(3))


def test_harmonizer_argument_errors():
    p = nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="params is empty"):
        gh_kernels.Harmonizer([])
    with pytest.raises(ValueError, match=r"shared\[0\] is not in params"):
        gh_kernels.Harmonizer([p], shared=[nn.Parameter(torch.randn(2))])
    with pytest.raises(ValueError, match="mode must be one of 'reweight', 'surgery'"):
        gh_kernels.Harmonizer([p], mode="other")
    with pytest.raises(ValueError, match="method must be one of"):
        gh_kernels.Harmonizer([p], method="GH")
    with pytest.raises(TypeError, match=r"params\[1\] must be a torch.Tensor"):
        gh_kernels.Harmonizer([p, 3])
