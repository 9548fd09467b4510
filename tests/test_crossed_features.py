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


def _stepped(method, K=3, seed=0):
    J = torch.randn(K, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sets = [[row.float()] for row in J]
    if getattr(method, "cross_batch", False):
        gh_kernels.aggregate(sets, method, second_batch=sets)
    else:
        gh_kernels.aggregate(sets, method)
    return method


@pytest.mark.parametrize("saved, loading, option", [
    (lambda: gh_kernels.CRMOGM("cagrad", c=0.5), lambda: gh_kernels.CRMOGM("cagrad", c=0.2), "options"),
    (lambda: gh_kernels.CRMOGM("upgrad", pref_vector=torch.tensor([1.0, 2.0, 3.0])),
     lambda: gh_kernels.CRMOGM("upgrad", pref_vector=torch.tensor([3.0, 2.0, 1.0])), "options"),
    (lambda: gh_kernels.CRMOGM("mean", initial_weights=torch.tensor([0.2, 0.3, 0.5])),
     lambda: gh_kernels.CRMOGM("mean", initial_weights=torch.tensor([0.5, 0.3, 0.2])), "initial_weights")])
def test_7_crmogm_checks_the_wrapped_methods_options_at_load(saved, loading, option):
    state = _stepped(saved()).state_dict()
    target = loading()
    with pytest.raises(ValueError, match=f"state_dict was saved with {option}="):
        target.load_state_dict(state)
    assert target.lam is None


def _bad_states():
    """(label, method factory, how to spoil its state_dict, the error's words)."""
    def field(key, value):
        return lambda sd: sd["state"].__setitem__(key, value)
    return [
        ("gradvac phi_hat shape", gh_kernels.GradVac, field("phi_hat", torch.zeros(3, 2, dtype=torch.float64)), "shape"),
        ("modo lam int64", gh_kernels.MoDo, field("lam", torch.ones(3, dtype=torch.int64)), "must be torch.float64"),
        ("nash solved float", gh_kernels.NashMTL, field("solved", torch.tensor(1.0)), "must be torch.bool"),
        ("excess K mismatch", gh_kernels.ExcessMTL, field("baseline", torch.ones(4, dtype=torch.float64)), "K = 3"),
        ("pcd partly empty", gh_kernels.PCD, field("n_steps", None), "partly empty"),
        ("gradvac generator state", lambda: gh_kernels.GradVac(generator=torch.Generator().manual_seed(1)),
         lambda sd: sd.__setitem__("generator_state", torch.zeros(3, dtype=torch.uint8)), "generator_state"),
        ("excess sums", gh_kernels.ExcessMTL, field("sq_grad_sum", [torch.ones(2, dtype=torch.int64)] * 3), "sq_grad_sum"),
        ("crmogm inner", lambda: gh_kernels.CRMOGM(gh_kernels.NashMTL()),
         lambda sd: sd["inner"]["state"].__setitem__("step", torch.tensor(1.5)), "must be torch.int64"),
    ]


@pytest.mark.parametrize("label, make, spoil, words", _bad_states(), ids=[b[0] for b in _bad_states()])
def test_8_load_state_dict_checks_everything_before_it_sets_anything(label, make, spoil, words):
    """Wrong shapes and dtypes loaded silently (then an IndexError at the next step), and a bad generator
    state raised only after phi_hat was replaced."""
    import copy
    good = _stepped(make()).state_dict()
    bad = copy.deepcopy(good)
    spoil(bad)
    target = _stepped(make(), seed=1)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ValueError, match=words):
        target.load_state_dict(bad)
    after = target.state_dict()
    assert str(after) == str(before)
    target.load_state_dict(good)  # the good one still loads and the method steps
    _stepped(target)


@pytest.mark.parametrize("view", [False, True])
def test_4_cross_batch_out_in_a_later_block_is_read_before_it_is_written(view):
    """Cross-batch aggregate, K = 5 (10 sets: blocks of 8), cpu: an out that is (a view of) an input of the
    second block was overwritten by the first block before it was read (error 0.2): the guard compared objects."""
    if "cpu" not in gh_kernels.available_backends():
        pytest.skip("the C++ CPU kernels (blocks of 8 sets) are not built")
    gen = torch.Generator().manual_seed(3)
    K = 5
    first = [[torch.randn(7, generator=gen), torch.randn(2, 3, generator=gen)] for _ in range(K)]
    second = [[torch.randn(7, generator=gen), torch.randn(2, 3, generator=gen)] for _ in range(K)]
    want = gh_kernels.aggregate(first, gh_kernels.MoDo(), second_batch=second, backend="torch")
    target = second[K - 1]
    out = [t.view_as(t) for t in target] if view else target
    res = gh_kernels.aggregate(first, gh_kernels.MoDo(), second_batch=second, out=out, backend="cpu")
    for o, w in zip(res.out, want.out):
        torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("K", [2, 5])
