"""Compile every Triton kernel of the `triton` backend for a GPU architecture, without a GPU.

    python benchmarks/compile_check.py                 # sm_90 (H100/H200), every autotune config
    python benchmarks/compile_check.py --quick         # one config per kernel (used by the tests)
    python benchmarks/compile_check.py --arch 80 --out benchmarks/results/compile_check_sm80.md
    make compile-check-triton36                        # the same with triton 3.6.0 (the H200 image's)

The CPU interpreter runs the kernels' Python semantics but never the GPU compiler, and it cannot run
bf16 tl.dot at all; this script takes every kernel through Triton's full pipeline (TTIR -> TTGIR ->
LLVM -> PTX -> cubin with the bundled ptxas) for each dtype / mode variant and each autotune config,
and reports per config: compile errors, shared memory against the architecture's limit (configs
over it would fail at launch and are skipped by the autotuner), and ptxas's register and spill
counts. It must run without TRITON_INTERPRET (it re-executes itself without it if set).
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "compile_check.md")
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}  # bytes per block
FLOAT_ARGS = {"lambda_post", "alpha_post", "alpha_pre", "decay"}
# Triton specialises integer arguments equal to 1 as constants: the unit strides of contiguous
# inputs, as the launchers pass them in the usual case (row-major [B, N], [B, K], [N, K] tensors)
DW_UNIT_STRIDES = {k: 1 for k in ("s_ln", "s_pn", "s_cn", "s_qn", "s_xk", "s_tk", "s_wk", "s_db")}
DX_UNIT_STRIDES = {k: 1 for k in ("s_ln", "s_pn", "s_wk", "s_xk")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 or 80")
    p.add_argument("--quick", action="store_true", help="first autotune config of each kernel only")
    p.add_argument("--only", default="", help="comma-separated parts of kernel names to compile")
    p.add_argument("--variant", default="", help="compile only variants whose label contains this")
    p.add_argument("--out", default=None, help=f"markdown output (default {RESULTS}; none with --quick)")
    return p.parse_args(argv)


def variants():
    """(kernel name, Autotuner, pointer dtypes, constexpr values, label) for each variant worth
    compiling: every Psi / reset / post mode of the LIF kernels, every dtype of the GEMMs."""
    from stllr_kernels.backends.triton import eligibility, lif, trace
    from stllr_kernels.psi import POST_MODES, PSI_CODES, RESET_MODES
    import triton.language as tl
    out = []
    for psi, code in PSI_CODES.items():
        for reset, post in itertools.product(RESET_MODES, POST_MODES):
            for dt in ("fp32", "bf16", "fp16"):
                modes = dict(PSI=code, SOFT_RESET=reset == "soft", POST_SPIKE=post == "spike")
                out.append(("lif_step", lif._lif_step_kernel, {"cur_ptr": dt, "s_ptr": dt},
                            modes, f"{psi} {reset} {post} {dt}"))
                out.append(("lif_sequence", lif._lif_sequence_kernel,
                            {"cur_ptr": dt, "s_ptr": dt}, modes, f"{psi} {reset} {post} {dt}"))
    for dt in ("fp32", "bf16", "fp16"):
        out.append(("pre_trace", trace._pre_trace_kernel, {"x_ptr": dt}, {}, dt))
        out.append(("trace_sequence", trace._trace_sequence_kernel, {"x_ptr": dt}, {}, dt))
        out.append(("conv products", eligibility._conv_products_kernel, {"l_ptr": dt, "grads_ptr": "fp32"},
                    {}, dt))
    dots = {"fp32": (tl.float32, "ieee"), "tf32": (tl.float32, "tf32"), "bf16": (tl.bfloat16, "tf32"),
            "fp16": (tl.float16, "tf32")}
    for tag, (dot, precision) in dots.items():
        dt = "fp32" if tag == "tf32" else tag
        half = {"l_ptr": dt, "x_ptr": dt, "causal_ptr": dt, "w_ptr": dt, "dw_ptr": dt, "db_ptr": dt}
        gemm = dict(DOT_DTYPE=dot, INPUT_PRECISION=precision)
        out.append(("linear dW+db", eligibility._eligibility_dw_kernel, half,
                    dict(HAS_PSI=True, HAS_CAUSAL=True, HAS_POST=True, HAS_PRE=True, WRITE_DB=True,
                         ACCUMULATE=False, **gemm, **DW_UNIT_STRIDES), tag))
        out.append(("linear dx", eligibility._signal_dx_kernel, {**half, "dx_ptr": dt},
                    dict(HAS_PSI=True, **gemm, **DX_UNIT_STRIDES), tag))
    # the readout layer's variant and accumulation into an existing buffer
    out.append(("linear dW+db", eligibility._eligibility_dw_kernel, {},
                dict(HAS_PSI=False, HAS_CAUSAL=False, HAS_POST=False, HAS_PRE=True, WRITE_DB=True,
                     ACCUMULATE=True, DOT_DTYPE=tl.float32, INPUT_PRECISION="ieee", **DW_UNIT_STRIDES),
                "readout, accumulate"))
    return out


def signature(fn, ptr_types, constexprs):
    sig = {}
    for p in fn.params:
        if p.is_constexpr or p.name in constexprs:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = "*" + ptr_types.get(p.name, "fp32")
        else:
            sig[p.name] = "fp32" if p.name in FLOAT_ARGS else "i32"
    missing = [p.name for p in fn.params if p.is_constexpr and p.name not in constexprs]
    if missing:
        raise ValueError(f"{fn.__name__}: no value for constexpr {missing}")
    return sig


def ptxas_stats(ptx: str, arch: int) -> str:
    """Registers and spills as ptxas -v reports them for this PTX."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        run = subprocess.run([get_ptxas(arch).path, "-v",
                              f"--gpu-name={sm_arch_from_capability(arch)}", f.name, "-o", os.devnull],
                             capture_output=True, text=True, timeout=300)
    finally:
        os.unlink(f.name)
    log = run.stdout + run.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return f"{regs.group(1) if regs else '?'} regs, {spills.group(1) if spills else '?'} B spilled"


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":  # kernels must be real JITFunctions
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])], env=env)
    sys.path.insert(0, os.path.dirname(HERE))
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    target = GPUTarget("cuda", args.arch, 32)
    limit = SMEM_LIMIT.get(args.arch)
    rows, failures, start = [], 0, time.time()
    try:
        from tqdm import tqdm
    except ImportError:  # progress is optional
        tqdm = lambda x, **_: x  # noqa: E731
    jobs, seen = [], set()
    for name, tuner, ptrs, constexprs, label in variants():
        if not any(part in name for part in args.only.split(",")) or args.variant not in label:
            continue
        # every config of the GEMMs; for the element-wise kernels (which only change BLOCK) every
        # config of their first variant and the first config of the others
        first_variant = (name, tuner) not in seen
        seen.add((name, tuner))
        every = not args.quick and (first_variant or "GEMM" in name or "dW" in name or " dx" in name)
        configs = tuner.configs if every else tuner.configs[:1]
        jobs += [(name, tuner, ptrs, constexprs, label, c) for c in configs]
    for name, tuner, ptrs, constexprs, label, config in tqdm(jobs, desc=f"compiling for sm_{args.arch}"):
        fn = tuner.fn
        consts = {**constexprs, **config.kwargs}
        meta = ", ".join(f"{k}={v}" for k, v in config.kwargs.items())
        meta += f", warps={config.num_warps}, stages={config.num_stages}"
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        if name in ("lif_step", "lif_sequence"):
            options["enable_fp_fusion"] = False  # as the launchers compile them
        try:
            kernel = triton.compile(ASTSource(fn, signature(fn, ptrs, consts), consts), target=target,
                                    options=options)
            shared = kernel.metadata.shared
            over = limit is not None and shared > limit
            status = "over smem limit (autotuner skips it)" if over else "ok"
            stats = ptxas_stats(kernel.asm["ptx"], args.arch)
        except Exception as exc:  # report every failure, not just the first
            failures += 1
            first = (str(exc).strip().splitlines() or [""])[-1][:200].replace("|", "/")
            status, shared, stats = f"ERROR {type(exc).__name__}: {first}", "", ""
        rows.append(f"| {name} | {label} | {meta} | {status} | {shared} | {stats} |")
    text = "\n".join([
        f"# compile_check: every Triton kernel compiled for sm_{args.arch}, without a GPU",
        "",
        f"- command: `python benchmarks/compile_check.py{''.join(' ' + a for a in (argv or sys.argv[1:]))}`; "
        f"triton {triton.__version__} (from `{os.path.relpath(os.path.dirname(triton.__file__), os.path.dirname(HERE))}`); "
        f"{len(rows)} compiles in {time.time() - start:.0f} s; {failures} errors",
        f"- shared-memory limit per block on sm_{args.arch}: {limit if limit else 'unknown'} bytes",
        "- this proves the kernels compile (and shows their resource use); it does not run them: "
        "correctness on a GPU is benchmarks/gpu_check.py's job",
        "",
        "| kernel | variant | config | status | shared bytes | ptxas |",
        "|---|---|---|---|---|---|",
        *rows]) + "\n"
    out = args.out or (None if args.quick else RESULTS)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
