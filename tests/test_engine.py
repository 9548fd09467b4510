"""The one step engine behind Harmonizer and MultiTaskHarmonizer, and the one method registry:
bad options and scales refused up front, write targets that break the out= rules refused with every
.grad and every method state as before (fused and grouped paths, every backend), a stateful
method's state changed only by a successful finite step, the weights dtype contract, and
checkpoint/resume giving bitwise the run that was not interrupted."""
import io
import math

import pytest
import torch
from torch import nn

import gh_kernels

from models import KHeadNet, ToyDANN


def _batch(step, K=3):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 6, generator=g), torch.randn(16, K, generator=g)


def _grads(model):
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _same_grads(model, saved, objects=None):
    for i, (p, s) in enumerate(zip(model.parameters(), saved)):
        assert (p.grad is None) == (s is None), i
        if s is not None:
            assert torch.equal(p.grad, s), i
    if objects is not None:
        assert all(p.grad is o for p, o in zip(model.parameters(), objects)), "the .grad objects themselves are back"


# -- bad options: refused before anything changes --------------------------------------------------
@pytest.mark.parametrize("case", ["nan_pref", "inf_pref", "meta_pref", "bogus_backend", "nan_c", "inf_reg"])
def test_bad_options_are_refused_by_every_entry_point(backend, case):
    K = 3
    options = {"nan_pref": dict(pref_vector=torch.tensor([1.0, math.nan, 1.0])),
               "inf_pref": dict(pref_vector=[1.0, 1.0, math.inf]),
               "meta_pref": dict(pref_vector=torch.ones(3, device="meta")),
               "bogus_backend": dict(backend="bogus"),
               "nan_c": dict(c=math.nan),
               "inf_reg": dict(reg_eps=math.inf)}[case]
    method = "cagrad" if case == "nan_c" else "upgrad"
    name = {"bogus_backend": "backend", "nan_c": "c", "inf_reg": "reg_eps"}.get(case, "pref_vector")
    G = torch.eye(K)
    if case != "bogus_backend":
        options = dict(options, backend=backend)
    with pytest.raises(ValueError, match=name):
        gh_kernels.weights(G, method, **options)
    grads = [[torch.randn(4) for _ in range(2)] for _ in range(K)]
    before = [[t.clone() for t in s] for s in grads]
    with pytest.raises(ValueError, match=name):
        gh_kernels.aggregate(grads, method, out=grads[0], **options)
    assert all(torch.equal(a, b) for s, t in zip(grads, before) for a, b in zip(s, t))
    with pytest.raises(ValueError, match=name):
        gh_kernels.MultiTaskHarmonizer(KHeadNet(K).parameters(), method=method, **options)


@pytest.mark.parametrize("option", ["reg_eps", "max_norm", "beta", "eps"])
def test_stateful_options_must_be_finite(option):
    cls = gh_kernels.GradVac if option in ("beta", "eps") else gh_kernels.NashMTL
    with pytest.raises(ValueError, match=option):
        cls(**{option: math.inf})
    with pytest.raises(ValueError, match=option):
        cls(**{option: math.nan})


@pytest.mark.parametrize("scale", ["scale1", "scale2"])
@pytest.mark.parametrize("value", [math.nan, math.inf, "1.0"])
def test_bad_scales_change_nothing(backend, scale, value):
    model = ToyDANN()
    model.zero_grad()
    dom, cls = model.losses(*model.batch(0))
    (dom + cls).backward()
    saved, objects = _grads(model), [p.grad for p in model.parameters()]
    h = gh_kernels.Harmonizer(model.parameters(), backend=backend)
    with pytest.raises(ValueError, match=scale):
        h.backward(*model.losses(*model.batch(1)), **{scale: value})
    _same_grads(model, saved, objects)


# -- write targets that break the out= rules -------------------------------------------------------
def _shared_grad_buffer(model):
    """Two parameters of one shape whose earlier .grad is the same tensor (the write would lose an update)."""
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    a, b = next((x, y) for x in lin for y in lin if x is not y and x.weight.shape == y.weight.shape)
    buf = torch.zeros_like(a.weight)
    a.weight.grad = buf
    b.weight.grad = buf


def _grad_that_requires_grad(model):
    loss = sum((p ** 2).sum() for p in model.parameters())
    loss.backward(create_graph=True)  # every .grad now has a grad_fn


