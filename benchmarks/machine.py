"""How close a training batch runs to the machine: the batch's counted GEMMs replayed as plain
`torch.mm` calls of the same shapes.

`gemm_shapes(fn)` records the (m, k, n) of every matmul and convolution fn() runs, forward and
backward (a convolution as the GEMM of its im2col form: the same multiply-accumulates), with the
`torch` backend as benchmarks.macs counts them (a compiled backend does the same products inside
its own ops, invisible to a recorder). `mm_replay(shapes)` is a callable running those GEMMs with
torch.mm. Timed in the same run as the batch (interleaved), t_mm / t_batch is the batch's counted
MACs per second as a share of torch.mm's throughput on its own GEMM shapes: 100 % means the batch
spends all its time in GEMMs as fast as torch.mm runs them.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import stllr_kernels

aten = torch.ops.aten
# a replayed operand larger than this along a dimension is run in blocks (same MACs, bounded memory;
# blocks of this size run at torch.mm's full throughput)
MAX_DIM = 8192


def _conv_gemms(input_shape, weight_shape, out_shape, groups: int, grad_input: bool, grad_weight: bool,
                forward: bool) -> list:
    """The (m, k, n) GEMMs of a convolution in im2col form, per group: forward out = cols @ W^T,
    grad_input cols = grad_out @ W, grad_weight = grad_out^T @ cols."""
    batch, c_out = out_shape[0], weight_shape[0]
    patch = math.prod(weight_shape[1:])           # (C_in / groups) * kh * kw
    pixels = batch * math.prod(out_shape[2:])     # output positions of the whole batch
    per = c_out // groups
    gemms = []
    if forward:
        gemms += [(pixels, patch, per)] * groups
    if grad_input:
        gemms += [(pixels, per, patch)] * groups
    if grad_weight:
        gemms += [(per, pixels, patch)] * groups
    return gemms


class GemmRecorder(TorchDispatchMode):
    """Counts the (m, k, n) of each mm / addmm / bmm / baddbmm / convolution (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in (aten.mm, aten.addmm):
            a, b = (args[0], args[1]) if packet is aten.mm else (args[1], args[2])
            self.shapes[(a.shape[0], a.shape[1], b.shape[1])] += 1
        elif packet in (aten.bmm, aten.baddbmm):
            a, b = (args[0], args[1]) if packet is aten.bmm else (args[1], args[2])
            self.shapes[(a.shape[1], a.shape[2], b.shape[2])] += a.shape[0]
        elif packet is aten.convolution:
            x, w, transposed, groups = args[0], args[1], args[6], args[8]
            if transposed:
                raise NotImplementedError("GemmRecorder: transposed convolutions are not counted")
            for g in _conv_gemms(x.shape, w.shape, out.shape, groups, False, False, True):
                self.shapes[g] += 1
        elif packet is aten.convolution_backward:
            grad_out, x, w = args[0], args[1], args[2]
            transposed, groups, mask = args[7], args[9], args[10]
            if transposed:
                raise NotImplementedError("GemmRecorder: transposed convolutions are not counted")
            for g in _conv_gemms(x.shape, w.shape, grad_out.shape, groups, mask[0], mask[1], False):
                self.shapes[g] += 1
        return out


def gemm_shapes(fn: Callable[[], None]) -> Counter:
    """(m, k, n) -> how many times fn() runs that GEMM, with the `torch` backend (see the module doc)."""
    recorder = GemmRecorder()
    stllr_kernels.set_backend("torch")
    try:
        with recorder:
            fn()
    finally:
        stllr_kernels.set_backend("auto")
    return recorder.shapes


def macs(shapes: Counter) -> int:
    return sum(m * k * n * count for (m, k, n), count in shapes.items())


def _blocks(size: int) -> list:
    """A dimension cut into blocks of at most MAX_DIM."""
    full, rest = divmod(size, MAX_DIM)
    return [MAX_DIM] * full + ([rest] if rest else [])


_POOLS: dict = {}  # device -> three flat float32 buffers that every replay's operands view


def _pool(device, sizes) -> tuple:
    """Operand storage shared by all replays on a device (grown as needed): the replays of several
    batches then hold one set of buffers, not one per GEMM shape, and leave the process's memory
    (and its allocator's state, which the batches timed beside them feel) nearly as it was."""
    device = torch.device(device)
    pool = _POOLS.get(device)
    if pool is None or any(p.numel() < n for p, n in zip(pool, sizes)):
        sizes = [max(n, p.numel()) for n, p in zip(sizes, pool)] if pool else sizes
        pool = tuple(torch.rand(n, device=device) for n in sizes)
        _POOLS[device] = pool
    return pool


def mm_replay(shapes: Counter, device) -> Callable[[], None]:
    """A callable running every GEMM of `shapes` as torch.mm(a, b, out=c) on preallocated float32
    operands (dimensions above MAX_DIM in blocks: the same MACs), views of one shared pool."""
    calls: Counter = Counter()
    for (m, k, n), count in shapes.items():
        for bm in _blocks(m):
            for bk in _blocks(k):
                for bn in _blocks(n):
                    calls[(bm, bk, bn)] += count
    sizes = [max(m * k for m, k, _ in calls), max(k * n for _, k, n in calls), max(m * n for m, _, n in calls)]
    pa, pb, pc = _pool(device, sizes)

    def run():
        for (m, k, n), count in calls.items():
            a, b, c = pa[:m * k].view(m, k), pb[:k * n].view(k, n), pc[:m * n].view(m, n)
            for _ in range(count):
                torch.mm(a, b, out=c)
    return run