def test_5_surgery_with_two_batches(backend, K):
    """Surgery mode with second_losses=: the parameters outside shared got g + g' (twice the two-batch mean the
    trunk's sum convention gives), and K = 5 (10 sets) raised "at most 8 gradient sets" on cpu."""
    from models import KHeadNet
    torch.manual_seed(0)
    model = KHeadNet(K)
    gen = torch.Generator().manual_seed(K)
    b1 = (torch.randn(6, 6, generator=gen), torch.randn(6, K, generator=gen))
    b2 = (torch.randn(6, 6, generator=gen), torch.randn(6, K, generator=gen))
    losses = lambda b: model.losses(*b)  # noqa: E731
    trunk = list(model.trunk.parameters())
    trunk_ids = {id(p) for p in trunk}
    h = gh_kernels.MultiTaskHarmonizer(model.parameters(), shared=trunk, method=gh_kernels.MoDo(), mode="surgery",
                                       backend=backend)
    h.backward(losses(b1), second_losses=losses(b2))
    heads = [p for p in model.parameters() if id(p) not in trunk_ids]
    got = [p.grad.clone() for p in heads]
    model.zero_grad(set_to_none=True)
    want = [(a + b) / 2 for a, b in zip(torch.autograd.grad(sum(losses(b1)), heads),
                                         torch.autograd.grad(sum(losses(b2)), heads))]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_6_graddrop_with_partial_grads_draws_as_torchjd(backend):
    """GradDrop in the training step with only some parameters holding a .grad: the draws were made per write
    group, so the update differed from torchjd's on the same seed (by up to 0.32); torchjd draws over the
    parameters in order."""
    A = pytest.importorskip("torchjd.aggregation")
    from models import KHeadNet
    from mtl_helpers import stacked_jacobian
    gen = torch.Generator().manual_seed(11)
    K = 3
    torch.manual_seed(0)
    net = KHeadNet(K)
    x, y = torch.randn(16, 6, generator=gen), torch.randn(16, K, generator=gen)
    params = list(net.parameters())
    J = stacked_jacobian(net.losses(x, y), params)
    before = [torch.randn(p.shape, generator=gen) if i % 2 else None for i, p in enumerate(params)]  # every other
    for p, b in zip(params, before):
        p.grad = None if b is None else b.clone()
    step = gh_kernels.MultiTaskHarmonizer(params, shared=params, method="graddrop", backend=backend)
    torch.manual_seed(7)
    step.backward(net.losses(x, y))
    torch.manual_seed(7)
    expected = A.GradDrop()(J)
    offset = 0
    for p, b in zip(params, before):
        n = p.numel()
        want = expected[offset:offset + n].view(p.shape) + (0 if b is None else b)
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-6)
        offset += n


class _Branchy(torch.nn.Module):
    """A trunk, two heads, and a branch that loss 0 reaches on some steps only."""

    def __init__(self):
        super().__init__()
        self.trunk, self.branch = torch.nn.Linear(4, 5), torch.nn.Linear(5, 1)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(5, 1) for _ in range(2))

    def losses(self, x, branch):
        f = torch.tanh(self.trunk(x))
        return [(self.heads[0](f) + (self.branch(f) if branch else 0)).pow(2).mean(), self.heads[1](f).pow(2).mean()]


def test_1_excess_mtl_keeps_its_sums_per_parameter(backend):
    """ExcessMTL's sums followed positions in the list of parameters reached that step: a branch reached on some
    steps moved one parameter's sums onto another, and a changed count raised. Every step now equals aggregate()
    on full-length lists (None where a parameter got no gradient) with a second ExcessMTL."""
    torch.manual_seed(0)
    net = _Branchy()
    params = list(net.parameters())
    ours, ref = gh_kernels.ExcessMTL(), gh_kernels.ExcessMTL()
    h = gh_kernels.MultiTaskHarmonizer(params, shared=params, method=ours, backend=backend)
    gen = torch.Generator().manual_seed(5)
    for step in range(5):
        x, branch = torch.randn(8, 4, generator=gen), step % 2 == 0
        sets = [list(torch.autograd.grad(l, params, allow_unused=True, retain_graph=True)) for l in net.losses(x, branch)]
        want = gh_kernels.aggregate(sets, ref, backend="torch")
        net.zero_grad(set_to_none=True)
        res = h.backward(net.losses(x, branch))
        torch.testing.assert_close(res.weights, want.weights, rtol=1e-6, atol=1e-7)
        for p, w in zip(params, want.out):
            assert (p.grad is None) == (w is None)
            if w is not None:
                torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6)


