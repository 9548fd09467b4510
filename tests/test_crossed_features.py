"""Defects found where features cross (issue #29), one test per class fixed so far; each failed on the
code before its fix. The class numbers are the issue's."""
import importlib
import warnings

import pytest
import torch

import gh_kernels


def test_3_plan_refuses_cross_batch_methods_on_one_batch():
    """plan() ran MoDo/SDMGrad on one batch (and advanced their state); aggregate and backward refuse that."""
    g = [torch.randn(4)]
    for method in (gh_kernels.MoDo(), gh_kernels.SDMGrad()):
        before = method.state_dict()
        with pytest.raises(ValueError, match="two independent batches"):
            gh_kernels.plan(g, [torch.randn(4)], method=method)
        assert str(method.state_dict()) == str(before)


@pytest.mark.parametrize("inner", ["trimmed-mean", "graddrop", "excess-mtl"])
def test_10_crmogm_refuses_methods_it_cannot_run(inner):
    """CRMOGM accepted per-coordinate methods and ExcessMTL, then failed after the K backward passes."""
    method = gh_kernels.ExcessMTL() if inner == "excess-mtl" else inner
    with pytest.raises(ValueError, match="method of CRMOGM must have weights from one Gram matrix"):
        gh_kernels.CRMOGM(method)


def test_11_inference_mode_outs_follow_one_rule_on_every_backend(backend):
    """Inside torch.inference_mode(), inference-tensor outs worked on cpu but raised a self-contradicting
    TypeError ("dtype torch.float32 but the gradients have torch.float32") on torch and triton."""
    gen = torch.Generator().manual_seed(0)
    g1 = [torch.randn(5, generator=gen), torch.randn(2, 3, generator=gen)]
    g2 = [-0.5 * a + torch.randn(a.shape, generator=gen) for a in g1]
    want = gh_kernels.harmonize(g1, g2, method="gh", backend="torch").out
    with torch.inference_mode():
        out = [torch.empty_like(a) for a in g1]
        gh_kernels.harmonize(g1, g2, out=out, method="gh", backend=backend)
        res = gh_kernels.aggregate([g1, g2], "upgrad", out=[torch.empty_like(a) for a in g1], backend=backend)
    for o, w in zip(out, want):
        torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-6)
    assert res.out[0].is_inference()
    out = [torch.empty_like(a) for a in g1]
    with torch.inference_mode():
        inference_out = [torch.empty_like(a) for a in g1]
    with pytest.raises(ValueError, match=r"out\[0\] is an inference tensor"):  # outside inference mode: refused
        gh_kernels.harmonize(g1, g2, out=inference_out, backend=backend)


def test_12_old_import_path_gives_the_same_classes():
    """gh_kernels.multitask.stateful loaded a second copy of the module: its GradVac was another class."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = importlib.import_module("gh_kernels.multitask.stateful")
    assert old is importlib.import_module("gh_kernels.weighting.stateful")
    assert old.GradVac is gh_kernels.GradVac
    model = torch.nn.Linear(3, 2)
    h = gh_kernels.MultiTaskHarmonizer(model.parameters(), method=old.GradVac())
    y = model(torch.randn(4, 3))
    h.backward([y[:, 0].sum(), y[:, 1].pow(2).sum()])


def test_minor_options_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="pref_vector of sdmgrad must be a 1-D tensor"):
        gh_kernels.SDMGrad(pref_vector=torch.tensor(0.5))
    with pytest.raises(ValueError, match=r"initial_weights must be a 1-D float tensor .* \(not meta\)"):
        gh_kernels.CRMOGM("upgrad", initial_weights=torch.ones(3, device="meta"))
