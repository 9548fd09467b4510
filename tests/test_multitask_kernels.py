"""Gram and combine over K = 5..8 gradient sets and over K = 9..64 (the CPU kernels' wide tiles, NOTE: [Wide Gram
tile] in csrc/cpu/gram.cpp; the Triton any-K kernels, backends/triton/anyk.py) on every (device, backend) pair,
against the float64 reference, with awkward sizes, holes (None) and every dtype; and what happens above a
backend's limit."""
import logging

import pytest
import torch

import gh_kernels
from gh_kernels import backends
from gh_kernels.ops.constants import MAX_SETS
from helpers import assert_field_error, gram_on_threads, make_set, on, plain_torch_gram

SIZES = [1, 7, 33, (5, 13), 257, 1031]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
FLOOR = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2, torch.float16: 1e-3}


def k_sets(K, dtype, gen, sizes=SIZES):
    sets = [make_set(sizes, dtype, gen) for _ in range(K)]
    for k in range(K):  # holes: set k has no gradient for parameter k (mod P); parameter 0 stays in set 0 at least
        if k % len(sizes) != 0:
            sets[k][k % len(sizes)] = None
    return sets


def dense(sets):
    like = [next(s[p] for s in sets if s[p] is not None) for p in range(len(sets[0]))]
    return torch.stack([torch.cat([(t if t is not None else torch.zeros_like(r)).double().flatten() for t, r in zip(s, like)])
                        for s in sets])


@pytest.mark.parametrize("K", [5, 6, 7, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_and_combine_k_sets(device, backend, K, dtype, gen):
    check_k_sets(device, backend, K, dtype, gen, SIZES)


# Sizes around the wide tiles (1024 elements) and a work item (65536), with the block edges of K (3 and 4 rows).
WIDE_SIZES = [1, 15, 1023, 1025, (33, 65), 2049]


@pytest.mark.parametrize("K", [9, 10, 13, 20, 41, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_and_combine_any_k(device, backend, K, dtype, gen):
    limit = backends.BACKENDS[backend].limit()
    if limit is not None and K > limit:
        pytest.skip(f"backend {backend!r} takes at most {limit} sets")
    interpreted = backend == "triton" and device == "cpu"
    if interpreted and K != 9 and dtype != torch.float32:
        pytest.skip("the Triton interpreter runs K = 9 in every dtype, the other K in float32 (CI time)")
    # 70001: past a CPU work item (65536 elements); the interpreter's items are 256 elements
    check_k_sets(device, backend, K, dtype, gen, WIDE_SIZES + ([70001] if K == 13 and not interpreted else []))


@pytest.mark.parametrize("K", [2, 13])
def test_cpu_gram_bits_do_not_depend_on_threads(K, gen):
    """The C++ Gram's fixed item groups (gram.cpp, kGramGroups): 1 and 2 threads give the same bits, on a list
    of more items than groups (many small parameters and one over several 64K-element items)."""
    if "cpu" not in gh_kernels.available_backends():
        pytest.skip("the C++ extension is not built")
    one, two = gram_on_threads(k_sets(K, torch.float32, gen, [3] * 150 + [200001]), (1, 2), backend="cpu")
    assert torch.equal(one, two)


def check_k_sets(device, backend, K, dtype, gen, sizes):
    sets = on(k_sets(K, dtype, gen, sizes), device)
    J = dense(sets)
    G = gh_kernels.gram(sets, backend=backend)
    assert G.shape == (K, K) and G.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(G, G.T)
    assert_field_error(G, J @ J.T, plain_torch_gram(sets, dtype), FLOOR[dtype] * (J @ J.T).abs().max().item(),
                       f"gram K={K} {dtype} seed={gen.initial_seed()}")
    w = torch.randn(K, generator=gen).to(device)
    out = gh_kernels.combine(w, sets, backend=backend)
    ref = w.double().cpu() @ J
    plain = sum(w[k].to(dtype) * torch.cat([(t if t is not None else torch.zeros(s if isinstance(s, tuple) else (s,), dtype=dtype,
                                                                                    device=device)).flatten()
                                            for t, s in zip(sets[k], sizes)]) for k in range(K))
    got = torch.cat([o.flatten() for o in out])
    assert_field_error(got, ref, plain, FLOOR[dtype], f"combine K={K} {dtype} seed={gen.initial_seed()}")
    G2 = gh_kernels.gram(sets, backend=backend)
    assert torch.equal(G, G2), "the Gram pass is deterministic"


def test_max_sets_is_eight():
    assert MAX_SETS >= 8


def test_explicit_backend_above_its_limit_raises_and_auto_falls_back(caplog):
    """The CPU kernels' Gram and combine take any K; their per-coordinate kernel takes MAX_SETS sets: named
    explicitly above that it raises, chosen automatically it falls back to 'torch' (logged)."""
    sets = [make_set([10, 3]) for _ in range(MAX_SETS + 1)]
    with pytest.raises(ValueError, match=f"backend='cpu' handles at most {MAX_SETS} gradient sets in coordinate_; "
                                         f"got {MAX_SETS + 1}"):
        backends.resolve("cpu", torch.device("cpu"), MAX_SETS + 1, op="coordinate_")
    from gh_kernels.backends import registry
    registry._logged.clear()  # logged once per process: another test may have hit the same fallback
    with caplog.at_level(logging.INFO, logger="gh_kernels"):
        assert backends.resolve(None, torch.device("cpu"), MAX_SETS + 1, op="coordinate_") == "torch"
        assert backends.resolve(None, torch.device("cpu"), 64) == "cpu"
    assert any("falling back" in r.getMessage() and f"{MAX_SETS + 1} gradient sets" in r.getMessage() for r in caplog.records)
    out = gh_kernels.aggregate(sets, "trimmed-mean", trim_number=2, backend="torch")
    with pytest.raises(ValueError, match="backend='cpu' runs 'trimmed-mean' for K <= 8"):
        gh_kernels.aggregate(sets, "trimmed-mean", trim_number=2, backend="cpu")
    auto = gh_kernels.aggregate(sets, "trimmed-mean", trim_number=2)
    assert all(torch.equal(a, b) for a, b in zip(out.out, auto.out))


@pytest.mark.parametrize("op", ["gram", "combine"])
def test_any_k_bad_input_writes_nothing(op, gen):
    """All or nothing above MAX_SETS: a wrong shape in the last of 13 sets raises naming it; out is untouched."""
    sets = [make_set([5, 7], torch.float32, gen) for _ in range(13)]
    sets[12][1] = torch.randn(8, generator=gen)
    out = [torch.full((5,), 3.0), torch.full((7,), 3.0)]
    with pytest.raises(ValueError, match=r"\[12\]\[1\] has shape \(8,\)"):
        if op == "gram":
            gh_kernels.gram(sets, backend="cpu")
        else:
            gh_kernels.combine(torch.ones(13), sets, out=out, backend="cpu")
    assert all(torch.equal(o, torch.full_like(o, 3.0)) for o in out)
