"""Gram and combine over K = 5..8 gradient sets (the fused kernels' new range) on every (device, backend)
pair, against the float64 reference, with awkward sizes, holes (None) and every dtype; and what happens
above a backend's limit."""
import logging

import pytest
import torch

import gh_kernels
from gh_kernels.ops.constants import MAX_SETS
from helpers import assert_field_error, make_set, on, plain_torch_gram

SIZES = [1, 7, 33, (5, 13), 257, 1031]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
FLOOR = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2, torch.float16: 1e-3}


def k_sets(K, dtype, gen):
    sets = [make_set(SIZES, dtype, gen) for _ in range(K)]
    for k in range(K):  # holes: set k has no gradient for parameter k (mod P); parameter 0 stays in set 0 at least
        if k % len(SIZES) != 0:
            sets[k][k % len(SIZES)] = None
    return sets


def dense(sets):
    like = [next(s[p] for s in sets if s[p] is not None) for p in range(len(sets[0]))]
    return torch.stack([torch.cat([(t if t is not None else torch.zeros_like(r)).double().flatten() for t, r in zip(s, like)])
                        for s in sets])


@pytest.mark.parametrize("K", [5, 6, 7, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_and_combine_k_sets(device, backend, K, dtype, gen):
    sets = on(k_sets(K, dtype, gen), device)
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
                                            for t, s in zip(sets[k], SIZES)]) for k in range(K))
    got = torch.cat([o.flatten() for o in out])
    assert_field_error(got, ref, plain, FLOOR[dtype], f"combine K={K} {dtype} seed={gen.initial_seed()}")
    G2 = gh_kernels.gram(sets, backend=backend)
    assert torch.equal(G, G2), "the Gram pass is deterministic"


def test_max_sets_is_eight():
    assert MAX_SETS >= 8


def test_explicit_backend_above_its_limit_raises_and_auto_falls_back(caplog):
    sets = [make_set([10, 3]) for _ in range(MAX_SETS + 1)]
    with pytest.raises(ValueError, match=f"backend='cpu' handles at most {MAX_SETS} gradient sets; got {MAX_SETS + 1}"):
        gh_kernels.gram(sets, backend="cpu")
    from gh_kernels.backends import registry
    registry._logged.clear()  # logged once per process: another test may have hit the same fallback
    with caplog.at_level(logging.INFO, logger="gh_kernels"):
        G = gh_kernels.gram(sets)
    assert any("falling back" in r.getMessage() and f"{MAX_SETS + 1} gradient sets" in r.getMessage() for r in caplog.records)
    J = dense(sets)
    torch.testing.assert_close(G.double(), J @ J.T, rtol=1e-5, atol=1e-5)
