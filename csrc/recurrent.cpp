// The recurrent and readout layers (reference.recurrent_sequence / readout_sequence /
// recurrent_backward), shared by the CPU and CUDA backends: the GEMMs go through ATen (one input
// GEMM over all T; per step one s[t-1] @ W_rec^T), the per-step element-wise work through a
// device-specific function (CPU here, CUDA in cuda/recurrent.cu): recurrent add + LIF + post trace
// + recurrent trace in one pass over the neurons. recurrent_backward_reverse: one reverse-time pass
// over the loss steps builds the GEMM operands, then dW and dW_rec are each mm + addmm_.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include "stllr.h"

namespace stllr {

namespace {

std::tuple<at::Tensor, at::Tensor> trace_sequence_op(const at::Tensor& x, const at::Tensor& trace, double decay,
                                                     int64_t save_from) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("stllr::trace_sequence", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       double, int64_t)>();
  return op.call(x, trace, decay, save_from);
}

// W x[t] + b for all T steps at once: [T, B, N] in x's dtype, contiguous.
at::Tensor input_currents(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          int64_t N) {
  check_floating(weight, "weight");
  check_same_device(weight, x, "weight");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == N && weight.size(1) == x.size(2), "weight: expected shape [",
              N, ", ", x.size(2), "], got ", weight.sizes());
  if (bias.has_value() && bias->defined()) {
    check_same_device(*bias, x, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "bias: expected shape [", N, "], got ", bias->sizes());
  }
  return at::linear(x, weight, bias).contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
recurrent_sequence_impl(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const at::Tensor& weight_rec, const at::Tensor& s_prev, const at::Tensor& v,
                        const at::Tensor& trpost, const at::Tensor& trpre, const at::Tensor& trrec,
                        const at::Tensor& beta, const at::Tensor& theta, double lambda_post, double lambda_pre,
                        int64_t psi, int64_t reset, int64_t post, int64_t save_from, bool first_traces_only,
                        RecurrentStepFn step) {
  check_floating(x, "x");
  TORCH_CHECK(x.dim() == 3, "x: expected a sequence [T, B, K], got shape ", x.sizes());
  check_lif_codes(psi, reset, post);
  check_floating(weight_rec, "weight_rec");
  check_same_device(weight_rec, x, "weight_rec");
  const int64_t T = x.size(0), B = x.size(1), N = weight_rec.size(0);
  TORCH_CHECK(weight_rec.dim() == 2 && weight_rec.size(1) == N, "weight_rec: expected a square [N, N], got ",
              weight_rec.sizes());
  const auto sd = state_dtype(x.scalar_type());
  const int64_t sf = check_save_from(save_from, T), D = T - sf;
  const std::vector<int64_t> bn = {B, N};
  at::Tensor currents = input_currents(x, weight, bias, N);
  // first_traces_only (what the reverse-time backward needs): trpre and trrec[t-1] are kept at the
  // first loss step only, so the trace is run in two parts, up to that step and after it
  const int64_t kept = first_traces_only ? std::min<int64_t>(D, 1) : D;
  at::Tensor trpre_saved, trpre_new;
  if (kept < D) {
    auto [first, at_first] = trace_sequence_op(x.narrow(0, 0, sf + 1), trpre, lambda_pre, sf);
    trpre_saved = first;
    trpre_new = std::get<1>(trace_sequence_op(x.narrow(0, sf + 1, T - sf - 1), at_first, lambda_pre, T - sf - 1));
  } else {
    std::tie(trpre_saved, trpre_new) = trace_sequence_op(x, trpre, lambda_pre, sf);
  }
  RecurrentStep st;
  st.v = state_like(v, bn, x, sd, "v").clone();
  st.trpost = state_like(trpost, bn, x, sd, "trpost").clone();
  st.trrec = state_like(trrec, bn, x, sd, "trrec").clone();
  at::Tensor sp = state_like(s_prev, bn, x, x.scalar_type(), "s_prev");
  st.beta = check_scalar_tensor(beta, x, sd, "beta");
  st.theta = check_scalar_tensor(theta, x, sd, "theta");
  st.lambda_post = lambda_post;
  st.lambda_pre = lambda_pre;
  st.psi_code = psi;
  st.reset = reset;
  st.post = post;
  at::Tensor s_seq = at::empty({T, B, N}, x.options());
  at::Tensor psi_saved = at::empty({D, B, N}, st.v.options());
  at::Tensor prev_saved = at::empty({D, B, N}, st.v.options());
  at::Tensor trrec_saved = at::empty({kept, B, N}, st.v.options());
  // the later loss steps write their trrec[t-1] here (never read)
  const at::Tensor trrec_scratch = kept < D ? at::empty(bn, st.v.options()) : at::Tensor();
  at::Tensor sp_saved = at::empty({D, B, N}, x.options());
  const at::Tensor w_rec_t = weight_rec.to(x.scalar_type()).t();
  for (int64_t t = 0; t < T && B * N > 0; ++t) {
    st.current = currents[t];
    st.rec = at::mm(sp, w_rec_t);
    st.s_prev = sp;
    st.s = s_seq[t];
    const bool save = t >= sf;
    st.psi = save ? psi_saved[t - sf] : at::Tensor();
    st.prev = save ? prev_saved[t - sf] : at::Tensor();
    st.s_prev_saved = save ? sp_saved[t - sf] : at::Tensor();
    st.trrec_prev = save ? (t - sf < kept ? trrec_saved[t - sf] : trrec_scratch) : at::Tensor();
    step(st);
    sp = st.s;
  }
  return {s_seq, st.v, st.trpost, trpre_new, st.trrec, psi_saved, prev_saved, trpre_saved, sp_saved, trrec_saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> readout_sequence_impl(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& v,
    const at::Tensor& trpre, const at::Tensor& beta, double lambda_pre, int64_t save_from, LeakyScanFn scan) {
  check_floating(x, "x");
  TORCH_CHECK(x.dim() == 3, "x: expected a sequence [T, B, K], got shape ", x.sizes());
  const int64_t T = x.size(0), B = x.size(1), N = weight.dim() == 2 ? weight.size(0) : -1;
  const auto sd = state_dtype(x.scalar_type());
  const int64_t sf = check_save_from(save_from, T);
  at::Tensor currents = input_currents(x, weight, bias, N);
  at::Tensor v_state = state_like(v, {B, N}, x, sd, "v");
  at::Tensor b = check_scalar_tensor(beta, x, sd, "beta");
  at::Tensor out = at::empty({T, B, N}, v_state.options());
  if (T > 0 && B * N > 0) scan(currents.view({T, B * N}), v_state.view({B * N}), b, out.view({T, B * N}));
  auto [trpre_saved, trpre_new] = trace_sequence_op(x, trpre, lambda_pre, sf);
  return {out, trpre_new, trpre_saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrent_backward_impl(
    const at::Tensor& grad_s, const at::Tensor& psi, const at::Tensor& causal, const at::Tensor& trpost_prev,
    const at::Tensor& x, const at::Tensor& trpre, const at::Tensor& s_prev, const at::Tensor& trrec_prev,
    const at::Tensor& weight, const at::Tensor& weight_rec, double alpha_post, double alpha_pre,
    bool needs_input_grad, bool needs_bias_grad, ProductsFn products) {
  auto [grad_x, grad_w, grad_b] = linear_backward_impl(grad_s, psi, causal, trpost_prev, x, trpre, weight,
                                                       alpha_post, alpha_pre, needs_input_grad, needs_bias_grad,
                                                       products);
  auto rec = linear_backward_impl(grad_s, psi, causal, trpost_prev, s_prev, trrec_prev, weight_rec, alpha_post,
                                  alpha_pre, false, false, products);
  return {grad_x, grad_w, grad_b, std::get<1>(rec)};
}

namespace {

// `t` as a contiguous [rows..., cols] tensor in `dtype`, checked to have exactly `shape`.
at::Tensor operand(const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& like, c10::ScalarType dtype,
                   const char* name, const char* what) {
  check_floating(t, name);
  check_same_device(t, like, name);
  TORCH_CHECK(t.sizes() == shape, name, ": expected ", what, " of shape ", shape, ", got ", t.sizes());
  return t.to(dtype).contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrent_backward_reverse_impl(
    const at::Tensor& grad_s, const at::Tensor& psi, const at::Tensor& causal, const at::Tensor& trpost_prev,
    const at::Tensor& x, const at::Tensor& trpre_first, const at::Tensor& s_prev, const at::Tensor& trrec_first,
    const at::Tensor& weight, const at::Tensor& weight_rec, double lambda_pre, double alpha_post,
    double alpha_pre, bool needs_input_grad, bool needs_bias_grad, ReverseEligibilityFn scan) {
  check_floating(grad_s, "grad_s");
  TORCH_CHECK(grad_s.dim() == 3, "grad_s: expected the loss steps' sequence [D, B, N], got shape ", grad_s.sizes());
  const int64_t D = grad_s.size(0), B = grad_s.size(1), N = grad_s.size(2);
  check_floating(weight, "weight");
  check_floating(weight_rec, "weight_rec");
  check_same_device(weight, grad_s, "weight");
  check_same_device(weight_rec, grad_s, "weight_rec");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == N, "weight: expected shape [N, K] with N = ", N,
              " (grad_s's last dim), got ", weight.sizes());
  TORCH_CHECK(weight_rec.dim() == 2 && weight_rec.size(0) == N && weight_rec.size(1) == N,
              "weight_rec: expected shape [", N, ", ", N, "], got ", weight_rec.sizes());
  const int64_t K = weight.size(1);
  const auto sd = state_dtype(grad_s.scalar_type());
  const std::vector<int64_t> dbn = {D, B, N}, dbk = {D, B, K}, bn = {B, N}, bk = {B, K};
  ReverseEligibility r;
  r.L = operand(grad_s, dbn, grad_s, sd, "grad_s", "a sequence");
  r.psi = operand(psi, dbn, grad_s, sd, "psi", "a sequence like grad_s");
  r.causal = operand(causal, dbn, grad_s, sd, "causal", "a sequence like grad_s");
  r.trpost_prev = operand(trpost_prev, dbn, grad_s, sd, "trpost_prev", "a sequence like grad_s");
  const at::Tensor xs = operand(x, dbk, grad_s, sd, "x", "a sequence [D, B, K]");
  const at::Tensor sp = operand(s_prev, dbn, grad_s, sd, "s_prev", "a sequence like grad_s");
  const at::Tensor tr0 = operand(trpre_first, bk, grad_s, sd, "trpre_first", "the first loss step's trace [B, K]");
  const at::Tensor rr0 = operand(trrec_first, bn, grad_s, sd, "trrec_first", "the first loss step's trace [B, N]");
  r.lambda_pre = lambda_pre;
  r.alpha_post = alpha_post;
  r.alpha_pre = alpha_pre;
  r.A = at::empty({D * B, N}, r.L.options());
  r.C = at::empty({B, N}, r.L.options());
  r.g = at::empty({D * B, N}, r.L.options());
  if (D > 0 && B * N > 0) scan(r);
  else r.C.zero_();
  at::Tensor grad_w = at::mm(r.A.t(), xs.view({D * B, K}));
  grad_w.addmm_(r.C.t(), tr0);
  at::Tensor grad_w_rec = at::mm(r.A.t(), sp.view({D * B, N}));
  grad_w_rec.addmm_(r.C.t(), rr0);
  at::Tensor grad_x = at::empty({0}, x.options());
  if (needs_input_grad) grad_x = at::mm(r.g, weight.to(sd)).to(x.scalar_type()).view(dbk);
  at::Tensor grad_b = at::empty({0}, weight.options());
  if (needs_bias_grad) grad_b = at::sum(r.g, {0}).to(weight.scalar_type());
  return {grad_x, grad_w.to(weight.scalar_type()), grad_b, grad_w_rec.to(weight_rec.scalar_type())};
}

namespace {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <int PSI, int RESET, int POST, bool SAVE, typename scalar_t, typename acc_t>
void recurrent_step_range(const scalar_t* __restrict__ cur, const scalar_t* __restrict__ rec,
                          const scalar_t* __restrict__ sp, acc_t* v, acc_t* tr, acc_t* trrec,
                          scalar_t* __restrict__ s, acc_t* __restrict__ psi, acc_t* __restrict__ prev,
                          scalar_t* __restrict__ sp_saved, acc_t* __restrict__ trrec_prev, int64_t n,
                          acc_t beta, acc_t theta, acc_t lambda_post, acc_t lambda_pre) {
  for (int64_t i = 0; i < n; ++i) {
    recurrent_neuron_step<PSI, RESET, POST>(i, SAVE, cur, rec, sp, v, tr, trrec, beta, theta, lambda_post,
                                            lambda_pre, s, psi, prev, sp_saved, trrec_prev);
  }
}

void recurrent_step_cpu(const RecurrentStep& st) {
  const int64_t n = st.s.numel();
  const bool save = st.psi.defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.s.scalar_type(), "recurrent_step_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t b = st.beta.item<acc_t>(), th = st.theta.item<acc_t>();
    const acc_t lam_post = static_cast<acc_t>(st.lambda_post), lam_pre = static_cast<acc_t>(st.lambda_pre);
    const scalar_t *cur = st.current.const_data_ptr<scalar_t>(), *rec = st.rec.const_data_ptr<scalar_t>(),
                   *sp = st.s_prev.const_data_ptr<scalar_t>();
    acc_t *v = st.v.mutable_data_ptr<acc_t>(), *tr = st.trpost.mutable_data_ptr<acc_t>(),
          *trrec = st.trrec.mutable_data_ptr<acc_t>();
    scalar_t* s = st.s.mutable_data_ptr<scalar_t>();
    acc_t* psi = save ? st.psi.mutable_data_ptr<acc_t>() : nullptr;
    acc_t* prev = save ? st.prev.mutable_data_ptr<acc_t>() : nullptr;
    scalar_t* sp_saved = save ? st.s_prev_saved.mutable_data_ptr<scalar_t>() : nullptr;
    acc_t* trrec_prev = save ? st.trrec_prev.mutable_data_ptr<acc_t>() : nullptr;
    dispatch_lif_config(st.psi_code, st.reset, st.post, [&](auto P, auto R, auto Q) {
      at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
        constexpr int p = decltype(P)::value, r = decltype(R)::value, q = decltype(Q)::value;
        if (save) {
          recurrent_step_range<p, r, q, true>(cur + begin, rec + begin, sp + begin, v + begin, tr + begin,
                                              trrec + begin, s + begin, psi + begin, prev + begin,
                                              sp_saved + begin, trrec_prev + begin, end - begin, b, th, lam_post,
                                              lam_pre);
        } else {
          recurrent_step_range<p, r, q, false>(cur + begin, rec + begin, sp + begin, v + begin, tr + begin,
                                               trrec + begin, s + begin, psi, prev, sp_saved, trrec_prev,
                                               end - begin, b, th, lam_post, lam_pre);
        }
      });
    });
  });
}

void leaky_scan_cpu(const at::Tensor& currents, const at::Tensor& v, const at::Tensor& beta, const at::Tensor& out) {
  const int64_t T = currents.size(0), n = currents.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, currents.scalar_type(), "leaky_scan_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t b = beta.item<acc_t>();
    const scalar_t* cur = currents.const_data_ptr<scalar_t>();
    const acc_t* v0 = v.const_data_ptr<acc_t>();
    acc_t* o = out.mutable_data_ptr<acc_t>();
    at::parallel_for(0, n, kGrainSize / std::max<int64_t>(T, 1) + 1, [&](int64_t begin, int64_t end) {
      const acc_t* prev = v0;
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* c = cur + t * n;
        acc_t* row = o + t * n;
        for (int64_t i = begin; i < end; ++i) row[i] = b * prev[i] + static_cast<acc_t>(c[i]);
        prev = row;
      }
    });
  });
}

