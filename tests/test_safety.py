"""All or nothing, no silent misuse (the safety issue's defects D1-D10, one test or more each).

A failed call leaves ``.grad``, ``out`` and every input exactly as they were; aliasing is either the
one legal pattern (``out[p]`` is an input of parameter ``p``) or an error naming the index.
"""
import gc
import weakref

import pytest
import torch
from torch import nn

import gh_kernels

from models import ToyDANN

def _snapshot(params):
    return [(p.grad, None if p.grad is None else p.grad.clone()) for p in params]


def _assert_unchanged(params, snap):
    for p, (obj, values) in zip(params, snap):
        assert p.grad is obj, "the .grad object was replaced"
        assert (obj is None) or torch.equal(p.grad, values), "the .grad values changed"


def _accumulated_linear():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    h = gh_kernels.Harmonizer(lin.parameters())
    h.backward(lin(x).sum(), -(lin(x) ** 2).sum())
    return lin, x, h


# ---------------------------------------------------------------- D1: a failed backward changes nothing
@pytest.mark.parametrize("case", ["loss1_not_scalar", "loss2_not_scalar", "graph_freed", "loss1_graph_freed_after_loss2",
                                  "nested_graph_twice", "not_a_tensor", "integer_loss"])
def test_failed_backward_leaves_grad_unchanged(case):
    lin, x, h = _accumulated_linear()
    params = list(lin.parameters())
    snap = _snapshot(params)
    y = lin(x)
    l2 = (y ** 2).sum()
    expected = {"loss1_not_scalar": (ValueError, "loss1 must be a scalar"), "loss2_not_scalar": (ValueError, "loss2 must be a scalar"),
                "not_a_tensor": (TypeError, "loss1 must be a tensor"), "integer_loss": (TypeError, "loss2 must be a real")}
    if case == "loss1_not_scalar":
        args = (y, l2)
    elif case == "loss2_not_scalar":
        args = (y.sum(), y)
    elif case == "not_a_tensor":
        args = (1.0, l2)
    elif case == "integer_loss":
        args = (y.sum(), torch.tensor(3))
    elif case == "graph_freed":
        l1 = y.sum()
        h.backward(l1, l2)
        snap = _snapshot(params)
        args = (l1, l2)
    elif case == "loss1_graph_freed_after_loss2":  # loss2's pass succeeds, loss1's raises inside autograd
        l1 = (lin.weight * 2).sum()
        l1.backward()
        snap = _snapshot(params)
        args = (l1, l2)
    else:  # loss1's graph contains loss2's; the second call fails half-way through autograd
        l1 = l2 * 0.5 + y.sum()
        h.backward(l1, l2)
        snap = _snapshot(params)
        args = (l1, l2)
    err, match = expected.get(case, (RuntimeError, "backward through the graph a second time"))
    with pytest.raises(err, match=match):
        h.backward(*args)
    _assert_unchanged(params, snap)


def test_bad_dtypes_fail_before_backward():
    lin, x, h = _accumulated_linear()
    with pytest.raises(TypeError, match=r"params\[0\] has dtype torch.complex64"):
        gh_kernels.Harmonizer(nn.Linear(3, 2).to(torch.complex64).parameters())
    with pytest.raises(TypeError, match=r"params\[1\] has dtype torch.int32"):
        gh_kernels.Harmonizer([nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2, dtype=torch.int32), requires_grad=False)])
    gh_kernels.Harmonizer(nn.Linear(3, 2).double().parameters())  # float64 is supported
    lin.to(torch.complex64)  # after the constructor: caught before anything is written
    params = list(lin.parameters())
    snap = _snapshot(params)
    xc = x.to(torch.complex64)
    with pytest.raises(TypeError, match=r"params\[0\] has dtype torch.complex64|gradient of params\[0\] has dtype"):
        h.backward(lin(xc).abs().sum(), (lin(xc).abs() ** 2).sum())
    _assert_unchanged(params, snap)


