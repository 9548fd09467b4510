"""Build gh_kernels, with the optional C++/CUDA extension gh_kernels._C.

Environment:
  GH_KERNELS_BUILD_EXT=auto|0|1   auto (default): build the extension, fall back to a pure-Python
                                  install if that fails; 0: pure Python; 1: fail loudly.
  TORCH_CUDA_ARCH_LIST            CUDA targets (default "8.0;9.0"; sm_90 for H100/H200).
  MAX_JOBS                        parallel compile jobs (ninja).
  GH_KERNELS_PORTABLE=1           no host SIMD flags (AVX2/FMA/F16C are used when the build host has them).
  GH_KERNELS_CXXFLAGS             extra C++ flags.

A CUDAExtension is built when torch was built with CUDA (torch.version.cuda) and a CUDA
toolkit is found (CUDA_HOME); torch.cuda.is_available() is not consulted, since build hosts
often have no GPU. Otherwise a CppExtension with the CPU kernels only.
Install with:  pip install --no-build-isolation -e .
"""
import glob
import os
import sys

from setuptools import find_packages, setup

MODE = os.environ.get("GH_KERNELS_BUILD_EXT", "auto").strip().lower()
if MODE not in ("auto", "0", "1"):
    sys.exit(f"GH_KERNELS_BUILD_EXT must be auto, 0 or 1; got {MODE!r}")

HERE = os.path.dirname(os.path.abspath(__file__))


def host_simd_flags():
    """AVX2/FMA/F16C (and AVX-512F) when the build host has them (about 2x for the CPU Gram loops): the
    extension is built where it runs. GH_KERNELS_PORTABLE=1 builds for baseline x86-64."""
    if os.environ.get("GH_KERNELS_PORTABLE") == "1":
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return []
    if not all(f" {x}" in flags for x in ("avx2", "fma", "f16c")):
        return []
    # AVX-512: the wide Gram tile (csrc/cpu/gram.cpp, NOTE: [Wide Gram tile]) takes 4 x 4 blocks of 16-lane
    # accumulators in its 32 registers: 28 GFMA/s per core against 15 with AVX2 (K = 40, this project's CPU).
    return ["-mavx2", "-mfma", "-mf16c"] + (["-mavx512f"] if " avx512f" in flags else [])


def extension_modules():
    if MODE == "0":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as e:  # no torch in the build environment: use --no-build-isolation
        if MODE == "1":
            raise RuntimeError(f"GH_KERNELS_BUILD_EXT=1 but torch cannot be imported: {e}") from e
        print(f"gh_kernels: building without the C++ extension (torch not importable: {e})")
        return [], {}
    sources = [os.path.join("csrc", "module.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    include_dirs = [os.path.join(HERE, "csrc", "include")]
    # -fopenmp: at::parallel_for is a header template that runs serially unless OpenMP is on.
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp"] + host_simd_flags() + os.environ.get("GH_KERNELS_CXXFLAGS", "").split()
    with_cuda = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        ext = cpp_extension.CUDAExtension(
            "gh_kernels._C", sources, include_dirs=include_dirs,
            extra_link_args=["-fopenmp"],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]},
            py_limited_api=False,
        )
    else:
        ext = cpp_extension.CppExtension("gh_kernels._C", sources, include_dirs=include_dirs,
                                         extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])
    print(f"gh_kernels: building the {'CUDA' if with_cuda else 'CPU-only'} extension")
    return [ext], {"build_ext": build_ext_class(cpp_extension.BuildExtension)}


def build_ext_class(base):
    class OptionalBuildExt(base):
        """In auto mode a failed build leaves a working pure-Python install (logged)."""

        def run(self):
            try:
                super().run()
            except Exception as e:
                if MODE == "1":
                    raise
                print(f"gh_kernels: the C++ extension failed to build ({e}); installing the pure-Python package")

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:
                if MODE == "1":
                    raise
                print(f"gh_kernels: the C++ extension failed to build ({e}); installing the pure-Python package")

    return OptionalBuildExt


def read_version() -> str:
    """gh_kernels/_version.py, the one source of the version (read as text: importing the package needs torch)."""
    import re

    with open(os.path.join(HERE, "gh_kernels", "_version.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


ext_modules, cmdclass = extension_modules()

setup(
    name="gh_kernels",
    version=read_version(),
    description="Fused Gradient Harmonization (GH, GH++) and an exact engine for multi-task gradient methods "
                "(UPGrad, MGDA, CAGrad, PCGrad, Nash-MTL, ...) for PyTorch: one Gram pass, weights solved on the device, "
                "one combine in place; C++, CUDA, Triton and pure-torch backends",
    packages=find_packages(include=["gh_kernels", "gh_kernels.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    extras_require={"triton": ["triton"], "test": ["pytest", "hypothesis", "numpy"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
