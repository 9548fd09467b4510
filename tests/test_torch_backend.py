"""The pure-torch backend's own guarantees (safety issue D9): a Gram matrix bitwise independent of the
thread count, and exact chunked paths for large tensors (Gram rows, combine chunks, aliasing)."""
import pytest
import torch

import gh_kernels
from gh_kernels.reference import combine_reference, gram_reference

from helpers import EPS, gram_on_threads, make_set


# ---------------------------------------------------------------- D9: torch backend Gram, thread-count independent
def test_torch_gram_is_bitwise_stable_across_thread_counts(gen):
    sets = [make_set([100_003, 4096 * 3, 5, (70, 1000)], torch.float32, gen) for _ in range(3)]
    results = gram_on_threads(sets)
    assert all(torch.equal(r, results[0]) for r in results)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_backend_chunked_paths(dtype, gen):
    """Tensors above CHUNK elements / ROWS_PER_CALL rows: chunked Gram and combine, aliasing, accumulation."""
    from gh_kernels.backends.pytorch import kernels as tb

    n = tb.CHUNK + 3 * tb.BLOCK + 5  # > one combine chunk and > ROWS_PER_CALL rows, with a tail
    g1, g2 = make_set([n, 7], dtype, gen), make_set([n, 7], dtype, gen)
    threads = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2):
            torch.set_num_threads(t)
            results.append(gh_kernels.gram([g1, g2], backend="torch"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])
    torch.testing.assert_close(results[0].double(), gram_reference([g1, g2]), rtol=1e-5, atol=1e-2)
    w = torch.tensor([0.75, -1.5])
    init = [t.clone() for t in g2]
    expect = combine_reference(w, [g1, g2], out_init=init)
    gh_kernels.combine(w, [g1, g2], out=g2, accumulate=True, backend="torch")  # out aliases g2, chunk for chunk
    for p, (o, r) in enumerate(zip(g2, expect)):
        terms = init[p].double().abs() + 0.75 * g1[p].double().abs() + 1.5 * init[p].double().abs()
        bound = 2 * EPS[dtype] * r.abs() + 4 * EPS[torch.float32] * terms + 2.0 ** -24
        assert ((o.double() - r).abs() <= bound).all(), f"seed={gen.initial_seed()}"
    x = g1[0].clone()
    gh_kernels.combine(torch.tensor([2.0, 3.0]), [[x], [x]], out=[x], backend="torch")  # one tensor, both sets
    torch.testing.assert_close(x.double(), 5 * g1[0].double(), rtol=2 * EPS[dtype], atol=0)


@pytest.mark.parametrize("alias", ["none", "set0", "set1", "set1 views", "mixed", "both sets"])
def test_small_tensor_combine_in_place_chains(alias, gen):
    """NOTE: [In-place chains]: outs that are a set's memory (the same tensors, or other views of the same memory),
    outs of their own, and mixtures give sum_k w_k g_k on small tensors of 1-D and N-D shapes."""
    from gh_kernels.backends.pytorch import kernels as K
    shapes = [(8,), (3, 5), (1,), (2, 2, 3), (4096,)]
    a = [torch.randn(s, generator=gen) for s in shapes]
    b = a if alias == "both sets" else [torch.randn(s, generator=gen) for s in shapes]
    w = torch.tensor([0.75, -1.5])
    want = [0.75 * x.double() - 1.5 * y.double() for x, y in zip(a, b)]
    out = {"none": [torch.empty(s) for s in shapes], "set0": a, "set1": b, "set1 views": [t.view_as(t) for t in b],
           "mixed": [a[0], b[1], torch.empty(shapes[2]), a[3], b[4]], "both sets": a}[alias]
    K.combine_(out, a + b, 2, w, False)
    for o, r in zip(out, want):
        torch.testing.assert_close(o.double(), r, rtol=1e-6, atol=1e-6)


def test_small_tensor_gram_rows_are_thread_count_independent(gen):
    """NOTE: [Small tensors in rows]: 1-D and N-D small tensors, absent sets, a large tensor: the float64
    reference within float32 rounding, and bitwise the same result on 1 and 2 threads."""
    from gh_kernels.reference import gram_reference
    shapes = [(8,), (3, 5), (5000,), (0,), (4096,), (70, 70), (2, 3)] * 30
    sets = [[None if (k == 1 and i % 7 == 2) else torch.randn(s, generator=gen) for i, s in enumerate(shapes)]
            for k in range(3)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gh_kernels.gram(sets, backend="torch")
        torch.set_num_threads(2)
        two = gh_kernels.gram(sets, backend="torch")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    ref = gram_reference(sets)
    assert ((one.double() - ref).abs() <= 1e-5 * ref.abs().max()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gram_blocks_above_8_sets(dtype, gen):
    """NOTE: [Gram blocks above 8 sets]: K = 13 sets (one absent from a parameter, which takes the pairs' path)
    over small tensors, a large one with a tail and one above a matmul call's rows: the float64 reference within
    the accumulation's rounding, symmetric, and bitwise the same on 1, 2 and 3 threads."""
    from gh_kernels.backends.pytorch import kernels as tb
    sizes = [5, (3, 7), 100_003, 4096 * 3, tb.BLOCK_GRAM_ELEMENTS // (13 * tb.BLOCK) * tb.BLOCK + 17]
    sets = [make_set(sizes, dtype, gen) for _ in range(13)]
    sets[4][1] = None
    results = gram_on_threads(sets)
    assert all(torch.equal(r, results[0]) for r in results) and torch.equal(results[0], results[0].T)
    ref = gram_reference(sets)
    # rounding of BLOCK-element float32 (float64) rows: a few hundred ulps of the largest squared norm at most
    eps = 2.0 ** -52 if dtype == torch.float64 else 2.0 ** -23
    scale = max(sum(t.double().pow(2).sum() for t in s if t is not None) for s in sets)
    assert float((results[0].double() - ref).abs().max()) <= 1024 * eps * float(scale)
