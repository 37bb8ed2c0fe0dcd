"""The `torch` backend: the reference ops themselves, available on every device."""
from __future__ import annotations

from ..reference import (conv_backward, lif_sequence, lif_step, linear_backward, pre_trace,  # noqa: F401
                         readout_sequence, recurrent_backward, recurrent_backward_reverse, recurrent_sequence,
                         standardize_backward, trace_sequence)


def unavailable_reason(name: str, device_type: str):
    return None