def test_2_excess_mtl_runs_after_the_dtype_narrows(backend):
    """After model.to(bfloat16) every ExcessMTL step raised ("Expected out type to be Float but got BFloat16"): the
    sums kept the old dtype. They are converted once; the step equals an ExcessMTL loaded with the sums cast by hand."""
    torch.manual_seed(0)
    net = _Branchy()
    method = gh_kernels.ExcessMTL()
    h = gh_kernels.MultiTaskHarmonizer(net.parameters(), shared=net.parameters(), method=method, backend=backend)
    h.backward(net.losses(torch.randn(8, 4), True))
    net.to(torch.bfloat16)
    net.zero_grad(set_to_none=True)
    saved = method.state_dict()
    saved["state"]["sq_grad_sum"] = [None if t is None else t.to(torch.bfloat16) for t in saved["state"]["sq_grad_sum"]]
    twin = gh_kernels.ExcessMTL()
    twin.load_state_dict(saved)
    x = torch.randn(8, 4).bfloat16()
    params = list(net.parameters())
    sets = [list(torch.autograd.grad(l, params, allow_unused=True, retain_graph=True)) for l in net.losses(x, True)]
    want = gh_kernels.aggregate(sets, twin, backend="torch")
    res = h.backward(net.losses(x, True))
    assert bool(torch.isfinite(res.weights).all())
    torch.testing.assert_close(res.weights, want.weights, rtol=1e-6, atol=1e-7)


def test_13_nash_mtl_keeps_max_norm_on_rank_deficient_grams(backend):
    """Nash-MTL clipped with sqrt(w^T G w), which rounding takes to ~0 on a rank-deficient float32 Gram while the
    weights are huge: updates of length 11.7 (of 30 cases here; 46 to 4e13 in the issue) through max_norm = 1. The
    clip now uses a bound on the rounded update's length (stateful._update_norm_bound); full-rank updates keep
    torchjd's length (tests/test_multitask_torchjd.py)."""
    gen = torch.Generator().manual_seed(0)
    longest = 0.0
    for _ in range(30):
        K = int(torch.randint(3, 9, (), generator=gen))
        rank = int(torch.randint(1, K, (), generator=gen))
        J = (torch.randn(K, rank, generator=gen) @ torch.randn(rank, 500, generator=gen)).float()
        res = gh_kernels.aggregate([[row.clone()] for row in J], gh_kernels.NashMTL(max_norm=1.0), backend=backend)
        longest = max(longest, float(res.out[0].double().norm()))
    assert longest <= 1.0 + 1e-6, longest


def test_14_cagrad_float32_zero_in_hull_is_no_tie():
    """CAGrad, c < 1, float32, 0 in the hull of the gradients: the kink won a tie against optima far above the
    Gram's rounding, a zero update where the exact one (float64 Gram of the same gradients) has length >=
    (1 - c) |mean| -- on 1-2% of matrices at K <= 8 and on ~half of them at K = 9..12, where the path stopped at a
    spurious root next to the kink. Now a zero update comes only where the optimum's w^T G w (trace-normalized) is
    within 1000 times the rounding (measured: within 800)."""
    gen = torch.Generator().manual_seed(2)
    for trial in range(60):
        K = 3 + trial % 10
        n = int(torch.randint(2, 3 * K, (), generator=gen))
        J = torch.randn(K - 1, n, generator=gen, dtype=torch.float64) * torch.randn(K - 1, 1, generator=gen,
                                                                                   dtype=torch.float64).exp()
        lam = torch.rand(K - 1, generator=gen, dtype=torch.float64)
        J = torch.cat((J, -(lam @ J)[None])).float()  # 0 in the hull
        J64 = J.double()
        G64 = J64 @ J64.T
        G32 = gh_kernels.gram([[row] for row in J])
        noise = K * torch.finfo(torch.float32).eps
        mean = float(J64.mean(0).norm())
        for c in (0.1, 0.5, 0.9):
            update = gh_kernels.weights(G32, "cagrad", c=c).double() @ J64
            exact_w = gh_kernels.weights(G64, "cagrad", c=c)
            if float(update.norm()) < 1e-3 * mean and float((exact_w @ J64).norm()) >= 0.99 * (1 - c) * mean:
                w = exact_w - 1.0 / K  # the simplex point the exact weights lift: 1/K + radius / |J^T w| w
                w = w / w.sum()
                quad = float(w @ G64 @ w / G64.trace())
                assert quad <= 1000 * noise, (K, n, c, quad / noise)


