"""Every number of tasks (issue #28): K = 13..64 against torchjd 0.18 and against exact float64 solutions.

Above 8 tasks the solvers iterate instead of enumerating 2^K supports (gh_kernels/weighting/solvers.py: NOTE:
[Primal active set above 8 tasks], [Wolfe's min-norm point], [CAGrad's homotopy]). Checked:
torchjd's update to 1e-8 in float64 (CAGrad: 2e-3, torchjd's cvxpy tolerance; MGDA: never longer than
torchjd's Frank-Wolfe, which stops at eps 1e-3); the exact solutions to 1e-8 (quadprog for the QPs, the
KKT conditions for CAGrad); torchjd's update on the same float32 Gram within 5e-3 (the conditioning of
cond 1e3 matrices, as at K <= 8); degenerate matrices (rank-deficient, duplicated rows, 0 in the hull).
CI runs K = 13 (and K = 64 for the solvers on one matrix each); ``--run-slow`` adds 20, 32, 40, 50 and 64 to
every test, and a stress profile of the active-set method.
"""
import warnings

import numpy as np
import pytest
import torch

import gh_kernels
from gh_kernels.weighting import solvers
from gh_kernels.weighting.linalg import normalize, regularize
from gh_kernels.weighting.rules import MIN_NORM_REG
from mtl_helpers import rel, task_matrix

A = pytest.importorskip("torchjd.aggregation")
quadprog = pytest.importorskip("quadprog")
warnings.filterwarnings("ignore", module="cvxpy")

KS = [13] + [pytest.param(K, marks=pytest.mark.slow) for K in (20, 32, 40, 50, 64)]
TOL32 = 5e-3


