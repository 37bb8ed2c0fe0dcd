"""Ops per time step of a training batch, forward + backward, per model and execution mode.

On every device: the ops dispatched (`OpCounter`, a TorchDispatchMode: every ATen and custom op
that reaches the dispatcher from Python or from autograd, views and detaches excluded, the user's
loss and autograd's gradient accumulation included; the optimizer
step is not). A C++ op of the extension counts once even when it calls ATen GEMMs inside. Host
synchronisations (`aten::_local_scalar_dense`, what `.item()` / `bool(t)` dispatch) are counted
apart. On a GPU also the CUDA kernels launched (torch.profiler), the figure that bounds a step there.

    python -m benchmarks.launches            # writes benchmarks/results/launches_<device>.{md,csv}
    python -m benchmarks.launches --quick    # tiny sizes
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import stllr_kernels
from benchmarks import common, networks
from benchmarks.networks import GESTURE, SHD, ModelSpec
from stllr_kernels.chunks import chunks
from training.config import RunConfig

HOST_SYNC_OPS = frozenset({"_local_scalar_dense"})
# the goals for the SHD net, ops per time step
GOALS = {"online": 20, "time-fused": 4}
CHUNK_SIZE = RunConfig().chunk_size  # training's default --chunk-size


class OpCounter(TorchDispatchMode):
    """Counts the ops dispatched while active, by name; views (detach included) are not ops."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.host_syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_SYNC_OPS:
            self.host_syncs += 1
        elif not func.is_view:
            self.ops[f"{func.namespace}::{name}"] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def batch_runner(spec: ModelSpec, mode: str, batch: int, device) -> Callable[[], None]:
    """Forward and backward of one batch as the README's loops write them (no optimizer step).

    online: one call per time step, `cross_entropy(out_t, y).backward()` at each loss step;
    time-fused: one call on the whole sequence with loss_steps=D and one backward of one
    cross-entropy over all D x B loss rows (summed over steps, mean over the batch); chunk: the
    same on the chunks of the training default's size (`stllr_kernels.chunks`), a backward per
    chunk with loss steps."""
    trainer = networks.make_trainer(spec, "stllr_online", device)
    model = trainer.model
    x, y = networks.make_batch(spec, batch, device)
    T, D = spec.T, spec.delay_ls

    def online():
        model.reset_states()
        for t in range(T):
            with torch.set_grad_enabled(t >= T - D):
                out = model(x[t])
                if t >= T - D:
                    F.cross_entropy(out, y).backward()

    def backward_last(out, n):
        """One cross-entropy over the last n steps' rows of out [steps, B, C] (summed over the
        steps, mean over the batch), and its backward."""
        (F.cross_entropy(out[-n:].flatten(0, 1), y.repeat(n), reduction="sum") / batch).backward()

    def fused():
        model.reset_states()
        backward_last(model(x, D), D)

    def chunked():
        model.reset_states()
        for x_chunk, n in chunks(x, D, CHUNK_SIZE):
            with torch.set_grad_enabled(n > 0):
                out = model(x_chunk, n)
            if n:
                backward_last(out, n)

    run = {"online": online, "time-fused": fused, "chunk": chunked}[mode]

    def run_fresh():
        for p in model.parameters():
            p.grad = None
        run()
    return run_fresh


def count_ops(fn: Callable[[], None]) -> OpCounter:
    fn()  # a first call builds lazily created state (autotuning, caches) outside the count
    counter = OpCounter()
    with counter:
        fn()
    return counter


def count_cuda_launches(fn: Callable[[], None]) -> int:
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def configs(quick: bool) -> list[tuple[ModelSpec, int]]:
    """(model, batch): the SHD net at B=16, T=20, 18 loss steps (where the goals were set) and the
    Gesture VGG at its paper T and loss steps (batch 1: a count does not depend on the batch)."""
    if quick:
        return [(SHD.with_(T=4, delay_ls=3), 2), (GESTURE.with_(T=2, delay_ls=1), 1)]
    return [(SHD.with_(T=20, delay_ls=18), 16), (GESTURE, 1)]


