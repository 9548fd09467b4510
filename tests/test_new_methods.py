"""FairGrad, PCD, CR-MOGM, MoDo, SDMGrad and ExcessMTL: the same weights as torchjd 0.18 on the same
matrices (over several steps for the stateful ones), K = 2..8, within the issue's 5e-3 (float64 much
tighter); through weights, aggregate and the K-loss step (MoDo and SDMGrad with two batches: the
cross-batch Gram API); their papers' properties; bad options; checkpoints; K changing under state."""
import pytest
import torch

import gh_kernels
from mtl_helpers import rel, task_matrix

A = pytest.importorskip("torchjd.aggregation")
pytest.importorskip("scipy")

KS = range(2, 9)


def cross_pair(K, gen, N=40):
    """Two batches' Jacobians of the same tasks: correlated, not equal."""
    J1 = task_matrix(K, gen, 30.0, N=N)
    return J1, J1 + 0.5 * torch.randn(K, N, generator=gen, dtype=torch.float64)


# -- FairGrad -------------------------------------------------------------------------------------
@pytest.mark.parametrize("K", KS)
def test_fairgrad_equals_torchjd(K, gen):
    for alpha in (0.5, 1.0, 2.0, 5.0):
        for cond in (1.0, 30.0, 1e3):
            J = task_matrix(K, gen, cond)
            G = J @ J.T
            ours, ref = gh_kernels.weights(G, "fairgrad", alpha=alpha), A.FairGradWeighting(alpha)(G)
            # torchjd's scipy least squares stops at its tolerances (ours solves to rounding: see the next test)
            assert rel(ours @ J, ref @ J) < 1e-4, (alpha, cond, rel(ours @ J, ref @ J))
            # the float32 Gram of float32 gradients, solved by both
            G32 = gh_kernels.gram([[row] for row in J.float()])
            ours32, ref32 = gh_kernels.weights(G32, "fairgrad", alpha=alpha), A.FairGradWeighting(alpha)(G32.double())
            assert ours32.dtype == torch.float32 and rel(ours32.double() @ J, ref32 @ J) < 5e-3


def test_fairgrad_solves_its_equation_and_does_not_conflict(gen):
    """Ban and Ji's eq. 4: G w = w^(-1/alpha), w > 0; then <g_i, d> = (G w)_i > 0 for every task."""
    for K in (2, 5, 12):
        J = task_matrix(K, gen, 1e2)
        G = J @ J.T
        for alpha in (0.3, 1.0, 4.0):
            w = gh_kernels.weights(G, "fairgrad", alpha=alpha)
            assert (w > 0).all()
            torch.testing.assert_close(G @ w, w.pow(-1.0 / alpha), rtol=1e-6, atol=0)  # cond(G) 1e2: rounding
            assert ((J @ (w @ J)) > 0).all()
    # alpha = 1 is Nash-MTL's equation: the same solution as NashMTL without its normalization and clipping
    J = task_matrix(4, gen, 10.0)
    G = J @ J.T
    nash = gh_kernels.NashMTL(max_norm=0, reg_eps=0.0).weights(G / G.norm()) / G.norm().sqrt()
    torch.testing.assert_close(gh_kernels.weights(G, "fairgrad", alpha=1.0), nash, rtol=1e-8, atol=0)


@pytest.mark.parametrize("alpha", [0, -1.0, float("inf"), float("nan"), "1", True])
def test_fairgrad_alpha_must_be_positive(alpha):
    with pytest.raises(ValueError, match="option alpha of 'fairgrad' must be a finite number > 0"):
        gh_kernels.weights(torch.eye(3), "fairgrad", alpha=alpha)
    with pytest.raises(ValueError, match="option alpha of 'fairgrad'"):
        gh_kernels.MultiTaskHarmonizer([torch.zeros(2, requires_grad=True)], method="fairgrad", alpha=alpha)


# -- PCD ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("K", KS)
def test_pcd_equals_torchjd_over_steps(K, gen):
    for tau in (0.0, 0.02, 0.5, torch.rand(K - 1, generator=gen, dtype=torch.float64)):
        ours, ref = gh_kernels.PCD(tau=tau, beta=0.9), A.PCDWeighting(tau=tau, beta=0.9)
        for step in range(4):
            J = task_matrix(K, gen, 30.0) * torch.rand(K, 1, generator=gen, dtype=torch.float64) * 3
            G = J @ J.T
            a, b = ours.weights(G) @ J, ref(G) @ J
            assert rel(a, b) < 1e-4, (tau, step, rel(a, b))


