// Op schemas of the stllr extension, argument checks shared by the CPU and CUDA kernels, and the
// Python module whose import loads this library (and so registers the ops).
//
// Psi / reset / post arrive as the integer codes documented at the top of stllr.h, which follow
// PSI_CODES, RESET_MODES and POST_MODES of stllr_kernels/psi.py (the source of truth).
#include <Python.h>
#include <ATen/ops/empty.h>
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

LifStepBuffers prepare_lif_step(const at::Tensor& current, const at::Tensor& v, const at::Tensor& trpost,
                                const at::Tensor& beta, const at::Tensor& theta, int64_t psi,
                                int64_t reset, int64_t post) {
  check_floating(current, "current");
  check_lif_codes(psi, reset, post);
  const auto sd = state_dtype(current.scalar_type());
  LifStepBuffers b;
  b.current = current.contiguous();
  b.v = state_like(v, current.sizes(), current, sd, "v");
  b.trpost = state_like(trpost, current.sizes(), current, sd, "trpost");
  b.beta = check_scalar_tensor(beta, current, sd, "beta");
  b.theta = check_scalar_tensor(theta, current, sd, "theta");
  b.s = at::empty(current.sizes(), b.current.options());
  b.v_out = at::empty(current.sizes(), b.v.options());
  b.trpost_out = at::empty(current.sizes(), b.v.options());
  b.psi = at::empty(current.sizes(), b.v.options());
  return b;
}

LifSequenceBuffers prepare_lif_sequence(const at::Tensor& currents, const at::Tensor& v,
                                        const at::Tensor& trpost, const at::Tensor& beta,
                                        const at::Tensor& theta, int64_t psi, int64_t reset,
                                        int64_t post, int64_t save_from) {
  check_floating(currents, "currents");
  TORCH_CHECK(currents.dim() >= 1, "currents: expected a sequence [T, ...], got a 0-d tensor");
  check_lif_codes(psi, reset, post);
  const auto sd = state_dtype(currents.scalar_type());
  const auto state_shape = currents.sizes().slice(1);
  LifSequenceBuffers b;
  b.steps = currents.size(0);
  b.save_from = check_save_from(save_from, b.steps);
  b.currents = currents.contiguous();
  b.v_state = state_like(v, state_shape, currents, sd, "v").clone();
  b.trpost_state = state_like(trpost, state_shape, currents, sd, "trpost").clone();
  b.neurons = b.v_state.numel();
  b.beta = check_scalar_tensor(beta, currents, sd, "beta");
  b.theta = check_scalar_tensor(theta, currents, sd, "theta");
  b.s = at::empty(currents.sizes(), b.currents.options());
  std::vector<int64_t> saved_shape(currents.sizes().begin(), currents.sizes().end());
  saved_shape[0] = b.steps - b.save_from;
  b.psi_saved = at::empty(saved_shape, b.v_state.options());
  b.prev_saved = at::empty(saved_shape, b.v_state.options());
  return b;
}

TraceSequenceBuffers prepare_trace_sequence(const at::Tensor& x, const at::Tensor& trace, int64_t save_from) {
  check_floating(x, "x");
  TORCH_CHECK(x.dim() >= 1, "x: expected a sequence [T, ...], got a 0-d tensor");
  const auto sd = state_dtype(x.scalar_type());
  TraceSequenceBuffers b;
  b.steps = x.size(0);
  b.save_from = check_save_from(save_from, b.steps);
  b.x = x.contiguous();
  b.state = state_like(trace, x.sizes().slice(1), x, sd, "trace").clone();
  b.size = b.state.numel();
  std::vector<int64_t> saved_shape(x.sizes().begin(), x.sizes().end());
  saved_shape[0] = b.steps - b.save_from;
  b.saved = at::empty(saved_shape, b.state.options());
  return b;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> prepare_pre_trace(const at::Tensor& trpre, const at::Tensor& x) {
  check_floating(x, "x");
  const at::Tensor tr = state_like(trpre, x.sizes(), x, state_dtype(x.scalar_type()), "trpre");
  return {tr, x.contiguous(), at::empty(x.sizes(), tr.options())};
}

}  // namespace stllr

TORCH_LIBRARY(stllr, m) {
  // save_from is a SymInt: under torch.compile it stays symbolic (T - loss_steps), so a new
  // loss_steps or sequence length does not recompile; the kernels receive it as int64_t.
  m.def("lif_step(Tensor current, Tensor v, Tensor trpost, Tensor beta, Tensor theta, "
        "float lambda_post, int psi, int reset, int post) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pre_trace(Tensor trpre, Tensor x, float lambda_pre) -> Tensor");
  m.def("lif_sequence(Tensor currents, Tensor v, Tensor trpost, Tensor beta, Tensor theta, "
        "float lambda_post, int psi, int reset, int post, SymInt save_from) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("trace_sequence(Tensor x, Tensor trace, float decay, SymInt save_from) -> (Tensor, Tensor)");
  // Outputs not asked for (needs_input_grad / needs_bias_grad false) are empty tensors.
  m.def("linear_backward(Tensor grad_s, Tensor? psi, Tensor? causal, Tensor? trpost_prev, "
        "Tensor x, Tensor trpre, Tensor weight, float alpha_post, float alpha_pre, "
        "bool needs_input_grad, bool needs_bias_grad) -> (Tensor, Tensor, Tensor)");
  m.def("conv_backward(Tensor grad_s, Tensor psi, Tensor causal, Tensor trpost_prev, Tensor x, "
        "Tensor trpre, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, int groups, "
        "float alpha_post, float alpha_pre, bool needs_input_grad, bool needs_bias_grad) "
        "-> (Tensor, Tensor, Tensor)");
  // The recurrent layer over T steps (T = 1: one online step); see reference.recurrent_sequence.
  m.def("recurrent_sequence(Tensor x, Tensor weight, Tensor? bias, Tensor weight_rec, Tensor s_prev, "
        "Tensor v, Tensor trpost, Tensor trpre, Tensor trrec, Tensor beta, Tensor theta, "
        "float lambda_post, float lambda_pre, int psi, int reset, int post, SymInt save_from, "
        "bool first_traces_only=False) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("readout_sequence(Tensor x, Tensor weight, Tensor? bias, Tensor v, Tensor trpre, Tensor beta, "
        "float lambda_pre, SymInt save_from) -> (Tensor, Tensor, Tensor)");
  m.def("recurrent_backward(Tensor grad_s, Tensor psi, Tensor causal, Tensor trpost_prev, Tensor x, "
        "Tensor trpre, Tensor s_prev, Tensor trrec_prev, Tensor weight, Tensor weight_rec, "
        "float alpha_post, float alpha_pre, bool needs_input_grad, bool needs_bias_grad) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  // The same gradients from the loss steps' sequences [D, B, ...] and the first loss step's traces
  // (reverse-time form); see reference.recurrent_backward_reverse.
  m.def("recurrent_backward_reverse(Tensor grad_s, Tensor psi, Tensor causal, Tensor trpost_prev, Tensor x, "
        "Tensor trpre_first, Tensor s_prev, Tensor trrec_first, Tensor weight, Tensor weight_rec, "
        "float lambda_pre, float alpha_post, float alpha_pre, bool needs_input_grad, bool needs_bias_grad) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("standardize_backward(Tensor grad_w_hat, Tensor normalized, Tensor scale, Tensor gain) "
        "-> (Tensor, Tensor)");
}

// `import stllr_kernels._C` loads this shared library; the ops are then under torch.ops.stllr.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "stllr custom ops", -1, nullptr};
  return PyModule_Create(&module_def);
}
