// CUDA kernels of the trace ops (same contract as ../trace.cpp): one grid-stride pass each;
// trace_sequence keeps each trace in a register across the T steps.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../stllr.h"
#include "launch.cuh"

namespace stllr::cuda {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void pre_trace_kernel(const acc_t* __restrict__ trace, const scalar_t* __restrict__ x,
                                 acc_t* __restrict__ out, acc_t decay, int64_t n) {
  STLLR_GRID_STRIDE(i, n) { out[i] = decay * trace[i] + static_cast<acc_t>(x[i]); }
}

template <typename scalar_t, typename acc_t>
__global__ void trace_sequence_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ state,
                                      acc_t* __restrict__ saved, acc_t decay, int64_t steps, int64_t size,
                                      int64_t save_from) {
  STLLR_GRID_STRIDE(n, size) {
    acc_t tr = state[n];
    for (int64_t t = 0; t < steps; ++t) {
      tr = decay * tr + static_cast<acc_t>(x[t * size + n]);
      if (t >= save_from) saved[(t - save_from) * size + n] = tr;
    }
    state[n] = tr;
  }
}

at::Tensor pre_trace_cuda(const at::Tensor& trpre, const at::Tensor& x, double lambda_pre) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto [tr, xc, out] = prepare_pre_trace(trpre, x);
  const int64_t n = xc.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "pre_trace_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    pre_trace_kernel<<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        tr.const_data_ptr<acc_t>(), xc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<acc_t>(),
        static_cast<acc_t>(lambda_pre), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> trace_sequence_cuda(const at::Tensor& x, const at::Tensor& trace,
                                                       double decay, int64_t save_from) {
  const c10::cuda::CUDAGuard guard(x.device());
  TraceSequenceBuffers buf = prepare_trace_sequence(x, trace, save_from);
  if (buf.size > 0 && buf.steps > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, buf.x.scalar_type(), "trace_sequence_cuda", [&] {
      using acc_t = acc_type<scalar_t>;
      trace_sequence_kernel<<<blocks_for(buf.size), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          buf.x.const_data_ptr<scalar_t>(), buf.state.mutable_data_ptr<acc_t>(),
          buf.saved.mutable_data_ptr<acc_t>(), static_cast<acc_t>(decay), buf.steps, buf.size, buf.save_from);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {buf.saved, buf.state};
}

}  // namespace
}  // namespace stllr::cuda

TORCH_LIBRARY_IMPL(stllr, CUDA, m) {
  m.impl("pre_trace", &stllr::cuda::pre_trace_cuda);
  m.impl("trace_sequence", &stllr::cuda::trace_sequence_cuda);
}
