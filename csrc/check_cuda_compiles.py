"""CI compile check of the CUDA sources: nvcc -arch=sm_90 -c on every csrc/cuda/*.cu against the
installed torch's headers, objects to a temporary directory (nothing is linked or run).

A CUDA syntax or type error exits 1 with nvcc's output. No nvcc: prints that the check is skipped and
exits 0. Torch's CPU wheels ship ATen/cuda and c10/cuda headers but not the generated
c10/cuda/impl/cuda_cmake_macros.h; then C10_CUDA_NO_CMAKE_CONFIGURE_FILE is defined (that header only
sets export macros for Windows) and the check says so. MAX_JOBS sets how many nvcc run at once.

    python csrc/check_cuda_compiles.py        (make cuda-check)
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))
ARCH = "sm_90"


def find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def nvcc_flags(notes: list[str]) -> list[str]:
    includes = cpp_extension.include_paths()
    flags = [f"-arch={ARCH}", "-std=c++20", "-O3", "--fmad=false", "-Xcompiler", "-fPIC",
             "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
             *cpp_extension.COMMON_NVCC_FLAGS, *(f"-I{d}" for d in includes)]
    if not any(os.path.exists(os.path.join(d, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for d in includes):
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
        notes.append("torch's headers lack c10/cuda/impl/cuda_cmake_macros.h (a CPU wheel): compiled with "
                     "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE (it only defines Windows export macros)")
    return flags


def main() -> int:
    sources = sorted(glob.glob(os.path.join(HERE, "cuda", "*.cu")))
    nvcc = find_nvcc()
    if nvcc is None:
        print(f"cuda-check: SKIPPED: nvcc not found (CUDA_HOME, /usr/local/cuda, PATH); "
              f"{len(sources)} .cu files not compiled")
        return 0
    notes: list[str] = []
    flags = nvcc_flags(notes)
    for note in notes:
        print(f"cuda-check: note: {note}")
    jobs = max(1, int(os.environ.get("MAX_JOBS", "1")))
    with tempfile.TemporaryDirectory(prefix="stllr-cuda-check-") as out_dir:
        def compile_one(src: str):
            start = time.time()
            obj = os.path.join(out_dir, os.path.basename(src) + ".o")
            proc = subprocess.run([nvcc, *flags, "-c", src, "-o", obj], capture_output=True, text=True)
            return src, proc, time.time() - start

        with ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(compile_one, sources))
    failed = 0
    for src, proc, seconds in results:
        name = os.path.relpath(src, os.path.dirname(HERE))
        status = "ok" if proc.returncode == 0 else "FAILED"
        print(f"cuda-check: {name}: {status} ({seconds:.0f} s)")
        if proc.returncode != 0:
            failed += 1
            print(proc.stdout + proc.stderr)
    print(f"cuda-check: {len(sources) - failed}/{len(sources)} CUDA sources compile with {os.path.basename(nvcc)} "
          f"-arch={ARCH} ({subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout.strip().splitlines()[-1]})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
