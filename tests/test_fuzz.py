"""A property-based fuzzer over feature combinations of the K-loss training step (issue #29).

One example is a short training run (4 steps) of a trunk with K heads and an optional branch that some
steps reach and others do not, drawn from the product of: the method (with options; stateful ones,
per-coordinate ones, two-batch ones), the mode, the backend (torch, cpu, triton interpreted), K, the
dtype, ``sync=None`` or ``"global"`` (a one-process gloo group), which parameters already hold a ``.grad``, which parameters the losses reach at each step,
non-finite injection into the shared trunk or into one task head only (class 9), failure injection (a write target the rules refuse, an
autograd error), and a checkpoint through ``torch.save`` in the middle of the run.

Invariants, checked at every step:
* the update equals an independent float64 reference: per-loss gradients from ``torch.autograd.grad``,
  the Gram matrix over the shared trunk in float64, the method's weights from ``gh_kernels.weights`` in
  float64 on a copy of the method's state, and ``sum_k w_k g_k`` (surgery: ``sum_k g_k`` outside the
  trunk; two batches: each task's two-batch mean) added to the ``.grad`` held before;
* a failed call changes nothing: the ``.grad`` objects and values and the method's state;
* a non-finite step changes no state, and the non-finite values reach ``.grad`` (GradScaler skips it);
* a run resumed from the checkpoint is bitwise the uninterrupted one.

Every method runs in every run (a parametrization: hypothesis' draws are uneven, and some methods went
undrawn in 300 examples); hypothesis draws the rest. CI runs a fixed, derandomized budget
(``GH_FUZZ_EXAMPLES`` per method, default 3: about 25 s on 2 cores). The long profile runs 10x more with
a fresh random seed, printed in the report header:
``GH_FUZZ_LONG=1 python -m pytest tests/test_fuzz.py`` (or ``GH_FUZZ_SEED=N`` to replay one).

Every class of #29 is fixed; Nash-MTL's clip on rank-deficient Grams (13) and CAGrad's tie rule on 0-in-the-hull
float32 matrices (14) need matrices the fuzzer's small model does not make, and are tested in
tests/test_crossed_features.py, as GradDrop (class 6), whose reference needs torchjd's draws. The CUDA kernels
cannot run the training step on CPU tensors: ``test_fuzz_emulated_cuda_kernels`` fuzzes them under the CPU
emulation on what the step hands them (parameter lists, K, dtypes, absent sets, accumulation, non-finite values).
"""
import copy
import io
import math
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

import gh_kernels
from gh_kernels import backends
from gh_kernels.ops.constants import COORDINATE_RULES
from helpers import cpu_backends

LONG = os.environ.get("GH_FUZZ_LONG") == "1"
EXAMPLES = int(os.environ.get("GH_FUZZ_EXAMPLES", "3")) * (10 if LONG else 1)  # per method
SEED = int(os.environ.get("GH_FUZZ_SEED", "0"))  # conftest.py draws one for the long profile and prints it

# (label, factory of the method= value, options, needs two batches, minimum K; K = 1 is drawn too)
METHODS = [
    ("upgrad", lambda: "upgrad", {}, False, 2),
    ("mgda", lambda: "mgda", {}, False, 2),
    ("cagrad c=0.5", lambda: "cagrad", {"c": 0.5}, False, 2),
    ("dualproj", lambda: "dualproj", {}, False, 2),
    ("imtl-g", lambda: "imtl-g", {}, False, 2),
    ("aligned-mtl", lambda: "aligned-mtl", {}, False, 2),
    ("config", lambda: "config", {}, False, 2),
    ("mean", lambda: "mean", {}, False, 2),
    ("sum", lambda: "sum", {}, False, 2),
    ("fairgrad", lambda: "fairgrad", {}, False, 2),
    ("krum", lambda: "krum", {}, False, 3),
    ("trimmed-mean", lambda: "trimmed-mean", {"trim_number": 0}, False, 2),
    ("GradVac", lambda: gh_kernels.GradVac(), {}, False, 2),
    ("NashMTL", lambda: gh_kernels.NashMTL(), {}, False, 2),
    ("PCD", lambda: gh_kernels.PCD(), {}, False, 2),
    ("CRMOGM(upgrad)", lambda: gh_kernels.CRMOGM("upgrad", alpha=0.5), {}, False, 2),
    ("CRMOGM(GradVac)", lambda: gh_kernels.CRMOGM(gh_kernels.GradVac(), alpha=0.5), {}, False, 2),
    ("MoDo", lambda: gh_kernels.MoDo(), {}, True, 2),
    ("SDMGrad", lambda: gh_kernels.SDMGrad(n_iter=5), {}, True, 2),
]
GH_RULES = [("gh", lambda: "gh", {}, False, 2), ("gh++", lambda: "gh++", {}, False, 2)]


