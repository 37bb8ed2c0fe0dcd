// CPU kernels of the trace ops: pre_trace (trace = decay * trace + x, one pass) and trace_sequence
// (all T steps in one pass, a tile of traces kept in a local buffer).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "stllr.h"

namespace stllr {
namespace {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t, typename acc_t>
void trace_range(const acc_t* trace, const scalar_t* __restrict__ x, acc_t* out, int64_t n, acc_t decay) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = decay * trace[i] + static_cast<acc_t>(x[i]);
  }
}

at::Tensor pre_trace_cpu(const at::Tensor& trpre, const at::Tensor& x, double lambda_pre) {
  auto [tr, xc, out] = prepare_pre_trace(trpre, x);
  const int64_t n = xc.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "pre_trace_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t* tp = tr.const_data_ptr<acc_t>();
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    acc_t* op = out.mutable_data_ptr<acc_t>();
    const acc_t decay = static_cast<acc_t>(lambda_pre);
    at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
      trace_range(tp + begin, xp + begin, op + begin, end - begin, decay);
    });
  });
  return out;
}

constexpr int64_t kTile = 1024;  // traces kept in a local buffer across the T steps

std::tuple<at::Tensor, at::Tensor> trace_sequence_cpu(const at::Tensor& x, const at::Tensor& trace,
                                                      double decay, int64_t save_from) {
  TraceSequenceBuffers buf = prepare_trace_sequence(x, trace, save_from);
  const int64_t T = buf.steps, N = buf.size, sf = buf.save_from;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, buf.x.scalar_type(), "trace_sequence_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* xp = buf.x.const_data_ptr<scalar_t>();
    acc_t* st = buf.state.mutable_data_ptr<acc_t>();
    acc_t* sv = buf.saved.mutable_data_ptr<acc_t>();
    const acc_t d = static_cast<acc_t>(decay);
    const int64_t tiles = (N + kTile - 1) / kTile;
    const int64_t grain = std::max<int64_t>(1, kGrainSize / (kTile * std::max<int64_t>(T, 1)));
    at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
      acc_t local[kTile];
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t n0 = tile * kTile, len = std::min(kTile, N - n0);
        std::copy(st + n0, st + n0 + len, local);
        for (int64_t t = 0; t < T; ++t) {
          trace_range(local, xp + t * N + n0, local, len, d);
          if (t >= sf) std::copy(local, local + len, sv + (t - sf) * N + n0);
        }
        std::copy(local, local + len, st + n0);
      }
    });
  });
  return {buf.saved, buf.state};
}

}  // namespace
}  // namespace stllr

TORCH_LIBRARY_IMPL(stllr, CPU, m) {
  m.impl("pre_trace", &stllr::pre_trace_cpu);
  m.impl("trace_sequence", &stllr::trace_sequence_cpu);
}
