"""weights: docs/METHOD.md's closed forms and geometric properties, edge cases, no host sync."""
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import gh_kernels
from gh_kernels.reference import gram_reference, weights_reference

from helpers import DTYPES, conflicting_pair, weight_tolerance

METHODS = ["sum", "gh", "gh++", "gh++released"]
SETTINGS = settings()  # the profile loaded in conftest.py: fixed examples, no example database


def _flat(s):
    return torch.cat([t.double().reshape(-1) for t in s])


def _angle(a, b):
    return math.degrees(math.acos(max(-1.0, min(1.0, float(torch.dot(a, b) / (a.norm() * b.norm()))))))


grad_lists = st.tuples(
    st.lists(st.integers(1, 40), min_size=1, max_size=5),
    st.sampled_from(DTYPES),
    st.integers(0, 2**31 - 1),
    st.floats(0.2, 1.5),
)


@SETTINGS
@given(grad_lists, st.sampled_from(METHODS), st.floats(0.0, 1.0))
@example(([1], torch.float32, 51, 0.2), "gh++released", 0.0)  # exactly antiparallel: float32 cos rounds to -1
@example(([1], torch.float32, 51, 0.2), "gh++", 1.0)
def test_weights_match_closed_forms(case, method, kappa):
    sizes, dtype, seed, strength = case
    g1, g2 = conflicting_pair(sizes, dtype, torch.Generator().manual_seed(seed), strength)
    G = gh_kernels.gram([g1, g2])
    w = gh_kernels.weights(G, method, kappa=kappa)
    assert w.dtype == torch.float32 and w.shape == (2,)
    ref = weights_reference(G.double(), method, kappa)
    sin = math.sqrt(max(0.0, 1 - float(G[0, 1]) ** 2 / float(G[0, 0] * G[1, 1])))
    if method == "gh++" and abs(sin - gh_kernels.weighting.gh.GHPP_MIN_SIN) < 1e-3:
        return  # the documented switch point: float32 and float64 may pick different sides
    tol = weight_tolerance(G.double(), method, ref)
    assert (w.double() - ref).abs().max().item() <= tol, f"{method} kappa={kappa} sin={sin:.3g}: {w.tolist()} vs {ref.tolist()}"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kappa", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("n2", [1e-3, 1.0, 7.0, 1e3])
def test_weights_at_exactly_180_degrees(method, kappa, n2):
    """Antiparallel gradients, where acos is worst conditioned: finite, and within the documented bound."""
    n1 = 1.3
    G = torch.tensor([[n1 * n1, -n1 * n2], [-n1 * n2, n2 * n2]], dtype=torch.float32)
    w = gh_kernels.weights(G, method, kappa=kappa)
    ref = weights_reference(G.double(), method, kappa)
    assert torch.isfinite(w).all()
    assert (w.double() - ref).abs().max().item() <= weight_tolerance(G.double(), method, ref)


@SETTINGS
@given(grad_lists)
def test_gh_properties(case):
    sizes, dtype, seed, strength = case
    g1, g2 = conflicting_pair(sizes, torch.float32, torch.Generator().manual_seed(seed), strength)
    a, b = _flat(g1), _flat(g2)
    c, n1sq, n2sq = float(a @ b), float(a @ a), float(b @ b)
    theta = _angle(a, b)
    w = gh_kernels.harmonize(g1, g2, method="gh", out=(out := [torch.empty_like(t) for t in g1])).weights
    g = _flat(out)
    if c < 0:
        p1, p2 = a - c / n2sq * b, b - c / n1sq * a  # each projected onto the other's normal plane
        assert abs(_angle(p1, p2) - (180 - theta)) < 1e-3
        torch.testing.assert_close(w.double(), torch.tensor([1 - c / n1sq, 1 - c / n2sq], dtype=torch.float64), rtol=1e-4, atol=1e-5)
    scale = float(a.norm() * b.norm() + a @ a + b @ b)
    assert float(g @ a) >= -1e-4 * scale and float(g @ b) >= -1e-4 * scale