def measure(spec: ModelSpec, batch: int, device: torch.device) -> list[dict]:
    rows = []
    for mode in ("online", "time-fused", "chunk"):
        run = batch_runner(spec, mode, batch, device)
        counter = count_ops(run)
        row = {"model": spec.name, "mode": mode, "B": batch, "T": spec.T, "loss_steps": spec.delay_ls,
               "backend": stllr_kernels.get_backend_name(device.type),
               "ops": counter.total, "ops_per_step": round(counter.total / spec.T, 2),
               "host_syncs": counter.host_syncs,
               "top_ops": ", ".join(f"{k.split('::')[1]} {v}" for k, v in counter.ops.most_common(8))}
        if device.type == "cuda":
            launches = count_cuda_launches(run)
            row["cuda_launches"] = launches
            row["cuda_launches_per_step"] = round(launches / spec.T, 2)
        rows.append(row)
    return rows


def main(argv=None) -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    args = common.parse(p, argv)
    device = torch.device(args.device)
    report = common.Report("launches", "Ops per time step (forward + backward)", args.out, device)
    rows = []
    for spec, batch in configs(args.quick):
        if args.models and spec.kind not in args.models.split(","):
            continue
        rows += measure(spec, batch, device)
    for r in rows:
        goal = GOALS.get(r["mode"]) if r["model"] == SHD.name else None
        r["goal"] = f"<= {goal}" if goal else ""
        print(f"{r['model']:16s} {r['mode']:10s} {r['ops_per_step']:7.2f} ops/step "
              f"({r['ops']} ops, {r['host_syncs']} host syncs)"
              + (f", {r['cuda_launches_per_step']} CUDA launches/step" if "cuda_launches" in r else ""))
    columns = ["model", "mode", "B", "T", "loss_steps", "backend", "ops", "ops_per_step", "goal",
               "host_syncs"] + (["cuda_launches_per_step"] if device.type == "cuda" else []) + ["top_ops"]
    report.section("Results",
                   "The forward and backward of one batch of the training package's model, as the "
                   "README's loops write them (`batch_runner`): online = one call per time step and "
                   "`cross_entropy(out_t, y).backward()` at each loss step; time-fused = one call on "
                   "the sequence with `loss_steps` and one cross-entropy over all loss rows; chunk = "
                   f"the same on chunks of {CHUNK_SIZE} steps (training's default `--chunk-size`), "
                   "a backward per chunk in the loss window; the "
                   "optimizer step excluded. `ops` counts every op dispatched (TorchDispatchMode): "
                   "ATen and custom ops from Python and from autograd (gradient accumulation "
                   "included), the user's cross-entropy included, "
                   "views and detaches excluded; an op of the C++ extension counts once, whatever it "
                   "calls inside. `host_syncs` counts `.item()`-style reads "
                   "(`aten::_local_scalar_dense`). A count does not depend on timing: one run is "
                   "exact. Goals (SHD net): online <= 20 ops per step, time-fused <= 4; chunk mode has "
                   "none of its own (a few ops per chunk more than time-fused).",
                   common.markdown_table(rows, columns))
    report.section("Before the layer glue (weight standardization once per sequence, one op per step)",
                   "The same command on the code before it (commit f74c966, run with this script: "
                   "`git archive f74c966 stllr_kernels training | tar -x -C DIR`, this `benchmarks/` "
                   "and the built extension copied beside them): SHD online 88.25 ops per step, "
                   "time-fused 22.80 (1 host sync); Gesture VGG online 201.10, time-fused 25.25 "
                   "(8 host syncs). Where the difference comes from: weight standardization once per "
                   "sequence with a one-op closed-form backward (it was recomputed and back-propagated "
                   "through ~20 ATen ops at every step); beta and theta once; one op per step for the "
                   "recurrent layer (input GEMM, recurrent GEMM, LIF and both traces) and for the "
                   "readout; one op for the recurrent backward; no zero gradients materialized for "
                   "the states; the early-loss check on the device instead of a host read.")
    print("wrote", report.write(rows))


if __name__ == "__main__":
    main()
