"""The Triton kernels compile for sm_90 without a GPU, with 16-byte vector loads where aligned
(tools/check_triton_compile.py, run in a subprocess since these tests use the interpreter).

Marked slow (26 s on 2 cores): .ci/run runs tools/check_triton_compile.py itself, beside the CUDA
compile and register check, so CI keeps it while the test command stays within its time."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


@pytest.mark.slow
def test_triton_kernels_compile_for_sm90_with_vector_loads():
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except ImportError:
        pytest.skip("this Triton has no offline compile API")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, os.path.join(root, "tools", "check_triton_compile.py")], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
