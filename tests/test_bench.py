"""Smoke test of the benchmark command at its smallest size (timings are never asserted)."""
import os

import pytest
import torch

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


@pytest.mark.slow  # the multi-task benchmark and study programs end to end (8-10 s): run with --run-slow
def test_multitask_bench_and_program_smoke(tmp_path):
    """bench/multitask.py and python/multitask.py run end to end at their smallest size (no timing asserted)."""
    import subprocess
    import sys

    import pytest

    pytest.importorskip("torchjd")
    from bench import multitask

    out = multitask.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "bench")])
    text = open(os.path.join(out, "summary.md")).read()
    assert "| resnet50 |" in text and "| vit_b16 |" in text and "| 3 | upgrad |" in text
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "python", "multitask.py"), "--methods", "sum", "upgrad",
                           "nash-mtl", "--seeds", "2", "--epochs", "1", "--out", str(tmp_path / "mtl")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = open(tmp_path / "mtl" / "results.md").read()
    assert "| upgrad |" in results and "| nash-mtl |" in results


def test_gpu_keyrows_smoke_on_cpu(tmp_path):
    """bench/keyrows.py (the GPU quick profile's benchmark phase) runs its code on CPU: rows written as they come."""
    from bench import keyrows
    path = tmp_path / "keyrows.json"
    rows = keyrows.measure(torch.device("cpu"), ["cpu"], 0.01, str(path), max_n=2_000_000)
    names = [r["row"] for r in rows]
    assert names[0] == "copy bandwidth" and "2,000 tiny tensors float32" in names
    assert all("met" in r for r in rows[1:])
    import json
    assert json.loads(path.read_text()) == rows


def test_tables_print_every_ratio_with_its_interval_and_drop_empty_columns():
    """Noise never replaces a number: a noisy row keeps its ratio and interval and says so in its own column;
    columns no row fills (quick mode: extra MB, x compile) are left out; the legend says what > 1 means."""
    from bench import report
    row = {"case": "sweep", "n": 1000, "tensors": 4, "dtype": "float32", "impl": "gh_kernels[cpu]", "median_ms": 1.0,
           "q20_ms": 0.8, "q80_ms": 1.6, "spread": 0.8, "noisy": True, "gbps_5n": 30.0, "bytes_model": "5N",
           "working_set_bytes": 12_000, "speedup_vs_released_recipe": 3.25, "speedup_vs_released_recipe_q20": 2.5,
           "speedup_vs_released_recipe_q80": 4.0, "speedup_vs_released_recipe_noisy": True}
    copy = {"gbps": 20.0, "bytes": 1 << 30, "cache_bytes": 1 << 20, "threads": 2}
    table = report.micro_table([row], copy)
    assert "3.25 [2.50-4.00]" in table and "| noisy" not in table.split("\n")[0]
    assert "noisy: samples, x released_recipe" in table and "150%*" in table
    assert "extra MB" not in table and "x compile" not in table
    legend = report.legend(copy)
    assert "> 1 = faster" in legend and "20.0 GB/s" in legend and "2 thread(s)" in legend


def test_a_rerun_never_overwrites_results(tmp_path, monkeypatch):
    import pytest

    from bench import run
    out = tmp_path / "res"
    out.mkdir()
    (out / "summary.md").write_text("old")
    with pytest.raises(SystemExit, match="--force"):
        run.results_folder(str(out), "x", force=False)
    assert run.results_folder(str(out), "x", force=True) == str(out)
    monkeypatch.setattr(run.os.path, "dirname", lambda p: str(tmp_path))  # bench/results -> tmp_path/results
    first = run.results_folder(None, "cpu-2core-today", force=False)
    open(os.path.join(first, "summary.md"), "w").write("kept")
    second = run.results_folder(None, "cpu-2core-today", force=False)
    assert second == first + "-2" and open(os.path.join(first, "summary.md")).read() == "kept"


@pytest.mark.slow  # issue #28's rows end to end, quick profile (about a minute): run with --run-slow
def test_large_k_bench_quick(tmp_path):
    import json

    from bench import large_k
    out = tmp_path / "large_k"
    large_k.main(["--quick", "--device", "cpu", "--out", str(out)])
    rows = json.loads((out / "large_k.json").read_text())
    kinds = {r["row"] for r in rows}
    assert kinds == {"aggregate", "gram pass", "training step, CelebA-shaped", "training step, instance-wise", "solve"}
    assert all(r["gh_ms"] > 0 for r in rows)
    assert "torchjd" in (out / "summary.md").read_text()
