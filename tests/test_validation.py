"""Bad input gets a clear error naming the argument and index."""
import pytest
import torch

import gh_kernels


def test_mismatched_lengths():
    with pytest.raises(ValueError, match=r"grads\[1\] has 1 tensors but grads\[0\] has 2"):
        gh_kernels.gram([[torch.ones(2), torch.ones(3)], [torch.ones(2)]])


def test_mismatched_shapes():
    with pytest.raises(ValueError, match=r"grads\[1\]\[1\] has shape \(4,\) but grads\[0\]\[1\] has shape \(3,\)"):
        gh_kernels.gram([[torch.ones(2), torch.ones(3)], [torch.ones(2), torch.ones(4)]])


def test_mismatched_dtypes():
    with pytest.raises(TypeError, match=r"grads\[1\]\[0\] has dtype torch.float16 but grads\[0\]\[0\] has dtype torch.float32"):
        gh_kernels.gram([[torch.ones(2)], [torch.ones(2, dtype=torch.float16)]])


def test_integer_and_double_tensors():
    with pytest.raises(TypeError, match=r"grads\[0\]\[1\] has dtype torch.int64; supported gradient dtypes"):
        gh_kernels.gram([[torch.ones(2), torch.ones(2, dtype=torch.long)], [torch.ones(2), torch.ones(2)]])
    with pytest.raises(TypeError, match=r"g2\[0\] has dtype torch.float64"):
        gh_kernels.harmonize([torch.ones(2)], [torch.ones(2, dtype=torch.float64)])


def test_mismatched_devices():
    meta = torch.ones(2, device="meta")
    with pytest.raises(ValueError, match=r"grads\[1\]\[0\] is on meta but grads\[0\]\[0\] is on cpu"):
        gh_kernels.gram([[torch.ones(2)], [meta]])


def test_empty_inputs():
    with pytest.raises(ValueError, match="at least one gradient set"):
        gh_kernels.gram([])
    with pytest.raises(ValueError, match="contains no tensors"):
        gh_kernels.gram([[], []])
    with pytest.raises(ValueError, match="contains no tensors"):
        gh_kernels.harmonize([None], [None])


def test_wrong_container_types():
    with pytest.raises(TypeError, match=r"grads must be a list/tuple of gradient sets"):
        gh_kernels.gram(torch.ones(3))
    with pytest.raises(TypeError, match=r"grads\[0\]\[1\] must be a torch.Tensor or None, got int"):
        gh_kernels.gram([[torch.ones(1), 3], [torch.ones(1), torch.ones(1)]])
    with pytest.raises(TypeError, match=r"grads\[1\] must be a tensor or a list/tuple of tensors"):
        gh_kernels.gram([torch.ones(1), "x"])


def test_combine_argument_errors():
    g = [torch.ones(3)]
    with pytest.raises(ValueError, match=r"w must have shape \(2,\)"):
        gh_kernels.combine(torch.ones(3), [g, g])
    with pytest.raises(ValueError, match=r"out has 2 tensors but the gradient sets have 1"):
        gh_kernels.combine(torch.ones(2), [g, g], out=[torch.ones(3), torch.ones(3)])
    with pytest.raises(ValueError, match=r"out\[0\] has shape \(4,\) but the gradients have \(3,\)"):
        gh_kernels.combine(torch.ones(2), [g, g], out=[torch.ones(4)])
    with pytest.raises(ValueError, match="accumulate=True needs out="):
        gh_kernels.combine(torch.ones(2), [g, g], accumulate=True)
    with pytest.raises(TypeError, match="w must be a floating-point tensor"):
        gh_kernels.combine(torch.ones(2, dtype=torch.long), [g, g])


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'torch', 'cpu', 'cuda', 'triton'; got 'fast'"):
        gh_kernels.gram([[torch.ones(2)], [torch.ones(2)]], backend="fast")
