// CPU kernels of the LIF ops: lif_step (one step, one pass over the neurons) and lif_sequence (all
// T steps in one pass, the state of a tile of neurons kept in a small local buffer).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "stllr.h"

namespace stllr {
namespace {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

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
  LifStepBuffers buf = prepare_lif_step(current, v, trpost, beta, theta, psi, reset, post);
  const int64_t n = buf.current.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, buf.current.scalar_type(), "lif_step_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t b = buf.beta.item<acc_t>(), th = buf.theta.item<acc_t>();
    const acc_t lam = static_cast<acc_t>(lambda_post);
    const scalar_t* c = buf.current.const_data_ptr<scalar_t>();
    const acc_t* vp = buf.v.const_data_ptr<acc_t>();
    const acc_t* tp = buf.trpost.const_data_ptr<acc_t>();
    scalar_t* sp = buf.s.mutable_data_ptr<scalar_t>();
    acc_t *vo = buf.v_out.mutable_data_ptr<acc_t>(), *to = buf.trpost_out.mutable_data_ptr<acc_t>(),
          *po = buf.psi.mutable_data_ptr<acc_t>();
    dispatch_lif_config(psi, reset, post, [&](auto P, auto R, auto Q) {
      at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
        lif_step_range<decltype(P)::value, decltype(R)::value, decltype(Q)::value>(
            c + begin, vp + begin, tp + begin, sp + begin, vo + begin, to + begin, po + begin,
            end - begin, b, th, lam);
      });
    });
  });
  return {buf.s, buf.v_out, buf.trpost_out, buf.psi};
}

constexpr int64_t kTile = 512;  // neurons whose state stays in a local buffer across the T steps

// One step for the neurons of a tile, state updated in place; SAVE also writes trpost[t-1] and psi[t].
template <int PSI, int RESET, int POST, bool SAVE, typename scalar_t, typename acc_t>
void lif_tile_step(const scalar_t* __restrict__ current, acc_t* __restrict__ v, acc_t* __restrict__ trpost,
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
  LifSequenceBuffers buf = prepare_lif_sequence(currents, v, trpost, beta, theta, psi, reset, post, save_from);
  const int64_t T = buf.steps, N = buf.neurons, sf = buf.save_from;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, buf.currents.scalar_type(), "lif_sequence_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t b = buf.beta.item<acc_t>(), th = buf.theta.item<acc_t>();
    const acc_t lam = static_cast<acc_t>(lambda_post);
    const scalar_t* c = buf.currents.const_data_ptr<scalar_t>();
    scalar_t* sp = buf.s.mutable_data_ptr<scalar_t>();
    acc_t *vs = buf.v_state.mutable_data_ptr<acc_t>(), *ts = buf.trpost_state.mutable_data_ptr<acc_t>();
    acc_t *ps = buf.psi_saved.mutable_data_ptr<acc_t>(), *prs = buf.prev_saved.mutable_data_ptr<acc_t>();
    const int64_t tiles = (N + kTile - 1) / kTile;
    const int64_t grain = std::max<int64_t>(1, kGrainSize / (kTile * std::max<int64_t>(T, 1)));
    dispatch_lif_config(psi, reset, post, [&](auto P, auto R, auto Q) {
      at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
        for (int64_t tile = begin; tile < end; ++tile) {
          const int64_t n0 = tile * kTile;
          lif_sequence_tile<decltype(P)::value, decltype(R)::value, decltype(Q)::value>(
              c, vs, ts, sp, ps, prs, T, N, sf, n0, std::min(kTile, N - n0), b, th, lam);
        }
      });
    });
  });
  return {buf.s, buf.v_state, buf.trpost_state, buf.psi_saved, buf.prev_saved};
}

}  // namespace
}  // namespace stllr

TORCH_LIBRARY_IMPL(stllr, CPU, m) {
  m.impl("lif_step", &stllr::lif_step_cpu);
  m.impl("lif_sequence", &stllr::lif_sequence_cpu);
}
