"""The weighting layer: every method that turns a K x K Gram matrix into K weights, and the one
registry that resolves a ``method=`` argument for every entry point (``weights``, ``aggregate``,
``plan``, ``Harmonizer``, ``MultiTaskHarmonizer``).

* ``gh.py``: the two-task GH rules (``"sum"``, ``"gh"``, ``"gh++"``, ``"gh++released"``; K = 2),
  run by the backends' ``weights`` kernels;
* ``rules.py``: the stateless multi-task rules, each ``rule(G, *, gram_dtype, **options)`` with its
  options as named keyword parameters; ``solvers.py`` and ``linalg.py`` are their exact small solves;
* ``stateful.py``: the methods with state across steps (``GradVac``, ``NashMTL``; the base class and
  NOTE: [State changes after success]); ``pcd.py`` (``PCD``), ``crmogm.py`` (``CRMOGM``, the EMA of any
  method's weights), ``crossbatch.py`` (``MoDo``, ``SDMGrad``: weights from two batches' gradients),
  ``excess_mtl.py`` (``ExcessMTL``: reads the gradients themselves, not only G);
* ``coordinate.py``: the per-coordinate methods (``"trimmed-mean"``, ``"graddrop"``), which are not a
  function of G: they run one fused pass over the gradient sets instead of Gram and combine.

NOTE: [Cross-batch Gram]: MoDo and SDMGrad weigh from ``A = J_1 J_2^T`` (two independent batches).
A plan for them takes 2K gradient sets (batch 1's K, then batch 2's) and computes A with the fused
Gram kernel: one pass over the 2K sets when they fit its MAX_SETS (K <= 4), else one pass per pair of
task blocks (``ops/dispatch.cross_gram``); it solves on A and combines all 2K sets with ``(w, w) / 2``
(one combine, or one per block of MAX_SETS sets): the gradient of the mean of both batches' weighted
losses. The ``gram`` a call returns is A. ``Weighting.num_sets`` is then 2K and
``Weighting.combine_weights`` maps the K weights to the 2K the combine takes.

:func:`resolve` checks a method and all its inputs up front -- K, every option (finite, in range,
of the right shape and device), ``backend=`` -- and returns a :class:`Weighting`, so nothing is
found wrong halfway through a call.

NOTE: [Weights dtype]: the weights are float32, or float64 when the Gram matrix is float64 (float64
gradients), for every method and every backend. A 16-bit Gram matrix (only a hand-made one: the
kernels' Grams are float32 or float64) gives float32 weights. The multi-task rules solve in float64
and round once at the end.

A :class:`Weighting` computes ``solve(G) -> (weights, Pending)``. ``Pending`` carries the state
change of the step (a stateful method's new state, a ``generator``'s draws): the caller commits it
after the whole call succeeded or rolls it back when the call raises; see stateful.py's NOTE:
[State changes after success].
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

from ..ops.constants import METHODS
from . import rules as _rules
from .gh import METHOD_CODES, check_method
from .linalg import cached, tracing
from .coordinate import COORDINATE_METHODS, CoordinateRule
from .coordinate import check as _check_coordinate
from .crmogm import CRMOGM
from .crossbatch import MoDo, SDMGrad
from .excess_mtl import ExcessMTL
from .pcd import PCD
from .stateful import GradVac, NashMTL, StatefulMethod

#: Largest K the methods take: the solvers above 8 tasks run fixed step counts measured enough up to here
#: (NOTE: [Primal active set above 8 tasks], [Wolfe's min-norm point], [CAGrad's homotopy]); tests run K = 1..64.
MAX_TASKS = 64

Method = Union[str, StatefulMethod]

#: The multi-task methods' names (the Gram-based rules, then the per-coordinate ones); the stateful methods are
#: objects (STATEFUL_METHODS).
MULTITASK_METHODS = tuple(_rules.RULES) + COORDINATE_METHODS
STATEFUL = {"gradvac": GradVac, "nash-mtl": NashMTL, "pcd": PCD, "cr-mogm": CRMOGM, "modo": MoDo, "sdmgrad": SDMGrad,
            "excess-mtl": ExcessMTL}
#: The stateful methods' classes (passed as objects: ``method=gh_kernels.PCD()``).
STATEFUL_METHODS = tuple(STATEFUL.values())
#: How the objects are named in errors.
_OBJECTS = "a gh_kernels.GradVac / NashMTL / PCD / CRMOGM / MoDo / SDMGrad / ExcessMTL object"


def weights_dtype(G: torch.Tensor) -> torch.dtype:
    """NOTE: [Weights dtype]."""
    return torch.float64 if G.dtype == torch.float64 else torch.float32


def _nothing() -> None:
    return None


def _store_nothing(nonfinite: Optional[torch.Tensor]) -> None:
    return None


@dataclass
class Pending:
    """A step's state change: ``commit()`` after the call succeeded, ``rollback()`` when it raised.

    ``nonfinite``: for a stateful method, a zeroed int32 flag on G's device that the call's combines set when
    they write a non-finite value (NOTE: [Non-finite flag of the combine], csrc/include/gh_tensor_utils.h);
    ``store(nonfinite)`` then keeps the old state on the device where it is set (no host read)."""

    store: Callable[[Optional[torch.Tensor]], None] = _store_nothing
    rollback: Callable[[], None] = _nothing
    nonfinite: Optional[torch.Tensor] = None

    def commit(self) -> None:
        self.store(self.nonfinite)


def _generator_guard(generator: Optional[torch.Generator]) -> Callable[[], None]:
    """A rollback that puts ``generator`` back where it was before this step's draws."""
    if generator is None:
        return _nothing
    saved = generator.get_state()
    return lambda: generator.set_state(saved)


