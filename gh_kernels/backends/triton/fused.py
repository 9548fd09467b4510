"""The Triton backend's ``harmonize_``: Gram, weights and combine in one op call.

The Python work over the tensors (flat views, work lists) is cached per plan: a plan (or a
``Harmonizer``) passes its ``cache_host`` tensor, and a call whose tensors sit at the same
addresses with the same sizes and dtypes as the plan's previous call reuses the work lists on
the device. What remains per call is one pass that reads each tensor's address, size and dtype
to compare (about 0.3 us per tensor). Lists with non-contiguous tensors are not cached (their
flat views are temporaries).
"""
from __future__ import annotations

import dataclasses
import weakref

from ..compose import scaled, select_for_gram, zero_gram
from .combine import plan_combine, run_combine
from .gram import plan_gram, run_gram
from .weights import weights

_cache = {}  # id(cache_host) -> (weakref to cache_host, signature, gram work or None, combine work)


# The cache must not keep the gradients alive (that would hold a step's gradients in memory and
# move the next step's tensors to other addresses): cached work refers to tensors by position in
# ``tensors + out`` and is re-attached to the current call's tensors.
def _detach(work, position):
    if work is None:
        return None
    launches = [dataclasses.replace(L, base=position[id(L.base)]) for L in work.launches]
    if hasattr(work, "unreached"):
        return work._replace(params=[], launches=launches, unreached=[position[id(t)] for t in work.unreached])
    return work._replace(params=[], launches=launches)


def _attach(work, ts):
    if work is None:
        return None
    launches = [dataclasses.replace(L, base=ts[L.base]) for L in work.launches]
    if hasattr(work, "unreached"):
        return work._replace(launches=launches, unreached=[ts[i] for i in work.unreached])
    return work._replace(launches=launches)


def _signature(out, tensors, gram_mask):
    ts = list(tensors) + list(out)
    if not all(t is None or t.is_contiguous() for t in ts):
        return None
    return (tuple(None if t is None else (t.data_ptr(), t.numel(), t.dtype) for t in ts),
            None if gram_mask is None else tuple(gram_mask.tolist()))


def _plan(out, tensors, gram_mask):
    selected = select_for_gram(out, tensors, gram_mask)
    return (plan_gram(selected, 2) if selected is not None else None), plan_combine(out, tensors, 2)


def harmonize_(out, tensors, gram_mask, method, kappa, scale1, scale2, accumulate, cache_host=None, cache_device=None):
    sig = _signature(out, tensors, gram_mask) if cache_host is not None else None
    hit = _cache.get(id(cache_host)) if sig is not None else None
    ts = list(tensors) + list(out)
    if hit is not None and hit[0]() is cache_host and hit[1] == sig:
        gram_work, combine_work = _attach(hit[2], ts), _attach(hit[3], ts)
    else:
        gram_work, combine_work = _plan(out, tensors, gram_mask)
        if sig is not None:
            key = id(cache_host)
            position = {id(t): i for i, t in reversed(list(enumerate(ts))) if t is not None}
            _cache[key] = (weakref.ref(cache_host, lambda _, key=key: _cache.pop(key, None)), sig,
                           _detach(gram_work, position), _detach(combine_work, position))
    G = run_gram(gram_work, 2) if gram_work is not None else zero_gram(out, tensors)
    w = weights(G, method, kappa)
    run_combine(combine_work, scaled(w, scale1, scale2), 2, accumulate)
    return G, w
