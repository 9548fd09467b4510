"""Two gloo processes on CPU: distributed training features with the Harmonizer (tests/test_features_distributed.py).

Each scenario compares with the single-process Harmonizer on the whole batch (the mean of the two
ranks' halves), as tests/dist_worker.py does, and writes ``RESULT <rank> <name> ok|FAIL ...`` to a
file per rank.
"""
import os
import sys
import traceback

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gh_kernels  # noqa: E402
from dist_worker import batch, close, fresh, half, launch, reference  # noqa: E402


def worker(rank, world, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from torch.nn.parallel import DistributedDataParallel as DDP

    def report(name, ok, why=""):
        with open(f"{init_file}.rank{rank}", "a") as f:
            f.write(f"RESULT {rank} {name} {'ok' if ok else 'FAIL ' + why}\n")

    def attempt(name, fn):
        try:
            ok, why = fn()
            report(name, ok, why)
        except Exception:
            report(name, False, traceback.format_exc().replace("\n", " | "))

    b = batch(0)
    w_ref, g_ref = reference(b, "gh++")

    def ddp(**options):
        def run():
            model = DDP(fresh(), **options)
            h = gh_kernels.Harmonizer(model.parameters(), shared=model.module.shared_parameters(), method="gh++", sync="global")
            for _ in range(2):  # twice: the second step sees DDP's rebuilt buckets / the static graph's state
                model.zero_grad(set_to_none=not options.get("gradient_as_bucket_view", False))
                with model.no_sync():
                    res = h.backward(*model(*half(b, rank)))
            ok = torch.allclose(res.weights, w_ref, rtol=1e-5) and all(close(p.grad, g) for p, g in zip(model.parameters(), g_ref))
            return ok, f"w={res.weights.tolist()} ref={w_ref.tolist()}"
        return run

    attempt("ddp-gradient-as-bucket-view", ddp(gradient_as_bucket_view=True))

    def ddp_error(**options):
        def run():
            model = DDP(fresh(), **options)
            h = gh_kernels.Harmonizer(model.parameters(), shared=model.module.shared_parameters(), method="gh++", sync="global")
            before = [p.grad for p in model.parameters()]
            try:
                if options.get("static_graph"):
                    with model.no_sync():
                        h.backward(*model(*half(b, rank)))
                else:
                    h.backward(*model(*half(b, rank)))
            except RuntimeError as e:
                msg = str(e)
                ok = "model.no_sync()" in msg and "static_graph" in msg and all(p.grad is g for p, g in zip(model.parameters(), before))
                return ok, msg[:300]
            return False, "no error raised"
        return run

    attempt("ddp-static-graph-error", ddp_error(static_graph=True))
    attempt("ddp-without-no-sync-error", ddp_error())

    def fsdp2_mixed_precision():
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        net = fresh()
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        fully_shard(net, mesh=init_device_mesh("cpu", (world,)), mp_policy=policy)
        h = gh_kernels.Harmonizer(net.parameters(), shared=net.shared_parameters(), method="gh++", sync="sharded")
        res = h.backward(*net(*half(b, rank)))
        full = [p.grad.full_tensor() for p in net.parameters()]
        dtypes = {g.dtype for g in full}
        # bfloat16 compute: about 3 significant digits against the float32 single-process reference
        ok = dtypes == {torch.float32} and torch.allclose(res.weights.float(), w_ref, rtol=0.05, atol=0.05) and all(
            torch.allclose(f, g, rtol=0.1, atol=0.05 * float(g.abs().max()) + 1e-3) for f, g in zip(full, g_ref))
        return ok, f"w={res.weights.tolist()} ref={w_ref.tolist()} dtypes={dtypes}"

    attempt("fsdp2-mixed-precision", fsdp2_mixed_precision)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    launch(worker, sys.argv[1])
