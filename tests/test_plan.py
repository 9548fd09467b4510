"""gh_kernels.plan and the Harmonizer's fused step: the planned call equals harmonize; a list that no
longer matches the plan is handled (re-planned) or rejected with the index named, never a wrong
result, and a rejected call writes nothing; the CUDA graph capture of a step (GPU only)."""
import pytest
import torch

import gh_kernels
from gh_kernels.reference import combine_reference, gram_reference, weights_reference

from helpers import conflicting_pair, on
from models import ToyDANN

SIZES = [7, (3, 5), 1, 33, 130]


def _expected(g1, g2, method="gh++"):
    G = gram_reference(on([g1, g2], "cpu"))
    w = weights_reference(G, method, 0.5)
    return combine_reference(w, on([g1, g2], "cpu"))


def _assert_out(out, ref, tol=1e-4):
    for o, r in zip(out, ref):
        torch.testing.assert_close(o.cpu().double(), r, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_plan_equals_harmonize(device, backend, dtype, gen):
    g1, g2 = on([[t.to(dtype) for t in s] for s in conflicting_pair(SIZES, torch.float32, gen)], device)
    out = [torch.empty_like(t) for t in g1]
    plan = gh_kernels.plan(g1, g2, out=out, method="gh++", backend=backend)
    ref = gh_kernels.harmonize(g1, g2, method="gh++", backend=backend)
    for _ in range(2):
        res = plan(g1, g2, out)
        assert res.out is not None and res.out[0] is out[0]
        torch.testing.assert_close(res.weights, ref.weights)
        for a, b in zip(res.out, ref.out):
            torch.testing.assert_close(a, b)
    res = plan(g1, g2)  # out=None: new tensors
    for a, b in zip(res.out, ref.out):
        torch.testing.assert_close(a, b)


def test_plan_in_place_and_gained_or_lost_gradients(device, backend, gen):
    g1, g2 = on(list(conflicting_pair(SIZES, torch.float32, gen)), device)
    plan = gh_kernels.plan(g1, g2, out=g2, method="gh++", backend=backend)
    ref = _expected(g1, g2)
    plan(g1, g2, out=g2)  # in place
    _assert_out(g2, ref)
    # parameter 1 lost its loss-1 gradient, parameter 3 its loss-2 gradient: re-planned, the right result
    h1, h2 = on(list(conflicting_pair(SIZES, torch.float32, gen)), device)
    h1[1] = None
    out = [torch.empty_like(t) for t in h2]
    h2[3] = None
    out[3] = torch.empty_like(h1[3])
    res = plan(h1, h2, out)
    _assert_out(res.out, _expected(h1, h2))


def test_plan_changed_shapes_and_dtypes_are_replanned(device, backend, gen):
    g1, g2 = on(list(conflicting_pair(SIZES, torch.float32, gen)), device)
    plan = gh_kernels.plan(g1, g2, out=[torch.empty_like(t) for t in g1], method="gh++", backend=backend)
    h1, h2 = on(list(conflicting_pair([9, (2, 2), 5, 33, 64], torch.float32, gen)), device)
    h1[4], h2[4] = h1[4].to(torch.bfloat16), h2[4].to(torch.bfloat16)  # a new dtype for one parameter
    out = [torch.empty_like(t) for t in h1]
    res = plan(h1, h2, out)
    _assert_out(res.out, _expected(h1, h2), tol=2e-2)


@pytest.mark.parametrize("case", ["shape", "dtype", "device", "alias", "length"])
def test_plan_bad_lists_name_the_index_and_write_nothing(device, backend, case, gen):
    g1, g2 = on(list(conflicting_pair(SIZES, torch.float32, gen)), device)
    out = [torch.zeros_like(t) for t in g1]
    plan = gh_kernels.plan(g1, g2, out=out, backend=backend)
    h1, h2 = list(g1), list(g2)
    o = list(out)
    if case == "shape":
        h2[3] = torch.randn(34, device=device)
        expected = (ValueError, r"g2\[3\] has shape \(34,\) but g1\[3\]")
    elif case == "dtype":
        h2[2] = h2[2].to(torch.float16)
        expected = (TypeError, r"g2\[2\] has dtype torch.float16 but g1\[2\]")
    elif case == "device":
        h1[4] = torch.empty(130, device="meta")
        expected = ((ValueError, TypeError), r"g1\[4\]")
    elif case == "alias":
        o[1] = g1[4][:15].view(3, 5)  # out[1] overlaps parameter 4's gradient
        expected = (ValueError, r"out\[1\] overlaps g1\[4\]")
    else:
        h1 = h1[:-1]
        expected = (ValueError, r"g1 has 4 tensors but the plan was built for 5")
    before = [t.clone() for t in o]
    with pytest.raises(expected[0], match=expected[1]):
        plan(h1, h2, o)
    for t, b in zip(o, before):
        assert torch.equal(t, b)


def test_harmonizer_fused_step_equals_grouped_step(backend):
    torch.manual_seed(0)
    results = []
    for fused in (True, False):
        model = ToyDANN()
        torch.manual_seed(1)
        model.load_state_dict(ToyDANN().state_dict())
        h = gh_kernels.Harmonizer(model.parameters(), method="gh++", backend=backend)
        h._engine.fused = fused
        for step in range(3):  # step 0: fresh .grad; steps 1, 2: accumulated
            res = h.backward(*model.losses(*model.batch(step)), scale1=0.7)
        results.append(([p.grad.clone() for p in model.parameters()], res))
    (ga, ra), (gb, rb) = results
    torch.testing.assert_close(ra.weights, rb.weights)
    torch.testing.assert_close(ra.gram, rb.gram)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replays_the_step_after_backward():
    """The README's recipe: capture the planned harmonize on static gradient buffers, then replay."""
    torch.manual_seed(0)
    g1 = [torch.randn(1000, device="cuda"), torch.randn(7, 3, device="cuda")]
    g2 = [-0.5 * a + 0.1 * torch.randn_like(a) for a in g1]
    out = [torch.empty_like(a) for a in g1]
    for name in ("cuda", "triton"):
        try:
            plan = gh_kernels.plan(g1, g2, out=out, method="gh++", backend=name)
        except gh_kernels.BackendUnavailable:
            continue
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            plan(g1, g2, out)  # warm-up: compiles, uploads the work list
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            res = plan(g1, g2, out)
        for trial in range(3):
            for a, b in zip(g1 + g2, [torch.randn_like(t) for t in g1 + g2]):
                a.copy_(b if trial else -b)
            graph.replay()
            torch.cuda.synchronize()
            _assert_out(out, _expected(g1, g2))
            torch.testing.assert_close(res.gram.cpu().double(), gram_reference(on([g1, g2], "cpu")), rtol=1e-5, atol=1e-3)
