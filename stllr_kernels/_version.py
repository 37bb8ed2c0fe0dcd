"""The package's version, stated once: `stllr_kernels.__version__`, `python -m training --version`
and setup.py all read this file (the last two without importing the package, which needs torch)."""
__version__ = "0.1.0"
