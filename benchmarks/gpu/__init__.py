"""The GPU check (`python -m benchmarks.gpu_check`, docs/gpu-check.md), one module per job.

- `driver`: lists the dependencies, builds the CUDA extension, runs the stages each in its own
  process under a time budget, rewrites the report after every stage, prints a short table last;
- `deps`: the modules and tools the check needs, found or missing, and what each missing one skips;
- `stage`: the entry point of one stage process (device set-up, exact oracles, the rows it writes);
- `rows`: the row record, the report files (markdown, CSV) and the short summary;
- `compare`: how a correctness row decides (the package's tolerance policy, the spike-flip rule);
- `timing`: device timing (do_bench / CUDA events), its labels, and the measured copy bandwidth;
- `triton_configs`: every autotune config of every Triton kernel, one at a time;
- `procs`: child processes (pytest, compute-sanitizer) that end with everything they started;
- `sizes`: the paper's shapes, and tiny ones for `--cpu-interpret`;
- `stages/`: one module per stage (what it checks or times is in each module's docstring).
"""
