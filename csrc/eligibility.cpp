// The S-TLLR backward of one linear / conv step (docs/rule.md section 2):
//   dW = alpha_post * (L * trpost_prev)^T x + alpha_pre * (L * causal)^T trpre
//   db = sum_b L * psi,   dx = (L * psi) @ W   (conv: the conv input-gradient of L * psi)
// One fused element-wise pass (device specific: CPU here, CUDA in cuda/eligibility.cu) forms the
// products; dW is then two GEMMs accumulating into one output (linear: x and trpre are read in
// place, no stacked copy) or ONE conv weight-gradient on the operands stacked along the batch
// (conv): no B x N x K temporaries, no loop over samples.
#include <ATen/Parallel.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include "stllr.h"

namespace stllr {

namespace {

template <typename T>
void products_cpu(const Products& p) {
  const int64_t M = p.L.size(0), N = p.L.size(1), K = p.x.size(1);
  const bool has_prev = p.trpost_prev.defined(), has_causal = p.causal.defined(), has_g = p.g.defined();
  const int64_t offset = has_prev ? M : 0;
  const T ap = static_cast<T>(p.alpha_post), ac = static_cast<T>(p.alpha_pre);
  const T* L = p.L.const_data_ptr<T>();
  const T* psi = has_g ? p.psi.const_data_ptr<T>() : nullptr;
  const T* causal = has_causal ? p.causal.const_data_ptr<T>() : nullptr;
  const T* prev = has_prev ? p.trpost_prev.const_data_ptr<T>() : nullptr;
  const T* x = p.x.const_data_ptr<T>();
  const T* trpre = p.trpre.const_data_ptr<T>();
  T* a = p.a.mutable_data_ptr<T>();
  T* b = p.b.defined() ? p.b.mutable_data_ptr<T>() : nullptr;  // stacked [x; trpre] (conv only)
  T* g = has_g ? p.g.mutable_data_ptr<T>() : nullptr;
  const int64_t grain = std::max<int64_t>(1, kGrainSize / (2 * (N + K)));
  at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const T* __restrict__ Lr = L + m * N;
      T* __restrict__ a_causal = a + (offset + m) * N;
      if (causal != nullptr) {
        const T* __restrict__ cr = causal + m * N;
        for (int64_t j = 0; j < N; ++j) a_causal[j] = ac * Lr[j] * cr[j];
      } else {
        for (int64_t j = 0; j < N; ++j) a_causal[j] = ac * Lr[j];
      }
      if (prev != nullptr) {
        const T* __restrict__ pr = prev + m * N;
        T* __restrict__ a_post = a + m * N;
        for (int64_t j = 0; j < N; ++j) a_post[j] = ap * Lr[j] * pr[j];
        if (b != nullptr) std::copy(x + m * K, x + (m + 1) * K, b + m * K);
      }
      if (g != nullptr) {
        const T* __restrict__ sr = psi + m * N;
        T* __restrict__ gr = g + m * N;
        for (int64_t j = 0; j < N; ++j) gr[j] = Lr[j] * sr[j];
      }
      if (b != nullptr) std::copy(trpre + m * K, trpre + (m + 1) * K, b + (offset + m) * K);
    }
  });
}

// `t` as a contiguous [rows, cols] matrix in `dtype`, after checking what it must match.
at::Tensor as_matrix(const at::Tensor& t, int64_t rows, int64_t cols, const at::Tensor& like,
                     c10::ScalarType dtype, const char* name, const char* expected) {
  check_floating(t, name);
  check_same_device(t, like, name);
  TORCH_CHECK(t.dim() >= 1 && t.size(-1) == cols && t.numel() == rows * cols, name, ": expected shape ",
              expected, " (", rows, " rows of ", cols, "), got ", t.sizes());
  return t.to(dtype).reshape({rows, cols}).contiguous();
}

at::Tensor optional_matrix(const std::optional<at::Tensor>& t, int64_t rows, int64_t cols,
                           const at::Tensor& like, c10::ScalarType dtype, const char* name) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return as_matrix(*t, rows, cols, like, dtype, name, "like grad_s");
}

