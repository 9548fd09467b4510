"""The registered ops, per (device, backend): one ``sample_inputs(device)`` per op, reused for the
float64-reference check, ``torch.library.opcheck`` on the backend's overload, and ``torch.compile``.
Also ``harmonize``'s result, the backends' agreement, and the device-only checks (no host sync on CUDA)."""
import pytest
import torch

import gh_kernels
from gh_kernels import backends
from gh_kernels.ops.constants import MAX_SETS
from gh_kernels.reference import combine_reference, gram_reference, weights_reference

from helpers import conflicting_pair, make_set, on
from models import ToyDANN


def sample_inputs(op, device, gen):
    """Argument tuples for op ``op`` on ``device``: awkward sizes, a None hole, mixed dtypes, K = 1..MAX_SETS (the wide Triton kernels included) and 13 (the paths above MAX_SETS)."""
    sizes = [7, (3, 5), 1, 33, 0]
    cases = []
    if op == "gram":
        for K, dtype in ((2, torch.float32), (2, torch.bfloat16), (1, torch.float16), (MAX_SETS, torch.float32),
                         (13, torch.float32)):  # 13: every backend's wide path (CPU tiles, CUDA wide list, Triton any-K)
            sets = on([make_set(sizes, dtype, gen) for _ in range(K)], device)
            sets[-1][2] = None
            cases.append(([t for s in sets for t in s], K))
        cases.append(([t.double() for t in make_set(sizes, torch.float32, gen)] * 2, 2))
    elif op == "weights":
        for method in gh_kernels.METHODS:
            for G in ([[2.0, -1.0], [-1.0, 3.0]], [[1.0, 0.5], [0.5, 1.0]]):
                cases.append((torch.tensor(G, device=device), method, 0.3))
            cases.append((torch.tensor([[2.0, -1.0], [-1.0, 3.0]], dtype=torch.float64, device=device), method, 0.3))
    elif op == "harmonize_":
        for dtype, masked, accumulate in ((torch.float32, False, False), (torch.bfloat16, True, True), (torch.float64, False, True)):
            g1, g2 = on(list(conflicting_pair([7, (3, 5), 1, 33], torch.float32, gen)), device)
            g1, g2 = [t.to(dtype) for t in g1], [t.to(dtype) for t in g2]
            g1[2] = None
            out = on([make_set([7, (3, 5), 1, 33], dtype, gen)], device)[0]
            mask = torch.tensor([True, False, True, True]) if masked else None
            cases.append((out, g1 + g2, mask, "gh++", 0.3, 0.5, 2.0, accumulate))
    elif op == "coordinate_":
        for rule, K, dtype, trim, accumulate in (("trimmed-mean", 3, torch.float32, 1, False), ("trimmed-mean", MAX_SETS, torch.bfloat16, 3, True),
                                                 ("trimmed-mean", 2, torch.float64, 0, False), ("graddrop", 3, torch.float32, 0, False),
                                                 ("graddrop", MAX_SETS - 1, torch.float16, 0, True)):
            sets = on([make_set(sizes, dtype, gen) for _ in range(K)], device)
            sets[0][1] = None
            leak = None
            if rule == "graddrop":
                sets.append(on([[torch.rand(t.shape, generator=gen).to(dtype) for t in make_set(sizes, dtype, gen)]], device)[0])
                leak = (torch.rand(K, generator=gen) * 0.5).to(device)
            out = on([make_set(sizes, dtype, gen)], device)[0]
            cases.append((out, [t for s in sets for t in s], len(sets), rule, trim, leak, accumulate))
    else:  # combine_
        for K, dtype, accumulate in ((2, torch.float32, False), (2, torch.bfloat16, True), (3, torch.float16, False),
                                     (2, torch.float64, False), (MAX_SETS, torch.float32, True), (13, torch.bfloat16, True)):
            sets = on([make_set(sizes, dtype, gen) for _ in range(K)], device)
            sets[0][1] = None
            out = on([make_set(sizes, dtype, gen)], device)[0]
            w = (torch.randn(K, generator=gen) * 2).to(device)
            cases.append((out, [t for s in sets for t in s], K, w, accumulate))
    return cases


