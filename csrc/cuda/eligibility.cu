// CUDA version of the eligibility backward's fused element-wise pass (see ../eligibility.cpp for
// the math and the layout of a, b, g); the GEMM / conv weight-gradient that follows goes through
// ATen (cuBLAS / cuDNN), shared with the CPU in linear_backward_impl / conv_backward_impl.
#include <torch/library.h>

#include "../stllr.h"
#include "launch.cuh"

namespace stllr::cuda {
namespace {

// One launch over M*N product elements, then (conv only: b stacks the operands) M*K operand copies.
template <typename T>
__global__ void products_kernel(const T* __restrict__ L, const T* __restrict__ psi,
                                const T* __restrict__ causal, const T* __restrict__ prev,
                                const T* __restrict__ x, const T* __restrict__ trpre, T* __restrict__ a,
                                T* __restrict__ b, T* __restrict__ g, T alpha_post, T alpha_pre, int64_t M,
                                int64_t N, int64_t K) {
  const int64_t mn = M * N, offset = prev != nullptr ? M : 0;
  STLLR_GRID_STRIDE(i, mn + (b != nullptr ? M * K : 0)) {
    if (i < mn) {
      const T l = L[i];
      a[offset * N + i] = alpha_pre * l * (causal != nullptr ? causal[i] : T(1));
      if (prev != nullptr) a[i] = alpha_post * l * prev[i];
      if (g != nullptr) g[i] = l * psi[i];
    } else {
      const int64_t j = i - mn;
      if (prev != nullptr) b[j] = x[j];
      b[offset * K + j] = trpre[j];
    }
  }
}

template <typename T>
void launch_products(const Products& p) {
  const int64_t M = p.L.size(0), N = p.L.size(1), K = p.x.size(1);
  const bool has_prev = p.trpost_prev.defined(), has_g = p.g.defined();
  products_kernel<T><<<blocks_for(M * (N + (p.b.defined() ? K : 0))), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      p.L.const_data_ptr<T>(), has_g ? p.psi.const_data_ptr<T>() : nullptr,
      p.causal.defined() ? p.causal.const_data_ptr<T>() : nullptr,
      has_prev ? p.trpost_prev.const_data_ptr<T>() : nullptr, p.x.const_data_ptr<T>(),
      p.trpre.const_data_ptr<T>(), p.a.mutable_data_ptr<T>(),
      p.b.defined() ? p.b.mutable_data_ptr<T>() : nullptr,
      has_g ? p.g.mutable_data_ptr<T>() : nullptr, static_cast<T>(p.alpha_post),
      static_cast<T>(p.alpha_pre), M, N, K);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

// also used by the recurrent backward (recurrent.cu)
void eligibility_products_cuda(const Products& p) {
  if (p.L.scalar_type() == at::kDouble) launch_products<double>(p);
  else launch_products<float>(p);
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cuda(
    const at::Tensor& grad_s, const std::optional<at::Tensor>& psi,
    const std::optional<at::Tensor>& causal, const std::optional<at::Tensor>& trpost_prev,
    const at::Tensor& x, const at::Tensor& trpre, const at::Tensor& weight, double alpha_post,
    double alpha_pre, bool needs_input_grad, bool needs_bias_grad) {
  const c10::cuda::CUDAGuard guard(grad_s.device());
  return linear_backward_impl(grad_s, psi, causal, trpost_prev, x, trpre, weight, alpha_post, alpha_pre,
                              needs_input_grad, needs_bias_grad, &eligibility_products_cuda);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward_cuda(
    const at::Tensor& grad_s, const at::Tensor& psi, const at::Tensor& causal,
    const at::Tensor& trpost_prev, const at::Tensor& x, const at::Tensor& trpre,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, double alpha_post, double alpha_pre,
    bool needs_input_grad, bool needs_bias_grad) {
  const c10::cuda::CUDAGuard guard(grad_s.device());
  return conv_backward_impl(grad_s, psi, causal, trpost_prev, x, trpre, weight, stride, padding, dilation,
                            groups, alpha_post, alpha_pre, needs_input_grad, needs_bias_grad,
                            &eligibility_products_cuda);
}

}  // namespace
}  // namespace stllr::cuda

TORCH_LIBRARY_IMPL(stllr, CUDA, m) {
  m.impl("linear_backward", &stllr::cuda::linear_backward_cuda);
  m.impl("conv_backward", &stllr::cuda::conv_backward_cuda);
}
