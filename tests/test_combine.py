"""combine: every (device, backend) pair against the float64 reference; aliasing and accumulation."""
import pytest
import torch

import gh_kernels
from gh_kernels.reference import combine_reference

from helpers import DTYPES, EPS, assert_field_error, make_set, on

SIZES = [0, 1, 3, 17, (5, 7), 127, 128, 129, 1023, 1025]


def _plain(w, sets, dtype, init=None):
    """Plain torch at the input dtype: w1*g1 + w2*g2 with every op rounded to dtype."""
    res = []
    for p in range(len(sets[0])):
        acc = init[p].clone() if init is not None else None
        for k, s in enumerate(sets):
            term = s[p] * w[k].to(dtype)
            acc = term if acc is None else acc + term
        res.append(acc)
    return res


def _check(out, ref, plain, dtype, what):
    for o, r, b in zip(on([out], "cpu")[0], ref, plain):
        floor = 2 * EPS[dtype] * (r.abs().max().item() if r.numel() else 0.0) + 1e-30
        assert_field_error(o, r, b, floor, what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_sets", [1, 2, 3, 4])
def test_combine_matches_reference(device, backend, dtype, num_sets, gen):
    sizes = SIZES + ([16383, 16385, 70001, (33, 65, 3)] if device == "cuda" else [])  # CUDA chunk boundaries
    sets = [make_set(sizes, dtype, gen) for _ in range(num_sets)]
    w = torch.randn(num_sets, generator=gen) * 2
    out = gh_kernels.combine(w.to(device), on(sets, device), backend=backend)
    assert all(o.dtype == dtype and o.shape == s.shape for o, s in zip(out, sets[0]))
    _check(out, combine_reference(w, sets), _plain(w, sets, dtype), dtype, f"{backend} {dtype} seed={gen.initial_seed()}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alias", [0, 1])
def test_combine_in_place_alias(device, backend, dtype, alias, gen):
    g1, g2 = make_set(SIZES, dtype, gen), make_set(SIZES, dtype, gen)
    ref = combine_reference(torch.tensor([1.5, -0.25]), [g1, g2])
    plain = _plain(torch.tensor([1.5, -0.25]), [g1, g2], dtype)
    g1, g2 = on([g1, g2], device)
    target = [g1, g2][alias]
    ids = [t.data_ptr() for t in target]
    out = gh_kernels.combine(torch.tensor([1.5, -0.25], device=device), [g1, g2], out=target, backend=backend)
    assert [t.data_ptr() for t in out] == ids
    _check(out, ref, plain, dtype, f"{backend} alias={alias}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_combine_accumulate(device, backend, dtype, gen):
    g1, g2 = make_set(SIZES, dtype, gen), make_set(SIZES, dtype, gen)
    init = make_set(SIZES, dtype, gen)
    w = torch.tensor([0.75, 2.0])
    ref = combine_reference(w, [g1, g2], out_init=init)
    plain = _plain(w, [g1, g2], dtype, init)
    out = on([init], device)[0]
    gh_kernels.combine(w.to(device), on([g1, g2], device), out=out, accumulate=True, backend=backend)
    _check(out, ref, plain, dtype, f"{backend} accumulate")


def test_combine_accumulate_onto_aliased_input(backend, gen):
    g1, g2 = make_set([33, 7], torch.float32, gen), make_set([33, 7], torch.float32, gen)
    w = torch.tensor([2.0, 3.0])
    ref = combine_reference(w, [g1, g2], out_init=g2)
    gh_kernels.combine(w, [g1, g2], out=g2, accumulate=True, backend=backend)
    for o, r in zip(g2, ref):
        torch.testing.assert_close(o.double(), r, rtol=1e-6, atol=1e-6)


def test_combine_none_entries(backend, gen):
    g1 = make_set([5, 6, 7], torch.float32, gen)
    g2 = make_set([5, 6, 7], torch.float32, gen)
    g1[0] = None
    g2[2] = None
    w = torch.tensor([0.5, 4.0])
    out = gh_kernels.combine(w, [g1, g2], backend=backend)
    for o, r in zip(out, combine_reference(w, [g1, g2])):
        torch.testing.assert_close(o.double(), r, rtol=1e-6, atol=1e-6)
    # A parameter no set reaches: no tensor is invented for it.
    out = gh_kernels.combine(w, [[None, g1[1]], [None, g2[1]]], backend=backend)
    assert out[0] is None


def test_combine_non_contiguous(device, backend, gen):
    a, b = torch.randn(8, 6, generator=gen).to(device), torch.randn(6, 8, generator=gen).to(device)
    a2 = torch.randn(8, 6, generator=gen).to(device)
    g1 = [a.t(), a2[:, ::2]]
    g2 = [b, b.t()[:, ::2]]
    w = torch.tensor([1.25, -0.5])
    ref = combine_reference(w, on([g1, g2], "cpu"))
    out_buf = torch.empty(16, 8, device=device)
    out = [torch.empty(8, 6, device=device).t(), out_buf[::2, :3]]   # transposed and strided outs
    gh_kernels.combine(w.to(device), [g1, g2], out=out, backend=backend)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o.cpu().double(), r, rtol=1e-6, atol=1e-6)
    # in place into a non-contiguous input
    gh_kernels.combine(w.to(device), [g1, g2], out=g1, backend=backend)
    for o, r in zip(g1, ref):
        torch.testing.assert_close(o.cpu().double(), r, rtol=1e-6, atol=1e-6)


def test_combine_inputs_not_aliased_stay_unchanged(backend, gen):
    g1, g2 = make_set([100, 3], torch.bfloat16, gen), make_set([100, 3], torch.bfloat16, gen)
    c1, c2 = [t.clone() for t in g1], [t.clone() for t in g2]
    gh_kernels.combine(torch.tensor([1.0, 2.0]), [g1, g2], backend=backend)
    assert all(torch.equal(a, b) for a, b in zip(g1 + g2, c1 + c2))


def test_combine_keeps_non_finite(backend):
    g1 = [torch.tensor([1.0, float("inf"), 2.0])]
    g2 = [torch.tensor([float("nan"), 1.0, 1.0])]
    out = gh_kernels.combine(torch.tensor([1.0, 1.0]), [g1, g2], backend=backend)
    assert torch.isnan(out[0][0]) and torch.isinf(out[0][1]) and out[0][2] == 3.0
