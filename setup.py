"""Installs stllr_kernels and the training package.

The C++/CUDA extension in csrc/ is built here ahead of time where a compiler is present (see
csrc/README or the extension section of README.md); STLLR_NO_EXTENSION=1 builds nothing.
"""
from setuptools import find_packages, setup

setup(
    name="stllr-kernels",
    version="0.1.0",
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
)
