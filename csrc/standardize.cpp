// The weight standardization's backward in closed form (reference.standardize_backward): from
// G = dW_hat, the normalized weight n and the per-row scale s,
//   dgain = sum_row(G * n),  dz = gain * (G - n * dgain * fan_in / (fan_in - 1)) / s,
//   dW = dz - mean_row(dz).
// CPU: rows in parallel, three sweeps of a row that stays in cache, reductions in 8 lanes. The ATen version
// below serves the CUDA backend (registered in cuda/recurrent.cu).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "stllr.h"

namespace stllr {

int64_t check_standardize_backward(const at::Tensor& grad_w_hat, const at::Tensor& normalized,
                                   const at::Tensor& scale, const at::Tensor& gain) {
  check_floating(grad_w_hat, "grad_w_hat");
  check_floating(normalized, "normalized");
  check_floating(scale, "scale");
  check_floating(gain, "gain");
  check_same_device(normalized, grad_w_hat, "normalized");
  check_same_device(scale, grad_w_hat, "scale");
  check_same_device(gain, grad_w_hat, "gain");
  TORCH_CHECK(grad_w_hat.dim() >= 2, "grad_w_hat: expected a weight [N, ...], got shape ", grad_w_hat.sizes());
  TORCH_CHECK(normalized.sizes() == grad_w_hat.sizes(), "normalized: expected shape ", grad_w_hat.sizes(),
              ", got ", normalized.sizes());
  const int64_t rows = grad_w_hat.size(0);
  TORCH_CHECK(scale.numel() == rows && scale.size(0) == rows, "scale: expected one value per row (", rows,
              "), got shape ", scale.sizes());
  TORCH_CHECK(gain.sizes() == scale.sizes(), "gain: expected shape ", scale.sizes(), ", got ", gain.sizes());
  return rows > 0 ? grad_w_hat.numel() / rows : 0;
}

std::tuple<at::Tensor, at::Tensor> standardize_backward_aten(const at::Tensor& grad_w_hat,
                                                             const at::Tensor& normalized,
                                                             const at::Tensor& scale, const at::Tensor& gain) {
  const int64_t fan_in = check_standardize_backward(grad_w_hat, normalized, scale, gain);
  const auto sd = state_dtype(grad_w_hat.scalar_type());
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < grad_w_hat.dim(); ++d) dims.push_back(d);
  const at::Tensor G = grad_w_hat.to(sd), n = normalized.to(sd);
  const at::Tensor grad_gain = G.mul(n).sum(dims, true);
  const double ratio = static_cast<double>(fan_in) / static_cast<double>(fan_in - 1);
  const at::Tensor dz = gain.to(sd).mul(G.sub(n.mul(grad_gain.mul(ratio)))).div(scale.to(sd));
  const at::Tensor grad_w = dz.sub(dz.mean(dims, true));
  return {grad_w.to(grad_w_hat.scalar_type()), grad_gain.to(gain.scalar_type())};
}

namespace {

constexpr int64_t kLanes = 8;  // independent partial sums: the reductions vectorise without -ffast-math

template <typename T>
T dot_row(const T* __restrict__ a, const T* __restrict__ b, int64_t K) {
  T part[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= K; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) part[l] += a[j + l] * b[j + l];
  T sum = 0;
  for (int64_t l = 0; l < kLanes; ++l) sum += part[l];
  for (; j < K; ++j) sum += a[j] * b[j];
  return sum;
}

template <typename T>
void standardize_backward_rows(const T* G, const T* n, const T* scale, const T* gain, T* dw, T* dgain,
                               int64_t rows, int64_t K) {
  const T ratio = static_cast<T>(K) / static_cast<T>(K - 1);
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainSize / std::max<int64_t>(K, 1)), [&](int64_t begin,
                                                                                             int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* __restrict__ g = G + r * K;
      const T* __restrict__ nr = n + r * K;
      T* __restrict__ out = dw + r * K;
      const T dot = dot_row(g, nr, K);
      const T c = dot * ratio, gr = gain[r], s = scale[r];
      T part[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= K; j += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) {
          out[j + l] = gr * (g[j + l] - nr[j + l] * c) / s;
          part[l] += out[j + l];
        }
      }
      T sum = 0;
      for (int64_t l = 0; l < kLanes; ++l) sum += part[l];
      for (; j < K; ++j) {
        out[j] = gr * (g[j] - nr[j] * c) / s;
        sum += out[j];
      }
      const T mean = sum / static_cast<T>(K);
      for (j = 0; j < K; ++j) out[j] -= mean;
      dgain[r] = dot;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> standardize_backward_cpu(const at::Tensor& grad_w_hat,
                                                            const at::Tensor& normalized, const at::Tensor& scale,
                                                            const at::Tensor& gain) {
  const int64_t K = check_standardize_backward(grad_w_hat, normalized, scale, gain);
  const auto sd = state_dtype(grad_w_hat.scalar_type());
  const at::Tensor G = grad_w_hat.to(sd).contiguous(), n = normalized.to(sd).contiguous();
  const at::Tensor s = scale.to(sd).contiguous(), g = gain.to(sd).contiguous();
  at::Tensor dw = at::empty_like(G, at::MemoryFormat::Contiguous);
  at::Tensor dgain = at::empty(gain.sizes(), G.options());
  const int64_t rows = G.size(0);
  if (rows > 0 && K > 0) {
    if (sd == at::kDouble) {
      standardize_backward_rows<double>(G.const_data_ptr<double>(), n.const_data_ptr<double>(),
                                        s.const_data_ptr<double>(), g.const_data_ptr<double>(),
                                        dw.mutable_data_ptr<double>(), dgain.mutable_data_ptr<double>(), rows, K);
    } else {
      standardize_backward_rows<float>(G.const_data_ptr<float>(), n.const_data_ptr<float>(),
                                       s.const_data_ptr<float>(), g.const_data_ptr<float>(),
                                       dw.mutable_data_ptr<float>(), dgain.mutable_data_ptr<float>(), rows, K);
    }
  }
  return {dw.to(grad_w_hat.scalar_type()), dgain.to(gain.scalar_type())};
}

}  // namespace
}  // namespace stllr

TORCH_LIBRARY_IMPL(stllr, CPU, m) {
  m.impl("standardize_backward", &stllr::standardize_backward_cpu);
}
