"""python/uda.py (the UDA study): short runs of every family and method, the released recipe equal
to Harmonizer(reweight), every task's shift, and a tiny end-to-end study with its report."""
import os
import sys

import pytest
import torch

pytest.importorskip("sklearn")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
import uda  # noqa: E402
import uda_data  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return uda_data.load_task("rot40")


@pytest.mark.parametrize("family", ["dann", "cdan", "cdan+e"])
@pytest.mark.parametrize("method", list(uda.METHODS))
@pytest.mark.parametrize("mode", ["reweight", "surgery"])
def test_short_run(data, family, method, mode):
    res = uda.train(uda.Config(family=family, method=method, mode=mode, steps=3, eval_every=2), data)
    assert 0.0 <= res.target_acc <= 1.0 and len(res.cos) == 3 and len(res.w1) == 3 and res.curve_steps == [2, 3]


@pytest.mark.parametrize("family", ["dann", "cdan+e"])
def test_released_recipe_equals_harmonizer(data, family):
    """Same seed, same steps: the authors' three-backward recipe and the Harmonizer give the same weights."""
    a = uda.train(uda.Config(family=family, method="gh++released", recipe="released", steps=4), data)
    b = uda.train(uda.Config(family=family, method="gh++released", steps=4), data)
    torch.testing.assert_close(torch.tensor(a.w1), torch.tensor(b.w1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(a.cos), torch.tensor(b.cos), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["source", "oracle"])
def test_baseline_rows(data, family):
    res = uda.train(uda.Config(family=family, steps=3), data)
    assert res.cos == [] and 0.0 <= res.target_acc <= 1.0


@pytest.mark.parametrize("task", list(uda_data.TASKS))
def test_tasks_are_deterministic_shifts(task):
    a, b = uda_data.load_task(task), uda_data.load_task(task)
    assert torch.equal(a["xt"], b["xt"]) and a["xt"].shape[1:] == (1, 16, 16)
    assert not torch.equal(a["xs"][:5], a["xt"][:5])


@pytest.mark.slow  # a study (7 s): run with --run-slow
def test_tiny_study_writes_its_report(tmp_path):
    uda.main(["--tasks", "rot20", "--families", "dann", "--seeds", "2", "--steps", "4", "--workers", "1",
              "--cost-seeds", "1", "--out", str(tmp_path)])
    md = (tmp_path / "results.md").read_text()
    assert "Paired difference" in md and "significantly better" in md and "released recipe" in md
    for name in ("runs.csv", "target_accuracy.png", "conflict_share.png", "weights.png", "curves.json"):
        assert (tmp_path / name).exists(), name


def test_default_output_is_a_scratch_folder():
    import argparse

    parser_defaults = {a.dest: a.default for a in uda.build_parser()._actions if isinstance(a, argparse.Action)}
    assert os.path.join("python", "scratch") in parser_defaults["out"]
