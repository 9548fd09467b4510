"""The CUDA kernels of csrc/cuda, executed on the CPU (tests/cuda_emulated: NOTE: [Emulated execution
model] in cuda_emu.h). Every kernel of every CUDA op runs, unchanged, through the same torch-free pass
functions the glue calls (gh_cuda_passes.h) on work lists built by the glue's own host code
(gh_worklist.h); each result is compared bit for bit with a host emulation of the kernel's order and
with a float64 reference within the dtype's bound (tests/cuda_emulated/suites.py). One more build runs
the same cases under UBSan (alignment, bounds). The mutation check (mutate.py) shows the tests can fail.

    python -m pytest -m cuda_emulated                 # these tests
    python tests/cuda_emulated/mutate.py              # the mutation check (also a slow test here)
"""
import os
import shutil
import subprocess

import pytest
import torch

from cuda_emulated import build, cases, suites

pytestmark = [pytest.mark.cuda_emulated,
              pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")]

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@pytest.fixture(scope="module")
def driver():
    return build.build("o1")


@pytest.fixture(scope="module")
def ubsan_driver():
    return build.build("ubsan")


def _seed() -> int:
    return int(os.environ.get("GH_CUDA_EMU_SEED", "0"))


def test_emulation_selftest(tmp_path):
    """The emulation itself: shuffles of every kind, barriers, returned threads, a reported deadlock."""
    cxx = build.compiler()
    exe = tmp_path / "selftest"
    b = subprocess.run([cxx, "-std=c++17", "-O1", "-I", build.HERE, os.path.join(build.HERE, "selftest.cpp"),
                        os.path.join(build.HERE, "runtime.cpp"), "-o", str(exe)], capture_output=True, text=True)
    assert b.returncode == 0, b.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout
    assert "deadlock in block" in r.stderr


def test_rewrite_keeps_lines_and_finds_every_launch():
    text = "x;\nif (a)\n  k<T, decltype(s)::value><<<g, b, 0,\n  st>>>(p, q(1), r);\nw<float><<<1, 32>>>(z);\n"
    out = build.rewrite_launches(text)
    assert out.count("\n") == text.count("\n") and "<<<" not in out
    assert '::cuemu::launch("k", dim3(g), dim3(b), 0, st, [&] { k<T, decltype(s)::value>(p, q(1), r); })' in out
    assert '::cuemu::launch("w", dim3(1), dim3(32), 0, nullptr, [&] { w<float>(z); })' in out
    for cu in build.kernel_sources():
        assert "<<<" not in build.rewrite_launches(open(cu).read())


def test_fp16_bf16_conversions_match_torch(driver):
    """The emulation's own 16-bit types round to nearest even as torch does (ties, subnormals, overflow)."""
    gen = torch.Generator().manual_seed(_seed())
    special = [0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e30, -1e30, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26,
               2.0 ** -14 - 2.0 ** -25, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 3.4e38,
               float("inf"), float("-inf")]
    values = torch.cat([torch.tensor(special, dtype=torch.float32),
                        torch.randn(4000, generator=gen) * torch.logspace(-9, 6, 4000),
                        (torch.randint(0, 2 ** 31 - 1, (4000,), generator=gen, dtype=torch.int64)
                         .to(torch.int32).view(torch.float32))])
    values = values[torch.isfinite(values) | torch.isinf(values)]
    (res,) = cases.run([cases.Case(cases.OP_CONVERT, 0, values=values)], driver=driver)
    half, bf16, from_half, from_bf16 = res.outs
    assert torch.equal(half, values.to(torch.float16).view(torch.int16))
    assert torch.equal(bf16, values.to(torch.bfloat16).view(torch.int16))
    bits = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    for got, dt in ((from_half, torch.float16), (from_bf16, torch.bfloat16)):
        want = bits.view(dt).float()
        nan = torch.isnan(want)
        assert torch.equal(torch.isnan(got), nan)
        assert torch.equal(got[~nan], want[~nan])


# What each suite drives (tests/cuda_emulated/suites.py), on float32, float64, float16 and bfloat16:
#   gram: gram_partials_kernel and gram_finalize_kernel, K = 1..8, several chunks, tails, unaligned starts, absent
#         sets, empty parameters, the glue's chunk, a mixed-dtype list;
#   combine: combine_kernel, K = 1..8, accumulate on and off, in place (out is set 0's memory), guard bytes;
#   coordinate: trimmed_mean_kernel at every trim for K = 1..8, graddrop_kernel for 2..8 sets;
#   harmonize: harmonize_'s passes: Gram with the shared mask, weights_kernel with the scales, combine; every rule.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("suite", sorted(suites.SUITES))
def test_kernels(driver, suite, dtype):
    fails = suites.SUITES[suite](dtype, _seed(), driver)
    assert not fails, "\n".join(fails)


def test_weights_kernel(driver):
    """weights_kernel on 2x2 matrices: the host rule bitwise, the CPU kernel, the float64 closed forms."""
    fails = suites.run_weights(_seed(), driver)
    assert not fails, "\n".join(fails)


def test_every_kernel_runs(driver, tmp_path, monkeypatch):
    """Each __global__ function in csrc/cuda/*.cu is launched by the suites (a kernel added later fails this
    test until a suite drives it)."""
    log = tmp_path / "launched.txt"
    monkeypatch.setenv("CUEMU_KERNEL_LOG", str(log))
    for name, suite in suites.SUITES.items():
        suite(torch.float32, _seed(), driver, **({"ks": (9,) if name.endswith("_wide") else (2, 3)} if name != "harmonize" else {}))
    suites.run_weights(_seed(), driver)
    launched = set(log.read_text().split())
    assert set(build.kernel_names()) <= launched, sorted(set(build.kernel_names()) - launched)


# float32 and bfloat16 in the test command (a 4-byte and a 2-byte type); float64 and float16 under --run-slow (13 s)
UBSAN_DTYPES = [d if d in (torch.float32, torch.bfloat16) else pytest.param(d, marks=pytest.mark.slow) for d in DTYPES]


@pytest.mark.parametrize("dtype", UBSAN_DTYPES, ids=str)
def test_under_ubsan(ubsan_driver, dtype):
    """The same cases, with the kernels built with -fsanitize=undefined,alignment,bounds (no recovery: a report
    fails the run)."""
    fails = []
    for suite in suites.SUITES.values():
        fails += suite(dtype, _seed(), ubsan_driver)
    if dtype == torch.float32:
        fails += suites.run_weights(_seed(), ubsan_driver)
    assert not fails, "\n".join(fails)


@pytest.mark.slow
def test_mutations_are_caught():
    """Each mutation of mutate.py, applied to a copy of csrc, makes a suite fail."""
    from cuda_emulated import mutate
    escaped = mutate.run_all()
    assert not escaped, f"mutations the emulated tests did not catch: {escaped}"
