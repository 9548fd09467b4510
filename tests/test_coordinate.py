"""The per-coordinate methods ("trimmed-mean", "graddrop") and their fused kernel (op ``coordinate_``) on
every backend and device here: against a float64 numpy reference (independent of the kernels' code) on
fresh random inputs of awkward sizes, every supported dtype, absent gradients, non-contiguous tensors,
in place and accumulating; equal to torchjd 0.18's TrimmedMean and GradDrop on the stacked Jacobian,
also through the training step; deterministic per seed; non-finite values; the bad-input rules; all
or nothing; extra memory at most the output."""
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gh_kernels

SIZES = [(7, 3), (33,), (5, 2, 2), (1,), (4099,), (65537,)]  # odd sizes, a vector tail, two segments
SMALL = [(7, 3), (33,), (5, 2, 2), (1,), (131,)]  # the Triton interpreter runs a numpy op per tile: small tensors
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
EPS = {torch.float32: 2 ** -23, torch.float64: 2 ** -52, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}


def sizes_for(backend):
    return SMALL if backend == "triton" else SIZES


def make_sets(K, dtype, device, gen, sizes=SIZES, absent=True):
    sets = [[(torch.randn(s, generator=gen) * (1 + k)).to(dtype).to(device) for s in sizes] for k in range(K)]
    if absent and K > 2:
        sets[1][2] = None  # a task that does not reach parameter 2
    return sets


def stacked(sets):
    """The K x N float64 Jacobian (absent gradients as zeros), in parameter order."""
    sizes = [next(s[p].shape for s in sets if s[p] is not None) for p in range(len(sets[0]))]
    return np.stack([np.concatenate([np.zeros(int(np.prod(sz))) if t is None else t.double().cpu().reshape(-1).numpy()
                                     for t, sz in zip(s, sizes)]) for s in sets])


def ref_trimmed_mean(J, trim):
    kept = np.sort(J, axis=0)[trim:J.shape[0] - trim]
    return kept.mean(axis=0)


def ref_graddrop(J, U, leak):
    with np.errstate(invalid="ignore", divide="ignore"):
        P = 0.5 * (1 + J.sum(0) / np.abs(J).sum(0))
    keep = ((P > U) & (J > 0)) | ((P < U) & (J < 0))
    return ((leak[:, None] + (1 - leak[:, None]) * keep) * J).sum(0), P


def flat(out):
    return np.concatenate([t.double().cpu().reshape(-1).numpy() for t in out])


