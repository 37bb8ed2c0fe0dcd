"""Small networks for the embedded Digits dataset (8x8 images, rate-coded: 64 inputs, 10 classes).

One hidden spiking layer and a linear readout whose output at each step is that step's logits,
like the VGG's head: an S-TLLR version and its BPTT twin.
"""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from stllr_kernels.nn import LIF, LinearSTLLR, WSLinear

from .base import SpikingModel
from .common import FeedbackHook, init_weights, stllr_psi, surrogate_psi

HIDDEN = 512
LEAK = 2.0


class DigitsSTLLR(SpikingModel):
    input_shape, num_classes = (64,), 10

    def __init__(self, activation: str, factors, feedback_mode: str = "BP", hidden: int = HIDDEN):
        super().__init__(feedback_mode)
        self.linear1 = LinearSTLLR(64, hidden, leak=LEAK, factors=factors, **stllr_psi(activation))
        self.hook1 = FeedbackHook(self.feedback, (hidden,))
        self.classifier = nn.Linear(hidden, self.num_classes)
        init_weights(self)

    def forward_step(self, x: Tensor) -> Tensor:
        return self.classifier(self.hook1(self.linear1(x)))

    def forward_sequence(self, x: Tensor, loss_steps: int) -> Tensor:
        return self.classifier(self.hook1(self.linear1(x, loss_steps)))


class DigitsBPTT(SpikingModel):
    input_shape, num_classes = (64,), 10

    def __init__(self, activation: str, hidden: int = HIDDEN):
        super().__init__("BP")
        self.linear1 = WSLinear(64, hidden)
        self.lif1 = LIF(leak=LEAK, psi=linear_surrogate(activation))
        self.classifier = nn.Linear(hidden, self.num_classes)
        init_weights(self)

    def forward_step(self, x: Tensor) -> Tensor:
        return self.classifier(self.lif1(self.linear1(x)))


def linear_surrogate(activation: str) -> str:
    """The Psi an S-TLLR linear layer would use: its default (fast_sigmoid) for LinearSpike."""
    return "fast_sigmoid" if stllr_psi(activation)["psi"] is None else surrogate_psi(activation)
