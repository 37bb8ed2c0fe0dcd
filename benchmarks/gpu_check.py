"""Check and time every kernel of every GPU backend against the reference, on the paper's shapes.

    python benchmarks/gpu_check.py                  # on a CUDA machine, < 4 minutes
    python benchmarks/gpu_check.py --cpu-interpret  # tiny shapes in Triton's CPU interpreter: checks
                                                    # the script's logic, timings meaningless

For each GPU backend that can run (`triton`; `cuda` when the extension is built) and each op:
1. correctness on the device against `stllr_kernels.reference` (same inputs, fp32);
2. time (triton.testing.do_bench, median) against the reference op and a physical limit:
   - lif_step, pre_trace, lif_sequence, trace_sequence: GB/s of counted bytes vs a measured
     device-to-device copy (goal >= 80%);
   - linear eligibility (dW, db, dx): TFLOP/s vs torch.mm doing the same FLOPs on ready operands
     (goal >= 70%);
   - conv eligibility: vs the bare cuDNN weight- and input-gradient calls on ready operands; both
     Triton designs (conv_weight, implicit_gemm) are timed, to settle the dispatch rule;
   - the time-fused SHD feed-forward layer vs step-by-step (goal >= 3x).
Shapes: SHD (B=128, 700->450, recurrent 450, T=100, D=90), Gesture VGG convs (B=16, 32x32..4x4,
T=20, D=5). Writes a markdown table to benchmarks/results/gpu_check.md and prints it last.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import os
import platform
import statistics
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "gpu_check.md")


STAGES = ("element-wise", "sequences", "linear", "time-fused", "conv", "half")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-interpret", action="store_true",
                   help="run tiny shapes on the CPU in Triton's interpreter (logic check only)")
    p.add_argument("--out", default=None, help=f"markdown output (default {RESULTS}; with "
                   "--cpu-interpret nothing is written unless given)")
    p.add_argument("--budget", type=float, default=170.0,
                   help="seconds after which remaining timings are skipped (rows say so)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    p.add_argument("--no-warm", action="store_true",
                   help="skip compiling the kernels in parallel processes before the timed run")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.cpu_interpret:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton / stllr_kernels are imported

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import stllr_kernels  # noqa: E402
from stllr_kernels import reference as R  # noqa: E402
from stllr_kernels.backends import BACKEND_MODULES, unavailable_reason  # noqa: E402
from stllr_kernels.config import RuleConfig  # noqa: E402
from stllr_kernels.nn import LinearSTLLR  # noqa: E402

GPU_BACKENDS = ("triton", "cuda")
F32 = torch.float32

# ----------------------------------------------------------------------------- shapes

def shapes(tiny: bool) -> dict:
    """The paper's models (SPEC section 7); `tiny` scales them down for the interpreter."""
    if tiny:
        return dict(B=3, K=40, N=35, T=5, D=3, gB=2, gT=4, gD=2,
                    convs=[(2, 8, 8), (8, 16, 4)], copy_mib=4)
    vgg = [(2, 64, 32), (64, 128, 32), (128, 256, 16), (256, 256, 16), (256, 512, 8),
           (512, 512, 8), (512, 512, 4), (512, 512, 4)]  # (C_in, C_out, H=W), 3x3, pad 1
    return dict(B=128, K=700, N=450, T=100, D=90, gB=16, gT=20, gD=5, convs=vgg, copy_mib=512)


# ----------------------------------------------------------------------------- timing

