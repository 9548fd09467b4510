"""CUDA backends ('cuda' extension kernels, 'triton', and 'torch' on CUDA tensors) against the
float64 reference. Skipped without a GPU; bench/gpu_check.sh runs them on the device machine
(with TRITON_INTERPRET=0 so Triton compiles for the GPU)."""
import pytest
import torch

import gh_kernels
from gh_kernels.reference import combine_reference, gram_reference, weights_reference

from conftest import DTYPES, EPS, assert_field_error, backends_for, conflicting_pair, make_set, plain_torch_gram

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SIZES = [0, 1, 3, 17, (5, 7), 1023, 1025, 16383, 16384, 16385, 70001, (33, 65, 3)]


def cuda_backends():
    return backends_for("cuda", ("cuda", "triton", "torch")) if torch.cuda.is_available() else []


@pytest.fixture(params=cuda_backends() or ["none"])
def cb(request):
    return request.param


def _on(s):
    return [None if t is None else t.cuda() for t in s]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_sets", [1, 2, 3, 4])
def test_gram(cb, dtype, num_sets, gen):
    sets = [make_set(SIZES, dtype, gen) for _ in range(num_sets)]
    G = gh_kernels.gram([_on(s) for s in sets], backend=cb)
    assert G.is_cuda and G.dtype == torch.float32
    ref = gram_reference(sets)
    floor = 16 * EPS[torch.float32] * float(ref.diagonal().max()) * 100
    assert_field_error(G.cpu(), ref, plain_torch_gram(sets, dtype), floor, f"{cb} seed={gen.initial_seed()}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("alias", [None, 0, 1])
def test_combine(cb, dtype, accumulate, alias, gen):
    g1, g2 = make_set(SIZES, dtype, gen), make_set(SIZES, dtype, gen)
    init = make_set(SIZES, dtype, gen) if alias is None else [g1, g2][alias]
    w = torch.randn(2, generator=gen)
    ref = combine_reference(w, [g1, g2], out_init=init if accumulate else None)
    c1, c2 = _on(g1), _on(g2)
    out = [c1, c2][alias] if alias is not None else _on(init)
    gh_kernels.combine(w.cuda(), [c1, c2], out=out, accumulate=accumulate, backend=cb)
    # plain torch at this dtype: every product and sum rounded to dtype
    plain = []
    for p in range(len(g1)):
        y = g1[p] * w[0].to(dtype) + g2[p] * w[1].to(dtype)
        plain.append(y + init[p] if accumulate else y)
    for o, r, b in zip(out, ref, plain):
        floor = 2 * EPS[dtype] * (r.abs().max().item() if r.numel() else 0.0) + 1e-30
        assert_field_error(o.cpu(), r, b, floor, f"{cb} seed={gen.initial_seed()}")


def test_none_mixed_noncontiguous(cb, gen):
    a = torch.randn(64, 48, generator=gen)
    g1 = [a.t(), torch.randn(300, generator=gen).bfloat16(), None, torch.randn(7, generator=gen)]
    g2 = [torch.randn(48, 64, generator=gen), torch.randn(300, generator=gen).bfloat16(), torch.randn(5, generator=gen), None]
    G = gh_kernels.gram([_on(g1), _on(g2)], backend=cb)
    torch.testing.assert_close(G.cpu().double(), gram_reference([g1, g2]), rtol=1e-4, atol=1e-3)
    w = torch.tensor([1.5, -0.5])
    base = torch.empty(64, 96, device="cuda")
    out = [torch.empty(64, 48, device="cuda").t(), torch.empty(300, device="cuda", dtype=torch.bfloat16),
           base[:, ::2][:5, 0].contiguous(), torch.empty(7, device="cuda")]
    gh_kernels.combine(w.cuda(), [_on(g1), _on(g2)], out=out, backend=cb)
    for o, r in zip(out, combine_reference(w, [g1, g2])):
        torch.testing.assert_close(o.cpu().double(), r, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("method", ["sum", "gh", "gh++", "gh++released"])
def test_weights(cb, method, gen):
    for strength in (0.3, 0.9, 3.0):
        g1, g2 = conflicting_pair([4000, 77], torch.float32, gen, strength)
        G = gh_kernels.gram([g1, g2])
        for kappa in (0.0, 0.5, 1.0):
            w = gh_kernels.weights(G.cuda(), method, kappa=kappa, backend=cb)
            torch.testing.assert_close(w.cpu().double(), weights_reference(G.double(), method, kappa), rtol=1e-5, atol=1e-6)
    for G in ([[0.0, 0.0], [0.0, 1.0]], [[1.0, float("inf")], [float("inf"), 1.0]], [[1.0, -1.0000002], [-1.0000002, 1.0]]):
        w = gh_kernels.weights(torch.tensor(G, device="cuda"), method, backend=cb)
        assert torch.isfinite(w).all()


def test_deterministic(cb, gen):
    sets = [_on(make_set([3_000_001, 17, 65537], torch.bfloat16, gen)) for _ in range(2)]
    first = gh_kernels.gram(sets, backend=cb)
    for _ in range(5):
        assert torch.equal(gh_kernels.gram(sets, backend=cb), first)


def test_no_host_sync(cb, gen):
    g1, g2 = conflicting_pair([100_000, 33, 5000], torch.float32, gen)
    g1, g2 = _on(g1), _on(g2)
    out = [torch.empty_like(t) for t in g1]
    gh_kernels.harmonize(g1, g2, method="gh++", out=out, backend=cb)  # warm-up: compile, caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for method in ("gh", "gh++", "gh++released"):
            gh_kernels.harmonize(g1, g2, method=method, out=out, backend=cb)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_harmonizer_on_cuda_no_sync(cb):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).cuda()
    x = torch.randn(16, 32, device="cuda")
    h = gh_kernels.Harmonizer(model.parameters(), method="gh++", backend=cb)
    for step in range(2):
        model.zero_grad(set_to_none=True)
        out = model(x)
        l1, l2 = out[:, :2].pow(2).mean(), -out[:, 1:].mean()
        if step == 1:
            torch.cuda.set_sync_debug_mode("error")
        try:
            res = h.backward(l1, l2, scale1=0.5)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(res.weights).all()


def test_backends_agree(gen):
    names = cuda_backends()
    g1, g2 = conflicting_pair([123457, 999, 31], torch.float32, gen)
    g1, g2 = _on(g1), _on(g2)
    results = {}
    for b in names:
        out = [torch.empty_like(t) for t in g1]
        results[b] = (gh_kernels.harmonize(g1, g2, method="gh++", out=out, backend=b), out)
    for b in names[1:]:
        torch.testing.assert_close(results[b][0], results[names[0]][0], rtol=1e-5, atol=1e-6)
        for x, y in zip(results[b][1], results[names[0]][1]):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
