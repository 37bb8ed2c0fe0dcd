"""Triton kernels of the `triton` backend, one module per op family.

Import only after `import triton` has succeeded (`backends/triton_ops.py` guards this): every module
here defines `@triton.jit` kernels at import time. Each module holds its kernels first, then the
launch functions with the op signatures of `stllr_kernels.reference`.

    common       Psi and the LIF update as jit helpers, block-size configs, dtype/shape checks
    lif          lif_step (one pass per time step)
    trace        pre_trace, trace_sequence
    sequence     lif_sequence (all T steps in one launch, state in registers)
    eligibility  linear_backward: the eligibility GEMM (products formed while loading tiles) and dx
    conv         conv_backward: products kernel + one conv weight-gradient, or an implicit GEMM
"""