def test_pcd_cases(gen):
    g1, g2 = torch.randn(10, generator=gen, dtype=torch.float64), torch.randn(10, generator=gen, dtype=torch.float64)
    # infeasible constraints (two anti-parallel secondaries, tau > 0): the primary gradient
    J = torch.stack([g1, g2, -g2])
    torch.testing.assert_close(gh_kernels.PCD().weights(J @ J.T), torch.tensor([1.0, 0, 0], dtype=torch.float64))
    # a zero primary gradient: zero
    J = torch.stack([torch.zeros(10, dtype=torch.float64), g2, g1])
    assert torch.equal(gh_kernels.PCD().weights(J @ J.T), torch.zeros(3, dtype=torch.float64))
    # the constraints hold: <u_j, d~> >= tau for the unit rows u_j (one step with beta = eps = 0: scales 1/|g_j|),
    # where d~ = u_0 + sum mu_j u_j; the output is d~ rescaled to |g_0|, so d~ = d / (w_0 |g_0|)
    for _ in range(5):
        J = task_matrix(5, gen, 30.0)
        w = gh_kernels.PCD(tau=0.3, beta=0.0, eps=0.0).weights(J @ J.T)
        d_tilde = (w @ J) / (w[0] * J[0].norm())
        unit = J / J.norm(dim=1, keepdim=True)
        assert ((unit[1:] @ d_tilde) >= 0.3 - 1e-9).all(), unit[1:] @ d_tilde


def test_pcd_bad_options():
    for kwargs, match in (({"tau": 1.5}, "tau must be"), ({"beta": 1.0}, r"beta must be in \[0, 1\)"),
                          ({"eps": -1.0}, "eps must be"), ({"tau": torch.tensor([0.1, 2.0])}, r"tau must be in \[0, 1\]")):
        with pytest.raises(ValueError, match=match):
            gh_kernels.PCD(**kwargs)
    with pytest.raises(ValueError, match="tau of this PCD has 2 values, one per secondary task; K = 4 tasks need 3"):
        gh_kernels.weights(torch.eye(4), gh_kernels.PCD(tau=torch.tensor([0.1, 0.2])))


# -- CR-MOGM --------------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [2, 3, 5, 8])
def test_crmogm_equals_torchjd_over_steps(K, gen):
    cases = [(lambda: gh_kernels.CRMOGM("upgrad", alpha=0.7), lambda: A.CRMOGMWeighting(A.UPGradWeighting(), alpha=0.7)),
             (lambda: gh_kernels.CRMOGM("mean", alpha=0.3, initial_weights=torch.arange(1.0, K + 1)),
              lambda: A.CRMOGMWeighting(A.MeanWeighting(), alpha=0.3, initial_weights=torch.arange(1.0, K + 1, dtype=torch.float64))),
             (lambda: gh_kernels.CRMOGM("dualproj", alpha=0.0), lambda: A.CRMOGMWeighting(A.DualProjWeighting(), alpha=0.0))]
    for make_ours, make_ref in cases:
        ours, ref = make_ours(), make_ref()
        for step in range(4):
            J = task_matrix(K, gen, 30.0)
            a, b = ours.weights(J @ J.T), ref(J @ J.T)
            assert rel(a @ J, b @ J) < 1e-8, (step, rel(a @ J, b @ J))


def test_crmogm_wraps_a_stateful_method_and_checkpoints(gen):
    K = 3
    run = gh_kernels.CRMOGM(gh_kernels.GradVac(beta=0.3), alpha=0.5)
    Gs = [task_matrix(K, gen, 10.0) for _ in range(6)]
    Gs = [J @ J.T for J in Gs]
    straight = [run.weights(G) for G in Gs]
    first = gh_kernels.CRMOGM(gh_kernels.GradVac(beta=0.3), alpha=0.5)
    for G in Gs[:3]:
        first.weights(G)
    saved = first.state_dict()
    resumed = gh_kernels.CRMOGM(gh_kernels.GradVac(beta=0.3), alpha=0.5)
    resumed.load_state_dict(saved)
    for G, w in zip(Gs[3:], straight[3:]):
        assert torch.equal(resumed.weights(G), w)
    with pytest.raises(ValueError, match="state_dict and this CRMOGM differ in wrapping a stateful method"):
        gh_kernels.CRMOGM("upgrad", alpha=0.5).load_state_dict(saved)


