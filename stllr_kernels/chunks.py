"""Chunked time-fused calls: a sequence [T, B, ...] split along time into chunks of C steps.

S-TLLR passes no gradient between time steps, so a layer called on consecutive chunks, its states
carried from call to call, gives exactly the outputs, states and gradients of one call on the whole
sequence, with a backward per chunk, while keeping only one chunk's steps for backward: the speed
of the time-fused mode at a memory that does not grow with T.

Each chunk gets its share of the sequence's loss window (the last `loss_steps` steps): the number
of its own final steps that fall in the window, which is what the layers' `loss_steps` means.
Chunks before the window get 0 and can run under `torch.no_grad()`:

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
    """The chunks of a sequence of `steps` time steps whose last `loss_steps` get a loss: consecutive
    `Chunk`s of `chunk_size` steps from step 0 (the last one shorter when chunk_size does not divide
    steps), each with its share of the loss window."""
    steps = _check_int("steps", steps, 1)
    loss_steps = _check_int("loss_steps", loss_steps, 0, steps)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    first_loss = steps - loss_steps
    return [Chunk(start, min(start + chunk_size, steps),
                  max(0, min(start + chunk_size, steps) - max(start, first_loss)))
            for start in range(0, steps, chunk_size)]


def chunks(x: Tensor, loss_steps: int, chunk_size: int) -> Iterator[Tuple[Tensor, int]]:
    """(x_chunk, chunk_loss_steps) for consecutive chunks of `chunk_size` steps of x [T, B, ...]:
    x_chunk is a view x[start:stop], chunk_loss_steps the number of its final steps among the last
    `loss_steps` steps of the sequence (0 for a chunk before the loss window)."""
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x: expected a sequence tensor [T, B, ...], got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    bounds = chunk_bounds(x.shape[0], loss_steps, chunk_size)  # checked now, not at the first chunk
    return ((x[start:stop], n) for start, stop, n in bounds)
