"""The registered ops: torch.library.opcheck, and torch.compile(fullgraph=True) over harmonize."""
import pytest
import torch

import gh_kernels
from gh_kernels import backends

from conftest import make_set


def _sets(gen, dtype=torch.float32):
    g1 = make_set([7, (3, 5), 1, 33], dtype, gen)
    g2 = make_set([7, (3, 5), 1, 33], dtype, gen)
    g2[2] = None
    return g1, g2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_gram(gen, dtype):
    g1, g2 = _sets(gen, dtype)
    torch.library.opcheck(torch.ops.gh_kernels.gram.default, (g1 + g2, 2))


@pytest.mark.parametrize("method", ["sum", "gh", "gh++", "gh++released"])
def test_opcheck_weights(method):
    G = torch.tensor([[2.0, -1.0], [-1.0, 3.0]])
    torch.library.opcheck(torch.ops.gh_kernels.weights.default, (G, method, 0.5))


@pytest.mark.parametrize("accumulate", [False, True])
def test_opcheck_combine(gen, accumulate):
    g1, g2 = _sets(gen)
    out = [torch.randn_like(t) for t in g1]
    torch.library.opcheck(torch.ops.gh_kernels.combine_.default, (out, g1 + g2, 2, torch.tensor([1.5, 0.5]), accumulate))


def test_dispatcher_kernels_match_torch_backend(gen):
    """Whatever kernel the dispatcher holds for CPU (C++ or the default) agrees with the torch backend."""
    g1, g2 = _sets(gen)
    G = torch.ops.gh_kernels.gram(g1 + g2, 2)
    torch.testing.assert_close(G, gh_kernels.gram([g1, g2], backend="torch"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", [None, "torch"])
def test_compile_fullgraph_harmonize(gen, which):
    torch._dynamo.reset()
    g1, g2 = _sets(gen)
    g2 = [t if t is not None else torch.randn(1, generator=gen) for t in g2]

    def step(a, b):
        out = [torch.empty_like(t) for t in a]
        w = gh_kernels.harmonize(a, b, method="gh++", out=out, backend=which)
        return w, out

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    w, out = compiled(g1, g2)
    w_ref, out_ref = step(g1, g2)
    torch.testing.assert_close(w, w_ref)
    for o, r in zip(out, out_ref):
        torch.testing.assert_close(o, r)


def test_available_backends_and_env(monkeypatch, gen):
    names = gh_kernels.available_backends()
    assert names[0] == "torch" and set(names) <= set(gh_kernels.BACKENDS)
    g1, g2 = _sets(gen)
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
    assert backends.resolve(None, torch.device("cpu"), num_sets=backends.MAX_FAST_SETS + 1) == "torch"


def test_explicit_backend_fails_loudly_with_reason():
    with pytest.raises(gh_kernels.BackendUnavailable, match="backend='cuda' cannot run this call: "):
        gh_kernels.gram([[torch.ones(2)], [torch.ones(2)]], backend="cuda")


def test_many_sets_use_torch(gen):
    sets = [make_set([5, 6], torch.float32, gen) for _ in range(backends.MAX_FAST_SETS + 2)]
    G = gh_kernels.gram(sets)
    assert G.shape == (len(sets), len(sets))
