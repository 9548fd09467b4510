"""Distributed training features with the Harmonizer, 2 gloo processes on CPU (tests/features_worker.py):
DDP with gradient_as_bucket_view=True, FSDP2 with a MixedPrecisionPolicy (bfloat16 parameters,
float32 reduce), and the clear errors for the combinations that cannot work (DDP outside no_sync(),
DDP(static_graph=True)). Gradient accumulation under no_sync() is in test_distributed.py."""
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")

SCENARIOS = ["ddp-gradient-as-bucket-view", "ddp-static-graph-error", "ddp-without-no-sync-error", "fsdp2-mixed-precision"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    init = tmp_path_factory.mktemp("features") / "init"
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "features_worker.py")
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
        pytest.fail(f"the worker reported nothing (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return out


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("rank", [0, 1])
def test_feature(results, scenario, rank):
    verdict = results.get((rank, scenario))
    assert verdict == "ok", f"rank {rank} {scenario}: {verdict}"