class Clock:
    """Times callables: do_bench median on a GPU, a perf_counter median in the interpreter."""

    def __init__(self, device, budget: float):
        self.device, self.start, self.budget = device, time.time(), budget

    def over_budget(self) -> bool:
        return time.time() - self.start > self.budget

    def ms(self, fn) -> float:
        if self.device.type == "cuda":
            import triton.testing
            return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
        fn()
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def copy_gbps(clock: Clock, mib: int) -> float:
    """Measured device-to-device copy bandwidth (read + write bytes per second)."""
    src = torch.empty(mib * 2 ** 18, dtype=F32, device=clock.device).uniform_()
    dst = torch.empty_like(src)
    ms = clock.ms(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e6


# ----------------------------------------------------------------------------- comparisons

def max_err(got, want, keep=None) -> float:
    """Largest |got - want| (where `keep` is True); 0 for empty tensors."""
    diff = (got.float() - want.float()).abs()
    if keep is not None:
        diff = diff[keep.expand_as(diff)]
    return float(diff.max()) if diff.numel() else 0.0


def spikes_agree(got_s, want_s, per_neuron_dims=0):
    """Spike agreement allowing flips within float rounding of the threshold (the GPU may fuse
    beta*v + I into one FMA): returns (fraction flipped, mask of neurons never flipped)."""
    flipped = got_s != want_s
    frac = float(flipped.float().mean()) if flipped.numel() else 0.0
    keep = ~flipped.any(0, keepdim=True) if per_neuron_dims else ~flipped
    return frac, keep


def verdict(err: float, scale: float, flips: float = 0.0, rtol: float = 1e-4) -> str:
    ok = err <= rtol * max(1.0, scale) and flips <= 1e-4
    return f"{'ok' if ok else 'FAIL'} ({err:.1e}{f', {flips:.0e} flips' if flips else ''})"


# ----------------------------------------------------------------------------- the checks

class Report:
    def __init__(self):
        self.rows = []

    def add(self, op, shape, provider, check="", ms=None, ref_ms=None, achieved="", limit="",
            pct=None, note=""):
        self.rows.append((op, shape, provider, check, _f(ms), _f(ref_ms),
                          f"{ref_ms / ms:.2f}x" if ms and ref_ms else "", achieved, limit,
                          f"{pct:.0f}%" if pct is not None else "", note))

    @contextlib.contextmanager
    def guard(self, op, shape, provider):
        """Record an exception of one provider's check as a row and go on with the others."""
        try:
            yield
        except Exception as exc:  # a failing kernel must not cost the rest of the table
            first = (str(exc).strip().splitlines() or [""])[0][:160].replace("|", "/")
            self.add(op, shape, provider, f"ERROR {type(exc).__name__}: {first}")

    def markdown(self) -> str:
        head = ("| op | shape | provider | check vs reference (max abs err) | ms | reference ms | "
                "speedup | achieved | limit | % of limit | note |")
        lines = [head, "|" + "---|" * 11]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in self.rows]
        return "\n".join(lines)


def _f(ms):
    return "" if ms is None else f"{ms:.4f}"


def providers(device) -> dict:
    """GPU backends that can run here: name -> op module (and why the others cannot)."""
    found, missing = {}, {}
    for name in GPU_BACKENDS:
        reason = unavailable_reason(name, device.type)
        if reason is None:
            found[name] = importlib.import_module(f"stllr_kernels.backends.{BACKEND_MODULES[name]}")
        else:
            missing[name] = reason
    return found, missing


def check_elementwise(rep, clock, provs, S, copy_rate):
    dev = clock.device
    beta, theta = R.beta_of(torch.tensor(5.0, device=dev)), R.theta_of(torch.tensor(0.6, device=dev))
    cfg = RuleConfig(0.5, 1.0, 1.0, 1.0, "fast_sigmoid", "soft", "psi")
    c0 = S["convs"][0]
    cases = [("SHD", (S["B"], S["N"])), ("VGG layer 1", (S["gB"], c0[1], c0[2], c0[2]))]
    for name_, shape in cases:
        label = f"{name_} {'x'.join(map(str, shape))}"
        cur = torch.randn(shape, device=dev)
        v, tr = torch.randn(shape, device=dev), torch.rand(shape, device=dev)
        x = (torch.rand(shape, device=dev) < 0.2).float()
        n = cur.numel()
        want = R.lif_step(cur, v, tr, beta, theta, cfg)
        want_tr = R.pre_trace(tr, x, 0.8)
        ref_ms = clock.ms(lambda: R.lif_step(cur, v, tr, beta, theta, cfg))
        ref_tr_ms = clock.ms(lambda: R.pre_trace(tr, x, 0.8))
        for name, ops in provs.items():
            with rep.guard("lif_step", label, name):
                got = ops.lif_step(cur, v, tr, beta, theta, cfg)
                flips, keep = spikes_agree(got[0], want[0])
                err = max(max_err(g, w, keep) for g, w in zip(got[1:], want[1:]))
                ms = clock.ms(lambda: ops.lif_step(cur, v, tr, beta, theta, cfg))
                gbps = 28 * n / ms / 1e6  # reads I, v, trpost; writes s, v, trpost, psi (fp32)
                rep.add("lif_step", label, name, verdict(err, 1.0, flips), ms, ref_ms,
                        f"{gbps:.3g} GB/s", f"copy {copy_rate:.3g} GB/s", 100 * gbps / copy_rate)
            with rep.guard("pre_trace", label, name):
                err = max_err(ops.pre_trace(tr, x, 0.8), want_tr)
                ms = clock.ms(lambda: ops.pre_trace(tr, x, 0.8))
                gbps = 12 * n / ms / 1e6
                rep.add("pre_trace", label, name, verdict(err, 1.0), ms, ref_tr_ms, f"{gbps:.3g} GB/s",
                        f"copy {copy_rate:.3g} GB/s", 100 * gbps / copy_rate)


