"""out= rules on every backend (safety issue D3-D7, D9): the one legal alias is exact, everything
else that shares memory raises before any write; float32 math for 16-bit; version counters."""
import pytest
import torch

import gh_kernels
from gh_kernels.reference import combine_reference, gram_reference, weights_reference

from helpers import EPS, make_set


# ---------------------------------------------------------------- D3: one tensor in both sets, out aliasing it
def test_same_tensor_in_both_sets_and_out(backend):
    x = torch.ones(5)
    gh_kernels.combine(torch.tensor([2.0, 3.0]), [[x], [x]], out=[x], backend=backend)
    assert torch.equal(x, torch.full((5,), 5.0))


def test_harmonize_in_place_with_a_tensor_in_both_sets(backend):
    x = torch.ones(3)
    g1 = [x, torch.tensor([10.0, 0.0])]
    g2 = [x, torch.tensor([-10.0, 1.0])]
    copies = [[t.clone() for t in g1], [t.clone() for t in g2]]
    w_ref = weights_reference(gram_reference(copies), "gh")
    expect = combine_reference(w_ref, copies)
    gh_kernels.harmonize(g1, g2, method="gh", out=g2, backend=backend)
    for o, r in zip(g2, expect):
        torch.testing.assert_close(o.double(), r, rtol=1e-5, atol=1e-6)  # g2[0] = 3.8744, not 5.6945


# ---------------------------------------------------------------- D4: float32 intermediates for 16-bit gradients
def test_float16_products_do_not_overflow(backend):
    a = torch.tensor([40000.0], dtype=torch.float16)
    out = gh_kernels.combine(torch.tensor([2.0, 1.9]), [[a], [-a]], backend=backend)
    torch.testing.assert_close(out[0].float(), torch.tensor([4000.0]), rtol=1e-3, atol=0)
    g1 = [torch.tensor([1e-3, 0.0], dtype=torch.float16)]
    g2 = [torch.tensor([-300.0, 1.0], dtype=torch.float16)]
    res = [torch.empty_like(g2[0])]
    gh_kernels.harmonize(g1, g2, method="gh", out=res, backend=backend)
    w = weights_reference(gram_reference([g1, g2]), "gh")  # w1 = 3e5: out[0] = 300.001 - 300.001, cancellation
    expect = combine_reference(w, [g1, g2])[0]
    assert torch.isfinite(res[0]).all()
    terms = (w[0] * g1[0].double()).abs() + (w[1] * g2[0].double()).abs()
    assert ((res[0].double() - expect).abs() <= EPS[torch.float16] * expect.abs() + 8 * EPS[torch.float32] * terms).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_combine_is_one_rounding_of_float32_math(backend, dtype, gen):
    """Each element is the float32 result rounded once: the 16-bit unit roundoff times |result|, plus the
    float32 error of the sum, which scales with the sum of |terms| (cancellation)."""
    sets = [make_set([1000, 37], dtype, gen, scale=30.0) for _ in range(2)]
    init = make_set([1000, 37], dtype, gen, scale=30.0)
    w = torch.tensor([1.7, -0.6])
    out = [t.clone() for t in init]
    gh_kernels.combine(w, sets, out=out, accumulate=True, backend=backend)
    # The Triton interpreter's float32 -> bfloat16 conversion rounds half-up on the dropped bits without
    # a carry (triton.runtime.interpreter._convert_float): up to one ulp. Compiled Triton rounds to nearest even.
    rounding = 2 if (backend == "triton" and dtype == torch.bfloat16) else 1
    for p, r in enumerate(combine_reference(w, sets, out_init=init)):
        terms = init[p].double().abs() + sum(abs(float(w[k])) * sets[k][p].double().abs() for k in range(2))
        bound = rounding * EPS[dtype] * r.abs() + 4 * EPS[torch.float32] * terms + 2.0 ** -24  # EPS: unit roundoff
        assert ((out[p].double() - r).abs() <= bound).all(), f"seed={gen.initial_seed()}"


# ---------------------------------------------------------------- D5/D7: illegal aliasing raises, nothing written
def _outs_unchanged(outs, before):
    assert all(torch.equal(o, b) for o, b in zip(outs, before))


def test_expanded_out_raises_before_any_write(backend):
    o0, o1 = torch.full((5,), 7.0), torch.zeros(1, 4).expand(3, 4)
    grads = [[torch.ones(5), torch.ones(3, 4)], [torch.ones(5), torch.ones(3, 4)]]
    with pytest.raises(ValueError, match=r"out\[1\] has elements that share memory"):
        gh_kernels.combine(torch.tensor([1.0, 1.0]), grads, out=[o0, o1], backend=backend)
    assert torch.equal(o0, torch.full((5,), 7.0))


def test_out_shifted_over_an_input_raises(backend):
    buf = torch.arange(8.0)
    g1, g2 = [buf[1:7]], [torch.ones(6)]
    before = buf.clone()
    with pytest.raises(ValueError, match=r"out\[0\] overlaps grads\[0\]\[0\] in memory"):
        gh_kernels.combine(torch.tensor([1.0, 2.0]), [g1, g2], out=[buf[0:6]], backend=backend)
    assert torch.equal(buf, before)
    with pytest.raises(ValueError, match=r"out\[0\] overlaps g1\[0\] in memory"):
        gh_kernels.harmonize(g1, g2, out=[buf[0:6]], backend=backend)
    assert torch.equal(buf, before)