class Net(torch.nn.Module):
    """A shared trunk, K heads (one per loss) and a branch that loss 0 reaches on some steps only."""

    def __init__(self, K, dtype):
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh())
        self.heads = torch.nn.ModuleList(torch.nn.Linear(7, 1) for _ in range(K))
        self.branch = torch.nn.Linear(7, 1)
        self.to(dtype)

    def losses(self, x, y, branch: bool, poison: float = 1.0):
        f = self.trunk(x) * poison
        out = []
        for k, h in enumerate(self.heads):
            pred = h(f)[:, 0] + (self.branch(f)[:, 0] if branch and k == 0 else 0)
            out.append(((pred - y[:, k]) ** 2).mean())
        return out


def _grads(losses, params):
    return [[g for g in torch.autograd.grad(l, params, retain_graph=True, allow_unused=True)] for l in losses]


def _reference(case, model, params, shared_ids, sets, second, method_copy, before):
    """The expected .grad after the step, in float64 (see the module docstring)."""
    K = len(sets)
    shared = [i for i, p in enumerate(params) if id(p) in shared_ids]
    as64 = lambda t: None if t is None else t.detach().double()  # noqa: E731
    s64 = [[as64(t) for t in s] for s in sets]
    b64 = None if second is None else [[as64(t) for t in s] for s in second]

    def dot(a, b):
        return sum(float((a[i] * b[i]).sum()) for i in shared if a[i] is not None and b[i] is not None)

    if case["label"] == "trimmed-mean":  # per coordinate, trim 0: the mean of the K values (absent as 0)
        w, G = None, None
    else:
        other = s64 if b64 is None else b64
        G = torch.tensor([[dot(s64[a], other[b]) for b in range(K)] for a in range(K)], dtype=torch.float64)
        w = gh_kernels.weights(G, method_copy, **case["options"]).double()
    expected = []
    for i, p in enumerate(params):
        vals = [s[i] for s in s64]
        if b64 is not None:
            vals = [None if a is None and b is None else ((a if a is not None else 0) + (b if b is not None else 0)) / 2
                    for a, b in zip(vals, [s[i] for s in b64])]
        if all(v is None for v in vals):
            expected.append(None if before[i] is None else before[i].double())
            continue
        zeros = torch.zeros(p.shape, dtype=torch.float64)
        vals = [zeros if v is None else v for v in vals]
        if case["mode"] == "surgery" and i not in shared:
            upd = sum(vals)
        elif w is None:
            upd = sum(vals) / K
        else:
            upd = sum(float(w[k]) * vals[k] for k in range(K))
        expected.append(upd + (0 if before[i] is None else before[i].double()))
    return expected


def _state(method):
    return None if not hasattr(method, "state_dict") else method.state_dict()


def _same_state(a, b):
    if a is None or b is None:
        return a is b
    return str(a) == str(b)


def _rotated(values, by: int):
    """``values`` starting at position ``by``: hypothesis' derandomized draws favour a list's first entries, so each
    method (and each step) starts the lists elsewhere, and the fixed CI budget reaches every choice."""
    by %= len(values)
    return values[by:] + values[:by]


