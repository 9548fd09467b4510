"""The package version: the one source (setup.py reads this file; gh_kernels.__version__ imports it)."""
__version__ = "0.3.0"
