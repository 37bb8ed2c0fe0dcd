"""The training application of stllr-kernels: `python -m training`, a drop-in for the original
S-TLLR code's `main.py` (same flags), with models built from `stllr_kernels.nn`.

Modules: `cli` (flags and their checks), `models` (architectures), `data` (datasets, loaders),
`engine` (training modes and evaluation), `checkpoint`, `records` (log, curves, plots), `runner`
(trials and epochs), `demo` (the embedded Digits comparison).
"""
