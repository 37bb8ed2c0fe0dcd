"""Compile every Triton kernel of the `triton` backend for a GPU architecture, without a GPU.

    python benchmarks/compile_check.py                 # sm_90 (H100/H200), every variant and config
    python benchmarks/compile_check.py --quick         # one config per kernel variant (used by the tests)
    python benchmarks/compile_check.py --arch 80 --out benchmarks/results/compile_check_sm80.md
    make compile-check-triton36                        # the same with triton 3.6.0 (the GPU image's)

The CPU interpreter runs the kernels' Python semantics but never the GPU compiler, and it cannot run
bf16 tl.dot at all; this script takes every kernel through Triton's full pipeline (TTIR -> TTGIR ->
LLVM -> PTX -> cubin with the bundled ptxas) for every variant the launchers can launch (each Psi /
reset / post mode, each dtype with the tl.dot operand dtype and precision `common.dot_config` gives
it: fp16 through its float32 path, float32 with and without TF32; each optional-input combination
of the GEMMs that a layer uses) and every config of each kernel's autotuner (the fixed tile of the
recurrent step, each BLOCK the standardize launcher can pick). Per row: compile errors, ptxas's
registers and spill bytes per thread, and shared memory against the architecture's limit (configs
over it would fail at launch and are skipped by the autotuner). Pointers are compiled 16-byte
aligned, as torch allocates them. It must run without TRITON_INTERPRET (it re-executes itself
without it if set); compiles run in parallel (--jobs).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "compile_check.md")
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}  # bytes per block
FLOAT_ARGS = {"lambda_post", "lambda_pre", "alpha_post", "alpha_pre", "decay", "ratio"}
# Triton specialises integer arguments equal to 1 as constants: the unit strides of contiguous
# inputs, as the launchers pass them in the usual case (row-major [B, N], [B, K], [N, K] tensors)
DW_UNIT_STRIDES = {k: 1 for k in ("s_ln", "s_pn", "s_cn", "s_qn", "s_xk", "s_tk", "s_wk", "s_db")}
DX_UNIT_STRIDES = {k: 1 for k in ("s_ln", "s_pn", "s_wk", "s_xk")}


class Variant(NamedTuple):
    """One kernel specialisation the launchers can launch, with the configs it may run with."""
    name: str          # the kernel, as the report names it
    fn: object         # its JITFunction
    configs: list      # triton.Config list: the autotuner's GPU configs, or the launcher's fixed ones
    ptrs: dict         # pointer argument -> Triton dtype ("fp32" unless listed)
    constexprs: dict   # constexpr (and specialised) argument values
    label: str
    no_fma: bool       # compiled with enable_fp_fusion=False, as its launcher does


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 or 80")
    p.add_argument("--quick", action="store_true", help="first config of each variant only")
    p.add_argument("--only", default="", help="comma-separated parts of kernel names to compile")
    p.add_argument("--variant", default="", help="compile only variants whose label contains this")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles in parallel")
    p.add_argument("--out", default=None, help=f"markdown output (default {RESULTS}; none with --quick)")
    return p.parse_args(argv)


def dot_variants():
    """(label, input dtype, tl.dot operand dtype, input_precision) as common.dot_config maps each
    input dtype under each torch float32 matmul setting ("highest": ieee, else tf32)."""
    import torch
    from stllr_kernels.backends.triton.common import dot_config
    out = []
    for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        seen = set()
        for setting in ("highest", "high"):
            previous = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision(setting)
            try:
                dot, precision = dot_config(dtype)
            finally:
                torch.set_float32_matmul_precision(previous)
            if (dot, precision) in seen:
                continue
            seen.add((dot, precision))
            label = tag if dot.primitive_bitwidth < 32 else f"{tag} ({dot} {precision})"
            out.append((label, tag, dot, precision))
    return out


def variants() -> list[Variant]:
    """Every kernel specialisation the launchers of stllr_kernels.backends.triton can launch."""
    import triton
    from stllr_kernels.backends.triton import eligibility, lif, recurrent, standardize, trace
    from stllr_kernels.psi import POST_MODES, PSI_CODES, RESET_MODES
    out = []
    dtypes = ("fp32", "bf16", "fp16")
    modes = [(f"{psi} {reset} {post}", dict(PSI=code, SOFT_RESET=reset == "soft", POST_SPIKE=post == "spike"))
             for (psi, code), reset, post in itertools.product(PSI_CODES.items(), RESET_MODES, POST_MODES)]
    for (label, mode), dt in itertools.product(modes, dtypes):  # states, psi, traces: float32
        for name, k in (("lif_step", lif._lif_step_kernel), ("lif_sequence", lif._lif_sequence_kernel)):
            out.append(Variant(name, k.fn, k.gpu_configs, {"cur_ptr": dt, "s_ptr": dt}, mode, f"{label} {dt}",
                               True))
    for dt in dtypes:
        for name, k in (("pre_trace", trace._pre_trace_kernel), ("trace_sequence", trace._trace_sequence_kernel)):
            out.append(Variant(name, k.fn, k.gpu_configs, {"x_ptr": dt}, {}, dt, True))
        # the conv products: L and the spike causal in the input dtype, the operands in the compute dtype
        ct = "bf16" if dt == "bf16" else "fp32"
        k = eligibility._conv_products_kernel
        out.append(Variant("conv products", k.fn, k.gpu_configs,
                           {"l_ptr": dt, "causal_ptr": dt, "grads_ptr": ct, "gpsi_ptr": ct}, {}, dt, False))
        k = recurrent._leaky_scan_kernel
        out.append(Variant("leaky scan", k.fn, k.gpu_configs, {"cur_ptr": dt}, {}, dt, False))
        k = recurrent._reverse_eligibility_kernel
        out.append(Variant("reverse eligibility", k.fn, k.gpu_configs, {"l_ptr": dt, "causal_ptr": dt}, {}, dt,
                           False))
        # one program per row; the launcher picks BLOCK = min(1024, next power of two of K)
        blocks = [triton.Config({"BLOCK": 2 ** i}, num_warps=4) for i in range(11)]
        out.append(Variant("standardize backward", standardize._standardize_backward_kernel, blocks,
                           {"g_ptr": dt, "n_ptr": dt, "dw_ptr": dt, "scale_ptr": dt, "gain_ptr": dt,
                            "dgain_ptr": dt}, {}, dt, False))
    dw, dx = eligibility._eligibility_dw_kernel, eligibility._signal_dx_kernel
    for label, dt, dot, precision in dot_variants():
        gemm = dict(DOT_DTYPE=dot, INPUT_PRECISION=precision)
        # a linear / recurrent S-TLLR layer: every input (psi, causal = spikes, trpost), bias
        out.append(Variant("linear dW+db", dw.fn, dw.gpu_configs,
                           {"l_ptr": dt, "causal_ptr": dt, "x_ptr": dt, "dw_ptr": dt, "db_ptr": dt},
                           dict(HAS_PSI=True, HAS_CAUSAL=True, HAS_POST=True, HAS_PRE=True, WRITE_DB=True,
                                ACCUMULATE=False, **gemm, **DW_UNIT_STRIDES), f"{label} linear", False))
        # the readout layer (dW = L^T trpre, db = sum L) and the reverse-time form's second GEMM
        # (plain products added to the first's output)
        out.append(Variant("linear dW+db", dw.fn, dw.gpu_configs, {"x_ptr": dt, "dw_ptr": dt, "db_ptr": dt},
                           dict(HAS_PSI=False, HAS_CAUSAL=False, HAS_POST=False, HAS_PRE=True, WRITE_DB=True,
                                ACCUMULATE=False, **gemm, **DW_UNIT_STRIDES), f"{label} readout", False))
        out.append(Variant("linear dW+db", dw.fn, dw.gpu_configs, {"x_ptr": dt, "tr_ptr": dt, "dw_ptr": dt},
                           dict(HAS_PSI=False, HAS_CAUSAL=False, HAS_POST=False, HAS_PRE=True, WRITE_DB=False,
                                ACCUMULATE=True, **gemm, **DW_UNIT_STRIDES), f"{label} reverse, accumulate",
                           False))
        for role, has_psi in (("linear", True), ("readout", False)):
            out.append(Variant("linear dx", dx.fn, dx.gpu_configs,
                               {"l_ptr": dt if has_psi else "fp32", "w_ptr": dt, "dx_ptr": dt},
                               dict(HAS_PSI=has_psi, **gemm, **DX_UNIT_STRIDES), f"{label} {role}", False))
        # the recurrent step: the GEMM s[t-1] W_rec^T with the LIF and both traces as its epilogue
        for (mode_label, mode), save in itertools.product(modes, (False, True)):
            out.append(Variant("recurrent step", recurrent._recurrent_step_kernel, [recurrent.STEP_CONFIG],
                               {p: dt for p in ("cur_ptr", "sp_ptr", "wr_ptr", "s_ptr", "sp_save_ptr")},
                               dict(**mode, SAVE=save, **gemm, s_wk=1),
                               f"{label} {mode_label}{' save' if save else ''}", True))
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


def ptxas_stats(ptx: str, arch: int) -> tuple:
    """(registers, spill-store bytes) per thread as ptxas -v reports them for this PTX."""
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
    return (int(regs.group(1)) if regs else None, int(spills.group(1)) if spills else None)


_JOBS: list = []


def compile_one(index: int, arch: int) -> dict:
    """Compile job `index` of _JOBS (a worker of the pool: forked, it inherits the list)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    variant, config = _JOBS[index]
    fn = variant.fn
    consts = {**variant.constexprs, **config.kwargs}
    meta = ", ".join(f"{k}={v}" for k, v in config.kwargs.items())
    row = {"name": variant.name, "label": variant.label,
           "config": f"{meta}, warps={config.num_warps}, stages={config.num_stages}"}
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    if variant.no_fma:
        options["enable_fp_fusion"] = False
    sig = signature(fn, variant.ptrs, consts)
    aligned = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(fn.params) if sig[p.name].startswith("*")}
    try:
        kernel = triton.compile(ASTSource(fn, sig, consts, aligned), target=GPUTarget("cuda", arch, 32),
                                options=options)
        row["shared"] = kernel.metadata.shared
        row["regs"], row["spilled"] = ptxas_stats(kernel.asm["ptx"], arch)
        limit = SMEM_LIMIT.get(arch)
        row["status"] = "over smem limit (autotuner skips it)" if limit and row["shared"] > limit else "ok"
    except Exception as exc:  # report every failure, not just the first
        first = (str(exc).strip().splitlines() or [""])[-1][:200].replace("|", "/")
        row["status"] = f"ERROR {type(exc).__name__}: {first}"
    return row


