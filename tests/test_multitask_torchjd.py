"""The multi-task methods against torchjd 0.18 (a test-only dependency) on the same matrices, K = 2..8,
cond(G) up to 1e4: the same update within 5e-3 relative (the issue's target). Float64 matrices are
compared tightly (both sides exact up to the solvers' tolerances). For float32 gradients, both
libraries get the same rounded matrix: the fused kernel's float32 Gram, which torchjd's weighting
solves in float64 (ConFIG, which torchjd computes from J, gets the float32 J), within 5e-3. How far
float32 rounding of G moves an update is the method's conditioning, common to both libraries: at
cond 1e4, IMTL-G and Aligned-MTL updates move by up to ~3e-2 in torchjd's own float32 runs.

Documented differences: torchjd's MGDA is Frank-Wolfe stopped at eps 1e-3, so it may stop short of the
min-norm point; we check ours is never longer than torchjd's and equals an exact solve (in
test_multitask_methods.py). torchjd's Nash-MTL solver (cvxpy CCP) often stops short of the solution
along the right direction; see test_nash_mtl_over_steps.
"""
import warnings

import pytest
import torch

import gh_kernels
from mtl_helpers import rel, task_matrix

A = pytest.importorskip("torchjd.aggregation")
pytest.importorskip("cvxpy")
pytest.importorskip("quadprog")
warnings.filterwarnings("ignore", module="cvxpy")

KS = range(2, 9)
CONDS = (1.0, 30.0, 1e3, 1e4)
TOL = 5e-3


def torchjd_weighting(method):
    return {"mean": A.MeanWeighting(), "sum": A.SumWeighting(), "cagrad": A.CAGradWeighting(c=0.4),
            "imtl-g": A.IMTLGWeighting(), "aligned-mtl": A.AlignedMTLWeighting(), "upgrad": A.UPGradWeighting(),
            "dualproj": A.DualProjWeighting(), "mgda": A.MGDAWeighting()}[method]


def torchjd_update(method, J):
    if method == "config":
        return A.ConFIG()(J)
    return torchjd_weighting(method)(J @ J.T) @ J


def matrices(K, gen):
    for cond in CONDS:
        for common in (0.0, 0.5):
            yield cond, task_matrix(K, gen, cond, common=common)


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("method", ["mean", "sum", "upgrad", "dualproj", "cagrad", "imtl-g", "aligned-mtl", "config"])
def test_same_update_as_torchjd(method, K, gen):
    for cond, J in matrices(K, gen):
        ref = torchjd_update(method, J)
        G = J @ J.T
        ours64 = gh_kernels.weights(G, method) @ J
        assert rel(ours64, ref) < (2e-3 if method == "cagrad" else 1e-8), (method, K, cond, rel(ours64, ref))
        # float32: the fused kernel's float32 Gram G32 of a float32 matrix; torchjd's weighting (in float64)
        # on that same G32, so both see the same rounded matrix (ConFIG: torchjd takes J32 itself)
        J32 = J.float()
        G32 = gh_kernels.gram([[row] for row in J32])
        J64 = J32.double()
        ref32 = A.ConFIG()(J64) if method == "config" else torchjd_weighting(method)(G32.double()) @ J64
        ours32 = gh_kernels.weights(G32, method).double() @ J64
        assert rel(ours32, ref32) < TOL, (method, K, cond, rel(ours32, ref32))


@pytest.mark.parametrize("K", KS)
def test_pcgrad_same_draws_as_torchjd(K, gen):
    for cond, J in matrices(K, gen):
        seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
        torch.manual_seed(seed)
        ref = A.PCGradWeighting()(J @ J.T) @ J
        ours = gh_kernels.weights(J @ J.T, "pcgrad", generator=torch.Generator().manual_seed(seed)) @ J
        assert rel(ours, ref) < TOL, (K, cond)


@pytest.mark.parametrize("K", KS)
def test_mgda_never_longer_than_torchjd(K, gen):
    for cond, J in matrices(K, gen):
        G = J @ J.T
        ours, ref = gh_kernels.weights(G, "mgda"), A.MGDAWeighting()(G)
        assert ours @ G @ ours <= (ref @ G @ ref) * (1 + 1e-9)
        if K == 2:  # Frank-Wolfe's exact line search solves K = 2 in one step
            assert rel(ours @ J, ref @ J) < 1e-8


@pytest.mark.parametrize("K", KS)
def test_gradvac_over_steps(K, gen):
    ours = gh_kernels.GradVac()
    ref = A.GradVacWeighting()
    for step in range(4):
        J = task_matrix(K, gen, 1e3, common=0.3 * (step % 2))
        G = J @ J.T
        seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
        torch.manual_seed(seed)
        r = ref(G) @ J
        ours.generator = torch.Generator().manual_seed(seed)
        assert rel(ours.weights(G) @ J, r) < 1e-9, (K, step)


