"""The training features large-backbone users combine, each with the Harmonizer, one process (CPU).
Each test compares with a reference step that is known to be right: the same model without the
feature, or the released three-backward recipe. The distributed ones (DDP options, FSDP2 mixed
precision, no_sync accumulation) are in test_features_distributed.py. README: "Tested features"."""
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import gh_kernels

from models import ToyDANN


def _fresh(**kw):
    torch.manual_seed(0)
    return ToyDANN(**kw)


def _harmonized_grads(model, batches, method="gh++", forward=None, **kw):
    h = gh_kernels.Harmonizer(model.parameters(), method=method, **kw)
    for b in batches:
        h.backward(*(forward if forward is not None else model.losses)(*b))
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _close(a, b, tol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def _plain_then_harmonized(model, forward, make_step, losses_of, batches):
    """A training script's order: a plain backward through the (compiled) model before the step object
    exists, then harmonized steps with a plain backward between them; the .grad after each harmonized step."""
    model.zero_grad(set_to_none=True)
    sum(losses_of(forward, batches[0])).backward()
    step = make_step()
    grads = []
    for b in batches[1:]:
        model.zero_grad(set_to_none=True)
        step(losses_of(forward, b))
        grads.append([None if p.grad is None else p.grad.clone() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
        sum(losses_of(forward, b)).backward()  # a plain step between harmonized ones
    return grads, step


@pytest.mark.slow  # 8-28 s (compiling the DANN model); the K-loss test below covers the same engine path in 4 s
def test_compiled_model_whatever_ran_first():
    """torch.compile on the model, a plain backward through it before the Harmonizer exists and between
    harmonized steps (compiled backward functions donate their buffers by default, which breaks the
    second backward pass: NOTE: [Donated buffers]); the .grad equals the eager steps'. The compiled
    region gives loss 2 zero gradients for the discriminator, so shared= must be explicit; the default raises."""
    torch._dynamo.reset()
    losses_of = lambda forward, b: forward(*b)  # noqa: E731
    results = []
    for compiled in (False, True):
        model = _fresh()
        forward = torch.compile(model) if compiled else model
        make = lambda: (lambda h: (lambda losses: h.backward(*losses)))(  # noqa: E731
            gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters(), method="gh++"))
        grads, _ = _plain_then_harmonized(model, forward, make, losses_of, [model.batch(i) for i in range(3)])
        results.append(grads)
    for eager, comp in zip(*results):
        _close(comp, eager, 1e-4)
    h = gh_kernels.Harmonizer(model.parameters())
    with pytest.raises(ValueError, match="torch.compile'd model.*Pass shared= explicitly"):
        h.backward(*forward(*model.batch(1)))


def test_compiled_model_k_losses_whatever_ran_first():
    from models import KHeadNet
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)) for _ in range(3)]
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = KHeadNet(3)
        forward = torch.compile(model) if compiled else model
        make = lambda: (lambda h: (lambda losses: h.backward(list(losses))))(  # noqa: E731
            gh_kernels.MultiTaskHarmonizer(model.parameters(), shared=model.trunk.parameters(), method="upgrad"))
        grads, _ = _plain_then_harmonized(model, forward, make, lambda f, b: f(*b), batches)
        results.append(grads)
    for eager, comp in zip(*results):
        _close(comp, eager, 1e-4)


def test_donated_buffer_error_is_explained():
    from gh_kernels.step import checks
    with pytest.raises(RuntimeError, match="compiled before the Harmonizer.*donated_buffer = False"):
        checks.explain_donated_buffers(RuntimeError("This backward function was compiled with non-empty donated buffers"))
    checks.explain_donated_buffers(RuntimeError("another error"))  # left to the caller to re-raise