def check_sequences(rep, clock, provs, S, copy_rate):
    dev = clock.device
    beta, theta = R.beta_of(torch.tensor(5.0, device=dev)), R.theta_of(torch.tensor(0.6, device=dev))
    c0 = S["convs"][0]
    cases = [("SHD", S["T"], S["D"], (S["B"], S["N"]), "fast_sigmoid"),
             ("VGG layer 1", S["gT"], S["gD"], (S["gB"], c0[1], c0[2], c0[2]), "triangle")]
    for name_, T, D, step_shape, psi in cases:
        label = f"{name_} T={T} D={D} {'x'.join(map(str, step_shape))}"
        if clock.over_budget():
            rep.add("lif_sequence", label, "-", note="skipped: time budget")
            continue
        cfg = RuleConfig(0.5, 1.0, 1.0, 1.0, psi, "soft", "psi")
        cur = torch.randn(T, *step_shape, device=dev) * 0.5
        v, tr = torch.zeros(step_shape, device=dev), torch.zeros(step_shape, device=dev)
        xs = (torch.rand(T, *step_shape, device=dev) < 0.2).float()
        save_from = T - D
        n = v.numel()
        want = R.lif_sequence(cur, v, tr, beta, theta, cfg, save_from)
        want_tr = R.trace_sequence(xs, tr, 0.8, save_from)
        ref_ms = clock.ms(lambda: R.lif_sequence(cur, v, tr, beta, theta, cfg, save_from))
        ref_tr_ms = clock.ms(lambda: R.trace_sequence(xs, tr, 0.8, save_from))
        bytes_seq = 4 * n * (2 * T + 2 * D + 4)   # I and s per step, psi and trpost_prev per loss step
        bytes_tr = 4 * n * (T + D + 2)
        for name, ops in provs.items():
            with rep.guard("lif_sequence", label, name):
                got = ops.lif_sequence(cur, v, tr, beta, theta, cfg, save_from)
                flips, keep = spikes_agree(got[0], want[0], per_neuron_dims=1)
                err = max(max_err(got[1], want[1], keep[0]), max_err(got[2], want[2], keep[0]),
                          max_err(got[3], want[3], keep), max_err(got[4], want[4], keep))
                ms = clock.ms(lambda: ops.lif_sequence(cur, v, tr, beta, theta, cfg, save_from))
                gbps = bytes_seq / ms / 1e6
                rep.add("lif_sequence", label, name, verdict(err, 1.0, flips), ms, ref_ms,
                        f"{gbps:.3g} GB/s", f"copy {copy_rate:.3g} GB/s", 100 * gbps / copy_rate)
            with rep.guard("trace_sequence", label, name):
                got_tr = ops.trace_sequence(xs, tr, 0.8, save_from)
                err = max(max_err(g, w) for g, w in zip(got_tr, want_tr))
                ms = clock.ms(lambda: ops.trace_sequence(xs, tr, 0.8, save_from))
                gbps = bytes_tr / ms / 1e6
                rep.add("trace_sequence", label, name, verdict(err, 1.0 / 0.2), ms, ref_tr_ms,
                        f"{gbps:.3g} GB/s", f"copy {copy_rate:.3g} GB/s", 100 * gbps / copy_rate)


def rel_err(got, want) -> float:
    """Largest error of a list of outputs, each relative to its own largest magnitude."""
    return max(max_err(g, w) / max(1.0, float(w.float().abs().max()))
               for g, w in zip(got, want) if w is not None)


def linear_args(dev, rows, n, k, dtype=F32):
    L = torch.randn(rows, n, device=dev).to(dtype)
    psi, prev = torch.rand(rows, n, device=dev), torch.rand(rows, n, device=dev)
    x, trpre = (torch.rand(rows, k, device=dev) < 0.2).to(dtype), torch.rand(rows, k, device=dev)
    W = torch.randn(n, k, device=dev).to(dtype)
    return (L, psi, psi, prev, x, trpre, W, 1.0, 1.0, True, True)


