"""Triton-specific checks under TRITON_INTERPRET=1: chunk boundaries, launch splitting, alignment,
determinism and the arc-cosine used by the weights kernel. (The generic tests also run every
public function with backend='triton'.)"""
import math

import pytest
import torch

triton = pytest.importorskip("triton")

import gh_kernels  # noqa: E402
from gh_kernels import backends  # noqa: E402
from gh_kernels.reference import combine_reference, gram_reference  # noqa: E402

from helpers import EPS, assert_field_error, make_set, plain_torch_gram  # noqa: E402

pytestmark = pytest.mark.skipif("triton" not in gh_kernels.available_backends(), reason="triton not installed")


@pytest.fixture(autouse=True)
def _needs_interpreter():
    from helpers import triton_interpreter_supported

    if not triton_interpreter_supported():
        pytest.skip("the Triton interpreter runs these kernels from Triton 3.9 on")
    try:
        backends.resolve("triton", torch.device("cpu"))
    except (backends.BackendUnavailable, ValueError) as e:
        pytest.skip(str(e))


def _cfg():
    from gh_kernels.backends.triton import worklist as triton_worklist

    return triton_worklist.INTERPRETER_CONFIG


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_chunk_and_block_boundaries(dtype, gen):
    cfg = _cfg()
    sizes = []
    for n in (cfg.block, cfg.min_chunk, 2 * cfg.min_chunk):
        sizes += [n - 1, n, n + 1]
    g1, g2 = make_set(sizes, dtype, gen), make_set(sizes, dtype, gen)
    G = gh_kernels.gram([g1, g2], backend="triton")
    ref = gram_reference([g1, g2])
    floor = 8 * EPS[torch.float32] * float(ref.diagonal().max()) * math.sqrt(sum(sizes))
    assert_field_error(G, ref, plain_torch_gram([g1, g2], dtype), floor, f"seed={gen.initial_seed()}")
    w = torch.tensor([0.7, -1.3])
    out = gh_kernels.combine(w, [g1, g2], backend="triton")
    for o, r in zip(out, combine_reference(w, [g1, g2])):
        err = (o.double() - r).abs().max().item()
        assert err <= 2 * EPS[dtype] * r.abs().max().item() + 1e-30


def test_more_items_than_one_launch_holds(gen):
    cfg = _cfg()
    count = 2 * cfg.max_items_per_launch + 5  # three launches of the partials kernel
    sizes = [1 + (i * 13) % 40 for i in range(count)]
    g1, g2 = make_set(sizes, torch.float32, gen), make_set(sizes, torch.float32, gen)
    G = gh_kernels.gram([g1, g2], backend="triton")
    torch.testing.assert_close(G.double(), gram_reference([g1, g2]), rtol=1e-5, atol=1e-4)
    out = gh_kernels.combine(torch.tensor([2.0, 0.5]), [g1, g2], backend="triton")
    for o, r in zip(out, combine_reference(torch.tensor([2.0, 0.5]), [g1, g2])):
        torch.testing.assert_close(o.double(), r, rtol=1e-6, atol=1e-6)


def test_unaligned_pointers_take_the_scalar_path(gen):
    from gh_kernels.backends.triton import worklist as triton_worklist
    from gh_kernels.backends.triton.flat import flat_params

    base1, base2 = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen)
    g1, g2 = [base1[1:700]], [base2[3:702]]  # data pointers not 16-byte aligned
    launches, _, _ = triton_worklist.build(flat_params(g1 + g2, 2), 2, torch.device("cpu"), with_out=False)
    assert not launches[0].aligned
    torch.testing.assert_close(gh_kernels.gram([g1, g2], backend="triton").double(), gram_reference([g1, g2]), rtol=1e-5, atol=1e-5)


def test_bitwise_deterministic_mixed_list(gen):
    sizes = [700, 1, 0, 257, 64]
    dts = [torch.float32, torch.bfloat16, torch.float32, torch.float16, torch.bfloat16]
    g1 = [t.to(d) for t, d in zip(make_set(sizes, torch.float32, gen), dts)]
    g2 = [t.to(d) for t, d in zip(make_set(sizes, torch.float32, gen), dts)]
    first = gh_kernels.gram([g1, g2], backend="triton")
    out1 = gh_kernels.combine(torch.tensor([1.1, 0.9]), [g1, g2], backend="triton")
    for _ in range(2):
        assert torch.equal(gh_kernels.gram([g1, g2], backend="triton"), first)
        out2 = gh_kernels.combine(torch.tensor([1.1, 0.9]), [g1, g2], backend="triton")
        assert all(torch.equal(a, b) for a, b in zip(out1, out2))


import triton.language as tl  # noqa: E402

from gh_kernels.backends.triton.weights import _acos  # noqa: E402


@triton.jit
def _acos_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, _acos(tl.load(x_ptr + offs)))


def test_acos_polynomial():
    x = torch.linspace(-1, 1, 1024)
    y = torch.empty_like(x)
    _acos_kernel[(1,)](x, y, BLOCK=1024)
    err = (y.double() - torch.acos(x.double())).abs().max().item()
    assert err < 5e-7, err
