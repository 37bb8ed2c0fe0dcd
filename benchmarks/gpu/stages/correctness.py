"""Correctness of every op of one backend (`--provider triton` or `ext`: the CUDA extension, or its
CPU build in the interpreter run) against the reference on the device.

Order: the core rows first, one float32 case of each of the eleven ops (`core`), so that a stage cut
short still says whether every op is right; then the rest of the grid.

The grid: lif_step and lif_sequence over every Psi x reset x post in float32, two modes in bfloat16
and float16 currents, non-contiguous inputs and batch 1; pre_trace / trace_sequence in each dtype and
non-contiguous; linear_backward for post = psi / spike / the readout, the time-fused [D, B] rows,
non-contiguous and stride-0 (expanded) signals, bf16 and fp16, and fp16 with a learning signal of
3e-7 (where fp16 eligibility operands would underflow); conv_backward with post = spike, stride 2,
groups, channels-last, batch 1, bf16, fp16 and fp16 with the small signal; recurrent_sequence (exact
currents: spikes must match exactly) over three Psi x reset x post modes, save_from 0 / T, bf16;
readout_sequence; recurrent_backward (and its time-fused rows, bf16); recurrent_backward_reverse
(post = psi / spike, bf16); standardize_backward on linear and conv weights. Small-signal cases
compare each output divided by its largest reference value. A backend may refuse fp16 with an error
that says so (the row says "refused").
"""
from __future__ import annotations

import itertools

import torch

from stllr_kernels.psi import POST_MODES, PSI_CODES, RESET_MODES

from . import checks
from .inputs import (F32, beta_theta, conv_inputs, linear_inputs, readout_inputs, recurrent_backward_inputs,
                     recurrent_inputs, reverse_inputs, rule, spikes, standardize_inputs, strided_like)