def _turn(u, v, phi):
    """Unit vector at angle phi from unit u toward unit v (in their plane)."""
    th = math.acos(max(-1.0, min(1.0, float(u @ v))))
    return (math.sin(th - phi) * u + math.sin(phi) * v) / math.sin(th)


@SETTINGS
@given(grad_lists, st.floats(0.0, 1.0))
def test_ghpp_turned_vectors_perpendicular_with_kappa_shares(case, kappa):
    sizes, _, seed, strength = case
    g1, g2 = conflicting_pair(sizes, torch.float32, torch.Generator().manual_seed(seed), strength)
    a, b = _flat(g1), _flat(g2)
    theta = _angle(a, b)
    if not (90.5 < theta < 178):
        return
    excess = math.radians(theta - 90)
    beta, gamma = kappa * excess, (1 - kappa) * excess
    u1, u2 = a / a.norm(), b / b.norm()
    r1 = a.norm() * _turn(u1, u2, beta)
    r2 = b.norm() * _turn(u2, u1, gamma)
    assert abs(_angle(r1, r2) - 90) < 1e-6
    assert abs(_angle(r1, a) - math.degrees(beta)) < 1e-5 and abs(_angle(r2, b) - math.degrees(gamma)) < 1e-5
    out = [torch.empty_like(t) for t in g1]
    gh_kernels.harmonize(g1, g2, method="gh++", kappa=kappa, out=out)
    torch.testing.assert_close(_flat(out), r1 + r2, rtol=1e-4, atol=1e-4 * float(a.norm() + b.norm()))