@pytest.mark.parametrize("K", KS)
def test_nash_mtl_over_steps(K, gen):
    """torchjd's solver often stops on its "alpha barely moved" rule away from the solution of
    G alpha = 1/alpha, but along the right direction (measured: the same alpha up to a factor of
    0.9-1.0). So: with the default max_norm=1 and updates longer than 1 (both clipped to norm 1),
    the updates agree within 5e-3; unclipped, their directions do; ours solves the equation."""
    clipped, unclipped = (gh_kernels.NashMTL(), A.NashMTL(n_tasks=K)), (gh_kernels.NashMTL(max_norm=0), A.NashMTL(n_tasks=K, max_norm=0))
    for step in range(3):
        J = 10 * task_matrix(K, gen, 1e2, common=0.5)
        G = J @ J.T
        ours, ref = clipped
        o, r = ours.weights(G) @ J, ref(J)
        assert abs(r.norm().item() - 1) < 1e-9 and rel(o, r) < TOL, (K, step, rel(o, r))
        ours, ref = unclipped
        o, r = ours.weights(G) @ J, ref(J)
        assert rel(o / o.norm(), r / r.norm()) < TOL, (K, step)
        Gn, alpha = G / G.norm(), ours.alpha
        assert ((Gn @ alpha - 1 / alpha).norm() / (1 / alpha).norm()) < 1e-5