def check_linear(rep, clock, provs, S):
    dev = clock.device
    B, N, K, D = S["B"], S["N"], S["K"], S["D"]
    cases = [(f"SHD ff {B}x{K}->{N}", B, N, K), (f"SHD rec {B}x{N}->{N}", B, N, N),
             (f"SHD ff time-fused {D}x{B}x{K}->{N}", D * B, N, K)]
    for label, rows, n, k in cases:
        if clock.over_budget():
            rep.add("linear_backward", label, "-", note="skipped: time budget")
            continue
        args = linear_args(dev, rows, n, k)
        L, W = args[0], args[6]
        want = R.linear_backward(*args)  # exact fp32 reference, whatever the precision below
        # the physical reference: the same 6*B*N*K FLOPs as plain GEMMs on operands made in advance
        A, X2 = torch.randn(n, 2 * rows, device=dev), torch.randn(2 * rows, k, device=dev)
        flops = 6 * rows * n * k
        previous = torch.get_float32_matmul_precision()
        try:
            for precision, tag, rtol in (("highest", "fp32", 1e-4), ("high", "tf32", 5e-3)):
                torch.set_float32_matmul_precision(precision)
                ref_ms = clock.ms(lambda: R.linear_backward(*args))
                mm_ms = clock.ms(lambda: (torch.mm(A, X2), torch.mm(L, W)))
                mm_rate = flops / mm_ms / 1e9
                rep.add("linear_backward", f"{label} {tag}", "torch.mm (same FLOPs)", "", mm_ms, ref_ms,
                        f"{mm_rate:.3g} TFLOP/s", "", None)
                for name, ops in provs.items():
                    with rep.guard("linear_backward", f"{label} {tag}", name):
                        err = rel_err(ops.linear_backward(*args), want)
                        ms = clock.ms(lambda: ops.linear_backward(*args))
                        rate = flops / ms / 1e9
                        rep.add("linear_backward", f"{label} {tag}", name,
                                verdict(err, 1.0, rtol=rtol) + " rel", ms, ref_ms, f"{rate:.3g} TFLOP/s",
                                f"mm {mm_rate:.3g} TFLOP/s", 100 * mm_ms / ms)
        finally:
            torch.set_float32_matmul_precision(previous)


def conv_args(dev, B, cin, cout, hw, dtype=F32):
    post = (B, cout, hw, hw)
    L = torch.randn(post, device=dev).to(dtype)
    psi, prev = torch.rand(post, device=dev), torch.rand(post, device=dev)
    x = (torch.rand(B, cin, hw, hw, device=dev) < 0.2).to(dtype)
    trpre = torch.rand(B, cin, hw, hw, device=dev)
    W = torch.randn(cout, cin, 3, 3, device=dev).to(dtype)
    return (L, psi, psi, prev, x, trpre, W, 1, 1, 1, 1, -1.0, 1.0, True, True)


def conv_variants(provs):
    """(label, op module, (env var, value) or None): both Triton weight-gradient designs."""
    variants = []
    for name, ops in provs.items():
        if name == "triton":
            from stllr_kernels.backends.triton import conv as triton_conv
            variants += [(f"triton/{m}", ops, (triton_conv.CONV_WGRAD_ENV, m))
                         for m in triton_conv.CONV_WGRAD_METHODS]
        else:
            variants.append((name, ops, None))
    return variants


def with_env(env, fn):
    """fn() with os.environ[env[0]] = env[1] (env None: unchanged), restored afterwards."""
    if env is None:
        return fn()
    saved = os.environ.get(env[0])
    os.environ[env[0]] = env[1]
    try:
        return fn()
    finally:
        if saved is None:
            os.environ.pop(env[0], None)
        else:
            os.environ[env[0]] = saved


