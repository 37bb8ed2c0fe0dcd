"""One batch and one epoch of training or evaluation (docs/rule.md section 6).

The training modes differ only in when losses are taken and when the optimizer steps. A time step
whose backward is not the last of its optimizer step runs, forward and backward, inside
`sync_context(False)` (DDP's no_sync decides at the forward), so a distributed run all-reduces the
gradients once per optimizer step.

Step modes of S-TLLR training (`--step-mode`; all give the same gradients): `online` calls the
model one time step at a time; `sequence` once on the whole sequence (time-fused); `chunk` once per
chunk of `chunk_size` steps (time-fused within a chunk, states carried, memory flat in T), with a
backward per chunk that holds loss steps; `auto` is `chunk` for `stllr` and `online` for
`stllr_online` (which steps the optimizer at every loss step). BPTT takes `online` (`auto`) or
`sequence`; a chunk would cut its gradient at the chunk's start, so `chunk` is refused with it.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from stllr_kernels.chunks import Chunk, chunk_bounds

from .guard import FiniteGuard
from .interrupts import NEVER, StopFlag
from .models.common import one_hot
from .precision import full

TRAINING_MODES = ("stllr_online", "stllr", "bptt")
STEP_MODES = ("auto", "online", "sequence", "chunk")
LOSSES = ("MSE", "BCE", "CE")


class StepLoss:
    """loss(logits [B, C], labels [B]) with mean reduction; MSE and BCE compare with one-hot labels
    (BCE on logits). `over_steps(out [D, B, C], labels)` is the sum of the per-step losses over the D
    steps as one loss over all D x B rows (a few ops instead of a few per step), the same value and
    gradient: each per-step mean divides by the same count (B, or B x C)."""

    def __init__(self, name: str, num_classes: int):
        if name not in LOSSES:
            raise ValueError(f"loss: expected one of {list(LOSSES)}, got {name!r}")
        self.name, self.num_classes = name, num_classes

    def __call__(self, out: Tensor, labels: Tensor) -> Tensor:
        if self.name == "CE":
            return F.cross_entropy(out, labels)
        target = one_hot(labels, self.num_classes, out.dtype)
        if self.name == "MSE":
            return F.mse_loss(out, target)
        return F.binary_cross_entropy_with_logits(out, target)

    def over_steps(self, out: Tensor, labels: Tensor) -> Tensor:
        steps, batch, classes = out.shape
        if self.name == "CE":
            return F.cross_entropy(out.flatten(0, 1), labels.repeat(steps), reduction="sum") / batch
        target = one_hot(labels, self.num_classes, out.dtype).expand_as(out)
        if self.name == "MSE":
            return F.mse_loss(out, target, reduction="sum") / (batch * classes)
        return F.binary_cross_entropy_with_logits(out, target, reduction="sum") / (batch * classes)


def make_loss(name: str, num_classes: int) -> StepLoss:
    """The --loss option's loss (see StepLoss)."""
    return StepLoss(name, num_classes)


def loss_over_steps(loss: Callable[[Tensor, Tensor], Tensor], out: Tensor, labels: Tensor) -> Tensor:
    """sum_t loss(out[t], labels) over out [D, B, C]: in one loss where `loss` offers it (StepLoss),
    else per step (any user callable)."""
    if hasattr(loss, "over_steps"):
        return loss.over_steps(out, labels)
    return sum(loss(out[t], labels) for t in range(out.shape[0]))


def resolve_step_mode(training_mode: str, step_mode: str) -> str:
    """The step mode a run uses: `auto` is `chunk` for the `stllr` mode, else `online`."""
    if step_mode not in STEP_MODES:
        raise ValueError(f"step_mode: expected one of {list(STEP_MODES)}, got {step_mode!r}")
    if training_mode == "bptt" and step_mode == "chunk":
        raise ValueError("step_mode: BPTT back-propagates through the whole sequence, and a chunk would "
                         "cut its gradient; expected 'online', 'sequence' or 'auto', got 'chunk'")
    if step_mode != "auto":
        return step_mode
    return "chunk" if training_mode == "stllr" else "online"


def sequence_chunks(steps: int, loss_steps: int, step_mode: str, chunk_size: Optional[int]) -> list:
    """The model calls of a time-fused step mode: the whole sequence for `sequence` (and for `chunk`
    without a chunk size), else `chunk_bounds`' chunks (aligned on the loss window)."""
    loss_steps = min(loss_steps, steps)
    if step_mode != "chunk" or chunk_size is None:
        return [Chunk(0, steps, loss_steps)]
    return chunk_bounds(steps, loss_steps, chunk_size)


