"""The emulated-CUDA suites: for each op, the cases (cases.py) and the checks of their results. A suite
returns a list of failure messages (empty: passed), so the tests assert on it and the mutation check
(mutate.py) expects it to be non-empty.

Every result is compared twice: bit for bit with the driver's host emulation of the kernel's order
(NOTE: [Kernel orders] in driver.cpp), and with a float64 reference within the dtype's bound
(a rounding-error bound of the summation, plus the output dtype's rounding).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import torch

from . import cases as C

Suite = Callable[..., List[str]]

EPS = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
TINY = {torch.float32: 2.0 ** -149, torch.float64: 2.0 ** -1074, torch.float16: 2.0 ** -24, torch.bfloat16: 2.0 ** -133}
VEC = {torch.float32: 4, torch.float64: 2, torch.float16: 8, torch.bfloat16: 8}   # Vec<T>::N of gh_cuda_vec.cuh


def acc_eps(dtype: torch.dtype) -> float:
    return EPS[torch.float64] if dtype == torch.float64 else EPS[torch.float32]


def test_chunk(dtype: torch.dtype) -> int:
    """1536 vectors per item: one unrolled group of 4 vectors per thread, then the remainder loop."""
    return 1536 * VEC[dtype]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    ia, ib = a.reshape(-1).view(C._INT_VIEW[a.element_size()]), b.reshape(-1).view(C._INT_VIEW[b.element_size()])
    return torch.equal(ia, ib)


def _f64(t: Optional[torch.Tensor], n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float64) if t is None else t.to(torch.float64)


def _check_outs(case: C.Case, res: C.Result, ref_fn, bound_fn, fails: List[str]) -> None:
    """outs: bitwise the emulation, within bound of the float64 reference, nothing written outside."""
    if res.guard_broken:
        fails.append(f"{case.label}: {res.guard_broken} bytes written outside an out")
    for i, (p, out, emu) in enumerate(zip(case.params, res.outs, res.outs_emul)):
        if not _same_bits(out, emu):
            diff = (out.double() - emu.double()).abs()
            fails.append(f"{case.label} param {i} (numel {p.numel}): kernel != emulation at "
                         f"{int((diff > 0).sum())} elements (max {float(diff.max()):.3g})")
        if p.numel == 0:
            continue
        ref, bound, skip = ref_fn(p), bound_fn(p), None
        if isinstance(ref, tuple):
            ref, skip = ref
        err = (out.double() - ref).abs()
        bad = ~(err <= bound) & ~(torch.isnan(out.double()) & torch.isnan(ref))
        if skip is not None:
            bad &= ~skip
        if bool(bad.any()):
            j = int(bad.nonzero()[0])
            fails.append(f"{case.label} param {i}: |kernel - float64| = {float(err[j]):.3g} > bound {float(bound[j]):.3g} "
                         f"at {j} ({int(bad.sum())} elements)")


def _initial_out(case: C.Case, p: C.Param) -> torch.Tensor:
    """out's value before the call (set out_alias's gradient when out is that set's memory)."""
    return _f64(p.sets[case.out_alias], p.numel) if case.out_alias >= 0 else p.out.double()


def _combine_check(case: C.Case, res: C.Result, weights: List[float], fails: List[str]) -> None:
    def ref(p):
        acc = _initial_out(case, p) if case.accumulate else torch.zeros(p.numel, dtype=torch.float64)
        for k, s in enumerate(p.sets):
            acc = acc + weights[k] * _f64(s, p.numel)
        return acc

    def bound(p):
        mag = _initial_out(case, p).abs() if case.accumulate else torch.zeros(p.numel, dtype=torch.float64)
        for k, s in enumerate(p.sets):
            mag = mag + abs(weights[k]) * _f64(s, p.numel).abs()
        r = ref(p).abs()
        return (case.K + 2) * acc_eps(p.dtype) * mag + EPS[p.dtype] * r * 1.0001 + TINY[p.dtype]

    _check_outs(case, res, ref, bound, fails)


WIDE_KS = (9, 13, 40, 64)  # above MAX_SETS: the wide path (NOTE: [Wide work list]); 13 and 40 leave partial blocks
WIDE_GRAM_TILE = 64       # kWideGramTile (gh_constants.h)