def test_crmogm_bad_options():
    with pytest.raises(ValueError, match=r"alpha must be a finite number in \[0.0, 1.0\]"):
        gh_kernels.CRMOGM("upgrad", alpha=1.5)
    with pytest.raises(ValueError, match="method must be one of"):
        gh_kernels.CRMOGM("upgradd")
    with pytest.raises(ValueError, match="method 'mgda' takes no options"):
        gh_kernels.CRMOGM("mgda", c=0.3)
    with pytest.raises(ValueError, match="initial_weights of this CRMOGM has 2 values; K = 3"):
        gh_kernels.weights(torch.eye(3), gh_kernels.CRMOGM("mean", initial_weights=torch.ones(2)))


# -- MoDo and SDMGrad: the cross-batch matrix ------------------------------------------------------
@pytest.mark.parametrize("K", KS)
def test_modo_and_sdmgrad_equal_torchjd_over_steps(K, gen):
    pairs = [(gh_kernels.MoDo(gamma=0.3, rho=0.05), A.MoDoWeighting(gamma=0.3, rho=0.05)),
             (gh_kernels.SDMGrad(), A.SDMGradWeighting()),
             (gh_kernels.SDMGrad(lr=2.0, momentum=0.0, n_iter=5, lambda_=0.0), A.SDMGradWeighting(lr=2.0, momentum=0.0, n_iter=5, lambda_=0.0))]
    for ours, ref in pairs:
        for step in range(5):
            J1, J2 = cross_pair(K, gen)
            a, b = ours.weights(J1 @ J2.T), ref(J1 @ J2.T)
            assert rel(a, b) < 1e-12, (type(ours).__name__, step, rel(a, b))


def test_cross_batch_aggregate_is_one_gram_over_both_batches(backend, gen):
    K = 3
    sets1 = [[torch.randn(5, 4, generator=gen), torch.randn(9, generator=gen)] for _ in range(K)]
    sets2 = [[t + 0.3 * torch.randn(t.shape, generator=gen) for t in s] for s in sets1]
    J1 = torch.stack([torch.cat([t.reshape(-1) for t in s]) for s in sets1]).double()
    J2 = torch.stack([torch.cat([t.reshape(-1) for t in s]) for s in sets2]).double()
    ref = A.MoDoWeighting(gamma=0.5)
    ours = gh_kernels.MoDo(gamma=0.5)
    for _ in range(3):
        res = gh_kernels.aggregate(sets1, ours, second_batch=sets2, backend=backend)
        w = ref(res.gram.double())  # torchjd on the same float32 cross matrix (checked against J1 J2^T below)
        assert res.gram.shape == (K, K)
        torch.testing.assert_close(res.gram.double(), J1 @ J2.T, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(res.weights.double(), w, rtol=1e-5, atol=1e-6)
        got = torch.cat([t.reshape(-1) for t in res.out]).double()
        torch.testing.assert_close(got, w @ (J1 + J2) / 2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("K", [3, 5])
def test_cross_batch_training_step_equals_torchjd(backend, K, gen):
    from models import KHeadNet
    net = KHeadNet(K)
    batches = [(torch.randn(16, 6, generator=gen), torch.randn(16, K, generator=gen)) for _ in range(2)]
    params = list(net.parameters())
    trunk = list(net.trunk.parameters())

    def jac(losses, over):
        rows = []
        for loss in losses:
            grads = torch.autograd.grad(loss, over, allow_unused=True, retain_graph=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, over)]))
        return torch.stack(rows)

    for ours, ref in ((gh_kernels.SDMGrad(), A.SDMGradWeighting()), (gh_kernels.MoDo(), A.MoDoWeighting())):
        step = gh_kernels.MultiTaskHarmonizer(params, method=ours, backend=backend)
        for _ in range(3):
            losses = [net.losses(*b) for b in batches]
            cross = jac(losses[0], trunk).double() @ jac(losses[1], trunk).double().T  # over the shared trunk, as the step
            J = jac(losses[0], params) + jac(losses[1], params)
            net.zero_grad(set_to_none=True)
            result = step.backward(losses[0], second_losses=losses[1])
            torch.testing.assert_close(result.gram.double(), cross, rtol=1e-4, atol=1e-5)
            # torchjd on the step's own float32 matrix: SDMGrad's 20 projected steps (lr 10) can turn a rounding
            # difference in A into another vertex of the simplex
            w = ref(result.gram.double())
            torch.testing.assert_close(result.weights.double(), w, rtol=1e-4, atol=1e-6)
            got = torch.cat([p.grad.reshape(-1) for p in params])
            torch.testing.assert_close(got.double(), w @ J.double() / 2, rtol=1e-4, atol=1e-5)


