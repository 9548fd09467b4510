"""Distributed training features with the Harmonizer, 2 gloo processes on CPU (tests/features_worker.py):
DDP with gradient_as_bucket_view=True, FSDP2 with a MixedPrecisionPolicy (bfloat16 parameters,
float32 reduce), and the clear errors for the combinations that cannot work (DDP outside no_sync(),
DDP(static_graph=True)). Gradient accumulation under no_sync() is in test_distributed.py."""
import pytest
import torch.distributed as dist

from helpers import run_two_rank_worker

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")

SCENARIOS = ["ddp-gradient-as-bucket-view", "ddp-static-graph-error", "ddp-without-no-sync-error", "fsdp2-mixed-precision"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_two_rank_worker("features_worker.py", tmp_path_factory.mktemp("features") / "init")


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("rank", [0, 1])
def test_feature(results, scenario, rank):
    verdict = results.get((rank, scenario))
    assert verdict == "ok", f"rank {rank} {scenario}: {verdict}"
