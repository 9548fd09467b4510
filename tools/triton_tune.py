"""Time the Triton harmonize path for a few block / warp / chunk settings on the GPU
(``python3 tools/triton_tune.py``). Prints one line per setting; used to pick GPU_CONFIG.

The block setting tuned is the one the measured dtype uses: ``block`` for float32,
``block_16bit`` for bfloat16/float16 (``worklist.block_for``)."""
import itertools

import torch
from triton.testing import do_bench

import gh_kernels
from gh_kernels.backends.triton import worklist as wl


def main():
    dev = torch.device("cuda")
    src = torch.randn(100_000_000, device=dev)
    dst = torch.empty_like(src)
    copy = 2 * src.numel() * 4 / (do_bench(lambda: dst.copy_(src), rep=200) * 1e-3) / 1e9
    print(f"copy {copy:.0f} GB/s")
    del src, dst
    for n, dtype in ((100_000_000, torch.float32), (1_000_000_000, torch.float32), (1_000_000_000, torch.bfloat16)):
        sizes = [n // 160] * 160
        g1 = [torch.randn(s, device=dev, dtype=dtype) for s in sizes]
        g2 = [torch.randn(s, device=dev, dtype=dtype) - 0.3 * a for s, a in zip(sizes, g1)]
        out = [torch.empty_like(a) for a in g1]
        block_field = "block" if dtype.itemsize >= 4 else "block_16bit"
        saved = {f: getattr(wl.GPU_CONFIG, f) for f in (block_field, "num_warps", "programs_per_sm")}
        for block, warps, per_sm in itertools.product((1024, 4096), (4, 8), (4, 16)):
            setattr(wl.GPU_CONFIG, block_field, block)
            wl.GPU_CONFIG.num_warps, wl.GPU_CONFIG.programs_per_sm = warps, per_sm
            assert wl.block_for(wl.GPU_CONFIG, g1[0].element_size()) == block
            f = lambda: gh_kernels.harmonize(g1, g2, out=out, backend="triton")
            f()
            ms = do_bench(f, rep=150)
            gbs = 5 * n * g1[0].element_size() / (ms * 1e-3) / 1e9
            print(f"N={n:.0e} {str(dtype)[6:]:8s} block={block:5d} warps={warps} programs/SM={per_sm:2d}: "
                  f"{ms:7.3f} ms {gbs:6.0f} GB/s {100 * gbs / copy:4.0f}% of copy")
        for f, v in saved.items():
            setattr(wl.GPU_CONFIG, f, v)
        del g1, g2, out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
