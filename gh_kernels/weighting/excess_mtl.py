"""ExcessMTL (He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024), as torchjd 0.18's
``ExcessMTLWeighting``. Not a function of the Gram matrix: each step reads the gradients themselves.

Per task i, the excess risk proxy ``E_i = sum_n g_in^2 / sqrt(S_in + 1e-7)`` (eq. 6-7), where S, the
running sum of squared gradients (AdaGrad's diagonal), includes this step's; after ``n_warmup_steps``
steps of uniform weights (whose proxies' mean becomes the baseline; without warmup the first step's
proxy is), ``E_i`` is divided by the baseline (+ 1e-7) and the weights take an exponentiated-gradient
step ``w <- softmax(log w + robust_step_size * E)`` (eq. 9) from 1/K.

Cost: S has one entry per task and gradient element -- K times the model's gradient memory, as in
torchjd -- and a second such buffer: a step writes its new S there and a commit swaps the two
(NOTE: [Two sum buffers]; NOTE: [State changes after success]). The proxies are foreach ops over the
K x P tensors (no stacked copy), with one temporary the size of one task's gradients.
Everything stays on the device: the warmup and baseline branches are picked with ``torch.where``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .stateful import State, StatefulMethod, check_number

#: torchjd's constants: added to S under the square root, and to the baseline.
EPS = 1e-7


class ExcessMTL(StatefulMethod):
    """ExcessMTL (see the module docstring): ``robust_step_size`` (> 0, default 1) and
    ``n_warmup_steps`` (>= 0, default 0). State: ``lam`` ((K,) float64 weights), ``baseline`` ((K,)
    float64), ``warmup_sum`` ((K,) float64), ``n_steps`` (0-dim int64) and ``sq_grad_sum`` (one tensor per
    task and parameter, set-major like the op's lists; None where a task never reached a parameter)."""

    name = "excess-mtl"
    # sq_grad_sum: a list per parameter of (K, *shape) tensors, checked by check_state_dict below
    SCHEMA = {"lam": (("K",), torch.float64), "baseline": (("K",), torch.float64), "warmup_sum": (("K",), torch.float64),
              "n_steps": ((), torch.int64), "sq_grad_sum": None}
    reads_gradients = True

    def __init__(self, robust_step_size: float = 1.0, n_warmup_steps: int = 0):
        self.robust_step_size = float(check_number("robust_step_size", robust_step_size, 0.0))
        if self.robust_step_size <= 0:
            raise ValueError(f"robust_step_size must be a finite number > 0; got {robust_step_size!r}")
        self.n_warmup_steps = int(check_number("n_warmup_steps", n_warmup_steps, 0, 10 ** 12, integer=True))
        super().__init__(None)

    def _config(self) -> dict:
        return {"robust_step_size": self.robust_step_size, "n_warmup_steps": self.n_warmup_steps}

    def propose(self, G: torch.Tensor) -> Tuple[torch.Tensor, State]:
        raise ValueError("ExcessMTL reads the gradients, not only their Gram matrix: use it with gh_kernels.aggregate or "
                         "MultiTaskHarmonizer (gh_kernels.weights cannot run it)")

    @torch.no_grad()
    def propose_from_sets(self, G: torch.Tensor, flat: Sequence[Optional[torch.Tensor]], K: int) -> Tuple[torch.Tensor, State]:
        """The step's weights and new state from the K gradient sets (``flat``: set-major, K * P tensors).
        NOTE: [Two sum buffers]: the new sums are written into a second set of buffers (allocated once), not
        into the state, which a failed call must leave as it was; a commit swaps the two. Every pass is a
        foreach op over the lists: no per-step allocation of the K x N sums."""
        device = G.device
        old_sums: List[Optional[torch.Tensor]] = list(self.sq_grad_sum) if self.sq_grad_sum is not None else [None] * len(flat)
        if len(old_sums) != len(flat):
            raise ValueError(f"this ExcessMTL holds the squared-gradient sums of {len(old_sums) // K} parameters; got "
                             f"{len(flat) // K}. Call reset() to start over with another parameter list")
        present = [i for i, t in enumerate(flat) if t is not None and t.numel()]
        spare = self._spare_like(flat, present)
        grads, new = [flat[i] for i in present], [spare[i] for i in present]
        # The sums follow the gradients' dtype: after it changes (model.half(), a bf16 resume of a float32
        # checkpoint) the old sums are converted once, on the step where the dtypes first differ.
        old_sums = [old if old is None or i >= len(spare) or spare[i] is None or old.dtype == spare[i].dtype
                    else old.to(spare[i].dtype) for i, old in enumerate(old_sums)]
        if grads:
            torch._foreach_copy_(new, grads)
            torch._foreach_mul_(new, grads)                       # g^2
            with_old = [j for j, i in enumerate(present) if old_sums[i] is not None]
            if with_old:
                torch._foreach_add_([new[j] for j in with_old], [old_sums[present[j]] for j in with_old])  # S + g^2
        P = len(flat) // K
        zero = torch.zeros((), dtype=torch.float64, device=device)
        proxies = []
        for k in range(K):  # per task: one temporary the size of one gradient set
            members = [j for j, i in enumerate(present) if i // P == k]
            if not members:
                proxies.append(zero)
                continue
            ratio = torch._foreach_add([new[j] for j in members], EPS)
            torch._foreach_sqrt_(ratio)
            torch._foreach_reciprocal_(ratio)
            torch._foreach_mul_(ratio, [grads[j] for j in members])
            torch._foreach_mul_(ratio, [grads[j] for j in members])  # g^2 / sqrt(S + g^2 + eps)
            proxies.append(torch.stack(torch._foreach_norm(ratio, 1)).to(torch.float64).sum())  # ratios >= 0
            del ratio
        proxy = torch.stack(proxies)
        lam, baseline, warmup_sum, steps = (self._current(key, device) for key in self.STATE[:4])
        if lam is None:
            lam = torch.full((K,), 1.0 / K, dtype=torch.float64, device=device)
            baseline = torch.zeros(K, dtype=torch.float64, device=device)
            warmup_sum = torch.zeros(K, dtype=torch.float64, device=device)
            steps = torch.zeros((), dtype=torch.int64, device=device)
        finite = torch.isfinite(proxy).all() & torch.isfinite(G).all()
        in_warmup = steps < self.n_warmup_steps
        first = steps == self.n_warmup_steps  # the first step after the warmup sets the baseline
        new_warmup_sum = torch.where(in_warmup, warmup_sum + proxy, warmup_sum)
        if self.n_warmup_steps > 0:
            new_baseline = torch.where(first, new_warmup_sum / self.n_warmup_steps, baseline)
            scaled = proxy / (new_baseline + EPS)
        else:  # torchjd: the first step's proxy is the baseline and is used unscaled
            new_baseline = torch.where(first, proxy, baseline)
            scaled = torch.where(first, proxy, proxy / (new_baseline + EPS))
        stepped = torch.softmax(lam.log() + scaled * self.robust_step_size, dim=0)
        new_lam = torch.where(in_warmup, lam, stepped)
        new_sums = list(old_sums)
        for j, i in enumerate(present):
            new_sums[i] = new[j]
        keep = lambda new_value, old_value: torch.where(finite, new_value, old_value)  # noqa: E731
        # the sums are selected once, at commit, under G's finiteness and the combine's flag together (one select
        # over the sums, not over the gradients): a non-finite step keeps the old sums (0 where none yet)
        state = {"lam": keep(new_lam, lam), "baseline": keep(new_baseline, baseline),
                 "warmup_sum": keep(new_warmup_sum, warmup_sum), "n_steps": keep(steps + 1, steps),
                 "sq_grad_sum": new_sums, "finite": finite, "present": present, "old_sums": old_sums,
                 "kept": {"lam": lam, "baseline": baseline, "warmup_sum": warmup_sum, "n_steps": steps}}
        return torch.where(finite, new_lam, torch.full_like(lam, 1.0 / K)), state

    def _spare_like(self, flat, present) -> List[Optional[torch.Tensor]]:
        """NOTE: [Two sum buffers]: the buffers the next sums are written into (allocated on first use, and
        again when a gradient's shape, dtype or device changed)."""
        spare = self.__dict__.get("_spare")
        if spare is None or len(spare) != len(flat):
            spare = [None] * len(flat)
        for i in present:
            t, buf = flat[i], spare[i]
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.device != t.device or \
                    (self.sq_grad_sum is not None and self.sq_grad_sum[i] is buf):
                spare[i] = torch.empty_like(t, memory_format=torch.contiguous_format)
        self._spare = spare
        return spare

    def commit(self, state: State, nonfinite: Optional[torch.Tensor] = None) -> None:
        ok = state["finite"] if nonfinite is None else state["finite"] & (nonfinite[0] == 0)
        sums, old_sums = state["sq_grad_sum"], state["old_sums"]
        for i in state["present"]:
            old = old_sums[i]
            torch.where(ok, sums[i], torch.zeros((), dtype=sums[i].dtype, device=sums[i].device) if old is None else old,
                        out=sums[i])
        previous = self.sq_grad_sum
        super().commit(state, nonfinite)
        if previous is not None:  # the old sums become the next step's buffers
            self._spare = [p if p is not None and p is not n else None for p, n in zip(previous, self.sq_grad_sum)]

    def reset(self) -> None:
        super().reset()
        self._spare = None

    def state_dict(self) -> dict:
        sums = self.sq_grad_sum
        self.sq_grad_sum = None
        try:
            out = super().state_dict()
        finally:
            self.sq_grad_sum = sums
        out["state"]["sq_grad_sum"] = None if sums is None else [None if t is None else t.detach().clone() for t in sums]
        return out

    def check_state_dict(self, state_dict: dict) -> None:
        """NOTE: [State schema], and ``sq_grad_sum``: None, or a list of K x (parameters) entries, each None or a
        floating-point tensor with data."""
        super().check_state_dict(state_dict)
        sums, lam = state_dict["state"]["sq_grad_sum"], state_dict["state"]["lam"]
        if sums is None:
            return
        if not isinstance(sums, (list, tuple)):
            raise ValueError("state_dict['state']['sq_grad_sum'] must be a list of tensors or None")
        if lam is None or len(sums) % lam.shape[0]:
            raise ValueError(f"state_dict['state']['sq_grad_sum'] holds {len(sums)} entries: not K = "
                             f"{None if lam is None else lam.shape[0]} sets of the same parameters")
        for i, t in enumerate(sums):
            if t is not None and (not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.device.type == "meta"):
                raise ValueError(f"state_dict['state']['sq_grad_sum'][{i}] must be a floating-point tensor with data or None")

    def load_state_dict(self, state_dict: dict) -> None:
        self.check_state_dict(state_dict)
        sums = state_dict["state"]["sq_grad_sum"]
        for key in self.STATE[:4]:
            value = state_dict["state"][key]
            setattr(self, key, None if value is None else value.detach().clone())
        self.sq_grad_sum = None if sums is None else [None if t is None else t.detach().clone() for t in sums]
        self._spare = None


