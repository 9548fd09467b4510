"""Two-process (gloo, CPU) checks of MultiTaskHarmonizer(sync=...) with K = 3 losses, run by
tests/test_multitask_distributed.py. Each rank uses its half of a global batch; the distributed
result is compared with a single-process reference computed on the rank. Writes
'RESULT <rank> <scenario> ok|FAIL <why>' lines to <init_file>.rank<rank>."""
import os
import sys
import traceback

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gh_kernels  # noqa: E402
from dist_worker import close, launch, reporter  # noqa: E402
from models import KHeadNet  # noqa: E402

K = 3


def fresh():
    torch.manual_seed(0)
    return KHeadNet(K, hidden=12)


def batch(step=0):
    g = torch.Generator().manual_seed(50 + step)
    return torch.randn(8, 6, generator=g), torch.randn(8, K, generator=g)


def half(b, r):
    return b[0][4 * r:4 * r + 4], b[1][4 * r:4 * r + 4]


def reference(b, method, steps=1):
    net = fresh()
    h = gh_kernels.MultiTaskHarmonizer(net.parameters(), shared=net.trunk.parameters(), method=method)
    for s in range(steps):
        res = h.backward(net(*(b if steps == 1 else batch(s))))
    return res.weights, [p.grad.clone() for p in net.parameters()]


def worker(rank, world, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from torch.nn.parallel import DistributedDataParallel as DDP

    report = reporter(init_file, rank)

    b = batch()
    for method in ("upgrad", "mgda"):
        try:  # global: equals single-process aggregation of the whole batch
            model = DDP(fresh())
            h = gh_kernels.MultiTaskHarmonizer(model.parameters(), shared=model.module.trunk.parameters(), method=method, sync="global")
            with model.no_sync():
                res = h.backward(model(*half(b, rank)))
            w_ref, g_ref = reference(b, method)
            ok = torch.allclose(res.weights, w_ref, rtol=1e-4) and all(close(p.grad, g) for p, g in zip(model.parameters(), g_ref))
            report(f"global-{method}", ok, f"w={res.weights.tolist()} ref={w_ref.tolist()}")
        except Exception:
            report(f"global-{method}", False, traceback.format_exc().replace("\n", " | "))
        try:  # local: per-rank aggregation, then the average
            model = DDP(fresh())
            h = gh_kernels.MultiTaskHarmonizer(model.parameters(), shared=model.module.trunk.parameters(), method=method, sync="local")
            with model.no_sync():
                h.backward(model(*half(b, rank)))
            per_rank = [reference(half(b, r), method)[1] for r in range(world)]
            expect = [sum(g) / world for g in zip(*per_rank)]
            report(f"local-{method}", all(close(p.grad, e) for p, e in zip(model.parameters(), expect)))
        except Exception:
            report(f"local-{method}", False, traceback.format_exc().replace("\n", " | "))
        try:  # sharded: FSDP2 fully_shard, one all-reduce of the K x K Gram partials
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            net = fresh()
            fully_shard(net, mesh=init_device_mesh("cpu", (world,)))
            h = gh_kernels.MultiTaskHarmonizer(net.parameters(), shared=net.trunk.parameters(), method=method, sync="sharded")
            res = h.backward(net(*half(b, rank)))
            w_ref, g_ref = reference(b, method)
            full = [p.grad.full_tensor() for p in net.parameters()]
            ok = torch.allclose(res.weights, w_ref, rtol=1e-4) and all(close(f, g) for f, g in zip(full, g_ref))
            report(f"sharded-{method}", ok, f"w={res.weights.tolist()} ref={w_ref.tolist()}")
        except Exception:
            report(f"sharded-{method}", False, traceback.format_exc().replace("\n", " | "))
    try:  # gradient accumulation over two micro-batches, global mode
        model = DDP(fresh())
        h = gh_kernels.MultiTaskHarmonizer(model.parameters(), shared=model.module.trunk.parameters(), method="upgrad", sync="global")
        with model.no_sync():
            for s in range(2):
                h.backward(model(*half(batch(s), rank)))
        _, g_ref = reference(None, "upgrad", steps=2)
        report("global-accumulate", all(close(p.grad, g) for p, g in zip(model.parameters(), g_ref)))
    except Exception:
        report("global-accumulate", False, traceback.format_exc().replace("\n", " | "))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    launch(worker, sys.argv[1])