@pytest.mark.parametrize("K", range(3, 13))
def test_krum_same_weights_as_torchjd(K, gen):
    """Krum from the Gram matrix, for every valid (n_byzantine, n_selected), on torchjd's kind of inputs
    and on a matrix with outliers (Byzantine rows far from the others)."""
    for cond, J in matrices(K, gen):
        outliers = J.clone()
        outliers[: max(1, K // 4)] *= 25.0
        for M in (J, outliers):
            G = M @ M.T
            for f in range(0, K - 2):
                for m in sorted({1, K - f, K}):
                    ref = A.KrumWeighting(n_byzantine=f, n_selected=m)(G)
                    ours = gh_kernels.weights(G, "krum", n_byzantine=f, n_selected=m).double()
                    if torch.equal(ours, ref):
                        continue
                    # only a tie may differ (equal scores up to rounding, e.g. cond 1: every distance equal):
                    # then both selections hold m of the lowest scores
                    d = (G.diagonal()[None] + G.diagonal()[:, None] - 2 * G).clamp_min(0).sqrt()
                    scores = torch.topk(d, K - f - 1, largest=False).values[:, 1:].sum(1)
                    cut = torch.sort(scores).values[m - 1]
                    for w in (ours, ref):
                        assert torch.all(scores[w > 0] <= cut * (1 + 1e-9)), (K, f, m, cond)
                    assert torch.isclose(torch.sort(scores).values[m], cut, rtol=1e-9), (K, f, m, cond, "not a tie")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_same_draws_as_torchjd(dtype, gen):
    """RLW: the same seed of the global generator gives torchjd's weights; generator= draws from it."""
    for K in (2, 5, 12):
        J = torch.randn(K, 9, generator=gen, dtype=dtype)
        torch.manual_seed(K)
        ref = A.RandomWeighting()(J)
        torch.manual_seed(K)
        ours = gh_kernels.weights(J @ J.T, "random")
        torch.testing.assert_close(ours, ref.to(ours.dtype))
        a = gh_kernels.weights(J @ J.T, "random", generator=torch.Generator().manual_seed(1))
        b = gh_kernels.weights(J @ J.T, "random", generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and torch.allclose(a.sum(), torch.ones((), dtype=a.dtype)) and (a > 0).all()


@pytest.mark.parametrize("options,match", [({"n_byzantine": 3}, "n_byzantine of 'krum' must be at most K - 3 = 2"),
                                           ({"n_byzantine": -1}, "n_byzantine of 'krum' must be an integer >= 0"),
                                           ({"n_selected": 6}, "n_selected of 'krum' must be at most K = 5"),
                                           ({"n_selected": 0}, "n_selected of 'krum' must be an integer >= 1"),
                                           ({"n_selected": 1.5}, "n_selected of 'krum' must be an integer")])
def test_krum_options_out_of_range_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        gh_kernels.weights(torch.eye(5), "krum", **options)
    with pytest.raises(ValueError, match="n_byzantine"):
        gh_kernels.weights(torch.eye(2), "krum")  # K = 2 < 0 + 3


def test_krum_options_are_checked_for_the_smallest_k_they_allow():
    """A training step checks options before K is known: valid ones pass, bad ones are named."""
    x = torch.zeros(3, requires_grad=True)
    gh_kernels.MultiTaskHarmonizer([x], method="krum", n_byzantine=2, n_selected=3)
    with pytest.raises(ValueError, match="n_selected of 'krum' must be an integer >= 1"):
        gh_kernels.MultiTaskHarmonizer([x], method="krum", n_selected=0)


def _zero_in_hull(K, gen, N=20):
    """K gradients with 0 strictly inside their convex hull (the last is minus a positive mix of the others),
    as torchjd's stationary-point samplers draw them."""
    J0 = torch.randn(K - 1, N, generator=gen, dtype=torch.float64)
    lam = torch.rand(K, generator=gen, dtype=torch.float64) + 0.1
    return torch.cat([J0, (-(lam[:-1, None] * J0).sum(0) / lam[-1])[None]])


@pytest.mark.parametrize("c", [0.4, 1.0, 2.0])
def test_cagrad_at_a_stationary_point_in_float32(c, gen):
    """0 in the hull of float32 gradients: the optimum is the kink J^T w = 0, which no support's closed form
    reaches (the min-norm point is a candidate now). c >= 1: no conflict (the exact update is 0); every c:
    torchjd's update on the same float32 Gram within 1e-3 of the largest gradient (was up to 34% at c = 2)."""
    for i in range(60):
        K = 3 + i % 6
        J = _zero_in_hull(K, gen).float()
        G = gh_kernels.gram([[row] for row in J])
        J64 = J.double()
        d = gh_kernels.weights(G, "cagrad", c=c).double() @ J64
        scale = float(J64.norm(dim=1).max())
        if c >= 1:
            assert float((J64 @ d).min()) >= -1e-4 * scale ** 2, (K, c)
        ref = A.CAGradWeighting(c=c)(G.double()) @ J64
        assert float((d - ref).norm()) <= 1e-3 * scale, (K, c, float((d - ref).norm()) / scale)


def test_one_task_equals_torchjd(gen):
    """K = 1 (issue #28): every method runs on one gradient, with torchjd 0.18's update for one row (1 for most
    methods, 1 + c for CAGrad, FairGrad's root of G w = 1/w). torchjd's Nash-MTL and Krum refuse one row: ours
    gives Nash's solution on the normalized Gram (1), clipped at max_norm, and Krum refuses K < n_byzantine + 3."""
    J = torch.randn(1, 24, generator=gen, dtype=torch.float64)
    G = J @ J.T
    ref = {"mean": A.Mean(), "sum": A.Sum(), "pcgrad": A.PCGrad(), "mgda": A.MGDA(), "cagrad": A.CAGrad(c=0.4),
           "imtl-g": A.IMTLG(), "aligned-mtl": A.AlignedMTL(), "upgrad": A.UPGrad(), "dualproj": A.DualProj(),
           "config": A.ConFIG(), "fairgrad": A.FairGrad(alpha=1.0), "random": A.Random()}
    for method, agg in ref.items():
        assert rel(gh_kernels.weights(G, method) @ J, agg(J)) < 1e-12, method
    for ours, theirs in ((gh_kernels.GradVac(), A.GradVac()), (gh_kernels.PCD(), A.PCD())):
        assert rel(gh_kernels.weights(G, ours) @ J, theirs(J)) < 1e-12, type(ours).__name__
    for method, options in (("trimmed-mean", {"trim_number": 0}), ("graddrop", {})):
        torch.testing.assert_close(gh_kernels.aggregate([[J[0]]], method, **options).out[0], J[0])
    assert rel(gh_kernels.aggregate([[J[0]]], gh_kernels.ExcessMTL()).out[0], J[0]) < 1e-12
    assert rel(gh_kernels.aggregate([[J[0]]], gh_kernels.CRMOGM("upgrad")).out[0], J[0]) < 1e-12
    assert torch.equal(gh_kernels.aggregate([[J[0]]], gh_kernels.MoDo(), second_batch=[[J[0]]]).weights,
                       torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(gh_kernels.weights(G, gh_kernels.NashMTL(max_norm=1e9)), torch.ones(1, dtype=torch.float64))  # reg_eps
    torch.testing.assert_close(gh_kernels.weights(G, gh_kernels.NashMTL(max_norm=1.0)), 1 / G[0].sqrt())  # |g| > 1
    with pytest.raises(ValueError, match="Krum needs K >= n_byzantine \\+ 3"):
        gh_kernels.weights(G, "krum")


def test_one_loss_training_step_is_its_gradient(gen):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    x = torch.randn(5, 4, generator=gen)
    loss = lambda: model(x).pow(2).mean()  # noqa: E731
    want = torch.autograd.grad(loss(), list(model.parameters()))
    h = gh_kernels.MultiTaskHarmonizer(model.parameters(), method="mgda")
    res = h.backward([loss()])
    assert res.weights.tolist() == [1.0]
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w)