def test_cross_batch_bad_input(gen):
    sets = [[torch.randn(4, generator=gen)] for _ in range(3)]
    with pytest.raises(ValueError, match="MoDo weighs from two independent batches"):
        gh_kernels.aggregate(sets, gh_kernels.MoDo())
    with pytest.raises(ValueError, match="second_batch has 2 gradient sets but grads has 3"):
        gh_kernels.aggregate(sets, gh_kernels.MoDo(), second_batch=sets[:2])
    with pytest.raises(ValueError, match="only MoDo and SDMGrad take a second batch; method 'upgrad' does not"):
        gh_kernels.aggregate(sets, "upgrad", second_batch=sets)
    with pytest.raises(ValueError, match="G must be a K x K Gram matrix"):
        gh_kernels.weights(torch.zeros(3, 4), gh_kernels.SDMGrad())
    modo = gh_kernels.MoDo()
    gh_kernels.weights(torch.eye(3), modo)
    state = modo.lam.clone()
    with pytest.raises(ValueError, match="holds the state of K = 3 tasks; got K = 4"):
        gh_kernels.weights(torch.eye(4), modo)
    assert torch.equal(modo.lam, state)
    x = torch.zeros(3, requires_grad=True)
    step = gh_kernels.MultiTaskHarmonizer([x], method=gh_kernels.SDMGrad())
    with pytest.raises(ValueError, match="second_losses holds 1 losses but losses holds 2"):
        step.backward([x.sum(), (2 * x).sum()], second_losses=[x.sum()])
    with pytest.raises(ValueError, match="SDMGrad weighs from two independent batches"):
        step.backward([x.sum(), (2 * x).sum()])
    assert x.grad is None
    for kwargs, match in (({"gamma": 0.0}, "gamma must be"), ({"rho": -1.0}, "rho must be")):
        with pytest.raises(ValueError, match=match):
            gh_kernels.MoDo(**kwargs)
    for kwargs, match in (({"lr": 0.0}, "lr must be"), ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
                          ({"n_iter": 0}, "n_iter must be"), ({"lambda_": -0.1}, "lambda_ must be"),
                          ({"pref_vector": [1.0, float("nan")]}, "pref_vector of 'sdmgrad' must be finite")):
        with pytest.raises(ValueError, match=match):
            gh_kernels.SDMGrad(**kwargs)


# -- ExcessMTL ------------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [2, 3, 5, 8])
def test_excess_mtl_equals_torchjd_over_steps(K, gen):
    for warmup in (0, 2):
        ours, ref = gh_kernels.ExcessMTL(robust_step_size=0.5, n_warmup_steps=warmup), A.ExcessMTLWeighting(0.5, warmup)
        for step in range(5):
            sets = [[torch.randn(4, 3, generator=gen) * (k + 1), torch.randn(50, generator=gen)] for k in range(K)]
            J = torch.stack([torch.cat([t.reshape(-1) for t in s]) for s in sets])
            res = gh_kernels.aggregate(sets, ours)
            w = ref(J)
            assert float((res.weights - w).abs().max()) < 1e-5 * float(w.abs().max()), (warmup, step)


def test_excess_mtl_in_the_training_step_and_its_checkpoint(gen):
    from models import KHeadNet
    K = 3
    net = KHeadNet(K)
    data = [(torch.randn(8, 6, generator=gen), torch.randn(8, K, generator=gen)) for _ in range(5)]

    def run(method, batches):
        step = gh_kernels.MultiTaskHarmonizer(net.parameters(), method=method)
        out = []
        for x, y in batches:
            net.zero_grad(set_to_none=True)
            out.append(step.backward(net.losses(x, y)).weights)
        return out

    straight = run(gh_kernels.ExcessMTL(n_warmup_steps=1), data)
    first = gh_kernels.ExcessMTL(n_warmup_steps=1)
    run(first, data[:2])
    resumed = gh_kernels.ExcessMTL(n_warmup_steps=1)
    resumed.load_state_dict(first.state_dict())
    for a, b in zip(run(resumed, data[2:]), straight[2:]):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="ExcessMTL reads the gradients"):
        gh_kernels.weights(torch.eye(3), gh_kernels.ExcessMTL())
    for kwargs, match in (({"robust_step_size": 0.0}, "robust_step_size must be"), ({"n_warmup_steps": -1}, "n_warmup_steps must be")):
        with pytest.raises(ValueError, match=match):
            gh_kernels.ExcessMTL(**kwargs)


