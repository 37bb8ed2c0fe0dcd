"""Training on several processes (GPUs or CPU cores, one or many nodes), launched by torchrun.

    torchrun --nproc_per_node=N -m training ...                  (one node)
    torchrun --nnodes=M --nproc_per_node=N --rdzv_backend=c10d \
             --rdzv_endpoint=HOST:PORT --rdzv_id=JOB -m training ...   (on every node)

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a process that sees
WORLD_SIZE > 1 joins the group (NCCL on GPUs, Gloo on CPU) and trains a DistributedDataParallel
copy of the model on its share of each batch. `--batch-size` stays the global batch (the paper's
hyperparameters hold whatever the number of processes); each process takes batch-size / N.
Only rank 0 logs and writes files; epoch metrics are summed over ranks before anyone reads them.

S-TLLR takes several backward passes per optimizer step (one per step t >= T - delay_ls). DDP
decides at each *forward* whether the next backward all-reduces, so `sync_context(last)` wraps a
time step's forward and backward, and only the last of an optimizer step syncs: gradients are
all-reduced once per optimizer step, holding the sum of that step's local contributions.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import replace
from datetime import timedelta
from typing import Callable, ContextManager, Iterator, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

from .config import RunConfig
from .data import build_dataset
from .errors import CollectiveFailed, DistributedError
from .run_dir import refuse_previous_run
from .runner import run as run_trials


# ----------------------------------------------------------------------------- process group

def launched() -> bool:
    """True in a process started by torchrun (or anything setting its variables) with N > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """The process that logs and writes files (rank 0; the only one when not distributed)."""
    return rank() == 0