def summary(rows: list) -> list[str]:
    """The headline figures: errors, spills, the largest register and shared-memory use."""
    ok = [r for r in rows if "regs" in r]
    spilling = [r for r in ok if r["spilled"]]
    lines = [f"- {len(rows)} compiles, {len(rows) - len(ok)} errors; "
             f"{len(spilling)} rows spill registers"
             + (f" (at most {max(r['spilled'] for r in spilling)} B per thread)" if spilling else
                " (every row: 0 bytes spilled)")]
    if ok:
        lines.append(f"- most registers per thread: {max(r['regs'] for r in ok)}; most shared memory per "
                     f"block: {max(r['shared'] for r in ok)} bytes")
    kernels = {}
    for r in ok:
        kernels.setdefault(r["name"], []).append(r)
    lines += ["", "| kernel | compiles | registers (min-max) | max spill B | max shared B |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {len(rs)} | {min(r['regs'] for r in rs)}-{max(r['regs'] for r in rs)} | "
              f"{max(r['spilled'] for r in rs)} | {max(r['shared'] for r in rs)} |" for name, rs in kernels.items()]
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":  # kernels must be real JITFunctions
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])], env=env)
    sys.path.insert(0, os.path.dirname(HERE))
    import triton
    try:
        from tqdm import tqdm
    except ImportError:  # progress is optional
        tqdm = None
    start = time.time()
    for variant in variants():
        if not any(part in variant.name for part in args.only.split(",")) or args.variant not in variant.label:
            continue
        configs = variant.configs[:1] if args.quick else variant.configs
        _JOBS.extend((variant, c) for c in configs)
    rows = [None] * len(_JOBS)
    jobs = max(1, min(args.jobs, len(_JOBS)))
    bar = tqdm(total=len(_JOBS), desc=f"compiling for sm_{args.arch}") if tqdm else None
    if jobs == 1:
        done = ((i, compile_one(i, args.arch)) for i in range(len(_JOBS)))
        for i, row in done:
            rows[i] = row
            bar and bar.update()
    else:
        with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {pool.submit(compile_one, i, args.arch): i for i in range(len(_JOBS))}
            for future in cf.as_completed(futures):
                rows[futures[future]] = future.result()
                bar and bar.update()
    bar and bar.close()
    failures = sum(1 for r in rows if "regs" not in r)
    limit = SMEM_LIMIT.get(args.arch)
    table = [f"| {r['name']} | {r['label']} | {r['config']} | {r['status']} | {r.get('regs', '')} | "
             f"{r.get('spilled', '')} | {r.get('shared', '')} |" for r in rows]
    text = "\n".join([
        f"# compile_check: every Triton kernel compiled for sm_{args.arch}, without a GPU",
        "",
        f"- command: `python benchmarks/compile_check.py{''.join(' ' + a for a in (argv or sys.argv[1:]))}`; "
        f"triton {triton.__version__} (from `{os.path.relpath(os.path.dirname(triton.__file__), os.path.dirname(HERE))}`); "
        f"{len(rows)} compiles in {time.time() - start:.0f} s on {jobs} processes (kernels found in Triton's "
        "compile cache are not compiled again; ptxas runs on every row)",
        f"- shared-memory limit per block on sm_{args.arch}: {limit if limit else 'unknown'} bytes; registers "
        "and spill bytes are per thread (ptxas -v)",
        "- this proves the kernels compile (and shows their resource use); it does not run them: "
        "correctness on a GPU is benchmarks/gpu_check.py's job",
        *summary(rows),
        "",
        "| kernel | variant | config | status | registers | spilled B | shared B |",
        "|---|---|---|---|---|---|---|",
        *table]) + "\n"
    out = args.out or (None if args.quick else RESULTS)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
    print(text)
    spilled = any(r.get("spilled") for r in rows)
    return 1 if failures else (2 if spilled else 0)


if __name__ == "__main__":
    sys.exit(main())
