"""gram: every (device, backend) pair against the float64 reference; layouts and determinism."""
import pytest
import torch

import gh_kernels
from gh_kernels.reference import gram_reference

from helpers import DTYPES, EPS, assert_field_error, make_set, on, plain_torch_gram

# Awkward sizes: empty, 1, odd, around powers of two and typical chunk sizes.
SIZES = [0, 1, 3, 17, (5, 7), 127, 128, 129, 1023, 1025, (3, 1, 5)]


def _floor(G, dtype, n):
    d = G.diagonal().abs().sqrt()
    return float(4 * EPS[torch.float32] * (d.max() ** 2 + 1) * (1 + n ** 0.5) * 1e-0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_sets", [1, 2, 3, 4])
def test_gram_matches_reference(device, backend, dtype, num_sets, gen):
    sets = [make_set(SIZES + ([16383, 16385, 70001] if device == "cuda" else []), dtype, gen) for _ in range(num_sets)]
    G = gh_kernels.gram(on(sets, device), backend=backend)
    assert G.dtype == torch.float32 and G.shape == (num_sets, num_sets) and G.device.type == device
    G = G.cpu()
    ref = gram_reference(sets)
    n = sum(t.numel() for t in sets[0])
    assert_field_error(G, ref, plain_torch_gram(sets, dtype), _floor(ref, dtype, n), f"{backend} {dtype} seed={gen.initial_seed()}")
    assert torch.equal(G, G.T)


def test_gram_none_entries_are_zero(device, backend, gen):
    g1 = make_set([4, 6, 9], torch.float32, gen)
    g2 = make_set([4, 6, 9], torch.float32, gen)
    g1[1] = None
    g2[2] = None
    G = gh_kernels.gram(on([g1, g2], device), backend=backend).cpu()
    ref = gram_reference([g1, g2])
    torch.testing.assert_close(G.double(), ref, rtol=1e-5, atol=1e-5)


def test_gram_mixed_dtypes_across_list(device, backend, gen):
    sizes = [33, 64, 7, 100]
    dts = [torch.float32, torch.bfloat16, torch.float16, torch.float32]
    g1 = [t.to(d) for t, d in zip(make_set(sizes, torch.float32, gen), dts)]
    g2 = [t.to(d) for t, d in zip(make_set(sizes, torch.float32, gen), dts)]
    G = gh_kernels.gram(on([g1, g2], device), backend=backend).cpu()
    ref = gram_reference([g1, g2])
    torch.testing.assert_close(G.double(), ref, rtol=1e-5, atol=1e-4)


def test_gram_non_contiguous(device, backend, gen):
    a = torch.randn(9, 13, generator=gen, device="cpu").to(device)
    b = torch.randn(13, 9, generator=gen, device="cpu").to(device)
    g1 = [a.t(), a[::2, 1:]]           # transposed (dense) and sliced (not dense)
    g2 = [b, b.t()[::2, 1:]]
    before = [t.clone() for t in g1 + g2]
    G = gh_kernels.gram([g1, g2], backend=backend)
    g1, g2 = on([g1, g2], "cpu")
    torch.testing.assert_close(G.double(), gram_reference([g1, g2]), rtol=1e-5, atol=1e-5)
    for t, c in zip(g1 + g2, before):
        assert torch.equal(t, c)


def test_gram_single_tensor_sets(backend, gen):
    a, b = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
    G = gh_kernels.gram([a, b], backend=backend)
    torch.testing.assert_close(G.double(), gram_reference([[a], [b]]), rtol=1e-5, atol=1e-5)


def test_gram_is_deterministic(device, backend, gen):
    sizes = [1000, 3, 517] if device == "cpu" else [3_000_001, 17, 65537]
    sets = on([make_set(sizes, torch.bfloat16, gen) for _ in range(2)], device)
    first = gh_kernels.gram(sets, backend=backend)
    for _ in range(3):
        assert torch.equal(gh_kernels.gram(sets, backend=backend), first)


def test_gram_inputs_unchanged(backend, gen):
    sets = [make_set([10, 20], torch.float16, gen) for _ in range(2)]
    copies = [[t.clone() for t in s] for s in sets]
    gh_kernels.gram(sets, backend=backend)
    for s, c in zip(sets, copies):
        for t, u in zip(s, c):
            assert torch.equal(t, u)


def test_gram_non_finite_propagates(backend):
    g1 = [torch.tensor([1.0, float("inf")]), torch.ones(3)]
    g2 = [torch.tensor([1.0, 2.0]), torch.tensor([float("nan"), 1.0, 1.0])]
    G = gh_kernels.gram([g1, g2], backend=backend)
    assert not torch.isfinite(G).all()
