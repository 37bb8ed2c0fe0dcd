"""The SHD networks (docs/rule.md section 7): 700 inputs, one recurrent layer of 450, a leaky readout."""
from __future__ import annotations

from torch import Tensor

from stllr_kernels.nn import LeakyReadout, LinearRecLIF, LinearRecSTLLR, LinearSTLLR

from ..datasets.catalog import SHD
from .base import SpikingModel
from .common import FeedbackHook, init_weights, stllr_psi

INPUTS = SHD.frame_shape[0]
HIDDEN = 450
STLLR_LEAK = 5.0
BPTT_LEAK = 15.0
READOUT_LEAK = 5.0
READOUT_FACTORS = (0.0, 0.99, 0.0, 1.0)


class SHDSTLLR(SpikingModel):
    """LinearRecSTLLR(700, 450, leak 5) -> [DFA hook] -> readout LinearSTLLR(accumulate, leak 5)."""

    input_shape, num_classes = SHD.frame_shape, SHD.num_classes

    def __init__(self, activation: str, factors, feedback_mode: str = "BP", hidden: int = HIDDEN):
        super().__init__(feedback_mode)  # hidden < HIDDEN: a narrower copy (quick tests)
        self.linear1 = LinearRecSTLLR(INPUTS, hidden, leak=STLLR_LEAK, factors=factors, **stllr_psi(activation))
        self.hook1 = FeedbackHook(self.feedback, (hidden,))
        self.last_layer = LinearSTLLR(hidden, self.num_classes, accumulate=True, leak=READOUT_LEAK,
                                      factors=READOUT_FACTORS)
        init_weights(self)

    def forward_step(self, x: Tensor) -> Tensor:
        return self.last_layer(self.hook1(self.linear1(x)))

    def forward_sequence(self, x: Tensor, loss_steps: int) -> Tensor:
        return self.last_layer(self.hook1(self.linear1(x, loss_steps)), loss_steps)


class SHDBPTT(SpikingModel):
    """Recurrent LIF of 450 (standardized weights, leak 15, fast_sigmoid) + leaky readout (leak 5).

    As in the original, its surrogate is fixed (fast_sigmoid) whatever --activation says.
    """

    input_shape, num_classes = SHD.frame_shape, SHD.num_classes

    def __init__(self, feedback_mode: str = "BP", hidden: int = HIDDEN):
        super().__init__(feedback_mode)  # hidden < HIDDEN: a narrower copy (quick tests)
        self.linear1 = LinearRecLIF(INPUTS, hidden, leak=BPTT_LEAK, psi="fast_sigmoid")
        self.last_layer = LeakyReadout(hidden, self.num_classes, leak=READOUT_LEAK)
        init_weights(self)

    def forward_step(self, x: Tensor) -> Tensor:
        return self.last_layer(self.linear1(x))
