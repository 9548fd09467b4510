"""The multi-task weight rules without torchjd: the properties each method promises, exactness of
the small solvers against independent solves, K = 2 identities, and the bad-input rules."""
import itertools

import pytest
import torch

import gh_kernels
from gh_kernels.weighting.linalg import jacobi_eigh
from mtl_helpers import rel, task_matrix

from gh_kernels.weighting.coordinate import COORDINATE_METHODS

METHODS = [m for m in gh_kernels.MULTITASK_METHODS if m not in COORDINATE_METHODS]  # the Gram-based ones


@pytest.mark.parametrize("K", [2, 3, 5, 8])
def test_upgrad_and_dualproj_do_not_conflict(K, gen):
    for cond in (1.0, 1e2, 1e4):
        J = task_matrix(K, gen, cond)
        G = J @ J.T
        for method in ("upgrad", "dualproj"):
            # the solve runs on G / trace(G) + reg_eps * I (torchjd's regularization): its KKT conditions give
            # <g_k, d> >= -reg_eps * trace(G) * w_k; without regularization, no conflict at all
            w = gh_kernels.weights(G, method)
            assert ((J @ (w @ J)) >= -1e-4 * G.trace() * w.clamp_min(0) * (1 + 1e-9) - 1e-12).all(), (method, cond)
            w = gh_kernels.weights(G, method, reg_eps=0.0)
            assert (J @ (w @ J)).min() >= -1e-12 * G.trace(), (method, cond, (J @ (w @ J)).min())


def brute_force_min_norm(G):
    """The min-norm point of the convex hull by checking every support (independent of the solver's code)."""
    K = G.shape[0]
    best, best_w = float("inf"), None
    for r in range(1, K + 1):
        for S in itertools.combinations(range(K), r):
            idx = list(S)
            A = torch.zeros(r + 1, r + 1, dtype=torch.float64)
            A[:r, :r] = G[idx][:, idx]
            A[:r, r] = -1
            A[r, :r] = 1
            b = torch.zeros(r + 1, dtype=torch.float64)
            b[r] = 1
            try:
                sol = torch.linalg.solve(A, b)
            except RuntimeError:
                continue
            if (sol[:r] < -1e-12).any():
                continue
            w = torch.zeros(K, dtype=torch.float64)
            w[idx] = sol[:r]
            value = (w @ G @ w).item()
            if value < best:
                best, best_w = value, w
    return best_w


@pytest.mark.parametrize("K", [2, 3, 4, 6, 8])
def test_mgda_is_the_min_norm_point(K, gen):
    for cond in (1.0, 1e2, 1e4):
        J = task_matrix(K, gen, cond, common=0.3)
        G = J @ J.T
        w = gh_kernels.weights(G, "mgda")
        assert (w >= 0).all() and abs(w.sum().item() - 1) < 1e-12
        ref = brute_force_min_norm(G)
        assert rel(w @ J, ref @ J) < 1e-6, (cond, w, ref)
        for _ in range(20):  # no point of the simplex is shorter
            v = torch.rand(K, generator=gen, dtype=torch.float64)
            v /= v.sum()
            assert (w @ G @ w) <= (v @ G @ v) * (1 + 1e-9)


@pytest.mark.parametrize("K", [2, 3, 5, 8])
def test_cagrad_meets_its_constraint_and_is_optimal(K, gen):
    for c in (0.1, 0.4, 1.0):
        J = task_matrix(K, gen, 1e3, common=0.5)
        G = J @ J.T
        w = gh_kernels.weights(G, "cagrad", c=c)
        d, g0 = w @ J, J.mean(0)
        # the update d = g0 + c|g0| g_w/|g_w| lies on the sphere |d - g0| = c |g0| ...
        assert abs((d - g0).norm().item() - c * g0.norm().item()) <= 1e-9 * g0.norm().item()
        # ... at the point that maximizes the worst task's improvement min_i <g_i, d> over that ball,
        # the dual of the simplex problem: compare with random points of the sphere.
        worst = (J @ d).min()
        for _ in range(200):
            u = torch.randn(J.shape[1], generator=gen, dtype=torch.float64)
            other = g0 + c * g0.norm() * u / u.norm()
            assert (J @ other).min() <= worst + 1e-9 * G.trace()