def check_conv(rep, clock, provs, S):
    dev = clock.device
    B = S["gB"]
    for cin, cout, hw in S["convs"]:
        label = f"VGG {B}x{cin}x{hw}x{hw} -> {cout}, 3x3"
        if clock.over_budget():
            rep.add("conv_backward", label, "-", note="skipped: time budget")
            continue
        args = conv_args(dev, B, cin, cout, hw)
        L, x, W = args[0], args[4], args[6]
        want = R.conv_backward(*args)
        ref_ms = clock.ms(lambda: R.conv_backward(*args))
        # the physical reference: cuDNN's two calls on operands prepared in advance
        inputs, grads = torch.cat([x, args[5]]), torch.cat([L, L])
        floor_ms = clock.ms(lambda: (
            torch.nn.grad.conv2d_weight(inputs, W.shape, grads, 1, 1),
            torch.nn.grad.conv2d_input(x.shape, W, L, 1, 1)))
        rep.add("conv_backward", label, "cuDNN wgrad+dgrad only", "", floor_ms, ref_ms)
        for name, ops, env in conv_variants(provs):
            with rep.guard("conv_backward", label, name):
                err = rel_err(with_env(env, lambda: ops.conv_backward(*args)), want)
                ms = with_env(env, lambda: clock.ms(lambda: ops.conv_backward(*args)))
                rep.add("conv_backward", label, name, verdict(err, 1.0, rtol=1e-4) + " rel", ms, ref_ms,
                        "", f"cuDNN {floor_ms:.4f} ms", 100 * floor_ms / ms)


def check_half(rep, clock, provs, S):
    """bf16 / fp16 inputs (tensor-core tl.dot paths the CPU interpreter cannot run) vs the fp32
    reference on the same values; timed against the reference in the same dtype."""
    dev = clock.device
    B, N, K = S["B"], S["N"], S["K"]
    cin, cout, hw = S["convs"][min(2, len(S["convs"]) - 1)]
    for dtype, tag in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        if clock.over_budget():
            rep.add(f"{tag} checks", "", "-", note="skipped: time budget")
            continue
        args = linear_args(dev, B, N, K, dtype)
        want = R.linear_backward(*args)
        ref_ms = clock.ms(lambda: R.linear_backward(*args))
        label = f"SHD ff {B}x{K}->{N} {tag}"
        for name, ops in provs.items():
            with rep.guard("linear_backward", label, name):
                err = rel_err(ops.linear_backward(*args), want)
                ms = clock.ms(lambda: ops.linear_backward(*args))
                rep.add("linear_backward", label, name, verdict(err, 1.0, rtol=2e-2) + " rel", ms, ref_ms)
        args = conv_args(dev, S["gB"], cin, cout, hw, dtype)
        want = R.conv_backward(*args)
        ref_ms = clock.ms(lambda: R.conv_backward(*args))
        label = f"VGG {S['gB']}x{cin}x{hw}x{hw} -> {cout}, 3x3 {tag}"
        for name, ops, env in conv_variants(provs):
            with rep.guard("conv_backward", label, name):
                err = rel_err(with_env(env, lambda: ops.conv_backward(*args)), want)
                ms = with_env(env, lambda: clock.ms(lambda: ops.conv_backward(*args)))
                rep.add("conv_backward", label, name, verdict(err, 1.0, rtol=2e-2) + " rel", ms, ref_ms)


def with_backend(name, fn):
    stllr_kernels.set_backend(name)
    try:
        return fn()
    finally:
        stllr_kernels.set_backend(None)


def check_time_fused(rep, clock, provs, S):
    """The SHD feed-forward layer: step-by-step (T calls, D backwards) vs one sequence call."""
    dev = clock.device
    B, N, K, T, D = S["B"], S["N"], S["K"], S["T"], S["D"]
    label = f"SHD LinearSTLLR {K}->{N} B={B} T={T} D={D}"
    if clock.over_budget():
        rep.add("time-fused layer", label, "-", note="skipped: time budget")
        return
    torch.manual_seed(0)
    layer = LinearSTLLR(K, N, leak=5.0, factors=(0.5, 1.0, 1.0, 1.0)).to(dev)
    xs = (torch.rand(T, B, K, device=dev) < 0.1).float()
    w = torch.randn(T, B, N, device=dev)

    def step_mode():
        layer.reset_state()
        for t in range(T):
            s = layer(xs[t])
            if t >= T - D:
                (s * w[t]).sum().backward()

    def sequence_mode():
        layer.reset_state()
        s = layer(xs, loss_steps=D)
        (s[T - D:] * w[T - D:]).sum().backward()

    def grads(fn):
        layer.zero_grad(set_to_none=True)
        fn()
        return [p.grad.clone() for p in (layer.weight, layer.bias, layer.gain)]

    ref_grads = with_backend("torch", lambda: grads(step_mode))
    ref_step_ms = with_backend("torch", lambda: clock.ms(step_mode))
    for name in ["torch", *provs]:
        with rep.guard("layer time-fused", label, name):
            err = rel_err(with_backend(name, lambda: grads(sequence_mode)), ref_grads)
            step_ms = ref_step_ms if name == "torch" else with_backend(name, lambda: clock.ms(step_mode))
            seq_ms = with_backend(name, lambda: clock.ms(sequence_mode))
            rep.add("layer step-by-step", label, name, "", step_ms, ref_step_ms)
            rep.add("layer time-fused", label, name,
                    verdict(err, 1.0, rtol=1e-3) + " rel (grads vs torch step-by-step)", seq_ms,
                    ref_step_ms, f"{step_ms / seq_ms:.2f}x vs own step-by-step", "goal 3x", None)
    layer.zero_grad(set_to_none=True)