def matrices(K, gen):
    """torchjd's kind of matrices (cond 1 and 1e3, with and without a common direction) and degenerate ones."""
    N = 2 * K + 8
    yield "cond 1", task_matrix(K, gen, 1.0, N=N)
    yield "cond 1e3, common", task_matrix(K, gen, 1e3, N=N, common=0.5)
    rank = max(1, K // 3)
    yield "rank-deficient", (torch.randn(K, rank, generator=gen, dtype=torch.float64)
                             @ torch.randn(rank, N, generator=gen, dtype=torch.float64))
    J = torch.randn(K, N, generator=gen, dtype=torch.float64)
    J[K // 2:] = J[:K - K // 2].clone()
    yield "duplicated rows", J
    J0 = torch.randn(K - 1, N, generator=gen, dtype=torch.float64)
    lam = torch.rand(K, generator=gen, dtype=torch.float64) + 0.1
    yield "0 in the hull", torch.cat([J0, (-(lam[:-1, None] * J0).sum(0) / lam[-1])[None]])


WEIGHTINGS = {"mean": lambda K: A.MeanWeighting(), "sum": lambda K: A.SumWeighting(),
              "upgrad": lambda K: A.UPGradWeighting(), "dualproj": lambda K: A.DualProjWeighting(),
              "cagrad": lambda K: A.CAGradWeighting(c=0.4), "imtl-g": lambda K: A.IMTLGWeighting(),
              "aligned-mtl": lambda K: A.AlignedMTLWeighting()}


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("method", list(WEIGHTINGS) + ["config", "fairgrad"])
def test_same_update_as_torchjd(method, K, gen):
    for label, J in matrices(K, gen):
        if method == "config":
            ref = A.ConFIG()(J)
        elif method == "fairgrad":
            if label in ("0 in the hull", "rank-deficient"):  # no solution of G w = 1/w exists with 0 in the hull
                continue  # (test_method_properties.py), and K rows of rank K / 3 hold 0 in their hull
            ref = A.FairGrad(alpha=1.0)(J)
        else:
            ref = WEIGHTINGS[method](K)(J @ J.T) @ J
        G = J @ J.T
        ours = gh_kernels.weights(G, method) @ J
        tol = 2e-3 if method == "cagrad" else 1e-8
        if method in ("imtl-g", "aligned-mtl", "config", "fairgrad") and label in ("rank-deficient", "duplicated rows"):
            tol = 1e-6  # a pseudo-inverse (or FairGrad's root) of a singular matrix: the rank cut's rounding
        assert rel(ours, ref) < tol, (method, K, label, rel(ours, ref))
        if method in ("config", "fairgrad") or label != "cond 1e3, common":
            continue
        J32 = J.float()
        G32 = gh_kernels.gram([[row] for row in J32])
        ref32 = WEIGHTINGS[method](K)(G32.double()) @ J32.double()
        ours32 = gh_kernels.weights(G32, method).double() @ J32.double()
        assert rel(ours32, ref32) < TOL32, (method, K, label, rel(ours32, ref32))


def test_solvers_at_64_tasks(gen):
    """K = 64 in every run: UPGrad, DualProj and CAGrad equal torchjd's update, MGDA quadprog's min-norm point."""
    J = task_matrix(64, gen, 1e3, N=136, common=0.5)
    G = J @ J.T
    for method in ("upgrad", "dualproj", "cagrad"):
        ref = WEIGHTINGS[method](64)(G) @ J
        assert rel(gh_kernels.weights(G, method) @ J, ref) < (2e-3 if method == "cagrad" else 1e-8), method
    exact = _quadprog_min_norm(regularize(normalize(G, 1e-20), MIN_NORM_REG))
    assert float(((gh_kernels.weights(G, "mgda") - exact) @ J).norm()) <= 1e-8 * float(J.norm(dim=1).max())


def _quadprog_nonneg(Q, c):
    """argmin_{z >= 0} z^T Q z / 2 + c^T z by quadprog (float64, an independent active-set solver)."""
    K = Q.shape[0]
    return torch.from_numpy(quadprog.solve_qp(Q.numpy(), -c.numpy(), np.eye(K), np.zeros(K))[0])


def _quadprog_min_norm(G):
    K = G.shape[0]
    C = np.concatenate([np.ones((K, 1)), np.eye(K)], axis=1)
    return torch.from_numpy(quadprog.solve_qp(G.numpy(), np.zeros(K), C, np.concatenate([[1.0], np.zeros(K)]), meq=1)[0])


@pytest.mark.parametrize("K", KS)
def test_mgda_is_the_exact_min_norm_point(K, gen):
    """MGDA equals quadprog's min-norm point of the same (normalized, regularized) Gram: the updates within 1e-8
    of the largest gradient (where 0 is in the hull, or nearly, the min-norm value is the regularization, 1e-10,
    and both solvers meet the KKT conditions only to ~1e-7 of it), and never longer than torchjd's Frank-Wolfe."""
    for label, J in matrices(K, gen):
        G = J @ J.T
        ours = gh_kernels.weights(G, "mgda")
        exact = _quadprog_min_norm(regularize(normalize(G, 1e-20), MIN_NORM_REG))
        assert float(((ours - exact) @ J).norm()) <= 1e-8 * float(J.norm(dim=1).max()), (K, label, gen.initial_seed())
        theirs = A.MGDAWeighting()(G)
        assert ours @ G @ ours <= (theirs @ G @ theirs) * (1 + 1e-9), (K, label)


@pytest.mark.parametrize("K", KS)
def test_pcd_dual_is_quadprogs(K, gen):
    """PCD's dual (a nonnegative QP) solved by pivoting equals quadprog's solution."""
    for label, J in matrices(K, gen):
        M = J @ J.T
        Q = M / M.trace() + 1e-3 * torch.eye(K, dtype=torch.float64)
        b = torch.randn(K, generator=gen, dtype=torch.float64) / K
        ours, exact = solvers.nonneg_qp(Q, b), _quadprog_nonneg(Q, -b)
        assert float((ours - exact).norm()) <= 1e-8 * max(float(exact.norm()), 1e-3), (K, label)
        assert rel(gh_kernels.weights(M, gh_kernels.PCD()) @ J, A.PCD()(J)) < 1e-8, (K, label)


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("c", [0.4, 2.0])
def test_cagrad_meets_its_kkt_conditions(K, c, gen):
    """CAGrad's simplex problem min b^T w + r sqrt(w^T G w): the solution's KKT conditions within 1e-6 of the
    gradient's terms: float64 rounding times the conditioning of G_SS, up to 1e10 where the regularization
    (MIN_NORM_REG) is all that separates duplicated or dependent gradients (an exact optimum; torchjd's cvxpy
    solve agrees to 2e-3 above). A twin gradient left behind on the path gave residuals of 3e-3 to 8e-2."""
    for label, J in matrices(K, gen):
        Gn = normalize(J @ J.T, 1e-4)
        b, r = Gn.sum(1) / K, c * (Gn.sum() / K ** 2).sqrt()
        G = regularize(Gn, MIN_NORM_REG)
        w = solvers.cagrad_simplex(G, b, r, 0.0)
        assert abs(float(w.sum()) - 1) < 1e-12 and float(w.min()) >= 0, (K, label)
        s = (w @ G @ w).sqrt()
        grad = b + r / s * (G @ w)
        on = w > 0
        nu = grad[on].mean()
        scale = float(b.abs().max() + r / s * (G @ w).abs().max())  # the size of the gradient's two terms
        assert float((grad[on] - nu).abs().max()) <= 1e-6 * scale, (K, label, "stationary on the support")
        off = torch.cat([grad[~on] - nu, grad.new_zeros(1)])
        assert float(off.min()) >= -1e-6 * scale, (K, label, "no descent off the support")


@pytest.mark.parametrize("K", [13, pytest.param(40, marks=pytest.mark.slow)])
def test_pcgrad_gradvac_and_nash_same_as_torchjd(K, gen):
    J = task_matrix(K, gen, 1e2, N=2 * K + 8, common=0.5)
    G = J @ J.T
    seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
    torch.manual_seed(seed)
    ref = A.PCGradWeighting()(G) @ J
    ours = gh_kernels.weights(G, "pcgrad", generator=torch.Generator().manual_seed(seed)) @ J
    assert rel(ours, ref) < 1e-8
    torch.manual_seed(seed)
    ref = A.GradVacWeighting()(G) @ J
    gv = gh_kernels.GradVac()
    gv.generator = torch.Generator().manual_seed(seed)
    assert rel(gv.weights(G) @ J, ref) < 1e-9
    assert rel(gh_kernels.weights(G, gh_kernels.NashMTL()) @ J, A.NashMTL(n_tasks=K)(J)) < TOL32


@pytest.mark.parametrize("K", [13, pytest.param(40, marks=pytest.mark.slow)])
def test_krum_same_weights_as_torchjd(K, gen):
    J = task_matrix(K, gen, 1e2, N=2 * K + 8)
    J[: K // 4] *= 25.0
    G = J @ J.T
    for f, m in ((0, 1), (K // 4, K - K // 4), (K - 3, K)):
        assert torch.equal(gh_kernels.weights(G, "krum", n_byzantine=f, n_selected=m).double(),
                           A.KrumWeighting(n_byzantine=f, n_selected=m)(G)), (K, f, m)


@pytest.mark.parametrize("K", [13, pytest.param(64, marks=pytest.mark.slow)])
def test_every_method_runs_a_training_step(K, gen):
    """The K-loss step at K = 13 and 64 for every method of the registry: the update equals the float64
    aggregate of the per-loss gradients (the per-coordinate ones with the same draws)."""
    model = torch.nn.Linear(6, K)
    x = torch.randn(9, 6, generator=gen)
    for method in gh_kernels.MULTITASK_METHODS:
        options = {"generator": torch.Generator().manual_seed(3)} if method in ("pcgrad", "random", "graddrop") else {}
        out = model(x)
        losses = [out[:, k].pow(2).mean() for k in range(K)]
        grads = [torch.autograd.grad(loss, list(model.parameters()), retain_graph=True) for loss in losses]
        expect = gh_kernels.aggregate([list(g) for g in grads], method, **dict(options, generator=torch.Generator().manual_seed(3))
                                      if options else options).out
        model.zero_grad()
        gh_kernels.MultiTaskHarmonizer(model.parameters(), method=method, **options).backward(losses)
        for p, e in zip(model.parameters(), expect):
            torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-6, msg=lambda m: f"{method}, K = {K}: {m}")


@pytest.mark.slow
def test_active_set_converges_in_half_its_steps(gen, monkeypatch):
    """Stress profile of NOTE: [Primal active set above 8 tasks]: with half the steps, 600 problems at K = 9..64
    (random, rank-deficient, duplicated rows, 0 in the hull, fewer dimensions than tasks; UPGrad's rows, MGDA's
    nonnegative form and DualProj's) still equal quadprog's solutions to 1e-8."""
    full = solvers.active_set_steps
    monkeypatch.setattr(solvers, "active_set_steps", lambda K: full(K) // 2)
    for trial in range(600):
        K = int(torch.randint(9, 65, (), generator=gen))
        N = 2 * K + 8
        kind = trial % 5
        if kind == 0:
            J = task_matrix(K, gen, 10 ** float(4 * torch.rand((), generator=gen)), N=N, common=float(torch.rand((), generator=gen)))
        elif kind == 1:
            r = int(torch.randint(1, K, (), generator=gen))
            J = torch.randn(K, r, generator=gen, dtype=torch.float64) @ torch.randn(r, N, generator=gen, dtype=torch.float64)
        elif kind == 2:
            J = torch.randn(K, N, generator=gen, dtype=torch.float64)
            J[K // 2:] = J[:K - K // 2].clone()
        elif kind == 3:
            J = torch.randn(K, N, generator=gen, dtype=torch.float64)
            J[-1] = -J[:-1].sum(0) / (K - 1)
        else:
            J = torch.randn(K, max(2, K // 4), generator=gen, dtype=torch.float64)
        G = regularize(normalize(J @ J.T, 1e-4), 1e-4)
        U = torch.eye(K, dtype=torch.float64) / K
        C = torch.cat([U @ G, -torch.ones(1, K, dtype=torch.float64), (torch.ones(K, dtype=torch.float64) / K @ G)[None]])
        Z = solvers.nonneg_qp_rows(G, C)
        for row in range(C.shape[0]):
            exact = _quadprog_nonneg(G, C[row])
            base = U[row] if row < K else torch.full((K,), 1.0 / K, dtype=torch.float64) if row == K + 1 else exact
            assert float((Z[row] - exact).norm()) <= 1e-8 * float((base + exact).norm()), (trial, K, kind, row)
