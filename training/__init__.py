"""The training application of stllr-kernels: `python -m training`, a drop-in for the original
S-TLLR code's `main.py` (same flags), with models built from `stllr_kernels.nn`.

Modules: `config` (the frozen RunConfig and its flag table), `cli` (the command line: parsing, and
the one place typed errors become messages and exit codes), `errors` (those typed errors), `models`
(architectures), `data` and `datasets` (datasets, loaders), `engine` (training modes and
evaluation), `checkpoint` (atomic, weights-only, checksummed), `records` (log, curves, plots),
`runner` (trials and epochs), `run_flags` (the flags a checkpoint records; what --resume accepts),
`run_dir` (what --save-path may be), `interrupts` (SIGINT/SIGTERM as a stop request), `guard`
(divergence detection on the device), `distributed` (torchrun), `demo` (the embedded Digits
comparison).

From Python: `runner.run(RunConfig(dataset="Digits", arch="digits_stllr", epochs=5))`.
"""