def test_released_weights_match_method_md():
    # theta = 150deg, equal norms, kappa 0.5: beta = 30deg.
    G = torch.tensor([[1.0, math.cos(math.radians(150))], [math.cos(math.radians(150)), 1.0]])
    w = gh_kernels.weights(G, "gh++released")
    expected = [1 + 2 * math.sin(math.radians(15)), 1 + 2 * math.sin(math.radians(-15))]
    torch.testing.assert_close(w, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    assert abs(float(w.sum()) - 2) < 1e-6
    # docs/METHOD.md: the released update can still conflict with g2: cos(g, g2) = -0.74 here.
    g1 = torch.tensor([1.0, 0.0])
    g2 = torch.tensor([math.cos(math.radians(150)), math.sin(math.radians(150))])
    g = w[0] * g1 + w[1] * g2
    assert abs(float(g @ g2 / g.norm()) - (-0.74)) < 0.01


@pytest.mark.parametrize("method", METHODS)
def test_no_conflict_gives_plain_sum(method):
    G = torch.tensor([[2.0, 0.5], [0.5, 3.0]])
    assert torch.equal(gh_kernels.weights(G, method), torch.ones(2))
    G = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    assert torch.equal(gh_kernels.weights(G, method), torch.ones(2))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("G", [[[0.0, 0.0], [0.0, 3.0]], [[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
def test_zero_gradient_gives_ones(method, G):
    w = gh_kernels.weights(torch.tensor(G), method)
    assert torch.equal(w, torch.ones(2))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -float("inf")])
def test_non_finite_gram_gives_ones(method, bad):
    for pos in [(0, 0), (0, 1), (1, 1)]:
        G = torch.tensor([[2.0, -1.0], [-1.0, 3.0]])
        G[pos] = bad
        if pos == (0, 1):
            G[1, 0] = bad
        assert torch.equal(gh_kernels.weights(G, method), torch.ones(2))


@pytest.mark.parametrize("sin", [0.0, 1e-7, 1e-4, 0.019, 0.021, 0.1])
@pytest.mark.parametrize("ratio", [1e-3, 1.0, 50.0])
def test_ghpp_near_180_degrees_is_finite_and_documented(sin, ratio):
    n1, n2 = 1.0, ratio
    cos = -math.sqrt(1 - sin * sin)
    G = torch.tensor([[n1 * n1, cos * n1 * n2], [cos * n1 * n2, n2 * n2]], dtype=torch.float64)
    w = gh_kernels.weights(G.float(), "gh++")
    assert torch.isfinite(w).all()
    gh = gh_kernels.weights(G.float(), "gh")
    if sin < gh_kernels.weighting.gh.GHPP_MIN_SIN * 0.9:
        assert torch.equal(w, gh)
    elif sin > gh_kernels.weighting.gh.GHPP_MIN_SIN * 1.1:
        torch.testing.assert_close(w.double(), weights_reference(G, "gh++"), rtol=5e-3, atol=1e-4)


def test_released_cosine_below_minus_one_is_clamped():
    # |c| slightly above n1*n2 (rounding): the cosine would be < -1 without the clamp.
    G = torch.tensor([[1.0, -1.0000002], [-1.0000002, 1.0]])
    for method in METHODS:
        w = gh_kernels.weights(G, method)
        assert torch.isfinite(w).all(), method
    w = gh_kernels.weights(G, "gh++released")
    torch.testing.assert_close(w, torch.tensor([1 + 2 * math.sin(math.radians(22.5)), 1 - 2 * math.sin(math.radians(22.5))]))


def test_scale_invariance_for_amp():
    # GradScaler multiplies both losses by S: G scales by S^2, the weights must not move.
    g1, g2 = conflicting_pair([50, 7], torch.float32, torch.Generator().manual_seed(3))
    for method in METHODS:
        w = gh_kernels.weights(gh_kernels.gram([g1, g2]), method)
        S = 65536.0
        ws = gh_kernels.weights(gh_kernels.gram([[t * S for t in g1], [t * S for t in g2]]), method)
        torch.testing.assert_close(ws, w, rtol=1e-5, atol=1e-6)


def test_bad_method_and_kappa():
    G = torch.eye(2)
    with pytest.raises(ValueError, match="method must be one of 'mean', 'sum', 'pcgrad'"):
        gh_kernels.weights(G, "nope")
    for kappa in (-0.1, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="kappa must be a number in \\[0, 1\\]"):
            gh_kernels.weights(G, "gh++", kappa=kappa)
    with pytest.raises(ValueError, match="method='gh' is a two-task rule \\(K = 2\\); got K = 3"):
        gh_kernels.weights(torch.eye(3), "gh")
    with pytest.raises(ValueError, match="G must be a K x K Gram matrix"):
        gh_kernels.weights(torch.ones(2, 3), "gh")


def test_reference_matches_gram_reference_pipeline():
    g1, g2 = conflicting_pair([30], torch.float32, torch.Generator().manual_seed(0))
    G = gram_reference([g1, g2])
    assert G[0, 1] < 0


@pytest.mark.parametrize("method", METHODS)
def test_weights_every_backend(device, backend, method, gen):
    for strength in (0.3, 0.9, 2.0):
        g1, g2 = conflicting_pair([4000, 9], torch.float32, gen, strength)
        G = gh_kernels.gram([g1, g2])
        for kappa in (0.0, 0.3, 0.5, 1.0):
            w = gh_kernels.weights(G.to(device), method, kappa=kappa, backend=backend)
            assert w.device.type == device
            torch.testing.assert_close(w.cpu().double(), weights_reference(G.double(), method, kappa), rtol=1e-5, atol=1e-6)
    for G in ([[0.0, 0.0], [0.0, 1.0]], [[1.0, float("nan")], [float("nan"), 1.0]], [[1.0, float("inf")], [float("inf"), 1.0]],
              [[1.0, -1.0], [-1.0, 1.0]], [[1.0, -1.0000002], [-1.0000002, 1.0]]):
        w = gh_kernels.weights(torch.tensor(G, device=device), method, backend=backend)
        assert torch.isfinite(w).all()
