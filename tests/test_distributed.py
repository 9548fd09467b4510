"""Harmonizer(sync=...) with 2 processes (gloo, CPU), spawned by tests/dist_worker.py, bounded in time."""
import pytest
import torch.distributed as dist

from helpers import run_two_rank_worker

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")

SCENARIOS = ["global-gh", "global-gh++", "local-gh", "local-gh++", "sharded-gh", "sharded-gh++", "global-accumulate"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_two_rank_worker("dist_worker.py", tmp_path_factory.mktemp("dist") / "init")


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("rank", [0, 1])
def test_distributed_matches_single_process(results, scenario, rank):
    verdict = results.get((rank, scenario))
    assert verdict == "ok", f"rank {rank} {scenario}: {verdict}"


def test_a_rank_has_an_empty_shard(results):
    assert results.get((1, "sharded-has-empty-shard")) == "ok", results.get((1, "sharded-has-empty-shard"))


def test_bad_sync_mode():
    import torch

    import gh_kernels

    with pytest.raises(ValueError, match="sync must be one of None, 'global', 'local', 'sharded'"):
        gh_kernels.Harmonizer([torch.nn.Parameter(torch.ones(2))], sync="ddp")