def test_pcgrad_equals_gh_for_two_tasks(gen):
    for _ in range(20):
        J = torch.randn(2, 30, generator=gen, dtype=torch.float64)
        G = J @ J.T
        for dtype in (torch.float32, torch.float64):
            torch.testing.assert_close(gh_kernels.weights(G.to(dtype), "pcgrad"), gh_kernels.weights(G.to(dtype), "gh"),
                                       rtol=2e-7 if dtype == torch.float32 else 1e-15, atol=0)


def pcgrad_loop(J, orders):
    """PCGrad as written in the paper, on the gradients themselves."""
    out = []
    for i, order in enumerate(orders):
        g = J[i].clone()
        for j in order:
            if j != i and g @ J[j] < 0:
                g = g - (g @ J[j]) / (J[j] @ J[j]) * J[j]
        out.append(g)
    return sum(out)


@pytest.mark.parametrize("K", [3, 5, 8])
def test_pcgrad_order_deterministic_and_with_generator(K, gen):
    J = task_matrix(K, gen, 1e2)
    G = J @ J.T
    d = gh_kernels.weights(G, "pcgrad") @ J
    assert rel(d, pcgrad_loop(J, [list(range(K))] * K)) < 1e-12
    seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
    d = gh_kernels.weights(G, "pcgrad", generator=torch.Generator().manual_seed(seed)) @ J
    draws = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(K, generator=draws).tolist() for _ in range(K)]
    assert rel(d, pcgrad_loop(J, orders)) < 1e-12


