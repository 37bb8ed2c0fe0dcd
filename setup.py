"""Installs stllr_kernels and the training package, building the C++/CUDA extension ahead of time.

    pip install --no-build-isolation -e .      # build isolation would pull a second torch

The extension `stllr_kernels._C` (csrc/) registers the ops under torch.ops.stllr: CppExtension with
the .cpp sources, or CUDAExtension with csrc/cuda/*.cu too when torch has CUDA and nvcc is found.
STLLR_NO_EXTENSION=1 builds nothing. A failed build does not fail the install (the `cpu` / `cuda`
backends then report why they are unavailable, reading csrc/build-error.txt) unless
STLLR_REQUIRE_EXTENSION=1, which CI sets so that a C++ error fails it. MAX_JOBS caps ninja's jobs.
"""
import glob
import os
import sys
import traceback

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_ERROR = os.path.join(HERE, "csrc", "build-error.txt")


def _extension_setup():
    """(ext_modules, cmdclass) for the extension, or ([], {}) when it is switched off."""
    if os.environ.get("STLLR_NO_EXTENSION", "0") not in ("", "0"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    # -fno-trapping-math lets GCC if-convert the spike/psi selects and vectorise the loops; it changes
    # no result (only whether FP exception flags may be raised speculatively)
    cxx_flags = ["-O3", "-fno-trapping-math", "-fdiagnostics-color=always"]
    link_flags = []
    if sys.platform.startswith("linux"):  # at::parallel_for runs its OpenMP region only with -fopenmp
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if with_cuda:
        # --fmad=false: no contracted multiply-adds, so spikes match the reference bit for bit
        ext = CUDAExtension("stllr_kernels._C", cpp_sources + sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"))),
                            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--fmad=false"]},
                            extra_link_args=link_flags)
    else:
        ext = CppExtension("stllr_kernels._C", cpp_sources, extra_compile_args={"cxx": cxx_flags},
                           extra_link_args=link_flags)

    class TolerantBuild(BuildExtension):
        """Builds with ninja; on failure records why (for the backends' message) and goes on."""

        def run(self):
            if os.path.exists(BUILD_ERROR):
                os.remove(BUILD_ERROR)
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - any build failure is reported, not fatal
                if os.environ.get("STLLR_REQUIRE_EXTENSION", "0") not in ("", "0"):
                    raise
                with open(BUILD_ERROR, "w") as f:
                    f.write(f"{type(exc).__name__}: {exc} (the compiler's messages are in the build output: "
                            f"`pip install -v --no-build-isolation -e .` shows them)\n\n{traceback.format_exc()}")
                print(f"WARNING: the stllr C++ extension failed to build ({exc}); the cpu/cuda backends "
                      f"are unavailable, details in {BUILD_ERROR}", file=sys.stderr)

    return [ext], {"build_ext": TolerantBuild.with_options(use_ninja=True)}


def _version() -> str:
    """stllr_kernels/_version.py's __version__, read without importing the package."""
    namespace = {}
    with open(os.path.join(HERE, "stllr_kernels", "_version.py")) as f:
        exec(f.read(), namespace)
    return namespace["__version__"]


ext_modules, cmdclass = _extension_setup()

setup(
    name="stllr-kernels",
    version=_version(),
    description="Fused kernels and training for S-TLLR, a temporally local learning rule for SNNs",
    packages=find_packages(include=["stllr_kernels", "stllr_kernels.*", "training", "training.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.1", "numpy", "tqdm", "matplotlib", "scikit-learn"],
    extras_require={
        "test": ["pytest", "triton"],
        # tonic reads the datasets; aedat is the .aedat4 reader tonic's CIFAR10DVS imports but does
        # not declare
        "data": ["tonic", "h5py", "aedat"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
