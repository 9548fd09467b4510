"""float64 gradients on every (device, backend): float64 accumulation, a float64 Gram matrix and
float64 weights, against the float64 reference within twice plain torch's float64 error."""
import pytest
import torch

import gh_kernels
from gh_kernels.reference import combine_reference, gram_reference, weights_reference

from helpers import assert_field_error, conflicting_pair, make_set, on, plain_torch_gram
from models import ToyDANN

SIZES = [0, 1, 3, 17, (5, 7), 1023, 1025, (3, 1, 5), 5000]
EPS64 = 2.0 ** -52


def test_gram_float64(device, backend, gen):
    sets = [make_set(SIZES, torch.float64, gen) for _ in range(3)]
    G = gh_kernels.gram(on(sets, device), backend=backend)
    assert G.dtype == torch.float64
    ref = gram_reference(sets)
    n = sum(t.numel() for t in sets[0])
    floor = 8 * EPS64 * float(ref.diagonal().max()) * n ** 0.5
    assert_field_error(G.cpu(), ref, plain_torch_gram(sets, torch.float64), floor, f"{backend} seed={gen.initial_seed()}")


def test_combine_float64(device, backend, gen):
    g1, g2 = make_set(SIZES, torch.float64, gen), make_set(SIZES, torch.float64, gen)
    w = torch.tensor([0.3, -1.7], dtype=torch.float64)
    out = gh_kernels.combine(w.to(device), on([g1, g2], device), backend=backend)
    for o, r, a, b in zip(out, combine_reference(w, [g1, g2]), g1, g2):
        plain = a * w[0] + b * w[1]
        floor = 2 * EPS64 * (r.abs().max().item() if r.numel() else 0.0) + 1e-300
        assert_field_error(o.cpu(), r, plain, floor, f"{backend}")


@pytest.mark.parametrize("method", gh_kernels.METHODS)
def test_harmonize_float64_weights_are_float64(device, backend, method, gen):
    g1, g2 = on([[t.double() for t in s] for s in conflicting_pair([300, 7, 41], torch.float32, gen, 0.8)], device)
    res = gh_kernels.harmonize(g1, g2, method=method, backend=backend)
    assert res.weights.dtype == res.gram.dtype == torch.float64
    G = gram_reference(on([g1, g2], "cpu"))
    w_ref = weights_reference(G, method, 0.5)
    torch.testing.assert_close(res.weights.cpu(), w_ref, rtol=1e-12, atol=1e-12)  # float32 weights would miss this
    for o, r in zip(res.out, combine_reference(w_ref, on([g1, g2], "cpu"))):
        torch.testing.assert_close(o.cpu(), r, rtol=1e-12, atol=1e-12)


def test_harmonizer_float64_model(backend):
    torch.manual_seed(0)
    model = ToyDANN().double()
    batch = [t.double() if t.is_floating_point() else t for t in model.batch(3)]
    dom, cls = model.losses(*batch)
    g1 = torch.autograd.grad(dom, list(model.parameters()), retain_graph=True, allow_unused=True)
    g2 = torch.autograd.grad(cls, list(model.parameters()), retain_graph=True, allow_unused=True)
    shared = [g2i is not None for g2i in g2]
    G = gram_reference([[a if s else None for a, s in zip(g1, shared)], [b if s else None for b, s in zip(g2, shared)]])
    w = weights_reference(G, "gh++", 0.5)
    h = gh_kernels.Harmonizer(model.parameters(), method="gh++", backend=backend)
    res = h.backward(dom, cls)
    assert res.weights.dtype == torch.float64
    torch.testing.assert_close(res.weights, w, rtol=1e-10, atol=1e-12)
    for p, a, b in zip(model.parameters(), g1, g2):
        expected = sum(x for x in (None if a is None else w[0] * a, None if b is None else w[1] * b) if x is not None)
        torch.testing.assert_close(p.grad, expected, rtol=1e-10, atol=1e-12)