STATEFUL = {"NashMTL": gh_kernels.NashMTL, "GradVac": gh_kernels.GradVac, "PCD": gh_kernels.PCD,
            "CRMOGM(GradVac)": lambda: gh_kernels.CRMOGM(gh_kernels.GradVac(), alpha=0.5), "ExcessMTL": gh_kernels.ExcessMTL}


@pytest.mark.parametrize("label", list(STATEFUL))
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "grouped"])
def test_9_state_keeps_on_a_non_finite_head_gradient(backend, label, fused):
    """A non-finite gradient outside `shared` (a task head's overflow) reached .grad, so GradScaler skips the step,
    yet the state advanced: G over the trunk was finite. The combine now flags a non-finite written value (NOTE:
    [Non-finite flag of the combine]) and the state is committed under it; the next finite step equals a run
    that never saw the poisoned step."""
    torch.manual_seed(0)
    trunk = torch.nn.Linear(4, 6)
    heads = torch.nn.ModuleList(torch.nn.Linear(6, 1) for _ in range(3))
    params = list(trunk.parameters()) + list(heads.parameters())
    method, twin = STATEFUL[label](), STATEFUL[label]()
    step = gh_kernels.MultiTaskHarmonizer(params, shared=list(trunk.parameters()), method=method, backend=backend)
    step._engine.fused = fused
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(8, 4, generator=gen) for _ in range(3)]

    def losses(x):
        f = torch.tanh(trunk(x))
        return [heads[k](f).pow(2).mean() for k in range(3)]

    def run(h, x, poison=False):
        for p in params:
            p.grad = None
        hook = heads[1].weight.register_hook(lambda g: g * float("inf")) if poison else None
        try:
            h.backward(losses(x))
        finally:
            if hook is not None:
                hook.remove()
        return [p.grad.clone() for p in params]

    run(step, xs[0])
    saved = method.state_dict()
    grads = run(step, xs[1], poison=True)
    assert all(bool(torch.isfinite(p.grad).all()) for p in trunk.parameters())
    assert not bool(torch.isfinite(grads[len(list(trunk.parameters())) + 2]).all()), "the head's inf reached .grad"
    assert str(method.state_dict()) == str(saved), "a step that wrote a non-finite value advanced the state"
    twin.load_state_dict(saved)
    reference = gh_kernels.MultiTaskHarmonizer(params, shared=list(trunk.parameters()), method=twin, backend=backend)
    want = run(reference, xs[2])
    got = run(step, xs[2])
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_9_combine_flags_what_it_writes(backend, dtype):
    """The combine's flag on every backend: 0 for finite writes, 1 for an inf or NaN input, for a float16 overflow
    of finite inputs and for an accumulated non-finite .grad; never cleared by a later finite call."""
    from gh_kernels.ops.library import op
    gen = torch.Generator().manual_seed(0)
    for K in (2, 6):
        for inject in ("none", "inf", "nan", "overflow", "accumulated"):
            if inject == "overflow" and dtype != torch.float16:
                continue
            sets = [[torch.randn(700, generator=gen).to(dtype), torch.randn(3, 5, generator=gen).to(dtype)] for _ in range(K)]
            out = [torch.randn(t.shape, generator=gen).to(dtype) for t in sets[0]]
            if inject == "inf":
                sets[1][1][2, 3] = float("inf")
            elif inject == "nan":
                sets[K - 1][0][650] = float("nan")
            elif inject == "overflow":
                sets[0][0][300], sets[1][0][300] = 60000.0, 60000.0
            elif inject == "accumulated":
                out[0][5] = float("inf")
            flag = torch.zeros(1, dtype=torch.int32)
            op("combine_", backend)(out, [t for s in sets for t in s], K, torch.ones(K), inject == "accumulated", flag)
            assert int(flag) == (inject != "none") == any(not bool(torch.isfinite(o).all()) for o in out), (K, inject)
            op("combine_", backend)(out, [t.nan_to_num() for s in sets for t in s], K, torch.ones(K), False, flag)
            assert int(flag) == (inject != "none"), "a finite call cleared the flag"
