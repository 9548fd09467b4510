"""Two-process (gloo, CPU) checks of Harmonizer(sync=...), run by tests/test_distributed.py.

Each rank builds the same model and the same global batch, uses its half of the batch, and
compares what the distributed Harmonizer wrote into .grad with a single-process reference it
computes itself. Writes one line 'RESULT <rank> <scenario> ok|FAIL <why>' per check to
<init_file>.rank<rank>.
"""
import os
import sys
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gh_kernels  # noqa: E402


from models import ToyDANN as Net  # noqa: E402  (the toy DANN every test uses)


def batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g), torch.randn(8, 6, generator=g) + 0.7


def half(b, r):
    xs, ys, xt = b
    return xs[4 * r:4 * r + 4], ys[4 * r:4 * r + 4], xt[4 * r:4 * r + 4]


def fresh():
    torch.manual_seed(0)
    return Net()


def reference(b, method, sync_steps=1):
    """Single process: harmonize the full batch (= the mean of the two halves' gradients)."""
    net = fresh()
    h = gh_kernels.Harmonizer(net.parameters(), shared=net.shared_parameters(), method=method)
    for s in range(sync_steps):
        res = h.backward(*net(*(b if sync_steps == 1 else batch(s))))
    return res.weights, [p.grad.clone() if p.grad is not None else None for p in net.parameters()]


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def reporter(init_file, rank):
    """``report(name, ok, why)``: one 'RESULT <rank> <name> ok|FAIL <why>' line in this rank's own file
    (lines printed by two processes to one pipe can interleave)."""
    def report(name, ok, why=""):
        with open(f"{init_file}.rank{rank}", "a") as f:
            f.write(f"RESULT {rank} {name} {'ok' if ok else 'FAIL ' + why}\n")
    return report


def worker(rank, world, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from torch.nn.parallel import DistributedDataParallel as DDP

    report = reporter(init_file, rank)

    b = batch(0)
    for method in ("gh", "gh++"):
        # global: equals single-process harmonization of the concatenated batch
        try:
            model = DDP(fresh())
            h = gh_kernels.Harmonizer(model.parameters(), shared=model.module.shared_parameters(), method=method, sync="global")
            with model.no_sync():
                res = h.backward(*model(*half(b, rank)))
            w_ref, g_ref = reference(b, method)
            ok = torch.allclose(res.weights, w_ref, rtol=1e-5) and all(close(p.grad, g) for p, g in zip(model.parameters(), g_ref))
            report(f"global-{method}", ok, f"w={res.weights.tolist()} ref={w_ref.tolist()}")
        except Exception:
            report(f"global-{method}", False, traceback.format_exc().replace("\n", " | "))
        # local: per-rank harmonization, then the average
        try:
            model = DDP(fresh())
            h = gh_kernels.Harmonizer(model.parameters(), shared=model.module.shared_parameters(), method=method, sync="local")
            with model.no_sync():
                h.backward(*model(*half(b, rank)))
            per_rank = [reference(half(b, r), method)[1] for r in range(world)]
            expect = [None if g[0] is None and g[1] is None else sum(x if x is not None else 0 for x in g) / world
                      for g in zip(*per_rank)]
            ok = all(close(p.grad, e) for p, e in zip(model.parameters(), expect))
            report(f"local-{method}", ok)
        except Exception:
            report(f"local-{method}", False, traceback.format_exc().replace("\n", " | "))
        # sharded: FSDP2 fully_shard; one parameter's shard is empty on rank 1
        try:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            net = fresh()
            fully_shard(net, mesh=init_device_mesh("cpu", (world,)))
            shapes = [tuple(p.to_local().shape) for p in net.parameters()]
            h = gh_kernels.Harmonizer(net.parameters(), shared=net.shared_parameters(), method=method, sync="sharded")
            res = h.backward(*net(*half(b, rank)))
            w_ref, g_ref = reference(b, method)
            full = [p.grad.full_tensor() for p in net.parameters()]
            ok = torch.allclose(res.weights, w_ref, rtol=1e-5) and all(close(f, g) for f, g in zip(full, g_ref))
            report(f"sharded-{method}", ok, f"w={res.weights.tolist()} ref={w_ref.tolist()}")
            if rank == world - 1:
                report("sharded-has-empty-shard", any(0 in s for s in shapes), str(shapes))
        except Exception:
            report(f"sharded-{method}", False, traceback.format_exc().replace("\n", " | "))
    # gradient accumulation over two micro-batches in global mode
    try:
        model = DDP(fresh())
        h = gh_kernels.Harmonizer(model.parameters(), shared=model.module.shared_parameters(), method="gh++", sync="global")
        with model.no_sync():
            for s in range(2):
                h.backward(*model(*half(batch(s), rank)))
        _, g_ref = reference(None, "gh++", sync_steps=2)
        report("global-accumulate", all(close(p.grad, g) for p, g in zip(model.parameters(), g_ref)))
    except Exception:
        report("global-accumulate", False, traceback.format_exc().replace("\n", " | "))
    dist.barrier()
    dist.destroy_process_group()


def launch(worker_fn, init_file: str, world: int = 2) -> None:
    """Spawn ``world`` ranks of ``worker_fn(rank, world, init_file)`` after removing old rendezvous/result files."""
    for path in [init_file] + [f"{init_file}.rank{r}" for r in range(world)]:
        if os.path.exists(path):
            os.remove(path)
    mp.spawn(worker_fn, args=(world, init_file), nprocs=world, join=True)


if __name__ == "__main__":
    launch(worker, sys.argv[1])