def init(config: RunConfig) -> torch.device:
    """Join the group of torchrun's variables; returns this process's device.

    GPUs: one per process, cuda:LOCAL_RANK, NCCL. CPU (--cpu, or no GPU): Gloo.
    """
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise DistributedError(f"distributed run: environment variable {name} is not set "
                                   "(start the processes with torchrun)")
    use_cuda = torch.cuda.is_available() and not config.cpu and not (config.device or "").startswith("cpu")
    if use_cuda:
        if local_rank() >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK {local_rank()} but only {torch.cuda.device_count()} GPUs "
                                   "on this node: --nproc_per_node must not exceed the GPU count")
        device = torch.device(f"cuda:{local_rank()}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=collective_timeout(config))
    return device


DEFAULT_TIMEOUT_MINUTES = 10.0


def collective_timeout(config) -> timedelta:
    """--dist-timeout: how long a collective may wait for a hung process before the job fails
    (instead of the backends' 30-minute default)."""
    return timedelta(minutes=getattr(config, "dist_timeout", None) or DEFAULT_TIMEOUT_MINUTES)


def is_timeout(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


# how Gloo and the c10d store word a connection that another process closed (it died, or failed
# and left): the others then fail at once, before any timeout
_LOST_PEER = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused")


def is_lost_peer(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(words in text for words in _LOST_PEER)


def _failure_label() -> str:
    return f"rank {rank() if active() else os.environ.get('RANK', '?')}"


def per_process_config(config: RunConfig, processes: int, device: torch.device) -> RunConfig:
    """The configuration one of `processes` runs: on `device`, with its share of the batches.

    --batch-size is global: each process takes an equal share (required to divide evenly, so that
    the average of the processes' gradients is the gradient of the global batch).
    """
    if config.batch_size % processes:
        raise DistributedError(f"--batch-size {config.batch_size} (the global batch) must be divisible by "
                               f"the number of processes {processes}")
    return replace(config, device=str(device), batch_size=config.batch_size // processes,
                   val_batch_size=max(1, -(-config.val_batch_size // processes)))


def main_first(fn: Callable[[], object]):
    """Run `fn` on rank 0 first (e.g. building the dataset cache) while the others wait; then on
    the others (which find the cache). If rank 0 fails, it raises (and reports) the error; the
    others stop with one line instead of waiting forever."""
    if not active():
        return fn()
    failed = [False]
    if is_main():
        try:
            result = fn()
        except BaseException:
            failed[0] = True
            dist.broadcast_object_list(failed, src=0)
            raise
        dist.broadcast_object_list(failed, src=0)
        return result
    dist.broadcast_object_list(failed, src=0)
    if failed[0]:
        raise DistributedError(f"rank {rank()}: stopped, as rank 0 failed to prepare the run (its message says why)")
    return fn()


# ----------------------------------------------------------------------------- model and data

class _DDP(DistributedDataParallel):
    """DDP that also answers the wrapped model's own attributes (reset_states, feedback, ...).

    step() and sequence() go through DDP's forward (which prepares the gradient all-reduce), then
    the model's, which accepts exactly the two forms.
    """

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def sequence(self, x: torch.Tensor, loss_steps: Optional[int] = None) -> torch.Tensor:
        return self(x, loss_steps)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


def wrap_model(model: torch.nn.Module, device: torch.device):
    """(DDP copy of `model`, sync_context) for the engine's Trainer.

    No buffer sync at each forward (broadcast_buffers=False, forward_sync_buffers=False in newer
    torch): the layers' states (membrane, traces) are plain attributes, reset per sequence on
    every rank, and the only buffers (DFA feedback matrices) never change, so rank 0's are
    broadcast once here (DDP's constructor broadcasts the parameters).
    DDP averages gradients over processes, which is the global batch's gradient for losses that
    are batch means; the DFA signal is a batch sum, so it is scaled by the number of processes.
    """
    feedback = getattr(model, "feedback", None)
    if feedback is not None and feedback.active:  # DFA's per-sample sum: see Feedback.signal_scale
        feedback.signal_scale = float(world_size())
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    ddp = _DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync)
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)

    def sync_context(last: bool) -> ContextManager:
        return contextlib.nullcontext() if last else ddp.no_sync()

    return ddp, sync_context


def train_sampler(dataset, seed: int) -> DistributedSampler:
    """This rank's shuffled share; every rank gets the same number of samples (the sampler repeats
    a few when the dataset does not divide evenly), so every rank takes the same number of steps."""
    return DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=False)


class ShardSampler(Sampler):
    """Evaluation: rank r takes items r, r+N, r+2N, ... (each item exactly once over all ranks;
    shares may differ by one, which is fine as evaluation has no collective ops)."""

    def __init__(self, dataset):
        self.indices = list(range(rank(), len(dataset), world_size()))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def reduce_result(result, device: torch.device):
    """An engine EpochResult over all ranks: counts and sums added; the slowest rank's time and
    the largest rank's memory peak."""
    if not active():
        return result
    n = result.samples
    totals = torch.tensor([result.acc1 * n / 100, result.acc5 * n / 100, result.loss * n, n],
                          dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    peaks = torch.tensor([result.seconds, getattr(result, "saved_peak_mb", 0.0)], dtype=torch.float64,
                         device=device)
    dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
    c1, c5, loss_sum, total = totals.tolist()
    total_n = max(int(round(total)), 1)
    extra = {"saved_peak_mb": peaks[1].item()} if hasattr(result, "saved_peak_mb") else {}
    return replace(result, acc1=100.0 * c1 / total_n, acc5=100.0 * c5 / total_n, loss=loss_sum / total_n,
                   seconds=peaks[0].item(), samples=int(round(total)), **extra)


# ----------------------------------------------------------------------------- the run

def run(config: RunConfig) -> dict:
    """`python -m training` in one process of a torchrun group.

    A collective that times out (a hung process) or loses its peer (a dead one) ends the run with
    one line naming this rank (CollectiveFailed); the command then ends the process at once.
    """
    try:
        device = init(config)
        n = world_size()
        local = per_process_config(config, n, device)
        if is_main():
            print(f"distributed: {n} processes ({dist.get_backend()}), global batch {config.batch_size} "
                  f"= {local.batch_size} per process", flush=True)
        # rank 0 checks --save-path (a refusal there must stop every rank, not leave them waiting in a
        # collective) and computes the frame cache; the others then only read it
        main_first(lambda: (is_main() and not local.resume and refuse_previous_run(local.save_path),
                            build_dataset(local, True), build_dataset(local, False)))
        return run_trials(local, is_main=is_main(), wrap_model=lambda model: wrap_model(model, device),
                          train_sampler_fn=lambda dataset: train_sampler(dataset, local.seed),
                          test_sampler_fn=ShardSampler,
                          reduce_result=lambda result: reduce_result(result, device))
    except RuntimeError as exc:  # Gloo, NCCL and the c10d store raise RuntimeError subclasses
        if not active():  # the rendezvous itself: no group, no collective in flight
            if not is_timeout(exc):
                raise
            raise DistributedError(
                f"{_failure_label()}: the {os.environ.get('WORLD_SIZE')} processes did not all join within "
                f"--dist-timeout {collective_timeout(config)} (is every process started, with the same "
                "MASTER_ADDR and MASTER_PORT?)") from None
        if is_timeout(exc):
            raise CollectiveFailed(
                f"{_failure_label()}: a collective waited longer than --dist-timeout {collective_timeout(config)} "
                "(another process hung or died); the last checkpoint is kept") from None
        if is_lost_peer(exc):
            raise CollectiveFailed(
                f"{_failure_label()}: another process of the job stopped (it closed its connection: it died, "
                "or failed and left; its own message says why); the last checkpoint is kept") from None
        raise
    finally:
        if active():
            dist.destroy_process_group()
