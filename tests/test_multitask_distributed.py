"""MultiTaskHarmonizer(sync=...) with 2 processes (gloo, CPU), spawned by tests/mtl_dist_worker.py."""
import pytest
import torch.distributed as dist

from helpers import run_two_rank_worker

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")

SCENARIOS = [f"{mode}-{m}" for m in ("upgrad", "mgda") for mode in ("global", "local", "sharded")] + ["global-accumulate"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_two_rank_worker("mtl_dist_worker.py", tmp_path_factory.mktemp("mtl_dist") / "init")


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("rank", [0, 1])
def test_multitask_distributed_matches_single_process(results, scenario, rank):
    verdict = results.get((rank, scenario))
    assert verdict == "ok", f"rank {rank} {scenario}: {verdict}"
