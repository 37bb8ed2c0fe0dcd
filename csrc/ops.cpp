// Op schemas of the stllr extension, argument checks shared by the CPU and CUDA kernels, and the
// Python module whose import loads this library (and so registers the ops).
//
// Psi / reset / post arrive as the integer codes documented at the top of stllr.h, which follow
// PSI_CODES, RESET_MODES and POST_MODES of stllr_kernels/psi.py (the source of truth).
#include <Python.h>
#include <torch/library.h>

#include "stllr.h"

namespace stllr {

c10::ScalarType state_dtype(c10::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, ": expected a tensor, got None");
  const auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kDouble || d == at::kBFloat16 || d == at::kHalf, name,
              ": expected float32, float64, bfloat16 or float16, got ", d);
}

void check_same_device(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device() == like.device(), name, ": expected a tensor on ", like.device(),
              " (the device of the other inputs), got one on ", t.device());
}

void check_lif_codes(int64_t psi, int64_t reset, int64_t post) {
  TORCH_CHECK(psi >= 0 && psi < kNumPsi, "psi: expected a code of stllr_kernels.psi.PSI_CODES ",
              "(0 fast_sigmoid, 1 triangle, 2 sigmoid), got ", psi);
  TORCH_CHECK(reset == kSoft || reset == kHard, "reset: expected 0 (soft) or 1 (hard), got ", reset);
  TORCH_CHECK(post == kPostPsi || post == kPostSpike, "post: expected 0 (psi) or 1 (spike), got ", post);
}

at::Tensor check_scalar_tensor(const at::Tensor& t, const at::Tensor& like, c10::ScalarType dtype,
                               const char* name) {
  check_floating(t, name);
  check_same_device(t, like, name);
  TORCH_CHECK(t.numel() == 1, name, ": expected a 0-d (one element) tensor, got shape ", t.sizes());
  return t.reshape({}).to(dtype);
}

at::Tensor state_like(const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& like,
                      c10::ScalarType dtype, const char* name) {
  check_floating(t, name);
  check_same_device(t, like, name);
  TORCH_CHECK(t.sizes() == shape, name, ": expected shape ", shape, ", got ", t.sizes());
  return t.to(dtype).contiguous();
}

int64_t check_save_from(int64_t save_from, int64_t steps) {
  TORCH_CHECK(save_from >= 0, "save_from: expected a step index >= 0, got ", save_from);
  return std::min(save_from, steps);
}

}  // namespace stllr

TORCH_LIBRARY(stllr, m) {
  m.def("lif_step(Tensor current, Tensor v, Tensor trpost, Tensor beta, Tensor theta, "
        "float lambda_post, int psi, int reset, int post) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pre_trace(Tensor trpre, Tensor x, float lambda_pre) -> Tensor");
  m.def("lif_sequence(Tensor currents, Tensor v, Tensor trpost, Tensor beta, Tensor theta, "
        "float lambda_post, int psi, int reset, int post, int save_from) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("trace_sequence(Tensor x, Tensor trace, float decay, int save_from) -> (Tensor, Tensor)");
  // Outputs not asked for (needs_input_grad / needs_bias_grad false) are empty tensors.
  m.def("linear_backward(Tensor grad_s, Tensor? psi, Tensor? causal, Tensor? trpost_prev, "
        "Tensor x, Tensor trpre, Tensor weight, float alpha_post, float alpha_pre, "
        "bool needs_input_grad, bool needs_bias_grad) -> (Tensor, Tensor, Tensor)");
  m.def("conv_backward(Tensor grad_s, Tensor psi, Tensor causal, Tensor trpost_prev, Tensor x, "
        "Tensor trpre, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, int groups, "
        "float alpha_post, float alpha_pre, bool needs_input_grad, bool needs_bias_grad) "
        "-> (Tensor, Tensor, Tensor)");
}

// `import stllr_kernels._C` loads this shared library; the ops are then under torch.ops.stllr.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "stllr custom ops", -1, nullptr};
  return PyModule_Create(&module_def);
}
