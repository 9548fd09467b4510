"""python/uda.py: short runs of every combination, released recipe == Harmonizer(reweight), step 0."""
import os
import sys

import pytest
import torch

pytest.importorskip("sklearn")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
import uda  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return uda.load_domains()


@pytest.mark.parametrize("da", ["dann", "cdan"])
@pytest.mark.parametrize("harmonize", list(uda.HARMONIZE))
@pytest.mark.parametrize("recipe,mode", [("harmonizer", "reweight"), ("harmonizer", "surgery"), ("released", "reweight")])
def test_short_run(data, da, harmonize, recipe, mode):
    res = uda.train(uda.Config(da=da, harmonize=harmonize, recipe=recipe, mode=mode, steps=3, eval_every=2), data)
    assert 0.0 <= res.target_acc <= 1.0 and len(res.cosines) == 3 and len(res.curve_steps) == 2
    assert all(torch.isfinite(p).all() for p in res.final_params)


def test_source_only_run(data):
    res = uda.train(uda.Config(da="source", steps=3), data)
    assert res.cosines == [] and 0.0 <= res.target_acc <= 1.0


@pytest.mark.parametrize("da", ["dann", "cdan"])
@pytest.mark.parametrize("harmonize", ["gh", "gh++", "gh++released"])
def test_released_recipe_equals_harmonizer_reweight(data, da, harmonize):
    kw = dict(da=da, harmonize=harmonize, steps=12, eval_every=100, trade_off=0.8)
    a = uda.train(uda.Config(recipe="released", **kw), data)
    b = uda.train(uda.Config(recipe="harmonizer", mode="reweight", **kw), data)
    assert any(c < 0 for c in a.cosines), "no conflicting step: the comparison would not exercise the weights"
    for x, y in zip(a.final_params, b.final_params):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_grl_zero_at_step_zero(data):
    assert uda.grl_coeff(0, 100) == 0.0
    for harmonize in ("gh", "gh++", "gh++released"):
        res = uda.train(uda.Config(da="dann", harmonize=harmonize, steps=1), data)
        assert res.weights[0] == [1.0, 1.0] and res.cosines[0] == 0.0
        assert all(torch.isfinite(p).all() for p in res.final_params)


def test_target_shift_is_deterministic(data):
    again = uda.load_domains()
    assert torch.equal(again["xt"], data["xt"]) and torch.equal(again["xs"], data["xs"])
