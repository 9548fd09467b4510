"""No host synchronization, checked without a GPU: every method's solve (stateful ones included), the
functional calls and the training steps read no tensor value back to the host -- counted with a
TorchDispatchMode that records ``aten._local_scalar_dense`` (what ``.item()``, ``float()``, ``bool()``
and indexing with a 0-dim tensor run). The same code runs on meta tensors, under FakeTensorMode, and
traces with ``torch.compile(fullgraph=True)`` through ``aggregate``."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import gh_kernels
from gh_kernels.weighting import resolve

from models import KHeadNet, ToyDANN

READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)


class CountHostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def _methods():
    """(label, factory of the method=, options): every registered method, option variants, the stateful ones."""
    cases = [(name, (lambda name=name: name), {}) for name in gh_kernels.MULTITASK_METHODS]
    cases += [("aligned-mtl median", lambda: "aligned-mtl", {"scale_mode": "median"}),
              ("aligned-mtl rmse", lambda: "aligned-mtl", {"scale_mode": "rmse"}),
              ("upgrad pref", lambda: "upgrad", {"pref_vector": torch.tensor([1.0, 2.0, 3.0])}),
              ("pcgrad generator", lambda: "pcgrad", {"generator": torch.Generator().manual_seed(0)}),
              ("GradVac", lambda: gh_kernels.GradVac(), {}),
              ("GradVac generator", lambda: gh_kernels.GradVac(generator=torch.Generator().manual_seed(0)), {}),
              ("NashMTL", lambda: gh_kernels.NashMTL(update_weights_every=2), {})]
    return cases


METHODS = _methods()
IDS = [label for label, _, _ in METHODS]


def _gram(K=3, seed=0):
    J = torch.randn(K, 24, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (J @ J.T).float()


def test_the_counter_sees_host_reads():
    t = torch.tensor([1.0, 2.0])
    with CountHostReads() as counter:
        t[0].item()
        bool(t[1] > 0)
        t[torch.tensor(1)]
    assert len(counter.reads) == 3


@pytest.mark.parametrize("label,make,options", METHODS, ids=IDS)
def test_no_host_reads_in_any_solve(label, make, options):
    """The solve and its state change; resolving the method (which reads an option tensor's values once,
    to refuse NaN: configuration, checked when a training step is built) stays outside."""
    weighting = resolve(make(), 3, options)
    bad = _gram()
    bad[0, 1] = float("nan")
    with CountHostReads() as counter:
        for G in (_gram(seed=0), _gram(seed=1), bad, _gram(seed=2)):  # stateful: first and later steps, a non-finite one
            weighting(G)
    assert counter.reads == [], f"{label}: {len(counter.reads)} host reads"


@pytest.mark.parametrize("method", ["gh", "gh++", "gh++released", "sum"])
def test_no_host_reads_in_the_gh_rules(backend, method):
    with CountHostReads() as counter:
        gh_kernels.weights(_gram(K=2), method, backend=backend)
    assert counter.reads == []


def test_no_host_reads_in_calls_and_steps(backend, gen):
    sets = [[torch.randn(n, generator=gen) for n in (5, 33)] for _ in range(3)]
    model, k_model = ToyDANN(), KHeadNet(3)
    h2 = gh_kernels.Harmonizer(model.parameters(), method="gh++", backend=backend)
    hk = gh_kernels.MultiTaskHarmonizer(k_model.parameters(), method=gh_kernels.NashMTL(), backend=backend)
    x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
    losses2, lossesk = model.losses(*model.batch(0)), k_model.losses(x, y)
    with CountHostReads() as counter:
        gh_kernels.aggregate(sets, "upgrad", backend=backend)
        gh_kernels.harmonize(sets[0], sets[1], method="gh++", backend=backend)
        gh_kernels.plan(sets[0], sets[1], sets[2], method="mgda", backend=backend)(*sets)
        h2.backward(*losses2)
        hk.backward(lossesk)
    assert counter.reads == []


@pytest.mark.parametrize("label,make,options", METHODS, ids=IDS)
def test_every_method_runs_on_meta_and_fake_tensors(label, make, options):
    w = gh_kernels.weights(_gram().to("meta"), make(), **options)
    assert w.device.type == "meta" and w.shape == (3,)
    with FakeTensorMode() as mode:
        sets = [[torch.randn(5), torch.randn(7)] for _ in range(3)]
        fake_options = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in options.items()}
        res = gh_kernels.aggregate(sets, make(), **fake_options)
        assert res.weights.shape == (3,) and res.out[1].shape == (7,)


TRACEABLE = [case for case in METHODS if "generator" not in case[0]]


@pytest.mark.parametrize("label,make,options", TRACEABLE, ids=[case[0] for case in TRACEABLE])
def test_aggregate_traces_with_fullgraph_compile(label, make, options):
    """One graph (no break) through aggregate, with the eager result; a stateful method's state too.
    (A ``generator=`` draws from a Python generator object, which torch.compile does not trace: the
    documented exception.)"""
    gen = torch.Generator().manual_seed(3)
    batches = [[[torch.randn(n, generator=gen) for n in (5, 7)] for _ in range(3)] for _ in range(2)]
    eager_method, compiled_method = make(), make()
    backend = "cpu" if "cpu" in gh_kernels.available_backends() else None
    eager = []
    for i, g in enumerate(batches):
        torch.manual_seed(i)  # "random" draws from the global generator: the same draws in both runs
        eager.append(gh_kernels.aggregate(g, eager_method, backend=backend, **options))
    torch._dynamo.reset()
    step = torch.compile(lambda g: gh_kernels.aggregate(g, compiled_method, **options), fullgraph=True, backend="aot_eager")
    compiled = []
    for i, g in enumerate(batches):
        torch.manual_seed(i)
        compiled.append(step(g))
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c.weights, e.weights, rtol=1e-5, atol=1e-6)
        for a, b in zip(c.out, e.out):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for key in getattr(eager_method, "STATE", ()):
        torch.testing.assert_close(getattr(compiled_method, key), getattr(eager_method, key))
