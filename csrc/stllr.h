// Shared by the CPU (.cpp) and CUDA (.cu) kernels of the stllr extension.
//
// Integer codes passed through the op schemas. stllr_kernels/psi.py is the source of truth;
// stllr_kernels/backends/cpu_cuda.py maps names to these codes and tests check every code.
//   psi   (PSI_CODES):   0 fast_sigmoid  1 / (1 + 100|u|)^2
//                        1 triangle      0.3 * max(0, 1 - |u|)
//                        2 sigmoid       4 * sigmoid(4u) * (1 - sigmoid(4u))
//   reset (RESET_MODES): 0 soft  v+ = v - theta * s      1 hard  v+ = v * (1 - s)
//   post  (POST_MODES):  0 psi   trpost accumulates psi  1 spike trpost accumulates s
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>

namespace stllr {

constexpr int kFastSigmoid = 0, kTriangle = 1, kSigmoid = 2, kNumPsi = 3;
constexpr int kSoft = 0, kHard = 1;
constexpr int kPostPsi = 0, kPostSpike = 1;

// Elements per at::parallel_for task below which a pass stays on one thread (ATen's GRAIN_SIZE).
constexpr int64_t kGrainSize = 32768;

// Psi(u), with the operations in the order of psi.py so float32 results match the reference.
template <int PSI, typename T>
C10_HOST_DEVICE inline T psi_of(T u) {
  const T au = std::abs(u);
  if constexpr (PSI == kFastSigmoid) {
    const T d = T(1) + T(100) * au;
    return T(1) / (d * d);
  } else if constexpr (PSI == kTriangle) {
    const T r = T(1) - au;
    // NaN stays NaN, as in clamp(min=0); written out because fmax (and std::max with swapped arguments)
    // return the non-NaN operand
    return T(0.3) * (r < T(0) ? T(0) : r);
  } else {
    const T sg = T(1) / (T(1) + std::exp(-(T(4) * u)));
    return T(4) * sg * (T(1) - sg);
  }
}

// The spike of u = v - theta (reference.spike_of): heaviside(u), 0 at u = 0, where u is finite; NaN where
// u is NaN or +-inf (a diverged neuron shows in every output and loss). u - u is 0 or NaN: two vector ops,
// where a select on isfinite made the loop ~1.5x slower (no -ffinite-math-only: the compiler keeps u - u).
template <typename T>
C10_HOST_DEVICE inline T spike_of(T u) {
  return (u > T(0) ? T(1) : T(0)) + (u - u);
}

// One neuron, one step (docs/rule.md section 1). T is the state type (float or double).
template <int PSI, int RESET, int POST, typename T>
struct LifUpdate {
  T spike, v, trpost, psi;
  C10_HOST_DEVICE inline LifUpdate(T current, T v_prev, T trpost_prev, T beta, T theta, T lambda_post) {
    const T v_t = beta * v_prev + current;
    const T u = v_t - theta;
    spike = spike_of(u);
    v = RESET == kSoft ? v_t - theta * spike : v_t * (T(1) - spike);
    psi = psi_of<PSI>(u);
    trpost = lambda_post * trpost_prev + (POST == kPostSpike ? spike : psi);
  }
};

// One neuron of the recurrent layer, one step: the LIF on W x[t] + W_rec s[t-1] (added in the input
// dtype, as the reference adds), its post trace and the trace of its own spikes; with `save`, what
// the backward keeps (psi, trpost[t-1], s[t-1], trrec[t-1]). The C++ loop and the CUDA kernel share it.
template <int PSI, int RESET, int POST, typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void recurrent_neuron_step(
    int64_t i, bool save, const scalar_t* __restrict__ cur, const scalar_t* __restrict__ rec,
    const scalar_t* __restrict__ sp, acc_t* __restrict__ v, acc_t* __restrict__ tr, acc_t* __restrict__ trrec,
    acc_t beta, acc_t theta, acc_t lambda_post, acc_t lambda_pre, scalar_t* __restrict__ s,
    acc_t* __restrict__ psi, acc_t* __restrict__ prev, scalar_t* __restrict__ sp_saved,
    acc_t* __restrict__ trrec_prev) {
  const scalar_t current = cur[i] + rec[i];
  const acc_t tr_old = tr[i], trrec_old = trrec[i];
  const LifUpdate<PSI, RESET, POST, acc_t> up(static_cast<acc_t>(current), v[i], tr_old, beta, theta, lambda_post);
  s[i] = static_cast<scalar_t>(up.spike);
  v[i] = up.v;
  tr[i] = up.trpost;
  trrec[i] = lambda_pre * trrec_old + up.spike;
  if (save) {
    psi[i] = up.psi;
    prev[i] = tr_old;
    sp_saved[i] = sp[i];
    trrec_prev[i] = trrec_old;
  }
}

// Calls f(integral_constant<PSI>, integral_constant<RESET>, integral_constant<POST>) so that each
// combination is compiled as its own loop (no branch inside the vectorised loop).
template <typename F>
inline void dispatch_lif_config(int64_t psi, int64_t reset, int64_t post, F&& f) {
  auto with_post = [&](auto p, auto r) {
    if (post == kPostSpike) f(p, r, std::integral_constant<int, kPostSpike>{});
    else f(p, r, std::integral_constant<int, kPostPsi>{});
  };
  auto with_reset = [&](auto p) {
    if (reset == kHard) with_post(p, std::integral_constant<int, kHard>{});
    else with_post(p, std::integral_constant<int, kSoft>{});
  };
  if (psi == kTriangle) with_reset(std::integral_constant<int, kTriangle>{});
  else if (psi == kSigmoid) with_reset(std::integral_constant<int, kSigmoid>{});
  else with_reset(std::integral_constant<int, kFastSigmoid>{});
}

// ---------------------------------------------------------------- argument checks (ops.cpp)

// States are kept in at least float32 (reference.state_dtype).
c10::ScalarType state_dtype(c10::ScalarType input);
void check_floating(const at::Tensor& t, const char* name);
void check_same_device(const at::Tensor& t, const at::Tensor& like, const char* name);
void check_lif_codes(int64_t psi, int64_t reset, int64_t post);
// beta / theta: one element on the current's device; returned as a 0-d tensor of `dtype`.
at::Tensor check_scalar_tensor(const at::Tensor& t, const at::Tensor& like, c10::ScalarType dtype,
                               const char* name);
// `t` converted to `dtype`, contiguous, checked to have `shape` and the device of `like`.
at::Tensor state_like(const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& like,
                      c10::ScalarType dtype, const char* name);
int64_t check_save_from(int64_t save_from, int64_t steps);

// ---------------------------------------------------------------- launch preparation (ops.cpp)
// Each op's launcher (CPU or CUDA) gets its inputs checked, converted and contiguous, and its outputs
// allocated, from one of these; the kernels then only loop.

struct LifStepBuffers {
  at::Tensor current, v, trpost, beta, theta;  // inputs (beta, theta: 0-d, state dtype)
  at::Tensor s, v_out, trpost_out, psi;        // outputs
};
LifStepBuffers prepare_lif_step(const at::Tensor& current, const at::Tensor& v, const at::Tensor& trpost,
                                const at::Tensor& beta, const at::Tensor& theta, int64_t psi,
                                int64_t reset, int64_t post);

struct LifSequenceBuffers {
  at::Tensor currents, beta, theta;             // inputs, currents viewed as [T, N]
  at::Tensor v_state, trpost_state;             // fresh copies of v, trpost: updated in place
  at::Tensor s, psi_saved, prev_saved;          // outputs
  int64_t steps, neurons, save_from;
};
LifSequenceBuffers prepare_lif_sequence(const at::Tensor& currents, const at::Tensor& v,
                                        const at::Tensor& trpost, const at::Tensor& beta,
                                        const at::Tensor& theta, int64_t psi, int64_t reset,
                                        int64_t post, int64_t save_from);

struct TraceSequenceBuffers {
  at::Tensor x;                // input [T, ...], contiguous
  at::Tensor state, saved;     // state: a fresh copy of the trace, updated in place
  int64_t steps, size, save_from;
};
TraceSequenceBuffers prepare_trace_sequence(const at::Tensor& x, const at::Tensor& trace, int64_t save_from);

// pre_trace: returns {trpre (state dtype, contiguous), x (contiguous), output}.
std::tuple<at::Tensor, at::Tensor, at::Tensor> prepare_pre_trace(const at::Tensor& trpre, const at::Tensor& x);

// ---------------------------------------------------------------- eligibility (eligibility.cpp)

// The fused element-wise pass of the backward, over rows m < M of [M, N] and [M, K] operands, all
// contiguous in the state dtype; optional operands are undefined tensors. Writes
//   a[m]     = alpha_post * L * trpost_prev    (only when trpost_prev is defined)
//   a[M' + m] = alpha_pre * L * causal          (M' = M if trpost_prev is defined, else 0)
//   b[m] = x, b[M' + m] = trpre                 (the GEMM's right operand, same layout)
//   g[m] = L * psi                              (only when g is defined)
// so that dW = a^T b is one GEMM with the batch doubled.
struct Products {
  at::Tensor L, psi, causal, trpost_prev, x, trpre;  // inputs
  at::Tensor a, b, g;                                // outputs
  double alpha_post, alpha_pre;
};
using ProductsFn = void (*)(const Products&);
void eligibility_products_cpu(const Products& p);

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_impl(
    const at::Tensor& grad_s, const std::optional<at::Tensor>& psi,
    const std::optional<at::Tensor>& causal, const std::optional<at::Tensor>& trpost_prev,
    const at::Tensor& x, const at::Tensor& trpre, const at::Tensor& weight, double alpha_post,
    double alpha_pre, bool needs_input_grad, bool needs_bias_grad, ProductsFn products);

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward_impl(
    const at::Tensor& grad_s, const at::Tensor& psi, const at::Tensor& causal,
    const at::Tensor& trpost_prev, const at::Tensor& x, const at::Tensor& trpre,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, double alpha_post, double alpha_pre,
    bool needs_input_grad, bool needs_bias_grad, ProductsFn products);

// ---------------------------------------------------------------- recurrent layers (recurrent.cpp)

// One step of the recurrent layer, element-wise over B*N neurons (device specific): with
// I = current + rec (added in the input dtype, as the reference does), the LIF step updates v,
// trpost in place, writes s, and trrec = lambda_pre * trrec + s (in place). When psi is defined
// (a loss step) it also writes psi[t], trpost[t-1] (prev), s[t-1] and trrec[t-1].
struct RecurrentStep {
  at::Tensor current, rec, s_prev;                 // [B, N] in the input dtype, contiguous
  at::Tensor v, trpost, trrec;                     // states, state dtype, updated in place
  at::Tensor s;                                    // output [B, N], input dtype
  at::Tensor psi, prev, s_prev_saved, trrec_prev;  // outputs of a loss step (else undefined)
  at::Tensor beta, theta;                          // 0-d, state dtype
  double lambda_post, lambda_pre;
  int64_t psi_code, reset, post;
};
using RecurrentStepFn = void (*)(const RecurrentStep&);
// out[t] = beta * out[t-1] + currents[t], out[-1] = v, over currents [T, n] (state dtype out).
using LeakyScanFn = void (*)(const at::Tensor& currents, const at::Tensor& v, const at::Tensor& beta,
                             const at::Tensor& out);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
recurrent_sequence_impl(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const at::Tensor& weight_rec, const at::Tensor& s_prev, const at::Tensor& v,
                        const at::Tensor& trpost, const at::Tensor& trpre, const at::Tensor& trrec,
                        const at::Tensor& beta, const at::Tensor& theta, double lambda_post, double lambda_pre,
                        int64_t psi, int64_t reset, int64_t post, int64_t save_from, bool first_traces_only,
                        RecurrentStepFn step);

std::tuple<at::Tensor, at::Tensor, at::Tensor> readout_sequence_impl(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& v,
    const at::Tensor& trpre, const at::Tensor& beta, double lambda_pre, int64_t save_from, LeakyScanFn scan);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrent_backward_impl(
    const at::Tensor& grad_s, const at::Tensor& psi, const at::Tensor& causal, const at::Tensor& trpost_prev,
    const at::Tensor& x, const at::Tensor& trpre, const at::Tensor& s_prev, const at::Tensor& trrec_prev,
    const at::Tensor& weight, const at::Tensor& weight_rec, double alpha_post, double alpha_pre,
    bool needs_input_grad, bool needs_bias_grad, ProductsFn products);

// The reverse-time form of recurrent_backward (reference.recurrent_backward_reverse): one pass over
// n = B*N neurons (device specific) walks the D loss steps backwards with G = lambda_pre * G + L * causal
// and writes, all [D, n] contiguous in the state dtype,
//   A[d] = alpha_post * L * trpost_prev + (d > 0 ? alpha_pre * G : 0),  g[d] = L * psi,
// and C = alpha_pre * G_0 [n]; dW = A^T x + C^T trpre_first is then two ATen GEMMs.
struct ReverseEligibility {
  at::Tensor L, psi, causal, trpost_prev;  // inputs [D, n]
  at::Tensor A, C, g;                      // outputs
  double lambda_pre, alpha_post, alpha_pre;
};
using ReverseEligibilityFn = void (*)(const ReverseEligibility&);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrent_backward_reverse_impl(
    const at::Tensor& grad_s, const at::Tensor& psi, const at::Tensor& causal, const at::Tensor& trpost_prev,
    const at::Tensor& x, const at::Tensor& trpre_first, const at::Tensor& s_prev, const at::Tensor& trrec_first,
    const at::Tensor& weight, const at::Tensor& weight_rec, double lambda_pre, double alpha_post,
    double alpha_pre, bool needs_input_grad, bool needs_bias_grad, ReverseEligibilityFn scan);

// ---------------------------------------------------------------- standardization (standardize.cpp)

// Checks the arguments of standardize_backward; returns fan_in.
int64_t check_standardize_backward(const at::Tensor& grad_w_hat, const at::Tensor& normalized,
                                   const at::Tensor& scale, const at::Tensor& gain);
// The closed-form backward through ATen ops (any device): (dW, dgain).
std::tuple<at::Tensor, at::Tensor> standardize_backward_aten(const at::Tensor& grad_w_hat,
                                                             const at::Tensor& normalized,
                                                             const at::Tensor& scale, const at::Tensor& gain);

}  // namespace stllr