// Runs the fused pass; returns (a, b, g) with g = L when psi is absent. a holds the rows
// alpha_post * L * trpost_prev (when non_causal) then alpha_pre * L * causal; b, the same rows' x
// then trpre, only when `stack_inputs` (the conv weight-gradient takes one stacked operand).
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_products(Products& p, bool non_causal, bool stack_inputs,
                                                            ProductsFn fn) {
  const int64_t M = p.L.size(0), N = p.L.size(1), K = p.x.size(1);
  const int64_t rows = non_causal ? 2 * M : M;
  if (!non_causal) p.trpost_prev = at::Tensor();
  p.a = at::empty({rows, N}, p.L.options());
  p.b = stack_inputs ? at::empty({rows, K}, p.L.options()) : at::Tensor();
  p.g = p.psi.defined() ? at::empty({M, N}, p.L.options()) : at::Tensor();
  if (M > 0) fn(p);
  return {p.a, p.b, p.psi.defined() ? p.g : p.L};
}

}  // namespace

void eligibility_products_cpu(const Products& p) {
  if (p.L.scalar_type() == at::kDouble) products_cpu<double>(p);
  else products_cpu<float>(p);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_impl(
    const at::Tensor& grad_s, const std::optional<at::Tensor>& psi,
    const std::optional<at::Tensor>& causal, const std::optional<at::Tensor>& trpost_prev,
    const at::Tensor& x, const at::Tensor& trpre, const at::Tensor& weight, double alpha_post,
    double alpha_pre, bool needs_input_grad, bool needs_bias_grad, ProductsFn products) {
  check_floating(grad_s, "grad_s");
  check_floating(weight, "weight");
  check_same_device(weight, grad_s, "weight");
  TORCH_CHECK(grad_s.dim() >= 1, "grad_s: expected shape [..., N], got a 0-d tensor");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == grad_s.size(-1), "weight: expected shape [N, K] with N = ",
              grad_s.size(-1), " (grad_s's last dim), got ", weight.sizes());
  const auto sd = state_dtype(grad_s.scalar_type());
  const int64_t N = weight.size(0), K = weight.size(1);
  const int64_t M = N > 0 ? grad_s.numel() / N : 0;
  Products p;
  p.L = as_matrix(grad_s, M, N, grad_s, sd, "grad_s", "[..., N]");
  p.psi = optional_matrix(psi, M, N, grad_s, sd, "psi");
  p.causal = optional_matrix(causal, M, N, grad_s, sd, "causal");
  p.trpost_prev = optional_matrix(trpost_prev, M, N, grad_s, sd, "trpost_prev");
  p.x = as_matrix(x, M, K, grad_s, sd, "x", "[..., K] with grad_s's leading dims");
  p.trpre = as_matrix(trpre, M, K, grad_s, sd, "trpre", "like x");
  p.alpha_post = alpha_post;
  p.alpha_pre = alpha_pre;
  const bool non_causal = p.trpost_prev.defined() && alpha_post != 0.0;
  auto [a, b, g] = run_products(p, non_causal, /*stack_inputs=*/false, products);
  at::Tensor grad_w = at::mm(a.narrow(0, non_causal ? M : 0, M).t(), p.trpre);
  if (non_causal) grad_w.addmm_(a.narrow(0, 0, M).t(), p.x);
  grad_w = grad_w.to(weight.scalar_type());
  at::Tensor grad_x = at::empty({0}, x.options());
  if (needs_input_grad) {
    std::vector<int64_t> shape(grad_s.sizes().begin(), grad_s.sizes().end());
    shape.back() = K;
    grad_x = at::mm(g, weight.to(sd)).to(x.scalar_type()).view(shape);
  }
  at::Tensor grad_b = at::empty({0}, weight.options());
  if (needs_bias_grad) grad_b = at::sum(g, {0}).to(weight.scalar_type());
  return {grad_x, grad_w, grad_b};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward_impl(
    const at::Tensor& grad_s, const at::Tensor& psi, const at::Tensor& causal,
    const at::Tensor& trpost_prev, const at::Tensor& x, const at::Tensor& trpre,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, double alpha_post, double alpha_pre,
    bool needs_input_grad, bool needs_bias_grad, ProductsFn products) {
  check_floating(grad_s, "grad_s");
  check_floating(x, "x");
  check_floating(weight, "weight");
  check_same_device(weight, grad_s, "weight");
  TORCH_CHECK(grad_s.dim() == 4, "grad_s: expected shape [B, C_out, H_out, W_out], got ", grad_s.sizes());
  TORCH_CHECK(x.dim() == 4 && x.size(0) == grad_s.size(0), "x: expected shape [B, C_in, H, W] with B = ",
              grad_s.size(0), ", got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == grad_s.size(1), "weight: expected shape [C_out, C_in / groups, kh, kw] with C_out = ",
              grad_s.size(1), ", got ", weight.sizes());
  const auto sd = state_dtype(grad_s.scalar_type());
  const int64_t M = grad_s.size(0);
  const int64_t N = M > 0 ? grad_s.numel() / M : 0, K = M > 0 ? x.numel() / M : 0;
  Products p;
  p.L = as_matrix(grad_s.reshape({M, N}), M, N, grad_s, sd, "grad_s", "[B, C_out, H_out, W_out]");
  TORCH_CHECK(psi.sizes() == grad_s.sizes(), "psi: expected shape ", grad_s.sizes(), ", got ", psi.sizes());
  TORCH_CHECK(causal.sizes() == grad_s.sizes(), "causal: expected shape ", grad_s.sizes(), ", got ", causal.sizes());
  TORCH_CHECK(trpost_prev.sizes() == grad_s.sizes(), "trpost_prev: expected shape ", grad_s.sizes(), ", got ",
              trpost_prev.sizes());
  TORCH_CHECK(trpre.sizes() == x.sizes(), "trpre: expected shape ", x.sizes(), ", got ", trpre.sizes());
  p.psi = as_matrix(psi.reshape({M, N}), M, N, grad_s, sd, "psi", "like grad_s");
  p.causal = as_matrix(causal.reshape({M, N}), M, N, grad_s, sd, "causal", "like grad_s");
  p.trpost_prev = as_matrix(trpost_prev.reshape({M, N}), M, N, grad_s, sd, "trpost_prev", "like grad_s");
  p.x = as_matrix(x.reshape({M, K}), M, K, grad_s, sd, "x", "[B, C_in, H, W]");
  p.trpre = as_matrix(trpre.reshape({M, K}), M, K, grad_s, sd, "trpre", "like x");
  p.alpha_post = alpha_post;
  p.alpha_pre = alpha_pre;
  const bool non_causal = alpha_post != 0.0;
  auto [a, b, g] = run_products(p, non_causal, /*stack_inputs=*/true, products);
  const int64_t rows = a.size(0);
  std::vector<int64_t> a_shape(grad_s.sizes().begin(), grad_s.sizes().end()), b_shape(x.sizes().begin(), x.sizes().end());
  a_shape[0] = b_shape[0] = rows;
  const at::Tensor w = weight.to(sd);
  const int64_t zero_pad[2] = {0, 0};
  at::Tensor grad_w = std::get<1>(at::convolution_backward(
      a.view(a_shape), b.view(b_shape), w, std::nullopt, stride, padding, dilation, false, zero_pad,
      groups, {false, true, false}));
  at::Tensor grad_x = at::empty({0}, x.options());
  at::Tensor grad_b = at::empty({0}, weight.options());
  if (needs_input_grad || needs_bias_grad) {
    const at::Tensor x_sd = p.x.view(x.sizes());
    const int64_t bias_size[1] = {weight.size(0)};
    auto [dx, unused, db] = at::convolution_backward(
        g.view(grad_s.sizes()), x_sd, w, at::IntArrayRef(bias_size), stride, padding, dilation, false,
        zero_pad, groups, {needs_input_grad, false, needs_bias_grad});
    if (needs_input_grad) grad_x = dx.to(x.scalar_type());
    if (needs_bias_grad) grad_b = db.to(weight.scalar_type());
  }
  return {grad_x, grad_w.to(weight.scalar_type()), grad_b};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(
    const at::Tensor& grad_s, const std::optional<at::Tensor>& psi,
    const std::optional<at::Tensor>& causal, const std::optional<at::Tensor>& trpost_prev,
    const at::Tensor& x, const at::Tensor& trpre, const at::Tensor& weight, double alpha_post,
    double alpha_pre, bool needs_input_grad, bool needs_bias_grad) {
  return linear_backward_impl(grad_s, psi, causal, trpost_prev, x, trpre, weight, alpha_post, alpha_pre,
                              needs_input_grad, needs_bias_grad, &eligibility_products_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward_cpu(
    const at::Tensor& grad_s, const at::Tensor& psi, const at::Tensor& causal,
    const at::Tensor& trpost_prev, const at::Tensor& x, const at::Tensor& trpre,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, double alpha_post, double alpha_pre,
    bool needs_input_grad, bool needs_bias_grad) {
  return conv_backward_impl(grad_s, psi, causal, trpost_prev, x, trpre, weight, stride, padding, dilation,
                            groups, alpha_post, alpha_pre, needs_input_grad, needs_bias_grad,
                            &eligibility_products_cpu);
}

}  // namespace
}  // namespace stllr

TORCH_LIBRARY_IMPL(stllr, CPU, m) {
  m.impl("linear_backward", &stllr::linear_backward_cpu);
  m.impl("conv_backward", &stllr::conv_backward_cpu);
}