def reference(op, args):
    """The float64 result of op ``op`` on ``args`` (for combine_: the expected ``out``)."""
    if op == "gram":
        tensors, K = args
        P = len(tensors) // K
        return gram_reference([on([tensors[k * P:(k + 1) * P]], "cpu")[0] for k in range(K)])
    if op == "weights":
        return weights_reference(args[0].cpu().double(), args[1], args[2])
    if op == "harmonize_":
        out, tensors, mask, method, kappa, s1, s2, accumulate = args
        P = len(out)
        g1, g2 = on([tensors[:P]], "cpu")[0], on([tensors[P:]], "cpu")[0]
        keep = [True] * P if mask is None else mask.tolist()
        G = gram_reference([[t if k else None for t, k in zip(g1, keep)], [t if k else None for t, k in zip(g2, keep)]])
        w = weights_reference(G, method, kappa)
        return G, w, combine_reference(w * torch.tensor([s1, s2], dtype=torch.float64), [g1, g2],
                                       out_init=[o.cpu() for o in out] if accumulate else None)
    if op == "coordinate_":
        out, tensors, num_sets, rule, trim, leak, accumulate = args
        P = len(out)
        result = []
        for p in range(P):
            rows = torch.stack([torch.zeros(out[p].shape, dtype=torch.float64) if tensors[k * P + p] is None
                                else tensors[k * P + p].cpu().double() for k in range(num_sets)])
            if rule == "trimmed-mean":
                y = rows.sort(dim=0).values[trim:num_sets - trim].mean(dim=0)
            else:  # the float64 GradDrop: the last row is the draws
                g, u = rows[:-1], rows[-1]
                purity = 0.5 * (1 + g.sum(0) / g.abs().sum(0))
                kept = ((purity > u) & (g > 0)) | ((purity < u) & (g < 0))
                lk = leak.cpu().double().view(-1, *[1] * (g.dim() - 1))  # one leak per set (row)
                y = ((lk + (1 - lk) * kept) * g).sum(0)
            result.append(y + (out[p].cpu().double() if accumulate else 0))
        return result
    out, tensors, K, w, accumulate = args
    P = len(out)
    sets = [on([tensors[k * P:(k + 1) * P]], "cpu")[0] for k in range(K)]
    return combine_reference(w.cpu(), sets, out_init=[o.cpu() for o in out] if accumulate else None)


OPS = ("gram", "weights", "combine_", "harmonize_", "coordinate_")