# -- every stateful method: K changing, non-finite steps, checkpoints --------------------------------
STATEFUL = [lambda: gh_kernels.PCD(beta=0.5), lambda: gh_kernels.CRMOGM("upgrad"), lambda: gh_kernels.MoDo(),
            lambda: gh_kernels.SDMGrad(n_iter=4)]


@pytest.mark.parametrize("make", STATEFUL, ids=["PCD", "CRMOGM", "MoDo", "SDMGrad"])
def test_stateful_rules(make, gen):
    method = make()
    Gs = [task_matrix(3, gen, 10.0) for _ in range(4)]
    Gs = [J @ J.T for J in Gs]
    gh_kernels.weights(Gs[0], method)
    before = method.state_dict()
    with pytest.raises(ValueError, match="holds the state of K = 3 tasks; got K = 4"):
        gh_kernels.weights(torch.eye(4), method)
    bad = Gs[1].clone()
    bad[0, 1] = float("inf")
    gh_kernels.weights(bad, method)  # a non-finite step changes no state
    after = method.state_dict()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    straight = [gh_kernels.weights(G, method) for G in Gs[1:]]
    resumed = make()
    resumed.load_state_dict(after)
    for G, w in zip(Gs[1:], straight):
        assert torch.equal(gh_kernels.weights(G, resumed), w)


@pytest.mark.parametrize("K", [5, 8])
def test_cross_batch_above_the_kernels_sets(backend, K, gen):
    """2K > 8 sets: the cross matrix from gram calls over blocks of tasks, the combine in blocks of sets (or,
    when out is an input of a later block, one call on the torch backend): the same as the 2K-set reference."""
    sizes = (7, 33) if backend == "triton" else (7, 33, 300)
    sets1 = [[torch.randn(n, generator=gen) for n in sizes] for _ in range(K)]
    sets2 = [[t + 0.3 * torch.randn(t.shape, generator=gen) for t in s] for s in sets1]
    J1 = torch.stack([torch.cat(s) for s in sets1]).double()
    J2 = torch.stack([torch.cat(s) for s in sets2]).double()
    res = gh_kernels.aggregate(sets1, gh_kernels.SDMGrad(), second_batch=sets2, backend=backend)
    torch.testing.assert_close(res.gram.double(), J1 @ J2.T, rtol=1e-5, atol=1e-5)
    w = A.SDMGradWeighting()(res.gram.double())  # on the same float32 matrix: SDMGrad's 20 steps amplify its rounding
    torch.testing.assert_close(res.weights.double(), w, rtol=1e-4, atol=1e-6)
    expected = w @ (J1 + J2) / 2
    torch.testing.assert_close(torch.cat(res.out).double(), expected, rtol=1e-5, atol=1e-5)
    for out in (sets1[0], sets2[0]):  # in place into a set of the first block, and of a later one
        copy1, copy2 = [[t.clone() for t in s] for s in sets1], [[t.clone() for t in s] for s in sets2]
        target = copy1[0] if out is sets1[0] else copy2[0]
        gh_kernels.aggregate(copy1, gh_kernels.SDMGrad(), second_batch=copy2, out=target, backend=backend)
        torch.testing.assert_close(torch.cat(target).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("K", [3, 5])
def test_cross_batch_grouped_path_equals_the_fused_one(K, gen):
    from models import KHeadNet
    net = KHeadNet(K)
    batches = [(torch.randn(8, 6, generator=gen), torch.randn(8, K, generator=gen)) for _ in range(2)]
    grads = []
    for fused in (True, False):
        step = gh_kernels.MultiTaskHarmonizer(net.parameters(), method=gh_kernels.MoDo(gamma=0.5))
        step._engine.fused = fused
        net.zero_grad(set_to_none=True)
        result = step.backward(net.losses(*batches[0]), second_losses=net.losses(*batches[1]))
        grads.append((result.weights, result.gram, [p.grad.clone() for p in net.parameters()]))
    (w_a, g_a, d_a), (w_b, g_b, d_b) = grads
    torch.testing.assert_close(w_a, w_b)
    torch.testing.assert_close(g_a, g_b)
    for a, b in zip(d_a, d_b):
        torch.testing.assert_close(a, b)