@pytest.mark.parametrize("face", ["two", "multi"])
@pytest.mark.parametrize("mode", ["reweight", "surgery"])
@pytest.mark.parametrize("case", ["shared_buffer", "requires_grad", "mixed_shared_buffer"])
def test_refused_write_restores_every_grad_and_state(backend, face, mode, case):
    torch.manual_seed(0)
    K = 2 if face == "two" else 3
    model = KHeadNet(K)
    model.heads.append(nn.Linear(8, 1))  # a second head of the trunk's last shape: same-shaped weights exist
    model.trunk[2] = nn.Linear(16, 8)
    if case == "requires_grad":
        _grad_that_requires_grad(model)
    else:
        model.zero_grad(set_to_none=True)
        head = model.heads[0]
        buf = torch.zeros_like(head.weight)
        head.weight.grad = buf
        model.heads[1].weight.grad = buf
        if case == "shared_buffer":  # every other parameter gets an earlier .grad too: the all-accumulating case
            for p in model.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
    saved, objects = _grads(model), [p.grad for p in model.parameters()]
    gradvac = gh_kernels.GradVac()
    if face == "two":
        h = gh_kernels.Harmonizer(model.parameters(), shared=model.trunk.parameters(), method="gh", mode=mode, backend=backend)
    else:
        h = gh_kernels.MultiTaskHarmonizer(model.parameters(), shared=model.trunk.parameters(), method=gradvac, mode=mode,
                                           backend=backend)
    x, y = _batch(0, K + 1)
    losses = model.losses(x, y)[:K]
    with pytest.raises(ValueError, match=r"params|\.grad"):
        if face == "two":
            h.backward(*losses)
        else:
            h.backward(losses)
    _same_grads(model, saved, objects)
    assert gradvac.phi_hat is None, "a refused step leaves the method's state alone"


# -- state changes only after success; non-finite steps change nothing ---------------------------
#: name -> (method=, options, whether the step takes a second batch)
FAILING_STEP_METHODS = {
    "gradvac": lambda: (gh_kernels.GradVac(beta=0.3, generator=torch.Generator().manual_seed(1)), {}, False),
    "pcgrad-generator": lambda: ("pcgrad", {"generator": torch.Generator().manual_seed(1)}, False),
    "graddrop-generator": lambda: ("graddrop", {"generator": torch.Generator().manual_seed(1)}, False),
    "pcd": lambda: (gh_kernels.PCD(beta=0.5), {}, False),
    "cr-mogm": lambda: (gh_kernels.CRMOGM(gh_kernels.NashMTL(), alpha=0.5), {}, False),
    "excess-mtl": lambda: (gh_kernels.ExcessMTL(), {}, False),
    "modo": lambda: (gh_kernels.MoDo(gamma=0.5), {}, True),
}


@pytest.mark.parametrize("method", list(FAILING_STEP_METHODS))
def test_failed_step_leaves_the_method_as_a_clean_run(backend, method):
    """A step refused at its write (after the solve ran) leaves the state and the generator's draws as they were."""
    K = 3
    runs = []
    for fail in (False, True):
        torch.manual_seed(0)
        model = KHeadNet(K)
        chosen, options, two_batches = FAILING_STEP_METHODS[method]()
        h = gh_kernels.MultiTaskHarmonizer(model.parameters(), method=chosen, backend=backend, **options)

        def backward(step):
            second = model.losses(*_batch(step + 100)) if two_batches else None
            return h.backward(model.losses(*_batch(step)), second_losses=second)
        results = []
        for step in range(4):
            model.zero_grad(set_to_none=True)
            if fail and step == 2:
                for p in model.parameters():
                    p.grad = torch.zeros_like(p)
                model.heads[1].weight.grad = model.heads[0].weight.grad  # two parameters, one .grad tensor
                with pytest.raises(ValueError, match="overlap"):
                    backward(step)
                model.zero_grad(set_to_none=True)
            result = backward(step)
            results.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]) if result.weights is None
                           else result.weights)
        runs.append(torch.stack(results))
    assert torch.equal(runs[0], runs[1])


def test_non_finite_step_changes_no_state():
    gen = torch.Generator().manual_seed(3)
    Gs = []
    for _ in range(5):
        J = torch.randn(3, 10, generator=gen, dtype=torch.float64)
        Gs.append(J @ J.T)
    bad = Gs[0].clone()
    bad[0, 1] = math.inf
    for make in (lambda: gh_kernels.NashMTL(update_weights_every=2), lambda: gh_kernels.GradVac(beta=0.4)):
        clean, interrupted = make(), make()
        w_clean = [gh_kernels.weights(G, clean) for G in Gs]
        w_int = []
        for i, G in enumerate(Gs):
            if i == 2:
                w_bad = gh_kernels.weights(bad, interrupted)
                assert torch.isfinite(w_bad).all()
            w_int.append(gh_kernels.weights(G, interrupted))
        for a, b in zip(w_clean, w_int):
            assert torch.equal(a, b), "the non-finite step changed the state (step counter or cached weights)"


def test_k_change_under_a_stateful_method_is_refused():
    method = gh_kernels.GradVac()
    gh_kernels.weights(torch.eye(3), method)
    state = method.phi_hat.clone()
    with pytest.raises(ValueError, match="K = 3 tasks; got K = 4"):
        gh_kernels.weights(torch.eye(4), method)
    assert torch.equal(method.phi_hat, state)
    method.reset()
    gh_kernels.weights(torch.eye(4), method)


