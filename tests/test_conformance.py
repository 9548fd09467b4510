"""One promise, every backend: each out= rule through every entry point that writes -- harmonize,
combine, aggregate, a plan, and the training steps' write into earlier .grad tensors -- on every
backend available here. A refused call raises ValueError/TypeError naming the argument, writes
nothing, and leaves every .grad as it was."""
import pytest
import torch

import gh_kernels

from models import KHeadNet, ToyDANN

SIZES = ((2, 3), 4)


def _bad_out(case):
    """(out list for parameters of SIZES, error pattern) breaking one out= rule."""
    good = [torch.zeros(size) for size in SIZES]
    if case == "self_overlap":  # as_strided rows that share an element: torch's own check says "too hard"
        good[0] = torch.zeros(5).as_strided((2, 3), (2, 1))
        return good, r"out\[0\] has elements that share memory"
    if case == "inference":
        with torch.inference_mode():
            good[1] = torch.zeros(SIZES[1])
        return good, r"out\[1\] is an inference tensor"
    if case == "requires_grad":
        good[0] = torch.zeros(SIZES[0], requires_grad=True)
        return good, r"out\[0\] requires grad"
    if case == "shared_buffer":
        buf = torch.zeros(SIZES[0])
        return [buf, buf.view(-1)[:SIZES[1]]], r"out\[0\] and out\[1\] overlap"
    if case == "meta":
        good[1] = torch.zeros(SIZES[1], device="meta")
        return good, r"out\[1\] is a meta tensor|out\[1\] is on meta"
    raise AssertionError(case)


CASES = ["self_overlap", "inference", "requires_grad", "shared_buffer", "meta"]


def _entry_points(backend, sets, out):
    return {
        "harmonize": lambda: gh_kernels.harmonize(sets[0], sets[1], out=out, backend=backend),
        "combine": lambda: gh_kernels.combine(torch.ones(2), sets[:2], out=out, backend=backend),
        "aggregate": lambda: gh_kernels.aggregate(sets, "upgrad", out=out, backend=backend),
        "plan": lambda: gh_kernels.plan(*sets, method="mgda", backend=backend)(*sets, out=out),
    }


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("entry", ["harmonize", "combine", "aggregate", "plan"])
def test_out_rules_on_every_entry_point(backend, case, entry, gen):
    sets = [[torch.randn(size, generator=gen) for size in SIZES] for _ in range(3)]
    if entry in ("harmonize", "combine"):
        sets = sets[:2]
    before = [[t.clone() for t in s] for s in sets]
    out, pattern = _bad_out(case)
    out_before = [o.clone() if o.device.type != "meta" else None for o in out]
    with pytest.raises((ValueError, TypeError), match=pattern):
        _entry_points(backend, sets, out)[entry]()
    for s, b in zip(sets, before):
        assert all(torch.equal(x, y) for x, y in zip(s, b)), "an input was written"
    for o, b in zip(out, out_before):
        if b is not None:
            assert torch.equal(o.detach(), b.detach()), "an out was written by a refused call"


def test_self_overlapping_2d_view_is_refused(backend):
    base = torch.zeros(4)
    out = [base.as_strided((2, 2), (1, 1))]  # elements (0,1) and (1,0) are one float
    with pytest.raises(ValueError, match=r"out\[0\] has elements that share memory"):
        gh_kernels.combine(torch.ones(2), [[torch.ones(2, 2)], [torch.ones(2, 2)]], out=out, backend=backend)
    strided = torch.zeros(4, 4)[:, ::2]  # a strided view without overlap stays accepted
    gh_kernels.combine(torch.ones(2), [[torch.ones(4, 2)], [torch.ones(4, 2)]], out=[strided], backend=backend)
    assert torch.equal(strided, torch.full((4, 2), 2.0))


@pytest.mark.parametrize("face", ["two", "multi"])
@pytest.mark.parametrize("case", ["inference", "requires_grad", "shared_buffer"])
def test_out_rules_through_the_training_steps(backend, face, case):
    """The same rules for the steps' write into earlier .grad tensors (gradient accumulation)."""
    torch.manual_seed(0)
    model = ToyDANN(bottleneck=8) if face == "two" else KHeadNet(3)  # ToyDANN: backbone and bottleneck weights of one shape
    params = list(model.parameters())
    for p in params:
        p.grad = torch.zeros_like(p)
    if case == "inference":
        with torch.inference_mode():
            params[0].grad = torch.zeros_like(params[0])
    elif case == "requires_grad":
        params[0].grad = torch.zeros_like(params[0]).requires_grad_()
    else:
        a, b = next((a, b) for i, a in enumerate(params) for b in params[i + 1:] if a.shape == b.shape)
        b.grad = a.grad  # two parameters, one .grad tensor: plain autograd would add both updates into it
    objects = [p.grad for p in params]
    values = [g.detach().clone() for g in objects]
    if face == "two":
        step = gh_kernels.Harmonizer(params, backend=backend)
        call = lambda: step.backward(*model.losses(*model.batch(0)))  # noqa: E731
    else:
        step = gh_kernels.MultiTaskHarmonizer(params, method="upgrad", backend=backend)
        call = lambda: step.backward(model.losses(torch.randn(8, 6), torch.randn(8, 3)))  # noqa: E731
    with pytest.raises((ValueError, TypeError), match=r"the \.grad of params\[\d+\]"):
        call()
    assert all(p.grad is o for p, o in zip(params, objects))
    assert all(torch.equal(o.detach(), v) for o, v in zip(objects, values))


def test_sparse_or_meta_gram_is_named():
    G = torch.eye(2)
    with pytest.raises(ValueError, match="G must be a dense"):
        gh_kernels.weights(G.to_sparse(), "upgrad")
    with pytest.raises(ValueError, match="G must be a dense"):
        gh_kernels.weights(G.to_sparse(), "gh")