def draws_like(sets, seed, device):
    """The draws the kernel makes: torch.rand(N) in the gradients' dtype after manual_seed(seed)."""
    N = sum(next(s[p].numel() for s in sets if s[p] is not None) for p in range(len(sets[0])))
    dtype = next(t.dtype for s in sets for t in s if t is not None)
    torch.manual_seed(seed)
    return torch.rand(N, dtype=dtype, device=device).double().cpu().numpy()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_trimmed_mean_matches_the_float64_reference(device, backend, dtype, gen):
    for K in (2, 3, 5, 8) if backend != "triton" else (3, 8):
        sets = make_sets(K, dtype, device, gen, sizes_for(backend))
        J = stacked(sets)
        for trim in range((K - 1) // 2 + 1):
            out = gh_kernels.aggregate(sets, "trimmed-mean", trim_number=trim, backend=backend).out
            err = np.abs(flat(out) - ref_trimmed_mean(J, trim))
            bound = 2 * EPS[dtype] * np.abs(J).max(0) + K * 2 ** -23 * np.abs(J).max(0) + 1e-300
            assert (err <= bound).all(), (K, trim, float((err / bound).max()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_graddrop_matches_the_float64_reference(device, backend, dtype, gen):
    for K in (2, 3, 5, 7) if backend != "triton" else (3, 7):
        sets = make_sets(K, dtype, device, gen, sizes_for(backend))
        J = stacked(sets)
        leak = torch.rand(K, generator=gen)
        leak[0] = 0.0
        torch.manual_seed(11)
        out = gh_kernels.aggregate(sets, "graddrop", leak=leak, backend=backend).out
        expected, P = ref_graddrop(J, draws_like(sets, 11, device), leak.double().numpy())
        # the kernels compute the purity P in float32: a draw within its rounding of P may fall either way
        clear = np.abs(P - draws_like(sets, 11, device)) > 1e-5
        err = np.abs(flat(out) - expected)[clear]
        bound = (2 * EPS[dtype] + K * 2 ** -23) * np.abs(J).sum(0)[clear] + 1e-300
        assert clear.mean() > 0.99 and (err <= bound).all(), (K, float((err / bound).max()))


def test_graddrop_k8_serves_on_the_torch_backend_and_explicit_backends_refuse(gen):
    sets = make_sets(8, torch.float32, "cpu", gen)
    torch.manual_seed(0)
    a = gh_kernels.aggregate(sets, "graddrop").out  # auto: K + 1 = 9 sets, above the fused kernels' 8
    torch.manual_seed(0)
    b = gh_kernels.aggregate(sets, "graddrop", backend="torch").out
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    if "cpu" in gh_kernels.available_backends():
        with pytest.raises(ValueError, match="backend='cpu' runs 'graddrop' for K <= 7"):
            gh_kernels.aggregate(sets, "graddrop", backend="cpu")


def test_in_place_non_contiguous_and_planned(device, backend, gen):
    """out=grads[0] (in place), transposed tensors, an absent gradient, and a plan called twice: all equal the
    torch backend's new tensors. (Accumulation into .grad: test_the_training_step_equals_torchjd.)"""
    K = 4
    for method, options in (("trimmed-mean", {"trim_number": 1}), ("graddrop", {})):
        sets = [[torch.randn(6, 9, generator=gen).to(device).t(), torch.randn(70, generator=gen).to(device)] for _ in range(K)]
        sets[2][1] = None
        torch.manual_seed(3)
        expected = gh_kernels.aggregate(sets, method, backend="torch", **options).out
        planned = gh_kernels.plan(*sets, method=method, backend=backend, **options)
        for _ in range(2):
            torch.manual_seed(3)
            result = planned(*sets)
            assert result.weights is None and result.gram is None
            for a, b in zip(result.out, expected):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        torch.manual_seed(3)
        gh_kernels.aggregate(sets, method, out=sets[0], backend=backend, **options)
        for a, b in zip(sets[0], expected):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_equal_to_torchjd_on_the_stacked_jacobian(backend, gen):
    A = pytest.importorskip("torchjd.aggregation")
    for K in range(2, 9) if backend != "triton" else (2, 5, 8):
        for dtype in (torch.float32, torch.float64):
            sets = make_sets(K, dtype, "cpu", gen, sizes_for(backend))
            J = torch.from_numpy(stacked(sets)).to(dtype)
            for trim in range((K - 1) // 2 + 1):
                ours = torch.from_numpy(flat(gh_kernels.aggregate(sets, "trimmed-mean", trim_number=trim, backend=backend).out))
                ref = A.TrimmedMean(trim)(J).double()
                assert float((ours - ref).norm() / ref.norm()) < 1e-6, (K, dtype, trim)
            if K == 8 and backend != "torch":
                continue
            leak = torch.rand(K, generator=gen, dtype=dtype)
            torch.manual_seed(K)
            ours = torch.from_numpy(flat(gh_kernels.aggregate(sets, "graddrop", leak=leak, backend=backend).out))
            torch.manual_seed(K)
            ref = A.GradDrop(leak=leak)(J).double()
            assert float((ours - ref).norm() / ref.norm()) < 5e-3, (K, dtype)


def test_the_training_step_equals_torchjd(backend, gen):
    A = pytest.importorskip("torchjd.aggregation")
    from models import KHeadNet
    from mtl_helpers import stacked_jacobian
    K = 4
    net = KHeadNet(K)
    x, y = torch.randn(16, 6, generator=gen), torch.randn(16, K, generator=gen)
    params = list(net.parameters())
    J = stacked_jacobian(net.losses(x, y), params)
    for method, options, ref in (("trimmed-mean", {"trim_number": 1}, lambda: A.TrimmedMean(1)(J)),
                                 ("graddrop", {}, lambda: A.GradDrop()(J))):
        step = gh_kernels.MultiTaskHarmonizer(params, method=method, backend=backend, **options)
        net.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        result = step.backward(net.losses(x, y))
        assert result.weights is None and result.gram is None
        torch.manual_seed(7)
        expected = ref()
        got = torch.cat([p.grad.reshape(-1) for p in params])
        assert float((got - expected).norm() / expected.norm()) < 1e-5, method
        # gradient accumulation: a second step adds to .grad
        torch.manual_seed(7)
        step.backward(net.losses(x, y))
        got2 = torch.cat([p.grad.reshape(-1) for p in params])
        assert float((got2 - 2 * expected).norm() / expected.norm()) < 1e-5, method


def test_surgery_mode_and_the_grouped_path(gen):
    from models import KHeadNet
    K = 3
    net = KHeadNet(K)
    x, y = torch.randn(8, 6, generator=gen), torch.randn(8, K, generator=gen)
    fused = gh_kernels.MultiTaskHarmonizer(net.parameters(), method="trimmed-mean", trim_number=1)
    net.zero_grad(set_to_none=True)
    fused.backward(net.losses(x, y))
    expected = [p.grad.clone() for p in net.parameters()]
    grouped = gh_kernels.MultiTaskHarmonizer(net.parameters(), method="trimmed-mean", trim_number=1)
    grouped._engine.fused = False
    net.zero_grad(set_to_none=True)
    grouped.backward(net.losses(x, y))
    for p, e in zip(net.parameters(), expected):
        torch.testing.assert_close(p.grad, e)
    surgery = gh_kernels.MultiTaskHarmonizer(net.parameters(), method="trimmed-mean", trim_number=1, mode="surgery")
    net.zero_grad(set_to_none=True)
    surgery.backward(net.losses(x, y))
    trunk = list(net.trunk.parameters())
    for p, e in zip(net.parameters(), expected):
        if any(p is q for q in trunk):
            torch.testing.assert_close(p.grad, e)  # shared: the per-coordinate update
    # a head is reached by one loss: surgery gives it that loss's gradient (the plain sum)
    head = net.heads[0].weight
    g = torch.autograd.grad(net.losses(x, y)[0], head)[0]
    torch.testing.assert_close(head.grad, g)


def test_graddrop_is_deterministic_per_seed_and_generator(backend, gen):
    sets = make_sets(4, torch.float32, "cpu", gen, sizes_for(backend))
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(gh_kernels.aggregate(sets, "graddrop", backend=backend).out)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    a = gh_kernels.aggregate(sets, "graddrop", generator=g1, backend=backend).out
    b = gh_kernels.aggregate(sets, "graddrop", generator=g2, backend=backend).out
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = gh_kernels.aggregate(sets, "graddrop", generator=g1, backend=backend).out  # the generator moved on
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_non_finite_values_stay_non_finite(backend, gen):
    """NOTE: [Trimmed non-finite]: a coordinate with inf or NaN is NaN (GradScaler skips), also where trimming
    would drop the value; the other coordinates are unchanged."""
    K = 5
    sets = make_sets(K, torch.float32, "cpu", gen, sizes=[(9,), (40,)], absent=False)
    clean = gh_kernels.aggregate(sets, "trimmed-mean", trim_number=2, backend=backend).out
    sets[3][1][7] = float("inf")
    sets[0][1][8] = float("nan")
    for method, options in (("trimmed-mean", {"trim_number": 2}), ("graddrop", {})):
        out = gh_kernels.aggregate(sets, method, backend=backend, **options).out
        assert not torch.isfinite(out[1][7]) and not torch.isfinite(out[1][8]), method
        if method == "trimmed-mean":
            mask = torch.ones(40, dtype=torch.bool)
            mask[7:9] = False
            assert torch.equal(out[1][mask], clean[1][mask]) and torch.equal(out[0], clean[0])


@pytest.mark.parametrize("options,match", [
    ({"trim_number": 2}, r"trim_number of 'trimmed-mean' must leave a value: 2 \* trim_number < K = 4; got trim_number=2"),
    ({"trim_number": -1}, "trim_number of 'trimmed-mean' must be an integer >= 0"),
    ({"trim_number": 1.5}, "trim_number of 'trimmed-mean' must be an integer >= 0"),
    ({"f": abs}, "method 'trimmed-mean' takes the options trim_number; got f="),
])
def test_trimmed_mean_bad_options(options, match, gen):
    sets = make_sets(4, torch.float32, "cpu", gen)
    before = [t.clone() for t in sets[0]]
    with pytest.raises(ValueError, match=match):
        gh_kernels.aggregate(sets, "trimmed-mean", out=sets[0], **options)
    assert all(torch.equal(a, b) for a, b in zip(sets[0], before))


@pytest.mark.parametrize("options,match", [
    ({"leak": torch.tensor([0.1, 0.2])}, r"leak of 'graddrop' must be a float tensor of shape \(3,\)"),
    ({"leak": torch.tensor([0.1, 1.5, 0.0])}, r"leak of 'graddrop' must hold values in \[0, 1\]"),
    ({"leak": torch.tensor([0.1, float("nan"), 0.0])}, r"leak of 'graddrop' must hold values in \[0, 1\]"),
    ({"generator": 3}, "generator of 'graddrop' must be a torch.Generator"),
    ({"f": abs}, "method 'graddrop' takes the options leak, generator; got f="),
])
def test_graddrop_bad_options(options, match, gen):
    sets = make_sets(3, torch.float32, "cpu", gen)
    with pytest.raises(ValueError, match=match):
        gh_kernels.aggregate(sets, "graddrop", **options)
    with pytest.raises(ValueError, match=match):
        gh_kernels.MultiTaskHarmonizer([torch.zeros(3, requires_grad=True)], method="graddrop", **options).backward(
            [torch.zeros(3, requires_grad=True).sum()] * 3)


def test_not_a_function_of_the_gram_matrix():
    with pytest.raises(ValueError, match="'trimmed-mean' works per coordinate"):
        gh_kernels.weights(torch.eye(3), "trimmed-mean")
    with pytest.raises(ValueError, match="'graddrop' works per coordinate"):
        gh_kernels.weights(torch.eye(3), "graddrop")


def test_all_or_nothing(backend, gen):
    """A write target that breaks the out= rules: nothing written, the generator not moved."""
    sets = make_sets(3, torch.float32, "cpu", gen, sizes_for(backend), absent=False)
    out = [torch.zeros_like(t) for t in sets[0]]
    out[3] = out[3].requires_grad_()
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    for method, options in (("trimmed-mean", {"trim_number": 1}), ("graddrop", {"generator": g})):
        with pytest.raises(ValueError, match=r"out\[3\]"):
            gh_kernels.aggregate(sets, method, out=out, backend=backend, **options)
        assert all(float(t.detach().abs().sum()) == 0 for t in out)
    assert torch.equal(g.get_state(), state)


class _Allocations(TorchDispatchMode):
    """Counts the elements of every tensor a factory op creates."""

    FACTORIES = ("empty", "zeros", "ones", "full", "rand", "randn", "empty_like", "zeros_like", "empty_strided",
                 "clone", "stack", "cat", "sort", "_to_copy")

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0] in self.FACTORIES:
            for t in (result if isinstance(result, (tuple, list)) else [result]):
                if isinstance(t, torch.Tensor):
                    self.elements += t.numel()
        return result


def test_extra_memory_is_at_most_the_output(gen):
    if "cpu" not in gh_kernels.available_backends():
        pytest.skip("the C++ extension is not built")
    sets = make_sets(4, torch.float32, "cpu", gen, absent=False)
    out = [torch.empty_like(t) for t in sets[0]]
    N = sum(t.numel() for t in out)
    for method, options, limit in (("trimmed-mean", {"trim_number": 1}, 64), ("graddrop", {}, N + 64)):
        with _Allocations() as counter:
            gh_kernels.aggregate(sets, method, out=out, backend="cpu", **options)
        assert counter.elements <= limit, (method, counter.elements, N)
