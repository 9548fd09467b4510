"""The multi-task methods that keep state across steps: :class:`GradVac` and :class:`NashMTL`.

Create one object per training run and pass it as ``method=`` to :func:`gh_kernels.weights`,
:func:`gh_kernels.aggregate` or :class:`gh_kernels.MultiTaskHarmonizer`; each call is one step. The
state lives on the Gram matrix's device; nothing synchronizes with the host.

NOTE: [State changes after success]: a step first *proposes* its new state (``propose(G) -> (w,
state)``, nothing stored); the caller stores it (``commit``) only after the whole call succeeded --
for ``MultiTaskHarmonizer`` after every ``.grad`` was written. A call that raises leaves the state as
it was. A non-finite G (AMP overflow) proposes the old state unchanged, step counters included,
selected on the device with ``torch.where`` (no host read); its weights are neutral and the
non-finite gradients still reach the update, so ``GradScaler`` skips the step.

Checkpointing follows ``torch.optim``: ``state_dict()`` returns ``{"state": {...}, "config": {...}}``
(tensors cloned; a ``generator``'s state included), ``load_state_dict()`` restores it into an object
built with the same options, and the run continues bitwise as if it had not stopped. The number of
tasks K is fixed by the first step (or the loaded state): a call with another K raises; ``reset()``
forgets the state.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from .linalg import cached, eye
from .rules import visiting_order
from .solvers import positive_root


def check_number(name: str, value, low: float, high: float = math.inf, integer: bool = False) -> float:
    """``value`` when it is a finite number (an integer with ``integer``) in [low, high]; else ValueError naming it."""
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not math.isfinite(value) or not (low <= value <= high):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind} in [{low}, {high}]; got {value!r}")
    return value


def _finite_or_identity(G: torch.Tensor):
    """(G in float64, or the identity when G has a non-finite entry; whether G was finite) -- on the device."""
    G64 = G.to(torch.float64)
    finite = torch.isfinite(G64).all()
    return torch.where(finite, G64, eye(G.shape[0], torch.float64, G.device)), finite


def _update_norm_bound(G64: torch.Tensor, w: torch.Tensor, gram_dtype: torch.dtype) -> torch.Tensor:
    """An upper bound on the length of the update ``sum_k w_k g_k`` as written, from the Gram matrix: ``sqrt(w^T G w)``
    plus the rounding of G (each entry to ``u`` of ``sqrt(G_ii G_jj)``) and of the combine (K terms summed in the
    accumulation dtype), ``u = eps`` of G's dtype and ``S = sum_k |w_k| |g_k|``:
    ``sqrt(w^T G w + u S^2) + K u S``. For a well-conditioned G it is sqrt(w^T G w) to ~u; on a rank-deficient
    float32 G, whose w^T G w rounding takes to ~0 while huge weights cancel, it is the length the rounded update
    can reach (a clip on sqrt(w^T G w) alone let updates of length 46 to 4e13 through a max_norm of 1: class 13 of
    issue #29). torchjd clips on the update's own norm, which needs a pass over it."""
    u = torch.finfo(gram_dtype if gram_dtype.is_floating_point else torch.float32).eps
    S = w.abs() @ G64.diagonal().clamp_min(0.0).sqrt()
    return ((w @ G64 @ w).clamp_min(0.0) + u * S * S).sqrt() + w.shape[0] * u * S


State = Dict[str, Optional[torch.Tensor]]


def keep_if_nonfinite(state: State, nonfinite: Optional[torch.Tensor]) -> State:
    """``state`` with each field in ``state["kept"]`` replaced by its kept value where the flag ``nonfinite`` is set
    (a step that wrote a non-finite value outside G, e.g. a task head's overflow, changes no state; G's own
    non-finiteness is already in the proposal)."""
    kept = state.get("kept")
    if nonfinite is None or kept is None:
        return state
    ok = nonfinite[0] == 0
    return {key: torch.where(ok, value, kept[key]) if key in kept else value for key, value in state.items()}


def comparable(value):
    """An option as it is compared between a saved state and an object: tensors as lists, a generator by kind."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, torch.Generator):
        return "generator"
    return value


class StatefulMethod:
    """Base of the stateful methods. Subclasses define ``SCHEMA`` (NOTE: [State schema]), ``_config()`` and
    ``propose(G) -> (weights, new state)``; see the module's NOTE: [State changes after success].

    NOTE: [State schema]: ``SCHEMA`` maps each state field to its shape, in units of the number of tasks
    ``"K"`` (``()`` for a scalar), and its dtype. :meth:`load_state_dict` checks a whole ``state_dict``
    against it (every field present, a tensor or None, one K for all fields, all set or all empty, the
    dtype and shape, the options, the generator state) before it sets anything, so a bad checkpoint
    raises at load time, naming the field, and leaves the object as it was."""

    name = ""
    SCHEMA: Dict[str, Tuple[tuple, torch.dtype]] = {}
    STATE: Tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.STATE = tuple(cls.SCHEMA)

    def __init__(self, generator: Optional[torch.Generator] = None):
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
        self.generator = generator
        self.reset()

    def reset(self) -> None:
        """Forget the state (the next step starts a new run, with any K)."""
        for key in self.STATE:
            setattr(self, key, None)

    @property
    def num_tasks(self) -> Optional[int]:
        """K of the stored state, or None before the first step."""
        first = getattr(self, self.STATE[0])
        return None if first is None else first.shape[0]

    def check_tasks(self, K: int, where: str = "method") -> None:
        """Raise ValueError when the state belongs to another number of tasks (nothing changes)."""
        if self.num_tasks is not None and self.num_tasks != K:
            raise ValueError(f"{where}: this {type(self).__name__} holds the state of K = {self.num_tasks} tasks; got K = {K}. "
                             "Call reset() to start over with another K, or use a new object")

    def propose(self, G: torch.Tensor) -> Tuple[torch.Tensor, State]:  # pragma: no cover - abstract
        raise NotImplementedError

    def commit(self, state: State, nonfinite: Optional[torch.Tensor] = None) -> None:
        """Store a proposed state (the caller's call succeeded). ``state["kept"]``: what a non-finite step keeps
        (the old state, or the initial one on a first step); where ``nonfinite`` (the combine's flag) is set, those
        values are stored instead, selected on the device (NOTE: [Non-finite flag of the combine])."""
        state = keep_if_nonfinite(state, nonfinite)
        for key in self.STATE:
            setattr(self, key, state[key])

    def weights(self, G: torch.Tensor) -> torch.Tensor:
        """One step on its own: the weights of ``G`` (float32, float64 for a float64 G), the state updated."""
        self.check_tasks(G.shape[0])
        w, state = self.propose(G)
        self.commit(state)
        return w.to(torch.float64 if G.dtype == torch.float64 else torch.float32)  # NOTE: [Weights dtype]

    def _option_on(self, name: str, value: torch.Tensor, device: torch.device) -> torch.Tensor:
        """An option tensor (kept on the CPU) on ``device``, copied once per device: a host-to-device copy per
        step would wait for the GPU (:func:`~.linalg.cached`)."""
        return cached(self.__dict__.setdefault("_options_on", {}), (name, str(device)), lambda: value.to(device))

    def _current(self, key: str, device: torch.device) -> Optional[torch.Tensor]:
        value = getattr(self, key)
        return None if value is None else value.to(device)

    def _config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        """``{"state": {name: tensor or None}, "config": {option: value}}``, the tensors cloned; with a
        ``generator`` its state too (``"generator_state"``)."""
        state = {key: None if getattr(self, key) is None else getattr(self, key).detach().clone() for key in self.STATE}
        out = {"state": state, "config": self._config()}
        if self.generator is not None:
            out["generator_state"] = self.generator.get_state()
        return out

    def check_state_dict(self, state_dict: dict) -> None:
        """NOTE: [State schema]: raise ValueError naming what in ``state_dict`` does not fit this object."""
        if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict) \
                or not isinstance(state_dict.get("config"), dict):
            raise ValueError(f"state_dict must be what {type(self).__name__}.state_dict() returned (keys 'state', 'config')")
        for key, value in self._config().items():
            if state_dict["config"].get(key) != value:
                raise ValueError(f"state_dict was saved with {key}={state_dict['config'].get(key)!r}, but this "
                                 f"{type(self).__name__} has {key}={value!r}")
        state = state_dict["state"]
        if set(state) != set(self.STATE):
            raise ValueError(f"state_dict['state'] must hold {', '.join(self.STATE)}; got {', '.join(state)}")
        K, empty = None, []
        checked = {key: spec for key, spec in self.SCHEMA.items() if spec is not None}  # None: the subclass checks it
        for key, (shape, dtype) in checked.items():
            value, where = state[key], f"state_dict['state'][{key!r}]"
            if value is None:
                empty.append(key)
                continue
            if not isinstance(value, torch.Tensor) or value.device.type == "meta":
                raise ValueError(f"{where} must be a tensor with data or None; got {type(value).__name__}")
            if value.dtype != dtype:
                raise ValueError(f"{where} must be {dtype}; got {value.dtype}")
            if value.dim() != len(shape):
                raise ValueError(f"{where} must have shape {shape}; got {tuple(value.shape)}")
            for size, spec in zip(value.shape, shape):
                K = size if spec == "K" and K is None else K
                if size != (K if spec == "K" else spec):
                    raise ValueError(f"{where} has shape {tuple(value.shape)}; expected {shape} with K = {K} "
                                     "(every field of one state has the same number of tasks)")
        if empty and len(empty) != len(checked):
            raise ValueError(f"state_dict['state'] is partly empty ({', '.join(empty)} None): a state is all set or all None")
        if ("generator_state" in state_dict) != (self.generator is not None):
            raise ValueError("state_dict and this object differ in having a generator")
        if self.generator is not None:
            try:
                torch.Generator(device=self.generator.device).set_state(state_dict["generator_state"])
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"state_dict['generator_state'] is not a generator state of this device: {e}") from None

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` returned. The options must be the ones this object was built
        with (ValueError naming the first that differs); everything is checked before anything is set
        (NOTE: [State schema])."""
        self.check_state_dict(state_dict)
        state = state_dict["state"]
        for key in self.STATE:
            value = state[key]
            setattr(self, key, None if value is None else value.detach().clone())
        if self.generator is not None:
            self.generator.set_state(state_dict["generator_state"])


class GradVac(StatefulMethod):
    """Gradient Vaccine (Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021), whole-model variant, as torchjd 0.18.

    For each task i and each other task j in turn, when the cosine ``phi`` between the (already
    corrected) g_i and g_j is below the EMA target ``phi_hat[i, j]``, g_i gets the closed-form
    multiple of g_j that lifts the cosine to the target; then ``phi_hat[i, j] <- (1 - beta)
    phi_hat + beta phi``. The update is the sum of the corrected gradients; ``phi_hat`` starts at 0.
    Order: j ascending for every i (deterministic default), or with ``generator=`` a random order
    per i drawn as torchjd draws it (``randperm(K - 1)`` over the other tasks).

    State: ``phi_hat``, the (K, K) float64 EMA of the cosines (None before the first step).
    """

    name = "gradvac"
    SCHEMA = {"phi_hat": (("K", "K"), torch.float64)}

    def __init__(self, beta: float = 0.5, eps: float = 1e-8, generator: Optional[torch.Generator] = None):
        self.beta = float(check_number("beta", beta, 0.0, 1.0))
        self.eps = float(check_number("eps", eps, 0.0))
        super().__init__(generator)

    def _config(self) -> dict:
        return {"beta": self.beta, "eps": self.eps}

    @torch.no_grad()
    def propose(self, G: torch.Tensor) -> Tuple[torch.Tensor, State]:
        K = G.shape[0]
        G64, finite = _finite_or_identity(G)
        old = self._current("phi_hat", G.device)
        if old is None:
            old = torch.zeros((K, K), dtype=torch.float64, device=G.device)
        order = visiting_order(K, self.generator, G.device, others_only=True)
        rows = torch.arange(K, device=G.device)
        C = eye(K, torch.float64, G.device)
        phi_hat = old
        norm_j_all = G64.diagonal().clamp_min(0.0).sqrt()
        beta, eps = self.beta, self.eps
        for t in range(K - 1):
            j = order[:, t]
            CG = C @ G64
            dot = CG.gather(1, j[:, None])[:, 0]
            norm_i = (CG * C).sum(1).clamp_min(0.0).sqrt()
            norm_j = norm_j_all[j]
            phi = dot / (norm_i * norm_j + eps)
            hat = phi_hat[rows, j]
            s_phi = (1.0 - phi * phi).clamp_min(0.0).sqrt()
            s_hat = (1.0 - hat * hat).clamp_min(0.0).sqrt()
            w = norm_i * (hat * s_phi - phi * s_hat) / (norm_j * s_hat + eps)
            C = C.index_put((rows, j), C[rows, j] + torch.where(phi < hat, w, torch.zeros_like(w)))
            phi_hat = phi_hat.index_put((rows, j), (1.0 - beta) * hat + beta * phi)
        weights = torch.where(finite, C.sum(0), torch.ones_like(C[0]))
        return weights, {"phi_hat": torch.where(finite, phi_hat, old), "kept": {"phi_hat": old}}


class NashMTL(StatefulMethod):
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022), Alg. 1, with
    torchjd 0.18's conventions: G is divided by its Frobenius norm, ``alpha`` solves
    ``G alpha = 1 / alpha`` (alpha > 0), the update is ``sum alpha_k g_k`` scaled down to norm
    ``max_norm`` when longer (``max_norm=0``: no clipping; the length is bounded from G with its rounding and the
    combine's, :func:`_update_norm_bound`, so a rank-deficient G cannot hide it), and weights are recomputed every
    ``update_weights_every`` finite steps (reused in between).

    Solver: the solution is the minimizer of the self-concordant ``f(a) = a^T G a / 2 - sum log a``;
    we run ``newton_iters`` Newton steps, each with a line search over the fixed grid of step sizes
    ``1, 1/2, ..., 2^-15, 0`` (all evaluated at once; the best positive point wins, so f never
    increases) from the best multiple of the previous step's alpha (the first step: of
    ``1 / sqrt(diag G)``): a fixed amount of work with no host sync. The paper's and torchjd's solver
    (a sequence of convex programs with cvxpy, at most 20, stopping at residual 1e-3) reaches the same
    point within its tolerance. ``G`` gets ``reg_eps * I`` (default 1e-8) after the normalization, so a
    singular G (where no solution exists) still gives finite weights.

    State: ``alpha`` ((K,) float64, the last solved weights), ``solved`` (0-dim bool: whether
    ``alpha`` holds a solution yet) and ``step`` (0-dim int64: the finite steps so far). Whether a
    step re-solves (``step % update_weights_every == 0``) is decided on the device, so the Newton
    solve runs every step and its result is kept only on those steps: deciding on the host would need
    a sync.
    """

    name = "nash-mtl"
    SCHEMA = {"alpha": (("K",), torch.float64), "solved": ((), torch.bool), "step": ((), torch.int64)}

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1, newton_iters: int = 20, reg_eps: float = 1e-8):
        self.max_norm = float(check_number("max_norm", max_norm, 0.0))
        self.update_weights_every = int(check_number("update_weights_every", update_weights_every, 1, integer=True))
        self.newton_iters = int(check_number("newton_iters", newton_iters, 1, 1000, integer=True))
        self.reg_eps = float(check_number("reg_eps", reg_eps, 0.0))
        super().__init__(None)

    def _config(self) -> dict:
        return {"max_norm": self.max_norm, "update_weights_every": self.update_weights_every,
                "newton_iters": self.newton_iters, "reg_eps": self.reg_eps}

    def _solve(self, Gn: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return positive_root(Gn, 1.0, alpha, self.newton_iters)  # G a = 1 / a

    @torch.no_grad()
    def propose(self, G: torch.Tensor) -> Tuple[torch.Tensor, State]:
        K = G.shape[0]
        G64, finite = _finite_or_identity(G)
        device = G.device
        old_alpha, solved, step = (self._current(key, device) for key in self.STATE)
        if old_alpha is None:
            old_alpha = torch.ones(K, dtype=torch.float64, device=device)
            solved = torch.zeros((), dtype=torch.bool, device=device)
            step = torch.zeros((), dtype=torch.int64, device=device)
        fro = G64.norm()
        Gn = G64 / torch.where(fro > 0, fro, torch.ones_like(fro)) + self.reg_eps * eye(K, torch.float64, device)
        default_start = Gn.diagonal().clamp_min(1e-12).rsqrt()
        alpha = self._solve(Gn, torch.where(solved, old_alpha, default_start))
        ok = torch.isfinite(alpha).all() & (alpha > 0).all()
        alpha = torch.where(ok, alpha, default_start)
        resolve = (step % self.update_weights_every == 0) | ~solved
        used = torch.where(resolve, alpha, old_alpha)
        weights = used
        if self.max_norm > 0:
            norm = _update_norm_bound(G64, used, G.dtype)
            weights = torch.where(norm > self.max_norm, used / norm * self.max_norm, used)
        state = {"alpha": torch.where(finite, used, old_alpha), "solved": solved | finite, "step": step + finite.long(),
                 "kept": {"alpha": old_alpha, "solved": solved, "step": step}}
        return torch.where(finite, weights, torch.ones_like(weights)), state
