"""Smoke test of the benchmark command at its smallest size (timings are never asserted)."""
import os

from bench.run import main


def test_bench_smoke(tmp_path):
    out = main(["--smoke", "--device", "cpu", "--out", str(tmp_path)])
    for name in ("micro.csv", "e2e.csv", "summary.md"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    text = open(os.path.join(out, "summary.md")).read()
    assert "released_recipe" in text and "pcgrad_style" in text and "torch_best_effort" in text
    assert "Released recipe vs `Harmonizer(mode='reweight')`" in text