def test_sparse_gradient_names_the_parameter_and_restores():
    emb = nn.Embedding(10, 3, sparse=True)
    dense = nn.Parameter(torch.randn(3))
    h = gh_kernels.Harmonizer([dense, emb.weight])
    dense.grad = torch.ones(3)
    idx = torch.tensor([1, 2])
    with pytest.raises(TypeError, match=r"params\[1\] has layout torch.sparse_coo"):
        h.backward((emb(idx) * dense).sum(), -(emb(idx) ** 2).sum())
    assert torch.equal(dense.grad, torch.ones(3)) and emb.weight.grad is None


def test_constructor_checks_backend_and_sync():
    p = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="backend must be one of"):
        gh_kernels.Harmonizer([p], backend="nope")
    with pytest.raises(gh_kernels.BackendUnavailable, match="backend='cuda' cannot run this call"):
        gh_kernels.Harmonizer([p], backend="cuda")  # D10: a CPU machine, or CPU parameters
    with pytest.raises(RuntimeError, match="init_process_group"):
        gh_kernels.Harmonizer([p], sync="global")


# ---------------------------------------------------------------- D2: shared=None is the released recipe's set
def Dann():
    """Plain DANN: the classifier is reached by the classification loss only."""
    return ToyDANN(bottleneck=None, disc_hidden=16, classifier_in_alignment=0.0)


def _losses(model, seed):
    return model.losses(*model.batch(seed, shift=1.0))


def test_default_shared_equals_the_released_recipe_set():
    torch.manual_seed(0)
    model = Dann()
    explicit = gh_kernels.Harmonizer(model.parameters(), shared=model.shared_parameters(), method="gh++")
    default = gh_kernels.Harmonizer(model.parameters(), method="gh++")
    for seed in range(3):
        model.zero_grad(set_to_none=True)
        r1 = explicit.backward(*_losses(model, seed))
        g_explicit = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        r2 = default.backward(*_losses(model, seed))
        assert torch.equal(r1.gram, r2.gram) and torch.equal(r1.weights, r2.weights)
        assert all(torch.equal(a, p.grad) for a, p in zip(g_explicit, model.parameters()))


def test_shared_with_discriminator_warns():
    model = Dann()
    h = gh_kernels.Harmonizer(model.parameters(), shared=model.parameters())
    with pytest.warns(UserWarning, match="reached by loss1 only"):
        h.backward(*_losses(model, 0))


# ---------------------------------------------------------------- D9/D10: parameters outside params
def test_parameter_reached_but_not_in_params_is_an_error():
    model = Dann()
    h = gh_kernels.Harmonizer(model.shared_parameters())  # the discriminator left out
    params = list(model.parameters())
    snap = _snapshot(params)
    with pytest.raises(ValueError, match=r"loss1 reaches a parameter of shape \(\d+(, \d+)?\) that is not in params"):
        h.backward(*_losses(model, 0))
    _assert_unchanged(params, snap)


def test_losses_under_no_grad_are_an_error():
    model = Dann()
    h = gh_kernels.Harmonizer(model.parameters())
    with torch.no_grad():
        dom, cls = _losses(model, 0)
    with pytest.raises(ValueError, match="loss1 does not require grad"):
        h.backward(dom, cls)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- D8: loss1's graph is freed
class _Save(torch.autograd.Function):
    """Saves a fresh tensor for backward; a weak reference tells whether the graph still holds it."""
    saved = None

    @staticmethod
    def forward(ctx, x):
        big = x * 1.0
        _Save.saved = weakref.ref(big)
        ctx.save_for_backward(big)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad


def test_loss1_graph_is_freed_without_retain_graph():
    model = Dann()
    f = model.backbone(torch.randn(4, 6))
    loss1 = model.discriminator(_Save.apply(f)).sum()  # the loss1-only branch holds the saved tensor
    loss2 = model.classifier(f).pow(2).sum()
    gh_kernels.Harmonizer(model.parameters()).backward(loss1, loss2)
    gc.collect()
    assert _Save.saved() is None, "loss1's saved activations survive while the caller holds loss1"
    assert loss1 is not None  # the caller still holds loss1
