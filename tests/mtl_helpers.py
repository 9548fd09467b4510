"""Random task-gradient matrices for the multi-task tests: J (K x N) with an exact cond(J J^T)."""
import torch


def task_matrix(K, gen, cond=1e4, N=48, dtype=torch.float64, common=0.0):
    """J whose singular values are log-spaced over sqrt(cond), so cond(J J^T) = cond exactly. ``common``
    adds a shared direction before the spectrum is set (tasks that mostly agree, yet the same cond)."""
    J0 = torch.randn(K, N, generator=gen, dtype=torch.float64)
    if common:
        J0 = J0 + common * (K ** 0.5) * torch.randn(1, N, generator=gen, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(J0, full_matrices=False)
    s = torch.logspace(0, -0.5 * torch.log10(torch.tensor(cond)).item(), K, dtype=torch.float64)
    return ((U * s) @ Vh).to(dtype)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def stacked_jacobian(losses, params):
    """The K x N Jacobian of the losses over the parameters in order (zeros where a loss does not reach one):
    what torchjd's aggregators take."""
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]))
    return torch.stack(rows)
