"""Triton kernels of the `triton` backend, one module per op family.

Import only after `import triton` has succeeded (`backends/triton_ops.py` guards this): every module
here defines `@triton.jit` kernels at import time. Each module holds its kernels first, then the
launch functions with the op signatures of `stllr_kernels.reference`.

    common       Psi and the LIF update as jit helpers, block-size configs, dtype/shape checks
    lif          lif_step (one pass per time step), lif_sequence (all T steps, state in registers)
    trace        pre_trace, trace_sequence
    eligibility  linear_backward: the eligibility GEMM (products formed while loading tiles) and dx
    conv         conv_backward: products kernel + one conv weight-gradient
    recurrent    recurrent_sequence (a GEMM per step with the LIF and both traces as its epilogue),
                 readout_sequence (one GEMM, the leaky scan), recurrent_backward
    standardize  standardize_backward (one program per row)

The same families in csrc/: lif.cpp, trace.cpp, eligibility.cpp (linear and conv), recurrent.cpp,
standardize.cpp, each with its CUDA twin in csrc/cuda/.
"""
