// CUDA kernels of the LIF ops (same contract as ../lif.cpp): lif_step is one grid-stride pass;
// lif_sequence runs all T steps with each neuron's state in registers. beta and theta are read
// from device memory inside the kernels, so launching never synchronises.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../stllr.h"
#include "launch.cuh"

namespace stllr::cuda {
namespace {

template <int PSI, int RESET, int POST, typename scalar_t, typename acc_t>
__global__ void lif_step_kernel(const scalar_t* __restrict__ current, const acc_t* __restrict__ v,
                                const acc_t* __restrict__ trpost, const acc_t* __restrict__ beta,
                                const acc_t* __restrict__ theta, acc_t lambda_post,
                                scalar_t* __restrict__ s_out, acc_t* __restrict__ v_out,
                                acc_t* __restrict__ trpost_out, acc_t* __restrict__ psi_out, int64_t n) {
  const acc_t b = *beta, th = *theta;
  STLLR_GRID_STRIDE(i, n) {
    const LifUpdate<PSI, RESET, POST, acc_t> up(static_cast<acc_t>(current[i]), v[i], trpost[i], b, th,
                                                lambda_post);
    s_out[i] = static_cast<scalar_t>(up.spike);
    v_out[i] = up.v;
    trpost_out[i] = up.trpost;
    psi_out[i] = up.psi;
  }
}

template <int PSI, int RESET, int POST, typename scalar_t, typename acc_t>
__global__ void lif_sequence_kernel(const scalar_t* __restrict__ currents, acc_t* __restrict__ v_state,
                                    acc_t* __restrict__ trpost_state, const acc_t* __restrict__ beta,
                                    const acc_t* __restrict__ theta, acc_t lambda_post,
                                    scalar_t* __restrict__ s_out, acc_t* __restrict__ psi_saved,
                                    acc_t* __restrict__ prev_saved, int64_t steps, int64_t neurons,
                                    int64_t save_from) {
  const acc_t b = *beta, th = *theta;
  STLLR_GRID_STRIDE(n, neurons) {
    acc_t v = v_state[n], tr = trpost_state[n];
    for (int64_t t = 0; t < steps; ++t) {
      const LifUpdate<PSI, RESET, POST, acc_t> up(static_cast<acc_t>(currents[t * neurons + n]), v, tr, b,
                                                  th, lambda_post);
      s_out[t * neurons + n] = static_cast<scalar_t>(up.spike);
      if (t >= save_from) {
        prev_saved[(t - save_from) * neurons + n] = tr;
        psi_saved[(t - save_from) * neurons + n] = up.psi;
      }
      v = up.v;
      tr = up.trpost;
    }
    v_state[n] = v;
    trpost_state[n] = tr;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_step_cuda(
    const at::Tensor& current, const at::Tensor& v, const at::Tensor& trpost, const at::Tensor& beta,
    const at::Tensor& theta, double lambda_post, int64_t psi, int64_t reset, int64_t post) {
  const c10::cuda::CUDAGuard guard(current.device());
  LifStepBuffers buf = prepare_lif_step(current, v, trpost, beta, theta, psi, reset, post);
  const int64_t n = buf.current.numel();
  if (n == 0) return {buf.s, buf.v_out, buf.trpost_out, buf.psi};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, buf.current.scalar_type(), "lif_step_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    dispatch_lif_config(psi, reset, post, [&](auto P, auto R, auto Q) {
      lif_step_kernel<decltype(P)::value, decltype(R)::value, decltype(Q)::value>
          <<<blocks_for(n), kThreads, 0, stream>>>(
              buf.current.const_data_ptr<scalar_t>(), buf.v.const_data_ptr<acc_t>(),
              buf.trpost.const_data_ptr<acc_t>(), buf.beta.const_data_ptr<acc_t>(),
              buf.theta.const_data_ptr<acc_t>(), static_cast<acc_t>(lambda_post),
              buf.s.mutable_data_ptr<scalar_t>(), buf.v_out.mutable_data_ptr<acc_t>(),
              buf.trpost_out.mutable_data_ptr<acc_t>(), buf.psi.mutable_data_ptr<acc_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {buf.s, buf.v_out, buf.trpost_out, buf.psi};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_sequence_cuda(
    const at::Tensor& currents, const at::Tensor& v, const at::Tensor& trpost, const at::Tensor& beta,
    const at::Tensor& theta, double lambda_post, int64_t psi, int64_t reset, int64_t post,
    int64_t save_from) {
  const c10::cuda::CUDAGuard guard(currents.device());
  LifSequenceBuffers buf = prepare_lif_sequence(currents, v, trpost, beta, theta, psi, reset, post, save_from);
  const int64_t N = buf.neurons;
  if (N > 0 && buf.steps > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, buf.currents.scalar_type(), "lif_sequence_cuda", [&] {
      using acc_t = acc_type<scalar_t>;
      dispatch_lif_config(psi, reset, post, [&](auto P, auto R, auto Q) {
        lif_sequence_kernel<decltype(P)::value, decltype(R)::value, decltype(Q)::value>
            <<<blocks_for(N), kThreads, 0, stream>>>(
                buf.currents.const_data_ptr<scalar_t>(), buf.v_state.mutable_data_ptr<acc_t>(),
                buf.trpost_state.mutable_data_ptr<acc_t>(), buf.beta.const_data_ptr<acc_t>(),
                buf.theta.const_data_ptr<acc_t>(), static_cast<acc_t>(lambda_post),
                buf.s.mutable_data_ptr<scalar_t>(), buf.psi_saved.mutable_data_ptr<acc_t>(),
                buf.prev_saved.mutable_data_ptr<acc_t>(), buf.steps, N, buf.save_from);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {buf.s, buf.v_state, buf.trpost_state, buf.psi_saved, buf.prev_saved};
}

}  // namespace
}  // namespace stllr::cuda

TORCH_LIBRARY_IMPL(stllr, CUDA, m) {
  m.impl("lif_step", &stllr::cuda::lif_step_cuda);
  m.impl("lif_sequence", &stllr::cuda::lif_sequence_cuda);
}