def _gram_reference(case: C.Case, mask_gram: bool, n_items: int = 0):
    """float64 G over the case's parameters (those in the Gram when mask_gram), and the bound on a kernel's
    error: per parameter, (longest serial chain + tree depths) * the accumulation type's eps * sum |x_a x_b|.
    The wide kernel's chain: one tile's products per lane in the accumulation type (the rest is float64)."""
    K = case.K
    G = torch.zeros(K, K, dtype=torch.float64)
    bound = torch.zeros(K, K, dtype=torch.float64)
    chunk = case.chunk or (1 << 14)
    for p in case.params:
        if mask_gram and not p.in_gram:
            continue
        xs = [_f64(s, p.numel) for s in p.sets]
        if K > 8:
            chain = WIDE_GRAM_TILE + 2
        else:
            chain = math.ceil(min(p.numel, chunk) / 256) + 16 + n_items // 128 + 8
        for a in range(K):
            for b in range(K):
                G[a, b] += torch.dot(xs[a], xs[b])
                bound[a, b] += chain * acc_eps(p.dtype) * torch.dot(xs[a].abs(), xs[b].abs())
    return G, bound


def _check_gram(case: C.Case, res: C.Result, fails: List[str], mask_gram: bool = False) -> None:
    if not torch.equal(res.G, res.G_emul):
        fails.append(f"{case.label}: G != emulation: max diff {float((res.G - res.G_emul).abs().max()):.3g}")
    if not torch.equal(res.G, res.G.T):
        fails.append(f"{case.label}: G is not symmetric")
    G64, bound = _gram_reference(case, mask_gram, res.n_items)
    bound = bound + (0.0 if case.g_f64 else EPS[torch.float32]) * G64.abs() + 1e-300
    err = (res.G - G64).abs()
    if not bool((err <= bound).all()):
        j = int(err.argmax())
        fails.append(f"{case.label}: |G - float64 G| max {float(err.max()):.3g} exceeds the bound "
                     f"{float(bound.view(-1)[j]):.3g}")


def _status(case: C.Case, res: C.Result, fails: List[str]) -> bool:
    if res.status != 0:
        fails.append(f"{case.label}: the launch failed with cudaError {res.status}")
        return False
    return True


# ---- suites ------------------------------------------------------------------------------------------

def gram_cases(dtype: torch.dtype, seed: int, ks=range(1, 9)) -> List[C.Case]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for K in ks:
        chunk = test_chunk(dtype)
        out.append(C.Case(C.OP_GRAM, K, C.standard_params(K, dtype, gen, chunk=chunk, with_out=False), chunk=chunk,
                          g_f64=dtype == torch.float64, label=f"gram {dtype} K={K}"))
    # The glue's own chunk for an H100 (16K elements), and a mixed-dtype list (one launch per dtype group).
    out.append(C.Case(C.OP_GRAM, 3, C.standard_params(3, dtype, gen, chunk=1 << 14, with_out=False, big=40000), chunk=0,
                      g_f64=dtype == torch.float64, label=f"gram {dtype} K=3 glue chunk"))
    mixed = C.standard_params(4, dtype, gen, chunk=test_chunk(dtype), with_out=False)[:4] + \
        C.standard_params(4, torch.bfloat16, gen, chunk=test_chunk(torch.bfloat16), with_out=False)[:3]
    out.append(C.Case(C.OP_GRAM, 4, mixed, chunk=test_chunk(torch.bfloat16), g_f64=dtype == torch.float64,
                      label=f"gram {dtype}+bfloat16 K=4"))
    return out


def run_gram(dtype: torch.dtype, seed: int = 0, driver: Optional[str] = None, ks=range(1, 9)) -> List[str]:
    cs = gram_cases(dtype, seed, ks)
    fails: List[str] = []
    for case, res in zip(cs, C.run(cs, driver=driver)):
        if _status(case, res, fails):
            _check_gram(case, res, fails)
    return fails