// ReverseEligibility's pass: each thread owns a range of neurons and walks the D steps backwards,
// keeping G in C's slice of that range (scaled by alpha_pre at the end); reads and writes are
// contiguous per step, so the inner loops vectorise.
template <typename T>
void reverse_eligibility_cpu_typed(const ReverseEligibility& r) {
  const int64_t D = r.L.size(0), n = r.L.numel() / D;
  const T lam = static_cast<T>(r.lambda_pre), ap = static_cast<T>(r.alpha_post), ac = static_cast<T>(r.alpha_pre);
  const T *L = r.L.const_data_ptr<T>(), *psi = r.psi.const_data_ptr<T>(), *causal = r.causal.const_data_ptr<T>(),
          *prev = r.trpost_prev.const_data_ptr<T>();
  T *A = r.A.mutable_data_ptr<T>(), *C = r.C.mutable_data_ptr<T>(), *g = r.g.mutable_data_ptr<T>();
  at::parallel_for(0, n, std::max<int64_t>(1, kGrainSize / D), [&](int64_t begin, int64_t end) {
    const int64_t m = end - begin;
    T* __restrict__ G = C + begin;
    std::fill(G, G + m, T(0));
    for (int64_t d = D - 1; d >= 0; --d) {
      const int64_t o = d * n + begin;
      const T *__restrict__ Ld = L + o, *__restrict__ sd = psi + o, *__restrict__ cd = causal + o,
              *__restrict__ pd = prev + o;
      T *__restrict__ Ad = A + o, *__restrict__ gd = g + o;
      const T acd = d > 0 ? ac : T(0);  // the first step's causal term goes to C (its trace is carried in)
      for (int64_t i = 0; i < m; ++i) {
        const T l = Ld[i];
        const T G_new = lam * G[i] + l * cd[i];
        G[i] = G_new;
        Ad[i] = ap * (l * pd[i]) + acd * G_new;
        gd[i] = l * sd[i];
      }
    }
    for (int64_t i = 0; i < m; ++i) G[i] = ac * G[i];
  });
}

