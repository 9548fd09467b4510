"""What tools/setup.sh still has to do, decided in one Python process (a re-run with nothing to do is this
process alone: no pip, no build, no other interpreter).

Prints one line per action and exits 0 when there is none, after printing the installed package's
summary; exits 10 when tools/setup.sh has actions to take:
  TORCH                   torch is not importable: install the pinned CPU wheel
  MISSING <pip names>     test/benchmark dependencies to install (under a constraint pinning torch)
  INSTALL                 this checkout is not the installed gh_kernels, or pip's recorded version differs
  BUILD                   the C++ extension is absent or older than a source under csrc/
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# import name -> pip requirement (torchjd and its solvers are the multi-task tests' reference; transformers,
# accelerate and lightning the integration tests'; the package itself imports none of them)
DEPENDENCIES = {
    "pytest": "pytest", "hypothesis": "hypothesis", "numpy": "numpy", "matplotlib": "matplotlib", "tqdm": "tqdm",
    "psutil": "psutil", "sklearn": "scikit-learn", "ninja": "ninja", "triton": "triton==3.9.0",
    "torchjd": "torchjd==0.18.0", "qpsolvers": "qpsolvers", "quadprog": "quadprog", "cvxpy": "cvxpy",
    "clarabel": "clarabel", "ecos": "ecos", "transformers": "transformers", "accelerate": "accelerate",
    "lightning": "lightning",
}


def source_version() -> str:
    with open(os.path.join(ROOT, "gh_kernels", "_version.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def installed_here() -> bool:
    """pip's gh_kernels is an editable install of this checkout (pip's own record, direct_url.json) and records
    this checkout's version."""
    import json
    from importlib import metadata

    try:
        dist = metadata.distribution("gh_kernels")
    except metadata.PackageNotFoundError:
        return False
    if dist.version != source_version():
        return False
    try:
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    except ValueError:
        return False
    return url.startswith("file://") and os.path.realpath(url[len("file://"):]) == os.path.realpath(ROOT)


def extension_current() -> bool:
    built = glob.glob(os.path.join(ROOT, "gh_kernels", "_C*.so"))
    if not built:
        return False
    sources = [p for ext in ("cpp", "h", "cu", "cuh") for p in glob.glob(os.path.join(ROOT, "csrc", "**", f"*.{ext}"),
                                                                        recursive=True)]
    sources.append(os.path.join(ROOT, "setup.py"))
    return os.path.getmtime(built[0]) >= max(os.path.getmtime(p) for p in sources)


def main() -> int:
    actions = []
    if importlib.util.find_spec("torch") is None:
        actions.append("TORCH")
    missing = [pip for mod, pip in DEPENDENCIES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        actions.append("MISSING " + " ".join(missing))
    if not installed_here():
        actions.append("INSTALL")
    if os.environ.get("GH_KERNELS_BUILD_EXT", "auto") != "0" and not extension_current():
        actions.append("BUILD")
    if actions:
        print("\n".join(actions))
        return 10
    sys.path.insert(0, ROOT)  # the summary reports this checkout's package
    import gh_kernels as g

    err = g.extension_error()
    print(f"gh_kernels {g.__version__} backends: {g.available_backends()}" + ("" if err is None else f" ({err})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