def run_combine(dtype: torch.dtype, seed: int = 0, driver: Optional[str] = None, ks=range(1, 9),
                nonfinite_ks=(2, 5, 3)) -> List[str]:
    gen = torch.Generator().manual_seed(seed)
    cs = []
    for K in ks:
        chunk = test_chunk(dtype)
        alias = 0 if K in (3, 6, 13) else -1  # in place: out is set 0's memory (aggregate(out=g0))
        params = C.standard_params(K, dtype, gen, chunk=chunk, with_out=True, absent=alias < 0)
        if alias >= 0:
            params = [p for p in params if p.sets[0] is not None or p.numel == 0]
        w = (torch.randn(K, generator=gen, dtype=torch.float64) + 0.5).tolist()
        cs.append(C.Case(C.OP_COMBINE, K, params, accumulate=K % 2 == 0 or alias >= 0, chunk=chunk, out_alias=alias,
                         vec=w, label=f"combine {dtype} K={K}{' in place' if alias >= 0 else ''}"))
    big = 0.75 * torch.finfo(dtype).max  # twice it overflows when stored: finite inputs, a non-finite write
    for K, where, value in zip(nonfinite_ks, (0, 2, 6), (float("inf"), float("nan"), big)):  # vector path, unaligned starts
        params = C.standard_params(K, dtype, gen, chunk=test_chunk(dtype), with_out=True)
        params[where].sets[1][params[where].numel // 2] = value
        params[where].sets[2 if value == big else 1][params[where].numel // 2] = value
        cs.append(C.Case(C.OP_COMBINE, K, params, chunk=test_chunk(dtype), vec=[1.0] * K,
                         label=f"combine {dtype} K={K} {value} in parameter {where}"))
    fails: List[str] = []
    for case, res in zip(cs, C.run(cs, driver=driver)):
        if not _status(case, res, fails):
            continue
        written_nonfinite = any(not bool(torch.isfinite(o.double()).all()) for o in res.outs)
        if res.nonfinite != int(written_nonfinite):  # NOTE: [Non-finite flag of the combine]
            fails.append(f"{case.label}: nonfinite flag {res.nonfinite}, but a non-finite value written: {written_nonfinite}")
        if written_nonfinite != ("in parameter" in case.label):
            fails.append(f"{case.label}: a non-finite value written: {written_nonfinite}")
        elif not written_nonfinite:
            _combine_check(case, res, case.vec, fails)
    return fails


def run_coordinate(dtype: torch.dtype, seed: int = 0, driver: Optional[str] = None, ks=range(1, 9)) -> List[str]:
    gen = torch.Generator().manual_seed(seed)
    cs = []
    for K in ks:
        chunk = test_chunk(dtype)
        for trim in range((K - 1) // 2 + 1):  # every trim: 2 * trim < K
            params = C.standard_params(K, dtype, gen, chunk=chunk, with_out=True)
            cs.append(C.Case(C.OP_COORDINATE, K, params, rule="trimmed-mean", trim=trim, accumulate=trim % 2 == 1,
                             chunk=chunk, label=f"trimmed-mean {dtype} K={K} trim={trim}"))
        if K >= 2:  # GradDrop over K - 1 gradients; the last set holds the uniform draws, for every parameter
            params = [p for p in C.standard_params(K, dtype, gen, chunk=chunk, with_out=True) if p.present or not p.numel]
            for p in params:
                p.sets[K - 1] = torch.rand(p.numel, generator=gen, dtype=torch.float64).to(dtype)
            leak = torch.rand(K - 1, generator=gen, dtype=torch.float64).tolist()
            leak[0] = 0.0
            cs.append(C.Case(C.OP_COORDINATE, K, params, rule="graddrop", accumulate=K % 2 == 1, chunk=chunk,
                             vec=leak, label=f"graddrop {dtype} sets={K}"))
    fails: List[str] = []
    for case, res in zip(cs, C.run(cs, driver=driver)):
        if not _status(case, res, fails):
            continue
        K, ea = case.K, acc_eps(dtype)

        def base(p):
            return p.out.double() if case.accumulate else torch.zeros(p.numel, dtype=torch.float64)

        if case.rule == "trimmed-mean":
            def ref(p, case=case):
                x = torch.stack([_f64(s, p.numel) for s in p.sets]).sort(dim=0).values
                return base(p) + x[case.trim:K - case.trim].mean(dim=0)

            def bound(p, case=case):
                mag = torch.stack([_f64(s, p.numel).abs() for s in p.sets]).max(dim=0).values
                return (K + 2) * ea * (mag + base(p).abs()) + EPS[dtype] * ref(p).abs() * 1.0001 + TINY[dtype]
        else:
            def ref(p, case=case):
                g = torch.stack([_f64(s, p.numel) for s in p.sets[:-1]])
                u = _f64(p.sets[-1], p.numel)
                purity = 0.5 * (1 + g.sum(0) / g.abs().sum(0))
                kept = ((purity > u) & (g > 0)) | ((purity < u) & (g < 0))
                leak = torch.tensor(case.vec, dtype=torch.float64)[:, None]
                r = ((leak + (1 - leak) * kept.double()) * g).sum(0)
                # Where the draw is within rounding of the purity, float32 may keep the other sign.
                return base(p) + r, (purity - u).abs() < 1e-4

            def bound(p, case=case):
                mag = torch.stack([_f64(s, p.numel).abs() for s in p.sets[:-1]]).sum(0)
                return (K + 4) * ea * (mag + base(p).abs()) + EPS[dtype] * ref(p)[0].abs() * 1.0001 + TINY[dtype]
        _check_outs(case, res, ref, bound, fails)
    return fails


def run_harmonize(dtype: torch.dtype, seed: int = 0, driver: Optional[str] = None) -> List[str]:
    gen = torch.Generator().manual_seed(seed)
    cs = []
    for i, method in enumerate(("gh", "gh++", "gh++released", "sum")):
        for variant in range(2):
            chunk = test_chunk(dtype)
            alias = 0 if variant == 1 else -1
            params = C.standard_params(2, dtype, gen, chunk=chunk, with_out=True, absent=alias < 0)
            if alias >= 0:
                params = [p for p in params if p.sets[0] is not None or p.numel == 0]
            for p in params:  # conflicting gradients: g2 = -0.6 g1 + noise
                if p.sets[0] is not None and p.sets[1] is not None:
                    p.sets[1] = (-0.6 * p.sets[0].double() + 0.5 * p.sets[1].double()).to(dtype)
            params[-1].in_gram = False  # harmonize_'s shared mask: combined, left out of G
            cs.append(C.Case(C.OP_HARMONIZE, 2, params, method=method, accumulate=variant == 0 or alias >= 0,
                             out_alias=alias, chunk=chunk, g_f64=dtype == torch.float64, kappa=0.25 + 0.25 * i,
                             scale1=0.75 + 0.5 * variant, scale2=1.25,
                             label=f"harmonize {dtype} {method}{' in place' if alias >= 0 else ''}"))
    fails: List[str] = []
    from gh_kernels.reference import weights_reference
    for case, res in zip(cs, C.run(cs, driver=driver)):
        if not _status(case, res, fails):
            continue
        _check_gram(case, res, fails, mask_gram=True)
        if not torch.equal(res.w, res.w_emul):
            fails.append(f"{case.label}: weights {res.w.tolist()} != emulation {res.w_emul.tolist()}")
        G64, _ = _gram_reference(case, True)
        w64 = weights_reference(G64, case.method, case.kappa)
        tol = 1e-9 if case.g_f64 else 2e-4
        if not torch.allclose(res.w[:2], w64, rtol=tol, atol=tol):
            fails.append(f"{case.label}: weights {res.w[:2].tolist()} vs float64 {w64.tolist()}")
        expect_scaled = res.w[:2] * torch.tensor([case.scale1, case.scale2], dtype=torch.float64)
        if not torch.allclose(res.w[2:], expect_scaled, rtol=1e-6, atol=0):
            fails.append(f"{case.label}: scaled weights {res.w[2:].tolist()} vs {expect_scaled.tolist()}")
        _combine_check(case, res, res.w[2:].tolist(), fails)
    return fails


def run_weights(seed: int = 0, driver: Optional[str] = None) -> List[str]:
    """launch_weights on 2x2 Gram matrices (conflicting, not, a zero gradient, nearly (anti)parallel, non-finite):
    the kernel against the host rule and the float64 closed forms; gh_kernels' CPU kernel bitwise."""
    gen = torch.Generator().manual_seed(seed)
    mats = []
    for _ in range(12):
        g = torch.randn(2, 16, generator=gen, dtype=torch.float64)
        mats.append(g @ g.T)
    g1 = torch.randn(16, generator=gen, dtype=torch.float64)
    for g2 in (-g1 + 1e-3 * torch.randn(16, generator=gen, dtype=torch.float64), -0.3 * g1, torch.zeros(16), 2 * g1):
        g = torch.stack([g1, g2])
        mats.append(g @ g.T)
    mats.append(torch.tensor([[float("inf"), -1.0], [-1.0, 1.0]], dtype=torch.float64))
    cs = []
    for f64 in (False, True):
        for m, G in enumerate(mats):
            for method in ("gh", "gh++", "gh++released", "sum"):
                kappa = (m % 5) / 4
                cs.append(C.Case(C.OP_WEIGHTS, 2, g_f64=f64, method=method, kappa=kappa, scale1=0.5, scale2=2.0,
                                 vec=G.reshape(-1).tolist(), label=f"weights {'f64' if f64 else 'f32'} {method} G#{m}"))
    fails: List[str] = []
    import gh_kernels
    from gh_kernels.reference import weights_reference
    cpu_kernel = "cpu" in gh_kernels.available_backends()
    for case, res in zip(cs, C.run(cs, driver=driver)):
        if not _status(case, res, fails):
            continue
        if not torch.equal(res.w, res.w_emul):
            fails.append(f"{case.label}: kernel {res.w.tolist()} != host rule {res.w_emul.tolist()}")
        dt = torch.float64 if case.g_f64 else torch.float32
        G = torch.tensor(case.vec, dtype=torch.float64).view(2, 2).to(dt)
        if cpu_kernel:  # bitwise where the rule is arithmetic; GH++ calls acos/sin/cos, whose last bit is the libm's
            w_cpu = gh_kernels.weights(G, case.method, kappa=case.kappa, backend="cpu").double()
            ulps = 0 if case.method in ("gh", "sum") else 4
            if not torch.allclose(w_cpu, res.w[:2], rtol=ulps * EPS[dt], atol=0, equal_nan=True):
                fails.append(f"{case.label}: CUDA kernel {res.w[:2].tolist()} != CPU kernel {w_cpu.tolist()}")
        if torch.isfinite(G).all():
            w64 = weights_reference(G.double(), case.method, case.kappa)
            tol = 1e-9 if case.g_f64 else 1e-4
            if not torch.allclose(res.w[:2], w64, rtol=tol, atol=tol):
                fails.append(f"{case.label}: {res.w[:2].tolist()} vs float64 closed form {w64.tolist()}")
    return fails


def run_gram_wide(dtype: torch.dtype, seed: int = 0, driver: Optional[str] = None, ks=WIDE_KS) -> List[str]:
    """The wide Gram (K = 9..64, NOTE: [Wide Gram block]) on the standard list, chunks of 2.5 tiles."""
    gen = torch.Generator().manual_seed(seed)
    cs = []
    for K in ks:
        chunk = 160  # two full tiles and a partial one per item; a multiple of 16 bytes in every dtype
        cs.append(C.Case(C.OP_GRAM, K, C.standard_params(K, dtype, gen, chunk=chunk, with_out=False, big=2 * chunk + 37),
                         chunk=chunk, g_f64=dtype == torch.float64, label=f"wide gram {dtype} K={K}"))
    fails: List[str] = []
    for case, res in zip(cs, C.run(cs, driver=driver)):
        if _status(case, res, fails):
            _check_gram(case, res, fails)
    return fails


def run_combine_wide(dtype: torch.dtype, seed: int = 0, driver: Optional[str] = None, ks=WIDE_KS) -> List[str]:
    """The wide combine (K = 9..64): accumulate or not, in place (out is set 0's memory), the non-finite flag."""
    return run_combine(dtype, seed, driver, ks=ks, nonfinite_ks=(9, 13, 40))


SUITES: Dict[str, Suite] = {"gram": run_gram, "combine": run_combine, "coordinate": run_coordinate,
                            "harmonize": run_harmonize, "gram_wide": run_gram_wide, "combine_wide": run_combine_wide}
