"""The trainer integrations under python/ run a few steps on CPU and give the update of a plain loop
with the Harmonizer: Lightning with manual optimization (one process, and its DDP strategy on 2 CPU
processes with sync="global", equal to one process on the union of the batches), the Hugging Face
Trainer with training_step overridden, and Hugging Face Accelerate (no_sync, bf16 mixed precision).
Each data set holds exactly one global batch, so every step sees the same samples whatever the
trainer's sampler order (the mean loss does not depend on it)."""
import os
import subprocess
import sys

import pytest
import torch

import gh_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
from trainer_common import ShiftedDomains, UDANet  # noqa: E402


def _reference(steps, samples, autocast=False):
    """A plain loop: the whole data set as one batch, Harmonizer.backward, SGD(lr=0.05)."""
    torch.manual_seed(0)
    net = UDANet()
    data = ShiftedDomains(size=samples)
    batch = (data.xs, data.ys, data.xt)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    h = gh_kernels.Harmonizer(net.parameters(), shared=net.shared_parameters(), method="gh++")
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses = net(*batch)
        h.backward(*losses)
        opt.step()
    return net


def _same(a, b, tol):
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=tol, atol=tol)


def test_lightning_manual_optimization():
    pytest.importorskip("lightning")
    import lightning_example
    net = lightning_example.main(["--steps", "3", "--samples", "8", "--batch-size", "8"])
    _same(net, _reference(3, 8), 1e-6)


def test_lightning_refuses_automatic_optimization():
    pytest.importorskip("lightning")
    import lightning_example
    module = lightning_example.HarmonizedUDA()
    module.automatic_optimization = True
    with pytest.raises(RuntimeError, match="automatic_optimization = False.*added twice"):
        module.configure_optimizers()


@pytest.mark.slow  # 12 s of the test command's time; DDP itself is checked without Lightning (tests/test_distributed.py)
def test_lightning_ddp_two_processes_equals_one_process_on_the_union(tmp_path):
    pytest.importorskip("lightning")
    out = str(tmp_path / "checksum")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "python", "lightning_example.py"), "--devices", "2",
                          "--strategy", "ddp", "--steps", "3", "--samples", "16", "--batch-size", "8", "--out", out],
                         capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    ranks = [float(open(f"{out}.{r}").read()) for r in (0, 1)]
    assert ranks[0] == ranks[1], "the replicas must stay identical"
    reference = sum(float(p.detach().double().sum()) for p in _reference(3, 16).parameters())
    assert abs(ranks[0] - reference) <= 1e-5 * max(1.0, abs(reference))


def test_hf_trainer_training_step_override():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import hf_trainer_example
    net = hf_trainer_example.main(["--steps", "3", "--samples", "8"])
    _same(net, _reference(3, 8), 1e-5)


def test_accelerate_no_sync_bf16():
    pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState
    import accelerate_example
    AcceleratorState._reset_state(reset_partial_state=True)  # the Trainer test may have set it up without bf16
    net, loss = accelerate_example.main(["--steps", "3", "--samples", "8", "--mixed-precision", "bf16"])
    _same(net, _reference(3, 8, autocast=True), 1e-5)
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_the_package_needs_none_of_them():
    """transformers, lightning, accelerate (and torchjd) are test and example dependencies only."""
    code = ("import sys, gh_kernels; "
            "print([m for m in ('transformers', 'lightning', 'accelerate', 'torchjd') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
