// CPU kernels of the LIF ops: lif_step (one step, one pass over the neurons) and lif_sequence (all
// T steps in one pass, the state of a tile of neurons kept in a small local buffer).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "stllr.h"

namespace stllr {
namespace {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

struct LifParams {
  double beta, theta, lambda_post;
};

// One step for neurons [0, n) of contiguous arrays; a plain loop the compiler vectorises.
template <int PSI, int RESET, int POST, typename scalar_t, typename acc_t>
void lif_step_range(const scalar_t* __restrict__ current, const acc_t* __restrict__ v,
                    const acc_t* __restrict__ trpost, scalar_t* __restrict__ s_out,
                    acc_t* __restrict__ v_out, acc_t* __restrict__ trpost_out,
                    acc_t* __restrict__ psi_out, int64_t n, acc_t beta, acc_t theta, acc_t lambda_post) {
  for (int64_t i = 0; i < n; ++i) {
    const LifUpdate<PSI, RESET, POST, acc_t> up(static_cast<acc_t>(current[i]), v[i], trpost[i], beta,
                                                theta, lambda_post);
    s_out[i] = static_cast<scalar_t>(up.spike);
    v_out[i] = up.v;
    trpost_out[i] = up.trpost;
    psi_out[i] = up.psi;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_step_cpu(
    const at::Tensor& current, const at::Tensor& v, const at::Tensor& trpost, const at::Tensor& beta,
    const at::Tensor& theta, double lambda_post, int64_t psi, int64_t reset, int64_t post) {
  check_floating(current, "current");
  check_lif_codes(psi, reset, post);
  const auto sd = state_dtype(current.scalar_type());
  const at::Tensor cur = current.contiguous();
  const at::Tensor v_in = state_like(v, current.sizes(), current, sd, "v");
  const at::Tensor tr_in = state_like(trpost, current.sizes(), current, sd, "trpost");
  const at::Tensor beta_t = check_scalar_tensor(beta, current, sd, "beta");
  const at::Tensor theta_t = check_scalar_tensor(theta, current, sd, "theta");
  at::Tensor s = at::empty(current.sizes(), current.options().memory_format(at::MemoryFormat::Contiguous));
  const auto state_opts = s.options().dtype(sd);
  at::Tensor v_out = at::empty(current.sizes(), state_opts);
  at::Tensor tr_out = at::empty(current.sizes(), state_opts);
  at::Tensor psi_out = at::empty(current.sizes(), state_opts);
  const int64_t n = cur.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, cur.scalar_type(), "lif_step_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t b = beta_t.item<acc_t>(), th = theta_t.item<acc_t>();
    const acc_t lam = static_cast<acc_t>(lambda_post);
    const scalar_t* c = cur.const_data_ptr<scalar_t>();
    const acc_t* vp = v_in.const_data_ptr<acc_t>();
    const acc_t* tp = tr_in.const_data_ptr<acc_t>();
    scalar_t* sp = s.mutable_data_ptr<scalar_t>();
    acc_t *vo = v_out.mutable_data_ptr<acc_t>(), *to = tr_out.mutable_data_ptr<acc_t>(),
          *po = psi_out.mutable_data_ptr<acc_t>();
    dispatch_lif_config(psi, reset, post, [&](auto P, auto R, auto Q) {
      at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
        lif_step_range<decltype(P)::value, decltype(R)::value, decltype(Q)::value>(
            c + begin, vp + begin, tp + begin, sp + begin, vo + begin, to + begin, po + begin,
            end - begin, b, th, lam);
      });
    });
  });
  return {s, v_out, tr_out, psi_out};
}

constexpr int64_t kTile = 512;  // neurons whose state stays in a local buffer across the T steps

// One step for the neurons of a tile, state updated in place; SAVE also writes trpost[t-1] and psi[t].
template <int PSI, int RESET, int POST, bool SAVE, typename scalar_t, typename acc_t>
void lif_tile_step(const scalar_t* __restrict__ current, acc_t* v, acc_t* trpost,
                   scalar_t* __restrict__ s_out, acc_t* __restrict__ psi_out,
                   acc_t* __restrict__ prev_out, int64_t n, acc_t beta, acc_t theta, acc_t lambda_post) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t tr = trpost[i];
    const LifUpdate<PSI, RESET, POST, acc_t> up(static_cast<acc_t>(current[i]), v[i], tr, beta, theta,
                                                lambda_post);
    s_out[i] = static_cast<scalar_t>(up.spike);
    v[i] = up.v;
    trpost[i] = up.trpost;
    if constexpr (SAVE) {
      prev_out[i] = tr;
      psi_out[i] = up.psi;
    }
  }
}