@dataclass
class Weighting:
    """A resolved method: ``solve(G)`` for a validated K x K Gram matrix returns ``(weights, Pending)``."""

    name: str
    num_tasks: int
    gh_code: Optional[int] = None     # the two-task GH rules: the kernels' method code, and kappa
    kappa: float = 0.5
    rule: Optional[Callable] = None   # a stateless multi-task rule and its checked options
    options: dict = field(default_factory=dict)
    neutral: float = 1.0
    stateful: Optional[StatefulMethod] = None
    backend: Optional[str] = None
    cross_batch: bool = False          # NOTE: [Cross-batch Gram]: 2K sets, the solve on J_1 J_2^T
    coordinate: Optional[CoordinateRule] = None  # a per-coordinate method: no Gram matrix, no weights

    @property
    def num_sets(self) -> int:
        """Gradient sets a plan for this method takes: 2K for a cross-batch plan, else K."""
        return 2 * self.num_tasks if self.cross_batch else self.num_tasks

    def combine_weights(self, w: torch.Tensor) -> torch.Tensor:
        """The weights of the combine over ``num_sets`` sets: ``(w, w) / 2`` for a cross-batch plan, else w."""
        return torch.cat((w, w)) * 0.5 if self.cross_batch else w

    def solve(self, G: torch.Tensor, flat: Optional[Sequence[Optional[torch.Tensor]]] = None) -> Tuple[torch.Tensor, Pending]:
        """``flat``: the gradient sets the Gram matrix was computed over (set-major), for a method that
        reads the gradients themselves (ExcessMTL)."""
        if self.coordinate is not None:
            raise ValueError(f"method {self.name!r} works per coordinate: it has no weights from a Gram matrix "
                             "(use aggregate or MultiTaskHarmonizer)")
        if self.cross_batch and G.shape[0] == 2 * self.num_tasks:  # a 2K x 2K Gram: its cross block
            K = self.num_tasks
            G = G[:K, K:]
        if self.gh_code is not None:
            from ..ops import dispatch
            return dispatch.weights(G, self.name, self.kappa, self.backend), Pending()
        dtype = weights_dtype(G)
        if self.stateful is not None:
            rollback = _generator_guard(self.stateful.generator)
            if getattr(self.stateful, "reads_gradients", False):
                if flat is None:
                    self.stateful.propose(G)  # raises: it needs the gradients
                w, state = self.stateful.propose_from_sets(G, flat, self.num_tasks)
            else:
                w, state = self.stateful.propose(G)
            flag = torch.zeros(1, dtype=torch.int32, device=G.device)
            return w.to(dtype), Pending(lambda nonfinite: self.stateful.commit(state, nonfinite), rollback, flag)
        rollback = _generator_guard(self.options.get("generator"))
        return _rules.solve(G, self.rule, self.neutral, self._options_on(G.device)).to(dtype), Pending(rollback=rollback)

    def neutral_weights(self, G: torch.Tensor) -> torch.Tensor:
        """The float64 weights this method gives for a non-finite G (a stateful method's: ones), computed without a solve."""
        if self.stateful is not None:
            return torch.ones(G.shape[0], dtype=torch.float64, device=G.device)
        return _rules._pref(self._options_on(G.device).get("pref_vector"), G.to(torch.float64), self.neutral)

    def _options_on(self, device: torch.device) -> dict:
        """The options with their tensors (``pref_vector``) on ``device``, copied once per device: a
        host-to-device copy per step would wait for the GPU (:func:`~.linalg.cached`)."""
        if not any(isinstance(v, torch.Tensor) for v in self.options.values()):
            return self.options
        return cached(self.__dict__.setdefault("_on_device", {}), str(device),
                      lambda: {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.options.items()})

    def __call__(self, G: torch.Tensor) -> torch.Tensor:
        """Solve and commit at once (the caller has nothing else that could fail)."""
        w, pending = self.solve(G)
        pending.commit()
        return w