@st.composite
def cases(draw, method):
    label, make, options, two_batches, min_k = method
    i = [m[0] for m in METHODS + GH_RULES].index(label)
    backend = draw(st.sampled_from(_rotated(cpu_backends(), i)))
    # 13: above the fused kernels' 8 sets (the CPU wide tiles, the Triton any-K kernels, the solvers above 8 tasks);
    # a per-coordinate method's kernel takes 8 sets on cpu and triton, which refuse more when named (documented,
    # tests/test_multitask_kernels.py)
    limit = backends.BACKENDS[backend].limit("coordinate_") if label in COORDINATE_RULES else None
    ks = [k for k in (1, 2, 3, 5, 13) if k >= min_k and (limit is None or k + 1 <= limit)]
    K = 2 if label in ("gh", "gh++") else draw(st.sampled_from(ks))
    injections = ["none", "nonfinite", "nonfinite head", "bad target", "autograd", "none"]
    return {
        "K": K, "label": label, "make": make, "options": dict(options), "two_batches": two_batches,
        "mode": draw(st.sampled_from(_rotated(["reweight", "surgery"], i))),
        "sync": draw(st.sampled_from(_rotated([None, "global", None], i))),
        "backend": backend,
        "dtype": draw(st.sampled_from(_rotated([torch.float32, torch.float64], i // 2))),
        "steps": [{"branch": draw(st.booleans()),
                   "preset": draw(st.lists(st.booleans(), min_size=2 * 3 + 2, max_size=2 * 3 + 2)),
                   "inject": draw(st.sampled_from(_rotated(injections, i + n)))}
                  for n in range(4)],
        "data_seed": draw(st.integers(0, 2**16)),
    }


def _run(case, checkpoint_at=None):
    """Runs the case; returns the .grad after every step (and checks the per-step invariants). ``sync="global"``
    runs in a one-process gloo group (the all-reduces run; a mean over one rank changes nothing), made and
    destroyed around the run so that no other test sees an initialized process group."""
    if case["sync"] is None:
        return _run_steps(case, checkpoint_at)
    import torch.distributed as dist
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        return _run_steps(case, checkpoint_at)
    finally:
        dist.destroy_process_group()


def _run_steps(case, checkpoint_at):
    K, dtype = case["K"], case["dtype"]
    torch.manual_seed(case["data_seed"])
    model = Net(K, dtype)
    params = list(model.parameters())
    trunk = list(model.trunk.parameters())
    shared_ids = {id(p) for p in trunk}
    method = case["make"]()
    step = gh_kernels.MultiTaskHarmonizer(params, shared=trunk, method=method, mode=case["mode"],
                                          backend=case["backend"], sync=case["sync"], **case["options"])
    gen = torch.Generator().manual_seed(case["data_seed"] + 1)
    history = []
    for n, s in enumerate(case["steps"]):
        if checkpoint_at is not None and n == checkpoint_at:  # through torch.save, into new objects
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "step": step.state_dict(), "rng": torch.get_rng_state(),
                        "grads": [None if p.grad is None else p.grad.clone() for p in params]}, buf)
            buf.seek(0)
            saved = torch.load(buf, weights_only=False)
            model = Net(K, dtype)
            model.load_state_dict(saved["model"])
            params, trunk = list(model.parameters()), list(model.trunk.parameters())
            shared_ids = {id(p) for p in trunk}
            for p, g in zip(params, saved["grads"]):
                p.grad = g
            method = case["make"]()
            step = gh_kernels.MultiTaskHarmonizer(params, shared=trunk, method=method, mode=case["mode"],
                                                  backend=case["backend"], sync=case["sync"], **case["options"])
            step.load_state_dict(saved["step"])
            torch.set_rng_state(saved["rng"])  # methods without generator= draw from the global generator
        x = torch.randn(6, 5, generator=gen, dtype=torch.float64).to(dtype)
        y = torch.randn(6, K, generator=gen, dtype=torch.float64).to(dtype)
        x2 = torch.randn(6, 5, generator=gen, dtype=torch.float64).to(dtype)
        y2 = torch.randn(6, K, generator=gen, dtype=torch.float64).to(dtype)
        for p, keep in zip(params, s["preset"]):  # which parameters already hold a .grad
            if not keep:
                p.grad = None
            elif p.grad is None:
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
        before = [None if p.grad is None else p.grad.clone() for p in params]
        grad_objects = [p.grad for p in params]
        state_before = _state(method)
        poison = float("inf") if s["inject"] == "nonfinite" else 1.0
        losses = model.losses(x, y, s["branch"], poison)
        second = model.losses(x2, y2, s["branch"]) if case["two_batches"] else None
        # class 9: a head's overflow only (the trunk's gradients stay finite, so G does too)
        head_hook = (model.heads[-1].weight.register_hook(lambda g: g * float("inf"))
                     if s["inject"] == "nonfinite head" else None)

        if s["inject"] in ("bad target", "autograd"):
            if s["inject"] == "bad target":  # a .grad the out= rules refuse: its elements share memory
                params[1].grad = torch.zeros(1, dtype=dtype).expand(params[1].shape)
                before[1], grad_objects[1] = params[1].grad.clone(), params[1].grad
            else:
                losses[-1] = losses[-1].detach()  # no gradient: refused before any backward pass
            with pytest.raises((ValueError, RuntimeError, TypeError)):
                step.backward(losses, second_losses=second)
            for p, obj, b in zip(params, grad_objects, before):
                assert p.grad is obj, "a failed step replaced a .grad"
                assert (b is None and p.grad is None) or torch.equal(p.grad, b), "a failed step changed a .grad"
            assert _same_state(_state(method), state_before), "a failed step changed the method's state"
            for p in params:  # the refused target is not left behind
                p.grad = None if p is params[1] else p.grad
            history.append([None if p.grad is None else p.grad.clone() for p in params])
            continue

        sets = None if head_hook is not None else _grads(losses, params)  # the reference is not needed then
        second_sets = None if second is None or head_hook is not None else _grads(second, params)
        method_copy = copy.deepcopy(method) if not isinstance(method, str) else method
        step.backward(losses, second_losses=second)
        if head_hook is not None:
            head_hook.remove()
        got = [None if p.grad is None else p.grad.clone() for p in params]
        if s["inject"] in ("nonfinite", "nonfinite head"):
            allowed = state_before
            if state_before is not None and all(v is None for v in state_before["state"].values()):
                # an empty state becomes the initial one (a device-side select cannot keep "None" without a host
                # read): exactly what a fresh method holds after a non-finite matrix
                fresh = copy.deepcopy(method_copy)
                fresh.weights(torch.full((K, K), float("nan"), dtype=dtype))
                allowed = _state(fresh)
            assert _same_state(_state(method), allowed), "a non-finite step changed the method's state"
            assert any(g is not None and not bool(torch.isfinite(g).all()) for g in got), \
                "the non-finite gradients did not reach .grad"
        else:
            want = _reference(case, model, params, shared_ids, sets, second_sets, method_copy, before)
            tol = 1e-7 if dtype == torch.float64 else 1e-3
            for i, (g, w) in enumerate(zip(got, want)):
                assert (g is None) == (w is None), f"step {n}, parameter {i}: .grad presence"
                if g is not None:
                    scale = max(1.0, float(w.abs().max()))
                    err = float((g.double() - w).abs().max())
                    assert err <= tol * scale, f"step {n}, parameter {i}: |.grad - float64 reference| = {err:.3g}"
        for p in params:  # the next step starts from finite gradients
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                p.grad = None
        history.append([None if p.grad is None else p.grad.clone() for p in params])
    return history


@pytest.mark.parametrize("method", METHODS + GH_RULES, ids=[m[0] for m in METHODS + GH_RULES])
def test_fuzz_training_runs(method):
    @seed(SEED)
    @settings(max_examples=EXAMPLES, derandomize=not LONG, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(cases(method))
    def run(case):
        note(f"replay with GH_FUZZ_SEED={SEED}" + (" GH_FUZZ_LONG=1" if LONG else ""))  # printed with a failure
        check_case(case)

    run()


def check_case(case):
    full = _run(case)
    resumed = _run(case, checkpoint_at=2)
    for n, (a, b) in enumerate(zip(full, resumed)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert (x is None) == (y is None) and (x is None or torch.equal(x, y)), \
                f"step {n}, parameter {i}: the resumed run differs from the uninterrupted one"


@pytest.mark.cuda_emulated
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_fuzz_emulated_cuda_kernels():
    """The CUDA kernels (compiled unchanged with g++ against the CPU emulation, tests/cuda_emulated) as a fuzzed
    backend: the Gram pass and the combine (with its non-finite flag) on drawn parameter lists -- K = 1..8 and the
    wide list's 9, 13, 40, 64, every
    dtype, sizes, unaligned starts, absent sets, accumulation, the work list's chunk, an inf or NaN in one
    gradient -- each result bit for bit the host emulation of the kernel's order and within the float64
    reference's bound, the flag exactly "a written value is non-finite". The training-step fuzzer above cannot
    run the CUDA ops on CPU tensors; this draws what they see."""
    from cuda_emulated import build, cases as C, suites as S
    driver = build.build("o1")

    @seed(SEED)
    @settings(max_examples=8 * EXAMPLES, derandomize=not LONG, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def run(data):
        K = data.draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 40, 64]), label="K")  # > 8: the wide list
        dtype = data.draw(st.sampled_from(_rotated(list(C.DTYPES), K)), label="dtype")
        gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
        inject = data.draw(st.sampled_from(["none", "none", "inf", "nan"]), label="inject")
        params = []
        for _ in range(data.draw(st.integers(1, 4), label="parameters")):
            numel = data.draw(st.sampled_from([0, 1, 7, 33, 1000, 5003]))
            present = data.draw(st.lists(st.booleans(), min_size=K, max_size=K))
            sets = [torch.randn(numel, generator=gen, dtype=torch.float64).to(dtype) if has else None for has in present]
            out = torch.randn(numel, generator=gen, dtype=torch.float64).to(dtype)
            params.append(C.Param(numel, dtype, sets, out, data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))))
        poisoned = [s for p in params for s in p.sets if s is not None and s.numel()]
        if inject != "none" and poisoned:
            target = poisoned[data.draw(st.integers(0, len(poisoned) - 1), label="poisoned set")]
            target[data.draw(st.integers(0, target.numel() - 1))] = float(inject)
        weights = [data.draw(st.floats(-2, 2), label="weight") for _ in range(K)]
        chunk = data.draw(st.sampled_from([0, S.test_chunk(dtype)]), label="chunk")
        accumulate = data.draw(st.booleans(), label="accumulate")
        gram = C.Case(C.OP_GRAM, K, params, g_f64=dtype == torch.float64, chunk=chunk, label=f"gram K={K} {dtype}")
        combine = C.Case(C.OP_COMBINE, K, params, accumulate=accumulate, chunk=chunk, vec=weights,
                         label=f"combine K={K} {dtype} accumulate={accumulate}")
        res_gram, res_combine = C.run([gram, combine], driver=driver)
        fails = []
        finite_inputs = inject == "none" or not poisoned
        if S._status(gram, res_gram, fails) and finite_inputs:
            S._check_gram(gram, res_gram, fails)
        if S._status(combine, res_combine, fails):
            written = any(not bool(torch.isfinite(o.double()).all()) for o in res_combine.outs)
            if res_combine.nonfinite != int(written):
                fails.append(f"{combine.label}: flag {res_combine.nonfinite}, a non-finite value written: {written}")
            if finite_inputs:
                S._combine_check(combine, res_combine, weights, fails)
        assert not fails, fails

    run()