def no_sync_context(last: bool) -> ContextManager:
    """Default: every backward syncs (single process). DDP passes model.no_sync for last=False."""
    return contextlib.nullcontext()


@dataclass
class Trainer:
    """What one batch needs besides the data: model, optimizer, loss and the mode flags."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[Tensor, Tensor], Tensor]
    training_mode: str = "stllr"
    step_mode: str = "online"
    delay_ls: int = 5
    sync_context: Callable[[bool], ContextManager] = field(default=no_sync_context)
    meter: Optional["SavedTensorMeter"] = None
    # --precision (training.precision): the context of the model's forward, and the GradScaler of 16-mixed
    autocast: Callable[[], ContextManager] = field(default=contextlib.nullcontext)
    scaler: Optional["torch.amp.GradScaler"] = None
    chunk_size: Optional[int] = None  # step mode chunk: time steps per model call (None: all)

    def __post_init__(self):
        self.step_mode = resolve_step_mode(self.training_mode, self.step_mode)

    def run_model(self, call, *args) -> Tensor:
        """model.step / model.sequence under --precision's autocast; logits in float32 at least."""
        with self.autocast():
            return full(call(*args))

    def backward(self, loss: Tensor, last: bool) -> None:
        with self.sync_context(last):
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        if self.meter is not None:
            self.meter.released()

    def optimizer_step(self) -> None:
        if self.scaler is None:
            self.optimizer.step()
        else:  # skips the step when a gradient is not finite, and adapts the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def train_batch(self, x: Tensor, labels: Tensor) -> Tensor:
        """Train on one batch x [T, B, ...]; returns the prediction sum_t out_t [B, C] (detached)."""
        model, opt = self.model, self.optimizer
        T = x.shape[0]
        first_loss = T - min(self.delay_ls, T)  # steps t >= T - D get a learning signal
        model.reset_states()
        model.feedback.set_target(labels)
        if self.training_mode == "bptt":
            opt.zero_grad(set_to_none=True)
            if self.step_mode == "sequence":
                pred = self.run_model(model.sequence, x, T).sum(0)
            else:
                pred = sum(self.run_model(model.step, x[t]) for t in range(T))
            self.backward(self.loss(pred, labels), last=True)
            self.optimizer_step()
            return pred.detach()
        if self.training_mode == "stllr" and self.step_mode in ("sequence", "chunk"):
            return self._train_chunks(x, labels, T - first_loss)
        online = self.training_mode == "stllr_online"
        if not online:
            opt.zero_grad(set_to_none=True)
        pred = 0
        for t in range(T):
            last = online or t == T - 1
            # DDP decides at the forward whether the next backward syncs: the context spans both
            with self.sync_context(last), torch.set_grad_enabled(t >= first_loss):
                out = self.run_model(model.step, x[t])
                pred = pred + out.detach()
                if t >= first_loss:
                    if online:
                        opt.zero_grad(set_to_none=True)
                    self.backward(self.loss(out, labels), last=True)
                    if online:
                        self.optimizer_step()
        if not online:
            self.optimizer_step()
        return pred

    def _train_chunks(self, x: Tensor, labels: Tensor, loss_steps: int) -> Tensor:
        """Time-fused S-TLLR: the model called on each chunk (one for `sequence`), its states
        carried; a chunk with loss steps takes the loss on them and runs its backward, the others
        run without autograd; one optimizer step after the sequence."""
        model, opt = self.model, self.optimizer
        pieces = sequence_chunks(x.shape[0], loss_steps, self.step_mode, self.chunk_size)
        last = max((i for i, c in enumerate(pieces) if c.loss_steps), default=-1)
        opt.zero_grad(set_to_none=True)
        pred = 0
        for i, (start, stop, n) in enumerate(pieces):
            # DDP decides at the forward whether the next backward syncs: the context spans both
            with self.sync_context(i == last), torch.set_grad_enabled(n > 0):
                out = self.run_model(model.sequence, x[start:stop], n)
                if n:
                    self.backward(loss_over_steps(self.loss, out[out.shape[0] - n:], labels), last=i == last)
            pred = pred + out.detach().sum(0)
        self.optimizer_step()
        return pred


