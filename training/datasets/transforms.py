"""Frame transforms in plain torch (no torchvision), on float tensors [T, C, H, W].

One random draw per sample, shared by all its time steps: a crop moves the whole recording.
Randomness comes from torch's generator, which the DataLoader seeds differently in each worker.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F


def _check_frames(frames: torch.Tensor, name: str = "frames") -> None:
    if frames.dim() != 4 or not frames.is_floating_point():
        raise ValueError(f"{name} must be a float tensor [T, C, H, W], got {tuple(frames.shape)} {frames.dtype}")


def resize(frames: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinear resize of every frame to `size` (int: square), anti-aliased when shrinking, like
    torchvision's Resize on tensors."""
    _check_frames(frames)
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(frames.shape[-2:]) == size:
        return frames
    return F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)


def random_crop(frames: torch.Tensor, padding: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pad H and W by `padding` zeros on each side and cut back to the original size at a random
    offset (the same offset for every time step)."""
    _check_frames(frames)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return frames
    height, width = frames.shape[-2:]
    padded = F.pad(frames, (padding, padding, padding, padding))
    top, left = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist()
    return padded[..., top:top + height, left:left + width]


def normalize(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(frames - mean[c]) / std[c] for each channel c (dim -3)."""
    _check_frames(frames)
    if len(mean) != frames.shape[-3] or len(std) != frames.shape[-3]:
        raise ValueError(f"mean/std need one value per channel ({frames.shape[-3]}), got {len(mean)}/{len(std)}")
    mean_t = torch.tensor(mean, dtype=frames.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=frames.dtype).view(-1, 1, 1)
    return (frames - mean_t) / std_t


class Compose:
    """Apply callables in order (picklable, so it crosses into loader workers)."""

    def __init__(self, *steps: Callable):
        self.steps = steps

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            frames = step(frames)
        return frames


class RandomCrop:
    def __init__(self, padding: int):
        self.padding = padding

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return random_crop(frames, self.padding)


class Divide:
    """frames / divisor (8-bit levels -> [0, 1] as torchvision's ToTensor divides by 255)."""

    def __init__(self, divisor: float):
        self.divisor = float(divisor)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return frames / self.divisor


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return normalize(frames, self.mean, self.std)
