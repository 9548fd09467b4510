"""``python -m bench``: run the benchmark suite for the available device and write the results.

  python -m bench --quick            # small sizes, a table in under a minute (the README's main job)
  python -m bench                    # the full suite (CPU: ~45 min on 2 cores)
  python -m bench --device cuda      # on a GPU machine (bench/gpu_check.sh runs this)

Writes ``bench/results/<device>-<date>/`` (or ``--out``): micro.csv, hostcost.csv, e2e.csv,
summary.md, gbps_vs_n.png, e2e_step_time.png.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform

import torch

import gh_kernels

from . import e2e, hostcost, micro, presets, report, stepcost, timing


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{os.cpu_count()}core"


def results_folder(out, default_name: str, force: bool) -> str:
    """The folder to write: ``out`` (refused when it already holds results, unless ``force``), else
    bench/results/<default_name>, or the first of -2, -3, ... that does not exist yet."""
    if out is not None:
        if os.path.isdir(out) and os.listdir(out) and not force:
            raise SystemExit(f"python -m bench: {out} already holds results; pass --force to overwrite them, or another --out")
        os.makedirs(out, exist_ok=True)
        return out
    base = os.path.join(os.path.dirname(__file__), "results", default_name)
    path, k = base, 1
    while os.path.isdir(path) and os.listdir(path):
        k += 1
        path = f"{base}-{k}"
    os.makedirs(path, exist_ok=True)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smallest sizes: a table in under a minute")
    ap.add_argument("--smoke", action="store_true", help="one tiny case of everything (CI's smoke test)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--out", default=None, help="output folder (default bench/results/<device>-<date>, or -2, -3, ... "
                    "when that exists: a re-run never overwrites one)")
    ap.add_argument("--force", action="store_true", help="write into an --out folder that already holds results")
    ap.add_argument("--max-n", type=float, default=None, help="largest N in the sweep (default: 1e8 CPU, 1e9 GPU)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end training steps")
    ap.add_argument("--no-memory", action="store_true", help="skip the extra-memory measurements")
    ap.add_argument("--e2e-configs", default=None, help="comma-separated e2e configs (default: small on CPU, full on GPU)")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    date = datetime.date.today().isoformat()
    outdir = results_folder(args.out, f"{device_name(device)}-{date}" + ("-quick" if (args.quick or args.smoke) else ""),
                            args.force)

    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    p = presets.preset(mode, gpu, args.max_n, compile_ok=not args.no_compile, memory_ok=not args.no_memory)
    cases, dtypes, min_time, with_compile, memory = p.cases, p.dtypes, p.min_time, p.with_compile, p.memory
    e2e_configs = args.e2e_configs.split(",") if args.e2e_configs else p.e2e_configs

    load_before = timing.machine_load()
    print(f"gh_kernels {gh_kernels.__version__} | torch {torch.__version__} | device {device_name(device)} | "
          f"backends {gh_kernels.available_backends()} | threads {torch.get_num_threads()} | out {outdir}")
    copy = micro.copy_bandwidth(device, p.copy_n, min_time)
    copy_gbps = copy["gbps"]
    print(f"copy bandwidth (read + write, {copy['threads']} thread(s), {copy['bytes'] / 2**20:.0f} MB buffers beyond the "
          f"{copy['cache_bytes'] / 2**20:.0f} MB last-level cache): {copy_gbps:.1f} GB/s")
    micro_rows = micro.run_micro(device, cases, dtypes, min_time, with_compile, memory)
    for r in micro_rows:
        r["pct_copy_bw"] = 100 * r["gbps_5n"] / copy_gbps
    report.write_csv(os.path.join(outdir, "micro.csv"), micro_rows)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # host cost per call is measured on one thread (the host-cost issue's setting)
    host_rows = hostcost.measure(device, rounds=p.hostcost_rounds)
    step_rows = [] if device.type != "cpu" or args.smoke else stepcost.measure(rounds=20 if args.quick else 80)
    torch.set_num_threads(threads)
    report.write_csv(os.path.join(outdir, "hostcost.csv"), host_rows)
    if step_rows:
        report.write_csv(os.path.join(outdir, "stepcost.csv"), step_rows)

    e2e_rows, match = [], {}
    if not args.no_e2e:
        for cfg in e2e_configs:
            print(f"end-to-end: {cfg}")
            rows = e2e.time_steps(cfg, device, steps=p.e2e_steps, warmup=p.e2e_warmup)
            if not gpu and mode == "full" and memory:
                for r in rows:
                    r["peak_mem_mb"] = e2e.cpu_peak_rss(cfg, r["step"])
            e2e_rows += rows
            for method in ("gh", "gh++"):
                match[(cfg, method)] = e2e.grads_match(cfg, device, method)
        report.write_csv(os.path.join(outdir, "e2e.csv"), e2e_rows)

    load_after = timing.machine_load()
    noisy = sum(1 for r in micro_rows + e2e_rows if r.get("noisy"))
    summary = [f"# gh_kernels benchmark: {device_name(device)}, {date}", "",
               timing.load_note(load_before, load_after) + f" Rows whose samples spread over "
               f"{100 * timing.NOISY_SPREAD:.0f}% of the median (flagged in the noise column; their numbers are printed "
               f"with their intervals): {noisy} of {len(micro_rows) + len(e2e_rows)}.", "",
               report.legend(copy), "",
               f"gh_kernels {gh_kernels.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
               f"threads {torch.get_num_threads()}, backends {gh_kernels.available_backends()}.", "",
               f"Copy bandwidth measured in this run (`copy_` over {copy['bytes'] / 2**20:.0f} MB buffers, "
               f"{copy['threads']} thread(s), bytes read + written): **{copy_gbps:.1f} GB/s**.", "",
               "## harmonize alone", "",
               "GB/s = 5N x bytes per element / median time for every row (the fused path's traffic); "
               "`bytes moved` is what each implementation really moves (bench/registry.py). "
               "Implementations of a row are timed interleaved; `x name` = the median over rounds of that "
               "implementation's time / this row's time (paired samples). Extra MB: "
               + ("torch.cuda.max_memory_allocated delta of one call." if gpu else
                  "peak-RSS delta of one call after a warm-up call, in a fresh process, outputs already written once "
                  "(measured for the model lists and N=1e7 in float32)."), "",
               report.micro_table(micro_rows, copy), "",
               "## host cost per call (1 thread, tensors of 8 elements, interleaved; bench/hostcost.py)", "",
               hostcost.table(host_rows), ""]
    if step_rows:
        summary += ["## a training step over K plain backward passes (602 small tensors, 1 thread; bench/stepcost.py)", "",
                    stepcost.table(step_rows), ""]
    if e2e_rows:
        summary += ["## one training step (DANN head)", "", report.e2e_table(e2e_rows), "",
                    "Released recipe vs `Harmonizer(mode='reweight')`, max relative `.grad` difference: "
                    + ", ".join(f"{c} {m}: {v:.1e}" for (c, m), v in match.items()), ""]
    summary += ["## targets (from the benchmark issue), evaluated on this run", ""] + presets.targets(micro_rows, e2e_rows, copy_gbps, gpu, host_rows) + [""]
    with open(os.path.join(outdir, "summary.md"), "w") as f:
        f.write("\n".join(summary))
    report.plots(outdir, micro_rows, e2e_rows)
    print()
    print(report.legend(copy))
    print()
    print(report.micro_table(micro_rows, copy))
    print()
    print(hostcost.table(host_rows))
    if e2e_rows:
        print()
        print(report.e2e_table(e2e_rows))
    print(f"\nwrote {outdir}")
    return outdir
