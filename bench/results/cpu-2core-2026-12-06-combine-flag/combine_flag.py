# Time the cpu backend's combine_ (one process per build; the caller interleaves builds).
import sys, time, json
root, with_flag = sys.argv[1], sys.argv[2] == "1"
sys.path.insert(0, root)
import torch
import gh_kernels
from gh_kernels.ops.library import op
assert gh_kernels.__file__.startswith(root), gh_kernels.__file__
torch.manual_seed(0)
res = {}
for dtype in (torch.float32, torch.bfloat16):
    for K in (2, 8):
        n = 1 << 22
        sets = [[torch.randn(n).to(dtype), torch.randn(4096).to(dtype)] for _ in range(K)]
        out = [torch.empty_like(t) for t in sets[0]]
        flat = [t for s in sets for t in s]
        w = torch.rand(K)
        flag = torch.zeros(1, dtype=torch.int32)
        f = op("combine_", "cpu")
        call = (lambda: f(out, flat, K, w, False, flag)) if with_flag else (lambda: f(out, flat, K, w, False))
        for _ in range(3):
            call()
        ts = []
        for _ in range(15):
            t = time.perf_counter(); call(); ts.append(time.perf_counter() - t)
        ts.sort()
        res[f"{str(dtype)[6:]} K={K}"] = ts[len(ts) // 2] * 1e3
print(json.dumps(res))
