"""The backend registry: what is listed as available, the automatic choice, the environment
variable, explicit backends that cannot run, and the fallback for more sets than the fused kernels take."""
import pytest
import torch

import gh_kernels
from gh_kernels import backends
from gh_kernels.ops.constants import MAX_SETS

from helpers import make_set


def test_available_backends_and_env(monkeypatch, gen):
    names = gh_kernels.available_backends()
    assert names[0] == "torch" and set(names) <= set(backends.BACKENDS)
    g1, g2 = make_set([5, 6], torch.float32, gen), make_set([5, 6], torch.float32, gen)
    monkeypatch.setenv("GH_KERNELS_BACKEND", "torch")
    assert backends.resolve(None, torch.device("cpu")) == "torch"
    monkeypatch.setenv("GH_KERNELS_BACKEND", "cuda")
    with pytest.raises(gh_kernels.BackendUnavailable, match="GH_KERNELS_BACKEND='cuda' cannot run this call"):
        gh_kernels.gram([g1, g2])
    monkeypatch.setenv("GH_KERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="GH_KERNELS_BACKEND must be one of"):
        gh_kernels.gram([g1, g2])
    monkeypatch.setenv("GH_KERNELS_BACKEND", "auto")
    expected = "cpu" if "cpu" in names else "torch"
    assert backends.resolve(None, torch.device("cpu")) == expected
    assert backends.resolve(None, torch.device("cpu"), num_sets=64) == expected  # the CPU Gram and combine: any K
    assert backends.resolve(None, torch.device("cpu"), num_sets=MAX_SETS + 1, op="coordinate_") == "torch"


def test_triton_listed_only_where_it_can_run(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not torch.cuda.is_available():
        assert "triton" not in gh_kernels.available_backends()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if backends.registry.load_error("triton") is None:
        assert "triton" in gh_kernels.available_backends()


def test_explicit_backend_fails_loudly_with_reason():
    with pytest.raises(gh_kernels.BackendUnavailable, match="backend='cuda' cannot run this call: "):
        gh_kernels.gram([[torch.ones(2)], [torch.ones(2)]], backend="cuda")


def test_many_sets_use_a_backend_that_takes_them(gen):
    sets = [make_set([5, 6], torch.float32, gen) for _ in range(MAX_SETS + 2)]
    G = gh_kernels.gram(sets)
    assert G.shape == (len(sets), len(sets))
    limited = [b for b in gh_kernels.available_backends() if backends.BACKENDS[b].limit() is not None]
    for name in limited:  # triton (under the interpreter) takes MAX_WIDE_SETS sets
        limit = backends.BACKENDS[name].limit()
        more = [make_set([2], torch.float32, gen) for _ in range(limit + 1)]
        with pytest.raises(ValueError, match=f"at most {limit} gradient sets in gram/combine_; got {limit + 1}"):
            gh_kernels.gram(more, backend=name)
