"""The package imports and works when the C++ extension is missing (import blocked in a fresh process)."""
import subprocess
import sys
import textwrap


def test_works_without_extension():
    code = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(level=logging.INFO)
        sys.modules["gh_kernels._C"] = None          # makes `import gh_kernels._C` raise ImportError
        import torch, gh_kernels
        assert "cpu" not in gh_kernels.available_backends(), gh_kernels.available_backends()
        assert "could not be imported" in gh_kernels.extension_error()
        g1 = [torch.randn(5), torch.randn(3, 2)]
        g2 = [-a + 0.1 * torch.randn_like(a) for a in g1]
        out = [torch.empty_like(a) for a in g1]
        w = gh_kernels.harmonize(g1, g2, method="gh++", out=out).weights
        assert torch.isfinite(w).all() and all(torch.isfinite(o).all() for o in out)
        try:
            gh_kernels.gram([g1, g2], backend="cpu")
        except gh_kernels.BackendUnavailable as e:
            assert "could not be imported" in str(e)
        else:
            raise AssertionError("backend='cpu' must fail loudly without the extension")
        print("OK")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
    assert "backend 'cpu' is unavailable: the C++ extension gh_kernels._C could not be imported" in res.stderr  # at INFO
