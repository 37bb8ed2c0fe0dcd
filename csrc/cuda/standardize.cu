// CUDA registration of the weight standardization's backward: the ATen composite of
// ../standardize.cpp (a few reductions over [N, K], which cuBLAS / ATen already run well) under a
// device guard; no kernel of its own.
#include <torch/library.h>

#include "../stllr.h"
#include "launch.cuh"

namespace stllr::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> standardize_backward_cuda(const at::Tensor& grad_w_hat,
                                                             const at::Tensor& normalized,
                                                             const at::Tensor& scale, const at::Tensor& gain) {
  const c10::cuda::CUDAGuard guard(grad_w_hat.device());
  return standardize_backward_aten(grad_w_hat, normalized, scale, gain);
}

}  // namespace
}  // namespace stllr::cuda

TORCH_LIBRARY_IMPL(stllr, CUDA, m) {
  m.impl("standardize_backward", &stllr::cuda::standardize_backward_cuda);
}
