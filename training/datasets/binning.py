"""Events -> count frames, with the slicing rules of tonic 1.4.3 (the version the original pinned),
written out here so that a newer tonic cannot change the paper's inputs (docs/rule.md section 7.1).

Events are tonic's structured arrays (fields t, x, p and, for cameras, y), sorted by t.
"""
from __future__ import annotations

import math

import numpy as np


def time_slices(t: np.ndarray, window: int, include_incomplete: bool = False) -> list:
    """[(first, end)] event index ranges of consecutive windows of `window` starting at t[0]
    (tonic's SliceByTime): floor((t[-1] - t[0] - window) / window) + 1 windows, at least one (ceil
    instead of floor when `include_incomplete`). A window holds the events with start <= t < end."""
    if len(t) == 0:
        return []
    span = (int(t[-1]) - int(t[0]) - window) / window
    count = max((math.ceil(span) if include_incomplete else math.floor(span)) + 1, 1)
    starts = int(t[0]) + np.arange(count, dtype=np.int64) * window
    first = np.searchsorted(t, starts)
    end = np.searchsorted(t, starts + window)
    return list(zip(first.tolist(), end.tolist()))


def count_bins(events: np.ndarray, bounds, shape: tuple) -> np.ndarray:
    """int16 counts [len(bounds), *shape] of the events in each index range. `shape` is
    (polarities, height, width) for cameras and (polarities, channels) for SHD."""
    frames = np.zeros((len(bounds), *shape), dtype=np.int16)
    has_y = "y" in events.dtype.names
    for k, (first, end) in enumerate(bounds):
        part = events[first:end]
        polarity = part["p"].astype(np.int64) if shape[0] > 1 else np.zeros(len(part), np.int64)
        index = (k, polarity, part["y"].astype(np.int64), part["x"].astype(np.int64)) if has_y \
            else (k, polarity, part["x"].astype(np.int64))
        np.add.at(frames, index, 1)
    return frames


def time_frames(events: np.ndarray, window: int, shape: tuple) -> np.ndarray:
    """Counts in bins of `window` from the first event, the incomplete last bin dropped (tonic
    1.4.3's ToFrame(time_window=...)): at least one frame when there is any event."""
    return count_bins(events, time_slices(events["t"], window), shape)


def event_count_frames(events: np.ndarray, bins: int, shape: tuple) -> np.ndarray:
    """`bins` frames of N // bins consecutive events each, the last taking the remainder too
    (the original's CIFAR10-DVS integration, spikingjelly's split_by='number')."""
    n = len(events) // bins
    bounds = [(k * n, (k + 1) * n if k < bins - 1 else len(events)) for k in range(bins)]
    return count_bins(events, bounds, shape)