HALF = (torch.bfloat16, torch.float16)
NAMES = {F32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# a learning signal this small makes fp16 products L * psi * causal subnormal (fp16's smallest normal
# is 6.1e-5): operands kept in fp16 lose most of their bits, operands kept in fp32 lose none
SMALL_SIGNAL = 3e-7
OPS = ("lif_step", "lif_sequence", "pre_trace", "trace_sequence", "linear_backward", "conv_backward",
       "recurrent_sequence", "readout_sequence", "recurrent_backward", "recurrent_backward_reverse",
       "standardize_backward")


def core_first(todo):
    """The first float32 case of every op, in OPS order, then the others in their order."""
    core = [next(c for c in todo if c[0] == op and c[2] is F32) for op in OPS if any(c[0] == op for c in todo)]
    return core + [c for c in todo if not any(c is k for k in core)]


def core(todo):
    """The first float32 case of every op (what the config stage runs for each autotune config)."""
    return core_first(todo)[:len({c[0] for c in todo})]


def run(ctx) -> None:
    name = ctx.args.provider if ctx.args.provider != "ext" else ctx.ext_name()
    oracle_precision(ctx)
    ops = ctx.providers([name]).get(name)
    if ops is None:
        return
    ctx.clock.start()
    todo = core_first(cases(ctx))
    if ctx.tiny:  # the interpreter run checks the stage's logic: the first case of each op suffices
        todo = core(todo)
    for check, case, dtype, fn in todo:
        if ctx.skip_if_over_budget(check, case):
            continue
        with ctx.guard(check, case, name):
            try:
                verdict = fn(ops)
            except Exception as exc:
                if dtype is torch.float16 and checks.refused_fp16(exc):
                    ctx.add(check, case, name, "ok", detail=f"refused: {exc}")
                    continue
                raise
            ctx.add(check, case, name, verdict.word, detail=verdict.detail)


def cases(ctx):
    """(check, case label, dtype, fn(ops) -> Verdict) for the whole grid."""
    dev, S = ctx.device, ctx.S
    beta, theta = beta_theta(dev)
    shape, T, D = S["grid_shape"], S["seq_T"], S["seq_D"]
    out = []

    def lif(shape, dtype, cfg, strided=False):
        def fn(ops):
            cur = torch.randn(shape, device=dev).to(dtype)
            v, tr = torch.randn(shape, device=dev), torch.rand(shape, device=dev)
            if strided:
                cur, v, tr = strided_like(cur), strided_like(v), strided_like(tr)
            return checks.lif_step(ops, cur, v, tr, beta, theta, cfg)
        return fn

    def seq(shape, dtype, cfg, strided=False):
        def fn(ops):
            cur = (torch.randn(T, *shape, device=dev) * 0.6).to(dtype)
            v, tr = torch.randn(shape, device=dev) * 0.3, torch.rand(shape, device=dev)
            if strided:
                cur = strided_like(cur)
            return checks.lif_sequence(ops, cur, v, tr, beta, theta, cfg, T - D)
        return fn

    modes = list(itertools.product(PSI_CODES, RESET_MODES, POST_MODES))
    for psi, reset, post in modes:
        label = f"{shape} {psi} {reset} post={post} fp32"
        out.append(("lif_step", label, F32, lif(shape, F32, rule(psi, reset, post))))
        out.append(("lif_sequence", f"T={T} D={D} " + label, F32, seq(shape, F32, rule(psi, reset, post))))
    for dtype, (psi, reset, post) in itertools.product(HALF, (modes[0], modes[-1])):
        label = f"{shape} {psi} {reset} post={post} {NAMES[dtype]}"
        out.append(("lif_step", label, dtype, lif(shape, dtype, rule(psi, reset, post))))
        out.append(("lif_sequence", f"T={T} D={D} " + label, dtype, seq(shape, dtype, rule(psi, reset, post))))
    out.append(("lif_step", f"{shape} non-contiguous", F32, lif(shape, F32, rule(), strided=True)))
    out.append(("lif_sequence", f"T={T} D={D} {shape} non-contiguous", F32, seq(shape, F32, rule(), strided=True)))
    one = (1, shape[-1])
    out.append(("lif_step", f"{one} batch 1", F32, lif(one, F32, rule("triangle"))))
    out.append(("lif_sequence", f"T={T} D={D} {one} batch 1", F32, seq(one, F32, rule("sigmoid"))))

    def trace(dtype, strided=False):
        def fn(ops):
            tr, x = torch.rand(shape, device=dev), spikes(shape, dev, dtype)
            if strided:
                tr, x = strided_like(tr), strided_like(x)
            return checks.pre_trace(ops, tr, x, 0.8)
        return fn

    def trace_seq(dtype, strided=False):
        def fn(ops):
            x, tr = spikes((T, *shape), dev, dtype), torch.rand(shape, device=dev)
            if strided:
                x = strided_like(x)
            return checks.trace_sequence(ops, x, tr, 0.8, T - D)
        return fn

    for dtype in (F32, *HALF):
        out.append(("pre_trace", f"{shape} {NAMES[dtype]}", dtype, trace(dtype)))
        out.append(("trace_sequence", f"T={T} D={D} {shape} {NAMES[dtype]}", dtype, trace_seq(dtype)))
    out.append(("pre_trace", f"{shape} non-contiguous", F32, trace(F32, True)))
    out.append(("trace_sequence", f"T={T} D={D} {shape} non-contiguous", F32, trace_seq(F32, True)))

    rows, n, k = S["lin"]

    def linear(lead, dtype=F32, variant="psi", layout="", scale=1.0):
        def fn(ops):
            args = list(linear_inputs(dev, lead, n, k, dtype, variant, scale))
            if layout == "non-contiguous":
                args[0], args[4], args[5] = (strided_like(args[0]), strided_like(args[4]),
                                             strided_like(args[5]))
            elif layout == "expanded":
                args[0] = args[0][..., :1, :].expand_as(args[0])
            return checks.linear_backward(ops, tuple(args), dtype, relative=scale != 1.0)
        return fn

    base = f"{rows}x{k}->{n}"
    for variant in ("psi", "spike", "readout"):
        out.append(("linear_backward", f"{base} post={variant} fp32", F32, linear((rows,), variant=variant)))
    out.append(("linear_backward", f"time-fused [{D}, {rows}]x{k}->{n} fp32", F32, linear((D, rows))))
    for layout in ("non-contiguous", "expanded"):
        out.append(("linear_backward", f"{base} {layout} fp32", F32, linear((rows,), layout=layout)))
    out.append(("linear_backward", f"1x{k}->{n} batch 1 fp32", F32, linear((1,))))
    for dtype in HALF:
        out.append(("linear_backward", f"{base} {NAMES[dtype]}", dtype, linear((rows,), dtype)))
    out.append(("linear_backward", f"{base} fp16, signal 3e-7 (relative)", torch.float16,
                linear((rows,), torch.float16, scale=SMALL_SIGNAL)))

    B, cin, cout, hw = S["conv"]

    def conv(b=B, ci=cin, co=cout, dtype=F32, scale=1.0, **kw):
        return lambda ops: checks.conv_backward(ops, conv_inputs(dev, b, ci, co, hw, dtype, scale=scale, **kw),
                                                dtype, relative=scale != 1.0)

    cbase = f"{B}x{cin}x{hw}x{hw}->{cout} 3x3"
    out.append(("conv_backward", f"{cbase} fp32", F32, conv()))
    out.append(("conv_backward", f"{cbase} post=spike fp32", F32, conv(variant="spike")))
    out.append(("conv_backward", f"{cbase} stride 2 fp32", F32, conv(stride=2)))
    out.append(("conv_backward", f"{B}x6x{hw}x{hw}->4 groups 2 fp32", F32, conv(ci=6, co=4, groups=2)))
    out.append(("conv_backward", f"{cbase} channels-last fp32", F32, conv(channels_last=True)))
    out.append(("conv_backward", f"1x{cin}x{hw}x{hw}->{cout} batch 1 fp32", F32, conv(b=1)))
    for dtype in HALF:
        out.append(("conv_backward", f"{cbase} {NAMES[dtype]}", dtype, conv(dtype=dtype)))
    out.append(("conv_backward", f"{cbase} fp16, signal 3e-7 (relative)", torch.float16,
                conv(dtype=torch.float16, scale=SMALL_SIGNAL)))
    out += recurrent_cases(ctx)
    return out


def recurrent_cases(ctx):
    """The recurrent and readout layers' ops and the standardization backward."""
    dev, S = ctx.device, ctx.S
    T, B, K, N = S["rec"]
    out = []

    def rec_seq(cfg, save_from, dtype=F32):
        return lambda ops: checks.recurrent_sequence(ops, recurrent_inputs(dev, T, B, K, N, dtype), cfg,
                                                     save_from, dtype)

    modes = (("fast_sigmoid", "soft", "psi"), ("triangle", "hard", "spike"), ("sigmoid", "soft", "psi"))
    for i, (psi, reset, post) in enumerate(modes):
        save_from = T // 2 if i == 0 else (0 if i == 1 else T)
        out.append(("recurrent_sequence", f"T={T} {B}x{K}->{N} {psi} {reset} post={post} save_from={save_from} fp32",
                    F32, rec_seq(rule(psi, reset, post), save_from)))
    out.append(("recurrent_sequence", f"T={T} {B}x{K}->{N} save_from={T // 2} bf16", torch.bfloat16,
                rec_seq(rule(), T // 2, torch.bfloat16)))

    def readout(save_from):
        return lambda ops: checks.readout_sequence(ops, readout_inputs(dev, T, B, K, N), save_from)

    out.append(("readout_sequence", f"T={T} {B}x{K}->{N} save_from={T // 2} fp32", F32, readout(T // 2)))
    out.append(("readout_sequence", f"T={T} {B}x{K}->{N} save_from={T} (nothing saved) fp32", F32, readout(T)))

    D = S["seq_D"]

    def rec_back(rows, dtype=F32):
        return lambda ops: checks.recurrent_backward(ops, recurrent_backward_inputs(dev, rows, K, N, dtype), dtype)

    out.append(("recurrent_backward", f"{B}x{K}->{N} fp32", F32, rec_back(B)))
    out.append(("recurrent_backward", f"time-fused [{D}x{B}]x{K}->{N} fp32", F32, rec_back(D * B)))
    out.append(("recurrent_backward", f"{B}x{K}->{N} bf16", torch.bfloat16, rec_back(B, torch.bfloat16)))

    def reverse(post="psi", dtype=F32):
        return lambda ops: checks.recurrent_backward_reverse(ops, reverse_inputs(dev, D, B, K, N, dtype, post), dtype)

    out.append(("recurrent_backward_reverse", f"D={D} {B}x{K}->{N} post=psi fp32", F32, reverse()))
    out.append(("recurrent_backward_reverse", f"D={D} {B}x{K}->{N} post=spike fp32", F32, reverse("spike")))
    out.append(("recurrent_backward_reverse", f"D={D} {B}x{K}->{N} bf16", torch.bfloat16,
                reverse(dtype=torch.bfloat16)))

    for shape in S["std_shapes"]:
        out.append(("standardize_backward", f"weight {shape} fp32", F32,
                    lambda ops, shape=shape: checks.standardize_backward(ops, standardize_inputs(dev, shape))))
    return out


def oracle_precision(ctx) -> None:
    """Show that the float32 oracles are float32: a matmul and a convolution against float64. TF32
    (10-bit mantissa) would leave relative errors near 1e-3; float32 stays near 1e-6."""
    dev = ctx.device
    a, b = torch.randn(256, 1024, device=dev), torch.randn(1024, 256, device=dev)
    x, w = torch.randn(4, 64, 16, 16, device=dev), torch.randn(64, 64, 3, 3, device=dev)

    def rel(got, want):
        return float((got.double() - want).norm() / want.norm())

    mm = rel(a @ b, a.double() @ b.double())
    conv = rel(torch.nn.functional.conv2d(x, w, padding=1),
               torch.nn.functional.conv2d(x.double(), w.double(), padding=1))
    from stllr_kernels.tolerance import oracle_state
    flags = ", ".join(f"{k}={v}" for k, v in oracle_state().items())
    ok = mm < 1e-5 and conv < 1e-5
    ctx.add("oracle precision", "fp32 matmul and conv2d vs float64", "torch", "ok" if ok else "FAIL",
            detail=f"relative error matmul {mm:.1e}, conv {conv:.1e} (TF32 would give ~1e-3); {flags}")
