"""Harmonizer(sync=...) with 2 processes (gloo, CPU), spawned by tests/dist_worker.py, bounded in time."""
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")

SCENARIOS = ["global-gh", "global-gh++", "local-gh", "local-gh++", "sharded-gh", "sharded-gh++", "global-accumulate"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    init = tmp_path_factory.mktemp("dist") / "init"
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, worker, str(init)], capture_output=True, text=True, timeout=300, env=env)
    lines = []
    for rank in range(2):
        path = f"{init}.rank{rank}"
        if os.path.exists(path):
            lines += [line.rstrip("\n").split(" ", 3) for line in open(path) if line.startswith("RESULT ")]
    out = {}
    for _, rank, name, verdict in lines:
        out[(int(rank), name)] = verdict
    if not out:
        pytest.fail(f"the distributed worker reported nothing (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return out


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