@pytest.mark.parametrize("op", OPS)
def test_op_matches_reference(op, device, backend, gen):
    kernel = backends.kernel(backend, op)
    for args in sample_inputs(op, device, gen):
        expected = reference(op, args)
        result = kernel(*args)
        if op == "harmonize_":
            G_ref, w_ref, out_ref = expected
            assert result[0].dtype == result[1].dtype == (torch.float64 if args[0][0].dtype == torch.float64 else torch.float32)
            torch.testing.assert_close(result[0].cpu().double(), G_ref, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(result[1].cpu().double(), w_ref, rtol=1e-4, atol=1e-5)
            expected, result = out_ref, None
        if op in ("combine_", "harmonize_", "coordinate_"):
            for o, r in zip(args[0], expected):
                torch.testing.assert_close(o.cpu().double(), r, rtol=2e-2, atol=2e-2)
        else:
            f64 = any(isinstance(a, torch.Tensor) and a.dtype == torch.float64 for a in args) or (
                isinstance(args[0], list) and any(t is not None and t.dtype == torch.float64 for t in args[0]))
            assert result.device.type == device and result.dtype == (torch.float64 if f64 else torch.float32)
            torch.testing.assert_close(result.cpu().double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("op", OPS)
def test_opcheck(op, device, backend, gen):
    for args in sample_inputs(op, device, gen):
        torch.library.opcheck(backends.kernel(backend, op), args)


@pytest.mark.parametrize("op", OPS)
def test_op_under_compile(op, device, backend, gen):
    torch._dynamo.reset()
    kernel = backends.kernel(backend, op)
    args = sample_inputs(op, device, gen)[0]
    if op in ("combine_", "harmonize_", "coordinate_"):
        out_eager = [t.clone() for t in args[0]]
        kernel(out_eager, *args[1:])
        torch.compile(kernel, fullgraph=True, backend="aot_eager")(*args)
        for a, b in zip(args[0], out_eager):
            torch.testing.assert_close(a, b)
    else:
        torch.testing.assert_close(torch.compile(kernel, fullgraph=True, backend="aot_eager")(*args), kernel(*args))


@pytest.mark.parametrize("which", [None, "torch"])
def test_compile_fullgraph_harmonize(gen, which):
    torch._dynamo.reset()
    g1, g2 = make_set([7, (3, 5), 1, 33], torch.float32, gen), make_set([7, (3, 5), 1, 33], torch.float32, gen)

    def step(a, b):
        out = [torch.empty_like(t) for t in a]
        return gh_kernels.harmonize(a, b, method="gh++", out=out, backend=which)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    res, ref = compiled(g1, g2), step(g1, g2)
    torch.testing.assert_close(res.weights, ref.weights)
    torch.testing.assert_close(res.gram, ref.gram)
    for o, r in zip(res.out, ref.out):
        torch.testing.assert_close(o, r)


def test_harmonize_returns_what_it_computed(device, backend, gen):
    g1, g2 = on(list(conflicting_pair([123, 45], torch.float32, gen)), device)
    res = gh_kernels.harmonize(g1, g2, method="gh++", backend=backend)
    torch.testing.assert_close(res.gram.cpu().double(), gram_reference(on([g1, g2], "cpu")), rtol=1e-5, atol=1e-4)
    w = weights_reference(res.gram.cpu().double(), "gh++", 0.5)
    for o, r in zip(res.out, combine_reference(w, on([g1, g2], "cpu"))):
        torch.testing.assert_close(o.cpu().double(), r, rtol=1e-4, atol=1e-4)
    assert gh_kernels.harmonize(g1, g2, out=g2, backend=backend).out[0] is g2[0]


def test_backends_agree_on_each_device(gen):
    g1, g2 = conflicting_pair([12345, 999, 31], torch.float32, gen)
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        names = [b for d, b in __import__("helpers").device_backends() if d == device]
        results = {b: gh_kernels.harmonize(*on([g1, g2], device), method="gh++", backend=b) for b in names}
        first = results[names[0]]
        for b in names[1:]:
            torch.testing.assert_close(results[b].weights, first.weights, rtol=1e-5, atol=1e-6)
            for x, y in zip(results[b].out, first.out):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_no_host_sync_on_cuda(device, backend, gen):
    if device != "cuda":
        pytest.skip("host synchronization is checked on CUDA (torch.cuda.set_sync_debug_mode)")
    g1, g2 = on(list(conflicting_pair([100_000, 33, 5000], torch.float32, gen)), device)
    out = [torch.empty_like(t) for t in g1]
    gh_kernels.harmonize(g1, g2, method="gh++", out=out, backend=backend)  # warm-up: compile, caches
    model = ToyDANN().cuda()
    h = gh_kernels.Harmonizer(model.parameters(), method="gh++", backend=backend)
    batch = [t.cuda() for t in model.batch(0)]
    h.backward(*model.losses(*batch))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for method in ("gh", "gh++", "gh++released"):
            gh_kernels.harmonize(g1, g2, method=method, out=out, backend=backend)
        model.zero_grad(set_to_none=True)
        dom, cls = model.losses(*batch)
        res = h.backward(dom, cls, scale1=0.5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(res.weights).all()