def check_backend_name(backend: Optional[str], where: str = "backend") -> None:
    from ..backends import BACKENDS
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"{where} must be one of {', '.join(repr(b) for b in BACKENDS)} or None; got {backend!r}")


def resolve(method: Method, K: Optional[int], options: dict, *, where: str = "method",
            backend: Optional[str] = None, cross_batch: Optional[bool] = None) -> Optional[Weighting]:
    """Check ``method``/``options``/``backend`` for K tasks and return a :class:`Weighting` (ValueError or
    TypeError naming what is wrong; nothing is changed). The two-task GH rules (and ``"sum"`` when
    K = 2) run on ``backend``'s weights kernel; the other methods on the Gram matrix's device.
    ``K=None`` checks what does not depend on K (a training step's constructor) and returns None.
    ``cross_batch``: True for a call with two batches (NOTE: [Cross-batch Gram]; only MoDo and
    SDMGrad take them), False for one batch (MoDo and SDMGrad refuse it), None when the caller passes
    the matrix itself (:func:`gh_kernels.weights`)."""
    options = dict(options)
    check_backend_name(backend)
    if K is None:
        _check_any_k(method, options, where, backend)
        return None
    if K < 1:
        raise ValueError(f"{where}: K = {K} gradient sets; a method needs at least one")
    if K > MAX_TASKS:
        raise ValueError(f"{where}: K = {K} tasks is above the {MAX_TASKS} the multi-task solvers take")
    if isinstance(method, StatefulMethod):
        if options:
            raise ValueError(f"{where}: a {type(method).__name__} object takes its options in its constructor; got "
                             f"{', '.join(options)}")
        method.check_tasks(K, where)
        takes_two = getattr(method, "cross_batch", False)
        if cross_batch is not None and cross_batch != takes_two:
            raise ValueError(f"{where}: {type(method).__name__} weighs from two independent batches (pass the second "
                             "batch: second_batch= / second_losses=)" if takes_two else
                             f"{where}: only MoDo and SDMGrad take a second batch; {type(method).__name__} does not")
        return Weighting(method.name, K, stateful=method, backend=backend, cross_batch=bool(cross_batch))
    if not isinstance(method, str):
        raise TypeError(f"{where} must be a method name or {_OBJECTS}; got {type(method).__name__}")
    if cross_batch:
        raise ValueError(f"{where}: only MoDo and SDMGrad take a second batch; method {method!r} does not")
    if method in METHOD_CODES and (method != "sum" or K == 2):
        if K != 2:
            raise ValueError(f"{where}={method!r} is a two-task rule (K = 2); got K = {K}")
        kappa = options.pop("kappa", 0.5)
        if options:
            raise ValueError(f"method {method!r} takes the option kappa only; got {', '.join(options)}")
        check_method(method, kappa)
        return Weighting(method, 2, gh_code=METHOD_CODES[method], kappa=float(kappa), backend=backend)
    if method in STATEFUL:
        raise ValueError(f"method {method!r} keeps state across steps: create gh_kernels.{STATEFUL[method].__name__}(...) "
                         "once and pass it as method= (options go to its constructor)")
    if method in COORDINATE_METHODS:
        return Weighting(method, K, coordinate=_check_coordinate(method, K, options), backend=backend)
    if method not in _rules.RULES:
        names = ", ".join(repr(m) for m in MULTITASK_METHODS)
        raise ValueError(f"method must be one of {names} (or {', '.join(repr(m) for m in METHODS[1:])} for K = 2, or "
                         f"{_OBJECTS}); got {method!r}{near_miss(method)}")
    rule = _rules.RULES[method]
    check_options(method, rule, options, K)
    neutral = 1.0 if method in _rules.SUM_TYPE else 1.0 / K
    return Weighting(method, K, rule=rule, options=options, neutral=neutral, backend=backend)