def test_one_out_for_two_parameters_raises(backend):
    o = torch.zeros(4)
    grads = [[torch.ones(4), torch.ones(4)], [torch.ones(4), torch.ones(4)]]
    with pytest.raises(ValueError, match=r"out\[0\] and out\[1\] overlap in memory"):
        gh_kernels.combine(torch.tensor([1.0, 2.0]), grads, out=[o, o], backend=backend)
    assert torch.equal(o, torch.zeros(4))


def test_overlapping_views_as_out_raise(backend):
    buf = torch.arange(1.0, 7.0)
    g1 = [torch.ones(4), torch.ones(4)]
    g2 = [buf[0:4], buf[2:6]]
    before = buf.clone()
    with pytest.raises(ValueError, match=r"out\[0\] and out\[1\] overlap in memory"):
        gh_kernels.harmonize(g1, g2, out=g2, backend=backend)
    _outs_unchanged([buf], [before])


def test_out_aliasing_another_parameters_input_raises(backend):
    a, b = torch.ones(3), torch.ones(3)
    with pytest.raises(ValueError, match=r"out\[1\] overlaps grads\[0\]\[0\]"):
        gh_kernels.combine(torch.tensor([1.0, 1.0]), [[a, b], [a, b]], out=[torch.zeros(3), a], backend=backend)
    assert torch.equal(a, torch.ones(3))


def test_inputs_may_overlap_each_other(backend):
    buf = torch.arange(10.0)
    g1, g2 = [buf[0:6]], [buf[2:8]]  # read-only overlap: fine
    out = gh_kernels.combine(torch.tensor([1.0, -1.0]), [g1, g2], backend=backend)
    torch.testing.assert_close(out[0], buf[0:6] - buf[2:8])


# ---------------------------------------------------------------- D6/D9: autograd-tracked and meta outs
def test_out_that_requires_grad_is_refused(backend):
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * 1.0
    with pytest.raises(ValueError, match=r"out\[0\] requires grad"):
        gh_kernels.combine(torch.tensor([0.0, 2.0]), [[torch.zeros(3)], [y.detach()]], out=[y], backend=backend)


def test_written_tensors_get_their_version_bumped(backend):
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = torch.ones(3)
    z = (w * y).sum()  # y is saved for backward
    gh_kernels.combine(torch.tensor([0.0, 2.0]), [[torch.zeros(3)], [y]], out=[y], backend=backend)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.backward()


def test_meta_and_sparse_arguments_are_named(backend):
    g = [torch.ones(3)]
    with pytest.raises(ValueError, match=r"out\[0\] is a meta tensor"):
        gh_kernels.combine(torch.ones(2), [g, g], out=[torch.empty(3, device="meta")], backend=backend)
    sparse = torch.ones(3).to_sparse()
    with pytest.raises(TypeError, match=r"grads\[1\]\[0\] has layout torch.sparse_coo"):
        gh_kernels.gram([g, [sparse]], backend=backend)
    with pytest.raises(TypeError, match=r"g1\[0\] has layout torch.sparse_coo"):
        gh_kernels.harmonize([sparse], g, backend=backend)


# ---------------------------------------------------------------- the planned call's one-pass checks (NOTE: [Checks by map])
def test_an_empty_input_inside_an_out_touches_nothing(backend):
    buf = torch.zeros(8)
    g1 = [torch.ones(8), buf[3:3]]  # an empty view whose address lies inside out[0]
    g2 = [torch.ones(8), torch.ones(0)]
    out = [buf, torch.zeros(0)]
    gh_kernels.combine(torch.tensor([1.0, 2.0]), [g1, g2], out=out, backend=backend)
    assert torch.equal(buf, torch.full((8,), 3.0))


def test_planned_call_names_an_out_over_another_sets_input(backend):
    """out = g2 in place (that set is skipped by identity) while g1[1] is a view into out[0]: refused."""
    buf = torch.arange(8.0)
    g2 = [buf[0:4], torch.ones(4)]
    g1 = [torch.ones(4), buf[2:6]]
    plan = gh_kernels.plan(g1, [torch.ones(4), torch.ones(4)], out=[torch.zeros(4), torch.zeros(4)], backend=backend)
    before = buf.clone()
    with pytest.raises(ValueError, match=r"out\[0\] overlaps g1\[1\] in memory"):
        plan(g1, g2, out=g2)
    assert torch.equal(buf, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_planned_call_with_small_tensors_of_any_shape(backend, dtype, gen):
    """Small parameters of several shapes and 16-bit outs: the planned call equals the float64 reference
    (they are combined through flat batches)."""
    shapes = [(3,), (2, 5), (1,), (4, 1, 2), (7,)]
    g1 = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    g2 = [torch.randn(s, generator=gen).to(dtype) - a for s, a in zip(shapes, g1)]
    out = [torch.empty(s, dtype=dtype) for s in shapes]
    plan = gh_kernels.plan(g1, g2, out=out, method="gh", backend=backend)
    res = plan(g1, g2, out=out)
    assert res.out is out
    torch.testing.assert_close(res.weights.double(), weights_reference(gram_reference([g1, g2]), "gh"), rtol=1e-5, atol=1e-5)
    for p, r in enumerate(combine_reference(res.weights, [g1, g2])):  # the weights it used, applied in float64
        terms = sum(abs(float(res.weights[k])) * s[p].double().abs() for k, s in enumerate((g1, g2)))
        bound = EPS[dtype] * r.abs() + 4 * EPS[torch.float32] * terms + 2.0 ** -24
        assert out[p].shape == shapes[p] and ((out[p].double() - r).abs() <= bound).all(), f"seed={gen.initial_seed()}"
