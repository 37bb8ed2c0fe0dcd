// CUDA versions of the recurrent layers' device-specific passes (see ../recurrent.cpp): the
// recurrent step (recurrent add + LIF + post trace + recurrent trace, one thread per neuron) and the
// readout's leaky scan over T (one thread per neuron, v in a register), and the reverse-time pass of
// recurrent_backward_reverse. The GEMMs go through ATen (cuBLAS).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../stllr.h"
#include "launch.cuh"

namespace stllr::cuda {

void eligibility_products_cuda(const Products& p);  // eligibility.cu

namespace {

template <int PSI, int RESET, int POST, typename scalar_t, typename acc_t>
__global__ void recurrent_step_kernel(const scalar_t* __restrict__ cur, const scalar_t* __restrict__ rec,
                                      const scalar_t* __restrict__ sp, acc_t* v, acc_t* tr, acc_t* trrec,
                                      const acc_t* __restrict__ beta_ptr, const acc_t* __restrict__ theta_ptr,
                                      acc_t lambda_post, acc_t lambda_pre, scalar_t* __restrict__ s,
                                      acc_t* __restrict__ psi, acc_t* __restrict__ prev,
                                      scalar_t* __restrict__ sp_saved, acc_t* __restrict__ trrec_prev,
                                      int64_t n) {
  const acc_t beta = *beta_ptr, theta = *theta_ptr;
  const bool save = psi != nullptr;
  STLLR_GRID_STRIDE(i, n) {
    recurrent_neuron_step<PSI, RESET, POST>(i, save, cur, rec, sp, v, tr, trrec, beta, theta, lambda_post,
                                            lambda_pre, s, psi, prev, sp_saved, trrec_prev);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void leaky_scan_kernel(const scalar_t* __restrict__ cur, const acc_t* __restrict__ v0,
                                  const acc_t* __restrict__ beta_ptr, acc_t* __restrict__ out, int64_t T,
                                  int64_t n) {
  const acc_t beta = *beta_ptr;
  STLLR_GRID_STRIDE(i, n) {
    acc_t v = v0[i];
    for (int64_t t = 0; t < T; ++t) {
      v = beta * v + static_cast<acc_t>(cur[t * n + i]);
      out[t * n + i] = v;
    }
  }
}

// ReverseEligibility's pass (../recurrent.cpp): one thread per neuron walks the D steps backwards
// with G in a register; per step the warp's reads and writes are contiguous.
template <typename T>
__global__ void reverse_eligibility_kernel(const T* __restrict__ L, const T* __restrict__ psi,
                                           const T* __restrict__ causal, const T* __restrict__ prev,
                                           T* __restrict__ A, T* __restrict__ C, T* __restrict__ g, T lambda_pre,
                                           T alpha_post, T alpha_pre, int64_t D, int64_t n) {
  STLLR_GRID_STRIDE(i, n) {
    T G = T(0);
    for (int64_t d = D - 1; d >= 0; --d) {
      const int64_t o = d * n + i;
      const T l = L[o];
      G = lambda_pre * G + l * causal[o];
      A[o] = alpha_post * (l * prev[o]) + (d > 0 ? alpha_pre * G : T(0));
      g[o] = l * psi[o];
    }
    C[i] = alpha_pre * G;
  }
}

void reverse_eligibility_cuda(const ReverseEligibility& r) {
  const int64_t D = r.L.size(0), n = r.L.numel() / D;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(r.L.scalar_type(), "reverse_eligibility_cuda", [&] {
    reverse_eligibility_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        r.L.const_data_ptr<scalar_t>(), r.psi.const_data_ptr<scalar_t>(), r.causal.const_data_ptr<scalar_t>(),
        r.trpost_prev.const_data_ptr<scalar_t>(), r.A.mutable_data_ptr<scalar_t>(),
        r.C.mutable_data_ptr<scalar_t>(), r.g.mutable_data_ptr<scalar_t>(), static_cast<scalar_t>(r.lambda_pre),
        static_cast<scalar_t>(r.alpha_post), static_cast<scalar_t>(r.alpha_pre), D, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void recurrent_step_cuda(const RecurrentStep& st) {
  const int64_t n = st.s.numel();
  const bool save = st.psi.defined();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.s.scalar_type(), "recurrent_step_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    dispatch_lif_config(st.psi_code, st.reset, st.post, [&](auto P, auto R, auto Q) {
      recurrent_step_kernel<decltype(P)::value, decltype(R)::value, decltype(Q)::value>
          <<<blocks_for(n), kThreads, 0, stream>>>(
              st.current.const_data_ptr<scalar_t>(), st.rec.const_data_ptr<scalar_t>(),
              st.s_prev.const_data_ptr<scalar_t>(), st.v.mutable_data_ptr<acc_t>(),
              st.trpost.mutable_data_ptr<acc_t>(), st.trrec.mutable_data_ptr<acc_t>(),
              st.beta.const_data_ptr<acc_t>(), st.theta.const_data_ptr<acc_t>(),
              static_cast<acc_t>(st.lambda_post), static_cast<acc_t>(st.lambda_pre),
              st.s.mutable_data_ptr<scalar_t>(), save ? st.psi.mutable_data_ptr<acc_t>() : nullptr,
              save ? st.prev.mutable_data_ptr<acc_t>() : nullptr,
              save ? st.s_prev_saved.mutable_data_ptr<scalar_t>() : nullptr,
              save ? st.trrec_prev.mutable_data_ptr<acc_t>() : nullptr, n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void leaky_scan_cuda(const at::Tensor& currents, const at::Tensor& v, const at::Tensor& beta, const at::Tensor& out) {
  const int64_t T = currents.size(0), n = currents.size(1);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, currents.scalar_type(), "leaky_scan_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    leaky_scan_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, stream>>>(
        currents.const_data_ptr<scalar_t>(), v.const_data_ptr<acc_t>(), beta.const_data_ptr<acc_t>(),
        out.mutable_data_ptr<acc_t>(), T, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
recurrent_sequence_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const at::Tensor& weight_rec, const at::Tensor& s_prev, const at::Tensor& v,
                        const at::Tensor& trpost, const at::Tensor& trpre, const at::Tensor& trrec,
                        const at::Tensor& beta, const at::Tensor& theta, double lambda_post, double lambda_pre,
                        int64_t psi, int64_t reset, int64_t post, int64_t save_from, bool first_traces_only) {
  const c10::cuda::CUDAGuard guard(x.device());
  return recurrent_sequence_impl(x, weight, bias, weight_rec, s_prev, v, trpost, trpre, trrec, beta, theta,
                                 lambda_post, lambda_pre, psi, reset, post, save_from, first_traces_only,
                                 &recurrent_step_cuda);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> readout_sequence_cuda(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& v,
    const at::Tensor& trpre, const at::Tensor& beta, double lambda_pre, int64_t save_from) {
  const c10::cuda::CUDAGuard guard(x.device());
  return readout_sequence_impl(x, weight, bias, v, trpre, beta, lambda_pre, save_from, &leaky_scan_cuda);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrent_backward_cuda(
    const at::Tensor& grad_s, const at::Tensor& psi, const at::Tensor& causal, const at::Tensor& trpost_prev,
    const at::Tensor& x, const at::Tensor& trpre, const at::Tensor& s_prev, const at::Tensor& trrec_prev,
    const at::Tensor& weight, const at::Tensor& weight_rec, double alpha_post, double alpha_pre,
    bool needs_input_grad, bool needs_bias_grad) {
  const c10::cuda::CUDAGuard guard(grad_s.device());
  return recurrent_backward_impl(grad_s, psi, causal, trpost_prev, x, trpre, s_prev, trrec_prev, weight,
                                 weight_rec, alpha_post, alpha_pre, needs_input_grad, needs_bias_grad,
                                 &eligibility_products_cuda);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrent_backward_reverse_cuda(
    const at::Tensor& grad_s, const at::Tensor& psi, const at::Tensor& causal, const at::Tensor& trpost_prev,
    const at::Tensor& x, const at::Tensor& trpre_first, const at::Tensor& s_prev, const at::Tensor& trrec_first,
    const at::Tensor& weight, const at::Tensor& weight_rec, double lambda_pre, double alpha_post,
    double alpha_pre, bool needs_input_grad, bool needs_bias_grad) {
  const c10::cuda::CUDAGuard guard(grad_s.device());
  return recurrent_backward_reverse_impl(grad_s, psi, causal, trpost_prev, x, trpre_first, s_prev, trrec_first,
                                         weight, weight_rec, lambda_pre, alpha_post, alpha_pre, needs_input_grad,
                                         needs_bias_grad, &reverse_eligibility_cuda);
}

}  // namespace
}  // namespace stllr::cuda

TORCH_LIBRARY_IMPL(stllr, CUDA, m) {
  m.impl("recurrent_sequence", &stllr::cuda::recurrent_sequence_cuda);
  m.impl("readout_sequence", &stllr::cuda::readout_sequence_cuda);
  m.impl("recurrent_backward", &stllr::cuda::recurrent_backward_cuda);
  m.impl("recurrent_backward_reverse", &stllr::cuda::recurrent_backward_reverse_cuda);
}