def predict(model: torch.nn.Module, x: Tensor, step_mode: str = "online",
            chunk_size: Optional[int] = None) -> Tensor:
    """Evaluation: sum_t out_t under no_grad (step modes sequence and chunk: time-fused calls), in
    float32 at least (see training.precision.full)."""
    with torch.no_grad():
        model.reset_states()
        model.feedback.set_target(None)
        if step_mode in ("sequence", "chunk"):
            return sum(full(model.sequence(x[start:stop], 0)).sum(0)
                       for start, stop, _ in sequence_chunks(x.shape[0], 0, step_mode, chunk_size))
        return sum(full(model.step(x[t])) for t in range(x.shape[0]))


class SavedTensorMeter:
    """Peak bytes held for backward by autograd (every tensor a Function saved), over a block.

    Measures what S-TLLR saves (one step at a time online) against BPTT (every step), on any
    device; a tensor saved twice counts twice, so it is an upper bound. A backward frees its graph's
    saved tensors, so `released()` (called after each backward) sets the count back to zero: no
    finalizer per tensor, where a Ctrl-C could land and be lost.
    """

    def __init__(self):
        self.current = self.peak = 0

    def _pack(self, tensor: Tensor) -> Tensor:
        self.current += tensor.numel() * tensor.element_size()
        self.peak = max(self.peak, self.current)
        return tensor

    def released(self) -> None:
        self.current = 0

    @contextlib.contextmanager
    def measure(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self
        self.current = 0


def topk_correct(pred: Tensor, labels: Tensor, ks=(1, 5)) -> list:
    """Number of samples whose label is among the top-k predictions, for each k."""
    top = pred.topk(min(max(ks), pred.shape[1]), dim=1).indices
    hits = top.eq(labels[:, None])
    return [int(hits[:, :k].any(1).sum()) for k in ks]


@dataclass
class EpochResult:
    acc1: float
    acc5: float
    loss: float
    seconds: float
    samples: int
    saved_peak_mb: float = 0.0


def run_epoch(loader, device, loss_fn, trainer: Optional[Trainer] = None, model=None,
              step_mode: str = "online", desc: str = "", print_freq: int = 0, log=None,
              show_progress: bool = True, stop: StopFlag = NEVER, guard: Optional[FiniteGuard] = None,
              chunk_size: Optional[int] = None) -> EpochResult:
    """Train (trainer given) or evaluate (model given) over one pass of `loader`.

    Between batches, a set `stop` flag raises StopRequested; `guard` watches the outputs and
    weights for non-finite values (read once per print interval and at the end: NonFinite).
    """
    model = trainer.model if trainer is not None else model
    model.train(trainer is not None)
    start = time.perf_counter()
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    meter = SavedTensorMeter()
    bar = tqdm(loader, desc=desc, leave=False, disable=not show_progress, dynamic_ncols=True)
    try:
        for i, (x, labels) in enumerate(bar):
            stop.check()
            x, labels = x.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if trainer is not None:
                trainer.meter = meter
                try:
                    with meter.measure():
                        pred = trainer.train_batch(x, labels)
                except Exception:
                    if guard is not None:
                        guard.explain_failure(i + 1)
                    raise
            else:
                pred = predict(model, x, step_mode, chunk_size)
            with torch.no_grad():
                batch_loss = loss_fn(pred, labels)
            if guard is not None:
                guard.observe(i + 1, pred, batch_loss)
            loss_sum += float(batch_loss) * len(labels)
            c1, c5 = topk_correct(pred, labels)
            n, correct1, correct5 = n + len(labels), correct1 + c1, correct5 + c5
            bar.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{100.0 * correct1 / n:.2f}")
            if print_freq and i % print_freq == print_freq - 1:
                if guard is not None:
                    guard.check(i + 1)
                if log is not None:
                    log(f"{desc} [{i + 1}/{len(loader)}] loss {loss_sum / n:.4e} acc@1 {100.0 * correct1 / n:.2f} "
                        f"acc@5 {100.0 * correct5 / n:.2f}")
    finally:  # also on an exception: the message that follows starts on a clean line
        bar.close()
    if guard is not None:
        guard.check(n and len(loader))
    stop.check()
    samples, n = n, max(n, 1)
    return EpochResult(100.0 * correct1 / n, 100.0 * correct5 / n, loss_sum / n,
                       time.perf_counter() - start, samples, meter.peak / 2 ** 20)
