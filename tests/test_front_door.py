"""What a new user meets first: one version for pip and the package, a set-up re-run that is one
quick process, method names that point to the right method, consistent defaults, the two-loss
Harmonizer taking any method of the registry, and errors that name the argument at fault."""
import importlib.metadata
import inspect
import os
import re
import subprocess
import sys
import time

import pytest
import torch

import gh_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_version_for_pip_setup_and_package():
    with open(os.path.join(ROOT, "setup.py")) as f:
        assert "read_version()" in f.read()  # setup.py has no version literal of its own
    with open(os.path.join(ROOT, "gh_kernels", "_version.py")) as f:
        source = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)
    assert gh_kernels.__version__ == source
    try:
        installed = importlib.metadata.version("gh_kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gh_kernels is not pip-installed here")
    assert installed == source
    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        assert f"## {source}" in f.read()


def test_setup_rerun_is_one_quick_process():
    """tools/setup.sh on a machine already set up: tools/setup_state.py alone, exit 0, within 10 s."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "setup_state.py")], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    elapsed = time.perf_counter() - t0
    if res.returncode == 10:
        pytest.skip(f"this machine is not fully set up: {res.stdout.strip()}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith(f"gh_kernels {gh_kernels.__version__} backends:")
    assert elapsed < 10


@pytest.mark.parametrize("typed, hint", [("nash", "gh_kernels.NashMTL()"), ("NashMTL", "gh_kernels.NashMTL()"),
                                         ("grad_vac", "gh_kernels.GradVac()"), ("upgrade", "'upgrad'"),
                                         ("mdga", "'mgda'"), ("trimmed_mean", "'trimmed-mean'"), ("cagard", "'cagrad'")])
def test_near_miss_method_names_point_to_the_method(typed, hint):
    for call in (lambda: gh_kernels.weights(torch.eye(3), typed),
                 lambda: gh_kernels.MultiTaskHarmonizer([torch.nn.Parameter(torch.ones(2))], method=typed),
                 lambda: gh_kernels.Harmonizer([torch.nn.Parameter(torch.ones(2))], method=typed)):
        with pytest.raises(ValueError, match=re.escape(f"did you mean {hint}")):
            call()
    with pytest.raises(ValueError) as e:
        gh_kernels.weights(torch.eye(3), "xyzzy")
    assert "did you mean" not in str(e.value)


def test_multitask_defaults_agree():
    default = lambda f: inspect.signature(f).parameters["method"].default  # noqa: E731
    assert default(gh_kernels.weights) == default(gh_kernels.aggregate) == default(gh_kernels.MultiTaskHarmonizer) == "upgrad"
    G = torch.tensor([[2.0, -1.0, 0.3], [-1.0, 1.5, 0.2], [0.3, 0.2, 1.0]])
    assert torch.equal(gh_kernels.weights(G), gh_kernels.weights(G, "upgrad"))


def test_one_set_is_its_gradient_and_no_set_names_grads():
    """aggregate([[a]], "mgda") blamed the method for K = 1; K = 1 is now a task (issue #28): the update is a."""
    a = torch.randn(3)
    torch.testing.assert_close(gh_kernels.aggregate([[a]], "mgda").out[0], a)
    with pytest.raises(ValueError, match="^grads must hold at least one gradient set"):
        gh_kernels.aggregate([], "mgda")


def _two_losses(model, x):
    y = model(x)
    return (y[:, 0] - 1).pow(2).mean(), -(y[:, 0] * y[:, 1]).mean() + y[:, 2].pow(2).mean()


@pytest.mark.parametrize("method, options", [("upgrad", {}), ("cagrad", {"c": 0.5}), ("mgda", {}), ("nash", None),
                                             ("trimmed-mean", {}), ("gh++", {"kappa": 0.3})])
def test_harmonizer_takes_any_registry_method(backend, method, options, gen):
    """Harmonizer(method=m) with scales is scale_k w_k g_k with the weights of the unscaled gradients, the same
    step as MultiTaskHarmonizer at K = 2 (scales 1), checked against autograd.grad and gh_kernels.weights."""
    torch.manual_seed(gen.initial_seed() % 1000)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    x = torch.randn(6, 5, generator=gen)
    params = list(model.parameters())
    make = (lambda: gh_kernels.NashMTL()) if options is None else (lambda: method)
    opts = options or {}
    l1, l2 = _two_losses(model, x)
    g1, g2 = torch.autograd.grad(l1, params, retain_graph=True), torch.autograd.grad(l2, params)
    s1, s2 = (1.0, 1.0) if method == "trimmed-mean" else (0.5, 1.5)
    h = gh_kernels.Harmonizer(params, shared=params, method=make(), backend=backend, **opts)
    res = h.backward(*_two_losses(model, x), scale1=s1, scale2=s2)
    got = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    if method == "trimmed-mean":  # per coordinate, no weights: the mean of the two values
        assert res.weights is None and res.gram is None
        for a, b, c in zip(got, g1, g2):
            torch.testing.assert_close(a, (b + c) / 2, rtol=1e-6, atol=1e-7)
        return
    G = torch.tensor([[sum((a * b).sum() for a, b in zip(u, v)) for v in (g1, g2)] for u in (g1, g2)])
    w = gh_kernels.weights(G, make(), **opts)
    torch.testing.assert_close(res.weights, w, rtol=1e-5, atol=1e-6)
    for a, b, c in zip(got, g1, g2):
        torch.testing.assert_close(a, s1 * w[0] * b + s2 * w[1] * c, rtol=1e-5, atol=1e-6)
    mt = gh_kernels.MultiTaskHarmonizer(params, shared=params, method=make(), backend=backend, **opts)
    h2 = gh_kernels.Harmonizer(params, shared=params, method=make(), backend=backend, **opts)
    h2.backward(*_two_losses(model, x))
    one = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    mt.backward(list(_two_losses(model, x)))
    for a, p in zip(one, params):
        torch.testing.assert_close(a, p.grad, rtol=0, atol=0)


def test_harmonizer_refuses_kappa_for_other_methods_and_two_batch_methods():
    p = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(ValueError, match="kappa is an option of the GH rules"):
        gh_kernels.Harmonizer(p, method="upgrad", kappa=0.3)
    with pytest.raises(ValueError, match="MoDo weighs from two independent batches"):
        gh_kernels.Harmonizer(p, method=gh_kernels.MoDo())