// All T steps for neurons [n0, n0 + len) (len <= kTile) of [T, N] arrays.
template <int PSI, int RESET, int POST, typename scalar_t, typename acc_t>
void lif_sequence_tile(const scalar_t* currents, acc_t* v_state, acc_t* tr_state, scalar_t* s_out,
                       acc_t* psi_saved, acc_t* prev_saved, int64_t T, int64_t N, int64_t save_from,
                       int64_t n0, int64_t len, acc_t beta, acc_t theta, acc_t lambda_post) {
  acc_t v_buf[kTile], tr_buf[kTile];
  std::copy(v_state + n0, v_state + n0 + len, v_buf);
  std::copy(tr_state + n0, tr_state + n0 + len, tr_buf);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = t * N + n0;
    if (t >= save_from) {
      const int64_t saved = (t - save_from) * N + n0;
      lif_tile_step<PSI, RESET, POST, true>(currents + row, v_buf, tr_buf, s_out + row, psi_saved + saved,
                                            prev_saved + saved, len, beta, theta, lambda_post);
    } else {
      lif_tile_step<PSI, RESET, POST, false>(currents + row, v_buf, tr_buf, s_out + row,
                                             static_cast<acc_t*>(nullptr), static_cast<acc_t*>(nullptr),
                                             len, beta, theta, lambda_post);
    }
  }
  std::copy(v_buf, v_buf + len, v_state + n0);
  std::copy(tr_buf, tr_buf + len, tr_state + n0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_sequence_cpu(
    const at::Tensor& currents, const at::Tensor& v, const at::Tensor& trpost, const at::Tensor& beta,
    const at::Tensor& theta, double lambda_post, int64_t psi, int64_t reset, int64_t post,
    int64_t save_from) {
  check_floating(currents, "currents");
  TORCH_CHECK(currents.dim() >= 1, "currents: expected a sequence [T, ...], got a 0-d tensor");
  check_lif_codes(psi, reset, post);
  const auto sd = state_dtype(currents.scalar_type());
  const int64_t T = currents.size(0);
  const auto state_shape = currents.sizes().slice(1);
  save_from = check_save_from(save_from, T);
  const at::Tensor cur = currents.contiguous();
  // v_state / tr_state are updated in place: fresh copies, never the caller's tensors
  at::Tensor v_state = state_like(v, state_shape, currents, sd, "v").clone();
  at::Tensor tr_state = state_like(trpost, state_shape, currents, sd, "trpost").clone();
  const at::Tensor beta_t = check_scalar_tensor(beta, currents, sd, "beta");
  const at::Tensor theta_t = check_scalar_tensor(theta, currents, sd, "theta");
  at::Tensor s = at::empty(currents.sizes(), cur.options());
  std::vector<int64_t> saved_shape(currents.sizes().begin(), currents.sizes().end());
  saved_shape[0] = T - save_from;
  at::Tensor psi_saved = at::empty(saved_shape, cur.options().dtype(sd));
  at::Tensor prev_saved = at::empty(saved_shape, cur.options().dtype(sd));
  const int64_t N = v_state.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, cur.scalar_type(), "lif_sequence_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t b = beta_t.item<acc_t>(), th = theta_t.item<acc_t>();
    const acc_t lam = static_cast<acc_t>(lambda_post);
    const scalar_t* c = cur.const_data_ptr<scalar_t>();
    scalar_t* sp = s.mutable_data_ptr<scalar_t>();
    acc_t *vs = v_state.mutable_data_ptr<acc_t>(), *ts = tr_state.mutable_data_ptr<acc_t>();
    acc_t *ps = psi_saved.mutable_data_ptr<acc_t>(), *prs = prev_saved.mutable_data_ptr<acc_t>();
    const int64_t tiles = (N + kTile - 1) / kTile;
    const int64_t grain = std::max<int64_t>(1, kGrainSize / (kTile * std::max<int64_t>(T, 1)));
    dispatch_lif_config(psi, reset, post, [&](auto P, auto R, auto Q) {
      at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
        for (int64_t tile = begin; tile < end; ++tile) {
          const int64_t n0 = tile * kTile;
          lif_sequence_tile<decltype(P)::value, decltype(R)::value, decltype(Q)::value>(
              c, vs, ts, sp, ps, prs, T, N, save_from, n0, std::min(kTile, N - n0), b, th, lam);
        }
      });
    });
  });
  return {s, v_state, tr_state, psi_saved, prev_saved};
}

}  // namespace
}  // namespace stllr

TORCH_LIBRARY_IMPL(stllr, CPU, m) {
  m.impl("lif_step", &stllr::lif_step_cpu);
  m.impl("lif_sequence", &stllr::lif_sequence_cpu);
}
