"""The two image resizes of the original pipelines (docs/rule.md section 7.1), in torch.

torchvision does not import beside this project's torch, so its two code paths are re-stated:

- `resize_integer`: torchvision's `Resize` on an integer tensor (DVS Gesture): cast to float,
  bilinear interpolation with antialiasing (torch's `interpolate(..., antialias=True)`, the very
  call torchvision makes), then `round` (half to even) back to the integer type.
- `resize_la_uint8`: torchvision's `ToPILImage` + `Resize` on a 2-channel image (CIFAR10-DVS): Pillow
  treats it as a luminance + alpha ("LA") image and resamples it premultiplied: L*A/255, both bands
  resized by Pillow's bilinear filter in 8-bit fixed point (horizontal pass, then vertical, each
  rounded to uint8), then L divided by the resized A. Reproduced here integer for integer.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

# Pillow's Resample.c: 8-bit passes use coefficients in fixed point with this many fraction bits
_PIL_PRECISION_BITS = 32 - 8 - 2


def resize_integer(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Integer frames [..., H, W] -> [..., size, size] of the same dtype, as torchvision's
    `Resize(size, antialias=True)` returns for an integer tensor."""
    if frames.is_floating_point():
        raise ValueError(f"resize_integer: expected an integer tensor, got {frames.dtype}")
    lead = frames.shape[:-2]
    flat = frames.reshape(-1, 1, *frames.shape[-2:]).float()
    out = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return torch.round(out).to(frames.dtype).reshape(*lead, size, size)


def wrap_to_uint8(counts: torch.Tensor) -> torch.Tensor:
    """`counts.mul(255).byte()` of torchvision's ToPILImage on integer-valued counts: modulo 256
    (0 -> 0, 1 -> 255, 2 -> 254, ...)."""
    return torch.remainder(counts.to(torch.int64) * 255, 256).to(torch.uint8)


@lru_cache(maxsize=None)
def pil_bilinear_coefficients(in_size: int, out_size: int) -> torch.Tensor:
    """Pillow's bilinear resampling weights [out_size, in_size] in 8-bit fixed point (int64):
    a triangle of half-width max(in/out, 1) around each output pixel's centre, normalised."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # bilinear filter support 1.0, stretched when shrinking
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        first = max(int(center - support + 0.5), 0)   # C's (int) truncates, as int() does
        end = min(int(center + support + 0.5), in_size)
        x = torch.arange(first, end, dtype=torch.float64)
        w = (1.0 - ((x - center + 0.5) / filterscale).abs()).clamp(min=0.0)
        total = float(w.sum())
        weights[i, first:end] = w / total if total != 0.0 else w
    one = float(1 << _PIL_PRECISION_BITS)
    return torch.where(weights < 0, torch.trunc(weights * one - 0.5), torch.trunc(weights * one + 0.5)).long()


def _pil_pass(image: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """One 8-bit pass of Pillow along the last dimension: sum of pixel x weight plus half, shifted
    and clipped to 0..255 (exact: every value stays below 2**53 in float64)."""
    acc = image.to(torch.float64) @ coefficients.to(torch.float64).T + float(1 << (_PIL_PRECISION_BITS - 1))
    return torch.clamp(torch.floor(acc / float(1 << _PIL_PRECISION_BITS)), 0, 255).to(torch.int64)


def pil_resize_uint8(band: torch.Tensor, size: int) -> torch.Tensor:
    """Pillow's `Image.resize((size, size), BILINEAR)` of 8-bit bands [..., H, W] (int64 in, int64 out)."""
    height, width = band.shape[-2:]
    if (height, width) == (size, size):
        return band.to(torch.int64)
    out = band.to(torch.int64)
    if width != size:  # horizontal pass first, as Pillow does
        out = _pil_pass(out, pil_bilinear_coefficients(width, size))
    if height != size:
        out = _pil_pass(out.transpose(-1, -2), pil_bilinear_coefficients(height, size)).transpose(-1, -2)
    return out


def resize_la_uint8(image: torch.Tensor, size: int) -> torch.Tensor:
    """An 8-bit luminance + alpha image [..., 2, H, W] (channel 0 = L, channel 1 = A) resized as
    Pillow resizes an "LA" image: premultiplied (La), resampled, unpremultiplied. uint8 out."""
    if image.dtype != torch.uint8 or image.dim() < 3 or image.shape[-3] != 2:
        raise ValueError(f"resize_la_uint8: expected uint8 [..., 2, H, W], got {image.dtype} {tuple(image.shape)}")
    lum, alpha = image[..., 0, :, :].to(torch.int64), image[..., 1, :, :].to(torch.int64)
    tmp = lum * alpha + 128
    premultiplied = ((tmp >> 8) + tmp) >> 8          # Pillow's MULDIV255
    lum_small = pil_resize_uint8(premultiplied, size)
    alpha_small = pil_resize_uint8(alpha, size)
    unpremultiplied = torch.where(alpha_small > 0,
                                  torch.clamp((255 * lum_small) // alpha_small.clamp(min=1), max=255),
                                  torch.zeros_like(lum_small))
    return torch.stack([unpremultiplied, alpha_small], dim=-3).to(torch.uint8)
