"""Registers and spills of every CUDA kernel, without a GPU: compiles csrc/cuda/*.cu with plain nvcc
(`-Xptxas -v`) for sm_80 and sm_90, records each kernel's registers, spill stores/loads and stack
frame (the most over its template instances), and fails on any spill or on a kernel over the register
budget written down, with its reason, in tools/cuda_register_budget.json ("max_registers"; a spill only
where the entry allows it, "max_spill_bytes", with its reason). A kernel without a budget entry fails
too: a new kernel gets a budget when it is added.

    python tools/check_cuda_registers.py [--out FILE.json]     # .ci/run calls it through check_cuda_sources.sh
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET = os.path.join(ROOT, "tools", "cuda_register_budget.json")
ARCHS = ("sm_80", "sm_90")

_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def compile_file(nvcc: str, cu: str, tmp: str) -> str:
    cmd = [nvcc, "-std=c++17", "-O3", f"-I{os.path.join(ROOT, 'csrc', 'include')}", "-Xptxas", "-v"]
    for arch in ARCHS:
        cmd += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    cmd += ["-c", cu, "-o", os.path.join(tmp, os.path.basename(cu) + ".o")]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"check_cuda_registers: {cu} does not compile:\n{run.stderr[-6000:]}")
    return run.stderr


def kernel_name(mangled: str) -> str:
    """The kernel's unqualified name without template arguments (gram_partials_kernel)."""
    cxxfilt = shutil.which("c++filt")
    text = subprocess.run([cxxfilt, mangled], capture_output=True, text=True).stdout.strip() if cxxfilt else mangled
    text = text.replace("(anonymous namespace)::", "")
    depth, out = 0, []
    for c in text:  # drop template argument lists
        depth += c == "<"
        if depth == 0:
            out.append(c)
        depth -= c == ">"
    return "".join(out).split("(")[0].split()[-1].split("::")[-1]


def parse(log: str) -> List[dict]:
    rows, cur = [], None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = {"mangled": m.group(1), "arch": m.group(2)}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = _SPILL.search(line)
        if m:
            cur.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = _REGS.search(line)
        if m:
            cur["registers"] = int(m.group(1))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the per-kernel table here (JSON)")
    args = ap.parse_args()
    nvcc = os.environ.get("NVCC", "nvcc")
    if shutil.which(nvcc) is None:
        print("check_cuda_registers: nvcc not found, registers and spills not checked")
        return 0
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        logs = dict(zip(sources, pool.map(lambda cu: compile_file(nvcc, cu, tmp), sources)))
    with open(BUDGET) as f:
        budget = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    table: Dict[str, Dict[str, dict]] = {}
    for cu, log in logs.items():
        for row in parse(log):
            name = kernel_name(row["mangled"])
            agg = table.setdefault(name, {}).setdefault(row["arch"], {"registers": 0, "spill_stores": 0, "spill_loads": 0,
                                                                      "stack": 0, "instances": 0,
                                                                      "file": os.path.basename(cu)})
            for key in ("registers", "spill_stores", "spill_loads", "stack"):
                agg[key] = max(agg[key], row.get(key, 0))
            agg["instances"] += 1
    failures = []
    print(f"{'kernel':24} {'arch':6} {'inst':>4} {'regs':>5} {'budget':>6} {'spill st/ld':>11} {'stack':>5}")
    for name in sorted(table):
        limit = budget.get(name, {}).get("max_registers")
        if limit is None:
            failures.append(f"{name}: no register budget in tools/cuda_register_budget.json")
        for arch in sorted(table[name]):
            r = table[name][arch]
            print(f"{name:24} {arch:6} {r['instances']:>4} {r['registers']:>5} {limit if limit else '-':>6} "
                  f"{r['spill_stores']:>5}/{r['spill_loads']:<5} {r['stack']:>5}")
            allowed = budget.get(name, {}).get("max_spill_bytes", 0)
            if max(r["spill_stores"], r["spill_loads"]) > allowed:
                failures.append(f"{name} ({arch}): spills {r['spill_stores']} bytes stored, {r['spill_loads']} loaded "
                                f"(budget {allowed})")
            if limit is not None and r["registers"] > limit:
                failures.append(f"{name} ({arch}): {r['registers']} registers, over its budget of {limit} "
                                f"({budget[name].get('reason', '')})")
    for name in sorted(set(budget) - set(table)):
        failures.append(f"{name}: in the budget but no such kernel compiled (remove or rename the entry)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
    for msg in failures:
        print("check_cuda_registers: FAILED " + msg)
    if not failures:
        print(f"check_cuda_registers: {len(table)} kernels, {', '.join(ARCHS)}: every kernel within its register and spill budget")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
