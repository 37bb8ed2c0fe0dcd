"""Chunked time-fused calls: a sequence [T, B, ...] split along time into chunks of C steps.

S-TLLR passes no gradient between time steps, so a layer called on consecutive chunks, its states
carried from call to call, gives exactly the outputs, states and gradients of one call on the whole
sequence, with a backward per chunk, while keeping only one chunk's steps for backward: the speed
of the time-fused mode at a memory that does not grow with T.

The split is aligned on the sequence's loss window (its last `loss_steps` steps): the steps before
the window are cut into chunks of C from step 0, the window into chunks of C from its first step,
so that no chunk straddles the window's start (such a chunk would run its earlier steps with
autograd on and keep their activations for nothing). Each chunk's `loss_steps` is then 0 (before
the window: it can run under `torch.no_grad()`) or its length (every step takes a loss):

    reset_states(net)
    for x_chunk, n in chunks(x, loss_steps=D, chunk_size=10):
        with torch.set_grad_enabled(n > 0):
            out = net(x_chunk, loss_steps=n)
        if n:
            loss_fn(out[-n:]).backward()
    optimizer.step()
"""
from __future__ import annotations

from numbers import Integral
from typing import Iterator, NamedTuple, Tuple

from torch import Tensor

__all__ = ["Chunk", "chunk_bounds", "chunks"]


class Chunk(NamedTuple):
    """Steps [start, stop) of the sequence; the last `loss_steps` of them are in the loss window."""

    start: int
    stop: int
    loss_steps: int


def _check_int(name: str, value, low: int, high=None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low or (
            high is not None and value > high):
        expected = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return int(value)


def chunk_bounds(steps: int, loss_steps: int, chunk_size: int) -> list:
    """The chunks of a sequence of `steps` time steps whose last `loss_steps` get a loss, as
    consecutive `Chunk`s: the steps before the loss window in chunks of `chunk_size` from step 0,
    then the window in chunks of `chunk_size` from its first step (in each part the last chunk is
    shorter when chunk_size does not divide it); loss_steps of a chunk: 0 before the window, its
    length inside."""
    steps = _check_int("steps", steps, 1)
    loss_steps = _check_int("loss_steps", loss_steps, 0, steps)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    first_loss = steps - loss_steps
    before = [Chunk(start, min(start + chunk_size, first_loss), 0) for start in range(0, first_loss, chunk_size)]
    window = [Chunk(start, min(start + chunk_size, steps), min(chunk_size, steps - start))
              for start in range(first_loss, steps, chunk_size)]
    return before + window


def chunks(x: Tensor, loss_steps: int, chunk_size: int) -> Iterator[Tuple[Tensor, int]]:
    """(x_chunk, chunk_loss_steps) for consecutive chunks of x [T, B, ...] of up to `chunk_size`
    steps, split as `chunk_bounds` says: x_chunk is a view x[start:stop], chunk_loss_steps the
    number of its steps among the last `loss_steps` of the sequence (0 before the loss window)."""
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x: expected a sequence tensor [T, B, ...], got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    bounds = chunk_bounds(x.shape[0], loss_steps, chunk_size)  # checked now, not at the first chunk
    return ((x[start:stop], n) for start, stop, n in bounds)
