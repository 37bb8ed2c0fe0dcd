"""The VGG of the DVS Gesture and CIFAR10-DVS runs (docs/rule.md section 7), S-TLLR and BPTT.

Eight 3x3 convs (64, 128, pool, 256, 256, pool, 512, 512, pool, 512, 512), each followed by its
neuron and a per-sequence dropout, then global average pooling and a linear layer whose output at
each step is that step's logits. Conv leak 0.0 (beta = 0.5).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from stllr_kernels.nn import LIF, Conv2dSTLLR, SpikingDropout, WSConv2d

from .base import SpikingModel
from .common import FeedbackHook, init_weights, make_pool, stllr_psi, surrogate_psi, time_distributed

# (out_channels, pool after this conv)
VGG_LAYERS = ((64, False), (128, True), (256, False), (256, True),
              (512, False), (512, True), (512, False), (512, False))
VGG_LEAK = 0.0


class VGGSTLLR(SpikingModel):
    """Conv2dSTLLR layers; DFA/sDFA hooks after each conv block (after its pooling)."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int,
                 activation: str, factors, pooling: str, dropout: float, feedback_mode: str = "BP",
                 channel_scale: float = 1.0):
        self.input_shape, self.num_classes = (in_channels, height, width), num_classes
        super().__init__(feedback_mode)
        psi = stllr_psi(activation)
        self.convs, self.drops, self.pools, self.hooks = (nn.ModuleList() for _ in range(4))
        channels, h, w = in_channels, height, width
        for out, pool in VGG_LAYERS:
            out = max(1, int(out * channel_scale))  # < 1: a narrower copy (quick tests)
            self.convs.append(Conv2dSTLLR(channels, out, 3, 1, 1, leak=VGG_LEAK, factors=factors, **psi))
            self.drops.append(SpikingDropout(dropout))
            self.pools.append(make_pool(pooling) if pool else nn.Identity())
            h, w = (h // 2, w // 2) if pool else (h, w)
            self.hooks.append(FeedbackHook(self.feedback, (out, h, w)))
            channels = out
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward_step(self, x: Tensor) -> Tensor:
        for conv, drop, pool, hook in zip(self.convs, self.drops, self.pools, self.hooks):
            x = hook(pool(drop(conv(x))))
        return self.classifier(x.mean((-2, -1)))

    def forward_sequence(self, x: Tensor, loss_steps: int) -> Tensor:
        for conv, drop, pool, hook in zip(self.convs, self.drops, self.pools, self.hooks):
            x = drop(conv(x, loss_steps), sequence=True)  # one mask [B, ...] for all T steps
            x = hook(time_distributed(pool, x, 3))
        return self.classifier(x.mean((-2, -1)))


class VGGBPTT(SpikingModel):
    """Standardized convs + LIF with a surrogate gradient, full autograd through time.

    As in the original's BPTT VGG (docs/rule.md section 7.1): every block runs conv -> LIF -> dropout ->
    pool, the pooling is average pooling whatever --pooling says, and the classifier's bias keeps
    PyTorch's default initialisation (the other weights: kaiming-normal, zero biases).
    """

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int,
                 activation: str, dropout: float, feedback_mode: str = "BP", channel_scale: float = 1.0):
        self.input_shape, self.num_classes = (in_channels, height, width), num_classes
        super().__init__(feedback_mode)
        psi = surrogate_psi(activation)
        self.convs, self.lifs, self.drops, self.pools = (nn.ModuleList() for _ in range(4))
        channels = in_channels
        for out, pool in VGG_LAYERS:
            out = max(1, int(out * channel_scale))  # < 1: a narrower copy (quick tests)
            self.convs.append(WSConv2d(channels, out, 3, 1, 1))
            self.lifs.append(LIF(leak=VGG_LEAK, psi=psi))
            self.drops.append(SpikingDropout(dropout))
            self.pools.append(nn.AvgPool2d(2, 2) if pool else nn.Identity())
            channels = out
        self.classifier = nn.Linear(channels, num_classes)
        default_bias = self.classifier.bias.detach().clone()
        init_weights(self)
        with torch.no_grad():
            self.classifier.bias.copy_(default_bias)

    def forward_step(self, x: Tensor) -> Tensor:
        for conv, lif, drop, pool in zip(self.convs, self.lifs, self.drops, self.pools):
            x = pool(drop(lif(conv(x))))
        return self.classifier(x.mean((-2, -1)))
