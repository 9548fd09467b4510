"""The per-coordinate methods: their update is not ``sum_k w_k g_k`` for weights from the Gram matrix,
but a function of the K values of each coordinate, computed in one fused pass over the K gradient
sets (op ``gh_kernels::coordinate_``, every backend) with no (K, N) stacked copy.

==================  ==========================================================================
``"trimmed-mean"``  Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
                    Rates", ICML 2018: per coordinate, the mean of the K values without the
                    ``trim_number`` largest and ``trim_number`` smallest (``2 * trim_number < K``;
                    torchjd 0.18's TrimmedMean).
``"graddrop"``      Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
                    Sign Dropout", NeurIPS 2020, Alg. 1 lines 10-15, as torchjd 0.18: purity
                    ``P = (1 + sum_k g_k / sum_k |g_k|) / 2`` per coordinate, one uniform draw U per
                    coordinate, g_k kept where ``P > U`` and ``g_k > 0`` or ``P < U`` and ``g_k < 0``;
                    option ``leak`` (K values in [0, 1], default 0) lets a share of every g_k through.
                    The draws are ``torch.rand(N)`` in the gradients' dtype over the parameters in
                    order -- torchjd's draws on the stacked Jacobian, so the same seed gives the same
                    update -- from the device's global generator or ``generator=``. torchjd's ``f``
                    (a function of P) is not supported: a Python callable cannot run in a kernel.
==================  ==========================================================================

The draws need one buffer the size of the gradients (one per dtype): the only extra memory.
GradDrop takes K + 1 sets in the kernels (the draws are the last), so the C++ and Triton kernels
serve K <= 7 and K = 8 runs on the torch backend (logged once).

NOTE: [Trimmed non-finite]: a coordinate with a non-finite value gives NaN in every backend
(``+ 0 * sum_k x_k``), although trimming could drop the value: the project's promise that
non-finite gradients stay non-finite (GradScaler skips the step) comes first. torchjd returns the
trimmed mean there. GradDrop propagates non-finite values by itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from .. import backends
from .linalg import cached, tracing

COORDINATE_METHODS = ("trimmed-mean", "graddrop")


@dataclass
class CoordinateRule:
    """A checked per-coordinate method for K tasks."""

    name: str
    num_tasks: int
    trim_number: int = 0
    leak: Optional[torch.Tensor] = None         # (K,) float64 on the CPU, checked
    generator: Optional[torch.Generator] = None
    _leak_on: dict = field(default_factory=dict)  # (device, dtype) -> leak there, copied once

    @property
    def extra_sets(self) -> int:
        """Sets the kernel takes beyond the K gradient sets: GradDrop's draws."""
        return 1 if self.name == "graddrop" else 0

    def run(self, out: List[torch.Tensor], flat: List[Optional[torch.Tensor]], accumulate: bool,
            backend: Optional[str], device: torch.device, draws: Optional[List[torch.Tensor]] = None) -> None:
        """``out[p] (+)=`` the method's update of parameter p, for validated (or op-checked) arguments:
        ``flat`` holds the K sets set-major, ``out`` one tensor per parameter. ``draws``: GradDrop's uniform
        draws for ``out`` when the caller made them over a larger list (a step writing in groups draws once,
        over every parameter in order, as torchjd does); default: drawn here."""
        K, leak = self.num_tasks, None
        if self.name == "graddrop":
            flat = list(flat) + (self.draws(out, device) if draws is None else list(draws))
            acc = torch.float64 if any(o.dtype == torch.float64 for o in out) else torch.float32
            leak = cached(self._leak_on, (str(device), acc), lambda: torch.zeros(K, dtype=acc, device=device)
                          if self.leak is None else self.leak.to(device=device, dtype=acc))
        limit = backends.BACKENDS[backend].limit("coordinate_") if backend in backends.BACKENDS else None
        if limit is not None and K + self.extra_sets > limit:
            raise ValueError(f"backend={backend!r} runs {self.name!r} for K <= {limit - self.extra_sets} (the draws are one "
                             f"more set in its kernels); got K = {K} (use 'torch')")
        name = backends.resolve(backend, device, K + self.extra_sets, op="coordinate_")
        backends.kernel(name, "coordinate_")(out, flat, K + self.extra_sets, self.name, self.trim_number, leak,
                                             bool(accumulate))

    def draws(self, out: Sequence[torch.Tensor], device: torch.device) -> List[torch.Tensor]:
        """One uniform draw per element, ``torch.rand(N)`` per dtype over the parameters in order (one
        buffer per dtype; views shaped like ``out``)."""
        by_dtype = {}
        for p, o in enumerate(out):
            by_dtype.setdefault(o.dtype, []).append(p)
        views: List[Optional[torch.Tensor]] = [None] * len(out)
        for dtype, members in by_dtype.items():
            numels = [out[p].numel() for p in members]
            buffer = torch.empty(sum(numels), dtype=dtype, device=device).uniform_(generator=self.generator)
            for p, piece in zip(members, buffer.split(numels)):
                views[p] = piece.view(out[p].shape)
        return views


def check(method: str, K: int, options: dict) -> CoordinateRule:
    """Check the options of a per-coordinate method for K tasks (ValueError naming the option)."""
    allowed = {"trimmed-mean": ("trim_number",), "graddrop": ("leak", "generator")}[method]
    for name, value in options.items():
        if name not in allowed:
            raise ValueError(f"method {method!r} takes the options {', '.join(allowed)}; got {name}={value!r}")
    if method == "trimmed-mean":
        trim = options.get("trim_number", 0)
        if isinstance(trim, bool) or not isinstance(trim, int) or trim < 0:
            raise ValueError(f"option trim_number of 'trimmed-mean' must be an integer >= 0; got {trim!r}")
        if 2 * trim >= K:
            raise ValueError(f"option trim_number of 'trimmed-mean' must leave a value: 2 * trim_number < K = {K}; "
                             f"got trim_number={trim}")
        return CoordinateRule(method, K, trim_number=trim)
    generator = options.get("generator")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"option generator of 'graddrop' must be a torch.Generator or None; got {type(generator).__name__}")
    leak = options.get("leak")
    if leak is not None:
        if not isinstance(leak, torch.Tensor):
            try:
                leak = torch.as_tensor(leak, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"option leak of 'graddrop' must be {K} numbers; got {type(leak).__name__}") from None
        if leak.layout is not torch.strided or leak.device.type == "meta" or leak.shape != (K,) or not leak.is_floating_point():
            raise ValueError(f"option leak of 'graddrop' must be a float tensor of shape ({K},) with data; got "
                             f"{leak.dtype} of shape {tuple(leak.shape)} on {leak.device}")
        leak = leak.detach().to("cpu", torch.float64)
        # read once, when resolved (a traced call has no values: the check is left to eager calls)
        if not tracing() and not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in leak.tolist()):
            raise ValueError(f"option leak of 'graddrop' must hold values in [0, 1]; got {leak.tolist()}")
    return CoordinateRule(method, K, leak=leak, generator=generator)
