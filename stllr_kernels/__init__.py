"""stllr_kernels: fused kernels and layers for S-TLLR, the STDP-inspired temporally local learning
rule for spiking neural networks (docs/rule.md states the rule this package implements exactly)."""
from .backends import BackendUnavailable, backend_info, get_backend_name, set_backend
from .config import RuleConfig
from ._version import __version__
from .psi import PSI_FUNCTIONS

__all__ = ["BackendUnavailable", "backend_info", "get_backend_name", "set_backend", "RuleConfig",
           "PSI_FUNCTIONS", "__version__"]