# -- the weights dtype contract ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_weights_dtype_contract(backend, dtype):
    J = torch.tensor([[1.0, 0.2, -0.3], [-0.9, 0.5, 0.1]])
    G = (J @ J.T).to(dtype)
    expected = torch.float64 if dtype == torch.float64 else torch.float32
    for method in ("gh", "gh++", "pcgrad", "upgrad", "mean", gh_kernels.NashMTL(), gh_kernels.GradVac()):
        w = gh_kernels.weights(G, method, backend=backend)
        assert w.dtype == expected, (method, w.dtype)
    gh = gh_kernels.weights(G, "gh", backend=backend)
    pc = gh_kernels.weights(G, "pcgrad", backend=backend)
    torch.testing.assert_close(pc, gh, rtol=1e-6, atol=1e-6)  # PCGrad at K = 2 is GH, in every dtype


# -- one plan type -----------------------------------------------------------------------------------
def test_plan_serves_k_sets_and_every_method(backend, gen):
    K = 4
    grads = [[torch.randn(n, generator=gen) for n in (5, 33, 130)] for _ in range(K)]
    for method in ("upgrad", "mgda", "mean"):
        plan = gh_kernels.plan(*grads, method=method, backend=backend)
        out = [torch.empty_like(t) for t in grads[0]]
        res = plan(*grads, out=out)
        ref = gh_kernels.aggregate(grads, method, backend=backend)
        torch.testing.assert_close(res.weights, ref.weights)
        for a, b in zip(res.out, ref.out):
            torch.testing.assert_close(a, b)


# -- checkpoint and resume ------------------------------------------------------------------------
def _roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


METHODS = {
    "gradvac": lambda: gh_kernels.GradVac(beta=0.3, generator=torch.Generator().manual_seed(7)),
    "nash-mtl": lambda: gh_kernels.NashMTL(update_weights_every=2),
    "pcgrad-generator": lambda: "pcgrad",
}


@pytest.mark.parametrize("name", list(METHODS))
def test_checkpoint_resume_is_bitwise_the_uninterrupted_run(name):
    K, steps, stop = 3, 6, 3

    def make():
        torch.manual_seed(0)
        model = KHeadNet(K)
        method = METHODS[name]()
        options = {"generator": torch.Generator().manual_seed(11)} if name == "pcgrad-generator" else {}
        return model, gh_kernels.MultiTaskHarmonizer(model.parameters(), method=method, **options)

    def run(model, h, first, last):
        out = []
        for step in range(first, last):
            model.zero_grad(set_to_none=True)
            out.append((h.backward(model.losses(*_batch(step))).weights, _grads(model)))
        return out

    model, h = make()
    uninterrupted = run(model, h, 0, steps)
    model, h = make()
    run(model, h, 0, stop)
    saved = _roundtrip({"model": model.state_dict(), "step": h.state_dict()})
    model, h = make()  # fresh objects, as after a restart
    model.load_state_dict(saved["model"])
    h.load_state_dict(saved["step"])
    resumed = run(model, h, stop, steps)
    for (w_a, g_a), (w_b, g_b) in zip(uninterrupted[stop:], resumed):
        assert torch.equal(w_a, w_b)
        assert all(torch.equal(a, b) for a, b in zip(g_a, g_b))


@pytest.mark.parametrize("cls", [gh_kernels.GradVac, gh_kernels.NashMTL])
def test_stateful_state_dict_roundtrip_and_refusals(cls):
    method = cls()
    for _ in range(3):
        J = torch.randn(3, 8, dtype=torch.float64)
        gh_kernels.weights(J @ J.T, method)
    state = _roundtrip(method.state_dict())
    fresh = cls()
    fresh.load_state_dict(state)
    for key in cls.STATE:
        assert torch.equal(getattr(fresh, key), getattr(method, key))
    other = cls(**({"beta": 0.9} if cls is gh_kernels.GradVac else {"max_norm": 2.0}))
    with pytest.raises(ValueError, match="beta|max_norm"):
        other.load_state_dict(state)
    assert all(getattr(other, key) is None for key in cls.STATE)


def test_old_names_warn_and_still_work(gen):
    g1, g2 = [torch.randn(5, generator=gen)], [torch.randn(5, generator=gen)]
    with pytest.warns(DeprecationWarning, match="gh_kernels.Plan"):
        cls = gh_kernels.HarmonizePlan
    old = cls(g1, g2, out=g2, method="gh++")  # 0.1's constructor
    assert isinstance(old, gh_kernels.Plan)
    torch.testing.assert_close(old(g1, g2).weights, gh_kernels.harmonize(g1, g2, method="gh++").weights)
    with pytest.warns(DeprecationWarning, match="gh_kernels.weighting.gh"):
        assert gh_kernels.methods.check_method("gh", 0.5) == 1
    from gh_kernels.multitask import GradVac  # the 0.1 import path
    assert GradVac is gh_kernels.GradVac
    assert gh_kernels.plan(g1, g2)(g1, g2).out[0].shape == (5,)