def test_activation_checkpointing_non_reentrant():
    class Checkpointed(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return checkpoint(self.inner, x, use_reentrant=False)

    ref_model = _fresh()
    ref = _harmonized_grads(ref_model, [ref_model.batch(1)])
    model = _fresh()
    model.backbone = Checkpointed(model.backbone)
    _close(_harmonized_grads(model, [model.batch(1)]), ref)


def test_grad_scaler_float16_autocast_cpu():
    """GradScaler with float16 autocast (on CPU: torch.amp.GradScaler("cpu")); an overflow skips the step."""
    model = _fresh()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    h = gh_kernels.Harmonizer(model.parameters(), method="gh++")
    b = model.batch(2)
    with torch.autocast("cpu", dtype=torch.float16):
        dom, cls = model.losses(*b)
    res = h.backward(scaler.scale(dom), scaler.scale(cls))
    ref_model = _fresh()
    with torch.autocast("cpu", dtype=torch.float16):
        rd, rc = ref_model.losses(*b)
    ref_res = gh_kernels.Harmonizer(ref_model.parameters(), method="gh++").backward(rd, rc)
    torch.testing.assert_close(res.weights, ref_res.weights, rtol=1e-3, atol=1e-4)  # scale-invariant weights
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    # an overflowing step: inf reaches .grad, the scaler skips it and lowers the scale
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        dom, cls = model.losses(*b)
    h.backward(scaler.scale(dom) * float("inf"), scaler.scale(cls))
    before = [p.detach().clone() for p in model.parameters()]
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before)) and scaler.get_scale() < scale


def test_bfloat16_autocast_without_scaler():
    model = _fresh()
    ref_model = _fresh()
    b = model.batch(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _harmonized_grads(model, [b])
    ref = _harmonized_grads(ref_model, [b])
    for g, r in zip(got, ref):  # bfloat16 compute: about 3 significant digits
        torch.testing.assert_close(g, r, rtol=0.1, atol=0.05 * float(r.abs().max()) + 1e-3)


@pytest.mark.parametrize("kind", ["fused", "foreach"])
def test_fused_and_foreach_optimizers(kind):
    results = []
    for opt_kw in ({kind: True}, {"foreach": False}):
        model = _fresh()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, **opt_kw)
        h = gh_kernels.Harmonizer(model.parameters(), method="gh")
        for step in range(3):
            opt.zero_grad(set_to_none=True)
            h.backward(*model.losses(*model.batch(step)))
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    _close(results[0], results[1], 1e-5)


def test_zero_grad_set_to_none_false():
    ref_model = _fresh()
    ref = _harmonized_grads(ref_model, [ref_model.batch(4)])
    model = _fresh()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # what zero_grad(set_to_none=False) leaves
    grads_before = [p.grad for p in model.parameters()]
    got = _harmonized_grads(model, [model.batch(4)])
    _close(got, ref)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads_before))  # written in place


def test_channels_last_model():
    ref_model = _fresh(image=True)
    ref = _harmonized_grads(ref_model, [ref_model.batch(5)])
    model = _fresh(image=True).to(memory_format=torch.channels_last)
    xs, ys, xt = model.batch(5)
    got = _harmonized_grads(model, [(xs.to(memory_format=torch.channels_last), ys, xt.to(memory_format=torch.channels_last))])
    assert model.backbone[0].weight.grad.is_contiguous(memory_format=torch.channels_last)
    _close(got, ref, 1e-4)


def test_parameters_frozen_then_unfrozen():
    model = _fresh()
    h = gh_kernels.Harmonizer(model.parameters(), method="gh++")
    model.backbone.requires_grad_(False)
    h.backward(*model.losses(*model.batch(6)))
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.classifier.parameters())
    model.zero_grad(set_to_none=True)
    model.backbone.requires_grad_(True)
    h.backward(*model.losses(*model.batch(7)))
    got = [p.grad.clone() for p in model.parameters()]
    ref_model = _fresh()
    ref_model.load_state_dict(model.state_dict())
    _close(got, _harmonized_grads(ref_model, [ref_model.batch(7)]))


def test_parameter_reached_by_neither_loss():
    model = _fresh()
    unused = nn.Parameter(torch.ones(3))
    previous = torch.full((3,), 7.0)
    unused.grad = previous
    h = gh_kernels.Harmonizer(list(model.parameters()) + [unused], method="gh++")
    h.backward(*model.losses(*model.batch(8)))
    assert unused.grad is previous and torch.equal(previous, torch.full((3,), 7.0))
