"""The GPU check (`python -m benchmarks.gpu_check`), one module per job.

- `driver`: builds the CUDA extension, runs the stages each in its own process under a time budget,
  rewrites the report after every stage, prints a short table last;
- `stage`: the entry point of one stage process (device set-up, TF32 off, the rows it writes);
- `rows`: the row record, the report files (markdown, CSV) and the short summary;
- `compare`: the tolerance policy and the spike-flip rule of every correctness row;
- `timing`: device timing (do_bench / CUDA events) and the measured copy bandwidth;
- `sizes`: the paper's shapes, and tiny ones for `--cpu-interpret`;
- `stages/`: one module per stage (what it checks or times is in each module's docstring).
"""
