import torch

import gh_kernels


def test_grad_reverse():
    x = torch.randn(4, requires_grad=True)
    y = gh_kernels.grad_reverse(x, 0.3)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((4,), -0.3))
    x.grad = None
    gh_kernels.GradReverse.apply(x, 0.0).sum().backward()
    assert torch.equal(x.grad, torch.zeros(4))