def _squash(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def near_miss(method: str) -> str:
    """"; did you mean ...?" for a name close to a method of the registry (a stateful method is named by its
    class: ``"nash"`` -> ``gh_kernels.NashMTL()``), else ""."""
    import difflib

    spelled = {_squash(n): repr(n) for n in tuple(MULTITASK_METHODS) + tuple(METHODS)}
    for name, cls in STATEFUL.items():
        spelled[_squash(name)] = spelled[_squash(cls.__name__)] = f"gh_kernels.{cls.__name__}() (a stateful method: " \
                                                                   "create it once and pass it as method=)"
    key = _squash(method)
    hits = [k for k in spelled if key and (k.startswith(key) or key.startswith(k))]
    hits = hits or difflib.get_close_matches(key, list(spelled), n=1, cutoff=0.6)
    return f"; did you mean {spelled[hits[0]]}?" if hits else ""


def _check_any_k(method: Method, options: dict, where: str, backend: Optional[str]) -> None:
    """The checks of :func:`resolve` that hold for every K (a ``pref_vector`` is checked for its own length)."""
    if isinstance(method, StatefulMethod):
        if options:  # the object checked its own options; its K is checked per call
            raise ValueError(f"{where}: a {type(method).__name__} object takes its options in its constructor; got "
                             f"{', '.join(options)}")
    elif method in METHOD_CODES and method != "sum":
        resolve(method, 2, options, where=where, backend=backend)
    elif method == "krum":  # the smallest K its options allow (a bad count is named by the check itself)
        f, m = options.get("n_byzantine", 0), options.get("n_selected", 1)
        K = max(f + 3 if isinstance(f, int) else 3, m if isinstance(m, int) else 3)
        resolve(method, min(max(K, 3), MAX_TASKS), options, where=where, backend=backend)
    elif method in COORDINATE_METHODS:  # the smallest K the options allow
        trim, leak = options.get("trim_number", 0), options.get("leak")
        K = 2 * trim + 1 if isinstance(trim, int) and not isinstance(trim, bool) and trim >= 0 else 2
        if leak is not None:
            K = len(leak) if isinstance(leak, (list, tuple)) or (isinstance(leak, torch.Tensor) and leak.dim() == 1) else -1
        resolve(method, min(max(K, 2), MAX_TASKS), options, where=where, backend=backend)
    else:
        pref = options.get("pref_vector")
        K = 2 if pref is None else (len(pref) if not isinstance(pref, torch.Tensor) or pref.dim() == 1 else -1)
        resolve(method, min(max(K, 2), MAX_TASKS), options, where=where, backend=backend)


def rule_options(rule: Callable) -> Tuple[str, ...]:
    """The options a rule takes: its keyword parameters other than ``gram_dtype``."""
    return tuple(name for name, p in inspect.signature(rule).parameters.items()
                 if p.kind is p.KEYWORD_ONLY and name != "gram_dtype")


def _finite_at_least(method: str, name: str, value, low: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= low):
        raise ValueError(f"option {name} of {method!r} must be a finite number >= {low:g}; got {value!r}")


def check_options(method: str, rule: Callable, options: dict, K: int) -> None:
    """Check every option up front (ValueError naming the method and option); ``pref_vector`` becomes a
    float64 tensor of shape (K,) in ``options``."""
    allowed = rule_options(rule)
    for name, value in options.items():
        if name not in allowed:
            takes = f"takes the options {', '.join(allowed)}" if allowed else "takes no options"
            raise ValueError(f"method {method!r} {takes}; got {name}={value!r}")
    for name in ("c", "norm_eps", "reg_eps"):
        if name in options:
            _finite_at_least(method, name, options[name], 0.0)
    if "alpha" in options:
        alpha = options["alpha"]
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"option alpha of {method!r} must be a finite number > 0; got {alpha!r}")
    if method == "krum":
        _check_krum(options, K)
    if "scale_mode" in options and options["scale_mode"] not in ("min", "median", "rmse"):
        raise ValueError(f"option scale_mode of 'aligned-mtl' must be 'min', 'median' or 'rmse'; got {options['scale_mode']!r}")
    if "generator" in options and options["generator"] is not None and not isinstance(options["generator"], torch.Generator):
        raise ValueError(f"option generator of {method!r} must be a torch.Generator or None; got "
                         f"{type(options['generator']).__name__}")
    if options.get("pref_vector") is not None:
        options["pref_vector"] = _check_pref(method, options["pref_vector"], K)