def warm_caches(stages, budget: float) -> None:
    """Compile every kernel variant before the timed run, one process per stage in parallel: Triton
    compiles the autotune configs one after another, which alone could take minutes, and keeps
    what it compiled in its on-disk cache, which the timed run then reads."""
    t0 = time.time()
    cmd = [sys.executable, os.path.abspath(__file__), "--no-warm", "--out", os.devnull]
    procs = [subprocess.Popen(cmd + ["--stages", s], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for s in stages if s]
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, budget / 2 - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"[gpu_check] parallel compile warm-up: {time.time() - t0:.1f} s", file=sys.stderr)


def main(argv=None) -> int:
    args = ARGS if argv is None and ARGS is not None else parse_args(argv)
    tiny = args.cpu_interpret
    if tiny:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("gpu_check: --cpu-interpret needs TRITON_INTERPRET=1 before triton is imported "
                  "(run the script directly, or set it in the environment)", file=sys.stderr)
            return 2
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here (torch.cuda.is_available() is False; torch "
                  f"{torch.__version__}). Run it on a GPU machine, or use --cpu-interpret for a tiny "
                  "logic check in Triton's interpreter.", file=sys.stderr)
            return 2
        device = torch.device("cuda")
    torch.manual_seed(0)
    S = shapes(tiny)
    clock = Clock(device, args.budget)
    if not tiny and not args.no_warm:
        warm_caches(args.stages.split(","), args.budget)
    provs, missing = providers(device)
    rep = Report()
    copy_rate = copy_gbps(clock, S["copy_mib"])
    rep.add("device copy", f"{S['copy_mib']} MiB fp32", "torch copy_", "", None, None,
            f"{copy_rate:.3g} GB/s", "", None)
    stages = {"element-wise": lambda: check_elementwise(rep, clock, provs, S, copy_rate),
              "sequences": lambda: check_sequences(rep, clock, provs, S, copy_rate),
              "linear": lambda: check_linear(rep, clock, provs, S),
              "time-fused": lambda: check_time_fused(rep, clock, provs, S),
              "conv": lambda: check_conv(rep, clock, provs, S),
              "half": lambda: check_half(rep, clock, provs, S)}
    chosen = [name for name in args.stages.split(",") if name]
    unknown = sorted(set(chosen) - set(stages))
    if unknown:
        print(f"gpu_check: --stages: unknown {unknown}; expected some of {list(stages)}", file=sys.stderr)
        return 2
    for name in chosen:
        t0 = time.time()
        stages[name]()
        print(f"[gpu_check] {name}: {time.time() - t0:.1f} s", file=sys.stderr)
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}), Triton interpreter"
    import triton
    header = [
        "# gpu_check: fused kernels vs the reference and physical limits",
        "",
        f"- device: {dev_name}; torch {torch.__version__}, triton {triton.__version__}, "
        f"stllr_kernels {stllr_kernels.__version__}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"total {time.time() - clock.start:.0f} s",
        f"- command: `python benchmarks/gpu_check.py{' --cpu-interpret' if tiny else ''}`",
        f"- providers: {', '.join(provs) or 'none'}"
        + "".join(f"; {n} not run: {r}" for n, r in missing.items()),
        "- goals (recorded, not asserted): element-wise and sequence kernels >= 80% of copy GB/s; "
        "linear eligibility >= 70% of torch.mm's rate for the same FLOPs; time-fused SHD layer >= 3x "
        "its step-by-step time. Speedup = reference ms / ms.",
    ]
    if tiny:
        header.append("- **interpreter run: the timings are meaningless; this only checks the logic**")
    text = "\n".join(header) + "\n\n" + rep.markdown() + "\n"
    out = args.out or (None if tiny else RESULTS)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
    print(text)
    return 1 if any(r[3].startswith(("FAIL", "ERROR")) for r in rep.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
