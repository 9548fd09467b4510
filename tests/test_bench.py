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


def test_interleaved_timing_flags_spread_and_pairs_ratios():
    import torch

    from bench import timing

    steady = [1.0, 1.0, 1.01, 0.99, 1.0]
    burst = [2.0, 2.0, 2.02, 1.98, 2.0]
    assert not timing.stats(steady)["noisy"]
    assert timing.stats([1.0, 2.0, 1.0, 3.0, 1.0])["noisy"]
    # a load burst in round 2 slows both implementations: the paired ratio stays 2
    a = [1.0, 5.0, 1.0, 1.0, 1.0]
    b = [2.0, 10.0, 2.0, 2.0, 2.0]
    assert timing.paired_speedup(b, a) == 2.0
    assert timing.paired_speedup(burst, steady) > 1.9
    calls = []
    samples = timing.interleaved({"x": lambda: calls.append("x"), "y": lambda: calls.append("y")}, torch.device("cpu"), 0.001)
    assert len(samples["x"]) == len(samples["y"]) >= 5
