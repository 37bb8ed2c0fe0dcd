"""The architectures of `--arch`: name -> which dataset it is built for and how to build it.

Builders read the run configuration (`training.config.RunConfig`: activation, factors_stdp,
pooling, feedback_mode).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..datasets.catalog import CATALOG
from .base import SpikingModel
from .common import ACTIVATIONS, DEFAULT_ACTIVATION, FEEDBACK_MODES
from .digits import DigitsBPTT, DigitsSTLLR
from .shd import SHDBPTT, SHDSTLLR
from .vgg import VGGBPTT, VGGSTLLR

if TYPE_CHECKING:  # config imports this package (for the --arch choices), not the other way round
    from ..config import RunConfig


@dataclass(frozen=True)
class Arch:
    dataset: str                          # the --dataset it is built for (input shape, classes)
    build: Callable[..., SpikingModel]    # build(config) -> model
    stllr: bool                           # S-TLLR layers (False: BPTT baseline)


def _factors(config: "RunConfig") -> list:
    return list(config.factors_stdp)


# (channels, height, width, classes) of the image datasets, from the catalog
GESTURE = (*CATALOG["DVSGesture"].frame_shape, CATALOG["DVSGesture"].num_classes)
CIFAR = (*CATALOG["CIFAR10DVS"].frame_shape, CATALOG["CIFAR10DVS"].num_classes)

ARCHS = {
    "dvs_vgg_stllr": Arch("DVSGesture", lambda a: VGGSTLLR(
        *GESTURE, a.activation, _factors(a), a.pooling, 0.0, a.feedback_mode), True),
    "dvscifar10_vgg_stllr": Arch("CIFAR10DVS", lambda a: VGGSTLLR(
        *CIFAR, a.activation, _factors(a), a.pooling, 0.1, a.feedback_mode), True),
    "stllr_shd_net": Arch("SHD", lambda a: SHDSTLLR(a.activation, _factors(a), a.feedback_mode), True),
    "digits_stllr": Arch("Digits", lambda a: DigitsSTLLR(a.activation, _factors(a), a.feedback_mode), True),
    "dvs_vgg_bptt": Arch("DVSGesture", lambda a: VGGBPTT(*GESTURE, a.activation, 0.0), False),
    "dvscifar10_vgg_bptt": Arch("CIFAR10DVS", lambda a: VGGBPTT(*CIFAR, a.activation, 0.1), False),
    "bptt_shd_net": Arch("SHD", lambda a: SHDBPTT(), False),
    "digits_bptt": Arch("Digits", lambda a: DigitsBPTT(a.activation), False),
}
# the original's README runs this name; it is the CIFAR10-DVS VGG
ARCHS["dvscifar10_vgg11_stllr"] = ARCHS["dvscifar10_vgg_stllr"]


def build_model(config: "RunConfig") -> SpikingModel:
    """The --arch model of `config`, built from its activation, factors, pooling and feedback mode."""
    return ARCHS[config.arch].build(config)


__all__ = ["ARCHS", "Arch", "ACTIVATIONS", "DEFAULT_ACTIVATION", "FEEDBACK_MODES", "SpikingModel",
           "build_model"]