@pytest.mark.parametrize("K", [1, 2, 3, 5, 8, 13, pytest.param(40, marks=pytest.mark.slow), pytest.param(64, marks=pytest.mark.slow)])
def test_jacobi_eigh_matches_lapack(K, gen):
    """The CUDA path's eigensolver (symeig off the CPU) against LAPACK, rank-deficient included; for K > 8 also a
    spectrum over 12 decades (JACOBI_SWEEPS_LARGE)."""
    mats = []
    for rank in {K, max(1, K // 2)}:
        X = torch.randn(K, rank, generator=gen, dtype=torch.float64)
        mats.append(X @ X.T)
    if K > 8:
        Q, _ = torch.linalg.qr(torch.randn(K, K, generator=gen, dtype=torch.float64))
        mats.append((Q * torch.logspace(0, -12, K, dtype=torch.float64)) @ Q.T)
    for A in mats:
        evals, V = jacobi_eigh(A)
        ref = torch.linalg.eigvalsh(A)
        torch.testing.assert_close(evals, ref, rtol=0, atol=1e-12 * A.abs().max().item())
        torch.testing.assert_close(V @ torch.diag(evals) @ V.T, A, rtol=0, atol=1e-12 * A.abs().max().item())
        torch.testing.assert_close(V.T @ V, torch.eye(K, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_dtypes_singular_zero_and_non_finite(method, gen):
    K = 4
    J = task_matrix(K, gen, 1e2)
    for dtype in (torch.float32, torch.float64):
        w = gh_kernels.weights((J @ J.T).to(dtype), method)
        assert w.dtype == dtype and w.shape == (K,) and torch.isfinite(w).all()
    # rank-deficient: two identical tasks, and a zero task
    Js = torch.cat([J[:2], J[:1], torch.zeros(1, J.shape[1], dtype=J.dtype)])
    assert torch.isfinite(gh_kernels.weights(Js @ Js.T, method)).all(), "singular Gram: finite weights (documented regularization)"
    assert torch.isfinite(gh_kernels.weights(torch.zeros(K, K), method)).all(), "all-zero gradients: finite weights"
    G = J @ J.T
    G[1, 2] = G[2, 1] = float("nan")
    w = gh_kernels.weights(G, method)
    assert torch.isfinite(w).all()
    # a non-finite gradient reaches the update, so GradScaler skips the step
    grads = [[torch.randn(5, generator=gen), torch.randn(3, generator=gen)] for _ in range(K)]
    grads[2][1][0] = float("inf")
    out = gh_kernels.aggregate(grads, method)
    assert not torch.isfinite(out.out[1]).all()


def test_bad_inputs_name_the_argument():
    G = torch.eye(3)
    with pytest.raises(ValueError, match="^G is 0 x 0"):  # K = 0 names the argument
        gh_kernels.weights(torch.eye(0), "upgrad")
    with pytest.raises(ValueError, match="^grads must hold at least one gradient set"):
        gh_kernels.aggregate([], "mean")
    with pytest.raises(ValueError, match="method must be one of 'mean', 'sum', 'pcgrad'.*got 'upgrd'"):
        gh_kernels.weights(G, "upgrd")
    with pytest.raises(ValueError, match="method 'mgda' takes no options; got c=0.5"):
        gh_kernels.weights(G, "mgda", c=0.5)
    with pytest.raises(ValueError, match="method 'cagrad' takes the options c, norm_eps; got cc=0.5"):
        gh_kernels.weights(G, "cagrad", cc=0.5)
    with pytest.raises(ValueError, match="option c of 'cagrad' must be a finite number >= 0"):
        gh_kernels.weights(G, "cagrad", c=-1)
    with pytest.raises(ValueError, match="option pref_vector of 'upgrad' must be a float tensor of shape \\(3,\\)"):
        gh_kernels.weights(G, "upgrad", pref_vector=torch.ones(2))
    with pytest.raises(ValueError, match="option scale_mode of 'aligned-mtl'"):
        gh_kernels.weights(G, "aligned-mtl", scale_mode="max")
    with pytest.raises(ValueError, match="'gradvac' keeps state across steps: create gh_kernels.GradVac"):
        gh_kernels.weights(G, "gradvac")
    with pytest.raises(ValueError, match="a GradVac object takes its options in its constructor"):
        gh_kernels.weights(G, gh_kernels.GradVac(), beta=0.2)
    with pytest.raises(ValueError, match="beta must be a finite number in"):
        gh_kernels.GradVac(beta=2)
    with pytest.raises(ValueError, match="K = 65 tasks is above the 64"):
        gh_kernels.weights(torch.eye(65), "mean")
    with pytest.raises(ValueError, match="method 'gh' takes the option kappa only; got c"):
        gh_kernels.weights(torch.eye(2), "gh", c=1.0)


def test_aggregate_writes_out_and_checks_before_writing(gen):
    grads = [[torch.randn(4, generator=gen), torch.randn(2, 3, generator=gen)] for _ in range(3)]
    J = torch.stack([torch.cat([t.flatten() for t in s]) for s in grads]).double()
    before = [t.clone() for t in grads[0]]
    res = gh_kernels.aggregate(grads, "upgrad", out=grads[0])
    assert res.out[0] is grads[0][0]
    torch.testing.assert_close(torch.cat([t.flatten() for t in res.out]).double(), res.weights.double() @ J, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res.weights, gh_kernels.weights(res.gram, "upgrad"))
    grads[0] = [t.clone() for t in before]
    bad_out = [torch.empty(4), torch.empty(3, 2)]
    with pytest.raises(ValueError, match="out\\[1\\]"):
        gh_kernels.aggregate(grads, "upgrad", out=bad_out)
    with pytest.raises(ValueError, match="method 'mean' takes no options"):
        gh_kernels.aggregate(grads, "mean", out=grads[0], c=1)
    assert all(torch.equal(a, b) for a, b in zip(grads[0], before)), "a call that raises writes nothing"


def test_no_host_sync_on_cuda(device, backend, gen):
    """Every multi-task method and aggregate() run with torch.cuda.set_sync_debug_mode("error")."""
    if device != "cuda":
        pytest.skip("host synchronization is checked on CUDA (torch.cuda.set_sync_debug_mode)")
    K = 5
    grads = [[torch.randn(s, generator=gen).to(device) for s in (100_000, 33, 5000)] for _ in range(K)]
    out = [torch.empty_like(t) for t in grads[0]]
    stateful = [gh_kernels.GradVac(), gh_kernels.NashMTL()]
    for method in METHODS + stateful:  # warm-up: kernels compiled, caches filled
        gh_kernels.aggregate(grads, method, out=out, backend=backend)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for method in METHODS + stateful:
            res = gh_kernels.aggregate(grads, method, out=out, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(res.weights).all()


def test_stateful_methods_survive_a_non_finite_step(gen):
    K = 4
    J = task_matrix(K, gen, 1e2, common=0.3)
    G = J @ J.T
    bad = G.clone()
    bad[0, 1] = bad[1, 0] = float("inf")
    for make in (gh_kernels.GradVac, gh_kernels.NashMTL):
        clean, hit = make(), make()
        clean.weights(G)
        w_clean = clean.weights(1.5 * G)                  # steps: G, 1.5 G
        hit.weights(G)
        assert torch.equal(hit.weights(bad), torch.ones(K, dtype=G.dtype)), "a non-finite step: neutral weights"
        w_hit = hit.weights(1.5 * G)                      # steps: G, bad, 1.5 G
        assert torch.isfinite(w_hit).all()
        # the bad step left the state alone: the same weights as without it
        torch.testing.assert_close(w_hit, w_clean, rtol=1e-9, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_aggregate_every_dtype_against_float64(device, backend, dtype, gen):
    """aggregate() end to end (fused Gram, solve, fused combine) against the float64 pipeline on the same
    rounded inputs: the Gram within twice plain torch's error, the update within the dtype's rounding."""
    from helpers import assert_field_error, plain_torch_gram
    K, sizes = 5, [3, 129, (7, 9), 1]
    grads = [[(torch.randn(s if isinstance(s, tuple) else (s,), generator=gen) + 0.3).to(dtype).to(device) for s in sizes]
             for _ in range(K)]
    J = torch.stack([torch.cat([t.double().flatten().cpu() for t in s]) for s in grads])
    res = gh_kernels.aggregate(grads, "upgrad", backend=backend)
    assert res.gram.dtype == res.weights.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    floor = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-3) * (J @ J.T).abs().max().item()
    assert_field_error(res.gram, J @ J.T, plain_torch_gram(grads, dtype), floor, f"gram {dtype}")
    w_ref = gh_kernels.weights(J @ J.T, "upgrad")
    torch.testing.assert_close(res.weights.double().cpu(), w_ref, rtol=1e-4 if dtype != torch.float64 else 1e-10, atol=1e-6)
    got = torch.cat([o.double().flatten().cpu() for o in res.out])
    eps = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(got, res.weights.double().cpu() @ J, rtol=eps, atol=eps * J.abs().max().item())


def test_tiny_gradients_are_not_zeroed(gen):
    """trace(G) below norm_eps (1e-4): UPGrad/DualProj fall back to the preference vector and CAGrad to the
    mean (torchjd zeroes CAGrad's weights there, which would stop training silently); never zero weights."""
    J = 1e-3 * task_matrix(3, gen, 10.0)
    G = J @ J.T
    assert G.trace() < 1e-4
    for method in ("upgrad", "dualproj", "cagrad"):
        torch.testing.assert_close(gh_kernels.weights(G, method), torch.full((3,), 1 / 3, dtype=G.dtype))
    assert (gh_kernels.weights(G, "mgda") @ J).norm() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_config_rank_one_jacobian_pointing_both_ways_gives_zero(dtype, gen):
    """ConFIG's direction pinv(U) 1 is exactly 0 when the rows are multiples of one vector, as many pointing
    each way (the unit rows cancel): the update is 0 for every row order and scaling, never rounding noise
    rescaled to full length (which gave g1 + g2 for two opposite gradients in a third of the draws)."""
    for _ in range(100):
        g = torch.randn(7, generator=gen, dtype=torch.float64)
        K = 2 * int(torch.randint(1, 4, (), generator=gen))
        coeffs = torch.rand(K, generator=gen, dtype=torch.float64) * 3 + 0.1
        coeffs[torch.randperm(K, generator=gen)[: K // 2]] *= -1  # half of them point the other way
        J = (coeffs[:, None] * g[None, :]).to(dtype)
        for M in (J, J.flip(0), 5.0 * J):
            update = gh_kernels.weights(M @ M.T, "config").to(torch.float64) @ M.to(torch.float64)
            assert update.norm() <= 1e-6 * M.to(torch.float64).norm(), (K, coeffs.tolist())
