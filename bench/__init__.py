"""Benchmarks for gh_kernels (``python -m bench --help``)."""
