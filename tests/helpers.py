"""Helpers shared by the tests: backends per device, random gradient sets, plain-torch baselines at
the input dtype, and the error bounds (at most twice plain torch's error at the same dtype, plus a floor)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any triton import

import torch

import gh_kernels
from gh_kernels import backends

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_interpreter_supported():
    """The interpreter runs our kernels from Triton 3.9 on (CI pins 3.9.0); Triton 3.6's
    interpreter rejects a scalar conversion in them (seen on the GPU machine's image), while
    its compiler runs them on the GPU (tests/test_cuda.py)."""
    try:
        import importlib.metadata as md

        major, minor = (int(x) for x in md.version("triton").split(".")[:2])
        return (major, minor) >= (3, 9)
    except Exception:
        return False


def backends_for(device: str, candidates):
    """The candidate backends that can serve tensors on ``device`` here."""
    names = []
    for name in candidates:
        try:
            backends.resolve(name, torch.device(device))
            names.append(name)
        except (backends.BackendUnavailable, ValueError):
            pass
    return names


def cpu_backends():
    """Backends that can run CPU tensors here (torch always; cpu with the extension; triton interpreted)."""
    candidates = ("torch", "cpu", "triton") if triton_interpreter_supported() else ("torch", "cpu")
    return backends_for("cpu", candidates)


def device_backends():
    """(device, backend) pairs that can run here: the CPU backends, then each backend on CUDA when there is a GPU
    (Triton compiled for it, unless TRITON_INTERPRET=1 is forced)."""
    pairs = [("cpu", b) for b in cpu_backends()]
    if torch.cuda.is_available():
        pairs += [("cuda", b) for b in backends_for("cuda", ("cuda", "triton", "torch"))]
    return pairs


def on(sets, device):
    """Gradient sets (lists of tensors/None) moved to ``device``."""
    return [[None if t is None else t.to(device) for t in s] for s in sets]


def make_set(sizes, dtype=torch.float32, generator=None, scale=1.0, device="cpu"):
    """Random gradient set; an int size gives a 1-d tensor, a tuple a tensor of that shape."""
    out = []
    for s in sizes:
        shape = (s,) if isinstance(s, int) else tuple(s)
        out.append((torch.randn(shape, generator=generator, dtype=torch.float32) * scale).to(dtype).to(device))
    return out


def conflicting_pair(sizes, dtype, generator, strength=0.6):
    """Two sets with a negative inner product (g2 = -strength*g1 + noise)."""
    g1 = make_set(sizes, torch.float32, generator)
    noise = make_set(sizes, torch.float32, generator)
    g2 = [-strength * a + 0.5 * b for a, b in zip(g1, noise)]
    return [a.to(dtype) for a in g1], [b.to(dtype) for b in g2]


def plain_torch_gram(sets, dtype):
    """What plain torch computes at the input dtype: flatten, cat, dot (result rounded to dtype)."""
    like = [next((s[p] for s in sets if s[p] is not None), None) for p in range(len(sets[0]))]
    flats = []
    for s in sets:
        parts = [(t if t is not None else torch.zeros_like(r)).reshape(-1).to(dtype) for t, r in zip(s, like) if r is not None]
        flats.append(torch.cat(parts))
    K = len(sets)
    G = torch.zeros(K, K, dtype=torch.float64)
    for i in range(K):
        for j in range(K):
            G[i, j] = torch.dot(flats[i], flats[j]).double()
    return G


def assert_field_error(actual, ref, baseline, floor, what=""):
    """Error against float64 at most twice plain torch's error at the same dtype, plus a floor."""
    actual, ref, baseline = actual.double().cpu(), ref.double().cpu(), baseline.double().cpu()
    assert torch.isfinite(actual).all(), f"{what}: non-finite result"
    err = (actual - ref).abs().max().item() if ref.numel() else 0.0
    base = (baseline - ref).abs().max().item() if ref.numel() else 0.0
    assert err <= 2 * base + floor, f"{what}: error {err:.3e} > 2 x plain-torch error {base:.3e} + floor {floor:.3e}"


EPS = {torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def weight_tolerance(G, method: str, w_ref) -> float:
    """Absolute error allowed between float32 weights and the float64 reference on the same Gram matrix G.

    The float32 cosine carries a relative error d of a few ulps; theta = acos(cos) amplifies it by
    1/sin(theta), and at theta = 180 degrees, where that diverges, the error is at most sqrt(2 d).
    gh++released moves by at most |d theta| (|dw/dtheta| <= 1); geometric gh++ divides by sin(theta),
    so its error grows like (1 + n2/n1 + n1/n2) (1/sin + 1/sin^2) d theta. sum and gh involve no angle.
    """
    n1sq, c, n2sq = (float(v) for v in (G[0, 0], G[0, 1], G[1, 1]))
    scale = 1e-5 * (1 + float(torch.as_tensor(w_ref).abs().max()))
    if method in ("sum", "gh") or not (n1sq > 0 and n2sq > 0):
        return scale
    d = 8 * EPS[torch.float32]
    cos = max(-1.0, min(1.0, c / (n1sq * n2sq) ** 0.5))
    sin = (1 - cos * cos) ** 0.5
    if method == "gh++" and sin < gh_kernels.weighting.gh.GHPP_MIN_SIN:
        return scale  # the documented rule: the GH weights, no angle
    d_theta = min(d / sin if sin > 0 else float("inf"), (2 * d) ** 0.5)
    if method == "gh++released":
        return scale + d_theta
    ratio = (n1sq / n2sq) ** 0.5
    return scale + d_theta * (1 + ratio + 1 / ratio) * (1 / sin + 1 / sin ** 2)


def run_two_rank_worker(script: str, init) -> dict:
    """Run a tests/ worker script that spawns 2 gloo ranks writing ``RESULT <rank> <name> <verdict>`` lines to
    ``<init>.rank<r>``; return ``{(rank, name): verdict}`` (fails the test when nothing was reported)."""
    import subprocess
    import sys

    import pytest

    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, worker, str(init)], capture_output=True, text=True, timeout=300, env=env)
    out = {}
    for rank in range(2):
        path = f"{init}.rank{rank}"
        if os.path.exists(path):
            for line in open(path):
                if line.startswith("RESULT "):
                    _, r, name, verdict = line.rstrip("\n").split(" ", 3)
                    out[(int(r), name)] = verdict
    if not out:
        pytest.fail(f"{script} reported nothing (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return out


def gram_on_threads(sets, counts=(1, 2, 3), backend="torch"):
    """``backend``'s Gram of ``sets`` computed on each thread count (the thread count restored after)."""
    import gh_kernels
    threads = torch.get_num_threads()
    try:
        results = []
        for n in counts:
            torch.set_num_threads(n)
            results.append(gh_kernels.gram(sets, backend=backend))
    finally:
        torch.set_num_threads(threads)
    return results