def _check_krum(options: dict, K: int) -> None:
    """torchjd's rule: K >= n_byzantine + 3 and 1 <= n_selected <= K (integers)."""
    f, m = options.get("n_byzantine", 0), options.get("n_selected", 1)
    for name, value in (("n_byzantine", f), ("n_selected", m)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "n_byzantine" else 1):
            raise ValueError(f"option {name} of 'krum' must be an integer >= {0 if name == 'n_byzantine' else 1}; got {value!r}")
    if K < f + 3:
        raise ValueError(f"option n_byzantine of 'krum' must be at most K - 3 = {K - 3} (Krum needs K >= n_byzantine + 3); "
                         f"got n_byzantine={f} for K = {K}")
    if m > K:
        raise ValueError(f"option n_selected of 'krum' must be at most K = {K}; got {m}")


def _check_pref(method: str, p, K: int) -> torch.Tensor:
    where = f"option pref_vector of {method!r}"
    if not isinstance(p, torch.Tensor):
        try:
            p = torch.as_tensor(p, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{where} must be a tensor of {K} numbers; got {type(p).__name__}") from None
    if p.layout is not torch.strided or p.device.type == "meta":
        raise ValueError(f"{where} must be a dense tensor with data; got a {p.layout} tensor on {p.device}")
    if p.shape != (K,) or not p.is_floating_point():
        raise ValueError(f"{where} must be a float tensor of shape ({K},); got {p.dtype} of shape {tuple(p.shape)}")
    # Read once, here (a sync for a GPU tensor), never during a step; a traced call (torch.compile, a fake
    # mode) has no values to read, and the check is left to eager calls.
    if not tracing() and not bool(torch.isfinite(p).all()):
        raise ValueError(f"{where} must be finite; got {p.tolist()}")
    return p.detach().to(torch.float64)


__all__ = ["GradVac", "NashMTL", "PCD", "CRMOGM", "MoDo", "SDMGrad", "ExcessMTL", "StatefulMethod", "MULTITASK_METHODS",
           "STATEFUL_METHODS", "STATEFUL", "MAX_TASKS", "Method", "Pending",
           "Weighting", "resolve", "weights_dtype", "check_backend_name"]