void reverse_eligibility_cpu(const ReverseEligibility& r) {
  if (r.L.scalar_type() == at::kDouble) reverse_eligibility_cpu_typed<double>(r);
  else reverse_eligibility_cpu_typed<float>(r);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrent_backward_reverse_cpu(
    const at::Tensor& grad_s, const at::Tensor& psi, const at::Tensor& causal, const at::Tensor& trpost_prev,
    const at::Tensor& x, const at::Tensor& trpre_first, const at::Tensor& s_prev, const at::Tensor& trrec_first,
    const at::Tensor& weight, const at::Tensor& weight_rec, double lambda_pre, double alpha_post,
    double alpha_pre, bool needs_input_grad, bool needs_bias_grad) {
  return recurrent_backward_reverse_impl(grad_s, psi, causal, trpost_prev, x, trpre_first, s_prev, trrec_first,
                                         weight, weight_rec, lambda_pre, alpha_post, alpha_pre, needs_input_grad,
                                         needs_bias_grad, &reverse_eligibility_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
recurrent_sequence_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const at::Tensor& weight_rec, const at::Tensor& s_prev, const at::Tensor& v,
                       const at::Tensor& trpost, const at::Tensor& trpre, const at::Tensor& trrec,
                       const at::Tensor& beta, const at::Tensor& theta, double lambda_post, double lambda_pre,
                       int64_t psi, int64_t reset, int64_t post, int64_t save_from, bool first_traces_only) {
  return recurrent_sequence_impl(x, weight, bias, weight_rec, s_prev, v, trpost, trpre, trrec, beta, theta,
                                 lambda_post, lambda_pre, psi, reset, post, save_from, first_traces_only,
                                 &recurrent_step_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> readout_sequence_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& v,
    const at::Tensor& trpre, const at::Tensor& beta, double lambda_pre, int64_t save_from) {
  return readout_sequence_impl(x, weight, bias, v, trpre, beta, lambda_pre, save_from, &leaky_scan_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrent_backward_cpu(
    const at::Tensor& grad_s, const at::Tensor& psi, const at::Tensor& causal, const at::Tensor& trpost_prev,
    const at::Tensor& x, const at::Tensor& trpre, const at::Tensor& s_prev, const at::Tensor& trrec_prev,
    const at::Tensor& weight, const at::Tensor& weight_rec, double alpha_post, double alpha_pre,
    bool needs_input_grad, bool needs_bias_grad) {
  return recurrent_backward_impl(grad_s, psi, causal, trpost_prev, x, trpre, s_prev, trrec_prev, weight,
                                 weight_rec, alpha_post, alpha_pre, needs_input_grad, needs_bias_grad,
                                 &eligibility_products_cpu);
}

}  // namespace
}  // namespace stllr

TORCH_LIBRARY_IMPL(stllr, CPU, m) {
  m.impl("recurrent_sequence", &stllr::recurrent_sequence_cpu);
  m.impl("readout_sequence", &stllr::readout_sequence_cpu);
  m.impl("recurrent_backward", &stllr::recurrent_backward_cpu);
  m.impl("recurrent_backward_reverse", &stllr::recurrent_backward_reverse_cpu);
}
